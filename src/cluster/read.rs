//! What the consumer does with a batch read from the stream: which changes
//! go to the engine, which `covers` go with them, and which reads wait.
//! Pure (no IO, no clocks).
//!
//! The contract is the replication protocol's (`replicate::frame::Frame::
//! Batch` covers, `store::writer` `Job::Remote`): a cover `(origin, from,
//! to)` vouches that every change of `origin` numbered `from..=to` that is
//! not in the batch was filtered out on purpose, so the version vector
//! advances over it. A reader with `spaces` skips other spaces' changes;
//! without covers, an origin's next kept change after a skipped one would
//! be a gap forever. A cover is built only over seqs this batch proves:
//! every seq from the held one up is a kept change of the batch or a read
//! this reader skipped, so a change still to come (a publish retried after
//! later ones were stored) is never vouched for. A skipped read that does
//! not connect to what is held yet waits, like a gapped change.
//!
//! A publisher's log can lack some of an origin's seqs too (it got them
//! through a space filter, or filtered them itself, as an edge with
//! `spaces` does): it vouches for those in the message of the origin's next
//! change (`after`), and the range counts as proven.

use crate::model::{Change, NodeId};
use std::collections::{BTreeMap, HashMap};

/// One stream message, as the consumer read it.
#[derive(Clone, Debug)]
pub struct Read {
    /// Stream seq.
    pub at: u64,
    pub origin: NodeId,
    pub seq: u64,
    /// The change, or None when this reader's `spaces` skip it.
    pub change: Option<Change>,
    /// The publisher vouches that the origin's changes numbered after this
    /// and before `seq` are not in the stream by its route: they were
    /// filtered out (`wire::AFTER_HEADER`).
    pub after: Option<u64>,
    /// Payload bytes (for the bound of the waiting buffer).
    pub size: usize,
}

/// `(origin, from, to)`, as in `replicate::frame::Cover`.
pub type Cover = (NodeId, u64, u64);

#[derive(Debug, Default)]
pub struct Plan {
    /// Kept changes for the engine: stream order, except that each
    /// origin's changes are in origin-seq order (a covered later change
    /// applied first would make its predecessor a duplicate).
    pub apply: Vec<Read>,
    pub covers: Vec<Cover>,
    /// Skipped reads the covers vouch for: done, unless the engine refuses
    /// the cover of their origin (then they wait again).
    pub covered: Vec<Read>,
    /// Skipped reads that do not connect to what is held yet.
    pub waiting: Vec<Read>,
}

/// Plan a batch in stream order; `held` answers the engine's version
/// vector entry of an origin (asked only for origins with skipped reads;
/// it may be stale low, never high: the vector only grows).
pub fn plan(reads: Vec<Read>, mut held: impl FnMut(NodeId) -> u64) -> Plan {
    // Per origin that needs covers, the seq ranges the batch proves.
    let mut ranges: BTreeMap<NodeId, Vec<(u64, u64)>> = BTreeMap::new();
    for r in reads
        .iter()
        .filter(|r| r.change.is_none() || r.after.is_some())
    {
        ranges.entry(r.origin).or_default();
    }
    for r in &reads {
        if let Some(v) = ranges.get_mut(&r.origin) {
            let from = r.after.filter(|&a| a < r.seq).map_or(r.seq, |a| a + 1);
            v.push((from, r.seq));
        }
    }
    let mut reach: HashMap<NodeId, u64> = HashMap::new();
    let mut out = Plan::default();
    for (origin, mut v) in ranges {
        let h = held(origin);
        v.sort_unstable();
        let mut cur = h;
        for (from, to) in v {
            if from > cur + 1 {
                break;
            }
            cur = cur.max(to);
        }
        if cur > h {
            out.covers.push((origin, h + 1, cur));
        }
        reach.insert(origin, cur);
    }
    for r in reads {
        if r.change.is_some() {
            out.apply.push(r);
        } else if reach.get(&r.origin).is_some_and(|&to| r.seq <= to) {
            out.covered.push(r);
        } else {
            out.waiting.push(r);
        }
    }
    origin_order(&mut out.apply);
    out
}

/// Sort each origin's reads by origin seq in place, leaving the slots of
/// the origins where they were (stream order across origins).
fn origin_order(reads: &mut [Read]) {
    let mut slots: HashMap<NodeId, Vec<usize>> = HashMap::new();
    for (i, r) in reads.iter().enumerate() {
        slots.entry(r.origin).or_default().push(i);
    }
    for idx in slots.into_values() {
        if idx.windows(2).all(|w| reads[w[0]].seq <= reads[w[1]].seq) {
            continue;
        }
        let mut group: Vec<Read> = idx.iter().map(|&i| reads[i].clone()).collect();
        group.sort_by_key(|r| r.seq);
        for (i, r) in idx.into_iter().zip(group) {
            reads[i] = r;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Op, Stamp};

    const A: NodeId = NodeId(0xa);
    const B: NodeId = NodeId(0xb);

    fn kept(at: u64, origin: NodeId, seq: u64) -> Read {
        Read {
            at,
            origin,
            seq,
            change: Some(Change {
                space: "kept".into(),
                collection: "c".into(),
                id: format!("{at}"),
                op: Op::Put,
                fields: Default::default(),
                stamp: Stamp {
                    ms: at,
                    counter: 0,
                    node: origin,
                },
                origin,
                seq,
                actor: String::new(),
            }),
            after: None,
            size: 10,
        }
    }

    fn skipped(at: u64, origin: NodeId, seq: u64) -> Read {
        Read {
            at,
            origin,
            seq,
            change: None,
            after: None,
            size: 10,
        }
    }

    fn ats(v: &[Read]) -> Vec<u64> {
        v.iter().map(|r| r.at).collect()
    }

    #[test]
    fn only_kept_changes_need_no_cover_and_no_vector() {
        let p = plan(vec![kept(1, A, 1), kept(2, A, 2)], |_| panic!("not asked"));
        assert!(p.covers.is_empty());
        assert_eq!(ats(&p.apply), [1, 2]);
    }

    #[test]
    fn skips_between_kept_changes_are_covered() {
        // A holds 3 here; the batch reads A:4 (skipped), A:5 (kept), A:6
        // (skipped), and B:1 kept.
        let p = plan(
            vec![
                skipped(10, A, 4),
                kept(11, A, 5),
                kept(12, B, 1),
                skipped(13, A, 6),
            ],
            |o| if o == A { 3 } else { 0 },
        );
        assert_eq!(p.covers, [(A, 4, 6)]);
        assert_eq!(ats(&p.apply), [11, 12]);
        assert_eq!(ats(&p.covered), [10, 13]);
        assert!(p.waiting.is_empty());
    }

    #[test]
    fn a_missing_predecessor_is_never_vouched_for() {
        // A:5 is still to come (its publish was retried): the cover stops at
        // 4, A:6 and A:7 wait or gap, nothing past the hole is claimed.
        let p = plan(
            vec![skipped(1, A, 4), kept(2, A, 6), skipped(3, A, 7)],
            |_| 3,
        );
        assert_eq!(p.covers, [(A, 4, 4)]);
        assert_eq!(ats(&p.apply), [2]);
        assert_eq!(ats(&p.covered), [1]);
        assert_eq!(ats(&p.waiting), [3]);
        // The predecessor arrives; what waited connects.
        let p = plan(vec![skipped(3, A, 7), kept(9, A, 5), kept(2, A, 6)], |_| 4);
        assert_eq!(p.covers, [(A, 5, 7)]);
        assert_eq!(ats(&p.apply), [9, 2]);
        assert_eq!(ats(&p.covered), [3]);
    }

    #[test]
    fn held_and_duplicate_skips_are_done() {
        let p = plan(vec![skipped(1, A, 2), skipped(2, A, 2)], |_| 5);
        assert!(p.covers.is_empty());
        assert_eq!(ats(&p.covered), [1, 2]);
    }

    #[test]
    fn each_origin_is_applied_in_seq_order() {
        let p = plan(
            vec![kept(1, A, 3), kept(2, B, 1), kept(3, A, 2), kept(4, B, 2)],
            |_| 0,
        );
        let order: Vec<(NodeId, u64)> = p.apply.iter().map(|r| (r.origin, r.seq)).collect();
        assert_eq!(order, [(A, 2), (B, 1), (A, 3), (B, 2)]);
    }

    #[test]
    fn a_publisher_vouches_for_what_its_log_lacks() {
        // A's change 7 says 4..=6 were filtered on its publisher's route;
        // A:9 says 8 was; A:12 says 10 and 11 were.
        let mut r7 = kept(1, A, 7);
        r7.after = Some(3);
        let mut r9 = kept(2, A, 9);
        r9.after = Some(7);
        let mut r12 = kept(3, A, 12);
        r12.after = Some(9);
        let p = plan(vec![r7, r9, r12], |_| 3);
        assert_eq!(p.covers, [(A, 4, 12)]);
        // Held only up to 2: 3 is missing, nothing is covered.
        let mut r7 = kept(1, A, 7);
        r7.after = Some(3);
        let p = plan(vec![r7], |_| 2);
        assert!(p.covers.is_empty());
        assert_eq!(ats(&p.apply), [1]);
        // A vouch that starts after the seq is ignored (garbage).
        let mut r = skipped(1, A, 4);
        r.after = Some(9);
        let p = plan(vec![r], |_| 3);
        assert_eq!(p.covers, [(A, 4, 4)]);
    }
}
