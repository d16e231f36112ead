//! The routes of seed 001's real REST client (atomecorp/a,
//! `src/squirrel/apis/unified/adapters/FastifyAdapter.js`) that the seed's
//! own `/api/atome` API does not have: `PUT /api/atome/{id}`,
//! `POST /api/atome/{id}/alter`, `POST /api/atome/{id}/rename` and
//! `GET /api/server-info` (the adapter's `isAvailable`). They write through
//! the same path as the seed's routes (atome_sync.rs), so every socket
//! client sees them as `atome:altered`. Replies keep the real server's
//! `data` shapes (`server/atomeRoutes.orm.js`) and add the resulting
//! `atome`. Documented in docs/protocol.md.

use super::atome::{self, AtomeWrite};
use super::atome_sync::{caller, ok, Caller, Need, RestError, RestResult};
use crate::dialect::Ctx;
use crate::engine::now_ms;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// `GET /api/server-info`: the adapter's availability probe.
pub async fn server_info() -> Json<Value> {
    Json(json!({"success": true, "version": crate::VERSION, "type": "outpost"}))
}

/// Apply `alteration` to an existing atome (404 if there is none) and
/// return the atome before and after.
async fn alter(c: &Caller, id: &str, alteration: Map<String, Value>) -> Result<Value, RestError> {
    // Checked by the writer, so an alter racing a delete cannot bring the
    // atome back (see `Caller::write_existing`).
    c.write_existing(AtomeWrite::Alter {
        id: id.to_string(),
        alteration: Value::Object(alteration),
    })
    .await?;
    Ok(c.current(id).await?.unwrap_or(Value::Null))
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
    let mut body = object(c.body(&body)?, "body")?;
    let props = match body.remove("properties") {
        Some(p) => object(p, "properties")?,
        None => body,
    };
    let atome = alter(&c, &id, props.clone()).await?;
    let data = json!({"id": id, "properties": props, "updated_at": atome::iso_ms(now_ms())});
    Ok(ok(
        StatusCode::OK,
        json!({"success": true, "data": data, "atome": atome}),
    ))
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
    let list = alterations(object(c.body(&body)?, "body")?)?;
    let before = c.current(&id).await?;
    let alteration: Map<String, Value> = list
        .iter()
        .map(|(k, v, _)| (k.clone(), v.clone()))
        .collect();
    let atome = alter(&c, &id, alteration).await?;
    let at = atome::iso_ms(now_ms());
    let applied: Vec<Value> = list
        .iter()
        .map(|(k, v, op)| {
            let prev = before.as_ref().and_then(|b| b.get(k)).cloned();
            json!({"key": k, "previous_value": prev, "new_value": v, "operation": op, "applied_at": at})
        })
        .collect();
    let data =
        json!({"atome_id": id, "alterations_applied": applied.len(), "alterations": applied});
    Ok(ok(
        StatusCode::OK,
        json!({"success": true, "data": data, "atome": atome}),
    ))
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
    let body = object(c.body(&body)?, "body")?;
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
    let atome = alter(
        &c,
        &id,
        Map::from_iter([("name".into(), name.clone().into())]),
    )
    .await?;
    let data = json!({"atome_id": id, "old_name": old, "new_name": name});
    Ok(ok(
        StatusCode::OK,
        json!({"success": true, "data": data, "atome": atome}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

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
