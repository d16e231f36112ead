//! The app owns every task (issue 15): a relay with a live connection of
//! every kind shuts down with every one of its tasks ended by itself, within
//! the grace period; and a flood of silent TLS handshakes stays within the
//! handshake bounds, each dropped after the header timeout, while a normal
//! client still connects; and a store read that hangs holds no async
//! worker (issue 15's blocking-read audit, outside the client endpoints).

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use outpost::app::Relay;
use outpost::auth::Scope;
use serde_json::{json, Value};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const MESH_SECRET: &str = "mesh-secret-0123456789";

async fn tls(
    c: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    from: Ipv4Addr,
) -> TlsStream<TcpStream> {
    let tcp = connect_from(from, addr).await;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    c.connect(name, tcp).await.expect("TLS handshake")
}

async fn connect_from(ip: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind((ip, 0).into()).unwrap();
    s.connect(to).await.expect("connect")
}

type Wss = WebSocketStream<TlsStream<TcpStream>>;

/// A native client over wss://, past its welcome.
async fn wss_native(c: &tokio_rustls::TlsConnector, addr: SocketAddr, from: Ipv4Addr) -> Wss {
    let stream = tls(c, addr, from).await;
    let (mut ws, _) = tokio_tungstenite::client_async(format!("wss://{addr}/ws"), stream)
        .await
        .expect("websocket upgrade over TLS");
    let w = next_json(&mut ws).await;
    assert_eq!(w["type"], "welcome", "{w}");
    ws
}

async fn next_json(ws: &mut Wss) -> Value {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = m {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

/// The close code the relay sends (None: the stream ended without one).
async fn close_code(ws: &mut Wss) -> Option<u16> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => return f.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

/// An HTTP/1.1 GET over TLS that streams (SSE); returns the stream once the
/// 200 head is in.
async fn tls_stream_get(
    c: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    path: &str,
) -> TlsStream<TcpStream> {
    let mut s = tls(c, addr, Ipv4Addr::LOCALHOST).await;
    let req = format!("GET {path} HTTP/1.1\r\nHost: r\r\nAccept: text/event-stream\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200", "{path}");
    s
}

/// Reads until the relay ends the stream (true) or `WAIT` passes.
async fn ends(mut s: TlsStream<TcpStream>) -> bool {
    let mut sink = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut sink))
        .await
        .is_ok()
}

/// A webhook receiver: answers every request 200 on a kept-alive
/// connection and counts them.
async fn webhook_sink() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let posts = Arc::new(AtomicUsize::new(0));
    let n = posts.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let n = n.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map(|v| v.trim().parse().unwrap())
                        .unwrap_or(0);
                    while buf.len() < end + 4 + len {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    }
                    buf.drain(..end + 4 + len);
                    n.fetch_add(1, Ordering::SeqCst);
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                    if s.write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, posts)
}

/// The settings of `toml`, written as `dir`/outpost.toml and loaded from
/// there as the relay loads its config.
fn settings_in(dir: &Path, toml: &str) -> outpost::config::Settings {
    let path = dir.join("outpost.toml");
    std::fs::write(&path, toml).unwrap();
    outpost::config::Config::load(&path)
        .unwrap()
        .validate()
        .unwrap()
}

async fn start_toml(dir: &Path, toml: &str) -> Relay {
    Relay::start(settings_in(dir, toml)).await.unwrap()
}

/// A relay in `dir` that dials the mesh listener at `mesh_addr`.
async fn mesh_peer(dir: &Path, mesh_addr: std::net::SocketAddr) -> Relay {
    std::fs::create_dir_all(dir).unwrap();
    start_toml(
        dir,
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\ndir = {:?}\n\
             [mesh]\nenabled = true\nlisten = \"127.0.0.1:0\"\nsecret = \"{MESH_SECRET}\"\npeers = [\"{mesh_addr}\"]\nmdns = false\n",
            dir.join("data")
        ),
    )
    .await
}

/// Waits until `relay` lists a replication link of `kind` with `node`.
async fn linked(relay: &Relay, kind: &str, node: u64) {
    let t = Instant::now();
    while !relay
        .state
        .links
        .snapshot()
        .iter()
        .any(|l| l.kind == kind && l.node.load(Ordering::Relaxed) == node)
    {
        assert!(t.elapsed() < Duration::from_secs(20), "no {kind} link");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the relay under test reports from its own runtime.
struct Ran {
    took: Duration,
    alive_after: usize,
}

/// The relay under test runs on a runtime of its own, so the test can ask
/// that runtime, after `Relay::shutdown`, how many tasks are still alive:
/// every task the relay spawned, directly or not, counts there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_every_task_with_live_connections_of_every_kind() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, connector) = tls_certificate(dir.path());
    let admin = token("ops", Scope::Admin, None);

    // The hub this relay forwards to, and its webhook's receiver.
    let hub_dir = dir.path().join("hub");
    std::fs::create_dir_all(&hub_dir).unwrap();
    let hub = start_toml(
        &hub_dir,
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\ndir = {:?}\n[auth]\njwt_secret = \"{SECRET}\"\nanonymous = \"write\"\n",
            hub_dir.join("data")
        ),
    )
    .await;
    let (sink, posts) = webhook_sink().await;

    // The relay under test: TLS listener, mesh, upstream, webhook, retention.
    let a_dir = dir.path().join("a");
    std::fs::create_dir_all(&a_dir).unwrap();
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ntls_cert = {cert:?}\ntls_key = {key:?}\nshutdown_grace = \"5s\"\n\
         [storage]\ndir = {data:?}\nretention = \"1h\"\n\
         [auth]\njwt_secret = \"{SECRET}\"\nanonymous = \"write\"\n\
         [webhook]\nurl = \"http://{sink}/hook\"\n\
         [mesh]\nenabled = true\nlisten = \"127.0.0.1:0\"\nsecret = \"{MESH_SECRET}\"\npeers = []\nmdns = false\n\
         [upstream]\nurl = \"ws://{hub}/ws/replicate\"\ntoken = \"{admin}\"\n",
        data = a_dir.join("data"),
        hub = hub.addr,
    );
    let settings = settings_in(&a_dir, &toml);
    let (up_tx, up_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ran_tx, ran_rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let relay = rt.block_on(Relay::start(settings)).unwrap();
        let node = relay.state.engine.node_id().0;
        let _ = up_tx.send((relay.addr, relay.state.mesh_addr.unwrap(), node));
        let _ = rt.block_on(stop_rx);
        let started = Instant::now();
        rt.block_on(relay.shutdown()).unwrap();
        let took = started.elapsed();
        // QUIC's drivers may take a moment past the endpoint's close.
        let mut alive = rt.metrics().num_alive_tasks();
        let t = Instant::now();
        while alive > 0 && t.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(20));
            alive = rt.metrics().num_alive_tasks();
        }
        let _ = ran_tx.send(Ran {
            took,
            alive_after: alive,
        });
        // Dropping the runtime now drops nothing that was still running.
        drop(rt);
    });
    let (addr, mesh_addr, node) = up_rx.await.expect("relay under test started");

    // A mesh peer (QUIC) and an edge forwarding to it over wss://.
    let b = mesh_peer(&dir.path().join("b"), mesh_addr).await;
    let e_dir = dir.path().join("e");
    std::fs::create_dir_all(&e_dir).unwrap();
    let e = start_toml(
        &e_dir,
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\ndir = {:?}\n\
             [upstream]\nurl = \"wss://{addr}/ws/replicate\"\ntoken = \"{admin}\"\nca_file = {cert:?}\n",
            e_dir.join("data")
        ),
    )
    .await;

    // Clients over TLS: native WebSockets (one subscribed), seed 004's SSE
    // stream, the status stream, an idle kept-alive HTTPS connection and
    // one still in its TLS handshake.
    let mut subscribed = wss_native(&connector, addr, Ipv4Addr::LOCALHOST).await;
    subscribed
        .send(Message::Text(
            json!({"type": "subscribe", "space": "s", "since": 0, "rid": "sub"})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    while next_json(&mut subscribed).await["type"] != "synced" {}
    let mut writer = wss_native(&connector, addr, Ipv4Addr::LOCALHOST).await;
    // A seed 003 key (collection "kv"): the webhook posts it.
    writer
        .send(Message::Text(
            json!({"type": "push", "rid": "w", "space": "s", "changes": [
                {"collection": "kv", "id": "k", "op": "patch", "fields": {"value": 1}}]})
            .to_string()
            .into(),
        ))
        .await
        .unwrap();
    while next_json(&mut writer).await["type"] != "ack" {}
    let sse = tls_stream_get(&connector, addr, "/api/sync/events?space=s").await;
    let status = tls_stream_get(
        &connector,
        addr,
        &format!("/v1/status/stream?token={admin}"),
    )
    .await;
    let mut idle = tls(&connector, addr, Ipv4Addr::LOCALHOST).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: r\r\n\r\n")
        .await
        .unwrap();
    let mut ok = [0u8; 12];
    idle.read_exact(&mut ok).await.unwrap();
    assert_eq!(&ok, b"HTTP/1.1 200");
    let handshaking = TcpStream::connect(addr).await.unwrap();

    // Every link is up: the mesh peer, the edge, and this relay at its hub;
    // the webhook has delivered.
    linked(&b, "mesh", node).await;
    linked(&e, "upstream", node).await;
    linked(&hub, "edge", node).await;
    let t = Instant::now();
    while posts.load(Ordering::SeqCst) == 0 {
        assert!(t.elapsed() < WAIT, "the webhook never posted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    stop_tx.send(()).unwrap();
    let (c1, c2, sse_ended, status_ended) = tokio::join!(
        close_code(&mut subscribed),
        close_code(&mut writer),
        ends(sse),
        ends(status)
    );
    let ran = tokio::time::timeout(Duration::from_secs(30), ran_rx)
        .await
        .expect("shutdown in bounded time")
        .unwrap();
    thread.join().unwrap();
    assert_eq!((c1, c2), (Some(1001), Some(1001)));
    assert!(sse_ended, "the SSE stream did not end");
    assert!(status_ended, "the status stream did not end");
    // Every task ended by itself: nothing waited out the 5 s grace period
    // to be aborted, and the runtime has no task left.
    assert!(
        ran.took < Duration::from_secs(4),
        "shutdown took {:?}",
        ran.took
    );
    assert_eq!(ran.alive_after, 0, "tasks alive after shutdown");
    drop((idle, handshaking));
    // The peers see the relay go.
    for r in [&b, &e, &hub] {
        let t = Instant::now();
        while r
            .state
            .links
            .snapshot()
            .iter()
            .any(|l| l.node.load(Ordering::Relaxed) == node)
        {
            assert!(t.elapsed() < Duration::from_secs(20), "a link stayed up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for r in [b, e, hub] {
        r.shutdown().await.unwrap();
    }
}

/// The relay counts a header timeout and releases the handshake slot
/// just after the socket closes: wait (bounded) until `timeouts` are
/// counted and no handshake is held.
async fn settled(metric: &impl Fn(&str) -> u64, timeouts: u64) {
    let t = Instant::now();
    loop {
        let now = (
            metric("outpost_header_timeouts_total"),
            metric("outpost_handshakes"),
        );
        if now == (timeouts, 0) {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "(timeouts counted, handshakes held) = {now:?}, want ({timeouts}, 0)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A flood of clients that connect and send nothing, not even a TLS
/// ClientHello: no more of them are held than the handshake bounds allow
/// (per address, and in all), the rest are closed at once, each held one
/// is dropped after `server.header_timeout`, and a normal client connects
/// meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_silent_tls_handshakes_stays_within_its_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, connector) = tls_certificate(dir.path());
    const TIMEOUT: Duration = Duration::from_secs(2);
    let mut cfg = config(dir.path());
    cfg.server.tls_cert = Some(cert);
    cfg.server.tls_key = Some(key);
    cfg.server.header_timeout = "2s".into();
    cfg.server.max_handshakes = 12;
    cfg.server.max_handshakes_per_ip = 4;
    let relay = start(cfg).await;
    let addr = relay.addr;
    let metric = |name: &str| metric_in(&relay.state.net.render(), name);

    // Phase 1: 30 silent connections from each of two addresses; 4 each
    // are held, the rest closed at once. A client from a third address
    // connects over TLS and WebSocket while they are held.
    let flood = |ips: Vec<Ipv4Addr>, n: usize| async move {
        let mut socks = Vec::new();
        for ip in ips {
            for _ in 0..n {
                socks.push((Instant::now(), connect_from(ip, addr).await));
            }
        }
        socks
    };
    let started = Instant::now();
    let socks = flood(
        vec![Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)],
        30,
    )
    .await;
    let (refused, held) = sort(socks).await;
    let mut ws = wss_native(&connector, addr, Ipv4Addr::LOCALHOST).await;
    assert!(
        started.elapsed() < TIMEOUT,
        "the flood took {:?}",
        started.elapsed()
    );
    assert_eq!((refused, held.len()), (52, 8));
    assert_eq!(metric("outpost_handshakes"), 8);
    assert_eq!(
        metric("outpost_connections_refused_total{reason=\"max_handshakes_per_ip\"}"),
        52
    );
    dropped_after_timeout(held, TIMEOUT).await;
    settled(&metric, 8).await;
    // The normal client is served after the flood is gone too.
    ws.send(Message::Text(
        json!({"type": "push", "rid": "w", "space": "s", "changes": [
            {"collection": "notes", "id": "n", "op": "patch", "fields": {"a": 1}}]})
        .to_string()
        .into(),
    ))
    .await
    .unwrap();
    while next_json(&mut ws).await["type"] != "ack" {}

    // Phase 2: four each from five addresses (20, within the per-address
    // bound) against the relay-wide bound of 12.
    let ips = (4..9).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect();
    let started = Instant::now();
    let socks = flood(ips, 4).await;
    let (refused, held) = sort(socks).await;
    assert!(
        started.elapsed() < TIMEOUT,
        "the flood took {:?}",
        started.elapsed()
    );
    assert_eq!((refused, held.len()), (8, 12));
    assert_eq!(metric("outpost_handshakes"), 12);
    assert_eq!(
        metric("outpost_connections_refused_total{reason=\"max_handshakes\"}"),
        8
    );
    dropped_after_timeout(held, TIMEOUT).await;
    settled(&metric, 20).await;
    // And once they are gone a new client connects.
    let _ws2 = wss_native(&connector, addr, Ipv4Addr::new(127, 0, 0, 2)).await;
    drop(ws);
    relay.shutdown().await.unwrap();
}

/// Sorts flood sockets into those closed at once (refused) and those
/// held open; returns (refused, held).
async fn sort(socks: Vec<(Instant, TcpStream)>) -> (usize, Vec<(Instant, TcpStream)>) {
    // Let the relay reach every one of them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut refused = 0;
    let mut held = Vec::new();
    for (at, mut s) in socks {
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => refused += 1,
            Ok(Ok(n)) => panic!("{n} bytes to a silent TLS client"),
            Err(_) => held.push((at, s)),
        }
    }
    (refused, held)
}

/// Every held socket is closed after the header timeout (counted from its
/// connect), not before and not much after.
async fn dropped_after_timeout(held: Vec<(Instant, TcpStream)>, timeout: Duration) {
    let waits = held.into_iter().map(|(at, mut s)| async move {
        let mut buf = [0u8; 64];
        let r = tokio::time::timeout(timeout * 3, s.read(&mut buf)).await;
        assert!(
            matches!(r, Ok(Ok(0)) | Ok(Err(_))),
            "a silent connection was not closed: {r:?}"
        );
        at.elapsed()
    });
    for d in futures_util::future::join_all(waits).await {
        assert!(
            d >= timeout - Duration::from_millis(100) && d < timeout * 2,
            "held {d:?}, header_timeout is {timeout:?}"
        );
    }
}

/// A store read that hangs (as on a stuck disk) holds only what waits for
/// it, never an async worker: on a relay whose runtime has one worker,
/// with every store read parked (`Engine::hold_reads`), `/healthz`,
/// `/metrics`, `/v1/status`, the status stream and a mesh peer's hello all
/// wait, and a request that reads nothing (`/ui/app.js`) is still
/// answered at once. Any one of those reads made on the worker would hold
/// it, and nothing would be answered. Released, each completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_store_read_holds_no_async_worker() {
    let dir = tempfile::tempdir().unwrap();
    let a_dir = dir.path().join("a");
    std::fs::create_dir_all(&a_dir).unwrap();
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\ndir = {:?}\n\
         [mesh]\nenabled = true\nlisten = \"127.0.0.1:0\"\nsecret = \"{MESH_SECRET}\"\nmdns = false\n",
        a_dir.join("data")
    );
    let settings = settings_in(&a_dir, &toml);
    let (up_tx, up_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let relay = rt.block_on(Relay::start(settings)).unwrap();
        let _ = up_tx.send((
            relay.addr,
            relay.state.mesh_addr.unwrap(),
            relay.state.engine.clone(),
        ));
        let _ = rt.block_on(stop_rx);
        rt.block_on(relay.shutdown()).unwrap();
    });
    let (addr, mesh_addr, engine) = up_rx.await.expect("relay under test started");
    let mut c = Client::native(addr).await;
    for id in ["a", "b", "c"] {
        let ack = c.put("s", id, json!({"v": 1})).await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    drop(c);

    let hold = engine.hold_reads();
    let get = |path: &'static str| tokio::spawn(async move { http_get(addr, path).await });
    let (health, metrics, status) = (get("/healthz"), get("/metrics"), get("/v1/status"));
    let stream = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!("GET /v1/status/stream HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("event: status") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "the stream ended");
            got.extend_from_slice(&buf[..n]);
        }
    });
    let b = mesh_peer(&dir.path().join("b"), mesh_addr).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (what, t) in [
        ("/healthz", &health),
        ("/metrics", &metrics),
        ("/v1/status", &status),
    ] {
        assert!(!t.is_finished(), "{what} answered with its store read held");
    }
    assert!(!stream.is_finished(), "a status event came with reads held");
    // The worker is free: what reads nothing is answered meanwhile.
    let (code, js) = tokio::time::timeout(Duration::from_secs(3), http_get(addr, "/ui/app.js"))
        .await
        .expect("/ui/app.js answered while store reads are held");
    assert_eq!(code, 200);
    assert!(!js.is_empty());
    assert_eq!(
        b.state.engine.log_len().unwrap(),
        0,
        "the peer synced with the relay's reads held"
    );

    drop(hold);
    assert_eq!(health.await.unwrap(), (200, "ok\n".to_string()));
    let (code, m) = metrics.await.unwrap();
    assert_eq!(
        (code, metric_in(&m, "outpost_log_entries ")),
        (200, 3),
        "{m}"
    );
    let (code, st) = status.await.unwrap();
    let st: Value = serde_json::from_str(&st).unwrap();
    assert_eq!((code, &st["log"]["entries"]), (200, &json!(3)), "{st}");
    tokio::time::timeout(WAIT, stream)
        .await
        .expect("a status event once reads go on")
        .unwrap();
    let t = Instant::now();
    while b.state.engine.log_len().unwrap() < 3 {
        assert!(t.elapsed() < WAIT, "the peer did not sync");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    b.shutdown().await.unwrap();
    stop_tx.send(()).unwrap();
    tokio::task::spawn_blocking(move || thread.join().unwrap())
        .await
        .unwrap();
}
