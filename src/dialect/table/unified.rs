//! Seed 004 `/api/ws` and its two subsets, and the SSE stream: every
//! client message, each error, gzip frames, the driver's calls and reads.
//! No engine: calls and queries are effects, results and rows built by
//! hand ([`fake`]).

use super::fake;
use super::*;
use crate::dialect::unified::{self, events, proto::Endpoint, Client};
use crate::dialect::{Failed, Refusal};
use crate::model::Op;
use axum::extract::ws::Message;
use serde_json::json;

/// Connection 1 of `endpoint` to space `s`, with the handshake's other
/// query parameters and `grant`; forms to validate against.
fn conn(
    endpoint: Endpoint,
    grant: crate::auth::Grant,
    query: &[(&str, &str)],
    forms: crate::schema::SchemaSet,
) -> Conn<unified::Unified> {
    let mut q: HashMap<String, String> = HashMap::from([("space".into(), "s".into())]);
    q.extend(query.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let client = Client::of(endpoint, grant, &q).unwrap();
    let metrics = Arc::new(crate::metrics::Metrics::default());
    Conn::pure(unified::Unified::new(
        client,
        1,
        Arc::new(forms),
        1 << 20,
        metrics,
    ))
}

fn contact_form() -> crate::schema::SchemaSet {
    crate::schema::SchemaSet::from_values(BTreeMap::from([(
        "contact".to_string(),
        json!({"type": "object", "required": ["email"],
               "properties": {"email": {"type": "string", "format": "email"},
                              "message": {"type": "string", "minLength": 10}}}),
    )]))
    .unwrap()
}

/// The one write `e` asks the driver to make, as `actor` in space `s`:
/// its token and writes.
fn wrote<'e>(e: &'e Effects, actor: &str) -> (u64, &'e [crate::store::LocalWrite]) {
    let (token, call) = e.called();
    let Call::Write {
        space,
        actor: by,
        writes,
        ..
    } = call
    else {
        panic!("a write, not {call:?}")
    };
    assert_eq!((space.as_str(), by.as_str()), ("s", actor));
    (token, writes)
}

/// The `sync` read's query: `users` changed after version `after`.
fn users_after(after: u64) -> Option<Query> {
    Some(Query::TypeChanges {
        space: "s".into(),
        collection: "users".into(),
        after,
        limit: 256,
    })
}

#[test]
fn client_messages_in_effects_out() {
    let mut c = conn(
        Endpoint::Unified,
        fake::anonymous(),
        &[("client_id", "tab")],
        contact_form(),
    );
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

    // A push is a write the driver makes as the client; acked once stored.
    let e = c.json(json!({"type": "push", "entity": "users", "entity_id": "u1",
                          "action": "create", "data": {"name": "ann"}}));
    let (token, writes) = wrote(&e, "tab");
    assert_eq!(
        (writes[0].collection.as_str(), writes[0].id.as_str()),
        ("users", "u1")
    );
    assert_eq!(writes[0].fields["name"], json!("ann"));
    assert_fits(
        &json!({"type": "push_ack", "entity": "users", "entity_id": "u1", "version": 1}),
        c.reply(token, Reply::Written(Ok(vec![fake::applied(1, 1)])))
            .reply(),
        "push",
    );
    // The entity feed renders the whole entity (a replayed change over
    // the state the driver reads); the field feed one frame per field.
    let mut created = fake::change("s", "users", "u1", Op::Put, json!({"name": "ann"}), 1);
    created.actor = "tab".into();
    let state = fake::entity(std::slice::from_ref(&created));
    let committed = fake::committed(created.clone(), 1, None);
    assert_fits(
        &json!({"type": "change", "change": {"entity": "users", "entity_id": "u1",
                "action": "create", "data": {"name": "ann"}, "version": 1, "client_id": "tab"}}),
        &c.render(1, &committed, Some(&state))[0],
        "change",
    );
    assert_fits(
        &json!({"type": "field_change", "change": {"entity": "users", "entity_id": "u1",
                "field": "name", "value": "ann", "action": "update"}}),
        &c.render(3, &committed, None)[0],
        "field_change",
    );
    // An older field write loses: acked with the conflict.
    let e = c.json(
        json!({"type": "push_fields", "entity": "users", "entity_id": "u1",
                          "fields": [{"field": "name", "value": "bo", "action": "update",
                                      "timestamp": "2020-01-01T00:00:00Z"}]}),
    );
    let (token, writes) = wrote(&e, "tab");
    assert_eq!(writes[0].client_us, Some(1_577_836_800_000_000));
    let lost = fake::lost(2, 2, "name", json!("bo"), json!("ann"));
    assert_fits(
        &json!([{"type": "field_push_ack", "entity": "users", "entity_id": "u1"},
                {"type": "field_conflict", "field": "name", "server_value": "ann",
                 "client_value": "bo"}]),
        &Value::Array(c.reply(token, Reply::Written(Ok(vec![lost]))).now),
        "an older field write loses",
    );
    // `sync`: a paged read of the entities changed after a version.
    let e = c.json(json!({"type": "sync", "entity": "users", "since": 0}));
    assert!(e.now.is_empty());
    assert_eq!(e.query, users_after(0));
    // (The losing field write took version 2: every merged change does.)
    let mut late = fake::change("s", "users", "u1", Op::Patch, json!({"name": "bo"}), 2);
    late.stamp.ms = 0;
    let u1 = fake::entity(&[created.clone(), late.clone()]);
    let newest = fake::entry(late, 2);
    let e = c.rows(Rows::TypeChanges {
        latest: 2,
        items: vec![("u1".into(), u1.clone(), Some(newest.clone()))],
    });
    assert_fits(
        &json!([{"type": "change", "change": {"entity_id": "u1", "version": 2,
                                              "data": {"id": "u1", "name": "ann"}}}]),
        &Value::Array(e.read),
        "sync",
    );
    assert!(e.query.is_none(), "a short page is the last");
    let e = c.json(json!({"type": "sync", "entity": "users", "since": 2}));
    assert_eq!(e.query, users_after(2));
    let e = c.rows(Rows::TypeChanges {
        latest: 2,
        items: Vec::new(),
    });
    assert!(e.read.is_empty() && e.query.is_none());
    // A full page is followed by the next, after its last version.
    c.json(json!({"type": "sync", "entity": "users", "since": 0}));
    let full: Vec<_> = (1..=256u64)
        .map(|v| {
            let mut e = u1.clone();
            e.type_version = v;
            (format!("u{v}"), e, Some(newest.clone()))
        })
        .collect();
    let e = c.rows(Rows::TypeChanges {
        latest: 256,
        items: full,
    });
    assert_eq!(e.read.len(), 256);
    assert_eq!(e.query, users_after(256));
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
    let (token, _) = wrote(&e, "tab");
    let refused = crate::engine::EngineError::Invalid("changes[0].id: empty".into());
    assert_fits(
        &json!({"type": "error", "code": "invalid_field", "message": "id: empty"}),
        c.reply(token, Reply::Written(Err(refused))).reply(),
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
    let none = crate::schema::SchemaSet::default;
    let mut f = conn(Endpoint::Field, fake::anonymous(), &[], none());
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
    // Its acks go under the field client's names (named after its
    // connection: it gave no name).
    let e = f.json(
        json!({"type": "push_fields", "entity": "users", "entity_id": "u1",
                          "fields": [{"field": "n", "value": 1, "action": "update",
                                      "timestamp": "2030-01-01T00:00:00Z"}]}),
    );
    let (token, _) = wrote(&e, "c1");
    assert_fits(
        &json!({"type": "push_ack", "applied": 1}),
        f.reply(token, Reply::Written(Ok(vec![fake::applied(1, 1)])))
            .reply(),
        "push_ack",
    );
    let mut s = conn(Endpoint::Entity, fake::anonymous(), &[], none());
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
    let mut u = conn(Endpoint::Unified, fake::anonymous(), &[], none());
    assert!(matches!(u.dialect.outgoing(big.clone()), Message::Text(_)));
    let ping = crate::dialect::gzip::gzip(r#"{"type":"ping"}"#);
    let e = u.binary(&ping);
    assert_fits(&json!({"type": "pong"}), e.reply(), "gzip in");
    assert!(matches!(
        u.dialect.outgoing(big.clone()),
        Message::Binary(_)
    ));
    let e = u.binary(b"not gzip");
    assert_fits(
        &json!({"type": "error", "code": "binary_unsupported"}),
        e.reply(),
        "bad gzip",
    );
    // Read-only: pushes are refused at once.
    let (gzip, off) = ([("compression", "gzip")], [("compression", "off")]);
    let asked = conn(Endpoint::Unified, fake::anonymous(), &gzip, none());
    assert!(matches!(
        asked.dialect.outgoing(big.clone()),
        Message::Binary(_)
    ));
    let plain = conn(Endpoint::Entity, fake::anonymous(), &off, none());
    assert!(matches!(plain.dialect.outgoing(big), Message::Text(_)));
    let read = fake::grant("rita", Scope::Read);
    let mut r = conn(Endpoint::Unified, read, &[], none());
    assert_fits(
        &json!({"type": "error", "code": "forbidden"}),
        r.json(json!({"type": "push", "entity": "users", "entity_id": "u9", "action": "delete"}))
            .reply(),
        "read-only",
    );
}

/// The SSE stream follows the space from the seq its handshake saw
/// (`events::accept` reads it); a replayed change is rendered over the
/// entity's current state, which the driver reads.
#[test]
fn the_sse_stream_follows_the_space_from_its_handshake() {
    let mut c = Conn::pure(events::Events::new("s".into(), 1));
    let open = c.open();
    assert_eq!(
        open.follow,
        [(0, "s".to_string(), None, false, Since::After(1))]
    );
    let ann = fake::change("s", "users", "u1", Op::Patch, json!({"name": "ann"}), 1);
    let state = fake::entity(std::slice::from_ref(&ann));
    assert_fits(
        &json!({"entity": "users", "entity_id": "u1", "data": {"name": "ann"}}),
        &c.render(0, &fake::committed(ann, 1, None), Some(&state))[0],
        "a ChangeLog as the event's data",
    );
}
