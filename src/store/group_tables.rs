//! The tables of one writer transaction (a commit group), opened once per
//! group, with the small counters every change reads and raises kept in
//! memory until the group ends.
//!
//! Each applied change used to read and rewrite its origin's version
//! vector entry, its space's change count and its collection's per-type
//! version: six B-tree operations per change on three tiny tables (a
//! fifth of the writer's redb work in a profile at S=50), although a
//! group nearly always touches one origin, one space and one collection.
//! Here each counter is read at most once per group and written once, by
//! [`Tables::finish`], before the group's commit. The cache lives and dies
//! with the transaction: an attempt that fails drops both, so nothing of
//! it survives into the next attempt.

use super::tables::*;
use super::StoreError;
use redb::ReadableTable;
use std::collections::HashMap;

/// A cached counter and whether the group changed it.
#[derive(Clone, Copy)]
struct Counter<T> {
    value: T,
    dirty: bool,
}

impl<T> Counter<T> {
    fn read(value: T) -> Self {
        Counter {
            value,
            dirty: false,
        }
    }

    fn set(&mut self, value: T) {
        self.value = value;
        self.dirty = true;
    }
}

pub(super) struct Tables<'t> {
    pub meta: redb::Table<'t, &'static str, &'static [u8]>,
    pub log: redb::Table<'t, u64, &'static [u8]>,
    pub ident: redb::Table<'t, (u64, u64), u64>,
    /// Read and written through [`Tables::held`] and [`Tables::raise_vv`].
    vv: redb::Table<'t, u64, u64>,
    pub entity: redb::Table<'t, (&'static str, &'static str, &'static str), &'static [u8]>,
    pub space_log: redb::Table<'t, (&'static str, u64), ()>,
    /// Read and written through [`Tables::count_change`] and
    /// [`Tables::ensure_space`].
    spaces: redb::Table<'t, &'static str, u64>,
    pub cursors: redb::Table<'t, &'static str, u64>,
    pub write_ids: redb::Table<'t, (&'static str, &'static str), u64>,
    pub write_id_seqs: redb::Table<'t, u64, (&'static str, &'static str)>,
    /// Read and written through [`Tables::next_type_version`].
    type_versions: redb::Table<'t, (&'static str, &'static str), u64>,
    type_index: redb::Table<'t, (&'static str, &'static str, u64), &'static str>,
    /// origin -> highest contiguous origin seq (absent in the table: 0).
    vv_cache: HashMap<u64, Counter<u64>>,
    /// space -> its change count (None: the space has no row).
    space_cache: HashMap<String, Counter<Option<u64>>>,
    /// space -> collection -> its latest per-type version (absent: 0).
    type_cache: HashMap<String, HashMap<String, Counter<u64>>>,
}

impl<'t> Tables<'t> {
    pub fn open(tx: &'t redb::WriteTransaction) -> Result<Self, StoreError> {
        Ok(Tables {
            meta: tx.open_table(META)?,
            log: tx.open_table(LOG)?,
            ident: tx.open_table(IDENT)?,
            vv: tx.open_table(VV)?,
            entity: tx.open_table(ENTITY)?,
            space_log: tx.open_table(SPACE_LOG)?,
            spaces: tx.open_table(SPACES)?,
            cursors: tx.open_table(CURSORS)?,
            write_ids: tx.open_table(WRITE_IDS)?,
            write_id_seqs: tx.open_table(WRITE_ID_SEQS)?,
            type_versions: tx.open_table(TYPE_VERSIONS)?,
            type_index: tx.open_table(TYPE_INDEX)?,
            vv_cache: HashMap::new(),
            space_cache: HashMap::new(),
            type_cache: HashMap::new(),
        })
    }

    /// The highest contiguous origin seq held of `origin` (0: none).
    pub fn held(&mut self, origin: u64) -> Result<u64, StoreError> {
        if let Some(c) = self.vv_cache.get(&origin) {
            return Ok(c.value);
        }
        let v = self.vv.get(origin)?.map(|v| v.value()).unwrap_or(0);
        self.vv_cache.insert(origin, Counter::read(v));
        Ok(v)
    }

    /// Set `origin`'s version vector entry to `to` (the callers only ever
    /// raise it).
    pub fn raise_vv(&mut self, origin: u64, to: u64) -> Result<(), StoreError> {
        self.held(origin)?;
        if let Some(c) = self.vv_cache.get_mut(&origin) {
            c.set(to);
        }
        Ok(())
    }

    fn space(&mut self, space: &str) -> Result<&mut Counter<Option<u64>>, StoreError> {
        if !self.space_cache.contains_key(space) {
            let v = self.spaces.get(space)?.map(|v| v.value());
            self.space_cache.insert(space.to_string(), Counter::read(v));
        }
        self.space_cache
            .get_mut(space)
            .ok_or_else(|| StoreError::Encode("internal: space counter vanished".into()))
    }

    /// One more change applied in `space`.
    pub fn count_change(&mut self, space: &str) -> Result<(), StoreError> {
        let c = self.space(space)?;
        let n = c.value.unwrap_or(0) + 1;
        c.set(Some(n));
        Ok(())
    }

    /// Give `space` a row (count 0) if it has none: its states changed
    /// without a log entry (a merged snapshot).
    pub fn ensure_space(&mut self, space: &str) -> Result<(), StoreError> {
        let c = self.space(space)?;
        if c.value.is_none() {
            c.set(Some(0));
        }
        Ok(())
    }

    /// Give entity `key` (space, collection, id), whose last per-type
    /// version was `old` (0: none), the collection's next per-type version,
    /// and move its index entry there. Runs inside the writer transaction,
    /// so versions are assigned in commit order, whichever path (local
    /// write, peer or upstream change, snapshot merge) changed the entity.
    pub fn next_type_version(
        &mut self,
        key: (&str, &str, &str),
        old: u64,
    ) -> Result<u64, StoreError> {
        let (space, coll, id) = key;
        let cached = self
            .type_cache
            .get_mut(space)
            .and_then(|m| m.get_mut(coll))
            .map(|c| c.value);
        let tv = match cached {
            Some(v) => v,
            None => {
                let v = self
                    .type_versions
                    .get((space, coll))?
                    .map(|v| v.value())
                    .unwrap_or(0);
                self.type_cache
                    .entry(space.to_string())
                    .or_default()
                    .insert(coll.to_string(), Counter::read(v));
                v
            }
        } + 1;
        if let Some(c) = self.type_cache.get_mut(space).and_then(|m| m.get_mut(coll)) {
            c.set(tv);
        }
        if old > 0 {
            self.type_index.remove((space, coll, old))?;
        }
        self.type_index.insert((space, coll, tv), id)?;
        Ok(tv)
    }

    /// Write the counters the group changed. Before the commit, on every
    /// path that commits.
    pub fn finish(&mut self) -> Result<(), StoreError> {
        for (origin, c) in &self.vv_cache {
            if c.dirty {
                self.vv.insert(*origin, c.value)?;
            }
        }
        for (space, c) in &self.space_cache {
            if let (true, Some(n)) = (c.dirty, c.value) {
                self.spaces.insert(space.as_str(), n)?;
            }
        }
        for (space, colls) in &self.type_cache {
            for (coll, c) in colls {
                if c.dirty {
                    self.type_versions
                        .insert((space.as_str(), coll.as_str()), c.value)?;
                }
            }
        }
        self.vv_cache.clear();
        self.space_cache.clear();
        self.type_cache.clear();
        Ok(())
    }
}
