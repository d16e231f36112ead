//! Durable storage in one redb file: the only module that touches redb.
//!
//! Reads run on the caller's thread against an MVCC snapshot. All writes go
//! through one writer thread (`writer.rs`) that batches concurrent requests
//! into one transaction, so one fsync acknowledges many writes.

mod backup;
mod clock;
mod gate;
mod group_tables;
mod slot;
mod syncer;
mod tables;
mod visible;
pub mod wal;
mod writer;

pub use backup::{check, restore, verify_backup, BackupSummary, CheckReport, RestoreError};
pub use clock::{system_ms, Clock};
pub use gate::ReadHold;
pub use slot::{Backend, Fault};
pub use tables::SCHEMA_VERSION;
pub use writer::{
    free_disk_bytes, Admit, CommitSink, Expect, Job, LocalWrite, Outcome, OutcomeKind, ReadEntity,
    Rejection, SnapEntity,
};

use crate::metrics::Metrics;
use crate::model::{Change, EntityState, NodeId, VersionVector};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use serde::{Deserialize, Serialize};
use slot::Slot;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use tables::*;
use tokio::sync::{mpsc, oneshot};

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Db(#[from] redb::Error),
    #[error("cannot create data dir {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data file has schema version {found}, this build supports up to {supported}: upgrade outpost or restore a backup")]
    SchemaTooNew { found: u32, supported: u32 },
    #[error("encoding a stored value failed: {0}")]
    Encode(String),
    #[error("a stored value is corrupt: {0}")]
    Decode(String),
    /// A write's [`Expect`] precondition did not hold; nothing of its job
    /// was applied. `found` is what the entity held instead.
    #[error("changes[{index}]: precondition failed: found {found}")]
    PreconditionFailed {
        index: usize,
        found: serde_json::Value,
    },
    /// An admission check ([`Admit`]) refused the job; nothing applied.
    #[error("{0}")]
    Rejected(Rejection),
    #[error("the store is shutting down")]
    Closed,
    #[error("the data disk is nearly full ({free_bytes} bytes free): writes are refused until space is freed")]
    DiskFull { free_bytes: u64 },
    /// A write to the data file failed with ENOSPC: the store refuses
    /// writes and reopens itself once space is freed.
    #[error(
        "no space left on device: the data disk is full; writes are refused until space is freed"
    )]
    NoSpace,
    /// A write to the data file failed (I/O error): the store refuses writes
    /// until it has reopened the file.
    #[error("the store is unavailable after a storage I/O error ({cause}); it reopens itself and writes resume then")]
    Faulted { cause: String },
}

macro_rules! redb_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Db(e.into()) }
        }
    )*};
}
redb_errors!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// `immediate`: every acknowledged commit is fsynced. `relaxed`: commits are
/// made durable at most `RELAXED_FLUSH` later; a crash can lose that window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    Immediate,
    Relaxed,
}

pub struct StoreOptions {
    pub dir: PathBuf,
    pub durability: Durability,
    /// Bound on queued write jobs; callers wait (backpressure) when it is full.
    pub queue: usize,
    /// Refuse writes when the disk has less than this many bytes free.
    pub min_free_bytes: u64,
    /// redb's page cache size (its default, 1 GiB, is too much for a Pi).
    pub cache_bytes: usize,
    /// Largest tolerated clock skew of client-supplied edit times.
    pub max_skew_ms: u64,
    /// The clock local stamps and log entry times come from.
    pub clock: Clock,
    /// Where the write-ahead log lives instead of `outpost.wal` (None: the
    /// file; a simulation passes a disk that can lose unsynced bytes).
    pub wal_backend: Option<wal::WalBackend>,
}

/// Bounds of one paged read: at most `items`, and no item is added once
/// the page holds `bytes` of stored (encoded) data; a page always takes
/// its first item, however large.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap {
    pub items: usize,
    pub bytes: usize,
}

impl Cap {
    pub fn items(items: usize) -> Cap {
        Cap {
            items,
            bytes: usize::MAX,
        }
    }

    pub fn new(items: usize, bytes: usize) -> Cap {
        Cap { items, bytes }
    }
}

/// One page of a bounded read.
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// The read stopped at its cap: more may follow (read on from the last
    /// item). False: the range is exhausted.
    pub more: bool,
    /// Stored bytes of the items.
    pub bytes: usize,
    /// For reads that report it: the last committed seq the read saw.
    pub seq: u64,
    cap: Cap,
}

impl<T> Page<T> {
    fn new(cap: Cap) -> Self {
        Page {
            items: Vec::new(),
            more: false,
            bytes: 0,
            seq: 0,
            cap,
        }
    }

    fn full(&self) -> bool {
        self.items.len() >= self.cap.items
            || (!self.items.is_empty() && self.bytes >= self.cap.bytes)
    }

    fn push(&mut self, item: T, bytes: usize) {
        self.items.push(item);
        self.bytes += bytes;
    }
}

/// A log record: the change plus what the local merge made of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    pub change: Change,
    /// Local commit time (ms since the epoch), for retention.
    pub at_ms: u64,
    /// The entity's version after this change (count of changes applied).
    pub version: u64,
    /// Whether the entity did not exist before this change.
    pub created: bool,
    /// The entity type's (collection's) version after this change (see
    /// `tables::TYPE_VERSIONS`); 0 in entries written before schema 2.
    #[serde(default)]
    pub type_version: u64,
}

/// A committed change as handed to fan-out and catch-up (which add the
/// frames rendered from it: `engine::Committed`).
#[derive(Clone, Debug)]
pub struct Committed {
    pub seq: u64,
    pub entry: LogEntry,
    /// The entity after the merge (live fan-out only; catch-up reads None).
    pub after: Option<After>,
    /// The connection that wrote it, so dialects can skip echoing it back.
    pub source: Option<u64>,
}

/// The entity after a committed change, as live fan-out hands it on. The
/// writer moves its merged state in here (no copy) and the view readers
/// see is built on first use, once per change however many subscribers
/// read it, on the thread that renders it: most dialects never read it,
/// and the single writer thread is the relay's bottleneck at small fan-out.
#[derive(Clone, Debug)]
pub struct After(AfterOf);

#[derive(Clone, Debug)]
enum AfterOf {
    State(EntityState, std::sync::OnceLock<EntityView>),
    View(EntityView),
}

impl After {
    /// The entity's merged state after the change.
    pub fn new(state: EntityState) -> After {
        After(AfterOf::State(state, std::sync::OnceLock::new()))
    }

    /// The entity as readers see it (built once, on first use).
    pub fn view(&self) -> &EntityView {
        match &self.0 {
            AfterOf::State(s, view) => view.get_or_init(|| EntityView {
                exists: s.exists(),
                fields: s.visible(),
            }),
            AfterOf::View(v) => v,
        }
    }

    /// Whether the entity exists (as `view().exists`, without the view).
    pub fn exists(&self) -> bool {
        match &self.0 {
            AfterOf::State(s, _) => s.exists(),
            AfterOf::View(v) => v.exists,
        }
    }

    /// A visible field's value, `null` if absent or removed (as
    /// `view().fields.get(name)`, without the view).
    pub fn field(&self, name: &str) -> &serde_json::Value {
        const NULL: &serde_json::Value = &serde_json::Value::Null;
        match &self.0 {
            AfterOf::State(s, _) => s.fields.get(name).map_or(NULL, |c| &c.value),
            AfterOf::View(v) => v.fields.get(name).unwrap_or(NULL),
        }
    }

    /// The visible fields (those of `view().fields`, in the same order),
    /// without the view.
    pub fn visible(&self) -> impl Iterator<Item = (&String, &serde_json::Value)> {
        let (state, view) = match &self.0 {
            AfterOf::State(s, _) => (Some(&s.fields), None),
            AfterOf::View(v) => (None, Some(&v.fields)),
        };
        let state = state
            .into_iter()
            .flatten()
            .filter(|(_, c)| !c.value.is_null())
            .map(|(k, c)| (k, &c.value));
        state.chain(view.into_iter().flatten())
    }
}

impl From<EntityView> for After {
    fn from(v: EntityView) -> After {
        After(AfterOf::View(v))
    }
}

/// An entity as readers see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EntityView {
    pub exists: bool,
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// An entity as stored: the CRDT state plus local bookkeeping.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StoredEntity {
    pub state: EntityState,
    pub version: u64,
    /// Local seq of the newest change that touched it.
    pub seq: u64,
    /// Its collection's per-type version at its newest change (its key in
    /// `tables::TYPE_INDEX`).
    #[serde(default)]
    pub type_version: u64,
}

impl StoredEntity {
    pub fn view(&self) -> EntityView {
        EntityView {
            exists: self.state.exists(),
            fields: self.state.visible(),
        }
    }
}

/// The write-ahead log's file name, beside `outpost.redb`.
pub const WAL_FILE: &str = "outpost.wal";

/// Holds the writer parked ([`Store::hold_writer`]) until dropped.
#[doc(hidden)]
pub struct WriterHold(#[allow(dead_code)] std::sync::mpsc::Sender<()>);

pub struct Store {
    /// The open file; replaced in place after an I/O error (`slot.rs`).
    slot: Arc<Slot>,
    node: NodeId,
    /// Taken (dropped) by `close` so the writer sees the queue end.
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    /// See `enqueued`.
    enqueued: AtomicU64,
    last_seq: Arc<AtomicU64>,
    horizon: Arc<AtomicU64>,
    merges: Arc<writer::MergeCounts>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Relaxed durability only: asks the writer to fsync once a second.
    ticker: Mutex<Option<JoinHandle<()>>>,
    path: PathBuf,
    /// Every read passes it (see `gate.rs`: a test seam).
    gate: Arc<gate::ReadGate>,
    /// Shared with the writer: what reads may see (`visible.rs`).
    vis: Arc<visible::Visibility>,
}

/// The relaxed-durability flush ticker. It holds only a weak sender, so it
/// never keeps the writer alive; it ends once the store's queue is gone.
fn spawn_ticker(jobs: mpsc::WeakSender<Job>, path: &Path) -> Result<JoinHandle<()>, StoreError> {
    std::thread::Builder::new()
        .name("outpost-flush".into())
        .spawn(move || loop {
            std::thread::park_timeout(writer::RELAXED_FLUSH);
            match jobs.upgrade() {
                // A full queue means the writer is busy committing, and its
                // commits fsync on their own once the interval has passed.
                Some(tx) => {
                    let _ = tx.try_send(Job::Flush);
                }
                None => return,
            }
        })
        .map_err(|source| StoreError::Dir {
            path: path.to_path_buf(),
            source,
        })
}

impl Store {
    /// Open (or create) `outpost.redb` in `opts.dir`, check its schema,
    /// and start the writer thread, which reports commits to `sink`.
    pub fn open(
        opts: StoreOptions,
        metrics: Arc<Metrics>,
        sink: Arc<dyn CommitSink>,
    ) -> Result<Store, StoreError> {
        Store::open_on(opts, metrics, sink, None)
    }

    /// As `open`, with the database in `backend` instead of the data file
    /// (None: the file). The data dir is still created and used for the
    /// free-space check.
    pub fn open_on(
        opts: StoreOptions,
        metrics: Arc<Metrics>,
        sink: Arc<dyn CommitSink>,
        backend: Option<Backend>,
    ) -> Result<Store, StoreError> {
        std::fs::create_dir_all(&opts.dir).map_err(|source| StoreError::Dir {
            path: opts.dir.clone(),
            source,
        })?;
        let path = opts.dir.join("outpost.redb");
        let (slot, db) = Slot::open(&path, opts.cache_bytes, backend)?;
        let (node, last_seq, horizon, hlc) = init_tables(&db)?;
        drop(db);
        let (wal, records) = wal::Wal::open(opts.wal_backend.as_ref(), &opts.dir.join(WAL_FILE))?;
        let last_seq = Arc::new(AtomicU64::new(last_seq));
        let horizon = Arc::new(AtomicU64::new(horizon));
        let merges = Arc::new(writer::MergeCounts::default());
        let vis = Arc::new(visible::Visibility::default());
        let (tx, rx) = mpsc::channel(opts.queue.max(1));
        // Relaxed: fsync once a second. Immediate: checkpoint the log once
        // a second (an idle relay's last groups reach redb, then it rests).
        let ticker = Some(spawn_ticker(tx.downgrade(), &path)?);
        let mut w = writer::Writer::new(
            slot.clone(),
            node,
            hlc,
            opts,
            metrics,
            sink,
            last_seq.clone(),
            horizon.clone(),
        )
        .with_merges(merges.clone())
        .with_visibility(vis.clone());
        w.start_wal(wal, records)?;
        let thread = std::thread::Builder::new()
            .name("outpost-writer".into())
            .spawn(move || w.run(rx))
            .map_err(|source| StoreError::Dir {
                path: path.clone(),
                source,
            })?;
        Ok(Store {
            slot,
            node,
            jobs: Mutex::new(Some(tx)),
            enqueued: AtomicU64::new(0),
            last_seq,
            horizon,
            merges,
            thread: Mutex::new(Some(thread)),
            ticker: Mutex::new(ticker),
            path,
            gate: Default::default(),
            vis,
        })
    }

    pub fn node_id(&self) -> NodeId {
        self.node
    }

    /// A read transaction that sees only what may be shown: durable
    /// groups (`visible.rs`).
    fn read_tx(&self) -> Result<redb::ReadTransaction, StoreError> {
        self.gate.pass();
        loop {
            let epoch = self.vis.epoch();
            let tx = self.slot.get()?.begin_read()?;
            match self.vis.wait(epoch, &self.slot) {
                Ok(()) => return Ok(tx),
                Err(visible::Unseen::Reopened) => continue,
                Err(visible::Unseen::Faulted(e)) => return Err(e),
            }
        }
    }

    /// Park every read at its start until the guard is dropped (tests: a
    /// read as slow as a stuck disk makes it). Writes go on.
    #[doc(hidden)]
    pub fn hold_reads(&self) -> ReadHold {
        self.gate.hold()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Highest committed local seq.
    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Acquire)
    }

    /// Moves with every snapshot merge (or import) this process applied:
    /// state and version vector that came without log entries. Raised
    /// before their commit and again after it, so a count read before the
    /// version vector and compared with one read later tells whether that
    /// vector, or any read since, may count changes the log does not hold.
    pub fn merges(&self) -> u64 {
        self.merges.all()
    }

    /// The part of `merges` received on replication link `link` (read it
    /// after `merges`: a link's count moves first).
    pub fn merges_by_link(&self, link: u64) -> u64 {
        self.merges.by_link(link)
    }

    /// The link ended: forget its merge count.
    pub fn forget_link_merges(&self, link: u64) {
        self.merges.forget(link)
    }

    /// Lowest local seq still in the log (1 until retention trims).
    pub fn horizon(&self) -> u64 {
        self.horizon.load(Ordering::Acquire)
    }

    /// Queue a job for the writer; waits while the queue is full.
    pub async fn submit<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Job,
    ) -> Result<T, StoreError> {
        let rx = self.enqueue(make).await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Queue a job and return at once the receiver of its answer: the job
    /// is in the writer's queue (FIFO) when this returns, so jobs queued
    /// one after another are applied in that order, whichever answer is
    /// awaited first. Waits while the queue is full.
    pub async fn enqueue<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Job,
    ) -> Result<oneshot::Receiver<Result<T, StoreError>>, StoreError> {
        let (tx, rx) = oneshot::channel();
        let jobs = self
            .jobs
            .lock()
            .ok()
            .and_then(|j| j.clone())
            .ok_or(StoreError::Closed)?;
        jobs.send(make(tx)).await.map_err(|_| StoreError::Closed)?;
        self.enqueued.fetch_add(1, Ordering::AcqRel);
        Ok(rx)
    }

    /// Jobs handed to the writer so far (not counting its own flush
    /// ticks): deterministic tests wait on it to know a request's job is
    /// queued behind [`Store::hold_writer`].
    #[doc(hidden)]
    pub fn enqueued(&self) -> u64 {
        self.enqueued.load(Ordering::Acquire)
    }

    /// Park the writer until the returned guard is dropped (deterministic
    /// tests: jobs queued meanwhile are then taken as one group).
    #[doc(hidden)]
    pub async fn hold_writer(&self) -> Result<WriterHold, StoreError> {
        let (release_tx, release) = std::sync::mpsc::channel();
        let rx = self
            .enqueue(|held| Job::Hold {
                held,
                release: std::sync::Mutex::new(release),
            })
            .await?;
        rx.await.map_err(|_| StoreError::Closed)??;
        Ok(WriterHold(release_tx))
    }

    /// Why writes are refused right now (an I/O error the store has not
    /// yet recovered from), if they are.
    pub fn fault(&self) -> Option<Fault> {
        self.slot.fault()
    }

    /// Round trip through the writer queue: proves the writer loop is
    /// running (the systemd watchdog's health check).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.submit(Job::Ping).await
    }

    /// Stop taking jobs, let the writer finish what is queued, and wait for it.
    pub fn close(&self) {
        // Dropping the sender ends the writer loop once the queue is drained;
        // in-flight `submit`s hold short-lived clones and finish first.
        if let Ok(mut j) = self.jobs.lock() {
            j.take();
        }
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
        // The ticker sees the queue gone at its next wake-up; wake it now.
        let ticker = self.ticker.lock().ok().and_then(|mut t| t.take());
        if let Some(h) = ticker {
            h.thread().unpark();
            let _ = h.join();
        }
    }

    /// Changes of `space` with local seq in `(after, upto]`, at most `limit`.
    pub fn space_log(
        &self,
        space: &str,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<(u64, LogEntry)>, StoreError> {
        Ok(self
            .space_log_page(space, after, upto, Cap::items(limit))?
            .items)
    }

    /// As `space_log`, bounded by `cap` in items and stored bytes.
    pub fn space_log_page(
        &self,
        space: &str,
        after: u64,
        upto: u64,
        cap: Cap,
    ) -> Result<Page<(u64, LogEntry)>, StoreError> {
        let tx = self.read_tx()?;
        let idx = tx.open_table(SPACE_LOG)?;
        let log = tx.open_table(LOG)?;
        let mut page = Page::new(cap);
        for row in idx.range((space, after.saturating_add(1))..=(space, upto))? {
            if page.full() {
                page.more = true;
                break;
            }
            let (k, _) = row?;
            let seq = k.value().1;
            if let Some(v) = log.get(seq)? {
                let raw = v.value();
                page.push((seq, decode(raw)?), raw.len());
            }
        }
        Ok(page)
    }

    /// Entities of `collection` in `space` changed after per-type version
    /// `since`, in per-type version order (each once, at its newest), at
    /// most `limit`; and the collection's latest per-type version, read in
    /// the same transaction.
    pub fn type_changes(
        &self,
        space: &str,
        collection: &str,
        since: u64,
        limit: usize,
    ) -> Result<(u64, Vec<(String, StoredEntity)>), StoreError> {
        let tx = self.read_tx()?;
        let latest = tx
            .open_table(TYPE_VERSIONS)?
            .get((space, collection))?
            .map(|v| v.value())
            .unwrap_or(0);
        let idx = tx.open_table(TYPE_INDEX)?;
        let ents = tx.open_table(ENTITY)?;
        let mut out = Vec::new();
        let lo = (space, collection, since.saturating_add(1));
        for row in idx.range(lo..=(space, collection, u64::MAX))? {
            let (_, id) = row?;
            let id = id.value();
            if let Some(v) = ents.get((space, collection, id))? {
                out.push((id.to_string(), decode(v.value())?));
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok((latest, out))
    }

    /// One log entry, if still retained.
    pub fn log_entry(&self, seq: u64) -> Result<Option<LogEntry>, StoreError> {
        let tx = self.read_tx()?;
        let log = tx.open_table(LOG)?;
        let v = log.get(seq)?;
        v.map(|v| decode(v.value())).transpose()
    }

    /// The whole log after `after` (all spaces), for replication.
    /// Local seq of the change `(origin, origin_seq)`, if still in the log.
    pub fn local_seq_of(&self, origin: NodeId, origin_seq: u64) -> Result<Option<u64>, StoreError> {
        let tx = self.read_tx()?;
        let ident = tx.open_table(IDENT)?;
        Ok(ident.get((origin.0, origin_seq))?.map(|v| v.value()))
    }

    /// The log's entries of `origin` numbered below `before`, newest first,
    /// at most `max`, as (origin seq, entry); and whether the log's start
    /// was trimmed (then older entries of the origin may be gone). For the
    /// JetStream publisher, which vouches for the origin seqs its log lacks.
    pub fn origin_before(
        &self,
        origin: NodeId,
        before: u64,
        max: usize,
    ) -> Result<(Vec<(u64, LogEntry)>, bool), StoreError> {
        let tx = self.read_tx()?;
        let ident = tx.open_table(IDENT)?;
        let log = tx.open_table(LOG)?;
        let trimmed = log.first()?.is_none_or(|(k, _)| k.value() > 1);
        let mut out = Vec::new();
        for row in ident.range((origin.0, 0)..(origin.0, before))?.rev() {
            if out.len() >= max {
                break;
            }
            let (k, v) = row?;
            if let Some(e) = log.get(v.value())? {
                out.push((k.value().1, decode(e.value())?));
            }
        }
        Ok((out, trimmed))
    }

    pub fn log_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, LogEntry)>, StoreError> {
        Ok(self.log_after_page(after, Cap::items(limit))?.items)
    }

    /// As `log_after`, bounded by `cap` in items and stored bytes.
    pub fn log_after_page(
        &self,
        after: u64,
        cap: Cap,
    ) -> Result<Page<(u64, LogEntry)>, StoreError> {
        let tx = self.read_tx()?;
        let log = tx.open_table(LOG)?;
        let mut page = Page::new(cap);
        // The last seq from this transaction, not the writer's counter in
        // memory: that moves only after the commit, and a page read in
        // between (after a trim) found the range empty with a last seq that
        // said nothing was there; a replication link took itself for caught
        // up and vouched for the trimmed changes (the simulator found it).
        page.seq = tx
            .open_table(META)?
            .get(META_LAST_SEQ)?
            .map(|v| u64_from(v.value()))
            .unwrap_or(0);
        for row in log.range(after.saturating_add(1)..)? {
            if page.full() {
                page.more = true;
                break;
            }
            let (k, v) = row?;
            let raw = v.value();
            page.push((k.value(), decode(raw)?), raw.len());
        }
        Ok(page)
    }

    pub fn entity(
        &self,
        space: &str,
        collection: &str,
        id: &str,
    ) -> Result<Option<StoredEntity>, StoreError> {
        let tx = self.read_tx()?;
        let t = tx.open_table(ENTITY)?;
        let v = t.get((space, collection, id))?;
        v.map(|v| decode(v.value())).transpose()
    }

    /// Entities of a space (optionally one collection), in key order, after
    /// the `(collection, id)` cursor, at most `limit`.
    pub fn entities(
        &self,
        space: &str,
        collection: Option<&str>,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<(String, String, StoredEntity)>, StoreError> {
        Ok(self
            .entities_page(space, collection, after, Cap::items(limit))?
            .items)
    }

    /// As `entities`, bounded by `cap` in items and stored bytes. `seq` of
    /// the page is the last seq its read transaction saw.
    pub fn entities_page(
        &self,
        space: &str,
        collection: Option<&str>,
        after: Option<(&str, &str)>,
        cap: Cap,
    ) -> Result<Page<(String, String, StoredEntity)>, StoreError> {
        let tx = self.read_tx()?;
        let mut page = Page::new(cap);
        page.seq = tx
            .open_table(META)?
            .get(META_LAST_SEQ)?
            .map(|v| u64_from(v.value()))
            .unwrap_or(0);
        let t = tx.open_table(ENTITY)?;
        let lo = match (after, collection) {
            (Some((c, i)), _) => (space, c, i),
            (None, Some(c)) => (space, c, ""),
            (None, None) => (space, "", ""),
        };
        for row in t.range(lo..)? {
            let (k, v) = row?;
            let (s, c, i) = k.value();
            if s != space || collection.is_some_and(|want| want != c) {
                break;
            }
            if after.is_some_and(|(ac, ai)| (ac, ai) == (c, i)) {
                continue;
            }
            if page.full() {
                page.more = true;
                break;
            }
            let raw = v.value();
            page.push((c.to_string(), i.to_string(), decode(raw)?), raw.len());
        }
        Ok(page)
    }

    /// Every entity of one collection of `space`, in id order, read in one
    /// transaction together with the last seq it reflects: a consistent
    /// snapshot that a subscription from that seq continues without a gap.
    pub fn collection_snapshot(
        &self,
        space: &str,
        collection: &str,
    ) -> Result<(u64, Vec<(String, StoredEntity)>), StoreError> {
        let tx = self.read_tx()?;
        let meta = tx.open_table(META)?;
        let seq = meta
            .get(META_LAST_SEQ)?
            .map(|v| u64_from(v.value()))
            .unwrap_or(0);
        let t = tx.open_table(ENTITY)?;
        let mut out = Vec::new();
        for row in t.range((space, collection, "")..)? {
            let (k, v) = row?;
            let (s, c, i) = k.value();
            if s != space || c != collection {
                break;
            }
            out.push((i.to_string(), decode(v.value())?));
        }
        Ok((seq, out))
    }

    pub fn version_vector(&self) -> Result<VersionVector, StoreError> {
        let tx = self.read_tx()?;
        let t = tx.open_table(VV)?;
        let mut vv = VersionVector::new();
        for row in t.iter()? {
            let (k, v) = row?;
            vv.insert(NodeId(k.value()), v.value());
        }
        Ok(vv)
    }

    /// Per origin, the highest origin seq counted by a merged snapshot
    /// without log entries (see `tables::META_MERGED_VV`).
    pub fn merged_vv(&self) -> Result<VersionVector, StoreError> {
        let tx = self.read_tx()?;
        let meta = tx.open_table(META)?;
        match meta.get(META_MERGED_VV)? {
            Some(v) => decode(v.value()),
            None => Ok(VersionVector::new()),
        }
    }

    pub fn cursor(&self, name: &str) -> Result<u64, StoreError> {
        let tx = self.read_tx()?;
        let t = tx.open_table(CURSORS)?;
        Ok(t.get(name)?.map(|v| v.value()).unwrap_or(0))
    }

    /// Spaces with the number of changes applied in each.
    pub fn spaces(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let tx = self.read_tx()?;
        let t = tx.open_table(SPACES)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_string(), v.value()));
        }
        Ok(out)
    }

    /// Stream a consistent copy of every table (see `backup.rs`) to `out`,
    /// from one read transaction: writes go on meanwhile. Blocking; `out`
    /// returning false (the receiver is gone) stops it.
    pub fn backup(
        &self,
        now_ms: u64,
        out: impl FnMut(Vec<u8>) -> bool,
    ) -> Result<BackupSummary, StoreError> {
        backup::dump(self.read_tx()?, now_ms, out)
    }

    /// Every entity of every space (or of `space`), with the last seq they
    /// reflect, read in one transaction: `visit` gets them in key order and
    /// may stop the walk by returning false.
    pub fn export(
        &self,
        space: Option<&str>,
        header: impl FnOnce(u64) -> bool,
        mut visit: impl FnMut(&str, &str, &str, StoredEntity) -> bool,
    ) -> Result<(), StoreError> {
        let tx = self.read_tx()?;
        let seq = tx
            .open_table(META)?
            .get(META_LAST_SEQ)?
            .map(|v| u64_from(v.value()))
            .unwrap_or(0);
        if !header(seq) {
            return Ok(());
        }
        let t = tx.open_table(ENTITY)?;
        let range = match space {
            Some(s) => t.range((s, "", "")..)?,
            None => t.range::<(&str, &str, &str)>(..)?,
        };
        for row in range {
            let (k, v) = row?;
            let (s, c, i) = k.value();
            if space.is_some_and(|want| want != s) {
                break;
            }
            if !visit(s, c, i, decode(v.value())?) {
                break;
            }
        }
        Ok(())
    }

    /// Number of entities (tombstones included) of `space`: a key scan.
    pub fn count_entities(&self, space: &str) -> Result<u64, StoreError> {
        let tx = self.read_tx()?;
        let t = tx.open_table(ENTITY)?;
        let mut n = 0;
        for row in t.range((space, "", "")..)? {
            let (k, _) = row?;
            if k.value().0 != space {
                break;
            }
            n += 1;
        }
        Ok(n)
    }

    /// Commit time of the newest change of `space` still in the log.
    pub fn last_write_ms(&self, space: &str) -> Result<Option<u64>, StoreError> {
        let tx = self.read_tx()?;
        let idx = tx.open_table(SPACE_LOG)?;
        let last = idx.range((space, 0u64)..=(space, u64::MAX))?.next_back();
        let Some(row) = last else { return Ok(None) };
        let seq = row?.0.value().1;
        let log = tx.open_table(LOG)?;
        let entry: Option<LogEntry> = log.get(seq)?.map(|v| decode(v.value())).transpose()?;
        Ok(entry.map(|e| e.at_ms))
    }

    /// Number of changes currently held in the log.
    pub fn log_len(&self) -> Result<u64, StoreError> {
        let tx = self.read_tx()?;
        Ok(tx.open_table(LOG)?.len()?)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

/// Create missing tables, check the schema, load or make the node id.
pub(crate) fn init_tables(
    db: &Database,
) -> Result<(NodeId, u64, u64, crate::model::Hlc), StoreError> {
    let tx = db.begin_write()?;
    let out;
    {
        let mut meta = tx.open_table(META)?;
        let found = meta
            .get(META_SCHEMA)?
            .map(|v| u32_from(v.value()))
            .unwrap_or(0);
        if found > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        meta.insert(META_SCHEMA, SCHEMA_VERSION.to_le_bytes().as_slice())?;
        if found == 1 {
            migrate_type_versions(&tx)?;
        }
        let existing = meta.get(META_NODE)?.map(|v| u64_from(v.value()));
        let node = match existing {
            Some(n) => NodeId(n),
            None => {
                let n = random_node_id()?;
                meta.insert(META_NODE, n.0.to_le_bytes().as_slice())?;
                n
            }
        };
        let last = meta
            .get(META_LAST_SEQ)?
            .map(|v| u64_from(v.value()))
            .unwrap_or(0);
        let horizon = meta
            .get(META_HORIZON)?
            .map(|v| u64_from(v.value()))
            .unwrap_or(1);
        let hlc = match meta.get(META_HLC)? {
            Some(v) => decode(v.value())?,
            None => crate::model::Hlc::new(node),
        };
        let _ = &hlc;
        out = (node, last, horizon, hlc);
    }
    tx.open_table(LOG)?;
    tx.open_table(IDENT)?;
    tx.open_table(VV)?;
    tx.open_table(ENTITY)?;
    tx.open_table(SPACE_LOG)?;
    tx.open_table(SPACES)?;
    tx.open_table(CURSORS)?;
    tx.open_table(TYPE_VERSIONS)?;
    tx.open_table(TYPE_INDEX)?;
    tx.commit()?;
    Ok(out)
}

/// Schema 1 → 2: give every existing entity a per-type version, in the
/// order of its newest change (so a client's cursor from before sees each
/// once), and build the index. One pass over the entities, at open. Log
/// entries written before keep `type_version` 0.
fn migrate_type_versions(tx: &redb::WriteTransaction) -> Result<(), StoreError> {
    let mut ents = tx.open_table(ENTITY)?;
    let mut order: Vec<(u64, String, String, String)> = Vec::new();
    for row in ents.iter()? {
        let (k, v) = row?;
        let (s, c, i) = k.value();
        let e: StoredEntity = decode(v.value())?;
        order.push((e.seq, s.to_string(), c.to_string(), i.to_string()));
    }
    order.sort();
    let mut versions = tx.open_table(TYPE_VERSIONS)?;
    let mut idx = tx.open_table(TYPE_INDEX)?;
    for (_, s, c, i) in order {
        let key = (s.as_str(), c.as_str(), i.as_str());
        let mut e: StoredEntity = match ents.get(key)? {
            Some(v) => decode(v.value())?,
            None => continue,
        };
        let tv = versions
            .get((s.as_str(), c.as_str()))?
            .map(|v| v.value())
            .unwrap_or(0)
            + 1;
        versions.insert((s.as_str(), c.as_str()), tv)?;
        idx.insert((s.as_str(), c.as_str(), tv), i.as_str())?;
        e.type_version = tv;
        ents.insert(key, encode(&e)?.as_slice())?;
    }
    tracing::info!("store migrated to schema 2 (per-type versions)");
    Ok(())
}

fn random_node_id() -> Result<NodeId, StoreError> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| StoreError::Encode("no system randomness for the node id".into()))?;
    Ok(NodeId(u64::from_le_bytes(b)))
}

pub(crate) fn u64_from(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    let n = b.len().min(8);
    a[..n].copy_from_slice(&b[..n]);
    u64::from_le_bytes(a)
}

fn u32_from(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    let n = b.len().min(4);
    a[..n].copy_from_slice(&b[..n]);
    u32::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Op, Stamp};
    use serde_json::{json, Value};

    fn change(op: Op, fields: Value, ms: u64) -> Change {
        Change {
            space: "s".into(),
            collection: "c".into(),
            id: "e".into(),
            op,
            fields: fields
                .as_object()
                .map(|m| m.clone().into_iter().collect())
                .unwrap_or_default(),
            stamp: Stamp {
                ms,
                counter: 0,
                node: NodeId(1),
            },
            origin: NodeId(1),
            seq: ms,
            actor: "a".into(),
        }
    }

    /// `After` answers from the merged state exactly what the view built
    /// from it holds: removed fields absent, a deleted entity not existing.
    #[test]
    fn after_answers_as_its_view() {
        let mut state = EntityState::default();
        let steps = [
            change(Op::Put, json!({"a": 1, "b": "x", "c": [1]}), 1),
            change(Op::Patch, json!({"b": null, "d": {"k": 2}}), 2),
            change(Op::Delete, json!({}), 3),
            change(Op::Patch, json!({"a": 5}), 4),
        ];
        for step in &steps {
            state.apply(step);
            let stored = StoredEntity {
                state: state.clone(),
                ..Default::default()
            };
            let want = stored.view();
            let after = After::new(state.clone());
            assert_eq!(after.exists(), want.exists);
            for name in ["a", "b", "c", "d", "nope"] {
                assert_eq!(
                    after.field(name),
                    want.fields.get(name).unwrap_or(&Value::Null)
                );
            }
            let visible: Vec<(&String, &Value)> = after.visible().collect();
            assert_eq!(visible, want.fields.iter().collect::<Vec<_>>());
            assert_eq!(after.view(), &want);
            let from_view = After::from(want.clone());
            assert_eq!(from_view.exists(), want.exists);
            assert_eq!(from_view.field("a"), after.field("a"));
            assert_eq!(from_view.visible().count(), visible.len());
            assert_eq!(from_view.view(), &want);
        }
    }
}
