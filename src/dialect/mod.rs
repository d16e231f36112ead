//! Client protocols. Each dialect is a [`Dialect`] the connection driver
//! (`conn`) runs: it parses its messages, asks the driver for the engine
//! calls it needs and renders replies; what they share (admission, connection accounting, socket
//! limits) lives here.

pub mod atome;
pub mod atome_rest;
pub mod atome_sync;
pub mod config_sync;
pub mod errors;
pub mod gzip;
pub mod kv;
pub mod native;
pub mod protocol;
pub mod sync;
#[cfg(test)]
mod table;
pub mod unified;

pub use protocol::{
    Call, Dialect, Failed, Follow, Handled, Lag, Opening, Publish, Query, Read, Refusal, Refused,
    Reply, Rows, Scan, Scanned, Since,
};

use crate::auth::Grant;
use crate::engine::{ConnLink, ConnSignal, Outbox};
use axum::http::{HeaderMap, StatusCode};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Render-cache slots, one per dialect that renders committed changes.
pub const SLOT_NATIVE: usize = 0;
/// Seed 000 (`/ws/sync`) event frames.
pub const SLOT_SYNC: usize = 1;
/// Seed 001 (`/ws/atome-sync`) event frames.
pub const SLOT_ATOME: usize = 2;
/// Seed 002 (`/ws/config`) sync-event frames.
pub const SLOT_CONFIG: usize = 3;
/// Seed 003 (`/v1/sync/{workspace}`).
pub const SLOT_KV: usize = 4;
/// Seed 004 (`unified`): its `change` frame, and its `field_change` frames.
/// Taken from the top of the 8 slots so sequential picks do not collide.
pub const SLOT_UNIFIED_CHANGE: usize = 6;
pub const SLOT_UNIFIED_FIELDS: usize = 7;

pub use crate::auth::{now_s, token_from};

/// What handlers and connections get from the relay, and nothing more:
/// the engine, auth, the connection settings and the shutdown signal.
/// Cheap to clone (one shared allocation); the app builds it once.
#[derive(Clone)]
pub struct Ctx(Arc<Shared>);

pub struct Shared {
    pub engine: Arc<crate::engine::Engine>,
    pub auth: crate::auth::Auth,
    pub settings: ConnSettings,
    /// Flips to true when shutdown starts.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Counters of the connection layer (idle timeouts).
    pub net: Arc<crate::net::stats::NetStats>,
    /// Starts a round with the upstream hub now, when there is one
    /// (seed 000's `sync_request`).
    pub upstream: Option<Wake>,
}

/// A nudge to a task elsewhere in the relay.
pub type Wake = Arc<dyn Fn() + Send + Sync>;

/// The `[server]` (and `[forms]`) settings connections use.
pub struct ConnSettings {
    pub max_frame_bytes: usize,
    pub max_inflight: usize,
    pub max_subscriptions: usize,
    pub max_connections: usize,
    pub queue_depth: usize,
    pub max_queue_bytes: usize,
    pub idle_timeout: std::time::Duration,
    pub forms: Arc<crate::schema::SchemaSet>,
}

impl ConnSettings {
    pub fn of(s: &crate::config::Settings) -> ConnSettings {
        ConnSettings {
            max_frame_bytes: s.max_frame_bytes,
            max_inflight: s.max_inflight,
            max_subscriptions: s.max_subscriptions,
            max_connections: s.max_connections,
            queue_depth: s.queue_depth,
            max_queue_bytes: s.max_queue_bytes,
            idle_timeout: s.idle_timeout,
            forms: s.forms.clone(),
        }
    }
}

impl Ctx {
    pub fn new(shared: Shared) -> Ctx {
        Ctx(Arc::new(shared))
    }
}

impl std::ops::Deref for Ctx {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// Admission at the handshake: a bad or missing token gets HTTP 401 before
/// any upgrade. (The connection limits were applied when the TCP connection
/// was accepted, see `crate::net`.)
pub fn admit(
    state: &Ctx,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<Grant, (StatusCode, String)> {
    let m = &state.engine.metrics;
    let token = token_from(headers, query);
    state.auth.admit(token.as_deref(), now_s()).map_err(|e| {
        m.auth_failures.fetch_add(1, Relaxed);
        (StatusCode::UNAUTHORIZED, format!("unauthorized: {e}\n"))
    })
}

/// The space a handshake names in `?space=` (default `default`); a bad
/// name is 400.
pub fn space_of(query: &HashMap<String, String>) -> Result<String, Refused> {
    let space = query
        .get("space")
        .cloned()
        .unwrap_or_else(|| "default".into());
    crate::engine::validate_name("space", &space)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("{e}\n")))?;
    Ok(space)
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
    let grant = admit(state, headers, query)?;
    let space = space_of(query)?;
    if !grant.can_read(&space) {
        return Err((
            StatusCode::FORBIDDEN,
            format!("forbidden: no read access to space {space:?}\n"),
        ));
    }
    Ok((grant, space))
}

/// Socket limits. Messages up to `max_frame_bytes` are served; larger ones,
/// up to four times that, are read and answered with error 413 so the
/// connection survives; beyond that the socket is closed (1009).
///
/// The read buffer is 8 KiB, not tungstenite's 128 KiB default: that buffer
/// is allocated and zero-filled per connection up front, which made each
/// idle connection cost about 140 KiB of RSS (docs/performance.md). Larger
/// messages still fit: the buffer grows for a frame that needs it.
pub fn limit(ws: WebSocketConfig, state: &Ctx) -> WebSocketConfig {
    let hard = state.settings.max_frame_bytes.saturating_mul(4);
    ws.max_message_size(Some(hard))
        .max_frame_size(Some(hard))
        .read_buffer_size(READ_BUFFER)
}

/// Per-connection socket read buffer (see [`limit`]).
const READ_BUFFER: usize = 8 * 1024;

/// One connection's accounting and fan-out link. Dropping it unregisters
/// every subscription of the connection and updates the gauges.
pub struct ConnCtx {
    pub state: Ctx,
    pub id: u64,
    pub link: ConnLink,
    /// The connection's outbound queue (fan-out pushes, the task pops).
    pub rx: Arc<Outbox>,
    pub signal: Arc<ConnSignal>,
    /// The endpoint path, for the per-endpoint connection gauge.
    endpoint: &'static str,
}

impl ConnCtx {
    pub fn new(state: Ctx, endpoint: &'static str) -> ConnCtx {
        let id = state.engine.next_conn_id();
        let rx = Outbox::new(state.settings.queue_depth, state.settings.max_queue_bytes);
        let signal = Arc::new(ConnSignal::default());
        state.engine.hub().attach(id, signal.clone());
        let m = &state.engine.metrics;
        m.connections.fetch_add(1, Relaxed);
        m.connections_total.fetch_add(1, Relaxed);
        m.endpoint_conn(endpoint, true);
        ConnCtx {
            link: ConnLink {
                conn: id,
                outbox: rx.clone(),
                signal: signal.clone(),
            },
            state,
            id,
            rx,
            signal,
            endpoint,
        }
    }
}

impl Drop for ConnCtx {
    fn drop(&mut self) {
        self.state.engine.drop_conn(self.id);
        // Frees whatever is still queued, even if a subscription raced in.
        self.rx.close();
        self.state.engine.metrics.connections.fetch_sub(1, Relaxed);
        self.state
            .engine
            .metrics
            .endpoint_conn(self.endpoint, false);
    }
}
