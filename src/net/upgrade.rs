//! WebSocket upgrades that stay in their connection's task.
//!
//! axum's `WebSocketUpgrade::on_upgrade` runs the socket's handler in a
//! task of its own that nobody holds. Here the connection task (owned by
//! the accept loop's `JoinSet`) runs it instead: every request carries an
//! [`Adopt`] slot of its connection; [`Upgrade::on_upgrade`] leaves the
//! handler there, and once hyper has handed the socket over, the
//! connection task runs it to the end. The only task axum still spawns
//! passes the socket across and ends at once.

use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use std::future::Future;
use std::sync::{Arc, Mutex};

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

/// `WebSocketUpgrade` plus the connection's [`Adopt`] slot: the extractor
/// every WebSocket endpoint takes.
pub struct Upgrade {
    ws: WebSocketUpgrade,
    adopt: Option<Adopt>,
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = <WebSocketUpgrade as FromRequestParts<S>>::Rejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let adopt = parts.extensions.get::<Adopt>().cloned();
        let ws = WebSocketUpgrade::from_request_parts(parts, state).await?;
        Ok(Upgrade { ws, adopt })
    }
}

impl Upgrade {
    /// Set the socket's limits (frame and message sizes, buffers).
    pub fn limits(self, f: impl FnOnce(WebSocketUpgrade) -> WebSocketUpgrade) -> Upgrade {
        Upgrade {
            ws: f(self.ws),
            adopt: self.adopt,
        }
    }

    /// Answer 101 and run `handler` on the socket in the connection's own
    /// task. A request that did not come through [`super::serve`] has no
    /// task to run it in: 500.
    pub fn on_upgrade<F, Fut>(self, handler: F) -> Response
    where
        F: FnOnce(WebSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(adopt) = self.adopt else {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "no connection task to run the WebSocket in\n",
            )
                .into_response();
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<WebSocket>();
        adopt.set(Box::pin(async move {
            // No socket when the upgrade failed (the client went away).
            if let Ok(socket) = rx.await {
                handler(socket).await;
            }
        }));
        self.ws.on_upgrade(move |socket| async move {
            let _ = tx.send(socket);
        })
    }
}
