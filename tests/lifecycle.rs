//! The connection lifecycle that every client endpoint shares (issue 15),
//! run against each of them: a client that stops reading is cut off after
//! the write timeout while the others of its space carry on; an idle
//! connection is pinged, then closed; oversized frames close with 1009;
//! a lagging subscriber is resynced the documented way (native: `resync`;
//! every other endpoint: the gap replayed, each change once); shutdown
//! gives every connection its close frame (and ends the SSE stream) in
//! bounded time. (That a replay
//! never echoes a client's own writes is `conn::feed`'s unit test.)
//! (Invalid UTF-8 -> 1007 on every endpoint is in tests/hardening.rs.)

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// The space (or workspace) every case uses.
const SPACE: &str = "life";

/// One client endpoint: where to connect, what to send to start following
/// the space, and what a native write must look like to reach it.
struct Endpoint {
    path: &'static str,
    subscribe: Option<Value>,
    collection: &'static str,
    fields: fn(&str) -> Value,
}

fn blob_fields(blob: &str) -> Value {
    json!({"blob": blob})
}

fn kv_fields(blob: &str) -> Value {
    json!({"value": blob})
}

fn revision_fields(blob: &str) -> Value {
    // A revision of user `u` by another device: a sync-event for device `d`.
    json!({"userId": "u", "deviceId": "other", "version": 1, "changeType": "update",
           "changedPaths": [blob], "timestamp": 1})
}

fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint {
            path: "/ws",
            subscribe: Some(json!({"type": "subscribe", "space": SPACE, "since": 0})),
            collection: "notes",
            fields: blob_fields,
        },
        Endpoint {
            path: "/ws/sync?space=life",
            subscribe: None,
            collection: "atome",
            fields: blob_fields,
        },
        Endpoint {
            path: "/ws/atome-sync?space=life",
            subscribe: None,
            collection: "atome",
            fields: blob_fields,
        },
        Endpoint {
            path: "/ws/config?space=life&userId=u&deviceId=d",
            subscribe: None,
            collection: "config_history",
            fields: revision_fields,
        },
        Endpoint {
            path: "/v1/sync/life",
            subscribe: None,
            collection: "kv",
            fields: kv_fields,
        },
        Endpoint {
            path: "/api/ws?space=life",
            subscribe: Some(json!({"type": "subscribe", "entities": ["users"]})),
            collection: "users",
            fields: blob_fields,
        },
        Endpoint {
            path: "/api/sync/ws?space=life",
            subscribe: Some(json!({"type": "subscribe", "entities": ["users"]})),
            collection: "users",
            fields: blob_fields,
        },
        Endpoint {
            path: "/api/field-sync/ws?space=life",
            subscribe: Some(json!({"type": "subscribe_fields", "entities": ["users"]})),
            collection: "users",
            fields: blob_fields,
        },
    ]
}

/// A native push of one write to `collection`; waits for its ack.
async fn write(w: &mut Client, collection: &str, id: &str, fields: Value) {
    w.send(json!({"type": "push", "rid": id, "space": SPACE,
                  "changes": [{"collection": collection, "id": id, "op": "patch", "fields": fields}]}))
        .await;
    let (_, ack) = w.until("ack").await;
    assert_eq!(ack["type"], "ack", "{ack}");
}

/// Connect and start following the space; frames that come first (a
/// greeting, a catch-up) are read for a moment and dropped.
async fn follow(c: &mut Client, e: &Endpoint) {
    if let Some(s) = &e.subscribe {
        c.send(s.clone()).await;
    }
    while c.try_recv(Duration::from_millis(300)).await.is_some() {}
}

/// Read until the server closes; the close code (None: no close frame)
/// and how many pings came first.
async fn close_code(ws: &mut Ws, wait: Duration) -> (Option<u16>, usize) {
    let mut pings = 0;
    let code = tokio::time::timeout(wait, async {
        while let Some(m) = ws.next().await {
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

/// `n` pseudo-random letters and digits (xorshift), so gzip cannot shrink
/// them much.
fn noise(n: usize) -> String {
    const ABC: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ABC[(x % ABC.len() as u64) as usize] as char
        })
        .collect()
}

fn write_config(dir: &std::path::Path, server: &str) -> String {
    let path = dir.join("outpost.toml");
    std::fs::write(
        &path,
        format!("[server]\n{server}\n[storage]\ndurability = \"relaxed\"\n"),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_on_every_endpoint_and_the_others_carry_on() {
    let dir = tempfile::tempdir().unwrap();
    // Lag drops must not end the case before the write timeout does.
    let cfg = write_config(dir.path(), "write_timeout = \"1s\"\nidle_timeout = \"1h\"");
    let log = dir.path().join("relay.log");
    let data = dir.path().join("data");
    let relay = Proc::spawn_logged(
        &[
            "serve",
            "--config",
            &cfg,
            "--listen",
            "127.0.0.1:0",
            "--data",
            data.to_str().unwrap(),
        ],
        &log,
    );
    let addr = relay.addr;
    let mut writer = Client::native(addr).await;
    // Not compressible: the legacy seed-004 endpoints gzip large frames.
    let blob = noise(60_000);
    for (n, e) in endpoints().iter().enumerate() {
        // A stalled client with a small receive buffer, and a healthy one
        // of the same endpoint that reads everything.
        let mut stalled = Client::stalling(addr, e.path).await;
        follow(&mut stalled, e).await;
        let mut healthy = Client::connect(addr, e.path).await;
        follow(&mut healthy, e).await;
        let (seen_tx, mut seen) = tokio::sync::watch::channel(0usize);
        let reader = tokio::spawn(async move {
            let mut frames = 0;
            while let Some(Ok(m)) = healthy.ws.next().await {
                if matches!(m, Message::Text(_) | Message::Binary(_)) {
                    frames += 1;
                    let _ = seen_tx.send(frames);
                }
            }
        });
        let before = metric_in(
            &http_get(addr, "/metrics").await.1,
            "outpost_write_timeouts_total ",
        );
        let deadline = Instant::now() + Duration::from_secs(40);
        let mut cut = false;
        for i in 0..600 {
            let id = format!("e{n}-{i}");
            write(&mut writer, e.collection, &id, (e.fields)(&blob)).await;
            if i % 10 == 9 {
                let m = http_get(addr, "/metrics").await.1;
                if metric_in(&m, "outpost_write_timeouts_total ") > before {
                    cut = true;
                    break;
                }
                assert!(Instant::now() < deadline, "{}: not cut off in time", e.path);
            }
        }
        if !cut {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        let after = metric_in(
            &http_get(addr, "/metrics").await.1,
            "outpost_write_timeouts_total ",
        );
        assert_eq!(
            after,
            before + 1,
            "{}: the stalled client was not cut off",
            e.path
        );
        // The healthy client still gets what is written next.
        let had = *seen.borrow_and_update();
        write(
            &mut writer,
            e.collection,
            &format!("e{n}-last"),
            (e.fields)("small"),
        )
        .await;
        tokio::time::timeout(WAIT, seen.wait_for(|f| *f > had))
            .await
            .unwrap_or_else(|_| panic!("{}: the healthy client got nothing more", e.path))
            .unwrap();
        reader.abort();
        drop(stalled);
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("WARN") && l.contains("client stopped reading")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_pinged_then_closed_on_every_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.server.idle_timeout = "2s".into();
    let relay = start(cfg).await;
    let eps = endpoints();
    let mut silent = Vec::new();
    let mut live = Vec::new();
    for e in &eps {
        silent.push(Client::connect(relay.addr, e.path).await);
        live.push(Client::connect(relay.addr, e.path).await);
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
    for ((_, pings), e) in live.iter().zip(&eps) {
        assert!(*pings >= 1, "{}: no keepalive ping in 3.5 s", e.path);
    }
    for (mut c, e) in silent.into_iter().zip(&eps) {
        let (code, pings) = close_code(&mut c.ws, WAIT).await;
        assert_eq!(code, Some(1001), "{}", e.path);
        assert!(pings >= 1, "{}: closed without a ping first", e.path);
    }
    // The live ones are still open and served.
    for ((mut c, _), e) in live.into_iter().zip(&eps) {
        c.ws.send(Message::Ping(vec![7].into())).await.unwrap();
        let pong = tokio::time::timeout(WAIT, async {
            while let Some(Ok(m)) = c.ws.next().await {
                if let Message::Pong(p) = m {
                    return Some(p);
                }
            }
            None
        })
        .await
        .unwrap();
        assert_eq!(pong.as_deref(), Some(&[7u8][..]), "{}", e.path);
    }
    let m = http_get(relay.addr, "/metrics").await.1;
    assert_eq!(
        metric_in(&m, "outpost_idle_timeouts_total "),
        eps.len() as u64,
        "{m}"
    );
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_hard_limit_closes_with_1009_on_every_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.server.max_frame_bytes = 16 * 1024;
    let relay = start(cfg).await;
    // Up to four times the limit is answered with an error; past it, 1009.
    let huge = "x".repeat(4 * 16 * 1024 + 1);
    for e in endpoints() {
        let mut c = Client::connect(relay.addr, e.path).await;
        c.ws.send(Message::Text(huge.clone().into())).await.unwrap();
        let (code, _) = close_code(&mut c.ws, WAIT).await;
        assert_eq!(code, Some(1009), "{}", e.path);
    }
    // The relay keeps serving.
    let mut w = Client::native(relay.addr).await;
    write(&mut w, "notes", "n", json!({"a": 1})).await;
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_every_connection_its_close_frame_in_bounded_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.server.shutdown_grace = "5s".into();
    let relay = start(cfg).await;
    let eps = endpoints();
    let mut clients = Vec::new();
    for e in &eps {
        let mut c = Client::connect(relay.addr, e.path).await;
        follow(&mut c, e).await;
        clients.push(c);
    }
    // Seed 004's SSE stream runs on the same driver: it must end too.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sse = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    let req = format!(
        "GET /api/sync/events?space={SPACE} HTTP/1.1\r\nHost: r\r\nAccept: text/event-stream\r\n\r\n"
    );
    sse.write_all(req.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    sse.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let sse_ends = async move {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), sse.read_to_end(&mut rest))
            .await
            .is_ok()
    };
    let waits = clients
        .into_iter()
        .map(|mut c| async move { close_code(&mut c.ws, Duration::from_secs(10)).await.0 });
    let started = Instant::now();
    let (codes, ended, stopped) = tokio::join!(
        futures_util::future::join_all(waits),
        sse_ends,
        tokio::time::timeout(Duration::from_secs(10), relay.shutdown())
    );
    stopped.expect("shutdown in bounded time").unwrap();
    assert!(ended, "the SSE stream did not end");
    for (code, e) in codes.iter().zip(&eps) {
        assert_eq!(*code, Some(1001), "{}", e.path);
    }
    // Nobody held shutdown up for the grace period.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// Text of a frame, gunzipped when binary (the legacy seed-004 endpoints
/// gzip large frames).
fn frame_text(m: &Message) -> Option<String> {
    match m {
        Message::Text(t) => Some(t.to_string()),
        Message::Binary(b) => {
            use std::io::Read;
            let mut s = String::new();
            flate2::read::GzDecoder::new(&b[..])
                .read_to_string(&mut s)
                .ok()?;
            Some(s)
        }
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_subscriber_is_resynced_the_documented_way_on_every_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    // A queue of 1 MiB overflows as soon as the socket's buffers are full,
    // long before the write timeout.
    cfg.server.queue_mb = 1;
    cfg.server.write_timeout = "60s".into();
    let relay = start(cfg).await;
    let addr = relay.addr;
    let mut writer = Client::native(addr).await;
    let resyncs = || {
        let m = &relay.state.engine.metrics;
        m.resyncs.load(std::sync::atomic::Ordering::Relaxed)
    };
    // Changes of 700 KB, enough of them to fill what a client that does
    // not read can hold back: the relay's send buffer (at most tcp_wmem's
    // maximum), its receive window (which does not grow while it does not
    // read) and the 1 MiB queue, with 2 MiB to spare.
    let sysctl = |name: &str, field: usize| -> usize {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
            .ok()
            .and_then(|t| t.split_whitespace().nth(field)?.parse().ok())
            .unwrap_or(4 << 20)
    };
    let held = sysctl("tcp_wmem", 2) + sysctl("tcp_rmem", 1) + (3 << 20);
    let writes = held.div_ceil(700_000).clamp(8, 24);
    let noise = noise(700_000);
    for (n, e) in endpoints().iter().enumerate() {
        let mut c = Client::connect(addr, e.path).await;
        follow(&mut c, e).await;
        let before = resyncs();
        let marker = |i: usize| format!("m{n}x{i}y");
        for i in 0..writes {
            let change = json!({"collection": e.collection, "id": marker(i), "op": "patch",
                                "fields": (e.fields)(&format!("{}{noise}", marker(i)))});
            writer
                .send(json!({"type": "push", "rid": n, "space": SPACE, "changes": [change]}))
                .await;
            // 700 KB through a debug build on a loaded machine: more time
            // than `Client::recv`'s 10 s may be needed.
            let ack = loop {
                let f = writer.try_recv(Duration::from_secs(30)).await;
                let f = f.unwrap_or_else(|| panic!("{}: no ack in 30 s", e.path));
                if f["type"] == "ack" || f["type"] == "error" {
                    break f;
                }
            };
            assert_eq!(ack["type"], "ack", "{ack}");
        }
        // It reads again: what does it get?
        let mut seen = vec![0usize; writes];
        let mut resync = None;
        let last = format!("\"{}", marker(writes - 1));
        let read = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(Ok(m)) = c.ws.next().await {
                let Some(text) = frame_text(&m) else { continue };
                if text.contains("\"resync\"") {
                    resync = Some(text);
                    return;
                }
                for (i, s) in seen.iter_mut().enumerate() {
                    if text.contains(&format!("\"{}", marker(i))) {
                        *s += 1;
                    }
                }
                if text.contains(&last) {
                    return;
                }
            }
        })
        .await;
        assert!(
            read.is_ok(),
            "{}: neither the last change nor a resync came",
            e.path
        );
        assert!(
            resyncs() > before,
            "{}: the subscriber never lagged",
            e.path
        );
        if e.path == "/ws" {
            // Native: the feed ends with `resync`, saying where to resume.
            let r: Value = serde_json::from_str(resync.as_deref().expect("a resync")).unwrap();
            assert_eq!(r["space"], SPACE, "{r}");
            assert_eq!(r["reason"], "queue_full", "{r}");
            assert!(r["since"].as_u64().is_some(), "{r}");
        } else {
            // Every other endpoint: the gap is replayed from the log, so
            // every change arrives once, later, with no message about it.
            assert!(resync.is_none(), "{}: {resync:?}", e.path);
            let wrong: Vec<(usize, usize)> = seen
                .iter()
                .enumerate()
                .filter(|(_, n)| **n != 1)
                .map(|(i, n)| (i, *n))
                .collect();
            assert!(wrong.is_empty(), "{}: (change, times): {wrong:?}", e.path);
        }
    }
    relay.shutdown().await.unwrap();
}
