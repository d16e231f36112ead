//! The single writer: group commit on a dedicated thread.
//!
//! Jobs queue on a bounded channel. The writer takes one, then every job
//! already waiting (up to `MAX_GROUP`), applies them all in one redb
//! transaction and commits once. A group the write-ahead log makes durable
//! goes to the syncer thread (`syncer.rs`), which syncs the log, then
//! reports the committed changes to the sink in seq order and only then
//! answers each job, while the writer commits the next group; any other
//! group is durable (or relaxed) at its commit and the writer finishes it
//! itself, once the syncer is idle. So an ack always follows a durable
//! commit, and fan-out order equals commit order.

use super::group_tables::Tables;
use super::slot::{fault_of, Fault, Slot};
use super::syncer::{Done, Finisher, Syncer};
use super::tables::*;
use super::visible::Visibility;
use super::wal::{Effect, Record, Wal};
use super::{After, Committed, Durability, LogEntry, StoreError, StoreOptions, StoredEntity};
use crate::metrics::Metrics;
use crate::model::{Change, Conflict, Hlc, NodeId, Op, Stamp};
use redb::ReadableTable;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Most jobs folded into one transaction.
const MAX_GROUP: usize = 512;
/// With relaxed durability, force an fsync at least this often.
pub const RELAXED_FLUSH: Duration = Duration::from_secs(1);
/// With the write-ahead log, checkpoint redb at least this often under
/// load: each checkpoint rewrites every B-tree page dirtied since the last
/// one, so a hot entity's page is written once per interval, not once per
/// group (disk wear). Recovery replays at most this much log (and at most
/// `wal::CHECKPOINT_BYTES`).
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);
/// With the write-ahead log, checkpoint once no group has committed for
/// this long: an idle relay's data file is current and it writes nothing.
pub const IDLE_CHECKPOINT: Duration = Duration::from_millis(500);
/// After an I/O error, how often the writer tries to reopen the file.
const REOPEN_EVERY: Duration = Duration::from_secs(1);
/// After ENOSPC, free space needed before a reopen is tried (redb's repair
/// at open writes to the file; below this it would fail again).
const REOPEN_MIN_FREE: u64 = 1 << 20;
/// How long a reading of the free disk space well above `min_free_bytes`
/// stands (see `Writer::free_bytes`).
const FREE_BYTES_FRESH: Duration = Duration::from_millis(100);
/// How far above `min_free_bytes` a reading must be to stand for
/// [`FREE_BYTES_FRESH`].
const FREE_BYTES_MARGIN: u64 = 64 << 20;

/// Receives every commit, in order, on the syncer thread (or the writer's,
/// for a group it finishes itself; never both at once). It must not block:
/// fan-out only `try_send`s into bounded queues.
pub trait CommitSink: Send + Sync {
    fn committed(&self, last_seq: u64, batch: Vec<Arc<Committed>>);
    /// States in these spaces changed without log entries (a merged peer
    /// snapshot): live subscribers must catch up again from the state.
    fn states_merged(&self, spaces: &[String]);
}

/// One entity of a peer's state snapshot.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SnapEntity {
    pub space: String,
    pub collection: String,
    pub id: String,
    pub state: crate::model::EntityState,
}

/// A write from a local client: the writer assigns stamp, origin and seq.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalWrite {
    pub collection: String,
    pub id: String,
    pub op: Op,
    pub fields: BTreeMap<String, Value>,
    /// The client's own edit time (µs since the epoch), if it sent one.
    pub client_us: Option<u64>,
    /// Apply only if the entity is in this state (compare-and-swap).
    pub expect: Option<Expect>,
}

/// A precondition on a local write, checked by the writer inside the
/// transaction that would apply it, so no other local write can slip in
/// between the check and the write. If any write of a job fails its
/// precondition, none of the job's writes is applied and the job is answered
/// [`StoreError::PreconditionFailed`]: a job is all-or-nothing, so a caller
/// can put a document and its bookkeeping (history, device records) in one
/// job guarded by one precondition. Preconditions are evaluated against the
/// state before any write of the job. They are a local admission check only:
/// changes from peers and the upstream merge as always (per-field LWW), so
/// relays that accept concurrent writes still converge.
#[derive(Clone, Debug, PartialEq)]
pub enum Expect {
    /// The entity's local change count (`StoredEntity::version`); 0 means
    /// no change to it was ever applied here.
    Version(u64),
    /// These visible field values; `null` means the field is absent (as it
    /// is on an entity that does not exist or is deleted).
    Fields(BTreeMap<String, Value>),
    /// The entity exists and is not deleted (a REST update or delete of
    /// something that must be there: one racing a delete must not bring
    /// it back).
    Exists,
}

impl Expect {
    /// None if `ent` satisfies the precondition, else what was found
    /// instead (the version, or the expected fields' actual values).
    pub fn check(&self, ent: Option<&StoredEntity>) -> Option<Value> {
        match self {
            Expect::Version(v) => {
                let found = ent.map(|e| e.version).unwrap_or(0);
                (found != *v).then(|| Value::from(found))
            }
            Expect::Fields(want) => {
                let visible = ent
                    .filter(|e| e.state.exists())
                    .map(|e| e.state.visible())
                    .unwrap_or_default();
                let found: serde_json::Map<String, Value> = want
                    .keys()
                    .map(|k| (k.clone(), visible.get(k).cloned().unwrap_or(Value::Null)))
                    .collect();
                let same = want.iter().all(|(k, v)| found.get(k) == Some(v));
                (!same).then_some(Value::Object(found))
            }
            Expect::Exists => {
                let exists = ent.is_some_and(|e| e.state.exists());
                (!exists).then_some(Value::String("no such entity".into()))
            }
        }
    }
}

/// How many snapshot merges (or imports) this process applied, in all and
/// per replication link: state and version vector that came without log
/// entries (see `Store::merges`). Each merge counts 2, once before its
/// commit and once after; its link's count moves first each time, so a
/// reader that takes the total and then its own link's count never sees
/// its own merge in the total only.
#[derive(Debug, Default)]
pub struct MergeCounts {
    all: AtomicU64,
    by_link: std::sync::Mutex<std::collections::HashMap<u64, u64>>,
}

impl MergeCounts {
    /// `first`: the bump before the commit (it may add the link's entry;
    /// the one after only moves an entry that is still there).
    fn bump(&self, link: Option<u64>, first: bool) {
        if let Some(l) = link {
            if let Ok(mut m) = self.by_link.lock() {
                if first {
                    *m.entry(l).or_insert(0) += 1;
                } else if let Some(v) = m.get_mut(&l) {
                    *v += 1;
                }
            }
        }
        self.all.fetch_add(1, Ordering::AcqRel);
    }

    pub fn all(&self) -> u64 {
        self.all.load(Ordering::Acquire)
    }

    /// Merges received on replication link `link`.
    pub fn by_link(&self, link: u64) -> u64 {
        self.by_link
            .lock()
            .map(|m| m.get(&link).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// The link ended: drop its count.
    pub fn forget(&self, link: u64) {
        if let Ok(mut m) = self.by_link.lock() {
            m.remove(&link);
        }
    }
}

pub type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// Reads an entity (collection, id) of the job's space inside the writer's
/// transaction, with every earlier write of the group applied.
pub type ReadEntity<'a> = dyn Fn(&str, &str) -> Result<Option<StoredEntity>, StoreError> + 'a;

/// Why an admission check refused a job (the engine's own error, boxed).
pub type Rejection = Box<dyn std::error::Error + Send + Sync>;

/// An admission check of a local job (collection schemas), run by the
/// writer inside the transaction that would apply the job, so no other
/// write can slip in between the check and the write. Outer error: the
/// entity could not be read; inner: the job is refused
/// ([`StoreError::Rejected`]), nothing of it applied.
pub type Admit = Arc<
    dyn Fn(&ReadEntity<'_>, &[LocalWrite]) -> Result<Result<(), Rejection>, StoreError>
        + Send
        + Sync,
>;

pub enum Job {
    Local {
        space: String,
        actor: String,
        source: Option<u64>,
        writes: Vec<LocalWrite>,
        /// Client-chosen write ids, one per write (or empty): a write whose
        /// id this space already holds is not applied again; its outcome is
        /// the first application's, marked [`OutcomeKind::Duplicate`].
        write_ids: Vec<Option<String>>,
        /// Checked inside the transaction, after the preconditions.
        admit: Option<Admit>,
        reply: Reply<Vec<Outcome>>,
    },
    /// Changes that already have an identity (from a peer or the upstream).
    /// `covers` (`(origin, from, to)`, see `replicate::frame::Frame::Batch`):
    /// the sender vouches that the changes of `origin` numbered `from..=to`
    /// that were not sent were filtered out on purpose, so they may be
    /// skipped, and the version vector advances to `to`.
    Remote {
        changes: Vec<Change>,
        covers: Vec<(NodeId, u64, u64)>,
        source: Option<u64>,
        reply: Reply<Vec<Outcome>>,
    },
    SetCursor {
        name: String,
        seq: u64,
        reply: Reply<()>,
    },
    /// Drop log entries committed before `older_than_ms` and below
    /// `keep_from`, at most `max`; answers how many went.
    Trim {
        older_than_ms: u64,
        keep_from: u64,
        max: usize,
        reply: Reply<u64>,
    },
    /// Merge entity states from a peer that could not send the changes
    /// (trimmed by its retention); with `vv`, also raise the version vector
    /// to what the snapshot covered. Answers the spaces whose state changed.
    MergeSnapshot {
        entities: Vec<SnapEntity>,
        vv: Option<crate::model::VersionVector>,
        /// The replication link it came on (see `MergeCounts`).
        link: u64,
        reply: Reply<Vec<String>>,
    },
    /// `outpost import`: merge exported entity states like a snapshot, and
    /// carry each entity's version over (the larger of the two), so a
    /// fresh relay ends up identical to the exporting one.
    Import {
        entities: Vec<(SnapEntity, u64)>,
        reply: Reply<Vec<String>>,
    },
    /// With relaxed durability: make earlier commits durable if they are
    /// not yet (sent by the store's flush ticker, so an idle relay does not
    /// keep acknowledged writes unsynced for long).
    Flush,
    /// Deterministic tests only: the writer parks (reporting `held`) until
    /// `release` yields or is dropped; jobs queued meanwhile wait, and are
    /// then taken as one group.
    Hold {
        held: Reply<()>,
        release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    },
    /// Liveness probe (the systemd watchdog): answered by the writer loop
    /// without a transaction, so an answer proves the writer is not stuck.
    Ping(Reply<()>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutcomeKind {
    Applied,
    /// Already held (same origin and origin seq): nothing changed.
    Duplicate,
    /// The origin seq skips ahead of what is held; the sender must resend
    /// from our version vector.
    Gap,
}

#[derive(Clone, Debug)]
pub struct Outcome {
    pub kind: OutcomeKind,
    /// Local seq (0 unless applied).
    pub seq: u64,
    pub origin: NodeId,
    pub origin_seq: u64,
    pub stamp: Stamp,
    pub version: u64,
    pub conflicts: Vec<Conflict>,
    /// The entity did not exist before this change and does after it
    /// (same as the log entry's `created`), so dialects can tell a create
    /// from an update without a racy read before the write.
    pub created: bool,
    /// The collection's per-type version after this change (0 unless
    /// applied; see `tables::TYPE_VERSIONS`).
    pub type_version: u64,
}

impl Outcome {
    fn gap(c: &Change) -> Outcome {
        let mut o = Outcome::gap_at(c.origin, c.seq);
        o.stamp = c.stamp;
        o
    }

    fn gap_at(origin: NodeId, origin_seq: u64) -> Outcome {
        Outcome {
            kind: OutcomeKind::Gap,
            seq: 0,
            origin,
            origin_seq,
            stamp: Stamp {
                ms: 0,
                counter: 0,
                node: origin,
            },
            version: 0,
            conflicts: vec![],
            created: false,
            type_version: 0,
        }
    }
}

/// What a job gets once its group has committed (its reply is kept apart,
/// in the job, so a group can be tried again without the jobs it lost).
pub(super) enum Answer {
    Outcomes(Vec<Outcome>),
    /// Refused as a whole (a failed precondition): nothing applied.
    Refused(StoreError),
    Unit,
    Count(u64),
    Spaces(Vec<String>),
}

/// A group committed to redb.
struct Applied {
    seq: u64,
    answers: Vec<Answer>,
    committed: Vec<Arc<Committed>>,
    merged: std::collections::BTreeSet<String>,
    /// Its log record is written but not yet synced.
    needs_sync: bool,
}

/// Why a group's transaction did not commit.
enum Failure {
    /// Job `index` failed (say, a stored entity it touches does not
    /// decode): it alone is refused, and the group is tried again without it.
    Job(usize, StoreError),
    /// The transaction itself failed (begin or commit): every job is refused.
    Group(StoreError),
}

impl Job {
    /// Send the answer of a committed group.
    pub(super) fn answer(self, a: Answer) {
        // A dropped receiver means the client went away; the write stands.
        match (self, a) {
            (Job::Local { reply, .. } | Job::Remote { reply, .. }, Answer::Outcomes(v)) => {
                drop(reply.send(Ok(v)))
            }
            (Job::Local { reply, .. } | Job::Remote { reply, .. }, Answer::Refused(e)) => {
                drop(reply.send(Err(e)))
            }
            (Job::SetCursor { reply, .. }, _) => drop(reply.send(Ok(()))),
            (Job::Trim { reply, .. }, Answer::Count(n)) => drop(reply.send(Ok(n))),
            (Job::MergeSnapshot { reply, .. } | Job::Import { reply, .. }, Answer::Spaces(s)) => {
                drop(reply.send(Ok(s)))
            }
            (job, _) => job.fail(StoreError::Encode("internal: mismatched answer".into())),
        }
    }

    /// Answer a ping (any other job: nothing).
    pub(super) fn pong(self) {
        if let Job::Ping(reply) = self {
            let _ = reply.send(Ok(()));
        }
    }

    pub(super) fn fail(self, e: StoreError) {
        match self {
            Job::Local { reply, .. } | Job::Remote { reply, .. } => drop(reply.send(Err(e))),
            Job::SetCursor { reply, .. } | Job::Ping(reply) => drop(reply.send(Err(e))),
            Job::Trim { reply, .. } => drop(reply.send(Err(e))),
            Job::MergeSnapshot { reply, .. } | Job::Import { reply, .. } => {
                drop(reply.send(Err(e)))
            }
            Job::Flush | Job::Hold { .. } => {}
        }
    }
}

fn commit_failed(e: &StoreError) -> StoreError {
    StoreError::Encode(format!("commit failed: {e}"))
}

pub struct Writer {
    slot: Arc<Slot>,
    /// The last attempt to reopen the file after an I/O error.
    last_reopen: Option<Instant>,
    node: NodeId,
    hlc: Hlc,
    opts: StoreOptions,
    metrics: Arc<Metrics>,
    sink: Arc<dyn CommitSink>,
    /// The last seq shown to readers (published as each group finishes).
    last_seq: Arc<AtomicU64>,
    /// The last seq committed: ahead of `last_seq` while groups wait for
    /// their sync.
    seq: u64,
    horizon: Arc<AtomicU64>,
    /// What readers may see (`visible.rs`).
    vis: Arc<Visibility>,
    /// The thread that syncs the log and finishes logged groups
    /// (`syncer.rs`); started with the log when it makes groups durable
    /// (immediate durability).
    syncer: Option<Syncer>,
    last_fsync: Instant,
    /// When the last group committed (the idle checkpoint waits for quiet).
    last_commit: Instant,
    dirty: bool,
    /// This group raised the version vector over vouched-for changes, or
    /// merged a snapshot: the commit report wakes the sessions.
    vouched: bool,
    /// Bumped by every merged snapshot or import (state that came without
    /// log entries, see `Store::merges`) twice: before its commit and after.
    merges: Arc<MergeCounts>,
    /// The links of the snapshots this attempt merged: `merges` moves
    /// again for each once it is over (each merge counts exactly 2).
    merging: Vec<Option<u64>>,
    /// The write-ahead log (see `wal.rs`): appended to with immediate
    /// durability, replayed at open and after a reopen in any mode.
    wal: Option<Wal>,
    /// The lsn of the last committed group (redb's `META_WAL_LSN`).
    lsn: u64,
    /// Whether this attempt's group goes to the log: its effects are
    /// collected in `effects` as they are made, each applied change as its
    /// index in the group's committed changes (logged from there, not
    /// cloned).
    logging: bool,
    effects: Vec<Effect<usize>>,
    /// Scratch for encoding stored values (kept: no allocation per value).
    buf: Vec<u8>,
    /// The last free disk space read, and when (see `free_bytes`).
    free_seen: Option<(Instant, u64)>,
}

impl Writer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        slot: Arc<Slot>,
        node: NodeId,
        hlc: Hlc,
        opts: StoreOptions,
        metrics: Arc<Metrics>,
        sink: Arc<dyn CommitSink>,
        last_seq: Arc<AtomicU64>,
        horizon: Arc<AtomicU64>,
    ) -> Self {
        Writer {
            slot,
            last_reopen: None,
            node,
            hlc,
            opts,
            metrics,
            sink,
            seq: last_seq.load(Ordering::Acquire),
            last_seq,
            horizon,
            vis: Arc::new(Visibility::default()),
            syncer: None,
            last_fsync: Instant::now(),
            last_commit: Instant::now(),
            dirty: false,
            vouched: false,
            merges: Arc::new(MergeCounts::default()),
            merging: Vec::new(),
            wal: None,
            lsn: 0,
            logging: false,
            effects: Vec::new(),
            buf: Vec::new(),
            free_seen: None,
        }
    }

    /// Take the write-ahead log: apply its records past the data file's
    /// last durable group (an unclean stop), checkpoint, and log from
    /// here on. Before the writer thread starts.
    pub fn start_wal(&mut self, wal: Wal, records: Vec<Record>) -> Result<(), StoreError> {
        let file = wal.file();
        self.wal = Some(wal);
        self.replay(records)?;
        // Only logged groups are synced there (relaxed durability logs none).
        if self.logs() {
            self.syncer = Some(Syncer::start(file, self.finisher())?);
        }
        Ok(())
    }

    /// What finishes a group (publish, report, answer), for either thread.
    fn finisher(&self) -> Finisher {
        Finisher {
            sink: self.sink.clone(),
            last_seq: self.last_seq.clone(),
            metrics: self.metrics.clone(),
            vis: self.vis.clone(),
            slot: self.slot.clone(),
        }
    }

    /// Wait for the syncer to finish every group handed over. Fails (with
    /// the store's fault) if a sync failed: the file must be reopened
    /// before anything else commits.
    fn settle(&self) -> Result<(), StoreError> {
        if let Some(syncer) = &self.syncer {
            syncer.drain(&self.slot);
        }
        match self.slot.fault() {
            Some(f) => Err(f.error()),
            None => Ok(()),
        }
    }

    /// Apply `records` past redb's lsn, in one durable transaction, and
    /// start the log over.
    fn replay(&mut self, records: Vec<Record>) -> Result<(), StoreError> {
        // Replaying is not logging (a failed attempt may have left it on).
        self.logging = false;
        let db = self.slot.get()?;
        let mut tx = db.begin_write()?;
        let _ = tx.set_durability(redb::Durability::Immediate);
        let mut seq = self.seq;
        let (mut groups, mut changes) = (0u64, 0u64);
        {
            let mut t = Tables::open(&tx)?;
            let durable = t
                .meta
                .get(META_WAL_LSN)?
                .map(|v| super::u64_from(v.value()))
                .unwrap_or(0);
            self.lsn = durable;
            let mut scratch = Vec::new();
            for rec in records.into_iter().filter(|r| r.lsn > durable) {
                if rec.node != self.node {
                    return Err(StoreError::Decode(format!(
                        "the write-ahead log is node {}'s, the data file node {}'s: move outpost.wal away",
                        rec.node, self.node
                    )));
                }
                if rec.lsn != self.lsn + 1 {
                    return Err(StoreError::Decode(format!(
                        "the write-ahead log resumes at group {} but the data file holds up to group {}: records are missing",
                        rec.lsn, self.lsn
                    )));
                }
                for e in rec.effects {
                    match e {
                        Effect::Apply {
                            seq: want,
                            at_ms,
                            change,
                        } => {
                            let out = self.apply(
                                &mut t,
                                change,
                                true,
                                None,
                                at_ms,
                                &mut seq,
                                &mut scratch,
                            )?;
                            if out.kind != OutcomeKind::Applied || out.seq != want {
                                return Err(StoreError::Decode(format!(
                                    "write-ahead log group {}: seq {want} applies as {:?} at seq {}",
                                    rec.lsn, out.kind, out.seq
                                )));
                            }
                            changes += 1;
                        }
                        e => self.redo(&mut t, &e)?,
                    }
                }
                scratch.clear();
                if seq != rec.last_seq {
                    return Err(StoreError::Decode(format!(
                        "write-ahead log group {} ends at seq {seq}, recorded {}",
                        rec.lsn, rec.last_seq
                    )));
                }
                // The clock in memory may be ahead (a reopen after an I/O
                // error keeps it): it never goes back.
                let logged: Hlc = decode(&rec.hlc)?;
                if (logged.last_ms, logged.last_counter) > (self.hlc.last_ms, self.hlc.last_counter)
                {
                    self.hlc = logged;
                }
                t.meta.insert(META_LAST_SEQ, seq.to_le_bytes().as_slice())?;
                t.meta.insert(META_HLC, encode(&self.hlc)?.as_slice())?;
                t.meta
                    .insert(META_WAL_LSN, rec.lsn.to_le_bytes().as_slice())?;
                self.lsn = rec.lsn;
                groups += 1;
            }
            t.finish()?;
        }
        tx.commit()?;
        self.seq = seq;
        self.last_seq.store(seq, Ordering::Release);
        self.vis.reset(self.lsn);
        self.dirty = false;
        self.last_fsync = Instant::now();
        if let Some(w) = self.wal.as_mut() {
            w.reset();
        }
        if groups > 0 {
            tracing::warn!(
                groups,
                changes,
                last_seq = seq,
                "applied the write-ahead log's acknowledged groups that the data file lacked (an unclean stop)"
            );
        }
        Ok(())
    }

    /// Make a logged effect other than an applied change again.
    fn redo(&mut self, t: &mut Tables<'_>, e: &Effect) -> Result<(), StoreError> {
        match e {
            Effect::Apply { .. } => {}
            Effect::WriteId { space, wid, seq } => {
                let ids = t.write_ids()?;
                ids.by_id.insert((space.as_str(), wid.as_str()), *seq)?;
                ids.by_seq.insert(*seq, (space.as_str(), wid.as_str()))?;
            }
            Effect::RaiseVv { origin, to } => {
                let held = t.held(origin.0)?;
                if *to > held {
                    t.raise_vv(origin.0, *to)?;
                }
            }
            Effect::Cursor { name, seq } => {
                t.cursors()?.insert(name.as_str(), *seq)?;
            }
        }
        Ok(())
    }

    /// Whether groups are made durable by the write-ahead log.
    fn logs(&self) -> bool {
        self.wal.is_some() && self.opts.durability == Durability::Immediate
    }

    /// Whether redb should be made durable now rather than the next group
    /// logged: a second since the last checkpoint, or the log is full enough.
    fn checkpoint_due(&self) -> bool {
        self.dirty
            && (self.last_fsync.elapsed() >= CHECKPOINT_EVERY
                || self
                    .wal
                    .as_ref()
                    .is_some_and(|w| w.logged() >= super::wal::CHECKPOINT_BYTES))
    }

    /// Share the merge counter with the store's readers.
    pub fn with_merges(mut self, merges: Arc<MergeCounts>) -> Self {
        self.merges = merges;
        self
    }

    /// Share what readers may see with the store's readers. Before
    /// [`Writer::start_wal`].
    pub fn with_visibility(mut self, vis: Arc<Visibility>) -> Self {
        self.vis = vis;
        self
    }

    pub fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut next = None;
        loop {
            let first = if let Some(j) = next.take() {
                j
            } else if self.slot.fault().is_some() && !self.recover() {
                // Faulted: keep answering (refusals, pings) and keep trying
                // to reopen even when no write arrives.
                match rx.try_recv() {
                    Ok(j) => j,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                }
            } else {
                match rx.blocking_recv() {
                    Some(j) => j,
                    None => break,
                }
            };
            if let Job::Hold { held, release } = first {
                // Held means every earlier group is answered.
                let _ = self.settle();
                let _ = held.send(Ok(()));
                if let Ok(release) = release.lock() {
                    let _ = release.recv();
                }
                continue;
            }
            let mut jobs = vec![first];
            while jobs.len() < MAX_GROUP {
                match rx.try_recv() {
                    // A hold ends the group: what follows it waits.
                    Ok(j @ Job::Hold { .. }) => {
                        next = Some(j);
                        break;
                    }
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            let flush = jobs.iter().any(|j| matches!(j, Job::Flush));
            jobs.retain(|j| !matches!(j, Job::Flush));
            let (pings, jobs): (Vec<Job>, Vec<Job>) =
                jobs.into_iter().partition(|j| matches!(j, Job::Ping(_)));
            if !jobs.is_empty() {
                self.group(jobs);
            }
            // After the group: a ping queued behind a stuck commit waits
            // for it, and for its sync.
            let pings = match &self.syncer {
                Some(s) if !pings.is_empty() && !s.idle() => s.pings(pings).err(),
                _ => Some(pings),
            };
            for p in pings.into_iter().flatten() {
                p.pong();
            }
            let due = if self.logs() {
                self.last_commit.elapsed() >= IDLE_CHECKPOINT
                    || self.last_fsync.elapsed() >= CHECKPOINT_EVERY
            } else {
                self.last_fsync.elapsed() >= RELAXED_FLUSH
            };
            if flush && self.dirty && due {
                if let Err(e) = self.flush() {
                    tracing::error!(error = %e, "relaxed flush failed");
                    self.metrics.commit_failures.fetch_add(1, Ordering::Relaxed);
                    if let Some(f) = fault_of(&e) {
                        self.slot.set_fault(f);
                    }
                }
            }
        }
        // Queue closed: make relaxed commits durable before exit.
        if self.dirty {
            if let Err(e) = self.flush() {
                tracing::error!(error = %e, "final flush failed");
            }
        }
        // The syncer finishes what it holds, then ends.
        self.syncer.take();
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        // A checkpoint resets the log: no record may wait for its sync.
        self.settle()?;
        let mut tx = self.slot.get()?.begin_write()?;
        let _ = tx.set_durability(redb::Durability::Immediate);
        tx.commit()?;
        self.dirty = false;
        self.last_fsync = Instant::now();
        if let Some(w) = self.wal.as_mut() {
            w.reset();
        }
        Ok(())
    }

    /// Free bytes on the data file's file system, for the `min_free_bytes`
    /// check of every group: a reading well above that floor (by
    /// [`FREE_BYTES_MARGIN`], more than a group writes) stands for
    /// [`FREE_BYTES_FRESH`], so a busy writer does not pay a `statvfs` per
    /// group; near the floor every group reads it again.
    fn free_bytes(&mut self) -> Option<u64> {
        if let Some((at, free)) = self.free_seen {
            let floor = self.opts.min_free_bytes.saturating_add(FREE_BYTES_MARGIN);
            if free >= floor && at.elapsed() < FREE_BYTES_FRESH {
                return Some(free);
            }
        }
        let free = free_disk_bytes(&self.opts.dir);
        self.free_seen = free.map(|f| (Instant::now(), f));
        free
    }

    /// After an I/O error: close and reopen the data file, at most once per
    /// [`REOPEN_EVERY`], and after ENOSPC only once some space is free.
    /// Returns whether the store is healthy again. Commits that failed were
    /// not applied, so the reopened file holds every acknowledged write
    /// (with relaxed durability, up to the last fsync, as after a crash).
    fn recover(&mut self) -> bool {
        let Some(fault) = self.slot.fault() else {
            return true;
        };
        // No group may be in flight while the file is reopened (after a
        // failed sync, the groups it refused end here).
        let _ = self.settle();
        if self.last_reopen.is_some_and(|t| t.elapsed() < REOPEN_EVERY) {
            return false;
        }
        self.last_reopen = Some(Instant::now());
        // Read now, not a reading from before the fault.
        self.free_seen = None;
        if fault == Fault::NoSpace && self.free_bytes().is_some_and(|f| f < REOPEN_MIN_FREE) {
            return false;
        }
        let reopened = self.slot.reopen().and_then(|db| super::init_tables(&db));
        // redb is back at its last durable commit: the groups logged since
        // are applied again from the write-ahead log.
        let had = self.seq;
        let reopened = reopened.and_then(|(node, last, horizon, _)| {
            self.seq = last;
            self.last_seq.store(last, Ordering::Release);
            let records = match self.wal.as_mut() {
                Some(w) => w.records()?,
                None => Vec::new(),
            };
            self.replay(records)?;
            Ok((node, self.seq, horizon))
        });
        match reopened {
            Ok((_, last, horizon)) => {
                if last != had {
                    tracing::error!(
                        held = had,
                        found = last,
                        "the reopened store ends at another seq (relaxed durability: commits since the last fsync are lost, as in a crash)"
                    );
                }
                let h = horizon.max(self.horizon.load(Ordering::Acquire));
                self.horizon.store(h, Ordering::Release);
                self.dirty = false;
                self.last_fsync = Instant::now();
                self.slot.clear_fault();
                tracing::warn!(cause = %fault, "store reopened after a storage error; writes resume");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, cause = %fault, "reopening the store failed; retrying");
                false
            }
        }
    }

    /// Apply `jobs` in one transaction and answer each. A job that fails
    /// on its own (not the transaction) is refused alone and the rest are
    /// tried again without it, so one bad job never fails its neighbours.
    fn group(&mut self, mut jobs: Vec<Job>) {
        if let Some(fault) = self.slot.fault() {
            if !self.recover() {
                for job in jobs {
                    job.fail(fault.error());
                }
                return;
            }
        }
        let started = Instant::now();
        let low_disk = self.free_bytes().filter(|&f| f < self.opts.min_free_bytes);
        if let Some(free_bytes) = low_disk {
            // Writes are refused; cursors, trims and merges go on.
            let (writes, rest): (Vec<Job>, Vec<Job>) = jobs
                .into_iter()
                .partition(|j| matches!(j, Job::Local { .. } | Job::Remote { .. }));
            for j in writes {
                j.fail(StoreError::DiskFull { free_bytes });
            }
            jobs = rest;
        }
        while !jobs.is_empty() {
            let hlc = self.hlc.clone();
            let horizon = self.horizon.load(Ordering::Acquire);
            let attempt = self.attempt(&jobs);
            // A reader that took the count between the first bump and the
            // commit may have read the vector before the merge: it sees the
            // count move again (committed or not). After a commit `attempt`
            // has done it already, before showing the group; this is the
            // attempt that failed.
            for link in std::mem::take(&mut self.merging) {
                self.merges.bump(link, false);
            }
            match attempt {
                Ok(a) => {
                    self.seq = a.seq;
                    let done = Done {
                        lsn: self.lsn,
                        needs_sync: a.needs_sync,
                        seq: a.seq,
                        report: !a.committed.is_empty() || std::mem::take(&mut self.vouched),
                        committed: a.committed,
                        merged: a.merged.into_iter().collect(),
                        jobs,
                        answers: a.answers,
                        started,
                    };
                    // A logged group is finished once its record is synced;
                    // any other is durable (or relaxed) already, and every
                    // group before it is finished (`attempt` settled).
                    let done = match (done.needs_sync, &self.syncer) {
                        (false, _) => {
                            self.finisher().finish(done);
                            return;
                        }
                        (true, Some(s)) => match s.done(Box::new(done)) {
                            Ok(()) => return,
                            Err(d) => *d,
                        },
                        (true, None) => done,
                    };
                    // The sync thread is gone (a panic): nothing more can
                    // be made durable; the group is refused.
                    let f = Fault::Io("the write-ahead log's sync thread stopped".into());
                    tracing::error!(cause = %f, "group refused");
                    self.slot.set_fault(f.clone());
                    for j in done.jobs {
                        j.fail(f.error());
                    }
                    return;
                }
                Err(failure) => {
                    // Nothing of the attempt stands: not its stamps (never
                    // published) and not the trim point it raised.
                    self.hlc = hlc;
                    self.horizon.store(horizon, Ordering::Release);
                    self.vouched = false;
                    self.metrics.commit_failures.fetch_add(1, Ordering::Relaxed);
                    // An I/O error, wherever it struck, is the file's: it
                    // refuses everything until reopened (see `recover`).
                    let failure = match failure {
                        Failure::Job(_, e) | Failure::Group(e) if fault_of(&e).is_some() => {
                            Failure::Group(e)
                        }
                        f => f,
                    };
                    match failure {
                        Failure::Job(index, e) => {
                            tracing::error!(error = %e, "a job failed; it is refused and its group tried again without it");
                            jobs.remove(index).fail(e);
                        }
                        Failure::Group(e) => {
                            tracing::error!(error = %e, "group commit failed; every job in it is refused");
                            if let Some(f) = fault_of(&e) {
                                self.slot.set_fault(f.clone());
                                for j in jobs {
                                    j.fail(f.error());
                                }
                                return;
                            }
                            for j in jobs {
                                j.fail(commit_failed(&e));
                            }
                            return;
                        }
                    }
                }
            }
        }
    }

    fn attempt(&mut self, jobs: &[Job]) -> Result<Applied, Failure> {
        let mut seq = self.seq;
        let mut answers = Vec::with_capacity(jobs.len());
        let mut committed = Vec::new();
        let mut merged = std::collections::BTreeSet::new();
        let db = self.slot.get().map_err(Failure::Group)?;
        let mut tx = db.begin_write().map_err(|e| Failure::Group(e.into()))?;
        // With the write-ahead log, a group of writes and cursors is made
        // durable by its log record; anything else (trims, snapshot merges,
        // imports), and a group that finds a checkpoint due, by a durable
        // redb commit that also checkpoints the log.
        let logged = self.logs()
            && !self.checkpoint_due()
            && jobs.iter().all(|j| {
                matches!(
                    j,
                    Job::Local { .. } | Job::Remote { .. } | Job::SetCursor { .. }
                )
            });
        self.logging = logged;
        if !logged {
            // Made durable by redb itself, and shown at once: every group
            // before it must be synced and shown first.
            self.settle().map_err(Failure::Group)?;
        }
        self.effects.clear();
        let lsn = self.lsn + 1;
        {
            let mut t = Tables::open(&tx).map_err(Failure::Group)?;
            let at_ms = self.opts.clock.now_ms();
            for (index, job) in jobs.iter().enumerate() {
                let answer = self
                    .job(&mut t, job, at_ms, &mut seq, &mut committed, &mut merged)
                    .map_err(|e| Failure::Job(index, e))?;
                answers.push(answer);
            }
            if !merged.is_empty() {
                // States merged without log entries: a catch-up from any
                // seq of this group or before cannot replay them from the
                // log, so it takes current states (a catch-up goes to
                // states when `since + 1 < horizon`). A horizon at the
                // group's last seq + 1 missed a client at exactly that seq:
                // one live through the merge resumed there (the simulator).
                self.raise_horizon(&mut t, seq + 2)
                    .map_err(Failure::Group)?;
            }
            let meta = (|| -> Result<(), StoreError> {
                t.finish()?;
                t.meta.insert(META_LAST_SEQ, seq.to_le_bytes().as_slice())?;
                t.meta.insert(META_HLC, encode(&self.hlc)?.as_slice())?;
                t.meta.insert(META_WAL_LSN, lsn.to_le_bytes().as_slice())?;
                Ok(())
            })();
            meta.map_err(Failure::Group)?;
        }
        // The log record first, synced: redb's commit makes the group
        // visible to readers, and what they see must already be durable.
        let mut appended = None;
        let immediate = if logged {
            let effects = self
                .effects
                .drain(..)
                .map(|e| e.map_change(|i| committed.get(i).map(|c| &c.entry.change)))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    Failure::Group(StoreError::Encode(
                        "internal: a logged change is not in its group".into(),
                    ))
                })?;
            let rec = Record {
                lsn,
                node: self.node,
                last_seq: seq,
                hlc: encode(&self.hlc).map_err(Failure::Group)?,
                effects,
            };
            let Some(wal) = self.wal.as_mut() else {
                return Err(Failure::Group(StoreError::Closed));
            };
            if let Some(a) = wal.write(&rec).map_err(Failure::Group)? {
                appended = Some(a);
                false
            } else {
                // Too big for what is left of the log: checkpoint, once
                // the groups before it are synced (the log starts over).
                self.settle().map_err(Failure::Group)?;
                true
            }
        } else {
            self.opts.durability == Durability::Immediate
                || self.last_fsync.elapsed() >= RELAXED_FLUSH
        };
        let _ = tx.set_durability(if immediate {
            redb::Durability::Immediate
        } else {
            redb::Durability::None
        });
        self.vis.committing(lsn);
        if let Err(e) = tx.commit() {
            self.vis.abandon(self.lsn);
            if let (Some(at), Some(wal)) = (appended, self.wal.as_mut()) {
                // Not applied: take the record back, so a replay does not
                // apply what the caller is told failed.
                if let Err(e) = wal.unappend(at) {
                    tracing::error!(error = %e, "taking back the log record of a failed commit");
                }
            }
            return Err(Failure::Group(e.into()));
        }
        self.lsn = lsn;
        self.last_commit = Instant::now();
        // A merge's second count, before any reader can see the merge: a
        // session that took the count between the first bump and the
        // commit, then read the merged vector, must find the count moved.
        // Counted after `show` (in `group`), a session that read the
        // vector in between found it unchanged and vouched for the merged
        // range, which its peer then counted and never got (tests/sim.rs,
        // seed 4, under load).
        for link in std::mem::take(&mut self.merging) {
            self.merges.bump(link, false);
        }
        if appended.is_none() {
            // Durable already (or relaxed): readers may see it now.
            self.vis.show(lsn);
        }
        if immediate {
            self.last_fsync = Instant::now();
            self.dirty = false;
            if let Some(w) = self.wal.as_mut() {
                w.reset();
            }
        } else {
            self.dirty = true;
        }
        Ok(Applied {
            seq,
            answers,
            committed,
            merged,
            needs_sync: appended.is_some(),
        })
    }

    /// One job inside the group's transaction.
    fn job(
        &mut self,
        t: &mut Tables<'_>,
        job: &Job,
        at_ms: u64,
        seq: &mut u64,
        committed: &mut Vec<Arc<Committed>>,
        merged: &mut std::collections::BTreeSet<String>,
    ) -> Result<Answer, StoreError> {
        Ok(match job {
            Job::Local {
                space,
                actor,
                source,
                writes,
                write_ids,
                admit,
                ..
            } => {
                if let Some(e) = Self::check_expect(t, space, writes)? {
                    return Ok(Answer::Refused(e));
                }
                if let Some(admit) = admit {
                    let entity = &t.entity;
                    let read =
                        |collection: &str, id: &str| -> Result<Option<StoredEntity>, StoreError> {
                            match entity.get((space.as_str(), collection, id))? {
                                Some(v) => Ok(Some(decode(v.value())?)),
                                None => Ok(None),
                            }
                        };
                    if let Err(e) = admit(&read, writes)? {
                        return Ok(Answer::Refused(StoreError::Rejected(e)));
                    }
                }
                let mut outs = Vec::with_capacity(writes.len());
                let mut wids = write_ids.iter();
                for w in writes {
                    let wid = wids.next().and_then(|w| w.as_deref());
                    if let Some(wid) = wid {
                        if let Some(first) = Self::replayed(t, self.node, space, wid)? {
                            outs.push(first);
                            continue;
                        }
                    }
                    let origin_seq = t.held(self.node.0)? + 1;
                    let stamp = match w.client_us {
                        Some(us) => self.hlc.at_client_time(us, at_ms, self.opts.max_skew_ms),
                        None => self.hlc.now(at_ms),
                    };
                    let change = Change {
                        space: space.clone(),
                        collection: w.collection.clone(),
                        id: w.id.clone(),
                        op: w.op,
                        fields: w.fields.clone(),
                        stamp,
                        origin: self.node,
                        seq: origin_seq,
                        actor: actor.clone(),
                    };
                    let out = self.apply(t, change, false, *source, at_ms, seq, committed)?;
                    if let Some(wid) = wid {
                        let ids = t.write_ids()?;
                        ids.by_id.insert((space.as_str(), wid), out.seq)?;
                        ids.by_seq.insert(out.seq, (space.as_str(), wid))?;
                        if self.logging {
                            self.effects.push(Effect::WriteId {
                                space: space.clone(),
                                wid: wid.to_string(),
                                seq: out.seq,
                            });
                        }
                    }
                    outs.push(out);
                }
                Answer::Outcomes(outs)
            }
            Job::Remote {
                changes,
                covers,
                source,
                ..
            } => Answer::Outcomes(self.remote(t, changes, covers, *source, at_ms, seq, committed)?),
            Job::SetCursor { name, seq: s, .. } => {
                t.cursors()?.insert(name.as_str(), *s)?;
                if self.logging {
                    self.effects.push(Effect::Cursor {
                        name: name.clone(),
                        seq: *s,
                    });
                }
                Answer::Unit
            }
            Job::Trim {
                older_than_ms,
                keep_from,
                max,
                ..
            } => Answer::Count(self.trim(t, *older_than_ms, *keep_from, *max, *seq)?),
            Job::MergeSnapshot {
                entities, vv, link, ..
            } => {
                let ents = entities.iter().map(|e| (e, None));
                let spaces = self.merge_snapshot(t, ents, vv.as_ref(), Some(*link))?;
                merged.extend(spaces.iter().cloned());
                Answer::Spaces(spaces)
            }
            Job::Import { entities, .. } => {
                let ents = entities.iter().map(|(e, v)| (e, Some(*v)));
                let spaces = self.merge_snapshot(t, ents, None, None)?;
                merged.extend(spaces.iter().cloned());
                Answer::Spaces(spaces)
            }
            Job::Flush | Job::Ping(_) | Job::Hold { .. } => Answer::Unit,
        })
    }

    /// Changes from a peer, with the covers of their batch (`Job::Remote`).
    #[allow(clippy::too_many_arguments)]
    fn remote(
        &mut self,
        t: &mut Tables<'_>,
        changes: &[Change],
        covers: &[(NodeId, u64, u64)],
        source: Option<u64>,
        at_ms: u64,
        seq: &mut u64,
        committed: &mut Vec<Arc<Committed>>,
    ) -> Result<Vec<Outcome>, StoreError> {
        // A cover is usable only if it starts at or below the next change
        // we lack; one that starts later means the sender skipped something
        // we need.
        let mut usable = BTreeMap::new();
        let mut gapped = Vec::new();
        for &(origin, from, to) in covers {
            if origin == self.node || from > to {
                continue;
            }
            let held = t.held(origin.0)?;
            if from > held + 1 {
                gapped.push(origin);
            } else {
                usable.insert(origin, to);
            }
        }
        let mut outs = Vec::with_capacity(changes.len());
        for c in changes {
            if gapped.contains(&c.origin) {
                outs.push(Outcome::gap(c));
                continue;
            }
            let covered = usable.get(&c.origin).is_some_and(|&to| c.seq <= to);
            self.hlc.observe(c.stamp, at_ms, self.opts.max_skew_ms);
            outs.push(self.apply(t, c.clone(), covered, source, at_ms, seq, committed)?);
        }
        for o in &gapped {
            outs.push(Outcome::gap_at(*o, 0));
        }
        for (origin, to) in usable {
            let held = t.held(origin.0)?;
            if to > held {
                t.raise_vv(origin.0, to)?;
                if self.logging {
                    self.effects.push(Effect::RaiseVv { origin, to });
                }
                // No log entry records this: wake the sessions (through the
                // commit report) so they vouch for it to their peers in turn.
                self.vouched = true;
            }
        }
        Ok(outs)
    }

    /// The first failed precondition of a job, as its refusal.
    fn check_expect(
        t: &Tables<'_>,
        space: &str,
        writes: &[LocalWrite],
    ) -> Result<Option<StoreError>, StoreError> {
        for (index, w) in writes.iter().enumerate() {
            let Some(expect) = &w.expect else { continue };
            let ent: Option<StoredEntity> =
                match t
                    .entity
                    .get((space, w.collection.as_str(), w.id.as_str()))?
                {
                    Some(v) => Some(decode(v.value())?),
                    None => None,
                };
            if let Some(found) = expect.check(ent.as_ref()) {
                return Ok(Some(StoreError::PreconditionFailed { index, found }));
            }
        }
        Ok(None)
    }

    /// The outcome of the write this space already holds under client write
    /// id `wid`, as a duplicate; None if the id is new. A write id whose log
    /// entry is gone (trimmed by an older binary that kept the id) still
    /// counts as held: applying it again would be the double write this
    /// index exists to prevent.
    fn replayed(
        t: &mut Tables<'_>,
        node: NodeId,
        space: &str,
        wid: &str,
    ) -> Result<Option<Outcome>, StoreError> {
        let Some(seq) = t.write_ids()?.by_id.get((space, wid))?.map(|v| v.value()) else {
            return Ok(None);
        };
        // The entry may be this group's.
        t.flush_appends()?;
        let entry: Option<LogEntry> = match t.log.get(seq)? {
            Some(v) => Some(decode(v.value())?),
            None => None,
        };
        Ok(Some(match entry {
            Some(e) => Outcome {
                kind: OutcomeKind::Duplicate,
                seq,
                origin: e.change.origin,
                origin_seq: e.change.seq,
                stamp: e.change.stamp,
                version: e.version,
                conflicts: vec![],
                created: false,
                type_version: e.type_version,
            },
            None => Outcome {
                kind: OutcomeKind::Duplicate,
                seq,
                origin: node,
                origin_seq: 0,
                stamp: Stamp {
                    ms: 0,
                    counter: 0,
                    node,
                },
                version: 0,
                conflicts: vec![],
                created: false,
                type_version: 0,
            },
        }))
    }

    /// Apply one change unless held. `covered`: the sender vouched (see
    /// `Job::Remote`) that the changes of its origin before it that we lack
    /// were filtered out, so it may follow them without a gap.
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &mut self,
        t: &mut Tables<'_>,
        change: Change,
        covered: bool,
        source: Option<u64>,
        at_ms: u64,
        seq: &mut u64,
        committed: &mut Vec<Arc<Committed>>,
    ) -> Result<Outcome, StoreError> {
        let held = t.held(change.origin.0)?;
        let mut out = Outcome {
            kind: OutcomeKind::Applied,
            seq: 0,
            origin: change.origin,
            origin_seq: change.seq,
            stamp: change.stamp,
            version: 0,
            conflicts: vec![],
            created: false,
            type_version: 0,
        };
        // This relay numbers its own changes here, each raising its version
        // vector entry, so one of its own above `held` cannot be in the
        // identity index: no lookup for those (every local write).
        if change.seq <= held
            || (change.origin != self.node && t.has_ident(change.origin.0, change.seq)?)
        {
            out.kind = OutcomeKind::Duplicate;
            return Ok(out);
        }
        if change.seq > held + 1 && !covered {
            out.kind = OutcomeKind::Gap;
            return Ok(out);
        }
        let key = (
            change.space.as_str(),
            change.collection.as_str(),
            change.id.as_str(),
        );
        // The entity's row is found once and rewritten through the same
        // handle (a second B-tree descent for the insert cost the writer
        // thread a few percent).
        let mut row = t.entity.get_mut(key)?;
        let mut ent: StoredEntity = match &row {
            Some(v) => decode(v.value())?,
            None => StoredEntity::default(),
        };
        let existed = ent.state.exists();
        out.conflicts = ent.state.apply(&change);
        *seq += 1;
        ent.version += 1;
        ent.seq = *seq;
        ent.type_version = t.types.next_version(key, ent.type_version)?;
        out.seq = *seq;
        out.version = ent.version;
        out.type_version = ent.type_version;
        out.created = !existed && ent.state.exists();
        encode_into(&mut self.buf, &ent)?;
        let rewritten = match row.as_mut() {
            Some(r) => r.insert(self.buf.as_slice()).map(|()| true)?,
            None => false,
        };
        drop(row);
        if !rewritten {
            t.entity.insert(key, self.buf.as_slice())?;
        }
        t.count_change(change.space.as_str())?;
        t.raise_vv(change.origin.0, change.seq)?;
        let entry = LogEntry {
            created: !existed && ent.state.exists(),
            change,
            at_ms,
            version: ent.version,
            type_version: ent.type_version,
        };
        encode_into(&mut self.buf, &entry)?;
        t.append(
            *seq,
            &self.buf,
            &entry.change.space,
            entry.change.origin.0,
            entry.change.seq,
        )?;
        if self.logging {
            self.effects.push(Effect::Apply {
                seq: *seq,
                at_ms,
                change: committed.len(),
            });
        }
        committed.push(Arc::new(Committed {
            seq: *seq,
            entry,
            after: Some(After::new(ent.state)),
            source,
        }));
        Ok(out)
    }

    fn merge_snapshot<'a>(
        &mut self,
        t: &mut Tables<'_>,
        entities: impl Iterator<Item = (&'a SnapEntity, Option<u64>)>,
        vv: Option<&crate::model::VersionVector>,
        link: Option<u64>,
    ) -> Result<Vec<String>, StoreError> {
        // Before the commit, like the horizon: a reader that sees the
        // merged state or version vector sees the count raised. (And once
        // more after it, see `merging`.)
        self.merges.bump(link, true);
        self.merging.push(link);
        let mut changed = std::collections::BTreeSet::new();
        for (e, version) in entities {
            let key = (e.space.as_str(), e.collection.as_str(), e.id.as_str());
            let mut ent: StoredEntity = match t.entity.get(key)? {
                Some(v) => decode(v.value())?,
                None => StoredEntity::default(),
            };
            let before = ent.state.clone();
            ent.state.merge(&e.state);
            let bumped = version.map_or(ent.version + 1, |v| v.max(ent.version + 1));
            if ent.state != before || version.is_some_and(|v| v > ent.version) {
                ent.version = bumped;
                ent.type_version = t.types.next_version(key, ent.type_version)?;
                t.entity.insert(key, encode(&ent)?.as_slice())?;
                t.ensure_space(e.space.as_str())?;
                changed.insert(e.space.clone());
            }
        }
        let mut merged_vv: Option<crate::model::VersionVector> = None;
        for (&origin, &seq) in vv.into_iter().flatten() {
            let held = t.held(origin.0)?;
            if seq > held {
                t.raise_vv(origin.0, seq)?;
                // The log will never hold `held+1..=seq` of this origin:
                // remember it, so no session vouches for them to a peer
                // that lacks them (`plan::start` sends it a snapshot).
                let m = match &mut merged_vv {
                    Some(m) => m,
                    None => merged_vv.insert(match t.meta.get(META_MERGED_VV)? {
                        Some(v) => decode(v.value())?,
                        None => Default::default(),
                    }),
                };
                let e = m.entry(origin).or_insert(0);
                *e = (*e).max(seq);
            }
        }
        let raised = merged_vv.is_some();
        if let Some(m) = merged_vv {
            t.meta.insert(META_MERGED_VV, encode(&m)?.as_slice())?;
        }
        if raised || !changed.is_empty() {
            // Wake the sessions through the commit report (as a vouch
            // does): an idle one then sees the merge count moved and plans
            // again, even if the merge's own caller is gone.
            self.vouched = true;
        }
        Ok(changed.into_iter().collect())
    }

    /// The horizon never goes down: below it, catch-up is from state. It
    /// is raised before the commit, so a reader that sees the trimmed log
    /// also sees the new horizon (`group` puts it back if the commit fails).
    fn raise_horizon(&mut self, t: &mut Tables<'_>, to: u64) -> Result<(), StoreError> {
        let horizon = to.max(self.horizon.load(Ordering::Acquire));
        t.meta
            .insert(META_HORIZON, horizon.to_le_bytes().as_slice())?;
        self.horizon.store(horizon, Ordering::Release);
        Ok(())
    }

    fn trim(
        &mut self,
        t: &mut Tables<'_>,
        older_than_ms: u64,
        keep_from: u64,
        max: usize,
        last_seq: u64,
    ) -> Result<u64, StoreError> {
        let mut doomed = Vec::new();
        t.flush_appends()?;
        for row in t.log.range(0u64..keep_from)? {
            let (k, v) = row?;
            let entry: LogEntry = decode(v.value())?;
            if entry.at_ms >= older_than_ms || doomed.len() >= max {
                break;
            }
            doomed.push((
                k.value(),
                entry.change.space,
                entry.change.origin,
                entry.change.seq,
            ));
        }
        for (seq, space, origin, oseq) in &doomed {
            t.log.remove(*seq)?;
            t.space_log.remove((space.as_str(), *seq))?;
            t.ident.remove((origin.0, *oseq))?;
            let ids = t.write_ids()?;
            let wid = ids.by_seq.remove(*seq)?.map(|v| {
                let (s, w) = v.value();
                (s.to_string(), w.to_string())
            });
            if let Some((s, w)) = wid {
                ids.by_id.remove((s.as_str(), w.as_str()))?;
            }
        }
        let horizon = match t.log.first()? {
            Some((k, _)) => k.value(),
            None => last_seq + 1,
        };
        self.raise_horizon(t, horizon)?;
        Ok(doomed.len() as u64)
    }
}

/// Free bytes on the file system holding `dir` (None if it can't be read).
pub fn free_disk_bytes(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `s` a valid out-pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    if rc != 0 {
        return None;
    }
    Some((s.f_bavail as u64).saturating_mul(s.f_frsize as u64))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use redb::ReadableDatabase;

    /// A sink that drops every report (store tests that need no fan-out).
    pub(in crate::store) struct NoSink;
    impl CommitSink for NoSink {
        fn committed(&self, _: u64, _: Vec<Arc<Committed>>) {}
        fn states_merged(&self, _: &[String]) {}
    }

    /// Options of a small store in `dir`, immediate durability, its log in
    /// `wal_backend` (None: the file).
    pub(in crate::store) fn test_opts(
        dir: &std::path::Path,
        wal_backend: Option<super::super::Backend>,
    ) -> StoreOptions {
        StoreOptions {
            dir: dir.to_path_buf(),
            durability: Durability::Immediate,
            queue: 16,
            min_free_bytes: 0,
            cache_bytes: 1 << 20,
            max_skew_ms: 60_000,
            clock: Default::default(),
            wal_backend,
        }
    }

    fn writer(dir: &std::path::Path) -> (Writer, Arc<redb::Database>) {
        let (slot, db) = Slot::open(&dir.join("w.redb"), 1 << 20, None).unwrap();
        let (node, last, horizon, hlc) = super::super::init_tables(&db).unwrap();
        let opts = test_opts(dir, None);
        let w = Writer::new(
            slot,
            node,
            hlc,
            opts,
            Arc::new(Metrics::default()),
            Arc::new(NoSink),
            Arc::new(AtomicU64::new(last)),
            Arc::new(AtomicU64::new(horizon)),
        );
        (w, db)
    }

    type Reply = oneshot::Sender<Result<Vec<Outcome>, StoreError>>;
    type Answered = oneshot::Receiver<Result<Vec<Outcome>, StoreError>>;

    /// A patch of field `v` of entity `collection`/`id`.
    pub(in crate::store) fn patch(collection: &str, id: &str, v: Value) -> LocalWrite {
        LocalWrite {
            collection: collection.into(),
            id: id.into(),
            op: Op::Patch,
            fields: [("v".to_string(), v)].into(),
            client_us: None,
            expect: None,
        }
    }

    /// A local write job of actor "t" in `space`, answered on `reply`.
    pub(in crate::store) fn local_job(
        space: &str,
        writes: Vec<LocalWrite>,
        write_ids: Vec<Option<String>>,
        reply: Reply,
    ) -> Job {
        Job::Local {
            space: space.into(),
            actor: "t".into(),
            source: None,
            write_ids,
            admit: None,
            writes,
            reply,
        }
    }

    fn local(id: &str) -> (Job, Answered) {
        local_in("s", "c", id)
    }

    fn local_in(space: &str, collection: &str, id: &str) -> (Job, Answered) {
        let (reply, rx) = oneshot::channel();
        let write = patch(collection, id, Value::from(1));
        (local_job(space, vec![write], vec![], reply), rx)
    }

    /// The counters a group keeps in memory (version vector, space counts,
    /// per-type versions) reach the tables as if each change had written
    /// them, across spaces, collections and groups.
    #[test]
    fn a_groups_counters_are_written_once_and_right() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, db) = writer(dir.path());
        let node = w.node.0;
        let plan = [
            ("s1", "a", "x"),
            ("s1", "b", "y"),
            ("s2", "a", "x"),
            ("s1", "a", "x"),
            ("s1", "a", "z"),
        ];
        let mut rxs = Vec::new();
        let jobs: Vec<Job> = plan
            .iter()
            .map(|(s, c, i)| {
                let (j, rx) = local_in(s, c, i);
                rxs.push(rx);
                j
            })
            .collect();
        w.group(jobs);
        let (j, rx) = local_in("s1", "a", "y");
        rxs.push(rx);
        w.group(vec![j]);
        let tv: Vec<(u64, u64, u64)> = rxs
            .iter_mut()
            .map(|rx| {
                let o = rx.try_recv().unwrap().unwrap().remove(0);
                (o.seq, o.origin_seq, o.type_version)
            })
            .collect();
        assert_eq!(
            tv,
            vec![
                (1, 1, 1),
                (2, 2, 1),
                (3, 3, 1),
                (4, 4, 2),
                (5, 5, 3),
                (6, 6, 4)
            ]
        );
        let tx = db.begin_read().unwrap();
        let vv = tx.open_table(VV).unwrap();
        assert_eq!(vv.get(node).unwrap().unwrap().value(), 6);
        let spaces = tx.open_table(SPACES).unwrap();
        assert_eq!(spaces.get("s1").unwrap().unwrap().value(), 5);
        assert_eq!(spaces.get("s2").unwrap().unwrap().value(), 1);
        let types = tx.open_table(TYPE_VERSIONS).unwrap();
        assert_eq!(types.get(("s1", "a")).unwrap().unwrap().value(), 4);
        assert_eq!(types.get(("s1", "b")).unwrap().unwrap().value(), 1);
        assert_eq!(types.get(("s2", "a")).unwrap().unwrap().value(), 1);
        // Each entity under its newest per-type version only.
        let index = tx.open_table(TYPE_INDEX).unwrap();
        let s1a: Vec<(u64, String)> = index
            .range(("s1", "a", 0)..=("s1", "a", u64::MAX))
            .unwrap()
            .map(|r| {
                let (k, v) = r.unwrap();
                (k.value().2, v.value().to_string())
            })
            .collect();
        assert_eq!(s1a, vec![(2, "x".into()), (3, "z".into()), (4, "y".into())]);
    }

    /// An entity's row is rewritten in place through `get_mut` (see
    /// `apply`): a value that grows past its leaf page's free space, then
    /// shrinks, among neighbours written before and after, reads back
    /// right, and so does every neighbour.
    #[test]
    fn an_entity_rewritten_in_place_may_outgrow_its_page() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, db) = writer(dir.path());
        let put = |w: &mut Writer, id: &str, v: Value| {
            let (reply, mut rx) = oneshot::channel();
            w.group(vec![local_job("s", vec![patch("c", id, v)], vec![], reply)]);
            rx.try_recv().unwrap().unwrap();
        };
        let mut want: BTreeMap<String, Value> = BTreeMap::new();
        for i in 0..40 {
            let id = format!("e{i:02}");
            put(&mut w, &id, Value::from(i));
            want.insert(id, Value::from(i));
        }
        for n in [1_000, 3_000, 6_000, 12_000, 5, 9_000] {
            let big = Value::String("x".repeat(n));
            put(&mut w, "e20", big.clone());
            want.insert("e20".into(), big);
            let id = format!("e20-{n}");
            put(&mut w, &id, Value::from(n));
            want.insert(id, Value::from(n));
        }
        let tx = db.begin_read().unwrap();
        let table = tx.open_table(ENTITY).unwrap();
        let mut found = BTreeMap::new();
        for row in table
            .range(("s", "c", "")..=("s", "c", "\u{10ffff}"))
            .unwrap()
        {
            let (k, v) = row.unwrap();
            let ent: StoredEntity = decode(v.value()).unwrap();
            let visible = ent.state.visible();
            found.insert(k.value().2.to_string(), visible["v"].clone());
        }
        assert_eq!(found, want);
    }

    /// A write id used twice in one job: the second write is the first's
    /// duplicate, with the first's identity, although the first's log entry
    /// is still kept in memory by the group (`Tables::flush_appends`).
    #[test]
    fn a_write_id_repeated_in_its_group_answers_the_first_write() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _db) = writer(dir.path());
        let (reply, mut rx) = oneshot::channel();
        let x = patch("c", "x", Value::from(1));
        let wids = vec![Some("w".into()), Some("w".into())];
        let job = local_job("s", vec![x.clone(), x], wids, reply);
        let (other, mut other_rx) = local("y");
        w.group(vec![other, job]);
        other_rx.try_recv().unwrap().unwrap();
        let outs = rx.try_recv().unwrap().unwrap();
        assert_eq!(outs[0].kind, OutcomeKind::Applied);
        assert_eq!(outs[1].kind, OutcomeKind::Duplicate);
        assert_eq!(
            (outs[1].seq, outs[1].origin_seq, outs[1].version),
            (outs[0].seq, outs[0].origin_seq, outs[0].version)
        );
        assert_eq!(outs[0].seq, 2);
    }

    /// Entities changed in turn (their old per-type index entries side by
    /// side: removed in one pass) and here and there (removed one by one)
    /// keep exactly one index entry each, at their newest version.
    #[test]
    fn the_type_index_keeps_each_entity_once_at_its_newest_version() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, db) = writer(dir.path());
        let ids: Vec<String> = (0..10).map(|i| format!("e{i}")).collect();
        let rounds: [Vec<usize>; 4] = [
            (0..10).collect(),
            (0..10).collect(),
            vec![1, 5, 9],
            vec![9, 0, 3, 4, 5, 6, 2],
        ];
        let mut newest: BTreeMap<String, u64> = BTreeMap::new();
        for round in &rounds {
            let mut rxs = Vec::new();
            let jobs: Vec<Job> = round
                .iter()
                .map(|&i| {
                    let (j, rx) = local_in("s", "c", &ids[i]);
                    rxs.push((i, rx));
                    j
                })
                .collect();
            w.group(jobs);
            for (i, mut rx) in rxs {
                let o = rx.try_recv().unwrap().unwrap().remove(0);
                newest.insert(ids[i].clone(), o.type_version);
            }
        }
        let tx = db.begin_read().unwrap();
        let index = tx.open_table(TYPE_INDEX).unwrap();
        let got: BTreeMap<String, u64> = index
            .range(("s", "c", 0)..=("s", "c", u64::MAX))
            .unwrap()
            .map(|r| {
                let (k, v) = r.unwrap();
                (v.value().to_string(), k.value().2)
            })
            .collect();
        assert_eq!(index.iter().unwrap().count(), 10);
        assert_eq!(got, newest);
    }

    /// A stored entity that does not decode: any write to it fails.
    fn corrupt(db: &redb::Database, id: &str) {
        let tx = db.begin_write().unwrap();
        tx.open_table(ENTITY)
            .unwrap()
            .insert(("s", "c", id), [0xc1u8, 0xff].as_slice())
            .unwrap();
        tx.commit().unwrap();
    }

    /// Bug: one failing job failed its whole group: the jobs before it were
    /// answered "commit failed" and those after it "shutting down" (503).
    #[test]
    fn one_bad_job_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, db) = writer(dir.path());
        corrupt(&db, "bad");
        let (a, mut a_rx) = local("a");
        let (bad, mut bad_rx) = local("bad");
        let (b, mut b_rx) = local("b");
        w.group(vec![a, bad, b]);
        assert!(a_rx.try_recv().unwrap().is_ok(), "the job before");
        assert!(b_rx.try_recv().unwrap().is_ok(), "the job after");
        assert!(matches!(
            bad_rx.try_recv().unwrap(),
            Err(StoreError::Decode(_))
        ));
        assert_eq!(w.last_seq.load(Ordering::Acquire), 2);
    }

    /// Bug: a trim raised the trim point (the log horizon) before the
    /// commit and did not restore it when the group failed, so catch-up
    /// took log entries still present for trimmed.
    #[test]
    fn a_failed_group_does_not_move_the_trim_point() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, db) = writer(dir.path());
        for id in ["x", "y"] {
            let (job, _rx) = local(id);
            w.group(vec![job]);
        }
        corrupt(&db, "bad");
        let (reply, mut trim_rx) = oneshot::channel();
        let trim = Job::Trim {
            older_than_ms: u64::MAX,
            keep_from: 2,
            max: 10,
            reply,
        };
        let (bad, _bad_rx) = local("bad");
        w.group(vec![trim, bad]);
        let first_in_log = {
            let tx = db.begin_read().unwrap();
            let log = tx.open_table(LOG).unwrap();
            let first = log.first().unwrap().map(|(k, _)| k.value());
            first
        };
        let horizon = w.horizon.load(Ordering::Acquire);
        assert_eq!(first_in_log, Some(2), "seq 1 trimmed, seq 2 kept");
        assert_eq!(horizon, 2, "the trim point is the first seq in the log");
        assert_eq!(trim_rx.try_recv().unwrap().unwrap(), 1);
    }
}
