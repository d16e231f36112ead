//! The simulator's disk: redb storage backends in memory (one per file: the
//! data file and the write-ahead log) that keep only what was synced when
//! their relay crashes.
//!
//! Reads see every write (the page cache). `sync_data` makes everything
//! written to that file so far durable. A crash strikes all files at once. A crash ends the process at once: the handles it
//! held fail from then on (EIO, so it can acknowledge nothing more), and of
//! the writes since the last sync each 4 KiB sector reached the platter or
//! not, as the seed decides: all lost, or any subset (a torn commit). The
//! relay then reopens from what survived, and redb recovers its last
//! durable commit.

use redb::StorageBackend;
use std::io;
use std::sync::{Arc, Mutex};

const SECTOR: u64 = 4096;

#[derive(Debug, Default)]
pub struct Disk {
    state: Mutex<State>,
}

/// The files of the disk.
pub const DATA: usize = 0;
pub const WAL: usize = 1;

#[derive(Debug, Default)]
struct File {
    /// The image as of the last sync: what any crash keeps.
    durable: Vec<u8>,
    /// What reads see: `durable` plus the writes since.
    current: Vec<u8>,
    /// Writes and length changes since the last sync, in order.
    pending: Vec<Pending>,
}

#[derive(Debug, Default)]
struct State {
    files: [File; 2],
    /// Bumped by each crash: handles of an older epoch belong to the
    /// crashed process and fail.
    epoch: u64,
    /// A crash waiting for the next sync (the power fails during a
    /// commit): the seed of its sector draws, and whether sectors may
    /// survive at all.
    armed: Option<(u64, bool)>,
    /// What the last crash did.
    last: Option<Crash>,
}

#[derive(Debug)]
enum Pending {
    Write(u64, Vec<u8>),
    Len(u64),
}

fn apply(img: &mut Vec<u8>, p: &Pending) {
    match p {
        Pending::Write(off, data) => {
            let (off, end) = (*off as usize, *off as usize + data.len());
            if img.len() < end {
                img.resize(end, 0);
            }
            img[off..end].copy_from_slice(data);
        }
        Pending::Len(n) => img.resize(*n as usize, 0),
    }
}

/// What a crash did to the writes that were not synced.
#[derive(Clone, Debug, Default)]
pub struct Crash {
    pub sectors_lost: usize,
    pub sectors_kept: usize,
}

impl Disk {
    /// Handles for the process that opens the disk now: every call gives
    /// one of this epoch (dead once the disk crashed), so the process can
    /// reopen its store after an I/O error but not after its crash.
    pub fn opener(self: &Arc<Self>, file: usize) -> impl Fn() -> Handle + Send + Sync + 'static {
        let epoch = self.lock().epoch;
        let disk = self.clone();
        move || Handle {
            disk: disk.clone(),
            epoch,
            file,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The process using the disk dies now. Of the sectors written since
    /// the last sync, with `torn` each survives or not as `seed` draws;
    /// without, none does.
    pub fn crash(&self, seed: u64, torn: bool) -> Crash {
        crash(&mut self.lock(), seed, torn)
    }

    /// The process dies at its next sync (inside a commit), before the sync
    /// takes effect. Returns at once; see `crashed`.
    pub fn crash_at_next_sync(&self, seed: u64, torn: bool) {
        self.lock().armed = Some((seed, torn));
    }

    /// The armed crash, once it struck (disarmed then).
    pub fn crashed(&self) -> Option<Crash> {
        let mut st = self.lock();
        if st.armed.is_some() {
            return None;
        }
        st.last.take()
    }

    /// Crash now if the armed crash has not struck yet.
    pub fn crash_if_armed(&self) -> Option<Crash> {
        let mut st = self.lock();
        let (seed, torn) = st.armed.take()?;
        Some(crash(&mut st, seed, torn))
    }
}

fn crash(st: &mut State, seed: u64, torn: bool) -> Crash {
    let mut rng = super::Rng(seed);
    st.epoch += 1;
    st.armed = None;
    let mut out = Crash::default();
    for f in st.files.iter_mut() {
        let pending = std::mem::take(&mut f.pending);
        let mut durable = std::mem::take(&mut f.durable);
        for p in &pending {
            match p {
                Pending::Len(_) => {
                    if torn && rng.chance(50) {
                        apply(&mut durable, p);
                    }
                }
                Pending::Write(off, data) => {
                    // Split at sector boundaries; each sector survives or not.
                    let mut at = *off;
                    let end = off + data.len() as u64;
                    while at < end {
                        let next = ((at / SECTOR) + 1) * SECTOR;
                        let upto = next.min(end);
                        if torn && rng.chance(50) {
                            let slice = &data[(at - off) as usize..(upto - off) as usize];
                            apply(&mut durable, &Pending::Write(at, slice.to_vec()));
                            out.sectors_kept += 1;
                        } else {
                            out.sectors_lost += 1;
                        }
                        at = upto;
                    }
                }
            }
        }
        f.current = durable.clone();
        f.durable = durable;
    }
    st.last = Some(out.clone());
    out
}

/// One process's handle on the disk (see [`Disk::handle`]).
#[derive(Debug)]
pub struct Handle {
    disk: Arc<Disk>,
    epoch: u64,
    file: usize,
}

fn dead() -> io::Error {
    io::Error::other("the process that held this disk crashed")
}

impl Handle {
    fn live(&self) -> io::Result<std::sync::MutexGuard<'_, State>> {
        let st = self.disk.lock();
        if st.epoch != self.epoch {
            return Err(dead());
        }
        Ok(st)
    }
}

impl StorageBackend for Handle {
    fn len(&self) -> io::Result<u64> {
        Ok(self.live()?.files[self.file].current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let st = self.live()?;
        let f = &st.files[self.file];
        let end = offset as usize + out.len();
        if end > f.current.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end",
            ));
        }
        out.copy_from_slice(&f.current[offset as usize..end]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut st = self.live()?;
        let f = &mut st.files[self.file];
        let p = Pending::Len(len);
        apply(&mut f.current, &p);
        f.pending.push(p);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut st = self.live()?;
        if let Some((seed, torn)) = st.armed {
            crash(&mut st, seed, torn);
            return Err(dead());
        }
        let f = &mut st.files[self.file];
        let pending = std::mem::take(&mut f.pending);
        for p in &pending {
            apply(&mut f.durable, p);
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut st = self.live()?;
        let f = &mut st.files[self.file];
        let p = Pending::Write(offset, data.to_vec());
        apply(&mut f.current, &p);
        f.pending.push(p);
        Ok(())
    }
}
