//! redb table definitions and the MessagePack codec for stored values.
//!
//! Stored structs are encoded positionally (rmp-serde arrays); any change to
//! their shape bumps `SCHEMA_VERSION` so an old binary refuses a newer file.

use super::StoreError;
use redb::TableDefinition;
use serde::{de::DeserializeOwned, Serialize};

/// Bump when a table or stored struct changes shape.
///
/// 2: per-type versions (`TYPE_VERSIONS`, `TYPE_INDEX`, the trailing
/// `type_version` of `StoredEntity` and `LogEntry`). A version-1 file is
/// migrated when opened (`super::migrate_type_versions`).
pub const SCHEMA_VERSION: u32 = 2;

/// Small typed values: schema version, node id, clock, counters.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// The change log, keyed by local seq. It is also the outbound queue: every
/// destination keeps a cursor into it instead of a copy.
pub const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// (origin node, origin seq) -> local seq: the change identity index.
pub const IDENT: TableDefinition<(u64, u64), u64> = TableDefinition::new("ident");
/// origin node -> highest contiguous origin seq held.
pub const VV: TableDefinition<u64, u64> = TableDefinition::new("version_vector");
/// (space, collection, id) -> merged entity state.
pub const ENTITY: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("entity");
/// (space, local seq): the per-space index into the log for catch-up.
pub const SPACE_LOG: TableDefinition<(&str, u64), ()> = TableDefinition::new("space_log");
/// space -> number of changes ever applied in it.
pub const SPACES: TableDefinition<&str, u64> = TableDefinition::new("spaces");
/// destination name -> local seq it has durably acked (peers, upstream).
pub const CURSORS: TableDefinition<&str, u64> = TableDefinition::new("cursors");
/// (space, client write id) -> local seq of the change it was applied as:
/// a client that replays an unacknowledged write (native `push` with `wid`)
/// gets the first result back instead of a second change. Entries go with
/// their log entry when retention trims it.
pub const WRITE_IDS: TableDefinition<(&str, &str), u64> = TableDefinition::new("write_ids");
/// local seq -> (space, client write id): lets a trim find the
/// `WRITE_IDS` entry of each log entry it removes.
pub const WRITE_ID_SEQS: TableDefinition<u64, (&str, &str)> = TableDefinition::new("write_id_seqs");

/// (space, collection) -> the collection's latest per-type version: a
/// counter that goes up by one for every change merged into an entity of
/// that collection (seed 004's `version`).
pub const TYPE_VERSIONS: TableDefinition<(&str, &str), u64> = TableDefinition::new("type_versions");
/// (space, collection, per-type version) -> entity id: each entity under its
/// newest per-type version only, so "what changed since version N" is a
/// range read whose cost grows with the entities returned, not the log.
pub const TYPE_INDEX: TableDefinition<(&str, &str, u64), &str> = TableDefinition::new("type_index");

pub const META_SCHEMA: &str = "schema_version";
pub const META_NODE: &str = "node_id";
pub const META_HLC: &str = "hlc";
pub const META_LAST_SEQ: &str = "last_seq";
/// Lowest local seq still in the log; below it, catch-up needs a snapshot.
pub const META_HORIZON: &str = "log_horizon";
/// Per origin, the highest origin seq a merged snapshot counted in the
/// version vector without log entries (a `VersionVector`, MessagePack):
/// a peer lacking changes at or below it needs a snapshot, never covers.
pub const META_MERGED_VV: &str = "merged_vv";
/// The lsn of the last group committed (u64 LE): the write-ahead log's
/// records past the durable value are replayed at open (`wal.rs`).
pub const META_WAL_LSN: &str = "wal_lsn";

pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    rmp_serde::to_vec(v).map_err(|e| StoreError::Encode(e.to_string()))
}

/// Encode `v` at the end of `buf` (a buffer kept across calls: no
/// allocation once it is large enough). Same bytes as [`encode`].
pub fn encode_onto<T: Serialize + ?Sized>(buf: &mut Vec<u8>, v: &T) -> Result<(), StoreError> {
    rmp_serde::encode::write(buf, v).map_err(|e| StoreError::Encode(e.to_string()))
}

/// Encode `v` into `buf`, replacing what it held.
pub fn encode_into<T: Serialize + ?Sized>(buf: &mut Vec<u8>, v: &T) -> Result<(), StoreError> {
    buf.clear();
    encode_onto(buf, v)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    rmp_serde::from_slice(bytes).map_err(|e| StoreError::Decode(e.to_string()))
}
