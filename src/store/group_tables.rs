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
//!
//! The tables few groups touch (cursors, client write ids) are opened on
//! first use: opening and closing a table costs about as much as a B-tree
//! insert, and the writer thread is the relay's bottleneck at small fan-out.

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
    tx: &'t redb::WriteTransaction,
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
    /// Opened on first use: [`Tables::cursors`].
    cursors: Option<redb::Table<'t, &'static str, u64>>,
    /// Opened on first use: [`Tables::write_ids`].
    write_ids: Option<WriteIds<'t>>,
    /// Read and written through [`Types::next_version`].
    pub types: Types<'t>,
    /// origin -> highest contiguous origin seq (absent in the table: 0).
    vv_cache: HashMap<u64, Counter<u64>>,
    /// space -> its change count (None: the space has no row).
    space_cache: HashMap<String, Counter<Option<u64>>>,
}

/// The client write id tables (see `tables::WRITE_IDS`), always used together.
pub(super) struct WriteIds<'t> {
    pub by_id: redb::Table<'t, (&'static str, &'static str), u64>,
    pub by_seq: redb::Table<'t, u64, (&'static str, &'static str)>,
}

/// The per-type version counters and index (`tables::TYPE_VERSIONS`,
/// `tables::TYPE_INDEX`), apart from the other tables so a change can
/// move its index entry while it holds the entity's row.
pub(super) struct Types<'t> {
    versions: redb::Table<'t, (&'static str, &'static str), u64>,
    index: redb::Table<'t, (&'static str, &'static str, u64), &'static str>,
    /// space -> collection -> its latest per-type version (absent: 0).
    cache: HashMap<String, HashMap<String, Counter<u64>>>,
}

impl<'t> Tables<'t> {
    pub fn open(tx: &'t redb::WriteTransaction) -> Result<Self, StoreError> {
        Ok(Tables {
            tx,
            meta: tx.open_table(META)?,
            log: tx.open_table(LOG)?,
            ident: tx.open_table(IDENT)?,
            vv: tx.open_table(VV)?,
            entity: tx.open_table(ENTITY)?,
            space_log: tx.open_table(SPACE_LOG)?,
            spaces: tx.open_table(SPACES)?,
            cursors: None,
            write_ids: None,
            types: Types {
                versions: tx.open_table(TYPE_VERSIONS)?,
                index: tx.open_table(TYPE_INDEX)?,
                cache: HashMap::new(),
            },
            vv_cache: HashMap::new(),
            space_cache: HashMap::new(),
        })
    }

    /// The destinations' cursors (opened on first use).
    pub fn cursors(&mut self) -> Result<&mut redb::Table<'t, &'static str, u64>, StoreError> {
        let t = match self.cursors.take() {
            Some(t) => t,
            None => self.tx.open_table(CURSORS)?,
        };
        Ok(self.cursors.insert(t))
    }

    /// The client write ids (opened on first use).
    pub fn write_ids(&mut self) -> Result<&mut WriteIds<'t>, StoreError> {
        let t = match self.write_ids.take() {
            Some(t) => t,
            None => WriteIds {
                by_id: self.tx.open_table(WRITE_IDS)?,
                by_seq: self.tx.open_table(WRITE_ID_SEQS)?,
            },
        };
        Ok(self.write_ids.insert(t))
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
        self.vv_cache.clear();
        self.space_cache.clear();
        self.types.finish()
    }
}

impl Types<'_> {
    /// Give entity `key` (space, collection, id), whose last per-type
    /// version was `old` (0: none), the collection's next per-type version,
    /// and move its index entry there. Runs inside the writer transaction,
    /// so versions are assigned in commit order, whichever path (local
    /// write, peer or upstream change, snapshot merge) changed the entity.
    pub fn next_version(&mut self, key: (&str, &str, &str), old: u64) -> Result<u64, StoreError> {
        let (space, coll, id) = key;
        let cached = self
            .cache
            .get_mut(space)
            .and_then(|m| m.get_mut(coll))
            .map(|c| c.value);
        let tv = match cached {
            Some(v) => v,
            None => {
                let v = self
                    .versions
                    .get((space, coll))?
                    .map(|v| v.value())
                    .unwrap_or(0);
                self.cache
                    .entry(space.to_string())
                    .or_default()
                    .insert(coll.to_string(), Counter::read(v));
                v
            }
        } + 1;
        if let Some(c) = self.cache.get_mut(space).and_then(|m| m.get_mut(coll)) {
            c.set(tv);
        }
        if old > 0 {
            self.index.remove((space, coll, old))?;
        }
        self.index.insert((space, coll, tv), id)?;
        Ok(tv)
    }

    fn finish(&mut self) -> Result<(), StoreError> {
        for (space, colls) in &self.cache {
            for (coll, c) in colls {
                if c.dirty {
                    self.versions
                        .insert((space.as_str(), coll.as_str()), c.value)?;
                }
            }
        }
        self.cache.clear();
        Ok(())
    }
}
