//! Changes read from the stream ahead of their predecessors. JetStream keeps
//! one publisher's messages in order, but a publish that failed (a leader
//! election) can be retried after later ones of the same origin were
//! stored. Such a change is a gap for the engine; it waits here until its
//! predecessor arrives, and the durable position stays below it, so a
//! restart reads it again. Bounded in count and bytes: past the bound the
//! oldest is dropped (counted; its origin resends through its own link or
//! a peer's snapshot). A read this relay's `spaces` skip waits here too
//! while it does not connect to what is held (see `read`). Pure.

use super::read::Read;
use std::collections::VecDeque;

pub struct Pending {
    items: VecDeque<Read>,
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

    /// Keep a read that has to wait.
    pub fn push(&mut self, r: Read) {
        self.bytes += r.size;
        self.items.push_back(r);
        while self.items.len() > self.max_items || self.bytes > self.max_bytes {
            match self.items.pop_front() {
                Some(r) => {
                    self.bytes -= r.size;
                    self.dropped += 1;
                }
                None => break,
            }
        }
    }

    /// Everything waiting, to retry in stream order; what still has a gap
    /// goes back with `push`.
    pub fn take(&mut self) -> Vec<Read> {
        self.bytes = 0;
        let mut v: Vec<Read> = self.items.drain(..).collect();
        v.sort_by_key(|r| r.at);
        v
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
            .map(|r| r.at.saturating_sub(1))
            .min()
            .map_or(read, |p| p.min(read))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Change, NodeId, Op, Stamp};

    fn read(at: u64, size: usize) -> Read {
        let seq = at;
        let change = Change {
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
        };
        Read {
            at,
            origin: NodeId(1),
            seq,
            change: Some(change),
            after: None,
            size,
        }
    }

    #[test]
    fn position_stays_below_the_oldest_waiting() {
        let mut p = Pending::new(10, 1000);
        assert_eq!(p.position(50), 50);
        p.push(read(20, 10));
        p.push(read(30, 10));
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
            p.push(read(i, 10));
        }
        assert_eq!((p.len(), p.dropped), (2, 1));
        assert_eq!(p.position(9), 1);
        let mut p = Pending::new(100, 25);
        for i in 1..=3 {
            p.push(read(i, 10));
        }
        assert_eq!((p.len(), p.dropped), (2, 1));
    }
}
