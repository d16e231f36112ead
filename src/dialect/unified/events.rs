//! `GET /api/sync/events`, seed 004's Server-Sent Events fallback, as a
//! dialect the connection driver runs over an SSE response
//! (`conn::socket::Socket::sse`): one feed of the whole space, each
//! committed change an `event: sync` whose data is a `ChangeLog` (the whole
//! entity state). Nothing is read from the client. A slow reader is caught
//! up from the log like a socket (the driver's lag policy: resume).

use super::http::{caller, HttpError};
use super::proto;
use crate::dialect::{Ctx, Dialect, Follow, Handled, Opening, Refusal, Since};
use crate::engine::{Committed, Filter};
use crate::store::StoredEntity;
use axum::extract::ws::Utf8Bytes;
use axum::http::HeaderMap;
use std::collections::HashMap;

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
    // Every change committed from the handshake on: the feed starts here
    // even if the body is first polled a moment later.
    let since = state.engine.hub().last_seq();
    Ok(Opening::new("/api/sync/events", move |_| {
        Events::new(c.space, since)
    }))
}

/// One SSE stream.
pub struct Events {
    space: String,
    since: u64,
}

impl Events {
    /// The stream of `space`'s changes committed after `since`.
    pub fn new(space: String, since: u64) -> Events {
        Events { space, since }
    }
}

impl Dialect for Events {
    fn open(&mut self, _: u64) -> Handled {
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
    fn on_text(&mut self, _: &str, _: u64) -> Handled {
        Handled::default()
    }

    fn refuse(&mut self, why: Refusal, _: u64) -> String {
        serde_json::json!({"error": why.message(), "code": "refused"}).to_string()
    }

    /// A live change carries the entity's state after it; one re-read from
    /// the log (catch-up) is rendered over the current state, which the
    /// driver reads.
    fn needs_state(&self, _: u64, c: &Committed) -> bool {
        c.after.is_none()
    }

    fn change(
        &mut self,
        _: u64,
        c: &Committed,
        state: Option<&StoredEntity>,
        out: &mut Vec<Utf8Bytes>,
    ) {
        let change = if c.after.is_some() {
            proto::change_log(c)
        } else {
            proto::change_log_over(c, state.map(|e| e.view()).as_ref())
        };
        out.push(serde_json::to_string(&change).unwrap_or_default().into());
    }

    fn snapshot(
        &mut self,
        _: u64,
        collection: &str,
        id: &str,
        e: &StoredEntity,
        _: u64,
        out: &mut Vec<Utf8Bytes>,
    ) {
        let change = proto::entity_change(collection, id, e, None);
        out.push(serde_json::to_string(&change).unwrap_or_default().into());
    }
}
