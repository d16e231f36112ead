//! Seed 003 (EtherPly workspace sync): `GET /v1/sync/{workspace}` over
//! WebSocket and `GET /v1/history/{workspace}` over HTTP, documented in
//! docs/protocol.md.
//!
//! A workspace is an engine space; each key is an entity of collection
//! `kv` (id = key) with one field `value`, so per-key last-writer-wins is the
//! engine's per-field merge. The protocol half (parsing, state → `init`,
//! heads, rendering) is pure functions at the top; [`Kv`] is the protocol
//! the connection driver (`conn::run`) runs, and the history handler below
//! pages the log. `webhook` posts every stored
//! op to `[webhook] url`.

pub mod webhook;

use super::SLOT_KV;
use super::{
    admit, Call, Dialect, Failed, Follow, Handled, Opening, Query, Read, Refusal, Refused, Reply,
    Rows, Since,
};
use crate::auth::Grant;
use crate::dialect::Ctx;
use crate::engine::{off_worker, Committed, Engine, EngineError, ErrorClass, Filter, PAGE_BYTES};
use crate::metrics::Metrics;
use crate::model::{Op, Stamp};
use crate::store::{Cap, LocalWrite, LogEntry, StoredEntity};
use axum::extract::ws::Utf8Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// The collection holding a workspace's keys.
pub const COLLECTION: &str = "kv";
/// The one field of a key entity.
pub const FIELD: &str = "value";

// ---- protocol: pure functions ------------------------------------------------

/// A client message that parsed.
#[derive(Debug, PartialEq)]
pub enum ClientMsg {
    Op {
        key: String,
        value: Value,
        /// The client's edit time, Unix microseconds.
        timestamp_us: Option<u64>,
    },
    /// The SDKs' heartbeat `{"type":"ping"}` (and a `pong`): ignored, as
    /// the real server ignores it; the SDK expects no answer.
    Heartbeat,
}

/// Why a client message was refused; the connection keeps serving.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ProtoError {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("a message is a JSON object with a string field `type`")]
    NotMessage,
    #[error("unknown message type {0:?} (the only client message is \"op\")")]
    UnknownType(String),
    #[error("{0}")]
    Field(&'static str),
    #[error("message of {0} bytes exceeds the {1}-byte limit")]
    TooLarge(usize, usize),
    #[error("send JSON text frames")]
    Binary,
}

impl ProtoError {
    pub fn code(&self) -> u16 {
        match self {
            ProtoError::TooLarge(..) => 413,
            _ => 400,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            ProtoError::Json(_) => "invalid_json",
            ProtoError::NotMessage => "invalid_message",
            ProtoError::UnknownType(_) => "unknown_type",
            ProtoError::Field(_) => "invalid_field",
            ProtoError::TooLarge(..) => "too_large",
            ProtoError::Binary => "binary_unsupported",
        }
    }
}

/// Parse one text frame. Fields the seed does not define are ignored, so
/// clients that send extra envelope fields keep working.
pub fn parse_client(text: &str) -> Result<ClientMsg, ProtoError> {
    let v: Value = serde_json::from_str(text).map_err(|e| ProtoError::Json(e.to_string()))?;
    let Value::Object(mut obj) = v else {
        return Err(ProtoError::NotMessage);
    };
    let kind = match obj.remove("type") {
        Some(Value::String(s)) => s,
        _ => return Err(ProtoError::NotMessage),
    };
    match kind.as_str() {
        "op" => {}
        "ping" | "pong" => return Ok(ClientMsg::Heartbeat),
        _ => return Err(ProtoError::UnknownType(kind)),
    }
    let Some(Value::Object(mut p)) = obj.remove("payload") else {
        return Err(ProtoError::Field("payload: required, an object"));
    };
    let key = match p.remove("key") {
        Some(Value::String(k)) => k,
        _ => return Err(ProtoError::Field("payload.key: required, a string")),
    };
    // `value` is required but may be null: null deletes the key.
    let value = p
        .remove("value")
        .ok_or(ProtoError::Field("payload.value: required"))?;
    let timestamp_us = match p.remove("timestamp") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(n.as_u64().ok_or(ProtoError::Field(
            "payload.timestamp: a non-negative integer (Unix microseconds)",
        ))?),
        Some(_) => {
            return Err(ProtoError::Field(
                "payload.timestamp: a non-negative integer (Unix microseconds)",
            ))
        }
    };
    Ok(ClientMsg::Op {
        key,
        value,
        timestamp_us,
    })
}

/// The engine write for an op: a patch of the key's one field, at the
/// client's edit time in microseconds (kept exactly: see
/// `Hlc::at_client_time`).
pub fn op_write(key: String, value: Value, timestamp_us: Option<u64>) -> LocalWrite {
    LocalWrite {
        collection: COLLECTION.into(),
        id: key,
        op: Op::Patch,
        fields: BTreeMap::from([(FIELD.to_string(), value)]),
        client_us: timestamp_us,
        expect: None,
    }
}

/// A stamp as the seed's integer timestamp (Unix microseconds): exactly the
/// client's `timestamp` when it sent one.
pub fn stamp_us(s: Stamp) -> u64 {
    s.micros()
}

/// A key's current value and the timestamp of the write that set it
/// (null and the entity's newest write when the key has no value).
pub fn key_state(entity: &StoredEntity) -> (Value, Option<u64>) {
    let st = &entity.state;
    match st.fields.get(FIELD) {
        Some(c) if st.exists() && !c.value.is_null() => {
            (c.value.clone(), Some(stamp_us(c.key.stamp)))
        }
        _ => (Value::Null, st.newest().map(|k| stamp_us(k.stamp))),
    }
}

/// The `init` data: every key that has a value.
pub fn data_of(entities: &[(String, StoredEntity)]) -> Map<String, Value> {
    entities
        .iter()
        .filter_map(|(k, e)| match key_state(e) {
            (Value::Null, _) => None,
            (v, _) => Some((k.clone(), v)),
        })
        .collect()
}

/// The workspace's heads: one SHA-256 (hex) over the key entities' merged
/// CRDT states, keys in order. A state holds only change identities and
/// stamps (no local seqs), and relays that applied the same changes hold
/// identical states, so equal states give equal heads on every relay, and
/// any change that alters the state alters the heads. No keys: no heads.
pub fn heads(entities: &[(String, StoredEntity)]) -> Vec<String> {
    let mut h = Heads::default();
    for (key, e) in entities {
        h.add(key, e);
    }
    h.finish()
}

/// [`heads`] computed page by page, for a state too large to hold at once.
#[derive(Default)]
pub struct Heads {
    ctx: Option<ring::digest::Context>,
}

impl Heads {
    pub fn add(&mut self, key: &str, e: &StoredEntity) {
        let ctx = self
            .ctx
            .get_or_insert_with(|| ring::digest::Context::new(&ring::digest::SHA256));
        // Length-prefixed, so ("ab","c") and ("a","bc") differ.
        let bytes = rmp_serde::to_vec(&(key, &e.state)).unwrap_or_default();
        ctx.update(&(bytes.len() as u64).to_le_bytes());
        ctx.update(&bytes);
    }

    pub fn finish(self) -> Vec<String> {
        self.ctx
            .map(|c| vec![hex(c.finish().as_ref())])
            .unwrap_or_default()
    }
}

/// Stored bytes of key state per `init` chunk (and per page of the
/// history): a large workspace is sent as an `init` with the first chunk,
/// then one `op` per further key, which the seed's client folds into its
/// state the same way; no single message holds the whole workspace.
fn chunk_bytes(max_frame_bytes: usize) -> usize {
    (max_frame_bytes / 2).max(16 * 1024)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn render_init(data: Map<String, Value>, heads: Vec<String>) -> String {
    json!({"type": "init", "data": data, "heads": heads}).to_string()
}

pub fn render_op(key: &str, value: &Value, timestamp_us: u64) -> String {
    json!({"type": "op", "payload": {"key": key, "value": value, "timestamp": timestamp_us}})
        .to_string()
}

/// An error frame: `code` is the seed's HTTP-like code, `reason` a stable
/// name, `key` the op's key when the error is about an op.
pub fn error_frame(code: u16, reason: &str, message: &str, key: Option<&str>) -> String {
    let mut m = Map::new();
    m.insert("type".into(), "error".into());
    m.insert("code".into(), code.into());
    m.insert("reason".into(), reason.into());
    m.insert("message".into(), message.into());
    if let Some(k) = key {
        m.insert("key".into(), k.into());
    }
    Value::Object(m).to_string()
}

/// Engine errors in the seed's codes (its column of `dialect::errors`).
pub fn wire(class: ErrorClass) -> (u16, &'static str) {
    super::errors::wire(class).kv
}

pub fn engine_error(e: &EngineError) -> (u16, &'static str) {
    wire(e.class())
}

/// The broadcast for a committed change of a key: the key's value after
/// the merge, with the timestamp of the write that holds it. A write that
/// won renders from itself; one that lost (or a catch-up item, which has no
/// post-merge view) renders from `lookup`, the key's stored state, so every
/// client ends at the relay's value even when an op arrives late.
pub fn render_change(c: &Committed, lookup: impl FnOnce() -> Option<StoredEntity>) -> Utf8Bytes {
    c.rendered.get_or(SLOT_KV, || {
        let ch = &c.entry.change;
        if renders_alone(c) {
            if let Some(v) = ch.fields.get(FIELD) {
                return render_op(&ch.id, v, stamp_us(ch.stamp));
            }
        }
        let (value, ts) = lookup()
            .map(|e| key_state(&e))
            .unwrap_or((Value::Null, None));
        render_op(&ch.id, &value, ts.unwrap_or_else(|| stamp_us(ch.stamp)))
    })
}

/// Whether a change's `op` frame follows from the change alone: a put or
/// patch of the value that won the merge (its `after` holds that value).
/// Otherwise (a delete, a write that lost, a replayed change without
/// `after`) the frame is the key's current state.
fn renders_alone(c: &Committed) -> bool {
    let ch = &c.entry.change;
    match (&c.after, ch.fields.get(FIELD), ch.op) {
        (Some(after), Some(v), Op::Patch | Op::Put) => after.exists() && after.field(FIELD) == v,
        _ => false,
    }
}

/// One history item: the op as written (not the merged result).
pub fn history_item(seq: u64, e: &LogEntry) -> Value {
    let value = match e.change.op {
        Op::Delete => Value::Null,
        _ => e.change.fields.get(FIELD).cloned().unwrap_or(Value::Null),
    };
    json!({"seq": seq, "key": e.change.id, "value": value,
           "timestamp": stamp_us(e.change.stamp), "actor": e.change.actor})
}

// ---- the sync socket: the protocol the driver runs ------------------------

/// The handshake of `GET /v1/sync/{workspace}`: a bad or missing token is
/// 401, a bad workspace name 400, a token without access to it 403.
pub fn accept(
    state: &Ctx,
    workspace: String,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<Opening<Kv>, Refused> {
    let grant = admit(state, headers, query)?;
    crate::engine::validate_name("workspace", &workspace)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("{e}\n")))?;
    if !grant.can_read(&workspace) {
        return Err((
            StatusCode::FORBIDDEN,
            "forbidden: the token gives no access to this workspace\n".into(),
        ));
    }
    let (metrics, max_frame_bytes) = (state.engine.metrics.clone(), state.settings.max_frame_bytes);
    Ok(Opening::new("/v1/sync", move |_| {
        Kv::new(grant, workspace, metrics, max_frame_bytes)
    }))
}

/// One `/v1/sync` connection: `init` (a paged read), then one feed of the
/// workspace's keys from the seq the `init` reflects. Ops are pipelined;
/// a stored op is answered by its broadcast (the writer gets it too), a
/// refused one by an error frame. No engine handle: each op is a
/// [`Call::Write`] the driver makes (in the order the frames were read).
pub struct Kv {
    metrics: Arc<Metrics>,
    grant: Grant,
    space: String,
    max_frame_bytes: usize,
    /// Ops in flight, by call token: their keys, for a refusal.
    ops: HashMap<u64, String>,
    next_token: u64,
}

impl Kv {
    /// One connection to `space` with the handshake's `grant`; `init` is
    /// chunked for frames of `max_frame_bytes`.
    pub fn new(grant: Grant, space: String, metrics: Arc<Metrics>, max_frame_bytes: usize) -> Kv {
        Kv {
            metrics,
            grant,
            space,
            max_frame_bytes,
            ops: HashMap::new(),
            next_token: 0,
        }
    }

    /// The frame limit `init` is chunked for (tests use a small one).
    #[cfg(test)]
    pub fn set_max_frame_bytes(&mut self, n: usize) {
        self.max_frame_bytes = n;
    }

    fn error(&self, code: u16, reason: &str, message: &str, key: Option<&str>) -> String {
        self.metrics.errors_sent.fetch_add(1, Relaxed);
        error_frame(code, reason, message, key)
    }

    fn proto_error(&self, e: &ProtoError) -> String {
        self.error(e.code(), e.reason(), &e.to_string(), None)
    }

    fn op(&mut self, key: String, value: Value, timestamp_us: Option<u64>) -> Handled {
        if !self.grant.can_write(&self.space) {
            let m = "write attempted with read-only scope";
            return Handled::reply(self.error(403, "forbidden", m, Some(&key)));
        }
        let write = op_write(key.clone(), value, timestamp_us);
        self.next_token += 1;
        self.ops.insert(self.next_token, key);
        // Answered in order once durable; the driver keeps serving.
        Handled::call(
            self.next_token,
            Call::Write {
                space: self.space.clone(),
                actor: self.grant.sub.clone(),
                writes: vec![write],
                write_ids: Vec::new(),
            },
        )
    }

    /// A failure while bringing the session up: report it and close.
    fn failed(&self, e: &EngineError) -> Failed {
        let (code, reason) = engine_error(e);
        let frame = error_frame(code, reason, &e.to_string(), None);
        Failed::Close(vec![frame], "cannot read the workspace")
    }
}

impl Dialect for Kv {
    /// `init` from a consistent snapshot, then the feed from the snapshot's
    /// seq: changes committed meanwhile follow as `op`s, then live ones,
    /// with no gap.
    fn open(&mut self, _: u64) -> Handled {
        let cap = Cap::new(usize::MAX, chunk_bytes(self.max_frame_bytes));
        Handled {
            read: Some(Box::new(Init {
                space: self.space.clone(),
                cap,
                seq: 0,
                stage: Stage::First,
            })),
            ..Handled::default()
        }
    }

    fn on_text(&mut self, text: &str, _: u64) -> Handled {
        match parse_client(text) {
            Ok(ClientMsg::Op {
                key,
                value,
                timestamp_us,
            }) => self.op(key, value, timestamp_us),
            Ok(ClientMsg::Heartbeat) => Handled::default(),
            Err(e) => Handled::reply(self.proto_error(&e)),
        }
    }

    fn refuse(&mut self, why: Refusal, _: u64) -> String {
        match why {
            Refusal::Binary => self.proto_error(&ProtoError::Binary),
            Refusal::TooLarge { len, max } => self.proto_error(&ProtoError::TooLarge(len, max)),
            Refusal::TooManyFeeds { .. } => {
                self.error(429, "too_many_subscriptions", &why.message(), None)
            }
        }
    }

    /// A stored op is answered by its broadcast; a refused one by an error
    /// naming its key.
    fn reply(&mut self, token: u64, reply: Reply, _: u64) -> Handled {
        let key = self.ops.remove(&token);
        match reply {
            Reply::Written(Err(e)) => {
                let (code, reason) = engine_error(&e);
                Handled::reply(self.error(code, reason, &e.to_string(), key.as_deref()))
            }
            _ => Handled::default(),
        }
    }

    fn needs_state(&self, _: u64, c: &Committed) -> bool {
        !c.rendered.has(SLOT_KV) && !renders_alone(c)
    }

    fn change(
        &mut self,
        _: u64,
        c: &Committed,
        state: Option<&StoredEntity>,
        out: &mut Vec<Utf8Bytes>,
    ) {
        out.push(render_change(c, || state.cloned()));
    }

    fn snapshot(
        &mut self,
        _: u64,
        _collection: &str,
        id: &str,
        entity: &StoredEntity,
        _: u64,
        out: &mut Vec<Utf8Bytes>,
    ) {
        let (v, ts) = key_state(entity);
        out.push(render_op(id, &v, ts.unwrap_or(0)).into());
    }

    fn feed_failed(&mut self, _: u64, e: &EngineError) -> Failed {
        self.failed(e)
    }

    fn read_failed(&mut self, e: &EngineError) -> Failed {
        self.failed(e)
    }
}

/// The `init` read: the workspace's state in chunks of bounded size (see
/// [`chunk_bytes`]). Later chunks are read later and may be newer than the
/// seq of the first: the changes after that seq are replayed as `op`s
/// anyway, each rendered from the key's current state, so the client ends
/// at the relay's state either way.
struct Init {
    space: String,
    cap: Cap,
    /// The seq the first chunk reflects: the feed starts after it.
    seq: u64,
    stage: Stage,
}

/// A workspace's keys and their entities, in key order.
type Keys = Vec<(String, StoredEntity)>;

struct Hashing {
    heads: Heads,
    after: Option<String>,
    first: Keys,
}

enum Stage {
    First,
    /// Too large for one message: the heads need every key, so the state
    /// is hashed page by page before `init` goes out with `first`.
    Hash(Box<Hashing>),
    /// The keys after the first chunk, as `op`s.
    Rest(String),
    Done,
}

impl Init {
    /// A page of the workspace's keys after `after`.
    fn keys(&self, after: Option<&str>) -> Query {
        Query::Entities {
            space: self.space.clone(),
            collection: Some(COLLECTION.into()),
            after: after.map(|a| (COLLECTION.into(), a.into())),
            cap: self.cap,
        }
    }
}

impl Read for Init {
    fn query(&mut self) -> Option<Query> {
        match &self.stage {
            Stage::First => Some(self.keys(None)),
            Stage::Hash(h) => Some(self.keys(h.after.as_deref())),
            Stage::Rest(after) => Some(self.keys(Some(after))),
            Stage::Done => None,
        }
    }

    fn rows(&mut self, rows: Rows) -> Vec<String> {
        let stage = std::mem::replace(&mut self.stage, Stage::Done);
        let Rows::Entities { items, more, seq } = rows else {
            return Vec::new();
        };
        let page: Keys = items.into_iter().map(|(_, id, e)| (id, e)).collect();
        match stage {
            Stage::First => {
                self.seq = seq;
                if !more {
                    return vec![render_init(data_of(&page), heads(&page))];
                }
                self.stage = Stage::Hash(Box::new(Hashing {
                    heads: Heads::default(),
                    after: None,
                    first: page,
                }));
                Vec::new()
            }
            Stage::Hash(mut h) => {
                for (id, e) in &page {
                    h.heads.add(id, e);
                    h.after = Some(id.clone());
                }
                if more {
                    self.stage = Stage::Hash(h);
                    return Vec::new();
                }
                let Hashing { heads, first, .. } = *h;
                if let Some((id, _)) = first.last() {
                    self.stage = Stage::Rest(id.clone());
                }
                vec![render_init(data_of(&first), heads.finish())]
            }
            Stage::Rest(_) => {
                let mut frames = Vec::new();
                let mut last = None;
                for (id, e) in page {
                    let (v, ts) = key_state(&e);
                    if !v.is_null() {
                        frames.push(render_op(&id, &v, ts.unwrap_or(0)));
                    }
                    last = Some(id);
                }
                if let (true, Some(last)) = (more, last) {
                    self.stage = Stage::Rest(last);
                }
                frames
            }
            Stage::Done => Vec::new(),
        }
    }

    fn then(&mut self) -> Vec<Follow> {
        vec![Follow {
            key: 0,
            space: self.space.clone(),
            filter: Filter {
                collections: Some([COLLECTION.to_string()].into_iter().collect()),
                events: false,
            },
            since: Since::After(self.seq),
        }]
    }
}

// ---- history ----------------------------------------------------------------

/// Default and largest page of `GET /v1/history`.
const HISTORY_DEFAULT: usize = 100;
const HISTORY_MAX: usize = 1000;
/// A history page stops once its ops hold about this many bytes of JSON.
const HISTORY_BYTES: usize = 4 << 20;

fn http_error(status: StatusCode, reason: &str, message: &str) -> Response {
    let body = error_frame(status.as_u16(), reason, message, None);
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// `since` (exclusive seq, default 0) and `limit` (1..=1000, default 100).
pub fn history_params(q: &HashMap<String, String>) -> Result<(u64, usize), String> {
    let since = match q.get("since").map(String::as_str) {
        None | Some("") => 0,
        Some(s) => s
            .parse()
            .map_err(|_| format!("since: {s:?} is not a non-negative integer"))?,
    };
    let limit = match q.get("limit").map(String::as_str) {
        None | Some("") => HISTORY_DEFAULT,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=HISTORY_MAX).contains(&n) => n,
            _ => {
                return Err(format!(
                    "limit: {s:?} is not an integer from 1 to {HISTORY_MAX}"
                ))
            }
        },
    };
    Ok((since, limit))
}

pub async fn history(
    State(state): State<Ctx>,
    Path(workspace): Path<String>,
    axum::extract::Query(query): axum::extract::Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let grant = match admit(&state, &headers, &query) {
        Ok(g) => g,
        Err((status, msg)) => return http_error(status, "unauthorized", msg.trim_end()),
    };
    if let Err(e) = crate::engine::validate_name("workspace", &workspace) {
        return http_error(StatusCode::BAD_REQUEST, "invalid_field", &e.to_string());
    }
    if !grant.can_read(&workspace) {
        return http_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the token gives no read access to this workspace",
        );
    }
    let (since, limit) = match history_params(&query) {
        Ok(p) => p,
        Err(m) => return http_error(StatusCode::BAD_REQUEST, "invalid_field", &m),
    };
    let engine = state.engine.clone();
    let trimmed = since.saturating_add(1) < engine.horizon();
    let space = workspace.clone();
    let read = off_worker(move || history_page(&engine, &space, since, limit)).await;
    let (ops, next, more) = match read {
        Ok(p) => p,
        Err(e) => {
            let (_, reason) = engine_error(&e);
            return http_error(StatusCode::INTERNAL_SERVER_ERROR, reason, &e.to_string());
        }
    };
    Json(json!({"workspace": workspace, "ops": ops, "next": next,
                "more": more, "trimmed": trimmed}))
    .into_response()
}

/// One `/v1/history` page (run on a blocking thread): the ops after
/// `since`, whether more follow, and the seq to continue after.
fn history_page(
    engine: &Engine,
    workspace: &str,
    since: u64,
    limit: usize,
) -> Result<(Vec<Value>, u64, bool), EngineError> {
    // Read up to one op past the limit, to know whether more follow. The
    // page also ends once it holds HISTORY_BYTES of ops (at least one):
    // `more` and `next` then say where to continue.
    let (mut ops, mut after, mut next, mut more) = (Vec::new(), since, since, false);
    let mut bytes = 0usize;
    'scan: loop {
        let page = engine.space_log_page(workspace, after, Cap::new(256, PAGE_BYTES))?;
        let short = !page.more;
        for (seq, entry) in page.items {
            after = seq;
            if entry.change.collection == COLLECTION {
                if ops.len() == limit || bytes >= HISTORY_BYTES {
                    more = true;
                    break 'scan;
                }
                let item = history_item(seq, &entry);
                bytes += crate::engine::json_bytes(&item);
                ops.push(item);
            }
            next = seq;
        }
        if short {
            break;
        }
    }
    Ok((ops, next, more))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One engine error of each kind -> the seed's code and reason.
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
                (500, "storage_failed"),
                (500, "disk_full"),
                (500, "disk_full"),
                (500, "unavailable"),
                (500, "unavailable"),
                (500, "unavailable"),
                (500, "storage_failed"),
                (500, "storage_failed"),
            ]
        );
    }
    use crate::model::{Change, EntityState, NodeId};

    fn stamp(ms: u64, node: u64) -> Stamp {
        Stamp {
            ms,
            counter: 0,
            node: NodeId(node),
        }
    }

    fn change(key: &str, value: Value, ms: u64, node: u64, seq: u64) -> Change {
        Change {
            space: "w".into(),
            collection: COLLECTION.into(),
            id: key.into(),
            op: Op::Patch,
            fields: BTreeMap::from([(FIELD.to_string(), value)]),
            stamp: stamp(ms, node),
            origin: NodeId(node),
            seq,
            actor: "a".into(),
        }
    }

    fn entity(changes: &[Change]) -> StoredEntity {
        let mut state = EntityState::default();
        for c in changes {
            state.apply(c);
        }
        StoredEntity {
            state,
            version: changes.len() as u64,
            seq: 0,
            type_version: 0,
        }
    }

    #[test]
    fn parses_the_seed_op() {
        let m = parse_client(
            r#"{"type":"op","payload":{"key":"foo","value":"bar","timestamp":1700000000123456}}"#,
        )
        .unwrap();
        assert_eq!(
            m,
            ClientMsg::Op {
                key: "foo".into(),
                value: json!("bar"),
                timestamp_us: Some(1_700_000_000_123_456)
            }
        );
        let w = match m {
            ClientMsg::Op {
                key,
                value,
                timestamp_us,
            } => op_write(key, value, timestamp_us),
            ClientMsg::Heartbeat => unreachable!("an op"),
        };
        assert_eq!(w.client_us, Some(1_700_000_000_123_456));
        assert_eq!(w.collection, "kv");
        assert_eq!(w.fields, BTreeMap::from([("value".into(), json!("bar"))]));
        // timestamp optional, value any (null allowed), extra fields ignored
        let m = parse_client(r#"{"type":"op","id":7,"payload":{"key":"k","value":null}}"#).unwrap();
        assert_eq!(
            m,
            ClientMsg::Op {
                key: "k".into(),
                value: Value::Null,
                timestamp_us: None
            }
        );
    }

    #[test]
    fn the_sdk_heartbeat_is_ignored() {
        let ping = r#"{"type":"ping","timestamp":1795607927827}"#;
        assert_eq!(parse_client(ping), Ok(ClientMsg::Heartbeat));
        assert_eq!(parse_client(r#"{"type":"pong"}"#), Ok(ClientMsg::Heartbeat));
    }

    #[test]
    fn refuses_bad_messages_with_codes() {
        let bad = [
            ("nope", "invalid_json"),
            ("[1]", "invalid_message"),
            (r#"{"payload":{}}"#, "invalid_message"),
            (r#"{"type":"sub"}"#, "unknown_type"),
            (r#"{"type":"op"}"#, "invalid_field"),
            (r#"{"type":"op","payload":{"value":1}}"#, "invalid_field"),
            (r#"{"type":"op","payload":{"key":"k"}}"#, "invalid_field"),
            (
                r#"{"type":"op","payload":{"key":"k","value":1,"timestamp":-5}}"#,
                "invalid_field",
            ),
            (
                r#"{"type":"op","payload":{"key":"k","value":1,"timestamp":"x"}}"#,
                "invalid_field",
            ),
            (
                r#"{"type":"op","payload":{"key":"k","value":1,"timestamp":1.5}}"#,
                "invalid_field",
            ),
        ];
        for (text, reason) in bad {
            let e = parse_client(text).unwrap_err();
            assert_eq!((e.code(), e.reason()), (400, reason), "{text}");
        }
        let f: Value =
            serde_json::from_str(&error_frame(403, "forbidden", "no", Some("k"))).unwrap();
        assert_eq!(
            f,
            json!({"type":"error","code":403,"reason":"forbidden","message":"no","key":"k"})
        );
    }

    #[test]
    fn init_data_and_heads() {
        let a = entity(&[
            change("a", json!(1), 10, 1, 1),
            change("a", json!(2), 20, 2, 1),
        ]);
        let b = entity(&[change("b", json!({"x": true}), 10, 1, 2)]);
        let gone = entity(&[
            change("c", json!("x"), 10, 1, 3),
            change("c", Value::Null, 30, 1, 4),
        ]);
        let ents = vec![
            ("a".to_string(), a.clone()),
            ("b".into(), b.clone()),
            ("c".into(), gone),
        ];
        assert_eq!(
            Value::Object(data_of(&ents)),
            json!({"a": 2, "b": {"x": true}})
        );
        assert_eq!(key_state(&a), (json!(2), Some(20_000)));
        let h = heads(&ents);
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].len(), 64);
        // Same changes in another order, other local bookkeeping: same heads.
        let mut a2 = entity(&[
            change("a", json!(2), 20, 2, 1),
            change("a", json!(1), 10, 1, 1),
        ]);
        a2.seq = 99;
        a2.version = 7;
        let ents2 = vec![("a".to_string(), a2), ents[1].clone(), ents[2].clone()];
        assert_eq!(heads(&ents2), h);
        // Any state change changes them; no keys, no heads.
        let a3 = entity(&[change("a", json!(3), 25, 1, 5)]);
        let ents3 = vec![("a".to_string(), a3), ents[1].clone(), ents[2].clone()];
        assert_ne!(heads(&ents3), h);
        assert!(heads(&[]).is_empty());
    }

    #[test]
    fn broadcast_shows_the_value_that_holds() {
        let newer = change("k", json!("new"), 50, 1, 1);
        let late = change("k", json!("old"), 10, 2, 1);
        let state = entity(&[newer.clone(), late.clone()]);
        let committed = |c: &Change| {
            crate::engine::Committed::new(crate::store::Committed {
                seq: 5,
                after: Some(state.view().into()),
                entry: LogEntry {
                    change: c.clone(),
                    at_ms: 0,
                    version: 2,
                    created: false,
                    type_version: 0,
                },
                source: None,
            })
        };
        // The winner renders from itself (no lookup needed).
        let f = render_change(&committed(&newer), || panic!("no lookup for a winner"));
        let v: Value = serde_json::from_str(&f).unwrap();
        assert_eq!(
            v,
            json!({"type":"op","payload":{"key":"k","value":"new","timestamp":50_000}})
        );
        // A late op that lost renders the value that stays.
        let f = render_change(&committed(&late), || Some(state.clone()));
        let v: Value = serde_json::from_str(&f).unwrap();
        assert_eq!(
            v["payload"],
            json!({"key":"k","value":"new","timestamp":50_000})
        );
        let h = history_item(5, &committed(&late).entry);
        assert_eq!(
            h,
            json!({"seq":5,"key":"k","value":"old","timestamp":10_000,"actor":"a"})
        );
    }

    #[test]
    fn history_params_bounds() {
        let q = |s: &[(&str, &str)]| {
            s.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<HashMap<_, _>>()
        };
        assert_eq!(history_params(&q(&[])), Ok((0, 100)));
        assert_eq!(
            history_params(&q(&[("since", "7"), ("limit", "2")])),
            Ok((7, 2))
        );
        assert!(history_params(&q(&[("limit", "0")])).is_err());
        assert!(history_params(&q(&[("limit", "1001")])).is_err());
        assert!(history_params(&q(&[("since", "-1")])).is_err());
    }
}
