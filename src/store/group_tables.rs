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
//! The append-only tables (the log, the identity index, the per-space log
//! and the per-type index) are written the same way: a group's new entries
//! are kept in memory and written at its end in key order, each run of
//! them through one redb cursor that splices them into the tree in one
//! pass ([`insert_sorted`]), not one B-tree descent and leaf insert each.
//! A read of one of these tables inside the group first writes what is
//! kept ([`Tables::flush_appends`]), or looks at it too
//! ([`Tables::has_ident`]), so the group sees its own writes as before.
//!
//! The tables few groups touch (cursors, client write ids) are opened on
//! first use: opening and closing a table costs about as much as a B-tree
//! insert, and the writer thread is the relay's bottleneck at small fan-out.

use super::tables::*;
use super::StoreError;
use redb::ReadableTable;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

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
    /// Holds this group's entries only after [`Tables::flush_appends`].
    pub log: redb::Table<'t, u64, &'static [u8]>,
    /// As `log`; [`Tables::has_ident`] looks at both.
    pub ident: redb::Table<'t, (u64, u64), u64>,
    /// Read and written through [`Tables::held`] and [`Tables::raise_vv`].
    vv: redb::Table<'t, u64, u64>,
    pub entity: redb::Table<'t, (&'static str, &'static str, &'static str), &'static [u8]>,
    /// As `log`.
    pub space_log: redb::Table<'t, (&'static str, u64), ()>,
    /// This group's entries of `log`, `ident` and `space_log` not yet written.
    appends: Appends,
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

/// A group's new entries of the append-only tables (see the module doc).
#[derive(Default)]
struct Appends {
    /// The log entries' values back to back.
    log_bytes: Vec<u8>,
    /// Each log entry's seq and the end of its value in `log_bytes`, in
    /// seq order.
    log: Vec<(u64, usize)>,
    ident: BTreeMap<(u64, u64), u64>,
    /// space -> its new log seqs, ascending.
    space_log: BTreeMap<String, Vec<u64>>,
}

/// Insert `items`, in ascending key order, into `table`: each run of them
/// that falls in one gap of the table through one cursor, which splices the
/// run into the tree in one pass. A key already in the table is replaced,
/// as by `Table::insert` (the callers' keys are new: a log seq, an origin
/// seq, a per-type version).
fn insert_sorted<'k, K: redb::Key + 'static, V: redb::Value + 'static>(
    table: &mut redb::Table<'_, K, V>,
    items: &[(K::SelfType<'k>, V::SelfType<'k>)],
) -> Result<(), StoreError> {
    let mut i = 0;
    while i < items.len() {
        // The gap before the smallest key at or after this item's.
        let mut cursor = table.lower_bound_mut(Bound::Included(&items[i].0))?;
        let mut opened = true;
        while let Some((k, v)) = items.get(i) {
            match cursor.insert_before(k, v) {
                Ok(()) => {
                    i += 1;
                    opened = false;
                }
                // Right after opening, the key after the gap is this one.
                Err(redb::CursorError::UnorderedKey) if opened => {
                    if cursor.remove_next()?.is_none() {
                        return Err(StoreError::Encode(
                            "internal: an ordered insert found no key in its way".into(),
                        ));
                    }
                    opened = false;
                }
                // Past the end of this gap: a new cursor for the rest.
                Err(redb::CursorError::UnorderedKey) => break,
                Err(e) => return Err(redb::Error::from(e).into()),
            }
        }
        cursor.close()?;
    }
    Ok(())
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
    /// space -> collection -> its counter and this group's index entries.
    cache: HashMap<String, HashMap<String, TypeGroup>>,
}

/// One collection's per-type version in a group.
struct TypeGroup {
    /// Its latest per-type version (absent in the table: 0).
    version: Counter<u64>,
    /// The index entries this group added (version -> id), written by
    /// `finish`: an entity changed again in the same group moves its entry
    /// without touching the table.
    added: BTreeMap<u64, String>,
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
            appends: Appends::default(),
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
        self.flush_appends()?;
        self.types.finish()
    }

    /// Keep a new log entry (`entry`: its stored value) of local seq `seq`,
    /// change `(origin, origin_seq)` in `space`, for [`Tables::flush_appends`].
    pub fn append(
        &mut self,
        seq: u64,
        entry: &[u8],
        space: &str,
        origin: u64,
        origin_seq: u64,
    ) -> Result<(), StoreError> {
        let a = &mut self.appends;
        if a.log.last().is_some_and(|&(last, _)| last >= seq) {
            // Seqs only go up within a group; anything else is written
            // now, in its place.
            self.flush_appends()?;
            return self.append(seq, entry, space, origin, origin_seq);
        }
        a.log_bytes.extend_from_slice(entry);
        a.log.push((seq, a.log_bytes.len()));
        a.ident.insert((origin, origin_seq), seq);
        match a.space_log.get_mut(space) {
            Some(seqs) => seqs.push(seq),
            None => {
                a.space_log.insert(space.to_string(), vec![seq]);
            }
        }
        Ok(())
    }

    /// Whether change `(origin, origin_seq)` is in the identity index
    /// (written or kept by this group).
    pub fn has_ident(&self, origin: u64, origin_seq: u64) -> Result<bool, StoreError> {
        Ok(self.appends.ident.contains_key(&(origin, origin_seq))
            || self.ident.get((origin, origin_seq))?.is_some())
    }

    /// Write the kept entries of the log, the identity index and the
    /// per-space log: before the commit, and before any other read of
    /// those tables in the group.
    pub fn flush_appends(&mut self) -> Result<(), StoreError> {
        let a = std::mem::take(&mut self.appends);
        let mut start = 0;
        let log: Vec<(u64, &[u8])> = a
            .log
            .iter()
            .map(|&(seq, end)| {
                let value = &a.log_bytes[start..end];
                start = end;
                (seq, value)
            })
            .collect();
        insert_sorted(&mut self.log, &log)?;
        let ident: Vec<((u64, u64), u64)> = a.ident.into_iter().collect();
        insert_sorted(&mut self.ident, &ident)?;
        for (space, seqs) in &a.space_log {
            let keys: Vec<((&str, u64), ())> = seqs
                .iter()
                .map(|&seq| ((space.as_str(), seq), ()))
                .collect();
            insert_sorted(&mut self.space_log, &keys)?;
        }
        Ok(())
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
        if self.cache.get(space).and_then(|m| m.get(coll)).is_none() {
            let v = self
                .versions
                .get((space, coll))?
                .map(|v| v.value())
                .unwrap_or(0);
            self.cache.entry(space.to_string()).or_default().insert(
                coll.to_string(),
                TypeGroup {
                    version: Counter::read(v),
                    added: BTreeMap::new(),
                },
            );
        }
        let group = self
            .cache
            .get_mut(space)
            .and_then(|m| m.get_mut(coll))
            .ok_or_else(|| StoreError::Encode("internal: type counter vanished".into()))?;
        let tv = group.version.value + 1;
        group.version.set(tv);
        if old > 0 && group.added.remove(&old).is_none() {
            self.index.remove((space, coll, old))?;
        }
        group.added.insert(tv, id.to_string());
        Ok(tv)
    }

    fn finish(&mut self) -> Result<(), StoreError> {
        for (space, colls) in &self.cache {
            for (coll, g) in colls {
                if g.version.dirty {
                    self.versions
                        .insert((space.as_str(), coll.as_str()), g.version.value)?;
                }
                let added: Vec<((&str, &str, u64), &str)> = g
                    .added
                    .iter()
                    .map(|(tv, id)| ((space.as_str(), coll.as_str(), *tv), id.as_str()))
                    .collect();
                insert_sorted(&mut self.index, &added)?;
            }
        }
        self.cache.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableDatabase, TableDefinition};

    const T: TableDefinition<(&str, u64), u64> = TableDefinition::new("t");

    /// Keys before, between, after and equal to the table's own, in
    /// several gaps: each lands in its place, an equal key is replaced (as
    /// by `insert`), nothing else moves.
    #[test]
    fn insert_sorted_fills_every_gap_and_replaces_equal_keys() {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("t.redb")).unwrap();
        let mut want = BTreeMap::new();
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx.open_table(T).unwrap();
            for (s, k) in [("a", 10), ("a", 20), ("a", 30), ("b", 5)] {
                t.insert((s, k), k).unwrap();
                want.insert((s.to_string(), k), k);
            }
            let items: Vec<((&str, u64), u64)> = vec![
                (("a", 1), 100),
                (("a", 15), 101),
                (("a", 20), 102),
                (("a", 25), 103),
                (("a", 26), 104),
                (("a", 40), 105),
                (("b", 1), 106),
                (("b", 6), 107),
                (("c", 0), 108),
            ];
            for ((s, k), v) in &items {
                want.insert((s.to_string(), *k), *v);
            }
            insert_sorted(&mut t, &items).unwrap();
            insert_sorted(&mut t, &[]).unwrap();
        }
        tx.commit().unwrap();
        let rtx = db.begin_read().unwrap();
        let t = rtx.open_table(T).unwrap();
        let got: BTreeMap<(String, u64), u64> = t
            .iter()
            .unwrap()
            .map(|r| {
                let (k, v) = r.unwrap();
                let (s, n) = k.value();
                ((s.to_string(), n), v.value())
            })
            .collect();
        assert_eq!(got, want);
    }
}
