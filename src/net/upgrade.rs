//! WebSocket upgrades that stay in their connection's task.
//!
//! The handshake is ours (RFC 6455 section 4.2): the checks of the request,
//! the `101` answer, then a `tokio-tungstenite` stream over the upgraded
//! connection. Ours rather than axum's `WebSocketUpgrade` for two reasons:
//! - axum runs the socket's handler in a task of its own that nobody holds.
//!   Here the connection task (owned by the accept loop's `JoinSet`) runs it:
//!   every request carries an [`Adopt`] slot of its connection,
//!   [`Upgrade::on_upgrade`] leaves the handler there, and once hyper has
//!   handed the connection over, the connection task runs it to the end. No
//!   task is spawned.
//! - axum's socket hides the connection under it, so every outgoing frame
//!   was copied into the library's write buffer. With the stream itself,
//!   the client driver writes the frames fan-out rendered once (shared
//!   bytes) straight to the connection, header and payload side by side
//!   (`conn::socket`).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

/// An upgraded client or edge connection.
pub type WsStream = WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

/// One connection's slot for what runs after its upgrade.
#[derive(Clone, Default)]
pub struct Adopt(Arc<Mutex<Option<BoxFuture<'static, ()>>>>);

impl Adopt {
    fn set(&self, f: BoxFuture<'static, ()>) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(f);
        }
    }

    /// What the connection's handler left to run after the upgrade.
    pub(super) fn take(&self) -> Option<BoxFuture<'static, ()>> {
        self.0.lock().ok()?.take()
    }
}

/// A WebSocket handshake request, checked, plus the connection's [`Adopt`]
/// slot: the extractor every WebSocket endpoint takes.
pub struct Upgrade {
    key: HeaderValue,
    on_upgrade: hyper::upgrade::OnUpgrade,
    config: WebSocketConfig,
    adopt: Option<Adopt>,
}

/// Why a request is not a WebSocket handshake we can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("a WebSocket handshake must be a GET")]
    NotGet,
    #[error("the Connection header must include 'upgrade'")]
    NoConnectionUpgrade,
    #[error("the Upgrade header must be 'websocket'")]
    NotWebSocket,
    #[error("Sec-WebSocket-Version must be 13")]
    Version,
    #[error("the Sec-WebSocket-Key header is missing")]
    NoKey,
    #[error("this connection cannot be upgraded")]
    NotUpgradable,
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let status = match self {
            Rejection::NotGet => StatusCode::METHOD_NOT_ALLOWED,
            Rejection::NotUpgradable => StatusCode::UPGRADE_REQUIRED,
            _ => StatusCode::BAD_REQUEST,
        };
        (status, format!("{self}\n")).into_response()
    }
}

/// Whether header `name` lists `token` (comma-separated, any case).
fn lists(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let h = &parts.headers;
        if parts.method != Method::GET {
            return Err(Rejection::NotGet);
        }
        if !lists(h, header::CONNECTION, "upgrade") {
            return Err(Rejection::NoConnectionUpgrade);
        }
        if !lists(h, header::UPGRADE, "websocket") {
            return Err(Rejection::NotWebSocket);
        }
        if h.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
            return Err(Rejection::Version);
        }
        let key = h
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or(Rejection::NoKey)?
            .clone();
        let on_upgrade = parts
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .ok_or(Rejection::NotUpgradable)?;
        Ok(Upgrade {
            key,
            on_upgrade,
            config: WebSocketConfig::default(),
            adopt: parts.extensions.get::<Adopt>().cloned(),
        })
    }
}

impl Upgrade {
    /// Set the socket's limits (frame and message sizes, buffers).
    pub fn limits(mut self, f: impl FnOnce(WebSocketConfig) -> WebSocketConfig) -> Upgrade {
        self.config = f(self.config);
        self
    }

    /// Answer 101 and run `handler` on the socket in the connection's own
    /// task. A request that did not come through [`super::serve`] has no
    /// task to run it in: 500.
    pub fn on_upgrade<F, Fut>(self, handler: F) -> Response
    where
        F: FnOnce(WsStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(adopt) = self.adopt else {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "no connection task to run the WebSocket in\n",
            )
                .into_response();
        };
        let (on_upgrade, config) = (self.on_upgrade, self.config);
        adopt.set(Box::pin(async move {
            // No connection when the upgrade failed (the client went away).
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let io = hyper_util::rt::TokioIo::new(upgraded);
            let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
            handler(socket).await;
        }));
        let accept =
            tokio_tungstenite::tungstenite::handshake::derive_accept_key(self.key.as_bytes());
        let mut res = Response::new(axum::body::Body::empty());
        *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = res.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(v) = HeaderValue::from_str(&accept) {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
        res
    }
}
