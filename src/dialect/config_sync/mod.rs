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
//! Each connection serves its requests strictly in order (a request starts
//! after the previous one is answered), so a download sent after an upload
//! reads what the upload stored.

mod proto;

/// The frame parser, for the property tests (tests/fuzz.rs).
#[doc(hidden)]
pub use proto::parse;
pub use proto::{DEVICES, DOCS, HISTORY};

use super::SLOT_CONFIG;
use super::{Dialect, Follow, Handled, Opening, Refusal, Refused, Since};
use crate::auth::Grant;
use crate::dialect::Ctx;
use crate::engine::Committed;
use crate::engine::{off_worker, Engine, EngineError, ErrorClass, Filter, PAGE_BYTES};
use crate::model::Op;
use crate::store::{Cap, Expect, LocalWrite, StoredEntity};
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
    let engine = state.engine.clone();
    Ok(Opening::new("/ws/config", move |conn| ConfigProto {
        job: Job {
            node: engine.node_id().to_string(),
            engine,
            space,
            conn: conn.id,
            actor: String::new(),
            now_ms: 0,
        },
        grant,
        user,
        device,
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

pub struct ConfigProto {
    job: Job,
    grant: Grant,
    /// The user whose devices' revisions this connection is told about.
    user: Option<String>,
    /// This device (its own revisions are not echoed as sync-events).
    device: Option<String>,
}

impl ConfigProto {
    fn refuse_request(&self, kind: Option<&str>, bad: &Bad, now_ms: u64) -> Handled {
        self.job.engine.metrics.errors_sent.fetch_add(1, Relaxed);
        Handled::reply(proto::refusal(kind, bad, now_ms))
    }
}

impl Dialect for ConfigProto {
    /// No greeting (the client speaks first); revisions only: each becomes
    /// a sync-event for the user's other devices.
    fn open(&mut self, _: u64) -> Handled {
        Handled {
            follow: vec![Follow {
                key: 0,
                space: self.job.space.clone(),
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
        if req.writes() && !self.grant.can_write(&self.job.space) {
            let bad = Bad::new(code::FORBIDDEN, "no write access to this space");
            return self.refuse_request(kind, &bad, now_ms);
        }
        self.user = Some(req.user_id().to_string());
        self.device = Some(req.device_id().to_string());
        let mut job = self.job.clone();
        job.now_ms = now_ms;
        job.actor = authed_user(&self.grant).unwrap_or_else(|| req.device_id().to_string());
        let record = self.grant.can_write(&self.job.space);
        match req {
            Request::CheckStatus(q) => {
                Handled::later(Box::pin(async move { job.check_status(q).await }))
            }
            Request::Download(q) => {
                Handled::later(Box::pin(async move { job.download(q, record).await }))
            }
            Request::Upload(u) => Handled::later(Box::pin(async move { job.upload(u).await })),
            Request::Resolve(r) => Handled::later(Box::pin(async move { job.resolve(r).await })),
        }
    }

    fn refuse(&mut self, why: Refusal, now_ms: u64) -> String {
        self.job.engine.metrics.errors_sent.fetch_add(1, Relaxed);
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

/// What a request needs to run after `on_text` returned: engine calls only.
#[derive(Clone)]
struct Job {
    engine: Arc<Engine>,
    space: String,
    node: String,
    conn: u64,
    actor: String,
    /// When the request was read: the time its frames carry.
    now_ms: u64,
}

impl Job {
    /// A store read of the connection's space, off the async workers.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Engine, &str) -> Result<T, EngineError> + Send + 'static,
    ) -> Result<T, EngineError> {
        let (engine, space) = (self.engine.clone(), self.space.clone());
        off_worker(move || f(&engine, &space)).await
    }

    async fn doc(&self, user: &str) -> Result<Doc, EngineError> {
        let user = user.to_string();
        let e = self
            .read(move |e, space| e.entity(space, DOCS, &user))
            .await?;
        Ok(e.filter(|e| e.state.exists())
            .map(|e| Doc::from_fields(&e.state.visible()))
            .unwrap_or_default())
    }

    async fn device(&self, user: &str, device: &str) -> Result<Option<Device>, EngineError> {
        let key = proto::device_key(user, device);
        let e = self
            .read(move |e, space| e.entity(space, DEVICES, &key))
            .await?;
        Ok(e.filter(|e| e.state.exists())
            .map(|e| Device::from_fields(&e.state.visible())))
    }

    /// The user's revisions with version in `(after, upto]` (the newest
    /// `MAX_SCAN` versions of that range), in version order.
    async fn revisions(
        &self,
        user: &str,
        after: u64,
        upto: u64,
    ) -> Result<Vec<Revision>, EngineError> {
        let user = user.to_string();
        self.read(move |engine, space| revisions(engine, space, &user, after, upto))
            .await
    }

    /// The `conflict-notification` for a device at `local_version` whose
    /// changes (`local`) meet the revisions after `base` up to the stored
    /// one. Revisions of the device itself count as its own side; when its
    /// revision at the stored version lost, that one's paths are local too.
    async fn conflict(
        &self,
        user: &str,
        device: &str,
        mut local: Vec<String>,
        base: u64,
        doc: &Doc,
        local_version: u64,
    ) -> Result<String, EngineError> {
        let mut remote = Vec::new();
        for r in self.revisions(user, base, doc.version).await? {
            if r.device_id == device {
                local.extend(r.changed_paths);
            } else {
                remote.extend(r.changed_paths);
            }
        }
        let paths = proto::conflicting_paths(&local, &remote);
        let manual = !paths.is_empty();
        Ok(proto::conflict_notification(
            local_version,
            doc.version,
            &paths,
            manual,
            self.now_ms,
        ))
    }

    async fn check_status(&self, q: proto::Query) -> Vec<String> {
        let run = async {
            let doc = self.doc(&q.user_id).await?;
            let dev = self.device(&q.user_id, &q.device_id).await?;
            let lost = dev.is_some_and(|d| d.lost_to(&doc));
            let local = q.local_version.unwrap_or(0);
            let has_changes = q.has_local_changes.unwrap_or(false);
            let (needs, dir) = proto::direction(doc.version, local, has_changes, lost);
            let mut frames = vec![proto::check_status_response(&doc, needs, dir, self.now_ms)];
            if lost {
                let base = doc.version - 1;
                let note = self.conflict(&q.user_id, &q.device_id, vec![], base, &doc, local);
                frames.push(note.await?);
            }
            Ok::<_, EngineError>(frames)
        };
        run.await
            .unwrap_or_else(|e| self.failed("check-status-request", &e))
    }

    async fn download(&self, q: proto::Query, record: bool) -> Vec<String> {
        let run = async {
            let doc = self.doc(&q.user_id).await?;
            if record && doc.version > 0 {
                let name = self
                    .device_name(&q.user_id, &q.device_id, q.device_name)
                    .await?;
                let fields = proto::device_fields(
                    &q.user_id,
                    &q.device_id,
                    &name,
                    doc.version,
                    doc.config_hash.as_deref(),
                    "download",
                    self.now_ms,
                );
                let w = write(
                    DEVICES,
                    proto::device_key(&q.user_id, &q.device_id),
                    Op::Patch,
                    fields,
                );
                self.push(vec![w]).await?;
            }
            Ok::<_, EngineError>(vec![proto::download_response(&doc, self.now_ms)])
        };
        run.await
            .unwrap_or_else(|e| self.failed("download-config-request", &e))
    }

    fn failed(&self, kind: &str, e: &EngineError) -> Vec<String> {
        self.engine.metrics.errors_sent.fetch_add(1, Relaxed);
        vec![proto::error_frame(
            engine_code(e),
            &e.to_string(),
            Some(kind),
            self.now_ms,
        )]
    }

    /// The request's device name, else the recorded one, else the id.
    async fn device_name(
        &self,
        user: &str,
        device: &str,
        given: Option<String>,
    ) -> Result<String, EngineError> {
        if let Some(n) = given.filter(|n| !n.is_empty()) {
            return Ok(n);
        }
        let recorded = self.device(user, device).await?.and_then(|d| d.device_name);
        Ok(recorded.unwrap_or_else(|| device.to_string()))
    }

    async fn push(&self, writes: Vec<LocalWrite>) -> Result<(), EngineError> {
        self.engine
            .push(&self.space, &self.actor, Some(self.conn), writes)
            .await
            .map(|_| ())
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

    async fn upload(&self, u: proto::Upload) -> Vec<String> {
        let fail = |code: &str| vec![proto::upload_response(false, None, Some(code), self.now_ms)];
        let delta = u.delta.clone().unwrap_or_default();
        let paths = delta.paths();
        let metadata = u.metadata.clone().unwrap_or_default();
        for _ in 0..ATTEMPTS {
            let round = async {
                let doc = self.doc(&u.user_id).await?;
                let dev = self.device(&u.user_id, &u.device_id).await?;
                let prev = u.previous_version.unwrap_or(0);
                let lost = dev.as_ref().is_some_and(|d| d.lost_to(&doc));
                if prev != doc.version || lost {
                    // Stale base, or a base that lost to a relay-concurrent
                    // revision of the same version: refused either way.
                    let base = if lost {
                        doc.version - 1
                    } else {
                        prev.min(doc.version)
                    };
                    let local = u.version.unwrap_or(prev);
                    let note = self
                        .conflict(&u.user_id, &u.device_id, paths.clone(), base, &doc, local)
                        .await?;
                    self.engine.metrics.errors_sent.fetch_add(1, Relaxed);
                    let refused = proto::upload_response(
                        false,
                        None,
                        Some(code::VERSION_CONFLICT),
                        self.now_ms,
                    );
                    return Ok(Some(vec![refused, note]));
                }
                // A stored version at the limit (written before versions
                // were bounded) cannot grow: refused, never wrapped.
                let Some(next) = next_version(doc.version) else {
                    return Ok(Some(fail(code::INVALID_REQUEST)));
                };
                let version = u.version.unwrap_or(0).max(next);
                let name = self
                    .device_name(&u.user_id, &u.device_id, u.device_name.clone())
                    .await?;
                let rev = RevisionFields {
                    user: &u.user_id,
                    device: &u.device_id,
                    device_name: &name,
                    version,
                    previous: doc.version,
                    change_type: if doc.version == 0 { "create" } else { "update" },
                    changed_paths: &paths,
                    delta: delta.to_value(),
                    config_hash: Some(&u.config_hash),
                    strategy: None,
                    now: self.now_ms,
                    encryption: u.encryption.as_ref(),
                };
                let writes = self.revision_writes(&rev, &doc, &u.encrypted_config, &metadata);
                match self.push(writes).await {
                    Ok(()) => Ok(Some(vec![proto::upload_response(
                        true,
                        Some(version),
                        None,
                        self.now_ms,
                    )])),
                    // Another write got in between the read and ours: the
                    // next round reads it and answers the conflict.
                    Err(e) if is_precondition(&e) => Ok(None),
                    Err(e) => Err(e),
                }
            };
            match round.await {
                Ok(Some(frames)) => return frames,
                Ok(None) => continue,
                Err(e) => {
                    self.engine.metrics.errors_sent.fetch_add(1, Relaxed);
                    return fail(engine_code(&e));
                }
            }
        }
        self.engine.metrics.errors_sent.fetch_add(1, Relaxed);
        fail(code::VERSION_CONFLICT)
    }

    /// A resolution is accepted as a new version whatever was stored: the
    /// client decided. The compare-and-swap only keeps it from overwriting
    /// a revision it never read; such a race is retried with a fresh read.
    async fn resolve(&self, r: proto::Resolve) -> Vec<String> {
        let fail = |code: &str| {
            vec![proto::resolve_response(
                false,
                None,
                Some(code),
                self.now_ms,
            )]
        };
        for _ in 0..ATTEMPTS {
            let round = async {
                let doc = self.doc(&r.user_id).await?;
                let dev = self.device(&r.user_id, &r.device_id).await?;
                let paths = match &r.delta {
                    Some(d) => d.paths(),
                    None => {
                        // What the merge reconciles: every revision since
                        // the device last synced (or since its lost one).
                        let lost = dev.as_ref().is_some_and(|d| d.lost_to(&doc));
                        let synced = dev.as_ref().and_then(|d| d.last_sync_version);
                        let base = match (lost, synced) {
                            (true, _) => doc.version - 1,
                            (false, Some(v)) => v.min(doc.version),
                            (false, None) => 0,
                        };
                        let mut all: Vec<String> = self
                            .revisions(&r.user_id, base, doc.version)
                            .await?
                            .into_iter()
                            .flat_map(|rev| rev.changed_paths)
                            .collect();
                        all.sort();
                        all.dedup();
                        all
                    }
                };
                let Some(next) = next_version(doc.version) else {
                    return Ok(Some(fail(code::INVALID_REQUEST)));
                };
                let version = r.resolved_version.unwrap_or(0).max(next);
                let name = self
                    .device_name(&r.user_id, &r.device_id, r.device_name.clone())
                    .await?;
                let delta = r.delta.as_ref().map_or(Value::Null, |d| d.to_value());
                let rev = RevisionFields {
                    user: &r.user_id,
                    device: &r.device_id,
                    device_name: &name,
                    version,
                    previous: doc.version,
                    change_type: "merge",
                    changed_paths: &paths,
                    delta,
                    config_hash: r.config_hash.as_deref(),
                    strategy: Some(&r.strategy),
                    now: self.now_ms,
                    encryption: r.encryption.as_ref(),
                };
                let metadata = r.metadata.clone().unwrap_or_else(|| doc.metadata.clone());
                let writes = self.revision_writes(&rev, &doc, &r.resolved_config, &metadata);
                match self.push(writes).await {
                    Ok(()) => Ok(Some(vec![proto::resolve_response(
                        true,
                        Some(version),
                        None,
                        self.now_ms,
                    )])),
                    Err(e) if is_precondition(&e) => Ok(None),
                    Err(e) => Err(e),
                }
            };
            match round.await {
                Ok(Some(frames)) => return frames,
                Ok(None) => continue,
                Err(e) => {
                    self.engine.metrics.errors_sent.fetch_add(1, Relaxed);
                    return fail(engine_code(&e));
                }
            }
        }
        self.engine.metrics.errors_sent.fetch_add(1, Relaxed);
        fail(code::VERSION_CONFLICT)
    }
}

/// The user's revisions with version in `(after, upto]` (the newest
/// `MAX_SCAN` versions of that range), in version order, read page by page.
fn revisions(
    engine: &Engine,
    space: &str,
    user: &str,
    after: u64,
    upto: u64,
) -> Result<Vec<Revision>, EngineError> {
    let after = after.max(upto.saturating_sub(MAX_SCAN));
    let prefix = format!("{user}:");
    let mut cursor = proto::history_from(user, after + 1);
    let mut out = Vec::new();
    loop {
        let page = engine.entities_page(
            space,
            Some(HISTORY),
            Some((HISTORY, cursor.as_str())),
            Cap::new(256, PAGE_BYTES),
        )?;
        let short = !page.more;
        let page = page.items;
        for (_, id, e) in &page {
            if !id.starts_with(&prefix) {
                return Ok(out);
            }
            let Some(r) = Revision::from_fields(&e.state.visible()) else {
                continue;
            };
            if r.version > upto {
                return Ok(out);
            }
            if r.user_id == user && r.version > after {
                out.push(r);
            }
        }
        match page.last() {
            Some((_, id, _)) if !short => cursor = id.clone(),
            _ => return Ok(out),
        }
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
