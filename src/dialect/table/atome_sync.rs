//! Seed 001 `/ws/atome-sync`: every client message, each error, in-band
//! auth, the driver's calls.

use super::*;
use crate::dialect::{atome_sync, Refusal};
use axum::http::HeaderMap;
use serde_json::json;

fn conn(b: &Bench, query: &[(&str, &str)]) -> Conn<atome_sync::AtomeProto> {
    let mut q = vec![("space", "s")];
    q.extend_from_slice(query);
    b.open(atome_sync::accept(
        &b.ctx,
        &HeaderMap::new(),
        &Bench::query(&q),
    ))
}

#[test]
fn client_messages_in_effects_out() {
    let b = Bench::new();
    let mut c = conn(&b, &[("clientId", "me")]);
    let open = c.open();
    assert_fits(
        &json!({"type": "welcome", "clientId": "me", "timestamp": NOW_ISO,
                "serverTime": NOW_ISO}),
        &open.now[0],
        "welcome",
    );
    assert_eq!(
        open.follow,
        [(
            0,
            "s".to_string(),
            Some(vec!["atome".into()]),
            false,
            Since::Now
        )]
    );
    assert!(
        c.dialect.auth_timeout().is_none(),
        "admitted: no in-band auth due"
    );
    let table: Vec<(Value, Value)> = vec![
        (
            json!({"type": "ping", "requestId": 1, "timestamp": 7}),
            json!({"type": "pong", "timestamp": 7}),
        ),
        (
            json!({"type": "ping", "requestId": 1}),
            json!({"type": "pong", "timestamp": NOW}),
        ),
        (
            json!({"type": "auth", "requestId": 2, "token": "nope"}),
            json!({"type": "error", "code": "unauthorized", "requestId": 2,
                   "timestamp": NOW_ISO}),
        ),
        (
            json!({"type": "atome:created", "requestId": 3}),
            json!({"type": "error", "code": "invalid-payload", "requestId": 3}),
        ),
        (
            json!({"type": "atome:altered", "requestId": 4, "atomeId": "a"}),
            json!({"type": "error", "code": "invalid-payload", "requestId": 4}),
        ),
        (
            json!({"type": "nope", "requestId": 5}),
            json!({"type": "error", "code": "unknown-type", "requestId": 5}),
        ),
        (
            json!({}),
            json!({"type": "error", "code": "invalid-payload"}),
        ),
    ];
    for (frame, reply) in table {
        assert_fits(&reply, c.json(frame.clone()).reply(), &frame.to_string());
    }
    assert_fits(
        &json!({"type": "error", "code": "invalid-payload"}),
        c.text("{").reply(),
        "not JSON",
    );
    assert!(c.json(json!({"type": "pong"})).is_empty());
    for frame in [
        json!({"type": "atome:created", "atome": {"id": "a1", "kind": "note"}}),
        json!({"type": "atome:altered", "atomeId": "a1", "alteration": {"kind": "memo"}}),
        json!({"type": "atome:deleted", "atomeId": "a1"}),
    ] {
        let e = c.json(frame.clone());
        assert!(e.now.is_empty() && e.later.is_empty(), "{frame}: {e:?}");
    }
    assert_eq!(b.engine().last_seq(), 3, "three atome writes stored");
    let mut out = Vec::new();
    b.render(&mut c.dialect, 0, &b.last_committed(), &mut out);
    assert_fits(
        &json!({"type": "atome:deleted", "atomeId": "a1"}),
        &parse(&out[0]),
        "a change",
    );
    let f = c.dialect.refuse(Refusal::Binary, NOW);
    assert_fits(
        &json!({"type": "error", "code": "invalid-payload"}),
        &parse(&f),
        "binary",
    );
}

#[test]
fn in_band_auth_then_writes() {
    let b = Bench::with(Anonymous::None, Default::default());
    let mut c = conn(&b, &[]);
    assert_eq!(
        c.dialect.auth_timeout(),
        Some(crate::dialect::atome_sync::AUTH_TIMEOUT),
        "auth is due in band"
    );
    let w = json!({"type": "atome:created", "requestId": 1, "atome": {"id": "a"}});
    assert_fits(
        &json!({"type": "error", "code": "unauthorized", "requestId": 1}),
        c.json(w.clone()).reply(),
        "a write before auth",
    );
    let read = b.token("rita", Scope::Read);
    assert_fits(
        &json!({"type": "auth:success"}),
        c.json(json!({"type": "auth", "token": read})).reply(),
        "auth",
    );
    assert!(c.dialect.auth_timeout().is_none());
    assert_fits(
        &json!({"type": "error", "code": "forbidden", "requestId": 1}),
        c.json(w.clone()).reply(),
        "a read-only write",
    );
    let write = b.token("wes", Scope::Write);
    c.json(json!({"type": "auth", "token": write}));
    let e = c.json(w);
    assert!(e.now.is_empty() && e.later.is_empty(), "{e:?}");
    assert_eq!(b.engine().last_seq(), 1);
}
