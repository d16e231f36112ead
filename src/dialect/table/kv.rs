//! Seed 003 `/v1/sync/{workspace}`: `init` (a paged read), every client
//! message, each error, the driver's calls.

use super::fake;
use super::*;
use crate::dialect::{kv, Failed, Refusal};
use crate::model::Op;
use axum::http::HeaderMap;
use serde_json::json;

/// A connection to workspace `w`, with no engine behind it.
fn pure(grant: crate::auth::Grant) -> Conn<kv::Kv> {
    let metrics = Arc::new(crate::metrics::Metrics::default());
    Conn::pure(kv::Kv::new(grant, "w".into(), metrics, 1 << 20))
}

fn conn(b: &Bench, query: &[(&str, &str)]) -> Conn<kv::Kv> {
    b.open(kv::accept(
        &b.ctx,
        "w".into(),
        &HeaderMap::new(),
        &Bench::query(query),
    ))
}

#[test]
fn init_then_the_feed_from_its_seq() {
    let b = Bench::new();
    b.write("w", "kv", "a", json!({"value": 1}));
    b.write("w", "kv", "gone", json!({"value": null}));
    b.write("w", "other", "x", json!({"value": 2}));
    let mut c = conn(&b, &[]);
    let open = c.open();
    assert!(open.now.is_empty());
    assert_eq!(open.read.len(), 1, "{open:?}");
    assert_fits(
        &json!({"type": "init", "data": {"a": 1}}),
        &open.read[0],
        "init",
    );
    assert_eq!(open.read[0]["heads"].as_array().unwrap().len(), 1);
    assert_eq!(
        open.follow,
        [(
            0,
            "w".to_string(),
            Some(vec!["kv".into()]),
            false,
            Since::After(3)
        )]
    );
    // Replayed and live changes render the key's value.
    let mut out = Vec::new();
    b.render(
        &mut c.dialect,
        0,
        &b.last_committed_in(Some("kv")),
        &mut out,
    );
    assert_fits(
        &json!({"type": "op", "payload": {"key": "gone", "value": null}}),
        &parse(&out[0]),
        "op",
    );
    // A failed read or feed: an error, then close (1011).
    let e = crate::engine::EngineError::Internal("x".into());
    for f in [c.dialect.read_failed(&e), c.dialect.feed_failed(0, &e)] {
        let Failed::Close(frames, why) = f else {
            panic!("the session cannot go on")
        };
        assert_eq!(why, "cannot read the workspace");
        assert_fits(
            &json!({"type": "error", "code": 500, "reason": "storage_failed"}),
            &parse(&frames[0]),
            "failed read",
        );
    }
}

#[test]
fn a_large_workspace_is_init_then_ops() {
    let b = Bench::new();
    let big = "x".repeat(20_000);
    for k in ["a", "b", "c"] {
        b.write("w", "kv", k, json!({ "value": big }));
    }
    // Frames of 32 KiB: 16 KiB of state per chunk, one key each.
    let q = Bench::query(&[]);
    let mut opening = kv::accept(&b.ctx, "w".into(), &HeaderMap::new(), &q).unwrap();
    let make = std::mem::replace(&mut opening.make, Box::new(|_| unreachable!()));
    opening.make = Box::new(move |cc| {
        let mut d = make(cc);
        d.set_max_frame_bytes(32 * 1024);
        d
    });
    let mut c = b.open(Ok(opening));
    let open = c.open();
    let kinds: Vec<&str> = open
        .read
        .iter()
        .map(|f| f["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["init", "op", "op"], "{open:?}");
    assert_eq!(open.read[0]["data"].as_object().unwrap().len(), 1);
    assert_eq!(open.read[2]["payload"]["key"], "c");
}

#[test]
fn client_messages_in_effects_out() {
    let mut c = pure(fake::anonymous());
    let table: Vec<(&str, Value)> = vec![
        (
            "nope",
            json!({"type": "error", "code": 400, "reason": "invalid_json"}),
        ),
        (
            "[1]",
            json!({"type": "error", "code": 400, "reason": "invalid_message"}),
        ),
        (
            r#"{"type":"sub"}"#,
            json!({"type": "error", "code": 400, "reason": "unknown_type"}),
        ),
        (
            r#"{"type":"op"}"#,
            json!({"type": "error", "code": 400, "reason": "invalid_field"}),
        ),
    ];
    for (frame, reply) in table {
        assert_fits(&reply, c.text(frame).reply(), frame);
    }
    assert!(
        c.text(r#"{"type":"ping","timestamp":1}"#).is_empty(),
        "heartbeats are ignored"
    );
    assert!(c.text(r#"{"type":"pong"}"#).is_empty());
    // An op is a write the driver makes; stored, it is answered by its
    // broadcast only (nothing here).
    let e = c.text(r#"{"type":"op","payload":{"key":"k","value":1,"timestamp":1700000000123456}}"#);
    let (t1, call) = e.called();
    let Call::Write {
        space,
        actor,
        writes,
        write_ids,
    } = call
    else {
        panic!("an op is a write: {call:?}")
    };
    assert_eq!((space.as_str(), actor.as_str()), ("w", "anonymous"));
    assert!(write_ids.is_empty());
    assert_eq!(
        (
            writes.len(),
            writes[0].id.as_str(),
            writes[0].collection.as_str()
        ),
        (1, "k", "kv")
    );
    assert_eq!(writes[0].fields["value"], json!(1));
    assert_eq!(writes[0].client_us, Some(1_700_000_000_123_456));
    assert!(c
        .reply(t1, Reply::Written(Ok(vec![fake::applied(1, 1)])))
        .is_empty());
    // The engine refuses a bad key after parsing: an error naming it.
    let e = c.text(r#"{"type":"op","payload":{"key":"","value":1}}"#);
    let (t2, _) = e.called();
    let refused = crate::engine::EngineError::Invalid("id: empty".into());
    assert_fits(
        &json!({"type": "error", "code": 400, "reason": "invalid_field", "key": ""}),
        c.reply(t2, Reply::Written(Err(refused))).reply(),
        "bad key",
    );
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
    // Read-only: refused at once, nothing written.
    let mut r = pure(fake::grant("rita", Scope::Read));
    let e = r.text(r#"{"type":"op","payload":{"key":"k","value":2}}"#);
    assert!(e.call.is_none());
    assert_fits(
        &json!({"type": "error", "code": 403, "reason": "forbidden", "key": "k"}),
        e.reply(),
        "read-only",
    );
}

/// Live changes: one that won renders from itself; one that lost (or a
/// delete) renders the key's current state, which the driver reads.
#[test]
fn changes_render_from_themselves_or_the_current_state() {
    let mut c = pure(fake::anonymous());
    let won = fake::change("w", "kv", "k", Op::Patch, json!({"value": 2}), 2);
    let stored = fake::entity(std::slice::from_ref(&won));
    let live = fake::committed(won, 1, Some(&stored));
    assert!(!c.dialect.needs_state(0, &live));
    let mut out = Vec::new();
    c.dialect.change(0, &live, None, &mut out);
    assert_fits(
        &json!({"type": "op", "payload": {"key": "k", "value": 2}}),
        &parse(&out[0]),
        "a winner",
    );
    let lost = fake::change("w", "kv", "k", Op::Patch, json!({"value": 1}), 1);
    let late = fake::committed(lost, 2, Some(&stored));
    assert!(c.dialect.needs_state(0, &late));
    out.clear();
    c.dialect.change(0, &late, Some(&stored), &mut out);
    assert_fits(
        &json!({"type": "op", "payload": {"key": "k", "value": 2}}),
        &parse(&out[0]),
        "the current value, not the loser's",
    );
}
