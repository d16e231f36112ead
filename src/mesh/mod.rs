//! The peer mesh: QUIC between relays, membership proven with the mesh
//! secret, replication sessions from `replicate`, discovery by mDNS and by
//! static `peers`.
//!
//! - `tls`: certificate and rustls/quinn configs;
//! - `auth`: the membership proof and the mDNS tag;
//! - `wire`: length-prefixed frames on a QUIC stream;
//! - `discovery`: mDNS advert and browse;
//! - this file: the endpoint, accepting, dialling with backoff, and one
//!   session per connection (one connection per pair of relays).
//!
//! Incoming connections are bounded like the TLS listener's handshakes
//! (`crate::net::admission`): one that has not finished its QUIC
//! handshake, membership proof and hello holds a place of
//! `mesh.max_handshakes` (and of `mesh.max_handshakes_per_ip` for its
//! address) for at most `mesh.handshake_timeout`; beyond the bound a new
//! one is refused at once (`Incoming::refuse`), before any cryptography.
//! Only an address that answered a QUIC Retry takes a place: a flood from
//! forged source addresses gets stateless Retry packets and holds nothing.

mod auth;
mod discovery;
mod tls;
mod wire;

use crate::config::MeshSettings;
use crate::engine::{now_ms, Engine};
use crate::metrics::Metrics;
use crate::model::NodeId;
use crate::net::admission::{Bound, Full, Held};
use crate::net::stats::LogLimiter;
use crate::replicate::backoff::{jitter_seed, Backoff};
use crate::replicate::frame::{Frame, PROTO_VERSION};
use crate::replicate::session::{self, recv_frame, send_frame, Greeting};
use crate::replicate::{LinkGuard, Links, SessionError, SessionOpts};
use crate::tasks::Tasks;
use auth::{Membership, Role};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinSet;
use wire::{QuicSink, QuicSource};

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("mesh TLS: {0}")]
    Tls(String),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("cannot listen for the mesh on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("mDNS: {0}")]
    Mdns(String),
}

/// Everything a connection handler needs.
struct Ctx {
    engine: Arc<Engine>,
    links: Arc<Links>,
    membership: Membership,
    /// `spaces` and `peer_spaces`: what each session carries.
    settings: MeshSettings,
    endpoint: quinn::Endpoint,
    shutdown: watch::Receiver<bool>,
    /// Incoming connections in their handshake (see the module doc).
    handshakes: Arc<Bound>,
    /// Refusals at that bound: one line a second at most.
    refusal_log: LogLimiter,
    /// Connections that failed before their hello (refused in the QUIC or
    /// the membership handshake, garbage, timed out): one line a second at
    /// most. Anyone who can reach the port can cause them, and a log line
    /// each would be a flood of writes on an SD card.
    failure_log: LogLimiter,
}

/// The running mesh: its tasks (accept loop, dialers, discovery) run in
/// the app's [`Tasks`] and end on its signal; `close` then closes the
/// QUIC endpoint.
pub struct Mesh {
    pub local_addr: SocketAddr,
    endpoint: quinn::Endpoint,
}

impl Mesh {
    pub fn start(
        settings: &MeshSettings,
        dir: &Path,
        engine: Arc<Engine>,
        links: Arc<Links>,
        tasks: &Tasks,
    ) -> Result<Mesh, MeshError> {
        let shutdown = tasks.signal();
        let (cert, key) = tls::load_or_create_identity(dir)?;
        let mut endpoint = quinn::Endpoint::server(tls::server_config(cert, key)?, settings.listen)
            .map_err(|e| MeshError::Bind(settings.listen, e))?;
        endpoint.set_default_client_config(tls::client_config()?);
        let local_addr = endpoint
            .local_addr()
            .map_err(|e| MeshError::Bind(settings.listen, e))?;
        let membership = Membership::new(&settings.secret);
        let tag = membership.tag();
        let ctx = Arc::new(Ctx {
            engine: engine.clone(),
            links,
            membership,
            settings: settings.clone(),
            endpoint: endpoint.clone(),
            shutdown,
            handshakes: Bound::new(settings.max_handshakes, settings.max_handshakes_per_ip),
            refusal_log: LogLimiter::new(Duration::from_secs(1)),
            failure_log: LogLimiter::new(Duration::from_secs(1)),
        });
        let d = match settings.mdns {
            true => Some(discovery::start(engine.node_id(), local_addr.port(), tag)?),
            false => None,
        };
        tasks.spawn("mesh accept loop", accept_loop(ctx.clone()));
        for p in &settings.peers {
            tasks.spawn("mesh dialer", dial_loop(ctx.clone(), p.clone(), None));
        }
        if let Some(d) = d {
            tasks.spawn("mesh discovery", discovery::run(d, ctx.clone()));
        }
        tracing::info!(%local_addr, peers = settings.peers.len(), mdns = settings.mdns, "mesh listening");
        Ok(Mesh {
            local_addr,
            endpoint,
        })
    }

    /// Close the endpoint once the mesh's tasks have ended (sessions end
    /// on the shutdown signal, saying goodbye), and wait up to `grace` for
    /// the connections to drain.
    pub async fn close(self, grace: Duration) {
        self.endpoint.close(0u32.into(), b"relay shutting down");
        let _ = tokio::time::timeout(grace, self.endpoint.wait_idle()).await;
    }
}

async fn accept_loop(ctx: Arc<Ctx>) {
    let mut conns = JoinSet::new();
    let mut stop = ctx.shutdown.clone();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            incoming = ctx.endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                // An address is believed only once it has answered a Retry
                // (RFC 9000, section 8.1): a flood from forged addresses
                // never sees the Retry, so each of its packets costs one
                // stateless reply and holds no place of the bound.
                if !incoming.remote_address_validated() {
                    ctx.engine.metrics.mesh_retries.fetch_add(1, Relaxed);
                    if let Err(e) = incoming.retry() {
                        e.into_incoming().refuse();
                    }
                    continue;
                }
                match admit(&ctx, incoming.remote_address()) {
                    Some(slot) => {
                        conns.spawn(accept_one(ctx.clone(), incoming, slot));
                    }
                    None => incoming.refuse(),
                }
            }
        }
    }
    // Sessions see the shutdown signal themselves; give them a moment to
    // say goodbye, then abort what is left.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
}

/// A place among the incoming handshakes: given back (and the gauge
/// lowered) when dropped, after the hello or when the connection ends.
struct Handshaking {
    _held: Held,
    metrics: Arc<Metrics>,
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.metrics.mesh_handshakes.fetch_sub(1, Relaxed);
    }
}

/// Both of an incoming connection's handshake bounds: its place, and the
/// time by which the hello must be done.
struct Admitted {
    slot: Handshaking,
    deadline: tokio::time::Instant,
}

/// A place for a new incoming connection from `addr`, or None when the
/// bound is full (counted and logged; the caller refuses it).
fn admit(ctx: &Ctx, addr: SocketAddr) -> Option<Handshaking> {
    let m = &ctx.engine.metrics;
    match ctx.handshakes.take(addr.ip()) {
        Ok(held) => {
            m.mesh_handshakes.fetch_add(1, Relaxed);
            Some(Handshaking {
                _held: held,
                metrics: m.clone(),
            })
        }
        Err(full) => {
            let key = match full {
                Full::Total => {
                    m.mesh_refused_max_handshakes.fetch_add(1, Relaxed);
                    "mesh.max_handshakes"
                }
                Full::PerIp => {
                    m.mesh_refused_per_ip.fetch_add(1, Relaxed);
                    "mesh.max_handshakes_per_ip"
                }
            };
            if let Some(skipped) = ctx.refusal_log.allow(Instant::now()) {
                tracing::warn!(%addr, limit = key, similar_since_last = skipped, "mesh connection refused: too many handshakes in flight");
            }
            None
        }
    }
}

/// One incoming connection: the QUIC handshake (bounded by the deadline,
/// cut short by shutdown), then the session.
async fn accept_one(ctx: Arc<Ctx>, incoming: quinn::Incoming, slot: Handshaking) {
    let addr = incoming.remote_address();
    let deadline = tokio::time::Instant::now() + ctx.settings.handshake_timeout;
    let mut stop = ctx.shutdown.clone();
    // Dropping the handshake's future closes the connection.
    let done = tokio::select! {
        r = tokio::time::timeout_at(deadline, incoming) => r,
        _ = stop.wait_for(|s| *s) => return,
    };
    match done {
        Ok(Ok(conn)) => {
            let admitted = Admitted { slot, deadline };
            let _ = serve_conn(&ctx, conn, Role::Acceptor, "inbound", Some(admitted)).await;
        }
        Ok(Err(e)) => {
            // Wrong ALPN, not TLS, not QUIC: refused in the handshake.
            ctx.engine.metrics.mesh_refused.fetch_add(1, Relaxed);
            if let Some(skipped) = ctx.failure_log.allow(Instant::now()) {
                tracing::warn!(%addr, error = %e, similar_since_last = skipped, "mesh handshake refused");
            }
        }
        Err(_) => {
            ctx.engine
                .metrics
                .mesh_handshake_timeouts
                .fetch_add(1, Relaxed);
            tracing::debug!(%addr, "mesh QUIC handshake timed out (mesh.handshake_timeout)");
        }
    }
}

/// Dial `target` ("host:port") and keep a session up, redialling with
/// backoff forever (until shutdown). `node` is the peer's id when known.
async fn dial_loop(ctx: Arc<Ctx>, target: String, mut node: Option<NodeId>) {
    // Discovery passes the node id it saw advertised; static peers none.
    let found = if node.is_some() { "mdns" } else { "static" };
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let mut stop = ctx.shutdown.clone();
    loop {
        if *stop.borrow() {
            return;
        }
        let already = node.is_some_and(|n| ctx.links.connected_to(n));
        if !already {
            let started = Instant::now();
            match dial_once(&ctx, &target, found).await {
                Ok((peer, reason)) => {
                    node = Some(peer);
                    tracing::info!(%target, %peer, %reason, "mesh session ended");
                }
                Err(e) => tracing::debug!(%target, error = %e, "mesh dial failed"),
            }
            if started.elapsed() > Duration::from_secs(30) {
                backoff.reset();
            }
        }
        let wait = if already {
            Duration::from_secs(5)
        } else {
            backoff.next(jitter_seed())
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

async fn dial_once(
    ctx: &Ctx,
    target: &str,
    found: &'static str,
) -> Result<(NodeId, String), String> {
    let addr = tokio::net::lookup_host(target)
        .await
        .map_err(|e| format!("resolving: {e}"))?
        .next()
        .ok_or("resolves to no address")?;
    let connecting = ctx
        .endpoint
        .connect(addr, "outpost")
        .map_err(|e| e.to_string())?;
    let mut stop = ctx.shutdown.clone();
    // Dropping the handshake's future abandons it.
    let conn = tokio::select! {
        r = connecting => r.map_err(|e| e.to_string())?,
        _ = stop.wait_for(|s| *s) => return Err(SessionError::ShuttingDown.to_string()),
    };
    serve_conn(ctx, conn, Role::Dialer, found, None).await
}

/// Prove membership, say hello, resolve duplicates, replicate. An
/// incoming connection comes `admitted`: its place is held until the
/// hello, which must come by its deadline.
async fn serve_conn(
    ctx: &Ctx,
    conn: quinn::Connection,
    role: Role,
    found: &'static str,
    admitted: Option<Admitted>,
) -> Result<(NodeId, String), String> {
    let addr = conn.remote_address();
    let result = session_on(ctx, &conn, role, found, admitted).await;
    match &result {
        Ok((_, reason)) => {
            // We said goodbye; let the peer read it and close first.
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.closed()).await;
            conn.close(0u32.into(), reason.as_bytes());
        }
        Err(Ended::Setup(SessionError::ShuttingDown)) => {
            tracing::debug!(%addr, "mesh connection closed during its handshake: relay shutting down");
            conn.close(0u32.into(), b"relay shutting down");
        }
        Err(Ended::Setup(e)) => {
            if let Some(skipped) = ctx.failure_log.allow(Instant::now()) {
                tracing::warn!(%addr, error = %e, similar_since_last = skipped, "mesh connection failed before its hello");
            }
            conn.close(1u32.into(), e.to_string().as_bytes());
        }
        Err(Ended::Session(e)) => {
            tracing::warn!(%addr, error = %e, "mesh connection ended");
            conn.close(1u32.into(), e.to_string().as_bytes());
        }
    }
    result.map_err(|e| e.to_string())
}

/// How a connection's handling failed: before its hello (anyone who can
/// reach the port can cause that; logged at most once a second), or in a
/// session with a proven member.
enum Ended {
    Setup(SessionError),
    Session(SessionError),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Setup(e) | Ended::Session(e) => e.fmt(f),
        }
    }
}

/// What the handshake leaves: the stream both ways, the link's entry in
/// `links` and the peer's hello.
struct Established {
    tx: QuicSink,
    rx: QuicSource,
    guard: LinkGuard,
    greeting: Greeting,
}

/// Open (or accept) the stream, prove membership both ways, say hello.
async fn establish(
    ctx: &Ctx,
    conn: &quinn::Connection,
    role: Role,
    found: &'static str,
) -> Result<Established, SessionError> {
    let transport = |e: &dyn std::fmt::Display| SessionError::Transport(e.to_string());
    let (send, recv) = match role {
        Role::Dialer => conn.open_bi().await.map_err(|e| transport(&e))?,
        Role::Acceptor => tokio::time::timeout(session::HELLO_TIMEOUT, conn.accept_bi())
            .await
            .map_err(|_| SessionError::Protocol("no stream opened within 10 s".into()))?
            .map_err(|e| transport(&e))?,
    };
    let (mut tx, mut rx) = (QuicSink(send), QuicSource(recv));
    if let Err(e) = prove_membership(ctx, conn, role, &mut tx, &mut rx).await {
        // Logged by serve_conn (at most once a second).
        ctx.engine.metrics.mesh_refused.fetch_add(1, Relaxed);
        return Err(e);
    }
    let guard = ctx.links.open(
        "mesh",
        conn.remote_address().to_string(),
        role == Role::Dialer,
        now_ms(),
    );
    let _ = guard.stats.found.set(found);
    let greeting = session::hello(&ctx.engine, &mut rx, &mut tx).await?;
    guard.stats.node.store(greeting.peer.0, Relaxed);
    Ok(Established {
        tx,
        rx,
        guard,
        greeting,
    })
}

async fn session_on(
    ctx: &Ctx,
    conn: &quinn::Connection,
    role: Role,
    found: &'static str,
    admitted: Option<Admitted>,
) -> Result<(NodeId, String), Ended> {
    // The proof and the hello wait on the peer. A stopping relay does not:
    // its accept loop would abort the connection after 2 s, which closes
    // it without a word, and a dialled one would hold the dial task.
    let mut stop = ctx.shutdown.clone();
    let setup = async {
        tokio::select! {
            r = establish(ctx, conn, role, found) => r,
            _ = stop.wait_for(|s| *s) => Err(SessionError::ShuttingDown),
        }
    };
    let est = match admitted {
        None => setup.await.map_err(Ended::Setup)?,
        Some(Admitted { slot, deadline }) => {
            let r = tokio::time::timeout_at(deadline, setup).await;
            // Through the hello (or failed): no longer handshaking.
            drop(slot);
            match r {
                Ok(r) => r.map_err(Ended::Setup)?,
                Err(_) => {
                    ctx.engine
                        .metrics
                        .mesh_handshake_timeouts
                        .fetch_add(1, Relaxed);
                    return Err(Ended::Setup(SessionError::Protocol(format!(
                        "membership proof and hello not done within {:?} (mesh.handshake_timeout)",
                        ctx.settings.handshake_timeout
                    ))));
                }
            }
        }
    };
    let Established {
        mut tx,
        rx,
        guard,
        greeting,
    } = est;
    let peer = greeting.peer;
    if !keep_against_duplicates(ctx, &guard.stats) {
        let reason = "duplicate connection to the same peer";
        let _ = send_frame(
            &mut tx,
            &Frame::Bye {
                reason: reason.into(),
            },
        )
        .await;
        return Ok((peer, reason.into()));
    }
    ctx.engine.metrics.mesh_sessions.fetch_add(1, Relaxed);
    tracing::info!(%peer, addr = %conn.remote_address(), "mesh session up");
    // `[mesh] spaces` / `peer_spaces`: the session sends and accepts only
    // these, vouching (covers) for what it holds back, so the peer's
    // version vector moves past them and the link never stalls.
    let opts = SessionOpts {
        cursor: format!("peer:{peer}"),
        spaces: ctx.settings.spaces_for(peer),
        batch_bytes: crate::replicate::frame::MAX_FRAME_BYTES,
    };
    let stats = guard.stats.clone();
    let session = session::run(
        ctx.engine.clone(),
        greeting,
        rx,
        tx,
        opts,
        stats,
        ctx.shutdown.clone(),
    );
    // QUIC measures the round trip itself; copy it for the status page.
    let rtt = async {
        loop {
            let us = conn.rtt().as_micros().min(u64::MAX as u128) as u64;
            guard.stats.rtt_us.store(us.max(1), Relaxed);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    let reason = tokio::select! {
        r = session => r.map_err(Ended::Session)?,
        never = rtt => never,
    };
    Ok((peer, reason))
}

/// Dialer proves first; the acceptor answers only to a valid proof, so a
/// stranger learns nothing, not even a proof to study.
async fn prove_membership(
    ctx: &Ctx,
    conn: &quinn::Connection,
    role: Role,
    tx: &mut QuicSink,
    rx: &mut QuicSource,
) -> Result<(), SessionError> {
    let mut ekm = [0u8; 32];
    conn.export_keying_material(&mut ekm, Membership::ekm_label(), b"")
        .map_err(|_| SessionError::Protocol("cannot export keying material".into()))?;
    let (mine, theirs) = match role {
        Role::Dialer => (Role::Dialer, Role::Acceptor),
        Role::Acceptor => (Role::Acceptor, Role::Dialer),
    };
    let proof = Frame::Proof {
        proto: PROTO_VERSION,
        proof: ctx.membership.prove(mine, &ekm),
    };
    if role == Role::Dialer {
        send_frame(tx, &proof).await?;
    }
    let got = tokio::time::timeout(session::HELLO_TIMEOUT, recv_frame(rx))
        .await
        .map_err(|_| SessionError::Protocol("no membership proof within 10 s".into()));
    // The acceptor answers a proof that does not verify by closing, and
    // says nothing more to a stranger: on the dialling side that close is
    // the only sign, so name the likely cause.
    let got = match (role, got) {
        (Role::Dialer, Ok(Err(e))) => return Err(refused_by_acceptor(&e.to_string())),
        (Role::Dialer, Ok(Ok(None))) => return Err(refused_by_acceptor("closed")),
        (_, got) => got??,
    };
    match got {
        Some(Frame::Proof { proto, .. }) if proto != PROTO_VERSION => {
            return Err(SessionError::Version(proto))
        }
        Some(Frame::Proof { proof: p, .. }) if ctx.membership.verify(theirs, &ekm, &p) => {}
        Some(Frame::Proof { .. }) => {
            return Err(SessionError::Protocol(
                "membership proof does not verify (wrong mesh secret?)".into(),
            ))
        }
        Some(Frame::Bye { reason }) => return Err(SessionError::PeerClosed(reason)),
        Some(_) => return Err(SessionError::Protocol("expected a membership proof".into())),
        None => return Err(SessionError::PeerClosed("closed before its proof".into())),
    }
    if role == Role::Acceptor {
        send_frame(tx, &proof).await?;
    }
    Ok(())
}

/// The acceptor closed instead of answering the dialler's proof.
fn refused_by_acceptor(what: &str) -> SessionError {
    SessionError::Protocol(format!(
        "the peer closed the connection instead of proving membership ({what}): \
         the most likely cause is a different mesh secret on the two relays \
         (mesh.secret / mesh.secret_file)"
    ))
}

/// Two relays may connect to each other at once (static peers both ways,
/// or both discovering the other). Both sides keep the connection dialled
/// by the relay with the lower node id, so exactly one survives. Returns
/// whether the new link stays; an older one that loses is told to close.
fn keep_against_duplicates(ctx: &Ctx, new: &crate::replicate::LinkStats) -> bool {
    let me = ctx.engine.node_id();
    let peer = NodeId(new.node.load(Relaxed));
    let preferred_outbound = me < peer;
    for old in ctx.links.snapshot() {
        if old.id == new.id || old.node.load(Relaxed) != peer.0 || old.kind != "mesh" {
            continue;
        }
        let new_pref = new.outbound == preferred_outbound;
        let old_pref = old.outbound == preferred_outbound;
        if new_pref && !old_pref {
            old.close.notify_one();
        } else {
            return false;
        }
    }
    true
}
