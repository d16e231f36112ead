//! Replication frames over a WebSocket: one frame per binary message. The
//! same code serves both ends (the hub's axum socket, the edge's
//! tokio-tungstenite client), through the small `WsMsg` trait.
//!
//! A writer owns the sending half: it sends frames in order, pings every
//! `PING_EVERY` so a silent peer is noticed (the reader gives up after
//! `IDLE` without any message), and closes the socket when the session
//! drops its sink: 1001 when the relay is shutting down, 1000 otherwise.
//! The writer is a future the session's owner runs next to the session
//! (`tokio::join!`), in the same task: no task of its own.

use super::{FrameSink, FrameSource, SessionError};
use crate::engine::now_ms;
use futures_util::future::BoxFuture;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Pings keep NAT mappings alive and prove the peer is there.
pub const PING_EVERY: Duration = Duration::from_secs(15);
/// Nothing at all heard for this long: the link is dead.
pub const IDLE: Duration = Duration::from_secs(45);
/// After the session let go of its sink, how long the writer may take to
/// flush and close before it gives up (a peer that stopped reading).
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// What a received message means to the replication session.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    Binary(Vec<u8>),
    Text,
    /// Ping or pong (the library answers pings itself).
    Control,
    Close,
}

/// The two WebSocket libraries' message types, seen alike.
pub trait WsMsg: Sized + Send + 'static {
    fn binary(bytes: Vec<u8>) -> Self;
    fn ping() -> Self;
    fn close(code: u16, reason: &str) -> Self;
    fn incoming(self) -> Incoming;
}

impl WsMsg for axum::extract::ws::Message {
    fn binary(bytes: Vec<u8>) -> Self {
        Self::Binary(bytes.into())
    }
    fn ping() -> Self {
        Self::Ping(Default::default())
    }
    fn close(code: u16, reason: &str) -> Self {
        Self::Close(Some(axum::extract::ws::CloseFrame {
            code,
            reason: close_reason(reason).into(),
        }))
    }
    fn incoming(self) -> Incoming {
        match self {
            Self::Binary(b) => Incoming::Binary(b.to_vec()),
            Self::Text(_) => Incoming::Text,
            Self::Ping(_) | Self::Pong(_) => Incoming::Control,
            Self::Close(_) => Incoming::Close,
        }
    }
}

impl WsMsg for tungstenite::Message {
    fn binary(bytes: Vec<u8>) -> Self {
        Self::Binary(bytes.into())
    }
    fn ping() -> Self {
        Self::Ping(Default::default())
    }
    fn close(code: u16, reason: &str) -> Self {
        Self::Close(Some(tungstenite::protocol::CloseFrame {
            code: code.into(),
            reason: close_reason(reason).into(),
        }))
    }
    fn incoming(self) -> Incoming {
        match self {
            Self::Binary(b) => Incoming::Binary(b.to_vec()),
            Self::Text(_) => Incoming::Text,
            Self::Ping(_) | Self::Pong(_) | Self::Frame(_) => Incoming::Control,
            Self::Close(_) => Incoming::Close,
        }
    }
}

/// A close reason fits in 123 bytes (cut at a char boundary).
pub fn close_reason(reason: &str) -> String {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}

/// The sending half: frames go to the writer.
pub struct WsSink {
    tx: mpsc::Sender<Vec<u8>>,
    /// Dropped with the sink: starts the writer's close grace.
    _alive: oneshot::Sender<()>,
}

impl FrameSink for WsSink {
    async fn send(&mut self, bytes: Vec<u8>) -> Result<(), SessionError> {
        self.tx
            .send(bytes)
            .await
            .map_err(|_| SessionError::Transport("connection closed".into()))
    }
}

/// The writer: run it next to the session; it ends once the session has
/// dropped its [`WsSink`] and the close is sent, or [`CLOSE_GRACE`] after
/// the drop, or when the socket fails.
pub type Writer = BoxFuture<'static, ()>;

/// The receiving half. `contact`, when given, is set to the time of every
/// message heard (for "last contact" in status).
pub struct WsSource<S> {
    stream: SplitStream<S>,
    contact: Option<Arc<AtomicU64>>,
    /// The close code a read error calls for (0: none), for the writer.
    close: Arc<AtomicU16>,
}

impl<S, M, E> FrameSource for WsSource<S>
where
    S: Stream<Item = Result<M, E>> + Sink<M> + Send + Unpin,
    M: WsMsg,
    E: std::error::Error + 'static,
{
    async fn recv(&mut self) -> Result<Option<Vec<u8>>, SessionError> {
        loop {
            let next = tokio::time::timeout(IDLE, self.stream.next())
                .await
                .map_err(|_| {
                    SessionError::Transport(format!("nothing heard for {} s", IDLE.as_secs()))
                })?;
            let Some(msg) = next else { return Ok(None) };
            let msg = msg.map_err(|e| {
                // Invalid UTF-8 (1007) or too big (1009): the writer says so.
                if let Some((code, _)) = crate::net::ws::close_for_error(&e) {
                    self.close.store(code, Relaxed);
                }
                SessionError::Transport(e.to_string())
            })?;
            if let Some(c) = &self.contact {
                c.store(now_ms(), Relaxed);
            }
            match msg.incoming() {
                Incoming::Binary(b) => return Ok(Some(b)),
                Incoming::Control => continue,
                Incoming::Close => return Ok(None),
                Incoming::Text => {
                    return Err(SessionError::Protocol(
                        "text message on the replication socket (frames are binary)".into(),
                    ))
                }
            }
        }
    }
}

/// Split a socket into a frame sink and source, and the writer to run next
/// to them. `shutdown` picks the close code.
pub fn split<S, M, E>(
    ws: S,
    contact: Option<Arc<AtomicU64>>,
    shutdown: watch::Receiver<bool>,
) -> (WsSink, WsSource<S>, Writer)
where
    S: Stream<Item = Result<M, E>> + Sink<M> + Send + Unpin + 'static,
    M: WsMsg,
{
    let (sink, stream) = ws.split();
    let (tx, rx) = mpsc::channel(4);
    let close = Arc::new(AtomicU16::new(0));
    let code = close.clone();
    let (alive, gone) = oneshot::channel::<()>();
    let writer = Box::pin(async move {
        let grace = async {
            let _ = gone.await;
            tokio::time::sleep(CLOSE_GRACE).await;
        };
        tokio::select! {
            _ = write_loop(sink, rx, shutdown, code) => {}
            _ = grace => {}
        }
    });
    (
        WsSink { tx, _alive: alive },
        WsSource {
            stream,
            contact,
            close,
        },
        writer,
    )
}

async fn write_loop<S, M>(
    mut sink: SplitSink<S, M>,
    mut rx: mpsc::Receiver<Vec<u8>>,
    shutdown: watch::Receiver<bool>,
    close: Arc<AtomicU16>,
) where
    S: Sink<M> + Unpin,
    M: WsMsg,
{
    let mut tick = tokio::time::interval(PING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            next = rx.recv() => match next {
                Some(bytes) => {
                    if sink.send(M::binary(bytes)).await.is_err() {
                        return;
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                if sink.send(M::ping()).await.is_err() {
                    return;
                }
            }
        }
    }
    let (code, reason) = match close.load(Relaxed) {
        1007 => (1007, "invalid UTF-8 in a text message"),
        1009 => (1009, "message too big"),
        _ if *shutdown.borrow() => (1001, "relay shutting down"),
        _ => (1000, "session ended"),
    };
    let _ = sink.send(M::close(code, reason)).await;
    let _ = sink.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_fit_the_frame() {
        assert_eq!(close_reason("bye"), "bye");
        let long = "é".repeat(100);
        let cut = close_reason(&long);
        assert!(cut.len() <= 123 && long.starts_with(&cut));
    }

    #[test]
    fn messages_map_alike() {
        use axum::extract::ws::Message as A;
        use tungstenite::Message as T;
        assert_eq!(A::binary(vec![1]).incoming(), Incoming::Binary(vec![1]));
        assert_eq!(T::binary(vec![1]).incoming(), Incoming::Binary(vec![1]));
        assert_eq!(A::ping().incoming(), Incoming::Control);
        assert_eq!(T::ping().incoming(), Incoming::Control);
        assert_eq!(A::close(1001, "x").incoming(), Incoming::Close);
        assert_eq!(T::close(1001, "x").incoming(), Incoming::Close);
        assert_eq!(T::Text("x".into()).incoming(), Incoming::Text);
    }
}
