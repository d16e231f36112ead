//! The open database, replaceable in place after a storage I/O error.
//!
//! Once a write to the file fails (ENOSPC, EIO), redb refuses every later
//! operation with "Previous I/O error occurred. Please close and re-open
//! the database". The committed data is intact (a failed commit is not
//! applied), so the writer records the fault, refuses writes with the real
//! cause, and reopens the file here once that can succeed (for a full disk:
//! once space is freed). Until then the store reports itself unhealthy
//! (`/healthz`, the systemd watchdog). Readers take a clone of the current
//! handle per read; a reopen waits for them to let go, then closes the old
//! handle and opens the file again (redb repairs it if needed).

use super::StoreError;
use redb::Database;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Why the store cannot take writes right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The file system holding the data is full (ENOSPC).
    NoSpace,
    /// Another I/O error; the text names it.
    Io(String),
}

impl Fault {
    pub fn error(&self) -> StoreError {
        match self {
            Fault::NoSpace => StoreError::NoSpace,
            Fault::Io(cause) => StoreError::Faulted {
                cause: cause.clone(),
            },
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::NoSpace => f.write_str("no space left on device"),
            Fault::Io(cause) => f.write_str(cause),
        }
    }
}

/// The I/O fault behind a storage error, if it is one (errors about
/// values, preconditions or shutdown are not).
pub fn fault_of(e: &StoreError) -> Option<Fault> {
    let StoreError::Db(db) = e else {
        return match e {
            StoreError::NoSpace => Some(Fault::NoSpace),
            StoreError::Faulted { cause } => Some(Fault::Io(cause.clone())),
            _ => None,
        };
    };
    match db {
        redb::Error::Io(io) => Some(if io.raw_os_error() == Some(libc::ENOSPC) {
            Fault::NoSpace
        } else {
            Fault::Io(io.to_string())
        }),
        redb::Error::PreviousIo => Some(Fault::Io(
            "an earlier write to the data file failed".to_string(),
        )),
        _ => None,
    }
}

pub struct Slot {
    db: RwLock<Option<Arc<Database>>>,
    fault: Mutex<Option<Fault>>,
    path: PathBuf,
    cache_bytes: usize,
    /// Where the bytes live when not in the file at `path` (see `Backend`).
    backend: Option<Backend>,
}

/// Opens the storage a redb database lives in, each time the store opens
/// it (at start, and again after an I/O error): for storage other than the
/// data file, such as the simulator's disk that loses what was not synced
/// when its relay crashes (tests/sim.rs). Production opens the file.
#[derive(Clone)]
pub struct Backend(
    pub Arc<dyn Fn() -> std::io::Result<Box<dyn redb::StorageBackend>> + Send + Sync>,
);

/// How long a reopen waits for in-flight reads to let go of the old handle.
const READERS_WAIT: Duration = Duration::from_secs(2);

impl Slot {
    pub fn open(
        path: &Path,
        cache_bytes: usize,
        backend: Option<Backend>,
    ) -> Result<(Arc<Slot>, Arc<Database>), StoreError> {
        let db = Arc::new(open_db(path, cache_bytes, backend.as_ref())?);
        let slot = Arc::new(Slot {
            db: RwLock::new(Some(db.clone())),
            fault: Mutex::new(None),
            path: path.to_path_buf(),
            cache_bytes,
            backend,
        });
        Ok((slot, db))
    }

    /// The current handle, or the fault's error while the file is closed.
    pub fn get(&self) -> Result<Arc<Database>, StoreError> {
        let db = self.db.read().unwrap_or_else(|p| p.into_inner()).clone();
        match db {
            Some(db) => Ok(db),
            None => Err(self
                .fault()
                .map(|f| f.error())
                .unwrap_or(StoreError::Closed)),
        }
    }

    pub fn fault(&self) -> Option<Fault> {
        self.fault.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Record a fault (the first cause wins until the store recovers:
    /// redb's later "previous I/O error" says less than the original).
    pub fn set_fault(&self, f: Fault) {
        let mut cur = self.fault.lock().unwrap_or_else(|p| p.into_inner());
        if cur.is_none() {
            *cur = Some(f);
        }
    }

    /// Close the faulted handle and open the file again. Returns the new
    /// handle, or the error that kept it from opening (the file stays
    /// closed then, and reads fail with the fault until a later attempt).
    pub fn reopen(&self) -> Result<Arc<Database>, StoreError> {
        let mut guard = self.db.write().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = guard.take() {
            let deadline = Instant::now() + READERS_WAIT;
            let mut old = old;
            let db = loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => break db,
                    Err(still) if Instant::now() < deadline => {
                        old = still;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(still) => {
                        // A read is stuck: keep the old handle, try later.
                        *guard = Some(still);
                        return Err(StoreError::Faulted {
                            cause: "reads still hold the faulted data file".into(),
                        });
                    }
                }
            };
            if let Err(e) = db.close() {
                tracing::warn!(error = %e, "closing the faulted data file");
            }
        }
        let db = Arc::new(open_db(
            &self.path,
            self.cache_bytes,
            self.backend.as_ref(),
        )?);
        *guard = Some(db.clone());
        Ok(db)
    }

    /// The store recovered: writes are taken again.
    pub fn clear_fault(&self) {
        *self.fault.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

fn open_db(
    path: &Path,
    cache_bytes: usize,
    backend: Option<&Backend>,
) -> Result<Database, StoreError> {
    let mut builder = Database::builder();
    builder.set_cache_size(cache_bytes);
    Ok(match backend {
        None => builder.create(path)?,
        Some(b) => {
            let storage = (b.0)().map_err(|e| StoreError::Db(redb::Error::Io(e)))?;
            builder.create_with_backend(Boxed(storage))?
        }
    })
}

/// A boxed backend as redb takes one (its builder wants a sized type).
#[derive(Debug)]
struct Boxed(Box<dyn redb::StorageBackend>);

impl redb::StorageBackend for Boxed {
    fn len(&self) -> std::io::Result<u64> {
        self.0.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.0.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.0.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.0.write(offset, data)
    }
    fn close(&self) -> std::io::Result<()> {
        self.0.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_name_their_cause() {
        let full = StoreError::Db(redb::Error::Io(std::io::Error::from_raw_os_error(
            libc::ENOSPC,
        )));
        assert_eq!(fault_of(&full), Some(Fault::NoSpace));
        assert_eq!(
            fault_of(&full).unwrap().error().to_string(),
            StoreError::NoSpace.to_string()
        );
        assert!(StoreError::NoSpace
            .to_string()
            .contains("no space left on device"));
        let eio = StoreError::Db(redb::Error::Io(std::io::Error::from_raw_os_error(
            libc::EIO,
        )));
        assert!(matches!(fault_of(&eio), Some(Fault::Io(m)) if m.contains("Input/output")));
        assert!(fault_of(&StoreError::Db(redb::Error::PreviousIo)).is_some());
        assert_eq!(fault_of(&StoreError::Closed), None);
        assert_eq!(fault_of(&StoreError::Encode("x".into())), None);
    }

    #[test]
    fn reopen_swaps_the_handle_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let (slot, db) = Slot::open(&path, 1 << 20, None).unwrap();
        drop(db);
        slot.set_fault(Fault::NoSpace);
        slot.set_fault(Fault::Io("later".into()));
        assert_eq!(slot.fault(), Some(Fault::NoSpace), "the first cause wins");
        let db = slot.reopen().expect("reopens");
        assert!(Arc::ptr_eq(&db, &slot.get().unwrap()));
        slot.clear_fault();
        assert_eq!(slot.fault(), None);
    }
}
