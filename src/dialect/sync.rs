//! Seed 000, the minimal sync protocol on `GET /ws/sync?space=NAME`,
//! documented in docs/protocol.md.
//!
//! The client follows one space. Atome entities (collection `atome`) reach it
//! as `event`s `atome:created|updated|deleted`; ephemeral topics of the space
//! reach it as `event`s named by the topic. Atome events it sends (as `event`
//! or legacy `atome-sync`) are stored; other events (`sync:file-event`,
//! `sync:account-*`, `sync:user-*`, any other `eventType`) are published
//! ephemerally. Either way the other clients get them; the sender does not.
//!
//! Parsing and rendering are pure functions below; `SyncProto` only calls
//! the engine, and `conn::run` drives the socket.

use super::atome::{self, bad, AtomeChange, AtomeEvent, AtomeWrite, Bad};
use super::SLOT_SYNC;
use super::{Call, Dialect, Follow, Handled, Opening, Publish, Refusal, Refused, Reply, Since};
use crate::auth::Grant;
use crate::dialect::Ctx;
use crate::engine::Committed;
use crate::engine::{Event, Filter};
use crate::store::StoredEntity;
use axum::extract::ws::Utf8Bytes;
use axum::http::HeaderMap;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// The handshake of `GET /ws/sync?space=NAME` (see `dialect::admit_space`).
pub fn accept(
    state: &Ctx,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<Opening<SyncProto>, Refused> {
    let (grant, space) = super::admit_space(state, headers, query)?;
    let (metrics, upstream) = (state.engine.metrics.clone(), state.upstream.is_some());
    Ok(Opening::new("/ws/sync", move |_| {
        SyncProto::new(grant, space, metrics, upstream)
    }))
}

/// What the relay reports it can do (at least the seed's four).
pub const CAPABILITIES: [&str; 4] = ["events", "sync_request", "file-events", "atome-events"];

/// Error codes of the seed.
pub use super::atome::{FAILED, INVALID, UNKNOWN};

/// Legacy message types that are published under their own name.
const LEGACY_TOPICS: [&str; 4] = [
    "sync:account-created",
    "sync:account-deleted",
    "sync:user-created",
    "sync:user-deleted",
];

/// A parsed client message.
#[derive(Debug, PartialEq)]
pub enum Request {
    Register {
        client_id: Option<String>,
    },
    Ping {
        timestamp: Value,
    },
    /// A client's answer to a keepalive: nothing to do.
    Pong,
    SyncRequest,
    Atome(AtomeWrite),
    Publish {
        topic: String,
        payload: Value,
    },
}

/// Parse one text frame: its `requestId` (null if none) and the request.
pub fn parse(text: &str) -> (Value, Result<Request, Bad>) {
    match atome::envelope(text, INVALID) {
        Ok((rid, obj)) => (rid, parse_obj(obj)),
        Err(b) => (Value::Null, Err(b)),
    }
}

fn parse_obj(obj: Map<String, Value>) -> Result<Request, Bad> {
    let kind = match obj.get("type") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(bad(INVALID, "missing string field `type`")),
    };
    match kind.as_str() {
        "register" => match obj.get("clientId") {
            None | Some(Value::Null) => Ok(Request::Register { client_id: None }),
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => Ok(Request::Register {
                client_id: Some(s.clone()),
            }),
            Some(_) => Err(bad(INVALID, "clientId: must be a string of 1 to 256 bytes")),
        },
        "ping" => Ok(Request::Ping {
            timestamp: obj.get("timestamp").cloned().unwrap_or(Value::Null),
        }),
        "pong" => Ok(Request::Pong),
        "sync_request" => Ok(Request::SyncRequest),
        "event" => {
            let topic = match obj.get("eventType") {
                Some(Value::String(s)) => s.clone(),
                _ => return Err(bad(INVALID, "missing string field `eventType`")),
            };
            let payload = obj.get("payload").cloned().unwrap_or(Value::Null);
            event_request(topic, payload)
        }
        "atome-sync" => {
            let payload = obj.get("payload").cloned().unwrap_or(Value::Null);
            let op = payload
                .get("operation")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(INVALID, "missing string field `payload.operation`"))?;
            let name = match op {
                "create" | "created" => "atome:created",
                "update" | "updated" => "atome:updated",
                "alter" | "altered" => "atome:altered",
                "delete" | "deleted" => "atome:deleted",
                other => {
                    return Err(bad(
                        INVALID,
                        format!(
                            "payload.operation: {other:?} is not create, update, alter or delete"
                        ),
                    ))
                }
            };
            atome_request(name, &payload)
        }
        "file-event" | "sync:file-event" => Ok(Request::Publish {
            topic: "sync:file-event".into(),
            payload: legacy_payload(obj),
        }),
        t if LEGACY_TOPICS.contains(&t) => Ok(Request::Publish {
            topic: kind.clone(),
            payload: legacy_payload(obj),
        }),
        other => Err(bad(UNKNOWN, format!("unknown message type {other:?}"))),
    }
}

/// A legacy message's payload: its `payload` field, else (older flat
/// messages) the message without its envelope keys.
fn legacy_payload(mut obj: Map<String, Value>) -> Value {
    if let Some(p) = obj.remove("payload") {
        return p;
    }
    for k in ["type", "timestamp", "requestId"] {
        obj.remove(k);
    }
    Value::Object(obj)
}

fn event_request(topic: String, payload: Value) -> Result<Request, Bad> {
    if topic.starts_with("atome:") {
        return atome_request(&topic, &payload);
    }
    if topic.is_empty() || topic.len() > 256 {
        return Err(bad(INVALID, "eventType: must be 1 to 256 bytes"));
    }
    Ok(Request::Publish { topic, payload })
}

fn atome_request(name: &str, payload: &Value) -> Result<Request, Bad> {
    let invalid = |e: atome::AtomeError| bad(INVALID, e.to_string());
    let w = match name {
        "atome:created" | "atome:updated" => AtomeWrite::Put(atome::atome_of(payload).map_err(invalid)?),
        "atome:altered" => AtomeWrite::Alter {
            id: atome::atome_id_of(payload).map_err(invalid)?,
            alteration: payload
                .get("alteration")
                .cloned()
                .ok_or_else(|| bad(INVALID, "missing object field `payload.alteration`"))?,
        },
        "atome:deleted" => AtomeWrite::Delete {
            id: atome::atome_id_of(payload).map_err(invalid)?,
        },
        other => {
            return Err(bad(
                INVALID,
                format!("eventType {other:?}: atome events are atome:created, atome:updated, atome:altered and atome:deleted"),
            ))
        }
    };
    // Check the mapping now so a bad atome is refused before it is queued.
    w.to_local().map_err(invalid)?;
    Ok(Request::Atome(w))
}

// ---- rendering --------------------------------------------------------------

fn with_rid(mut m: Map<String, Value>, rid: &Value) -> String {
    if !rid.is_null() {
        m.insert("requestId".into(), rid.clone());
    }
    Value::Object(m).to_string()
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

pub fn welcome_frame(client_id: &str, rid: &Value, now: u64) -> String {
    with_rid(
        object(
            json!({"type": "welcome", "clientId": client_id, "server": "outpost",
                      "version": crate::VERSION, "capabilities": CAPABILITIES,
                      "timestamp": atome::iso_ms(now)}),
        ),
        rid,
    )
}

/// `{type:"error", code, message, context:{requestId}}`; `requestId` is
/// null when the request had none (or could not be parsed).
pub fn error_frame(code: &str, message: &str, rid: &Value) -> String {
    json!({"type": "error", "code": code, "message": message, "context": {"requestId": rid}})
        .to_string()
}

/// A committed atome change as an `event`.
pub fn change_frame(d: &AtomeChange) -> String {
    let mut payload = Map::new();
    payload.insert("operation".into(), d.event.operation().into());
    payload.insert("atomeId".into(), d.id.clone().into());
    if let Some(a) = &d.atome {
        payload.insert("atome".into(), a.clone());
    }
    payload.insert("sourceClient".into(), d.actor.clone().into());
    json!({"type": "event", "eventType": d.event.sync_name(), "payload": payload,
           "timestamp": atome::iso_ms(d.at_ms)})
    .to_string()
}

/// An entity's current state (lag recovery past the log's horizon): who
/// wrote it is not known, so the payload has no `sourceClient`.
pub fn snapshot_frame(id: &str, e: &StoredEntity, now: u64) -> String {
    let (event, payload) = if e.state.exists() {
        let a = atome::join_atome(id, &e.state.visible());
        (
            AtomeEvent::Updated,
            json!({"operation": "update", "atomeId": id, "atome": a}),
        )
    } else {
        (
            AtomeEvent::Deleted,
            json!({"operation": "delete", "atomeId": id}),
        )
    };
    json!({"type": "event", "eventType": event.sync_name(), "payload": payload,
           "timestamp": atome::iso_ms(now)})
    .to_string()
}

pub fn event_frame(topic: &str, payload: &Value, now: u64) -> String {
    json!({"type": "event", "eventType": topic, "payload": payload,
           "timestamp": atome::iso_ms(now)})
    .to_string()
}

// ---- the connection -----------------------------------------------------------

/// One `/ws/sync` connection. No engine handle: each write is a
/// [`Call::Write`] and each event a [`Publish`] the driver makes.
pub struct SyncProto {
    metrics: Arc<crate::metrics::Metrics>,
    /// Whether the relay has an upstream hub: `sync_request` then asks
    /// the driver to start a round with it.
    upstream: bool,
    space: String,
    grant: Grant,
    client_id: String,
    /// Writes in flight, by call token: the rid a refusal answers.
    writes: HashMap<u64, Value>,
    next_token: u64,
}

impl SyncProto {
    /// One connection to `space` with the handshake's `grant`, named by
    /// the relay until it registers; with `upstream` (the relay has one),
    /// `sync_request` asks the driver to start a round with it.
    pub fn new(
        grant: Grant,
        space: String,
        metrics: Arc<crate::metrics::Metrics>,
        upstream: bool,
    ) -> SyncProto {
        SyncProto {
            metrics,
            upstream,
            space,
            grant,
            client_id: format!("client_{}", atome::random_id()),
            writes: HashMap::new(),
            next_token: 0,
        }
    }

    fn error(&self, code: &str, message: &str, rid: &Value) -> String {
        self.metrics.errors_sent.fetch_add(1, Relaxed);
        error_frame(code, message, rid)
    }

    /// Who writes: the token's subject, or this client's id when anonymous
    /// (as on the native endpoint). Rendered as `sourceClient`.
    fn actor(&self) -> String {
        if self.grant.sub == "anonymous" {
            self.client_id.clone()
        } else {
            self.grant.sub.clone()
        }
    }

    fn serve(&mut self, req: Request, rid: Value, now_ms: u64) -> Handled {
        match req {
            Request::Register { client_id } => {
                if let Some(id) = client_id {
                    self.client_id = id;
                }
                Handled::reply(welcome_frame(&self.client_id, &rid, now_ms))
            }
            Request::Ping { timestamp } => {
                let ts = if timestamp.is_null() {
                    now_ms.into()
                } else {
                    timestamp
                };
                Handled::reply(with_rid(
                    object(json!({"type": "pong", "timestamp": ts})),
                    &rid,
                ))
            }
            Request::Pong => Handled::default(),
            // With an upstream, a round with the hub now (if it is waiting to
            // redial); without one the relay's store is the source of truth.
            Request::SyncRequest => {
                let mode = if self.upstream { "upstream" } else { "local" };
                Handled {
                    wake_upstream: self.upstream,
                    ..Handled::reply(with_rid(
                        object(json!({"type": "sync_started", "mode": mode, "timestamp": now_ms})),
                        &rid,
                    ))
                }
            }
            Request::Publish { topic, payload } => {
                if !self.grant.can_write(&self.space) {
                    return Handled::reply(self.error(
                        FAILED,
                        "forbidden: no write access to this space",
                        &rid,
                    ));
                }
                Handled {
                    publish: Some(Box::new(Publish {
                        space: self.space.clone(),
                        topic,
                        payload,
                        actor: self.actor(),
                    })),
                    ..Handled::default()
                }
            }
            Request::Atome(w) => {
                if !self.grant.can_write(&self.space) {
                    return Handled::reply(self.error(
                        FAILED,
                        "forbidden: no write access to this space",
                        &rid,
                    ));
                }
                let write = match w.to_local() {
                    Ok(w) => w,
                    Err(e) => return Handled::reply(self.error(INVALID, &e.to_string(), &rid)),
                };
                // Stored, then fanned out to the other clients; only a
                // failure is answered (the seed has no acknowledgement).
                self.next_token += 1;
                self.writes.insert(self.next_token, rid);
                let call = Call::Write {
                    space: self.space.clone(),
                    actor: self.actor(),
                    writes: vec![write],
                    write_ids: Vec::new(),
                };
                Handled::call(self.next_token, call)
            }
        }
    }
}

impl Dialect for SyncProto {
    /// The welcome, then the space: atome entities and ephemeral events
    /// (seed 000 has no mapping for other collections).
    fn open(&mut self, now_ms: u64) -> Handled {
        Handled {
            now: vec![welcome_frame(&self.client_id, &Value::Null, now_ms)],
            follow: vec![Follow {
                key: 0,
                space: self.space.clone(),
                filter: Filter {
                    collections: Some([atome::COLLECTION.to_string()].into()),
                    events: true,
                },
                since: Since::Now,
            }],
            ..Handled::default()
        }
    }

    /// A client never gets its own writes back.
    fn echo(&self) -> bool {
        false
    }

    fn reply(&mut self, token: u64, reply: Reply, _: u64) -> Handled {
        let rid = self.writes.remove(&token).unwrap_or(Value::Null);
        match reply {
            Reply::Written(Err(e)) => {
                let (_, code) = atome::wire(e.class());
                Handled::reply(self.error(code, &e.to_string(), &rid))
            }
            _ => Handled::default(),
        }
    }

    fn on_text(&mut self, text: &str, now_ms: u64) -> Handled {
        match parse(text) {
            (rid, Ok(req)) => self.serve(req, rid, now_ms),
            (rid, Err(b)) => Handled::reply(self.error(b.code, &b.message, &rid)),
        }
    }

    fn refuse(&mut self, why: Refusal, _: u64) -> String {
        self.error(INVALID, &why.message(), &Value::Null)
    }

    fn needs_state(&self, _: u64, c: &Committed) -> bool {
        atome::needs_state(c)
    }

    fn change(
        &mut self,
        _: u64,
        c: &Committed,
        state: Option<&StoredEntity>,
        out: &mut Vec<Utf8Bytes>,
    ) {
        let ch = &c.entry.change;
        if ch.collection != atome::COLLECTION {
            return;
        }
        out.push(c.rendered.get_or(SLOT_SYNC, || {
            change_frame(&atome::describe_committed(c, state))
        }))
    }

    fn snapshot(
        &mut self,
        _: u64,
        collection: &str,
        id: &str,
        e: &StoredEntity,
        now_ms: u64,
        out: &mut Vec<Utf8Bytes>,
    ) {
        if collection == atome::COLLECTION {
            out.push(snapshot_frame(id, e, now_ms).into());
        }
    }

    /// Rendered once for every subscriber (the first one's time).
    fn event(&mut self, _: u64, e: &Event, now_ms: u64) -> Option<Utf8Bytes> {
        Some(
            e.rendered
                .get_or(SLOT_SYNC, || event_frame(&e.topic, &e.payload, now_ms)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(text: &str) -> Result<Request, Bad> {
        parse(text).1
    }

    #[test]
    fn parses_the_required_types() {
        assert_eq!(
            req(
                r#"{"type":"register","clientId":"client_1","clientType":"tauri","version":null,"timestamp":"2024-01-01T00:00:00.000Z"}"#
            ),
            Ok(Request::Register {
                client_id: Some("client_1".into())
            })
        );
        assert_eq!(
            req(r#"{"type":"ping","timestamp":1700000000000}"#),
            Ok(Request::Ping {
                timestamp: json!(1700000000000u64)
            })
        );
        assert_eq!(
            req(r#"{"type":"sync_request","timestamp":1}"#),
            Ok(Request::SyncRequest)
        );
        let (rid, _) = parse(r#"{"type":"sync_request","requestId":"req_1"}"#);
        assert_eq!(rid, json!("req_1"));
    }

    #[test]
    fn atome_events_become_writes() {
        let r = req(
            r#"{"type":"event","eventType":"atome:created","payload":{"atome":{"id":"a","kind":"note"}}}"#,
        );
        assert_eq!(
            r,
            Ok(Request::Atome(AtomeWrite::Put(
                json!({"id":"a","kind":"note"})
            )))
        );
        let r = req(r#"{"type":"event","eventType":"atome:deleted","payload":{"atomeId":"a"}}"#);
        assert_eq!(r, Ok(Request::Atome(AtomeWrite::Delete { id: "a".into() })));
        let r = req(
            r#"{"type":"atome-sync","payload":{"operation":"update","atome":{"id":"a","x":1}}}"#,
        );
        assert_eq!(
            r,
            Ok(Request::Atome(AtomeWrite::Put(json!({"id":"a","x":1}))))
        );
        let r = req(r#"{"type":"atome-sync","payload":{"operation":"delete","id":"a"}}"#);
        assert_eq!(r, Ok(Request::Atome(AtomeWrite::Delete { id: "a".into() })));
        let r = req(r#"{"type":"atome-sync","payload":{"operation":"explode","id":"a"}}"#);
        assert_eq!(r.unwrap_err().code, INVALID);
        let r = req(r#"{"type":"event","eventType":"atome:created","payload":{"kind":"x"}}"#);
        assert_eq!(r.unwrap_err().code, INVALID);
    }

    #[test]
    fn legacy_and_other_events_are_published() {
        let r = req(r#"{"type":"file-event","payload":{"path":"/a"}}"#);
        assert_eq!(
            r,
            Ok(Request::Publish {
                topic: "sync:file-event".into(),
                payload: json!({"path":"/a"})
            })
        );
        let r = req(r#"{"type":"sync:user-created","userId":"u1","timestamp":5}"#);
        assert_eq!(
            r,
            Ok(Request::Publish {
                topic: "sync:user-created".into(),
                payload: json!({"userId":"u1"})
            })
        );
        let r = req(r#"{"type":"event","eventType":"sync:account-deleted","payload":{"id":1}}"#);
        assert_eq!(
            r,
            Ok(Request::Publish {
                topic: "sync:account-deleted".into(),
                payload: json!({"id":1})
            })
        );
    }

    #[test]
    fn errors_have_the_seed_codes() {
        assert_eq!(req("nope").unwrap_err().code, INVALID);
        assert_eq!(req("[1]").unwrap_err().code, INVALID);
        assert_eq!(req(r#"{"x":1}"#).unwrap_err().code, INVALID);
        assert_eq!(req(r#"{"type":"frobnicate"}"#).unwrap_err().code, UNKNOWN);
        assert_eq!(req(r#"{"type":"event"}"#).unwrap_err().code, INVALID);
        assert_eq!(
            req(r#"{"type":"register","clientId":5}"#).unwrap_err().code,
            INVALID
        );
        let f: Value = serde_json::from_str(&error_frame(UNKNOWN, "m", &json!("r1"))).unwrap();
        assert_eq!(
            f,
            json!({"type":"error","code":"unknown-type","message":"m","context":{"requestId":"r1"}})
        );
    }

    #[test]
    fn renders_the_seed_shapes() {
        let w: Value = serde_json::from_str(&welcome_frame("client_1", &Value::Null, 0)).unwrap();
        assert_eq!(w["type"], "welcome");
        assert_eq!(w["clientId"], "client_1");
        assert_eq!(w["server"], "outpost");
        assert_eq!(w["timestamp"], "1970-01-01T00:00:00.000Z");
        assert_eq!(w["capabilities"], json!(CAPABILITIES));
        assert!(w.get("requestId").is_none());
        let d = AtomeChange {
            event: AtomeEvent::Altered,
            id: "a".into(),
            atome: Some(json!({"id": "a", "x": 1})),
            alteration: Some(json!({"x": 1})),
            actor: "client_2".into(),
            at_ms: 0,
        };
        let e: Value = serde_json::from_str(&change_frame(&d)).unwrap();
        assert_eq!(
            e,
            json!({"type": "event", "eventType": "atome:updated",
            "payload": {"operation": "update", "atomeId": "a", "atome": {"id": "a", "x": 1}, "sourceClient": "client_2"},
            "timestamp": "1970-01-01T00:00:00.000Z"})
        );
    }
}
