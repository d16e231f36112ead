//! Replication between relays: the one protocol that mesh peers (over QUIC)
//! and an edge and its upstream hub (over WebSocket) both speak.
//!
//! - `frame`: the messages and their MessagePack encoding;
//! - `plan`: what a peer lacks, decided from version vectors (pure);
//! - `session`: a session over any framed transport;
//! - `stats`: the live links, for status and metrics;
//! - `backoff`: reconnect delays.

pub mod backoff;
pub mod frame;
pub mod plan;
pub mod session;
pub mod stats;

pub use session::{FrameSink, FrameSource, SessionError, SessionOpts};
pub use stats::{LinkGuard, LinkStats, Links};
