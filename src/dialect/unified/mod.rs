//! Seed 004's unified multiplexed protocol on `/api/ws`, and its two legacy
//! subsets `/api/sync/ws` (entity messages) and `/api/field-sync/ws` (field
//! messages). Message shapes, mapping and rendering are in `proto`; this
//! file is the connection actor, shaped like the native one: a select loop
//! over the socket, the bounded fan-out queue, the lag signal, pending acks
//! and shutdown. Documented in docs/protocol.md.

pub mod http;
pub mod proto;

use super::{admit, limit, ConnCtx};
use crate::auth::Grant;
use crate::dialect::Ctx;
use crate::engine::Committed;
use crate::engine::{CatchUp, Delivery, EngineError, Filter};
use crate::store::StoreError;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt;
use proto::{code, Endpoint, Refusal, UnifiedMessage};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// `GET /api/ws`: every message family.
pub async fn unified(
    state: State<Ctx>,
    query: Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    upgrade(Endpoint::Unified, state, query, headers, ws)
}

/// `GET /api/sync/ws`: entity-level sync only.
pub async fn entity_sync(
    state: State<Ctx>,
    query: Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    upgrade(Endpoint::Entity, state, query, headers, ws)
}

/// `GET /api/field-sync/ws`: field-level sync only.
pub async fn field_sync(
    state: State<Ctx>,
    query: Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    upgrade(Endpoint::Field, state, query, headers, ws)
}

fn upgrade(
    endpoint: Endpoint,
    State(state): State<Ctx>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let grant = match admit(&state, &headers, &query) {
        Ok(g) => g,
        Err(refusal) => return refusal.into_response(),
    };
    let space = query
        .get("space")
        .cloned()
        .unwrap_or_else(|| "default".into());
    if let Err(e) = crate::engine::validate_name("space", &space) {
        return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response();
    }
    // The seed's ChangeLog carries a client_id; a client may name itself.
    let client_id = query
        .get("client_id")
        .filter(|c| crate::engine::validate_name("client_id", c).is_ok())
        .cloned();
    // Whether large frames go out gzipped: RHTMX's clients on the two
    // backward-compatible endpoints always decompress binary frames, so
    // there the relay compresses as the real server does; on `/api/ws`
    // only for a client that asks (or that compresses itself).
    let compress = match query.get("compression").map(String::as_str) {
        Some("gzip") => true,
        Some("off") | Some("none") => false,
        _ => endpoint != Endpoint::Unified,
    };
    limit(ws, &state)
        .on_upgrade(move |socket| run(socket, state, grant, endpoint, space, client_id, compress))
}

/// Catch-up page size for `sync`.
const PAGE: usize = 256;

type Pending = Pin<Box<dyn Future<Output = Vec<String>> + Send + Sync>>;

/// One hub subscription of the connection: entity changes or field changes
/// of some entity types. Each `subscribe` adds a feed for the types not yet
/// subscribed, starting at the current end of the log, so a type added later
/// never replays its past.
struct Feed {
    kind: Kind,
    entities: HashSet<String>,
    /// Highest local seq delivered: catch-up after a lag resumes here, and
    /// anything at or below it that arrives again is skipped.
    last_seq: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Entity,
    Field,
}

struct Conn {
    ctx: ConnCtx,
    grant: Grant,
    endpoint: Endpoint,
    space: String,
    client_id: String,
    /// Hub subscription id -> feed.
    feeds: HashMap<u64, Feed>,
    pending: FuturesOrdered<Pending>,
    /// Send frames of `gzip::THRESHOLD` bytes or more gzipped (binary).
    compress: bool,
    /// Pushes reach the writer in the order their frames were read.
    order: crate::engine::WriteOrder,
}

use crate::dialect::send_text as send;

async fn run(
    mut socket: WebSocket,
    state: Ctx,
    grant: Grant,
    endpoint: Endpoint,
    space: String,
    client_id: Option<String>,
    compress: bool,
) {
    let ctx = ConnCtx::new(state.clone(), endpoint.path());
    let mut shutdown = state.shutdown.clone();
    let mut conn = Conn {
        client_id: client_id.unwrap_or_else(|| format!("c{}", ctx.id)),
        ctx,
        grant,
        endpoint,
        space,
        feeds: HashMap::new(),
        pending: FuturesOrdered::new(),
        compress,
        order: Default::default(),
    };
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
            Some(frames) = conn.pending.next(), if !conn.pending.is_empty() => {
                if send_all(&mut socket, conn.compress, frames).await.is_err() { break; }
            }
            _ = conn.ctx.signal.notify.notified() => {
                if conn.resync(&mut socket).await.is_err() { break; }
            }
            Some(d) = conn.ctx.rx.recv() => {
                if conn.deliver(&mut socket, d).await.is_err() { break; }
            }
            msg = keepalive.recv(&mut socket), if conn.pending.len() < max_inflight => {
                let Some(msg) = msg else { break };
                match conn.handle(&mut socket, msg).await {
                    Ok(true) => {}
                    Ok(false) | Err(_) => break,
                }
            }
        }
    }
    if closing {
        // Every push accepted before shutdown still gets its ack.
        while let Some(frames) = conn.pending.next().await {
            if send_all(&mut socket, conn.compress, frames).await.is_err() {
                return;
            }
        }
        crate::dialect::close_going_away(&mut socket).await;
    }
}

async fn send_all(
    socket: &mut WebSocket,
    compress: bool,
    frames: Vec<String>,
) -> Result<(), EngineError> {
    for f in frames {
        send_frame(socket, compress, f.into()).await?;
    }
    Ok(())
}

/// One frame to the client: as text, or gzipped in a binary frame when the
/// client compresses and the frame is at least `gzip::THRESHOLD` bytes.
async fn send_frame(
    socket: &mut WebSocket,
    compress: bool,
    text: Utf8Bytes,
) -> Result<(), EngineError> {
    if compress && text.len() >= crate::dialect::gzip::THRESHOLD {
        let zipped = crate::dialect::gzip::gzip(text.as_str());
        return socket
            .send(Message::Binary(zipped.into()))
            .await
            .map_err(|_| EngineError::ClientGone);
    }
    send(socket, text).await
}

/// An engine error as an `error` frame with a stable code.
pub(crate) fn engine_error(e: &EngineError) -> Refusal {
    match e {
        EngineError::Schema {
            collection,
            violation,
            ..
        } => Refusal::new(
            code::SCHEMA_VIOLATION,
            format!("entity `{collection}`: {violation}"),
        ),
        // The engine names the field as `changes[i].field`: one change here.
        EngineError::Invalid(m) => Refusal::new(
            code::INVALID_FIELD,
            m.strip_prefix("changes[0].").unwrap_or(m).to_string(),
        ),
        EngineError::Store(StoreError::DiskFull { .. } | StoreError::NoSpace) => {
            Refusal::new(code::DISK_FULL, e.to_string())
        }
        EngineError::Store(StoreError::Closed | StoreError::Faulted { .. }) => {
            Refusal::new(code::UNAVAILABLE, e.to_string())
        }
        _ => Refusal::new(code::STORAGE_FAILED, e.to_string()),
    }
}

impl Conn {
    fn engine(&self) -> &Arc<crate::engine::Engine> {
        &self.ctx.state.engine
    }

    fn actor(&self) -> String {
        if self.grant.sub == "anonymous" {
            self.client_id.clone()
        } else {
            self.grant.sub.clone()
        }
    }

    async fn refuse(&self, socket: &mut WebSocket, r: Refusal) -> Result<(), EngineError> {
        self.engine().metrics.errors_sent.fetch_add(1, Relaxed);
        self.out(socket, proto::error(&r)).await
    }

    async fn out(
        &self,
        socket: &mut WebSocket,
        text: impl Into<Utf8Bytes>,
    ) -> Result<(), EngineError> {
        send_frame(socket, self.compress, text.into()).await
    }

    /// Frames of one committed change for a feed of `kind`. An entity-level
    /// `change` carries the entity's whole state: known for live changes;
    /// for one re-read from the log (catch-up) the current state is read.
    fn frames(&self, kind: Kind, c: &Committed) -> Vec<Utf8Bytes> {
        match kind {
            Kind::Entity if c.after.is_some() => vec![proto::render_change(c)],
            Kind::Entity => {
                let ch = &c.entry.change;
                let now = self
                    .engine()
                    .entity(&self.space, &ch.collection, &ch.id)
                    .ok()
                    .flatten()
                    .map(|e| e.view());
                let change = proto::change_log_over(c, now.as_ref());
                vec![proto::render(&UnifiedMessage::Change { change }).into()]
            }
            Kind::Field => proto::render_field_changes(c),
        }
    }

    async fn deliver(&mut self, socket: &mut WebSocket, d: Delivery) -> Result<(), EngineError> {
        let Delivery::Change { sub, item } = d else {
            return Ok(()); // feeds are registered without ephemeral events
        };
        // Items of a feed already dropped (lag) are ignored: its catch-up
        // re-reads them from the log.
        let Some(feed) = self.feeds.get_mut(&sub) else {
            return Ok(());
        };
        if item.seq <= feed.last_seq {
            return Ok(());
        }
        feed.last_seq = item.seq;
        let kind = feed.kind;
        for f in self.frames(kind, &item) {
            self.out(socket, f).await?;
        }
        Ok(())
    }

    /// A feed dropped by fan-out for lagging resumes from the log where it
    /// stopped, so the client misses nothing and needs no resync message.
    async fn resync(&mut self, socket: &mut WebSocket) -> Result<(), EngineError> {
        for id in self.ctx.signal.take_lagged() {
            if let Some(feed) = self.feeds.remove(&id) {
                self.engine().metrics.resyncs.fetch_add(1, Relaxed);
                self.start_feed(socket, feed.kind, feed.entities, feed.last_seq)
                    .await?;
            }
        }
        Ok(())
    }

    /// Returns false when the connection should close.
    async fn handle(&mut self, socket: &mut WebSocket, msg: Message) -> Result<bool, EngineError> {
        let max = self.ctx.state.settings.max_frame_bytes;
        let text = match msg {
            Message::Text(t) => t,
            // A gzipped message (what RHTMX's clients send for 1 KiB and
            // more): decompressed up to the frame limit; a client that
            // compresses gets large frames compressed too.
            Message::Binary(b) => match crate::dialect::gzip::gunzip_text(&b, max) {
                Ok(t) => {
                    self.compress = true;
                    t.into()
                }
                Err(e) => {
                    let c = match e {
                        crate::dialect::gzip::GzipError::TooLarge(_) => code::TOO_LARGE,
                        _ => code::BINARY,
                    };
                    self.refuse(socket, Refusal::new(c, format!("binary frame: {e}")))
                        .await?;
                    return Ok(true);
                }
            },
            Message::Close(_) => return Ok(false),
            Message::Ping(_) | Message::Pong(_) => return Ok(true),
        };
        if text.len() > max {
            let m = format!(
                "message of {} bytes exceeds the {max}-byte limit",
                text.len()
            );
            self.refuse(socket, Refusal::new(code::TOO_LARGE, m))
                .await?;
            return Ok(true);
        }
        let msg = match proto::parse(&text, self.endpoint) {
            Ok(m) => m,
            Err(r) => {
                self.refuse(socket, r).await?;
                return Ok(true);
            }
        };
        let forms = &self.ctx.state.settings.forms;
        let r = match msg {
            UnifiedMessage::Subscribe { entities } => {
                self.subscribe(socket, Kind::Entity, entities).await
            }
            UnifiedMessage::SubscribeFields { entities } => {
                self.subscribe(socket, Kind::Field, entities).await
            }
            UnifiedMessage::Sync { entity, since } => self.sync(socket, entity, since).await,
            UnifiedMessage::Push {
                entity,
                entity_id,
                action,
                data,
            } => self.push(socket, entity, entity_id, action, data).await,
            UnifiedMessage::PushFields {
                entity,
                entity_id,
                fields,
            } => self.push_fields(socket, entity, entity_id, fields).await,
            UnifiedMessage::ValidateField {
                request_id,
                form,
                field,
                value,
            } => match proto::validate_field(forms, request_id, form, field, value) {
                Ok(m) => self.out(socket, proto::render(&m)).await,
                Err(r) => self.refuse(socket, r).await,
            },
            UnifiedMessage::ValidateForm {
                request_id,
                form,
                fields,
            } => match proto::validate_form(forms, request_id, form, fields) {
                Ok(m) => self.out(socket, proto::render(&m)).await,
                Err(r) => self.refuse(socket, r).await,
            },
            UnifiedMessage::Ping => self.out(socket, proto::render(&UnifiedMessage::Pong)).await,
            // `parse` refuses server-only messages before they get here.
            _ => {
                self.refuse(
                    socket,
                    Refusal::new(code::SERVER_ONLY, "sent by the server, not to it"),
                )
                .await
            }
        };
        r.map(|()| true)
    }

    fn check_entities(&self, entities: &[String]) -> Result<(), Refusal> {
        if !self.grant.can_read(&self.space) {
            return Err(Refusal::new(
                code::FORBIDDEN,
                "no read access to this space",
            ));
        }
        for e in entities {
            crate::engine::validate_name("entities", e)
                .map_err(|e| Refusal::new(code::INVALID_MESSAGE, e.to_string()))?;
        }
        Ok(())
    }

    async fn subscribe(
        &mut self,
        socket: &mut WebSocket,
        kind: Kind,
        entities: Vec<String>,
    ) -> Result<(), EngineError> {
        if let Err(r) = self.check_entities(&entities) {
            return self.refuse(socket, r).await;
        }
        // Subscriptions accumulate; types already subscribed are skipped.
        let new: HashSet<String> = entities
            .into_iter()
            .filter(|e| {
                !self
                    .feeds
                    .values()
                    .any(|f| f.kind == kind && f.entities.contains(e))
            })
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        let since = self.engine().hub().last_seq();
        self.start_feed(socket, kind, new, since).await
    }

    /// Register a feed for `set` and bring it up to date from `since` (the
    /// log seq it has delivered up to), sending the catch-up; by the end it
    /// is live with no gap or duplicate at the seam.
    async fn start_feed(
        &mut self,
        socket: &mut WebSocket,
        kind: Kind,
        set: HashSet<String>,
        since: u64,
    ) -> Result<(), EngineError> {
        let engine = self.engine().clone();
        let filter = Filter {
            collections: Some(set.clone()),
            events: false,
        };
        let mut sub =
            match engine.start_subscription(&self.space, since, filter, self.ctx.link.clone()) {
                Ok(s) => s,
                Err(e) => return self.refuse(socket, engine_error(&e)).await,
            };
        let mut last = since;
        loop {
            let page = match engine.next_page(&mut sub) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    if let Some(id) = sub.id {
                        engine.unsubscribe(&self.space, id);
                    }
                    return self.refuse(socket, engine_error(&e)).await;
                }
            };
            for item in page {
                match item {
                    CatchUp::Change(c) => {
                        if c.seq <= last {
                            continue;
                        }
                        last = c.seq;
                        for f in self.frames(kind, &c) {
                            self.out(socket, f).await?;
                        }
                    }
                    CatchUp::Snapshot {
                        collection,
                        id,
                        entity,
                    } => {
                        for f in snapshot_frames(kind, &collection, &id, &entity) {
                            self.out(socket, f).await?;
                        }
                    }
                }
            }
        }
        let id = sub.id.ok_or(EngineError::ClientGone)?;
        self.feeds.insert(
            id,
            Feed {
                kind,
                entities: set,
                last_seq: sub.reached().max(last),
            },
        );
        Ok(())
    }

    /// `sync {entity, since}`: one `change` per entity of that type changed
    /// after per-type version `since`, at its newest version and with its
    /// whole current state, in version order; read from the per-type index,
    /// so the cost grows with the entities returned, not with the log.
    async fn sync(
        &mut self,
        socket: &mut WebSocket,
        entity: String,
        since: i64,
    ) -> Result<(), EngineError> {
        if let Err(r) = self.check_entities(std::slice::from_ref(&entity)) {
            return self.refuse(socket, r).await;
        }
        let engine = self.engine().clone();
        let mut after = u64::try_from(since).unwrap_or(0);
        loop {
            let page = match proto_sync_page(&engine, &self.space, &entity, after, PAGE) {
                Ok((_, p)) => p,
                Err(e) => return self.refuse(socket, engine_error(&e)).await,
            };
            let short = page.len() < PAGE;
            for change in page {
                after = u64::try_from(change.version).unwrap_or(after);
                self.out(socket, proto::render(&UnifiedMessage::Change { change }))
                    .await?;
            }
            if short {
                return Ok(());
            }
        }
    }

    fn can_write(&self) -> Result<(), Refusal> {
        if self.grant.can_write(&self.space) {
            Ok(())
        } else {
            Err(Refusal::new(
                code::FORBIDDEN,
                "no write access to this space",
            ))
        }
    }

    async fn push(
        &mut self,
        socket: &mut WebSocket,
        entity: String,
        entity_id: String,
        action: proto::ChangeAction,
        data: Option<serde_json::Value>,
    ) -> Result<(), EngineError> {
        let write = match self
            .can_write()
            .and_then(|()| proto::push_write(entity_id.clone(), entity.clone(), action, data))
        {
            Ok(w) => w,
            Err(r) => return self.refuse(socket, r).await,
        };
        let engine = self.engine().clone();
        let (space, actor, source) = (self.space.clone(), self.actor(), Some(self.ctx.id));
        let pushed = self
            .order
            .push(engine.clone(), space, actor, source, vec![write], vec![]);
        // Answered in request order once durable; the actor keeps serving.
        self.pending.push_back(Box::pin(async move {
            match pushed.await {
                Ok(outs) => {
                    engine.metrics.acks.fetch_add(1, Relaxed);
                    let version = outs.first().map(|o| o.type_version).unwrap_or(0);
                    vec![proto::render(&UnifiedMessage::PushAck {
                        entity,
                        entity_id,
                        version: i64::try_from(version).unwrap_or(i64::MAX),
                    })]
                }
                Err(e) => {
                    engine.metrics.errors_sent.fetch_add(1, Relaxed);
                    vec![proto::error(&engine_error(&e))]
                }
            }
        }));
        Ok(())
    }

    async fn push_fields(
        &mut self,
        socket: &mut WebSocket,
        entity: String,
        entity_id: String,
        fields: Vec<proto::FieldUpdate>,
    ) -> Result<(), EngineError> {
        let (writes, times) = match self
            .can_write()
            .and_then(|()| proto::field_writes(&entity, &entity_id, fields))
        {
            Ok(w) => w,
            Err(r) => return self.refuse(socket, r).await,
        };
        let engine = self.engine().clone();
        let (space, actor, source) = (self.space.clone(), self.actor(), Some(self.ctx.id));
        let endpoint = self.endpoint;
        let pushed = self
            .order
            .push(engine.clone(), space, actor, source, writes, vec![]);
        self.pending.push_back(Box::pin(async move {
            match pushed.await {
                Ok(outs) => {
                    engine.metrics.acks.fetch_add(1, Relaxed);
                    proto::field_push_reply(&entity, &entity_id, &times, &outs)
                        .iter()
                        .map(|m| proto::render_for(endpoint, m))
                        .collect()
                }
                Err(e) => {
                    engine.metrics.errors_sent.fetch_add(1, Relaxed);
                    vec![proto::error(&engine_error(&e))]
                }
            }
        }));
        Ok(())
    }
}

fn snapshot_frames(
    kind: Kind,
    collection: &str,
    id: &str,
    e: &crate::store::StoredEntity,
) -> Vec<String> {
    match kind {
        Kind::Entity => vec![proto::render(&UnifiedMessage::Change {
            change: proto::snapshot_change(collection, id, e),
        })],
        Kind::Field => proto::snapshot_fields(collection, id, e)
            .into_iter()
            .map(|change| proto::render(&UnifiedMessage::FieldChange { change }))
            .collect(),
    }
}

/// One page of `sync` (and the HTTP sync API): the entities of `entity`
/// changed after per-type version `after`, as `ChangeLog`s, with the type's
/// latest version.
pub(crate) fn proto_sync_page(
    engine: &crate::engine::Engine,
    space: &str,
    entity: &str,
    after: u64,
    limit: usize,
) -> Result<(u64, Vec<proto::ChangeLog>), EngineError> {
    let (latest, ents) = engine.type_changes(space, entity, after, limit)?;
    let mut out = Vec::with_capacity(ents.len());
    for (id, e) in ents {
        let newest = engine.log_entry(e.seq)?;
        out.push(proto::entity_change(entity, &id, &e, newest.as_ref()));
    }
    Ok((latest, out))
}
