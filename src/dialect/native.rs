//! The native protocol on `/ws`: JSON text frames, documented message by
//! message in docs/protocol.md.
//!
//! One actor per connection: a select loop over the socket, the bounded
//! fan-out queue, the lag signal, pending acks and shutdown. Pushes are
//! pipelined: each becomes a future answered (in request order) after its
//! durable commit, so a client may keep many unacknowledged pushes in flight
//! up to `server.max_inflight`, past which the relay stops reading.

use super::{admit, limit, now_s, ConnCtx, SLOT_NATIVE};
use crate::auth::Grant;
use crate::dialect::Ctx;
use crate::engine::Committed;
use crate::engine::{CatchUp, Delivery, EngineError, Event, Filter};
use crate::model::{Conflict, Op, Stamp};
use crate::store::{LocalWrite, Outcome, OutcomeKind};
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures_util::stream::FuturesOrdered;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;

pub async fn upgrade(
    State(state): State<Ctx>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let grant = match admit(&state, &headers, &query) {
        Ok(g) => g,
        Err(refusal) => return refusal.into_response(),
    };
    limit(ws, &state).on_upgrade(move |socket| run(socket, state, grant))
}

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Publish {
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

fn engine_error_frame(e: &EngineError, rid: &Value) -> String {
    let reason = match e.code() {
        400 => "invalid_field",
        507 => "disk_full",
        503 => "unavailable",
        _ => "storage_failed",
    };
    error_frame(e.code(), reason, &e.to_string(), rid)
}

// ---- the connection actor -------------------------------------------------

/// Queued deliveries written per flush (bounds the time the actor spends
/// away from its other duties, e.g. reading pushes, and the write buffer).
const DELIVERY_BATCH: usize = 64;

type AckFuture = Pin<Box<dyn Future<Output = String> + Send + Sync>>;

struct SubState {
    space: String,
    last_seq: u64,
}

struct Conn {
    ctx: ConnCtx,
    grant: Grant,
    client_id: String,
    subs: HashMap<u64, SubState>,
    by_space: HashMap<String, u64>,
    pending: FuturesOrdered<AckFuture>,
    /// Pushes reach the writer in the order their frames were read.
    order: crate::engine::WriteOrder,
}

/// Why a read of the socket ends the loop.
enum Next {
    Continue,
    Close,
}

use crate::dialect::send_text as send;

async fn run(mut socket: WebSocket, state: Ctx, grant: Grant) {
    let ctx = ConnCtx::new(state.clone(), "/ws");
    let mut shutdown = state.shutdown.clone();
    let mut conn = Conn {
        client_id: format!("c{}", ctx.id),
        ctx,
        grant,
        subs: HashMap::new(),
        by_space: HashMap::new(),
        pending: FuturesOrdered::new(),
        order: Default::default(),
    };
    let welcome = json!({
        "type": "welcome",
        "node": state.engine.node_id().to_string(),
        "version": crate::VERSION,
        "protocol": 1,
        "capabilities": ["push", "subscribe", "since", "collections", "events", "conflicts", "get", "wid"],
        "max_frame_bytes": state.settings.max_frame_bytes,
        "auth": conn.grant.scope_names(),
    });
    if send(&mut socket, welcome.to_string()).await.is_err() {
        return;
    }
    let max_inflight = state.settings.max_inflight;
    let mut keepalive = crate::dialect::keepalive::Keepalive::new(&state);
    let mut closing = false;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed(), if !closing => {
                closing = true;
                break;
            }
            Some(frame) = conn.pending.next(), if !conn.pending.is_empty() => {
                if send(&mut socket, frame).await.is_err() { break; }
            }
            _ = conn.ctx.signal.notify.notified() => {
                if conn.resync(&mut socket).await.is_err() { break; }
            }
            Some(d) = conn.ctx.rx.recv() => {
                if conn.deliver_queued(&mut socket, d).await.is_err() { break; }
            }
            msg = keepalive.recv(&mut socket), if conn.pending.len() < max_inflight => {
                let Some(msg) = msg else { break };
                match conn.handle(&mut socket, msg).await {
                    Ok(Next::Continue) => {}
                    Ok(Next::Close) | Err(_) => break,
                }
            }
        }
    }
    if closing {
        // Finish in-flight commits so every push gets its ack, then say why.
        while let Some(frame) = conn.pending.next().await {
            if send(&mut socket, frame).await.is_err() {
                return;
            }
        }
        crate::dialect::close_going_away(&mut socket).await;
    }
}

impl Conn {
    fn engine(&self) -> &crate::engine::Engine {
        &self.ctx.state.engine
    }

    async fn error(
        &self,
        socket: &mut WebSocket,
        code: u16,
        reason: &str,
        msg: &str,
        rid: &Value,
    ) -> Result<(), EngineError> {
        self.engine().metrics.errors_sent.fetch_add(1, Relaxed);
        send(socket, error_frame(code, reason, msg, rid)).await
    }

    /// Send `first` and whatever else is already queued (up to
    /// [`DELIVERY_BATCH`]) with one flush: under fan-out load a socket write
    /// per frame per subscriber was the dominant cost (see
    /// docs/performance.md); frames written together go out in one syscall.
    async fn deliver_queued(
        &mut self,
        socket: &mut WebSocket,
        first: Delivery,
    ) -> Result<(), EngineError> {
        let mut fed = 0usize;
        let mut next = Some(first);
        while let Some(d) = next.take() {
            if let Some(frame) = self.frame_for(d) {
                socket
                    .feed(Message::Text(frame))
                    .await
                    .map_err(|_| EngineError::ClientGone)?;
                fed += 1;
            }
            if fed < DELIVERY_BATCH {
                next = self.ctx.rx.try_recv();
            }
        }
        if fed > 0 {
            socket.flush().await.map_err(|_| EngineError::ClientGone)?;
        }
        Ok(())
    }

    /// The frame for a queued delivery, or None if its subscription is
    /// gone or the change was already sent by the catch-up.
    fn frame_for(&mut self, d: Delivery) -> Option<Utf8Bytes> {
        match d {
            Delivery::Change { sub, item } => {
                let s = self.subs.get_mut(&sub)?;
                if item.seq <= s.last_seq {
                    return None;
                }
                s.last_seq = item.seq;
                Some(render_change(&item))
            }
            Delivery::Event { sub, event } => {
                self.subs.contains_key(&sub).then(|| render_event(&event))
            }
        }
    }

    /// Subscriptions dropped by fan-out for lagging: tell the client where to
    /// resume. Items of the dropped subscription still queued are ignored.
    async fn resync(&mut self, socket: &mut WebSocket) -> Result<(), EngineError> {
        for id in self.ctx.signal.take_lagged() {
            if let Some(s) = self.subs.remove(&id) {
                self.by_space.remove(&s.space);
                self.engine().metrics.resyncs.fetch_add(1, Relaxed);
                let msg = json!({"type": "resync", "space": s.space, "since": s.last_seq, "reason": "queue_full"});
                send(socket, msg.to_string()).await?;
            }
        }
        Ok(())
    }

    async fn handle(&mut self, socket: &mut WebSocket, msg: Message) -> Result<Next, EngineError> {
        let text = match msg {
            Message::Text(t) => t,
            Message::Binary(_) => {
                self.error(
                    socket,
                    400,
                    "binary_unsupported",
                    "send JSON text frames",
                    &Value::Null,
                )
                .await?;
                return Ok(Next::Continue);
            }
            Message::Close(_) => return Ok(Next::Close),
            Message::Ping(_) | Message::Pong(_) => return Ok(Next::Continue),
        };
        let max = self.ctx.state.settings.max_frame_bytes;
        if text.len() > max {
            let m = format!(
                "message of {} bytes exceeds the {max}-byte limit",
                text.len()
            );
            self.error(socket, 413, "too_large", &m, &Value::Null)
                .await?;
            return Ok(Next::Continue);
        }
        let v: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                self.error(
                    socket,
                    400,
                    "invalid_json",
                    &format!("not JSON: {e}"),
                    &Value::Null,
                )
                .await?;
                return Ok(Next::Continue);
            }
        };
        let Value::Object(mut obj) = v else {
            self.error(
                socket,
                400,
                "invalid_message",
                "a message is a JSON object",
                &Value::Null,
            )
            .await?;
            return Ok(Next::Continue);
        };
        let rid = obj.remove("rid").unwrap_or(Value::Null);
        let kind = match obj.remove("type") {
            Some(Value::String(s)) => s,
            _ => {
                self.error(
                    socket,
                    400,
                    "invalid_message",
                    "missing string field `type`",
                    &rid,
                )
                .await?;
                return Ok(Next::Continue);
            }
        };
        let body = Value::Object(obj);
        let r = match kind.as_str() {
            "hello" => self.hello(socket, body, &rid).await,
            "subscribe" => self.subscribe(socket, body, &rid).await,
            "unsubscribe" => self.unsubscribe(socket, body, &rid).await,
            "push" => self.push(socket, body, &rid).await,
            "publish" => self.publish(socket, body, &rid).await,
            "get" => self.get(socket, body, &rid).await,
            "ping" => {
                let mut m = Map::new();
                m.insert("type".into(), "pong".into());
                if !rid.is_null() {
                    m.insert("rid".into(), rid.clone());
                }
                if let Some(ts) = body.get("ts") {
                    m.insert("ts".into(), ts.clone());
                }
                m.insert("server_ms".into(), crate::engine::now_ms().into());
                send(socket, Value::Object(m).to_string()).await
            }
            other => {
                let m = format!("unknown message type {other:?}");
                self.error(socket, 400, "unknown_type", &m, &rid).await
            }
        };
        r.map(|()| Next::Continue)
    }

    /// Parse a message body, answering 422 with serde's message (which names
    /// the field) when it does not fit.
    async fn parse<T: serde::de::DeserializeOwned>(
        &self,
        socket: &mut WebSocket,
        body: Value,
        rid: &Value,
    ) -> Result<Option<T>, EngineError> {
        match serde_json::from_value(body) {
            Ok(t) => Ok(Some(t)),
            Err(e) => {
                self.error(socket, 422, "invalid_field", &e.to_string(), rid)
                    .await?;
                Ok(None)
            }
        }
    }

    async fn hello(
        &mut self,
        socket: &mut WebSocket,
        body: Value,
        rid: &Value,
    ) -> Result<(), EngineError> {
        let Some(h) = self.parse::<Hello>(socket, body, rid).await? else {
            return Ok(());
        };
        if let Some(token) = h.token {
            match self.ctx.state.auth.verify(&token, now_s()) {
                Ok(g) => self.grant = g,
                Err(e) => {
                    self.engine().metrics.auth_failures.fetch_add(1, Relaxed);
                    return self
                        .error(socket, 401, "unauthorized", &e.to_string(), rid)
                        .await;
                }
            }
        }
        if let Some(id) = h.client_id.filter(|s| !s.is_empty() && s.len() <= 256) {
            self.client_id = id;
        }
        let msg = json!({"type": "ready", "rid": rid, "client_id": self.client_id,
                         "sub": self.grant.sub, "scopes": self.grant.scope_names()});
        send(socket, msg.to_string()).await
    }

    fn actor(&self) -> String {
        if self.grant.sub == "anonymous" {
            self.client_id.clone()
        } else {
            self.grant.sub.clone()
        }
    }

    async fn subscribe(
        &mut self,
        socket: &mut WebSocket,
        body: Value,
        rid: &Value,
    ) -> Result<(), EngineError> {
        let Some(s) = self.parse::<Subscribe>(socket, body, rid).await? else {
            return Ok(());
        };
        if !self.grant.can_read(&s.space) {
            return self
                .error(
                    socket,
                    403,
                    "forbidden",
                    "no read access to this space",
                    rid,
                )
                .await;
        }
        if let Some(old) = self.by_space.remove(&s.space) {
            self.subs.remove(&old);
            self.engine().unsubscribe(&s.space, old);
        }
        let filter = Filter {
            collections: s.collections.map(|c| c.into_iter().collect()),
            events: s.events,
        };
        let engine = self.ctx.state.engine.clone();
        let mut sub =
            match engine.start_subscription(&s.space, s.since, filter, self.ctx.link.clone()) {
                Ok(sub) => sub,
                Err(e) => return send(socket, engine_error_frame(&e, rid)).await,
            };
        loop {
            let page = match engine.next_page(&mut sub) {
                Ok(Some(page)) => page,
                Ok(None) => break,
                Err(e) => {
                    if let Some(id) = sub.id {
                        engine.unsubscribe(&s.space, id);
                    }
                    return send(socket, engine_error_frame(&e, rid)).await;
                }
            };
            for item in page {
                let frame: Utf8Bytes = match item {
                    CatchUp::Change(c) => render_change(&c),
                    CatchUp::Snapshot {
                        collection,
                        id,
                        entity,
                    } => json!({
                        "type": "entity", "space": s.space, "collection": collection, "id": id,
                        "fields": entity.state.visible(), "deleted": !entity.state.exists(),
                        "version": entity.version, "seq": entity.seq})
                    .to_string()
                    .into(),
                };
                send(socket, frame).await?;
            }
        }
        let (Some(id), reached) = (sub.id, sub.reached()) else {
            return Err(EngineError::ClientGone);
        };
        self.subs.insert(
            id,
            SubState {
                space: s.space.clone(),
                last_seq: reached,
            },
        );
        self.by_space.insert(s.space.clone(), id);
        let m = json!({"type": "synced", "rid": rid, "space": s.space, "seq": reached});
        send(socket, m.to_string()).await
    }

    async fn unsubscribe(
        &mut self,
        socket: &mut WebSocket,
        body: Value,
        rid: &Value,
    ) -> Result<(), EngineError> {
        let Some(s) = self.parse::<SpaceOnly>(socket, body, rid).await? else {
            return Ok(());
        };
        if let Some(id) = self.by_space.remove(&s.space) {
            self.subs.remove(&id);
            self.engine().unsubscribe(&s.space, id);
        }
        send(
            socket,
            json!({"type": "unsubscribed", "rid": rid, "space": s.space}).to_string(),
        )
        .await
    }

    async fn push(
        &mut self,
        socket: &mut WebSocket,
        body: Value,
        rid: &Value,
    ) -> Result<(), EngineError> {
        let Some(p) = self.parse::<Push>(socket, body, rid).await? else {
            return Ok(());
        };
        if !self.grant.can_write(&p.space) {
            return self
                .error(
                    socket,
                    403,
                    "forbidden",
                    "no write access to this space",
                    rid,
                )
                .await;
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
        let engine = self.ctx.state.engine.clone();
        let actor = self.actor();
        let source = Some(self.ctx.id);
        let rid = rid.clone();
        let space = p.space.clone();
        let pushed = self
            .order
            .push(engine.clone(), p.space, actor, source, writes, write_ids);
        // Answered in request order once durable; the actor keeps serving.
        self.pending.push_back(Box::pin(async move {
            match pushed.await {
                Ok(outs) => {
                    engine.metrics.acks.fetch_add(1, Relaxed);
                    json!({"type": "ack", "rid": rid, "space": space,
                           "results": outs.iter().map(outcome_json).collect::<Vec<_>>()})
                    .to_string()
                }
                Err(e) => {
                    engine.metrics.errors_sent.fetch_add(1, Relaxed);
                    engine_error_frame(&e, &rid)
                }
            }
        }));
        Ok(())
    }

    async fn publish(
        &mut self,
        socket: &mut WebSocket,
        body: Value,
        rid: &Value,
    ) -> Result<(), EngineError> {
        let Some(p) = self.parse::<Publish>(socket, body, rid).await? else {
            return Ok(());
        };
        if !self.grant.can_write(&p.space) {
            return self
                .error(
                    socket,
                    403,
                    "forbidden",
                    "no write access to this space",
                    rid,
                )
                .await;
        }
        if p.topic.is_empty() || p.topic.len() > 256 {
            return self
                .error(socket, 422, "invalid_field", "topic: 1 to 256 bytes", rid)
                .await;
        }
        let actor = self.actor();
        self.engine()
            .publish(&p.space, &p.topic, p.payload, &actor, Some(self.ctx.id));
        if rid.is_null() {
            return Ok(());
        }
        send(
            socket,
            json!({"type": "published", "rid": rid, "space": p.space, "topic": p.topic})
                .to_string(),
        )
        .await
    }

    async fn get(
        &mut self,
        socket: &mut WebSocket,
        body: Value,
        rid: &Value,
    ) -> Result<(), EngineError> {
        let Some(g) = self.parse::<Get>(socket, body, rid).await? else {
            return Ok(());
        };
        if !self.grant.can_read(&g.space) {
            return self
                .error(
                    socket,
                    403,
                    "forbidden",
                    "no read access to this space",
                    rid,
                )
                .await;
        }
        match self.engine().entity(&g.space, &g.collection, &g.id) {
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
                let m = json!({"type": "entity", "rid": rid, "space": g.space, "collection": g.collection,
                               "id": g.id, "fields": fields, "deleted": !exists, "version": version, "seq": seq});
                send(socket, m.to_string()).await
            }
            Err(e) => send(socket, engine_error_frame(&e, rid)).await,
        }
    }
}
