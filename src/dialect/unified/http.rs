//! Seed 004's HTTP API, as RHTMX's real server serves it and its clients
//! use it (`rusty-sync.js`, `rusty-field-sync.js`): catch-up after a reload
//! (`GET /api/sync/{entity}?since=N`, `GET /api/field-sync/{entity}?since=N`),
//! pushes while the socket is down (`POST` on the same paths); the
//! Server-Sent Events fallback (`GET /api/sync/events`) is `events`, run by
//! the connection driver. Same tokens, spaces and per-type versions as the
//! sockets. Documented in docs/protocol.md.

use super::proto::{self, ChangeAction, FieldUpdate, UnifiedMessage};
use super::{engine_error, proto_sync_page};
use crate::auth::Grant;
use crate::dialect::Ctx;
use crate::dialect::{admit, gzip};
use crate::engine::{off_worker, EngineError, ErrorClass};
use crate::rfc3339::Timestamp;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};

/// Most changes one `GET` returns. A longer backlog is paged: the reply's
/// `version` is then the last change's, so the client's next sync goes on
/// from there.
pub const MAX_CHANGES: usize = 1000;
/// Most changes one `POST` may carry.
pub const MAX_PUSH: usize = 1000;

/// A refused request: `{"error", "code"}` with an HTTP status.
pub struct HttpError {
    status: StatusCode,
    code: String,
    message: String,
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.message, "code": self.code});
        (self.status, Json(body)).into_response()
    }
}

fn refuse(status: StatusCode, code: &str, message: impl Into<String>) -> HttpError {
    HttpError {
        status,
        code: code.to_string(),
        message: message.into(),
    }
}

type Reply = Result<Response, HttpError>;

/// Who calls, in which space: admission as on the sockets, then the scope
/// the method needs.
pub(super) struct Caller {
    pub grant: Grant,
    pub space: String,
    pub actor: String,
}

pub(super) fn caller(
    state: &Ctx,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    write: bool,
) -> Result<Caller, HttpError> {
    let grant = admit(state, headers, query).map_err(|(status, m)| {
        let code = if status == StatusCode::UNAUTHORIZED {
            "unauthorized"
        } else {
            "unavailable"
        };
        refuse(status, code, m.trim_end())
    })?;
    let space = query
        .get("space")
        .cloned()
        .unwrap_or_else(|| "default".into());
    crate::engine::validate_name("space", &space).map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            proto::code::INVALID_MESSAGE,
            e.to_string(),
        )
    })?;
    let allowed = if write {
        grant.can_write(&space)
    } else {
        grant.can_read(&space)
    };
    if !allowed {
        let what = if write { "write" } else { "read" };
        return Err(refuse(
            StatusCode::FORBIDDEN,
            proto::code::FORBIDDEN,
            format!("no {what} access to space {space:?}"),
        ));
    }
    let actor = if grant.sub == "anonymous" {
        query
            .get("client_id")
            .filter(|c| crate::engine::validate_name("client_id", c).is_ok())
            .cloned()
            .unwrap_or_else(|| "anonymous".into())
    } else {
        grant.sub.clone()
    };
    Ok(Caller {
        grant,
        space,
        actor,
    })
}

fn since(query: &HashMap<String, String>) -> Result<u64, HttpError> {
    match query.get("since") {
        None => Ok(0),
        Some(s) => s.parse::<i64>().map(|n| n.max(0) as u64).map_err(|_| {
            refuse(
                StatusCode::BAD_REQUEST,
                proto::code::INVALID_MESSAGE,
                "since: an integer",
            )
        }),
    }
}

fn check_entity(entity: &str) -> Result<(), HttpError> {
    crate::engine::validate_name("entity", entity).map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            proto::code::INVALID_MESSAGE,
            e.to_string(),
        )
    })
}

fn engine_refusal(e: &EngineError) -> HttpError {
    let r = engine_error(e);
    let (_, status) = super::wire(e.class());
    refuse(status, r.code, r.message)
}

/// A JSON body, gzipped or not (`Content-Encoding: gzip`), at most
/// `server.max_frame_bytes` once decompressed.
fn json_body<T: serde::de::DeserializeOwned>(
    state: &Ctx,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<T, HttpError> {
    let max = state.settings.max_frame_bytes;
    let gzipped = headers
        .get(axum::http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    let text = if gzipped {
        gzip::gunzip_text(body, max).map_err(|e| {
            let status = match e {
                gzip::GzipError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::BAD_REQUEST,
            };
            refuse(status, proto::code::INVALID_MESSAGE, format!("body: {e}"))
        })?
    } else {
        if body.len() > max {
            return Err(refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                proto::code::TOO_LARGE,
                format!("body of {} bytes exceeds the {max}-byte limit", body.len()),
            ));
        }
        String::from_utf8(body.to_vec()).map_err(|_| {
            refuse(
                StatusCode::BAD_REQUEST,
                proto::code::INVALID_JSON,
                "body: not UTF-8",
            )
        })?
    };
    serde_json::from_str(&text).map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            proto::code::INVALID_MESSAGE,
            format!("body: {e}"),
        )
    })
}

/// The common start of both `GET`s: a reader, the cursor, a valid entity
/// type.
fn sync_request(
    state: &Ctx,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    entity: &str,
) -> Result<(Caller, u64), HttpError> {
    let c = caller(state, headers, query, false)?;
    let since = since(query)?;
    check_entity(entity)?;
    Ok((c, since))
}

/// The version a `GET` reply carries: the type's latest, or, when the page
/// is full (more may follow), the last returned change's, so the client's
/// next sync goes on from there.
fn page_version(latest: u64, full: bool, last: Option<u64>) -> u64 {
    match (full, last) {
        (true, Some(v)) => v,
        _ => latest,
    }
}

/// The common start of both `POST`s: a writer, a valid entity type, a
/// body of at most [`MAX_PUSH`] changes.
fn push_request<T: serde::de::DeserializeOwned>(
    state: &Ctx,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    entity: &str,
    body: &Bytes,
    changes: impl Fn(&T) -> usize,
) -> Result<(Caller, T), HttpError> {
    let c = caller(state, headers, query, true)?;
    check_entity(entity)?;
    let req: T = json_body(state, headers, body)?;
    if changes(&req) > MAX_PUSH {
        return Err(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            proto::code::TOO_LARGE,
            format!("at most {MAX_PUSH} changes per request"),
        ));
    }
    Ok((c, req))
}

/// `GET /api/sync/{entity}?since=N` → `{entity, version, changes}`.
pub async fn get_sync(
    State(state): State<Ctx>,
    Path(entity): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Reply {
    let (c, since) = sync_request(&state, &headers, &query, &entity)?;
    let (engine, space, ent) = (state.engine.clone(), c.space.clone(), entity.clone());
    let (latest, changes) =
        off_worker(move || proto_sync_page(&engine, &space, &ent, since, MAX_CHANGES))
            .await
            .map_err(|e| engine_refusal(&e))?;
    let last = changes.last().map(|ch| ch.version.max(0) as u64);
    let version = page_version(latest, changes.len() >= MAX_CHANGES, last);
    Ok(Json(json!({"entity": entity, "version": version, "changes": changes})).into_response())
}

/// A change in a `POST /api/sync/{entity}` body.
#[derive(Deserialize)]
pub struct ClientChange {
    pub id: String,
    pub action: ChangeAction,
    #[serde(default)]
    pub data: Option<Value>,
    /// Sent by some clients; not used (last writer wins).
    #[serde(default)]
    pub client_version: Option<i64>,
}

#[derive(Deserialize)]
pub struct PushBody {
    pub changes: Vec<ClientChange>,
}

/// `POST /api/sync/{entity}` `{changes: [{id, action, data}]}` →
/// `{version, applied: [ids], conflicts: ["id: why"]}`. Each change is
/// stored on its own, as the real server does; one refused change does not
/// stop the others.
pub async fn post_sync(
    State(state): State<Ctx>,
    Path(entity): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let (c, req) = push_request(&state, &headers, &query, &entity, &body, |r: &PushBody| {
        r.changes.len()
    })?;
    let (mut applied, mut conflicts) = (Vec::new(), Vec::new());
    for ch in req.changes {
        let _ = ch.client_version;
        let w = match proto::push_write(ch.id.clone(), entity.clone(), ch.action, ch.data) {
            Ok(w) => w,
            Err(r) => {
                conflicts.push(format!("{}: {}", ch.id, r.message));
                continue;
            }
        };
        match state.engine.push(&c.space, &c.actor, None, vec![w]).await {
            Ok(_) => applied.push(ch.id),
            // The change itself is refused: the others go on.
            Err(e) if matches!(e.class(), ErrorClass::Invalid | ErrorClass::Schema) => {
                conflicts.push(format!("{}: {}", ch.id, engine_error(&e).message))
            }
            Err(e) => return Err(engine_refusal(&e)),
        }
    }
    let _ = &c.grant;
    let (engine, space, ent) = (state.engine.clone(), c.space.clone(), entity.clone());
    let (version, _) = off_worker(move || engine.type_changes(&space, &ent, u64::MAX, 0))
        .await
        .map_err(|e| engine_refusal(&e))?;
    Ok(
        Json(json!({"version": version, "applied": applied, "conflicts": conflicts}))
            .into_response(),
    )
}

/// `GET /api/field-sync/{entity}?since=N` → `{entity, version, changes:
/// [FieldChange]}`: every field of each entity changed since the cursor.
pub async fn get_field_sync(
    State(state): State<Ctx>,
    Path(entity): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Reply {
    let (c, since) = sync_request(&state, &headers, &query, &entity)?;
    let (engine, space, ent) = (state.engine.clone(), c.space.clone(), entity.clone());
    let (latest, ents) = off_worker(move || engine.type_changes(&space, &ent, since, MAX_CHANGES))
        .await
        .map_err(|e| engine_refusal(&e))?;
    let last = ents.last().map(|(_, e)| e.type_version);
    let version = page_version(latest, ents.len() >= MAX_CHANGES, last);
    let changes: Vec<proto::FieldChange> = ents
        .iter()
        .flat_map(|(id, e)| proto::entity_fields(&entity, id, e))
        .collect();
    Ok(Json(json!({"entity": entity, "version": version, "changes": changes})).into_response())
}

/// A field in a `POST /api/field-sync/{entity}` body.
#[derive(Deserialize)]
pub struct ClientFieldChange {
    pub entity_id: String,
    #[serde(flatten)]
    pub update: FieldUpdate,
}

#[derive(Deserialize)]
pub struct FieldPushBody {
    pub changes: Vec<ClientFieldChange>,
}

/// `POST /api/field-sync/{entity}` `{changes: [{entity_id, field, value,
/// action, timestamp}]}` → `{applied: [FieldChange], conflicts:
/// [FieldConflict]}`, each field competing on its own timestamp as with
/// `push_fields`.
pub async fn post_field_sync(
    State(state): State<Ctx>,
    Path(entity): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let (c, req) = push_request(
        &state,
        &headers,
        &query,
        &entity,
        &body,
        |r: &FieldPushBody| r.changes.len(),
    )?;
    let mut by_id: BTreeMap<String, Vec<FieldUpdate>> = BTreeMap::new();
    for ch in req.changes {
        by_id.entry(ch.entity_id).or_default().push(ch.update);
    }
    let (mut applied, mut conflicts) = (Vec::new(), Vec::new());
    for (id, fields) in by_id {
        let asked: Vec<(String, Option<Value>, Timestamp)> = fields
            .iter()
            .map(|f| {
                let v = match f.action {
                    proto::FieldAction::Delete => None,
                    proto::FieldAction::Update => f.value.clone().filter(|v| !v.is_null()),
                };
                (f.field.clone(), v, f.timestamp)
            })
            .collect();
        let (writes, times) = proto::field_writes(&entity, &id, fields)
            .map_err(|r| refuse(StatusCode::BAD_REQUEST, r.code, r.message))?;
        let outs = state
            .engine
            .push(&c.space, &c.actor, None, writes)
            .await
            .map_err(|e| engine_refusal(&e))?;
        let version = outs.iter().map(|o| o.type_version).max().unwrap_or(0);
        let replies = proto::field_push_reply(&entity, &id, &times, &outs);
        let lost: Vec<&str> = replies
            .iter()
            .filter_map(|m| match m {
                UnifiedMessage::FieldConflict { field, .. } => Some(field.as_str()),
                _ => None,
            })
            .collect();
        for (field, value, ts) in &asked {
            if lost.contains(&field.as_str()) {
                continue;
            }
            applied.push(proto::FieldChange {
                entity: entity.clone(),
                entity_id: id.clone(),
                field: field.clone(),
                action: if value.is_some() {
                    proto::FieldAction::Update
                } else {
                    proto::FieldAction::Delete
                },
                value: value.clone(),
                timestamp: *ts,
                version: version as i64,
            });
        }
        for m in replies {
            if let UnifiedMessage::FieldConflict { .. } = m {
                let mut v = serde_json::to_value(&m).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.remove("type");
                    o.insert("resolution".into(), "last_write_wins".into());
                }
                conflicts.push(v);
            }
        }
    }
    Ok(Json(json!({"applied": applied, "conflicts": conflicts})).into_response())
}
