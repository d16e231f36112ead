//! What to send a peer, decided from version vectors alone (no IO, no
//! clock): where in the local log to start, which log entries to skip, and
//! which sent batches are acknowledged.

use crate::model::{Change, NodeId, VersionVector};
use std::collections::{HashSet, VecDeque};

/// Origins the peer lacks changes of: (origin, first seq it lacks). The
/// peer's own changes are never sent back to it.
pub fn lacking(mine: &VersionVector, theirs: &VersionVector, peer: NodeId) -> Vec<(NodeId, u64)> {
    mine.iter()
        .filter(|(origin, _)| **origin != peer)
        .filter_map(|(origin, &have)| {
            let they = theirs.get(origin).copied().unwrap_or(0);
            (have > they).then_some((*origin, they + 1))
        })
        .collect()
}

/// Whether `mine` holds every change `target` counts, `except` an origin
/// (the local node: its own changes are its own). A pull-once session ends
/// when this holds for the peer's hello vector.
pub fn holds(mine: &VersionVector, target: &VersionVector, except: NodeId) -> bool {
    target
        .iter()
        .filter(|(origin, _)| **origin != except)
        .all(|(origin, &seq)| mine.get(origin).copied().unwrap_or(0) >= seq)
}

/// Where the stream to a peer starts.
#[derive(Debug, PartialEq, Eq)]
pub enum Start {
    /// Read the log after this local seq.
    After(u64),
    /// Changes the peer lacks are not in the log (trimmed by retention, or
    /// counted by a merged snapshot): it needs a state snapshot first (the
    /// origin named has such a change).
    Behind { origin: NodeId, seq: u64 },
}

/// The start position: just before the earliest local seq holding a change
/// the peer lacks, or `head` (the last seq read before the version vector)
/// when it lacks nothing. `locate` maps a change identity to its local seq.
///
/// `merged` (per origin, the highest seq a merged snapshot counted without
/// log entries) matters even when the first lacking change is in the log:
/// the log then holds that origin's changes before and after the merged
/// range but not the range, and the session would vouch for it (covers)
/// while the peer never got it.
pub fn start<E>(
    head: u64,
    lacking: &[(NodeId, u64)],
    merged: &VersionVector,
    mut locate: impl FnMut(NodeId, u64) -> Result<Option<u64>, E>,
) -> Result<Start, E> {
    let mut from = head;
    for &(origin, seq) in lacking {
        if merged.get(&origin).is_some_and(|&m| m >= seq) {
            return Ok(Start::Behind { origin, seq });
        }
        match locate(origin, seq)? {
            Some(local) => from = from.min(local.saturating_sub(1)),
            None => return Ok(Start::Behind { origin, seq }),
        }
    }
    Ok(Start::After(from))
}

/// Decides per log entry whether the peer gets it.
pub struct Filter {
    pub peer: NodeId,
    /// What the peer held when the session began: anything at or below is
    /// skipped. (It only grows, so skipping never loses a change; changes
    /// it got meanwhile from elsewhere arrive twice and are deduplicated.)
    pub peer_vv: VersionVector,
    /// Only these spaces (all when None).
    pub spaces: Option<HashSet<String>>,
}

impl Filter {
    pub fn wants(&self, c: &Change) -> bool {
        c.origin != self.peer
            && c.seq > self.peer_vv.get(&c.origin).copied().unwrap_or(0)
            && self.spaces.as_ref().is_none_or(|s| s.contains(&c.space))
    }
}

/// Sent batches awaiting their ack, oldest first.
#[derive(Default)]
pub struct InFlight {
    batches: VecDeque<(u64, u64)>,
    next_id: u64,
}

impl InFlight {
    pub fn len(&self) -> usize {
        self.batches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Register a batch covering the log up to `upto`; returns its id.
    pub fn push(&mut self, upto: u64) -> u64 {
        self.next_id += 1;
        self.batches.push_back((self.next_id, upto));
        self.next_id
    }

    /// Take back the batch just pushed (it was not sent), and its id:
    /// the ids a session sends are consecutive (the receiver checks).
    pub fn unpush(&mut self) {
        if self.batches.pop_back().is_some() {
            self.next_id -= 1;
        }
    }

    /// An ack: acks come in order, so it must be for the oldest batch.
    /// Returns the log position now fully acknowledged.
    pub fn ack(&mut self, id: u64) -> Result<u64, String> {
        match self.batches.front() {
            Some(&(front, upto)) if front == id => {
                self.batches.pop_front();
                Ok(upto)
            }
            Some(&(front, _)) => Err(format!("ack for batch {id}, expected {front}")),
            None => Err(format!("ack for batch {id} with none outstanding")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Op, Stamp};

    #[test]
    fn ids_stay_consecutive_when_a_batch_is_taken_back() {
        let mut f = InFlight::default();
        assert_eq!(f.push(10), 1);
        assert_eq!(f.push(20), 2);
        f.unpush();
        assert_eq!(f.push(15), 2, "the id of a batch never sent is used again");
        assert_eq!(f.ack(1), Ok(10));
        assert_eq!(f.ack(2), Ok(15));
    }

    fn n(x: u64) -> NodeId {
        NodeId(x)
    }

    #[test]
    fn lacking_skips_the_peer_and_what_it_has() {
        let mine = [(n(1), 5), (n(2), 3), (n(3), 7)].into();
        let theirs = [(n(1), 5), (n(2), 1)].into();
        assert_eq!(lacking(&mine, &theirs, n(3)), vec![(n(2), 2)]);
        assert_eq!(lacking(&mine, &theirs, n(9)), vec![(n(2), 2), (n(3), 1)]);
    }

    #[test]
    fn start_is_before_the_earliest_lacking_change() {
        let locate = |o: NodeId, s: u64| -> Result<Option<u64>, ()> {
            Ok(match (o.0, s) {
                (2, 2) => Some(40),
                (3, 1) => Some(12),
                _ => None,
            })
        };
        let none = VersionVector::new();
        assert_eq!(start(100, &[], &none, locate), Ok(Start::After(100)));
        assert_eq!(
            start(100, &[(n(2), 2), (n(3), 1)], &none, locate),
            Ok(Start::After(11))
        );
        assert_eq!(
            start(100, &[(n(2), 2), (n(4), 1)], &none, locate),
            Ok(Start::Behind {
                origin: n(4),
                seq: 1
            })
        );
        // Origin 2's seqs 3..=9 came in a merged snapshot: the log holds
        // seq 2 (and later ones) but not those, so the peer lacking seq 2
        // needs a snapshot. A peer that holds up to 9 does not.
        let merged = [(n(2), 9)].into();
        assert_eq!(
            start(100, &[(n(2), 2), (n(3), 1)], &merged, locate),
            Ok(Start::Behind {
                origin: n(2),
                seq: 2
            })
        );
        let locate_10 = |o: NodeId, s: u64| -> Result<Option<u64>, ()> {
            Ok((o.0 == 2 && s == 10).then_some(50))
        };
        assert_eq!(
            start(100, &[(n(2), 10)], &merged, locate_10),
            Ok(Start::After(49))
        );
    }

    #[test]
    fn filter_by_origin_vv_and_space() {
        let c = |origin: u64, seq: u64, space: &str| Change {
            space: space.into(),
            collection: "c".into(),
            id: "e".into(),
            op: Op::Put,
            fields: Default::default(),
            stamp: Stamp {
                ms: 1,
                counter: 0,
                node: n(origin),
            },
            origin: n(origin),
            seq,
            actor: "a".into(),
        };
        let mut f = Filter {
            peer: n(2),
            peer_vv: [(n(1), 4)].into(),
            spaces: None,
        };
        assert!(!f.wants(&c(2, 9, "s")), "its own change");
        assert!(!f.wants(&c(1, 4, "s")), "already held");
        assert!(f.wants(&c(1, 5, "s")));
        assert!(f.wants(&c(3, 1, "s")));
        f.spaces = Some(["s".to_string()].into());
        assert!(!f.wants(&c(3, 1, "other")));
    }

    #[test]
    fn holds_compares_every_origin_but_one() {
        let target: VersionVector = [(n(1), 4), (n(2), 7), (n(3), 2)].into();
        let mut mine: VersionVector = [(n(1), 4), (n(2), 9)].into();
        assert!(!holds(&mine, &target, n(9)), "origin 3 missing");
        assert!(holds(&mine, &target, n(3)), "origin 3 is the local node");
        mine.insert(n(3), 2);
        assert!(holds(&mine, &target, n(9)));
        mine.insert(n(1), 3);
        assert!(!holds(&mine, &target, n(9)), "origin 1 behind");
        assert!(holds(&mine, &VersionVector::new(), n(9)));
    }

    #[test]
    fn acks_are_in_order() {
        let mut w = InFlight::default();
        let a = w.push(10);
        let b = w.push(20);
        assert!(w.ack(b).is_err());
        assert_eq!(w.ack(a), Ok(10));
        assert_eq!(w.ack(b), Ok(20));
        assert!(w.ack(b).is_err());
        assert!(w.is_empty());
    }
}
