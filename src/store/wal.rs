//! The write-ahead log of the durable commit (issue 16).
//!
//! With `durability = "immediate"`, a group of writes is made durable by
//! one append to this log and one `fdatasync`, not by a durable redb
//! commit (which rewrites every B-tree page the group touched and syncs
//! them: 15–30× the bytes and 4–7× the time). The writer applies the
//! group in its redb transaction as before, writes the group's *effects*
//! (the changes it applied with their seqs, write ids, version vector
//! raises, cursors) here, commits redb without an fsync and goes on; the
//! syncer thread (`syncer.rs`) syncs the log and only then shows the group
//! to reads (`visible.rs`) and acknowledges it. So everything a reader can
//! see in redb is already durable here, and redb stays the system of record: it is
//! checkpointed (a durable redb commit) every 5 s under load, half a
//! second after the last group when idle, when the log passes
//! [`CHECKPOINT_BYTES`], for every group that the log does not describe
//! (trims, snapshot merges, imports), and on close. After a crash redb
//! opens at its last durable commit, and the records past it (each names
//! its group's sequence number, `lsn`; redb's meta table holds the
//! lsn it has) are applied again in order, through the same code.
//!
//! The file is preallocated and zero-filled once, so an append changes no
//! file metadata and `fdatasync` writes only the pages appended to. After
//! each checkpoint the next record is written at offset 0 again; a scan
//! stops at the first record that is torn (bad checksum), or whose lsn
//! does not follow the one before, so older records further on are never
//! taken for new ones.
//!
//! The file's IO goes through [`WalBackend`], the seam a simulation uses to
//! model a crash that loses what was written but not synced.

use super::StoreError;
use crate::model::{Change, NodeId};
use serde::{Deserialize, Serialize};
use std::io;
use std::path::Path;
use std::sync::Arc;

/// Size of the log file. A group record that does not fit in what is left
/// is made durable by a checkpoint instead.
pub const CAPACITY: u64 = 8 << 20;
/// The log is checkpointed once it holds this much.
pub const CHECKPOINT_BYTES: u64 = 4 << 20;
/// Record header: magic, payload length, CRC-32 of lsn + payload, lsn.
const HEAD: usize = 4 + 4 + 4 + 8;
const MAGIC: u32 = 0x4f57_414c; // "OWAL"
/// Zero-fill in page-sized writes: one large write leaves the page cache
/// holding the file in large folios, and every small append then dirties
/// (and writes back) a whole folio: 38–49 KB per 256-byte change was
/// measured on Linux 6.x before this.
const FILL_CHUNK: usize = 4096;
/// The append buffer is kept across groups up to this capacity.
const KEEP_BUF: usize = 256 << 10;

/// Where the log lives instead of the file: the store's [`super::Backend`]
/// (a simulation's disk that loses what was not synced when its relay
/// crashes). Its IO interface is redb's own [`redb::StorageBackend`], so one
/// model of a disk serves the data file and the log alike.
pub type WalBackend = super::Backend;

/// The real file.
#[derive(Debug)]
struct StdWalFile(std::fs::File);

impl redb::StorageBackend for StdWalFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.0, out, offset)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&self.0, data, offset)
    }
}

/// Let the page cache drop the file's pages (a hint; see `FILL_CHUNK`).
fn drop_cache(path: &Path) {
    use std::os::unix::io::AsRawFd;
    if let Ok(f) = std::fs::File::open(path) {
        // SAFETY: an advisory call on a descriptor we own.
        unsafe {
            libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
        }
    }
}

/// One effect of a group on the tables, in the order it was made.
///
/// `C` is how the applied change is held: owned when read back, borrowed
/// from the group's committed changes when written (the writer clones
/// nothing to log a group); `&Change` serializes as `Change` does, so the
/// bytes are the same either way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Effect<C = Change> {
    /// A change applied at local seq `seq` (local or from a peer).
    Apply {
        seq: u64,
        at_ms: u64,
        change: C,
    },
    /// A client write id recorded for the change at `seq`.
    WriteId {
        space: String,
        wid: String,
        seq: u64,
    },
    /// The version vector raised over changes a sender vouched were
    /// filtered out (`Job::Remote`'s covers).
    RaiseVv {
        origin: NodeId,
        to: u64,
    },
    Cursor {
        name: String,
        seq: u64,
    },
}

impl<C> Effect<C> {
    /// The same effect with its change (if any) held another way.
    pub fn map_change<D>(self, f: impl FnOnce(C) -> Option<D>) -> Option<Effect<D>> {
        Some(match self {
            Effect::Apply { seq, at_ms, change } => Effect::Apply {
                seq,
                at_ms,
                change: f(change)?,
            },
            Effect::WriteId { space, wid, seq } => Effect::WriteId { space, wid, seq },
            Effect::RaiseVv { origin, to } => Effect::RaiseVv { origin, to },
            Effect::Cursor { name, seq } => Effect::Cursor { name, seq },
        })
    }
}

/// What one group did: enough to do it again on the state before it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record<C = Change> {
    pub lsn: u64,
    /// The relay whose data file this log belongs to.
    pub node: NodeId,
    /// The group's last seq and clock, as its commit stored them.
    pub last_seq: u64,
    pub hlc: Vec<u8>,
    pub effects: Vec<Effect<C>>,
}

fn io_err(e: io::Error) -> StoreError {
    StoreError::Db(redb::Error::Io(e))
}

/// The open log: where the next record goes.
pub struct Wal {
    /// Shared with the syncer thread, which syncs what the writer wrote.
    file: Arc<dyn redb::StorageBackend>,
    pos: u64,
    /// The record being appended, header first (kept: one allocation for
    /// the life of the log, not one per group).
    buf: Vec<u8>,
}

impl Wal {
    /// Open the log at `path`, or in `backend`, preallocating a new one,
    /// and read the records it holds, in order: the caller applies those
    /// past its data file's lsn, checkpoints, then calls [`Wal::reset`].
    pub fn open(
        backend: Option<&WalBackend>,
        path: &Path,
    ) -> Result<(Wal, Vec<Record>), StoreError> {
        let file: Arc<dyn redb::StorageBackend> = match backend {
            Some(open) => Arc::from((open.0)().map_err(io_err)?),
            None => Arc::new(StdWalFile(
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(path)
                    .map_err(io_err)?,
            )),
        };
        let len = file.len().map_err(io_err)?;
        if len < CAPACITY {
            // New (or cut short while being created: it held no acked
            // record then, as the fill is synced before the first append).
            let zeros = vec![0u8; FILL_CHUNK];
            let mut off = len - len % FILL_CHUNK as u64;
            while off < CAPACITY {
                file.write(off, &zeros).map_err(io_err)?;
                off += FILL_CHUNK as u64;
            }
            file.sync_data().map_err(io_err)?;
        }
        let mut wal = Wal {
            file,
            pos: 0,
            buf: Vec::new(),
        };
        let records = wal.records()?;
        if backend.is_none() {
            drop_cache(path);
        }
        Ok((wal, records))
    }

    /// The records from offset 0 (after a reopen of the data file).
    pub fn records(&mut self) -> Result<Vec<Record>, StoreError> {
        scan(&*self.file)
    }

    /// Bytes appended since the last reset.
    pub fn used(&self) -> u64 {
        self.pos
    }

    /// Append `rec` and sync. `Ok(false)`: it does not fit in what is
    /// left (the caller checkpoints instead); nothing was written.
    #[cfg(test)]
    pub fn append<C: Serialize>(&mut self, rec: &Record<C>) -> Result<bool, StoreError> {
        if !self.write(rec)? {
            return Ok(false);
        }
        self.file.sync_data().map_err(io_err)?;
        Ok(true)
    }

    /// Write `rec` after the last record, without syncing it: the syncer
    /// thread syncs (see `syncer.rs`), and nothing of the group may be
    /// shown or answered before. `Ok(false)`: it does not fit in what is
    /// left (the caller checkpoints instead); nothing was written.
    pub fn write<C: Serialize>(&mut self, rec: &Record<C>) -> Result<bool, StoreError> {
        // The payload is encoded after room for the header, which is
        // filled in once its length and checksum are known.
        if self.buf.capacity() > KEEP_BUF {
            // A rare huge group: do not hold its size for good.
            self.buf = Vec::new();
        }
        let buf = &mut self.buf;
        buf.clear();
        buf.resize(HEAD, 0);
        super::tables::encode_onto(buf, rec)?;
        let len = buf.len() - HEAD;
        let total = buf.len() as u64;
        if self.pos + total > CAPACITY {
            return Ok(false);
        }
        let crc = checksum(rec.lsn, &buf[HEAD..]);
        buf[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        buf[4..8].copy_from_slice(&(len as u32).to_le_bytes());
        buf[8..12].copy_from_slice(&crc.to_le_bytes());
        buf[12..20].copy_from_slice(&rec.lsn.to_le_bytes());
        self.file.write(self.pos, buf).map_err(io_err)?;
        self.pos += total;
        Ok(true)
    }

    /// The file, for the thread that syncs it.
    pub fn file(&self) -> Arc<dyn redb::StorageBackend> {
        self.file.clone()
    }

    /// Take back the records from `at` on (their groups did not commit, or
    /// their sync failed): the first header is zeroed and synced, so no
    /// scan finds it or anything after it.
    pub fn unappend(&mut self, at: u64) -> Result<(), StoreError> {
        self.file.write(at, &[0u8; HEAD]).map_err(io_err)?;
        self.file.sync_data().map_err(io_err)?;
        self.pos = at;
        Ok(())
    }

    /// Redb holds everything logged (a durable commit): start over at 0.
    pub fn reset(&mut self) {
        self.pos = 0;
    }
}

fn checksum(lsn: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&lsn.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// The records from offset 0, up to the first torn or out-of-order one.
fn scan(file: &dyn redb::StorageBackend) -> Result<Vec<Record>, StoreError> {
    // Record by record, not the whole file at once: an 8 MiB buffer at
    // every start would raise the allocator's footprint for good.
    let len = file.len().map_err(io_err)?.min(CAPACITY);
    let mut out: Vec<Record> = Vec::new();
    let mut at = 0u64;
    let mut h = [0u8; HEAD];
    while at + HEAD as u64 <= len {
        file.read(at, &mut h).map_err(io_err)?;
        let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        if word(0) != MAGIC {
            break;
        }
        let n = u64::from(word(4));
        let crc = word(8);
        let mut l = [0u8; 8];
        l.copy_from_slice(&h[12..20]);
        let lsn = u64::from_le_bytes(l);
        if at + HEAD as u64 + n > len {
            break;
        }
        let mut payload = vec![0u8; n as usize];
        file.read(at + HEAD as u64, &mut payload).map_err(io_err)?;
        if checksum(lsn, &payload) != crc {
            break;
        }
        if out.last().is_some_and(|p| p.lsn + 1 != lsn) {
            break;
        }
        let rec: Record = super::tables::decode(&payload)?;
        if rec.lsn != lsn {
            return Err(StoreError::Decode(format!(
                "write-ahead log record at {at} says lsn {} in its header and {} inside",
                lsn, rec.lsn
            )));
        }
        out.push(rec);
        at += HEAD as u64 + n;
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A file in memory that loses, at a simulated crash, what was written
    /// after the last sync.
    #[derive(Clone, Debug, Default)]
    pub struct MemFile {
        pub synced: Arc<Mutex<Vec<u8>>>,
        pub written: Arc<Mutex<Vec<u8>>>,
    }

    impl MemFile {
        pub fn crash(&self) {
            let s = self.synced.lock().unwrap().clone();
            *self.written.lock().unwrap() = s;
        }
    }

    impl redb::StorageBackend for MemFile {
        fn len(&self) -> io::Result<u64> {
            Ok(self.written.lock().unwrap().len() as u64)
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
            let w = self.written.lock().unwrap();
            let off = offset as usize;
            let src = w
                .get(off..off + out.len())
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
            out.copy_from_slice(src);
            Ok(())
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.written.lock().unwrap().resize(len as usize, 0);
            Ok(())
        }
        fn sync_data(&self) -> io::Result<()> {
            let w = self.written.lock().unwrap().clone();
            *self.synced.lock().unwrap() = w;
            Ok(())
        }
        fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
            let mut w = self.written.lock().unwrap();
            let end = offset as usize + data.len();
            if w.len() < end {
                w.resize(end, 0);
            }
            w[offset as usize..end].copy_from_slice(data);
            Ok(())
        }
    }

    fn opener(m: &MemFile) -> WalBackend {
        let m = m.clone();
        super::super::Backend(Arc::new(move || {
            Ok(Box::new(m.clone()) as Box<dyn redb::StorageBackend>)
        }))
    }

    fn rec(lsn: u64) -> Record {
        Record {
            lsn,
            node: NodeId(7),
            last_seq: lsn * 10,
            hlc: vec![1, 2, 3],
            effects: vec![Effect::Cursor {
                name: "peer".into(),
                seq: lsn,
            }],
        }
    }

    /// The writer logs a group with its changes borrowed: the bytes must
    /// be those of the owned record that a replay decodes.
    #[test]
    fn a_record_with_borrowed_changes_encodes_as_the_owned_one() {
        let change = Change {
            space: "s".into(),
            collection: "c".into(),
            id: "i".into(),
            op: crate::model::Op::Patch,
            fields: [("v".to_string(), serde_json::json!({"n": [1, "two"]}))].into(),
            stamp: crate::model::Stamp {
                ms: 5,
                counter: 1,
                node: NodeId(7),
            },
            origin: NodeId(7),
            seq: 3,
            actor: "a".into(),
        };
        let mut owned = rec(4);
        owned.effects.insert(
            0,
            Effect::Apply {
                seq: 9,
                at_ms: 11,
                change: change.clone(),
            },
        );
        let borrowed = Record {
            lsn: owned.lsn,
            node: owned.node,
            last_seq: owned.last_seq,
            hlc: owned.hlc.clone(),
            effects: owned
                .effects
                .iter()
                .cloned()
                .map(|e| e.map_change(|_| Some(&change)).unwrap())
                .collect(),
        };
        let a = crate::store::tables::encode(&owned).unwrap();
        let b = crate::store::tables::encode(&borrowed).unwrap();
        assert_eq!(a, b);
        let m = MemFile::default();
        let (mut w, _) = Wal::open(Some(&opener(&m)), Path::new("unused")).unwrap();
        assert!(w.append(&borrowed).unwrap());
        let (_, back) = Wal::open(Some(&opener(&m)), Path::new("unused")).unwrap();
        assert_eq!(back, vec![owned]);
    }

    #[test]
    fn records_come_back_in_order_and_a_reset_hides_the_old_ones() {
        let m = MemFile::default();
        let path = Path::new("unused");
        let (mut w, none) = Wal::open(Some(&opener(&m)), path).unwrap();
        assert!(none.is_empty());
        assert_eq!(m.written.lock().unwrap().len() as u64, CAPACITY);
        for lsn in 1..=5 {
            assert!(w.append(&rec(lsn)).unwrap());
        }
        let (_, back) = Wal::open(Some(&opener(&m)), path).unwrap();
        assert_eq!(back, (1..=5).map(rec).collect::<Vec<_>>());
        // After a checkpoint the log starts over at offset 0: records 6
        // and 7 overwrite 1 and 2, and the scan stops before 3.
        w.reset();
        for lsn in 6..=7 {
            assert!(w.append(&rec(lsn)).unwrap());
        }
        let (_, back) = Wal::open(Some(&opener(&m)), path).unwrap();
        assert_eq!(back.iter().map(|r| r.lsn).collect::<Vec<_>>(), vec![6, 7]);
    }

    #[test]
    fn a_crash_loses_only_what_was_not_synced() {
        let m = MemFile::default();
        let path = Path::new("unused");
        let (mut w, _) = Wal::open(Some(&opener(&m)), path).unwrap();
        assert!(w.append(&rec(1)).unwrap());
        // A torn append: written, never synced.
        let at = w.used();
        let payload = crate::store::tables::encode(&rec(2)).unwrap();
        let mut head = MAGIC.to_le_bytes().to_vec();
        head.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        head.extend_from_slice(&checksum(2, &payload).to_le_bytes());
        head.extend_from_slice(&2u64.to_le_bytes());
        redb::StorageBackend::write(&m, at, &head).unwrap();
        m.crash();
        let (_, back) = Wal::open(Some(&opener(&m)), path).unwrap();
        assert_eq!(back, vec![rec(1)]);
        // Half a record (header synced, payload not): torn, ignored.
        redb::StorageBackend::write(&m, at, &head).unwrap();
        redb::StorageBackend::sync_data(&m).unwrap();
        let (_, back) = Wal::open(Some(&opener(&m)), path).unwrap();
        assert_eq!(back, vec![rec(1)]);
    }

    #[test]
    fn unappend_takes_a_record_back_and_a_full_log_refuses() {
        let m = MemFile::default();
        let path = Path::new("unused");
        let (mut w, _) = Wal::open(Some(&opener(&m)), path).unwrap();
        assert!(w.append(&rec(1)).unwrap());
        let at = w.used();
        assert!(w.append(&rec(2)).unwrap());
        w.unappend(at).unwrap();
        let (_, back) = Wal::open(Some(&opener(&m)), path).unwrap();
        assert_eq!(back, vec![rec(1)]);
        let mut big = rec(3);
        big.hlc = vec![0; CAPACITY as usize];
        assert!(!w.append(&big).unwrap(), "does not fit: checkpoint instead");
        assert_eq!(w.used(), at);
    }
}
