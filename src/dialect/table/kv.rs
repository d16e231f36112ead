//! Seed 003 `/v1/sync/{workspace}`: `init` (a paged read), every client
//! message, each error, the driver's calls and reads. No engine: calls and
//! queries are effects, their results built by hand ([`fake`]).

use super::fake;
use super::*;
use crate::dialect::{kv, Failed, Refusal};
use crate::model::Op;
use serde_json::json;

/// A connection to workspace `w`, with no engine behind it.
fn pure(grant: crate::auth::Grant) -> Conn<kv::Kv> {
    let metrics = Arc::new(crate::metrics::Metrics::default());
    Conn::pure(kv::Kv::new(grant, "w".into(), metrics, 1 << 20))
}

/// The key `k` of workspace `w` after one write of `value`.
fn key(k: &str, value: Value, seq: u64) -> (String, String, crate::store::StoredEntity) {
    let c = fake::change("w", "kv", k, Op::Patch, json!({ "value": value }), seq);
    ("kv".into(), k.into(), fake::entity(&[c]))
}

/// The `init` read's query for the keys after `after`, frames of 1 MiB
/// (chunks of 512 KiB).
fn keys_after(after: Option<&str>, chunk: usize) -> Query {
    Query::Entities {
        space: "w".into(),
        collection: Some("kv".into()),
        after: after.map(|a| ("kv".into(), a.into())),
        cap: crate::store::Cap::new(usize::MAX, chunk),
    }
}

#[test]
fn init_then_the_feed_from_its_seq() {
    let mut c = pure(fake::anonymous());
    let open = c.open();
    assert!(open.now.is_empty() && open.follow.is_empty());
    assert_eq!(open.query, Some(keys_after(None, 512 * 1024)));
    // The workspace's keys (one deleted); the read saw seq 3 (a write of
    // another collection came last).
    let keys = vec![key("a", json!(1), 1), key("gone", Value::Null, 2)];
    let e = c.rows(Rows::Entities {
        items: keys.clone(),
        more: false,
        seq: 3,
    });
    assert_eq!(e.read.len(), 1, "{e:?}");
    assert_fits(
        &json!({"type": "init", "data": {"a": 1}}),
        &e.read[0],
        "init",
    );
    let keyed: Vec<_> = keys.into_iter().map(|(_, k, e)| (k, e)).collect();
    assert_eq!(e.read[0]["heads"], json!(kv::heads(&keyed)));
    assert_eq!(e.read[0]["heads"].as_array().unwrap().len(), 1);
    assert!(e.query.is_none(), "one page: the read is done");
    assert_eq!(
        e.follow,
        [(
            0,
            "w".to_string(),
            Some(vec!["kv".into()]),
            false,
            Since::After(3)
        )]
    );
    // A replayed change renders the key's current value (the driver reads
    // it).
    let gone = fake::change("w", "kv", "gone", Op::Patch, json!({"value": null}), 2);
    let state = fake::entity(std::slice::from_ref(&gone));
    let out = c.render(0, &fake::committed(gone, 1, None), Some(&state));
    assert_fits(
        &json!({"type": "op", "payload": {"key": "gone", "value": null}}),
        &out[0],
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

/// A workspace too large for one frame: the heads are hashed over every
/// key first, then `init` carries the first chunk and `op`s the rest.
#[test]
fn a_large_workspace_is_init_then_ops() {
    let big = "x".repeat(20_000);
    let keys: Vec<_> = ["a", "b", "c"]
        .iter()
        .zip(1..)
        .map(|(k, seq)| key(k, json!(big), seq))
        .collect();
    let mut c = pure(fake::anonymous());
    // Frames of 32 KiB: 16 KiB of state per chunk, one key each (as the
    // store pages them: a page takes its first item, however large).
    c.dialect.set_max_frame_bytes(32 * 1024);
    let mut e = c.open();
    let (mut frames, mut afters) = (Vec::new(), Vec::new());
    while let Some(Query::Entities { after, cap, .. }) = e.query.take() {
        assert_eq!(cap, crate::store::Cap::new(usize::MAX, 16 * 1024));
        let at = after.as_ref().map(|(_, id)| id.clone());
        let rest: Vec<_> = keys
            .iter()
            .filter(|(_, id, _)| at.as_ref().is_none_or(|a| id > a))
            .collect();
        afters.push(at);
        e = c.rows(Rows::Entities {
            items: rest.iter().take(1).map(|k| (*k).clone()).collect(),
            more: rest.len() > 1,
            seq: 3,
        });
        frames.extend(std::mem::take(&mut e.read));
    }
    let a = |k: &str| Some(k.to_string());
    assert_eq!(
        afters,
        [None, None, a("a"), a("b"), a("a"), a("b")],
        "the first chunk, the keys hashed, the rest"
    );
    let kinds: Vec<&str> = frames.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["init", "op", "op"], "{frames:?}");
    assert_eq!(frames[0]["data"].as_object().unwrap().len(), 1);
    let keyed: Vec<_> = keys.into_iter().map(|(_, k, e)| (k, e)).collect();
    assert_eq!(
        frames[0]["heads"],
        json!(kv::heads(&keyed)),
        "hashed page by page as at once"
    );
    assert_eq!(frames[2]["payload"]["key"], "c");
    assert_eq!(e.follow[0].4, Since::After(3));
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
