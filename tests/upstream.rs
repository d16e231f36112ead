//! Upstream store-and-forward with real relay processes on loopback: an
//! edge keeps serving while its hub is down and forwards everything once,
//! in order, through restarts and a flapping link; two edges converge
//! through one hub; hub writes reach edge subscribers; wss with a
//! self-signed hub certificate; admission of `/ws/replicate`.

mod common;

use common::nats::free_port;
use common::node::*;
use common::replication::*;
use common::*;
use futures_util::{SinkExt, StreamExt};
use outpost::auth::Scope;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

impl Node {
    /// A hub on `port`: JWT auth for edges, anonymous write for test clients.
    fn hub(port: u16, extra: &str) -> Node {
        Node::on(
            &format!("[auth]\njwt_secret = \"{SECRET}\"\nanonymous = \"write\"\n{extra}"),
            &format!("127.0.0.1:{port}"),
        )
    }

    /// An edge forwarding to `url` with an admin token of the hub.
    fn edge(url: &str, extra: &str) -> Node {
        let t = token("edge", Scope::Admin, None);
        Node::new(&format!(
            "[upstream]\nurl = \"{url}\"\ntoken = \"{t}\"\n{extra}"
        ))
    }
}

fn ws_url(port: u16) -> String {
    format!("ws://127.0.0.1:{port}/ws/replicate")
}

/// Every change of space "s" on `addr` from the start, via native subscribe.
async fn all_changes(addr: SocketAddr) -> Vec<Value> {
    let mut c = Client::native(addr).await;
    let (frames, _) = c.subscribe("s", 0).await;
    frames
        .into_iter()
        .filter(|f| f["type"] == "change")
        .collect()
}

/// The changes of `origin` arrived exactly once each, in origin order 1..=n.
fn assert_once_in_order(changes: &[Value], origin: &str, n: u64) {
    let seqs: Vec<u64> = changes
        .iter()
        .filter(|c| c["origin"] == origin)
        .map(|c| c["origin_seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (1..=n).collect::<Vec<_>>(),
        "changes of {origin} missing, repeated or out of order"
    );
}

/// A seed-000 `sync_request` at the edge (an immediate upstream round).
async fn sync_request(edge: SocketAddr) -> Value {
    let mut sync = Client::connect(edge, "/ws/sync").await;
    sync.until("welcome").await;
    sync.send(json!({"type": "sync_request", "requestId": "r1"}))
        .await;
    sync.until("sync_started").await.1
}

async fn upstream_status(edge: SocketAddr) -> Value {
    status(edge).await["upstream"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_down_then_up_every_change_once_in_order() {
    let port = free_port();
    let mut edge = Node::edge(&ws_url(port), "").run();
    let w = writes("n", 300, "edge");
    write_all(edge.http, &w).await;
    let node = status(edge.http).await["node_id"]
        .as_str()
        .unwrap()
        .to_string();
    let up = upstream_status(edge.http).await;
    assert_eq!(up["connected"], false, "{up}");
    assert_eq!(up["changes_waiting"], 300, "{up}");
    assert!(up["oldest_waiting_age_s"].is_u64(), "{up}");
    assert!(up["last_error"].is_string(), "{up}");
    assert_eq!(metric(edge.http, "outpost_upstream_backlog").await, 300.0);
    assert_eq!(metric(edge.http, "outpost_upstream_connected").await, 0.0);

    // Restarted (hard) while the hub is still down: the backlog is on disk.
    edge.kill9();
    edge.start();
    let more = writes("m", 20, "edge");
    write_all(edge.http, &more).await;
    assert_eq!(upstream_status(edge.http).await["changes_waiting"], 320);

    // Let the backoff grow, then bring the hub up and ask for a round.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let hub = Node::hub(port, "").run();
    let started = sync_request(edge.http).await;
    assert_eq!(started["mode"], "upstream", "{started}");

    wait_until(60, "the backlog to drain", || async {
        metric(edge.http, "outpost_upstream_backlog").await == 0.0
            && status(hub.http).await["log"]["entries"] == 320
    })
    .await;
    assert_once_in_order(&all_changes(hub.http).await, &node, 320);
    let up = upstream_status(edge.http).await;
    assert_eq!(up["connected"], true, "{up}");
    assert_eq!(up["changes_waiting"], 0, "{up}");
    assert_eq!(up["oldest_waiting_age_s"], Value::Null, "{up}");
    assert_eq!(up["hub_node_id"], status(hub.http).await["node_id"], "{up}");
    assert!(up["last_contact_ms"].is_u64(), "{up}");
    assert_eq!(metric(edge.http, "outpost_upstream_connected").await, 1.0);
    // The hub lists the edge as a link.
    let peers = status(hub.http).await["peers"].clone();
    assert_eq!(peers[0]["kind"], "edge", "{peers}");
    assert_eq!(peers[0]["node_id"], node.as_str(), "{peers}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_hub_ends_with_each_change_exactly_once() {
    let port = free_port();
    let edge = Node::edge(&ws_url(port), "").run();
    let node = status(edge.http).await["node_id"]
        .as_str()
        .unwrap()
        .to_string();
    let first = writes("f", 6000, "edge");
    write_all(edge.http, &first).await;
    let mut hub = Node::hub(port, "");
    // Writes keep coming while the hub flaps.
    let addr = edge.http;
    let writer = tokio::spawn(async move {
        for round in 0..8 {
            write_all(addr, &writes(&format!("w{round}-"), 250, "edge")).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let total = 6000 + 8 * 250;
    let mut held = 0;
    // Each round: the hub comes up, the edge is asked for a round at once,
    // and the hub is killed shortly after it starts receiving.
    for pause in [50, 250, 120, 400] {
        hub.start();
        sync_request(edge.http).await;
        wait_until(30, "the stream to resume", || async {
            status(hub.http).await["log"]["entries"].as_u64().unwrap() > held
        })
        .await;
        tokio::time::sleep(Duration::from_millis(pause)).await;
        hub.kill9();
        hub.start();
        held = status(hub.http).await["log"]["entries"].as_u64().unwrap();
        hub.kill9();
        if pause == 50 {
            assert!(held < total, "the first kill came after everything arrived");
        }
    }
    writer.await.unwrap();
    hub.start();
    sync_request(edge.http).await;
    wait_until(90, "the hub to hold every change", || async {
        status(hub.http).await["log"]["entries"].as_u64().unwrap() >= total
    })
    .await;
    let st = status(hub.http).await;
    assert_eq!(st["log"]["entries"], total, "a change was stored twice");
    assert_eq!(st["version_vector"][&node], total, "{st}");
    assert_once_in_order(&all_changes(hub.http).await, &node, total);
    wait_until(30, "the edge backlog to drain", || async {
        metric(edge.http, "outpost_upstream_backlog").await == 0.0
    })
    .await;
    assert!(metric(edge.http, "outpost_upstream_sessions_total").await >= 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_edges_and_a_hub_converge_and_hub_writes_reach_edge_subscribers() {
    let port = free_port();
    let hub = Node::hub(port, "").run();
    let a = Node::edge(&ws_url(port), "").run();
    let b = Node::edge(&ws_url(port), "").run();
    // A subscriber at edge A, live before anything is written.
    let mut sub = Client::native(a.http).await;
    sub.subscribe("s", 0).await;

    let wa = writes("a", 100, "a");
    let wb = writes("b", 100, "b");
    // The same entities and fields from all three: conflicts, resolved alike.
    let shared_a = writes("x", 40, "edge-a");
    let shared_b = writes("x", 40, "edge-b");
    let shared_h = writes("x", 40, "hub");
    write_all(a.http, &wa).await;
    write_all(b.http, &wb).await;
    write_all(a.http, &shared_a).await;
    write_all(b.http, &shared_b).await;
    write_all(hub.http, &shared_h).await;
    let mut ids: Vec<String> = [&wa, &wb, &shared_a]
        .iter()
        .flat_map(|w| w.iter().map(|(id, _)| id.clone()))
        .collect();
    ids.sort();
    converge(&[hub.http, a.http, b.http], 320, &ids).await;

    // Written at the hub through a dialect, seen by A's subscriber.
    let mut kv = Client::connect(hub.http, "/ws").await;
    kv.recv().await;
    kv.put("s", "from-hub", json!({"hello": "edge"})).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let f = sub
            .try_recv(left)
            .await
            .expect("the hub's write reaches the edge subscriber");
        if f["type"] == "change" && f["id"] == "from-hub" {
            assert_eq!(f["fields"], json!({"hello": "edge"}));
            break;
        }
    }
    // Both edges are the hub's links.
    let peers = status(hub.http).await["peers"].clone();
    let kinds: Vec<_> = peers
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["kind"])
        .collect();
    assert_eq!(kinds, vec!["edge", "edge"], "{peers}");
}

/// A self-signed certificate for 127.0.0.1: (cert PEM, key PEM).
fn self_signed() -> (String, String) {
    let made =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".into()])
            .unwrap();
    (made.cert.pem(), made.signing_key.serialize_pem())
}

/// A TLS client trusting only `ca_pem`.
fn tls_connector(ca_pem: &str) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// A native client over wss, welcome consumed.
async fn wss_native(
    addr: SocketAddr,
    ca_pem: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tls_connector(ca_pem).connect(name, tcp).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("wss://{addr}/ws"), tls)
        .await
        .unwrap();
    let w = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(w.to_text().unwrap().contains("welcome"), "{w:?}");
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_with_a_self_signed_hub_certificate_and_a_wrong_one_refused() {
    let port = free_port();
    let (cert, key) = self_signed();
    let (other, _) = self_signed();
    let tmp = tempfile::tempdir().unwrap();
    let (cert_file, key_file, other_file) = (
        tmp.path().join("hub.pem"),
        tmp.path().join("hub.key"),
        tmp.path().join("other.pem"),
    );
    std::fs::write(&cert_file, &cert).unwrap();
    std::fs::write(&key_file, &key).unwrap();
    std::fs::write(&other_file, &other).unwrap();
    let mut hub = Node::hub(
        port,
        &format!(
            "[server]\ntls_cert = {:?}\ntls_key = {:?}\n",
            cert_file, key_file
        ),
    )
    .run();
    let url = format!("wss://127.0.0.1:{port}/ws/replicate");
    let good = Node::edge(&url, &format!("ca_file = {cert_file:?}\n")).run();
    let bad = Node::edge(&url, &format!("ca_file = {other_file:?}\n")).run();
    let w = writes("t", 25, "good");
    write_all(good.http, &w).await;
    write_all(bad.http, &writes("nope", 5, "bad")).await;
    let good_node = status(good.http).await["node_id"]
        .as_str()
        .unwrap()
        .to_string();

    wait_until(30, "the good edge to forward over wss", || async {
        let up = upstream_status(good.http).await;
        up["connected"] == true && up["changes_waiting"] == 0
    })
    .await;
    // Read the hub over wss too: exactly the good edge's changes.
    let mut ws = wss_native(hub.http, &cert).await;
    ws.send(Message::Text(
        json!({"type": "subscribe", "space": "s", "since": 0, "rid": 1})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let mut changes = Vec::new();
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
        match v["type"].as_str() {
            Some("change") => changes.push(v),
            Some("synced") => break,
            _ => {}
        }
    }
    assert_once_in_order(&changes, &good_node, 25);
    assert_eq!(changes.len(), 25, "only the good edge got through");

    // The edge with the wrong certificate never connects.
    let up = upstream_status(bad.http).await;
    assert_eq!(up["connected"], false, "{up}");
    assert_eq!(up["sessions"], 0, "{up}");
    assert_eq!(up["changes_waiting"], 5, "{up}");
    let err = up["last_error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("certificate"), "{up}");
    assert!(metric(bad.http, "outpost_upstream_failures_total").await >= 1.0);

    // Graceful shutdown over TLS: clients are told 1001.
    hub.stop_with_close_check(&mut ws).await;
}

impl Node {
    /// SIGTERM the relay while `ws` is connected: it must get close 1001.
    async fn stop_with_close_check<S>(&mut self, ws: &mut tokio_tungstenite::WebSocketStream<S>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        self.proc.as_ref().unwrap().signal(15);
        let code = loop {
            match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
                Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
                Some(Ok(_)) => continue,
                other => panic!("no close frame: {other:?}"),
            }
        };
        assert_eq!(code, 1001);
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicate_admission_needs_an_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start(auth_config(dir.path())).await;
    let addr = hub.addr;
    let path = "/ws/replicate";
    assert_eq!(handshake_status(addr, path, None).await, 401);
    assert_eq!(handshake_status(addr, path, Some("not.a.token")).await, 401);
    let write = token("w", Scope::Write, None);
    assert_eq!(handshake_status(addr, path, Some(&write)).await, 403);
    let admin = token("a", Scope::Admin, None);
    assert_eq!(handshake_status(addr, path, Some(&admin)).await, 101);

    // An edge holding a write token is refused and says why.
    let edir = tempfile::tempdir().unwrap();
    let mut cfg = config(edir.path());
    cfg.upstream.url = Some(format!("ws://{addr}/ws/replicate"));
    cfg.upstream.token = Some(write);
    let edge = start(cfg).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let up = edge.state.upstream.as_ref().unwrap().status();
        if up["last_error"].as_str().is_some_and(|e| e.contains("403")) {
            assert_eq!(up["connected"], false);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{up}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    edge.shutdown().await.unwrap();
    hub.shutdown().await.unwrap();
}

/// Push patches to `notes` in `space`.
async fn write_space(addr: SocketAddr, space: &str, n: usize, prefix: &str) {
    let mut c = Client::native(addr).await;
    for i in 0..n {
        c.put(space, &format!("{prefix}{i}"), json!({"i": i})).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_spaces_filter_limits_both_directions() {
    let port = free_port();
    let hub = Node::hub(port, "").run();
    let edge = Node::edge(&ws_url(port), "spaces = [\"s\"]\n").run();
    write_space(edge.http, "s", 10, "e").await;
    write_space(edge.http, "private", 5, "e").await;
    write_space(hub.http, "s", 2, "h").await;
    write_space(hub.http, "elsewhere", 3, "h").await;
    wait_until(30, "the filtered exchange", || async {
        let (h, e) = (status(hub.http).await, status(edge.http).await);
        h["log"]["entries"] == 15
            && e["log"]["entries"] == 17
            && e["upstream"]["changes_waiting"] == 0
    })
    .await;
    // Nothing else arrives later.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let spaces = |st: &Value| -> Vec<String> {
        st["spaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    };
    let (h, e) = (status(hub.http).await, status(edge.http).await);
    assert_eq!(h["log"]["entries"], 15, "{h}");
    assert_eq!(spaces(&h), vec!["elsewhere", "s"], "{h}");
    assert_eq!(spaces(&e), vec!["private", "s"], "{e}");
    assert_eq!(e["upstream"]["spaces"], json!(["s"]));
}

#[test]
fn upstream_config_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.upstream.url = Some("http://hub/ws/replicate".into());
    c.upstream.token = Some("t".into());
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("upstream.url"), "{e}");
    c.upstream.url = Some("wss://hub.example/ws/replicate".into());
    c.upstream.token = None;
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("upstream.token"), "{e}");
    c.upstream.token = Some("tok".into());
    c.upstream.spaces = Some(vec!["a".into()]);
    let u = c.validate().unwrap().upstream.unwrap();
    assert_eq!((u.host.as_str(), u.port, u.tls), ("hub.example", 443, true));
    let toml = c.effective_toml(&c.validate().unwrap());
    assert!(
        toml.contains("<redacted>") && !toml.contains("\"tok\""),
        "{toml}"
    );
    c.upstream.ca_file = Some(dir.path().join("missing.pem"));
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("upstream.ca_file"), "{e}");
    c.upstream.ca_file = None;
    c.server.tls_cert = Some(dir.path().join("cert.pem"));
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("server.tls_key"), "{e}");
}
