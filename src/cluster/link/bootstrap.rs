//! Seeding a member (or an `[upstream] nats` edge) from a peer instance
//! when the stream no longer holds what it lacks (docs/scale-out.md,
//! "Bootstrap"):
//!
//! 1. read the peer's stream position P from its `/v1/status`: the peer
//!    has merged every stream message up to P (its position stays below a
//!    change still waiting for a predecessor), and the stream must still
//!    hold P+1;
//! 2. pull from the peer's `/ws/replicate` as a site would, until this
//!    relay holds everything the peer's hello counted (its log, or a
//!    snapshot where its retention trimmed the log). The hello comes after
//!    step 1, so that is everything up to P at least. The hello's node id
//!    must be the status's: a load balancer could hand the two requests
//!    to different instances, whose positions differ;
//! 3. save P as this relay's position: the consumer goes on from P+1,
//!    and whatever the pull brought past P merges as a duplicate.
//!
//! The publisher skips what the pull brought (the peer's hello vector, in
//! `in_stream_by_peer`): the peer publishes all it merges, so it is in the
//! stream already or will be by the peer's route; publishing it again
//! would only append duplicates once the duplicate window is past.

use super::Link;
use crate::cluster::settings::{Bootstrap, Role};
use crate::model::{NodeId, VersionVector};
use crate::net::client::Target;
use serde_json::Value;
use std::sync::atomic::Ordering::Relaxed;
use tokio::sync::watch;

/// What the peer's `/v1/status` says of it.
struct PeerPosition {
    node: NodeId,
    position: u64,
}

impl Link {
    /// Run the three steps; returns the position to consume after. An
    /// error leaves the position unsaved: the consumer retries it all.
    pub(super) async fn bootstrap(
        &self,
        b: &Bootstrap,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<u64, String> {
        self.set_bootstrap(format!("reading the position of {}", b.url));
        let peer = self.peer_position(b).await.inspect_err(|e| {
            self.set_bootstrap(format!("failed: {e}"));
        })?;
        let first = self.stream_first().await?;
        if peer.position + 1 < first {
            let e = format!(
                "the peer {} is at stream position {}, below the stream's first message {first}: it lacks what was trimmed too",
                b.url, peer.position
            );
            self.set_bootstrap(format!("failed: {e}"));
            return Err(e);
        }
        self.set_bootstrap(format!(
            "pulling from {} (node {}, stream position {})",
            b.url, peer.node, peer.position
        ));
        tracing::info!(peer = %b.url, node = %peer.node, position = peer.position, "bootstrapping from a peer instance: the stream no longer holds what this relay lacks");
        let key = match self.s.role {
            Role::Cluster { .. } => "cluster.bootstrap.url",
            Role::Upstream => "upstream.bootstrap.url",
        };
        let on_hello = |node: NodeId, vv: &VersionVector| {
            if node != peer.node {
                return Err(format!(
                    "{} answered as node {} on /v1/status and {node} on /ws/replicate: set {key} to one instance's own address, not a load balancer's",
                    b.url, peer.node
                ));
            }
            // Before any pulled change commits (see `publish_page`).
            if let Ok(mut known) = self.in_stream_by_peer.lock() {
                for (o, s) in vv {
                    let k = known.entry(*o).or_insert(0);
                    *k = (*k).max(*s);
                }
            }
            Ok(())
        };
        let pulled = crate::replicate::pull::pull_once(
            &b.replicate,
            self.engine.clone(),
            &self.links,
            self.s.spaces.clone(),
            on_hello,
            shutdown.clone(),
        )
        .await
        .inspect_err(|e| self.set_bootstrap(format!("failed: {e}")))?;
        // The stream may have trimmed past P during the pull: then the
        // messages in between may be in neither, so start over.
        let first = self.stream_first().await?;
        if peer.position + 1 < first {
            let e = format!(
                "the stream trimmed past the peer's position {} during the pull (first message now {first}): starting over",
                peer.position
            );
            self.set_bootstrap(format!("failed: {e}"));
            return Err(e);
        }
        self.engine
            .set_cursor(self.s.consume_cursor(), peer.position)
            .await
            .map_err(|e| format!("saving the stream position: {e}"))?;
        self.stats.position.store(peer.position, Relaxed);
        self.stats.read.store(peer.position, Relaxed);
        let origins = pulled.peer_vv.len();
        self.set_bootstrap(format!(
            "done: pulled from {} (node {}), reading the stream after {}",
            b.url, pulled.peer, peer.position
        ));
        tracing::info!(peer = %b.url, node = %pulled.peer, position = peer.position, origins, "bootstrap done: reading the stream after the peer's position");
        Ok(peer.position)
    }

    fn set_bootstrap(&self, state: String) {
        if let Ok(mut b) = self.bootstrap.lock() {
            *b = Some(state);
        }
    }

    async fn stream_first(&self) -> Result<u64, String> {
        let mut stream = self
            .js
            .get_stream(&self.s.stream.name)
            .await
            .map_err(|e| e.to_string())?;
        let info = stream.info().await.map_err(|e| e.to_string())?;
        self.note_state(&info.state);
        Ok(info.state.first_sequence)
    }

    /// The peer's node id and stream position, from its `/v1/status`; it
    /// must be a member of the same stream.
    async fn peer_position(&self, b: &Bootstrap) -> Result<PeerPosition, String> {
        // The same trust anchors as the pull (both from `ca_file`).
        let target = Target::new(&b.url, Some(b.token.clone()), b.replicate.ca.as_deref())
            .map_err(|e| e.to_string())?;
        let body = target
            .get_bytes("/v1/status")
            .await
            .map_err(|e| e.to_string())?;
        let st: Value =
            serde_json::from_slice(&body).map_err(|e| format!("{}/v1/status: {e}", b.url))?;
        parse_peer(&st, &self.s.stream.name).map_err(|e| format!("{}: {e}", b.url))
    }
}

/// Node id and position from a peer's status document (pure).
fn parse_peer(st: &Value, stream: &str) -> Result<PeerPosition, String> {
    let node = st["node_id"]
        .as_str()
        .and_then(|n| n.parse().ok())
        .ok_or("no node_id in its status")?;
    let js = &st["jetstream"];
    if js["role"] != "cluster" {
        return Err("not a member of a hub tier ([cluster] nats)".into());
    }
    if js["stream"]["name"] != stream {
        return Err(format!(
            "a member of stream {}, not {stream}",
            js["stream"]["name"]
        ));
    }
    let position = js["position"]
        .as_u64()
        .ok_or("no jetstream.position in its status")?;
    Ok(PeerPosition { node, position })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_peer_must_share_the_stream() {
        let st = |role: &str, name: &str| {
            json!({"node_id": "00000000000000ab",
                "jetstream": {"role": role, "stream": {"name": name}, "position": 42}})
        };
        let p = parse_peer(&st("cluster", "OUTPOST"), "OUTPOST").unwrap();
        assert_eq!((p.node, p.position), (NodeId(0xab), 42));
        assert!(parse_peer(&st("upstream", "OUTPOST"), "OUTPOST").is_err());
        assert!(parse_peer(&st("cluster", "OTHER"), "OUTPOST").is_err());
        assert!(parse_peer(&json!({"node_id": "ab"}), "OUTPOST").is_err());
        assert!(parse_peer(&json!({}), "OUTPOST").is_err());
    }
}
