//! The durable half of a group commit, on a thread of its own (issue 16).
//!
//! With the write-ahead log, the writer applies a group, writes its log
//! record without syncing it, commits redb without an fsync, hands the
//! group here and goes on with the next group at once. This thread syncs
//! the log (one `fdatasync` for every record written since the last one,
//! however many groups that is), and only then lets readers see the groups
//! ([`Visibility`]), reports them to fan-out and answers their jobs, in
//! commit order. So one group's fsync overlaps the next group's apply, and
//! "acked means fsynced" still holds: nothing is answered, fanned out or
//! readable before the record that makes it durable is synced.
//!
//! A failed sync (EIO: the disk is failing) faults the store: the groups it
//! covered, and every group handed over after them, are refused and never
//! shown, and the writer reopens the data file (`Writer::recover`) once it
//! has drained this thread. Their outcome is then unknown, as for any write
//! whose answer is lost: redb's clean close keeps their commits (durably,
//! or, if the disk fails that too, the log's replay applies whatever of
//! their records can be read back), so a client that retries with its
//! write id gets the first result. What holds either way: nothing was
//! answered or shown before it was durable.

use super::slot::{fault_of, Fault, Slot};
use super::visible::Visibility;
use super::writer::{Answer, CommitSink, Job};
use super::{Committed, StoreError};
use crate::metrics::Metrics;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Instant;

/// Groups (and pings, barriers) handed over and not yet taken by the
/// syncer: enough to overlap the next groups' apply with a sync, and no
/// more, so committed but unsynced groups stay few.
const AHEAD: usize = 4;

/// A committed group, to be made durable (if its record is not yet),
/// shown, reported and answered.
pub(super) struct Done {
    pub lsn: u64,
    /// Its log record is written but not yet synced.
    pub needs_sync: bool,
    pub seq: u64,
    pub committed: Vec<Arc<Committed>>,
    /// Report the group to the sink even if it committed no change (it
    /// raised the version vector over vouched-for changes).
    pub report: bool,
    pub merged: Vec<String>,
    pub jobs: Vec<Job>,
    pub answers: Vec<Answer>,
    pub started: Instant,
}

/// What every committed group ends with, on whichever thread finishes it.
pub(super) struct Finisher {
    pub sink: Arc<dyn CommitSink>,
    pub last_seq: Arc<AtomicU64>,
    pub metrics: Arc<Metrics>,
    pub vis: Arc<Visibility>,
    pub slot: Arc<Slot>,
}

impl Finisher {
    /// Publish, report and answer a group that may be shown.
    pub fn finish(&self, d: Done) {
        self.metrics
            .observe_commit(d.started.elapsed(), d.committed.len());
        self.last_seq.store(d.seq, Ordering::Release);
        if d.report {
            self.sink.committed(d.seq, d.committed);
        }
        if !d.merged.is_empty() {
            self.sink.states_merged(&d.merged);
        }
        for (job, answer) in d.jobs.into_iter().zip(d.answers) {
            job.answer(answer);
        }
    }

    /// Refuse every job of a group whose record could not be synced.
    fn fail(&self, d: Done, fault: &Fault) {
        self.metrics.commit_failures.fetch_add(1, Ordering::Relaxed);
        for job in d.jobs {
            job.fail(fault.error());
        }
    }
}

enum Item {
    Done(Box<Done>),
    /// Answered once every group before them is.
    Pings(Vec<Job>),
    /// Answered once everything before it is finished; ends a failure.
    Barrier(mpsc::SyncSender<()>),
}

/// The writer's handle on the syncer thread; dropping it lets the thread
/// finish what it holds, then joins it.
pub(super) struct Syncer {
    tx: Option<mpsc::SyncSender<Item>>,
    /// Items handed over and not yet finished.
    pending: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    pub fn start(file: Arc<dyn redb::StorageBackend>, fin: Finisher) -> Result<Syncer, StoreError> {
        // Bounded: while a sync is slow (a stalled disk), the writer runs
        // at most this many groups ahead of it, then waits, as it did when
        // it synced itself.
        let (tx, rx) = mpsc::sync_channel(AHEAD);
        let pending = Arc::new(AtomicUsize::new(0));
        let left = pending.clone();
        let thread = std::thread::Builder::new()
            .name("outpost-sync".into())
            .spawn(move || run(rx, &*file, &fin, &left))
            .map_err(|e| StoreError::Db(redb::Error::Io(e)))?;
        Ok(Syncer {
            tx: Some(tx),
            pending,
            thread: Some(thread),
        })
    }

    #[allow(clippy::result_large_err)]
    fn send(&self, item: Item) -> Result<(), Item> {
        self.pending.fetch_add(1, Ordering::SeqCst);
        let sent = match &self.tx {
            Some(tx) => tx.send(item).map_err(|e| e.0),
            None => Err(item),
        };
        if sent.is_err() {
            self.pending.fetch_sub(1, Ordering::SeqCst);
        }
        sent
    }

    /// Hand over a committed group whose record needs its sync. Gives it
    /// back if the thread is gone (it panicked).
    pub fn done(&self, d: Box<Done>) -> Result<(), Box<Done>> {
        self.send(Item::Done(d)).map_err(|i| match i {
            Item::Done(d) => d,
            _ => unreachable!("send gives back what it was given"),
        })
    }

    /// Answer `pings` after every group handed over before them.
    pub fn pings(&self, pings: Vec<Job>) -> Result<(), Vec<Job>> {
        self.send(Item::Pings(pings)).map_err(|i| match i {
            Item::Pings(p) => p,
            _ => unreachable!("send gives back what it was given"),
        })
    }

    /// Nothing handed over is unfinished.
    pub fn idle(&self) -> bool {
        self.pending.load(Ordering::SeqCst) == 0
    }

    /// Wait until everything handed over is finished. After a failed
    /// sync the thread refuses every group until a drain (the writer
    /// drains before it reopens the file).
    pub fn drain(&self, slot: &Slot) {
        // Nothing pending and no fault: no failure can be left to end (the
        // thread faults the store before it refuses anything).
        if self.idle() && slot.fault().is_none() {
            return;
        }
        let (tx, rx) = mpsc::sync_channel(1);
        if self.send(Item::Barrier(tx)).is_ok() {
            let _ = rx.recv();
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    rx: mpsc::Receiver<Item>,
    file: &dyn redb::StorageBackend,
    fin: &Finisher,
    pending: &AtomicUsize,
) {
    let mut failed: Option<Fault> = None;
    while let Ok(first) = rx.recv() {
        // Everything waiting is covered by one sync.
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let need = batch
            .iter()
            .filter_map(|i| match i {
                Item::Done(d) if d.needs_sync => Some(d.lsn),
                _ => None,
            })
            .max();
        if let (Some(lsn), None) = (need, &failed) {
            match file.sync_data() {
                Ok(()) => fin.vis.show(lsn),
                Err(e) => {
                    let e = StoreError::Db(redb::Error::Io(e));
                    let fault = fault_of(&e).unwrap_or_else(|| Fault::Io(e.to_string()));
                    tracing::error!(error = %e, "syncing the write-ahead log failed; its groups are refused");
                    fin.slot.set_fault(fault.clone());
                    failed = Some(fault);
                }
            }
        }
        for item in batch {
            match item {
                Item::Done(d) => match &failed {
                    None => fin.finish(*d),
                    Some(f) => fin.fail(*d, f),
                },
                Item::Pings(pings) => {
                    for p in pings {
                        match &failed {
                            None => p.pong(),
                            Some(f) => p.fail(f.error()),
                        }
                    }
                }
                Item::Barrier(reply) => {
                    failed = None;
                    let _ = reply.send(());
                }
            }
            pending.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::wal::tests::MemFile;
    use super::super::writer::tests::{local_job, patch, test_opts, NoSink};
    use super::super::{Backend, Outcome, Store};
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::{Condvar, Mutex};
    use std::time::Duration;

    /// A log file whose syncs can be held (each counted as it starts) or
    /// made to fail once.
    #[derive(Debug, Default)]
    struct Gate {
        held: Mutex<bool>,
        cv: Condvar,
        started: AtomicUsize,
        fail_next: AtomicBool,
    }

    impl Gate {
        fn hold(self: &Arc<Self>) -> Held {
            *self.held.lock().unwrap() = true;
            Held(self.clone())
        }
    }

    /// Holds the syncs until dropped (also when a failed assertion
    /// unwinds: the store's threads must not stay parked).
    struct Held(Arc<Gate>);

    impl Drop for Held {
        fn drop(&mut self) {
            *self.0.held.lock().unwrap() = false;
            self.0.cv.notify_all();
        }
    }

    #[derive(Debug)]
    struct GatedFile {
        mem: MemFile,
        gate: Arc<Gate>,
    }

    impl redb::StorageBackend for GatedFile {
        fn len(&self) -> std::io::Result<u64> {
            self.mem.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            self.mem.read(offset, out)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.mem.set_len(len)
        }
        fn sync_data(&self) -> std::io::Result<()> {
            self.gate.started.fetch_add(1, Ordering::SeqCst);
            let mut held = self.gate.held.lock().unwrap();
            while *held {
                held = self.gate.cv.wait(held).unwrap();
            }
            if self.gate.fail_next.swap(false, Ordering::SeqCst) {
                return Err(std::io::Error::other("simulated EIO"));
            }
            self.mem.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.mem.write(offset, data)
        }
    }

    fn open(dir: &std::path::Path, mem: &MemFile, gate: &Arc<Gate>) -> Store {
        let (mem, gate) = (mem.clone(), gate.clone());
        let wal = Backend(Arc::new(move || {
            Ok(Box::new(GatedFile {
                mem: mem.clone(),
                gate: gate.clone(),
            }) as Box<dyn redb::StorageBackend>)
        }));
        let opts = test_opts(dir, Some(wal));
        Store::open(opts, Arc::new(Metrics::default()), Arc::new(NoSink)).unwrap()
    }

    fn write(
        id: &str,
    ) -> impl FnOnce(tokio::sync::oneshot::Sender<Result<Vec<Outcome>, StoreError>>) -> Job {
        let write = patch("c", id, serde_json::Value::from(1));
        move |reply| local_job("s", vec![write], vec![], reply)
    }

    fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        for _ in 0..500 {
            if cond() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("timed out waiting for {what}");
    }

    /// "Acked means fsynced", and nothing is readable before it is durable:
    /// while a group's log record waits for its sync, the group is
    /// committed in redb, yet its write is not answered and no read sees it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_is_answered_and_seen_only_after_its_sync() {
        let dir = tempfile::tempdir().unwrap();
        let (mem, gate) = (MemFile::default(), Arc::new(Gate::default()));
        let store = Arc::new(open(dir.path(), &mem, &gate));
        store.submit(write("a")).await.unwrap();
        let held = gate.hold();
        let before = gate.started.load(Ordering::SeqCst);
        let mut ack = store.enqueue(write("b")).await.unwrap();
        // The sync has started: the group is written and committed.
        wait_for("the sync", || gate.started.load(Ordering::SeqCst) > before);
        let reader = {
            let store = store.clone();
            std::thread::spawn(move || store.entity("s", "c", "b").unwrap().is_some())
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(ack.try_recv().is_err(), "answered before its sync");
        assert!(!reader.is_finished(), "a read saw a group before its sync");
        drop(held);
        assert_eq!(ack.await.unwrap().unwrap()[0].seq, 2);
        assert!(reader.join().unwrap(), "seen once durable");
        assert_eq!(store.last_seq(), 2);
        store.close();
    }

    /// While a sync is held, the writer commits at most `AHEAD` + 2
    /// groups past it (one being synced, `AHEAD` handed over, one waiting
    /// to be), then waits; all are answered once the sync goes through.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writer_runs_a_bounded_number_of_groups_ahead_of_a_stalled_sync() {
        let dir = tempfile::tempdir().unwrap();
        let (mem, gate) = (MemFile::default(), Arc::new(Gate::default()));
        let store = open(dir.path(), &mem, &gate);
        store.submit(write("a")).await.unwrap();
        let held = gate.hold();
        let mut acks = Vec::new();
        for i in 0..12 {
            acks.push(store.enqueue(write(&format!("e{i}"))).await.unwrap());
            // One group each: the writer takes each before the next comes.
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        let most = AHEAD as u64 + 2;
        wait_for("the writer to stop", || store.vis.unshown() == most);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(store.vis.unshown(), most, "ran further ahead");
        drop(held);
        for ack in acks {
            ack.await.unwrap().unwrap();
        }
        assert_eq!(store.vis.unshown(), 0);
        store.close();
    }

    /// A sync that fails refuses its group (never shown or answered as
    /// written), the store reopens and goes on, and what survives is
    /// consistent: every acked write, and the refused one either
    /// everywhere or nowhere (its outcome is unknown, as for a lost ack).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_sync_refuses_its_group_and_the_store_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (mem, gate) = (MemFile::default(), Arc::new(Gate::default()));
        let store = open(dir.path(), &mem, &gate);
        store.submit(write("a")).await.unwrap();
        gate.fail_next.store(true, Ordering::SeqCst);
        let refused = store.submit(write("b")).await;
        assert!(
            matches!(refused, Err(StoreError::Faulted { .. })),
            "{refused:?}"
        );
        // The next write reopens the file (the first reopen is not delayed).
        let c = store.submit(write("c")).await.unwrap();
        assert!(store.fault().is_none());
        let b_kept = store.entity("s", "c", "b").unwrap().is_some();
        assert!(store.entity("s", "c", "c").unwrap().is_some());
        assert_eq!(store.last_seq(), c[0].seq);
        store.close();
        drop(store);
        mem.crash();
        let store = open(dir.path(), &mem, &gate);
        assert!(store.entity("s", "c", "a").unwrap().is_some());
        assert_eq!(store.entity("s", "c", "b").unwrap().is_some(), b_kept);
        assert!(store.entity("s", "c", "c").unwrap().is_some());
        assert_eq!(store.last_seq(), c[0].seq);
        store.close();
    }
}
