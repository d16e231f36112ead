//! The WebSocket endpoints that run on the driver: each is the dialect's
//! handshake (refusals are HTTP statuses before any upgrade), then the
//! upgrade with the socket limits, then [`super::run`].

use super::socket::{Socket, SseEvent};
use super::{run, ConnCtx, Ctx};
use crate::dialect::unified::{self, proto::Endpoint};
use crate::dialect::{atome_sync, config_sync, kv, limit, native, sync, Dialect, Opening};
use crate::net::Upgrade;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::convert::Infallible;

type Params = Query<HashMap<String, String>>;

/// `GET /ws` (the native protocol).
pub async fn native(
    State(ctx): State<Ctx>,
    Query(q): Params,
    h: HeaderMap,
    ws: Upgrade,
) -> Response {
    serve(ctx.clone(), ws, native::accept(&ctx, &h, &q))
}

/// `GET /ws/sync` (seed 000).
pub async fn sync(State(ctx): State<Ctx>, Query(q): Params, h: HeaderMap, ws: Upgrade) -> Response {
    serve(ctx.clone(), ws, sync::accept(&ctx, &h, &q))
}

/// `GET /ws/atome-sync` (seed 001).
pub async fn atome_sync(
    State(ctx): State<Ctx>,
    Query(q): Params,
    h: HeaderMap,
    ws: Upgrade,
) -> Response {
    serve(ctx.clone(), ws, atome_sync::accept(&ctx, &h, &q))
}

/// `GET /ws/config` (seed 002).
pub async fn config_sync(
    State(ctx): State<Ctx>,
    Query(q): Params,
    h: HeaderMap,
    ws: Upgrade,
) -> Response {
    serve(ctx.clone(), ws, config_sync::accept(&ctx, &h, &q))
}

/// `GET /v1/sync/{workspace}` (seed 003).
pub async fn kv(
    State(ctx): State<Ctx>,
    Path(workspace): Path<String>,
    Query(q): Params,
    h: HeaderMap,
    ws: Upgrade,
) -> Response {
    serve(ctx.clone(), ws, kv::accept(&ctx, workspace, &h, &q))
}

/// `GET /api/ws` (seed 004, every message family).
pub async fn unified(
    State(ctx): State<Ctx>,
    Query(q): Params,
    h: HeaderMap,
    ws: Upgrade,
) -> Response {
    let opening = unified::accept(Endpoint::Unified, &ctx, &h, &q);
    serve(ctx.clone(), ws, opening)
}

/// `GET /api/sync/ws` (seed 004, entity-level sync only).
pub async fn entity_sync(
    State(ctx): State<Ctx>,
    Query(q): Params,
    h: HeaderMap,
    ws: Upgrade,
) -> Response {
    let opening = unified::accept(Endpoint::Entity, &ctx, &h, &q);
    serve(ctx.clone(), ws, opening)
}

/// `GET /api/field-sync/ws` (seed 004, field-level sync only).
pub async fn field_sync(
    State(ctx): State<Ctx>,
    Query(q): Params,
    h: HeaderMap,
    ws: Upgrade,
) -> Response {
    let opening = unified::accept(Endpoint::Field, &ctx, &h, &q);
    serve(ctx.clone(), ws, opening)
}

/// `GET /api/sync/events` (seed 004's SSE fallback). The driver runs
/// inside the response body, not in a task of its own: when the client
/// drops the response the driver goes with it, and the connection's task
/// (owned by the accept loop, `net::serve`) is the only task. Keep-alive comments every 15 s.
pub async fn events(State(ctx): State<Ctx>, Query(q): Params, h: HeaderMap) -> Response {
    let opening = match unified::events::accept(&ctx, &h, &q) {
        Ok(o) => o,
        Err(refused) => return refused.into_response(),
    };
    let (socket, rx) = Socket::sse(unified::events::EVENT);
    let cc = ConnCtx::new(ctx, opening.endpoint);
    let dialect = (opening.make)(&cc);
    let driver = futures_util::stream::once(run(socket, cc, dialect))
        .filter_map(|()| async { None::<Result<SseEvent, Infallible>> });
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        let e = rx.recv().await?;
        Some((Ok::<_, Infallible>(e), rx))
    });
    Sse::new(futures_util::stream::select(events, driver))
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response()
}

fn serve<D: Dialect, R: IntoResponse>(
    ctx: Ctx,
    ws: Upgrade,
    opening: Result<Opening<D>, R>,
) -> Response {
    let opening = match opening {
        Ok(o) => o,
        Err(refused) => return refused.into_response(),
    };
    // The actor runs in the connection's task (owned by the accept loop).
    let limits = ctx.clone();
    ws.limits(|ws| limit(ws, &limits))
        .on_upgrade(move |socket| async move {
            let cc = ConnCtx::new(ctx, opening.endpoint);
            let dialect = (opening.make)(&cc);
            run(Socket::ws(socket, &cc.state), cc, dialect).await
        })
}
