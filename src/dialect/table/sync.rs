//! Seed 000 `/ws/sync`: every client message, each error, the driver's
//! calls. No engine: calls are effects, results built by hand ([`fake`]).

use super::fake;
use super::*;
use crate::dialect::{sync, Refusal};
use crate::model::Op;
use serde_json::json;

/// A connection to space `s` (of a relay with an upstream or not).
fn conn(grant: crate::auth::Grant, upstream: bool) -> Conn<sync::SyncProto> {
    let metrics = Arc::new(crate::metrics::Metrics::default());
    Conn::pure(sync::SyncProto::new(grant, "s".into(), metrics, upstream))
}

#[test]
fn client_messages_in_effects_out() {
    let mut c = conn(fake::anonymous(), false);
    let open = c.open();
    assert_fits(
        &json!({"type": "welcome", "server": "outpost", "timestamp": NOW_ISO,
                "capabilities": ["events", "sync_request", "file-events", "atome-events"]}),
        &open.now[0],
        "welcome",
    );
    assert_eq!(
        open.follow,
        [(
            0,
            "s".to_string(),
            Some(vec!["atome".into()]),
            true,
            Since::Now
        )]
    );
    assert!(!c.dialect.echo(), "a client never gets its own writes back");
    let table: Vec<(Value, Value)> = vec![
        (
            json!({"type": "register", "requestId": 1, "clientId": "me"}),
            json!({"type": "welcome", "requestId": 1, "clientId": "me", "timestamp": NOW_ISO}),
        ),
        (
            json!({"type": "register", "requestId": 2, "clientId": 5}),
            json!({"type": "error", "code": "invalid-payload", "context": {"requestId": 2}}),
        ),
        (
            json!({"type": "ping", "requestId": 3, "timestamp": 7}),
            json!({"type": "pong", "requestId": 3, "timestamp": 7}),
        ),
        (
            json!({"type": "ping", "requestId": 3}),
            json!({"type": "pong", "requestId": 3, "timestamp": NOW}),
        ),
        (
            json!({"type": "sync_request", "requestId": 4}),
            json!({"type": "sync_started", "requestId": 4, "mode": "local", "timestamp": NOW}),
        ),
        (
            json!({"type": "event", "requestId": 5}),
            json!({"type": "error", "code": "invalid-payload", "context": {"requestId": 5}}),
        ),
        (
            json!({"type": "atome-sync", "requestId": 6, "payload": {"operation": "boil"}}),
            json!({"type": "error", "code": "invalid-payload", "context": {"requestId": 6}}),
        ),
        (
            json!({"type": "nope", "requestId": 7}),
            json!({"type": "error", "code": "unknown-type", "context": {"requestId": 7}}),
        ),
        (
            json!({"requestId": 8}),
            json!({"type": "error", "code": "invalid-payload"}),
        ),
    ];
    for (frame, reply) in table {
        assert_fits(&reply, c.json(frame.clone()).reply(), &frame.to_string());
    }
    assert_fits(
        &json!({"type": "error", "code": "invalid-payload", "context": {"requestId": null}}),
        c.text("{").reply(),
        "not JSON",
    );
    // Answered by nothing: a pong, a published event, a stored atome.
    assert!(c.json(json!({"type": "pong"})).is_empty());
    for (frame, topic) in [
        (
            json!({"type": "event", "eventType": "presence", "payload": {"x": 1}}),
            "presence",
        ),
        (
            json!({"type": "file-event", "payload": {"path": "/a"}}),
            "sync:file-event",
        ),
        (
            json!({"type": "sync:user-created", "payload": {"id": "u"}}),
            "sync:user-created",
        ),
    ] {
        let e = c.json(frame.clone());
        assert!(e.now.is_empty() && e.later.is_empty(), "{frame}: {e:?}");
        let published = e.publish.expect("an event is published");
        assert_eq!(
            (published.space.as_str(), published.topic.as_str()),
            ("s", topic)
        );
    }
    // An atome event is a write the driver makes, as the registered
    // client; stored, it is answered by nothing (the seed has no ack).
    let mut changes = atome_writes(
        &mut c,
        "me",
        vec![
            (
                json!({"type": "atome-sync", "payload": {"operation": "create", "atome": {"id": "a1", "kind": "note"}}}),
                Op::Put,
            ),
            (
                json!({"type": "event", "eventType": "atome:altered", "payload": {"id": "a1", "alteration": {"kind": "memo"}}}),
                Op::Patch,
            ),
            (
                json!({"type": "event", "eventType": "atome:deleted", "payload": {"id": "a1"}}),
                Op::Delete,
            ),
        ],
    );
    // A write the engine refuses: an error answering its request.
    let e = c.json(
        json!({"type": "event", "requestId": 9, "eventType": "atome:deleted",
                          "payload": {"id": "a1"}}),
    );
    let (token, _) = e.called();
    let refused = crate::engine::EngineError::Invalid("id: bad".into());
    assert_fits(
        &json!({"type": "error", "code": "invalid-payload", "context": {"requestId": 9}}),
        c.reply(token, Reply::Written(Err(refused))).reply(),
        "refused write",
    );
    // A replayed change (no state after it) renders over the entity's
    // current state, which the driver reads.
    let state = fake::entity(&changes);
    let deleted = fake::committed(changes.pop().unwrap(), 3, None);
    assert_fits(
        &json!({"type": "event", "eventType": "atome:deleted"}),
        &c.render(0, &deleted, Some(&state))[0],
        "a change as an event",
    );
    let f = c.dialect.refuse(Refusal::TooLarge { len: 9, max: 8 }, NOW);
    assert_fits(
        &json!({"type": "error", "code": "invalid-payload"}),
        &parse(&f),
        "too large",
    );
}

#[test]
fn a_read_only_client_is_refused_writes() {
    let mut c = conn(fake::grant("rita", Scope::Read), false);
    for frame in [
        json!({"type": "event", "requestId": 1, "eventType": "presence"}),
        json!({"type": "atome-sync", "requestId": 1, "payload": {"operation": "create", "atome": {"id": "a"}}}),
    ] {
        let e = c.json(frame);
        assert!(e.call.is_none() && e.publish.is_none(), "nothing written");
        assert_fits(
            &json!({"type": "error", "code": "request-failed", "context": {"requestId": 1}}),
            e.reply(),
            "read-only",
        );
    }
}

/// With an upstream, `sync_request` asks for a round with it now;
/// without one it answers `local` and asks for nothing.
#[test]
fn sync_request_wakes_the_upstream() {
    for upstream in [true, false] {
        let mut c = conn(fake::anonymous(), upstream);
        let e = c.json(json!({"type": "sync_request", "requestId": 1}));
        let mode = if upstream { "upstream" } else { "local" };
        assert_fits(
            &json!({"type": "sync_started", "requestId": 1, "mode": mode, "timestamp": NOW}),
            e.reply(),
            "sync_started",
        );
        assert_eq!(e.wake_upstream, upstream);
    }
}
