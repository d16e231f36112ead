//! The status document (`GET /v1/status`, the page's feed, `outpost
//! status`) and its live stream (`GET /v1/status/stream`, Server-Sent
//! Events: one `status` event a second).

use super::access::{require_admin, Need};
use crate::app::AppState;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

/// How often the stream sends a fresh document.
const STREAM_EVERY: Duration = Duration::from_secs(1);

/// Everything the console shows (reads the store: callers run it off
/// the async workers, `engine::off_worker`). Fields of the earlier `/v1/status`
/// (`clients`, `spaces[].name/changes/subscribers`, `peers`, `upstream`,
/// `log`, `version_vector`, `mesh`) keep their shape.
pub fn status_json(state: &AppState) -> Value {
    let e = &state.engine;
    let subs: HashMap<String, usize> = e.hub().subscriber_counts().into_iter().collect();
    let spaces = e.spaces().unwrap_or_default();
    let names: Vec<String> = spaces.iter().map(|(n, _)| n.clone()).collect();
    let figures = state.console.space_figures(e, &names);
    let spaces: Vec<_> = spaces
        .into_iter()
        .map(|(name, changes)| {
            let f = figures.get(&name).cloned().unwrap_or_default();
            json!({
                "name": name,
                "changes": changes,
                "subscribers": subs.get(&name).copied().unwrap_or(0),
                "entities": f.entities,
                "last_write_ms": f.last_write_ms,
            })
        })
        .collect();
    let (store_bytes, free_bytes) = e.disk();
    let rates = state.console.rate_series();
    let connections: serde_json::Map<String, Value> = e
        .metrics
        .endpoint_conns()
        .into_iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    json!({
        "node_id": e.node_id().to_string(),
        "version": crate::VERSION,
        "now_ms": crate::engine::now_ms(),
        "uptime_s": e.uptime().as_secs(),
        "listen": state.settings.listen.to_string(),
        "clients": e.metrics.connections.load(Relaxed),
        "connections": connections,
        "data": {
            "dir": state.settings.dir.display().to_string(),
            "store_bytes": store_bytes,
            "free_bytes": free_bytes,
            "min_free_bytes": state.settings.min_free_bytes,
            "store_fault": e.store_fault().map(|f| f.to_string()),
        },
        "rates": {
            "written_per_s": rates.written.last().copied().unwrap_or(0.0),
            "delivered_per_s": rates.delivered.last().copied().unwrap_or(0.0),
            "series": rates,
        },
        "totals": {
            "changes_committed": e.metrics.commit_changes.load(Relaxed),
            "changes_written": e.metrics.changes_written.load(Relaxed),
            "deliveries": e.metrics.deliveries.load(Relaxed),
        },
        "spaces": spaces,
        "log": {"entries": e.log_len().unwrap_or(0), "last_seq": e.last_seq(), "horizon": e.horizon()},
        "version_vector": e.version_vector().unwrap_or_default().iter()
            .map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "durability": state.settings.durability,
        "mesh": {
            "enabled": state.mesh_addr.is_some(),
            "listen": state.mesh_addr.map(|a| a.to_string()),
        },
        "peers": state.links.status(),
        "peers_gone": state.links.gone_status(),
        // An edge's upstream: the WebSocket link, or its JetStream link.
        "upstream": match (&state.upstream, &state.settings.upstream_nats, &state.nats) {
            (Some(u), _, _) => Some(u.status()),
            (None, Some(_), Some(n)) => Some(n.status()),
            _ => None,
        },
        // The JetStream link ([cluster] nats or [upstream] nats): stream
        // position, lag, reachability (docs/scale-out.md).
        "jetstream": state.nats.as_ref().map(|n| n.status()),
        "recent_log": super::logring::global().lines(),
    })
}

/// `GET /v1/status` (admin, or anonymous where allowed).
pub async fn status(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Err(refused) = require_admin(&state, &headers, &query, Need::Read) {
        return refused.into_response();
    }
    // Store reads (spaces, counts, the version vector) and disk figures:
    // on the blocking pool, not a worker.
    let doc = crate::engine::off_worker(move || status_json(&state)).await;
    axum::Json(doc).into_response()
}

/// `GET /v1/status/stream`: `event: config` once (the effective config,
/// secrets redacted), then `event: status` with the document every second
/// until the client goes or the relay shuts down.
pub async fn stream(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Err(refused) = require_admin(&state, &headers, &query, Need::Read) {
        return refused.into_response();
    }
    // The body is the loop: it runs in the connection's task while the
    // client reads, and ends with the client or at shutdown.
    let config = json!({"toml": state.settings.effective_toml}).to_string();
    let mut tick = tokio::time::interval(STREAM_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let status = futures_util::stream::unfold(
        (state.clone(), tick, state.shutdown.clone()),
        |(st, mut tick, mut shutdown)| async move {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|s| *s) => return None,
            }
            let of = st.clone();
            let doc = crate::engine::off_worker(move || status_json(&of).to_string()).await;
            let doc = sse("status", &doc);
            Some((doc, (st, tick, shutdown)))
        },
    );
    let body = futures_util::stream::once(async move { sse("config", &config) })
        .chain(status)
        .map(Ok::<_, std::convert::Infallible>);
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

/// One Server-Sent Event (the data is one line of JSON).
fn sse(event: &str, data: &str) -> String {
    format!("event: {event}\ndata: {data}\n\n")
}
