//! A connection's outbound queue, bounded in items and in bytes, plus the
//! relay-wide budget that all queued frames share.
//!
//! Fan-out (on the writer thread) pushes into it without blocking; the
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

struct Entry {
    delivery: Delivery,
    bytes: usize,
    _charge: Option<Arc<Charge>>,
}

#[derive(Default)]
struct State {
    items: VecDeque<Entry>,
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
        let mut st = self.lock();
        if st.closed {
            return Pushed::Closed;
        }
        let over_bytes = !st.items.is_empty() && st.bytes.saturating_add(bytes) > self.max_bytes;
        if st.items.len() >= self.max_items || over_bytes {
            return Pushed::Full;
        }
        st.bytes += bytes;
        st.items.push_back(Entry {
            delivery: d,
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

    fn pop(st: &mut State) -> Option<Delivery> {
        let e = st.items.pop_front()?;
        st.bytes -= e.bytes;
        // The relay-wide charge goes with `e` here: from now on the item is
        // the connection's frame in progress, bounded by its send batch.
        Some(e.delivery)
    }

    /// Drop every queued item of subscription `sub` (dropped for lagging):
    /// its frames are freed now, whether or not the client ever reads.
    /// Returns the bytes freed.
    pub fn purge(&self, sub: u64) -> usize {
        let mut st = self.lock();
        let before = st.bytes;
        let mut freed = 0;
        st.items.retain(|e| {
            let keep = match &e.delivery {
                Delivery::Change { sub: s, .. } | Delivery::Event { sub: s, .. } => *s != sub,
            };
            if !keep {
                freed += e.bytes;
            }
            keep
        });
        st.bytes = before - freed;
        freed
    }

    /// The connection is gone: refuse further pushes, free what is queued.
    pub fn close(&self) {
        let items = {
            let mut st = self.lock();
            st.closed = true;
            st.bytes = 0;
            std::mem::take(&mut st.items)
        };
        drop(items);
        self.ready.notify_one();
    }

    /// Bytes queued now.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    pub fn is_empty(&self) -> bool {
        self.lock().items.is_empty()
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
        .map(|a| {
            a.fields
                .iter()
                .map(|(k, v)| k.len() + json_bytes(v) + 8)
                .sum()
        })
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
