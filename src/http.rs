//! The axum router: dialect endpoints plus health, metrics and status.

use crate::dialect::{atome_adapter, atome_sync, config_sync, kv, native, sync, unified};
use crate::server::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/ws", get(native::upgrade))
        .route("/ws/sync", get(sync::upgrade))
        .route("/ws/atome-sync", get(atome_sync::upgrade))
        .route("/api/atome/create", post(atome_sync::create))
        .route("/api/atome", get(atome_sync::list))
        .route("/api/atome/list", get(atome_sync::list))
        .route(
            "/api/atome/{id}",
            get(atome_sync::get_one)
                .patch(atome_sync::patch)
                .put(atome_adapter::update)
                .delete(atome_sync::delete),
        )
        .route("/api/atome/{id}/alter", post(atome_adapter::alter_route))
        .route("/api/atome/{id}/rename", post(atome_adapter::rename))
        .route("/api/server-info", get(atome_adapter::server_info))
        .route("/v1/sync/{workspace}", get(kv::upgrade))
        .route("/v1/history/{workspace}", get(kv::history))
        .route("/ws/config", get(config_sync::upgrade))
        .route("/api/ws", get(unified::unified))
        .route("/api/sync/ws", get(unified::entity_sync))
        .route("/api/field-sync/ws", get(unified::field_sync))
        .route("/api/sync/events", get(unified::http::events))
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
        .route("/v1/status", get(status))
        .with_state(state)
}

/// 200 while the store accepts reads; 503 once shutting down.
async fn healthz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    if *state.shutdown.borrow() {
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "shutting down\n",
        );
    }
    match state.engine.log_len() {
        Ok(_) => (axum::http::StatusCode::OK, "ok\n"),
        Err(_) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "store unavailable\n",
        ),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
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
            "outpost_uptime_seconds",
            "seconds since start",
            e.uptime().as_secs_f64(),
        ),
    ];
    let mut body = e.metrics.render(&extra);
    body.push_str(&state.links.render_metrics());
    if let Some(u) = &state.upstream {
        body.push_str(&u.render_metrics());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

async fn status(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let e = &state.engine;
    let subs: std::collections::HashMap<String, usize> =
        e.hub().subscriber_counts().into_iter().collect();
    let spaces: Vec<_> = e
        .spaces()
        .unwrap_or_default()
        .into_iter()
        .map(|(name, changes)| json!({"name": name, "changes": changes, "subscribers": subs.get(&name).copied().unwrap_or(0)}))
        .collect();
    Json(json!({
        "node_id": e.node_id().to_string(),
        "version": crate::VERSION,
        "uptime_s": e.uptime().as_secs(),
        "listen": state.settings.listen.to_string(),
        "clients": e.metrics.connections.load(Relaxed),
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
        "upstream": state.upstream.as_ref().map(|u| u.status()),
    }))
}
