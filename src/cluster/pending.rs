//! Changes read from the stream ahead of their predecessors. JetStream keeps
//! one publisher's messages in order, but a publish that failed (a leader
//! election) can be retried after later ones of the same origin were
//! stored. Such a change is a gap for the engine; it waits here until its
//! predecessor arrives, and the durable position stays below it, so a
//! restart reads it again. Bounded in count and bytes: past the bound the
//! oldest is dropped (counted; its origin resends through its own link or
//! a peer's snapshot). Pure.

use crate::model::Change;
use std::collections::VecDeque;

pub struct Pending {
    items: VecDeque<(u64, Change, usize)>,
    bytes: usize,
    max_items: usize,
    max_bytes: usize,
    /// Dropped past the bound, since start.
    pub dropped: u64,
}

impl Pending {
    pub fn new(max_items: usize, max_bytes: usize) -> Pending {
        Pending {
            items: VecDeque::new(),
            bytes: 0,
            max_items,
            max_bytes,
            dropped: 0,
        }
    }

    /// Keep `change` read at stream seq `at` (payload `size` bytes).
    pub fn push(&mut self, at: u64, change: Change, size: usize) {
        self.bytes += size;
        self.items.push_back((at, change, size));
        while self.items.len() > self.max_items || self.bytes > self.max_bytes {
            match self.items.pop_front() {
                Some((_, _, n)) => {
                    self.bytes -= n;
                    self.dropped += 1;
                }
                None => break,
            }
        }
    }

    /// Everything waiting, to retry in stream order; what still has a gap
    /// goes back with `push`.
    pub fn take(&mut self) -> Vec<(u64, Change, usize)> {
        self.bytes = 0;
        self.items.drain(..).collect()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The durable position after reading up to `read`: below the oldest
    /// change still waiting.
    pub fn position(&self, read: u64) -> u64 {
        self.items
            .iter()
            .map(|(at, _, _)| at.saturating_sub(1))
            .min()
            .map_or(read, |p| p.min(read))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NodeId, Op, Stamp};

    fn change(seq: u64) -> Change {
        Change {
            space: "s".into(),
            collection: "c".into(),
            id: seq.to_string(),
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
        }
    }

    #[test]
    fn position_stays_below_the_oldest_waiting() {
        let mut p = Pending::new(10, 1000);
        assert_eq!(p.position(50), 50);
        p.push(20, change(2), 10);
        p.push(30, change(3), 10);
        assert_eq!(p.position(50), 19);
        let back = p.take();
        assert_eq!(back.len(), 2);
        assert!(p.is_empty());
        assert_eq!(p.position(50), 50);
    }

    #[test]
    fn bounded_in_items_and_bytes() {
        let mut p = Pending::new(2, 1000);
        for i in 1..=3 {
            p.push(i, change(i), 10);
        }
        assert_eq!((p.len(), p.dropped), (2, 1));
        assert_eq!(p.position(9), 1);
        let mut p = Pending::new(100, 25);
        for i in 1..=3 {
            p.push(i, change(i), 10);
        }
        assert_eq!((p.len(), p.dropped), (2, 1));
    }
}
