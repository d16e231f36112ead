//! The admin data API: `GET /v1/export` (JSON Lines), `POST /v1/import`,
//! `GET /v1/backup` (the store's backup stream). All need admin access.
//! Export and backup each read one store snapshot (a redb read
//! transaction) on a blocking thread and stream it through a small bounded
//! channel, so a slow reader holds the snapshot, never the relay's memory.

use super::access::{require_admin, Need};
use crate::app::AppState;
use crate::store::SnapEntity;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// Export format version (the header line's `version`).
pub const EXPORT_VERSION: u32 = 1;
/// Entities per import commit.
const IMPORT_BATCH: usize = 512;
/// Longest accepted import line.
const MAX_LINE: usize = 16 << 20;

type Query_ = Query<HashMap<String, String>>;

/// A byte stream fed by a blocking producer through a bounded channel.
fn channel_body(rx: tokio::sync::mpsc::Receiver<Vec<u8>>) -> Body {
    Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), rx))
    }))
}

/// `GET /v1/export[?space=S]`: a header line, one line per entity (state
/// with every field's stamp, version, seq), and an end line with the count.
pub async fn export(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query_,
) -> Response {
    if let Err(r) = require_admin(&state, &headers, &q, Need::Read) {
        return r.into_response();
    }
    let space = q.get("space").cloned().filter(|s| !s.is_empty());
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
    let st = state.clone();
    tokio::task::spawn_blocking(move || {
        let mut buf = Vec::with_capacity(64 << 10);
        let mut n = 0u64;
        let node = st.engine.node_id().to_string();
        let send = |buf: &mut Vec<u8>| tx.blocking_send(std::mem::take(buf)).is_ok();
        let header = |seq: u64| {
            let h = json!({"type": "header", "format": "outpost-export", "version": EXPORT_VERSION,
                "node_id": node, "last_seq": seq, "space": space,
                "exported_ms": crate::engine::now_ms()});
            let mut line = h.to_string().into_bytes();
            line.push(b'\n');
            tx.blocking_send(line).is_ok()
        };
        let result = st.engine.export(space.as_deref(), header, |s, c, i, e| {
            let line = json!({"type": "entity", "space": s, "collection": c, "id": i,
                "version": e.version, "seq": e.seq, "state": e.state});
            serde_json::to_writer(&mut buf, &line).ok();
            buf.push(b'\n');
            n += 1;
            buf.len() < 60 << 10 || send(&mut buf)
        });
        if let Err(e) = result {
            // No end line: the importer sees a truncated export.
            tracing::warn!(error = %e, "export failed");
            return;
        }
        let end = json!({"type": "end", "entities": n});
        serde_json::to_writer(&mut buf, &end).ok();
        buf.push(b'\n');
        send(&mut buf);
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        channel_body(rx),
    )
        .into_response()
}

fn bad(line: usize, why: impl std::fmt::Display) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": format!("line {line}: {why}")})),
    )
        .into_response()
}

/// Parse one entity line of an export.
fn entity_line(v: Value) -> Result<(SnapEntity, u64), String> {
    let text = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("`{k}` missing"))
    };
    let (space, collection, id) = (text("space")?, text("collection")?, text("id")?);
    for (what, name) in [("space", &space), ("collection", &collection), ("id", &id)] {
        crate::engine::validate_name(what, name).map_err(|e| e.to_string())?;
    }
    let version = v.get("version").and_then(Value::as_u64).unwrap_or(0);
    let state = serde_json::from_value(v.get("state").cloned().unwrap_or(Value::Null))
        .map_err(|e| format!("`state`: {e}"))?;
    Ok((
        SnapEntity {
            space,
            collection,
            id,
            state,
        },
        version,
    ))
}

/// `POST /v1/import`: the body is an export. Entities are merged like a
/// peer's snapshot (so importing twice, or into a relay that has newer
/// writes, is safe) and keep their versions. Answers the counts; a body
/// without its end line is refused after what came before was merged.
pub async fn import(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query_,
    body: Body,
) -> Response {
    if let Err(r) = require_admin(&state, &headers, &q, Need::Write) {
        return r.into_response();
    }
    let mut stream = body.into_data_stream();
    let mut pending: Vec<u8> = Vec::new();
    let mut batch = Vec::new();
    let (mut line_no, mut entities, mut ended) = (0usize, 0u64, None::<u64>);
    let mut header = false;
    let mut spaces = std::collections::BTreeSet::new();
    let mut done = false;
    while !done {
        let chunk = match stream.next().await {
            Some(Ok(c)) => c,
            Some(Err(e)) => return bad(line_no, format!("reading the body: {e}")),
            None => {
                done = true;
                axum::body::Bytes::new()
            }
        };
        pending.extend_from_slice(&chunk);
        if done && !pending.is_empty() && pending.last() != Some(&b'\n') {
            pending.push(b'\n');
        }
        let mut start = 0;
        while let Some(nl) = pending[start..].iter().position(|&b| b == b'\n') {
            let raw = &pending[start..start + nl];
            start += nl + 1;
            line_no += 1;
            if raw.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if ended.is_some() {
                return bad(line_no, "data after the end line");
            }
            let v: Value = match serde_json::from_slice(raw) {
                Ok(v) => v,
                Err(e) => return bad(line_no, e),
            };
            match v.get("type").and_then(Value::as_str) {
                Some("header") if !header => {
                    if v["format"] != "outpost-export" {
                        return bad(line_no, "not an outpost export");
                    }
                    if v["version"].as_u64() != Some(EXPORT_VERSION as u64) {
                        return bad(
                            line_no,
                            format!(
                                "export version {}; this relay reads {EXPORT_VERSION}",
                                v["version"]
                            ),
                        );
                    }
                    header = true;
                }
                _ if !header => return bad(line_no, "the first line must be the export header"),
                Some("entity") => match entity_line(v) {
                    Ok(e) => {
                        batch.push(e);
                        entities += 1;
                    }
                    Err(why) => return bad(line_no, why),
                },
                Some("end") => ended = Some(v["entities"].as_u64().unwrap_or(u64::MAX)),
                _ => return bad(line_no, "unknown line type"),
            }
            if batch.len() >= IMPORT_BATCH {
                match state.engine.import(std::mem::take(&mut batch)).await {
                    Ok(s) => spaces.extend(s),
                    Err(e) => {
                        return (
                            StatusCode::SERVICE_UNAVAILABLE,
                            axum::Json(json!({"error": e.to_string()})),
                        )
                            .into_response()
                    }
                }
            }
        }
        pending.drain(..start);
        if pending.len() > MAX_LINE {
            return bad(line_no + 1, format!("a line longer than {MAX_LINE} bytes"));
        }
    }
    if !batch.is_empty() {
        match state.engine.import(batch).await {
            Ok(s) => spaces.extend(s),
            Err(e) => {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    axum::Json(json!({"error": e.to_string()})),
                )
                    .into_response()
            }
        }
    }
    match ended {
        Some(n) if n == entities => axum::Json(json!({
            "entities": entities,
            "spaces_changed": spaces,
        }))
        .into_response(),
        Some(n) => bad(
            line_no,
            format!("the end line says {n} entities, {entities} came"),
        ),
        None => bad(
            line_no,
            format!("the export has no end line (truncated?); {entities} entities were merged"),
        ),
    }
}

/// `GET /v1/backup`: the store's backup stream (see `store/backup.rs`).
pub async fn backup(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query_,
) -> Response {
    if let Err(r) = require_admin(&state, &headers, &q, Need::Write) {
        return r.into_response();
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let st = state.clone();
    tokio::task::spawn_blocking(move || {
        match st.engine.backup(|frame| tx.blocking_send(frame).is_ok()) {
            Ok(s) => tracing::info!(rows = s.rows, last_seq = s.last_seq, "backup sent"),
            // The stream then lacks its end frame: restore refuses it.
            Err(e) => tracing::warn!(error = %e, "backup failed"),
        }
    });
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        channel_body(rx),
    )
        .into_response()
}
