//! The floor: the least a WebSocket broadcast can cost on this machine.
//! Every text frame from a writer (`/pub`) is answered with a tiny ack and
//! forwarded verbatim to every subscriber (`/sub`): no parsing, no storage,
//! one shared buffer per frame, and the frames already waiting for a
//! subscriber written with one flush. It runs as its own child process (hidden
//! `outpost bench-floor`) with the same runtime setup as the relay, so the
//! relay and the floor meet the same load on the same footing.

use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use futures_util::SinkExt;
use std::io::Write;
use tokio::sync::broadcast;

/// Frames written per flush at most (as the relay's native dialect).
const BATCH: usize = 64;

/// Serve the floor on `listen` until killed; prints
/// `floor listening on ADDR` once bound. `capacity`: frames a subscriber may
/// fall behind before it loses some (the check then reports them missing);
/// the bench passes at least the run's change count, so the floor, which
/// has no log to resync from, never drops.
pub async fn serve(listen: &str, capacity: usize) -> anyhow::Result<()> {
    let (tx, _) = broadcast::channel::<Utf8Bytes>(capacity.max(16));
    let app = Router::new()
        .route("/pub", get(publisher))
        .route("/sub", get(subscriber))
        .with_state(tx);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "floor listening on {addr}")?;
        out.flush()?;
    }
    axum::serve(listener, app).await?;
    Ok(())
}

async fn publisher(
    State(tx): State<broadcast::Sender<Utf8Bytes>>,
    ws: WebSocketUpgrade,
) -> Response {
    ws.on_upgrade(move |mut socket: WebSocket| async move {
        let ack = Utf8Bytes::from_static(r#"{"type":"ack"}"#);
        while let Some(Ok(msg)) = socket.recv().await {
            match msg {
                Message::Text(t) => {
                    let _ = tx.send(t);
                    if socket.send(Message::Text(ack.clone())).await.is_err() {
                        break;
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    })
}

async fn subscriber(
    State(tx): State<broadcast::Sender<Utf8Bytes>>,
    ws: WebSocketUpgrade,
) -> Response {
    ws.on_upgrade(move |mut socket: WebSocket| async move {
        let mut rx = tx.subscribe();
        // Registered: tell the client, so writers start only after it.
        let ready = Utf8Bytes::from_static(r#"{"type":"synced"}"#);
        if socket.send(Message::Text(ready)).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                r = rx.recv() => match r {
                    Ok(frame) => {
                        // Write what is already there with one flush (one
                        // syscall), as a broadcaster that cares would.
                        let mut next = Some(frame);
                        let mut fed = 0;
                        let mut gone = false;
                        while let Some(f) = next.take() {
                            if socket.feed(Message::Text(f)).await.is_err() {
                                gone = true;
                                break;
                            }
                            fed += 1;
                            if fed < BATCH {
                                next = rx.try_recv().ok();
                            }
                        }
                        if gone || socket.flush().await.is_err() {
                            break;
                        }
                    }
                    // Lost frames show up as missing in the check.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                m = socket.recv() => match m {
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    _ => {}
                },
            }
        }
    })
}
