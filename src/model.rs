//! The data model and its merge: pure functions, no IO, no clocks.
//!
//! Every relay holds, per entity, a state-based CRDT: a last-writer-wins
//! register per field plus two entity-level markers (the newest delete and the
//! newest "reset", i.e. put or delete, which hides older fields). Merging a
//! change, or a whole other state, is commutative, associative and idempotent,
//! so relays that saw the same set of changes in any order hold identical
//! bytes. The caller passes wall-clock time in; nothing here reads a clock.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;

/// A relay's identity: random at first start, kept in the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for NodeId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16).map(NodeId)
    }
}

/// Hybrid logical clock value with the writing node as tie-break.
/// Field order is the comparison order: physical ms, logical counter, node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    pub ms: u64,
    pub counter: u32,
    pub node: NodeId,
}

/// Where a client's sub-millisecond edit time lives in [`Stamp::counter`]:
/// its top 10 bits hold the microseconds (0..=999), the low 22 bits the
/// logical counter of edits within that microsecond. A relay's own stamps
/// start at counter 0, i.e. at microsecond 0 of their millisecond.
pub const SUB_MS_SHIFT: u32 = 22;

impl Stamp {
    /// The stamp's time in Unix microseconds: exactly a client's edit time
    /// when it sent one in microseconds (see [`Hlc::at_client_time`]).
    pub fn micros(&self) -> u64 {
        self.ms
            .saturating_mul(1000)
            .saturating_add(u64::from((self.counter >> SUB_MS_SHIFT).min(999)))
    }
}

/// The key that decides a last-writer-wins race: the stamp, then the origin
/// sequence number, which makes it unique per change even when one node gives
/// two changes the same client-supplied edit time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WriteKey {
    pub stamp: Stamp,
    pub seq: u64,
}

/// Hybrid logical clock. `last` is persisted so a restart with a clock that
/// went backwards still issues increasing stamps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hlc {
    pub node: NodeId,
    pub last_ms: u64,
    pub last_counter: u32,
}

impl Hlc {
    pub fn new(node: NodeId) -> Self {
        Hlc {
            node,
            last_ms: 0,
            last_counter: 0,
        }
    }

    /// A fresh stamp, strictly greater than every stamp issued or observed.
    pub fn now(&mut self, wall_ms: u64) -> Stamp {
        if wall_ms > self.last_ms {
            self.last_ms = wall_ms;
            self.last_counter = 0;
        } else {
            self.bump();
        }
        self.current()
    }

    /// A stamp for a client-supplied edit time in **microseconds**. Offline
    /// edits keep their real (past) time so they lose to newer writes; times
    /// further than `max_skew_ms` ahead of the wall clock are clamped so one
    /// bad clock can't win forever.
    ///
    /// The sub-millisecond part is kept in the counter's top bits (see
    /// [`SUB_MS_SHIFT`]), so two edits in one millisecond are ordered by
    /// their microseconds and [`Stamp::micros`] gives back exactly what the
    /// client sent. The stamp is the client's time as is (not bumped): two
    /// edits with the same time are told apart by their origin seq
    /// ([`WriteKey`]). The clock moves forward to it when it is ahead.
    pub fn at_client_time(&mut self, client_us: u64, wall_ms: u64, max_skew_ms: u64) -> Stamp {
        let limit = wall_ms.saturating_add(max_skew_ms);
        let (ms, sub) = if client_us / 1000 >= limit {
            (limit, 0)
        } else {
            (client_us / 1000, (client_us % 1000) as u32)
        };
        let stamp = Stamp {
            ms,
            counter: sub << SUB_MS_SHIFT,
            node: self.node,
        };
        if (stamp.ms, stamp.counter) > (self.last_ms, self.last_counter) {
            self.last_ms = stamp.ms;
            self.last_counter = stamp.counter;
        }
        stamp
    }

    /// Fold in a stamp seen from elsewhere so later local stamps sort after it.
    pub fn observe(&mut self, seen: Stamp, wall_ms: u64, max_skew_ms: u64) {
        if seen.ms > wall_ms.saturating_add(max_skew_ms) {
            return; // a clock far in the future must not drag ours along
        }
        if seen.ms > self.last_ms {
            self.last_ms = seen.ms;
            self.last_counter = seen.counter;
        } else if seen.ms == self.last_ms && seen.counter > self.last_counter {
            self.last_counter = seen.counter;
        }
    }

    fn bump(&mut self) {
        if self.last_counter == u32::MAX {
            self.last_ms += 1;
            self.last_counter = 0;
        } else {
            self.last_counter += 1;
        }
    }

    fn current(&self) -> Stamp {
        Stamp {
            ms: self.last_ms,
            counter: self.last_counter,
            node: self.node,
        }
    }
}

/// What a change does to its entity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Replace the entity: the given fields, and no older ones.
    Put,
    /// Set the given fields; others stay. A `null` value removes a field.
    Patch,
    /// Tombstone the entity. A later field write brings it back.
    Delete,
}

/// A change as the whole mesh knows it. `(origin, seq)` is its identity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub space: String,
    pub collection: String,
    pub id: String,
    pub op: Op,
    pub fields: BTreeMap<String, Value>,
    pub stamp: Stamp,
    pub origin: NodeId,
    pub seq: u64,
    pub actor: String,
}

impl Change {
    pub fn key(&self) -> WriteKey {
        WriteKey {
            stamp: self.stamp,
            seq: self.seq,
        }
    }
}

/// One field's register: the winning value and the write that set it.
/// `Value::Null` means the field was removed (it still wins by its key).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    pub value: Value,
    pub key: WriteKey,
}

/// The merged state of one entity.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EntityState {
    /// Newest put or delete: fields written before it are gone.
    pub reset: Option<WriteKey>,
    /// Newest delete.
    pub tomb: Option<WriteKey>,
    /// Newest put or patch.
    pub live: Option<WriteKey>,
    pub fields: BTreeMap<String, Cell>,
}

/// A write that lost to a newer value; reported to the writer, kept in the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conflict {
    pub field: String,
    /// The value the losing write tried to set.
    pub attempted: Value,
    /// The value that stays (`null` if the field is gone).
    pub current: Value,
    /// The stamp of the write that stays.
    pub current_stamp: Stamp,
}

impl EntityState {
    /// Does the entity exist (not deleted, or brought back by a newer write)?
    pub fn exists(&self) -> bool {
        self.live.is_some() && self.live > self.tomb
    }

    /// The visible fields: the ones not removed.
    pub fn visible(&self) -> serde_json::Map<String, Value> {
        self.fields
            .iter()
            .filter(|(_, c)| !c.value.is_null())
            .map(|(k, c)| (k.clone(), c.value.clone()))
            .collect()
    }

    /// The newest write key that touched this entity.
    pub fn newest(&self) -> Option<WriteKey> {
        let fields = self.fields.values().map(|c| c.key).max();
        [self.reset, self.tomb, self.live, fields]
            .into_iter()
            .flatten()
            .max()
    }

    /// Merge one change. Returns the writes that lost to newer values.
    pub fn apply(&mut self, change: &Change) -> Vec<Conflict> {
        let key = change.key();
        let mut conflicts = Vec::new();
        match change.op {
            Op::Delete => {
                self.tomb = self.tomb.max(Some(key));
                self.reset = self.reset.max(Some(key));
                for (name, cell) in &self.fields {
                    if cell.key > key && !cell.value.is_null() {
                        // A newer field write outlives the delete.
                        conflicts.push(Conflict {
                            field: name.clone(),
                            attempted: Value::Null,
                            current: cell.value.clone(),
                            current_stamp: cell.key.stamp,
                        });
                    }
                }
            }
            Op::Put | Op::Patch => {
                if change.op == Op::Put {
                    self.reset = self.reset.max(Some(key));
                }
                self.live = self.live.max(Some(key));
                for (name, value) in &change.fields {
                    if let Some(reset) = self.reset {
                        if key < reset {
                            // Replaced or deleted by a newer put/delete.
                            let current = self.fields.get(name).filter(|c| c.key >= reset);
                            conflicts.push(Conflict {
                                field: name.clone(),
                                attempted: value.clone(),
                                current: current.map(|c| c.value.clone()).unwrap_or(Value::Null),
                                current_stamp: current.map(|c| c.key.stamp).unwrap_or(reset.stamp),
                            });
                            continue;
                        }
                    }
                    match self.fields.get_mut(name) {
                        Some(cell) if cell.key > key => conflicts.push(Conflict {
                            field: name.clone(),
                            attempted: value.clone(),
                            current: cell.value.clone(),
                            current_stamp: cell.key.stamp,
                        }),
                        Some(cell) if cell.key == key => {} // duplicate delivery
                        // In place: the name is already the map's key.
                        Some(cell) => {
                            *cell = Cell {
                                value: value.clone(),
                                key,
                            }
                        }
                        None => {
                            self.fields.insert(
                                name.clone(),
                                Cell {
                                    value: value.clone(),
                                    key,
                                },
                            );
                        }
                    }
                }
            }
        }
        self.prune();
        conflicts
    }

    /// Join with another replica's state (used for snapshots): the CRDT merge.
    pub fn merge(&mut self, other: &EntityState) {
        self.reset = self.reset.max(other.reset);
        self.tomb = self.tomb.max(other.tomb);
        self.live = self.live.max(other.live);
        for (name, theirs) in &other.fields {
            match self.fields.get(name) {
                Some(ours) if ours.key >= theirs.key => {}
                _ => {
                    self.fields.insert(name.clone(), theirs.clone());
                }
            }
        }
        self.prune();
    }

    /// Drop fields older than the newest reset (a put keeps its own fields,
    /// which carry the reset's key), so equal histories give equal
    /// bytes whatever order they arrived in.
    fn prune(&mut self) {
        if let Some(reset) = self.reset {
            self.fields.retain(|_, c| c.key >= reset);
        }
    }
}

/// Highest contiguous origin seq seen per origin: what a relay has.
pub type VersionVector = BTreeMap<NodeId, u64>;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ch(op: Op, ms: u64, node: u64, seq: u64, fields: Value) -> Change {
        let fields = match fields {
            Value::Object(m) => m.into_iter().collect(),
            _ => BTreeMap::new(),
        };
        Change {
            space: "s".into(),
            collection: "c".into(),
            id: "e".into(),
            op,
            fields,
            stamp: Stamp {
                ms,
                counter: 0,
                node: NodeId(node),
            },
            origin: NodeId(node),
            seq,
            actor: "t".into(),
        }
    }

    #[test]
    fn hlc_is_monotonic_when_the_wall_clock_goes_back() {
        let mut h = Hlc::new(NodeId(1));
        let a = h.now(100);
        let b = h.now(50);
        let c = h.now(100);
        assert!(a < b && b < c);
        assert_eq!(b.ms, 100);
    }

    #[test]
    fn hlc_clamps_future_client_times() {
        let mut h = Hlc::new(NodeId(1));
        let s = h.at_client_time(1_000_000_000, 1000, 500);
        assert_eq!(s.ms, 1500);
        let past = h.at_client_time(10_000, 2000, 500);
        assert_eq!(past.ms, 10);
    }

    #[test]
    fn client_microseconds_survive_and_order_writes_within_a_millisecond() {
        let mut h = Hlc::new(NodeId(1));
        let a = h.at_client_time(1_795_607_927_827_456, u64::MAX / 2, 0);
        let b = h.at_client_time(1_795_607_927_827_123, u64::MAX / 2, 0);
        assert_eq!(a.micros(), 1_795_607_927_827_456);
        assert_eq!(b.micros(), 1_795_607_927_827_123);
        assert!(b < a, "the earlier microsecond loses");
        // The relay's next stamp in that millisecond sorts after both.
        let c = h.now(1_795_607_927_827);
        assert!(c > a);
        assert_eq!(h.now(1_795_607_927_828).micros(), 1_795_607_927_828_000);
    }

    #[test]
    fn hlc_observe_ignores_far_future() {
        let mut h = Hlc::new(NodeId(1));
        h.observe(
            Stamp {
                ms: 10_000,
                counter: 3,
                node: NodeId(2),
            },
            100,
            100,
        );
        assert_eq!(h.now(100).ms, 100);
        h.observe(
            Stamp {
                ms: 150,
                counter: 3,
                node: NodeId(2),
            },
            100,
            100,
        );
        let s = h.now(100);
        assert_eq!((s.ms, s.counter), (150, 4));
    }

    #[test]
    fn newer_field_wins_and_older_is_a_conflict() {
        let mut e = EntityState::default();
        assert!(e
            .apply(&ch(Op::Patch, 10, 1, 1, json!({"a": 1})))
            .is_empty());
        let lost = e.apply(&ch(Op::Patch, 5, 2, 1, json!({"a": 2})));
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].current, json!(1));
        assert_eq!(e.visible()["a"], json!(1));
    }

    #[test]
    fn delete_then_newer_write_resurrects() {
        let mut e = EntityState::default();
        e.apply(&ch(Op::Put, 10, 1, 1, json!({"a": 1, "b": 2})));
        e.apply(&ch(Op::Delete, 20, 1, 2, json!({})));
        assert!(!e.exists());
        assert!(e.visible().is_empty());
        e.apply(&ch(Op::Patch, 30, 2, 1, json!({"c": 3})));
        assert!(e.exists());
        assert_eq!(e.visible(), json!({"c": 3}).as_object().unwrap().clone());
    }

    #[test]
    fn put_replaces_older_fields_but_not_newer_ones() {
        let mut e = EntityState::default();
        e.apply(&ch(Op::Patch, 10, 1, 1, json!({"a": 1})));
        e.apply(&ch(Op::Patch, 30, 1, 2, json!({"b": 2})));
        e.apply(&ch(Op::Put, 20, 2, 1, json!({"c": 3})));
        assert_eq!(
            e.visible(),
            json!({"b": 2, "c": 3}).as_object().unwrap().clone()
        );
    }

    #[test]
    fn null_removes_a_field() {
        let mut e = EntityState::default();
        e.apply(&ch(Op::Patch, 10, 1, 1, json!({"a": 1})));
        e.apply(&ch(Op::Patch, 11, 1, 2, json!({"a": null})));
        assert!(e.visible().is_empty());
        assert!(e.exists());
    }
}
