//! Seed 000 `/ws/sync`: every client message, each error, the driver's calls.

use super::*;
use crate::dialect::{sync, Refusal};
use axum::http::HeaderMap;
use serde_json::json;

fn conn(b: &Bench, query: &[(&str, &str)]) -> Conn<sync::SyncProto> {
    let mut q = vec![("space", "s")];
    q.extend_from_slice(query);
    b.open(sync::accept(&b.ctx, &HeaderMap::new(), &Bench::query(&q)))
}

#[test]
fn client_messages_in_effects_out() {
    let b = Bench::new();
    let mut c = conn(&b, &[]);
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
    for frame in [
        json!({"type": "atome-sync", "payload": {"operation": "create", "atome": {"id": "a1", "kind": "note"}}}),
        json!({"type": "event", "eventType": "atome:altered", "payload": {"id": "a1", "alteration": {"kind": "memo"}}}),
        json!({"type": "event", "eventType": "atome:deleted", "payload": {"id": "a1"}}),
    ] {
        let e = c.json(frame.clone());
        assert!(e.now.is_empty() && e.later.is_empty(), "{frame}: {e:?}");
    }
    assert_eq!(b.engine().last_seq(), 3, "three atome writes stored");
    let mut out = Vec::new();
    b.render(&mut c.dialect, 0, &b.last_committed(), &mut out);
    assert_fits(
        &json!({"type": "event", "eventType": "atome:deleted"}),
        &parse(&out[0]),
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
    let b = Bench::new();
    let read = b.token("rita", Scope::Read);
    let mut c = conn(&b, &[("token", &read)]);
    for frame in [
        json!({"type": "event", "requestId": 1, "eventType": "presence"}),
        json!({"type": "atome-sync", "requestId": 1, "payload": {"operation": "create", "atome": {"id": "a"}}}),
    ] {
        assert_fits(
            &json!({"type": "error", "code": "request-failed", "context": {"requestId": 1}}),
            c.json(frame).reply(),
            "read-only",
        );
    }
    assert_eq!(b.engine().last_seq(), 0);
}
