//! Native `/ws`: every client message, each error, and the driver's calls.

use super::*;
use crate::dialect::native;
use crate::dialect::{Failed, Lag, Refusal};
use axum::http::HeaderMap;
use serde_json::json;

fn conn(b: &Bench, query: &[(&str, &str)]) -> Conn<native::Native> {
    b.open(native::accept(
        &b.ctx,
        &HeaderMap::new(),
        &Bench::query(query),
    ))
}

#[test]
fn client_messages_in_effects_out() {
    let b = Bench::new();
    let mut c = conn(&b, &[]);
    assert_fits(
        &json!({"type": "welcome", "protocol": 1, "auth": ["read", "write"]}),
        c.open().reply(),
        "welcome",
    );
    let write = b.token("ann", Scope::Write);
    // (frame, what is sent at once)
    let table: Vec<(Value, Value)> = vec![
        (
            json!({"type": "hello", "rid": 1, "client_id": "me"}),
            json!({"type": "ready", "rid": 1, "client_id": "me", "sub": "anonymous"}),
        ),
        (
            json!({"type": "hello", "rid": 2, "token": write}),
            json!({"type": "ready", "rid": 2, "sub": "ann", "scopes": ["read", "write"]}),
        ),
        (
            json!({"type": "hello", "rid": 3, "token": "nope"}),
            json!({"type": "error", "rid": 3, "code": 401, "reason": "unauthorized"}),
        ),
        (
            json!({"type": "hello", "rid": 4, "extra": 1}),
            json!({"type": "error", "rid": 4, "code": 422, "reason": "invalid_field"}),
        ),
        (
            json!({"type": "unsubscribe", "rid": 5, "space": "s"}),
            json!({"type": "unsubscribed", "rid": 5, "space": "s"}),
        ),
        (
            json!({"type": "publish", "rid": 6, "space": "s", "topic": "t", "payload": 1}),
            json!({"type": "published", "rid": 6, "space": "s", "topic": "t"}),
        ),
        (
            json!({"type": "publish", "rid": 7, "space": "s", "topic": ""}),
            json!({"type": "error", "rid": 7, "code": 422, "reason": "invalid_field"}),
        ),
        (
            json!({"type": "get", "rid": 8, "space": "s", "collection": "c", "id": "none"}),
            json!({"type": "entity", "rid": 8, "space": "s", "fields": null, "deleted": true,
                   "version": 0, "seq": 0}),
        ),
        (
            json!({"type": "ping", "rid": 9, "ts": 5}),
            json!({"type": "pong", "rid": 9, "ts": 5}),
        ),
        (
            json!({"type": "nope", "rid": 10}),
            json!({"type": "error", "rid": 10, "code": 400, "reason": "unknown_type"}),
        ),
        (
            json!([1]),
            json!({"type": "error", "code": 400, "reason": "invalid_message"}),
        ),
        (
            json!({"rid": 11}),
            json!({"type": "error", "rid": 11, "code": 400, "reason": "invalid_message"}),
        ),
        (
            json!({"type": "subscribe", "rid": 12}),
            json!({"type": "error", "rid": 12, "code": 422, "reason": "invalid_field"}),
        ),
        (
            json!({"type": "push", "rid": 13, "space": "s", "changes": [{"collection": "c"}]}),
            json!({"type": "error", "rid": 13, "code": 422, "reason": "invalid_field"}),
        ),
    ];
    for (frame, reply) in table {
        assert_fits(&reply, c.json(frame.clone()).reply(), &frame.to_string());
    }
    assert_fits(
        &json!({"type": "error", "code": 400, "reason": "invalid_json"}),
        c.text("{").reply(),
        "not JSON",
    );
    // A publish without rid is not answered.
    assert!(c
        .json(json!({"type": "publish", "space": "s", "topic": "t"}))
        .is_empty());
}

#[test]
fn subscribe_follows_and_the_driver_calls_answer() {
    let b = Bench::new();
    let mut c = conn(&b, &[]);
    let e = c.json(
        json!({"type": "subscribe", "rid": "r", "space": "s", "since": 7,
                          "collections": ["b", "a"], "events": false}),
    );
    assert!(e.now.is_empty() && e.later.is_empty());
    assert_eq!(
        e.follow,
        [(
            1,
            "s".to_string(),
            Some(vec!["a".into(), "b".into()]),
            false,
            Since::After(7)
        )]
    );
    // Caught up: `synced` with the subscribe's rid, once.
    let synced = c.dialect.live(1, 9);
    assert_fits(
        &json!({"type": "synced", "rid": "r", "space": "s", "seq": 9}),
        &parse(&synced[0]),
        "synced",
    );
    // The same space again: the same feed key (it replaces the first).
    let again = c.json(json!({"type": "subscribe", "space": "s"}));
    assert_eq!(again.follow[0].0, 1);
    assert_eq!(again.follow[0].4, Since::After(0));
    // Lagging: the feed ends, the client is told where to resume.
    let Lag::Drop(frames) = c.dialect.lagged(1, 42) else {
        panic!("native drops a lagging feed")
    };
    assert_fits(
        &json!({"type": "resync", "space": "s", "since": 42, "reason": "queue_full"}),
        &parse(&frames[0]),
        "resync",
    );
    // A refused follow and a failed one answer the subscribe's rid.
    let e = c.json(json!({"type": "subscribe", "rid": "r2", "space": "t"}));
    let key = e.follow[0].0;
    let f = c
        .dialect
        .refuse_follow(key, Refusal::TooManyFeeds { max: 1 });
    assert_fits(
        &json!({"type": "error", "rid": "r2", "code": 429, "reason": "too_many_subscriptions"}),
        &parse(&f),
        "refused follow",
    );
    let e = c.json(json!({"type": "subscribe", "rid": "r3", "space": "u"}));
    let key = e.follow[0].0;
    let Failed::Answer(f) = c
        .dialect
        .feed_failed(key, &crate::engine::EngineError::Internal("x".into()))
    else {
        panic!("a failed feed is answered")
    };
    assert_fits(
        &json!({"type": "error", "rid": "r3", "code": 500, "reason": "storage_failed"}),
        &parse(&f[0]),
        "failed feed",
    );
    // Frames refused before the protocol sees them.
    let f = c.dialect.refuse(Refusal::Binary);
    assert_fits(
        &json!({"code": 400, "reason": "binary_unsupported"}),
        &parse(&f),
        "binary",
    );
    let f = c.dialect.refuse(Refusal::TooLarge { len: 9, max: 8 });
    assert_fits(
        &json!({"code": 413, "reason": "too_large"}),
        &parse(&f),
        "too large",
    );
}

#[test]
fn pushes_are_answered_after_the_commit_and_changes_rendered() {
    let b = Bench::new();
    let mut c = conn(&b, &[]);
    let e = c.json(json!({"type": "push", "rid": 1, "space": "s",
                          "changes": [{"collection": "c", "id": "a", "fields": {"v": 1}, "wid": "w1"}]}));
    assert!(e.now.is_empty());
    assert_fits(
        &json!([{"type": "ack", "rid": 1, "space": "s",
                 "results": [{"seq": 1, "version": 1, "duplicate": false, "conflicts": []}]}]),
        &Value::Array(e.later),
        "ack",
    );
    // The same write id again: a duplicate, not applied twice.
    let e = c.json(json!({"type": "push", "rid": 2, "space": "s",
                          "changes": [{"collection": "c", "id": "a", "fields": {"v": 1}, "wid": "w1"}]}));
    assert_fits(
        &json!([{"type": "ack", "rid": 2, "results": [{"duplicate": true}]}]),
        &Value::Array(e.later),
        "duplicate",
    );
    // The engine refuses a bad name after parsing: an error in its place.
    let e = c.json(json!({"type": "push", "rid": 3, "space": "s",
                          "changes": [{"collection": "c", "id": "", "fields": {"v": 1}}]}));
    assert_fits(
        &json!([{"type": "error", "rid": 3, "code": 400, "reason": "invalid_field"}]),
        &Value::Array(e.later),
        "invalid write",
    );
    let got = c.json(json!({"type": "get", "rid": 4, "space": "s", "collection": "c", "id": "a"}));
    assert_fits(
        &json!({"type": "entity", "rid": 4, "fields": {"v": 1}, "deleted": false, "version": 1}),
        got.reply(),
        "get",
    );
    let mut out = Vec::new();
    c.dialect.change(1, &b.last_committed(), &mut out);
    assert_fits(
        &json!({"type": "change", "space": "s", "seq": 1, "collection": "c", "id": "a",
                "op": "patch", "fields": {"v": 1}, "version": 1}),
        &parse(&out[0]),
        "change",
    );
    // Read-only: pushes and publishes are refused at once, nothing stored.
    let read = b.token("rita", Scope::Read);
    let mut r = conn(&b, &[("token", &read)]);
    for frame in [
        json!({"type": "push", "rid": 5, "space": "s", "changes": [{"collection": "c", "id": "b"}]}),
        json!({"type": "publish", "rid": 5, "space": "s", "topic": "t"}),
    ] {
        assert_fits(
            &json!({"type": "error", "rid": 5, "code": 403, "reason": "forbidden"}),
            r.json(frame).reply(),
            "read-only",
        );
    }
    assert_eq!(b.engine().last_seq(), 1);
}
