//! Seed 001, atome real-time sync: `GET /ws/atome-sync?space=NAME`,
//! documented in docs/protocol.md (its REST API under `/api/atome` is
//! atome_rest.rs).
//!
//! Socket clients send `atome:created|updated|altered|deleted`; each is
//! stored, then every *other* client of the space gets it with `sourceClient`
//! and `timestamp` (an alteration also carries the resulting atome). REST
//! writes are stored the same way and reach every socket client. What reaches
//! clients is rendered from the committed change, so atomes written through
//! any other dialect (or a peer) arrive the same way.

use super::atome::{self, bad, AtomeChange, AtomeEvent, AtomeWrite, Bad};
use super::SLOT_ATOME;
use super::{Call, Dialect, Follow, Handled, Opening, Refusal, Refused, Reply, Since};
use crate::auth::Grant;
use crate::dialect::Ctx;
use crate::engine::Committed;
use crate::engine::Filter;
use crate::store::StoredEntity;
use axum::extract::ws::Utf8Bytes;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// The handshake of `GET /ws/atome-sync?space=NAME` (see [`admit`]).
pub fn accept(
    state: &Ctx,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<Opening<AtomeProto>, Refused> {
    let (grant, space) = admit(state, headers, query)?;
    // The seed's client may name itself; otherwise the relay names it.
    let client_id = query
        .get("clientId")
        .filter(|c| !c.is_empty() && c.len() <= 256)
        .cloned()
        .unwrap_or_else(|| format!("client_{}", atome::random_id()));
    let (auth, metrics) = (state.auth.clone(), state.engine.metrics.clone());
    Ok(Opening::new("/ws/atome-sync", move |_| {
        AtomeProto::new(grant, space, client_id, auth, metrics)
    }))
}

/// How long a connection admitted without a token (in-band auth expected)
/// may wait before its `{"type":"auth"}`; then it is closed with 1008.
pub const AUTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Handshake checks. The real client (`SyncWebSocket.js`) opens the socket
/// without credentials and sends its token in a `{"type":"auth"}` message,
/// so when anonymous access is off a connection without any token is still
/// accepted, holding no scope: it receives nothing and may only send `auth`
/// and `ping` until its token is accepted (or [`AUTH_TIMEOUT`] passes).
/// A token given at the handshake is checked there as on every endpoint.
fn admit(
    state: &Ctx,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<(Grant, String), (StatusCode, String)> {
    let in_band = super::token_from(headers, query).is_none()
        && state.auth.anonymous() == crate::config::Anonymous::None;
    if !in_band {
        return super::admit_space(state, headers, query);
    }
    if state.engine.metrics.connections.load(Relaxed) as usize >= state.settings.max_connections {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "connection limit reached\n".into(),
        ));
    }
    let space = super::space_of(query)?;
    let pending = Grant {
        sub: "anonymous".into(),
        scope: None,
        spaces: None,
    };
    Ok((pending, space))
}

/// Error codes (shared with seed 000, plus `forbidden` and `unauthorized`).
pub use super::atome::{FAILED, INVALID, UNKNOWN};
pub const FORBIDDEN: &str = "forbidden";
pub const UNAUTHORIZED: &str = "unauthorized";

/// A parsed socket message.
#[derive(Debug, PartialEq)]
pub enum Request {
    Ping {
        timestamp: Value,
    },
    Pong,
    /// In-band authentication (`SyncWebSocket.connect({token})`).
    Auth {
        token: String,
    },
    Write(AtomeWrite),
}

/// Parse one text frame: its `requestId` (null if none) and the request.
pub fn parse(text: &str) -> (Value, Result<Request, Bad>) {
    match atome::envelope(text, INVALID) {
        Ok((rid, obj)) => (rid, parse_obj(&obj)),
        Err(b) => (Value::Null, Err(b)),
    }
}

fn parse_obj(obj: &Map<String, Value>) -> Result<Request, Bad> {
    let invalid = |e: atome::AtomeError| bad(INVALID, e.to_string());
    let kind = match obj.get("type") {
        Some(Value::String(s)) => s.as_str(),
        _ => return Err(bad(INVALID, "missing string field `type`")),
    };
    let w = match kind {
        "ping" => {
            return Ok(Request::Ping {
                timestamp: obj.get("timestamp").cloned().unwrap_or(Value::Null),
            })
        }
        "pong" => return Ok(Request::Pong),
        "auth" => {
            return match obj.get("token") {
                Some(Value::String(t)) if !t.is_empty() => Ok(Request::Auth { token: t.clone() }),
                _ => Err(bad(INVALID, "missing string field `token`")),
            }
        }
        "atome:created" | "atome:updated" => {
            let a = obj
                .get("atome")
                .ok_or_else(|| bad(INVALID, "missing object field `atome`"))?;
            AtomeWrite::Put(a.clone())
        }
        "atome:altered" => AtomeWrite::Alter {
            id: id_field(obj)?,
            alteration: obj
                .get("alteration")
                .cloned()
                .ok_or_else(|| bad(INVALID, "missing object field `alteration`"))?,
        },
        "atome:deleted" => AtomeWrite::Delete { id: id_field(obj)? },
        other => return Err(bad(UNKNOWN, format!("unknown message type {other:?}"))),
    };
    // Check the mapping now so a bad atome is refused before it is queued.
    w.to_local().map_err(invalid)?;
    Ok(Request::Write(w))
}

fn id_field(obj: &Map<String, Value>) -> Result<String, Bad> {
    match obj.get("atomeId") {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(_) => Err(bad(INVALID, "atomeId: must be a non-empty string")),
        None => Err(bad(INVALID, "missing string field `atomeId`")),
    }
}

// ---- rendering --------------------------------------------------------------

/// The greeting: `welcome`, what the real server sends and the only frame
/// from which the real client learns its `clientId` (it then fires its own
/// `sync:connected` event with `{clientId, serverTime: timestamp}`).
/// `serverTime` is the seed's name for the same instant.
pub fn welcome_frame(client_id: &str, now: u64) -> String {
    let ts = atome::iso_ms(now);
    json!({"type": "welcome", "clientId": client_id, "timestamp": ts, "serverTime": ts}).to_string()
}

/// `{type:"error", message, error, code, timestamp}` plus the request's
/// `requestId` when it had one: the real client reads `message` into its
/// `sync:error` event; `error` is the seed's name for the same text.
pub fn error_frame(code: &str, message: &str, rid: &Value, now: u64) -> String {
    let mut m = Map::new();
    m.insert("type".into(), "error".into());
    m.insert("message".into(), message.into());
    m.insert("error".into(), message.into());
    m.insert("code".into(), code.into());
    if !rid.is_null() {
        m.insert("requestId".into(), rid.clone());
    }
    m.insert("timestamp".into(), atome::iso_ms(now).into());
    Value::Object(m).to_string()
}

/// A committed atome change as the seed's event of the same name.
pub fn change_frame(d: &AtomeChange) -> String {
    let ts = atome::iso_ms(d.at_ms);
    let atome = d.atome.clone().unwrap_or(Value::Null);
    match d.event {
        AtomeEvent::Created | AtomeEvent::Updated => json!({"type": d.event.name(),
            "atome": atome, "sourceClient": d.actor, "timestamp": ts}),
        AtomeEvent::Altered => json!({"type": "atome:altered", "atomeId": d.id,
            "alteration": d.alteration, "atome": atome, "sourceClient": d.actor, "timestamp": ts}),
        AtomeEvent::Deleted => json!({"type": "atome:deleted", "atomeId": d.id,
            "sourceClient": d.actor, "timestamp": ts}),
    }
    .to_string()
}

/// An entity's current state (lag recovery past the log's horizon); the
/// writer is unknown, so there is no `sourceClient`.
pub fn snapshot_frame(id: &str, e: &StoredEntity, now: u64) -> String {
    let ts = atome::iso_ms(now);
    if e.state.exists() {
        let a = atome::join_atome(id, &e.state.visible());
        json!({"type": "atome:updated", "atome": a, "timestamp": ts})
    } else {
        json!({"type": "atome:deleted", "atomeId": id, "timestamp": ts})
    }
    .to_string()
}

// ---- the socket connection ---------------------------------------------------

/// One `/ws/atome-sync` connection. No engine handle: each write is a
/// [`Call::Write`] the driver makes (in the order the frames were read).
pub struct AtomeProto {
    metrics: Arc<crate::metrics::Metrics>,
    auth: crate::auth::Auth,
    space: String,
    grant: Grant,
    client_id: String,
    /// Set while in-band authentication is awaited (within
    /// [`AUTH_TIMEOUT`] of the connection's start).
    auth_due: bool,
    /// Writes in flight, by call token: the rid a refusal answers.
    writes: HashMap<u64, Value>,
    next_token: u64,
}

impl AtomeProto {
    /// One connection to `space` named `client_id`, with the handshake's
    /// `grant`: one without a scope awaits in-band authentication, checked
    /// with `auth`.
    pub fn new(
        grant: Grant,
        space: String,
        client_id: String,
        auth: crate::auth::Auth,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> AtomeProto {
        AtomeProto {
            metrics,
            auth,
            space,
            auth_due: grant.scope.is_none(),
            grant,
            client_id,
            writes: HashMap::new(),
            next_token: 0,
        }
    }
}

/// Who writes: the token's subject, or the client's id when anonymous (as on
/// the native endpoint). Rendered as `sourceClient`.
pub(super) fn actor(grant: &Grant, client_id: Option<&str>) -> String {
    match client_id {
        Some(c) if grant.sub == "anonymous" => c.to_string(),
        _ => grant.sub.clone(),
    }
}

impl AtomeProto {
    fn error(&self, code: &str, message: &str, rid: &Value, now_ms: u64) -> String {
        self.metrics.errors_sent.fetch_add(1, Relaxed);
        error_frame(code, message, rid, now_ms)
    }

    /// `{"type":"auth","token"}`: a token that verifies and may read this
    /// space becomes the connection's grant (its scopes apply from now on)
    /// and is answered `auth:success` with the `clientId`, as the real
    /// server does. A refused token leaves the grant as it was.
    fn authenticate(&mut self, token: &str, rid: &Value, now_ms: u64) -> String {
        let grant = match self.auth.verify(token, now_ms / 1000) {
            Ok(g) => g,
            Err(e) => {
                self.metrics.auth_failures.fetch_add(1, Relaxed);
                return self.error(UNAUTHORIZED, &format!("unauthorized: {e}"), rid, now_ms);
            }
        };
        if !grant.can_read(&self.space) {
            return self.error(
                FORBIDDEN,
                &format!("no read access to space {:?}", self.space),
                rid,
                now_ms,
            );
        }
        self.grant = grant;
        self.auth_due = false;
        json!({"type": "auth:success", "clientId": self.client_id}).to_string()
    }
}

impl Dialect for AtomeProto {
    /// The welcome, then the space's atomes (no ephemeral events).
    fn open(&mut self, now_ms: u64) -> Handled {
        Handled {
            now: vec![welcome_frame(&self.client_id, now_ms)],
            follow: vec![Follow {
                key: 0,
                space: self.space.clone(),
                filter: Filter {
                    collections: Some([atome::COLLECTION.to_string()].into()),
                    events: false,
                },
                since: Since::Now,
            }],
            ..Handled::default()
        }
    }

    /// A client never gets its own writes back.
    fn echo(&self) -> bool {
        false
    }

    fn auth_timeout(&self) -> Option<std::time::Duration> {
        self.auth_due.then_some(AUTH_TIMEOUT)
    }

    fn on_text(&mut self, text: &str, now_ms: u64) -> Handled {
        let (rid, req) = parse(text);
        match req {
            Err(b) => Handled::reply(self.error(b.code, &b.message, &rid, now_ms)),
            Ok(Request::Ping { timestamp }) => {
                let ts = if timestamp.is_null() {
                    now_ms.into()
                } else {
                    timestamp
                };
                Handled::reply(json!({"type": "pong", "timestamp": ts}).to_string())
            }
            Ok(Request::Pong) => Handled::default(),
            Ok(Request::Auth { token }) => Handled::reply(self.authenticate(&token, &rid, now_ms)),
            Ok(Request::Write(_)) if self.grant.scope.is_none() => Handled::reply(self.error(
                UNAUTHORIZED,
                "authenticate first: send {\"type\":\"auth\",\"token\":…}",
                &rid,
                now_ms,
            )),
            Ok(Request::Write(w)) => {
                if !self.grant.can_write(&self.space) {
                    return Handled::reply(self.error(
                        FORBIDDEN,
                        "no write access to this space",
                        &rid,
                        now_ms,
                    ));
                }
                let write = match w.to_local() {
                    Ok(w) => w,
                    Err(e) => {
                        return Handled::reply(self.error(INVALID, &e.to_string(), &rid, now_ms))
                    }
                };
                // Stored, then fanned out to the other clients; only a
                // failure is answered (the seed has no acknowledgement).
                self.next_token += 1;
                self.writes.insert(self.next_token, rid);
                let call = Call::Write {
                    space: self.space.clone(),
                    actor: actor(&self.grant, Some(&self.client_id)),
                    writes: vec![write],
                    write_ids: Vec::new(),
                };
                Handled::call(self.next_token, call)
            }
        }
    }

    fn reply(&mut self, token: u64, reply: Reply, now_ms: u64) -> Handled {
        let rid = self.writes.remove(&token).unwrap_or(Value::Null);
        match reply {
            Reply::Written(Err(e)) => {
                let (_, code) = atome::wire(e.class());
                Handled::reply(self.error(code, &e.to_string(), &rid, now_ms))
            }
            _ => Handled::default(),
        }
    }

    fn refuse(&mut self, why: Refusal, now_ms: u64) -> String {
        self.error(INVALID, &why.message(), &Value::Null, now_ms)
    }

    fn needs_state(&self, _: u64, c: &Committed) -> bool {
        atome::needs_state(c)
    }

    fn change(
        &mut self,
        _: u64,
        c: &Committed,
        state: Option<&StoredEntity>,
        out: &mut Vec<Utf8Bytes>,
    ) {
        if c.entry.change.collection != atome::COLLECTION || !self.grant.can_read(&self.space) {
            return;
        }
        out.push(c.rendered.get_or(SLOT_ATOME, || {
            change_frame(&atome::describe_committed(c, state))
        }))
    }

    fn snapshot(
        &mut self,
        _: u64,
        collection: &str,
        id: &str,
        e: &StoredEntity,
        now_ms: u64,
        out: &mut Vec<Utf8Bytes>,
    ) {
        if collection == atome::COLLECTION && self.grant.can_read(&self.space) {
            out.push(snapshot_frame(id, e, now_ms).into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(text: &str) -> Result<Request, Bad> {
        parse(text).1
    }

    #[test]
    fn parses_the_client_messages() {
        assert_eq!(
            req(r#"{"type":"atome:created","atome":{"id":"a","kind":"note"}}"#),
            Ok(Request::Write(AtomeWrite::Put(
                json!({"id":"a","kind":"note"})
            )))
        );
        assert_eq!(
            req(r#"{"type":"atome:altered","atomeId":"a","alteration":{"x":1}}"#),
            Ok(Request::Write(AtomeWrite::Alter {
                id: "a".into(),
                alteration: json!({"x":1})
            }))
        );
        assert_eq!(
            req(r#"{"type":"atome:deleted","atomeId":"a"}"#),
            Ok(Request::Write(AtomeWrite::Delete { id: "a".into() }))
        );
        assert_eq!(
            req(r#"{"type":"ping","timestamp":7}"#),
            Ok(Request::Ping {
                timestamp: json!(7)
            })
        );
    }

    #[test]
    fn bad_messages_get_codes() {
        assert_eq!(req("{").unwrap_err().code, INVALID);
        assert_eq!(
            req(r#"{"type":"atome:created"}"#).unwrap_err().code,
            INVALID
        );
        assert_eq!(
            req(r#"{"type":"atome:created","atome":{"kind":"x"}}"#)
                .unwrap_err()
                .code,
            INVALID
        );
        assert_eq!(
            req(r#"{"type":"atome:altered","atomeId":"a","alteration":3}"#)
                .unwrap_err()
                .code,
            INVALID
        );
        assert_eq!(
            req(r#"{"type":"atome:deleted"}"#).unwrap_err().code,
            INVALID
        );
        assert_eq!(
            req(r#"{"type":"atome:exploded"}"#).unwrap_err().code,
            UNKNOWN
        );
    }

    #[test]
    fn renders_the_seed_event_table() {
        let mut d = AtomeChange {
            event: AtomeEvent::Created,
            id: "a".into(),
            atome: Some(json!({"id": "a", "k": 1})),
            alteration: None,
            actor: "client_1".into(),
            at_ms: 0,
        };
        let ts = "1970-01-01T00:00:00.000Z";
        let v: Value = serde_json::from_str(&change_frame(&d)).unwrap();
        assert_eq!(
            v,
            json!({"type": "atome:created", "atome": {"id": "a", "k": 1}, "sourceClient": "client_1", "timestamp": ts})
        );
        d.event = AtomeEvent::Altered;
        d.alteration = Some(json!({"k": 1}));
        let v: Value = serde_json::from_str(&change_frame(&d)).unwrap();
        assert_eq!(
            v,
            json!({"type": "atome:altered", "atomeId": "a", "alteration": {"k": 1},
            "atome": {"id": "a", "k": 1}, "sourceClient": "client_1", "timestamp": ts})
        );
        d.event = AtomeEvent::Deleted;
        d.atome = None;
        let v: Value = serde_json::from_str(&change_frame(&d)).unwrap();
        assert_eq!(
            v,
            json!({"type": "atome:deleted", "atomeId": "a", "sourceClient": "client_1", "timestamp": ts})
        );
        let v: Value = serde_json::from_str(&welcome_frame("c", 0)).unwrap();
        assert_eq!(
            v,
            json!({"type": "welcome", "clientId": "c", "timestamp": ts, "serverTime": ts})
        );
        let v: Value = serde_json::from_str(&error_frame("x", "bad", &Value::Null, 0)).unwrap();
        assert_eq!(
            v,
            json!({"type": "error", "message": "bad", "error": "bad", "code": "x", "timestamp": ts})
        );
    }
}
