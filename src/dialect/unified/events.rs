//! `GET /api/sync/events`, seed 004's Server-Sent Events fallback, as a
//! dialect the connection driver runs over an SSE response
//! (`conn::socket::Socket::sse`): one feed of the whole space, each
//! committed change an `event: sync` whose data is a `ChangeLog` (the whole
//! entity state). Nothing is read from the client. A slow reader is caught
//! up from the log like a socket (the driver's lag policy: resume).

use super::http::{caller, HttpError};
use super::proto;
use crate::dialect::{Ctx, Dialect, Follow, Handled, Opening, Refusal, Since};
use crate::engine::{Committed, Engine, Filter};
use crate::store::StoredEntity;
use axum::extract::ws::Utf8Bytes;
use axum::http::HeaderMap;
use std::collections::HashMap;
use std::sync::Arc;

/// The SSE event name of every frame.
pub const EVENT: &str = "sync";

/// The handshake: admission and read access as on the sockets (refusals
/// are JSON bodies with an HTTP status, as the rest of the HTTP API's).
pub fn accept(
    state: &Ctx,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<Opening<Events>, HttpError> {
    let c = caller(state, headers, query, false)?;
    let engine = state.engine.clone();
    // Every change committed from the handshake on: the feed starts here
    // even if the body is first polled a moment later.
    let since = engine.hub().last_seq();
    Ok(Opening::new("/api/sync/events", move |_| Events {
        engine,
        space: c.space,
        since,
    }))
}

/// One SSE stream.
pub struct Events {
    engine: Arc<Engine>,
    space: String,
    since: u64,
}

impl Dialect for Events {
    fn open(&mut self) -> Handled {
        Handled {
            follow: vec![Follow {
                key: 0,
                space: self.space.clone(),
                filter: Filter {
                    collections: None,
                    events: false,
                },
                since: Since::After(self.since),
            }],
            ..Handled::default()
        }
    }

    /// An SSE client sends nothing; never called.
    fn on_text(&mut self, _: &str) -> Handled {
        Handled::default()
    }

    fn refuse(&mut self, why: Refusal) -> String {
        serde_json::json!({"error": why.message(), "code": "refused"}).to_string()
    }

    /// A live change carries the entity's state after it; one re-read from
    /// the log (catch-up) gets the current state.
    fn change(&mut self, _: u64, c: &Committed, out: &mut Vec<Utf8Bytes>) {
        let change = if c.after.is_some() {
            proto::change_log(c)
        } else {
            let ch = &c.entry.change;
            let now = self
                .engine
                .entity(&self.space, &ch.collection, &ch.id)
                .ok()
                .flatten()
                .map(|e| e.view());
            proto::change_log_over(c, now.as_ref())
        };
        out.push(serde_json::to_string(&change).unwrap_or_default().into());
    }

    fn snapshot(
        &mut self,
        _: u64,
        collection: &str,
        id: &str,
        e: &StoredEntity,
        out: &mut Vec<Utf8Bytes>,
    ) {
        let change = proto::entity_change(collection, id, e, None);
        out.push(serde_json::to_string(&change).unwrap_or_default().into());
    }
}
