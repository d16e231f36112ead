//! Seed 004 (unified multiplexed protocol) on /api/ws, /api/sync/ws and
//! /api/field-sync/ws, driven over real WebSockets against a relay on
//! 127.0.0.1:0. Shapes are compared field by field with the seed's
//! `UnifiedMessage` enum, `ChangeLog` and `FieldChange`.

mod common;

use common::*;
use outpost::rfc3339::Timestamp;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;
use tokio_tungstenite::tungstenite::Message;

/// The keys of a JSON object, sorted.
fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

const CHANGE_LOG_KEYS: &[&str] = &[
    "id",
    "entity",
    "entity_id",
    "action",
    "data",
    "version",
    "client_id",
    "timestamp",
    "created_at",
];
const FIELD_CHANGE_KEYS: &[&str] = &[
    "entity",
    "entity_id",
    "field",
    "value",
    "action",
    "timestamp",
    "version",
];

/// Send a ping and return every frame before the pong: the actor answers
/// in order, so this is a barrier after earlier requests.
async fn barrier(c: &mut Client) -> Vec<Value> {
    c.send(json!({"type": "ping"})).await;
    let (before, pong) = c.until("pong").await;
    assert_eq!(pong, json!({"type": "pong"}));
    before
}

/// Expect an `error` frame with this code; checks its exact shape.
async fn expect_error(c: &mut Client, code: &str) -> String {
    let e = c.recv().await;
    assert_eq!(keys(&e), set(&["type", "message", "code"]), "{e}");
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], code, "{e}");
    let m = e["message"]
        .as_str()
        .expect("message is a string")
        .to_string();
    assert!(!m.is_empty());
    m
}

fn ts_ms(v: &Value) -> u64 {
    Timestamp::parse(v.as_str().expect("timestamp is a string"))
        .expect("RFC 3339")
        .unix_ms()
        .unwrap()
}

async fn push(c: &mut Client, entity: &str, id: &str, action: &str, data: Value) -> Value {
    let mut m = json!({"type": "push", "entity": entity, "entity_id": id, "action": action});
    if !data.is_null() {
        m["data"] = data;
    }
    c.send(m).await;
    c.recv().await
}

#[tokio::test]
async fn push_subscribe_change_and_sync_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let mut a = Client::connect(relay.addr, "/api/ws?client_id=alice").await;
    let mut b = Client::connect(relay.addr, "/api/ws").await;
    b.send(json!({"type": "subscribe", "entities": ["users"]}))
        .await;
    assert!(barrier(&mut b).await.is_empty());
    let before = outpost::engine::now_ms();

    let ack = push(
        &mut a,
        "users",
        "u1",
        "create",
        json!({"name": "Ann", "age": 30}),
    )
    .await;
    assert_eq!(
        ack,
        json!({"type": "push_ack", "entity": "users", "entity_id": "u1", "version": 1})
    );
    let ch = b.recv().await;
    assert_eq!(keys(&ch), set(&["type", "change"]));
    assert_eq!(ch["type"], "change");
    let c = &ch["change"];
    assert_eq!(keys(c), set(CHANGE_LOG_KEYS));
    assert_eq!(c["id"], 1);
    assert_eq!(c["entity"], "users");
    assert_eq!(c["entity_id"], "u1");
    assert_eq!(c["action"], "create");
    // `data` is the entity's whole state, `id` included (issue 13, 4b).
    assert_eq!(c["data"], json!({"name": "Ann", "age": 30, "id": "u1"}));
    assert_eq!(c["version"], 1);
    assert_eq!(c["created_at"], c["timestamp"]);
    assert_eq!(c["client_id"], "alice");
    let t = ts_ms(&c["timestamp"]);
    assert!(t >= before && t <= outpost::engine::now_ms(), "{c}");

    // update: the fields of data are set, null removes one.
    let ack = push(
        &mut a,
        "users",
        "u1",
        "update",
        json!({"age": 31, "name": null}),
    )
    .await;
    assert_eq!(ack["type"], "push_ack");
    assert_eq!(ack["version"], 2);
    let c = b.recv().await["change"].clone();
    assert_eq!(c["action"], "update");
    assert_eq!(c["data"], json!({"age": 31, "id": "u1"}));
    assert_eq!(
        (c["id"].clone(), c["version"].clone()),
        (json!(2), json!(2))
    );

    // Another entity type is not delivered to a `users` subscriber, and
    // has its own per-type versions.
    let ack = push(&mut a, "posts", "p1", "create", json!({"title": "t"})).await;
    assert_eq!(ack["version"], 1);
    assert!(barrier(&mut b).await.is_empty());

    let ack = push(&mut a, "users", "u1", "delete", Value::Null).await;
    assert_eq!(ack["version"], 3);
    let c = b.recv().await["change"].clone();
    assert_eq!(c["action"], "delete");
    assert_eq!(c["data"], Value::Null);
    assert_eq!(c["version"], 3);
    assert_eq!(c["id"], 4);

    // A second entity (the type's next version), and a writer that is not
    // subscribed sees nothing.
    let ack = push(&mut a, "users", "u2", "create", json!({"name": "Bob"})).await;
    assert_eq!(ack["version"], 4);
    assert_eq!(b.recv().await["change"]["entity_id"], "u2");
    assert!(barrier(&mut a).await.is_empty());

    // sync: each entity of the type changed after per-type version `since`,
    // once, at its newest version with its current state.
    let mut c = Client::connect(relay.addr, "/api/sync/ws").await;
    c.send(json!({"type": "sync", "entity": "users", "since": 0}))
        .await;
    let all = barrier(&mut c).await;
    let seen: Vec<(String, i64, &str)> = all
        .iter()
        .map(|m| {
            assert_eq!(m["type"], "change");
            assert_eq!(keys(&m["change"]), set(CHANGE_LOG_KEYS));
            (
                m["change"]["entity_id"].as_str().unwrap().to_string(),
                m["change"]["version"].as_i64().unwrap(),
                m["change"]["action"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("u1".to_string(), 3, "delete"),
            ("u2".to_string(), 4, "create"),
        ]
    );
    // Ids are the relay's log seqs of each entity's newest change.
    let ids: Vec<i64> = all
        .iter()
        .map(|m| m["change"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![4, 5]);
    c.send(json!({"type": "sync", "entity": "users", "since": 1}))
        .await;
    let later = barrier(&mut c).await;
    let versions: Vec<i64> = later
        .iter()
        .map(|m| m["change"]["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, vec![3, 4]);
    c.send(json!({"type": "sync", "entity": "users", "since": 3}))
        .await;
    let later = barrier(&mut c).await;
    assert_eq!(later.len(), 1);
    assert_eq!(
        later[0]["change"]["data"],
        json!({"name": "Bob", "id": "u2"})
    );
    c.send(json!({"type": "sync", "entity": "posts", "since": 0}))
        .await;
    let posts = barrier(&mut c).await;
    assert_eq!(posts.len(), 1);
    assert_eq!(
        posts[0]["change"]["data"],
        json!({"title": "t", "id": "p1"})
    );
    c.send(json!({"type": "sync", "entity": "nothing", "since": 0}))
        .await;
    assert!(barrier(&mut c).await.is_empty());
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn subscriptions_accumulate_and_spaces_are_separate() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let mut w = Client::connect(relay.addr, "/api/ws").await;
    let mut other = Client::connect(relay.addr, "/api/ws?space=elsewhere").await;
    let mut r = Client::connect(relay.addr, "/api/ws").await;
    r.send(json!({"type": "subscribe", "entities": ["users"]}))
        .await;
    barrier(&mut r).await;
    // A type subscribed later starts now: its past is not replayed.
    push(&mut w, "posts", "p0", "create", json!({"n": 0})).await;
    r.send(json!({"type": "subscribe", "entities": ["posts"]}))
        .await;
    // Subscribing to a type twice does not deliver twice.
    r.send(json!({"type": "subscribe", "entities": ["users", "posts"]}))
        .await;
    assert!(barrier(&mut r).await.is_empty());
    other
        .send(json!({"type": "subscribe", "entities": ["users", "posts"]}))
        .await;
    barrier(&mut r).await;
    barrier(&mut other).await;
    push(&mut w, "users", "u", "create", json!({"n": 1})).await;
    push(&mut w, "posts", "p", "create", json!({"n": 2})).await;
    push(&mut w, "tags", "t", "create", json!({"n": 3})).await;
    let got = barrier(&mut r).await;
    let ents: Vec<&str> = got
        .iter()
        .map(|m| m["change"]["entity"].as_str().unwrap())
        .collect();
    assert_eq!(ents, vec!["users", "posts"]);
    assert!(barrier(&mut other).await.is_empty());
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn push_fields_acks_conflicts_and_field_changes() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let mut a = Client::connect(relay.addr, "/api/ws").await;
    let mut b = Client::connect(relay.addr, "/api/field-sync/ws").await;
    b.send(json!({"type": "subscribe_fields", "entities": ["users"]}))
        .await;
    assert!(barrier(&mut b).await.is_empty());

    let now = outpost::engine::now_ms() - 1000;
    let t = Timestamp::from_unix_ms(now).to_string();
    let old = Timestamp::from_unix_ms(now - 3_600_000).to_string();
    let newer = Timestamp::from_unix_ms(now + 500).to_string();
    a.send(
        json!({"type": "push_fields", "entity": "users", "entity_id": "u2", "fields": [
            {"field": "email", "value": "a@x.example", "action": "update", "timestamp": t},
            {"field": "nick", "value": "an", "action": "update", "timestamp": t},
        ]}),
    )
    .await;
    assert_eq!(
        a.recv().await,
        json!({"type": "field_push_ack", "entity": "users", "entity_id": "u2", "applied": 2, "conflicts": 0})
    );
    let f1 = b.recv().await;
    let f2 = b.recv().await;
    assert_eq!(keys(&f1), set(&["type", "change"]));
    assert_eq!(f1["type"], "field_change");
    assert_eq!(keys(&f1["change"]), set(FIELD_CHANGE_KEYS));
    assert_eq!(
        f1["change"],
        json!({"entity": "users", "entity_id": "u2", "field": "email", "value": "a@x.example",
               "action": "update", "timestamp": t, "version": 1})
    );
    assert_eq!(f2["change"]["field"], "nick");
    assert_eq!(f2["change"]["value"], "an");

    // email with an older client timestamp loses; nick is removed (newer).
    a.send(
        json!({"type": "push_fields", "entity": "users", "entity_id": "u2", "fields": [
            {"field": "email", "value": "old@x.example", "action": "update", "timestamp": old},
            {"field": "nick", "action": "delete", "timestamp": newer},
        ]}),
    )
    .await;
    assert_eq!(
        a.recv().await,
        json!({"type": "field_push_ack", "entity": "users", "entity_id": "u2", "applied": 1, "conflicts": 1})
    );
    let conflict = a.recv().await;
    assert_eq!(
        keys(&conflict),
        set(&[
            "type",
            "entity",
            "entity_id",
            "field",
            "server_value",
            "server_timestamp",
            "client_value",
            "client_timestamp"
        ])
    );
    assert_eq!(
        conflict,
        json!({"type": "field_conflict", "entity": "users", "entity_id": "u2", "field": "email",
               "server_value": "a@x.example", "server_timestamp": t,
               "client_value": "old@x.example", "client_timestamp": old})
    );
    // The subscriber sees the removal, never the losing value.
    let got = barrier(&mut b).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let c = &got[0]["change"];
    assert_eq!(
        (c["field"].clone(), c["action"].clone(), c["value"].clone()),
        (json!("nick"), json!("delete"), Value::Null)
    );
    assert_eq!(c["timestamp"], newer);

    // An entity-level update reaches field subscribers field by field.
    push(&mut a, "users", "u2", "update", json!({"city": "Oslo"})).await;
    let got = barrier(&mut b).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["change"]["field"], "city");
    assert_eq!(got[0]["change"]["action"], "update");

    // The unified endpoint carries both families on one connection.
    let mut u = Client::connect(relay.addr, "/api/ws").await;
    u.send(json!({"type": "subscribe", "entities": ["users"]}))
        .await;
    u.send(json!({"type": "subscribe_fields", "entities": ["users"]}))
        .await;
    barrier(&mut u).await;
    push(&mut a, "users", "u2", "update", json!({"zip": "0150"})).await;
    let got = barrier(&mut u).await;
    let types: BTreeSet<&str> = got.iter().map(|m| m["type"].as_str().unwrap()).collect();
    assert_eq!(types, BTreeSet::from(["change", "field_change"]));
    // An empty push_fields is acknowledged without a write.
    a.send(json!({"type": "push_fields", "entity": "users", "entity_id": "u2", "fields": []}))
        .await;
    assert_eq!(a.recv().await["applied"], 0);
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn subset_endpoints_refuse_the_other_family() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let ts = "2024-05-01T12:00:00Z";
    let entity_msgs = [
        json!({"type": "subscribe", "entities": ["users"]}),
        json!({"type": "sync", "entity": "users", "since": 0}),
        json!({"type": "push", "entity": "users", "entity_id": "1", "action": "create", "data": {}}),
    ];
    let field_msgs = [
        json!({"type": "subscribe_fields", "entities": ["users"]}),
        json!({"type": "push_fields", "entity": "users", "entity_id": "2",
               "fields": [{"field": "a", "value": 1, "action": "update", "timestamp": ts}]}),
    ];
    let validation_msgs = [
        json!({"type": "validate_field", "request_id": "r", "form": "f", "field": "a", "value": "v"}),
        json!({"type": "validate_form", "request_id": "r", "form": "f", "fields": []}),
    ];
    let mut e = Client::connect(relay.addr, "/api/sync/ws").await;
    for m in field_msgs.iter().chain(&validation_msgs) {
        e.send(m.clone()).await;
        let msg = expect_error(&mut e, "unsupported").await;
        assert!(msg.contains("/api/sync/ws"), "{msg}");
    }
    // Its own family works.
    e.send(entity_msgs[2].clone()).await;
    assert_eq!(e.recv().await["type"], "push_ack");
    assert!(barrier(&mut e).await.is_empty());

    let mut f = Client::connect(relay.addr, "/api/field-sync/ws").await;
    // `subscribe` is the field client's own name for `subscribe_fields`
    // there (tests/real_clients.rs); the other entity messages are refused.
    for m in entity_msgs.iter().skip(1).chain(&validation_msgs) {
        f.send(m.clone()).await;
        let msg = expect_error(&mut f, "unsupported").await;
        assert!(msg.contains("/api/field-sync/ws"), "{msg}");
    }
    f.send(field_msgs[1].clone()).await;
    // The field client's name for the ack on its endpoint.
    assert_eq!(f.recv().await["type"], "push_ack");
    assert!(barrier(&mut f).await.is_empty());
    relay.shutdown().await.unwrap();
}

fn write_schema(dir: &Path, name: &str, schema: Value) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, schema.to_string()).unwrap();
    p
}

#[tokio::test]
async fn validate_field_and_form() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir.path().join("data"));
    let contact = write_schema(
        dir.path(),
        "contact.schema.json",
        json!({"type": "object", "required": ["email", "message"],
               "properties": {"email": {"type": "string", "format": "email"},
                              "message": {"type": "string", "minLength": 10},
                              "age": {"type": "integer", "minimum": 18}}}),
    );
    cfg.forms.insert("contact".into(), contact);
    let relay = start(cfg).await;
    let mut c = Client::connect(relay.addr, "/api/ws").await;

    c.send(
        json!({"type": "validate_field", "request_id": "r1", "form": "contact",
                  "field": "email", "value": "ann@example.com"}),
    )
    .await;
    assert_eq!(
        c.recv().await,
        json!({"type": "validation_result", "request_id": "r1", "form": "contact", "field": "email",
               "valid": true, "error": null, "metadata": null})
    );
    c.send(
        json!({"type": "validate_field", "request_id": "r2", "form": "contact",
                  "field": "message", "value": "short"}),
    )
    .await;
    let r = c.recv().await;
    assert_eq!(
        keys(&r),
        set(&[
            "type",
            "request_id",
            "form",
            "field",
            "valid",
            "error",
            "metadata"
        ])
    );
    assert_eq!(r["type"], "validation_result");
    assert_eq!(r["request_id"], "r2");
    assert_eq!(r["valid"], false);
    assert!(r["error"].as_str().unwrap().contains("shorter"), "{r}");
    assert_eq!(r["metadata"], json!({"rule": "minLength"}));
    // Form values are strings; "17" is read as the integer the schema wants.
    c.send(
        json!({"type": "validate_field", "request_id": "r3", "form": "contact",
                  "field": "age", "value": "17"}),
    )
    .await;
    let r = c.recv().await;
    assert_eq!(
        (r["valid"].clone(), r["metadata"]["rule"].clone()),
        (json!(false), json!("minimum"))
    );

    c.send(json!({"type": "validate_form", "request_id": "r4", "form": "contact",
                  "fields": [{"field": "email", "value": "nope"}, {"field": "age", "value": "30"}]}))
        .await;
    let r = c.recv().await;
    assert_eq!(
        keys(&r),
        set(&["type", "request_id", "form", "valid", "errors"])
    );
    assert_eq!(r["type"], "form_validation_result");
    assert_eq!(r["request_id"], "r4");
    assert_eq!(r["form"], "contact");
    assert_eq!(r["valid"], false);
    let errs = r["errors"].as_array().unwrap();
    for e in errs {
        assert_eq!(keys(e), set(&["field", "error"]));
    }
    let fields: BTreeSet<&str> = errs.iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert_eq!(fields, BTreeSet::from(["email", "message"]));

    c.send(
        json!({"type": "validate_form", "request_id": "r5", "form": "contact",
                  "fields": [{"field": "email", "value": "ann@example.com"},
                             {"field": "message", "value": "a long enough message"}]}),
    )
    .await;
    assert_eq!(
        c.recv().await,
        json!({"type": "form_validation_result", "request_id": "r5", "form": "contact",
               "valid": true, "errors": []})
    );

    for m in [
        json!({"type": "validate_field", "request_id": "r6", "form": "signup", "field": "a", "value": "b"}),
        json!({"type": "validate_form", "request_id": "r7", "form": "signup", "fields": []}),
    ] {
        c.send(m).await;
        let msg = expect_error(&mut c, "unknown_form").await;
        assert!(msg.contains("signup"), "{msg}");
    }
    assert!(barrier(&mut c).await.is_empty());
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn malformed_input_gets_an_error_and_the_connection_stays() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.server.max_frame_bytes = 1024;
    let relay = start(cfg).await;
    let mut c = Client::connect(relay.addr, "/api/ws").await;
    let cases: Vec<(Message, &str)> = vec![
        (Message::Text("{nope".into()), "invalid_json"),
        (Message::Text("[1,2]".into()), "invalid_message"),
        (Message::Text(r#"{"entities": []}"#.into()), "invalid_message"),
        (Message::Text(r#"{"type": "launch"}"#.into()), "unknown_type"),
        (Message::Text(r#"{"type": "pong"}"#.into()), "server_only"),
        (
            Message::Text(r#"{"type": "push_ack", "entity": "u", "entity_id": "1", "version": 1}"#.into()),
            "server_only",
        ),
        (Message::Text(r#"{"type": "sync", "entity": "users"}"#.into()), "invalid_message"),
        (
            Message::Text(r#"{"type": "sync", "entity": "users", "since": "x"}"#.into()),
            "invalid_message",
        ),
        (Message::Text(r#"{"type": "subscribe", "entities": [""]}"#.into()), "invalid_message"),
        (
            Message::Text(r#"{"type": "push", "entity": "u", "entity_id": "1", "action": "upsert"}"#.into()),
            "invalid_message",
        ),
        (
            Message::Text(r#"{"type": "push", "entity": "u", "entity_id": "1", "action": "update"}"#.into()),
            "invalid_message",
        ),
        (
            Message::Text(
                r#"{"type": "push", "entity": "u", "entity_id": "1", "action": "delete", "data": {"a": 1}}"#.into(),
            ),
            "invalid_message",
        ),
        (
            Message::Text(r#"{"type": "push", "entity": "u", "entity_id": "1", "action": "create", "data": 5}"#.into()),
            "invalid_message",
        ),
        (
            Message::Text(
                r#"{"type": "push_fields", "entity": "u", "entity_id": "1", "fields": [{"field": "a", "action": "update", "timestamp": "yesterday"}]}"#.into(),
            ),
            "invalid_message",
        ),
        (
            Message::Text(
                r#"{"type": "push_fields", "entity": "u", "entity_id": "1", "fields": [
                   {"field": "a", "action": "update", "timestamp": "2024-01-01T00:00:00Z"},
                   {"field": "a", "action": "delete", "timestamp": "2024-01-01T00:00:00Z"}]}"#
                    .into(),
            ),
            "invalid_message",
        ),
        (Message::Binary(vec![1u8, 2, 3].into()), "binary_unsupported"),
        (Message::Text("x".repeat(2000).into()), "too_large"),
    ];
    for (m, code) in cases {
        let shown = format!("{m:?}");
        c.send_raw(m).await;
        let e = c.recv().await;
        assert_eq!(keys(&e), set(&["type", "message", "code"]), "{shown}: {e}");
        assert_eq!(
            (e["type"].clone(), e["code"].clone()),
            (json!("error"), json!(code)),
            "{shown}: {e}"
        );
    }
    // Refused by the engine's checks (after parsing): an empty id.
    let e = push(&mut c, "users", "", "create", json!({})).await;
    assert_eq!(e["code"], "invalid_field", "{e}");
    assert!(e["message"].as_str().unwrap().contains("id"), "{e}");
    assert!(barrier(&mut c).await.is_empty());
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn tokens_and_scopes() {
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
    for path in ["/api/ws", "/api/sync/ws", "/api/field-sync/ws"] {
        assert_eq!(handshake_status(relay.addr, path, None).await, 401);
        assert_eq!(
            handshake_status(relay.addr, &format!("{path}?token=bad"), None).await,
            401
        );
        assert_eq!(handshake_status(relay.addr, path, Some(&reader)).await, 101);
    }
    assert_eq!(
        handshake_status(relay.addr, "/api/ws?space=", Some(&reader)).await,
        400
    );

    let mut r = Client::connect(relay.addr, &format!("/api/ws?space=s&token={reader}")).await;
    r.send(json!({"type": "subscribe", "entities": ["users"]}))
        .await;
    assert!(barrier(&mut r).await.is_empty());
    let e = push(&mut r, "users", "1", "create", json!({"a": 1})).await;
    assert_eq!(e["code"], "forbidden");
    r.send(json!({"type": "push_fields", "entity": "users", "entity_id": "1",
                  "fields": [{"field": "a", "value": 1, "action": "update", "timestamp": "2024-01-01T00:00:00Z"}]}))
        .await;
    expect_error(&mut r, "forbidden").await;

    let mut w = Client::connect(relay.addr, &format!("/api/ws?space=s&token={writer}")).await;
    let ack = push(&mut w, "users", "1", "create", json!({"a": 1})).await;
    assert_eq!(ack["type"], "push_ack");
    let ch = r.recv().await;
    // With a token, client_id is the token's subject.
    assert_eq!(ch["change"]["client_id"], "w");
    // The writer's token is for space "s" only.
    let mut w2 = Client::connect(relay.addr, &format!("/api/ws?space=t&token={writer}")).await;
    let e = push(&mut w2, "users", "1", "create", json!({"a": 1})).await;
    assert_eq!(e["code"], "forbidden");
    w2.send(json!({"type": "sync", "entity": "users", "since": 0}))
        .await;
    expect_error(&mut w2, "forbidden").await;
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn collection_schemas_hold_on_every_endpoint_including_native() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir.path().join("data"));
    let p = write_schema(
        dir.path(),
        "contacts.json",
        json!({"type": "object", "required": ["email"],
               "properties": {"email": {"type": "string", "format": "email"},
                              "age": {"type": "integer", "minimum": 0}}}),
    );
    cfg.schemas.insert("contacts".into(), p);
    let relay = start(cfg).await;
    let mut c = Client::connect(relay.addr, "/api/ws").await;

    let check = |e: &Value, field: &str, rule: &str| {
        assert_eq!(e["type"], "error", "{e}");
        assert_eq!(e["code"], "schema_violation", "{e}");
        let m = e["message"].as_str().unwrap();
        assert!(
            m.contains(&format!("field `{field}`")) && m.contains(&format!("rule `{rule}`")),
            "{m}"
        );
    };
    let e = push(&mut c, "contacts", "c1", "create", json!({"email": "bad"})).await;
    check(&e, "email", "format");
    let e = push(&mut c, "contacts", "c1", "create", json!({"age": 3})).await;
    check(&e, "email", "required");
    let ack = push(
        &mut c,
        "contacts",
        "c1",
        "create",
        json!({"email": "a@b.example"}),
    )
    .await;
    assert_eq!(ack["version"], 1);
    // A patch is checked as the entity it produces.
    let e = push(&mut c, "contacts", "c1", "update", json!({"age": -1})).await;
    check(&e, "age", "minimum");
    let e = push(&mut c, "contacts", "c1", "update", json!({"email": null})).await;
    check(&e, "email", "required");
    let ack = push(&mut c, "contacts", "c1", "update", json!({"age": 40})).await;
    assert_eq!(ack["version"], 2);
    // Field pushes too.
    let mut f = Client::connect(relay.addr, "/api/field-sync/ws").await;
    f.send(json!({"type": "push_fields", "entity": "contacts", "entity_id": "c1",
                  "fields": [{"field": "age", "value": "old", "action": "update",
                              "timestamp": Timestamp::from_unix_ms(outpost::engine::now_ms()).to_string()}]}))
        .await;
    check(&f.recv().await, "age", "type");
    // Deletes are not checked; other collections have no schema.
    assert_eq!(
        push(&mut c, "contacts", "c1", "delete", Value::Null).await["version"],
        3
    );
    assert_eq!(
        push(&mut c, "notes", "n", "create", json!({"email": 1})).await["version"],
        1
    );

    // Native /ws: same engine rule, native error shape.
    let mut n = Client::native(relay.addr).await;
    n.send(
        json!({"type": "push", "rid": "p1", "space": "default", "changes": [
        {"collection": "contacts", "id": "c2", "op": "put", "fields": {"age": 3}}]}),
    )
    .await;
    let e = n.recv().await;
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["rid"], "p1");
    assert_eq!(e["code"], 400);
    assert_eq!(e["reason"], "invalid_field");
    let m = e["message"].as_str().unwrap();
    assert!(
        m.contains("field `email`") && m.contains("rule `required`"),
        "{m}"
    );
    // A batch whose later write breaks the rule is refused whole.
    n.send(
        json!({"type": "push", "rid": "p2", "space": "default", "changes": [
        {"collection": "contacts", "id": "c3", "op": "put", "fields": {"email": "x@y.example"}},
        {"collection": "contacts", "id": "c3", "op": "patch", "fields": {"age": -5}}]}),
    )
    .await;
    let e = n.recv().await;
    assert_eq!(e["type"], "error", "{e}");
    assert!(e["message"].as_str().unwrap().contains("changes[1]"), "{e}");
    n.send(json!({"type": "get", "rid": "g", "space": "default", "collection": "contacts", "id": "c3"}))
        .await;
    let g = n.recv().await;
    assert_eq!(
        (g["version"].clone(), g["fields"].clone()),
        (json!(0), Value::Null)
    );
    let ok = n.put("default", "n2", json!({"anything": true})).await;
    assert_eq!(ok["type"], "ack");
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn native_writes_reach_api_ws_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let mut u = Client::connect(relay.addr, "/api/ws").await;
    u.send(json!({"type": "subscribe", "entities": ["atome"]}))
        .await;
    barrier(&mut u).await;
    let mut n = Client::native(relay.addr).await;
    n.subscribe("default", 0).await;
    n.send(
        json!({"type": "push", "rid": 1, "space": "default", "changes": [
        {"collection": "atome", "id": "a1", "op": "put", "fields": {"kind": "shape", "x": 1}}]}),
    )
    .await;
    let (_, _ack) = n.until("ack").await;
    let c = u.recv().await;
    assert_eq!(c["change"]["entity"], "atome");
    assert_eq!(c["change"]["entity_id"], "a1");
    assert_eq!(c["change"]["action"], "create");
    assert_eq!(
        c["change"]["data"],
        json!({"kind": "shape", "x": 1, "id": "a1"})
    );
    push(&mut u, "atome", "a1", "update", json!({"x": 2})).await;
    // The native subscriber also sees its own create; wait for the update.
    let ch = loop {
        let (_, ch) = n.until("change").await;
        if ch["version"] == 2 {
            break ch;
        }
    };
    assert_eq!(ch["collection"], "atome");
    assert_eq!(ch["fields"], json!({"x": 2}));
    assert_eq!(ch["version"], 2);
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn sync_after_retention_sends_current_state() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let mut c = Client::connect(relay.addr, "/api/ws").await;
    push(&mut c, "users", "u1", "create", json!({"a": 1})).await;
    push(&mut c, "users", "u1", "update", json!({"b": 2})).await;
    push(&mut c, "users", "u2", "create", json!({"a": 3})).await;
    push(&mut c, "users", "u2", "delete", Value::Null).await;
    push(&mut c, "users", "u3", "create", json!({"z": 0})).await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let trimmed = relay
        .state
        .engine
        .trim(std::time::Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(trimmed, 5);
    assert!(relay.state.engine.horizon() > 1);
    c.send(json!({"type": "sync", "entity": "users", "since": 1}))
        .await;
    let got = barrier(&mut c).await;
    let got: Vec<Value> = got.into_iter().map(|m| m["change"].clone()).collect();
    // Per-type versions: u1 is at 2, u2 at 4, u3 at 5 (the log is gone,
    // the index is not).
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(keys(&got[0]), set(CHANGE_LOG_KEYS));
    assert_eq!(
        (
            got[0]["entity_id"].clone(),
            got[0]["action"].clone(),
            got[0]["version"].clone()
        ),
        (json!("u1"), json!("update"), json!(2))
    );
    assert_eq!(got[0]["data"], json!({"a": 1, "b": 2, "id": "u1"}));
    assert_eq!(got[0]["client_id"], Value::Null, "its log entry is trimmed");
    assert_eq!(
        (
            got[1]["entity_id"].clone(),
            got[1]["action"].clone(),
            got[1]["data"].clone(),
            got[1]["version"].clone()
        ),
        (json!("u2"), json!("delete"), Value::Null, json!(4))
    );
    assert_eq!(got[2]["version"], 5);
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_lagging_subscriber_catches_up_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.server.queue_depth = 16;
    let relay = start(cfg).await;
    let mut r = Client::connect(relay.addr, "/api/ws").await;
    r.send(json!({"type": "subscribe", "entities": ["blobs"]}))
        .await;
    barrier(&mut r).await;
    // r does not read while 200 changes of 20 KB go out: its socket fills,
    // then its queue, and fan-out drops its feed.
    let mut w = Client::connect(relay.addr, "/api/ws").await;
    let body = "x".repeat(20_000);
    const N: usize = 200;
    for i in 0..N {
        w.send(
            json!({"type": "push", "entity": "blobs", "entity_id": format!("b{i}"),
                      "action": "create", "data": {"body": body}}),
        )
        .await;
    }
    for _ in 0..N {
        assert_eq!(w.recv().await["type"], "push_ack");
    }
    let mut ids = vec![];
    for _ in 0..N {
        let m = r.recv().await;
        assert_eq!(m["type"], "change");
        ids.push(m["change"]["id"].as_i64().unwrap());
    }
    assert_eq!(ids, (1..=N as i64).collect::<Vec<_>>());
    assert!(barrier(&mut r).await.is_empty());
    let resyncs = relay
        .state
        .engine
        .metrics
        .resyncs
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        resyncs > 0,
        "the feed never lagged; the test did not exercise resync"
    );
    relay.shutdown().await.unwrap();
}

/// Bug: the schema check read the entity before the write was queued, so
/// a concurrent write could change it in between: a patch checked against
/// a live contact was applied after a delete and brought back a contact
/// without its required email. The check now runs inside the writer's
/// transaction. (The writer is held so both writes are queued first.)
#[tokio::test]
async fn a_schema_check_sees_writes_queued_before_it() {
    use outpost::model::Op;
    use outpost::store::LocalWrite;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir.path().join("data"));
    let p = write_schema(
        dir.path(),
        "contacts.json",
        json!({"type": "object", "required": ["email"],
               "properties": {"email": {"type": "string"}, "age": {"type": "integer"}}}),
    );
    cfg.schemas.insert("contacts".into(), p);
    let relay = start(cfg).await;
    let engine = relay.state.engine.clone();
    let w = |op: Op, fields: Value| LocalWrite {
        collection: "contacts".into(),
        id: "c1".into(),
        op,
        fields: serde_json::from_value(fields).unwrap(),
        client_us: None,
        expect: None,
    };
    engine
        .push(
            "s",
            "t",
            None,
            vec![w(Op::Put, json!({"email": "a@b.example"}))],
        )
        .await
        .unwrap();
    let hold = engine.hold_writer().await.unwrap();
    let delete = engine
        .queue_push("s", "t", None, vec![w(Op::Delete, json!({}))], vec![])
        .await
        .unwrap();
    let patch = engine
        .queue_push(
            "s",
            "t",
            None,
            vec![w(Op::Patch, json!({"age": 3}))],
            vec![],
        )
        .await
        .unwrap();
    drop(hold);
    delete.wait().await.unwrap();
    let e = patch
        .wait()
        .await
        .expect_err("the patch would leave no email");
    assert_eq!(e.class(), outpost::engine::ErrorClass::Schema, "{e}");
    assert!(e.to_string().contains("email"), "{e}");
    let c1 = engine.entity("s", "contacts", "c1").unwrap().unwrap();
    assert!(!c1.state.exists(), "the contact stays deleted");
    relay.shutdown().await.unwrap();
}
