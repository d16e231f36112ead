//! Property tests of the merge model: whatever the order and however often
//! changes arrive, replicas end in byte-identical states, and the state
//! join used for snapshots is a proper CRDT merge.

use outpost::model::{Change, EntityState, NodeId, Op, Stamp};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// One entity's random history. Each change gets a unique identity and a
/// unique stamp (the counter is its index), as real relays guarantee.
fn history() -> impl Strategy<Value = Vec<Change>> {
    let one = (
        0u8..3,                                                  // op
        0u64..50, // wall ms: small, so ties are common
        1u64..4,  // node
        proptest::collection::btree_map("[a-d]", value(), 0..4), // fields
    );
    proptest::collection::vec(one, 1..24).prop_map(|raw| {
        let mut seqs: BTreeMap<u64, u64> = BTreeMap::new();
        raw.into_iter()
            .enumerate()
            .map(|(i, (op, ms, node, fields))| {
                let seq = seqs.entry(node).or_insert(0);
                *seq += 1;
                Change {
                    space: "s".into(),
                    collection: "c".into(),
                    id: "e".into(),
                    op: [Op::Put, Op::Patch, Op::Delete][op as usize],
                    fields: if op == 2 { BTreeMap::new() } else { fields },
                    stamp: Stamp {
                        ms,
                        counter: i as u32,
                        node: NodeId(node),
                    },
                    origin: NodeId(node),
                    seq: *seq,
                    actor: "p".into(),
                }
            })
            .collect()
    })
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<i32>().prop_map(|n| json!(n)),
        "[a-z]{0,3}".prop_map(|s| json!(s)),
    ]
}

fn apply_all<'a>(changes: impl IntoIterator<Item = &'a Change>) -> EntityState {
    let mut s = EntityState::default();
    for c in changes {
        s.apply(c);
    }
    s
}

/// The changes whose part number is `k`.
fn pick<'a>(changes: &'a [Change], part: &'a [u8], k: u8) -> impl Iterator<Item = &'a Change> {
    changes
        .iter()
        .enumerate()
        .filter(move |(i, _)| part[*i] == k)
        .map(|(_, c)| c)
}

fn bytes(s: &EntityState) -> Vec<u8> {
    rmp_serde::to_vec(s).expect("serialize")
}

/// The changes in a shuffled order, with some delivered more than once.
fn delivery(changes: &[Change], order: &[usize], dups: &[usize]) -> Vec<Change> {
    let mut out: Vec<Change> = Vec::new();
    for (k, &i) in order.iter().enumerate() {
        let c = &changes[i % changes.len()];
        out.push(c.clone());
        if dups.contains(&k) {
            out.push(c.clone());
        }
    }
    // Every change at least once, whatever the random order picked.
    out.extend(changes.iter().cloned());
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_order_and_duplicates_give_identical_bytes(
        changes in history(),
        order in proptest::collection::vec(0usize..64, 0..48),
        dups in proptest::collection::vec(0usize..48, 0..8),
        seed in any::<u64>(),
    ) {
        let reference = bytes(&apply_all(&changes));
        let mut shuffled = delivery(&changes, &order, &dups);
        // A deterministic Fisher-Yates from the seed.
        let mut x = seed | 1;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        prop_assert_eq!(bytes(&apply_all(&shuffled)), reference);
    }

    #[test]
    fn merge_is_idempotent(changes in history()) {
        let a = apply_all(&changes);
        let mut m = a.clone();
        m.merge(&a);
        prop_assert_eq!(bytes(&m), bytes(&a));
    }

    // Replicas are built from parts of ONE history: two changes with the
    // same identity always have the same content, as relays guarantee.
    #[test]
    fn merge_is_commutative(
        changes in history(),
        part in proptest::collection::vec(0u8..2, 24),
    ) {
        let (sa, sb) = (
            apply_all(pick(&changes, &part, 0)),
            apply_all(pick(&changes, &part, 1)),
        );
        let mut ab = sa.clone();
        ab.merge(&sb);
        let mut ba = sb.clone();
        ba.merge(&sa);
        prop_assert_eq!(bytes(&ab), bytes(&ba));
    }

    #[test]
    fn merge_is_associative(
        changes in history(),
        part in proptest::collection::vec(0u8..3, 24),
    ) {
        let (sa, sb, sc) = (
            apply_all(pick(&changes, &part, 0)),
            apply_all(pick(&changes, &part, 1)),
            apply_all(pick(&changes, &part, 2)),
        );
        let mut left = sa.clone();
        left.merge(&sb);
        left.merge(&sc);
        let mut bc = sb.clone();
        bc.merge(&sc);
        let mut right = sa.clone();
        right.merge(&bc);
        prop_assert_eq!(bytes(&left), bytes(&right));
    }

    /// Merging two replicas that each saw part of the history gives the
    /// state of a replica that saw all of it: snapshots and change streams agree.
    #[test]
    fn merge_of_partial_replicas_equals_full_history(
        changes in history(),
        split in proptest::collection::vec(any::<bool>(), 24),
    ) {
        let (left, right): (Vec<_>, Vec<_>) =
            changes.iter().enumerate().partition(|(i, _)| split[*i]);
        let mut merged = apply_all(left.into_iter().map(|(_, c)| c));
        merged.merge(&apply_all(right.into_iter().map(|(_, c)| c)));
        prop_assert_eq!(bytes(&merged), bytes(&apply_all(&changes)));
    }

    /// A write that loses is reported as a conflict, never silently taken.
    #[test]
    fn a_losing_field_write_is_reported(changes in history()) {
        let mut s = apply_all(&changes);
        let newest = changes.iter().max_by_key(|c| c.key()).unwrap();
        if newest.op != Op::Delete {
            if let Some(name) = newest.fields.keys().next() {
                let mut old = newest.clone();
                old.stamp.ms = 0;
                old.stamp.counter = 0;
                old.stamp.node = NodeId(0);
                old.origin = NodeId(9);
                old.seq = 1;
                old.op = Op::Patch;
                old.fields = [(name.clone(), json!("stale"))].into();
                let before = bytes(&s);
                let conflicts = s.apply(&old);
                prop_assert_eq!(conflicts.len(), 1);
                prop_assert_eq!(&conflicts[0].field, name);
                prop_assert_eq!(bytes(&s), before);
            }
        }
    }
}
