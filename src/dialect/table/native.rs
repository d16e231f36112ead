//! Native `/ws`: every client message, each error, and the driver's calls.
//! Pure: no engine, no store; engine calls are read as effects and their
//! results fed back by the test.

use super::fake;
use super::*;
use crate::dialect::native;
use crate::dialect::{Failed, Lag, Refusal};
use crate::engine::EngineError;
use crate::metrics::Metrics;
use crate::model::Op;
use crate::store::{LocalWrite, StoreError};
use serde_json::json;

fn conn(grant: crate::auth::Grant) -> Conn<native::Native> {
    let metrics = Arc::new(Metrics::default());
    Conn::pure(native::Native::new(
        grant,
        fake::auth(),
        metrics,
        "node-7".into(),
        1,
        1 << 20,
    ))
}

#[test]
fn client_messages_in_effects_out() {
    let mut c = conn(fake::anonymous());
    assert_fits(
        &json!({"type": "welcome", "node": "node-7", "protocol": 1, "auth": ["read", "write"]}),
        c.open().reply(),
        "welcome",
    );
    let write = fake::token("ann", Scope::Write);
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
            json!({"type": "publish", "rid": 7, "space": "s", "topic": ""}),
            json!({"type": "error", "rid": 7, "code": 422, "reason": "invalid_field"}),
        ),
        (
            json!({"type": "ping", "rid": 9, "ts": 5}),
            json!({"type": "pong", "rid": 9, "ts": 5, "server_ms": NOW}),
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
        let e = c.json(frame.clone());
        assert!(e.publish.is_none(), "{frame}: nothing published");
        assert_fits(&reply, e.reply(), &frame.to_string());
    }
    assert_fits(
        &json!({"type": "error", "code": 400, "reason": "invalid_json"}),
        c.text("{").reply(),
        "not JSON",
    );
    // A publish is an effect; answered when it has a rid, silent without.
    let e = c.json(json!({"type": "publish", "rid": 6, "space": "s", "topic": "t", "payload": 1}));
    assert_fits(
        &json!({"type": "published", "rid": 6, "space": "s", "topic": "t"}),
        e.reply(),
        "published",
    );
    let published = Publish {
        space: "s".into(),
        topic: "t".into(),
        payload: json!(1),
        actor: "ann".into(),
    };
    assert_eq!(e.publish, Some(published));
    let e = c.json(json!({"type": "publish", "space": "s", "topic": "t"}));
    assert!(e.now.is_empty() && e.call.is_none());
    assert_eq!(e.publish.map(|p| p.payload), Some(Value::Null));
    // A get is a read the driver makes; its result is the answer.
    let e = c.json(json!({"type": "get", "rid": 8, "space": "s", "collection": "c", "id": "none"}));
    let (token, call) = e.called();
    assert_eq!(
        call,
        &Call::Get {
            space: "s".into(),
            keys: vec![("c".into(), "none".into())]
        }
    );
    assert_fits(
        &json!({"type": "entity", "rid": 8, "space": "s", "collection": "c", "id": "none",
                "fields": null, "deleted": true, "version": 0, "seq": 0}),
        c.reply(token, Reply::Got(Ok(vec![None]))).reply(),
        "get of nothing",
    );
    // A result fed twice (or never asked for) answers nothing.
    assert!(c.reply(token, Reply::Got(Ok(vec![None]))).is_empty());
}

#[test]
fn subscribe_follows_and_the_driver_calls_answer() {
    let mut c = conn(fake::anonymous());
    let e = c.json(
        json!({"type": "subscribe", "rid": "r", "space": "s", "since": 7,
                          "collections": ["b", "a"], "events": false}),
    );
    assert!(e.now.is_empty() && e.later.is_empty() && e.call.is_none());
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
        .refuse_follow(key, Refusal::TooManyFeeds { max: 1 }, NOW);
    assert_fits(
        &json!({"type": "error", "rid": "r2", "code": 429, "reason": "too_many_subscriptions"}),
        &parse(&f),
        "refused follow",
    );
    let e = c.json(json!({"type": "subscribe", "rid": "r3", "space": "u"}));
    let key = e.follow[0].0;
    let Failed::Answer(f) = c
        .dialect
        .feed_failed(key, &EngineError::Internal("x".into()))
    else {
        panic!("a failed feed is answered")
    };
    assert_fits(
        &json!({"type": "error", "rid": "r3", "code": 500, "reason": "storage_failed"}),
        &parse(&f[0]),
        "failed feed",
    );
    // Frames refused before the protocol sees them.
    let f = c.dialect.refuse(Refusal::Binary, NOW);
    assert_fits(
        &json!({"code": 400, "reason": "binary_unsupported"}),
        &parse(&f),
        "binary",
    );
    let f = c.dialect.refuse(Refusal::TooLarge { len: 9, max: 8 }, NOW);
    assert_fits(
        &json!({"code": 413, "reason": "too_large"}),
        &parse(&f),
        "too large",
    );
}

#[test]
fn pushes_are_writes_answered_by_their_results_and_changes_rendered() {
    let mut c = conn(fake::anonymous());
    c.json(json!({"type": "hello", "client_id": "me"}));
    let e = c.json(json!({"type": "push", "rid": 1, "space": "s",
                          "changes": [{"collection": "c", "id": "a", "fields": {"v": 1},
                                       "wid": "w1", "ts": 5}]}));
    let (t1, call) = e.called();
    let write = LocalWrite {
        collection: "c".into(),
        id: "a".into(),
        op: Op::Patch,
        fields: [("v".to_string(), json!(1))].into(),
        client_us: Some(5_000),
        expect: None,
    };
    assert_eq!(
        call,
        &Call::Write {
            space: "s".into(),
            actor: "me".into(),
            writes: vec![write],
            write_ids: vec![Some("w1".into())],
        },
        "an anonymous client writes as its client id"
    );
    // Pipelined: a second push before the first is answered.
    let e = c.json(json!({"type": "push", "rid": 2, "space": "s",
                          "changes": [{"collection": "c", "id": "a", "fields": {"v": 1}, "wid": "w1"}]}));
    let (t2, _) = e.called();
    let e = c.json(json!({"type": "push", "rid": 3, "space": "s",
                          "changes": [{"collection": "c", "id": "", "fields": {"v": 1}}]}));
    let (t3, _) = e.called();
    assert!(t1 != t2 && t2 != t3);
    assert_fits(
        &json!({"type": "ack", "rid": 1, "space": "s",
                "results": [{"seq": 1, "version": 1, "duplicate": false, "conflicts": []}]}),
        c.reply(t1, Reply::Written(Ok(vec![fake::applied(1, 1)])))
            .reply(),
        "ack",
    );
    // The same write id again: a duplicate, not applied twice.
    assert_fits(
        &json!({"type": "ack", "rid": 2, "results": [{"duplicate": true}]}),
        c.reply(t2, Reply::Written(Ok(vec![fake::duplicate(1, 1)])))
            .reply(),
        "duplicate",
    );
    // The engine refuses a bad name after parsing: an error in its place.
    let refused = EngineError::Invalid("changes[0].id: empty".into());
    assert_fits(
        &json!({"type": "error", "rid": 3, "code": 400, "reason": "invalid_field",
                "message": "changes[0].id: empty"}),
        c.reply(t3, Reply::Written(Err(refused))).reply(),
        "invalid write",
    );
    // A get answered with the stored entity, and one whose read failed.
    let set = fake::change("s", "c", "a", Op::Patch, json!({"v": 1}), 1);
    let stored = fake::entity(std::slice::from_ref(&set));
    let e = c.json(json!({"type": "get", "rid": 4, "space": "s", "collection": "c", "id": "a"}));
    let (t4, _) = e.called();
    assert_fits(
        &json!({"type": "entity", "rid": 4, "fields": {"v": 1}, "deleted": false, "version": 1,
                "seq": 1}),
        c.reply(t4, Reply::Got(Ok(vec![Some(stored.clone())])))
            .reply(),
        "get",
    );
    let e = c.json(json!({"type": "get", "rid": 5, "space": "s", "collection": "c", "id": "a"}));
    let (t5, _) = e.called();
    let failed = EngineError::Store(StoreError::NoSpace);
    assert_fits(
        &json!({"type": "error", "rid": 5, "code": 507, "reason": "disk_full"}),
        c.reply(t5, Reply::Got(Err(failed))).reply(),
        "failed get",
    );
    // A committed change as a `change` frame; native needs no state for it.
    let committed = fake::committed(set, 1, Some(&stored));
    assert!(!c.dialect.needs_state(1, &committed));
    let mut out = Vec::new();
    c.dialect.change(1, &committed, None, &mut out);
    assert_fits(
        &json!({"type": "change", "space": "s", "seq": 1, "collection": "c", "id": "a",
                "op": "patch", "fields": {"v": 1}, "version": 1, "origin_seq": 1}),
        &parse(&out[0]),
        "change",
    );
    // Read-only: pushes and publishes are refused at once, nothing called.
    let mut r = conn(fake::grant("rita", Scope::Read));
    for frame in [
        json!({"type": "push", "rid": 5, "space": "s", "changes": [{"collection": "c", "id": "b"}]}),
        json!({"type": "publish", "rid": 5, "space": "s", "topic": "t"}),
    ] {
        let e = r.json(frame);
        assert!(e.call.is_none() && e.publish.is_none());
        assert_fits(
            &json!({"type": "error", "rid": 5, "code": 403, "reason": "forbidden"}),
            e.reply(),
            "read-only",
        );
    }
}
