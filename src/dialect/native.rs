//! The native protocol on `/ws`: JSON text frames, documented message by
//! message in docs/protocol.md.
//!
//! [`Native`] is the protocol, a state machine with no engine handle; the
//! connection driver (`conn::run`) runs it and makes its engine calls.
//! Pushes are pipelined: each is a [`Call::Write`] answered (in request
//! order) after its durable commit, so a client may keep many
//! unacknowledged pushes in flight up to `server.max_inflight`, past which
//! the relay stops reading. A `get` is a [`Call::Get`], read off the async
//! workers. A subscription is a feed: catch-up, `synced`, then live; a feed
//! dropped for lagging is answered with `resync` (the client resumes).

use super::SLOT_NATIVE;
use super::{
    admit, Call, Dialect, Failed, Follow, Handled, Lag, Opening, Publish, Refusal, Refused, Reply,
    Since,
};
use crate::auth::Grant;
use crate::dialect::Ctx;
use crate::engine::{Committed, EngineError, ErrorClass, Event, Filter};
use crate::metrics::Metrics;
use crate::model::{Op, Stamp};
use crate::store::{LocalWrite, Outcome, OutcomeKind, StoredEntity};
use axum::extract::ws::Utf8Bytes;
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

// ---- wire shapes -----------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Hello {
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    token: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Subscribe {
    space: String,
    #[serde(default)]
    since: u64,
    #[serde(default)]
    collections: Option<Vec<String>>,
    #[serde(default = "yes")]
    events: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpaceOnly {
    space: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Push {
    space: String,
    changes: Vec<WireWrite>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireWrite {
    collection: String,
    id: String,
    #[serde(default = "patch")]
    op: Op,
    #[serde(default)]
    fields: BTreeMap<String, Value>,
    /// The client's edit time, ms since the epoch.
    #[serde(default)]
    ts: Option<u64>,
    /// A client-chosen write id: a replay of a write already held is acked
    /// as a duplicate instead of applied twice.
    #[serde(default)]
    wid: Option<String>,
}

fn patch() -> Op {
    Op::Patch
}

/// A whole `push` message, parsed straight into its typed form (the hot
/// path: no `Value` tree, no second pass). Anything that does not fit it,
/// another type or a malformed push, goes the general way, which gives the
/// same answers and errors as before.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PushFrame {
    #[serde(rename = "type")]
    _kind: PushType,
    #[serde(default)]
    rid: Option<Value>,
    space: String,
    changes: Vec<WireWrite>,
}

#[derive(Deserialize)]
enum PushType {
    #[serde(rename = "push")]
    Push,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishMsg {
    space: String,
    topic: String,
    #[serde(default)]
    payload: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Get {
    space: String,
    collection: String,
    id: String,
}

#[derive(Serialize)]
struct StampOut {
    ms: u64,
    counter: u32,
    node: String,
}

impl From<Stamp> for StampOut {
    fn from(s: Stamp) -> Self {
        StampOut {
            ms: s.ms,
            counter: s.counter,
            node: s.node.to_string(),
        }
    }
}

#[derive(Serialize)]
struct ChangeOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    space: &'a str,
    seq: u64,
    collection: &'a str,
    id: &'a str,
    op: Op,
    fields: &'a BTreeMap<String, Value>,
    stamp: StampOut,
    origin: String,
    origin_seq: u64,
    actor: &'a str,
    version: u64,
}

/// A committed change as a `change` frame (rendered once, shared).
pub fn render_change(c: &Committed) -> Utf8Bytes {
    c.rendered.get_or(SLOT_NATIVE, || {
        let ch = &c.entry.change;
        serde_json::to_string(&ChangeOut {
            kind: "change",
            space: &ch.space,
            seq: c.seq,
            collection: &ch.collection,
            id: &ch.id,
            op: ch.op,
            fields: &ch.fields,
            stamp: ch.stamp.into(),
            origin: ch.origin.to_string(),
            origin_seq: ch.seq,
            actor: &ch.actor,
            version: c.entry.version,
        })
        .unwrap_or_default()
    })
}

fn render_event(e: &Event) -> Utf8Bytes {
    e.rendered.get_or(SLOT_NATIVE, || {
        json!({"type": "event", "space": e.space, "topic": e.topic, "payload": e.payload, "from": e.actor})
            .to_string()
    })
}

// An ack, rendered straight from the outcomes (no `Value` tree). Keys in
// the order `json!` gave them (sorted), so the frames are byte for byte
// what they were.
#[derive(Serialize)]
struct AckOut<'a> {
    results: Vec<OutcomeOut<'a>>,
    rid: &'a Value,
    space: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct OutcomeOut<'a> {
    conflicts: Vec<ConflictOut<'a>>,
    duplicate: bool,
    origin_seq: u64,
    seq: u64,
    stamp: SortedStamp,
    version: u64,
}

#[derive(Serialize)]
struct ConflictOut<'a> {
    attempted: &'a Value,
    current: &'a Value,
    current_stamp: SortedStamp,
    field: &'a str,
}

#[derive(Serialize)]
struct SortedStamp {
    counter: u32,
    ms: u64,
    node: String,
}

impl From<Stamp> for SortedStamp {
    fn from(s: Stamp) -> Self {
        SortedStamp {
            counter: s.counter,
            ms: s.ms,
            node: s.node.to_string(),
        }
    }
}

fn ack_frame(rid: &Value, space: &str, outs: &[Outcome]) -> String {
    let results = outs
        .iter()
        .map(|o| OutcomeOut {
            conflicts: o
                .conflicts
                .iter()
                .map(|c| ConflictOut {
                    attempted: &c.attempted,
                    current: &c.current,
                    current_stamp: c.current_stamp.into(),
                    field: &c.field,
                })
                .collect(),
            duplicate: o.kind == OutcomeKind::Duplicate,
            origin_seq: o.origin_seq,
            seq: o.seq,
            stamp: o.stamp.into(),
            version: o.version,
        })
        .collect();
    serde_json::to_string(&AckOut {
        results,
        rid,
        space,
        kind: "ack",
    })
    .unwrap_or_default()
}

/// An error frame. `reason` is the stable machine-readable code; `code` is
/// the matching HTTP-like status.
pub fn error_frame(code: u16, reason: &str, message: &str, rid: &Value) -> String {
    let mut m = Map::new();
    m.insert("type".into(), "error".into());
    m.insert("code".into(), code.into());
    m.insert("reason".into(), reason.into());
    m.insert("message".into(), message.into());
    if !rid.is_null() {
        m.insert("rid".into(), rid.clone());
    }
    Value::Object(m).to_string()
}

/// Engine errors on `/ws`: code and reason (its column of
/// `dialect::errors`).
pub fn wire(class: ErrorClass) -> (u16, &'static str) {
    super::errors::wire(class).native
}

fn engine_error_frame(e: &EngineError, rid: &Value) -> String {
    let (code, reason) = wire(e.class());
    error_frame(code, reason, &e.to_string(), rid)
}

// ---- the protocol state machine --------------------------------------------

/// One `/ws` connection's protocol state. The driver (`conn::run`) owns the
/// socket, the feeds and the in-flight calls; this turns frames and call
/// results into frames, follows and calls.
pub struct Native {
    metrics: Arc<Metrics>,
    auth: crate::auth::Auth,
    grant: Grant,
    client_id: String,
    /// This relay's node id, for `welcome`.
    node: String,
    max_frame_bytes: usize,
    /// Space -> feed key of its subscription.
    by_space: HashMap<String, u64>,
    /// Feed key -> (space, rid of the subscribe being caught up).
    feeds: HashMap<u64, (String, Value)>,
    next_key: u64,
    /// Calls in flight, by token: what their result answers.
    calls: HashMap<u64, Asked>,
    next_token: u64,
}

/// A request waiting for its call's result.
enum Asked {
    Push {
        rid: Value,
        space: String,
    },
    Get {
        rid: Value,
        space: String,
        collection: String,
        id: String,
    },
}

/// The handshake of `GET /ws`: a bad or missing token is 401.
pub fn accept(
    state: &Ctx,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<Opening<Native>, Refused> {
    let grant = admit(state, headers, query)?;
    let state = state.clone();
    Ok(Opening::new("/ws", move |conn| {
        Native::new(
            grant,
            state.auth.clone(),
            state.engine.metrics.clone(),
            state.engine.node_id().to_string(),
            conn.id,
            state.settings.max_frame_bytes,
        )
    }))
}

impl Native {
    /// A connection's protocol state: `grant` from the handshake, `conn`
    /// the connection id (the default client id is `c{conn}`).
    pub fn new(
        grant: Grant,
        auth: crate::auth::Auth,
        metrics: Arc<Metrics>,
        node: String,
        conn: u64,
        max_frame_bytes: usize,
    ) -> Native {
        Native {
            metrics,
            auth,
            grant,
            client_id: format!("c{conn}"),
            node,
            max_frame_bytes,
            by_space: HashMap::new(),
            feeds: HashMap::new(),
            next_key: 0,
            calls: HashMap::new(),
            next_token: 0,
        }
    }

    /// Make `call`, answering `asked` when its result comes back.
    fn call(&mut self, call: Call, asked: Asked) -> Handled {
        self.next_token += 1;
        self.calls.insert(self.next_token, asked);
        Handled::call(self.next_token, call)
    }

    fn error(&self, code: u16, reason: &str, msg: &str, rid: &Value) -> Handled {
        self.metrics.errors_sent.fetch_add(1, Relaxed);
        Handled::reply(error_frame(code, reason, msg, rid))
    }

    /// Parse a message body, answering 422 with serde's message (which
    /// names the field) when it does not fit.
    fn parse<T: serde::de::DeserializeOwned>(
        &self,
        body: Value,
        rid: &Value,
    ) -> Result<T, Handled> {
        serde_json::from_value(body)
            .map_err(|e| self.error(422, "invalid_field", &e.to_string(), rid))
    }

    fn actor(&self) -> String {
        if self.grant.sub == "anonymous" {
            self.client_id.clone()
        } else {
            self.grant.sub.clone()
        }
    }

    fn handle(&mut self, text: &str, now_ms: u64) -> Handled {
        // A struct also deserializes from an array: only an object may take
        // the typed path (the general one refuses anything else).
        let object = text.trim_start().starts_with('{');
        if let Some(p) = object
            .then(|| serde_json::from_str::<PushFrame>(text).ok())
            .flatten()
        {
            let rid = p.rid.unwrap_or(Value::Null);
            let push = Push {
                space: p.space,
                changes: p.changes,
            };
            return self
                .push_parsed(push, &rid)
                .unwrap_or_else(|refused| refused);
        }
        let v: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                let m = format!("not JSON: {e}");
                return self.error(400, "invalid_json", &m, &Value::Null);
            }
        };
        let Value::Object(mut obj) = v else {
            let m = "a message is a JSON object";
            return self.error(400, "invalid_message", m, &Value::Null);
        };
        let rid = obj.remove("rid").unwrap_or(Value::Null);
        let kind = match obj.remove("type") {
            Some(Value::String(s)) => s,
            _ => return self.error(400, "invalid_message", "missing string field `type`", &rid),
        };
        let body = Value::Object(obj);
        let r = match kind.as_str() {
            "hello" => self.hello(body, &rid, now_ms),
            "subscribe" => self.subscribe(body, &rid),
            "unsubscribe" => self.unsubscribe(body, &rid),
            "push" => self.push(body, &rid),
            "publish" => self.publish(body, &rid),
            "get" => self.get(body, &rid),
            "ping" => {
                let mut m = Map::new();
                m.insert("type".into(), "pong".into());
                if !rid.is_null() {
                    m.insert("rid".into(), rid.clone());
                }
                if let Some(ts) = body.get("ts") {
                    m.insert("ts".into(), ts.clone());
                }
                m.insert("server_ms".into(), now_ms.into());
                Ok(Handled::reply(Value::Object(m).to_string()))
            }
            other => {
                let m = format!("unknown message type {other:?}");
                Err(self.error(400, "unknown_type", &m, &rid))
            }
        };
        r.unwrap_or_else(|refused| refused)
    }

    fn hello(&mut self, body: Value, rid: &Value, now_ms: u64) -> Result<Handled, Handled> {
        let h: Hello = self.parse(body, rid)?;
        if let Some(token) = h.token {
            match self.auth.verify(&token, now_ms / 1000) {
                Ok(g) => self.grant = g,
                Err(e) => {
                    self.metrics.auth_failures.fetch_add(1, Relaxed);
                    return Err(self.error(401, "unauthorized", &e.to_string(), rid));
                }
            }
        }
        if let Some(id) = h.client_id.filter(|s| !s.is_empty() && s.len() <= 256) {
            self.client_id = id;
        }
        let msg = json!({"type": "ready", "rid": rid, "client_id": self.client_id,
                         "sub": self.grant.sub, "scopes": self.grant.scope_names()});
        Ok(Handled::reply(msg.to_string()))
    }

    fn subscribe(&mut self, body: Value, rid: &Value) -> Result<Handled, Handled> {
        let s: Subscribe = self.parse(body, rid)?;
        if !self.grant.can_read(&s.space) {
            return Err(self.error(403, "forbidden", "no read access to this space", rid));
        }
        // A second subscribe to a space replaces the first (same feed key).
        let key = match self.by_space.get(&s.space) {
            Some(k) => *k,
            None => {
                self.next_key += 1;
                self.by_space.insert(s.space.clone(), self.next_key);
                self.next_key
            }
        };
        self.feeds.insert(key, (s.space.clone(), rid.clone()));
        Ok(Handled {
            follow: vec![Follow {
                key,
                space: s.space,
                filter: Filter {
                    collections: s.collections.map(|c| c.into_iter().collect()),
                    events: s.events,
                },
                since: Since::After(s.since),
            }],
            ..Handled::default()
        })
    }

    fn unsubscribe(&mut self, body: Value, rid: &Value) -> Result<Handled, Handled> {
        let s: SpaceOnly = self.parse(body, rid)?;
        let key = self.by_space.remove(&s.space);
        if let Some(k) = key {
            self.feeds.remove(&k);
        }
        Ok(Handled {
            now: vec![json!({"type": "unsubscribed", "rid": rid, "space": s.space}).to_string()],
            unfollow: key.into_iter().collect(),
            ..Handled::default()
        })
    }

    fn push(&mut self, body: Value, rid: &Value) -> Result<Handled, Handled> {
        let p: Push = self.parse(body, rid)?;
        self.push_parsed(p, rid)
    }

    fn push_parsed(&mut self, p: Push, rid: &Value) -> Result<Handled, Handled> {
        if !self.grant.can_write(&p.space) {
            return Err(self.error(403, "forbidden", "no write access to this space", rid));
        }
        let write_ids: Vec<Option<String>> = p.changes.iter().map(|w| w.wid.clone()).collect();
        let writes: Vec<LocalWrite> = p
            .changes
            .into_iter()
            .map(|w| LocalWrite {
                collection: w.collection,
                id: w.id,
                op: w.op,
                fields: w.fields,
                client_us: w.ts.map(|ms| ms.saturating_mul(1000)),
                expect: None,
            })
            .collect();
        let asked = Asked::Push {
            rid: rid.clone(),
            space: p.space.clone(),
        };
        let call = Call::Write {
            space: p.space,
            actor: self.actor(),
            writes,
            write_ids,
        };
        // Answered in request order once durable; the driver keeps serving.
        Ok(self.call(call, asked))
    }

    fn publish(&mut self, body: Value, rid: &Value) -> Result<Handled, Handled> {
        let p: PublishMsg = self.parse(body, rid)?;
        if !self.grant.can_write(&p.space) {
            return Err(self.error(403, "forbidden", "no write access to this space", rid));
        }
        if p.topic.is_empty() || p.topic.len() > 256 {
            return Err(self.error(422, "invalid_field", "topic: 1 to 256 bytes", rid));
        }
        let now = if rid.is_null() {
            Vec::new()
        } else {
            let m = json!({"type": "published", "rid": rid, "space": p.space, "topic": p.topic});
            vec![m.to_string()]
        };
        Ok(Handled {
            now,
            publish: Some(Box::new(Publish {
                space: p.space,
                topic: p.topic,
                payload: p.payload,
                actor: self.actor(),
            })),
            ..Handled::default()
        })
    }

    fn get(&mut self, body: Value, rid: &Value) -> Result<Handled, Handled> {
        let g: Get = self.parse(body, rid)?;
        if !self.grant.can_read(&g.space) {
            return Err(self.error(403, "forbidden", "no read access to this space", rid));
        }
        let call = Call::Get {
            space: g.space.clone(),
            keys: vec![(g.collection.clone(), g.id.clone())],
        };
        let asked = Asked::Get {
            rid: rid.clone(),
            space: g.space,
            collection: g.collection,
            id: g.id,
        };
        Ok(self.call(call, asked))
    }

    /// The `ack` of a push once committed, or its error.
    fn acked(&self, rid: Value, space: String, r: Result<Vec<Outcome>, EngineError>) -> String {
        match r {
            Ok(outs) => {
                self.metrics.acks.fetch_add(1, Relaxed);
                ack_frame(&rid, &space, &outs)
            }
            Err(e) => {
                self.metrics.errors_sent.fetch_add(1, Relaxed);
                engine_error_frame(&e, &rid)
            }
        }
    }

    fn space_of(&self, key: u64) -> &str {
        self.feeds.get(&key).map(|(s, _)| s.as_str()).unwrap_or("")
    }

    /// The feed is gone (refused, failed, dropped): forget it.
    fn forget(&mut self, key: u64) -> Option<(String, Value)> {
        let (space, rid) = self.feeds.remove(&key)?;
        if self.by_space.get(&space) == Some(&key) {
            self.by_space.remove(&space);
        }
        Some((space, rid))
    }
}

impl Dialect for Native {
    fn open(&mut self, _: u64) -> Handled {
        let welcome = json!({
            "type": "welcome",
            "node": self.node,
            "version": crate::VERSION,
            "protocol": 1,
            "capabilities": ["push", "subscribe", "since", "collections", "events", "conflicts", "get", "wid"],
            "max_frame_bytes": self.max_frame_bytes,
            "auth": self.grant.scope_names(),
        });
        Handled::reply(welcome.to_string())
    }

    fn on_text(&mut self, text: &str, now_ms: u64) -> Handled {
        self.handle(text, now_ms)
    }

    fn refuse(&mut self, why: Refusal, _: u64) -> String {
        self.metrics.errors_sent.fetch_add(1, Relaxed);
        let (code, reason) = match why {
            Refusal::Binary => (400, "binary_unsupported"),
            Refusal::TooLarge { .. } => (413, "too_large"),
            Refusal::TooManyFeeds { .. } => (429, "too_many_subscriptions"),
        };
        let message = match why {
            Refusal::Binary => "send JSON text frames".to_string(),
            _ => why.message(),
        };
        error_frame(code, reason, &message, &Value::Null)
    }

    fn refuse_follow(&mut self, key: u64, why: Refusal, _: u64) -> String {
        let rid = self.forget(key).map(|(_, rid)| rid).unwrap_or(Value::Null);
        self.metrics.errors_sent.fetch_add(1, Relaxed);
        error_frame(429, "too_many_subscriptions", &why.message(), &rid)
    }

    fn reply(&mut self, token: u64, reply: Reply, _: u64) -> Handled {
        let frame = match (self.calls.remove(&token), reply) {
            (Some(Asked::Push { rid, space }), Reply::Written(r)) => self.acked(rid, space, r),
            (
                Some(Asked::Get {
                    rid,
                    space,
                    collection,
                    id,
                }),
                Reply::Got(r),
            ) => match r.map(|mut got| got.pop().flatten()) {
                Ok(e) => {
                    let (fields, exists, version, seq) = match e {
                        Some(e) => (
                            Value::Object(e.state.visible()),
                            e.state.exists(),
                            e.version,
                            e.seq,
                        ),
                        None => (Value::Null, false, 0, 0),
                    };
                    json!({"type": "entity", "rid": rid, "space": space, "collection": collection,
                               "id": id, "fields": fields, "deleted": !exists, "version": version, "seq": seq})
                        .to_string()
                }
                Err(e) => {
                    self.metrics.errors_sent.fetch_add(1, Relaxed);
                    engine_error_frame(&e, &rid)
                }
            },
            // A result nobody asked for (or of another kind): nothing to say.
            _ => return Handled::default(),
        };
        Handled::reply(frame)
    }

    fn change(
        &mut self,
        _: u64,
        c: &Committed,
        _: Option<&StoredEntity>,
        out: &mut Vec<Utf8Bytes>,
    ) {
        out.push(render_change(c));
    }

    fn snapshot(
        &mut self,
        key: u64,
        collection: &str,
        id: &str,
        entity: &StoredEntity,
        _: u64,
        out: &mut Vec<Utf8Bytes>,
    ) {
        let f = json!({
            "type": "entity", "space": self.space_of(key), "collection": collection, "id": id,
            "fields": entity.state.visible(), "deleted": !entity.state.exists(),
            "version": entity.version, "seq": entity.seq});
        out.push(f.to_string().into());
    }

    fn event(&mut self, _: u64, e: &Event, _: u64) -> Option<Utf8Bytes> {
        Some(render_event(e))
    }

    fn live(&mut self, key: u64, seq: u64) -> Vec<String> {
        let Some((space, rid)) = self.feeds.get_mut(&key) else {
            return Vec::new();
        };
        let rid = std::mem::take(rid);
        vec![json!({"type": "synced", "rid": rid, "space": space, "seq": seq}).to_string()]
    }

    /// The protocol's own way: tell the client where to resume.
    fn lagged(&mut self, key: u64, last: u64) -> Lag {
        let Some((space, _)) = self.forget(key) else {
            return Lag::Drop(Vec::new());
        };
        let m = json!({"type": "resync", "space": space, "since": last, "reason": "queue_full"});
        Lag::Drop(vec![m.to_string()])
    }

    fn feed_failed(&mut self, key: u64, e: &EngineError) -> Failed {
        let rid = self.forget(key).map(|(_, rid)| rid).unwrap_or(Value::Null);
        Failed::Answer(vec![engine_error_frame(e, &rid)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Conflict, NodeId};

    // The acks as `json!` rendered them before `ack_frame`: the reference.
    fn conflict_json(c: &Conflict) -> Value {
        json!({"field": c.field, "attempted": c.attempted, "current": c.current,
               "current_stamp": StampOut::from(c.current_stamp)})
    }

    fn outcome_json(o: &Outcome) -> Value {
        json!({
            "seq": o.seq,
            "origin_seq": o.origin_seq,
            "version": o.version,
            "stamp": StampOut::from(o.stamp),
            "duplicate": o.kind == OutcomeKind::Duplicate,
            "conflicts": o.conflicts.iter().map(conflict_json).collect::<Vec<_>>(),
        })
    }

    #[test]
    fn acks_render_as_the_json_macro_did() {
        let stamp = |ms| Stamp {
            ms,
            counter: 3,
            node: NodeId(0xabc),
        };
        let outs = vec![
            Outcome {
                kind: OutcomeKind::Applied,
                seq: 7,
                origin: NodeId(1),
                origin_seq: 9,
                stamp: stamp(5),
                version: 2,
                conflicts: vec![Conflict {
                    field: "t\"x".into(),
                    attempted: json!({"a": [1, null]}),
                    current: json!("é"),
                    current_stamp: stamp(6),
                }],
                created: true,
                type_version: 4,
            },
            Outcome {
                kind: OutcomeKind::Duplicate,
                seq: 0,
                origin: NodeId(1),
                origin_seq: 10,
                stamp: stamp(8),
                version: 1,
                conflicts: vec![],
                created: false,
                type_version: 0,
            },
        ];
        for rid in [json!(12), json!("r-1"), Value::Null] {
            let old = json!({"type": "ack", "rid": rid, "space": "s p",
                "results": outs.iter().map(outcome_json).collect::<Vec<_>>()})
            .to_string();
            assert_eq!(ack_frame(&rid, "s p", &outs), old);
        }
    }

    /// One engine error of each kind -> its code and reason on `/ws`.
    #[test]
    fn engine_errors_map_through_one_table() {
        let got: Vec<(u16, &str)> = EngineError::samples()
            .iter()
            .map(|e| wire(e.class()))
            .collect();
        assert_eq!(
            got,
            [
                (400, "invalid_field"),
                (400, "invalid_field"),
                (409, "precondition_failed"),
                (507, "disk_full"),
                (507, "disk_full"),
                (503, "unavailable"),
                (503, "unavailable"),
                (503, "unavailable"),
                (500, "storage_failed"),
                (500, "storage_failed"),
            ]
        );
        let e = EngineError::Store(crate::store::StoreError::NoSpace);
        let f: Value = serde_json::from_str(&engine_error_frame(&e, &json!(7))).unwrap();
        assert_eq!(
            (&f["type"], &f["code"], &f["reason"], &f["rid"]),
            (&json!("error"), &json!(507), &json!("disk_full"), &json!(7))
        );
        assert_eq!(f["message"], e.to_string());
    }
}
