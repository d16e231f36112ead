//! Seed 002 on `GET /ws/config`: versioned, client-side encrypted config
//! documents with compare-and-swap uploads, conflicts and per-device sync
//! records. Documented message by message in docs/protocol.md.
//!
//! Storage is ordinary engine entities in the connection's space, so they
//! replicate to peers and upstream like everything else:
//! - `config` / `{userId}`: the document (version, encryptedConfig,
//!   configHash, metadata, lastModified, lastModifiedBy, ...), written
//!   with a `put` so a revision always replaces the whole document.
//! - `config_history` / `{userId}:{version:020}:{node}`: one entity per
//!   accepted revision (device, delta, changed paths, timestamp). The relay
//!   id in the key keeps both revisions when two relays accept the same
//!   version concurrently; the `sync-event` of other devices is rendered
//!   from these entities as they are committed (locally or replicated).
//! - `config_devices` / `{userId}:{deviceId}`: lastSyncAt, lastSyncVersion,
//!   lastSyncHash, lastSyncDirection.
//!
//! An upload writes all three in one engine job guarded by a precondition
//! on the document (`Expect::Fields` on version and hash), so the
//! compare-and-swap is atomic against every other write on this relay and
//! the three land together or not at all.
//!
//! No engine handle: each request is a small state machine over the
//! driver's calls. It reads the document and the device record
//! (`Call::Get`), maybe the revisions it needs to name conflicting paths
//! (`Call::Scan`), then writes (`Call::Write`, the compare-and-swap inside
//! it) and answers from `Dialect::reply`. A write that loses the
//! compare-and-swap to one that got in after the read starts the request
//! over from the read (at most [`ATTEMPTS`] rounds), which then answers the
//! conflict.
//!
//! Each connection serves its requests strictly in order (ordered mode: a
//! request starts after the previous one is answered), so a download sent
//! after an upload reads what the upload stored, and at most one request
//! is between calls at a time.

mod proto;

/// The frame parser, for the property tests (tests/fuzz.rs).
#[doc(hidden)]
pub use proto::parse;
pub use proto::{DEVICES, DOCS, HISTORY};

use super::SLOT_CONFIG;
use super::{Call, Dialect, Follow, Handled, Opening, Refusal, Refused, Reply, Scan, Since};
use crate::auth::Grant;
use crate::dialect::Ctx;
use crate::engine::{Committed, EngineError, ErrorClass, Filter};
use crate::metrics::Metrics;
use crate::model::Op;
use crate::store::{Expect, LocalWrite, StoredEntity};
use axum::extract::ws::Utf8Bytes;
use axum::http::{HeaderMap, StatusCode};
pub(super) use proto::code;
use proto::{Bad, Device, Doc, Request, Revision, RevisionFields};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// At most this many revisions are read to find conflicting paths (the
/// newest ones): bounds the work one stale upload can cause.
const MAX_SCAN: u64 = 1000;
/// Compare-and-swap rounds before an upload or resolve gives up.
const ATTEMPTS: usize = 4;

/// `GET /ws/config?space=&userId=&deviceId=`. The optional `userId` and
/// `deviceId` let a device receive `sync-event`s before its first request
/// (with a token, the user is the token's subject anyway).
pub fn accept(
    state: &Ctx,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<Opening<ConfigProto>, Refused> {
    let (grant, space) = super::admit_space(state, headers, query)?;
    let authed = authed_user(&grant);
    let user = match (query.get("userId"), authed) {
        (Some(u), Some(sub)) if *u != sub => {
            return Err((
                StatusCode::FORBIDDEN,
                "forbidden: userId must be the token's subject\n".into(),
            ))
        }
        (q, a) => a.or_else(|| q.cloned()),
    };
    let device = query.get("deviceId").cloned();
    let metrics = state.engine.metrics.clone();
    let node = state.engine.node_id().to_string();
    Ok(Opening::new("/ws/config", move |_| {
        ConfigProto::new(metrics, space, node, grant, user, device)
    }))
}

/// The user a token speaks for; None when anonymous access let it in.
fn authed_user(grant: &Grant) -> Option<String> {
    (grant.sub != "anonymous").then(|| grant.sub.clone())
}

/// Engine errors as the seed's `error` strings (its column of
/// `dialect::errors`).
pub fn wire(class: ErrorClass) -> &'static str {
    super::errors::wire(class).config
}

fn engine_code(e: &EngineError) -> &'static str {
    wire(e.class())
}

fn is_precondition(e: &EngineError) -> bool {
    e.class() == ErrorClass::Precondition
}

/// One `/ws/config` connection. No engine handle: only `Arc<Metrics>`
/// for its counters.
pub struct ConfigProto {
    metrics: Arc<Metrics>,
    space: String,
    /// This relay's id: a revision's history id names the relay that
    /// accepted it.
    node: String,
    grant: Grant,
    /// The user whose devices' revisions this connection is told about.
    user: Option<String>,
    /// This device (its own revisions are not echoed as sync-events).
    device: Option<String>,
    /// The request between calls and the token of its call in flight
    /// (ordered mode: at most one).
    serving: Option<(u64, Serving)>,
    next_token: u64,
}

/// One request between its calls.
struct Serving {
    req: Request,
    /// Who writes: the token's subject, or the device when anonymous.
    actor: String,
    /// Whether the connection may write: a download then records the
    /// device's sync.
    record: bool,
    /// Compare-and-swap rounds lost so far (upload, resolve).
    lost_rounds: usize,
    stage: Stage,
}

/// What a request's call in flight is for.
enum Stage {
    /// Reading the document and the device record (`Call::Get`).
    Reading,
    /// Reading the user's revisions in `(after, doc.version]`
    /// (`Call::Scan`): the paths a conflict note names or a merge
    /// reconciles.
    Scanning {
        doc: Doc,
        dev: Option<Device>,
        after: u64,
    },
    /// Writing (`Call::Write`): a device record, or a revision that
    /// becomes `version` if the compare-and-swap on `doc` holds.
    Writing { doc: Doc, version: u64 },
}

impl ConfigProto {
    pub fn new(
        metrics: Arc<Metrics>,
        space: String,
        node: String,
        grant: Grant,
        user: Option<String>,
        device: Option<String>,
    ) -> ConfigProto {
        ConfigProto {
            metrics,
            space,
            node,
            grant,
            user,
            device,
            serving: None,
            next_token: 0,
        }
    }

    fn refuse_request(&self, kind: Option<&str>, bad: &Bad, now_ms: u64) -> Handled {
        self.metrics.errors_sent.fetch_add(1, Relaxed);
        Handled::reply(proto::refusal(kind, bad, now_ms))
    }

    /// Make `call` for `s`, now at `stage`.
    fn call(&mut self, mut s: Serving, stage: Stage, call: Call) -> Handled {
        self.next_token += 1;
        s.stage = stage;
        self.serving = Some((self.next_token, s));
        Handled::call(self.next_token, call)
    }

    /// A round starts: read the document and the device record.
    fn read(&mut self, s: Serving) -> Handled {
        let (user, device) = (s.req.user_id(), s.req.device_id());
        let call = Call::Get {
            space: self.space.clone(),
            keys: vec![
                (DOCS.to_string(), user.to_string()),
                (DEVICES.to_string(), proto::device_key(user, device)),
            ],
        };
        self.call(s, Stage::Reading, call)
    }

    /// Read the user's revisions after `base` up to the stored version
    /// (the newest `MAX_SCAN` of them).
    fn scan(&mut self, s: Serving, doc: Doc, dev: Option<Device>, base: u64) -> Handled {
        let after = base.max(doc.version.saturating_sub(MAX_SCAN));
        let user = s.req.user_id();
        let call = Call::Scan(Scan {
            space: self.space.clone(),
            collection: HISTORY.to_string(),
            // No history id equals either bound: versions after+1..=doc.version.
            after: proto::history_from(user, after + 1),
            before: proto::history_from(user, doc.version + 1),
            fields: ["userId", "version", "deviceId", "changedPaths"]
                .map(String::from)
                .to_vec(),
        });
        self.call(s, Stage::Scanning { doc, dev, after }, call)
    }

    /// Write `writes` as the request's actor.
    fn write(&mut self, s: Serving, doc: Doc, version: u64, writes: Vec<LocalWrite>) -> Handled {
        let call = Call::Write {
            space: self.space.clone(),
            actor: s.actor.clone(),
            writes,
            write_ids: Vec::new(),
        };
        self.call(s, Stage::Writing { doc, version }, call)
    }

    /// The document and device record are read: decide.
    fn decide(&mut self, s: Serving, doc: Doc, dev: Option<Device>, now_ms: u64) -> Handled {
        let lost = dev.as_ref().is_some_and(|d| d.lost_to(&doc));
        match &s.req {
            Request::CheckStatus(_) if lost => {
                let base = doc.version - 1;
                self.scan(s, doc, dev, base)
            }
            Request::CheckStatus(q) => Handled::reply(status(q, &doc, lost, now_ms)),
            Request::Download(q) if s.record && doc.version > 0 => {
                let name = device_name(q.device_name.as_deref(), dev.as_ref(), &q.device_id);
                let fields = proto::device_fields(
                    &q.user_id,
                    &q.device_id,
                    &name,
                    doc.version,
                    doc.config_hash.as_deref(),
                    "download",
                    now_ms,
                );
                let key = proto::device_key(&q.user_id, &q.device_id);
                let writes = vec![write(DEVICES, key, Op::Patch, fields)];
                let version = doc.version;
                self.write(s, doc, version, writes)
            }
            Request::Download(_) => Handled::reply(proto::download_response(&doc, now_ms)),
            Request::Upload(u) => {
                let prev = u.previous_version.unwrap_or(0);
                if prev != doc.version || lost {
                    // Stale base, or a base that lost to a relay-concurrent
                    // revision of the same version: refused either way.
                    let base = if lost {
                        doc.version - 1
                    } else {
                        prev.min(doc.version)
                    };
                    return self.scan(s, doc, dev, base);
                }
                let paths = u.delta.as_ref().map(|d| d.paths()).unwrap_or_default();
                self.revise(s, doc, dev, paths, now_ms)
            }
            Request::Resolve(r) => match &r.delta {
                Some(d) => {
                    let paths = d.paths();
                    self.revise(s, doc, dev, paths, now_ms)
                }
                None => {
                    // What the merge reconciles: every revision since the
                    // device last synced (or since its lost one).
                    let synced = dev.as_ref().and_then(|d| d.last_sync_version);
                    let base = match (lost, synced) {
                        (true, _) => doc.version - 1,
                        (false, Some(v)) => v.min(doc.version),
                        (false, None) => 0,
                    };
                    self.scan(s, doc, dev, base)
                }
            },
        }
    }

    /// The revisions are read: name the conflict, or merge.
    fn scanned(
        &mut self,
        s: Serving,
        doc: Doc,
        dev: Option<Device>,
        revs: Vec<Revision>,
        now_ms: u64,
    ) -> Handled {
        match &s.req {
            Request::CheckStatus(q) => {
                let local = q.local_version.unwrap_or(0);
                let note = conflict(&q.device_id, Vec::new(), revs, &doc, local, now_ms);
                Handled {
                    now: vec![status(q, &doc, true, now_ms), note],
                    ..Handled::default()
                }
            }
            Request::Upload(u) => {
                let paths = u.delta.as_ref().map(|d| d.paths()).unwrap_or_default();
                let local = u.version.unwrap_or(u.previous_version.unwrap_or(0));
                let note = conflict(&u.device_id, paths, revs, &doc, local, now_ms);
                self.metrics.errors_sent.fetch_add(1, Relaxed);
                let refused =
                    proto::upload_response(false, None, Some(code::VERSION_CONFLICT), now_ms);
                Handled {
                    now: vec![refused, note],
                    ..Handled::default()
                }
            }
            Request::Resolve(_) => {
                let mut paths: Vec<String> =
                    revs.into_iter().flat_map(|r| r.changed_paths).collect();
                paths.sort();
                paths.dedup();
                self.revise(s, doc, dev, paths, now_ms)
            }
            // A download never scans.
            Request::Download(_) => Handled::default(),
        }
    }

    /// Write an upload's or a resolution's revision over `doc`, guarded
    /// by the compare-and-swap on it.
    fn revise(
        &mut self,
        s: Serving,
        doc: Doc,
        dev: Option<Device>,
        paths: Vec<String>,
        now_ms: u64,
    ) -> Handled {
        // A stored version at the limit (written before versions were
        // bounded) cannot grow: refused, never wrapped.
        let Some(next) = next_version(doc.version) else {
            return Handled::reply(self.refusal(&s.req, code::INVALID_REQUEST, now_ms));
        };
        let name = |given: &Option<String>, device: &str| {
            device_name(given.as_deref(), dev.as_ref(), device)
        };
        let (version, writes) = match &s.req {
            Request::Upload(u) => {
                let version = u.version.unwrap_or(0).max(next);
                let name = name(&u.device_name, &u.device_id);
                let rev = RevisionFields {
                    user: &u.user_id,
                    device: &u.device_id,
                    device_name: &name,
                    version,
                    previous: doc.version,
                    change_type: if doc.version == 0 { "create" } else { "update" },
                    changed_paths: &paths,
                    delta: u.delta.clone().unwrap_or_default().to_value(),
                    config_hash: Some(&u.config_hash),
                    strategy: None,
                    now: now_ms,
                    encryption: u.encryption.as_ref(),
                };
                let metadata = u.metadata.clone().unwrap_or_default();
                (
                    version,
                    self.revision_writes(&rev, &doc, &u.encrypted_config, &metadata),
                )
            }
            Request::Resolve(r) => {
                let version = r.resolved_version.unwrap_or(0).max(next);
                let name = name(&r.device_name, &r.device_id);
                let rev = RevisionFields {
                    user: &r.user_id,
                    device: &r.device_id,
                    device_name: &name,
                    version,
                    previous: doc.version,
                    change_type: "merge",
                    changed_paths: &paths,
                    delta: r.delta.as_ref().map_or(Value::Null, |d| d.to_value()),
                    config_hash: r.config_hash.as_deref(),
                    strategy: Some(&r.strategy),
                    now: now_ms,
                    encryption: r.encryption.as_ref(),
                };
                let metadata = r.metadata.clone().unwrap_or_else(|| doc.metadata.clone());
                (
                    version,
                    self.revision_writes(&rev, &doc, &r.resolved_config, &metadata),
                )
            }
            // Only uploads and resolutions make revisions.
            Request::CheckStatus(_) | Request::Download(_) => return Handled::default(),
        };
        self.write(s, doc, version, writes)
    }

    /// The write committed: the request's success.
    fn written(&mut self, s: Serving, doc: Doc, version: u64, now_ms: u64) -> Handled {
        Handled::reply(match &s.req {
            Request::Download(_) => proto::download_response(&doc, now_ms),
            Request::Upload(_) => proto::upload_response(true, Some(version), None, now_ms),
            Request::Resolve(_) => proto::resolve_response(true, Some(version), None, now_ms),
            // A status check never writes.
            Request::CheckStatus(_) => return Handled::default(),
        })
    }

    /// A call failed in the store: the request's error answer.
    fn failed(&mut self, s: &Serving, e: &EngineError, now_ms: u64) -> Handled {
        self.metrics.errors_sent.fetch_add(1, Relaxed);
        let (code, message) = (engine_code(e), e.to_string());
        Handled::reply(match s.req {
            Request::CheckStatus(_) => {
                proto::error_frame(code, &message, Some("check-status-request"), now_ms)
            }
            Request::Download(_) => {
                proto::error_frame(code, &message, Some("download-config-request"), now_ms)
            }
            Request::Upload(_) | Request::Resolve(_) => self.refusal(&s.req, code, now_ms),
        })
    }

    /// An upload's or resolution's refusal with `code` (not counted here).
    fn refusal(&self, req: &Request, code: &str, now_ms: u64) -> String {
        match req {
            Request::Resolve(_) => proto::resolve_response(false, None, Some(code), now_ms),
            _ => proto::upload_response(false, None, Some(code), now_ms),
        }
    }

    /// The document, its history entry and the device record of a new
    /// revision, in one job guarded by the document's compare-and-swap.
    fn revision_writes(
        &self,
        rev: &RevisionFields<'_>,
        seen: &Doc,
        encrypted: &str,
        metadata: &Map<String, Value>,
    ) -> Vec<LocalWrite> {
        let mut doc = write(
            DOCS,
            rev.user.to_string(),
            Op::Put,
            rev.doc(encrypted, metadata),
        );
        doc.expect = Some(Expect::Fields(seen.expectation()));
        let history_id = proto::history_id(rev.user, rev.version, &self.node);
        let device = proto::device_fields(
            rev.user,
            rev.device,
            rev.device_name,
            rev.version,
            rev.config_hash,
            if rev.change_type == "merge" {
                "bidirectional"
            } else {
                "upload"
            },
            rev.now,
        );
        vec![
            doc,
            write(HISTORY, history_id, Op::Put, rev.history()),
            write(
                DEVICES,
                proto::device_key(rev.user, rev.device),
                Op::Patch,
                device,
            ),
        ]
    }
}

impl Dialect for ConfigProto {
    /// No greeting (the client speaks first); revisions only: each becomes
    /// a sync-event for the user's other devices.
    fn open(&mut self, _: u64) -> Handled {
        Handled {
            follow: vec![Follow {
                key: 0,
                space: self.space.clone(),
                filter: Filter {
                    collections: Some([HISTORY.to_string()].into()),
                    events: false,
                },
                since: Since::Now,
            }],
            ..Handled::default()
        }
    }

    /// Each request is served after the previous one is answered, so a
    /// download sent after an upload reads what the upload stored.
    fn ordered(&self) -> bool {
        true
    }

    /// A device's own revisions are never sync-events for it.
    fn echo(&self) -> bool {
        false
    }

    fn on_text(&mut self, text: &str, now_ms: u64) -> Handled {
        let (kind, req) = proto::parse(text);
        let kind = kind.as_deref();
        let req = match req {
            Ok(r) => r,
            Err(bad) => return self.refuse_request(kind, &bad, now_ms),
        };
        if authed_user(&self.grant).is_some_and(|sub| sub != req.user_id()) {
            let bad = Bad::new(code::USER_MISMATCH, "userId must be the token's subject");
            return self.refuse_request(kind, &bad, now_ms);
        }
        if req.writes() && !self.grant.can_write(&self.space) {
            let bad = Bad::new(code::FORBIDDEN, "no write access to this space");
            return self.refuse_request(kind, &bad, now_ms);
        }
        self.user = Some(req.user_id().to_string());
        self.device = Some(req.device_id().to_string());
        let s = Serving {
            actor: authed_user(&self.grant).unwrap_or_else(|| req.device_id().to_string()),
            record: self.grant.can_write(&self.space),
            req,
            lost_rounds: 0,
            stage: Stage::Reading,
        };
        self.read(s)
    }

    /// The next step of the request in flight. A reply nobody asked for
    /// (another token, or a result of another kind) answers nothing.
    fn reply(&mut self, token: u64, reply: Reply, now_ms: u64) -> Handled {
        let mut s = match self.serving.take() {
            Some((t, s)) if t == token => s,
            other => {
                self.serving = other;
                return Handled::default();
            }
        };
        let stage = std::mem::replace(&mut s.stage, Stage::Reading);
        match (stage, reply) {
            (Stage::Reading, Reply::Got(Ok(got))) => {
                let mut got = got.into_iter();
                let doc = got.next().flatten().filter(|e| e.state.exists());
                let dev = got.next().flatten().filter(|e| e.state.exists());
                let doc = doc
                    .map(|e| Doc::from_fields(&e.state.visible()))
                    .unwrap_or_default();
                let dev = dev.map(|e| Device::from_fields(&e.state.visible()));
                self.decide(s, doc, dev, now_ms)
            }
            (Stage::Scanning { doc, dev, after }, Reply::Scanned(Ok(rows))) => {
                let user = s.req.user_id();
                let revs = rows
                    .iter()
                    .filter_map(|(_, f)| Revision::from_fields(f))
                    .filter(|r| r.user_id == user && r.version > after && r.version <= doc.version)
                    .collect();
                self.scanned(s, doc, dev, revs, now_ms)
            }
            (Stage::Writing { doc, version }, Reply::Written(Ok(_))) => {
                self.written(s, doc, version, now_ms)
            }
            // Another write got in between the read and ours: the next
            // round reads it and answers the conflict.
            (Stage::Writing { .. }, Reply::Written(Err(e)))
                if is_precondition(&e) && s.req.writes() =>
            {
                s.lost_rounds += 1;
                if s.lost_rounds < ATTEMPTS {
                    return self.read(s);
                }
                self.metrics.errors_sent.fetch_add(1, Relaxed);
                Handled::reply(self.refusal(&s.req, code::VERSION_CONFLICT, now_ms))
            }
            (_, Reply::Got(Err(e)) | Reply::Scanned(Err(e)) | Reply::Written(Err(e))) => {
                self.failed(&s, &e, now_ms)
            }
            _ => Handled::default(),
        }
    }

    fn refuse(&mut self, why: Refusal, now_ms: u64) -> String {
        self.metrics.errors_sent.fetch_add(1, Relaxed);
        proto::error_frame(code::INVALID_REQUEST, &why.message(), None, now_ms)
    }

    /// A committed revision of this user by another device: `sync-event`.
    fn change(
        &mut self,
        _: u64,
        c: &Committed,
        _: Option<&StoredEntity>,
        out: &mut Vec<Utf8Bytes>,
    ) {
        let ch = &c.entry.change;
        if ch.collection != HISTORY || ch.op == Op::Delete {
            return;
        }
        let field = |k: &str| ch.fields.get(k).and_then(Value::as_str);
        if self.user.is_none() || field("userId") != self.user.as_deref() {
            return;
        }
        if self.device.is_some() && field("deviceId") == self.device.as_deref() {
            return;
        }
        out.push(
            c.rendered
                .get_or(SLOT_CONFIG, || proto::sync_event(&ch.fields)),
        )
    }

    /// Lag recovery past the log's horizon replays entity states: old
    /// revisions are not news, and `check-status` tells where things are.
    fn snapshot(
        &mut self,
        _: u64,
        _: &str,
        _: &str,
        _: &StoredEntity,
        _: u64,
        _: &mut Vec<Utf8Bytes>,
    ) {
    }
}

/// A status check's answer.
fn status(q: &proto::Query, doc: &Doc, lost: bool, now_ms: u64) -> String {
    let local = q.local_version.unwrap_or(0);
    let has_changes = q.has_local_changes.unwrap_or(false);
    let (needs, dir) = proto::direction(doc.version, local, has_changes, lost);
    proto::check_status_response(doc, needs, dir, now_ms)
}

/// The `conflict-notification` for `device` at `local_version` whose
/// changes (`local`) meet the revisions `revs` up to the stored one.
/// Revisions of the device itself count as its own side; when its
/// revision at the stored version lost, that one's paths are local too.
fn conflict(
    device: &str,
    mut local: Vec<String>,
    revs: Vec<Revision>,
    doc: &Doc,
    local_version: u64,
    now_ms: u64,
) -> String {
    let mut remote = Vec::new();
    for r in revs {
        if r.device_id == device {
            local.extend(r.changed_paths);
        } else {
            remote.extend(r.changed_paths);
        }
    }
    let paths = proto::conflicting_paths(&local, &remote);
    let manual = !paths.is_empty();
    proto::conflict_notification(local_version, doc.version, &paths, manual, now_ms)
}

/// The request's device name, else the recorded one, else the id.
fn device_name(given: Option<&str>, dev: Option<&Device>, device: &str) -> String {
    match given.filter(|n| !n.is_empty()) {
        Some(n) => n.to_string(),
        None => dev
            .and_then(|d| d.device_name.clone())
            .unwrap_or_else(|| device.to_string()),
    }
}

fn write(
    collection: &str,
    id: String,
    op: Op,
    fields: std::collections::BTreeMap<String, Value>,
) -> LocalWrite {
    LocalWrite {
        collection: collection.to_string(),
        id,
        op,
        fields,
        client_us: None,
        expect: None,
    }
}

/// The version after `v`, if it stays within `proto::MAX_VERSION + 1`.
fn next_version(v: u64) -> Option<u64> {
    v.checked_add(1).filter(|n| *n <= proto::MAX_VERSION + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One engine error of each kind -> the seed's `error` string.
    #[test]
    fn engine_errors_map_through_one_table() {
        let got: Vec<&str> = EngineError::samples()
            .iter()
            .map(|e| wire(e.class()))
            .collect();
        assert_eq!(
            got,
            [
                code::INVALID_REQUEST,
                code::INVALID_REQUEST,
                code::VERSION_CONFLICT,
                code::DISK_FULL,
                code::DISK_FULL,
                code::UNAVAILABLE,
                code::UNAVAILABLE,
                code::UNAVAILABLE,
                code::STORAGE_FAILED,
                code::STORAGE_FAILED,
            ]
        );
        assert!(
            EngineError::samples()
                .iter()
                .filter(|e| is_precondition(e))
                .count()
                == 1
        );
    }
}
