//! The axum router: dialect endpoints plus health, metrics and status.

use crate::app::AppState;
use crate::conn::endpoints as ep;
use crate::dialect::{atome_rest, kv, unified};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::collections::HashMap;
use std::sync::Arc;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/ws", get(ep::native))
        .route("/ws/sync", get(ep::sync))
        .route("/ws/atome-sync", get(ep::atome_sync))
        .route("/api/atome/create", post(atome_rest::create))
        .route("/api/atome", get(atome_rest::list))
        .route("/api/atome/list", get(atome_rest::list))
        .route(
            "/api/atome/{id}",
            get(atome_rest::get_one)
                .patch(atome_rest::patch)
                .put(atome_rest::update)
                .delete(atome_rest::delete),
        )
        .route("/api/atome/{id}/alter", post(atome_rest::alter_route))
        .route("/api/atome/{id}/rename", post(atome_rest::rename))
        .route("/api/server-info", get(atome_rest::server_info))
        .route("/v1/sync/{workspace}", get(ep::kv))
        .route("/v1/history/{workspace}", get(kv::history))
        .route("/ws/config", get(ep::config_sync))
        .route("/api/ws", get(ep::unified))
        .route("/api/sync/ws", get(ep::entity_sync))
        .route("/api/field-sync/ws", get(ep::field_sync))
        .route("/api/sync/events", get(ep::events))
        .route(
            "/api/sync/{entity}",
            get(unified::http::get_sync).post(unified::http::post_sync),
        )
        .route(
            "/api/field-sync/{entity}",
            get(unified::http::get_field_sync).post(unified::http::post_field_sync),
        )
        .route("/ws/replicate", get(crate::upstream::hub::upgrade))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(crate::app::console::status))
        .merge(crate::app::console::routes())
        .with_state(state)
}

/// 200 while the store accepts reads and writes; 503 once shutting down,
/// or while a storage I/O error keeps the store from writing (until it has
/// reopened its file).
async fn healthz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    if *state.shutdown.borrow() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    if state.engine.store_fault().is_some() {
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "store unavailable\n",
        );
    }
    // A read of the store, on the blocking pool: a slow disk delays this
    // answer, not the requests that share its worker.
    let engine = state.engine.clone();
    match crate::engine::off_worker(move || engine.log_len()).await {
        Ok(_) => (StatusCode::OK, "ok\n"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n"),
    }
}

/// `/v1/status` and `/metrics` name every space, node and peer (and, on a
/// hub, each edge's token subject): with `auth.anonymous = "none"` they need
/// a token with admin scope (401 without a valid token, 403 with a weaker
/// one). With anonymous read or write access every space is readable
/// without a token anyway, so they stay open. `/healthz` is always open and
/// says only whether the relay is healthy. See docs/security.md.
/// Returns the refusal, if any.
fn operator_only(
    state: &AppState,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Option<Response> {
    use crate::app::console::access::{require_admin, Need};
    require_admin(state, headers, query, Need::Read)
        .err()
        .map(IntoResponse::into_response)
}

async fn metrics(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = operator_only(&state, &headers, &query) {
        return refused;
    }
    // Reads the store (log length, the upstream's cursor): off the workers.
    let body = crate::engine::off_worker(move || render_metrics(&state)).await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// The `/metrics` text: the engine's, the listener's, the links' series.
fn render_metrics(state: &AppState) -> String {
    let e = &state.engine;
    let log_len = e.log_len().unwrap_or(0) as f64;
    let subs: usize = e.hub().subscriber_counts().iter().map(|(_, n)| n).sum();
    let extra = [
        ("outpost_log_entries", "changes held in the log", log_len),
        (
            "outpost_last_seq",
            "highest committed local seq",
            e.last_seq() as f64,
        ),
        ("outpost_subscriptions", "live subscriptions", subs as f64),
        (
            "outpost_queued_bytes",
            "estimated bytes of frames queued to subscribers (all connections)",
            e.hub().budget().used() as f64,
        ),
        (
            "outpost_uptime_seconds",
            "seconds since start",
            e.uptime().as_secs_f64(),
        ),
    ];
    let mut body = e.metrics.render(&extra);
    body.push_str(&state.net.render());
    body.push_str(&state.links.render_metrics());
    if let Some(u) = &state.upstream {
        body.push_str(&u.render_metrics());
    }
    if let Some(n) = &state.nats {
        body.push_str(&n.render_metrics());
    }
    body
}
