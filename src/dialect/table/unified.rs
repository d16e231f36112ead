//! Seed 004 `/api/ws` and its two subsets, and the SSE stream: every
//! client message, each error, gzip frames, the driver's calls.

use super::*;
use crate::dialect::unified::{self, events, proto::Endpoint};
use crate::dialect::{Failed, Refusal};
use axum::extract::ws::Message;
use axum::http::HeaderMap;
use serde_json::json;

fn conn(b: &Bench, endpoint: Endpoint, query: &[(&str, &str)]) -> Conn<unified::Unified> {
    let mut q = vec![("space", "s")];
    q.extend_from_slice(query);
    b.open(unified::accept(
        endpoint,
        &b.ctx,
        &HeaderMap::new(),
        &Bench::query(&q),
    ))
}

fn contact_form() -> BTreeMap<String, Value> {
    BTreeMap::from([(
        "contact".to_string(),
        json!({"type": "object", "required": ["email"],
               "properties": {"email": {"type": "string", "format": "email"},
                              "message": {"type": "string", "minLength": 10}}}),
    )])
}

#[test]
fn client_messages_in_effects_out() {
    let b = Bench::with(Anonymous::Write, contact_form());
    let mut c = conn(&b, Endpoint::Unified, &[("client_id", "tab")]);
    assert!(c.open().is_empty(), "the server sends nothing on connect");
    // Subscriptions accumulate: only types not yet subscribed start a feed.
    let e = c.json(json!({"type": "subscribe", "entities": ["users", "posts"]}));
    assert_eq!(
        e.follow,
        [(
            1,
            "s".to_string(),
            Some(vec!["posts".into(), "users".into()]),
            false,
            Since::Now
        )]
    );
    let e = c.json(json!({"type": "subscribe", "entities": ["users", "tags"]}));
    assert_eq!(e.follow[0].2, Some(vec!["tags".into()]));
    assert!(c
        .json(json!({"type": "subscribe", "entities": ["tags"]}))
        .is_empty());
    let e = c.json(json!({"type": "subscribe_fields", "entities": ["users"]}));
    assert_eq!(e.follow[0].0, 3, "field feeds are apart from entity feeds");

    let e = c.json(json!({"type": "push", "entity": "users", "entity_id": "u1",
                          "action": "create", "data": {"name": "ann"}}));
    assert_fits(
        &json!([{"type": "push_ack", "entity": "users", "entity_id": "u1", "version": 1}]),
        &Value::Array(e.later),
        "push",
    );
    // The entity feed renders the whole entity; the field feed one frame
    // per field.
    let committed = b.last_committed();
    let mut out = Vec::new();
    b.render(&mut c.dialect, 1, &committed, &mut out);
    assert_fits(
        &json!({"type": "change", "change": {"entity": "users", "entity_id": "u1",
                "action": "create", "data": {"name": "ann"}, "version": 1, "client_id": "tab"}}),
        &parse(&out[0]),
        "change",
    );
    out.clear();
    b.render(&mut c.dialect, 3, &committed, &mut out);
    assert_fits(
        &json!({"type": "field_change", "change": {"entity": "users", "entity_id": "u1",
                "field": "name", "value": "ann", "action": "update"}}),
        &parse(&out[0]),
        "field_change",
    );
    let e = c.json(
        json!({"type": "push_fields", "entity": "users", "entity_id": "u1",
                          "fields": [{"field": "name", "value": "bo", "action": "update",
                                      "timestamp": "2020-01-01T00:00:00Z"}]}),
    );
    assert_fits(
        &json!([{"type": "field_push_ack", "entity": "users", "entity_id": "u1"},
                {"type": "field_conflict", "field": "name", "server_value": "ann",
                 "client_value": "bo"}]),
        &Value::Array(e.later),
        "an older field write loses",
    );
    // `sync`: a paged read of the entities changed after a version.
    let e = c.json(json!({"type": "sync", "entity": "users", "since": 0}));
    assert!(e.now.is_empty());
    // (The losing field write took version 2: every merged change does.)
    assert_fits(
        &json!([{"type": "change", "change": {"entity_id": "u1", "version": 2,
                                              "data": {"id": "u1", "name": "ann"}}}]),
        &Value::Array(e.read),
        "sync",
    );
    assert!(c
        .json(json!({"type": "sync", "entity": "users", "since": 2}))
        .read
        .is_empty());
    let table: Vec<(Value, Value)> = vec![
        (json!({"type": "ping"}), json!({"type": "pong"})),
        (
            json!({"type": "validate_field", "request_id": "r1", "form": "contact",
                   "field": "email", "value": "a@b.example"}),
            json!({"type": "validation_result", "request_id": "r1", "valid": true}),
        ),
        (
            json!({"type": "validate_form", "request_id": "r2", "form": "contact",
                   "fields": [{"field": "message", "value": "short"}]}),
            json!({"type": "form_validation_result", "request_id": "r2", "valid": false}),
        ),
        (
            json!({"type": "validate_field", "request_id": "r3", "form": "nope",
                   "field": "f", "value": "v"}),
            json!({"type": "error", "code": "unknown_form"}),
        ),
        (
            json!({"type": "nope"}),
            json!({"type": "error", "code": "unknown_type"}),
        ),
        (
            json!({"type": "pong"}),
            json!({"type": "error", "code": "server_only"}),
        ),
        (
            json!({"entities": []}),
            json!({"type": "error", "code": "invalid_message"}),
        ),
        (
            json!({"type": "push", "entity": "users", "entity_id": "u2", "action": "update"}),
            json!({"type": "error", "code": "invalid_message"}),
        ),
        (
            json!({"type": "subscribe", "entities": [""]}),
            json!({"type": "error", "code": "invalid_message"}),
        ),
    ];
    for (frame, reply) in table {
        assert_fits(&reply, c.json(frame.clone()).reply(), &frame.to_string());
    }
    assert_fits(
        &json!({"type": "error", "code": "invalid_json"}),
        c.text("{").reply(),
        "not JSON",
    );
    // The engine refuses a name after parsing: an error in the ack's place.
    let e = c.json(json!({"type": "push", "entity": "users", "entity_id": "",
                          "action": "create", "data": {}}));
    assert_fits(
        &json!([{"type": "error", "code": "invalid_field"}]),
        &Value::Array(e.later),
        "invalid write",
    );
    // Refused frames and follows, failed reads and feeds.
    let f = c.dialect.refuse(Refusal::TooLarge { len: 9, max: 8 }, NOW);
    assert_fits(
        &json!({"type": "error", "code": "too_large"}),
        &parse(&f),
        "too large",
    );
    let f = c
        .dialect
        .refuse_follow(1, Refusal::TooManyFeeds { max: 1 }, NOW);
    assert_fits(
        &json!({"type": "error", "code": "too_many_subscriptions"}),
        &parse(&f),
        "refused follow",
    );
    let e = crate::engine::EngineError::Store(crate::store::StoreError::Closed);
    for f in [c.dialect.read_failed(&e), c.dialect.feed_failed(3, &e)] {
        let Failed::Answer(frames) = f else {
            panic!("the connection goes on")
        };
        assert_fits(
            &json!({"type": "error", "code": "unavailable"}),
            &parse(&frames[0]),
            "failed",
        );
    }
}

#[test]
fn subset_endpoints_gzip_and_scopes() {
    let b = Bench::new();
    let mut f = conn(&b, Endpoint::Field, &[]);
    // The field client subscribes with `subscribe`; entity messages are not
    // served here.
    let e = f.json(json!({"type": "subscribe", "entities": ["users"]}));
    assert_eq!(e.follow.len(), 1);
    assert_fits(
        &json!({"type": "error", "code": "unsupported"}),
        f.json(json!({"type": "sync", "entity": "users", "since": 0}))
            .reply(),
        "unsupported",
    );
    // Its acks go under the field client's names.
    let e = f.json(
        json!({"type": "push_fields", "entity": "users", "entity_id": "u1",
                          "fields": [{"field": "n", "value": 1, "action": "update",
                                      "timestamp": "2030-01-01T00:00:00Z"}]}),
    );
    assert_fits(
        &json!([{"type": "push_ack", "applied": 1}]),
        &Value::Array(e.later),
        "push_ack",
    );
    let mut s = conn(&b, Endpoint::Entity, &[]);
    assert_fits(
        &json!({"type": "error", "code": "unsupported"}),
        s.json(json!({"type": "validate_form", "request_id": "r", "form": "f", "fields": []}))
            .reply(),
        "unsupported",
    );
    // The legacy endpoints gzip large frames; `/api/ws` once the client
    // sends gzip itself.
    let big: Utf8Bytes = "x".repeat(2000).into();
    let small: Utf8Bytes = "x".into();
    assert!(matches!(
        s.dialect.outgoing(big.clone()),
        Message::Binary(_)
    ));
    assert!(matches!(s.dialect.outgoing(small), Message::Text(_)));
    let mut u = conn(&b, Endpoint::Unified, &[]);
    assert!(matches!(u.dialect.outgoing(big.clone()), Message::Text(_)));
    let ping = crate::dialect::gzip::gzip(r#"{"type":"ping"}"#);
    let e = u.binary(&ping);
    assert_fits(&json!({"type": "pong"}), e.reply(), "gzip in");
    assert!(matches!(u.dialect.outgoing(big), Message::Binary(_)));
    let e = u.binary(b"not gzip");
    assert_fits(
        &json!({"type": "error", "code": "binary_unsupported"}),
        e.reply(),
        "bad gzip",
    );
    // Read-only: pushes are refused at once.
    let read = b.token("rita", Scope::Read);
    let mut r = conn(&b, Endpoint::Unified, &[("token", &read)]);
    assert_fits(
        &json!({"type": "error", "code": "forbidden"}),
        r.json(json!({"type": "push", "entity": "users", "entity_id": "u9", "action": "delete"}))
            .reply(),
        "read-only",
    );
}

#[test]
fn the_sse_stream_follows_the_space_from_its_handshake() {
    let b = Bench::new();
    b.write("s", "users", "u1", json!({"name": "ann"}));
    let q = Bench::query(&[("space", "s")]);
    let opening = events::accept(&b.ctx, &HeaderMap::new(), &q)
        .map_err(|_| "refused")
        .unwrap();
    let cc = ConnCtx::new(b.ctx.clone(), opening.endpoint);
    let mut d = (opening.make)(&cc);
    let open = Effects::of(d.open(NOW));
    assert_eq!(
        open.follow,
        [(0, "s".to_string(), None, false, Since::After(1))]
    );
    let mut out = Vec::new();
    b.render(&mut d, 0, &b.last_committed(), &mut out);
    assert_fits(
        &json!({"entity": "users", "entity_id": "u1", "data": {"name": "ann"}}),
        &parse(&out[0]),
        "a ChangeLog as the event's data",
    );
}
