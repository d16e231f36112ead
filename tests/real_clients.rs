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
