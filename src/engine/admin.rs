//! Operator calls: export, import, hot backup and the figures of the status
//! page that come from the store (data size, free disk, per-space counts).

use super::{Engine, EngineError};
use crate::store::{BackupSummary, SnapEntity, StoredEntity};
use std::sync::atomic::Ordering::Relaxed;

/// Per-space figures that cost a scan, for the status page.
#[derive(Clone, Debug, Default)]
pub struct SpaceFigures {
    pub entities: u64,
    /// Commit time (ms since the epoch) of the newest change still in the
    /// log (None: none left, or trimmed by retention).
    pub last_write_ms: Option<u64>,
}

impl Engine {
    /// See `Store::export`.
    pub fn export(
        &self,
        space: Option<&str>,
        header: impl FnOnce(u64) -> bool,
        visit: impl FnMut(&str, &str, &str, StoredEntity) -> bool,
    ) -> Result<(), EngineError> {
        Ok(self.store.export(space, header, visit)?)
    }

    /// Merge exported entities (state and version); answers the spaces that
    /// changed. Other links re-plan, as after a peer's snapshot, so peers
    /// and the upstream learn the imported states.
    pub async fn import(
        &self,
        entities: Vec<(SnapEntity, u64)>,
    ) -> Result<Vec<String>, EngineError> {
        let spaces = self
            .store
            .submit(|reply| crate::store::Job::Import { entities, reply })
            .await?;
        if !spaces.is_empty() {
            self.merges.send_modify(|m| *m = (m.0 + 1, 0));
        }
        Ok(spaces)
    }

    /// See `Store::backup` (blocking: run it on a blocking thread).
    pub fn backup(&self, out: impl FnMut(Vec<u8>) -> bool) -> Result<BackupSummary, EngineError> {
        Ok(self.store.backup(super::now_ms(), out)?)
    }

    /// Size of the store file and free bytes on its disk.
    pub fn disk(&self) -> (u64, Option<u64>) {
        let size = std::fs::metadata(self.store.path())
            .map(|m| m.len())
            .unwrap_or(0);
        let free = self
            .store
            .path()
            .parent()
            .and_then(crate::store::free_disk_bytes);
        (size, free)
    }

    /// Entity count and last write of one space (a key scan: callers cache it).
    pub fn space_figures(&self, space: &str) -> Result<SpaceFigures, EngineError> {
        Ok(SpaceFigures {
            entities: self.store.count_entities(space)?,
            last_write_ms: self.store.last_write_ms(space)?,
        })
    }

    /// Commit time of the newest change of `space` still in the log (a
    /// point lookup).
    pub fn last_write_ms(&self, space: &str) -> Result<Option<u64>, EngineError> {
        Ok(self.store.last_write_ms(space)?)
    }

    /// Changes written by local clients so far (for rates).
    pub fn counters(&self) -> (u64, u64) {
        (
            self.metrics.changes_written.load(Relaxed),
            self.metrics.deliveries.load(Relaxed),
        )
    }
}
