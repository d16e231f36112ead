//! How a change travels in the stream: subject, message id, headers and
//! payload. Pure functions.

use crate::model::{Change, NodeId};

/// Header naming the relay that published a message: a member skips its
/// own messages (they came from its log).
pub const PUBLISHER_HEADER: &str = "Outpost-Publisher";

/// Header `<seq>` on a change of origin O: the publisher's log holds no
/// change of O numbered between `<seq>` and this one that belongs in the
/// stream; those numbers were filtered out on its route (a space filter),
/// so a reader may cover them (`read`). Absent when there is no such hole,
/// or when the publisher cannot tell (its log was trimmed).
pub const AFTER_HEADER: &str = "Outpost-After";

/// `<prefix>.<space>`, with the space escaped into one subject token: bytes
/// outside `[A-Za-z0-9_-]` become `~XX` (hex), so `.`, `*`, `>` and spaces
/// cannot split or widen the subject. The payload carries the real name.
pub fn subject(prefix: &str, space: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + 1 + space.len());
    s.push_str(prefix);
    s.push('.');
    for b in space.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            s.push(b as char);
        } else {
            s.push_str(&format!("~{b:02X}"));
        }
    }
    s
}

/// The filter for every space (`<prefix>.>`), or for a single one.
pub fn filter(prefix: &str, only: Option<&str>) -> String {
    match only {
        Some(space) => subject(prefix, space),
        None => format!("{prefix}.>"),
    }
}

/// `Nats-Msg-Id`: the change's identity, `<origin hex>-<origin seq>`.
pub fn msg_id(origin: NodeId, seq: u64) -> String {
    format!("{origin}-{seq}")
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("payload is not a change: {0}")]
    Decode(String),
    #[error("encoding a change: {0}")]
    Encode(String),
}

/// MessagePack, as the replication protocol sends changes.
pub fn encode(c: &Change) -> Result<Vec<u8>, WireError> {
    rmp_serde::to_vec_named(c).map_err(|e| WireError::Encode(e.to_string()))
}

pub fn decode(b: &[u8]) -> Result<Change, WireError> {
    rmp_serde::from_slice(b).map_err(|e| WireError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Op, Stamp};

    #[test]
    fn subjects_are_one_token_per_space() {
        assert_eq!(subject("outpost", "home"), "outpost.home");
        assert_eq!(subject("a.b", "x.y *>"), "a.b.x~2Ey~20~2A~3E");
        assert_eq!(subject("p", "é"), "p.~C3~A9");
        assert_eq!(filter("p", None), "p.>");
        assert_eq!(filter("p", Some("a.b")), "p.a~2Eb");
    }

    #[test]
    fn msg_id_is_the_identity() {
        assert_eq!(msg_id(NodeId(0xab), 7), "00000000000000ab-7");
    }

    #[test]
    fn payload_round_trips_and_garbage_is_refused() {
        let c = Change {
            space: "s".into(),
            collection: "c".into(),
            id: "i".into(),
            op: Op::Patch,
            fields: [("f".to_string(), serde_json::json!({"x": [1, 2]}))].into(),
            stamp: Stamp {
                ms: 5,
                counter: 1,
                node: NodeId(3),
            },
            origin: NodeId(3),
            seq: 9,
            actor: "a".into(),
        };
        assert_eq!(decode(&encode(&c).unwrap()).unwrap(), c);
        assert!(decode(b"\xc1garbage").is_err());
    }
}
