//! Pull once from another relay's `/ws/replicate`, as a site would dial
//! it, and stop as soon as this relay holds everything the other one held
//! when the session started (`replicate::session::pull`). A cluster member
//! seeds itself this way when the stream was trimmed (`cluster::link`,
//! docs/scale-out.md "Bootstrap").

use super::dial::dial;
use super::ws;
use super::{session, Links, SessionOpts};
use crate::config::UpstreamSettings;
use crate::engine::{now_ms, Engine};
use crate::model::{NodeId, VersionVector};
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::watch;

/// The link kind in status and metrics while a pull runs.
pub const KIND: &str = "bootstrap";
/// The session's cursor (how far the peer acked this relay's log). Not
/// pinned: it only speeds up a retried pull.
const CURSOR: &str = "cluster.bootstrap";

/// Who was pulled from, and the vector it had at hello.
#[derive(Debug)]
pub struct Pulled {
    pub peer: NodeId,
    pub peer_vv: VersionVector,
}

/// One pull from `s`, of `spaces` (all when None: the changes of other
/// spaces arrive as covers). `on_hello` sees the peer's node id and version
/// vector before any of its changes is applied, and may refuse the peer.
/// Ok once this relay's version vector holds the peer's hello vector; an
/// error if the session ended any other way (the caller retries).
pub async fn pull_once(
    s: &UpstreamSettings,
    engine: Arc<Engine>,
    links: &Arc<Links>,
    spaces: Option<HashSet<String>>,
    on_hello: impl FnOnce(NodeId, &VersionVector) -> Result<(), String>,
    shutdown: watch::Receiver<bool>,
) -> Result<Pulled, String> {
    let tls = if s.tls {
        Some(crate::net::client::connector(s.ca.as_deref()).map_err(|e| e.to_string())?)
    } else {
        None
    };
    let socket = dial(s, tls.as_ref()).await?;
    let (tx, rx, writer) = ws::split(socket, None, shutdown.clone());
    // The writer runs next to the session, in this task.
    let run = async {
        let (mut tx, mut rx) = (tx, rx);
        let guard = links.open(KIND, s.url.clone(), true, now_ms());
        let _ = guard.stats.found.set("config");
        let greeting = session::hello(&engine, &mut rx, &mut tx)
            .await
            .map_err(|e| e.to_string())?;
        let pulled = Pulled {
            peer: greeting.peer,
            peer_vv: greeting.peer_vv.clone(),
        };
        on_hello(pulled.peer, &pulled.peer_vv)?;
        tracing::info!(url = %s.url, peer = %pulled.peer, "pulling from the peer");
        let opts = SessionOpts {
            cursor: CURSOR.to_string(),
            spaces,
            batch_bytes: crate::replicate::frame::MAX_FRAME_BYTES,
        };
        let reason = session::pull(
            engine.clone(),
            greeting,
            rx,
            tx,
            opts,
            guard.stats.clone(),
            shutdown,
        )
        .await
        .map_err(|e| e.to_string())?;
        Ok::<_, String>((pulled, reason))
    };
    let (pulled, reason) = tokio::join!(run, writer).0?;
    // Judged on the store, not on the reason: any other end is a retry.
    let e = engine.clone();
    let vv = crate::engine::off_worker(move || e.version_vector())
        .await
        .map_err(|e| e.to_string())?;
    if !crate::replicate::plan::holds(&vv, &pulled.peer_vv, engine.node_id()) {
        return Err(format!("the pull ended early: {reason}"));
    }
    Ok(pulled)
}
