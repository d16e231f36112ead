//! Issue 12, disclosure and protocol hygiene: operator endpoints need an
//! admin token under `anonymous = "none"`, invalid UTF-8 closes with 1007 on
//! every WebSocket endpoint, a subscribed writer's push -> ack does not wait
//! for Nagle, and `check-config` names out-of-range keys and bad log
//! filters.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use outpost::auth::Scope;
use serde_json::json;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn status_and_metrics_need_an_admin_token_when_anonymous_is_none() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(auth_config(dir.path())).await;
    let admin = token("ops", Scope::Admin, None);
    let writer = token("app", Scope::Write, None);
    for path in ["/v1/status", "/metrics"] {
        let (code, body) = http_get(relay.addr, path).await;
        assert_eq!(code, 401, "{path} without a token: {body}");
        assert!(!body.contains("node_id"), "{body}");
        let bearer = format!("Bearer {writer}");
        let (code, _) = http(relay.addr, "GET", path, &[("Authorization", &bearer)], None).await;
        assert_eq!(code, 403, "{path} with a write token");
        let bearer = format!("Bearer {admin}");
        let (code, body) = http(relay.addr, "GET", path, &[("Authorization", &bearer)], None).await;
        assert_eq!(code, 200, "{path} with an admin token: {body}");
        let (code, _) = http_get(relay.addr, &format!("{path}?token={admin}")).await;
        assert_eq!(code, 200, "{path}?token=");
    }
    let (code, body) = http_get(relay.addr, "/v1/status").await;
    assert_eq!(code, 401, "{body}");
    // /healthz stays open and says only healthy or not.
    let (code, body) = http_get(relay.addr, "/healthz").await;
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    relay.shutdown().await.unwrap();
}

/// A text frame whose payload is not UTF-8 (the client library would not
/// build one, so it is sent as a raw frame).
fn bad_text() -> Message {
    Message::Frame(Frame::message(
        vec![b'{', 0xff, 0xfe, b'}'],
        OpCode::Data(Data::Text),
        true,
    ))
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007_on_every_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(auth_config(dir.path())).await;
    let admin = token("ops", Scope::Admin, None);
    let paths = [
        "/ws",
        "/ws/sync?space=s",
        "/ws/atome-sync?space=s&clientId=A",
        "/ws/config?space=s",
        "/v1/sync/w",
        "/api/ws?space=s",
        "/api/sync/ws?space=s",
        "/api/field-sync/ws?space=s",
        "/ws/replicate",
    ];
    for path in paths {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut c = Client::connect(relay.addr, &format!("{path}{sep}token={admin}")).await;
        c.ws.send(bad_text()).await.expect("send");
        let code = tokio::time::timeout(WAIT, async {
            while let Some(m) = c.ws.next().await {
                match m {
                    Ok(Message::Close(Some(f))) => return Some(u16::from(f.code)),
                    Ok(Message::Close(None)) | Err(_) => return None,
                    Ok(_) => continue,
                }
            }
            None
        })
        .await
        .unwrap_or_else(|_| panic!("{path}: no close in time"));
        assert_eq!(code, Some(1007), "{path}");
    }
    // The relay keeps serving.
    let mut c = Client::connect(relay.addr, &format!("/ws?token={admin}")).await;
    assert_eq!(c.recv().await["type"], "welcome");
    relay.shutdown().await.unwrap();
}

/// A writer subscribed to the space it writes gets an ack and its change
/// back per push: two small frames in a row, the second of which Nagle
/// holds until the client's delayed ACK (at least 40 ms) without TCP_NODELAY.
/// Measured: median 49 ms without it; with it about 1 ms on a quiet machine
/// and 11 ms at a load average of 19 on two cores, hence the 30 ms bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribed_writer_does_not_wait_for_delayed_acks() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    // Relaxed durability: the figure measured is the network path, not fsync.
    cfg.storage.durability = outpost::store::Durability::Relaxed;
    let relay = start(cfg).await;
    let mut c = Client::native(relay.addr).await;
    c.subscribe("rt", 0).await;
    let mut took = Vec::new();
    for i in 0..40 {
        let t = Instant::now();
        c.send(json!({"type": "push", "rid": i, "space": "rt",
                      "changes": [{"collection": "n", "id": format!("k{i}"), "op": "patch", "fields": {"i": i}}]}))
            .await;
        let (mut ack, mut change) = (false, false);
        while !(ack && change) {
            let v = c.recv().await;
            match v["type"].as_str() {
                Some("ack") => ack = true,
                Some("change") => change = true,
                _ => {}
            }
        }
        took.push(t.elapsed());
    }
    took.sort();
    let median = took[took.len() / 2];
    println!(
        "push -> ack + change: median {median:?}, max {:?}",
        took.last().unwrap()
    );
    assert!(
        median < Duration::from_millis(30),
        "median round trip {median:?}: Nagle and delayed ACKs (no TCP_NODELAY?)"
    );
    relay.shutdown().await.unwrap();
}

#[test]
fn check_config_names_out_of_range_keys_and_bad_log_filters() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[storage]\nmin_free_mb = 18446744073709551615\n",
            "storage.min_free_mb",
        ),
        (
            "[storage]\ncache_mb = 18446744073709551615\n",
            "storage.cache_mb",
        ),
        ("[server]\nmax_connections = 0\n", "server.max_connections"),
        ("[log]\nlevel = \"loud==\"\n", "log.level"),
    ];
    for (text, key) in cases {
        let file = dir.path().join("c.toml");
        std::fs::write(&file, text).unwrap();
        let (code, _, err) = run_cli(&["check-config", "--config", file.to_str().unwrap()]);
        assert_eq!(code, 1, "{text}: {err}");
        assert!(err.contains(&format!("`{key}`")), "{text}: {err}");
    }
}

/// Read until the server closes; returns the close code (None: no close
/// frame) and how many pings came first.
async fn close_code(c: &mut Client) -> (Option<u16>, usize) {
    let mut pings = 0;
    let code = tokio::time::timeout(WAIT, async {
        while let Some(m) = c.ws.next().await {
            match m {
                Ok(Message::Ping(_)) => pings += 1,
                Ok(Message::Close(f)) => return f.map(|f| u16::from(f.code)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .expect("closed in time");
    (code, pings)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_websockets_close_after_the_idle_timeout_and_answering_ones_stay() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.server.idle_timeout = "2s".into();
    let relay = start(cfg).await;
    // One of each dialect loop: native, seed 003, seed 004, seeds 000-002.
    let paths = ["/ws", "/v1/sync/w", "/api/ws?space=s", "/ws/sync?space=s"];
    let mut silent = Vec::new();
    let mut live = Vec::new();
    for p in paths {
        silent.push(Client::connect(relay.addr, p).await);
        live.push(Client::connect(relay.addr, p).await);
    }
    // The live ones keep reading (their library answers the relay's pings).
    let readers = live.into_iter().map(|mut c| async move {
        let mut pings = 0;
        let _ = tokio::time::timeout(Duration::from_millis(3500), async {
            while let Some(Ok(m)) = c.ws.next().await {
                if matches!(m, Message::Ping(_)) {
                    pings += 1;
                }
            }
        })
        .await;
        (c, pings)
    });
    let live = futures_util::future::join_all(readers).await;
    for ((_, pings), p) in live.iter().zip(paths) {
        assert!(*pings >= 1, "{p}: no keepalive ping in 3.5 s");
    }
    // The silent ones answered nothing: closed with 1001 after a ping.
    for (mut c, p) in silent.into_iter().zip(paths) {
        let (code, pings) = close_code(&mut c).await;
        assert_eq!(code, Some(1001), "{p}");
        assert!(pings >= 1, "{p}: closed without a ping first");
    }
    // The live ones are still served.
    let (mut native, _) = live.into_iter().next().unwrap();
    let ack = native.put("s", "k", json!({"alive": true})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let m = http_get(relay.addr, "/metrics").await.1;
    assert!(m.contains("outpost_idle_timeouts_total 4\n"), "{m}");
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_request_whose_body_never_comes_gets_408() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.server.request_timeout = "500ms".into();
    let relay = start(cfg).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    s.write_all(
        b"POST /api/atome/create?space=s HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"kind\":",
    )
    .await
    .unwrap();
    let t = Instant::now();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("answered in time")
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(t.elapsed() < Duration::from_secs(3));
    let m = http_get(relay.addr, "/metrics").await.1;
    assert!(m.contains("outpost_request_timeouts_total 1\n"), "{m}");
    relay.shutdown().await.unwrap();
}

/// The TLS listener bounds its stages the same way: a connection that never
/// starts its TLS handshake, and one that finishes it but sends half a
/// request, are both closed after `server.header_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshakes_and_headers_are_bounded_by_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, connector) = tls_certificate(dir.path());
    let mut cfg = config(dir.path());
    cfg.server.tls_cert = Some(cert);
    cfg.server.tls_key = Some(key);
    cfg.server.header_timeout = "1s".into();
    let relay = start(cfg).await;
    let addr = relay.addr;

    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let started = Instant::now();
    // Silent: TCP only, no ClientHello.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Half a request inside TLS.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut half = connector.connect(name.clone(), tcp).await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: r\r\n")
        .await
        .unwrap();
    half.flush().await.unwrap();

    let mut buf = Vec::new();
    let r = tokio::time::timeout(WAIT, silent.read_to_end(&mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "the silent connection was not closed: {r:?}"
    );
    let mut buf = Vec::new();
    let r = tokio::time::timeout(WAIT, half.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "the half request was not closed");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "closed after {took:?}, header_timeout is 1 s"
    );

    // A complete request over TLS is served.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut ok = connector.connect(name, tcp).await.unwrap();
    ok.write_all(b"GET /healthz HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, ok.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("ok\n"), "{text}");
    let m = relay.state.net.render();
    assert!(m.contains("outpost_header_timeouts_total 2\n"), "{m}");
    relay.shutdown().await.unwrap();
}

/// The WebSocket handshake is the relay's own (net/upgrade.rs): requests
/// that are not a version-13 upgrade are refused with a status and a
/// reason, and a good one gets the accept key of RFC 6455's own example.
#[tokio::test]
async fn websocket_handshakes_are_checked_and_answered_per_rfc_6455() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let key = ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==");
    let up = [("Connection", "Upgrade"), ("Upgrade", "websocket")];
    let v13 = ("Sec-WebSocket-Version", "13");
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: [Case; 5] = [
        // Refused by the router: the endpoints are GET routes.
        ("POST", vec![up[0], up[1], v13, key], 405, ""),
        ("GET", vec![up[1], v13, key], 400, "Connection"),
        ("GET", vec![up[0], v13, key], 400, "Upgrade"),
        (
            "GET",
            vec![up[0], up[1], ("Sec-WebSocket-Version", "8"), key],
            400,
            "13",
        ),
        ("GET", vec![up[0], up[1], v13], 400, "Sec-WebSocket-Key"),
    ];
    for (method, headers, status, says) in cases {
        let (code, body) = http(relay.addr, method, "/ws", &headers, None).await;
        assert_eq!(code, status, "{method} {headers:?}: {body}");
        assert!(body.contains(says), "{method} {headers:?}: {body:?}");
    }
    let mut s = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {}\r\n\r\n",
        relay.addr, key.1
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte))
            .await
            .expect("a 101 in time")
            .unwrap();
        assert_eq!(n, 1, "connection closed in the handshake: {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    drop(s);
    relay.shutdown().await.unwrap();
}
