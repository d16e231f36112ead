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
use crate::net::WsStream;
use axum::body::Bytes;
use axum::extract::ws::{Message, Utf8Bytes};
use futures_util::{SinkExt, StreamExt};
use std::io::IoSlice;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as Wire;

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
    pub fn ws(ws: WsStream, ctx: &Ctx) -> Socket {
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
    ws: WsStream,
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
    /// A batch's data frames, header and payload (kept: not regrown for
    /// every batch).
    data: Vec<(Head, Bytes)>,
}

impl Ws {
    pub fn new(ws: WsStream, ctx: &Ctx) -> Ws {
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
            data: Vec::new(),
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
                read = self.ws.next() => {
                    self.heard = Instant::now();
                    self.pinged = false;
                    return match read? {
                        Ok(m) => Some(incoming(m)?),
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
                if self.ws.send(Wire::Ping(Bytes::new())).await.is_err() {
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
    ///
    /// Data frames skip the WebSocket library: each goes out as a header
    /// made here and its payload as fan-out rendered it (bytes shared by
    /// every subscriber), side by side in one vectored write, with no copy
    /// into a per-connection buffer. What the library queued itself (a pong,
    /// a ping) is flushed first, so frames never interleave.
    pub async fn send_all<D: Dialect>(
        &mut self,
        frames: impl IntoIterator<Item = Utf8Bytes>,
        dialect: &D,
    ) -> Result<(), Gone> {
        let mut data = std::mem::take(&mut self.data);
        data.clear();
        let sent = self.frame_all(frames, dialect, &mut data).await;
        data.clear();
        self.data = data;
        sent
    }

    async fn frame_all<D: Dialect>(
        &mut self,
        frames: impl IntoIterator<Item = Utf8Bytes>,
        dialect: &D,
        data: &mut Vec<(Head, Bytes)>,
    ) -> Result<(), Gone> {
        for f in frames {
            let (opcode, payload) = match dialect.outgoing(f) {
                Message::Text(t) => (OP_TEXT, Bytes::from(t)),
                Message::Binary(b) => (OP_BINARY, b),
                // No dialect sends control frames this way; the library
                // writes them, after the data before them.
                other => {
                    self.write_raw(data).await?;
                    data.clear();
                    self.ws.send(outgoing(other)).await.map_err(|_| Gone)?;
                    continue;
                }
            };
            data.push((Head::new(opcode, payload.len()), payload));
        }
        self.write_raw(data).await
    }

    /// Write data frames, each its header and its payload.
    async fn write_raw(&mut self, data: &[(Head, Bytes)]) -> Result<(), Gone> {
        if data.is_empty() {
            return Ok(());
        }
        self.ws.flush().await.map_err(|_| Gone)?;
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(2 * data.len());
        for (h, p) in data {
            slices.push(IoSlice::new(h.bytes()));
            if !p.is_empty() {
                slices.push(IoSlice::new(p));
            }
        }
        let io = self.ws.get_mut();
        let mut rest: &mut [IoSlice<'_>] = &mut slices;
        while !rest.is_empty() {
            let n = io.write_vectored(rest).await.map_err(|_| Gone)?;
            if n == 0 {
                return Err(Gone);
            }
            IoSlice::advance_slices(&mut rest, n);
        }
        io.flush().await.map_err(|_| Gone)
    }

    /// Say why the socket closes (bounded in time).
    pub async fn close(&mut self, code: u16, reason: &'static str) {
        let frame = Wire::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        }));
        let _ = tokio::time::timeout(CLOSE_WAIT, self.ws.send(frame)).await;
    }
}

const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;

/// A server frame's header (RFC 6455 section 5.2): FIN and the opcode, the
/// payload length in 7, 7+16 or 7+64 bits, no mask (servers do not mask).
struct Head {
    buf: [u8; 10],
    len: u8,
}

impl Head {
    fn new(opcode: u8, payload: usize) -> Head {
        let mut buf = [0u8; 10];
        buf[0] = 0x80 | opcode;
        let len = if payload < 126 {
            buf[1] = payload as u8;
            2
        } else if let Ok(short) = u16::try_from(payload) {
            buf[1] = 126;
            buf[2..4].copy_from_slice(&short.to_be_bytes());
            4
        } else {
            buf[1] = 127;
            buf[2..10].copy_from_slice(&(payload as u64).to_be_bytes());
            10
        };
        Head { buf, len }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }
}

/// A message read from the socket as the driver takes it (text checked
/// as UTF-8 by the library already). None: a raw frame, which a reader
/// never yields.
fn incoming(m: Wire) -> Option<Message> {
    Some(match m {
        Wire::Text(t) => Message::Text(Utf8Bytes::try_from(Bytes::from(t)).ok()?),
        Wire::Binary(b) => Message::Binary(b),
        Wire::Ping(b) => Message::Ping(b),
        Wire::Pong(b) => Message::Pong(b),
        Wire::Close(_) => Message::Close(None),
        Wire::Frame(_) => return None,
    })
}

/// A control message of the driver's for the library to write.
fn outgoing(m: Message) -> Wire {
    match m {
        Message::Text(t) => Wire::Text(Bytes::from(t).try_into().unwrap_or_default()),
        Message::Binary(b) => Wire::Binary(b),
        Message::Ping(b) => Wire::Ping(b),
        Message::Pong(b) => Wire::Pong(b),
        Message::Close(c) => Wire::Close(c.map(|c| CloseFrame {
            code: CloseCode::from(c.code),
            reason: c.reason.as_str().to_owned().into(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each length form, at its edges, as RFC 6455 lays it out.
    #[test]
    fn frame_headers_carry_the_length_in_the_shortest_form() {
        assert_eq!(Head::new(OP_TEXT, 0).bytes(), [0x81, 0]);
        assert_eq!(Head::new(OP_TEXT, 125).bytes(), [0x81, 125]);
        assert_eq!(Head::new(OP_BINARY, 126).bytes(), [0x82, 126, 0, 126]);
        assert_eq!(Head::new(OP_TEXT, 65535).bytes(), [0x81, 126, 0xff, 0xff]);
        assert_eq!(
            Head::new(OP_TEXT, 65536).bytes(),
            [0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]
        );
    }
}
