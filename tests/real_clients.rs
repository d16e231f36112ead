//! The seeds' real, published clients against a running relay (issue 13):
//! each test replays the exact frames and HTTP calls a real client sends
//! (taken from its source, named at each test) over real sockets on
//! loopback, and checks what that client does with the reply.
//!
//! The clients themselves, run unchanged outside this repository, are in
//! docs/compat.md.

mod common;

use common::*;
use outpost::auth::Scope;
use serde_json::{json, Value};
use std::time::Duration;

const QUIET: Duration = Duration::from_millis(300);

// ---- seed 002: TeldridgeLDN/Orchestrator_Project -----------------------------

/// `lib/cloud/cloud-sync-manager.js` keeps `encryption: {algorithm, iv,
/// authTag, keyId}` beside the AES-256-GCM blob made by `encryptConfig`
/// (`lib/utils/sync-encryption.js`: 16-byte IV, separate tag, base64), and
/// `decryptConfig` needs `iv` and `authTag` back with the blob. The values
/// below are a real `encryptConfig({theme:"dark"}, key)` output.
#[tokio::test]
async fn seed002_encryption_parameters_come_back_with_the_blob() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let enc = json!({"algorithm": "aes-256-gcm", "iv": "q6W1rY0yMCd8PqK9+1l6pA==",
                     "authTag": "2Kf4vL0c8pO3X9yW1nB5Qw==", "keyId": "alice-1735000000000"});
    let mut laptop = Client::connect(relay.addr, "/ws/config?space=cfg").await;
    laptop
        .send(
            json!({"type": "upload-config-request", "userId": "alice", "deviceId": "laptop",
            "version": 1, "previousVersion": 0, "encryptedConfig": "Zm9vYmFyYmF6cXV4",
            "configHash": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "metadata": {"projectCount": 1}, "encryption": enc, "timestamp": 1}),
        )
        .await;
    let up = laptop.recv().await;
    assert_eq!(
        (up["success"].clone(), up["newVersion"].clone()),
        (json!(true), json!(1)),
        "{up}"
    );

    // Another device downloads: what `decryptConfig` is given.
    let mut desk = Client::connect(relay.addr, "/ws/config?space=cfg").await;
    desk.send(
        json!({"type": "download-config-request", "userId": "alice", "deviceId": "desk",
        "localVersion": 0, "timestamp": 2}),
    )
    .await;
    let dl = desk.recv().await;
    assert_eq!(dl["type"], "download-config-response");
    assert_eq!(dl["encryptedConfig"], "Zm9vYmFyYmF6cXV4");
    assert_eq!(
        dl["encryption"], enc,
        "the parameters come back exactly: {dl}"
    );

    // And in the revision's history entry (read natively).
    let mut n = Client::native(relay.addr).await;
    n.send(json!({"type": "subscribe", "space": "cfg", "collections": ["config_history"]}))
        .await;
    let (items, _) = n.until("synced").await;
    let hist: Vec<&Value> = items.iter().filter(|v| v["type"] == "change").collect();
    assert_eq!(hist.len(), 1, "{items:?}");
    assert_eq!(hist[0]["fields"]["encryption"], enc);

    // A revision without parameters has none (not the old ones).
    laptop
        .send(
            json!({"type": "upload-config-request", "userId": "alice", "deviceId": "laptop",
            "version": 2, "previousVersion": 1, "encryptedConfig": "YmFy",
            "configHash": "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752",
            "timestamp": 3}),
        )
        .await;
    assert_eq!(laptop.recv().await["success"], true);
    desk.send(
        json!({"type": "download-config-request", "userId": "alice", "deviceId": "desk",
        "localVersion": 1, "timestamp": 4}),
    )
    .await;
    let dl = loop {
        let v = desk.recv().await;
        if v["type"] == "download-config-response" {
            break v;
        }
    };
    assert_eq!(
        (dl["version"].clone(), dl["encryption"].clone()),
        (json!(2), Value::Null)
    );

    // A parameter block that is not an object is refused.
    laptop
        .send(
            json!({"type": "upload-config-request", "userId": "alice", "deviceId": "laptop",
            "version": 3, "previousVersion": 2, "encryptedConfig": "YmFy",
            "configHash": "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752",
            "encryption": "aes", "timestamp": 5}),
        )
        .await;
    let bad = laptop.recv().await;
    assert_eq!(
        (bad["success"].clone(), bad["error"].clone()),
        (json!(false), json!("invalid-request")),
        "{bad}"
    );
}

// ---- seed 003: bneb/etherply ------------------------------------------------------

/// `packages/sdk-js/src/client.ts` connects to `/v1/sync/{ws}?token=&userId=`,
/// sends `{type:"op", payload:{key, value, timestamp}}` and every 30 s the
/// heartbeat `{type:"ping", timestamp: Date.now()}`; `validation.ts` drops
/// any frame it cannot parse with a warning. The Go and Python SDKs send
/// `time.Now().UnixMicro()`, which must come back exactly, and order two
/// writes in one millisecond.
#[tokio::test]
async fn seed003_microseconds_kept_and_heartbeat_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(auth_config(dir.path())).await;
    let tok = token("alice", Scope::Write, None);
    let path = format!("/v1/sync/workspace-123?token={tok}&userId=alice");
    let mut sdk = Client::connect(relay.addr, &path).await;
    assert_eq!(sdk.recv().await["type"], "init");

    // The heartbeat gets no answer (the real server ignores it).
    sdk.send(json!({"type": "ping", "timestamp": 1_795_607_927_827u64}))
        .await;
    assert!(
        sdk.try_recv(QUIET).await.is_none(),
        "nothing answers a ping"
    );

    // Two writes in one millisecond, the later one (by microseconds) sent first.
    let late = 1_795_607_927_827_456u64;
    let early = 1_795_607_927_827_123u64;
    for (v, ts) in [("late", late), ("early", early)] {
        sdk.send(json!({"type": "op", "payload": {"key": "color", "value": v, "timestamp": ts}}))
            .await;
    }
    let a = sdk.recv().await;
    let b = sdk.recv().await;
    assert_eq!(
        a["payload"],
        json!({"key": "color", "value": "late", "timestamp": late})
    );
    // The earlier write lost: the broadcast carries the value that stays.
    assert_eq!(
        b["payload"],
        json!({"key": "color", "value": "late", "timestamp": late})
    );
    sdk.send(json!({"type": "op", "payload": {"key": "size", "value": 3, "timestamp": early}}))
        .await;
    assert_eq!(sdk.recv().await["payload"]["timestamp"], early);

    // A reloaded client's init, and history, keep them too.
    let mut again = Client::connect(relay.addr, &path).await;
    let init = again.recv().await;
    assert_eq!(init["data"], json!({"color": "late", "size": 3}));
    let (status, body) = http(
        relay.addr,
        "GET",
        "/v1/history/workspace-123",
        &[("Authorization", &format!("Bearer {tok}"))],
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let h: Value = serde_json::from_str(&body).unwrap();
    let times: Vec<u64> = h["ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["timestamp"].as_u64().unwrap())
        .collect();
    assert_eq!(times, vec![late, early, early]);
}

// ---- seed 001: atomecorp/a ---------------------------------------------------------

/// `src/squirrel/apis/unified/SyncWebSocket.js`: opens `/ws/atome-sync`
/// with no credentials, sends `{type:"auth", token}` on open when it has a
/// token, learns `clientId` only from `{type:"welcome"}`, and turns
/// `{type:"error", message}` into its `sync:error` event. Its broadcasts
/// are `{type, atome|atomeId, clientId, timestamp}`.
#[tokio::test]
async fn seed001_socket_client_welcome_auth_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(auth_config(dir.path())).await;
    let write = token("alice", Scope::Write, None);
    let read_other = token("eve", Scope::Read, Some(vec!["other".into()]));

    // Opened without credentials (the client's URL has none).
    let mut a = Client::connect(relay.addr, "/ws/atome-sync").await;
    let welcome = a.recv().await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let client_id = welcome["clientId"]
        .as_str()
        .expect("clientId learnt")
        .to_string();
    assert!(
        welcome["timestamp"].is_string(),
        "serverTime of sync:connected"
    );

    // Before auth nothing is written and nothing is received.
    a.send(
        json!({"type": "atome:created", "atome": {"id": "n0"}, "clientId": client_id,
        "timestamp": "2026-11-25T10:00:00.000Z"}),
    )
    .await;
    let e = a.recv().await;
    assert_eq!(e["type"], "error", "{e}");
    assert!(e["message"].as_str().unwrap().contains("auth"), "{e}");
    // A bad token and one for another space are refused; the socket stays.
    a.send(json!({"type": "auth", "token": "not-a-token"}))
        .await;
    assert_eq!(a.recv().await["type"], "error");
    a.send(json!({"type": "auth", "token": read_other})).await;
    assert_eq!(a.recv().await["type"], "error");
    a.send(json!({"type": "auth", "token": write})).await;
    let ok = a.recv().await;
    assert_eq!(ok, json!({"type": "auth:success", "clientId": client_id}));

    // A second tab, authenticated the same way, creates an atome with the
    // client's own broadcast frame; the first gets it, the sender does not.
    let mut b = Client::connect(relay.addr, "/ws/atome-sync").await;
    let b_id = b.recv().await["clientId"].as_str().unwrap().to_string();
    b.send(json!({"type": "auth", "token": write})).await;
    assert_eq!(b.recv().await["type"], "auth:success");
    let note = json!({"id": "n1", "kind": "note", "data": {"title": "My Note"}});
    b.send(
        json!({"type": "atome:created", "atome": note, "clientId": b_id,
        "timestamp": "2026-11-25T10:00:01.000Z"}),
    )
    .await;
    let got = a.recv().await;
    assert_eq!(got["type"], "atome:created");
    assert_eq!(got["atome"], note);
    assert!(b.try_recv(QUIET).await.is_none(), "no echo to the sender");
    // Its heartbeat.
    a.send(json!({"type": "ping", "timestamp": 1_764_064_800_000u64}))
        .await;
    assert_eq!(a.recv().await["type"], "pong");
    // A malformed message: an error the client can read, then business as usual.
    a.send(json!({"type": "atome:deleted", "clientId": client_id}))
        .await;
    let e = a.recv().await;
    assert_eq!(e["type"], "error");
    assert!(!e["message"].as_str().unwrap().is_empty());
    b.send(
        json!({"type": "atome:deleted", "atomeId": "n1", "clientId": b_id,
        "timestamp": "2026-11-25T10:00:02.000Z"}),
    )
    .await;
    assert_eq!(a.recv().await["atomeId"], "n1");
}

/// A connection that never authenticates is closed (1008) after 10 s.
#[tokio::test]
async fn seed001_unauthenticated_socket_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(auth_config(dir.path())).await;
    let mut a = Client::connect(relay.addr, "/ws/atome-sync").await;
    assert_eq!(a.recv().await["type"], "welcome");
    let started = std::time::Instant::now();
    use futures_util::StreamExt;
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(15), a.ws.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Close(f)))) => break f,
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(u16::from(close.expect("a close frame").code), 1008);
    assert!(started.elapsed() >= Duration::from_secs(9));
}

/// `src/squirrel/apis/unified/adapters/FastifyAdapter.js`: every call is
/// `fetch(url, {headers: {'Content-Type': 'application/json', Authorization:
/// 'Bearer …'}, body: JSON})` and the result is `{ok, status, ...json}`;
/// callers read `success` and `data`.
#[tokio::test]
async fn seed001_rest_adapter_calls() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(auth_config(dir.path())).await;
    let tok = token("alice", Scope::Write, None);
    let bearer = format!("Bearer {tok}");
    let call = |m: &'static str, p: String, b: Option<Value>| {
        let addr = relay.addr;
        let bearer = bearer.clone();
        async move {
            let body = b.map(|b| b.to_string());
            let (st, text) = http(
                addr,
                m,
                &p,
                &[("Authorization", bearer.as_str())],
                body.as_deref(),
            )
            .await;
            (
                st,
                serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
            )
        }
    };
    let mut sock = Client::connect(relay.addr, &format!("/ws/atome-sync?token={tok}")).await;
    assert_eq!(sock.recv().await["type"], "welcome");

    // isAvailable()
    let (st, info) = call("GET", "/api/server-info".into(), None).await;
    assert_eq!((st, info["success"].clone()), (200, json!(true)), "{info}");
    // atome.create({kind, data})
    let (st, c) = call(
        "POST",
        "/api/atome/create".into(),
        Some(json!({"kind": "note", "data": {"title": "Hello"}})),
    )
    .await;
    assert!(st == 201 || st == 200, "{st} {c}");
    assert_eq!(c["success"], true);
    let id = c["data"]["id"].as_str().expect("data.id").to_string();
    assert_eq!(sock.recv().await["type"], "atome:created");
    // atome.get(id)
    let (st, g) = call("GET", format!("/api/atome/{id}"), None).await;
    assert_eq!((st, g["data"]["kind"].clone()), (200, json!("note")), "{g}");
    // atome.list({kind})
    let (st, l) = call("GET", "/api/atome/list?kind=note".into(), None).await;
    assert_eq!(st, 200, "{l}");
    assert_eq!(
        (l["count"].clone(), l["data"][0]["id"].clone()),
        (json!(1), json!(id))
    );
    // atome.alter(id, {operation, changes, reason})
    let (st, a) = call(
        "POST",
        format!("/api/atome/{id}/alter"),
        Some(json!({"operation": "set", "changes": {"pinned": true}, "reason": "ui"})),
    )
    .await;
    assert_eq!(
        (st, a["data"]["alterations_applied"].clone()),
        (200, json!(1)),
        "{a}"
    );
    let ev = sock.recv().await;
    assert_eq!(
        (ev["type"].clone(), ev["atome"]["pinned"].clone()),
        (json!("atome:altered"), json!(true))
    );
    // atome.update(id, {properties})
    let (st, u) = call(
        "PUT",
        format!("/api/atome/{id}"),
        Some(json!({"properties": {"color": "red"}})),
    )
    .await;
    assert_eq!(
        (st, u["data"]["properties"]["color"].clone()),
        (200, json!("red")),
        "{u}"
    );
    assert_eq!(sock.recv().await["atome"]["color"], "red");
    // atome.rename(id, {newName})
    let (st, r) = call(
        "POST",
        format!("/api/atome/{id}/rename"),
        Some(json!({"newName": "Shopping"})),
    )
    .await;
    assert_eq!(
        (st, r["data"]["new_name"].clone()),
        (200, json!("Shopping")),
        "{r}"
    );
    assert_eq!(sock.recv().await["atome"]["name"], "Shopping");
    // atome.delete(id, {}) sends a body
    let (st, d) = call("DELETE", format!("/api/atome/{id}"), Some(json!({}))).await;
    assert_eq!(
        (st, d["success"].clone(), d["data"]["id"].clone()),
        (200, json!(true), json!(id)),
        "{d}"
    );
    assert_eq!(sock.recv().await["type"], "atome:deleted");
    let (st, _) = call("GET", format!("/api/atome/{id}"), None).await;
    assert_eq!(st, 404);
    // An alter of nothing is a 400, of a missing atome a 404.
    let (st, _) = call(
        "POST",
        "/api/atome/zz/alter".into(),
        Some(json!({"changes": {"a": 1}})),
    )
    .await;
    assert_eq!(st, 404);
    let (st, _) = call("POST", "/api/atome/zz/alter".into(), Some(json!({}))).await;
    assert_eq!(st, 400);
}

// ---- seed 004: jeetkhinde/RHTMX @ 02bec975 -------------------------------------------

use futures_util::StreamExt as _;
use tokio_tungstenite::tungstenite::Message;

/// The next JSON frame, text or gzipped binary (both clients accept both:
/// `event.data` is a string, or a Blob/ArrayBuffer they gunzip).
async fn recv_any(c: &mut Client) -> (Value, bool) {
    loop {
        let m = tokio::time::timeout(WAIT, c.ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("frame");
        match m {
            Message::Text(t) => return (serde_json::from_str(&t).unwrap(), false),
            Message::Binary(b) => {
                let t = outpost::dialect::gzip::gunzip_text(&b, 1 << 24).expect("gzip");
                return (serde_json::from_str(&t).unwrap(), true);
            }
            _ => continue,
        }
    }
}

/// What `rusty-sync.js` `applyChanges` does with a change: `store.put(data)`
/// into an object store with key path `id` (or delete by `entity_id`).
fn idb_put(store: &mut std::collections::BTreeMap<String, Value>, ch: &Value) {
    if ch["action"] == "delete" {
        store.remove(ch["entity_id"].as_str().unwrap());
    } else if !ch["data"].is_null() {
        let id = ch["data"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("DataError: key path `id` did not yield a value: {ch}"));
        store.insert(id.to_string(), ch["data"].clone());
    }
}

/// `rusty-sync.js`: `initialSync` (`GET /api/sync/{entity}?since=<stored
/// version>`, then stores `data.version`), `connectWebSocket` (`/api/sync/ws`,
/// `{type:"subscribe", entities}`), `pushChange` (`{type:"push", entity,
/// entity_id, action, data}`, gzipped as a binary frame when 1 KiB or more),
/// `pushViaHTTP` (`POST /api/sync/{entity}` `{changes:[{id, action, data}]}`),
/// and the SSE fallback (`/api/sync/events`, `event: sync`).
#[tokio::test]
async fn seed004_entity_client_versions_http_gzip_sse() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let addr = relay.addr;
    let mut tab = Client::connect(addr, "/api/sync/ws").await;
    tab.send(json!({"type": "subscribe", "entities": ["users"]}))
        .await;
    let mut writer = Client::connect(addr, "/api/sync/ws").await;

    // Per-type versions: va, vb, va -> 1, 2, 3.
    let mut acks = vec![];
    for (id, name) in [("va", "A"), ("vb", "B"), ("va", "A2")] {
        writer
            .send(
                json!({"type": "push", "entity": "users", "entity_id": id, "action": "create",
                "data": {"id": id, "name": name}}),
            )
            .await;
        let (ack, _) = recv_any(&mut writer).await;
        assert_eq!(
            (ack["type"].clone(), ack["entity_id"].clone()),
            (json!("push_ack"), json!(id))
        );
        acks.push(ack["version"].as_i64().unwrap());
    }
    assert_eq!(acks, vec![1, 2, 3]);
    let mut live = std::collections::BTreeMap::new();
    for _ in 0..3 {
        let (m, _) = recv_any(&mut tab).await;
        assert_eq!(m["type"], "change");
        idb_put(&mut live, &m["change"]);
    }

    // A reloaded tab with cursor 1 misses nothing: vb's create and va.
    let (st, body) = http(addr, "GET", "/api/sync/users?since=1", &[], None).await;
    assert_eq!(st, 200, "{body}");
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["entity"], "users");
    assert_eq!(r["version"], 3);
    let got: Vec<(String, i64)> = r["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["entity_id"].as_str().unwrap().to_string(),
                c["version"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, vec![("vb".into(), 2), ("va".into(), 3)]);
    let mut reloaded = std::collections::BTreeMap::new();
    for c in r["changes"].as_array().unwrap() {
        assert!(c["created_at"].is_string());
        idb_put(&mut reloaded, c);
    }
    assert_eq!(reloaded["va"]["name"], "A2");
    let (_, body) = http(addr, "GET", "/api/sync/users?since=3", &[], None).await;
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (r["version"].clone(), r["changes"].clone()),
        (json!(3), json!([]))
    );

    // Offline: pushed over HTTP; the open tab gets it with its id.
    let (st, body) = http(addr, "POST", "/api/sync/users", &[],
        Some(&json!({"changes": [{"id": "vc", "action": "create", "data": {"id": "vc", "name": "C"}}]}).to_string())).await;
    assert_eq!(st, 200, "{body}");
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (r["applied"].clone(), r["version"].clone()),
        (json!(["vc"]), json!(4))
    );
    let (m, _) = recv_any(&mut tab).await;
    idb_put(&mut live, &m["change"]);

    // A field write reaches the entity tab as the whole entity (4b).
    let mut fields = Client::connect(addr, "/api/field-sync/ws").await;
    fields
        .send(
            json!({"type": "push_fields", "entity": "users", "entity_id": "u2",
            "fields": [{"field": "email", "value": "u2@x.example", "action": "update",
                        "timestamp": "2026-11-25T10:00:00.000Z"}]}),
        )
        .await;
    assert_eq!(recv_any(&mut fields).await.0["type"], "push_ack");
    let (m, _) = recv_any(&mut tab).await;
    idb_put(&mut live, &m["change"]);
    assert_eq!(live["u2"], json!({"id": "u2", "email": "u2@x.example"}));

    // A compressed push (>= 1 KiB) is stored; its broadcast comes back
    // compressed to the tab.
    let bio = "x".repeat(2000);
    let push = json!({"type": "push", "entity": "users", "entity_id": "vd", "action": "create",
        "data": {"id": "vd", "bio": bio}});
    let zipped = outpost::dialect::gzip::gzip(&push.to_string());
    writer.send_raw(Message::Binary(zipped.into())).await;
    let (ack, _) = recv_any(&mut writer).await;
    assert_eq!(
        (ack["type"].clone(), ack["version"].clone()),
        (json!("push_ack"), json!(6))
    );
    let (m, compressed) = recv_any(&mut tab).await;
    assert!(compressed, "a large broadcast is gzipped");
    assert_eq!(m["change"]["data"]["bio"].as_str().unwrap().len(), 2000);
    // A gzip bomb is an error; the connection keeps serving.
    let bomb = outpost::dialect::gzip::gzip(&" ".repeat(8 << 20));
    writer.send_raw(Message::Binary(bomb.into())).await;
    let (e, _) = recv_any(&mut writer).await;
    assert_eq!(
        (e["type"].clone(), e["code"].clone()),
        (json!("error"), json!("too_large")),
        "{e}"
    );
    writer.send(json!({"type": "ping"})).await;
    assert_eq!(recv_any(&mut writer).await.0["type"], "pong");

    // SSE fallback: `event: sync`, data = a ChangeLog with the whole entity.
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "GET /api/sync/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut lines = BufReader::new(s).lines();
    let status = lines.next_line().await.unwrap().unwrap();
    assert!(status.contains(" 200 "), "{status}");
    // Headers end, then the stream is open: write something.
    while !lines.next_line().await.unwrap().unwrap().is_empty() {}
    writer
        .send(
            json!({"type": "push", "entity": "posts", "entity_id": "p1", "action": "update",
            "data": {"title": "t"}}),
        )
        .await;
    let (event, data) = tokio::time::timeout(WAIT, async {
        let mut event = String::new();
        loop {
            let l = lines.next_line().await.unwrap().unwrap();
            // Chunked framing lines (sizes) are skipped.
            if let Some(e) = l.strip_prefix("event: ") {
                event = e.to_string();
            } else if let Some(d) = l.strip_prefix("data: ") {
                return (event, serde_json::from_str::<Value>(d).unwrap());
            }
        }
    })
    .await
    .expect("an SSE event");
    assert_eq!(event, "sync");
    assert_eq!(
        (data["entity"].clone(), data["data"]["id"].clone()),
        (json!("posts"), json!("p1"))
    );
    assert_eq!(data["version"], 1);
}

/// `rusty-field-sync.js` on `/api/field-sync/ws`: subscribes with
/// `{type:"subscribe"}`, pushes `{type:"push_fields", ...}` and reads
/// `push_ack`, `conflict` and `field_change`; catches up with
/// `GET /api/field-sync/{entity}?since=N` (`{entity, version, changes}`).
#[tokio::test]
async fn seed004_field_client_names_and_catch_up() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let addr = relay.addr;
    let mut tab = Client::connect(addr, "/api/field-sync/ws").await;
    tab.send(json!({"type": "subscribe", "entities": ["users"]}))
        .await;
    let mut other = Client::connect(addr, "/api/field-sync/ws").await;
    other
        .send(json!({"type": "subscribe", "entities": ["users"]}))
        .await;
    // Let both subscriptions register before the first write.
    for c in [&mut tab, &mut other] {
        c.send(json!({"type": "ping"})).await;
        assert_eq!(recv_any(c).await.0["type"], "pong");
    }

    let field = |v: &str, ts: &str| {
        json!({"type": "push_fields", "entity": "users", "entity_id": "u1",
        "fields": [{"field": "name", "value": v, "action": "update", "timestamp": ts}]})
    };
    tab.send(field("Ann", "2026-11-25T10:00:01.000Z")).await;
    let mut seen = vec![];
    while seen.len() < 2 {
        let (m, _) = recv_any(&mut tab).await;
        seen.push(m["type"].as_str().unwrap().to_string());
        if m["type"] == "push_ack" {
            assert_eq!(
                (m["applied"].clone(), m["conflicts"].clone()),
                (json!(1), json!(0))
            );
        }
    }
    seen.sort();
    assert_eq!(seen, vec!["field_change", "push_ack"]);
    let (fc, _) = recv_any(&mut other).await;
    assert_eq!(fc["type"], "field_change");
    assert_eq!(
        (fc["change"]["field"].clone(), fc["change"]["value"].clone()),
        (json!("name"), json!("Ann"))
    );
    assert_eq!(fc["change"]["version"], 1);

    // An older edit loses: `push_ack` with a conflict, then `conflict`.
    other.send(field("Old", "2026-11-25T09:00:00.000Z")).await;
    let (ack, _) = recv_any(&mut other).await;
    assert_eq!(
        (ack["type"].clone(), ack["conflicts"].clone()),
        (json!("push_ack"), json!(1))
    );
    let (c, _) = recv_any(&mut other).await;
    assert_eq!(c["type"], "conflict", "{c}");
    assert_eq!(
        (c["server_value"].clone(), c["client_value"].clone()),
        (json!("Ann"), json!("Old"))
    );

    // Catch-up after a reload, and its cursor.
    let (st, body) = http(addr, "GET", "/api/field-sync/users?since=0", &[], None).await;
    assert_eq!(st, 200, "{body}");
    let r: Value = serde_json::from_str(&body).unwrap();
    let v = r["version"].as_i64().unwrap();
    assert!(v >= 1);
    let ch = &r["changes"][0];
    assert_eq!(
        (
            ch["entity_id"].clone(),
            ch["field"].clone(),
            ch["value"].clone(),
            ch["action"].clone()
        ),
        (json!("u1"), json!("name"), json!("Ann"), json!("update"))
    );
    let (_, body) = http(
        addr,
        "GET",
        &format!("/api/field-sync/users?since={v}"),
        &[],
        None,
    )
    .await;
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["changes"], json!([]));
    // `pushFieldsViaHTTP`.
    let (st, body) = http(addr, "POST", "/api/field-sync/users", &[],
        Some(&json!({"changes": [{"entity_id": "u1", "field": "age", "value": 30, "action": "update",
            "timestamp": "2026-11-25T10:00:02.000Z"}]}).to_string())).await;
    assert_eq!(st, 200, "{body}");
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (r["applied"][0]["field"].clone(), r["conflicts"].clone()),
        (json!("age"), json!([]))
    );
    let (fc, _) = recv_any(&mut tab).await;
    assert_eq!(fc["change"]["field"], "age");
}
