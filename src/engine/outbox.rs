//! A connection's outbound queue, bounded in items and in bytes, plus the
//! relay-wide budget that all queued frames share.
//!
//! Fan-out (on the store's syncer thread) pushes into it without blocking; the
//! connection task pops. Unlike a channel, the hub can also remove the
//! queued items of a subscription it drops for lagging: a client that
//! stops reading must not keep its backlog alive in memory until its
//! socket finally closes (issue 12; a never-reading subscriber held 714 MB
//! of 900 KB changes that way).
//!
//! Sizes are estimates of the heap a queued item keeps alive (see
//! [`change_bytes`]); a change shared by many queues is charged to each
//! queue (its per-connection share) but only once to the relay-wide
//! budget, through a [`Charge`] that every queued copy shares and that
//! releases the bytes when the last copy leaves its queue.

use super::Committed;
use super::Delivery;
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// The relay-wide budget for queued outbound frames, in bytes.
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    max: usize,
}

impl Budget {
    pub fn new(max: usize) -> Arc<Budget> {
        Arc::new(Budget {
            used: AtomicUsize::new(0),
            max,
        })
    }

    /// Bytes held by queued frames right now.
    pub fn used(&self) -> usize {
        self.used.load(Relaxed)
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Whether `more` bytes would overrun the budget.
    pub fn would_exceed(&self, more: usize) -> bool {
        self.used().saturating_add(more) > self.max
    }
}

/// Bytes of one queued item charged to the relay-wide budget; released
/// when the last queue holding the item lets go of it.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Charge {
    pub fn new(budget: &Arc<Budget>, bytes: usize) -> Arc<Charge> {
        budget.used.fetch_add(bytes, Relaxed);
        Arc::new(Charge {
            budget: budget.clone(),
            bytes,
        })
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Relaxed);
    }
}

/// What a push into an outbox did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Over the item or byte bound: the item was not queued.
    Full,
    /// The connection is gone.
    Closed,
}

/// What a connection takes from its queue at once (see [`Outbox::take`]).
pub enum Batch {
    /// An event, or a change queued alone.
    One(Delivery),
    /// Changes `from..to` of one commit group for subscription `sub`.
    Changes {
        sub: u64,
        changes: Arc<[Arc<Committed>]>,
        from: usize,
        to: usize,
        /// The group's relay-wide charge, held until the batch is dropped.
        _charge: Option<Arc<Charge>>,
    },
}

/// What one queue entry holds.
enum Item {
    One(Delivery),
    /// The changes of one commit group for one subscription: queued with
    /// one push and one wake-up, handed out one change at a time (`next`
    /// is the first not yet handed out). The slice is shared by every
    /// subscriber of the space that wants all of it.
    Changes {
        sub: u64,
        changes: Arc<[Arc<Committed>]>,
        next: usize,
    },
}

impl Item {
    fn sub(&self) -> u64 {
        match self {
            Item::One(Delivery::Change { sub, .. } | Delivery::Event { sub, .. }) => *sub,
            Item::Changes { sub, .. } => *sub,
        }
    }

    /// Deliveries still to hand out.
    fn count(&self) -> usize {
        match self {
            Item::One(_) => 1,
            Item::Changes { changes, next, .. } => changes.len() - next,
        }
    }
}

struct Entry {
    item: Item,
    bytes: usize,
    _charge: Option<Arc<Charge>>,
}

#[derive(Default)]
struct State {
    entries: VecDeque<Entry>,
    /// Deliveries queued (a group counts each of its changes).
    queued: usize,
    bytes: usize,
    closed: bool,
}

pub struct Outbox {
    state: Mutex<State>,
    /// One consumer: `notify_one` keeps a permit when it is not waiting, so
    /// a push between its check and its wait is never missed.
    ready: Notify,
    max_items: usize,
    max_bytes: usize,
}

impl Outbox {
    pub fn new(max_items: usize, max_bytes: usize) -> Arc<Outbox> {
        Arc::new(Outbox {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            max_items: max_items.max(1),
            max_bytes,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Only pushes and pops run under this lock; nothing panics there.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue `d`, charged `bytes` here (and `charge` relay-wide). One item
    /// larger than the byte bound is still taken into an empty queue, so a
    /// change that fits the frame limit can always be delivered.
    pub fn push(&self, d: Delivery, bytes: usize, charge: Option<Arc<Charge>>) -> Pushed {
        self.enqueue(Item::One(d), bytes, charge)
    }

    /// Queue the changes of one commit group for subscription `sub` as one
    /// entry: one lock and one wake-up for the group instead of one per
    /// change (fan-out runs on the store's syncer thread, in commit order). They
    /// count against the bounds one by one, as if pushed one at a time: a
    /// group that does not fit is refused whole (the subscription resyncs
    /// from the log), and only a group of one change may exceed the byte
    /// bound, into an empty queue.
    pub fn push_changes(
        &self,
        sub: u64,
        changes: Arc<[Arc<Committed>]>,
        bytes: usize,
        charge: Option<Arc<Charge>>,
    ) -> Pushed {
        if changes.is_empty() {
            return Pushed::Queued;
        }
        let item = Item::Changes {
            sub,
            changes,
            next: 0,
        };
        self.enqueue(item, bytes, charge)
    }

    fn enqueue(&self, item: Item, bytes: usize, charge: Option<Arc<Charge>>) -> Pushed {
        let mut st = self.lock();
        if st.closed {
            return Pushed::Closed;
        }
        let n = item.count();
        let over_items = st.queued.saturating_add(n) > self.max_items;
        let alone = st.entries.is_empty() && n == 1;
        let over_bytes = !alone && st.bytes.saturating_add(bytes) > self.max_bytes;
        if over_items || over_bytes {
            return Pushed::Full;
        }
        st.bytes += bytes;
        st.queued += n;
        st.entries.push_back(Entry {
            item,
            bytes,
            _charge: charge,
        });
        drop(st);
        self.ready.notify_one();
        Pushed::Queued
    }

    /// The next item, or None once closed and drained.
    pub async fn recv(&self) -> Option<Delivery> {
        loop {
            {
                let mut st = self.lock();
                if let Some(d) = Self::pop(&mut st) {
                    return Some(d);
                }
                if st.closed {
                    return None;
                }
            }
            self.ready.notified().await;
        }
    }

    /// The next item if one is queued.
    pub fn try_recv(&self) -> Option<Delivery> {
        Self::pop(&mut self.lock())
    }

    /// The front entry, waiting for one: a commit group comes whole (up to
    /// `max` of its changes; the rest stays at the front), so a connection
    /// takes one lock per group, not per change. None once closed and
    /// drained.
    pub async fn take(&self, max: usize) -> Option<Batch> {
        loop {
            {
                let mut st = self.lock();
                if let Some(b) = Self::take_front(&mut st, max) {
                    return Some(b);
                }
                if st.closed {
                    return None;
                }
            }
            self.ready.notified().await;
        }
    }

    /// The front entry if there is one (see [`Outbox::take`]).
    pub fn try_take(&self, max: usize) -> Option<Batch> {
        Self::take_front(&mut self.lock(), max)
    }

    fn take_front(st: &mut State, max: usize) -> Option<Batch> {
        let front = st.entries.front_mut()?;
        if let Item::Changes { sub, changes, next } = &mut front.item {
            let left = changes.len() - *next;
            if left > max.max(1) {
                // Part of the group: it stays queued (bytes and charge
                // included) until its last part is taken.
                let from = *next;
                *next += max.max(1);
                st.queued -= *next - from;
                return Some(Batch::Changes {
                    sub: *sub,
                    changes: changes.clone(),
                    from,
                    to: *next,
                    _charge: None,
                });
            }
        }
        let e = st.entries.pop_front()?;
        st.bytes -= e.bytes;
        st.queued -= e.item.count();
        Some(match e.item {
            Item::One(d) => Batch::One(d),
            // The relay-wide charge goes with the batch: released once the
            // connection has written (or dropped) its frames.
            Item::Changes { sub, changes, next } => Batch::Changes {
                sub,
                to: changes.len(),
                changes,
                from: next,
                _charge: e._charge,
            },
        })
    }

    fn pop(st: &mut State) -> Option<Delivery> {
        let front = st.entries.front_mut()?;
        let d = match &mut front.item {
            Item::Changes { sub, changes, next } if *next + 1 < changes.len() => {
                *next += 1;
                st.queued -= 1;
                return Some(Delivery::Change {
                    sub: *sub,
                    item: changes[*next - 1].clone(),
                });
            }
            Item::Changes { sub, changes, next } => Delivery::Change {
                sub: *sub,
                item: changes[*next].clone(),
            },
            Item::One(_) => {
                let e = st.entries.pop_front()?;
                let Item::One(d) = e.item else { return None };
                st.bytes -= e.bytes;
                st.queued -= 1;
                return Some(d);
            }
        };
        // The group's last change: the entry goes, and with it its bytes and
        // the relay-wide charge; from now on the change is the connection's
        // frame in progress, bounded by its send batch.
        if let Some(e) = st.entries.pop_front() {
            st.bytes -= e.bytes;
            st.queued -= 1;
        }
        Some(d)
    }

    /// Drop every queued item of subscription `sub` (dropped for lagging):
    /// its frames are freed now, whether or not the client ever reads.
    /// Returns the bytes freed.
    pub fn purge(&self, sub: u64) -> usize {
        let mut st = self.lock();
        let (mut freed, mut dropped) = (0, 0);
        st.entries.retain(|e| {
            let keep = e.item.sub() != sub;
            if !keep {
                freed += e.bytes;
                dropped += e.item.count();
            }
            keep
        });
        st.bytes -= freed;
        st.queued -= dropped;
        freed
    }

    /// The connection is gone: refuse further pushes, free what is queued.
    pub fn close(&self) {
        let items = {
            let mut st = self.lock();
            st.closed = true;
            st.bytes = 0;
            st.queued = 0;
            std::mem::take(&mut st.entries)
        };
        drop(items);
        self.ready.notify_one();
    }

    /// Bytes queued now.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    pub fn is_empty(&self) -> bool {
        self.lock().entries.is_empty()
    }

    /// Deliveries queued now (each change of a group counts).
    pub fn len(&self) -> usize {
        self.lock().queued
    }
}

/// Estimated heap kept alive by a queued change: the change's fields, the
/// entity after it (a copy of its visible fields) and one rendered frame
/// (about the size of the change), plus a fixed overhead.
pub fn change_bytes(c: &Committed) -> usize {
    let fields: usize = c
        .entry
        .change
        .fields
        .iter()
        .map(|(k, v)| k.len() + json_bytes(v) + 8)
        .sum();
    let after: usize = c
        .after
        .as_ref()
        .map(|a| a.visible().map(|(k, v)| k.len() + json_bytes(v) + 8).sum())
        .unwrap_or(0);
    2 * fields + after + 512
}

/// Roughly the JSON length of `v`, without rendering it.
pub fn json_bytes(v: &Value) -> usize {
    match v {
        Value::Null | Value::Bool(_) => 5,
        Value::Number(_) => 12,
        Value::String(s) => s.len() + 2,
        Value::Array(a) => a.iter().map(|x| json_bytes(x) + 1).sum::<usize>() + 2,
        Value::Object(o) => o
            .iter()
            .map(|(k, x)| k.len() + json_bytes(x) + 4)
            .sum::<usize>()
            .saturating_add(2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Event, RenderCache};
    use crate::model::NodeId;

    fn event(sub: u64) -> Delivery {
        Delivery::Event {
            sub,
            event: Arc::new(Event {
                space: "s".into(),
                topic: "t".into(),
                payload: Value::Null,
                source: None,
                actor: String::new(),
                origin: NodeId(1),
                eid: 1,
                hops: 0,
                rendered: RenderCache::default(),
            }),
        }
    }

    #[test]
    fn bounded_in_items_and_bytes_but_one_big_item_fits_an_empty_queue() {
        let o = Outbox::new(3, 100);
        assert_eq!(o.push(event(1), 500, None), Pushed::Queued, "alone: taken");
        assert_eq!(o.push(event(1), 1, None), Pushed::Full, "over the bytes");
        assert!(o.try_recv().is_some());
        for _ in 0..3 {
            assert_eq!(o.push(event(1), 10, None), Pushed::Queued);
        }
        assert_eq!(o.push(event(1), 10, None), Pushed::Full, "over the items");
        assert_eq!(o.bytes(), 30);
    }

    #[test]
    fn purge_frees_one_subscription_and_the_relay_wide_charge() {
        let budget = Budget::new(1000);
        let o = Outbox::new(16, 1000);
        let other = Outbox::new(16, 1000);
        let shared = Charge::new(&budget, 300);
        o.push(event(1), 300, Some(shared.clone()));
        other.push(event(9), 300, Some(shared));
        o.push(event(2), 50, Some(Charge::new(&budget, 50)));
        assert_eq!(budget.used(), 350, "a shared item is charged once");
        assert_eq!(o.purge(1), 300);
        assert_eq!(budget.used(), 350, "still queued at the other connection");
        other.close();
        assert_eq!(budget.used(), 50);
        assert_eq!(o.bytes(), 50);
        assert!(o.try_recv().is_some());
        assert_eq!(budget.used(), 0, "popped: released");
        assert_eq!(other.push(event(9), 1, None), Pushed::Closed);
    }

    fn group(sub: u64, seqs: std::ops::RangeInclusive<u64>) -> Arc<[Arc<Committed>]> {
        use crate::model::{Change, Op, Stamp};
        use crate::store::LogEntry;
        seqs.map(|seq| {
            Arc::new(Committed::new(crate::store::Committed {
                seq,
                entry: LogEntry {
                    change: Change {
                        space: "s".into(),
                        collection: "c".into(),
                        id: format!("e{seq}"),
                        op: Op::Put,
                        fields: Default::default(),
                        stamp: Stamp {
                            ms: seq,
                            counter: 0,
                            node: NodeId(1),
                        },
                        origin: NodeId(1),
                        seq,
                        actor: String::new(),
                    },
                    at_ms: 0,
                    version: 1,
                    created: true,
                    type_version: seq,
                },
                after: None,
                source: Some(sub),
            }))
        })
        .collect()
    }

    fn seq_of(d: Delivery) -> (u64, u64) {
        match d {
            Delivery::Change { sub, item } => (sub, item.seq),
            Delivery::Event { .. } => panic!("an event"),
        }
    }

    #[test]
    fn a_commit_group_is_one_entry_handed_out_change_by_change() {
        let budget = Budget::new(10_000);
        let o = Outbox::new(8, 10_000);
        let charge = Charge::new(&budget, 500);
        assert_eq!(
            o.push_changes(1, group(1, 1..=3), 500, Some(charge)),
            Pushed::Queued
        );
        assert_eq!(o.push(event(1), 10, None), Pushed::Queued);
        assert_eq!(o.len(), 4, "each change counts against the item bound");
        assert_eq!(o.bytes(), 510);
        assert_eq!(seq_of(o.try_recv().unwrap()), (1, 1));
        assert_eq!(seq_of(o.try_recv().unwrap()), (1, 2));
        assert_eq!(budget.used(), 500, "held until the group's last change");
        assert_eq!(seq_of(o.try_recv().unwrap()), (1, 3));
        assert_eq!(budget.used(), 0);
        assert_eq!(o.bytes(), 10);
        assert!(matches!(o.try_recv(), Some(Delivery::Event { .. })));
        assert!(o.try_recv().is_none());
        assert_eq!(o.len(), 0);
    }

    #[test]
    fn groups_are_bounded_in_changes_and_bytes_as_if_pushed_one_by_one() {
        let o = Outbox::new(4, 100);
        let full = |o: &Outbox, r: std::ops::RangeInclusive<u64>, bytes| {
            o.push_changes(1, group(1, r), bytes, None) == Pushed::Full
        };
        assert!(full(&o, 1..=5, 5), "5 changes > 4 items, even when empty");
        assert!(full(&o, 1..=2, 500), "2 changes over the bytes");
        assert!(o.is_empty());
        assert!(!full(&o, 1..=1, 500), "one big change alone is taken");
        o.try_recv().unwrap();
        assert!(!full(&o, 11..=14, 4));
        assert!(full(&o, 15..=15, 1));
        // A partly handed-out group counts only what is left of it.
        o.try_recv().unwrap();
        assert_eq!(o.len(), 3);
        assert_eq!(
            o.push_changes(2, group(2, 15..=15), 1, None),
            Pushed::Queued
        );
        assert_eq!(o.purge(1), 4, "the bytes of the rest of sub 1's group");
        assert_eq!(o.len(), 1);
        assert_eq!(seq_of(o.try_recv().unwrap()), (2, 15));
    }

    fn taken(b: Batch) -> (u64, Vec<u64>) {
        match b {
            Batch::Changes {
                sub,
                changes,
                from,
                to,
                ..
            } => (sub, changes[from..to].iter().map(|c| c.seq).collect()),
            Batch::One(d) => {
                let (sub, seq) = seq_of(d);
                (sub, vec![seq])
            }
        }
    }

    #[test]
    fn a_group_is_taken_whole_or_in_parts_and_charged_until_written() {
        let budget = Budget::new(10_000);
        let o = Outbox::new(16, 10_000);
        let charge = Charge::new(&budget, 500);
        o.push_changes(1, group(1, 1..=5), 500, Some(charge));
        o.push_changes(2, group(2, 6..=6), 7, None);
        assert_eq!(taken(o.try_take(3).unwrap()), (1, vec![1, 2, 3]));
        assert_eq!((o.len(), o.bytes()), (3, 507), "the rest stays queued");
        let rest = o.try_take(64).unwrap();
        assert_eq!((o.len(), o.bytes()), (1, 7));
        assert_eq!(budget.used(), 500, "charged while its frames are written");
        assert_eq!(taken(rest), (1, vec![4, 5]));
        assert_eq!(budget.used(), 0);
        assert_eq!(taken(o.try_take(64).unwrap()), (2, vec![6]));
        assert!(o.try_take(64).is_none());
        assert!(o.is_empty());
        assert_eq!(o.len(), 0);
    }

    #[tokio::test]
    async fn recv_wakes_on_push_and_ends_on_close() {
        let o = Outbox::new(4, 100);
        let o2 = o.clone();
        let t = tokio::spawn(async move { o2.recv().await.is_some() });
        tokio::task::yield_now().await;
        o.push(event(1), 1, None);
        assert!(t.await.unwrap());
        let o2 = o.clone();
        let t = tokio::spawn(async move { o2.recv().await.is_none() });
        tokio::task::yield_now().await;
        o.close();
        assert!(t.await.unwrap());
    }
}
