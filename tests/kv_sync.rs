//! Seed 003 (`/v1/sync/{workspace}`, `/v1/history/{workspace}`, webhook)
//! driven over real WebSockets and HTTP against relays on 127.0.0.1:0.

mod common;

use common::*;
use futures_util::StreamExt;
use outpost::auth::{Auth, Scope};
use outpost::config::{Anonymous, Config};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const WS: &str = "workspace-123";

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn token(scope: Scope, spaces: Option<Vec<String>>) -> String {
    Auth::new(Some(SECRET.as_bytes()), Anonymous::None)
        .mint("alice", scope, spaces, 3600, now_s())
        .unwrap()
}

/// Auth on, no anonymous access.
fn secured(dir: &Path) -> Config {
    let mut c = config(dir);
    c.auth.jwt_secret = Some(SECRET.into());
    c.auth.anonymous = Some(Anonymous::None);
    c
}

/// Connect with `Authorization: Bearer` and read the `init`.
async fn connect(addr: SocketAddr, workspace: &str, tok: &str) -> (Client, Value) {
    let mut req = format!("ws://{addr}/v1/sync/{workspace}")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Authorization", format!("Bearer {tok}").parse().unwrap());
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("handshake");
    assert_eq!(resp.status().as_u16(), 101);
    let mut c = Client { ws };
    let init = c.recv().await;
    (c, init)
}

/// A native `/ws` client authenticated with `tok`.
async fn native(addr: SocketAddr, tok: &str) -> Client {
    let mut c = Client::connect(addr, &format!("/ws?token={tok}")).await;
    assert_eq!(c.recv().await["type"], "welcome");
    c
}

fn op(key: &str, value: Value, ts: Option<u64>) -> Value {
    let mut p = json!({"key": key, "value": value});
    if let Some(t) = ts {
        p["timestamp"] = json!(t);
    }
    json!({"type": "op", "payload": p})
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(|s| s.as_str()).collect();
    k.sort();
    k
}

/// Nothing arrives within a short while.
async fn quiet(c: &mut Client) {
    if let Some(v) = c.try_recv(Duration::from_millis(300)).await {
        panic!("unexpected frame {v}");
    }
}

async fn get_json(addr: SocketAddr, path: &str) -> (u16, Value) {
    let (status, body) = http_get(addr, path).await;
    (
        status,
        serde_json::from_str(&body).unwrap_or_else(|_| json!({"raw": body})),
    )
}

/// `/metrics` of a secured relay (it needs an admin token).
async fn metrics_text(addr: SocketAddr) -> String {
    let admin = token(Scope::Admin, None);
    let (code, body) = http_get(addr, &format!("/metrics?token={admin}")).await;
    assert_eq!(code, 200, "{body}");
    body
}

#[tokio::test]
async fn connect_init_op_broadcast_to_all_clients() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(secured(dir.path())).await;
    let w = token(Scope::Write, None);

    // Scenario: Client Connects Successfully (101, then init with current state).
    let (mut a, init) = connect(relay.addr, WS, &w).await;
    assert_eq!(init, json!({"type": "init", "data": {}, "heads": []}));
    // ?token= works too (browsers cannot set headers on a WebSocket).
    let mut b = Client::connect(
        relay.addr,
        &format!("/v1/sync/{WS}?token={}", token(Scope::Read, None)),
    )
    .await;
    assert_eq!(b.recv().await["type"], "init");
    let (mut other, _) = connect(relay.addr, "elsewhere", &w).await;

    // Scenario: Client Sends Operation: stored, broadcast to every client of
    // the workspace, the sender included.
    let ts = now_us();
    a.send(op("foo", json!("bar"), Some(ts))).await;
    let want = json!({"type": "op", "payload": {"key": "foo", "value": "bar", "timestamp": ts}});
    let got_a = a.recv().await;
    let got_b = b.recv().await;
    assert_eq!(got_a, want);
    assert_eq!(got_b, want);
    assert_eq!(keys(&got_b["payload"]), ["key", "timestamp", "value"]);
    quiet(&mut other).await;

    // Without a timestamp the relay's clock stamps it; any JSON value works.
    let before = now_us() / 1000 * 1000;
    a.send(op("obj", json!({"n": [1, 2, {"x": null}]}), None))
        .await;
    let got = b.recv().await;
    assert_eq!(got["payload"]["value"], json!({"n": [1, 2, {"x": null}]}));
    let t = got["payload"]["timestamp"].as_u64().unwrap();
    assert!(t >= before && t <= now_us() + 1000, "{t}");
    assert_eq!(a.recv().await, got);

    // A later connection gets the state and heads in its init.
    let (_c, init) = connect(relay.addr, WS, &w).await;
    assert_eq!(keys(&init), ["data", "heads", "type"]);
    assert_eq!(
        init["data"],
        json!({"foo": "bar", "obj": {"n": [1, 2, {"x": null}]}})
    );
    let heads = init["heads"].as_array().unwrap();
    assert_eq!(heads.len(), 1);
    assert_eq!(heads[0].as_str().unwrap().len(), 64);

    // A null value deletes the key; the heads move on.
    a.send(op("obj", Value::Null, None)).await;
    assert_eq!(b.recv().await["payload"]["value"], Value::Null);
    let (_d, init2) = connect(relay.addr, WS, &w).await;
    assert_eq!(init2["data"], json!({"foo": "bar"}));
    assert_ne!(init2["heads"], init["heads"]);
    drop((a, b, other));
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn handshake_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(secured(dir.path())).await;
    let path = format!("/v1/sync/{WS}");
    // Scenario: Client Fails Authentication: missing or invalid JWT -> 401.
    assert_eq!(handshake_status(relay.addr, &path, None).await, 401);
    let mut bad = token(Scope::Write, None);
    bad.pop();
    bad.push('x');
    assert_eq!(handshake_status(relay.addr, &path, Some(&bad)).await, 401);
    assert_eq!(
        handshake_status(relay.addr, &path, Some("not.a.jwt")).await,
        401
    );
    let foreign = Auth::new(Some(b"some-other-secret-123"), Anonymous::None)
        .mint("eve", Scope::Admin, None, 60, now_s())
        .unwrap();
    assert_eq!(
        handshake_status(relay.addr, &path, Some(&foreign)).await,
        401
    );
    let expired = Auth::new(Some(SECRET.as_bytes()), Anonymous::None)
        .mint("alice", Scope::Write, None, 10, now_s() - 100)
        .unwrap();
    assert_eq!(
        handshake_status(relay.addr, &path, Some(&expired)).await,
        401
    );
    // A token limited to other workspaces: 403; a bad workspace name: 400.
    let scoped = token(Scope::Write, Some(vec!["mine".into()]));
    assert_eq!(
        handshake_status(relay.addr, &path, Some(&scoped)).await,
        403
    );
    assert_eq!(
        handshake_status(relay.addr, "/v1/sync/mine", Some(&scoped)).await,
        101
    );
    assert_eq!(
        handshake_status(
            relay.addr,
            "/v1/sync/a%01b",
            Some(&token(Scope::Write, None))
        )
        .await,
        400
    );
    let m = metrics_text(relay.addr).await;
    assert!(metric_in(&m, "outpost_auth_failures_total ") >= 5);
    relay.shutdown().await.unwrap();

    // With anonymous access on, no token is fine but a bad one is still 401.
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    assert_eq!(handshake_status(relay.addr, &path, None).await, 101);
    assert_eq!(handshake_status(relay.addr, &path, Some(&bad)).await, 401);
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn read_only_write_is_refused_and_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(secured(dir.path())).await;
    let (mut writer, _) = connect(relay.addr, WS, &token(Scope::Write, None)).await;
    let (mut reader, init) = connect(relay.addr, WS, &token(Scope::Read, None)).await;
    assert_eq!(init["type"], "init");

    // Scenario: Read-Only Client Attempts Write.
    reader.send(op("foo", json!("bar"), None)).await;
    let e = reader.recv().await;
    assert_eq!(e["type"], "error");
    assert_eq!(e["code"], 403);
    assert_eq!(e["reason"], "forbidden");
    assert_eq!(e["key"], "foo");
    assert!(e["message"].as_str().unwrap().contains("read-only"));
    // Not persisted: nobody hears of it, history and state stay empty.
    quiet(&mut writer).await;
    quiet(&mut reader).await;
    let (_, h) = get_json(
        relay.addr,
        &format!("/v1/history/{WS}?token={}", token(Scope::Read, None)),
    )
    .await;
    assert_eq!(h["ops"], json!([]));
    let (_c, init) = connect(relay.addr, WS, &token(Scope::Read, None)).await;
    assert_eq!(init["data"], json!({}));

    // The reader still hears the writer's ops; admin writes too.
    writer.send(op("k", json!(1), None)).await;
    assert_eq!(reader.recv().await["payload"]["key"], "k");
    let (mut admin, _) = connect(relay.addr, WS, &token(Scope::Admin, None)).await;
    admin.send(op("k", json!(2), None)).await;
    assert_eq!(reader.recv().await["payload"]["value"], 2);
    drop((writer, reader, admin));
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_messages_get_errors_and_the_connection_survives() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(secured(dir.path())).await;
    let (mut c, _) = connect(relay.addr, WS, &token(Scope::Write, None)).await;
    let cases = [
        ("{oops", "invalid_json"),
        ("[1,2]", "invalid_message"),
        (r#"{"type":"subscribe"}"#, "unknown_type"),
        (r#"{"type":"op"}"#, "invalid_field"),
        (r#"{"type":"op","payload":{"value":1}}"#, "invalid_field"),
        (r#"{"type":"op","payload":{"key":"k"}}"#, "invalid_field"),
        (
            r#"{"type":"op","payload":{"key":"k","value":1,"timestamp":"soon"}}"#,
            "invalid_field",
        ),
        (
            r#"{"type":"op","payload":{"key":"","value":1}}"#,
            "invalid_field",
        ),
    ];
    for (text, reason) in cases {
        c.send_raw(Message::Text(text.into())).await;
        let e = c.recv().await;
        assert_eq!(e["type"], "error", "{text}");
        assert_eq!(e["code"], 400, "{text}: {e}");
        assert_eq!(e["reason"], reason, "{text}: {e}");
    }
    c.send_raw(Message::Binary(vec![1, 2].into())).await;
    assert_eq!(c.recv().await["reason"], "binary_unsupported");
    let big = "x".repeat((1 << 20) + 10);
    c.send(op("big", json!(big), None)).await;
    let e = c.recv().await;
    assert_eq!(
        (e["code"].as_u64(), e["reason"].as_str()),
        (Some(413), Some("too_large"))
    );
    c.send(op("ok", json!(true), None)).await;
    assert_eq!(c.recv().await["payload"]["key"], "ok");
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn per_key_last_writer_wins_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(secured(dir.path())).await;
    let w = token(Scope::Write, None);
    let (mut a, _) = connect(relay.addr, WS, &w).await;
    let (mut b, _) = connect(relay.addr, WS, &w).await;
    let t0 = now_us() - 60_000_000;
    a.send(op("color", json!("blue"), Some(t0 + 2_000_000)))
        .await;
    assert_eq!(b.recv().await["payload"]["value"], "blue");
    a.recv().await;
    // A late op (older edit time) loses: the broadcast shows what holds.
    b.send(op("color", json!("red"), Some(t0 + 1_000_000)))
        .await;
    let want = json!({"type": "op", "payload": {"key": "color", "value": "blue", "timestamp": t0 + 2_000_000}});
    assert_eq!(a.recv().await, want);
    assert_eq!(b.recv().await, want);
    // Keys are independent.
    b.send(op("size", json!(3), Some(t0))).await;
    assert_eq!(a.recv().await["payload"]["value"], 3);
    assert_eq!(b.recv().await["payload"]["value"], 3);
    // A write through another dialect (native /ws, collection kv) is an op here.
    let mut n = native(relay.addr, &w).await;
    n.send(json!({"type": "push", "rid": 1, "space": WS, "changes": [
        {"collection": "kv", "id": "size", "op": "patch", "fields": {"value": 4}}]}))
        .await;
    n.until("ack").await;
    let from_native = a.recv().await;
    assert_eq!(from_native["payload"]["key"], "size");
    assert_eq!(from_native["payload"]["value"], 4);
    assert_eq!(from_native, b.recv().await);
    let (_c, init) = connect(relay.addr, WS, &w).await;
    assert_eq!(init["data"], json!({"color": "blue", "size": 4}));

    // History lists every op in order, losers included.
    let r = token(Scope::Read, None);
    let (status, h) = get_json(relay.addr, &format!("/v1/history/{WS}?token={r}")).await;
    assert_eq!(status, 200);
    assert_eq!(keys(&h), ["more", "next", "ops", "trimmed", "workspace"]);
    assert_eq!(h["workspace"], WS);
    let ops = h["ops"].as_array().unwrap();
    let kv: Vec<(&str, Value)> = ops
        .iter()
        .map(|o| (o["key"].as_str().unwrap(), o["value"].clone()))
        .collect();
    assert_eq!(
        kv,
        [
            ("color", json!("blue")),
            ("color", json!("red")),
            ("size", json!(3)),
            ("size", json!(4))
        ]
    );
    assert_eq!(keys(&ops[0]), ["actor", "key", "seq", "timestamp", "value"]);
    assert_eq!(ops[0]["actor"], "alice");
    assert_eq!(ops[1]["timestamp"], t0 + 1_000_000);
    let seqs: Vec<u64> = ops.iter().map(|o| o["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|p| p[0] < p[1]), "{seqs:?}");
    assert_eq!(h["more"], false);
    assert_eq!(h["next"], seqs[3]);

    // Paging with since and limit.
    let (_, p1) = get_json(
        relay.addr,
        &format!("/v1/history/{WS}?since=0&limit=3&token={r}"),
    )
    .await;
    assert_eq!(p1["ops"].as_array().unwrap().len(), 3);
    assert_eq!(p1["more"], true);
    let next = p1["next"].as_u64().unwrap();
    // Bearer header instead of ?token=.
    let req = format!("/v1/history/{WS}?since={next}&limit=3");
    let (_, p2) = http_get_bearer(relay.addr, &req, &r).await;
    assert_eq!(p2["ops"].as_array().unwrap().len(), 1);
    assert_eq!(p2["ops"][0]["seq"], seqs[3]);
    assert_eq!(p2["more"], false);

    // History errors.
    assert_eq!(
        get_json(relay.addr, &format!("/v1/history/{WS}")).await.0,
        401
    );
    let other = token(Scope::Read, Some(vec!["mine".into()]));
    let (s, e) = get_json(relay.addr, &format!("/v1/history/{WS}?token={other}")).await;
    assert_eq!((s, e["code"].as_u64()), (403, Some(403)));
    let (s, e) = get_json(relay.addr, &format!("/v1/history/{WS}?limit=0&token={r}")).await;
    assert_eq!((s, e["reason"].as_str()), (400, Some("invalid_field")));
    assert_eq!(
        get_json(relay.addr, &format!("/v1/history/{WS}?since=x&token={r}"))
            .await
            .0,
        400
    );
    drop((a, b, n));
    relay.shutdown().await.unwrap();
}

async fn http_get_bearer(addr: SocketAddr, path: &str, tok: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {tok}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1;
    (status, serde_json::from_str(body).unwrap())
}

#[tokio::test]
async fn storage_failure_is_code_500_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = secured(dir.path());
    // More free space required than any disk has: every commit is refused.
    cfg.storage.min_free_mb = 1 << 30;
    let relay = start(cfg).await;
    let (mut c, _) = connect(relay.addr, WS, &token(Scope::Write, None)).await;
    c.send(op("foo", json!("bar"), None)).await;
    let e = c.recv().await;
    assert_eq!(e["type"], "error");
    assert_eq!(e["code"], 500);
    assert_eq!(e["reason"], "disk_full");
    assert_eq!(e["key"], "foo");
    quiet(&mut c).await;
    let (_, h) = get_json(
        relay.addr,
        &format!("/v1/history/{WS}?token={}", token(Scope::Read, None)),
    )
    .await;
    assert_eq!(h["ops"], json!([]));
    // The connection keeps serving.
    c.send_raw(Message::Text("{}".into())).await;
    assert_eq!(c.recv().await["code"], 400);
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn heads_are_equal_on_relays_holding_the_same_state() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let r1 = start(secured(d1.path())).await;
    let r2 = start(secured(d2.path())).await;
    let w = token(Scope::Write, None);
    let (mut a, _) = connect(r1.addr, WS, &w).await;
    let (mut b, _) = connect(r2.addr, WS, &w).await;
    let t = now_us();
    a.send(op("x", json!(1), Some(t))).await;
    a.recv().await;
    a.send(op("y", json!("a"), Some(t + 5000))).await;
    a.recv().await;
    b.send(op("x", json!(2), Some(t + 1000))).await;
    b.recv().await;
    b.send(op("z", json!(true), None)).await;
    b.recv().await;
    let h1 = connect(r1.addr, WS, &w).await.1;
    let h2 = connect(r2.addr, WS, &w).await.1;
    assert_ne!(h1["heads"], h2["heads"]);

    // Exchange the changes both ways (what replication does), in different
    // orders: same state, same data, same heads; local seqs differ.
    let log = |r: &outpost::app::Relay| -> Vec<outpost::model::Change> {
        r.state
            .engine
            .log_after(0, 100)
            .unwrap()
            .into_iter()
            .map(|(_, e)| e.change)
            .collect()
    };
    let (c1, c2) = (log(&r1), log(&r2));
    r2.state.engine.apply_remote(c1, None).await.unwrap();
    r1.state.engine.apply_remote(c2, None).await.unwrap();
    let i1 = connect(r1.addr, WS, &w).await.1;
    let i2 = connect(r2.addr, WS, &w).await.1;
    assert_eq!(i1["data"], json!({"x": 2, "y": "a", "z": true}));
    assert_eq!(i1["data"], i2["data"]);
    assert_eq!(i1["heads"], i2["heads"]);
    assert_ne!(i1["heads"], h1["heads"]);
    // A change on one side makes them differ again.
    a.send(op("x", json!(3), None)).await;
    // (a also hears the changes applied from r2 before its own op.)
    while a.recv().await["payload"]["value"] != 3 {}
    assert_ne!(connect(r1.addr, WS, &w).await.1["heads"], i2["heads"]);
    drop((a, b));
    r1.shutdown().await.unwrap();
    r2.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_sync_sockets_with_1001() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(secured(dir.path())).await;
    let (mut c, _) = connect(relay.addr, WS, &token(Scope::Write, None)).await;
    let stop = tokio::spawn(relay.shutdown());
    let close = tokio::time::timeout(WAIT, async {
        loop {
            match c.ws.next().await {
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(close, Some(1001));
    stop.await.unwrap().unwrap();
}

// ---- webhook ------------------------------------------------------------------

struct Received {
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

/// A webhook receiver on `port` that records every POST to /hook.
async fn receiver(
    port: u16,
) -> (
    tokio::sync::mpsc::UnboundedReceiver<Received>,
    tokio::task::JoinHandle<()>,
) {
    use axum::routing::post;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(Received {
                        headers,
                        body: body.to_vec(),
                    });
                    "ok"
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("receiver port still free");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (rx, task)
}

fn webhook_config(dir: &Path, port: u16) -> Config {
    let mut c = secured(dir);
    c.webhook.url = Some(format!("http://127.0.0.1:{port}/hook"));
    c.webhook.secret = Some("hook-secret".into());
    c
}

#[tokio::test]
async fn webhook_receiver_down_first_gets_every_event_once_up() {
    // A port with nothing listening yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let relay = start(webhook_config(dir.path(), port)).await;
    let w = token(Scope::Write, None);
    let (mut c, _) = connect(relay.addr, WS, &w).await;

    // Writes are not held up by the dead receiver: each is broadcast
    // (durably committed) promptly.
    let t = now_us();
    let started = std::time::Instant::now();
    for i in 0..20u64 {
        c.send(op(&format!("k{i}"), json!(i), Some(t + i))).await;
        let got = c.recv().await;
        assert_eq!(got["payload"]["key"], format!("k{i}"));
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // Other collections are no webhook business.
    let mut n = native(relay.addr, &w).await;
    n.put(WS, "note", json!({"t": 1})).await;

    // Failures show in /metrics.
    tokio::time::timeout(WAIT, async {
        loop {
            let m = metrics_text(relay.addr).await;
            // The backlog gauge is refreshed on each delivery attempt, so
            // wait for one made after all 20 ops were stored.
            if metric_in(&m, "outpost_webhook_failures_total ") >= 2
                && metric_in(&m, "outpost_webhook_backlog ") >= 20
            {
                assert_eq!(metric_in(&m, "outpost_webhook_delivered_total "), 0);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("webhook failures counted");

    // The queue is durable: restart the relay while the receiver is down.
    drop((c, n));
    relay.shutdown().await.unwrap();
    let relay = start(webhook_config(dir.path(), port)).await;
    let (mut c, init) = connect(relay.addr, WS, &w).await;
    assert_eq!(init["data"].as_object().unwrap().len(), 20);
    c.send(op("k20", json!(20), None)).await;
    c.recv().await;

    // The receiver comes up: every doc.updated arrives, signed, once each.
    let (mut rx, rtask) = receiver(port).await;
    let mut seen = std::collections::BTreeMap::new();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"hook-secret");
    while seen.len() < 21 {
        let r = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("webhook events arrive")
            .unwrap();
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(r.headers["x-outpost-event"], "doc.updated");
        let sig = r.headers["x-outpost-signature"].to_str().unwrap();
        let hex = sig.strip_prefix("sha256=").unwrap();
        let raw: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        ring::hmac::verify(&key, &r.body, &raw).expect("valid signature");
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            keys(&v),
            [
                "actor",
                "key",
                "seq",
                "timestamp",
                "type",
                "value",
                "workspace"
            ]
        );
        assert_eq!(v["type"], "doc.updated");
        assert_eq!(v["workspace"], WS);
        assert_eq!(v["actor"], "alice");
        let k = v["key"].as_str().unwrap().to_string();
        let i: u64 = k[1..].parse().unwrap();
        assert_eq!(v["value"], json!(i));
        if i < 20 {
            assert_eq!(v["timestamp"], t + i);
        }
        assert!(
            seen.insert(k, v["seq"].as_u64().unwrap()).is_none(),
            "duplicate {v}"
        );
    }
    // In log order.
    let mut by_seq: Vec<(u64, String)> = seen.iter().map(|(k, s)| (*s, k.clone())).collect();
    by_seq.sort();
    let order: Vec<String> = by_seq.into_iter().map(|(_, k)| k).collect();
    let want: Vec<String> = (0..21).map(|i| format!("k{i}")).collect();
    assert_eq!(order, want);
    // Nothing more (the native note is not a key/value op), and the counters agree.
    assert!(tokio::time::timeout(Duration::from_millis(500), rx.recv())
        .await
        .is_err());
    let m = metrics_text(relay.addr).await;
    assert_eq!(metric_in(&m, "outpost_webhook_delivered_total "), 21);
    assert_eq!(metric_in(&m, "outpost_webhook_backlog "), 0);

    // The sender stops on shutdown (promptly, with the receiver gone again).
    rtask.abort();
    c.send(op("k21", json!(21), None)).await;
    c.recv().await;
    drop(c);
    tokio::time::timeout(Duration::from_secs(15), relay.shutdown())
        .await
        .expect("shutdown in time")
        .unwrap();
}

#[tokio::test]
async fn webhook_backlog_is_bounded() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = webhook_config(dir.path(), port);
    cfg.webhook.max_backlog = 3;
    let relay = start(cfg).await;
    let (mut c, _) = connect(relay.addr, WS, &token(Scope::Write, None)).await;
    for i in 0..10 {
        c.send(op(&format!("k{i}"), json!(i), None)).await;
        c.recv().await;
    }
    let (mut rx, _t) = receiver(port).await;
    let mut got = vec![];
    while let Ok(Some(r)) = tokio::time::timeout(Duration::from_secs(3), rx.recv()).await {
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        got.push(v["key"].as_str().unwrap().to_string());
    }
    // The newest 3 arrive, or 4 if the oldest was in flight when the bound hit.
    assert!(
        got.ends_with(&["k7".into(), "k8".into(), "k9".into()]),
        "{got:?}"
    );
    assert!(got.len() <= 4, "{got:?}");
    let m = metrics_text(relay.addr).await;
    assert_eq!(
        metric_in(&m, "outpost_webhook_dropped_total ")
            + metric_in(&m, "outpost_webhook_delivered_total "),
        10
    );
    drop(c);
    relay.shutdown().await.unwrap();
}
