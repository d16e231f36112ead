//! Seed 004's wire protocol, pure: the `UnifiedMessage` enum exactly as the
//! seed declares it, the mapping of client messages to engine writes, the
//! rendering of committed changes, and form validation. No sockets here.

use crate::dialect::{SLOT_UNIFIED_CHANGE, SLOT_UNIFIED_FIELDS};
use crate::engine::Committed;
use crate::model::{Conflict, Op};
use crate::rfc3339::Timestamp;
use crate::schema::{SchemaSet, Violation};
use crate::store::{EntityView, LocalWrite, LogEntry, Outcome, StoredEntity};
use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashSet};

/// Every message of seed 004, both directions. The seed's `entity` (an
/// entity type, e.g. "users") is the engine collection, `entity_id` the id
/// and `data` the fields, so a subscriber of entity `atome` sees atomes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum UnifiedMessage {
    // ---- entity-level sync ----
    Subscribe {
        entities: Vec<String>,
    },
    Sync {
        entity: String,
        since: i64,
    },
    Change {
        change: ChangeLog,
    },
    Push {
        entity: String,
        entity_id: String,
        action: ChangeAction,
        #[serde(default)]
        data: Option<Value>,
    },
    PushAck {
        entity: String,
        entity_id: String,
        version: i64,
    },
    // ---- field-level sync ----
    SubscribeFields {
        entities: Vec<String>,
    },
    FieldChange {
        change: FieldChange,
    },
    PushFields {
        entity: String,
        entity_id: String,
        fields: Vec<FieldUpdate>,
    },
    FieldPushAck {
        entity: String,
        entity_id: String,
        applied: usize,
        conflicts: usize,
    },
    FieldConflict {
        entity: String,
        entity_id: String,
        field: String,
        server_value: Option<Value>,
        server_timestamp: Timestamp,
        client_value: Option<Value>,
        client_timestamp: Timestamp,
    },
    // ---- form validation ----
    ValidateField {
        request_id: String,
        form: String,
        field: String,
        value: String,
    },
    ValidationResult {
        request_id: String,
        form: String,
        field: String,
        valid: bool,
        error: Option<String>,
        metadata: Option<Value>,
    },
    ValidateForm {
        request_id: String,
        form: String,
        fields: Vec<FormFieldValue>,
    },
    FormValidationResult {
        request_id: String,
        form: String,
        valid: bool,
        errors: Vec<FieldError>,
    },
    // ---- common ----
    Error {
        message: String,
        code: Option<String>,
    },
    Ping,
    Pong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeAction {
    Create,
    Update,
    Delete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldAction {
    Update,
    Delete,
}

/// One committed change of an entity, as the seed's change tracker logs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeLog {
    /// The relay's local log seq: increasing in commit order within a relay.
    pub id: i64,
    pub entity: String,
    pub entity_id: String,
    pub action: ChangeAction,
    /// The entity's whole state after the change, `id` included (what an
    /// entity-level client stores); null for a delete.
    pub data: Option<Value>,
    /// The entity type's version after this change: see `docs/protocol.md`.
    pub version: i64,
    /// Who wrote it: the token subject, or the connection's client id.
    pub client_id: Option<String>,
    /// The real server's name for the change's time.
    pub created_at: Timestamp,
    /// The same instant, under the name outpost used first.
    pub timestamp: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldChange {
    pub entity: String,
    pub entity_id: String,
    pub field: String,
    pub value: Option<Value>,
    pub action: FieldAction,
    pub timestamp: Timestamp,
    pub version: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FormFieldValue {
    pub field: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldError {
    pub field: String,
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldUpdate {
    pub field: String,
    #[serde(default)]
    pub value: Option<Value>,
    pub action: FieldAction,
    pub timestamp: Timestamp,
}

/// Which message families an endpoint serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/api/ws`: everything.
    Unified,
    /// `/api/sync/ws`: entity-level sync (and ping).
    Entity,
    /// `/api/field-sync/ws`: field-level sync (and ping).
    Field,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Unified => "/api/ws",
            Endpoint::Entity => "/api/sync/ws",
            Endpoint::Field => "/api/field-sync/ws",
        }
    }
}

/// Message families, for the subset endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Entity,
    Field,
    Validation,
    Common,
    /// Sent by the server only; a client sending one is an error.
    ServerOnly,
}

/// The family of a `type` tag; None for a tag the protocol does not have.
pub fn family(kind: &str) -> Option<Family> {
    Some(match kind {
        "subscribe" | "sync" | "push" => Family::Entity,
        "subscribe_fields" | "push_fields" => Family::Field,
        "validate_field" | "validate_form" => Family::Validation,
        "ping" => Family::Common,
        "change"
        | "push_ack"
        | "field_change"
        | "field_push_ack"
        | "field_conflict"
        | "validation_result"
        | "form_validation_result"
        | "error"
        | "pong" => Family::ServerOnly,
        _ => return None,
    })
}

impl Endpoint {
    pub fn serves(self, f: Family) -> bool {
        match (self, f) {
            (_, Family::Common) => true,
            (Endpoint::Unified, f) => f != Family::ServerOnly,
            (Endpoint::Entity, f) => f == Family::Entity,
            (Endpoint::Field, f) => f == Family::Field,
        }
    }
}

/// A refusal sent back as `error {message, code}`; the connection stays open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

/// Stable error codes (the seed leaves `code` open).
pub mod code {
    pub const INVALID_JSON: &str = "invalid_json";
    pub const INVALID_MESSAGE: &str = "invalid_message";
    pub const UNKNOWN_TYPE: &str = "unknown_type";
    pub const SERVER_ONLY: &str = "server_only";
    pub const UNSUPPORTED: &str = "unsupported";
    pub const TOO_LARGE: &str = "too_large";
    pub const BINARY: &str = "binary_unsupported";
    pub const FORBIDDEN: &str = "forbidden";
    pub const UNKNOWN_FORM: &str = "unknown_form";
    pub const SCHEMA_VIOLATION: &str = "schema_violation";
    pub const INVALID_FIELD: &str = "invalid_field";
    pub const STORAGE_FAILED: &str = "storage_failed";
    pub const DISK_FULL: &str = "disk_full";
    pub const UNAVAILABLE: &str = "unavailable";
    pub const TOO_MANY_SUBSCRIPTIONS: &str = "too_many_subscriptions";
}

/// Parse one text frame. Unknown tags, server-only messages and messages of
/// a family the endpoint does not serve are refused with distinct codes.
pub fn parse(text: &str, endpoint: Endpoint) -> Result<UnifiedMessage, Refusal> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| Refusal::new(code::INVALID_JSON, format!("not JSON: {e}")))?;
    let kind = match v.get("type") {
        Some(Value::String(s)) => s.clone(),
        _ if !v.is_object() => {
            return Err(Refusal::new(
                code::INVALID_MESSAGE,
                "a message is a JSON object",
            ))
        }
        _ => {
            return Err(Refusal::new(
                code::INVALID_MESSAGE,
                "missing string field `type`",
            ))
        }
    };
    // The field client (`rusty-field-sync.js`) subscribes with `subscribe`
    // on its endpoint, where only field messages are served.
    let mut v = v;
    let kind = if endpoint == Endpoint::Field && kind == "subscribe" {
        v["type"] = Value::from("subscribe_fields");
        "subscribe_fields".to_string()
    } else {
        kind
    };
    let fam = family(&kind).ok_or_else(|| {
        Refusal::new(code::UNKNOWN_TYPE, format!("unknown message type {kind:?}"))
    })?;
    if fam == Family::ServerOnly {
        return Err(Refusal::new(
            code::SERVER_ONLY,
            format!("`{kind}` is sent by the server, not to it"),
        ));
    }
    if !endpoint.serves(fam) {
        return Err(Refusal::new(
            code::UNSUPPORTED,
            format!("`{kind}` is not served on {}; use /api/ws", endpoint.path()),
        ));
    }
    serde_json::from_value(v)
        .map_err(|e| Refusal::new(code::INVALID_MESSAGE, format!("{kind}: {e}")))
}

pub fn render(m: &UnifiedMessage) -> String {
    // Serializing these types cannot fail (string keys, no non-finite floats
    // beyond what serde_json::Value already holds).
    serde_json::to_string(m).unwrap_or_default()
}

/// A message as `endpoint` sends it: on `/api/field-sync/ws` the field
/// client's names (`push_ack`, `conflict`, as the real field server sends
/// them) stand for the seed's `field_push_ack` and `field_conflict`.
pub fn render_for(endpoint: Endpoint, m: &UnifiedMessage) -> String {
    let rename = match m {
        UnifiedMessage::FieldPushAck { .. } => "push_ack",
        UnifiedMessage::FieldConflict { .. } => "conflict",
        _ => return render(m),
    };
    if endpoint != Endpoint::Field {
        return render(m);
    }
    let mut v = serde_json::to_value(m).unwrap_or_default();
    v["type"] = Value::from(rename);
    v.to_string()
}

pub fn error(r: &Refusal) -> String {
    render(&UnifiedMessage::Error {
        message: r.message.clone(),
        code: Some(r.code.to_string()),
    })
}

// ---- client writes -> engine writes ----------------------------------------

fn data_fields(data: Option<Value>) -> Result<BTreeMap<String, Value>, Refusal> {
    match data {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(m)) => Ok(m.into_iter().collect()),
        Some(_) => Err(Refusal::new(
            code::INVALID_MESSAGE,
            "push: `data` must be a JSON object",
        )),
    }
}

/// `push`: create = put (the entity becomes `data`), update = patch (the
/// fields of `data` are set, `null` removes one), delete = tombstone.
pub fn push_write(
    entity_id: String,
    entity: String,
    action: ChangeAction,
    data: Option<Value>,
) -> Result<LocalWrite, Refusal> {
    let (op, fields) = match action {
        ChangeAction::Create => (Op::Put, data_fields(data)?),
        ChangeAction::Update => {
            if data.as_ref().is_none_or(Value::is_null) {
                return Err(Refusal::new(
                    code::INVALID_MESSAGE,
                    "push: an update needs `data` (the fields to set)",
                ));
            }
            (Op::Patch, data_fields(data)?)
        }
        ChangeAction::Delete => {
            if data.as_ref().is_some_and(|d| !d.is_null()) {
                return Err(Refusal::new(
                    code::INVALID_MESSAGE,
                    "push: a delete carries no `data`",
                ));
            }
            (Op::Delete, BTreeMap::new())
        }
    };
    Ok(LocalWrite {
        collection: entity,
        id: entity_id,
        op,
        fields,
        client_us: None,
        expect: None,
    })
}

/// `push_fields`: one patch per distinct client timestamp, each carrying
/// that timestamp as its edit time, so every field competes (last writer
/// wins) with its own time. A `delete` action, or a null value, removes the
/// field. Returns the writes and each field's client timestamp.
pub fn field_writes(
    entity: &str,
    entity_id: &str,
    fields: Vec<FieldUpdate>,
) -> Result<(Vec<LocalWrite>, BTreeMap<String, Timestamp>), Refusal> {
    let mut by_time: BTreeMap<u64, BTreeMap<String, Value>> = BTreeMap::new();
    let mut times = BTreeMap::new();
    for f in fields {
        let ms = f.timestamp.unix_ms().ok_or_else(|| {
            Refusal::new(
                code::INVALID_MESSAGE,
                format!("push_fields: `{}` has a timestamp before 1970", f.field),
            )
        })?;
        if times.insert(f.field.clone(), f.timestamp).is_some() {
            return Err(Refusal::new(
                code::INVALID_MESSAGE,
                format!("push_fields: field `{}` appears twice", f.field),
            ));
        }
        let value = match f.action {
            FieldAction::Delete => Value::Null,
            FieldAction::Update => f.value.unwrap_or(Value::Null),
        };
        by_time.entry(ms).or_default().insert(f.field, value);
    }
    let writes = by_time
        .into_iter()
        .map(|(ms, fields)| LocalWrite {
            collection: entity.to_string(),
            id: entity_id.to_string(),
            op: Op::Patch,
            fields,
            client_us: Some(ms.saturating_mul(1000)),
            expect: None,
        })
        .collect();
    Ok((writes, times))
}

fn some_unless_null(v: &Value) -> Option<Value> {
    (!v.is_null()).then(|| v.clone())
}

/// The `field_push_ack` and one `field_conflict` per field that lost to a
/// newer stored value.
pub fn field_push_reply(
    entity: &str,
    entity_id: &str,
    times: &BTreeMap<String, Timestamp>,
    outcomes: &[Outcome],
) -> Vec<UnifiedMessage> {
    let lost: Vec<&Conflict> = outcomes.iter().flat_map(|o| &o.conflicts).collect();
    let mut out = vec![UnifiedMessage::FieldPushAck {
        entity: entity.to_string(),
        entity_id: entity_id.to_string(),
        applied: times.len().saturating_sub(lost.len()),
        conflicts: lost.len(),
    }];
    for c in lost {
        out.push(UnifiedMessage::FieldConflict {
            entity: entity.to_string(),
            entity_id: entity_id.to_string(),
            field: c.field.clone(),
            server_value: some_unless_null(&c.current),
            server_timestamp: Timestamp::from_unix_ms(c.current_stamp.ms),
            client_value: some_unless_null(&c.attempted),
            client_timestamp: times
                .get(&c.field)
                .copied()
                .unwrap_or(Timestamp::from_unix_ms(0)),
        });
    }
    out
}

// ---- committed changes -> frames --------------------------------------------

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// An entity's whole state as entity-level clients store it: its visible
/// fields plus `id` (the entity id) unless it has a field named `id`.
pub fn whole(id: &str, fields: &Map<String, Value>) -> Value {
    let mut m = fields.clone();
    m.entry("id").or_insert_with(|| Value::from(id));
    Value::Object(m)
}

/// A committed change as a `ChangeLog`, with the entity's state after it
/// (known live; on a catch-up the caller reads it).
pub fn change_log(c: &Committed) -> ChangeLog {
    change_log_over(c, c.after.as_ref().map(|a| a.view()))
}

/// As [`change_log`], over the given state of the entity (None: unknown,
/// the fields the change wrote stand in).
pub fn change_log_over(c: &Committed, after: Option<&EntityView>) -> ChangeLog {
    let ch = &c.entry.change;
    let gone = ch.op == Op::Delete || after.is_some_and(|a| !a.exists);
    let (action, data) = if gone {
        (ChangeAction::Delete, None)
    } else {
        let action = if c.entry.created {
            ChangeAction::Create
        } else {
            ChangeAction::Update
        };
        let data = match after {
            Some(a) => whole(&ch.id, &a.fields),
            None => {
                let written: Map<String, Value> = ch
                    .fields
                    .iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                whole(&ch.id, &written)
            }
        };
        (action, Some(data))
    };
    let at = Timestamp::from_unix_ms(ch.stamp.ms);
    ChangeLog {
        id: to_i64(c.seq),
        entity: ch.collection.clone(),
        entity_id: ch.id.clone(),
        action,
        data,
        version: to_i64(c.entry.type_version),
        client_id: Some(ch.actor.clone()),
        created_at: at,
        timestamp: at,
    }
}

/// A committed change as a `change` frame, rendered once and shared.
pub fn render_change(c: &Committed) -> Utf8Bytes {
    c.rendered.get_or(SLOT_UNIFIED_CHANGE, || {
        render(&UnifiedMessage::Change {
            change: change_log(c),
        })
    })
}

/// The fields a committed change set or removed, one `FieldChange` each.
/// Fields whose write lost to a newer value are left out when the merged
/// entity is known (live fan-out), so subscribers never see a losing value.
/// A delete or a put's implicit removals are entity-level: see the docs.
pub fn field_changes(c: &Committed) -> Vec<FieldChange> {
    let ch = &c.entry.change;
    if ch.op == Op::Delete {
        return vec![];
    }
    ch.fields
        .iter()
        .filter(|(k, v)| match &c.after {
            Some(after) => after.field(k) == *v,
            None => true,
        })
        .map(|(k, v)| FieldChange {
            entity: ch.collection.clone(),
            entity_id: ch.id.clone(),
            field: k.clone(),
            value: some_unless_null(v),
            action: if v.is_null() {
                FieldAction::Delete
            } else {
                FieldAction::Update
            },
            timestamp: Timestamp::from_unix_ms(ch.stamp.ms),
            version: to_i64(c.entry.type_version),
        })
        .collect()
}

/// The `field_change` frames of a committed change, rendered once and
/// shared. They are cached joined by '\n', which compact JSON never holds.
pub fn render_field_changes(c: &Committed) -> Vec<Utf8Bytes> {
    let joined = c.rendered.get_or(SLOT_UNIFIED_FIELDS, || {
        field_changes(c)
            .into_iter()
            .map(|change| render(&UnifiedMessage::FieldChange { change }))
            .collect::<Vec<_>>()
            .join("\n")
    });
    if joined.is_empty() {
        return vec![];
    }
    joined
        .as_str()
        .split('\n')
        .map(|s| Utf8Bytes::from(s.to_string()))
        .collect()
}

/// An entity's current state as one `ChangeLog` at its newest per-type
/// version: what `sync` (and the HTTP sync API) sends for each entity
/// changed since the client's cursor, and what stands in for changes
/// retention trimmed. `newest` is its newest log entry when still retained
/// (for the writer, time and create/update); without it `client_id` is null.
pub fn entity_change(
    collection: &str,
    id: &str,
    e: &StoredEntity,
    newest: Option<&LogEntry>,
) -> ChangeLog {
    let exists = e.state.exists();
    let at = Timestamp::from_unix_ms(e.state.newest().map(|k| k.stamp.ms).unwrap_or(0));
    let created = newest.is_some_and(|n| n.created);
    ChangeLog {
        id: to_i64(e.seq),
        entity: collection.to_string(),
        entity_id: id.to_string(),
        action: match (exists, created) {
            (false, _) => ChangeAction::Delete,
            (true, true) => ChangeAction::Create,
            (true, false) => ChangeAction::Update,
        },
        data: exists.then(|| whole(id, &e.state.visible())),
        version: to_i64(e.type_version),
        client_id: newest.map(|n| n.change.actor.clone()),
        created_at: at,
        timestamp: at,
    }
}

/// An entity's state standing in for changes retention trimmed.
pub fn snapshot_change(collection: &str, id: &str, e: &StoredEntity) -> ChangeLog {
    entity_change(collection, id, e, None)
}

/// An entity's fields as `FieldChange`s at its newest per-type version:
/// every field with a value as an `update`, every removed field (and, for a
/// deleted entity, every field) as a `delete`. What the HTTP field-sync API
/// sends per entity changed since the cursor.
pub fn entity_fields(collection: &str, id: &str, e: &StoredEntity) -> Vec<FieldChange> {
    let exists = e.state.exists();
    e.state
        .fields
        .iter()
        .map(|(k, c)| {
            let value = (exists && !c.value.is_null()).then(|| c.value.clone());
            FieldChange {
                entity: collection.to_string(),
                entity_id: id.to_string(),
                field: k.clone(),
                action: if value.is_some() {
                    FieldAction::Update
                } else {
                    FieldAction::Delete
                },
                value,
                timestamp: Timestamp::from_unix_ms(c.key.stamp.ms),
                version: to_i64(e.type_version),
            }
        })
        .collect()
}

/// An entity's current fields standing in for changes retention trimmed.
pub fn snapshot_fields(collection: &str, id: &str, e: &StoredEntity) -> Vec<FieldChange> {
    if !e.state.exists() {
        return vec![];
    }
    entity_fields(collection, id, e)
        .into_iter()
        .filter(|f| f.action == FieldAction::Update)
        .collect()
}

/// `sync`'s filter: a change of the entity type whose per-entity version is
/// above `since`.
pub fn sync_wants(collection: &str, version: u64, entity: &str, since: i64) -> bool {
    collection == entity && i128::from(version) > i128::from(since)
}

/// Entity types to subscribe to; `"*"` is not special: names are names.
pub fn entity_set(entities: Vec<String>) -> HashSet<String> {
    entities.into_iter().collect()
}

// ---- form validation -----------------------------------------------------------

/// Form fields arrive as strings. A field the schema wants as a number,
/// boolean or null is read as JSON when the string is one, so "42" checks
/// against `{"type": "integer"}`; everything else stays a string.
fn typed_value(raw: &str, string_errors: bool) -> Value {
    if string_errors {
        if let Ok(v) = serde_json::from_str::<Value>(raw) {
            if !v.is_string() && !v.is_object() && !v.is_array() {
                return v;
            }
        }
    }
    Value::String(raw.to_string())
}

fn field_violations(
    schemas: &SchemaSet,
    form: &str,
    fields: &Map<String, Value>,
) -> Vec<Violation> {
    schemas.check_object(form, fields).unwrap_or_default()
}

/// Build the form object, retyping the fields whose string form failed a
/// `type` rule (see `typed_value`).
fn form_object(schemas: &SchemaSet, form: &str, fields: &[(String, String)]) -> Map<String, Value> {
    let mut obj: Map<String, Value> = fields
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let retype: HashSet<String> = field_violations(schemas, form, &obj)
        .into_iter()
        .filter(|v| v.rule == "type")
        .map(|v| v.field)
        .collect();
    for (k, v) in fields {
        if retype.contains(k) {
            obj.insert(k.clone(), typed_value(v, true));
        }
    }
    obj
}

fn unknown_form(form: &str) -> Refusal {
    Refusal::new(code::UNKNOWN_FORM, format!("unknown form `{form}`"))
}

/// `validate_field`: the value is checked against the form schema's rules
/// for that field only (other fields' `required` rules do not apply).
pub fn validate_field(
    schemas: &SchemaSet,
    request_id: String,
    form: String,
    field: String,
    value: String,
) -> Result<UnifiedMessage, Refusal> {
    if !schemas.contains(&form) {
        return Err(unknown_form(&form));
    }
    let obj = form_object(schemas, &form, &[(field.clone(), value)]);
    let first = field_violations(schemas, &form, &obj)
        .into_iter()
        .find(|v| v.field == field);
    Ok(UnifiedMessage::ValidationResult {
        request_id,
        form,
        field,
        valid: first.is_none(),
        metadata: first.as_ref().map(|v| serde_json::json!({"rule": v.rule})),
        error: first.map(|v| v.message),
    })
}

/// `validate_form`: the whole form against its schema, every violation
/// reported (a missing required field under its own name; a rule about the
/// form as a whole under the field name "").
pub fn validate_form(
    schemas: &SchemaSet,
    request_id: String,
    form: String,
    fields: Vec<FormFieldValue>,
) -> Result<UnifiedMessage, Refusal> {
    if !schemas.contains(&form) {
        return Err(unknown_form(&form));
    }
    let pairs: Vec<(String, String)> = fields.into_iter().map(|f| (f.field, f.value)).collect();
    let obj = form_object(schemas, &form, &pairs);
    let errors: Vec<FieldError> = field_violations(schemas, &form, &obj)
        .into_iter()
        .map(|v| FieldError {
            field: v.field,
            error: v.message,
        })
        .collect();
    Ok(UnifiedMessage::FormValidationResult {
        request_id,
        form,
        valid: errors.is_empty(),
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Change, NodeId, Stamp};
    use crate::store::{EntityView, LogEntry, OutcomeKind};
    use serde_json::json;

    fn committed(op: Op, fields: Value, created: bool, after: Option<Value>) -> Committed {
        crate::engine::Committed::new(crate::store::Committed {
            seq: 7,
            entry: LogEntry {
                change: Change {
                    space: "default".into(),
                    collection: "users".into(),
                    id: "u1".into(),
                    op,
                    fields: fields
                        .as_object()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .collect(),
                    stamp: Stamp {
                        ms: 1_714_566_600_250,
                        counter: 0,
                        node: NodeId(1),
                    },
                    origin: NodeId(1),
                    seq: 3,
                    actor: "alice".into(),
                },
                at_ms: 0,
                version: 4,
                created,
                type_version: 4,
            },
            after: after.map(|a| {
                EntityView {
                    exists: true,
                    fields: a.as_object().cloned().unwrap_or_default(),
                }
                .into()
            }),
            source: None,
        })
    }

    #[test]
    fn every_variant_has_the_seed_tag() {
        let ts = Timestamp::from_unix_ms(0);
        let cl = ChangeLog {
            id: 1,
            entity: "e".into(),
            entity_id: "i".into(),
            action: ChangeAction::Create,
            data: None,
            version: 1,
            client_id: None,
            created_at: ts,
            timestamp: ts,
        };
        let fc = FieldChange {
            entity: "e".into(),
            entity_id: "i".into(),
            field: "f".into(),
            value: None,
            action: FieldAction::Update,
            timestamp: ts,
            version: 1,
        };
        let all = [
            (UnifiedMessage::Subscribe { entities: vec![] }, "subscribe"),
            (
                UnifiedMessage::Sync {
                    entity: "e".into(),
                    since: 0,
                },
                "sync",
            ),
            (UnifiedMessage::Change { change: cl }, "change"),
            (
                UnifiedMessage::Push {
                    entity: "e".into(),
                    entity_id: "i".into(),
                    action: ChangeAction::Delete,
                    data: None,
                },
                "push",
            ),
            (
                UnifiedMessage::PushAck {
                    entity: "e".into(),
                    entity_id: "i".into(),
                    version: 1,
                },
                "push_ack",
            ),
            (
                UnifiedMessage::SubscribeFields { entities: vec![] },
                "subscribe_fields",
            ),
            (UnifiedMessage::FieldChange { change: fc }, "field_change"),
            (
                UnifiedMessage::PushFields {
                    entity: "e".into(),
                    entity_id: "i".into(),
                    fields: vec![],
                },
                "push_fields",
            ),
            (
                UnifiedMessage::FieldPushAck {
                    entity: "e".into(),
                    entity_id: "i".into(),
                    applied: 0,
                    conflicts: 0,
                },
                "field_push_ack",
            ),
            (
                UnifiedMessage::FieldConflict {
                    entity: "e".into(),
                    entity_id: "i".into(),
                    field: "f".into(),
                    server_value: None,
                    server_timestamp: ts,
                    client_value: None,
                    client_timestamp: ts,
                },
                "field_conflict",
            ),
            (
                UnifiedMessage::ValidateField {
                    request_id: "r".into(),
                    form: "f".into(),
                    field: "x".into(),
                    value: "v".into(),
                },
                "validate_field",
            ),
            (
                UnifiedMessage::ValidationResult {
                    request_id: "r".into(),
                    form: "f".into(),
                    field: "x".into(),
                    valid: true,
                    error: None,
                    metadata: None,
                },
                "validation_result",
            ),
            (
                UnifiedMessage::ValidateForm {
                    request_id: "r".into(),
                    form: "f".into(),
                    fields: vec![],
                },
                "validate_form",
            ),
            (
                UnifiedMessage::FormValidationResult {
                    request_id: "r".into(),
                    form: "f".into(),
                    valid: true,
                    errors: vec![],
                },
                "form_validation_result",
            ),
            (
                UnifiedMessage::Error {
                    message: "m".into(),
                    code: None,
                },
                "error",
            ),
            (UnifiedMessage::Ping, "ping"),
            (UnifiedMessage::Pong, "pong"),
        ];
        for (m, tag) in all {
            let v: Value = serde_json::from_str(&render(&m)).unwrap();
            assert_eq!(v["type"], tag);
            assert!(family(tag).is_some(), "{tag}");
            let back: UnifiedMessage = serde_json::from_value(v).unwrap();
            assert_eq!(back, m);
        }
    }

    #[test]
    fn parse_refuses_by_family_and_shape() {
        let p = |t: &str, e| parse(t, e).map_err(|r| r.code);
        assert_eq!(p("{", Endpoint::Unified), Err(code::INVALID_JSON));
        assert_eq!(p("[1]", Endpoint::Unified), Err(code::INVALID_MESSAGE));
        assert_eq!(p("{}", Endpoint::Unified), Err(code::INVALID_MESSAGE));
        assert_eq!(
            p(r#"{"type":"nope"}"#, Endpoint::Unified),
            Err(code::UNKNOWN_TYPE)
        );
        assert_eq!(
            p(r#"{"type":"pong"}"#, Endpoint::Unified),
            Err(code::SERVER_ONLY)
        );
        assert_eq!(
            p(r#"{"type":"sync","entity":"e"}"#, Endpoint::Unified),
            Err(code::INVALID_MESSAGE)
        );
        let sub = r#"{"type":"subscribe_fields","entities":["u"]}"#;
        assert_eq!(p(sub, Endpoint::Entity), Err(code::UNSUPPORTED));
        assert!(p(sub, Endpoint::Field).is_ok());
        let push = r#"{"type":"push","entity":"u","entity_id":"1","action":"create"}"#;
        assert_eq!(p(push, Endpoint::Field), Err(code::UNSUPPORTED));
        assert!(p(push, Endpoint::Entity).is_ok());
        let v = r#"{"type":"validate_form","request_id":"r","form":"f","fields":[]}"#;
        assert_eq!(p(v, Endpoint::Entity), Err(code::UNSUPPORTED));
        assert_eq!(p(v, Endpoint::Field), Err(code::UNSUPPORTED));
        assert_eq!(
            p(r#"{"type":"ping"}"#, Endpoint::Field),
            Ok(UnifiedMessage::Ping)
        );
    }

    #[test]
    fn push_maps_actions_to_ops() {
        let w = push_write(
            "1".into(),
            "u".into(),
            ChangeAction::Create,
            Some(json!({"a": 1})),
        )
        .unwrap();
        assert_eq!((w.op, w.fields.len()), (Op::Put, 1));
        let w = push_write(
            "1".into(),
            "u".into(),
            ChangeAction::Update,
            Some(json!({"a": null})),
        )
        .unwrap();
        assert_eq!((w.op, w.fields["a"].clone()), (Op::Patch, Value::Null));
        let w = push_write("1".into(), "u".into(), ChangeAction::Delete, None).unwrap();
        assert_eq!(w.op, Op::Delete);
        assert!(push_write("1".into(), "u".into(), ChangeAction::Update, None).is_err());
        assert!(push_write(
            "1".into(),
            "u".into(),
            ChangeAction::Delete,
            Some(json!({"a": 1}))
        )
        .is_err());
        assert!(push_write(
            "1".into(),
            "u".into(),
            ChangeAction::Create,
            Some(json!([1]))
        )
        .is_err());
    }

    #[test]
    fn field_writes_group_by_time_and_refuse_duplicates() {
        let t1 = Timestamp::parse("2024-05-01T12:00:00Z").unwrap();
        let t2 = Timestamp::parse("2024-05-01T12:00:01.5Z").unwrap();
        let f = |field: &str, action, t| FieldUpdate {
            field: field.into(),
            value: Some(json!(field)),
            action,
            timestamp: t,
        };
        let (w, times) = field_writes(
            "u",
            "1",
            vec![
                f("a", FieldAction::Update, t1),
                f("b", FieldAction::Delete, t1),
                f("c", FieldAction::Update, t2),
            ],
        )
        .unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].client_us, Some(1_714_564_800_000_000));
        assert_eq!(w[0].fields["b"], Value::Null);
        assert_eq!(w[1].client_us, Some(1_714_564_801_500_000));
        assert_eq!(times.len(), 3);
        let dup = field_writes(
            "u",
            "1",
            vec![
                f("a", FieldAction::Update, t1),
                f("a", FieldAction::Update, t2),
            ],
        );
        assert!(dup.is_err());
    }

    #[test]
    fn field_push_reply_counts_conflicts() {
        let t = Timestamp::parse("2024-05-01T12:00:00Z").unwrap();
        let stamp = Stamp {
            ms: 1_714_566_600_250,
            counter: 0,
            node: NodeId(1),
        };
        let o = Outcome {
            kind: OutcomeKind::Applied,
            seq: 1,
            origin: NodeId(1),
            origin_seq: 1,
            stamp,
            version: 2,
            created: false,
            type_version: 2,
            conflicts: vec![Conflict {
                field: "a".into(),
                attempted: json!("old"),
                current: json!("new"),
                current_stamp: stamp,
            }],
        };
        let times = BTreeMap::from([("a".to_string(), t), ("b".to_string(), t)]);
        let r = field_push_reply("u", "1", &times, &[o]);
        let v: Vec<Value> = r
            .iter()
            .map(|m| serde_json::from_str(&render(m)).unwrap())
            .collect();
        assert_eq!(
            v[0],
            json!({"type": "field_push_ack", "entity": "u", "entity_id": "1", "applied": 1, "conflicts": 1})
        );
        assert_eq!(
            v[1],
            json!({"type": "field_conflict", "entity": "u", "entity_id": "1", "field": "a",
                   "server_value": "new", "server_timestamp": "2024-05-01T12:30:00.250Z",
                   "client_value": "old", "client_timestamp": "2024-05-01T12:00:00Z"})
        );
    }

    #[test]
    fn change_log_shape() {
        let c = committed(Op::Patch, json!({"name": "A", "gone": null}), true, None);
        let v: Value = serde_json::from_str(render_change(&c).as_str()).unwrap();
        assert_eq!(
            v,
            json!({"type": "change", "change": {"id": 7, "entity": "users", "entity_id": "u1",
                   "action": "create", "data": {"name": "A", "id": "u1"}, "version": 4,
                   "client_id": "alice", "created_at": "2024-05-01T12:30:00.250Z",
                   "timestamp": "2024-05-01T12:30:00.250Z"}})
        );
        let d = committed(Op::Delete, json!({}), false, None);
        let v: Value = serde_json::from_str(render_change(&d).as_str()).unwrap();
        assert_eq!(
            (v["change"]["action"].clone(), v["change"]["data"].clone()),
            (json!("delete"), Value::Null)
        );
        let u = committed(Op::Put, json!({"a": 1}), false, None);
        assert_eq!(change_log(&u).action, ChangeAction::Update);
    }

    #[test]
    fn field_changes_skip_losing_fields_and_deletes() {
        let c = committed(
            Op::Patch,
            json!({"a": 1, "b": null, "c": "lost"}),
            false,
            Some(json!({"a": 1, "c": "newer"})),
        );
        let frames = render_field_changes(&c);
        assert_eq!(frames.len(), 2);
        let a: Value = serde_json::from_str(frames[0].as_str()).unwrap();
        assert_eq!(
            a,
            json!({"type": "field_change", "change": {"entity": "users", "entity_id": "u1", "field": "a",
                   "value": 1, "action": "update", "timestamp": "2024-05-01T12:30:00.250Z", "version": 4}})
        );
        let b: Value = serde_json::from_str(frames[1].as_str()).unwrap();
        assert_eq!(
            (b["change"]["action"].clone(), b["change"]["value"].clone()),
            (json!("delete"), Value::Null)
        );
        // Cached: a second render gives the same frames.
        assert_eq!(render_field_changes(&c), frames);
        assert!(field_changes(&committed(Op::Delete, json!({}), false, None)).is_empty());
    }

    #[test]
    fn snapshots_stand_in_for_trimmed_changes() {
        let mut e = StoredEntity::default();
        e.state.apply(&Change {
            space: "s".into(),
            collection: "users".into(),
            id: "u1".into(),
            op: Op::Put,
            fields: BTreeMap::from([("a".to_string(), json!(1))]),
            stamp: Stamp {
                ms: 1000,
                counter: 0,
                node: NodeId(1),
            },
            origin: NodeId(1),
            seq: 1,
            actor: "x".into(),
        });
        e.version = 3;
        e.type_version = 12;
        e.seq = 9;
        let c = snapshot_change("users", "u1", &e);
        assert_eq!((c.id, c.action, c.version), (9, ChangeAction::Update, 12));
        assert_eq!(c.data, Some(json!({"a": 1, "id": "u1"})));
        let f = snapshot_fields("users", "u1", &e);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].timestamp, Timestamp::from_unix_ms(1000));
    }

    #[test]
    fn sync_filter() {
        assert!(sync_wants("users", 3, "users", 2));
        assert!(!sync_wants("users", 2, "users", 2));
        assert!(!sync_wants("posts", 3, "users", 0));
        assert!(sync_wants("users", 1, "users", -5));
    }

    fn forms() -> SchemaSet {
        SchemaSet::from_values(BTreeMap::from([(
            "contact".to_string(),
            json!({"type": "object", "required": ["email", "message"],
                   "properties": {"email": {"type": "string", "format": "email"},
                                  "message": {"type": "string", "minLength": 10},
                                  "age": {"type": "integer", "minimum": 18}}}),
        )]))
        .unwrap()
    }

    #[test]
    fn validate_field_checks_only_that_field() {
        let s = forms();
        let r = validate_field(
            &s,
            "r1".into(),
            "contact".into(),
            "email".into(),
            "a@b.example".into(),
        )
        .unwrap();
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"type": "validation_result", "request_id": "r1", "form": "contact", "field": "email",
                   "valid": true, "error": null, "metadata": null})
        );
        let r = validate_field(
            &s,
            "r2".into(),
            "contact".into(),
            "message".into(),
            "short".into(),
        )
        .unwrap();
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["valid"], false);
        assert_eq!(v["metadata"], json!({"rule": "minLength"}));
        assert!(v["error"].as_str().unwrap().contains("shorter"), "{v}");
        // "42" reads as a number for an integer field.
        let r =
            validate_field(&s, "r3".into(), "contact".into(), "age".into(), "42".into()).unwrap();
        assert_eq!(serde_json::to_value(&r).unwrap()["valid"], true);
        let r =
            validate_field(&s, "r4".into(), "contact".into(), "age".into(), "12".into()).unwrap();
        assert_eq!(
            serde_json::to_value(&r).unwrap()["metadata"]["rule"],
            "minimum"
        );
        let r = validate_field(
            &s,
            "r5".into(),
            "contact".into(),
            "age".into(),
            "old".into(),
        )
        .unwrap();
        assert_eq!(
            serde_json::to_value(&r).unwrap()["metadata"]["rule"],
            "type"
        );
        let e = validate_field(&s, "r".into(), "nope".into(), "f".into(), "v".into()).unwrap_err();
        assert_eq!(e.code, code::UNKNOWN_FORM);
    }

    #[test]
    fn validate_form_reports_every_field() {
        let s = forms();
        let r = validate_form(
            &s,
            "r".into(),
            "contact".into(),
            vec![FormFieldValue {
                field: "email".into(),
                value: "nope".into(),
            }],
        )
        .unwrap();
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["type"], "form_validation_result");
        assert_eq!(v["valid"], false);
        let fields: Vec<&str> = v["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert!(
            fields.contains(&"email") && fields.contains(&"message"),
            "{v}"
        );
        let ok = validate_form(
            &s,
            "r".into(),
            "contact".into(),
            vec![
                FormFieldValue {
                    field: "email".into(),
                    value: "a@b.example".into(),
                },
                FormFieldValue {
                    field: "message".into(),
                    value: "long enough message".into(),
                },
            ],
        )
        .unwrap();
        assert_eq!(serde_json::to_value(&ok).unwrap()["errors"], json!([]));
        assert!(validate_form(&s, "r".into(), "x".into(), vec![]).is_err());
    }
}
