//! Client protocols. Each dialect parses its messages, calls the engine and
//! renders replies; what they share (admission, connection accounting,
//! socket limits) lives here.

pub mod atome;
pub mod atome_adapter;
pub mod atome_sync;
pub mod config_sync;
pub mod gzip;
pub mod keepalive;
pub mod kv;
pub mod native;
pub mod session;
pub mod sync;
pub mod unified;

use crate::auth::Grant;
use crate::engine::{ConnLink, ConnSignal, EngineError, Outbox};
use crate::server::AppState;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

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

/// Seconds since the epoch, for token expiry.
pub fn now_s() -> u64 {
    crate::engine::now_ms() / 1000
}

/// The token from `Authorization: Bearer …` or `?token=`.
pub fn token_from(headers: &HeaderMap, query: &HashMap<String, String>) -> Option<String> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string())
        .or_else(|| query.get("token").cloned())
}

/// Admission at the handshake: a bad or missing token gets HTTP 401 before
/// any upgrade. (The connection limits were applied when the TCP connection
/// was accepted, see `crate::net`.)
pub fn admit(
    state: &AppState,
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

/// Socket limits. Messages up to `max_frame_bytes` are served; larger ones,
/// up to four times that, are read and answered with error 413 so the
/// connection survives; beyond that the socket is closed (1009).
///
/// The read buffer is 8 KiB, not tungstenite's 128 KiB default: that buffer
/// is allocated and zero-filled per connection up front, which made each
/// idle connection cost about 140 KiB of RSS (docs/performance.md). Larger
/// messages still fit: the buffer grows for a frame that needs it.
pub fn limit(ws: WebSocketUpgrade, state: &AppState) -> WebSocketUpgrade {
    let hard = state.settings.max_frame_bytes.saturating_mul(4);
    ws.max_message_size(hard)
        .max_frame_size(hard)
        .read_buffer_size(READ_BUFFER)
}

/// Per-connection socket read buffer (see [`limit`]).
const READ_BUFFER: usize = 8 * 1024;

/// Send one text frame; a failure means the client is gone.
pub async fn send_text(
    socket: &mut WebSocket,
    text: impl Into<axum::extract::ws::Utf8Bytes>,
) -> Result<(), EngineError> {
    socket
        .send(Message::Text(text.into()))
        .await
        .map_err(|_| EngineError::ClientGone)
}

/// Shutdown: tell the client why the socket closes (1001).
pub async fn close_going_away(socket: &mut WebSocket) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: 1001,
            reason: "relay shutting down".into(),
        })))
        .await;
}

/// The message a socket read produced, or None when the connection is
/// over. A read error the client can be told about gets its close frame
/// first (see [`close_for_error`]); other read errors (reset, protocol
/// violation) leave nothing to say.
pub async fn next_message(
    socket: &mut WebSocket,
    read: Option<Result<Message, axum::Error>>,
) -> Option<Message> {
    let err = match read? {
        Ok(m) => return Some(m),
        Err(e) => e,
    };
    if let Some((code, reason)) = close_for_error(&err) {
        let _ = socket
            .send(Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })))
            .await;
    }
    None
}

/// The close frame RFC 6455 asks for after a read error: 1007 for a text
/// message that is not UTF-8, 1009 for a message beyond the hard size limit.
/// Looks through the error's sources for tungstenite's error, so it serves
/// axum's socket and the tungstenite client alike.
pub fn close_for_error(err: &(dyn std::error::Error + 'static)) -> Option<(u16, &'static str)> {
    let mut e = Some(err);
    while let Some(cur) = e {
        match cur.downcast_ref::<tungstenite::Error>() {
            Some(tungstenite::Error::Utf8(_)) => {
                return Some((1007, "invalid UTF-8 in a text message"))
            }
            Some(tungstenite::Error::Capacity(_)) => return Some((1009, "message too big")),
            Some(_) => return None,
            None => e = cur.source(),
        }
    }
    None
}

/// One connection's accounting and fan-out link. Dropping it unregisters
/// every subscription of the connection and updates the gauges.
pub struct ConnCtx {
    pub state: Arc<AppState>,
    pub id: u64,
    pub link: ConnLink,
    /// The connection's outbound queue (fan-out pushes, the task pops).
    pub rx: Arc<Outbox>,
    pub signal: Arc<ConnSignal>,
    /// The endpoint path, for the per-endpoint connection gauge.
    endpoint: &'static str,
    _track: crate::server::ConnToken,
}

impl ConnCtx {
    pub fn new(state: Arc<AppState>, endpoint: &'static str) -> ConnCtx {
        let id = state.engine.next_conn_id();
        let rx = Outbox::new(state.settings.queue_depth, state.settings.max_queue_bytes);
        let signal = Arc::new(ConnSignal::default());
        let m = &state.engine.metrics;
        m.connections.fetch_add(1, Relaxed);
        m.connections_total.fetch_add(1, Relaxed);
        m.endpoint_conn(endpoint, true);
        let track = state.conns.enter();
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
            _track: track,
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
