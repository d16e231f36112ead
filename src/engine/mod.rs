//! The engine: the one place that applies changes, serves catch-up, and fans
//! out. Every dialect is a thin adapter over these calls.

mod admin;
mod blocking;
mod error;
mod hub;
mod outbox;
mod recent;
mod validate;

pub use crate::store::Clock;
pub use admin::SpaceFigures;
pub use blocking::off_worker;
pub use error::{EngineError, ErrorClass};
pub use hub::{ConnLink, ConnSignal, Filter, Hub};
pub use outbox::{json_bytes, Batch, Budget, Outbox};
pub use validate::{validate_change, validate_name, validate_write, Limits};

use crate::metrics::Metrics;
use crate::model::{Change, NodeId, Op, VersionVector};
use crate::schema::SchemaSet;
use crate::store::{
    Cap, Durability, Job, LocalWrite, LogEntry, Outcome, OutcomeKind, Page, SnapEntity, Store,
    StoreError, StoreOptions, StoredEntity,
};
use axum::extract::ws::Utf8Bytes;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Frames rendered once per committed change and shared by every
/// subscriber of the same dialect (slot = dialect index).
#[derive(Debug, Default)]
pub struct RenderCache([OnceLock<Utf8Bytes>; 8]);

impl RenderCache {
    pub fn get_or(&self, slot: usize, render: impl FnOnce() -> String) -> Utf8Bytes {
        self.0[slot % 8].get_or_init(|| render().into()).clone()
    }

    /// Whether `slot` is rendered already.
    pub fn has(&self, slot: usize) -> bool {
        self.0[slot % 8].get().is_some()
    }
}

/// A committed change as fan-out and catch-up hand it to connections: the
/// store's record plus the frames rendered from it, made once per dialect
/// and shared by every subscriber. (The cache belongs here, on the fan-out
/// side; the store knows nothing of frames.)
#[derive(Debug)]
pub struct Committed {
    pub record: crate::store::Committed,
    pub rendered: RenderCache,
}

impl Committed {
    pub fn new(record: crate::store::Committed) -> Committed {
        Committed {
            record,
            rendered: RenderCache::default(),
        }
    }

    /// Take over the writer's record (it keeps no copy, so nothing is cloned).
    pub fn from_store(record: Arc<crate::store::Committed>) -> Arc<Committed> {
        let record = Arc::try_unwrap(record).unwrap_or_else(|shared| (*shared).clone());
        Arc::new(Committed::new(record))
    }
}

impl std::ops::Deref for Committed {
    type Target = crate::store::Committed;
    fn deref(&self) -> &crate::store::Committed {
        &self.record
    }
}

/// An ephemeral event: fanned out live, never stored.
#[derive(Debug)]
pub struct Event {
    pub space: String,
    pub topic: String,
    pub payload: Value,
    pub source: Option<u64>,
    pub actor: String,
    /// Identity across the mesh: the relay that published it and its number
    /// there. Peers forward an event while `hops` is above zero.
    pub origin: NodeId,
    pub eid: u64,
    pub hops: u8,
    pub rendered: RenderCache,
}

/// What arrives in a connection's queue.
#[derive(Debug)]
pub enum Delivery {
    Change { sub: u64, item: Arc<Committed> },
    Event { sub: u64, event: Arc<Event> },
}

/// Items a subscription emits before it goes live. Short-lived (one page
/// at a time), so the snapshot variant's size is not worth a box.
#[allow(clippy::large_enum_variant)]
pub enum CatchUp {
    /// The log was trimmed past the requested seq: current entity states.
    Snapshot {
        collection: String,
        id: String,
        entity: StoredEntity,
    },
    Change(Arc<Committed>),
}

pub struct EngineSettings {
    pub dir: PathBuf,
    pub durability: Durability,
    /// Log entries older than this are trimmed (None: keep forever).
    pub retention: Option<Duration>,
    pub limits: Limits,
    pub max_skew_ms: u64,
    pub min_free_bytes: u64,
    pub cache_bytes: usize,
    /// Collection schemas checked on every local push.
    pub schemas: Arc<SchemaSet>,
    /// Relay-wide bound on the bytes of queued outbound frames
    /// (`server.max_memory_mb`).
    pub max_queued_bytes: usize,
    /// The wall clock local stamps and retention read (`Clock::system()`
    /// in a relay; the simulator gives each relay a skewed one). A
    /// setting rather than a global so that relays in one process can
    /// disagree about the time, as relays on different machines do.
    pub clock: Clock,
}

impl EngineSettings {
    /// Settings for a test's engine in `dir`: immediate durability, no
    /// retention, default limits, a minute of client clock skew, a 1 MiB
    /// cache, no schemas, 64 MiB of queued frames, the system clock. A
    /// test that needs otherwise says so with struct update syntax.
    pub fn for_tests(dir: &std::path::Path) -> EngineSettings {
        EngineSettings {
            dir: dir.to_path_buf(),
            durability: Durability::Immediate,
            retention: None,
            limits: Limits::default(),
            max_skew_ms: 60_000,
            min_free_bytes: 0,
            cache_bytes: 1 << 20,
            schemas: Default::default(),
            max_queued_bytes: 64 << 20,
            clock: Clock::system(),
        }
    }
}

pub struct Engine {
    store: Store,
    hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    started: Instant,
    next_conn: AtomicU64,
    retention: Option<Duration>,
    clock: Clock,
    /// Cursors that retention must not trim past (e.g. the upstream's).
    pins: Mutex<Vec<String>>,
    schemas: Arc<SchemaSet>,
    /// Every event published here, local or from a peer, for the peer links
    /// (best effort: a lagging receiver skips events).
    events: tokio::sync::broadcast::Sender<Arc<Event>>,
    next_eid: AtomicU64,
    merges: tokio::sync::watch::Sender<(u64, u64)>,
    seen_events: Mutex<recent::Recent<(NodeId, u64)>>,
    /// Set when this relay is a member of a JetStream hub tier.
    ack_gate: OnceLock<AckGate>,
}

/// Clustered relays answer a write only once the shared stream holds it:
/// `replicated` is the local seq up to which every log entry is in the
/// stream (published and acked by JetStream, or read from it).
pub struct AckGate {
    pub replicated: tokio::sync::watch::Receiver<u64>,
    pub timeout: Duration,
}

/// Refuse writes that would leave an entity breaking its collection's
/// schema. A put is checked as the whole entity; a patch as the entity it
/// produces from the state `read` now (inside the writer's transaction) and
/// from earlier writes of the same batch. Deletes are not checked. Changes
/// from peers and the upstream are not checked here: their origin relay did.
/// Outer error: reading failed; inner: the refusal.
fn check_schemas(
    schemas: &SchemaSet,
    writes: &[LocalWrite],
    read: &crate::store::ReadEntity<'_>,
) -> Result<Result<(), EngineError>, StoreError> {
    let mut projected: std::collections::HashMap<(&str, &str), serde_json::Map<String, Value>> =
        std::collections::HashMap::new();
    for (index, w) in writes.iter().enumerate() {
        if w.op == Op::Delete {
            projected.insert((&w.collection, &w.id), serde_json::Map::new());
            continue;
        }
        if !schemas.contains(&w.collection) {
            continue;
        }
        let key = (w.collection.as_str(), w.id.as_str());
        let mut fields = match (w.op, projected.remove(&key)) {
            (Op::Put, _) => serde_json::Map::new(),
            (_, Some(f)) => f,
            _ => read(&w.collection, &w.id)?
                .filter(|e| e.state.exists())
                .map(|e| e.state.visible())
                .unwrap_or_default(),
        };
        for (k, v) in &w.fields {
            if v.is_null() {
                fields.remove(k);
            } else {
                fields.insert(k.clone(), v.clone());
            }
        }
        let violations = schemas
            .check_object(&w.collection, &fields)
            .unwrap_or_default();
        if let Some(violation) = violations.into_iter().next() {
            return Ok(Err(EngineError::Schema {
                index,
                collection: w.collection.clone(),
                violation,
            }));
        }
        projected.insert(key, fields);
    }
    Ok(Ok(()))
}

/// A push queued to the writer, waiting for its durable commit.
pub struct QueuedPush<'e> {
    engine: &'e Engine,
    n: u64,
    rx: Option<tokio::sync::oneshot::Receiver<Result<Vec<Outcome>, StoreError>>>,
}

impl QueuedPush<'_> {
    /// The outcomes, once the commit is durable.
    pub async fn wait(self) -> Result<Vec<Outcome>, EngineError> {
        let Some(rx) = self.rx else {
            return Ok(vec![]);
        };
        let out = rx.await.map_err(|_| StoreError::Closed)??;
        self.engine
            .metrics
            .changes_written
            .fetch_add(self.n, Relaxed);
        self.engine.await_gate(&out).await?;
        Ok(out)
    }
}

/// Keeps one connection's pushes in the order its frames were read.
///
/// A connection answers pushes asynchronously (one future per push, polled
/// together), and a future does nothing until first polled: without this, a
/// later push could reach the writer first and two patches of one field,
/// sent in order, could end with the older value. Each push made through
/// `push` queues its job only after the previous push of the same
/// `WriteOrder` has queued its own (or failed, or been dropped); only the
/// wait for the commit overlaps.
#[derive(Default)]
pub struct WriteOrder {
    prev: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl WriteOrder {
    pub fn push(
        &mut self,
        engine: Arc<Engine>,
        space: String,
        actor: String,
        source: Option<u64>,
        writes: Vec<LocalWrite>,
        write_ids: Vec<Option<String>>,
    ) -> impl std::future::Future<Output = Result<Vec<Outcome>, EngineError>> + Send + 'static {
        let prev = self.prev.take();
        let (queued, next) = tokio::sync::oneshot::channel();
        self.prev = Some(next);
        async move {
            if let Some(prev) = prev {
                // An error means the earlier push was dropped: nothing to wait for.
                let _ = prev.await;
            }
            let pushed = engine
                .queue_push(&space, &actor, source, writes, write_ids)
                .await;
            drop(queued);
            pushed?.wait().await
        }
    }
}

/// How many relays an event may cross after the one it was published at.
pub const EVENT_HOPS: u8 = 8;

/// A subscription being brought up to date; see `Engine::next_page`.
pub struct Subscription {
    pub space: String,
    filter: Filter,
    link: Option<ConnLink>,
    cursor: u64,
    upto: Option<u64>,
    phase: Phase,
    /// Set once registered for live delivery.
    pub id: Option<u64>,
    /// Bounds of each catch-up page.
    page: Cap,
    /// `Store::merges` when the catch-up started or last took current
    /// states: a merge since then brought states the log cannot replay.
    merges: u64,
}

impl Subscription {
    /// The seq the catch-up reached (meaningful once `next_page` is None).
    pub fn reached(&self) -> u64 {
        self.cursor
    }

    /// Catch-up pages of at most `items` (default 256): less memory per
    /// page, more pages. The simulator uses tiny pages so that retention
    /// trims race a catch-up between its pages.
    pub fn page_items(mut self, items: usize) -> Subscription {
        self.page.items = items.max(1);
        self
    }
}

enum Phase {
    Snapshot {
        after: Option<(String, String)>,
        base: u64,
    },
    Backlog,
    Seam,
    Live,
}

/// Catch-up page size: bounds memory per subscribing connection, in items
/// and in stored bytes (a page of 256 changes of ~1 MiB would be 256 MiB).
const PAGE: usize = 256;
pub const PAGE_BYTES: usize = 4 << 20;

/// The system clock in ms since 1970, for what only reports the time
/// (status pages, frame timestamps, link statistics). What decides state
/// (stamps, retention) reads the engine's [`Clock`] instead
/// ([`Engine::clock`]).
pub fn now_ms() -> u64 {
    crate::store::system_ms()
}

impl Engine {
    pub fn open(s: EngineSettings, metrics: Arc<Metrics>) -> Result<Arc<Engine>, EngineError> {
        Engine::open_on(s, metrics, None)
    }

    /// As `open`, with the store's database in `backend` (see
    /// `store::Backend`; the simulator's crashing disk) instead of the
    /// data file.
    pub fn open_on(
        s: EngineSettings,
        metrics: Arc<Metrics>,
        backend: Option<crate::store::Backend>,
    ) -> Result<Arc<Engine>, EngineError> {
        Engine::open_with(s, metrics, backend, None)
    }

    /// As `open_on`, with the write-ahead log in `wal` instead of
    /// `outpost.wal` (a simulated disk that loses unsynced bytes).
    pub fn open_with(
        s: EngineSettings,
        metrics: Arc<Metrics>,
        backend: Option<crate::store::Backend>,
        wal: Option<crate::store::Backend>,
    ) -> Result<Arc<Engine>, EngineError> {
        // The hub needs the last seq, which only the store knows; it starts at
        // 0 and the store's first commit report sets it. Until then, catch-up
        // reads up to the store's own last seq (see `subscribe`).
        let hub = Arc::new(Hub::new(metrics.clone(), 0, s.max_queued_bytes));
        let store = Store::open_on(
            StoreOptions {
                dir: s.dir,
                durability: s.durability,
                queue: 1024,
                min_free_bytes: s.min_free_bytes,
                cache_bytes: s.cache_bytes,
                max_skew_ms: s.max_skew_ms,
                clock: s.clock.clone(),
                wal_backend: wal,
            },
            metrics.clone(),
            hub.clone(),
            backend,
        )?;
        hub.set_last_seq(store.last_seq());
        Ok(Arc::new(Engine {
            store,
            hub,
            metrics,
            limits: s.limits,
            started: Instant::now(),
            next_conn: AtomicU64::new(1),
            retention: s.retention,
            clock: s.clock,
            pins: Mutex::new(Vec::new()),
            schemas: s.schemas,
            events: tokio::sync::broadcast::Sender::new(1024),
            next_eid: AtomicU64::new(1),
            merges: tokio::sync::watch::Sender::new((0, 0)),
            seen_events: Mutex::new(recent::Recent::new(4096)),
            ack_gate: OnceLock::new(),
        }))
    }

    /// Background maintenance (log retention, a pass a minute), when
    /// retention is on: a loop for the app to run among its tasks (it
    /// ends when the engine is gone, or is dropped at shutdown).
    pub fn maintenance(self: &Arc<Self>) -> Option<impl std::future::Future<Output = ()> + Send> {
        let keep = self.retention?;
        let weak = Arc::downgrade(self);
        Some(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                let Some(engine) = weak.upgrade() else { return };
                if let Err(e) = engine.trim(keep).await {
                    tracing::warn!(error = %e, "log retention pass failed");
                }
            }
        })
    }

    /// The wall clock this relay stamps with (see [`EngineSettings::clock`]).
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// One retention pass: trim log entries older than `keep`, never past a
    /// pinned cursor. Returns how many went.
    pub async fn trim(self: &Arc<Self>, keep: Duration) -> Result<u64, EngineError> {
        let older_than_ms = self.clock.now_ms().saturating_sub(keep.as_millis() as u64);
        let pins = self.pins.lock().map(|p| p.clone()).unwrap_or_default();
        // The pinned cursors are store reads: on the blocking pool.
        let me = self.clone();
        let keep_from = off_worker(move || -> Result<u64, EngineError> {
            let mut keep_from = u64::MAX;
            for p in pins {
                keep_from = keep_from.min(me.store.cursor(&p)? + 1);
            }
            Ok(keep_from)
        })
        .await?;
        let mut total = 0;
        loop {
            let n = self
                .store
                .submit(|reply| Job::Trim {
                    older_than_ms,
                    keep_from,
                    max: 10_000,
                    reply,
                })
                .await?;
            total += n;
            if n < 10_000 {
                return Ok(total);
            }
        }
    }

    /// Retention never trims past this cursor (the log is its outbound queue).
    pub fn pin_cursor(&self, name: &str) {
        if let Ok(mut p) = self.pins.lock() {
            if !p.iter().any(|x| x == name) {
                p.push(name.to_string());
            }
        }
    }

    /// Let the writer drain and flush (the app has ended its tasks first).
    pub fn shutdown(&self) {
        self.store.close();
    }

    /// Cheap liveness check for the systemd watchdog: a read transaction
    /// (on a blocking thread, so a hung disk cannot stall the runtime) and
    /// a round trip through the writer queue. The caller bounds it with a
    /// deadline; a wedged engine never answers.
    pub async fn health_check(self: &Arc<Self>) -> Result<(), EngineError> {
        // A store that lost its file to an I/O error answers pings but
        // refuses writes until it has reopened it: that is a fault.
        if let Some(f) = self.store.fault() {
            return Err(f.error().into());
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.store.log_len())
            .await
            // Only a panic in the read ends here: report the store unusable.
            .map_err(|_| StoreError::Closed)??;
        Ok(self.store.ping().await?)
    }

    pub fn node_id(&self) -> NodeId {
        self.store.node_id()
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Relaxed)
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    pub fn last_seq(&self) -> u64 {
        self.store.last_seq()
    }

    /// Park the store writer until the guard is dropped (deterministic
    /// tests of what queues behind it).
    #[doc(hidden)]
    pub async fn hold_writer(&self) -> Result<crate::store::WriterHold, EngineError> {
        Ok(self.store.hold_writer().await?)
    }

    /// Park every store read until the guard is dropped (tests: see
    /// `Store::hold_reads`).
    #[doc(hidden)]
    pub fn hold_reads(&self) -> crate::store::ReadHold {
        self.store.hold_reads()
    }

    /// See `Store::enqueued` (deterministic tests).
    #[doc(hidden)]
    pub fn jobs_enqueued(&self) -> u64 {
        self.store.enqueued()
    }

    /// Apply local writes (validated here); answers after the durable commit.
    pub async fn push(
        &self,
        space: &str,
        actor: &str,
        source: Option<u64>,
        writes: Vec<LocalWrite>,
    ) -> Result<Vec<Outcome>, EngineError> {
        self.push_idempotent(space, actor, source, writes, vec![])
            .await
    }

    /// [`Engine::push`] where writes may carry a client-chosen write id
    /// (`write_ids[i]` for `writes[i]`; an empty vector for none): a write
    /// whose id the space already holds is answered with the first
    /// application's outcome (kind `Duplicate`) and not applied again, so a
    /// client can replay writes whose ack it never saw.
    pub async fn push_idempotent(
        &self,
        space: &str,
        actor: &str,
        source: Option<u64>,
        writes: Vec<LocalWrite>,
        write_ids: Vec<Option<String>>,
    ) -> Result<Vec<Outcome>, EngineError> {
        self.queue_push(space, actor, source, writes, write_ids)
            .await?
            .wait()
            .await
    }

    /// Validate local writes (with optional write ids, as in
    /// `push_idempotent`) and queue them for the writer; returns once the
    /// job is queued, with the wait for its durable commit. Jobs are
    /// applied in the order they were queued (see [`WriteOrder`]).
    pub async fn queue_push(
        &self,
        space: &str,
        actor: &str,
        source: Option<u64>,
        writes: Vec<LocalWrite>,
        write_ids: Vec<Option<String>>,
    ) -> Result<QueuedPush<'_>, EngineError> {
        validate::validate_name("space", space)?;
        for (i, wid) in write_ids.iter().enumerate() {
            if let Some(wid) = wid {
                validate::validate_name(&format!("changes[{i}].wid"), wid)?;
            }
        }
        if writes.is_empty() {
            return Ok(QueuedPush {
                engine: self,
                n: 0,
                rx: None,
            });
        }
        if writes.len() > self.limits.max_batch {
            return Err(EngineError::Invalid(format!(
                "changes: a batch holds at most {} changes, got {}",
                self.limits.max_batch,
                writes.len()
            )));
        }
        for (i, w) in writes.iter().enumerate() {
            validate_write(&self.limits, w)
                .map_err(|e| EngineError::Invalid(format!("changes[{i}].{e}")))?;
        }
        // Collection schemas are checked by the writer, inside the
        // transaction that applies the writes: a check made here, before
        // queueing, could be overtaken by a concurrent write to the entity.
        let admit: Option<crate::store::Admit> = (!self.schemas.is_empty()).then(|| {
            let schemas = self.schemas.clone();
            Arc::new(
                move |read: &crate::store::ReadEntity<'_>, writes: &[LocalWrite]| {
                    Ok(check_schemas(&schemas, writes, read)?
                        .map_err(|e| Box::new(e) as crate::store::Rejection))
                },
            ) as crate::store::Admit
        });
        self.metrics.pushes.fetch_add(1, Relaxed);
        let n = writes.len() as u64;
        let rx = self
            .store
            .enqueue(|reply| Job::Local {
                space: space.to_string(),
                actor: actor.to_string(),
                source,
                writes,
                write_ids,
                admit,
                reply,
            })
            .await?;
        Ok(QueuedPush {
            engine: self,
            n,
            rx: Some(rx),
        })
    }

    /// Make writes wait for the cluster stream (see [`AckGate`]); set once.
    pub fn set_ack_gate(&self, gate: AckGate) {
        let _ = self.ack_gate.set(gate);
    }

    /// With an ack gate: wait until the stream holds these outcomes (a
    /// duplicate's original entry is somewhere at or below the last seq).
    async fn await_gate(&self, out: &[Outcome]) -> Result<(), EngineError> {
        let Some(gate) = self.ack_gate.get() else {
            return Ok(());
        };
        let mut need = out.iter().map(|o| o.seq).max().unwrap_or(0);
        if out.iter().any(|o| o.kind != OutcomeKind::Applied) {
            need = need.max(self.last_seq());
        }
        let mut rx = gate.replicated.clone();
        let waited = tokio::time::timeout(gate.timeout, async {
            rx.wait_for(|r| *r >= need).await.map(|_| ())
        })
        .await;
        match waited {
            Ok(Ok(())) => Ok(()),
            // The cluster link stopped (shutdown).
            Ok(Err(_)) => Err(StoreError::Closed.into()),
            Err(_) => Err(EngineError::NotReplicated(gate.timeout)),
        }
    }

    /// Apply changes that carry their identity (peers, upstream). With an
    /// ack gate, answers once the cluster stream holds them.
    pub async fn apply_remote(
        &self,
        changes: Vec<Change>,
        source: Option<u64>,
    ) -> Result<Vec<Outcome>, EngineError> {
        self.apply_covered(changes, Vec::new(), source).await
    }

    /// Apply changes read from the cluster stream, with the covers of the
    /// ones the reader's space filter skipped (see `apply_covered`): they
    /// are in the stream already, so no ack gate.
    pub async fn apply_unreplicated(
        &self,
        changes: Vec<Change>,
        covers: Vec<(NodeId, u64, u64)>,
        source: Option<u64>,
    ) -> Result<Vec<Outcome>, EngineError> {
        self.apply_ungated(changes, covers, source).await
    }

    /// `apply_remote` of a replication batch with its `covers` (see
    /// `Job::Remote`): the changes a space filter held back are skipped.
    pub async fn apply_covered(
        &self,
        changes: Vec<Change>,
        covers: Vec<(NodeId, u64, u64)>,
        source: Option<u64>,
    ) -> Result<Vec<Outcome>, EngineError> {
        let out = self.apply_ungated(changes, covers, source).await?;
        self.await_gate(&out).await?;
        Ok(out)
    }

    async fn apply_ungated(
        &self,
        changes: Vec<Change>,
        covers: Vec<(NodeId, u64, u64)>,
        source: Option<u64>,
    ) -> Result<Vec<Outcome>, EngineError> {
        Ok(self
            .store
            .submit(|reply| Job::Remote {
                changes,
                covers,
                source,
                reply,
            })
            .await?)
    }

    pub async fn set_cursor(&self, name: &str, seq: u64) -> Result<(), EngineError> {
        let name = name.to_string();
        Ok(self
            .store
            .submit(|reply| Job::SetCursor { name, seq, reply })
            .await?)
    }

    pub fn cursor(&self, name: &str) -> Result<u64, EngineError> {
        Ok(self.store.cursor(name)?)
    }

    /// Publish an ephemeral event to the space's live subscribers.
    pub fn publish(
        &self,
        space: &str,
        topic: &str,
        payload: Value,
        actor: &str,
        source: Option<u64>,
    ) {
        self.metrics.events_published.fetch_add(1, Relaxed);
        let eid = self.next_eid.fetch_add(1, Relaxed);
        self.fan_out_event(Event {
            space: space.to_string(),
            topic: topic.to_string(),
            payload,
            source,
            actor: actor.to_string(),
            origin: self.node_id(),
            eid,
            hops: EVENT_HOPS,
            rendered: RenderCache::default(),
        });
    }

    /// An event forwarded by a peer (`source` = that peer's link id). Each
    /// event is delivered once, however many paths it arrives by.
    pub fn publish_remote(&self, event: Event) {
        if event.origin == self.node_id() {
            return;
        }
        self.fan_out_event(event);
    }

    fn fan_out_event(&self, event: Event) {
        let fresh = self
            .seen_events
            .lock()
            .map(|mut s| s.insert((event.origin, event.eid)))
            .unwrap_or(true);
        if !fresh {
            return;
        }
        let event = Arc::new(event);
        self.hub.publish(event.clone());
        // No receivers (no peers) is not an error.
        let _ = self.events.send(event);
    }

    /// Events as they are published, for peer links.
    pub fn watch_events(&self) -> tokio::sync::broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }

    /// Changes as they commit: the receiver sees each new last seq.
    pub fn watch_commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.hub.watch_commits()
    }

    /// Merge a peer's state snapshot (see `Job::MergeSnapshot`), received
    /// on replication link `link`.
    pub async fn merge_snapshot(
        &self,
        entities: Vec<SnapEntity>,
        vv: Option<VersionVector>,
        link: u64,
    ) -> Result<Vec<String>, EngineError> {
        let vv_given = vv.is_some();
        // Other links' streams come from the log, which does not hold what
        // the snapshot brought: they must plan again. Told on drop, so also
        // when the caller is cancelled while the job is queued or running (a
        // session ending mid-merge): the writer finishes the merge anyway,
        // and a link left idle would never learn of it.
        let mut replan = ReplanOnDrop {
            merges: &self.merges,
            link,
            armed: true,
        };
        let spaces = self
            .store
            .submit(|reply| Job::MergeSnapshot {
                entities,
                vv,
                link,
                reply,
            })
            .await;
        replan.armed = spaces.as_ref().is_ok_and(|s| !s.is_empty()) || vv_given;
        Ok(spaces?)
    }

    /// Changes each time a snapshot from a peer is merged: (count, link).
    pub fn watch_merges(&self) -> tokio::sync::watch::Receiver<(u64, u64)> {
        self.merges.subscribe()
    }

    /// See `Store::origin_before`.
    pub fn origin_before(
        &self,
        origin: NodeId,
        before: u64,
        max: usize,
    ) -> Result<(Vec<(u64, crate::store::LogEntry)>, bool), EngineError> {
        Ok(self.store.origin_before(origin, before, max)?)
    }

    /// Local seq of the change `(origin, origin_seq)`, if the log holds it.
    /// Per origin, the highest seq a merged snapshot counted without log
    /// entries (see `Store::merged_vv`).
    pub fn merged_vv(&self) -> Result<VersionVector, EngineError> {
        Ok(self.store.merged_vv()?)
    }

    pub fn local_seq_of(
        &self,
        origin: NodeId,
        origin_seq: u64,
    ) -> Result<Option<u64>, EngineError> {
        Ok(self.store.local_seq_of(origin, origin_seq)?)
    }

    /// Start subscribing `link` to `space` from `since` (exclusive). Pull the
    /// catch-up with `next_page` until it returns None: by then the
    /// subscription is live, with no gap or duplicate at the seam.
    pub fn start_subscription(
        &self,
        space: &str,
        since: u64,
        filter: Filter,
        link: ConnLink,
    ) -> Result<Subscription, EngineError> {
        validate::validate_name("space", space)?;
        // A resume point beyond anything this relay committed comes from
        // another history (another relay, or a wiped data dir): skipping
        // until seqs catch up would silently lose changes, so start over.
        let since = if since > self.store.last_seq() {
            0
        } else {
            since
        };
        let merges = self.store.merges();
        let horizon = self.store.horizon();
        let phase = if since.saturating_add(1) < horizon {
            // Changes after `since` were trimmed, or a snapshot merged
            // after it: current state first.
            Phase::Snapshot {
                after: None,
                base: self.snapshot_base(),
            }
        } else {
            Phase::Backlog
        };
        Ok(Subscription {
            space: space.to_string(),
            filter,
            link: Some(link),
            cursor: since,
            phase,
            id: None,
            upto: None,
            page: Cap::new(PAGE, PAGE_BYTES),
            merges,
        })
    }

    /// The next catch-up page, or None once the subscription is live.
    pub fn next_page(&self, sub: &mut Subscription) -> Result<Option<Vec<CatchUp>>, EngineError> {
        let mut out = Vec::new();
        if let Phase::Snapshot { after, base } = &mut sub.phase {
            let page = self.store.entities_page(
                &sub.space,
                None,
                after.as_ref().map(|(c, i)| (c.as_str(), i.as_str())),
                sub.page,
            )?;
            let short = !page.more;
            let page = page.items;
            if let Some((c, i, _)) = page.last() {
                *after = Some((c.clone(), i.clone()));
            }
            if short {
                sub.cursor = *base;
                // Back to where it was: the backlog, or the seam if the
                // trim overtook it there (it is registered already).
                sub.phase = if sub.id.is_some() {
                    Phase::Seam
                } else {
                    Phase::Backlog
                };
            }
            for (collection, id, entity) in page {
                if sub.filter.wants(&collection) {
                    out.push(CatchUp::Snapshot {
                        collection,
                        id,
                        entity,
                    });
                }
            }
            return Ok(Some(out));
        }
        if matches!(sub.phase, Phase::Live) {
            return Ok(None);
        }
        // Backlog: bounded by the hub's last seq, since everything up to it
        // is committed and visible and nothing after it can also arrive live.
        // Unregistered, so a long history does not fill the live queue.
        let upto = *sub.upto.get_or_insert_with(|| self.hub.last_seq());
        let page = self
            .store
            .space_log_page(&sub.space, sub.cursor, upto, sub.page)?;
        // Retention may have trimmed entries after the cursor since the
        // last page (the horizon is raised before the trim commits, so a
        // read that missed trimmed entries sees it raised), or a snapshot
        // merge brought states the log does not hold (its count moves
        // before and after its commit): the log can no longer replay them,
        // so this page is dropped and the subscription goes back to the
        // current states, as it would have at the start.
        let merges = self.store.merges();
        if sub.cursor.saturating_add(1) < self.trim_point() || merges != sub.merges {
            let base = self.snapshot_base();
            tracing::debug!(space = %sub.space, cursor = sub.cursor, base, horizon = self.store.horizon(), merged = merges != sub.merges, "catch-up overtaken by retention or a merge: current states first");
            sub.merges = merges;
            sub.phase = Phase::Snapshot { after: None, base };
            return Ok(Some(Vec::new()));
        }
        let short = !page.more;
        let page = page.items;
        for (seq, entry) in page {
            sub.cursor = seq;
            if sub.filter.wants(&entry.change.collection) {
                out.push(CatchUp::Change(Arc::new(Committed::new(
                    crate::store::Committed {
                        seq,
                        entry,
                        after: None,
                        source: None,
                    },
                ))));
            }
        }
        if short {
            if matches!(sub.phase, Phase::Backlog) {
                // Register, then read the seam: what was committed meanwhile.
                let link = sub.link.take().ok_or_else(|| {
                    EngineError::Internal("a subscription registered twice".into())
                })?;
                let (id, live_from) = self.hub.register(&sub.space, link, sub.filter.clone());
                sub.id = Some(id);
                sub.upto = Some(live_from);
                sub.phase = Phase::Seam;
            } else {
                sub.cursor = sub.cursor.max(upto);
                sub.phase = Phase::Live;
            }
        }
        Ok(Some(out))
    }

    /// A subscription live from now, with nothing to replay: registered
    /// with fan-out at once. Its id and the last seq before it (live
    /// deliveries start right after).
    pub fn subscribe_live(
        &self,
        space: &str,
        filter: Filter,
        link: ConnLink,
    ) -> Result<(u64, u64), EngineError> {
        validate::validate_name("space", space)?;
        Ok(self.hub.register(space, link, filter))
    }

    pub fn unsubscribe(&self, space: &str, id: u64) {
        self.hub.unregister(space, id);
    }

    pub fn drop_conn(&self, conn: u64) {
        self.hub.unregister_conn(conn);
    }

    pub fn entity(
        &self,
        space: &str,
        collection: &str,
        id: &str,
    ) -> Result<Option<StoredEntity>, EngineError> {
        Ok(self.store.entity(space, collection, id)?)
    }

    pub fn entities(
        &self,
        space: &str,
        collection: Option<&str>,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<(String, String, StoredEntity)>, EngineError> {
        Ok(self.store.entities(space, collection, after, limit)?)
    }

    /// A consistent snapshot of one collection of a space and the seq it
    /// reflects (see `Store::collection_snapshot`); follow it with
    /// `start_subscription(space, seq, ..)` for live changes.
    pub fn collection_snapshot(
        &self,
        space: &str,
        collection: &str,
    ) -> Result<(u64, Vec<(String, StoredEntity)>), EngineError> {
        validate::validate_name("space", space)?;
        Ok(self.store.collection_snapshot(space, collection)?)
    }

    /// Entities of `collection` changed after per-type version `since`, in
    /// version order, and the collection's latest per-type version (see
    /// `Store::type_changes`).
    pub fn type_changes(
        &self,
        space: &str,
        collection: &str,
        since: u64,
        limit: usize,
    ) -> Result<(u64, Vec<(String, StoredEntity)>), EngineError> {
        Ok(self.store.type_changes(space, collection, since, limit)?)
    }

    /// One log entry, if retention has not trimmed it.
    pub fn log_entry(&self, seq: u64) -> Result<Option<LogEntry>, EngineError> {
        Ok(self.store.log_entry(seq)?)
    }

    pub fn space_log(
        &self,
        space: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, LogEntry)>, EngineError> {
        Ok(self.store.space_log(space, after, u64::MAX, limit)?)
    }

    pub fn log_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, LogEntry)>, EngineError> {
        Ok(self.store.log_after(after, limit)?)
    }

    /// Bounded reads: as `space_log`, `log_after` and `entities`, capped in
    /// items and stored bytes, saying whether more follow.
    pub fn space_log_page(
        &self,
        space: &str,
        after: u64,
        cap: Cap,
    ) -> Result<Page<(u64, LogEntry)>, EngineError> {
        Ok(self.store.space_log_page(space, after, u64::MAX, cap)?)
    }

    pub fn log_after_page(
        &self,
        after: u64,
        cap: Cap,
    ) -> Result<Page<(u64, LogEntry)>, EngineError> {
        Ok(self.store.log_after_page(after, cap)?)
    }

    pub fn entities_page(
        &self,
        space: &str,
        collection: Option<&str>,
        after: Option<(&str, &str)>,
        cap: Cap,
    ) -> Result<Page<(String, String, StoredEntity)>, EngineError> {
        Ok(self.store.entities_page(space, collection, after, cap)?)
    }

    pub fn version_vector(&self) -> Result<VersionVector, EngineError> {
        Ok(self.store.version_vector()?)
    }

    pub fn spaces(&self) -> Result<Vec<(String, u64)>, EngineError> {
        Ok(self.store.spaces()?)
    }

    pub fn log_len(&self) -> Result<u64, EngineError> {
        Ok(self.store.log_len()?)
    }

    pub fn horizon(&self) -> u64 {
        self.store.horizon()
    }

    /// Where a catch-up that fell back to current states goes on from:
    /// the last seq those states surely hold. That is the last committed
    /// seq (states read after it hold at least that), never past the
    /// horizon: the horizon is raised before its group commits, so it may
    /// count changes of that group not committed yet, which the states
    /// then lack (they come after, from the log or live). Taking the
    /// horizon alone made a catch-up say it reached a seq it then got
    /// live (the simulator, seed 2).
    fn snapshot_base(&self) -> u64 {
        let committed = self.hub.last_seq();
        self.store.horizon().saturating_sub(1).min(committed)
    }

    /// Below this seq the log can no longer replay a catch-up in flight
    /// for a trim: the horizon, bounded by the last committed seq + 1. A
    /// trim removes only entries committed before its group, so the bound
    /// hides none. A merge raises the horizon past its group's last seq
    /// (see the writer) and is seen by its count instead; without the
    /// bound, a catch-up that just took current states would go back to
    /// them until the next commit.
    fn trim_point(&self) -> u64 {
        let committed = self.hub.last_seq();
        self.store.horizon().min(committed.saturating_add(1))
    }

    /// See `Store::merges`.
    pub fn merges(&self) -> u64 {
        self.store.merges()
    }

    /// See `Store::merges_by_link`.
    pub fn merges_by_link(&self, link: u64) -> u64 {
        self.store.merges_by_link(link)
    }

    /// See `Store::forget_link_merges`.
    pub fn forget_link_merges(&self, link: u64) {
        self.store.forget_link_merges(link)
    }

    /// The storage fault refusing writes now, if any (see `/healthz`).
    pub fn store_fault(&self) -> Option<crate::store::Fault> {
        self.store.fault()
    }
}

/// Tells the other replication links that a snapshot was merged (see
/// `Engine::merge_snapshot`), unless disarmed.
struct ReplanOnDrop<'a> {
    merges: &'a tokio::sync::watch::Sender<(u64, u64)>,
    link: u64,
    armed: bool,
}

impl Drop for ReplanOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            let link = self.link;
            self.merges.send_modify(|m| *m = (m.0 + 1, link));
        }
    }
}
