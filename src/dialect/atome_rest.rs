//! Seed 001's REST API under `/api/atome`, and the routes of its real
//! client's adapter (atomecorp/a,
//! `src/squirrel/apis/unified/adapters/FastifyAdapter.js`) that the seed's
//! own API does not have: `PUT /api/atome/{id}`,
//! `POST /api/atome/{id}/alter`, `POST /api/atome/{id}/rename` and
//! `GET /api/server-info` (the adapter's `isAvailable`). One place for
//! both: the same admission, body checks, write path and answers. Every
//! write is stored as the socket dialect's are (atome_sync.rs) and reaches
//! every socket client; the adapter routes keep the real server's `data`
//! shapes (`server/atomeRoutes.orm.js`) and add the resulting `atome`.
//! Store reads run off the async workers. Documented in docs/protocol.md.

use super::atome::{self, AtomeWrite};
use super::atome_sync::{actor, FORBIDDEN};
use crate::dialect::Ctx;
use crate::engine::{json_bytes, off_worker, Engine, EngineError, ErrorClass, PAGE_BYTES};
use crate::store::{Cap, Expect};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

use atome::{FAILED, INVALID};

/// A REST failure: HTTP status plus `{success:false, error, code}`.
pub struct RestError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl RestError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> RestError {
        RestError {
            status,
            code,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> RestError {
        RestError::new(StatusCode::BAD_REQUEST, INVALID, message)
    }

    fn not_found(id: &str) -> RestError {
        RestError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no atome {id:?}"),
        )
    }
}

impl From<EngineError> for RestError {
    fn from(e: EngineError) -> RestError {
        let (status, code) = atome::wire(e.class());
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        RestError::new(status, code, e.to_string())
    }
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"success": false, "error": self.message, "code": self.code})),
        )
            .into_response()
    }
}

type RestResult = Result<Response, RestError>;

/// What a REST request may do, in which space, as whom.
struct Caller {
    state: Ctx,
    space: String,
    actor: String,
}

#[derive(Clone, Copy, PartialEq)]
enum Need {
    Read,
    Write,
}

/// Admission for REST: the same token rules as the sockets (Bearer header or
/// `?token=`): no valid token is 401; a token without the scope the method
/// needs (read for GET, write otherwise) is 403.
fn caller(
    state: Ctx,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    need: Need,
) -> Result<Caller, RestError> {
    let grant = super::admit(&state, headers, query).map_err(|(status, m)| {
        let code = if status == StatusCode::UNAUTHORIZED {
            "unauthorized"
        } else {
            "unavailable"
        };
        RestError::new(status, code, m.trim_end())
    })?;
    let space = query
        .get("space")
        .cloned()
        .unwrap_or_else(|| "default".into());
    crate::engine::validate_name("space", &space).map_err(|e| RestError::invalid(e.to_string()))?;
    let allowed = match need {
        Need::Read => grant.can_read(&space),
        Need::Write => grant.can_write(&space),
    };
    if !allowed {
        let what = if need == Need::Read { "read" } else { "write" };
        return Err(RestError::new(
            StatusCode::FORBIDDEN,
            FORBIDDEN,
            format!("no {what} access to space {space:?}"),
        ));
    }
    // A client that also holds a socket can name itself (`X-Client-Id` or
    // `?clientId=`), so it recognises its own REST writes by `sourceClient`.
    let client_id = headers
        .get("x-client-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| query.get("clientId").cloned())
        .filter(|c| !c.is_empty() && c.len() <= 256);
    let actor = actor(&grant, client_id.as_deref());
    Ok(Caller {
        state,
        space,
        actor,
    })
}

impl Caller {
    /// The time answers carry: the relay's clock (`Engine::clock`, which
    /// stamps the writes too), not the system's read here.
    fn now_ms(&self) -> u64 {
        self.state.engine.clock().now_ms()
    }

    fn engine(&self) -> &Engine {
        &self.state.engine
    }

    fn body(&self, body: &Bytes) -> Result<Value, RestError> {
        let max = self.state.settings.max_frame_bytes;
        if body.len() > max {
            return Err(RestError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                INVALID,
                format!("body of {} bytes exceeds the {max}-byte limit", body.len()),
            ));
        }
        serde_json::from_slice(body).map_err(|e| RestError::invalid(format!("not JSON: {e}")))
    }

    /// A body that must be a JSON object.
    fn object_body(&self, body: &Bytes) -> Result<Map<String, Value>, RestError> {
        object(self.body(body)?, "body")
    }

    /// The atome `id` as stored now (None: none), read off the async
    /// workers.
    async fn current(&self, id: &str) -> Result<Option<Value>, RestError> {
        let (engine, space, id) = (
            self.state.engine.clone(),
            self.space.clone(),
            id.to_string(),
        );
        let e = off_worker(move || {
            engine
                .entity(&space, atome::COLLECTION, &id)
                .map(|e| (e, id))
        });
        let (e, id) = e.await?;
        Ok(e.filter(|e| e.state.exists())
            .map(|e| atome::join_atome(&id, &e.state.visible())))
    }

    async fn write(&self, w: AtomeWrite) -> Result<crate::store::Outcome, RestError> {
        let write = w
            .to_local()
            .map_err(|e| RestError::invalid(e.to_string()))?;
        let outs = self
            .engine()
            .push(&self.space, &self.actor, None, vec![write])
            .await?;
        one(outs)
    }

    /// A write to an atome that must exist (update, alter, delete): 404 if
    /// it does not. The writer checks it (`Expect::Exists`) inside the
    /// transaction that applies the write, so a write racing a delete
    /// cannot bring the atome back (a check before queueing the write
    /// could pass while the delete is queued ahead of it).
    async fn write_existing(&self, w: AtomeWrite) -> Result<crate::store::Outcome, RestError> {
        let id = w.id();
        let mut write = w
            .to_local()
            .map_err(|e| RestError::invalid(e.to_string()))?;
        write.expect = Some(Expect::Exists);
        match self
            .engine()
            .push(&self.space, &self.actor, None, vec![write])
            .await
        {
            Err(e) if e.class() == ErrorClass::Precondition => Err(RestError::not_found(&id)),
            Err(e) => Err(e.into()),
            Ok(outs) => one(outs),
        }
    }
}

fn one(mut outs: Vec<crate::store::Outcome>) -> Result<crate::store::Outcome, RestError> {
    outs.pop()
        .ok_or_else(|| RestError::new(StatusCode::INTERNAL_SERVER_ERROR, FAILED, "no outcome"))
}

/// The body of a write: the object itself, or `{"<key>": {...}}` with that
/// key alone (clients wrap it either way).
fn unwrap_single(v: Value, key: &str) -> Value {
    match v {
        Value::Object(mut m) if m.len() == 1 && m.get(key).is_some_and(Value::is_object) => {
            m.remove(key).unwrap_or_default()
        }
        v => v,
    }
}

fn ok(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

/// The seed's answer with an atome: `{success, atome, data}` (`data` for
/// the real client's adapter), the atome `null` when there is none.
fn with_atome(status: StatusCode, atome: &Value) -> Response {
    ok(
        status,
        json!({"success": true, "atome": atome, "data": atome}),
    )
}

/// The adapter routes' answer: the real server's `data`, plus the
/// resulting `atome`.
fn with_data(data: Value, atome: Value) -> Response {
    ok(
        StatusCode::OK,
        json!({"success": true, "data": data, "atome": atome}),
    )
}

/// Apply `alteration` to an existing atome (404 if there is none) and
/// return the atome after it (`null` if a racing delete won).
async fn alter(c: &Caller, id: &str, alteration: Value) -> Result<Value, RestError> {
    // Checked by the writer, so an alter racing a delete cannot bring the
    // atome back (see `Caller::write_existing`).
    c.write_existing(AtomeWrite::Alter {
        id: id.to_string(),
        alteration,
    })
    .await?;
    Ok(c.current(id).await?.unwrap_or(Value::Null))
}

/// `POST /api/atome/create`: store an atome (an id is generated when it has
/// none); 201 when it is new, 200 when it replaced an existing one.
pub async fn create(
    State(state): State<Ctx>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> RestResult {
    let c = caller(state, &headers, &query, Need::Write)?;
    let mut atome = unwrap_single(c.body(&body)?, "atome");
    let Some(obj) = atome.as_object_mut() else {
        return Err(RestError::invalid("atome: must be a JSON object"));
    };
    if !obj.contains_key("id") {
        obj.insert("id".into(), atome::random_id().into());
    }
    let w = AtomeWrite::Put(atome);
    let id = w.id();
    let out = c.write(w).await?;
    let status = if out.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let atome = c.current(&id).await?.unwrap_or(Value::Null);
    Ok(with_atome(status, &atome))
}

/// `GET /api/atome/{id}`.
pub async fn get_one(
    State(state): State<Ctx>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> RestResult {
    let c = caller(state, &headers, &query, Need::Read)?;
    match c.current(&id).await? {
        Some(a) => Ok(with_atome(StatusCode::OK, &a)),
        None => Err(RestError::not_found(&id)),
    }
}

/// Most atomes one list returns (`?limit=` may ask for fewer or up to this).
const MAX_LIST: usize = 10_000;
const DEFAULT_LIST: usize = 1_000;

/// A list page stops once its atomes hold about this many bytes of JSON
/// (at least one), whatever `limit` says.
const LIST_BYTES: usize = 4 << 20;

/// `GET /api/atome?kind=K&limit=N&after=ID`: existing atomes in id order
/// (after `ID` when given), those whose `kind` property equals K when
/// given. A page that stopped at `limit` or at [`LIST_BYTES`] carries
/// `next`: pass it as `after` for the next page.
pub async fn list(
    State(state): State<Ctx>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> RestResult {
    let c = caller(state, &headers, &query, Need::Read)?;
    let limit = match query.get("limit") {
        None => DEFAULT_LIST,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=MAX_LIST).contains(&n) => n,
            _ => {
                return Err(RestError::invalid(format!(
                    "limit: must be a number from 1 to {MAX_LIST}"
                )))
            }
        },
    };
    let kind = query.get("kind").cloned();
    let after = query.get("after").filter(|a| !a.is_empty()).cloned();
    let (engine, space) = (c.state.engine.clone(), c.space.clone());
    let (atomes, next) = off_worker(move || list_page(&engine, &space, kind, after, limit)).await?;
    let count = atomes.len();
    let mut body = json!({"success": true, "atomes": atomes, "data": atomes, "count": count});
    if let Some(n) = next {
        body["next"] = n.into();
    }
    Ok(ok(StatusCode::OK, body))
}

/// One `GET /api/atome` page (run on a blocking thread): the atomes and,
/// when the page stopped short, the id to continue after.
fn list_page(
    engine: &Engine,
    space: &str,
    kind: Option<String>,
    after: Option<String>,
    limit: usize,
) -> Result<(Vec<Value>, Option<String>), EngineError> {
    let mut atomes = Vec::new();
    let mut bytes = 0usize;
    let mut next: Option<String> = None;
    let mut after: Option<(String, String)> = after.map(|a| (atome::COLLECTION.to_string(), a));
    'pages: loop {
        let page = engine.entities_page(
            space,
            Some(atome::COLLECTION),
            after.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
            Cap::new(256, PAGE_BYTES),
        )?;
        let short = !page.more;
        for (coll, id, e) in page.items {
            after = Some((coll, id.clone()));
            if !e.state.exists() {
                continue;
            }
            let fields = e.state.visible();
            if kind
                .as_ref()
                .is_some_and(|k| fields.get("kind").and_then(Value::as_str) != Some(k.as_str()))
            {
                continue;
            }
            let a = atome::join_atome(&id, &fields);
            // The body carries the list twice (`atomes`, and `data` for
            // the REST adapter), so each atome counts twice in the bound.
            bytes += 2 * json_bytes(&a);
            atomes.push(a);
            if atomes.len() >= limit || bytes >= LIST_BYTES {
                next = Some(id);
                break 'pages;
            }
        }
        if short {
            break;
        }
    }
    Ok((atomes, next))
}

/// `PATCH /api/atome/{id}`: merge the body (the alteration) into the atome;
/// a `null` property removes it. Broadcast as `atome:altered`.
pub async fn patch(
    State(state): State<Ctx>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> RestResult {
    let c = caller(state, &headers, &query, Need::Write)?;
    let alteration = unwrap_single(c.body(&body)?, "alteration");
    // REST semantics: altering an atome that does not exist is 404, not an
    // implicit create.
    let atome = alter(&c, &id, alteration).await?;
    Ok(with_atome(StatusCode::OK, &atome))
}

/// `DELETE /api/atome/{id}`. Broadcast as `atome:deleted`.
pub async fn delete(
    State(state): State<Ctx>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> RestResult {
    let c = caller(state, &headers, &query, Need::Write)?;
    c.write_existing(AtomeWrite::Delete { id: id.clone() })
        .await?;
    let data = json!({"id": id, "deleted_at": atome::iso_ms(c.now_ms())});
    Ok(ok(
        StatusCode::OK,
        json!({"success": true, "atomeId": id, "data": data}),
    ))
}

/// `GET /api/server-info`: the adapter's availability probe.
pub async fn server_info() -> Json<Value> {
    Json(json!({"success": true, "version": crate::VERSION, "type": "outpost"}))
}

fn object(v: Value, what: &str) -> Result<Map<String, Value>, RestError> {
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(RestError::invalid(format!("{what}: must be a JSON object"))),
    }
}

/// `PUT /api/atome/{id}` `{properties:{…}}` (or the properties alone): set
/// those properties (`null` removes one), keep the others, as the real
/// server's update does.
pub async fn update(
    State(state): State<Ctx>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> RestResult {
    let c = caller(state, &headers, &query, Need::Write)?;
    let mut body = c.object_body(&body)?;
    let props = match body.remove("properties") {
        Some(p) => object(p, "properties")?,
        None => body,
    };
    let atome = alter(&c, &id, Value::Object(props.clone())).await?;
    let data = json!({"id": id, "properties": props, "updated_at": atome::iso_ms(c.now_ms())});
    Ok(with_data(data, atome))
}

/// The alteration of an `alter` body: the unified API's
/// `{operation, changes:{key: value}}` or the ADOLE
/// `{alterations:[{key, value, operation?}]}`; with the operation of each.
fn alterations(body: Map<String, Value>) -> Result<Vec<(String, Value, String)>, RestError> {
    let default_op = body
        .get("operation")
        .and_then(Value::as_str)
        .unwrap_or("set")
        .to_string();
    let list: Vec<(String, Value, String)> = match (body.get("alterations"), body.get("changes")) {
        (Some(Value::Array(items)), _) => items
            .iter()
            .filter_map(|a| {
                let key = a.get("key")?.as_str()?.to_string();
                let op = a
                    .get("operation")
                    .and_then(Value::as_str)
                    .unwrap_or("set")
                    .to_string();
                Some((key, a.get("value").cloned().unwrap_or(Value::Null), op))
            })
            .collect(),
        (_, Some(Value::Object(changes))) => changes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone(), default_op.clone()))
            .collect(),
        _ => vec![],
    };
    if list.is_empty() {
        return Err(RestError::invalid(
            "an alterations array or a changes object is required",
        ));
    }
    Ok(list)
}

/// `POST /api/atome/{id}/alter`: set each listed property.
pub async fn alter_route(
    State(state): State<Ctx>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> RestResult {
    let c = caller(state, &headers, &query, Need::Write)?;
    let list = alterations(c.object_body(&body)?)?;
    let before = c.current(&id).await?;
    let alteration: Map<String, Value> = list
        .iter()
        .map(|(k, v, _)| (k.clone(), v.clone()))
        .collect();
    let atome = alter(&c, &id, Value::Object(alteration)).await?;
    let at = atome::iso_ms(c.now_ms());
    let applied: Vec<Value> = list
        .iter()
        .map(|(k, v, op)| {
            let prev = before.as_ref().and_then(|b| b.get(k)).cloned();
            json!({"key": k, "previous_value": prev, "new_value": v, "operation": op, "applied_at": at})
        })
        .collect();
    let data =
        json!({"atome_id": id, "alterations_applied": applied.len(), "alterations": applied});
    Ok(with_data(data, atome))
}

/// `POST /api/atome/{id}/rename` `{newName}` (or `new_name`): set `name`.
pub async fn rename(
    State(state): State<Ctx>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> RestResult {
    let c = caller(state, &headers, &query, Need::Write)?;
    let body = c.object_body(&body)?;
    let name = body
        .get("new_name")
        .or_else(|| body.get("newName"))
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| RestError::invalid("new_name or newName: a non-empty string"))?
        .to_string();
    let old = c
        .current(&id)
        .await?
        .and_then(|a| a.get("name").cloned())
        .unwrap_or(Value::Null);
    let atome = alter(&c, &id, json!({ "name": name })).await?;
    let data = json!({"atome_id": id, "old_name": old, "new_name": name});
    Ok(with_data(data, atome))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_bodies_may_be_wrapped() {
        assert_eq!(
            unwrap_single(json!({"atome": {"id": "a"}}), "atome"),
            json!({"id": "a"})
        );
        assert_eq!(
            unwrap_single(json!({"atome": {"id": "a"}, "x": 1}), "atome"),
            json!({"atome": {"id": "a"}, "x": 1})
        );
    }

    #[test]
    fn both_alter_body_shapes_are_read() {
        let b = json!({"operation": "set", "changes": {"x": 1, "y": "z"}, "reason": "r"});
        let l = alterations(b.as_object().unwrap().clone()).ok().unwrap();
        assert_eq!(
            l,
            vec![
                ("x".into(), json!(1), "set".into()),
                ("y".into(), json!("z"), "set".into())
            ]
        );
        let b = json!({"alterations": [{"key": "x", "value": 2}, {"value": 3}]});
        let l = alterations(b.as_object().unwrap().clone()).ok().unwrap();
        assert_eq!(l, vec![("x".into(), json!(2), "set".into())]);
        assert!(alterations(Map::new()).is_err());
    }
}
