//! Replication between relays: the one protocol that mesh peers (over QUIC)
//! and an edge and its upstream hub (over WebSocket) both speak.
//!
//! - `frame`: the messages and their MessagePack encoding;
//! - `plan`: what a peer lacks, decided from version vectors (pure);
//! - `session`: a session over any framed transport;
//! - `stats`: the live links, for status and metrics;
//! - `backoff`: reconnect delays;
//! - `ws`: frames over either WebSocket library, keepalive, close codes
//!   (the upstream link, the hub's `/ws/replicate`, the bootstrap pull);
//! - `dial`: dialling a relay's `/ws/replicate`;
//! - `pull`: one session that pulls what another relay holds, then ends
//!   (a cluster member's bootstrap).

pub mod backoff;
pub mod dial;
pub mod frame;
pub mod plan;
pub mod pull;
pub mod session;
pub mod stats;
pub mod ws;

pub use session::{FrameSink, FrameSource, SessionError, SessionOpts};
pub use stats::{LinkGuard, LinkStats, Links};
