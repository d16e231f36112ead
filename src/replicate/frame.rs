//! Replication frames: the messages two relays exchange, whatever carries
//! them (QUIC streams between mesh peers, WebSocket binary messages to an
//! upstream hub). MessagePack with named fields, so later versions can add
//! fields without breaking older peers.

use crate::model::{Change, NodeId, VersionVector};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Bumped on incompatible changes; a peer with another version is refused.
pub const PROTO_VERSION: u32 = 1;

/// Largest encoded frame accepted or produced.
pub const MAX_FRAME_BYTES: usize = 8 << 20;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Frame {
    /// Mesh membership: an HMAC proving knowledge of the mesh secret, bound
    /// to this TLS session (see `mesh::auth`). First frame on the mesh, so
    /// it carries the protocol version too.
    Proof { proto: u32, proof: Vec<u8> },
    /// First replication frame each way: who I am and what I hold.
    Hello {
        proto: u32,
        node: NodeId,
        vv: VersionVector,
        software: String,
    },
    /// Changes the receiver lacks, per origin in origin-seq order.
    /// `covers` is the filtering contract: for each `(origin, from, to)`,
    /// every change of `origin` numbered `from..=to` that the sender holds
    /// and the link carries is in this batch or an earlier one of the
    /// session; the others were filtered out by a space filter (the
    /// sender's, or one on the route it got them by), so the receiver's
    /// version vector advances over them. Empty from older relays, whose
    /// batches are contiguous per origin.
    Batch {
        id: u64,
        changes: Vec<Change>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        covers: Vec<Cover>,
    },
    /// The batch `id` is durably committed by the receiver.
    Ack { id: u64 },
    /// Entity states, for a peer lacking changes this relay's retention
    /// trimmed. Acked like a batch.
    Snapshot {
        id: u64,
        entities: Vec<crate::store::SnapEntity>,
    },
    /// End of a snapshot: it covers every change up to `vv`. Acked.
    SnapshotDone { id: u64, vv: VersionVector },
    /// An ephemeral event, forwarded best effort.
    Event {
        origin: NodeId,
        eid: u64,
        hops: u8,
        space: String,
        topic: String,
        payload: Value,
        actor: String,
    },
    /// The sender is closing the session, and why.
    Bye { reason: String },
}

/// `(origin, from, to)`: see [`Frame::Batch`].
pub type Cover = (NodeId, u64, u64);

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("encoding a frame failed: {0}")]
    Encode(String),
}

pub fn encode(frame: &Frame) -> Result<Vec<u8>, FrameError> {
    let bytes = rmp_serde::to_vec_named(frame).map_err(|e| FrameError::Encode(e.to_string()))?;
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

pub fn decode(bytes: &[u8]) -> Result<Frame, FrameError> {
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(bytes.len()));
    }
    rmp_serde::from_slice(bytes).map_err(|e| FrameError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Op, Stamp};
    use serde_json::json;

    #[test]
    fn frames_round_trip() {
        let change = Change {
            space: "home".into(),
            collection: "notes".into(),
            id: "n1".into(),
            op: Op::Patch,
            fields: [("title".to_string(), json!({"a": [1, null, "x"]}))].into(),
            stamp: Stamp {
                ms: 5,
                counter: 1,
                node: NodeId(9),
            },
            origin: NodeId(9),
            seq: 3,
            actor: "t".into(),
        };
        let frames = [
            Frame::Proof {
                proto: PROTO_VERSION,
                proof: vec![1, 2, 3],
            },
            Frame::Hello {
                proto: PROTO_VERSION,
                node: NodeId(7),
                vv: [(NodeId(9), 3)].into(),
                software: "outpost".into(),
            },
            Frame::Batch {
                id: 1,
                changes: vec![change.clone()],
                covers: vec![],
            },
            Frame::Batch {
                id: 2,
                changes: vec![change],
                covers: vec![(NodeId(9), 2, 7)],
            },
            Frame::Ack { id: 1 },
            Frame::Event {
                origin: NodeId(7),
                eid: 4,
                hops: 2,
                space: "s".into(),
                topic: "t".into(),
                payload: json!({"x": 1.5}),
                actor: "a".into(),
            },
            Frame::Bye {
                reason: "bye".into(),
            },
        ];
        for f in frames {
            assert_eq!(decode(&encode(&f).unwrap()).unwrap(), f);
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [&b""[..], b"\xff\xff", b"\x81\xa5hello\xc0", &[0x93; 64]] {
            assert!(matches!(decode(bytes), Err(FrameError::Malformed(_))));
        }
        assert!(matches!(
            decode(&vec![0; MAX_FRAME_BYTES + 1]),
            Err(FrameError::TooLarge(_))
        ));
    }
}
