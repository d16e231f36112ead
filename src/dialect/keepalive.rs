//! Reading a client WebSocket with an idle timeout, shared by every dialect
//! loop: after half of `server.idle_timeout` without hearing anything the
//! relay pings; a connection that stays silent for the whole timeout (no
//! message, no pong) is closed with 1001 "idle timeout" and counted. Pings
//! from the client are answered by the socket library itself. Read errors
//! the client can be told about get their close code ([`super::next_message`]).
//!
//! The deadline lives here, not in the read future, so a read cancelled by
//! another `select!` branch (a delivery, a commit) loses nothing.

use super::{next_message, Ctx};
use crate::net::stats::NetStats;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::time::{Duration, Instant};

pub struct Keepalive {
    idle: Duration,
    stats: Arc<NetStats>,
    /// When something was last heard.
    heard: Instant,
    /// Whether a ping went out since then.
    pinged: bool,
}

impl Keepalive {
    pub fn new(state: &Ctx) -> Keepalive {
        Keepalive {
            idle: state.settings.idle_timeout,
            stats: state.net.clone(),
            heard: Instant::now(),
            pinged: false,
        }
    }

    /// The next message, or None when the connection is over (closed by
    /// the client, failed, or idle past the timeout).
    pub async fn recv(&mut self, socket: &mut WebSocket) -> Option<Message> {
        loop {
            let wake = if self.pinged {
                self.heard + self.idle
            } else {
                self.heard + self.idle / 2
            };
            tokio::select! {
                read = socket.recv() => {
                    self.heard = Instant::now();
                    self.pinged = false;
                    return next_message(socket, read).await;
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
            if !self.pinged {
                self.pinged = true;
                if socket
                    .send(Message::Ping(Default::default()))
                    .await
                    .is_err()
                {
                    return None;
                }
                continue;
            }
            self.stats.idle_timeouts.fetch_add(1, Relaxed);
            tracing::debug!(idle_s = self.idle.as_secs(), "closing an idle WebSocket");
            let _ = socket
                .send(Message::Close(Some(CloseFrame {
                    code: 1001,
                    reason: "idle timeout".into(),
                })))
                .await;
            return None;
        }
    }
}
