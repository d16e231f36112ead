//! The WebSocket endpoints that run on the driver: each is the dialect's
//! handshake (refusals are HTTP statuses before any upgrade), then the
//! upgrade with the socket limits, then [`super::run`].

use super::{run, ConnCtx, Ctx};
use crate::dialect::{atome_sync, config_sync, limit, native, sync, Dialect, Opening, Refused};
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;

type Params = Query<HashMap<String, String>>;

/// `GET /ws` (the native protocol).
pub async fn native(
    State(ctx): State<Ctx>,
    Query(q): Params,
    h: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    serve(ctx.clone(), ws, native::accept(&ctx, &h, &q))
}

/// `GET /ws/sync` (seed 000).
pub async fn sync(
    State(ctx): State<Ctx>,
    Query(q): Params,
    h: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    serve(ctx.clone(), ws, sync::accept(&ctx, &h, &q))
}

/// `GET /ws/atome-sync` (seed 001).
pub async fn atome_sync(
    State(ctx): State<Ctx>,
    Query(q): Params,
    h: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    serve(ctx.clone(), ws, atome_sync::accept(&ctx, &h, &q))
}

/// `GET /ws/config` (seed 002).
pub async fn config_sync(
    State(ctx): State<Ctx>,
    Query(q): Params,
    h: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    serve(ctx.clone(), ws, config_sync::accept(&ctx, &h, &q))
}

fn serve<D: Dialect>(
    ctx: Ctx,
    ws: WebSocketUpgrade,
    opening: Result<Opening<D>, Refused>,
) -> Response {
    let opening = match opening {
        Ok(o) => o,
        Err(refused) => return refused.into_response(),
    };
    limit(ws, &ctx).on_upgrade(move |socket| async move {
        let cc = ConnCtx::new(ctx, opening.endpoint);
        let dialect = (opening.make)(&cc);
        run(socket, cc, dialect).await
    })
}
