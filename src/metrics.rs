//! Process-wide counters, rendered in the Prometheus text format.
//!
//! Plain atomics: the hot paths (fan-out, commit) only do relaxed adds.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Append one single-valued series in the Prometheus text format: its HELP
/// and TYPE lines, then `name value`. Every `/metrics` section renders its
/// plain counters and gauges through this.
pub fn series(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// Upper bounds (seconds) of the commit latency histogram buckets.
const COMMIT_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

#[derive(Default)]
pub struct Metrics {
    pub connections: AtomicU64,
    pub connections_total: AtomicU64,
    pub pushes: AtomicU64,
    pub changes_written: AtomicU64,
    pub acks: AtomicU64,
    pub deliveries: AtomicU64,
    pub queue_drops: AtomicU64,
    pub resyncs: AtomicU64,
    pub events_published: AtomicU64,
    pub events_dropped: AtomicU64,
    pub errors_sent: AtomicU64,
    pub auth_failures: AtomicU64,
    pub commit_failures: AtomicU64,
    pub commits: AtomicU64,
    commit_buckets: [AtomicU64; COMMIT_BUCKETS.len()],
    commit_sum_us: AtomicU64,
    pub commit_changes: AtomicU64,
    /// Webhook (seed 003): events delivered, failed attempts, events dropped
    /// past `webhook.max_backlog`, and the undelivered backlog (gauge).
    pub webhook_delivered: AtomicU64,
    pub webhook_failures: AtomicU64,
    pub webhook_dropped: AtomicU64,
    pub webhook_backlog: AtomicU64,
    /// Mesh: sessions established, refused peers (bad proof, garbage,
    /// wrong protocol), and mDNS discovery events (peers found or lost).
    pub mesh_sessions: AtomicU64,
    pub mesh_refused: AtomicU64,
    pub mesh_discovered: AtomicU64,
    pub mesh_lost: AtomicU64,
    /// Mesh: incoming connections in their handshake now (gauge), those
    /// closed for `mesh.handshake_timeout`, and those refused at
    /// `mesh.max_handshakes` / `mesh.max_handshakes_per_ip`.
    pub mesh_handshakes: AtomicU64,
    pub mesh_handshake_timeouts: AtomicU64,
    /// Incoming mesh Initials answered with a QUIC Retry (address not yet validated).
    pub mesh_retries: AtomicU64,
    pub mesh_refused_max_handshakes: AtomicU64,
    pub mesh_refused_per_ip: AtomicU64,
    /// Open client connections per endpoint path (the status page).
    endpoints: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

impl Metrics {
    /// A client connection opened (`+1`) or closed (`-1`) on `endpoint`.
    pub fn endpoint_conn(&self, endpoint: &'static str, opened: bool) {
        if let Ok(mut m) = self.endpoints.lock() {
            let n = m.entry(endpoint).or_default();
            *n = if opened { *n + 1 } else { n.saturating_sub(1) };
        }
    }

    /// Open connections per endpoint (endpoints seen since start, 0 kept).
    pub fn endpoint_conns(&self) -> Vec<(&'static str, u64)> {
        self.endpoints
            .lock()
            .map(|m| m.iter().map(|(k, v)| (*k, *v)).collect())
            .unwrap_or_default()
    }

    pub fn observe_commit(&self, took: Duration, changes: usize) {
        let secs = took.as_secs_f64();
        for (i, le) in COMMIT_BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.commit_buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.commits.fetch_add(1, Relaxed);
        self.commit_sum_us
            .fetch_add(took.as_micros() as u64, Relaxed);
        self.commit_changes.fetch_add(changes as u64, Relaxed);
    }

    /// Prometheus text exposition. `extra` holds gauges read at scrape time.
    pub fn render(&self, extra: &[(&str, &str, f64)]) -> String {
        let mut s = String::with_capacity(4096);
        let counters: [(&str, &str, &AtomicU64); 14] = [
            (
                "outpost_connections_total",
                "WebSocket connections accepted",
                &self.connections_total,
            ),
            (
                "outpost_pushes_total",
                "push requests received",
                &self.pushes,
            ),
            (
                "outpost_changes_written_total",
                "changes committed from local clients",
                &self.changes_written,
            ),
            (
                "outpost_acks_total",
                "push acks sent after a durable commit",
                &self.acks,
            ),
            (
                "outpost_deliveries_total",
                "messages queued to subscribers by fan-out",
                &self.deliveries,
            ),
            (
                "outpost_queue_drops_total",
                "subscriptions dropped because their queue was full",
                &self.queue_drops,
            ),
            (
                "outpost_resyncs_total",
                "resync notices sent to lagging subscribers",
                &self.resyncs,
            ),
            (
                "outpost_events_published_total",
                "ephemeral events published",
                &self.events_published,
            ),
            (
                "outpost_events_dropped_total",
                "ephemeral events dropped at a full queue",
                &self.events_dropped,
            ),
            (
                "outpost_errors_sent_total",
                "error messages sent to clients",
                &self.errors_sent,
            ),
            (
                "outpost_auth_failures_total",
                "handshakes refused for a missing or bad token",
                &self.auth_failures,
            ),
            (
                "outpost_commit_failures_total",
                "group commits that failed",
                &self.commit_failures,
            ),
            (
                "outpost_store_commits_total",
                "group commits made",
                &self.commits,
            ),
            (
                "outpost_store_committed_changes_total",
                "changes committed (all sources)",
                &self.commit_changes,
            ),
        ];
        for (name, help, v) in counters {
            series(&mut s, name, "counter", help, v.load(Relaxed));
        }
        let _ = writeln!(
            s,
            "# HELP outpost_connections open WebSocket connections\n# TYPE outpost_connections gauge\noutpost_connections {}",
            self.connections.load(Relaxed)
        );
        let name = "outpost_store_commit_seconds";
        let _ = writeln!(
            s,
            "# HELP {name} group commit latency (transaction + fsync)\n# TYPE {name} histogram"
        );
        for (i, le) in COMMIT_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                s,
                "{name}_bucket{{le=\"{le}\"}} {}",
                self.commit_buckets[i].load(Relaxed)
            );
        }
        let count = self.commits.load(Relaxed);
        let _ = writeln!(s, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            s,
            "{name}_sum {}",
            self.commit_sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(s, "{name}_count {count}");
        let webhook: [(&str, &str, &str, &AtomicU64); 11] = [
            (
                "outpost_mesh_sessions_total",
                "counter",
                "mesh sessions established",
                &self.mesh_sessions,
            ),
            (
                "outpost_mesh_refused_total",
                "counter",
                "mesh connections refused (membership proof, protocol)",
                &self.mesh_refused,
            ),
            (
                "outpost_mesh_discovered_total",
                "counter",
                "relays of this mesh found by mDNS",
                &self.mesh_discovered,
            ),
            (
                "outpost_mesh_lost_total",
                "counter",
                "relays of this mesh whose mDNS advert went away",
                &self.mesh_lost,
            ),
            (
                "outpost_mesh_handshakes",
                "gauge",
                "incoming mesh connections in their handshake (QUIC, proof, hello)",
                &self.mesh_handshakes,
            ),
            (
                "outpost_mesh_handshake_timeouts_total",
                "counter",
                "incoming mesh connections closed for mesh.handshake_timeout",
                &self.mesh_handshake_timeouts,
            ),
            (
                "outpost_mesh_retries_total",
                "counter",
                "incoming mesh connection attempts answered with a QUIC Retry (source address not yet validated)",
                &self.mesh_retries,
            ),
            (
                "outpost_webhook_delivered_total",
                "counter",
                "webhook events delivered (2xx)",
                &self.webhook_delivered,
            ),
            (
                "outpost_webhook_failures_total",
                "counter",
                "webhook delivery attempts that failed (retried)",
                &self.webhook_failures,
            ),
            (
                "outpost_webhook_dropped_total",
                "counter",
                "webhook events dropped past webhook.max_backlog",
                &self.webhook_dropped,
            ),
            (
                "outpost_webhook_backlog",
                "gauge",
                "log entries not yet passed by the webhook cursor",
                &self.webhook_backlog,
            ),
        ];
        for (name, kind, help, v) in webhook {
            series(&mut s, name, kind, help, v.load(Relaxed));
        }
        let name = "outpost_mesh_handshakes_refused_total";
        let _ = writeln!(
            s,
            "# HELP {name} incoming mesh connections refused at a handshake bound, by reason\n# TYPE {name} counter\n\
             {name}{{reason=\"max_handshakes\"}} {}\n{name}{{reason=\"max_handshakes_per_ip\"}} {}",
            self.mesh_refused_max_handshakes.load(Relaxed),
            self.mesh_refused_per_ip.load(Relaxed),
        );
        for (name, help, v) in extra {
            series(&mut s, name, "gauge", help, v);
        }
        s
    }
}
