//! The client connection driver: the one loop every WebSocket dialect runs
//! on (issue 15). It owns reading and writing frames (batched sends), the
//! keepalive and idle timeout, close frames (1007 invalid UTF-8, 1009 too
//! big, 1001 shutdown and idle, 1008 no in-band auth, 1011 storage error),
//! in-flight limits and the ordered mode, the per-connection subscription
//! limit, and the one catch-up-to-live feed with its lag policy. Dialects
//! ([`crate::dialect::Dialect`]) only turn frames into frames and requests.
//!
//! - [`driver`]: the loop.
//! - [`feed`]: catch-up to live, the lag policy, no echo after a resync.
//! - [`socket`]: keepalive, batched writes, close frames; a WebSocket or
//!   an SSE response body.
//! - [`endpoints`]: the handshake-then-upgrade handlers of every client
//!   endpoint (and the SSE stream of seed 004).
//!
//! The write timeout is the socket's (`net::io`): one mechanism for every
//! protocol, so a client that stops reading is cut off after
//! `server.write_timeout`, logged and counted, whatever it speaks.
//!
//! Every client endpoint runs here: native `/ws`, seeds 000-004 and seed
//! 004's `/api/sync/events`. Blocking store reads a dialect asks for
//! ([`crate::dialect::Read`]: an `init`, a `sync`) run page by page off the
//! async workers, like catch-up pages.

pub mod driver;
pub mod endpoints;
pub mod feed;
pub mod socket;

pub use crate::dialect::{ConnCtx, Ctx};
pub use driver::run;
