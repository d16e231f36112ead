//! The atome mapping shared by `/ws/sync` (seed 000), `/ws/atome-sync` and
//! `/api/atome` (seed 001): atome JSON <-> entity fields, and what kind of
//! atome event a committed change is. Pure functions: a catch-up item
//! carries no `after` state, so `describe_committed` takes the entity's
//! current state, which the connection driver reads off the async workers.
//!
//! An atome is a JSON object with a string `id`. It is stored as the entity
//! `atome/<id>` of the space; every other property is one field holding its
//! JSON value. So `{"id":"a1","kind":"note","data":{"title":"x"}}` is the
//! entity `atome/a1` with fields `kind` and `data`, which every other dialect
//! sees too. A property whose value is `null` is not stored (the model reads
//! `null` as "field removed"), so it reads back absent.

use crate::engine::Committed;
use crate::engine::ErrorClass;
use crate::model::Op;
use crate::store::{EntityView, LocalWrite, StoredEntity};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The collection atomes live in (fixed for all dialects).
pub const COLLECTION: &str = "atome";

/// Error codes of seeds 000 and 001 (shared by `/ws/sync`,
/// `/ws/atome-sync` and `/api/atome`).
pub const INVALID: &str = "invalid-payload";
pub const UNKNOWN: &str = "unknown-type";
pub const FAILED: &str = "request-failed";

/// Engine errors in the atome dialects: the HTTP status `/api/atome`
/// answers with, and the error code of every atome endpoint (their column
/// of `dialect::errors`).
pub fn wire(class: ErrorClass) -> (u16, &'static str) {
    super::errors::wire(class).atome
}

/// Why a message cannot be mapped to an atome write. The message names the
/// offending field; dialects send it with their `invalid-payload` code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AtomeError {
    #[error("{0}: must be a JSON object")]
    NotObject(&'static str),
    #[error("{0}: missing string field `id`")]
    MissingId(&'static str),
    #[error("{0}: must be a non-empty string")]
    BadId(&'static str),
    #[error("alteration: `id` cannot be changed (atome {0:?})")]
    IdChange(String),
}

/// What a change did to an atome, as the atome protocols name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtomeEvent {
    /// The atome did not exist before this change and does after it.
    Created,
    /// A whole-atome write (put) over an existing atome.
    Updated,
    /// A partial write (patch) over an existing atome.
    Altered,
    /// The atome is gone after this change.
    Deleted,
}

impl AtomeEvent {
    /// Created vs updated comes from whether the entity existed before the
    /// write (the log entry's `created`), never from what the client called
    /// it: a "create" of an existing atome is an update for everyone else.
    /// A write that leaves the atome absent (it lost to a newer delete) is
    /// reported as a delete, which is what readers now see.
    pub fn classify(op: Op, created: bool, exists_after: bool) -> AtomeEvent {
        match op {
            Op::Delete => AtomeEvent::Deleted,
            _ if !exists_after => AtomeEvent::Deleted,
            _ if created => AtomeEvent::Created,
            Op::Put => AtomeEvent::Updated,
            Op::Patch => AtomeEvent::Altered,
        }
    }

    /// The event name of seeds 000 and 001 (`atome:altered` is seed 001's;
    /// seed 000 folds it into `atome:updated`, see `sync_name`).
    pub fn name(self) -> &'static str {
        match self {
            AtomeEvent::Created => "atome:created",
            AtomeEvent::Updated => "atome:updated",
            AtomeEvent::Altered => "atome:altered",
            AtomeEvent::Deleted => "atome:deleted",
        }
    }

    /// Seed 000 knows only created, updated and deleted.
    pub fn sync_name(self) -> &'static str {
        match self {
            AtomeEvent::Altered => "atome:updated",
            e => e.name(),
        }
    }

    /// The legacy `payload.operation` value (seed 000's `atome-sync`).
    pub fn operation(self) -> &'static str {
        match self {
            AtomeEvent::Created => "create",
            AtomeEvent::Updated | AtomeEvent::Altered => "update",
            AtomeEvent::Deleted => "delete",
        }
    }
}

/// An atome write as a client asks for it.
#[derive(Clone, Debug, PartialEq)]
pub enum AtomeWrite {
    /// Store this whole atome (created or updated): a put.
    Put(Value),
    /// Merge these properties into the stored atome: a patch (`null` removes).
    Alter {
        id: String,
        alteration: Value,
    },
    Delete {
        id: String,
    },
}

fn check_id(what: &'static str, v: &Value) -> Result<String, AtomeError> {
    match v {
        Value::String(s) if !s.is_empty() => Ok(s.clone()),
        _ => Err(AtomeError::BadId(what)),
    }
}

/// Split an atome into its id and its fields.
pub fn split_atome(atome: &Value) -> Result<(String, BTreeMap<String, Value>), AtomeError> {
    let obj = atome.as_object().ok_or(AtomeError::NotObject("atome"))?;
    let id = obj.get("id").ok_or(AtomeError::MissingId("atome"))?;
    let id = check_id("atome.id", id)?;
    let fields = obj
        .iter()
        .filter(|(k, v)| k.as_str() != "id" && !v.is_null())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok((id, fields))
}

/// The atome of an entity: `id` plus its visible fields.
pub fn join_atome(id: &str, fields: &Map<String, Value>) -> Value {
    let mut m = Map::with_capacity(fields.len() + 1);
    m.insert("id".into(), Value::String(id.to_string()));
    for (k, v) in fields {
        if k != "id" {
            m.insert(k.clone(), v.clone());
        }
    }
    Value::Object(m)
}

impl AtomeWrite {
    /// The atome id the write is about.
    pub fn id(&self) -> String {
        match self {
            AtomeWrite::Put(a) => a
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            AtomeWrite::Alter { id, .. } | AtomeWrite::Delete { id } => id.clone(),
        }
    }

    /// The engine write (client edit time is not used: seeds 000/001 order
    /// writes by their arrival at the relay, as their own servers did).
    pub fn to_local(&self) -> Result<LocalWrite, AtomeError> {
        let (id, op, fields) = match self {
            AtomeWrite::Put(atome) => {
                let (id, fields) = split_atome(atome)?;
                (id, Op::Put, fields)
            }
            AtomeWrite::Alter { id, alteration } => {
                let obj = alteration
                    .as_object()
                    .ok_or(AtomeError::NotObject("alteration"))?;
                let mut fields = BTreeMap::new();
                for (k, v) in obj {
                    if k == "id" {
                        // Tolerate the id repeated in the alteration, but it
                        // names the entity and cannot be altered.
                        if v.as_str() != Some(id.as_str()) {
                            return Err(AtomeError::IdChange(id.clone()));
                        }
                        continue;
                    }
                    fields.insert(k.clone(), v.clone());
                }
                (id.clone(), Op::Patch, fields)
            }
            AtomeWrite::Delete { id } => (id.clone(), Op::Delete, BTreeMap::new()),
        };
        Ok(LocalWrite {
            collection: COLLECTION.into(),
            id,
            op,
            fields,
            client_us: None,
            expect: None,
        })
    }
}

/// The atome id of a delete or alter payload: `atomeId`, else `atome.id`,
/// else `id` (clients of both seeds use all three spellings).
pub fn atome_id_of(payload: &Value) -> Result<String, AtomeError> {
    let obj = payload
        .as_object()
        .ok_or(AtomeError::NotObject("payload"))?;
    if let Some(v) = obj.get("atomeId") {
        return check_id("atomeId", v);
    }
    if let Some(a) = obj.get("atome").filter(|a| a.is_object()) {
        return check_id(
            "atome.id",
            a.get("id").ok_or(AtomeError::MissingId("atome"))?,
        );
    }
    match obj.get("id") {
        Some(v) => check_id("id", v),
        None => Err(AtomeError::MissingId("payload (or `atomeId`)")),
    }
}

/// The atome a create/update payload carries: `payload.atome` when it is an
/// object, else the payload itself minus the envelope keys `operation`,
/// `timestamp` and `sourceClient`.
pub fn atome_of(payload: &Value) -> Result<Value, AtomeError> {
    let obj = payload
        .as_object()
        .ok_or(AtomeError::NotObject("payload"))?;
    if let Some(a) = obj.get("atome") {
        if !a.is_object() {
            return Err(AtomeError::NotObject("atome"));
        }
        split_atome(a)?;
        return Ok(a.clone());
    }
    let a: Map<String, Value> = obj
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "operation" | "timestamp" | "sourceClient"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let a = Value::Object(a);
    split_atome(&a)?;
    Ok(a)
}

/// A committed atome change, ready for either protocol to render.
#[derive(Clone, Debug, PartialEq)]
pub struct AtomeChange {
    pub event: AtomeEvent,
    pub id: String,
    /// The atome after the change (None when deleted).
    pub atome: Option<Value>,
    /// The properties a patch wrote (`null` = removed); None otherwise.
    pub alteration: Option<Value>,
    /// Who wrote it (the change's actor): the seeds' `sourceClient`.
    pub actor: String,
    /// Relay commit time, ms since the epoch.
    pub at_ms: u64,
}

/// Describe a committed change of collection `atome`. `after` is the entity
/// after the change: the committed view on live fan-out, or (on catch-up,
/// which carries none) the caller's read of the current state.
pub fn describe(c: &Committed, after: Option<&EntityView>) -> AtomeChange {
    let ch = &c.entry.change;
    let exists = after.is_some_and(|v| v.exists);
    let event = AtomeEvent::classify(ch.op, c.entry.created, exists);
    let atome = match (event, after) {
        (AtomeEvent::Deleted, _) | (_, None) => None,
        (_, Some(v)) => Some(join_atome(&ch.id, &v.fields)),
    };
    let alteration = (event == AtomeEvent::Altered).then(|| {
        Value::Object(
            ch.fields
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    });
    AtomeChange {
        event,
        id: ch.id.clone(),
        atome,
        alteration,
        actor: ch.actor.clone(),
        at_ms: c.entry.at_ms,
    }
}

/// Describe a committed atome change; catch-up items carry no `after`, so
/// the entity's current state (`state`, read by the driver: see
/// [`needs_state`]) stands in for it.
pub fn describe_committed(c: &Committed, state: Option<&StoredEntity>) -> AtomeChange {
    if let Some(after) = &c.after {
        return describe(c, Some(after.view()));
    }
    describe(c, state.map(|e| e.view()).as_ref())
}

/// Whether describing `c` needs the entity's current state: a replayed
/// change of an atome (it carries no `after`).
pub fn needs_state(c: &Committed) -> bool {
    c.after.is_none() && c.entry.change.collection == COLLECTION
}

/// ISO 8601 UTC with milliseconds ("2024-01-01T00:00:00.000Z"), the
/// timestamp format of both seeds' examples.
pub fn iso_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000
    )
}

/// A random identifier (UUID v4 text form) for generated client and atome ids.
pub fn random_id() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        // No OS randomness is not worth failing a request over: fall back
        // to time plus a process-wide counter, still unique per relay.
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        b[..8].copy_from_slice(&crate::engine::now_ms().to_be_bytes());
        b[8..].copy_from_slice(&n.to_be_bytes());
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// A message that cannot be served: its error code and message.
#[derive(Debug, PartialEq)]
pub struct Bad {
    pub code: &'static str,
    pub message: String,
}

pub fn bad(code: &'static str, message: impl Into<String>) -> Bad {
    Bad {
        code,
        message: message.into(),
    }
}

/// The envelope both atome sockets share: a JSON object and its
/// `requestId` (null if none). Anything else is refused with `invalid`.
pub fn envelope(text: &str, invalid: &'static str) -> Result<(Value, Map<String, Value>), Bad> {
    let obj = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(o)) => o,
        Ok(_) => return Err(bad(invalid, "a message is a JSON object")),
        Err(e) => return Err(bad(invalid, format!("not JSON: {e}"))),
    };
    let rid = obj.get("requestId").cloned().unwrap_or(Value::Null);
    Ok((rid, obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One engine error of each kind -> `/api/atome`'s status and the
    /// code of every atome endpoint.
    #[test]
    fn engine_errors_map_through_one_table() {
        let got: Vec<(u16, &str)> = crate::engine::EngineError::samples()
            .iter()
            .map(|e| wire(e.class()))
            .collect();
        assert_eq!(
            got,
            [
                (400, INVALID),
                (400, INVALID),
                (409, FAILED),
                (507, FAILED),
                (507, FAILED),
                (503, FAILED),
                (503, FAILED),
                (503, FAILED),
                (500, FAILED),
                (500, FAILED),
            ]
        );
    }
    use crate::model::{Change, NodeId, Stamp};
    use crate::store::LogEntry;
    use serde_json::json;

    #[test]
    fn atome_splits_into_id_and_fields_and_joins_back() {
        let a = json!({"id": "a1", "kind": "note", "data": {"title": "x"}, "gone": null});
        let (id, fields) = split_atome(&a).unwrap();
        assert_eq!(id, "a1");
        assert_eq!(fields.len(), 2);
        assert_eq!(fields["data"], json!({"title": "x"}));
        let m: Map<String, Value> = fields.into_iter().collect();
        assert_eq!(
            join_atome("a1", &m),
            json!({"id": "a1", "kind": "note", "data": {"title": "x"}})
        );
    }

    #[test]
    fn bad_atomes_name_the_field() {
        assert_eq!(
            split_atome(&json!([1])),
            Err(AtomeError::NotObject("atome"))
        );
        assert_eq!(
            split_atome(&json!({"kind": "x"})),
            Err(AtomeError::MissingId("atome"))
        );
        assert_eq!(
            split_atome(&json!({"id": 3})),
            Err(AtomeError::BadId("atome.id"))
        );
        assert_eq!(
            split_atome(&json!({"id": ""})),
            Err(AtomeError::BadId("atome.id"))
        );
    }

    #[test]
    fn writes_map_to_put_patch_delete() {
        let w = AtomeWrite::Put(json!({"id": "a", "kind": "k"}))
            .to_local()
            .unwrap();
        assert_eq!(
            (w.collection.as_str(), w.id.as_str(), w.op),
            ("atome", "a", Op::Put)
        );
        let w = AtomeWrite::Alter {
            id: "a".into(),
            alteration: json!({"id": "a", "x": 1, "y": null}),
        }
        .to_local()
        .unwrap();
        assert_eq!(w.op, Op::Patch);
        assert_eq!(w.fields.len(), 2);
        assert_eq!(w.fields["y"], Value::Null);
        let e = AtomeWrite::Alter {
            id: "a".into(),
            alteration: json!({"id": "b"}),
        }
        .to_local()
        .unwrap_err();
        assert_eq!(e, AtomeError::IdChange("a".into()));
        let e = AtomeWrite::Alter {
            id: "a".into(),
            alteration: json!(5),
        }
        .to_local()
        .unwrap_err();
        assert_eq!(e, AtomeError::NotObject("alteration"));
        let w = AtomeWrite::Delete { id: "a".into() }.to_local().unwrap();
        assert_eq!(w.op, Op::Delete);
        assert!(w.fields.is_empty());
    }

    #[test]
    fn payload_spellings() {
        assert_eq!(atome_id_of(&json!({"atomeId": "a"})).unwrap(), "a");
        assert_eq!(atome_id_of(&json!({"atome": {"id": "b"}})).unwrap(), "b");
        assert_eq!(atome_id_of(&json!({"id": "c"})).unwrap(), "c");
        assert!(atome_id_of(&json!({})).is_err());
        assert_eq!(
            atome_id_of(&json!({"atomeId": 1})),
            Err(AtomeError::BadId("atomeId"))
        );
        assert_eq!(
            atome_of(&json!({"atome": {"id": "a", "k": 1}, "operation": "create"})).unwrap(),
            json!({"id": "a", "k": 1})
        );
        assert_eq!(
            atome_of(&json!({"id": "a", "k": 1, "operation": "create"})).unwrap(),
            json!({"id": "a", "k": 1})
        );
        assert_eq!(
            atome_of(&json!({"atome": "x"})),
            Err(AtomeError::NotObject("atome"))
        );
    }

    #[test]
    fn classification_uses_existence_before_and_after() {
        use AtomeEvent::*;
        assert_eq!(AtomeEvent::classify(Op::Put, true, true), Created);
        assert_eq!(AtomeEvent::classify(Op::Patch, true, true), Created);
        assert_eq!(AtomeEvent::classify(Op::Put, false, true), Updated);
        assert_eq!(AtomeEvent::classify(Op::Patch, false, true), Altered);
        assert_eq!(AtomeEvent::classify(Op::Delete, false, false), Deleted);
        assert_eq!(AtomeEvent::classify(Op::Patch, false, false), Deleted);
        assert_eq!(Altered.sync_name(), "atome:updated");
        assert_eq!(Altered.name(), "atome:altered");
        assert_eq!(Created.operation(), "create");
    }

    fn committed(op: Op, created: bool, fields: Value, after: Option<Value>) -> Committed {
        let fields: BTreeMap<String, Value> = match fields {
            Value::Object(m) => m.into_iter().collect(),
            _ => BTreeMap::new(),
        };
        let stamp = Stamp {
            ms: 5,
            counter: 0,
            node: NodeId(1),
        };
        crate::engine::Committed::new(crate::store::Committed {
            seq: 1,
            entry: LogEntry {
                change: Change {
                    space: "s".into(),
                    collection: COLLECTION.into(),
                    id: "a1".into(),
                    op,
                    fields,
                    stamp,
                    origin: NodeId(1),
                    seq: 1,
                    actor: "client_x".into(),
                },
                at_ms: 1_700_000_000_123,
                version: 1,
                created,
                type_version: 0,
            },
            after: after.map(|f| {
                EntityView {
                    exists: true,
                    fields: f.as_object().cloned().unwrap_or_default(),
                }
                .into()
            }),
            source: None,
        })
    }

    #[test]
    fn describe_patch_carries_alteration_and_result() {
        let c = committed(
            Op::Patch,
            false,
            json!({"x": 2, "y": null}),
            Some(json!({"kind": "k", "x": 2})),
        );
        let d = describe(&c, c.after.as_ref().map(|a| a.view()));
        assert_eq!(d.event, AtomeEvent::Altered);
        assert_eq!(d.alteration, Some(json!({"x": 2, "y": null})));
        assert_eq!(d.atome, Some(json!({"id": "a1", "kind": "k", "x": 2})));
        assert_eq!(d.actor, "client_x");
        let c = committed(Op::Delete, false, json!({}), None);
        let d = describe(&c, None);
        assert_eq!((d.event, d.atome), (AtomeEvent::Deleted, None));
    }

    #[test]
    fn iso_formats_utc_with_millis() {
        assert_eq!(iso_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(iso_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(iso_ms(1_704_067_199_999), "2023-12-31T23:59:59.999Z");
    }

    #[test]
    fn random_ids_are_uuid_shaped_and_distinct() {
        let (a, b) = (random_id(), random_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
    }
}
