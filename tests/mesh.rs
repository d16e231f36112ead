//! The peer mesh with real relay processes on loopback (static peers):
//! chains and triangles converge, SIGKILL and partitions heal, strangers
//! are refused, a flood of stalled handshakes stays within its bounds.

mod common;

use common::node::wait_until;
use common::replication::*;
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

const SECRET: &str = "mesh-secret-0123456789";

/// A relay process (`common::node::Node`, logged) with its mesh address.
struct Node {
    relay: common::node::Node,
    mesh: SocketAddr,
    /// More `[mesh]` keys (and tables after them), appended to the config.
    extra: String,
}

impl std::ops::Deref for Node {
    type Target = common::node::Node;
    fn deref(&self) -> &Self::Target {
        &self.relay
    }
}

impl std::ops::DerefMut for Node {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.relay
    }
}

impl Node {
    fn start(peers: &[SocketAddr], secret: &str) -> Node {
        Node::start_with(peers, secret, "")
    }

    fn start_with(peers: &[SocketAddr], secret: &str, extra: &str) -> Node {
        let mut relay = common::node::Node::new("");
        relay.logged = true;
        let mut n = Node {
            relay,
            mesh: "127.0.0.1:0".parse().unwrap(),
            extra: extra.to_string(),
        };
        n.write_config(peers, secret);
        n.run();
        n
    }

    fn write_config(&self, peers: &[SocketAddr], secret: &str) {
        let peers: Vec<String> = peers.iter().map(|p| format!("\"{p}\"")).collect();
        std::fs::write(
            &self.cfg,
            format!(
                "[mesh]\nenabled = true\nlisten = \"{}\"\nsecret = \"{secret}\"\npeers = [{}]\nmdns = false\n{}",
                self.mesh,
                peers.join(", "),
                self.extra,
            ),
        )
        .unwrap();
    }

    /// (Re)start the process; the mesh keeps its port across restarts.
    fn run(&mut self) {
        self.relay.start();
        let st = blocking_status(self.http);
        self.mesh = st["mesh"]["listen"].as_str().unwrap().parse().unwrap();
    }

    /// Restart with the same port (written into the config).
    fn restart(&mut self, peers: &[SocketAddr]) {
        self.write_config(peers, SECRET);
        self.run();
    }
}

fn blocking_status(addr: SocketAddr) -> Value {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    serde_json::from_str(buf.split_once("\r\n\r\n").unwrap().1).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_converges_with_conflicts_and_nothing_twice() {
    let a = Node::start(&[], SECRET);
    let c = Node::start(&[], SECRET);
    // B in the middle dials both ends: A and C only meet through B.
    let b = Node::start(&[a.mesh, c.mesh], SECRET);
    let wa = writes("a", 200, "a");
    let wb = writes("b", 100, "b");
    // Same entities and fields on both ends: conflicts, resolved the same way.
    let wc = writes("a", 50, "c");
    write_all(a.http, &wa).await;
    write_all(b.http, &wb).await;
    write_all(c.http, &wc).await;
    converge(&[a.http, b.http, c.http], 350, &ids(&[&wa, &wb])).await;
    let st = status(b.http).await;
    assert_eq!(st["peers"].as_array().unwrap().len(), 2, "{st}");
    let (_, metrics) = http_get(b.http, "/metrics").await;
    assert!(
        metrics.contains("outpost_peer_changes_sent_total{kind=\"mesh\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("outpost_mesh_sessions_total 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_triangle_converges() {
    let a = Node::start(&[], SECRET);
    let b = Node::start(&[a.mesh], SECRET);
    let c = Node::start(&[a.mesh, b.mesh], SECRET);
    let mut all = Vec::new();
    for (n, name) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        let w = writes("k", 40, name); // all three write the same entities
        write_all(n.http, &w).await;
        all.push(w);
    }
    converge(&[a.http, b.http, c.http], 120, &ids(&[&all[0]])).await;
    // Live changes after convergence travel too.
    let live = writes("live", 5, "c");
    write_all(c.http, &live).await;
    converge(&[a.http, b.http, c.http], 125, &ids(&[&all[0], &live])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_mid_stream_catches_up_after_restart() {
    let a = Node::start(&[], SECRET);
    let mut b = Node::start(&[a.mesh], SECRET);
    let w1 = writes("x", 1500, "a");
    let addr = a.http;
    let w = w1.clone();
    let writer = tokio::spawn(async move { write_all(addr, &w).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.kill9();
    writer.await.unwrap();
    // B's own writes while A streams nothing to it.
    b.restart(&[a.mesh]);
    let w2 = writes("y", 100, "b");
    write_all(b.http, &w2).await;
    converge(&[a.http, b.http], 1600, &ids(&[&w1, &w2])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_heals_to_the_same_winners() {
    let a = Node::start(&[], SECRET);
    let c = Node::start(&[], SECRET);
    let mut b = Node::start(&[a.mesh, c.mesh], SECRET);
    let base = writes("p", 50, "base");
    write_all(a.http, &base).await;
    converge(&[a.http, b.http, c.http], 50, &ids(&[&base])).await;
    // Partition: B (the only bridge) goes down; both sides edit the same
    // fields of the same entities.
    b.stop();
    let wa = writes("p", 50, "a-side");
    let wc = writes("p", 50, "c-side");
    write_all(a.http, &wa).await;
    write_all(c.http, &wc).await;
    b.restart(&[a.mesh, c.mesh]);
    converge(&[a.http, b.http, c.http], 150, &ids(&[&base])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_are_refused_and_the_mesh_keeps_working() {
    let a = Node::start(&[], SECRET);
    let b = Node::start(&[a.mesh], SECRET);
    let secret_data = writes("secret", 10, "a");
    write_all(a.http, &secret_data).await;
    converge(&[a.http, b.http], 10, &ids(&[&secret_data])).await;

    // A relay with the wrong secret dials A: refused, it learns nothing.
    let intruder = Node::start(&[a.mesh], "wrong-secret-0123456789");
    // Garbage: raw UDP datagrams, then QUIC with a foreign ALPN.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for n in 0..20u8 {
        udp.send_to(&[n; 1200], a.mesh).unwrap();
    }
    assert!(
        quic_probe(a.mesh, b"h3", None).await,
        "a non-outpost QUIC client must not get a session"
    );
    // The right ALPN but garbage instead of a membership proof: closed.
    for garbage in [
        &[0xffu8; 64][..],
        &[0, 0, 0, 5, 1, 2, 3, 4, 5],
        &[0x7f, 0xff, 0xff, 0xff],
    ] {
        assert!(quic_probe(a.mesh, b"outpost-mesh/1", Some(garbage)).await);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let st = status(intruder.http).await;
    assert_eq!(st["log"]["entries"], 0, "the intruder received data: {st}");
    assert_eq!(st["peers"], json!([]));
    let (_, metrics) = http_get(a.http, "/metrics").await;
    let refused_count: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("outpost_mesh_refused_total "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(refused_count >= 2, "{metrics}");
    let peers = status(a.http).await["peers"].as_array().unwrap().len();
    assert_eq!(peers, 1, "only B is a peer of A");
    // The intruder's own log says why it gets nowhere.
    let log = std::fs::read_to_string(intruder.log()).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("different mesh secret")),
        "the dialler's log does not name the mesh secret:\n{log}"
    );

    // And the mesh still works.
    let more = writes("after", 5, "a");
    write_all(a.http, &more).await;
    converge(&[a.http, b.http], 15, &ids(&[&secret_data, &more])).await;
}

/// Push `n` patches to space `space` (ids `{prefix}{i}`), acked.
async fn write_space(addr: SocketAddr, space: &str, prefix: &str, n: usize) {
    let mut c = Client::native(addr).await;
    for i in 0..n {
        let change = json!({"collection": "notes", "id": format!("{prefix}{i}"), "op": "patch",
                            "fields": {"i": i}});
        c.send(json!({"type": "push", "rid": i, "space": space, "changes": [change]}))
            .await;
        let (_, ack) = c.until("ack").await;
        assert!(ack["results"][0]["seq"].is_u64(), "{ack}");
    }
}

/// Changes applied per space on one relay (`/v1/status` `spaces`).
async fn space_counts(addr: SocketAddr) -> BTreeMap<String, u64> {
    let st = status(addr).await;
    st["spaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["changes"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Wait until every relay holds exactly the expected changes per space and
/// all hold the same version vector; fail at once on a change too many or a
/// space that should not be there.
async fn converge_spaces(nodes: &[(&str, SocketAddr, BTreeMap<String, u64>)]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let mut done = true;
        let mut vvs = Vec::new();
        for (name, addr, want) in nodes {
            let got = space_counts(*addr).await;
            for (space, n) in &got {
                let w = want.get(space).copied();
                assert!(
                    w.is_some_and(|w| *n <= w),
                    "{name} holds {n} changes of space {space:?}, expected {w:?}: {got:?}"
                );
            }
            done &= &got == want;
            vvs.push(status(*addr).await["version_vector"].clone());
        }
        if done && vvs.windows(2).all(|w| w[0] == w[1]) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no convergence: version vectors {vvs:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn counts(v: &[(&str, u64)]) -> BTreeMap<String, u64> {
    v.iter().map(|(s, n)| (s.to_string(), *n)).collect()
}

/// `[mesh] spaces` for all peers and `[mesh.peer_spaces]` for one: a home
/// relay A shares `family` with its neighbour B, `family` and `photos` with
/// C, and `private` with nobody. Writes to the filtered spaces come first
/// (the case that stalled a filtered link before covers): nothing filtered
/// leaves, everything shared arrives, both ways, and keeps arriving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_spaces_filter_per_peer_and_for_all() {
    let b = Node::start(&[], SECRET);
    let c = Node::start(&[], SECRET);
    let c_id = status(c.http).await["node_id"]
        .as_str()
        .unwrap()
        .to_string();
    let a = Node::start_with(
        &[b.mesh, c.mesh],
        SECRET,
        &format!(
            "spaces = [\"family\"]\n[mesh.peer_spaces]\n\"{c_id}\" = [\"family\", \"photos\"]\n"
        ),
    );
    // B and C filter nothing themselves: A's own filter is enough both ways.
    write_space(a.http, "private", "p", 30).await;
    write_space(a.http, "photos", "ph", 10).await;
    write_space(a.http, "family", "f", 20).await;
    write_space(b.http, "other", "o", 15).await;
    write_space(b.http, "family", "bf", 5).await;
    write_space(c.http, "photos", "cph", 4).await;
    converge_spaces(&[
        (
            "A",
            a.http,
            counts(&[("private", 30), ("photos", 14), ("family", 25)]),
        ),
        ("B", b.http, counts(&[("other", 15), ("family", 25)])),
        ("C", c.http, counts(&[("photos", 14), ("family", 25)])),
    ])
    .await;
    // The status page names what each link carries.
    let peers = status(a.http).await["peers"].clone();
    let spaces_of = |node: &str| {
        peers
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["node_id"] == node)
            .map(|p| p["spaces"].clone())
    };
    let b_id = status(b.http).await["node_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(spaces_of(&b_id), Some(json!(["family"])), "{peers}");
    assert_eq!(
        spaces_of(&c_id),
        Some(json!(["family", "photos"])),
        "{peers}"
    );

    // Live, after convergence: more private writes, then shared ones.
    write_space(a.http, "private", "p2-", 40).await;
    write_space(b.http, "other", "o2-", 10).await;
    write_space(a.http, "family", "f2-", 3).await;
    write_space(b.http, "family", "bf2-", 2).await;
    write_space(a.http, "photos", "ph2-", 2).await;
    converge_spaces(&[
        (
            "A",
            a.http,
            counts(&[("private", 70), ("photos", 16), ("family", 30)]),
        ),
        ("B", b.http, counts(&[("other", 25), ("family", 30)])),
        ("C", c.http, counts(&[("photos", 16), ("family", 30)])),
    ])
    .await;
    // Nor did a private entity reach B or C by any read path.
    for n in [&b, &c] {
        let mut cl = Client::native(n.http).await;
        cl.send(
            json!({"type": "get", "rid": 1, "space": "private", "collection": "notes", "id": "p0"}),
        )
        .await;
        let e = cl.recv().await;
        assert!(e["fields"].as_object().is_none_or(|f| f.is_empty()), "{e}");
    }
}

/// A connection still proving membership when the relay stops is closed
/// at once, with the reason. Before, nothing in the proof or the hello
/// watched the stop signal: the accept loop gave up on it after 2 s and
/// aborted it, which closed it without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_under_way_is_closed_with_a_reason_when_the_relay_stops() {
    let mut a = Node::start(&[], SECRET);
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quic_client(b"outpost-mesh/1"));
    let conn = tokio::time::timeout(
        Duration::from_secs(10),
        ep.connect(a.mesh, "outpost").unwrap(),
    )
    .await
    .expect("an answer")
    .expect("the QUIC handshake");
    // One byte of a proof frame, and no more: the relay waits for the rest.
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0]).await.unwrap();
    let http = a.http;
    wait_until(5, "the connection holds a handshake place", || async {
        handshakes(http).await[0] == 1
    })
    .await;

    let stopping = tokio::task::spawn_blocking(move || {
        a.stop();
    });
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .expect("closed when the relay stops");
    match closed {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(&c.reason[..], b"relay shutting down", "{c:?}")
        }
        other => panic!("closed otherwise: {other}"),
    }
    stopping.await.unwrap();
}

/// Connections that fail their membership proof are logged at most once a
/// second, the next line counting those left out: anyone who can reach the
/// port can cause them, and a line or two each was a flood of log writes
/// (an SD card's). The metric still counts every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_handshakes_are_logged_at_most_once_a_second() {
    let a = Node::start(&[], SECRET);
    const PROBES: u64 = 20;
    let started = std::time::Instant::now();
    for _ in 0..PROBES {
        assert!(quic_probe(a.mesh, b"outpost-mesh/1", Some(&[0xff; 64])).await);
    }
    let burst = started.elapsed();
    // One more after the limiter's second: its line counts the rest.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(quic_probe(a.mesh, b"outpost-mesh/1", Some(&[0xff; 64])).await);
    let http = a.http;
    wait_until(5, "every refusal counted", || async {
        metric_in(
            &http_get(http, "/metrics").await.1,
            "outpost_mesh_refused_total ",
        ) > PROBES
    })
    .await;

    let log = std::fs::read_to_string(a.log()).unwrap();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("failed before its hello"))
        .collect();
    let bound = burst.as_secs() + 2;
    assert!(
        !lines.is_empty() && lines.len() as u64 <= bound,
        "{} lines for {} failed handshakes in {burst:?}:\n{}",
        lines.len(),
        PROBES + 1,
        lines.join("\n")
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("similar_since_last=") && !l.contains("similar_since_last=0")),
        "no line counts the ones left out:\n{}",
        lines.join("\n")
    );
    assert!(
        !log.contains("mesh peer refused"),
        "refusals are logged once, by the limited line"
    );
}

/// Connect with QUIC using `alpn`, optionally send `garbage` on a stream;
/// true if the relay refused the handshake or closed the connection.
async fn quic_probe(target: SocketAddr, alpn: &[u8], garbage: Option<&[u8]>) -> bool {
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quic_client(alpn));
    let conn = tokio::time::timeout(
        Duration::from_secs(10),
        ep.connect(target, "outpost").unwrap(),
    )
    .await
    .expect("an answer");
    let Ok(conn) = conn else { return true };
    let Some(garbage) = garbage else { return false };
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    let _ = send.write_all(garbage).await;
    // The relay closes within its 10 s proof deadline at the latest.
    tokio::time::timeout(Duration::from_secs(15), conn.closed())
        .await
        .is_ok()
}

/// A QUIC client offering `alpn` that takes any server certificate.
fn quic_client(alpn: &[u8]) -> quinn::ClientConfig {
    use std::sync::Arc;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    quinn::ClientConfig::new(Arc::new(quic))
}

/// `n` incoming QUIC connections to `target` that never finish their
/// handshake, through a UDP proxy that sends each client's datagrams to
/// the relay from its own socket on address `from`. With `validated`, the
/// proxy passes the client's first Initial, the relay's answer to it (a
/// Retry) and the client's second Initial (with the Retry's token), then
/// nothing more either way: the relay has validated the address and waits
/// for a handshake that never comes. Without, it passes only the first
/// Initial and nothing back, as from a forged source address: the relay's
/// Retry goes into the void.
struct Stalled {
    _clients: Vec<(quinn::Endpoint, quinn::Connecting)>,
    proxy: tokio::task::JoinHandle<()>,
}

impl Drop for Stalled {
    fn drop(&mut self) {
        self.proxy.abort();
    }
}

async fn stalled(target: SocketAddr, from: &str, n: usize, validated: bool) -> Stalled {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    use std::sync::Arc;
    let front = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let front_addr = front.local_addr().unwrap();
    let from = from.to_string();
    let proxy = tokio::spawn(async move {
        // Per client: its socket towards the relay, datagrams passed, and
        // whether the relay's first answer went back to it.
        let mut clients: HashMap<SocketAddr, (Arc<tokio::net::UdpSocket>, usize, Arc<AtomicBool>)> =
            HashMap::new();
        let mut pumps = tokio::task::JoinSet::new();
        let mut buf = vec![0u8; 65536];
        while let Ok((len, client)) = front.recv_from(&mut buf).await {
            if let std::collections::hash_map::Entry::Vacant(slot) = clients.entry(client) {
                let back = Arc::new(
                    tokio::net::UdpSocket::bind(format!("{from}:0"))
                        .await
                        .unwrap(),
                );
                let answered = Arc::new(AtomicBool::new(false));
                if validated {
                    let (back, front, answered) = (back.clone(), front.clone(), answered.clone());
                    pumps.spawn(async move {
                        let mut buf = vec![0u8; 65536];
                        if let Ok(len) = back.recv(&mut buf).await {
                            let _ = front.send_to(&buf[..len], client).await;
                            answered.store(true, SeqCst);
                        }
                        // Everything after the Retry is dropped.
                        while back.recv(&mut buf).await.is_ok() {}
                    });
                }
                slot.insert((back, 0, answered));
            }
            let (back, passed, answered) = clients.get_mut(&client).unwrap();
            // The first Initial; after the Retry went back, the second.
            let pass = *passed == 0 || (*passed == 1 && answered.load(SeqCst));
            if pass {
                *passed += 1;
                let _ = back.send_to(&buf[..len], target).await;
            }
        }
    });
    let cfg = quic_client(b"outpost-mesh/1");
    let clients = (0..n)
        .map(|_| {
            let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
            ep.set_default_client_config(cfg.clone());
            let connecting = ep.connect(front_addr, "outpost").unwrap();
            (ep, connecting)
        })
        .collect();
    Stalled {
        _clients: clients,
        proxy,
    }
}

/// Mesh handshake figures of a relay: (in flight, refused per address,
/// refused relay-wide, timed out, sessions established).
async fn handshakes(addr: SocketAddr) -> [u64; 5] {
    let (_, m) = http_get(addr, "/metrics").await;
    let refused = "outpost_mesh_handshakes_refused_total";
    [
        metric_in(&m, "outpost_mesh_handshakes "),
        metric_in(
            &m,
            &format!("{refused}{{reason=\"max_handshakes_per_ip\"}}"),
        ),
        metric_in(&m, &format!("{refused}{{reason=\"max_handshakes\"}}")),
        metric_in(&m, "outpost_mesh_handshake_timeouts_total "),
        metric_in(&m, "outpost_mesh_sessions_total "),
    ]
}

/// Incoming QUIC connections from forged addresses hold nothing (a Retry
/// they never see); those that stall in their handshake after validating
/// their address stay within `mesh.max_handshakes` and
/// `mesh.max_handshakes_per_ip`, are refused beyond them, are dropped after
/// `mesh.handshake_timeout`, and a real peer connects and syncs while some
/// are held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_stalled_quic_handshakes_stays_within_its_bounds() {
    use std::time::Instant;
    const TIMEOUT: Duration = Duration::from_secs(5);
    let a = Node::start_with(
        &[],
        SECRET,
        "max_handshakes = 8\nmax_handshakes_per_ip = 3\nhandshake_timeout = \"5s\"\n",
    );
    let data = writes("flood", 10, "a");
    write_all(a.http, &data).await;
    let http = a.http;
    let wait_for = |want: [u64; 5], what: &'static str| async move {
        wait_until(3, what, || async { handshakes(http).await == want }).await
    };

    // Phase 0: ten from a forged address (they never see the relay's
    // Retry): each is answered statelessly and none holds a place.
    let forged = stalled(a.mesh, "127.0.0.5", 10, false).await;
    wait_until(3, "ten Retries", || async {
        metric_in(
            &http_get(http, "/metrics").await.1,
            "outpost_mesh_retries_total ",
        ) >= 10
    })
    .await;
    assert_eq!(handshakes(http).await, [0, 0, 0, 0, 0]);
    drop(forged);

    // Phase 1: ten from each of three addresses, each past its Retry. Three
    // of each of the first two are held (per address), then two of the
    // third (relay-wide).
    let t0 = Instant::now();
    let f2 = stalled(a.mesh, "127.0.0.2", 10, true).await;
    wait_for([3, 7, 0, 0, 0], "3 held from .2").await;
    let f3 = stalled(a.mesh, "127.0.0.3", 10, true).await;
    wait_for([6, 14, 0, 0, 0], "3 more held from .3").await;
    let f4 = stalled(a.mesh, "127.0.0.4", 10, true).await;
    wait_for([8, 14, 8, 0, 0], "2 more from .4, the rest refused").await;
    // Each is dropped after the timeout, not before; never more than 8.
    let mut first_drop = None;
    loop {
        let [held, _, _, _, _] = handshakes(a.http).await;
        assert!(held <= 8, "{held} handshakes held");
        if held < 8 && first_drop.is_none() {
            first_drop = Some(t0.elapsed());
        }
        if held == 0 {
            break;
        }
        assert!(
            t0.elapsed() < TIMEOUT + Duration::from_secs(5),
            "stalled handshakes still held after {:?}",
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first_drop = first_drop.unwrap();
    assert!(
        first_drop >= TIMEOUT - Duration::from_millis(300),
        "a handshake was dropped after {first_drop:?}, before the timeout"
    );
    assert_eq!(handshakes(a.http).await, [0, 14, 8, 8, 0]);
    drop((f2, f3, f4));

    // Phase 2: a real peer dials while stalled handshakes are held.
    let mesh = a.mesh;
    let b = tokio::task::spawn_blocking(move || Node::start(&[mesh], SECRET));
    let f2 = stalled(a.mesh, "127.0.0.2", 10, true).await;
    let t1 = Instant::now();
    wait_until(3, "7 refused from .2 again", || async {
        handshakes(http).await[1] == 21
    })
    .await;
    let b = b.await.unwrap();
    wait_until(10, "B's mesh session", || async {
        handshakes(a.http).await[4] == 1
    })
    .await;
    assert_eq!(
        handshakes(a.http).await,
        [3, 21, 8, 8, 1],
        "B got its session while the stalled ones were still held ({:?} after them)",
        t1.elapsed()
    );
    converge(&[a.http, b.http], 10, &ids(&[&data])).await;
    wait_until(10, "the second flood dropped", || async {
        handshakes(a.http).await == [0, 21, 8, 11, 1]
    })
    .await;
    drop(f2);
}

#[derive(Debug)]
struct NoVerify(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
