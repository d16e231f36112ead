//! What readers may see: no group before it is durable (issue 16).
//!
//! With the write-ahead log, the writer commits a group to redb (without an
//! fsync) before the syncer thread has synced the group's log record, and
//! goes on with the next group while the sync runs (`syncer.rs`). redb
//! shows a commit to every read transaction begun after it, so a read could
//! see a group that a power cut would then take back: a client would be
//! sent a change, and a seq, that the relay later reuses for another. So
//! every read, after beginning its transaction, waits until all that its
//! snapshot can hold is durable: groups are numbered (their `lsn`), the
//! writer raises `committing` just before each redb commit, and the syncer
//! (or, for a group made durable by redb itself, the writer) raises
//! `shown` once a group may be seen. A snapshot begun after a commit holds
//! at most the `committing` read after it began, so waiting for `shown` to
//! reach that number is enough. The wait is at most one `fdatasync` (reads
//! run on blocking threads, never on an async worker) and is nearly always
//! skipped: `shown` is usually there already.

use super::slot::Slot;
use super::StoreError;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// A waiting read looks again at least this often (the fault check, and
/// a wake-up that raced its sleep).
const RECHECK: Duration = Duration::from_millis(5);

#[derive(Debug, Default)]
pub struct Visibility {
    /// The lsn of the newest group whose redb commit has begun.
    committing: AtomicU64,
    /// Every group up to this lsn may be read.
    shown: AtomicU64,
    /// Moved by every reopen of the data file (`reset`): a read that
    /// waited across one began on the old file and begins again.
    epoch: AtomicU64,
    waiters: AtomicUsize,
    lock: Mutex<()>,
    cv: Condvar,
}

/// Why a read's wait ended without its snapshot being shown.
pub enum Unseen {
    /// The file was reopened meanwhile: begin the read again.
    Reopened,
    /// The store faulted (a failed sync): the snapshot may never be durable.
    Faulted(StoreError),
}

impl Visibility {
    /// The writer is about to commit group `lsn` to redb.
    pub fn committing(&self, lsn: u64) {
        self.committing.store(lsn, SeqCst);
    }

    /// Group `lsn`'s commit failed: the newest begun is `before` again.
    pub fn abandon(&self, before: u64) {
        self.committing.store(before, SeqCst);
        self.wake();
    }

    /// Every group up to `lsn` is durable (or, with relaxed durability,
    /// committed) and may be read.
    pub fn show(&self, lsn: u64) {
        self.shown.fetch_max(lsn, SeqCst);
        self.wake();
    }

    /// The data file was reopened (or first opened) at group `lsn`: what
    /// it holds is all durable.
    pub fn reset(&self, lsn: u64) {
        self.epoch.fetch_add(1, SeqCst);
        self.committing.store(lsn, SeqCst);
        self.shown.store(lsn, SeqCst);
        self.wake();
    }

    /// Groups committed and not yet shown (tests).
    #[cfg(test)]
    pub fn unshown(&self) -> u64 {
        self.committing
            .load(SeqCst)
            .saturating_sub(self.shown.load(SeqCst))
    }

    /// Read before beginning a read transaction, and passed to [`wait`].
    pub fn epoch(&self) -> u64 {
        self.epoch.load(SeqCst)
    }

    fn wake(&self) {
        // Paired with the SeqCst increment in `wait`: either the waiter
        // sees the new value, or this sees the waiter.
        if self.waiters.load(SeqCst) > 0 {
            let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.cv.notify_all();
        }
    }

    /// After beginning a read transaction (with `epoch` read before it):
    /// return once everything it can see is shown.
    pub fn wait(&self, epoch: u64, slot: &Slot) -> Result<(), Unseen> {
        let want = self.committing.load(SeqCst);
        if self.shown.load(SeqCst) >= want && self.epoch.load(SeqCst) == epoch {
            return Ok(());
        }
        self.waiters.fetch_add(1, SeqCst);
        let mut guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let out = loop {
            if self.epoch.load(SeqCst) != epoch {
                break Err(Unseen::Reopened);
            }
            // A commit abandoned after the snapshot began was never in it.
            let bound = want.min(self.committing.load(SeqCst));
            if self.shown.load(SeqCst) >= bound {
                break Ok(());
            }
            if let Some(f) = slot.fault() {
                break Err(Unseen::Faulted(f.error()));
            }
            guard = match self.cv.wait_timeout(guard, RECHECK) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        };
        drop(guard);
        self.waiters.fetch_sub(1, SeqCst);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn slot(dir: &std::path::Path) -> Arc<Slot> {
        Slot::open(&dir.join("v.redb"), 1 << 20, None).unwrap().0
    }

    /// A read that began now, waiting on another thread.
    fn reader(
        v: &Arc<Visibility>,
        slot: &Arc<Slot>,
    ) -> std::thread::JoinHandle<Result<(), Unseen>> {
        let (v, slot, epoch) = (v.clone(), slot.clone(), v.epoch());
        std::thread::spawn(move || v.wait(epoch, &slot))
    }

    #[test]
    fn a_read_waits_for_the_groups_its_snapshot_may_hold() {
        let dir = tempfile::tempdir().unwrap();
        let slot = slot(dir.path());
        let v = Arc::new(Visibility::default());
        v.reset(4);
        assert!(v.wait(v.epoch(), &slot).is_ok(), "nothing pending");
        v.committing(5);
        let reader = reader(&v, &slot);
        std::thread::sleep(Duration::from_millis(30));
        assert!(!reader.is_finished(), "group 5 is not durable yet");
        v.show(5);
        assert!(reader.join().unwrap().is_ok());
    }

    #[test]
    fn an_abandoned_commit_releases_its_readers() {
        let dir = tempfile::tempdir().unwrap();
        let slot = slot(dir.path());
        let v = Arc::new(Visibility::default());
        v.reset(7);
        v.committing(8);
        let reader = reader(&v, &slot);
        std::thread::sleep(Duration::from_millis(20));
        v.abandon(7);
        assert!(reader.join().unwrap().is_ok());
    }

    #[test]
    fn a_reopen_or_a_fault_ends_the_wait_without_showing() {
        let dir = tempfile::tempdir().unwrap();
        let slot = slot(dir.path());
        let v = Arc::new(Visibility::default());
        v.reset(1);
        v.committing(2);
        let reader = reader(&v, &slot);
        std::thread::sleep(Duration::from_millis(20));
        v.reset(1);
        assert!(matches!(reader.join().unwrap(), Err(Unseen::Reopened)));
        v.committing(2);
        slot.set_fault(super::super::slot::Fault::Io("sync failed".into()));
        assert!(matches!(
            v.wait(v.epoch(), &slot),
            Err(Unseen::Faulted(StoreError::Faulted { .. }))
        ));
    }
}
