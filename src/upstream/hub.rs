//! The hub side: `GET /ws/replicate`, where edge relays forward their logs.
//! Admission needs a token with `admin` scope (401 without a valid token,
//! 403 with a weaker one); then the replication session of `replicate`
//! runs over binary messages. Every edge is one session; what one edge
//! sends enters the hub's log and so flows on to every other edge.

use crate::auth::Auth;
use crate::engine::{now_ms, Engine};
use crate::model::NodeId;
use crate::net::Upgrade;
use crate::replicate::frame::MAX_FRAME_BYTES;
use crate::replicate::{session, ws};
use crate::replicate::{Links, SessionOpts};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::sync::watch;

/// The link kind of an accepted edge in status and metrics.
pub const KIND: &str = "edge";

/// What the endpoint needs from the relay (and nothing more); cheap to
/// clone (shared handles).
#[derive(Clone)]
pub struct HubCtx {
    pub engine: Arc<Engine>,
    pub auth: Auth,
    pub links: Arc<Links>,
    /// Flips to true when shutdown starts.
    pub shutdown: watch::Receiver<bool>,
}

pub async fn upgrade(
    State(state): State<HubCtx>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: Upgrade,
) -> Response {
    let token = crate::auth::token_from(&headers, &query);
    let grant = match state.auth.admit(token.as_deref(), crate::auth::now_s()) {
        Ok(g) => g,
        Err(e) => {
            state.engine.metrics.auth_failures.fetch_add(1, Relaxed);
            return (StatusCode::UNAUTHORIZED, format!("unauthorized: {e}\n")).into_response();
        }
    };
    if !grant.is_admin() {
        state.engine.metrics.auth_failures.fetch_add(1, Relaxed);
        return (
            StatusCode::FORBIDDEN,
            "forbidden: replication needs a token with admin scope\n",
        )
            .into_response();
    }
    if *state.shutdown.borrow() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    let limit = MAX_FRAME_BYTES + 1024;
    // The session runs in the connection's task, owned by the accept
    // loop: shutdown waits for it (goodbye and close) by waiting for that.
    ws.limits(|ws| ws.max_message_size(Some(limit)).max_frame_size(Some(limit)))
        .on_upgrade(move |socket| serve_edge(state, socket, grant))
}

async fn serve_edge(state: HubCtx, socket: crate::net::WsStream, grant: crate::auth::Grant) {
    let (tx, rx, writer) = ws::split(socket, None, state.shutdown.clone());
    // The writer runs next to the session, in this task.
    let run = async {
        let (mut tx, mut rx) = (tx, rx);
        let guard = state.links.open(KIND, grant.sub.clone(), false, now_ms());
        let greeting = match session::hello(&state.engine, &mut rx, &mut tx).await {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(sub = %grant.sub, error = %e, "edge refused at hello");
                return;
            }
        };
        let peer = greeting.peer;
        guard.stats.node.store(peer.0, Relaxed);
        replace_older_sessions(&state, peer, guard.stats.id);
        tracing::info!(%peer, sub = %grant.sub, "edge session up");
        // A token limited to some spaces replicates only those.
        let opts = SessionOpts {
            cursor: format!("edge:{peer}"),
            spaces: grant.spaces.map(|s| s.into_iter().collect()),
            batch_bytes: crate::replicate::frame::MAX_FRAME_BYTES,
        };
        match session::run(
            state.engine.clone(),
            greeting,
            rx,
            tx,
            opts,
            guard.stats.clone(),
            state.shutdown.clone(),
        )
        .await
        {
            Ok(reason) => tracing::info!(%peer, %reason, "edge session ended"),
            Err(e) => tracing::warn!(%peer, error = %e, "edge session failed"),
        }
    };
    tokio::join!(run, writer);
}

/// An edge that reconnects replaces its previous session: the old one is
/// most likely a connection that died without a close (the edge would not
/// dial twice), and one session per edge keeps its cursor simple.
fn replace_older_sessions(state: &HubCtx, peer: NodeId, new_id: u64) {
    for old in state.links.snapshot() {
        if old.id != new_id && old.kind == KIND && old.node.load(Relaxed) == peer.0 {
            old.close.notify_one();
        }
    }
}
