//! The connection actor of dialects whose clients follow one space live and
//! have no resume protocol of their own (seeds 000 and 001).
//!
//! Same shape as the native actor: one select loop over shutdown, pending
//! write answers, the lag signal, the fan-out queue and the socket, with
//! writes pipelined (answered in request order after their commit) up to
//! `server.max_inflight`. What differs: the connection follows exactly one
//! space from the moment it connects, never echoes a client's own writes back
//! to it, and recovers from lag by itself. These clients cannot say "resume
//! from seq N", so when fan-out drops the subscription for lagging, the actor
//! re-subscribes from the last seq it delivered and replays the gap from the
//! log: the client sees every change once, just later.
//!
//! The protocol itself (parsing, engine calls, rendering) is a [`Protocol`].

use super::ConnCtx;
use crate::engine::Committed;
use crate::engine::{CatchUp, Delivery, Engine, EngineError, Event, Filter};
use crate::store::StoredEntity;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// Work answered later (a write waiting for its commit): its frames, if any.
pub type Pending = Pin<Box<dyn Future<Output = Vec<String>> + Send>>;

/// What handling one client message produced.
#[derive(Default)]
pub struct Handled {
    /// Frames to send right away.
    pub now: Vec<String>,
    /// A write whose answer (e.g. an error) comes after the commit.
    pub later: Option<Pending>,
}

impl Handled {
    pub fn reply(frame: String) -> Handled {
        Handled {
            now: vec![frame],
            later: None,
        }
    }

    pub fn later(f: Pending) -> Handled {
        Handled {
            now: vec![],
            later: Some(f),
        }
    }
}

/// Frames refused before the protocol sees them.
#[derive(Debug, Clone, Copy)]
pub enum Refusal {
    Binary,
    TooLarge { len: usize, max: usize },
}

impl Refusal {
    pub fn message(self) -> String {
        match self {
            Refusal::Binary => "binary frames are not supported: send JSON text frames".into(),
            Refusal::TooLarge { len, max } => {
                format!("message of {len} bytes exceeds the {max}-byte limit")
            }
        }
    }
}

/// One dialect's message handling and rendering.
pub trait Protocol: Send + 'static {
    /// Sent first, before any change (None: the protocol has no greeting).
    fn greeting(&mut self) -> Option<String>;
    /// One client text frame.
    fn on_text(&mut self, text: &str) -> Handled;
    /// The error frame for a binary or oversized message.
    fn refuse(&mut self, why: Refusal) -> String;
    /// A committed change of the followed space (not written by this
    /// connection); None skips it.
    fn change(&mut self, c: &Committed) -> Option<Utf8Bytes>;
    /// An entity's current state, replayed when lag recovery finds the log
    /// already trimmed past the gap.
    fn snapshot(&mut self, collection: &str, id: &str, e: &StoredEntity) -> Option<Utf8Bytes>;
    /// An ephemeral event of the followed space.
    fn event(&mut self, e: &Event) -> Option<Utf8Bytes>;
    /// When the connection must have authenticated in-band (None: no
    /// deadline). Past it the socket is closed with 1008.
    fn deadline(&self) -> Option<tokio::time::Instant> {
        None
    }
}

/// The subscription a session follows.
struct Feed {
    space: String,
    filter: Filter,
    sub: Option<u64>,
    /// The last seq delivered (or skipped as not wanted).
    last: u64,
}

use crate::dialect::send_text as send;

/// Serve one connection until it closes or the relay shuts down.
pub async fn run<P: Protocol>(
    mut socket: WebSocket,
    ctx: ConnCtx,
    space: String,
    filter: Filter,
    mut proto: P,
) {
    let engine = ctx.state.engine.clone();
    // Everything fanned out after this point reaches the client: nothing
    // written after its greeting is missed.
    let mut feed = Feed {
        space,
        filter,
        sub: None,
        last: engine.hub().last_seq(),
    };
    if let Some(greeting) = proto.greeting() {
        if send(&mut socket, greeting).await.is_err() {
            return;
        }
    }
    if let Err(e) = follow(&mut socket, &engine, &ctx, &mut feed, &mut proto).await {
        close_on_error(&mut socket, &e).await;
        return;
    }
    let mut shutdown = ctx.state.shutdown.clone();
    let max_inflight = ctx.state.settings.max_inflight;
    let max_frame = ctx.state.settings.max_frame_bytes;
    let mut pending: FuturesOrdered<Pending> = FuturesOrdered::new();
    let mut keepalive = crate::dialect::keepalive::Keepalive::new(&ctx.state);
    let mut closing = false;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed(), if !closing => {
                closing = true;
                break;
            }
            _ = sleep_until_opt(proto.deadline()), if proto.deadline().is_some() => {
                let _ = socket
                    .send(Message::Close(Some(CloseFrame {
                        code: 1008,
                        reason: "authentication required".into(),
                    })))
                    .await;
                break;
            }
            Some(frames) = pending.next(), if !pending.is_empty() => {
                let mut gone = false;
                for f in frames {
                    if send(&mut socket, f).await.is_err() { gone = true; break; }
                }
                if gone { break; }
            }
            _ = ctx.signal.notify.notified() => {
                let lagged = ctx.signal.take_lagged();
                if feed.sub.is_some_and(|id| lagged.contains(&id)) {
                    engine.metrics.resyncs.fetch_add(1, Relaxed);
                    feed.sub = None;
                    if let Err(e) = follow(&mut socket, &engine, &ctx, &mut feed, &mut proto).await {
                        close_on_error(&mut socket, &e).await;
                        return;
                    }
                }
            }
            Some(d) = ctx.rx.recv() => {
                if deliver(&mut socket, &ctx, &mut feed, &mut proto, d).await.is_err() { break; }
            }
            msg = keepalive.recv(&mut socket), if pending.len() < max_inflight => {
                let Some(msg) = msg else { break };
                let handled = match msg {
                    Message::Text(t) if t.len() > max_frame => {
                        Handled::reply(proto.refuse(Refusal::TooLarge { len: t.len(), max: max_frame }))
                    }
                    Message::Text(t) => proto.on_text(&t),
                    Message::Binary(_) => Handled::reply(proto.refuse(Refusal::Binary)),
                    Message::Close(_) => break,
                    Message::Ping(_) | Message::Pong(_) => continue,
                };
                let mut gone = false;
                for f in handled.now {
                    if send(&mut socket, f).await.is_err() { gone = true; break; }
                }
                if gone { break; }
                if let Some(later) = handled.later {
                    pending.push_back(later);
                }
            }
        }
    }
    if closing {
        // Finish in-flight writes so each gets its answer, then say why.
        while let Some(frames) = pending.next().await {
            for f in frames {
                if send(&mut socket, f).await.is_err() {
                    return;
                }
            }
        }
        crate::dialect::close_going_away(&mut socket).await;
    }
}

/// Sleep until `at`; never when there is none.
async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The store failed under a subscription: the client cannot be kept in sync,
/// so close with 1011 and let it reconnect.
async fn close_on_error(socket: &mut WebSocket, e: &EngineError) {
    tracing::warn!(error = %e, "following a space failed; closing the connection");
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: 1011,
            reason: "relay storage error".into(),
        })))
        .await;
}

/// (Re)subscribe from `feed.last`, sending the catch-up as it is read.
async fn follow<P: Protocol>(
    socket: &mut WebSocket,
    engine: &Arc<Engine>,
    ctx: &ConnCtx,
    feed: &mut Feed,
    proto: &mut P,
) -> Result<(), EngineError> {
    let mut sub = engine.start_subscription(
        &feed.space,
        feed.last,
        feed.filter.clone(),
        ctx.link.clone(),
    )?;
    loop {
        let page = match engine.next_page(&mut sub) {
            Ok(Some(page)) => page,
            Ok(None) => break,
            Err(e) => {
                if let Some(id) = sub.id {
                    engine.unsubscribe(&feed.space, id);
                }
                return Err(e);
            }
        };
        for item in page {
            let frame = match item {
                CatchUp::Change(c) => {
                    if c.seq <= feed.last {
                        continue;
                    }
                    feed.last = c.seq;
                    proto.change(&c)
                }
                CatchUp::Snapshot {
                    collection,
                    id,
                    entity,
                } => proto.snapshot(&collection, &id, &entity),
            };
            if let Some(f) = frame {
                send(socket, f).await?;
            }
        }
    }
    feed.sub = Some(sub.id.ok_or(EngineError::ClientGone)?);
    feed.last = feed.last.max(sub.reached());
    Ok(())
}

async fn deliver<P: Protocol>(
    socket: &mut WebSocket,
    ctx: &ConnCtx,
    feed: &mut Feed,
    proto: &mut P,
    d: Delivery,
) -> Result<(), EngineError> {
    let frame = match d {
        Delivery::Change { sub, item } => {
            // Items queued for a subscription dropped for lag, or already
            // replayed by the catch-up, are skipped.
            if Some(sub) != feed.sub || item.seq <= feed.last {
                return Ok(());
            }
            feed.last = item.seq;
            if item.source == Some(ctx.id) {
                return Ok(()); // the client's own write: not echoed
            }
            proto.change(&item)
        }
        Delivery::Event { sub, event } => {
            if Some(sub) != feed.sub {
                return Ok(());
            }
            proto.event(&event)
        }
    };
    match frame {
        Some(f) => send(socket, f).await,
        None => Ok(()),
    }
}

/// Handshake checks of a one-space dialect: admission (401/503), then the
/// space from `?space=` (default `default`): a bad name is 400, a token
/// without read access to it 403. Refusals happen before any upgrade.
pub fn admit_space(
    state: &crate::dialect::Ctx,
    headers: &axum::http::HeaderMap,
    query: &std::collections::HashMap<String, String>,
) -> Result<(crate::auth::Grant, String), (axum::http::StatusCode, String)> {
    use axum::http::StatusCode;
    let grant = super::admit(state, headers, query)?;
    let space = query
        .get("space")
        .cloned()
        .unwrap_or_else(|| "default".into());
    crate::engine::validate_name("space", &space)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("{e}\n")))?;
    if !grant.can_read(&space) {
        return Err((
            StatusCode::FORBIDDEN,
            format!("forbidden: no read access to space {space:?}\n"),
        ));
    }
    Ok((grant, space))
}
