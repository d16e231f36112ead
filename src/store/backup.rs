//! Hot backup, restore and the store's own consistency check.
//!
//! redb lets one process open the file, so a backup of a running relay is
//! made inside it: one read transaction (an MVCC snapshot, writers go on)
//! walks every table and emits its rows as a stream of frames, which the
//! admin API sends to `outpost backup`. `outpost restore` (relay stopped)
//! turns the stream back into an `outpost.redb`, checks it, and only then
//! moves it into place.
//!
//! Stream format (version 1): frames of `[u32 big-endian length][MessagePack
//! BackupFrame]`: one `Header`, then `Rows` batches, then `End` with the
//! row count and a SHA-256 over every byte before the `End` frame, so a
//! truncated or altered file is refused.

use super::tables::*;
use super::{LogEntry, StoreError, StoredEntity};
use redb::{Database, ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};

pub const BACKUP_FORMAT: u32 = 1;
/// Rows per `Rows` frame: bounds the memory of both ends.
const ROWS_PER_FRAME: usize = 1024;
/// Largest frame a restore accepts (a frame of 1024 rows of at most a few
/// MiB each would be far below this; anything bigger is corruption).
const MAX_FRAME: usize = 256 << 20;

/// One row of one table, as stored (values stay in their stored encoding).
#[derive(Debug, Serialize, Deserialize)]
pub enum Row {
    Meta(String, Vec<u8>),
    Log(u64, Vec<u8>),
    Ident(u64, u64, u64),
    Vv(u64, u64),
    Entity(String, String, String, Vec<u8>),
    SpaceLog(String, u64),
    Spaces(String, u64),
    Cursor(String, u64),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum BackupFrame {
    Header {
        format: u32,
        schema: u32,
        node: u64,
        last_seq: u64,
        created_ms: u64,
    },
    Rows(Vec<Row>),
    End {
        rows: u64,
        sha256: Vec<u8>,
    },
}

/// What a backup or restore covered.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BackupSummary {
    pub node: String,
    pub last_seq: u64,
    pub rows: u64,
}

/// Emits frames to `out` (false from `out`: the receiver went away).
struct Emitter<F: FnMut(Vec<u8>) -> bool> {
    out: F,
    digest: ring::digest::Context,
    batch: Vec<Row>,
    rows: u64,
}

impl<F: FnMut(Vec<u8>) -> bool> Emitter<F> {
    fn frame(&mut self, f: &BackupFrame) -> Result<(), StoreError> {
        let body = encode(f)?;
        let mut bytes = Vec::with_capacity(body.len() + 4);
        bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&body);
        self.digest.update(&bytes);
        if !(self.out)(bytes) {
            return Err(StoreError::Closed);
        }
        Ok(())
    }

    fn row(&mut self, r: Row) -> Result<(), StoreError> {
        self.batch.push(r);
        self.rows += 1;
        if self.batch.len() >= ROWS_PER_FRAME {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        if !self.batch.is_empty() {
            let rows = std::mem::take(&mut self.batch);
            self.frame(&BackupFrame::Rows(rows))?;
        }
        Ok(())
    }
}

/// Write every table of `db`, as of one read transaction, to `out`.
pub(super) fn dump(
    tx: redb::ReadTransaction,
    now_ms: u64,
    out: impl FnMut(Vec<u8>) -> bool,
) -> Result<BackupSummary, StoreError> {
    let meta = tx.open_table(META)?;
    let get = |k: &str| -> Result<u64, StoreError> {
        Ok(meta
            .get(k)?
            .map(|v| super::u64_from(v.value()))
            .unwrap_or(0))
    };
    let (node, last_seq) = (get(META_NODE)?, get(META_LAST_SEQ)?);
    let mut e = Emitter {
        out,
        digest: ring::digest::Context::new(&ring::digest::SHA256),
        batch: Vec::new(),
        rows: 0,
    };
    e.frame(&BackupFrame::Header {
        format: BACKUP_FORMAT,
        schema: SCHEMA_VERSION,
        node,
        last_seq,
        created_ms: now_ms,
    })?;
    for row in meta.iter()? {
        let (k, v) = row?;
        e.row(Row::Meta(k.value().to_string(), v.value().to_vec()))?;
    }
    for row in tx.open_table(LOG)?.iter()? {
        let (k, v) = row?;
        e.row(Row::Log(k.value(), v.value().to_vec()))?;
    }
    for row in tx.open_table(IDENT)?.iter()? {
        let (k, v) = row?;
        let (o, s) = k.value();
        e.row(Row::Ident(o, s, v.value()))?;
    }
    for row in tx.open_table(VV)?.iter()? {
        let (k, v) = row?;
        e.row(Row::Vv(k.value(), v.value()))?;
    }
    for row in tx.open_table(ENTITY)?.iter()? {
        let (k, v) = row?;
        let (s, c, i) = k.value();
        e.row(Row::Entity(
            s.to_string(),
            c.to_string(),
            i.to_string(),
            v.value().to_vec(),
        ))?;
    }
    for row in tx.open_table(SPACE_LOG)?.iter()? {
        let (k, _) = row?;
        let (s, q) = k.value();
        e.row(Row::SpaceLog(s.to_string(), q))?;
    }
    for row in tx.open_table(SPACES)?.iter()? {
        let (k, v) = row?;
        e.row(Row::Spaces(k.value().to_string(), v.value()))?;
    }
    for row in tx.open_table(CURSORS)?.iter()? {
        let (k, v) = row?;
        e.row(Row::Cursor(k.value().to_string(), v.value()))?;
    }
    e.flush()?;
    let rows = e.rows;
    let sha256 = e.digest.clone().finish().as_ref().to_vec();
    e.frame(&BackupFrame::End { rows, sha256 })?;
    Ok(BackupSummary {
        node: crate::model::NodeId(node).to_string(),
        last_seq,
        rows,
    })
}

/// Errors of restore and check, with what to do about them.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reading the backup: {0}")]
    Io(#[from] std::io::Error),
    #[error("not an outpost backup, or a damaged one: {0}")]
    Format(String),
    #[error("a relay is running on {0}: stop it first (restore replaces the whole store)")]
    InUse(PathBuf),
    #[error("{0} exists: pass --force to replace it (the old file is kept as outpost.redb.before-restore)")]
    Exists(PathBuf),
    #[error("the store fails its checks: {0}")]
    Check(String),
}

fn read_frame(r: &mut impl Read) -> Result<Option<(Vec<u8>, BackupFrame)>, RestoreError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(RestoreError::Format(format!("a frame of {n} bytes")));
    }
    let mut body = vec![0u8; n];
    r.read_exact(&mut body)
        .map_err(|_| RestoreError::Format("truncated frame".into()))?;
    let frame = decode(&body).map_err(|e| RestoreError::Format(e.to_string()))?;
    let mut raw = len.to_vec();
    raw.extend_from_slice(&body);
    Ok(Some((raw, frame)))
}

/// Restore a backup stream into `dir/outpost.redb`: written to a temporary
/// file, checked, fsynced, then renamed into place.
pub fn restore(
    input: &mut impl Read,
    dir: &Path,
    force: bool,
) -> Result<(BackupSummary, CheckReport), RestoreError> {
    std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
        path: dir.to_path_buf(),
        source,
    })?;
    let target = dir.join("outpost.redb");
    if target.exists() {
        // A running relay holds the file's lock: never write under it.
        match Database::open(&target) {
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(RestoreError::InUse(dir.to_path_buf()))
            }
            _ if !force => return Err(RestoreError::Exists(target)),
            _ => {}
        }
    }
    let tmp = dir.join("outpost.redb.restore-tmp");
    let _ = std::fs::remove_file(&tmp);
    let summary = match write_db(input, &tmp) {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let report = match check(&tmp) {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::File::open(&tmp)?.sync_all()?;
    if target.exists() {
        std::fs::rename(&target, dir.join("outpost.redb.before-restore"))?;
    }
    // The old file's write-ahead log goes with it: replayed onto the
    // restored file it would apply groups that file never had.
    let wal = dir.join(super::WAL_FILE);
    if wal.exists() {
        std::fs::rename(&wal, dir.join("outpost.wal.before-restore"))?;
    }
    std::fs::rename(&tmp, &target)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok((summary, report))
}

fn write_db(input: &mut impl Read, path: &Path) -> Result<BackupSummary, RestoreError> {
    let db = Database::create(path).map_err(StoreError::from)?;
    read_stream(input, Some(&db))
}

/// Read a whole backup stream and check its framing, header and checksum
/// without writing anything (`outpost backup` checks what it received).
pub fn verify_backup(input: &mut impl Read) -> Result<BackupSummary, RestoreError> {
    read_stream(input, None)
}

fn read_stream(
    input: &mut impl Read,
    db: Option<&Database>,
) -> Result<BackupSummary, RestoreError> {
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut summary = None;
    let mut rows = 0u64;
    loop {
        let Some((raw, frame)) = read_frame(input)? else {
            return Err(RestoreError::Format(
                "the backup ends before its end marker (truncated)".into(),
            ));
        };
        match frame {
            BackupFrame::Header {
                format,
                schema,
                node,
                last_seq,
                ..
            } => {
                if summary.is_some() {
                    return Err(RestoreError::Format("a second header".into()));
                }
                if format != BACKUP_FORMAT {
                    return Err(RestoreError::Format(format!(
                        "backup format {format}; this build reads {BACKUP_FORMAT}"
                    )));
                }
                if schema > SCHEMA_VERSION {
                    return Err(StoreError::SchemaTooNew {
                        found: schema,
                        supported: SCHEMA_VERSION,
                    }
                    .into());
                }
                summary = Some(BackupSummary {
                    node: crate::model::NodeId(node).to_string(),
                    last_seq,
                    rows: 0,
                });
            }
            BackupFrame::Rows(batch) => {
                if summary.is_none() {
                    return Err(RestoreError::Format("rows before the header".into()));
                }
                rows += batch.len() as u64;
                if let Some(db) = db {
                    insert_rows(db, batch)?;
                }
            }
            BackupFrame::End { rows: n, sha256 } => {
                let want = digest.clone().finish();
                if sha256 != want.as_ref() {
                    return Err(RestoreError::Format("checksum mismatch".into()));
                }
                if n != rows {
                    return Err(RestoreError::Format(format!("{rows} rows, end says {n}")));
                }
                let mut s = summary.ok_or_else(|| RestoreError::Format("no header".into()))?;
                s.rows = rows;
                return Ok(s);
            }
        }
        digest.update(&raw);
    }
}

fn insert_rows(db: &Database, batch: Vec<Row>) -> Result<(), StoreError> {
    let tx = db.begin_write()?;
    {
        let mut meta = tx.open_table(META)?;
        let mut log = tx.open_table(LOG)?;
        let mut ident = tx.open_table(IDENT)?;
        let mut vv = tx.open_table(VV)?;
        let mut entity = tx.open_table(ENTITY)?;
        let mut space_log = tx.open_table(SPACE_LOG)?;
        let mut spaces = tx.open_table(SPACES)?;
        let mut cursors = tx.open_table(CURSORS)?;
        for r in batch {
            match r {
                Row::Meta(k, v) => drop(meta.insert(k.as_str(), v.as_slice())?),
                Row::Log(k, v) => drop(log.insert(k, v.as_slice())?),
                Row::Ident(o, s, q) => drop(ident.insert((o, s), q)?),
                Row::Vv(o, s) => drop(vv.insert(o, s)?),
                Row::Entity(s, c, i, v) => {
                    drop(entity.insert((s.as_str(), c.as_str(), i.as_str()), v.as_slice())?)
                }
                Row::SpaceLog(s, q) => drop(space_log.insert((s.as_str(), q), ())?),
                Row::Spaces(s, n) => drop(spaces.insert(s.as_str(), n)?),
                Row::Cursor(k, q) => drop(cursors.insert(k.as_str(), q)?),
            }
        }
    }
    tx.commit()?;
    Ok(())
}

/// What `check` found: table sizes of a store that passed.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CheckReport {
    pub node: String,
    pub last_seq: u64,
    pub log: u64,
    pub entities: u64,
    pub spaces: u64,
    pub cursors: u64,
}

/// The store's own checks on a closed `outpost.redb`: redb's integrity
/// check (checksums, page tree), then outpost's invariants: every log
/// entry decodes, is within `last_seq` and is indexed by its identity and
/// its space; every index row points at the entry it names; every entity
/// decodes; the version vector never claims more than the log recorded.
pub fn check(path: &Path) -> Result<CheckReport, RestoreError> {
    let mut db = Database::open(path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => {
            RestoreError::InUse(path.parent().unwrap_or(path).to_path_buf())
        }
        e => StoreError::from(e).into(),
    })?;
    let fail = |m: String| RestoreError::Check(m);
    if !db.check_integrity().map_err(StoreError::from)? {
        return Err(fail("redb integrity check failed".into()));
    }
    let tx = db.begin_read().map_err(StoreError::from)?;
    let meta = tx.open_table(META).map_err(StoreError::from)?;
    let getm = |k: &str| -> Result<Option<Vec<u8>>, StoreError> {
        Ok(meta.get(k)?.map(|v| v.value().to_vec()))
    };
    let schema = getm(META_SCHEMA)?
        .map(|v| super::u32_from(&v))
        .ok_or_else(|| fail("no schema version".into()))?;
    if schema > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found: schema,
            supported: SCHEMA_VERSION,
        }
        .into());
    }
    let node = getm(META_NODE)?
        .map(|v| super::u64_from(&v))
        .ok_or_else(|| fail("no node id".into()))?;
    let last_seq = getm(META_LAST_SEQ)?
        .map(|v| super::u64_from(&v))
        .unwrap_or(0);
    let open = |e: redb::TableError| RestoreError::Store(e.into());
    let log = tx.open_table(LOG).map_err(open)?;
    let ident = tx.open_table(IDENT).map_err(open)?;
    let space_log = tx.open_table(SPACE_LOG).map_err(open)?;
    let mut report = CheckReport {
        node: crate::model::NodeId(node).to_string(),
        last_seq,
        ..Default::default()
    };
    let mut highest: std::collections::HashMap<u64, u64> = Default::default();
    for row in log.iter().map_err(StoreError::from)? {
        let (k, v) = row.map_err(StoreError::from)?;
        let seq = k.value();
        let entry: LogEntry = decode(v.value())?;
        if seq > last_seq {
            return Err(fail(format!("log seq {seq} is past last_seq {last_seq}")));
        }
        let c = &entry.change;
        let indexed = ident
            .get((c.origin.0, c.seq))
            .map_err(StoreError::from)?
            .map(|v| v.value());
        if indexed != Some(seq) {
            return Err(fail(format!(
                "log seq {seq}: identity ({}, {}) indexed as {indexed:?}",
                c.origin, c.seq
            )));
        }
        if space_log
            .get((c.space.as_str(), seq))
            .map_err(StoreError::from)?
            .is_none()
        {
            return Err(fail(format!("log seq {seq}: missing from its space index")));
        }
        let h = highest.entry(c.origin.0).or_default();
        *h = (*h).max(c.seq);
        report.log += 1;
    }
    for row in ident.iter().map_err(StoreError::from)? {
        let (k, v) = row.map_err(StoreError::from)?;
        if log.get(v.value()).map_err(StoreError::from)?.is_none() {
            let (o, s) = k.value();
            return Err(fail(format!(
                "identity ({o:x}, {s}) points at missing log seq {}",
                v.value()
            )));
        }
    }
    for row in space_log.iter().map_err(StoreError::from)? {
        let (k, _) = row.map_err(StoreError::from)?;
        let (space, seq) = k.value();
        let entry: LogEntry = match log.get(seq).map_err(StoreError::from)? {
            Some(v) => decode(v.value())?,
            None => return Err(fail(format!("space index {space}/{seq}: no log entry"))),
        };
        if entry.change.space != space {
            return Err(fail(format!(
                "space index {space}/{seq}: entry is of another space"
            )));
        }
    }
    let vv = tx.open_table(VV).map_err(open)?;
    for row in vv.iter().map_err(StoreError::from)? {
        let (k, v) = row.map_err(StoreError::from)?;
        // Retention may have trimmed the log, so the vector may be ahead
        // of it; but the log never holds more than the vector admits.
        if let Some(h) = highest.get(&k.value()) {
            if *h > v.value() {
                return Err(fail(format!(
                    "version vector says {:x} up to {}, log holds {h}",
                    k.value(),
                    v.value()
                )));
            }
        }
    }
    for row in tx
        .open_table(ENTITY)
        .map_err(open)?
        .iter()
        .map_err(StoreError::from)?
    {
        let (_, v) = row.map_err(StoreError::from)?;
        let e: StoredEntity = decode(v.value())?;
        if e.seq > last_seq {
            return Err(fail(format!("an entity at seq {} past last_seq", e.seq)));
        }
        report.entities += 1;
    }
    report.spaces = tx
        .open_table(SPACES)
        .map_err(open)?
        .iter()
        .map_err(StoreError::from)?
        .count() as u64;
    report.cursors = tx
        .open_table(CURSORS)
        .map_err(open)?
        .iter()
        .map_err(StoreError::from)?
        .count() as u64;
    Ok(report)
}
