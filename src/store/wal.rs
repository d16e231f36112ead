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
//! stops at the first record that is torn (bad checksum), whose lsn does
//! not follow the one before, or whose checksum does not chain to the one
//! before (each record's CRC starts from its predecessor's), so older
//! records further on are never taken for new ones, even one a crash
//! left behind with the very lsn a later generation reached.
//!
//! A record that would spill over into one more page than it fills is
//! started on the next page instead ([`start_for`]): the page the last
//! record ended in was synced already, and writing into it again costs a
//! whole page on the device (on an SD card, one more flash page
//! programmed). With groups of about 7 KB (S=10, W=64) the relay wrote
//! 965-978 B per change in all, against 1 077-1 122 B before. The scan
//! looks for the next record where the last one ended, and then at the
//! next page boundary.
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
/// Record header: magic, payload length, CRC-32 of lsn + payload (started
/// from the previous record's, see [`checksum`]), lsn.
const HEAD: usize = 4 + 4 + 4 + 8;
/// A record whose CRC starts from its predecessor's (0 for the first).
const MAGIC: u32 = 0x4f57_4132; // "OWA2"
/// A record of a log written before records were chained: read (a relay
/// upgraded after an unclean stop replays it), never written.
const MAGIC_V1: u32 = 0x4f57_414c; // "OWAL"
/// The page size records are aligned to when that saves a page write
/// ([`start_for`]). 4 KiB, not the kernel's page size: the file system's
/// block is 4 KiB on the cards and disks this runs on, and a scan must
/// find the records whatever kernel wrote them.
const PAGE: u64 = 4096;
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

/// Where a record `len` bytes long goes when the last one ended at
/// `pos`: right there, unless the pages it would touch from there (the
/// first of them already written and synced) outnumber the pages it fills
/// on its own, in which case at the next page boundary. A small record
/// that fits in the current page stays there: moving it saves nothing and
/// uses the log up faster.
pub fn start_for(pos: u64, len: u64) -> u64 {
    let off = pos % PAGE;
    if off == 0 || (off + len).div_ceil(PAGE) <= len.div_ceil(PAGE) {
        pos
    } else {
        pos - off + PAGE
    }
}

/// Where the log stood before an append, to take it back.
#[derive(Debug, Clone, Copy)]
pub struct Appended {
    at: u64,
    pos: u64,
    logged: u64,
    crc: u32,
}

/// The open log: where the next record goes.
pub struct Wal {
    /// Shared with the syncer thread, which syncs what the writer wrote.
    file: Arc<dyn redb::StorageBackend>,
    /// Where the last record ended.
    pos: u64,
    /// Bytes of records since the last reset, without the padding
    /// [`start_for`] skips: what a replay reads and applies.
    logged: u64,
    /// The last record's CRC, where the next record's starts from.
    crc: u32,
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
            logged: 0,
            crc: 0,
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

    /// Bytes of records appended since the last reset (what a replay
    /// would read; the checkpoint is due by this).
    pub fn logged(&self) -> u64 {
        self.logged
    }

    /// Append `rec` and sync. `Ok(false)`: it does not fit in what is
    /// left (the caller checkpoints instead); nothing was written.
    #[cfg(test)]
    pub fn append<C: Serialize>(&mut self, rec: &Record<C>) -> Result<bool, StoreError> {
        if self.write(rec)?.is_none() {
            return Ok(false);
        }
        self.file.sync_data().map_err(io_err)?;
        Ok(true)
    }

    /// Write `rec` after the last record, without syncing it: the syncer
    /// thread syncs (see `syncer.rs`), and nothing of the group may be
    /// shown or answered before. `Ok(None)`: it does not fit in what is
    /// left (the caller checkpoints instead); nothing was written.
    /// `Ok(Some(_))`: written, and takes back with [`Wal::unappend`].
    pub fn write<C: Serialize>(&mut self, rec: &Record<C>) -> Result<Option<Appended>, StoreError> {
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
        let at = start_for(self.pos, total);
        if at + total > CAPACITY {
            return Ok(None);
        }
        let crc = checksum(self.crc, rec.lsn, &buf[HEAD..]);
        put_head(&mut buf[..HEAD], MAGIC, len as u32, crc, rec.lsn);
        // A page at a time: a write of several pages may be given one
        // large folio by the page cache, and the next record, started in
        // its last page, would then dirty (and write back) all of it.
        // Measured with `start_for`: 965-978 B per change written in all
        // against 1 016-1 041 B with one write per record.
        let mut off = 0usize;
        while off < buf.len() {
            let here = at + off as u64;
            let n = ((PAGE - here % PAGE) as usize).min(buf.len() - off);
            self.file.write(here, &buf[off..off + n]).map_err(io_err)?;
            off += n;
        }
        let before = Appended {
            at,
            pos: self.pos,
            logged: self.logged,
            crc: self.crc,
        };
        self.pos = at + total;
        self.logged += total;
        self.crc = crc;
        Ok(Some(before))
    }

    /// The file, for the thread that syncs it.
    pub fn file(&self) -> Arc<dyn redb::StorageBackend> {
        self.file.clone()
    }

    /// Take back the record `a` stands for and any after it (their groups
    /// did not commit, or their sync failed): its header is zeroed and
    /// synced, so no scan finds it or anything after it.
    pub fn unappend(&mut self, a: Appended) -> Result<(), StoreError> {
        self.file.write(a.at, &[0u8; HEAD]).map_err(io_err)?;
        self.file.sync_data().map_err(io_err)?;
        self.pos = a.pos;
        self.logged = a.logged;
        self.crc = a.crc;
        Ok(())
    }

    /// Redb holds everything logged (a durable commit): start over at 0.
    pub fn reset(&mut self) {
        self.pos = 0;
        self.logged = 0;
        self.crc = 0;
    }
}

/// Fill in a record header (see [`HEAD`]).
fn put_head(h: &mut [u8], magic: u32, len: u32, crc: u32, lsn: u64) {
    h[0..4].copy_from_slice(&magic.to_le_bytes());
    h[4..8].copy_from_slice(&len.to_le_bytes());
    h[8..12].copy_from_slice(&crc.to_le_bytes());
    h[12..20].copy_from_slice(&lsn.to_le_bytes());
}

/// A record's CRC-32 over its lsn and payload, started from its
/// predecessor's (0 for the first record after a reset).
fn checksum(prev: u32, lsn: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(prev);
    h.update(&lsn.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// What the next record must follow: the last one read.
#[derive(Clone, Copy)]
struct Link {
    lsn: u64,
    crc: u32,
    /// Written with [`MAGIC`] (its successor's CRC starts from its own).
    chained: bool,
}

/// A record read back, what the next must follow, and where it ends.
struct Found {
    rec: Record,
    link: Link,
    end: u64,
}

/// The record at `at` if it is whole and follows `prev`.
fn record_at(
    file: &dyn redb::StorageBackend,
    len: u64,
    at: u64,
    prev: Option<Link>,
) -> Result<Option<Found>, StoreError> {
    if at + HEAD as u64 > len {
        return Ok(None);
    }
    let mut h = [0u8; HEAD];
    file.read(at, &mut h).map_err(io_err)?;
    let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    // A log is chained throughout or not at all (written by an older
    // relay): an unchained record after a chained one is stale.
    let magic = word(0);
    let seed = match (magic, prev) {
        (MAGIC, None) => 0,
        (
            MAGIC,
            Some(Link {
                crc, chained: true, ..
            }),
        ) => crc,
        (MAGIC_V1, None | Some(Link { chained: false, .. })) => 0,
        _ => return Ok(None),
    };
    let n = u64::from(word(4));
    let crc = word(8);
    let mut l = [0u8; 8];
    l.copy_from_slice(&h[12..20]);
    let lsn = u64::from_le_bytes(l);
    if at + HEAD as u64 + n > len || prev.is_some_and(|p| p.lsn + 1 != lsn) {
        return Ok(None);
    }
    let mut payload = vec![0u8; n as usize];
    file.read(at + HEAD as u64, &mut payload).map_err(io_err)?;
    if checksum(seed, lsn, &payload) != crc {
        return Ok(None);
    }
    let rec: Record = super::tables::decode(&payload)?;
    if rec.lsn != lsn {
        return Err(StoreError::Decode(format!(
            "write-ahead log record at {at} says lsn {} in its header and {} inside",
            lsn, rec.lsn
        )));
    }
    Ok(Some(Found {
        rec,
        link: Link {
            lsn,
            crc,
            chained: magic == MAGIC,
        },
        end: at + HEAD as u64 + n,
    }))
}

/// The records from offset 0, up to the first torn, out-of-order or
/// unchained one.
fn scan(file: &dyn redb::StorageBackend) -> Result<Vec<Record>, StoreError> {
    // Record by record, not the whole file at once: an 8 MiB buffer at
    // every start would raise the allocator's footprint for good.
    let len = file.len().map_err(io_err)?.min(CAPACITY);
    let mut out: Vec<Record> = Vec::new();
    let mut at = 0u64;
    let mut prev = None;
    loop {
        let mut found = record_at(file, len, at, prev)?;
        if found.is_none() && !at.is_multiple_of(PAGE) && prev.is_some_and(|p| p.chained) {
            // Started on the next page (`start_for`).
            found = record_at(file, len, at - at % PAGE + PAGE, prev)?;
        }
        let Some(f) = found else {
            break;
        };
        prev = Some(f.link);
        out.push(f.rec);
        at = f.end;
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
        let at = w.pos;
        let payload = crate::store::tables::encode(&rec(2)).unwrap();
        let mut head = [0u8; HEAD];
        let crc = checksum(w.crc, 2, &payload);
        put_head(&mut head, MAGIC, payload.len() as u32, crc, 2);
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
        let (pos, logged) = (w.pos, w.logged());
        let a = w.write(&rec(2)).unwrap().unwrap();
        w.unappend(a).unwrap();
        assert_eq!((w.pos, w.logged()), (pos, logged));
        let (_, back) = Wal::open(Some(&opener(&m)), path).unwrap();
        assert_eq!(back, vec![rec(1)]);
        // The log goes on after the taken-back record as if it never was.
        assert!(w.append(&rec(2)).unwrap());
        let (_, back) = Wal::open(Some(&opener(&m)), path).unwrap();
        assert_eq!(back, vec![rec(1), rec(2)]);
        let mut big = rec(3);
        big.hlc = vec![0; CAPACITY as usize];
        assert!(!w.append(&big).unwrap(), "does not fit: checkpoint instead");
        assert_eq!(w.logged(), logged + (w.pos - pos));
    }

    #[test]
    fn a_record_starts_on_the_next_page_only_when_that_saves_a_page() {
        // At a page boundary, or fitting in what is left of the page: here.
        assert_eq!(start_for(0, 9000), 0);
        assert_eq!(start_for(2 * PAGE, 100), 2 * PAGE);
        assert_eq!(start_for(100, 3996), 100);
        // 7 000 bytes from 100 touch 2 pages, as many as they fill: here.
        assert_eq!(start_for(100, 7000), 100);
        // From 3 000 they would touch 3 pages for 2 of their own: moved.
        assert_eq!(start_for(3000, 7000), PAGE);
        assert_eq!(start_for(PAGE + 3000, 7000), 2 * PAGE);
        // 100 bytes from 4 050 touch 2 pages for 1: moved.
        assert_eq!(start_for(4050, 100), PAGE);
    }

    fn sized(lsn: u64, bytes: usize) -> Record {
        let mut r = rec(lsn);
        r.hlc = vec![lsn as u8; bytes];
        r
    }

    /// Groups of about 7 KB, some started on the next page: every one is
    /// read back, and a group never writes into a page before its own
    /// more than it must.
    #[test]
    fn records_started_on_a_later_page_are_read_back_in_order() {
        let m = MemFile::default();
        let path = Path::new("unused");
        let (mut w, _) = Wal::open(Some(&opener(&m)), path).unwrap();
        let mut moved = 0;
        let mut want = Vec::new();
        for lsn in 1..=40u64 {
            let r = sized(lsn, 5000 + (lsn as usize * 397) % 3000);
            let pos = w.pos;
            let a = w.write(&r).unwrap().unwrap();
            w.file.sync_data().unwrap();
            if a.at != pos {
                moved += 1;
                assert_eq!(a.at % PAGE, 0);
            }
            // Pages written from the record's first to its last: never
            // more than it fills on its own.
            let own = (w.pos - a.at).div_ceil(PAGE);
            let touched = w.pos.div_ceil(PAGE) - a.at / PAGE;
            assert!(touched <= own, "record {lsn}: {touched} pages for {own}");
            want.push(r);
        }
        assert!(moved > 5, "some records start on the next page ({moved})");
        assert!(w.pos > w.logged(), "the padding is not counted as logged");
        let (_, back) = Wal::open(Some(&opener(&m)), path).unwrap();
        assert_eq!(back, want);
    }

    /// A crash can leave records of a generation past where its scan
    /// stopped (written, not synced, the one before them torn). After the
    /// reset, a later generation reaches their lsns: they must not be read
    /// as its own.
    #[test]
    fn a_stale_record_with_the_next_lsn_is_not_taken_for_a_new_one() {
        let m = MemFile::default();
        let path = Path::new("unused");
        let (mut w, _) = Wal::open(Some(&opener(&m)), path).unwrap();
        // Generation one: 10 at 0, 11 right after it, 12 after that.
        assert!(w.append(&sized(10, 500)).unwrap());
        let a11 = w.write(&sized(11, 500)).unwrap().unwrap();
        let at12 = w.pos;
        assert!(w.append(&sized(12, 500)).unwrap());
        // 11 torn: only 10 is read back.
        redb::StorageBackend::write(&m, a11.at + 4, &[0xff; 4]).unwrap();
        redb::StorageBackend::sync_data(&m).unwrap();
        let (mut w, back) = Wal::open(Some(&opener(&m)), path).unwrap();
        assert_eq!(back.iter().map(|r| r.lsn).collect::<Vec<_>>(), vec![10]);
        // Generation two (after the checkpoint) starts at 0 with lsn 11,
        // sized so that it ends exactly where the old 12 starts.
        w.reset();
        let mut r11 = sized(11, 0);
        let bare = crate::store::tables::encode(&r11).unwrap().len() as u64 + HEAD as u64;
        r11.hlc = vec![1; (at12 - bare) as usize + 1];
        let mut extra = crate::store::tables::encode(&r11).unwrap().len() as u64 + HEAD as u64;
        while extra > at12 {
            r11.hlc.pop();
            extra = crate::store::tables::encode(&r11).unwrap().len() as u64 + HEAD as u64;
        }
        assert_eq!(extra, at12, "the new 11 ends where the old 12 starts");
        assert!(w.append(&r11).unwrap());
        let (_, back) = Wal::open(Some(&opener(&m)), path).unwrap();
        assert_eq!(back, vec![r11], "the old 12 does not chain to the new 11");
    }

    /// A log written before records were chained (an older relay that
    /// stopped uncleanly) is still replayed.
    #[test]
    fn an_unchained_log_of_an_older_relay_is_read() {
        let m = MemFile::default();
        let path = Path::new("unused");
        let (_w, _) = Wal::open(Some(&opener(&m)), path).unwrap();
        let mut at = 0u64;
        for lsn in 1..=3 {
            let payload = crate::store::tables::encode(&rec(lsn)).unwrap();
            let mut b = vec![0u8; HEAD];
            let crc = checksum(0, lsn, &payload);
            put_head(&mut b, MAGIC_V1, payload.len() as u32, crc, lsn);
            b.extend_from_slice(&payload);
            redb::StorageBackend::write(&m, at, &b).unwrap();
            at += b.len() as u64;
        }
        redb::StorageBackend::sync_data(&m).unwrap();
        let (_, back) = Wal::open(Some(&opener(&m)), path).unwrap();
        assert_eq!(back, (1..=3).map(rec).collect::<Vec<_>>());
    }
}
