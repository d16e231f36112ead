//! outpost: an edge sync relay.
//!
//! Module map (outside in):
//! - [`cli`]: the command line's definition (clap), shared with the man
//!   page and shell completion generators.
//! - [`config`]: the TOML file, validated into [`config::Settings`].
//! - [`app`]: the relay: starts and owns every part, its routes (health,
//!   metrics, status, the dialect endpoints), the live status page and
//!   admin API (`app::console`), graceful shutdown.
//! - [`tasks`]: the relay's task set and its one stop signal (the app
//!   spawns every long-lived task there).
//! - [`net`]: the accept loop (plain or TLS): admission limits, timeouts on
//!   every stage, descriptor limits, write timeouts; WebSocket upgrades run
//!   in their connection's task; the outgoing TLS config and admin-API
//!   client.
//! - [`conn`]: the one client connection driver every client endpoint
//!   runs on (WebSockets and seed 004's SSE stream): frames, keepalive,
//!   timeouts, in-flight limits, paged reads, feeds.
//! - [`dialect`]: one module per client protocol, each a thin adapter
//!   (parse, call the engine, render). `native` is outpost's own.
//! - [`auth`]: HS256 JWTs and scopes.
//! - [`mesh`]: QUIC between peer relays: membership, dialling, mDNS.
//! - [`replicate`]: the relay-to-relay protocol (frames, planning from
//!   version vectors, sessions over any transport, the WebSocket transport,
//!   dialler and pull-once session), used by mesh, upstream and cluster.
//! - [`upstream`]: store-and-forward from an edge to its hub over WebSocket
//!   (the `replicate` protocol), and the hub's `/ws/replicate` endpoint.
//! - [`engine`]: apply, subscribe (catch-up then live), fan-out, events.
//! - [`store`]: redb tables and the group-commit writer thread.
//! - [`model`]: stamps, changes, entity state and its CRDT merge (pure).
//! - [`metrics`]: counters rendered for Prometheus.
//! - [`schema`]: JSON Schema sets (forms, collection schemas).
//! - [`rfc3339`]: timestamp text for the dialects that use it.
//! - [`notify`]: systemd readiness and watchdog notifications.
//! - [`memory`]: allocator settings so freed frames return to the OS.
//! - [`bench`]: `outpost bench`, the benchmark against a floor measured in
//!   the same run.

pub mod app;
pub mod auth;
#[cfg(feature = "bench")]
pub mod bench;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod dialect;
pub mod engine;
pub mod memory;
pub mod mesh;
pub mod metrics;
pub mod model;
pub mod net;
pub mod notify;
pub mod ops;
pub mod replicate;
pub mod rfc3339;
pub mod schema;
pub mod store;
pub mod tasks;
pub mod upstream;

/// The relay's version, reported in welcome messages and status.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
