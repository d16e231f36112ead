//! Seed 001 `/ws/atome-sync`: every client message, each error, in-band
//! auth, the driver's calls. No engine: calls are effects, results built
//! by hand ([`fake`]).

use super::fake;
use super::*;
use crate::dialect::{atome_sync, Refusal};
use crate::model::Op;
use serde_json::json;

/// A connection to space `s` named `me`.
fn conn(grant: crate::auth::Grant) -> Conn<atome_sync::AtomeProto> {
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let d = atome_sync::AtomeProto::new(grant, "s".into(), "me".into(), fake::auth(), metrics);
    Conn::pure(d)
}

#[test]
fn client_messages_in_effects_out() {
    let mut c = conn(fake::anonymous());
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
    let mut changes = atome_writes(
        &mut c,
        "me",
        vec![
            (
                json!({"type": "atome:created", "atome": {"id": "a1", "kind": "note"}}),
                Op::Put,
            ),
            (
                json!({"type": "atome:altered", "atomeId": "a1", "alteration": {"kind": "memo"}}),
                Op::Patch,
            ),
            (
                json!({"type": "atome:deleted", "atomeId": "a1"}),
                Op::Delete,
            ),
        ],
    );
    // A write the engine refuses: an error answering its request.
    let e = c.json(json!({"type": "atome:deleted", "requestId": 9, "atomeId": "a1"}));
    let (token, _) = e.called();
    let full =
        crate::engine::EngineError::Store(crate::store::StoreError::DiskFull { free_bytes: 0 });
    assert_fits(
        &json!({"type": "error", "code": "request-failed", "requestId": 9}),
        c.reply(token, Reply::Written(Err(full))).reply(),
        "refused write",
    );
    // A replayed change renders over the current state the driver reads.
    let state = fake::entity(&changes);
    let deleted = fake::committed(changes.pop().unwrap(), 3, None);
    assert_fits(
        &json!({"type": "atome:deleted", "atomeId": "a1"}),
        &c.render(0, &deleted, Some(&state))[0],
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
    // Admitted without a token where anonymous access is off: no scope.
    let mut c = conn(crate::auth::Grant::anonymous(Anonymous::None));
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
    let read = fake::token("rita", Scope::Read);
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
    let write = fake::token("wes", Scope::Write);
    c.json(json!({"type": "auth", "token": write}));
    let e = c.json(w);
    let (_, call) = e.called();
    assert!(
        matches!(call, Call::Write { actor, .. } if actor == "wes"),
        "written as the token's subject: {call:?}"
    );
}
