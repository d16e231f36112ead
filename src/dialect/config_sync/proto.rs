//! Seed 002's messages without IO: parsing and checking requests, the
//! entity shapes a user's config is stored as, conflict paths, sync
//! direction, and every frame the relay sends. Pure functions, unit-tested
//! here; `mod.rs` runs them against the engine.

use base64::alphabet::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// The per-user config document: id = userId.
pub const DOCS: &str = "config";
/// One entity per accepted revision: id = `{userId}:{version:020}:{node}`.
pub const HISTORY: &str = "config_history";
/// One entity per device of a user: id = `{userId}:{deviceId}`.
pub const DEVICES: &str = "config_devices";

/// Longest userId or deviceId: both go into entity ids, whose names are
/// bounded (256 bytes) by the engine.
pub const MAX_ID_BYTES: usize = 120;

/// Error codes carried in `error` (of a response, or of an error frame).
pub mod code {
    pub const INVALID_REQUEST: &str = "invalid-request";
    pub const UNKNOWN_TYPE: &str = "unknown-type";
    pub const INVALID_ENCRYPTED_CONFIG: &str = "invalid-encrypted-config";
    pub const INVALID_CONFIG_HASH: &str = "invalid-config-hash";
    pub const USER_MISMATCH: &str = "user-mismatch";
    pub const FORBIDDEN: &str = "forbidden";
    pub const VERSION_CONFLICT: &str = "version-conflict";
    pub const STORAGE_FAILED: &str = "storage-failed";
    pub const DISK_FULL: &str = "disk-full";
    pub const UNAVAILABLE: &str = "unavailable";
}

/// A refused request: its code and a human-readable reason.
#[derive(Debug, Clone, PartialEq)]
pub struct Bad {
    pub code: &'static str,
    pub message: String,
}

impl Bad {
    pub fn new(code: &'static str, message: impl Into<String>) -> Bad {
        Bad {
            code,
            message: message.into(),
        }
    }
}

// ---- requests ----------------------------------------------------------------

/// `check-status-request` and `download-config-request` (same fields).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Query {
    pub user_id: String,
    pub device_id: String,
    /// outpost extension: names the device in other devices' sync-events.
    #[serde(default)]
    pub device_name: Option<String>,
    #[serde(default)]
    pub local_version: Option<u64>,
    /// outpost extension (check-status): the device has unsynced edits, so
    /// a newer remote means `bidirectional` rather than `download`.
    #[serde(default)]
    pub has_local_changes: Option<bool>,
}

/// The seed's delta: what changed since the previous version.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Delta {
    #[serde(default)]
    pub added: Map<String, Value>,
    #[serde(default)]
    pub modified: Map<String, Value>,
    #[serde(default)]
    pub deleted: Vec<String>,
}

impl Delta {
    /// The changed paths: added and modified keys, deleted entries; sorted.
    pub fn paths(&self) -> Vec<String> {
        let set: BTreeSet<String> = self
            .added
            .keys()
            .chain(self.modified.keys())
            .chain(self.deleted.iter())
            .cloned()
            .collect();
        set.into_iter().collect()
    }

    pub fn to_value(&self) -> Value {
        json!({"added": self.added, "modified": self.modified, "deleted": self.deleted})
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Upload {
    pub user_id: String,
    pub device_id: String,
    #[serde(default)]
    pub device_name: Option<String>,
    /// The client's number for the new version; the relay uses it when it
    /// is above the stored version, else the stored version + 1.
    #[serde(default)]
    pub version: Option<u64>,
    /// The version this upload was made from (0 or absent: none yet).
    #[serde(default)]
    pub previous_version: Option<u64>,
    pub encrypted_config: String,
    pub config_hash: String,
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    #[serde(default)]
    pub delta: Option<Delta>,
    /// The real client's decryption parameters (`{algorithm, iv, authTag,
    /// keyId}`), kept opaque beside the blob and returned on download.
    #[serde(default)]
    pub encryption: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resolve {
    pub user_id: String,
    pub device_id: String,
    #[serde(default)]
    pub device_name: Option<String>,
    pub strategy: String,
    pub resolved_config: String,
    #[serde(default)]
    pub resolved_version: Option<u64>,
    /// outpost extension: the merged config's hash (else stored as null).
    #[serde(default)]
    pub config_hash: Option<String>,
    /// outpost extension: the merged config's metadata.
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    /// outpost extension: the paths the merge changed, for sync-events.
    #[serde(default)]
    pub delta: Option<Delta>,
    /// The merged blob's decryption parameters, as on an upload.
    #[serde(default)]
    pub encryption: Option<Map<String, Value>>,
}

#[derive(Debug, Clone)]
pub enum Request {
    CheckStatus(Query),
    Upload(Upload),
    Download(Query),
    Resolve(Resolve),
}

impl Request {
    pub fn user_id(&self) -> &str {
        match self {
            Request::CheckStatus(q) | Request::Download(q) => &q.user_id,
            Request::Upload(u) => &u.user_id,
            Request::Resolve(r) => &r.user_id,
        }
    }

    pub fn device_id(&self) -> &str {
        match self {
            Request::CheckStatus(q) | Request::Download(q) => &q.device_id,
            Request::Upload(u) => &u.device_id,
            Request::Resolve(r) => &r.device_id,
        }
    }

    /// Does this request store anything (needs write access)?
    pub fn writes(&self) -> bool {
        matches!(self, Request::Upload(_) | Request::Resolve(_))
    }
}

/// Parse one text frame. Returns the request's `type` (when there is one)
/// so a refusal can be answered in the matching response.
pub fn parse(text: &str) -> (Option<String>, Result<Request, Bad>) {
    let v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return (
                None,
                Err(Bad::new(code::INVALID_REQUEST, format!("not JSON: {e}"))),
            )
        }
    };
    let Some(kind) = v.get("type").and_then(Value::as_str).map(str::to_string) else {
        let bad = Bad::new(
            code::INVALID_REQUEST,
            "a message is a JSON object with a string `type`",
        );
        return (None, Err(bad));
    };
    let r = match kind.as_str() {
        "check-status-request" => body(v).map(Request::CheckStatus),
        "upload-config-request" => body(v).map(Request::Upload),
        "download-config-request" => body(v).map(Request::Download),
        "resolve-conflict-request" => body(v).map(Request::Resolve),
        other => Err(Bad::new(
            code::UNKNOWN_TYPE,
            format!("unknown message type {other:?}"),
        )),
    };
    let r = r.and_then(|req| check(&req).map(|()| req));
    (Some(kind), r)
}

fn body<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, Bad> {
    serde_json::from_value(v).map_err(|e| Bad::new(code::INVALID_REQUEST, e.to_string()))
}

/// Largest version a client may send: the next one (+1) is still an
/// integer every JSON client reads exactly (2^53 - 1), and can be made
/// without wrapping. A version that cannot grow would wrap to 0 or 1.
pub const MAX_VERSION: u64 = (1 << 53) - 2;

fn check_version(what: &str, v: Option<u64>) -> Result<(), Bad> {
    match v {
        Some(v) if v > MAX_VERSION => Err(Bad::new(
            code::INVALID_REQUEST,
            format!("{what}: {v} is above {MAX_VERSION}, the largest version that can still grow"),
        )),
        _ => Ok(()),
    }
}

/// The checks serde does not make: ids present and bounded, the blob
/// base64, the hash 64 hex digits, versions that can grow.
fn check(req: &Request) -> Result<(), Bad> {
    for (what, s) in [("userId", req.user_id()), ("deviceId", req.device_id())] {
        crate::engine::validate_name(what, s)
            .map_err(|e| Bad::new(code::INVALID_REQUEST, e.to_string()))?;
        // Both go into entity ids (`{userId}:{deviceId}`), which are bounded.
        if s.len() > MAX_ID_BYTES {
            return Err(Bad::new(
                code::INVALID_REQUEST,
                format!("{what}: longer than {MAX_ID_BYTES} bytes"),
            ));
        }
    }
    match req {
        Request::Upload(u) => {
            check_version("version", u.version)?;
            check_version("previousVersion", u.previous_version)?;
            check_blob("encryptedConfig", &u.encrypted_config)?;
            check_hash(&u.config_hash)
        }
        Request::Resolve(r) => {
            check_version("resolvedVersion", r.resolved_version)?;
            check_blob("resolvedConfig", &r.resolved_config)?;
            r.config_hash.as_deref().map_or(Ok(()), check_hash)
        }
        _ => Ok(()),
    }
}

/// Standard-alphabet base64, padded or not. The relay never decrypts the
/// blob; it only refuses what cannot be one.
pub fn check_blob(what: &str, s: &str) -> Result<(), Bad> {
    const B64: GeneralPurpose = GeneralPurpose::new(
        &STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    if s.is_empty() {
        return Err(Bad::new(
            code::INVALID_ENCRYPTED_CONFIG,
            format!("{what}: must not be empty"),
        ));
    }
    B64.decode(s).map(|_| ()).map_err(|e| {
        Bad::new(
            code::INVALID_ENCRYPTED_CONFIG,
            format!("{what}: not base64: {e}"),
        )
    })
}

/// A SHA-256 in hex: exactly 64 hex digits.
pub fn check_hash(s: &str) -> Result<(), Bad> {
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(Bad::new(
            code::INVALID_CONFIG_HASH,
            format!(
                "configHash: must be 64 hex digits (SHA-256), got {} characters",
                s.chars().count()
            ),
        ))
    }
}

// ---- stored shapes -------------------------------------------------------------

/// The config document as stored (fields of the `config` entity).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Doc {
    pub version: u64,
    pub encrypted_config: Option<String>,
    pub config_hash: Option<String>,
    pub metadata: Map<String, Value>,
    pub last_modified: Option<u64>,
    pub last_modified_by: Option<String>,
    /// The blob's decryption parameters as the uploader sent them (opaque).
    pub encryption: Option<Map<String, Value>>,
}

fn str_of(f: &Map<String, Value>, k: &str) -> Option<String> {
    f.get(k).and_then(Value::as_str).map(str::to_string)
}

fn u64_of(f: &Map<String, Value>, k: &str) -> Option<u64> {
    f.get(k).and_then(Value::as_u64)
}

impl Doc {
    /// From the entity's visible fields; an absent entity is version 0.
    pub fn from_fields(f: &Map<String, Value>) -> Doc {
        Doc {
            version: u64_of(f, "version").unwrap_or(0),
            encrypted_config: str_of(f, "encryptedConfig"),
            config_hash: str_of(f, "configHash"),
            metadata: f
                .get("metadata")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
            last_modified: u64_of(f, "lastModified"),
            last_modified_by: str_of(f, "lastModifiedBy"),
            encryption: f.get("encryption").and_then(Value::as_object).cloned(),
        }
    }

    /// The compare-and-swap precondition for replacing exactly this
    /// revision: its version and its hash (`null` when absent). The hash
    /// matters when a relay-concurrent revision with the same version
    /// arrives from a peer between the read and the write.
    pub fn expectation(&self) -> BTreeMap<String, Value> {
        let version = if self.version == 0 {
            Value::Null
        } else {
            self.version.into()
        };
        BTreeMap::from([
            ("version".to_string(), version),
            (
                "configHash".to_string(),
                self.config_hash.clone().map_or(Value::Null, Value::from),
            ),
        ])
    }
}

/// A device's sync record (fields of the `config_devices` entity).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Device {
    pub device_name: Option<String>,
    pub last_sync_version: Option<u64>,
    pub last_sync_hash: Option<String>,
}

impl Device {
    pub fn from_fields(f: &Map<String, Value>) -> Device {
        Device {
            device_name: str_of(f, "deviceName"),
            last_sync_version: u64_of(f, "lastSyncVersion"),
            last_sync_hash: str_of(f, "lastSyncHash"),
        }
    }

    /// Did this device's revision at the stored version lose to another
    /// revision with the same version (uploaded concurrently at another
    /// relay, and the winner by last-writer-wins)? The device then holds a
    /// config the relay does not: a conflict it must resolve.
    pub fn lost_to(&self, doc: &Doc) -> bool {
        doc.version > 0
            && self.last_sync_version == Some(doc.version)
            && self.last_sync_hash.is_some()
            && self.last_sync_hash != doc.config_hash
    }
}

/// One accepted revision (fields of a `config_history` entity).
#[derive(Debug, Clone, PartialEq)]
pub struct Revision {
    pub user_id: String,
    pub version: u64,
    pub device_id: String,
    pub changed_paths: Vec<String>,
}

impl Revision {
    pub fn from_fields(f: &Map<String, Value>) -> Option<Revision> {
        Some(Revision {
            user_id: str_of(f, "userId")?,
            version: u64_of(f, "version")?,
            device_id: str_of(f, "deviceId")?,
            changed_paths: f
                .get("changedPaths")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
        })
    }
}

pub fn history_id(user: &str, version: u64, node: &str) -> String {
    format!("{user}:{version:020}:{node}")
}

/// Where a scan of a user's revisions after `version` starts (exclusive
/// of nothing: no history id equals it, all later ones sort after it).
pub fn history_from(user: &str, version: u64) -> String {
    format!("{user}:{version:020}")
}

pub fn device_key(user: &str, device: &str) -> String {
    format!("{user}:{device}")
}

/// What an accepted revision writes, besides the document itself.
pub struct RevisionFields<'a> {
    pub user: &'a str,
    pub device: &'a str,
    pub device_name: &'a str,
    pub version: u64,
    pub previous: u64,
    pub change_type: &'a str,
    pub changed_paths: &'a [String],
    pub delta: Value,
    pub config_hash: Option<&'a str>,
    pub strategy: Option<&'a str>,
    pub now: u64,
    pub encryption: Option<&'a Map<String, Value>>,
}

type Fields = BTreeMap<String, Value>;

fn opt(s: Option<&str>) -> Value {
    s.map_or(Value::Null, Value::from)
}

impl RevisionFields<'_> {
    pub fn doc(&self, encrypted: &str, metadata: &Map<String, Value>) -> Fields {
        BTreeMap::from([
            ("encryption".into(), self.encryption_value()),
            ("userId".into(), self.user.into()),
            ("version".into(), self.version.into()),
            ("encryptedConfig".into(), encrypted.into()),
            ("configHash".into(), opt(self.config_hash)),
            ("metadata".into(), Value::Object(metadata.clone())),
            ("lastModified".into(), self.now.into()),
            ("lastModifiedBy".into(), self.device.into()),
            ("deviceName".into(), self.device_name.into()),
            ("changeType".into(), self.change_type.into()),
        ])
    }

    pub fn history(&self) -> Fields {
        BTreeMap::from([
            ("userId".into(), self.user.into()),
            ("version".into(), self.version.into()),
            ("previousVersion".into(), self.previous.into()),
            ("deviceId".into(), self.device.into()),
            ("deviceName".into(), self.device_name.into()),
            ("delta".into(), self.delta.clone()),
            ("changeType".into(), self.change_type.into()),
            ("changedPaths".into(), self.changed_paths.into()),
            ("configHash".into(), opt(self.config_hash)),
            ("strategy".into(), opt(self.strategy)),
            ("timestamp".into(), self.now.into()),
            ("encryption".into(), self.encryption_value()),
        ])
    }

    /// `null` removes the field: a revision without parameters must not
    /// keep an older revision's.
    fn encryption_value(&self) -> Value {
        self.encryption.cloned().map_or(Value::Null, Value::Object)
    }
}

/// A device's sync record after a sync in `direction`.
pub fn device_fields(
    user: &str,
    device: &str,
    name: &str,
    version: u64,
    hash: Option<&str>,
    direction: &str,
    now: u64,
) -> Fields {
    BTreeMap::from([
        ("userId".into(), user.into()),
        ("deviceId".into(), device.into()),
        ("deviceName".into(), name.into()),
        ("lastSyncAt".into(), now.into()),
        ("lastSyncVersion".into(), version.into()),
        ("lastSyncHash".into(), opt(hash)),
        ("lastSyncDirection".into(), direction.into()),
    ])
}

// ---- conflicts and direction -----------------------------------------------------

/// Do two paths touch the same data? Equal, or one inside the other
/// (`projects` and `projects.web`; `.` and `/` both separate segments).
pub fn overlaps(a: &str, b: &str) -> bool {
    let inside = |long: &str, short: &str| {
        long.len() > short.len()
            && long.starts_with(short)
            && matches!(long.as_bytes()[short.len()], b'.' | b'/')
    };
    a == b || inside(a, b) || inside(b, a)
}

/// The paths changed on both sides: every local or remote path that
/// overlaps one of the other side's, sorted, without duplicates.
pub fn conflicting_paths(local: &[String], remote: &[String]) -> Vec<String> {
    let mut out = BTreeSet::new();
    for l in local {
        for r in remote {
            if overlaps(l, r) {
                out.insert(l.clone());
                out.insert(r.clone());
            }
        }
    }
    out.into_iter().collect()
}

/// The seed's decision logic, plus a device whose revision lost (always a
/// merge). Returns (needsSync, syncDirection).
pub fn direction(
    remote: u64,
    local: u64,
    has_local_changes: bool,
    lost: bool,
) -> (bool, &'static str) {
    let d = if lost || (remote > local && has_local_changes) {
        "bidirectional"
    } else if remote > local {
        "download"
    } else if local > remote {
        "upload"
    } else {
        "none"
    };
    (d != "none", d)
}

// ---- frames --------------------------------------------------------------------------

pub fn check_status_response(doc: &Doc, needs_sync: bool, direction: &str, now: u64) -> String {
    json!({
        "type": "check-status-response",
        "remoteVersion": doc.version,
        "lastModified": doc.last_modified,
        "lastModifiedBy": doc.last_modified_by,
        "needsSync": needs_sync,
        "syncDirection": direction,
        "timestamp": now,
    })
    .to_string()
}

/// `upload-config-response`; `new_version` is the version the upload
/// made (null when refused: no version was made).
pub fn upload_response(
    success: bool,
    new_version: Option<u64>,
    error: Option<&str>,
    now: u64,
) -> String {
    json!({
        "type": "upload-config-response",
        "success": success,
        "newVersion": new_version,
        "error": error,
        "timestamp": now,
    })
    .to_string()
}

/// `resolve-conflict-response` (the seed leaves it open): the same fields
/// as `upload-config-response`.
pub fn resolve_response(
    success: bool,
    new_version: Option<u64>,
    error: Option<&str>,
    now: u64,
) -> String {
    json!({
        "type": "resolve-conflict-response",
        "success": success,
        "newVersion": new_version,
        "error": error,
        "timestamp": now,
    })
    .to_string()
}

/// `download-config-response`; with nothing uploaded yet: version 0 and
/// nulls.
pub fn download_response(doc: &Doc, now: u64) -> String {
    json!({
        "type": "download-config-response",
        "version": doc.version,
        "lastModified": doc.last_modified,
        "encryptedConfig": doc.encrypted_config,
        "configHash": doc.config_hash,
        "metadata": doc.metadata,
        "encryption": doc.encryption,
        "timestamp": now,
    })
    .to_string()
}

pub fn conflict_notification(
    local: u64,
    remote: u64,
    paths: &[String],
    manual: bool,
    now: u64,
) -> String {
    json!({
        "type": "conflict-notification",
        "localVersion": local,
        "remoteVersion": remote,
        "conflictingPaths": paths,
        "requiresManualResolution": manual,
        "timestamp": now,
    })
    .to_string()
}

/// A request that has no response with an `error` field was refused.
pub fn error_frame(code: &str, message: &str, request_type: Option<&str>, now: u64) -> String {
    json!({
        "type": "error",
        "error": code,
        "message": message,
        "requestType": request_type,
        "timestamp": now,
    })
    .to_string()
}

/// The refusal of a request, in the request's own response where it has
/// one (`success: false`), else as an error frame.
pub fn refusal(kind: Option<&str>, bad: &Bad, now: u64) -> String {
    match kind {
        Some("upload-config-request") => upload_response(false, None, Some(bad.code), now),
        Some("resolve-conflict-request") => resolve_response(false, None, Some(bad.code), now),
        _ => error_frame(bad.code, &bad.message, kind, now),
    }
}

/// The `sync-event` for a committed revision, from its history fields.
pub fn sync_event(f: &BTreeMap<String, Value>) -> String {
    let get = |k: &str| f.get(k).cloned().unwrap_or(Value::Null);
    json!({
        "type": "sync-event",
        "userId": get("userId"),
        "deviceId": get("deviceId"),
        "deviceName": get("deviceName"),
        "version": get("version"),
        "changeType": get("changeType"),
        "changedPaths": f.get("changedPaths").cloned().unwrap_or_else(|| json!([])),
        "timestamp": get("timestamp"),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn upload(extra: Value) -> String {
        let mut v = json!({"type": "upload-config-request", "userId": "u", "deviceId": "d",
            "version": 2, "previousVersion": 1, "encryptedConfig": "aGVsbG8=", "configHash": HASH,
            "metadata": {"projectCount": 1}, "delta": {"added": {"a": 1}, "modified": {}, "deleted": ["b"]},
            "timestamp": 5});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v.to_string()
    }

    #[test]
    fn parses_every_request_type() {
        let (k, r) = parse(
            r#"{"type":"check-status-request","userId":"u","deviceId":"d","localVersion":3,"timestamp":1}"#,
        );
        assert_eq!(k.as_deref(), Some("check-status-request"));
        assert!(matches!(
            r,
            Ok(Request::CheckStatus(Query {
                local_version: Some(3),
                ..
            }))
        ));
        let (_, r) = parse(
            r#"{"type":"download-config-request","userId":"u","deviceId":"d","localVersion":0}"#,
        );
        assert!(matches!(r, Ok(Request::Download(_))));
        let (_, r) = parse(&upload(json!({})));
        let Ok(Request::Upload(u)) = r else {
            panic!("{r:?}")
        };
        assert_eq!(u.delta.unwrap().paths(), vec!["a", "b"]);
        assert_eq!(u.previous_version, Some(1));
        let (_, r) = parse(
            r#"{"type":"resolve-conflict-request","userId":"u","deviceId":"d","strategy":"merge","resolvedConfig":"eA","resolvedVersion":4}"#,
        );
        assert!(matches!(
            r,
            Ok(Request::Resolve(Resolve {
                resolved_version: Some(4),
                ..
            }))
        ));
    }

    #[test]
    fn refuses_bad_input_with_codes() {
        let code_of = |t: &str| parse(t).1.unwrap_err().code;
        assert_eq!(code_of("nope"), code::INVALID_REQUEST);
        assert_eq!(code_of(r#"{"userId":"u"}"#), code::INVALID_REQUEST);
        assert_eq!(code_of(r#"{"type":"hello"}"#), code::UNKNOWN_TYPE);
        assert_eq!(
            code_of(r#"{"type":"check-status-request","deviceId":"d"}"#),
            code::INVALID_REQUEST
        );
        assert_eq!(
            code_of(r#"{"type":"check-status-request","userId":"","deviceId":"d"}"#),
            code::INVALID_REQUEST
        );
        assert_eq!(
            code_of(&upload(json!({"encryptedConfig": "not base64!"}))),
            code::INVALID_ENCRYPTED_CONFIG
        );
        assert_eq!(
            code_of(&upload(json!({"encryptedConfig": ""}))),
            code::INVALID_ENCRYPTED_CONFIG
        );
        assert_eq!(
            code_of(&upload(json!({"configHash": "abc"}))),
            code::INVALID_CONFIG_HASH
        );
        assert_eq!(
            code_of(&upload(json!({"configHash": HASH.replace('9', "g")}))),
            code::INVALID_CONFIG_HASH
        );
        assert_eq!(
            code_of(&upload(json!({"delta": {"deleted": [1]}}))),
            code::INVALID_REQUEST
        );
        assert_eq!(
            code_of(&upload(json!({"version": -1}))),
            code::INVALID_REQUEST
        );
        let (k, r) = parse(
            r#"{"type":"resolve-conflict-request","userId":"u","deviceId":"d","strategy":"x","resolvedConfig":"eA","configHash":"zz"}"#,
        );
        assert_eq!(k.as_deref(), Some("resolve-conflict-request"));
        assert_eq!(r.unwrap_err().code, code::INVALID_CONFIG_HASH);
    }

    #[test]
    fn base64_padded_or_not_and_hex_of_either_case() {
        assert!(check_blob("x", "aGVsbG8").is_ok());
        assert!(check_blob("x", "aGVsbG8=").is_ok());
        assert!(check_blob("x", "aGVs bG8=").is_err());
        assert!(check_blob("x", "aGVsbG8_").is_err());
        assert!(check_hash(&HASH.to_uppercase()).is_ok());
        assert!(check_hash(&format!("{HASH}0")).is_err());
    }

    #[test]
    fn paths_overlap_on_segment_boundaries() {
        assert!(overlaps("a", "a"));
        assert!(overlaps("projects", "projects.web"));
        assert!(overlaps("projects/web/x", "projects/web"));
        assert!(!overlaps("projects", "projectsX"));
        assert!(!overlaps("a.b", "a.c"));
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            conflicting_paths(
                &s(&["projects.web", "theme", "z"]),
                &s(&["projects", "font", "z"])
            ),
            s(&["projects", "projects.web", "z"])
        );
        assert!(conflicting_paths(&s(&["a"]), &s(&["b"])).is_empty());
    }

    #[test]
    fn direction_follows_the_seed() {
        assert_eq!(direction(3, 2, true, false), (true, "bidirectional"));
        assert_eq!(direction(3, 2, false, false), (true, "download"));
        assert_eq!(direction(2, 3, false, false), (true, "upload"));
        assert_eq!(direction(2, 2, true, false), (false, "none"));
        assert_eq!(direction(2, 2, false, true), (true, "bidirectional"));
    }

    #[test]
    fn a_device_lost_when_its_revision_at_the_stored_version_is_not_the_stored_one() {
        let doc = Doc {
            version: 4,
            config_hash: Some("a".into()),
            ..Doc::default()
        };
        let dev = |v, h: &str| Device {
            last_sync_version: Some(v),
            last_sync_hash: Some(h.into()),
            device_name: None,
        };
        assert!(dev(4, "b").lost_to(&doc));
        assert!(!dev(4, "a").lost_to(&doc));
        assert!(!dev(3, "b").lost_to(&doc));
        assert!(!Device::default().lost_to(&doc));
        assert!(!dev(0, "b").lost_to(&Doc::default()));
    }

    #[test]
    fn stored_shapes_round_trip() {
        let enc =
            json!({"algorithm": "aes-256-gcm", "iv": "aXY=", "authTag": "dGFn", "keyId": "k1"})
                .as_object()
                .cloned()
                .unwrap();
        let r = RevisionFields {
            user: "u",
            device: "d",
            device_name: "laptop",
            version: 2,
            previous: 1,
            change_type: "update",
            changed_paths: &["a".to_string()],
            delta: Delta::default().to_value(),
            config_hash: Some(HASH),
            strategy: None,
            now: 9,
            encryption: Some(&enc),
        };
        let doc: Map<String, Value> = r.doc("eA==", &Map::new()).into_iter().collect();
        let d = Doc::from_fields(&doc);
        assert_eq!(d.encryption.as_ref(), Some(&enc));
        assert_eq!(
            (
                d.version,
                d.config_hash.as_deref(),
                d.last_modified,
                d.last_modified_by.as_deref()
            ),
            (2, Some(HASH), Some(9), Some("d"))
        );
        assert_eq!(
            d.expectation(),
            BTreeMap::from([
                ("version".into(), json!(2)),
                ("configHash".into(), json!(HASH))
            ])
        );
        assert_eq!(Doc::default().expectation()["version"], Value::Null);
        let h: Map<String, Value> = r.history().into_iter().collect();
        let rev = Revision::from_fields(&h).unwrap();
        assert_eq!(
            (
                rev.version,
                rev.device_id.as_str(),
                rev.changed_paths.clone()
            ),
            (2, "d", vec!["a".to_string()])
        );
        let ev: Value = serde_json::from_str(&sync_event(&r.history())).unwrap();
        assert_eq!(
            ev,
            json!({"type": "sync-event", "userId": "u", "deviceId": "d", "deviceName": "laptop",
            "version": 2, "changeType": "update", "changedPaths": ["a"], "timestamp": 9})
        );
        let dev: Map<String, Value> = device_fields("u", "d", "laptop", 2, Some(HASH), "upload", 9)
            .into_iter()
            .collect();
        assert_eq!(
            Device::from_fields(&dev).last_sync_hash.as_deref(),
            Some(HASH)
        );
        assert!(history_id("u", 2, "n") > history_from("u", 2));
        assert!(history_id("u", 2, "n") < history_from("u", 3));
    }

    #[test]
    fn refusals_use_the_request_s_response() {
        let bad = Bad::new(code::INVALID_CONFIG_HASH, "x");
        let v: Value =
            serde_json::from_str(&refusal(Some("upload-config-request"), &bad, 1)).unwrap();
        assert_eq!(
            v,
            json!({"type": "upload-config-response", "success": false, "newVersion": null,
                             "error": "invalid-config-hash", "timestamp": 1})
        );
        let v: Value =
            serde_json::from_str(&refusal(Some("check-status-request"), &bad, 1)).unwrap();
        assert_eq!(
            v,
            json!({"type": "error", "error": "invalid-config-hash", "message": "x",
                             "requestType": "check-status-request", "timestamp": 1})
        );
    }
}
