//! A client WebSocket as the driver uses it: reads with the keepalive and
//! idle timeout, batched writes, close frames.
//!
//! Keepalive: after half of `server.idle_timeout` without hearing anything
//! the relay pings; a connection that stays silent for the whole timeout
//! (no message, no pong) is closed with 1001 "idle timeout" and counted.
//! Pings from the client are answered by the socket library itself. The
//! deadline lives here, not in the read future, so a read cancelled by
//! another `select!` branch (a delivery, a commit) loses nothing.
//!
//! Read errors the client can be told about get their close frame: 1007
//! for a text message that is not UTF-8, 1009 for one past the hard size
//! limit (`net::ws::close_for_error`).
//!
//! A Server-Sent Events stream is a socket too ([`Socket::sse`]): the
//! driver's frames become events of the response body, nothing is ever
//! read, and it ends when the client drops the response or the driver
//! closes it. Its write timeout is the connection's, as for a WebSocket.

use super::Ctx;
use crate::dialect::Dialect;
use crate::net::stats::NetStats;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::SinkExt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::time::{Duration, Instant};

/// The client is gone (its socket failed or closed).
#[derive(Debug)]
pub struct Gone;

/// How long a close frame may take to go out (the socket's write timeout
/// bounds it too; this keeps shutdown short with a stalled client).
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Where the driver's frames go: a WebSocket or an SSE response body.
/// (One per connection, held in place by its driver: the size difference
/// of the variants costs nothing worth a box.)
#[allow(clippy::large_enum_variant)]
pub enum Socket {
    Ws(Ws),
    Sse(Sse),
}

impl Socket {
    pub fn ws(ws: WebSocket, ctx: &Ctx) -> Socket {
        Socket::Ws(Ws::new(ws, ctx))
    }

    /// An SSE stream whose frames go out as events named `event`; the
    /// receiver is the response body.
    pub fn sse(event: &'static str) -> (Socket, tokio::sync::mpsc::Receiver<SseEvent>) {
        // A few batches: the body drains it as fast as the client reads.
        let (tx, rx) = tokio::sync::mpsc::channel(4 * super::driver::BATCH);
        (Socket::Sse(Sse { tx, event }), rx)
    }

    /// The next message, or None when the connection is over.
    pub async fn recv(&mut self) -> Option<Message> {
        match self {
            Socket::Ws(w) => w.recv().await,
            // Nothing to read: wait until the client drops the body.
            Socket::Sse(s) => {
                s.tx.closed().await;
                None
            }
        }
    }

    /// Write `frames` with one flush (nothing when there are none).
    pub async fn send_all<D: Dialect>(
        &mut self,
        frames: impl IntoIterator<Item = Utf8Bytes>,
        dialect: &D,
    ) -> Result<(), Gone> {
        match self {
            Socket::Ws(w) => w.send_all(frames, dialect).await,
            Socket::Sse(s) => {
                for f in frames {
                    let e = SseEvent::default().event(s.event).data(f.as_str());
                    s.tx.send(e).await.map_err(|_| Gone)?;
                }
                Ok(())
            }
        }
    }

    /// Say why the socket closes (bounded in time); an SSE stream just
    /// ends (once the driver drops it).
    pub async fn close(&mut self, code: u16, reason: &'static str) {
        if let Socket::Ws(w) = self {
            w.close(code, reason).await
        }
    }
}

pub use axum::response::sse::Event as SseEvent;

/// An SSE response body fed by the driver.
pub struct Sse {
    tx: tokio::sync::mpsc::Sender<SseEvent>,
    event: &'static str,
}

/// A client WebSocket.
pub struct Ws {
    ws: WebSocket,
    idle: Duration,
    stats: Arc<NetStats>,
    /// When something was last heard.
    heard: Instant,
    /// Whether a ping went out since then.
    pinged: bool,
    /// The keepalive deadline's timer, kept across reads: the driver
    /// re-polls `recv` after every delivery, and a timer made afresh each
    /// time was registered and removed each time.
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// The deadline `timer` is set for.
    armed: Instant,
}

impl Ws {
    pub fn new(ws: WebSocket, ctx: &Ctx) -> Ws {
        let now = Instant::now();
        let idle = ctx.settings.idle_timeout;
        Ws {
            ws,
            idle,
            stats: ctx.net.clone(),
            heard: now,
            pinged: false,
            timer: Box::pin(tokio::time::sleep_until(now + idle / 2)),
            armed: now + idle / 2,
        }
    }

    /// The next message, or None when the connection is over (closed by
    /// the client, failed, or idle past the timeout; any close frame owed
    /// has been sent).
    pub async fn recv(&mut self) -> Option<Message> {
        loop {
            let wake = if self.pinged {
                self.heard + self.idle
            } else {
                self.heard + self.idle / 2
            };
            if wake != self.armed {
                self.timer.as_mut().reset(wake);
                self.armed = wake;
            }
            tokio::select! {
                read = self.ws.recv() => {
                    self.heard = Instant::now();
                    self.pinged = false;
                    return match read? {
                        Ok(m) => Some(m),
                        Err(e) => {
                            if let Some((code, reason)) = crate::net::ws::close_for_error(&e) {
                                self.close(code, reason).await;
                            }
                            None
                        }
                    };
                }
                _ = self.timer.as_mut() => {}
            }
            if !self.pinged {
                self.pinged = true;
                if self
                    .ws
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
            self.close(1001, "idle timeout").await;
            return None;
        }
    }

    /// Write `frames` with one flush (nothing when there are none).
    pub async fn send_all<D: Dialect>(
        &mut self,
        frames: impl IntoIterator<Item = Utf8Bytes>,
        dialect: &D,
    ) -> Result<(), Gone> {
        let mut fed = false;
        for f in frames {
            self.ws.feed(dialect.outgoing(f)).await.map_err(|_| Gone)?;
            fed = true;
        }
        if fed {
            self.ws.flush().await.map_err(|_| Gone)?;
        }
        Ok(())
    }

    /// Say why the socket closes (bounded in time).
    pub async fn close(&mut self, code: u16, reason: &'static str) {
        let frame = Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }));
        let _ = tokio::time::timeout(CLOSE_WAIT, self.ws.send(frame)).await;
    }
}
