//! Fan-out: the live subscriber registry.
//!
//! The store calls `committed` after each durable commit (on its syncer
//! thread, or the writer's; one at a time, in commit order), holding the
//! hub lock while it records the new last seq and queues the group's
//! changes of each space into each subscriber's bounded queue, as one entry
//! (one lock and one wake-up per subscriber per group, not per change; the
//! slice of changes is shared by the subscribers that want all of it). A subscriber registers under the same lock and
//! learns that last seq, so its catch-up (read from the log up to that seq) and
//! its live stream (everything after it) meet with no gap and no duplicate.
//! A full queue never blocks the writer: the subscription is dropped, its
//! queued frames are freed, and its connection is told to resync from the
//! last seq it delivered. Queues are bounded in items and bytes per
//! connection, and all of them together by the relay-wide [`Budget`]: when
//! a change would overrun it, every subscriber that is already behind (has
//! anything queued) is dropped the same way instead of being given more.

use super::outbox::{change_bytes, json_bytes, Budget, Charge, Outbox, Pushed};
use super::Committed;
use super::{Delivery, Event};
use crate::metrics::Metrics;
use crate::store::CommitSink;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Shared between a connection and the hub: how the hub tells the connection
/// that one of its subscriptions was dropped for lagging, and which seqs the
/// connection wrote itself.
#[derive(Default)]
pub struct ConnSignal {
    pub notify: Notify,
    lagged: Mutex<Vec<u64>>,
    /// Seqs of changes this connection wrote, ascending, recorded by fan-out
    /// before they are visible to any catch-up: a replay after a lag drop
    /// reads them from the log without their source, and a dialect that
    /// does not echo a client's writes skips them by this record.
    own: Mutex<Vec<u64>>,
}

/// At most this many of a connection's own seqs are remembered (the oldest
/// go first); a connection writing that much while never catching up could
/// see an early write of its own again after a resync.
const OWN_MAX: usize = 4096;

impl ConnSignal {
    /// Whether the connection wrote the change at `seq` (while recorded).
    pub fn is_own(&self, seq: u64) -> bool {
        self.own
            .lock()
            .map(|o| o.binary_search(&seq).is_ok())
            .unwrap_or(false)
    }

    /// Forget own seqs up to `upto`: the connection's feeds are past them.
    pub fn forget_own(&self, upto: u64) {
        if let Ok(mut o) = self.own.lock() {
            let keep = o.partition_point(|s| *s <= upto);
            o.drain(..keep);
        }
    }

    fn record_own(&self, seq: u64) {
        if let Ok(mut o) = self.own.lock() {
            if o.len() >= OWN_MAX {
                o.drain(..OWN_MAX / 2);
            }
            o.push(seq);
        }
    }

    /// Subscription ids dropped since the last call.
    pub fn take_lagged(&self) -> Vec<u64> {
        self.lagged
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}

/// A connection's side of the fan-out: its queue and its signal.
#[derive(Clone)]
pub struct ConnLink {
    pub conn: u64,
    pub outbox: Arc<Outbox>,
    pub signal: Arc<ConnSignal>,
}

/// What a subscription wants to see.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only these collections (all when None).
    pub collections: Option<HashSet<String>>,
    /// Also receive ephemeral events of the space.
    pub events: bool,
}

impl Filter {
    pub fn wants(&self, collection: &str) -> bool {
        self.collections
            .as_ref()
            .is_none_or(|c| c.contains(collection))
    }
}

struct Sub {
    id: u64,
    link: ConnLink,
    filter: Filter,
}

#[derive(Default)]
struct State {
    last_seq: u64,
    next_id: u64,
    spaces: HashMap<String, Vec<Sub>>,
    /// Every client connection by id, for the record of its own writes.
    conns: HashMap<u64, Arc<ConnSignal>>,
}

pub struct Hub {
    state: Mutex<State>,
    metrics: Arc<Metrics>,
    /// Relay-wide bound on the bytes of queued frames.
    budget: Arc<Budget>,
    /// The last committed seq, for replication senders waiting for news.
    commits: tokio::sync::watch::Sender<u64>,
}

impl Hub {
    pub fn new(metrics: Arc<Metrics>, last_seq: u64, max_queued_bytes: usize) -> Self {
        Hub {
            budget: Budget::new(max_queued_bytes),
            state: Mutex::new(State {
                last_seq,
                next_id: 1,
                spaces: HashMap::new(),
                conns: HashMap::new(),
            }),
            metrics,
            commits: tokio::sync::watch::Sender::new(last_seq),
        }
    }

    /// The relay-wide budget of queued frames (for the metrics gauge).
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Resolves each time something commits (see `Engine::watch_commits`).
    pub fn watch_commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.commits.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock would be a bug in fan-out; the
        // registry itself stays consistent, so keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_last_seq(&self, seq: u64) {
        self.lock().last_seq = seq;
        self.commits.send_replace(seq);
    }

    /// Highest seq already handed to fan-out.
    pub fn last_seq(&self) -> u64 {
        self.lock().last_seq
    }

    /// Register a live subscription; returns its id and the last committed
    /// seq at registration: live deliveries start right after it.
    pub fn register(&self, space: &str, link: ConnLink, filter: Filter) -> (u64, u64) {
        let mut st = self.lock();
        let id = st.next_id;
        st.next_id += 1;
        let last = st.last_seq;
        st.spaces
            .entry(space.to_string())
            .or_default()
            .push(Sub { id, link, filter });
        (id, last)
    }

    pub fn unregister(&self, space: &str, id: u64) {
        let mut st = self.lock();
        if let Some(subs) = st.spaces.get_mut(space) {
            subs.retain(|s| s.id != id);
            if subs.is_empty() {
                st.spaces.remove(space);
            }
        }
    }

    /// A client connection: fan-out records the seqs it writes (see
    /// [`ConnSignal::is_own`]) until `unregister_conn`.
    pub fn attach(&self, conn: u64, signal: Arc<ConnSignal>) {
        self.lock().conns.insert(conn, signal);
    }

    /// Remove every subscription of a connection (on disconnect).
    pub fn unregister_conn(&self, conn: u64) {
        let mut st = self.lock();
        st.conns.remove(&conn);
        st.spaces.retain(|_, subs| {
            subs.retain(|s| s.link.conn != conn);
            !subs.is_empty()
        });
    }

    /// Number of live subscriptions per space.
    pub fn subscriber_counts(&self) -> Vec<(String, usize)> {
        let st = self.lock();
        st.spaces
            .iter()
            .map(|(k, v)| (k.clone(), v.len()))
            .collect()
    }

    /// Fan an ephemeral event out; full queues drop the event (best effort),
    /// not the subscription.
    pub fn publish(&self, event: Arc<Event>) -> usize {
        let mut st = self.lock();
        let mut sent = 0;
        let bytes = json_bytes(&event.payload) + event.topic.len() + 256;
        let pressure = self.budget.would_exceed(bytes);
        let mut charge: Option<Arc<Charge>> = None;
        if let Some(subs) = st.spaces.get_mut(&event.space) {
            subs.retain(|s| {
                if !s.filter.events || Some(s.link.conn) == event.source {
                    return true;
                }
                if pressure && !s.link.outbox.is_empty() {
                    self.metrics.events_dropped.fetch_add(1, Relaxed);
                    return true;
                }
                let c = charge
                    .get_or_insert_with(|| Charge::new(&self.budget, bytes))
                    .clone();
                let d = Delivery::Event {
                    sub: s.id,
                    event: event.clone(),
                };
                match s.link.outbox.push(d, bytes, Some(c)) {
                    Pushed::Queued => {
                        sent += 1;
                        true
                    }
                    Pushed::Full => {
                        self.metrics.events_dropped.fetch_add(1, Relaxed);
                        true
                    }
                    Pushed::Closed => false,
                }
            });
        }
        self.metrics.deliveries.fetch_add(sent as u64, Relaxed);
        sent
    }
}

impl Sub {
    /// The subscription is dropped: its queued frames are freed and its
    /// connection resyncs it from the log.
    fn drop_lagged(&self, metrics: &Metrics) {
        self.link.outbox.purge(self.id);
        metrics.queue_drops.fetch_add(1, Relaxed);
        self.tell_lagged();
    }

    /// Tell the connection the subscription is gone (it resyncs it).
    fn tell_lagged(&self) {
        if let Ok(mut l) = self.link.signal.lagged.lock() {
            l.push(self.id);
        }
        self.link.signal.notify.notify_one();
    }
}

impl CommitSink for Hub {
    fn states_merged(&self, spaces: &[String]) {
        let mut st = self.lock();
        for space in spaces {
            if let Some(subs) = st.spaces.remove(space) {
                for s in subs {
                    s.link.outbox.purge(s.id);
                    s.tell_lagged();
                }
            }
        }
    }

    fn committed(&self, last_seq: u64, batch: Vec<Arc<crate::store::Committed>>) {
        let batch: Vec<Arc<Committed>> = batch.into_iter().map(Committed::from_store).collect();
        let mut st = self.lock();
        // Before the new seqs are visible to any catch-up (which reads up
        // to `last_seq`, under this lock).
        for item in &batch {
            if let Some(signal) = item.source.and_then(|c| st.conns.get(&c)) {
                signal.record_own(item.seq);
            }
        }
        st.last_seq = last_seq;
        // Never blocks: a watch only replaces its value.
        self.commits.send_replace(last_seq);
        let mut sent = 0u64;
        for (space, changes) in by_space(batch) {
            let Some(subs) = st.spaces.get_mut(&space) else {
                continue;
            };
            let bytes: usize = changes.iter().map(|c| change_bytes(c)).sum();
            // Over the relay-wide budget, only subscribers that are keeping
            // up (nothing queued) get more; the others resync from the log.
            let pressure = self.budget.would_exceed(bytes);
            // The group as most subscribers see it, shared by all of them
            // and charged once relay-wide.
            let all: Arc<[Arc<Committed>]> = changes.into();
            let mut charge: Option<Arc<Charge>> = None;
            subs.retain(|s| {
                let (mine, mine_bytes) = match &s.filter.collections {
                    None => (all.clone(), bytes),
                    Some(_) => {
                        let v: Vec<Arc<Committed>> = all
                            .iter()
                            .filter(|c| s.filter.wants(&c.entry.change.collection))
                            .cloned()
                            .collect();
                        let b = v.iter().map(|c| change_bytes(c)).sum();
                        (v.into(), b)
                    }
                };
                if mine.is_empty() {
                    return true;
                }
                if pressure && !s.link.outbox.is_empty() {
                    s.drop_lagged(&self.metrics);
                    return false;
                }
                let c = if mine.len() == all.len() {
                    charge
                        .get_or_insert_with(|| Charge::new(&self.budget, bytes))
                        .clone()
                } else {
                    Charge::new(&self.budget, mine_bytes)
                };
                let n = mine.len() as u64;
                match s.link.outbox.push_changes(s.id, mine, mine_bytes, Some(c)) {
                    Pushed::Queued => {
                        sent += n;
                        true
                    }
                    Pushed::Full => {
                        s.drop_lagged(&self.metrics);
                        false
                    }
                    Pushed::Closed => false,
                }
            });
            if subs.is_empty() {
                st.spaces.remove(&space);
            }
        }
        self.metrics.deliveries.fetch_add(sent, Relaxed);
    }
}

/// A commit group's changes split by space, each space's in seq order
/// (a group nearly always holds one space, or a few).
fn by_space(batch: Vec<Arc<Committed>>) -> Vec<(String, Vec<Arc<Committed>>)> {
    let mut out: Vec<(String, Vec<Arc<Committed>>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for c in batch {
        let space = &c.entry.change.space;
        match index.get(space) {
            Some(&i) => out[i].1.push(c),
            None => {
                index.insert(space.clone(), out.len());
                out.push((space.clone(), vec![c]));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Change, NodeId, Op, Stamp};
    use crate::store::LogEntry;

    fn change(seq: u64, pad: usize) -> Arc<crate::store::Committed> {
        Arc::new(crate::store::Committed {
            seq,
            entry: LogEntry {
                change: Change {
                    space: "s".into(),
                    collection: "c".into(),
                    id: format!("e{seq}"),
                    op: Op::Put,
                    fields: [("pad".to_string(), "x".repeat(pad).into())].into(),
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
                type_version: 0,
            },
            after: None,
            source: None,
        })
    }

    fn link(conn: u64, outbox: &Arc<Outbox>) -> ConnLink {
        ConnLink {
            conn,
            outbox: outbox.clone(),
            signal: Arc::new(ConnSignal::default()),
        }
    }

    #[test]
    fn over_the_relay_wide_budget_only_subscribers_behind_are_dropped() {
        // Each change is charged ~2 x 10 KB; the budget holds about two.
        let hub = Hub::new(Arc::new(Metrics::default()), 0, 45_000);
        let slow = Outbox::new(1024, usize::MAX);
        let fast = Outbox::new(1024, usize::MAX);
        let slow_link = link(1, &slow);
        hub.register("s", slow_link.clone(), Filter::default());
        hub.register("s", link(2, &fast), Filter::default());
        for seq in 1..=6 {
            hub.committed(seq, vec![change(seq, 10_000)]);
            // `fast` keeps up: it takes every change as it comes.
            assert!(fast.try_recv().is_some(), "fast got change {seq}");
        }
        assert_eq!(slow_link.signal.take_lagged(), vec![1], "slow resyncs");
        assert!(slow.is_empty(), "its queued frames were freed");
        assert_eq!(hub.budget().used(), 0, "nothing is charged any more");
        assert_eq!(hub.subscriber_counts(), vec![("s".to_string(), 1)]);
    }

    fn in_space(
        c: Arc<crate::store::Committed>,
        space: &str,
        collection: &str,
    ) -> Arc<crate::store::Committed> {
        let mut c = Arc::try_unwrap(c).ok().unwrap();
        c.entry.change.space = space.into();
        c.entry.change.collection = collection.into();
        Arc::new(c)
    }

    fn seqs(q: &Outbox) -> Vec<u64> {
        std::iter::from_fn(|| q.try_recv())
            .map(|d| match d {
                Delivery::Change { item, .. } => item.seq,
                Delivery::Event { .. } => 0,
            })
            .collect()
    }

    #[test]
    fn a_group_is_one_queue_entry_per_subscriber_split_by_space_and_filter() {
        let hub = Hub::new(Arc::new(Metrics::default()), 0, usize::MAX);
        let (all, only_b, other) = (
            Outbox::new(1024, usize::MAX),
            Outbox::new(1024, usize::MAX),
            Outbox::new(1024, usize::MAX),
        );
        hub.register("s", link(1, &all), Filter::default());
        let b_only = Filter {
            collections: Some(["b".to_string()].into()),
            events: false,
        };
        hub.register("s", link(2, &only_b), b_only);
        hub.register("t", link(3, &other), Filter::default());
        let group = vec![
            in_space(change(1, 10), "s", "a"),
            in_space(change(2, 10), "t", "a"),
            in_space(change(3, 10), "s", "b"),
            in_space(change(4, 10), "s", "a"),
        ];
        hub.committed(4, group);
        assert_eq!((all.len(), only_b.len(), other.len()), (3, 1, 1));
        assert_eq!(seqs(&all), vec![1, 3, 4], "in commit order");
        assert_eq!(seqs(&only_b), vec![3]);
        assert_eq!(seqs(&other), vec![2]);
        assert_eq!(hub.budget().used(), 0);
        assert_eq!(hub.last_seq(), 4);
    }

    #[test]
    fn a_queue_over_its_bytes_is_dropped_and_purged() {
        let hub = Hub::new(Arc::new(Metrics::default()), 0, usize::MAX);
        let q = Outbox::new(1024, 50_000);
        let l = link(1, &q);
        hub.register("s", l.clone(), Filter::default());
        for seq in 1..=3 {
            hub.committed(seq, vec![change(seq, 10_000)]);
        }
        assert_eq!(l.signal.take_lagged(), vec![1]);
        assert_eq!(q.bytes(), 0);
        assert_eq!(hub.budget().used(), 0);
    }
}
