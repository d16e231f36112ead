//! Values a pure dialect's table test feeds in where a real relay would
//! have read or written the store: committed changes, stored entities,
//! write outcomes, grants. Built by hand, no engine behind them.

use super::SECRET;
use crate::auth::{Auth, Grant, Scope};
use crate::config::Anonymous;
use crate::engine::Committed;
use crate::model::{Change, EntityState, NodeId, Op, Stamp};
use crate::store::{After, LogEntry, Outcome, OutcomeKind, StoredEntity};
use serde_json::Value;
use std::collections::BTreeMap;

/// The node every fake change and outcome comes from.
pub const NODE: NodeId = NodeId(7);

/// Auth with [`SECRET`]; anonymous clients may write.
pub fn auth() -> Auth {
    Auth::new(Some(SECRET), Anonymous::Write)
}

/// The grant of an anonymous client.
pub fn anonymous() -> Grant {
    auth().admit(None, crate::auth::now_s()).unwrap()
}

/// The grant a token of `scope` for `sub` gives.
pub fn grant(sub: &str, scope: Scope) -> Grant {
    let a = auth();
    let now = crate::auth::now_s();
    let token = a.mint(sub, scope, None, 3600, now).unwrap();
    a.admit(Some(&token), now).unwrap()
}

/// A token of `scope` for `sub`.
pub fn token(sub: &str, scope: Scope) -> String {
    auth()
        .mint(sub, scope, None, 3600, crate::auth::now_s())
        .unwrap()
}

fn object(fields: Value) -> BTreeMap<String, Value> {
    match fields {
        Value::Object(m) => m.into_iter().collect(),
        Value::Null => BTreeMap::new(),
        other => panic!("fields are an object, not {other}"),
    }
}

/// A change of `space/collection/id` setting `fields`, the `seq`th of its
/// origin.
pub fn change(space: &str, collection: &str, id: &str, op: Op, fields: Value, seq: u64) -> Change {
    Change {
        space: space.into(),
        collection: collection.into(),
        id: id.into(),
        op,
        fields: object(fields),
        stamp: Stamp {
            ms: 1_000 + seq,
            counter: 0,
            node: NODE,
        },
        origin: NODE,
        seq,
        actor: "other".into(),
    }
}

/// An entity as stored after `changes` (in order).
pub fn entity(changes: &[Change]) -> StoredEntity {
    let mut state = EntityState::default();
    for c in changes {
        state.apply(c);
    }
    StoredEntity {
        state,
        version: changes.len() as u64,
        seq: changes.last().map_or(0, |c| c.seq),
        type_version: changes.len() as u64,
    }
}

/// The log entry of `c` stored as the entity's `version`.
pub fn entry(c: Change, version: u64) -> LogEntry {
    LogEntry {
        at_ms: c.stamp.ms,
        version,
        created: version == 1,
        type_version: version,
        change: c,
    }
}

/// `c` committed at local seq `c.seq` as version `version`; `after` the
/// entity after it (live fan-out has it, a replay from the log does not).
pub fn committed(c: Change, version: u64, after: Option<&StoredEntity>) -> Committed {
    Committed::new(crate::store::Committed {
        seq: c.seq,
        entry: entry(c, version),
        after: after.map(|e| After::new(e.state.clone())),
        source: None,
    })
}

/// The outcome of a write applied at `seq` as the entity's `version`.
pub fn applied(seq: u64, version: u64) -> Outcome {
    Outcome {
        kind: OutcomeKind::Applied,
        seq,
        origin: NODE,
        origin_seq: seq,
        stamp: Stamp {
            ms: 1_000 + seq,
            counter: 0,
            node: NODE,
        },
        version,
        conflicts: Vec::new(),
        created: version == 1,
        type_version: version,
    }
}

/// The outcome of a write whose write id was seen before.
pub fn duplicate(seq: u64, version: u64) -> Outcome {
    Outcome {
        kind: OutcomeKind::Duplicate,
        ..applied(seq, version)
    }
}

/// The outcome of a write applied at `seq` whose value for `field`
/// (`attempted`) lost to the stored `current`.
pub fn lost(seq: u64, version: u64, field: &str, attempted: Value, current: Value) -> Outcome {
    Outcome {
        conflicts: vec![crate::model::Conflict {
            field: field.into(),
            attempted,
            current,
            current_stamp: Stamp {
                ms: 1_000,
                counter: 0,
                node: NODE,
            },
        }],
        ..applied(seq, version)
    }
}
