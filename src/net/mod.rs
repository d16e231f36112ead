//! The HTTP/WebSocket listener, plain or TLS: our own accept loop around
//! hyper instead of `axum::serve`, so every stage of a connection is bounded.
//!
//! - **Accept.** `TCP_NODELAY` on every socket. Admission takes permits
//!   before a byte is read ([`admission`]): the connection limit, the
//!   handshake limit and the per-address limits. A refused connection gets
//!   `503` with the reason (plain listener; on TLS it is closed), is counted
//!   by reason in `/metrics` and logged at most once a second.
//! - **Out of descriptors.** `accept` failing with EMFILE/ENFILE frees a
//!   spare descriptor, accepts the waiting connection with it, answers `503`
//!   and closes it, so neither a silent hang nor a busy loop; logged and
//!   counted. [`nofile`] sizes the connection limit so this stays rare.
//! - **Handshake.** The TLS handshake and each request's headers must
//!   finish within `server.header_timeout` (hyper's header-read timeout,
//!   which also closes an idle keep-alive connection). A connection counts
//!   as handshaking until its first request is dispatched.
//! - **Request.** A request (body and handler) must finish within
//!   `server.request_timeout`, else `408`.
//! - **Writes.** [`io::GuardedIo`] fails a write blocked for
//!   `server.write_timeout`, on HTTP and on upgraded WebSockets alike.
//! - **Idle WebSockets** are the connection driver's part (`conn::socket`).
//!
//! Every connection task lives in the loop's `JoinSet`, and an upgraded
//! WebSocket runs on in its connection's task ([`upgrade`]), so dropping
//! the loop ends them all. On shutdown the loop stops accepting, tells
//! HTTP connections to finish (upgraded WebSockets follow the shutdown
//! signal themselves, close frame and all) and returns once they have.
//! The loop itself is a task of the app's [`crate::tasks::Tasks`].

pub mod admission;
pub mod client;
pub mod io;
pub mod nofile;
pub mod stats;
pub mod upgrade;
pub mod ws;

pub use upgrade::{Adopt, Upgrade, WsStream};

use admission::{Admission, ConnSlot, HandshakeSlot, Limits};
use futures_util::FutureExt;
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use io::{GuardedIo, IoPolicy};
use stats::{LogLimiter, NetStats, Refusal};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// Refused connections answered at once, each lingering up to
/// [`LINGER`] so the client reads the 503 instead of a reset; beyond this
/// many at a time a refused socket is simply closed.
const REFUSAL_LANE: usize = 32;
const LINGER: Duration = Duration::from_secs(1);

pub struct ListenerConfig {
    pub limits: Limits,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
    pub write_timeout: Duration,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// What every connection task shares.
struct Shared {
    app: axum::Router,
    header_timeout: Duration,
    request_timeout: Duration,
    tls: Option<tokio_rustls::TlsAcceptor>,
    policy: Arc<IoPolicy>,
    stats: Arc<NetStats>,
    shutdown: watch::Receiver<bool>,
    /// Refusals and descriptor exhaustion: one line a second at most.
    refusal_log: LogLimiter,
    accept_log: LogLimiter,
    lane: Arc<Semaphore>,
}

/// The accept loop serving `app` on `listener` until `shutdown` turns
/// true, and until every connection it accepted has ended; the caller
/// spawns it where it owns its tasks.
pub fn serve(
    listener: TcpListener,
    app: axum::Router,
    cfg: ListenerConfig,
    stats: Arc<NetStats>,
    shutdown: watch::Receiver<bool>,
) -> impl std::future::Future<Output = std::io::Result<()>> + Send + 'static {
    let shared = Arc::new(Shared {
        app,
        header_timeout: cfg.header_timeout,
        request_timeout: cfg.request_timeout,
        tls: cfg.tls.map(tokio_rustls::TlsAcceptor::from),
        policy: Arc::new(IoPolicy {
            write_timeout: cfg.write_timeout,
            stats: stats.clone(),
            log: LogLimiter::new(Duration::from_secs(1)),
        }),
        stats: stats.clone(),
        shutdown,
        refusal_log: LogLimiter::new(Duration::from_secs(1)),
        accept_log: LogLimiter::new(Duration::from_secs(1)),
        lane: Arc::new(Semaphore::new(REFUSAL_LANE)),
    });
    let admission = Admission::new(cfg.limits, stats);
    accept_loop(listener, shared, admission)
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    admission: Arc<Admission>,
) -> std::io::Result<()> {
    let mut conns = JoinSet::new();
    let mut spare = Spare::open();
    let mut shutdown = shared.shutdown.clone();
    loop {
        tokio::select! {
            biased;
            _ = stopped(&mut shutdown) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            r = listener.accept() => match r {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    match admission.admit(peer.ip()) {
                        Ok((slot, hs)) => {
                            conns.spawn(serve_conn(shared.clone(), tcp, peer, slot, hs));
                        }
                        Err(why) => {
                            if let Some(linger) = refuse(&shared, tcp, peer, why) {
                                conns.spawn(linger);
                            }
                        }
                    }
                }
                Err(e) => {
                    shared.stats.accept_errors.fetch_add(1, Relaxed);
                    if out_of_descriptors(&e) {
                        spare.shed(&listener, &shared).await;
                    } else {
                        // ECONNABORTED and the like: transient, but never spin.
                        if let Some(skipped) = shared.accept_log.allow(Instant::now()) {
                            tracing::warn!(error = %e, similar_since_last = skipped, "accept failed");
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
    Ok(())
}

/// Resolves once shutdown has started (holding no borrow of the flag).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}

/// The 503 a refused connection gets.
fn refusal_response(why: Refusal) -> String {
    let body = format!("{}\n", why.message());
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn log_refusal(shared: &Shared, peer: SocketAddr, why: Refusal) {
    shared.stats.refused(why);
    if let Some(skipped) = shared.refusal_log.allow(Instant::now()) {
        tracing::warn!(
            %peer,
            reason = why.label(),
            similar_since_last = skipped,
            "connection refused: {}",
            why.message()
        );
    }
}

/// Count, log and answer a refused connection. The returned future, if
/// any, lingers on the socket so the client reads the answer.
fn refuse(
    shared: &Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    why: Refusal,
) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
    log_refusal(shared, peer, why);
    if shared.tls.is_some() {
        // Answering in TLS would cost a handshake per refusal: just close.
        return None;
    }
    // A fresh socket's send buffer is empty: the answer fits without waiting.
    let _ = tcp.try_write(refusal_response(why).as_bytes());
    let permit = shared.lane.clone().try_acquire_owned().ok()?;
    Some(async move {
        let mut tcp = tcp;
        // Closing with unread request bytes would send a reset that can
        // destroy the answer in flight: half-close, then drain briefly.
        let _ = tcp.shutdown().await;
        let mut sink = [0u8; 4096];
        let _ = tokio::time::timeout(LINGER, async {
            let mut left = 64 * 1024usize;
            while left > 0 {
                match tcp.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        })
        .await;
        drop(permit);
    })
}

/// One descriptor held in reserve: when `accept` fails for want of
/// descriptors, it is freed to accept the waiting connection, answer it and
/// close it, then taken again.
struct Spare(Option<std::fs::File>);

impl Spare {
    fn open() -> Spare {
        Spare(std::fs::File::open("/dev/null").ok())
    }

    async fn shed(&mut self, listener: &TcpListener, shared: &Shared) {
        let had_spare = self.0.take().is_some();
        let mut answered = false;
        if had_spare {
            if let Some(Ok((tcp, peer))) = listener.accept().now_or_never() {
                log_refusal(shared, peer, Refusal::NoDescriptors);
                if shared.tls.is_none() {
                    let _ = tcp.try_write(refusal_response(Refusal::NoDescriptors).as_bytes());
                }
                answered = true;
            }
        }
        if !answered {
            shared.stats.refused(Refusal::NoDescriptors);
        }
        if let Some(skipped) = shared.accept_log.allow(Instant::now()) {
            tracing::error!(
                similar_since_last = skipped,
                "out of file descriptors: new connections are refused with 503; \
                 raise the limit (LimitNOFILE=) or lower server.max_connections"
            );
        }
        *self = Spare::open();
        if self.0.is_none() || !answered {
            // Nothing to free (or nothing was waiting): let descriptors come
            // back instead of spinning on accept.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One connection: TLS handshake (if any), then HTTP/1.1 until it closes or
/// is upgraded.
async fn serve_conn(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    slot: ConnSlot,
    hs: HandshakeSlot,
) {
    let io = GuardedIo::new(tcp, peer, shared.policy.clone(), slot);
    let Some(acceptor) = shared.tls.clone() else {
        return serve_http(shared, io, peer, hs).await;
    };
    // Bounded in time by the header timeout, and cut short by shutdown: a
    // connection still in its handshake has nothing to say goodbye to.
    let mut shutdown = shared.shutdown.clone();
    let handshake = tokio::time::timeout(shared.header_timeout, acceptor.accept(io));
    let done = tokio::select! {
        r = handshake => r,
        _ = stopped(&mut shutdown) => {
            tracing::debug!(%peer, "TLS handshake cut short by shutdown");
            return;
        }
    };
    match done {
        Ok(Ok(tls)) => serve_http(shared, tls, peer, hs).await,
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => {
            shared.stats.header_timeouts.fetch_add(1, Relaxed);
            tracing::debug!(%peer, "TLS handshake timed out (server.header_timeout)");
        }
    }
}

async fn serve_http<I>(shared: Arc<Shared>, io: I, peer: SocketAddr, hs: HandshakeSlot)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let router = TowerToHyperService::new(shared.app.clone());
    let handshake = Mutex::new(Some(hs));
    let adopt = Adopt::default();
    let slot = adopt.clone();
    let timeout = shared.request_timeout;
    let stats = shared.stats.clone();
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        // The first request is in: the connection is past its handshake.
        if let Ok(mut h) = handshake.lock() {
            h.take();
        }
        req.extensions_mut().insert(slot.clone());
        let call = router.call(req);
        let stats = stats.clone();
        async move {
            match tokio::time::timeout(timeout, call).await {
                Ok(r) => r,
                Err(_) => {
                    stats.request_timeouts.fetch_add(1, Relaxed);
                    let mut res = axum::response::Response::new(axum::body::Body::from(
                        "request timeout (server.request_timeout)\n",
                    ));
                    *res.status_mut() = axum::http::StatusCode::REQUEST_TIMEOUT;
                    res.headers_mut().insert(
                        axum::http::header::CONNECTION,
                        axum::http::HeaderValue::from_static("close"),
                    );
                    Ok(res)
                }
            }
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.header_timeout);
    let conn = builder
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let mut shutdown = shared.shutdown.clone();
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stopped(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            conn.as_mut().await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            shared.stats.header_timeouts.fetch_add(1, Relaxed);
            tracing::debug!(%peer, "request headers timed out (server.header_timeout)");
        } else {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
    // An upgraded WebSocket goes on here, in this task: its actor follows
    // the shutdown signal itself.
    if let Some(actor) = adopt.take() {
        actor.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_complete_http_responses() {
        let r = refusal_response(Refusal::MaxConnections);
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{r}"
        );
        assert_eq!(body, "connection limit reached\n");
    }
}
