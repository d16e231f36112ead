//! The native protocol on /ws, driven over real WebSockets against a relay
//! started on 127.0.0.1:0 with a temporary data dir.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn two_clients_push_and_receive() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let mut a = Client::native(relay.addr).await;
    let mut b = Client::native(relay.addr).await;
    let (backlog, synced) = b.subscribe("home", 0).await;
    assert!(backlog.is_empty());
    assert_eq!(synced["seq"], 0);

    let ack = a.put("home", "n1", json!({"title": "hello", "n": 1})).await;
    assert_eq!(ack["rid"], "n1");
    let r = &ack["results"][0];
    assert_eq!(r["seq"], 1);
    assert_eq!(r["duplicate"], false);
    assert_eq!(r["conflicts"], json!([]));

    let ch = b.recv().await;
    assert_eq!(ch["type"], "change");
    assert_eq!(ch["space"], "home");
    assert_eq!(ch["collection"], "notes");
    assert_eq!(ch["id"], "n1");
    assert_eq!(ch["op"], "patch");
    assert_eq!(ch["fields"], json!({"title": "hello", "n": 1}));
    assert_eq!(ch["seq"], 1);
    assert_eq!(ch["origin_seq"], 1);
    assert_eq!(ch["version"], 1);
    assert_eq!(ch["origin"].as_str().unwrap().len(), 16);
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn acked_write_is_readable_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let mut a = Client::native(relay.addr).await;
    a.put("s", "x", json!({"v": 42})).await;
    // A second connection reads it right after the ack.
    let mut b = Client::native(relay.addr).await;
    b.send(json!({"type": "get", "rid": 1, "space": "s", "collection": "notes", "id": "x"}))
        .await;
    let e = b.recv().await;
    assert_eq!(e["type"], "entity");
    assert_eq!(e["fields"], json!({"v": 42}));
    assert_eq!(e["deleted"], false);
    drop((a, b));
    relay.shutdown().await.unwrap();

    let relay = start(config(dir.path())).await;
    let mut c = Client::native(relay.addr).await;
    let (backlog, synced) = c.subscribe("s", 0).await;
    assert_eq!(backlog.len(), 1);
    assert_eq!(backlog[0]["fields"], json!({"v": 42}));
    assert_eq!(synced["seq"], 1);
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn resume_with_since_gets_exactly_the_missed_changes() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let mut w = Client::native(relay.addr).await;
    let mut r = Client::native(relay.addr).await;
    r.subscribe("s", 0).await;
    for i in 0..5 {
        w.put("s", &format!("a{i}"), json!({"i": i})).await;
    }
    let mut last = 0;
    for _ in 0..5 {
        last = r.recv().await["seq"].as_u64().unwrap();
    }
    drop(r);
    // Writes in another space must not show up in this space's catch-up.
    w.put("other", "zz", json!({"i": -1})).await;
    for i in 5..12 {
        w.put("s", &format!("a{i}"), json!({"i": i})).await;
    }
    let mut r = Client::native(relay.addr).await;
    let (missed, synced) = r.subscribe("s", last).await;
    let ids: Vec<_> = missed
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    let want: Vec<_> = (5..12).map(|i| format!("a{i}")).collect();
    assert_eq!(ids, want);
    assert_eq!(synced["seq"], missed.last().unwrap()["seq"]);
    // And live after that, with nothing repeated.
    w.put("s", "live", json!({})).await;
    assert_eq!(r.recv().await["id"], "live");
    assert!(r
        .try_recv(std::time::Duration::from_millis(200))
        .await
        .is_none());
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn conflicts_and_deletes_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let mut a = Client::native(relay.addr).await;
    a.put("s", "doc", json!({"title": "new"})).await;
    // An offline edit made long ago loses, and the ack says so.
    a.send(json!({"type": "push", "rid": 2, "space": "s", "changes": [
        {"collection": "notes", "id": "doc", "fields": {"title": "old"}, "ts": 1_000}]}))
        .await;
    let (_, ack) = a.until("ack").await;
    let c = &ack["results"][0]["conflicts"][0];
    assert_eq!(c["field"], "title");
    assert_eq!(c["attempted"], "old");
    assert_eq!(c["current"], "new");
    // Delete, then a newer write brings it back.
    a.send(json!({"type": "push", "rid": 3, "space": "s", "changes": [
        {"collection": "notes", "id": "doc", "op": "delete"}]}))
        .await;
    a.until("ack").await;
    a.send(json!({"type": "get", "space": "s", "collection": "notes", "id": "doc"}))
        .await;
    assert_eq!(a.until("entity").await.1["deleted"], true);
    a.put("s", "doc", json!({"body": "back"})).await;
    a.send(json!({"type": "get", "space": "s", "collection": "notes", "id": "doc"}))
        .await;
    let e = a.until("entity").await.1;
    assert_eq!(e["deleted"], false);
    assert_eq!(e["fields"], json!({"body": "back"}));
    assert_eq!(e["version"], 4);
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn events_reach_other_subscribers_and_collections_filter() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let mut a = Client::native(relay.addr).await;
    let mut b = Client::native(relay.addr).await;
    b.send(json!({"type": "subscribe", "space": "s", "collections": ["tasks"]}))
        .await;
    b.until("synced").await;
    a.send(json!({"type": "publish", "rid": "p", "space": "s", "topic": "presence", "payload": {"who": "a"}}))
        .await;
    assert_eq!(a.until("published").await.1["topic"], "presence");
    let ev = b.recv().await;
    assert_eq!(
        ev,
        json!({"type": "event", "space": "s", "topic": "presence", "payload": {"who": "a"}, "from": "c1"})
    );
    a.put("s", "n", json!({"x": 1})).await; // collection notes: filtered out
    a.send(json!({"type": "push", "rid": 9, "space": "s", "changes": [
        {"collection": "tasks", "id": "t", "fields": {"done": true}}]}))
        .await;
    a.until("ack").await;
    let ch = b.recv().await;
    assert_eq!(ch["collection"], "tasks");
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_input_gets_errors_and_the_connection_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.server.max_frame_bytes = 4096;
    let relay = start(cfg).await;
    let mut c = Client::native(relay.addr).await;
    let cases: Vec<(Message, u16, &str)> = vec![
        (Message::Text("{not json".into()), 400, "invalid_json"),
        (Message::Text("[1,2]".into()), 400, "invalid_message"),
        // A push's fields in an array fit its struct, but a message is an object.
        (Message::Text(r#"["push",1,"s",[]]"#.into()), 400, "invalid_message"),
        (Message::Text(r#"{"type":"push","space":"s","changes":[],"x":1}"#.into()), 422, "invalid_field"),
        (Message::Text(r#"{"rid":1}"#.into()), 400, "invalid_message"),
        (Message::Text(r#"{"type":"teleport","rid":7}"#.into()), 400, "unknown_type"),
        (Message::Text(r#"{"type":"push","rid":8,"changes":[]}"#.into()), 422, "invalid_field"),
        (Message::Text(r#"{"type":"push","space":"s","changes":[{"collection":"c","id":"x","op":"zap"}]}"#.into()), 422, "invalid_field"),
        (Message::Text(r#"{"type":"push","space":"s","changes":[{"collection":"c","id":""}]}"#.into()), 400, "invalid_field"),
        (Message::Text(r#"{"type":"push","space":"s","changes":[{"collection":"c","id":"x","op":"delete","fields":{"a":1}}]}"#.into()), 400, "invalid_field"),
        (Message::Text(r#"{"type":"subscribe","space":""}"#.into()), 400, "invalid_field"),
        (Message::Text(format!(r#"{{"type":"push","pad":"{}"}}"#, "x".repeat(8000)).into()), 413, "too_large"),
        (Message::Binary(vec![1, 2, 3].into()), 400, "binary_unsupported"),
    ];
    for (msg, code, reason) in cases {
        c.send_raw(msg).await;
        let e = c.recv().await;
        assert_eq!(e["type"], "error", "{e}");
        assert_eq!(e["code"], code, "{e}");
        assert_eq!(e["reason"], reason, "{e}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
        c.send(json!({"type": "ping", "rid": "still-there", "ts": 5}))
            .await;
        let p = c.recv().await;
        assert_eq!(
            (p["type"].clone(), p["rid"].clone(), p["ts"].clone()),
            (json!("pong"), json!("still-there"), json!(5))
        );
    }
    // The rid of a failing request is echoed.
    c.send(json!({"type": "teleport", "rid": "r-1"})).await;
    assert_eq!(c.recv().await["rid"], "r-1");
    // Nothing was stored by any of it.
    let (_, body) = http_get(relay.addr, "/v1/status").await;
    let st: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(st["log"]["last_seq"], 0);

    // Beyond four times the limit the relay stops reading: close 1009.
    c.send_raw(Message::Text("x".repeat(4 * 4096 + 1).into()))
        .await;
    let close = loop {
        match tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut c.ws)).await {
            Ok(Some(Ok(Message::Close(f)))) => break f,
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(u16::from(close.expect("close frame").code), 1009);
    // Other connections are unaffected.
    let mut d = Client::native(relay.addr).await;
    d.send(json!({"type": "ping", "rid": 1})).await;
    assert_eq!(d.recv().await["type"], "pong");
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn auth_401_403_and_scopes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.auth.jwt_secret = Some(SECRET.into());
    cfg.auth.anonymous = Some(outpost::config::Anonymous::None);
    let relay = start(cfg).await;
    let auth = &relay.state.auth;
    let now = outpost::dialect::now_s();
    let reader = auth
        .mint("r", outpost::auth::Scope::Read, None, 60, now)
        .unwrap();
    let writer = auth
        .mint(
            "w",
            outpost::auth::Scope::Write,
            Some(vec!["s".into()]),
            60,
            now,
        )
        .unwrap();
    let expired = auth
        .mint("w", outpost::auth::Scope::Write, None, 1, now - 10)
        .unwrap();

    assert_eq!(handshake_status(relay.addr, "/ws", None).await, 401);
    assert_eq!(
        handshake_status(relay.addr, "/ws?token=garbage", None).await,
        401
    );
    assert_eq!(
        handshake_status(relay.addr, "/ws", Some(&expired)).await,
        401
    );
    assert_eq!(
        handshake_status(relay.addr, "/ws", Some(&writer)).await,
        101
    );

    // Read scope: subscribe works, push is refused with 403 and not stored.
    let mut r = Client::connect(relay.addr, &format!("/ws?token={reader}")).await;
    assert_eq!(r.recv().await["auth"], json!(["read"]));
    r.subscribe("s", 0).await;
    r.send(json!({"type": "push", "rid": "no", "space": "s", "changes": [{"collection": "c", "id": "x", "fields": {"a": 1}}]}))
        .await;
    let e = r.recv().await;
    assert_eq!(
        (e["code"].clone(), e["reason"].clone(), e["rid"].clone()),
        (json!(403), json!("forbidden"), json!("no"))
    );
    let mut w = Client::connect(relay.addr, &format!("/ws?token={writer}")).await;
    w.recv().await;
    // Write scope limited to space "s".
    w.send(json!({"type": "push", "rid": 1, "space": "t", "changes": [{"collection": "c", "id": "x", "fields": {"a": 1}}]}))
        .await;
    assert_eq!(w.recv().await["code"], 403);
    let ack = w.put("s", "ok", json!({"a": 2})).await;
    assert_eq!(
        ack["results"][0]["seq"], 1,
        "the refused pushes stored nothing"
    );
    let ch = r.recv().await;
    assert_eq!(
        (ch["id"].clone(), ch["actor"].clone()),
        (json!("ok"), json!("w"))
    );
    // hello with a token upgrades a connection; a bad one is refused.
    r.send(json!({"type": "hello", "rid": "h", "client_id": "me", "token": "nope"}))
        .await;
    assert_eq!(r.recv().await["code"], 401);
    let admin = auth
        .mint("boss", outpost::auth::Scope::Admin, None, 60, now)
        .unwrap();
    r.send(json!({"type": "hello", "rid": "h", "client_id": "me", "token": admin}))
        .await;
    let ready = r.until("ready").await.1;
    assert_eq!(ready["scopes"], json!(["read", "write", "admin"]));
    assert_eq!(ready["client_id"], "me");
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn http_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let mut a = Client::native(relay.addr).await;
    a.subscribe("s", 0).await;
    a.put("s", "x", json!({"v": 1})).await;
    let (code, body) = http_get(relay.addr, "/healthz").await;
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (code, body) = http_get(relay.addr, "/metrics").await;
    assert_eq!(code, 200);
    for m in [
        "outpost_connections 1",
        "outpost_pushes_total 1",
        "outpost_acks_total 1",
        "outpost_deliveries_total 1",
        "outpost_queue_drops_total 0",
        "outpost_log_entries 1",
        "outpost_store_commit_seconds_count",
    ] {
        assert!(body.contains(m), "metrics lack {m}:\n{body}");
    }
    let (code, body) = http_get(relay.addr, "/v1/status").await;
    assert_eq!(code, 200);
    let st: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(st["clients"], 1);
    let sp = &st["spaces"][0];
    assert_eq!(
        (
            &sp["name"],
            &sp["changes"],
            &sp["subscribers"],
            &sp["entities"]
        ),
        (&json!("s"), &json!(1), &json!(1), &json!(1)),
        "{st}"
    );
    assert!(sp["last_write_ms"].is_u64(), "{st}");
    assert_eq!(st["connections"]["/ws"], 1, "{st}");
    assert_eq!(st["node_id"].as_str().unwrap().len(), 16);
    assert!(st["uptime_s"].is_u64());
    assert_eq!(st["listen"], relay.addr.to_string(), "the bound address");
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_sockets_with_1001() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let mut a = Client::native(relay.addr).await;
    let stop = tokio::spawn(relay.shutdown());
    let mut code = None;
    while let Ok(Some(Ok(m))) =
        tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut a.ws)).await
    {
        if let Message::Close(Some(f)) = m {
            code = Some(u16::from(f.code));
            break;
        }
    }
    assert_eq!(code, Some(1001));
    stop.await.unwrap().unwrap();
}

#[tokio::test]
async fn since_beyond_the_log_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let mut a = Client::native(relay.addr).await;
    a.put("home", "n1", json!({"n": 1})).await;
    a.put("home", "n2", json!({"n": 2})).await;
    let mut b = Client::native(relay.addr).await;
    let (backlog, synced) = b.subscribe("home", 1000).await;
    let ids: Vec<_> = backlog.iter().map(|v| v["id"].clone()).collect();
    assert_eq!(ids, vec![json!("n1"), json!("n2")]);
    assert_eq!(synced["seq"], 2);
    relay.shutdown().await.unwrap();
}

/// A client that never saw the ack of a push replays it after reconnecting,
/// with the same client write ids (`wid`): the relay answers with the first
/// result, marked duplicate, and stores and fans out nothing new. Retention
/// forgets the ids with their log entries.
#[tokio::test]
async fn replayed_writes_with_a_wid_are_applied_once() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let mut watcher = Client::native(relay.addr).await;
    watcher.subscribe("s", 0).await;
    let push = json!({"type": "push", "rid": 1, "space": "s", "changes": [
        {"collection": "todo", "id": "a", "fields": {"t": "one"}, "wid": "w-1"},
        {"collection": "todo", "id": "b", "fields": {"t": "two"}, "wid": "w-2"},
        {"collection": "todo", "id": "c", "fields": {"t": "three"}}]});
    let mut a = Client::native(relay.addr).await;
    a.send(push.clone()).await;
    let (_, first) = a.until("ack").await;
    drop(a);
    for r in first["results"].as_array().unwrap() {
        assert_eq!(r["duplicate"], false);
    }

    // The replay, on a new connection, as after a lost ack: w-1 and w-2 are
    // held, the write without a wid is applied again.
    let mut b = Client::native(relay.addr).await;
    b.send(push).await;
    let (_, again) = b.until("ack").await;
    let (r0, r1, r2) = (
        &again["results"][0],
        &again["results"][1],
        &again["results"][2],
    );
    assert_eq!(r0["duplicate"], true);
    assert_eq!(r0["seq"], first["results"][0]["seq"]);
    assert_eq!(r0["origin_seq"], first["results"][0]["origin_seq"]);
    assert_eq!(r0["stamp"], first["results"][0]["stamp"]);
    assert_eq!(r0["version"], 1);
    assert_eq!(r1["duplicate"], true);
    assert_eq!(r1["seq"], first["results"][1]["seq"]);
    assert_eq!(r2["duplicate"], false);
    assert_eq!(r2["seq"], 4);

    // The watcher got a, b, c and the second c: no second a or b.
    let mut seen = vec![];
    for _ in 0..4 {
        let ch = watcher.recv().await;
        seen.push((
            ch["id"].as_str().unwrap().to_string(),
            ch["seq"].as_u64().unwrap(),
        ));
    }
    assert_eq!(
        seen,
        vec![
            ("a".into(), 1),
            ("b".into(), 2),
            ("c".into(), 3),
            ("c".into(), 4)
        ]
    );
    assert!(watcher.try_recv(Duration::from_millis(200)).await.is_none());

    // The same wid in another space is another write.
    b.send(json!({"type": "push", "rid": 2, "space": "t", "changes": [
        {"collection": "todo", "id": "a", "fields": {"t": "x"}, "wid": "w-1"}]}))
        .await;
    let (_, other) = b.until("ack").await;
    assert_eq!(other["results"][0]["duplicate"], false);

    // A bad wid is refused like a bad name, nothing stored.
    b.send(json!({"type": "push", "rid": 3, "space": "s", "changes": [
        {"collection": "todo", "id": "z", "fields": {}, "wid": ""}]}))
        .await;
    let e = b.recv().await;
    assert_eq!(
        (e["code"].clone(), e["reason"].clone()),
        (json!(400), json!("invalid_field"))
    );
    assert!(
        e["message"].as_str().unwrap().contains("changes[0].wid"),
        "{e}"
    );

    // Once retention trims the change, its wid is forgotten with it.
    tokio::time::sleep(Duration::from_millis(5)).await;
    relay.state.engine.trim(Duration::ZERO).await.unwrap();
    b.send(json!({"type": "push", "rid": 4, "space": "s", "changes": [
        {"collection": "todo", "id": "a", "fields": {"t": "one"}, "wid": "w-1"}]}))
        .await;
    let (_, late) = b.until("ack").await;
    assert_eq!(late["results"][0]["duplicate"], false);
    relay.shutdown().await.unwrap();
}
