//! Scale-out on NATS JetStream (issue 19): a hub tier whose shared log is
//! one JetStream stream, and an edge that forwards straight into it.
//!
//! Every change a member merges (its clients', sites' over `/ws/replicate`,
//! mesh peers') is published in local log order to `<prefix>.<space>` with
//! `Nats-Msg-Id` = origin and origin seq, so JetStream drops a republish
//! inside its duplicate window and the engine's merge drops the rest. Each
//! member reads the stream from its own durable position (a cursor in
//! redb) and merges what the others wrote through the same path as peers.
//! See docs/scale-out.md.
//!
//! - `settings`: `[cluster]` / `[upstream] nats` keys (always built, so a
//!   build without the feature refuses them by name);
//! - `wire`: subjects, message ids, payloads (pure);
//! - `read`: which read changes go to the engine, with which covers for
//!   the ones `spaces` skip (pure);
//! - `pending`: reads ahead of their predecessors (pure);
//! - `link` (feature `jetstream`): the NATS client side: stream check,
//!   publisher, consumer, status and metrics.

pub mod pending;
pub mod read;
pub mod settings;
pub mod wire;

#[cfg(feature = "jetstream")]
pub mod link;

/// What `/v1/status` and `/metrics` read from a running link.
pub trait Report: Send + Sync {
    /// The link's object in `/v1/status`.
    fn status(&self) -> serde_json::Value;
    /// Prometheus lines.
    fn render_metrics(&self) -> String;
}
