//! One replication session over any framed transport: hello, then both
//! directions at once. Outbound reads the local log (the log is the queue:
//! nothing is buffered per peer beyond a small window of batches) and waits
//! for durable acks; inbound applies the peer's batches in one store
//! transaction each and acks them after the commit.
//!
//! Every store read of a session (its version vector, the log and
//! snapshot pages, the cursor) runs on the blocking pool ([`read`]): a
//! session shares the async workers with every client connection.

use super::frame::{self, Frame, FrameError, PROTO_VERSION};
use super::plan::{self, InFlight, Start};
use super::stats::LinkStats;
use crate::engine::{off_worker, Engine, EngineError, Event, RenderCache, PAGE_BYTES};
use crate::model::{NodeId, VersionVector};
use crate::store::{Cap, OutcomeKind};
use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, watch};

/// Changes per batch at most (a batch is also split if its frame is too big).
const BATCH: usize = 256;
/// Batches sent and not yet acknowledged, at most.
const WINDOW: usize = 8;
/// The durable cursor is written at most this often (it only speeds up
/// restarts and measures backlog: the start point comes from version vectors).
const CURSOR_EVERY: Duration = Duration::from_secs(1);
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("transport: {0}")]
    Transport(String),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("peer speaks replication protocol {0}, this relay {PROTO_VERSION}")]
    Version(u32),
    #[error("the peer is this relay itself")]
    SameNode,
    #[error("peer closed: {0}")]
    PeerClosed(String),
    /// The relay stopped while the link was still being set up.
    #[error("relay shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Sends whole frames (already encoded).
pub trait FrameSink: Send {
    fn send(&mut self, bytes: Vec<u8>) -> impl Future<Output = Result<(), SessionError>> + Send;
}

/// Receives whole frames; `None` at a clean end of stream.
pub trait FrameSource: Send {
    fn recv(&mut self) -> impl Future<Output = Result<Option<Vec<u8>>, SessionError>> + Send;
}

/// `f` over the engine on the blocking pool (`engine::off_worker`).
async fn read<T: Send + 'static>(
    engine: &Arc<Engine>,
    f: impl FnOnce(&Engine) -> T + Send + 'static,
) -> T {
    let e = engine.clone();
    off_worker(move || f(&e)).await
}

/// Whether this relay holds `until` now (a pull-once session's target;
/// never when there is none).
async fn holds(engine: &Arc<Engine>, until: Option<&VersionVector>) -> Result<bool, SessionError> {
    let Some(t) = until else { return Ok(false) };
    let vv = read(engine, |e| e.version_vector()).await?;
    Ok(plan::holds(&vv, t, engine.node_id()))
}

pub async fn send_frame(tx: &mut impl FrameSink, f: &Frame) -> Result<(), SessionError> {
    tracing::trace!(frame = ?TraceFrame(f), "send");
    tx.send(frame::encode(f)?).await
}

pub async fn recv_frame(rx: &mut impl FrameSource) -> Result<Option<Frame>, SessionError> {
    match rx.recv().await? {
        Some(bytes) => {
            let f = frame::decode(&bytes)?;
            tracing::trace!(frame = ?TraceFrame(&f), "received");
            Ok(Some(f))
        }
        None => Ok(None),
    }
}

/// What the peer said in its hello, and our own position when we sent ours.
pub struct Greeting {
    pub peer: NodeId,
    pub peer_vv: VersionVector,
    /// Last local seq read before our version vector (see `plan::start`).
    head: u64,
    vv: VersionVector,
    /// `Engine::merges` before our version vector was read.
    merges: u64,
}

/// Exchange hellos. Refuses another protocol version and ourselves.
pub async fn hello(
    engine: &Arc<Engine>,
    rx: &mut impl FrameSource,
    tx: &mut impl FrameSink,
) -> Result<Greeting, SessionError> {
    // In this order (see `Greeting`): merges, head, then the vector.
    let (merges, head, vv) = read(engine, |e| {
        let (merges, head) = (e.merges(), e.last_seq());
        e.version_vector().map(|vv| (merges, head, vv))
    })
    .await?;
    let me = engine.node_id();
    send_frame(
        tx,
        &Frame::Hello {
            proto: PROTO_VERSION,
            node: me,
            vv: vv.clone(),
            software: format!("outpost {}", crate::VERSION),
        },
    )
    .await?;
    let reply = tokio::time::timeout(HELLO_TIMEOUT, recv_frame(rx))
        .await
        .map_err(|_| SessionError::Protocol("no hello within 10 s".into()))??;
    match reply {
        Some(Frame::Hello {
            proto,
            node,
            vv: peer_vv,
            ..
        }) => {
            if proto != PROTO_VERSION {
                return Err(SessionError::Version(proto));
            }
            if node == me {
                return Err(SessionError::SameNode);
            }
            Ok(Greeting {
                peer: node,
                peer_vv,
                head,
                vv,
                merges,
            })
        }
        Some(Frame::Bye { reason }) => Err(SessionError::PeerClosed(reason)),
        Some(other) => Err(SessionError::Protocol(format!(
            "expected hello, got {}",
            kind(&other)
        ))),
        None => Err(SessionError::PeerClosed("closed before hello".into())),
    }
}

pub struct SessionOpts {
    /// Durable cursor name (e.g. `peer:<node>` or `upstream`).
    pub cursor: String,
    /// Replicate only these spaces (all when None), both ways.
    pub spaces: Option<HashSet<String>>,
    /// A batch frame larger than this is split (a page of one change is
    /// sent whole, up to `frame::MAX_FRAME_BYTES`). Links use
    /// `MAX_FRAME_BYTES`; the simulator uses a few hundred bytes, so pages
    /// split and each part is acknowledged on its own.
    pub batch_bytes: usize,
}

/// Why a pull-once session ended well (see [`pull`]).
pub const PULLED: &str = "pulled everything the peer held at hello";

/// Run both directions until the peer leaves, an error, `shutdown`, or the
/// link is told to close (`stats.close`). Returns why it ended.
pub async fn run(
    engine: Arc<Engine>,
    greeting: Greeting,
    rx: impl FrameSource,
    tx: impl FrameSink,
    opts: SessionOpts,
    stats: Arc<LinkStats>,
    shutdown: watch::Receiver<bool>,
) -> Result<String, SessionError> {
    drive(engine, greeting, rx, tx, opts, stats, shutdown, None).await
}

/// As [`run`], but ends (with [`PULLED`]) as soon as this relay holds
/// every change the peer's hello counted: the log it lacked, or a state
/// snapshot ending in `snapshot_done {vv}`, and the covers the peer sends
/// at the end of its log. A cluster member bootstraps itself with it
/// (docs/scale-out.md, "Bootstrap"). The other direction runs as usual
/// meanwhile: what this relay holds and the peer lacks is sent.
pub async fn pull(
    engine: Arc<Engine>,
    greeting: Greeting,
    rx: impl FrameSource,
    tx: impl FrameSink,
    opts: SessionOpts,
    stats: Arc<LinkStats>,
    shutdown: watch::Receiver<bool>,
) -> Result<String, SessionError> {
    let target = greeting.peer_vv.clone();
    drive(
        engine,
        greeting,
        rx,
        tx,
        opts,
        stats,
        shutdown,
        Some(target),
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    engine: Arc<Engine>,
    greeting: Greeting,
    mut rx: impl FrameSource,
    mut tx: impl FrameSink,
    opts: SessionOpts,
    stats: Arc<LinkStats>,
    mut shutdown: watch::Receiver<bool>,
    until: Option<VersionVector>,
) -> Result<String, SessionError> {
    stats.node.store(greeting.peer.0, Relaxed);
    if let Some(s) = &opts.spaces {
        let mut sorted: Vec<String> = s.iter().cloned().collect();
        sorted.sort();
        let _ = stats.spaces.set(sorted);
    }
    let lacking = plan::lacking(&greeting.vv, &greeting.peer_vv, greeting.peer);
    let mut peer_vv = greeting.peer_vv;
    let head = greeting.head;
    let planned = read(&engine, move |e| -> Result<_, SessionError> {
        let merged = e.merged_vv()?;
        Ok(
            match plan::start(head, &lacking, &merged, |o, s| e.local_seq_of(o, s))? {
                Start::After(pos) => (pos, None),
                // Where the snapshot ends, and what it covers.
                Start::Behind { origin, seq } => {
                    let head = e.last_seq();
                    let vv = e.version_vector()?;
                    let spaces: Vec<String> = e.spaces()?.into_iter().map(|(s, _)| s).collect();
                    (head, Some((origin, seq, vv, spaces)))
                }
            },
        )
    })
    .await?;
    let (pos, snapshot) = match planned {
        (pos, None) => (pos, None),
        (head, Some((origin, seq, vv, spaces))) => {
            // The peer lacks changes the log does not hold (retention
            // trimmed them, or a merged snapshot brought them): send the
            // current states (which include them), then the log from here on.
            tracing::info!(peer = %greeting.peer, %origin, seq, "peer lacks changes the log does not hold (trimmed, or merged from a snapshot); sending a state snapshot");
            for (o, s) in &vv {
                let held = peer_vv.entry(*o).or_insert(0);
                *held = (*held).max(*s);
            }
            (
                head,
                Some(SnapshotCursor {
                    vv,
                    spaces,
                    after: None,
                }),
            )
        }
    };
    tracing::debug!(node = %engine.node_id(), peer = %greeting.peer, pos, snapshot = snapshot.is_some(), "session planned");
    stats
        .acked
        .store(if snapshot.is_some() { 0 } else { pos }, Relaxed);
    stats
        .backlog
        .store(engine.last_seq().saturating_sub(pos), Relaxed);
    let filter = plan::Filter {
        peer: greeting.peer,
        peer_vv,
        spaces: opts.spaces.clone(),
    };
    let (ctl_tx, ctl_rx) = mpsc::channel(WINDOW * 2);
    let (ack_tx, ack_rx) = mpsc::channel(WINDOW * 2);
    let covered = filter.peer_vv.clone();
    let out = Outbound {
        engine: engine.clone(),
        stats: stats.clone(),
        filter,
        cursor: opts.cursor,
        pos,
        // Before a snapshot is through, the peer holds nothing of the log
        // for sure: the cursor (a retention pin) and the backlog gauge must
        // not claim it does.
        acked: if snapshot.is_some() { 0 } else { pos },
        batch_bytes: opts.batch_bytes.min(frame::MAX_FRAME_BYTES),
        inflight: InFlight::default(),
        cursor_saved: Instant::now(),
        merges: greeting.merges,
        snapshot,
        covered,
    };
    let inbound = async {
        // Nothing to pull: the peer's changes are all here already.
        if holds(&engine, until.as_ref()).await? {
            return Ok(PULLED.to_string());
        }
        inbound(
            &engine,
            &mut rx,
            ctl_tx,
            ack_tx,
            &stats,
            opts.spaces.as_ref(),
            until.as_ref(),
        )
        .await
    };
    let mut merges = engine.watch_merges();
    merges.borrow_and_update();
    let stats_id = stats.id;
    let replan = async move {
        loop {
            if merges.changed().await.is_err() {
                return std::future::pending().await;
            }
            if merges.borrow_and_update().1 != stats_id {
                return "state merged from another peer's snapshot: planning again".to_string();
            }
        }
    };
    let outbound = out.run(
        &mut tx,
        ctl_rx,
        ack_rx,
        engine.watch_events(),
        engine.watch_commits(),
    );
    let result = tokio::select! {
        r = inbound => r,
        r = outbound => r,
        _ = shutdown.wait_for(|s| *s) => Ok("relay shutting down".to_string()),
        _ = stats.close.notified() => Ok("replaced by another connection to the same peer".to_string()),
        // Ends the session; the dialler reconnects and plans from scratch.
        reason = replan => Ok(reason),
    };
    engine.forget_link_merges(stats.id);
    if let Ok(reason) = &result {
        let _ = send_frame(
            &mut tx,
            &Frame::Bye {
                reason: reason.clone(),
            },
        )
        .await;
    } else if let Err(e) = &result {
        let _ = send_frame(
            &mut tx,
            &Frame::Bye {
                reason: e.to_string(),
            },
        )
        .await;
    }
    result
}

/// A frame for trace logs: its kind, id and size, not its contents.
struct TraceFrame<'a>(&'a Frame);

impl std::fmt::Debug for TraceFrame<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Frame::Batch {
                id,
                changes,
                covers,
            } => write!(
                f,
                "batch {id}: {} changes, covers {covers:?}",
                changes.len()
            ),
            Frame::Snapshot { id, entities } => write!(f, "snapshot {id}: {}", entities.len()),
            Frame::SnapshotDone { id, vv } => write!(f, "snapshot_done {id}: {vv:?}"),
            Frame::Ack { id } => write!(f, "ack {id}"),
            other => f.write_str(kind(other)),
        }
    }
}

fn kind(f: &Frame) -> &'static str {
    match f {
        Frame::Proof { .. } => "proof",
        Frame::Hello { .. } => "hello",
        Frame::Batch { .. } => "batch",
        Frame::Ack { .. } => "ack",
        Frame::Snapshot { .. } => "snapshot",
        Frame::SnapshotDone { .. } => "snapshot_done",
        Frame::Event { .. } => "event",
        Frame::Bye { .. } => "bye",
    }
}

/// Apply the peer's batches and events; forward acks to the outbound side.
async fn inbound(
    engine: &Arc<Engine>,
    rx: &mut impl FrameSource,
    ctl: mpsc::Sender<Frame>,
    acks: mpsc::Sender<u64>,
    stats: &LinkStats,
    spaces: Option<&HashSet<String>>,
    until: Option<&VersionVector>,
) -> Result<String, SessionError> {
    let allowed = |space: &str| spaces.is_none_or(|s| s.contains(space));
    // Data frames (batches, snapshot pages, snapshot ends) carry the ids
    // 1, 2, 3, ... in the order they were sent. QUIC streams and TCP
    // deliver them so; a frame lost, repeated or reordered by a faulty
    // transport ends the session before it is applied: a `snapshot_done`
    // or a batch's covers overtaking the frame before them would vouch
    // for states and changes this side never got (the simulator's swapped
    // frames found it).
    let mut next_id = 1u64;
    let mut in_order = |id: u64| -> Result<(), SessionError> {
        if id != next_id {
            return Err(SessionError::Protocol(format!(
                "frame {id} arrived where frame {next_id} was due (lost, repeated or reordered)"
            )));
        }
        next_id += 1;
        Ok(())
    };
    // A pull-once session is done once the local vector holds `until`
    // (checked after each commit that can raise it, `holds`).
    loop {
        let Some(f) = recv_frame(rx).await? else {
            return Err(SessionError::PeerClosed("connection closed".into()));
        };
        stats.last_rx_ms.store(crate::engine::now_ms(), Relaxed);
        match f {
            Frame::Batch {
                id,
                changes,
                covers,
            } => {
                in_order(id)?;
                if changes.len() > BATCH * 4 {
                    return Err(SessionError::Protocol(format!(
                        "batch of {} changes",
                        changes.len()
                    )));
                }
                let mut keep = Vec::with_capacity(changes.len());
                for c in changes {
                    crate::engine::validate_change(&engine.limits, &c)
                        .map_err(SessionError::Protocol)?;
                    if allowed(&c.space) {
                        keep.push(c);
                    }
                }
                // Changes of spaces this side does not take are skipped too:
                // the covers let the version vector advance over them.
                let outcomes = engine.apply_covered(keep, covers, Some(stats.id)).await?;
                for o in &outcomes {
                    match o.kind {
                        OutcomeKind::Applied => stats.changes_received.fetch_add(1, Relaxed),
                        OutcomeKind::Duplicate => stats.duplicates_received.fetch_add(1, Relaxed),
                        OutcomeKind::Gap => {
                            // The sender skipped a change we lack: restart the
                            // session so it recomputes the start from our vv.
                            return Err(SessionError::Protocol(format!(
                                "gap: change {} of origin {} arrived before its predecessors (or a cover skipped them)",
                                o.origin_seq, o.origin
                            )));
                        }
                    };
                }
                ctl.send(Frame::Ack { id })
                    .await
                    .map_err(|_| SessionError::PeerClosed("outbound ended".into()))?;
                if holds(engine, until).await? {
                    return Ok(PULLED.to_string());
                }
            }
            Frame::Snapshot { id, entities } => {
                in_order(id)?;
                let mut keep = Vec::with_capacity(entities.len());
                for e in entities {
                    for (what, name) in [
                        ("space", &e.space),
                        ("collection", &e.collection),
                        ("id", &e.id),
                    ] {
                        crate::engine::validate_name(what, name)
                            .map_err(|err| SessionError::Protocol(err.to_string()))?;
                    }
                    if allowed(&e.space) {
                        keep.push(e);
                    }
                }
                stats.changes_received.fetch_add(keep.len() as u64, Relaxed);
                // Counted for this link (see `Outbound::check_no_merge`).
                engine.merge_snapshot(keep, None, stats.id).await?;
                ctl.send(Frame::Ack { id })
                    .await
                    .map_err(|_| SessionError::PeerClosed("outbound ended".into()))?;
            }
            Frame::SnapshotDone { id, vv } => {
                in_order(id)?;
                engine
                    .merge_snapshot(Vec::new(), Some(vv), stats.id)
                    .await?;
                tracing::info!(peer = %NodeId(stats.node.load(Relaxed)), "merged a state snapshot from the peer");
                ctl.send(Frame::Ack { id })
                    .await
                    .map_err(|_| SessionError::PeerClosed("outbound ended".into()))?;
                if holds(engine, until).await? {
                    return Ok(PULLED.to_string());
                }
            }
            Frame::Ack { id } => {
                acks.send(id)
                    .await
                    .map_err(|_| SessionError::PeerClosed("outbound ended".into()))?;
            }
            Frame::Event {
                origin,
                eid,
                hops,
                space,
                topic,
                payload,
                actor,
            } => {
                if !allowed(&space)
                    || crate::engine::validate_name("space", &space).is_err()
                    || crate::engine::validate_name("topic", &topic).is_err()
                {
                    continue;
                }
                stats.events_received.fetch_add(1, Relaxed);
                engine.publish_remote(Event {
                    space,
                    topic,
                    payload,
                    source: Some(stats.id),
                    actor,
                    origin,
                    eid,
                    hops: hops.saturating_sub(1),
                    rendered: RenderCache::default(),
                });
            }
            Frame::Bye { reason } => return Err(SessionError::PeerClosed(reason)),
            other @ (Frame::Hello { .. } | Frame::Proof { .. }) => {
                return Err(SessionError::Protocol(format!(
                    "unexpected {} mid-session",
                    kind(&other)
                )))
            }
        }
    }
}

struct Outbound {
    engine: Arc<Engine>,
    stats: Arc<LinkStats>,
    filter: plan::Filter,
    cursor: String,
    /// Last local seq read from the log.
    pos: u64,
    /// Last local seq the peer has acknowledged (everything up to it).
    acked: u64,
    /// See `SessionOpts::batch_bytes`.
    batch_bytes: usize,
    inflight: InFlight,
    cursor_saved: Instant,
    /// A snapshot still being sent (before any log streaming).
    snapshot: Option<SnapshotCursor>,
    /// `Engine::merges` when the session planned (its link had merged
    /// nothing then).
    merges: u64,
    /// Per origin, the highest origin seq the peer holds or has been
    /// vouched for (see `Frame::Batch` covers): the peer's version vector
    /// as this session advances it.
    covered: VersionVector,
}

/// A log entry read for the peer: sent, or only vouched for (filtered).
struct Item {
    seq: u64,
    change: crate::model::Change,
}

/// Progress through the snapshot: spaces left, position in the current one.
struct SnapshotCursor {
    vv: VersionVector,
    spaces: Vec<String>,
    after: Option<(String, String)>,
}

impl Outbound {
    async fn run(
        mut self,
        tx: &mut impl FrameSink,
        mut ctl: mpsc::Receiver<Frame>,
        mut acks: mpsc::Receiver<u64>,
        mut events: broadcast::Receiver<Arc<Event>>,
        mut commits: watch::Receiver<u64>,
    ) -> Result<String, SessionError> {
        let mut idle = false;
        loop {
            tokio::select! {
                biased;
                Some(f) = ctl.recv() => send_frame(tx, &f).await?,
                Some(id) = acks.recv() => {
                    self.acked = self.inflight.ack(id).map_err(SessionError::Protocol)?;
                    if self.inflight.is_empty() && self.snapshot.is_none() {
                        self.acked = self.pos;
                    }
                    self.progress().await?;
                }
                ev = events.recv() => match ev {
                    Ok(ev) => self.forward(tx, &ev).await?,
                    // Best effort: a burst beyond the channel skips events.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => {}
                },
                _ = commits.changed(), if idle => idle = false,
                _ = std::future::ready(()), if !idle && self.inflight.len() < WINDOW => {
                    // Mark the commit watch seen before reading, so a commit
                    // after this read wakes us.
                    commits.borrow_and_update();
                    idle = !self.send_next(tx).await?;
                }
            }
        }
    }

    /// Read the next log page and send what the peer lacks. False when the
    /// log holds nothing new.
    async fn send_next(&mut self, tx: &mut impl FrameSink) -> Result<bool, SessionError> {
        if self.snapshot.is_some() {
            self.send_snapshot_page(tx).await?;
            return Ok(true);
        }
        // Bounded in bytes too: 256 changes of ~1 MiB are 256 MiB.
        let cap = Cap::new(BATCH, PAGE_BYTES);
        let pos = self.pos;
        // With the last seq of the same read (see `check_contiguous`).
        let log_page = move |e: &Engine| e.log_after_page(pos, cap).map(|p| (p.seq, p.items));
        let (last, mut page) = read(&self.engine, log_page).await?;
        self.check_contiguous(last, &page)?;
        if page.is_empty() {
            // Caught up. Vouch for what the version vector holds beyond what
            // the peer was sent (changes this relay never received because a
            // filter on their route held them back). The vector is read
            // before the log, so an empty log read proves every change it
            // counts was seen by this session.
            let vv = read(&self.engine, |e| e.version_vector()).await?;
            self.check_no_merge()?;
            let last;
            (last, page) = read(&self.engine, log_page).await?;
            self.check_contiguous(last, &page)?;
            if page.is_empty() {
                let covers = self.covers_upto(&vv);
                if covers.is_empty() {
                    self.progress().await?;
                    return Ok(false);
                }
                let id = self.inflight.push(self.pos);
                tracing::debug!(node = %self.engine.node_id(), peer = %self.filter.peer, ?covers, "vouching at the log's end");
                send_frame(
                    tx,
                    &Frame::Batch {
                        id,
                        changes: vec![],
                        covers,
                    },
                )
                .await?;
                return Ok(true);
            }
        }
        // The covers of this page vouch for every origin seq up to each of
        // its changes, including seqs this relay holds only as merged state
        // (a snapshot from another link raises the version vector, then
        // later changes of the same origin are logged after the gap): the
        // peer would count them as held and never get them. The merge
        // counter is raised before the merge commits, and a change after
        // the gap is logged only after it, so reading it after the page is
        // enough. (The `replan` branch of `run` sees the merge too, but
        // only once this send is over.)
        self.check_no_merge()?;
        let last = page.last().map(|(s, _)| *s).unwrap_or(self.pos);
        let items: Vec<Item> = page
            .into_iter()
            .map(|(seq, e)| Item {
                seq,
                change: e.change,
            })
            .filter(|i| i.change.origin != self.filter.peer)
            .collect();
        self.pos = last;
        self.send_batch(tx, items, last).await?;
        Ok(true)
    }

    /// Retention trimmed the log past this session's read position (a peer
    /// that is not pinned and fell behind): the changes it lacks are gone
    /// from the log, so end the session; the next one plans from version
    /// vectors and sends a snapshot if needed. The log's local seqs are
    /// contiguous from its first entry (every applied change takes the next
    /// one; retention removes a prefix), so a read after `pos` that does
    /// not start at `pos + 1`, or finds nothing while the last seq it saw
    /// is past `pos`, lost entries to a trim.
    ///
    /// `last` must come from the page's own read transaction. This used the
    /// writer's `last_seq` read before the page, which the writer stores
    /// after the trim's commit: a page read in that window found the log
    /// empty with a last seq that said nothing was there, took the link for
    /// caught up and vouched for the trimmed changes, which the peer then
    /// counted and never got (tests/sim.rs, rarely, under load).
    fn check_contiguous(
        &self,
        last: u64,
        page: &[(u64, crate::store::LogEntry)],
    ) -> Result<(), SessionError> {
        if trimmed_past(self.pos, last, page.first().map(|(seq, _)| *seq)) {
            return Err(SessionError::Protocol(format!(
                "the log was trimmed past this link's position {}: planning again",
                self.pos
            )));
        }
        Ok(())
    }

    /// Fails if a snapshot was merged since this session planned, other
    /// than by its own inbound (the peer holds what it sent): the version
    /// vector then counts changes the log does not hold, and vouching for
    /// them would hide them from the peer. The session ends and the next
    /// one plans again (the peer gets a snapshot in turn).
    fn check_no_merge(&self) -> Result<(), SessionError> {
        // The total first, then this link's part: the store moves a link's
        // count before the total, so an own merge seen in the total is seen
        // in the part too, and one in flight never hides another link's
        // (it did when the session counted its own merges itself, before
        // the store: docs/reliability.md).
        let all = self.engine.merges();
        let own = self.engine.merges_by_link(self.stats.id);
        if all > self.merges + own {
            return Err(SessionError::Protocol(
                "state merged from a snapshot: planning again".into(),
            ));
        }
        Ok(())
    }

    /// Covers raising the peer to `vv` (its own origin excluded).
    fn covers_upto(&mut self, vv: &VersionVector) -> Vec<frame::Cover> {
        let mut out = Vec::new();
        for (&origin, &to) in vv {
            if origin == self.filter.peer {
                continue;
            }
            let held = self.covered.entry(origin).or_insert(0);
            if to > *held {
                out.push((origin, *held + 1, to));
                *held = to;
            }
        }
        out
    }
    /// The next page of entity states, or the end-of-snapshot frame.
    async fn send_snapshot_page(&mut self, tx: &mut impl FrameSink) -> Result<(), SessionError> {
        let Some(snap) = self.snapshot.as_mut() else {
            return Ok(());
        };
        while let Some(space) = snap.spaces.first().cloned() {
            if !self
                .filter
                .spaces
                .as_ref()
                .is_none_or(|s| s.contains(&space))
            {
                snap.spaces.remove(0);
                continue;
            }
            let (of, after) = (space.clone(), snap.after.clone());
            let page = read(&self.engine, move |e| {
                let after = after.as_ref().map(|(c, i)| (c.as_str(), i.as_str()));
                e.entities_page(&of, None, after, Cap::new(BATCH, PAGE_BYTES))
            })
            .await?;
            let more = page.more;
            let page = page.items;
            if !more {
                snap.spaces.remove(0);
                snap.after = None;
            } else if let Some((c, i, _)) = page.last() {
                snap.after = Some((c.clone(), i.clone()));
            }
            if page.is_empty() {
                continue;
            }
            let entities: Vec<_> = page
                .into_iter()
                .map(|(collection, id, e)| crate::store::SnapEntity {
                    space: space.clone(),
                    collection,
                    id,
                    state: e.state,
                })
                .collect();
            let n = entities.len() as u64;
            // Acked up to where it was: only the end of the snapshot
            // brings the peer up to `pos`.
            let id = self.inflight.push(self.acked);
            send_frame(tx, &Frame::Snapshot { id, entities }).await?;
            self.stats.changes_sent.fetch_add(n, Relaxed);
            return Ok(());
        }
        let vv = snap.vv.clone();
        tracing::debug!(node = %self.engine.node_id(), peer = %self.filter.peer, ?vv, "snapshot done");
        self.snapshot = None;
        let id = self.inflight.push(self.pos);
        send_frame(tx, &Frame::SnapshotDone { id, vv }).await
    }

    /// Send the page `items` (read up to local seq `upto`) as one batch,
    /// or split if its frame would be too large. Each part is acknowledged
    /// up to its own last entry, never the page's end, so an ack never
    /// claims what the peer has not got (the cursor pins retention).
    async fn send_batch(
        &mut self,
        tx: &mut impl FrameSink,
        items: Vec<Item>,
        upto: u64,
    ) -> Result<(), SessionError> {
        let mut queue = vec![(items, upto)];
        while let Some((part, upto)) = queue.pop() {
            let mut covered = self.covered.clone();
            let (changes, covers) = self.frame_part(&part, &mut covered);
            if changes.is_empty() && covers.is_empty() {
                if self.inflight.is_empty() {
                    self.acked = upto;
                }
                continue;
            }
            let n = changes.len() as u64;
            let id = self.inflight.push(upto);
            let f = Frame::Batch {
                id,
                changes,
                covers,
            };
            let encoded = frame::encode(&f);
            let split = part.len() > 1
                && match &encoded {
                    Ok(bytes) => bytes.len() > self.batch_bytes,
                    Err(e) => matches!(e, FrameError::TooLarge(_)),
                };
            if split {
                self.inflight.unpush();
                let mut front = part;
                let back = front.split_off(front.len() / 2);
                let front_upto = back[0].seq - 1;
                // Front half first: the queue pops from the end.
                queue.push((back, upto));
                queue.push((front, front_upto));
                continue;
            }
            tracing::trace!(frame = ?TraceFrame(&f), "send");
            tx.send(encoded?).await?;
            self.covered = covered;
            self.stats.changes_sent.fetch_add(n, Relaxed);
        }
        Ok(())
    }

    /// The changes of `part` the peer gets, and covers for all of it
    /// (filtered entries included), advancing `covered`.
    fn frame_part(
        &self,
        part: &[Item],
        covered: &mut VersionVector,
    ) -> (Vec<crate::model::Change>, Vec<frame::Cover>) {
        let mut changes = Vec::new();
        let mut covers: Vec<frame::Cover> = Vec::new();
        for item in part {
            let c = &item.change;
            let held = covered.entry(c.origin).or_insert(0);
            if c.seq <= *held {
                continue;
            }
            match covers.iter_mut().find(|(o, _, _)| *o == c.origin) {
                Some(cover) => cover.2 = c.seq,
                None => covers.push((c.origin, *held + 1, c.seq)),
            }
            *held = c.seq;
            if self.filter.wants(c) {
                changes.push(c.clone());
            }
        }
        (changes, covers)
    }

    async fn forward(&mut self, tx: &mut impl FrameSink, ev: &Event) -> Result<(), SessionError> {
        let skip = ev.hops == 0
            || ev.source == Some(self.stats.id)
            || ev.origin == self.filter.peer
            || !self
                .filter
                .spaces
                .as_ref()
                .is_none_or(|s| s.contains(&ev.space));
        if skip {
            return Ok(());
        }
        self.stats.events_sent.fetch_add(1, Relaxed);
        send_frame(
            tx,
            &Frame::Event {
                origin: ev.origin,
                eid: ev.eid,
                hops: ev.hops,
                space: ev.space.clone(),
                topic: ev.topic.clone(),
                payload: ev.payload.clone(),
                actor: ev.actor.clone(),
            },
        )
        .await
    }

    /// Update the backlog gauge and, now and then, the durable cursor.
    async fn progress(&mut self) -> Result<(), SessionError> {
        let last = self.engine.last_seq();
        self.stats.acked.store(self.acked, Relaxed);
        self.stats
            .backlog
            .store(last.saturating_sub(self.acked), Relaxed);
        if self.cursor_saved.elapsed() >= CURSOR_EVERY {
            let name = self.cursor.clone();
            if read(&self.engine, move |e| e.cursor(&name)).await? < self.acked {
                self.engine.set_cursor(&self.cursor, self.acked).await?;
                self.cursor_saved = Instant::now();
            }
        }
        Ok(())
    }
}

/// Whether a log read after `pos`, which saw `last` as the last committed
/// seq and started at `first`, lost entries to a trim (see
/// `Outbound::check_contiguous`).
fn trimmed_past(pos: u64, last: u64, first: Option<u64>) -> bool {
    let next = pos.saturating_add(1);
    match first {
        Some(seq) => seq != next,
        None => last >= next,
    }
}

#[cfg(test)]
mod tests {
    use super::trimmed_past;

    #[test]
    fn a_read_after_a_trim_is_told_from_a_caught_up_one() {
        // Caught up: nothing after 5, and 5 is the last seq.
        assert!(!trimmed_past(5, 5, None));
        // Everything after 5 trimmed: an empty read of a log whose last seq
        // is 8. (The bug read the last seq before the page, from a counter
        // the writer moves after the trim's commit: it still said 5.)
        assert!(trimmed_past(5, 8, None));
        // The read starts past 6: 6 and 7 were trimmed.
        assert!(trimmed_past(5, 9, Some(8)));
        // Contiguous.
        assert!(!trimmed_past(5, 9, Some(6)));
        assert!(!trimmed_past(0, 1, Some(1)));
    }
}
