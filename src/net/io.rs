//! The socket every connection runs on, plain or under TLS: it holds the
//! connection's admission slot for exactly as long as the descriptor is
//! open (through a WebSocket upgrade, which hands this very object on), and
//! it enforces `server.write_timeout`: a write that makes no progress for
//! that long fails with `TimedOut`, so a client that stopped reading is
//! disconnected by whichever protocol is writing to it (HTTP responses,
//! every WebSocket dialect, the replication endpoint) with one mechanism.

use super::admission::ConnSlot;
use super::stats::{LogLimiter, NetStats};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Shared by every connection of a listener.
pub struct IoPolicy {
    pub write_timeout: Duration,
    pub stats: Arc<NetStats>,
    pub log: LogLimiter,
}

pub struct GuardedIo<S> {
    inner: S,
    peer: SocketAddr,
    policy: Arc<IoPolicy>,
    /// Armed while a write is blocked; fires after `write_timeout`.
    stall: Option<Pin<Box<Sleep>>>,
    /// Set once the write timeout fired: every later call fails.
    dead: bool,
    _slot: ConnSlot,
}

impl<S> GuardedIo<S> {
    pub fn new(inner: S, peer: SocketAddr, policy: Arc<IoPolicy>, slot: ConnSlot) -> Self {
        GuardedIo {
            inner,
            peer,
            policy,
            stall: None,
            dead: false,
            _slot: slot,
        }
    }

    fn timed_out() -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "the client accepted no data within server.write_timeout",
        )
    }

    /// The write is blocked: arm the stall timer, or fail if it has fired.
    fn blocked<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let wait = self.policy.write_timeout;
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(wait)));
        if stall.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.dead = true;
        self.stall = None;
        self.policy.stats.write_timeouts.fetch_add(1, Relaxed);
        if let Some(skipped) = self.policy.log.allow(Instant::now()) {
            tracing::warn!(
                peer = %self.peer,
                timeout_s = wait.as_secs_f64(),
                similar_since_last = skipped,
                "client stopped reading; disconnecting it (server.write_timeout)"
            );
        }
        Poll::Ready(Err(Self::timed_out()))
    }

    fn progress<T>(&mut self, r: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                self.stall = None;
                Poll::Ready(r)
            }
            Poll::Pending => self.blocked(cx),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for GuardedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.dead {
            return Poll::Ready(Err(Self::timed_out()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for GuardedIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.dead {
            return Poll::Ready(Err(Self::timed_out()));
        }
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.progress(r, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.dead {
            return Poll::Ready(Err(Self::timed_out()));
        }
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.progress(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.dead {
            return Poll::Ready(Err(Self::timed_out()));
        }
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.progress(r, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.dead {
            return Poll::Ready(Ok(()));
        }
        let r = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.progress(r, cx)
    }
}
