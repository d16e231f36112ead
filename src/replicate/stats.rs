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
    /// Smoothed round trip (µs) as the transport measures it (QUIC), 0 if
    /// unknown.
    pub rtt_us: AtomicU64,
    /// When a frame last arrived from the peer (ms since the epoch).
    pub last_rx_ms: AtomicU64,
    /// How the peer was found: "static" (config), "mdns", "inbound"
    /// (it dialled us) or "config" (the upstream URL).
    pub found: std::sync::OnceLock<&'static str>,
    /// The spaces this link carries, sorted (unset: all).
    pub spaces: std::sync::OnceLock<Vec<String>>,
}

impl LinkStats {
    pub fn found(&self) -> &'static str {
        self.found
            .get()
            .copied()
            .unwrap_or(if self.outbound { "static" } else { "inbound" })
    }

    fn json(&self, connected: bool) -> Value {
        let node = self.node.load(Relaxed);
        let rtt = self.rtt_us.load(Relaxed);
        let rx = self.last_rx_ms.load(Relaxed);
        json!({
            "kind": self.kind,
            "node_id": (node != 0).then(|| NodeId(node).to_string()),
            "addr": self.addr,
            "found": self.found(),
            "spaces": self.spaces.get(),
            "outbound": self.outbound,
            "connected": connected,
            "connected_since_ms": self.connected_ms,
            "rtt_ms": (rtt != 0).then(|| (rtt as f64 / 100.0).round() / 10.0),
            "last_contact_ms": (rx != 0).then_some(rx),
            "changes_sent": self.changes_sent.load(Relaxed),
            "changes_received": self.changes_received.load(Relaxed),
            "duplicates_received": self.duplicates_received.load(Relaxed),
            "events_sent": self.events_sent.load(Relaxed),
            "events_received": self.events_received.load(Relaxed),
            "backlog": self.backlog.load(Relaxed),
        })
    }
}

/// A link that ended, remembered for the status page.
struct Gone {
    stats: Arc<LinkStats>,
    at_ms: u64,
}

/// Ended links remembered (the newest per peer).
const GONE: usize = 32;

/// The registry of live links. Entries are removed by their guard's drop.
#[derive(Default)]
pub struct Links {
    live: Mutex<BTreeMap<u64, Arc<LinkStats>>>,
    next: AtomicU64,
    gone: Mutex<std::collections::VecDeque<Gone>>,
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
        let node = self.stats.node.load(Relaxed);
        if let Ok(mut g) = self.links.gone.lock() {
            // One entry per peer (by node id once known, else by address).
            g.retain(|x| {
                let n = x.stats.node.load(Relaxed);
                !(x.stats.kind == self.stats.kind
                    && if node != 0 {
                        n == node
                    } else {
                        x.stats.addr == self.stats.addr
                    })
            });
            if g.len() >= GONE {
                g.pop_front();
            }
            g.push_back(Gone {
                stats: self.stats.clone(),
                at_ms: crate::engine::now_ms(),
            });
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
            rtt_us: AtomicU64::new(0),
            last_rx_ms: AtomicU64::new(now_ms),
            found: std::sync::OnceLock::new(),
            spaces: std::sync::OnceLock::new(),
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

    /// The live links.
    pub fn status(&self) -> Value {
        Value::Array(self.snapshot().iter().map(|s| s.json(true)).collect())
    }

    /// Links that ended and have not come back (newest last), with
    /// `disconnected_ms`: the status page lists them as disconnected.
    pub fn gone_status(&self) -> Value {
        let live = self.snapshot();
        let back = |g: &Gone| {
            let n = g.stats.node.load(Relaxed);
            live.iter().any(|l| {
                l.kind == g.stats.kind
                    && if n != 0 {
                        l.node.load(Relaxed) == n
                    } else {
                        l.addr == g.stats.addr
                    }
            })
        };
        let gone = match self.gone.lock() {
            Ok(g) => g
                .iter()
                .filter(|g| !back(g))
                .map(|g| {
                    let mut v = g.stats.json(false);
                    v["disconnected_ms"] = json!(g.at_ms);
                    v
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        Value::Array(gone)
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
