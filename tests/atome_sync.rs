//! Seed 001, atome real-time sync: /ws/atome-sync and the /api/atome REST
//! endpoints, driven over real WebSockets and HTTP against a relay on
//! 127.0.0.1:0. Shapes are compared field by field with the seed's tables.

mod common;

use common::*;
use outpost::auth::Scope;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const QUIET: Duration = Duration::from_millis(300);

async fn atome_client(addr: SocketAddr, query: &str) -> (Client, Value) {
    let mut c = Client::connect(addr, &format!("/ws/atome-sync{query}")).await;
    let hello = c.recv().await;
    assert_eq!(hello["type"], "welcome", "{hello}");
    (c, hello)
}

fn is_iso(v: &Value) -> bool {
    let s = v.as_str().unwrap_or("");
    s.len() == 24 && s.ends_with('Z') && &s[10..11] == "T"
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

async fn rest(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    let body = body.map(|b| b.to_string());
    let (status, text) = http(addr, method, path, &headers, body.as_deref()).await;
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

#[tokio::test]
async fn connect_message_and_ping() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let (mut c, hello) = atome_client(relay.addr, "").await;
    assert_eq!(
        keys(&hello),
        ["clientId", "serverTime", "timestamp", "type"]
    );
    assert!(hello["clientId"].as_str().unwrap().starts_with("client_"));
    assert!(is_iso(&hello["serverTime"]), "{hello}");
    assert_eq!(hello["timestamp"], hello["serverTime"]);
    let (_, named) = atome_client(relay.addr, "?clientId=tauri-7").await;
    assert_eq!(named["clientId"], "tauri-7");

    c.send(json!({"type": "ping", "timestamp": 1700000000000u64}))
        .await;
    assert_eq!(
        c.recv().await,
        json!({"type": "pong", "timestamp": 1700000000000u64})
    );
    c.send(json!({"type": "ping"})).await;
    let p = c.recv().await;
    assert_eq!(p["type"], "pong");
    assert!(p["timestamp"].as_u64().is_some());
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn writes_are_broadcast_to_every_other_client() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let (mut a, _) = atome_client(relay.addr, "?space=s&clientId=A").await;
    let (mut b, _) = atome_client(relay.addr, "?space=s&clientId=B").await;
    let (mut c, _) = atome_client(relay.addr, "?space=s&clientId=C").await;
    let (mut other, _) = atome_client(relay.addr, "?space=t").await;

    let atome =
        json!({"id": "n1", "kind": "note", "data": {"title": "My Note", "content": "Hello world"}});
    a.send(json!({"type": "atome:created", "atome": atome}))
        .await;
    for peer in [&mut b, &mut c] {
        let e = peer.recv().await;
        assert_eq!(keys(&e), ["atome", "sourceClient", "timestamp", "type"]);
        assert_eq!(e["type"], "atome:created");
        assert_eq!(e["atome"], atome);
        assert_eq!(e["sourceClient"], "A");
        assert!(is_iso(&e["timestamp"]));
    }

    let v2 = json!({"id": "n1", "kind": "note", "data": {"title": "v2"}});
    b.send(json!({"type": "atome:updated", "atome": v2})).await;
    for peer in [&mut a, &mut c] {
        let e = peer.recv().await;
        assert_eq!(e["type"], "atome:updated");
        assert_eq!(e["atome"], v2);
        assert_eq!(e["sourceClient"], "B");
    }

    // An alteration is merged; the broadcast carries the resulting atome.
    c.send(json!({"type": "atome:altered", "atomeId": "n1",
                  "alteration": {"pinned": true, "kind": null}}))
        .await;
    for peer in [&mut a, &mut b] {
        let e = peer.recv().await;
        assert_eq!(
            keys(&e),
            [
                "alteration",
                "atome",
                "atomeId",
                "sourceClient",
                "timestamp",
                "type"
            ]
        );
        assert_eq!(e["type"], "atome:altered");
        assert_eq!(e["atomeId"], "n1");
        assert_eq!(e["alteration"], json!({"pinned": true, "kind": null}));
        assert_eq!(
            e["atome"],
            json!({"id": "n1", "data": {"title": "v2"}, "pinned": true})
        );
        assert_eq!(e["sourceClient"], "C");
    }

    a.send(json!({"type": "atome:deleted", "atomeId": "n1"}))
        .await;
    for peer in [&mut b, &mut c] {
        let e = peer.recv().await;
        assert_eq!(keys(&e), ["atomeId", "sourceClient", "timestamp", "type"]);
        assert_eq!(e["type"], "atome:deleted");
        assert_eq!(e["atomeId"], "n1");
        assert_eq!(e["sourceClient"], "A");
    }

    // Nobody got their own write back; the other space saw nothing.
    for quiet in [&mut a, &mut b, &mut c, &mut other] {
        assert_eq!(quiet.try_recv(QUIET).await, None);
    }
    let (status, body) = rest(relay.addr, "GET", "/api/atome/n1?space=s", None, None).await;
    assert_eq!(status, 404, "{body}");
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn socket_errors_keep_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let (mut c, _) = atome_client(relay.addr, "").await;
    let cases = [
        ("{oops", "invalid-payload"),
        (r#"{"type":"atome:created"}"#, "invalid-payload"),
        (
            r#"{"type":"atome:created","atome":{"kind":"x"}}"#,
            "invalid-payload",
        ),
        (r#"{"type":"atome:created","atome":[1]}"#, "invalid-payload"),
        (
            r#"{"type":"atome:altered","atomeId":"a"}"#,
            "invalid-payload",
        ),
        (
            r#"{"type":"atome:altered","atomeId":"a","alteration":{"id":"b"}}"#,
            "invalid-payload",
        ),
        (r#"{"type":"atome:deleted"}"#, "invalid-payload"),
        (
            r#"{"type":"atome:deleted","atomeId":""}"#,
            "invalid-payload",
        ),
        (
            r#"{"type":"atome:teleported","atomeId":"a"}"#,
            "unknown-type",
        ),
    ];
    for (text, code) in cases {
        c.send_raw(Message::Text(text.into())).await;
        let e = c.recv().await;
        assert_eq!(e["type"], "error", "{text}");
        assert_eq!(e["code"], code, "{text}");
        assert!(!e["error"].as_str().unwrap().is_empty());
        assert!(is_iso(&e["timestamp"]));
    }
    c.send(json!({"type": "atome:deleted", "requestId": 7}))
        .await;
    assert_eq!(c.recv().await["requestId"], 7);
    c.send_raw(Message::Binary(vec![0].into())).await;
    assert_eq!(c.recv().await["code"], "invalid-payload");
    c.send(json!({"type": "ping", "timestamp": 1})).await;
    assert_eq!(c.recv().await["type"], "pong");
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn rest_endpoints_read_write_and_broadcast() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let addr = relay.addr;
    let (mut sock, _) = atome_client(addr, "").await;

    // Create with an id.
    let note = json!({"id": "n1", "kind": "note", "data": {"title": "My Note"}});
    let (st, body) = rest(addr, "POST", "/api/atome/create", None, Some(note.clone())).await;
    assert_eq!(st, 201, "{body}");
    assert_eq!(body, json!({"success": true, "atome": note, "data": note}));
    let e = sock.recv().await;
    assert_eq!(e["type"], "atome:created");
    assert_eq!(e["atome"], note);
    assert_eq!(e["sourceClient"], "anonymous");

    // Create without an id (wrapped form): the relay generates one.
    let (st, body) = rest(
        addr,
        "POST",
        "/api/atome/create",
        None,
        Some(json!({"atome": {"kind": "task", "data": {"done": false}}})),
    )
    .await;
    assert_eq!(st, 201, "{body}");
    let id = body["atome"]["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 36);
    assert_eq!(sock.recv().await["atome"]["id"], id.as_str());

    // Creating an existing id replaces it: 200 and a broadcast update.
    let note2 = json!({"id": "n1", "kind": "note", "data": {"title": "v2"}});
    let (st, _) = rest(addr, "POST", "/api/atome/create", None, Some(note2.clone())).await;
    assert_eq!(st, 200);
    let e = sock.recv().await;
    assert_eq!(e["type"], "atome:updated");
    assert_eq!(e["atome"], note2);

    // Reads.
    let (st, body) = rest(addr, "GET", "/api/atome/n1", None, None).await;
    assert_eq!(
        (st, body),
        (200, json!({"success": true, "atome": note2, "data": note2}))
    );
    let (st, body) = rest(addr, "GET", "/api/atome/nope", None, None).await;
    assert_eq!(st, 404);
    assert_eq!(body["success"], false);
    assert_eq!(body["code"], "not-found");
    let (st, body) = rest(addr, "GET", "/api/atome?kind=note", None, None).await;
    assert_eq!(st, 200);
    assert_eq!(
        body,
        json!({"success": true, "atomes": [note2], "data": [note2], "count": 1})
    );
    let (_, body) = rest(addr, "GET", "/api/atome", None, None).await;
    assert_eq!(body["count"], 2);
    let (_, body) = rest(addr, "GET", "/api/atome?limit=1", None, None).await;
    assert_eq!(body["count"], 1);
    let (st, _) = rest(addr, "GET", "/api/atome?limit=0", None, None).await;
    assert_eq!(st, 400);

    // PATCH merges and broadcasts atome:altered with the result.
    let (st, body) = rest(
        addr,
        "PATCH",
        "/api/atome/n1",
        None,
        Some(json!({"pinned": true})),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let merged = json!({"id": "n1", "kind": "note", "data": {"title": "v2"}, "pinned": true});
    assert_eq!(
        body,
        json!({"success": true, "atome": merged, "data": merged})
    );
    let e = sock.recv().await;
    assert_eq!(e["type"], "atome:altered");
    assert_eq!(e["atomeId"], "n1");
    assert_eq!(e["alteration"], json!({"pinned": true}));
    assert_eq!(e["atome"], merged);
    let (st, _) = rest(
        addr,
        "PATCH",
        "/api/atome/nope",
        None,
        Some(json!({"x": 1})),
    )
    .await;
    assert_eq!(st, 404);

    // DELETE.
    let (st, body) = rest(addr, "DELETE", "/api/atome/n1", None, None).await;
    assert_eq!(
        (st, body["success"].clone(), body["atomeId"].clone()),
        (200, json!(true), json!("n1"))
    );
    assert_eq!(body["data"]["id"], "n1");
    let e = sock.recv().await;
    assert_eq!(e["type"], "atome:deleted");
    assert_eq!(e["atomeId"], "n1");
    let (st, _) = rest(addr, "GET", "/api/atome/n1", None, None).await;
    assert_eq!(st, 404);
    let (st, _) = rest(addr, "DELETE", "/api/atome/n1", None, None).await;
    assert_eq!(st, 404);
    let (_, body) = rest(addr, "GET", "/api/atome?kind=note", None, None).await;
    assert_eq!(body["count"], 0);

    // Bad bodies.
    let (st, text) = http(addr, "POST", "/api/atome/create", &[], Some("{nope")).await;
    assert_eq!(st, 400, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["code"], "invalid-payload");
    let (st, _) = rest(addr, "POST", "/api/atome/create", None, Some(json!([1]))).await;
    assert_eq!(st, 400);
    let (st, _) = rest(
        addr,
        "POST",
        "/api/atome/create",
        None,
        Some(json!({"id": 5})),
    )
    .await;
    assert_eq!(st, 400);
    let (st, body) = rest(
        addr,
        "PATCH",
        &format!("/api/atome/{id}"),
        None,
        Some(json!(3)),
    )
    .await;
    assert_eq!(st, 400, "{body}");

    // A client naming itself sees its REST writes attributed to it.
    let (st, _) = http(
        addr,
        "POST",
        "/api/atome/create",
        &[("X-Client-Id", "tauri-1")],
        Some(r#"{"id":"n9"}"#),
    )
    .await;
    assert_eq!(st, 201);
    assert_eq!(sock.recv().await["sourceClient"], "tauri-1");
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn rest_and_socket_honour_token_scopes() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(auth_config(dir.path())).await;
    let addr = relay.addr;
    let r = token("rob", Scope::Read, None);
    let w = token("ann", Scope::Write, None);
    let home = token("ann", Scope::Write, Some(vec!["home".into()]));

    let a = json!({"id": "a1", "kind": "note"});
    let (st, body) = rest(addr, "POST", "/api/atome/create", None, Some(a.clone())).await;
    assert_eq!(st, 401);
    assert_eq!(body["code"], "unauthorized");
    let (st, _) = rest(addr, "GET", "/api/atome/a1", Some("bad.token.x"), None).await;
    assert_eq!(st, 401);
    let (st, body) = rest(addr, "POST", "/api/atome/create", Some(&r), Some(a.clone())).await;
    assert_eq!(st, 403);
    assert_eq!(body["code"], "forbidden");
    let (st, _) = rest(
        addr,
        "POST",
        "/api/atome/create?space=work",
        Some(&home),
        Some(a.clone()),
    )
    .await;
    assert_eq!(st, 403);

    let (mut sock, _) = atome_client(addr, &format!("?token={r}")).await;
    let (st, _) = rest(addr, "POST", "/api/atome/create", Some(&w), Some(a.clone())).await;
    assert_eq!(st, 201);
    let e = sock.recv().await;
    assert_eq!(e["type"], "atome:created");
    assert_eq!(e["sourceClient"], "ann");

    let (st, _) = rest(addr, "GET", "/api/atome/a1", Some(&r), None).await;
    assert_eq!(st, 200);
    let (st, _) = rest(
        addr,
        "GET",
        &format!("/api/atome?kind=note&token={r}"),
        None,
        None,
    )
    .await;
    assert_eq!(st, 200);
    for (m, body) in [("PATCH", Some(json!({"x": 1}))), ("DELETE", None)] {
        let (st, _) = rest(addr, m, "/api/atome/a1", Some(&r), body).await;
        assert_eq!(st, 403, "{m}");
    }
    let (st, _) = rest(addr, "DELETE", "/api/atome/a1", Some(&w), None).await;
    assert_eq!(st, 200);
    assert_eq!(sock.recv().await["type"], "atome:deleted");

    // Socket: a bad token is refused at the handshake (no token is let in to
    // authenticate in-band: tests/real_clients.rs); a read token cannot write.
    assert_eq!(
        handshake_status(addr, "/ws/atome-sync?token=nope", None).await,
        401
    );
    assert_eq!(
        handshake_status(addr, "/ws/atome-sync?space=work", Some(&home)).await,
        403
    );
    sock.send(json!({"type": "atome:created", "atome": {"id": "z"}}))
        .await;
    let e = sock.recv().await;
    assert_eq!(e["type"], "error");
    assert_eq!(e["code"], "forbidden");
    relay.shutdown().await.unwrap();
}

/// Bug: PATCH and DELETE of `/api/atome/{id}` checked that the atome
/// exists, then queued the write without a precondition: a PATCH checked
/// while a DELETE was queued ahead of it was applied after the delete and
/// brought the atome back. The writer now checks existence inside the
/// transaction (`Expect::Exists`). The writer is held so the DELETE is
/// queued first and the PATCH second, both after their handlers ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_racing_a_delete_does_not_bring_the_atome_back() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let addr = relay.addr;
    let note = json!({"id": "a1", "kind": "note", "title": "first"});
    let (st, _) = rest(addr, "POST", "/api/atome/create", None, Some(note)).await;
    assert_eq!(st, 201);
    let engine = relay.state.engine.clone();
    let queued = |n: u64| {
        let engine = engine.clone();
        async move {
            for _ in 0..2000 {
                if engine.jobs_enqueued() >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            panic!("the request's write was not queued");
        }
    };
    let hold = engine.hold_writer().await.unwrap();
    let base = engine.jobs_enqueued();
    let delete = tokio::spawn(rest(addr, "DELETE", "/api/atome/a1", None, None));
    queued(base + 1).await;
    let patch = tokio::spawn(rest(
        addr,
        "PATCH",
        "/api/atome/a1",
        None,
        Some(json!({"title": "back?"})),
    ));
    queued(base + 2).await;
    drop(hold);
    let (st, body) = delete.await.unwrap();
    assert_eq!(st, 200, "{body}");
    let (st, body) = patch.await.unwrap();
    assert_eq!(st, 404, "the patch came after the delete: {body}");
    assert_eq!(body["code"], "not-found", "{body}");
    let (st, body) = rest(addr, "GET", "/api/atome/a1", None, None).await;
    assert_eq!(st, 404, "the atome stays deleted: {body}");
    // A second DELETE of the same atome is 404 too.
    let (st, _) = rest(addr, "DELETE", "/api/atome/a1", None, None).await;
    assert_eq!(st, 404);
    relay.shutdown().await.unwrap();
}
