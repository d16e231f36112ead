//! Per-link counters for `/v1/status` and `/metrics`: one entry per live
//! replication session (mesh peer or upstream), removed when it ends.

use crate::model::NodeId;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

#[derive(Debug)]
pub struct LinkStats {
    pub id: u64,
    /// "mesh", "upstream" (dialled hub) or "edge" (accepted edge relay).
    pub kind: &'static str,
    pub addr: String,
    pub connected_ms: u64,
    /// The peer's node id, once its hello arrived (0 before).
    pub node: AtomicU64,
    pub changes_sent: AtomicU64,
    pub changes_received: AtomicU64,
    pub duplicates_received: AtomicU64,
    pub events_sent: AtomicU64,
    pub events_received: AtomicU64,
    /// Local log entries not yet acknowledged by the peer.
    pub backlog: AtomicU64,
    /// The local seq up to which the peer holds everything it gets from
    /// this relay (acknowledged, or skipped as not wanted).
    pub acked: AtomicU64,
    /// Dialled by this relay (false: accepted).
    pub outbound: bool,
    /// Tells the session to end (a duplicate link to the same peer).
    pub close: tokio::sync::Notify,
}

/// The registry of live links. Entries are removed by their guard's drop.
#[derive(Default)]
pub struct Links {
    live: Mutex<BTreeMap<u64, Arc<LinkStats>>>,
    next: AtomicU64,
}

/// Keeps a link listed while it lives.
pub struct LinkGuard {
    links: Arc<Links>,
    pub stats: Arc<LinkStats>,
}

impl Drop for LinkGuard {
    fn drop(&mut self) {
        if let Ok(mut l) = self.links.live.lock() {
            l.remove(&self.stats.id);
        }
    }
}

impl Links {
    /// List a new link. Ids are also the `source` of what it applies, so
    /// nothing is echoed back to the link it came from.
    pub fn open(
        self: &Arc<Self>,
        kind: &'static str,
        addr: String,
        outbound: bool,
        now_ms: u64,
    ) -> LinkGuard {
        // Ids start high so they never collide with client connection ids.
        let id = (1 << 48) + self.next.fetch_add(1, Relaxed);
        let stats = Arc::new(LinkStats {
            id,
            kind,
            addr,
            connected_ms: now_ms,
            node: AtomicU64::new(0),
            changes_sent: AtomicU64::new(0),
            changes_received: AtomicU64::new(0),
            duplicates_received: AtomicU64::new(0),
            events_sent: AtomicU64::new(0),
            events_received: AtomicU64::new(0),
            backlog: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            outbound,
            close: tokio::sync::Notify::new(),
        });
        if let Ok(mut l) = self.live.lock() {
            l.insert(id, stats.clone());
        }
        LinkGuard {
            links: self.clone(),
            stats,
        }
    }

    pub fn snapshot(&self) -> Vec<Arc<LinkStats>> {
        self.live
            .lock()
            .map(|l| l.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Is a session with this peer node already established?
    pub fn connected_to(&self, node: NodeId) -> bool {
        self.snapshot()
            .iter()
            .any(|s| s.node.load(Relaxed) == node.0)
    }

    pub fn status(&self) -> Value {
        Value::Array(
            self.snapshot()
                .iter()
                .map(|s| {
                    let node = s.node.load(Relaxed);
                    json!({
                        "kind": s.kind,
                        "node_id": (node != 0).then(|| NodeId(node).to_string()),
                        "addr": s.addr,
                        "connected_since_ms": s.connected_ms,
                        "changes_sent": s.changes_sent.load(Relaxed),
                        "changes_received": s.changes_received.load(Relaxed),
                        "duplicates_received": s.duplicates_received.load(Relaxed),
                        "events_sent": s.events_sent.load(Relaxed),
                        "events_received": s.events_received.load(Relaxed),
                        "backlog": s.backlog.load(Relaxed),
                    })
                })
                .collect(),
        )
    }

    /// Prometheus lines, one series per link, labelled by peer and kind.
    pub fn render_metrics(&self) -> String {
        let links = self.snapshot();
        let mut out = String::new();
        type Get = fn(&LinkStats) -> u64;
        let series: [(&str, &str, &str, Get); 4] = [
            (
                "outpost_peer_changes_sent_total",
                "counter",
                "changes sent to the peer",
                |s| s.changes_sent.load(Relaxed),
            ),
            (
                "outpost_peer_changes_received_total",
                "counter",
                "changes received from the peer",
                |s| s.changes_received.load(Relaxed),
            ),
            (
                "outpost_peer_backlog",
                "gauge",
                "local log entries the peer has not acknowledged",
                |s| s.backlog.load(Relaxed),
            ),
            (
                "outpost_peer_connected_since_seconds",
                "gauge",
                "when the link came up (unix time)",
                |s| s.connected_ms / 1000,
            ),
        ];
        for (name, kind, help, get) in series {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for s in &links {
                let node = NodeId(s.node.load(Relaxed));
                out.push_str(&format!(
                    "{name}{{kind=\"{}\",peer=\"{node}\",addr=\"{}\"}} {}\n",
                    s.kind,
                    s.addr.replace('"', ""),
                    get(s)
                ));
            }
        }
        out
    }
}
