//! Counters of the connection layer (admission, timeouts, descriptors),
//! rendered into `/metrics` next to the engine's.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Why a new connection was refused before any request was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `server.max_connections` open connections.
    MaxConnections,
    /// `server.max_handshakes` connections still in their handshake.
    MaxHandshakes,
    /// `server.max_connections_per_ip` from this address.
    PerIpConnections,
    /// `server.max_handshakes_per_ip` from this address.
    PerIpHandshakes,
    /// `accept` failed for want of file descriptors (EMFILE/ENFILE).
    NoDescriptors,
}

impl Refusal {
    pub const ALL: [Refusal; 5] = [
        Refusal::MaxConnections,
        Refusal::MaxHandshakes,
        Refusal::PerIpConnections,
        Refusal::PerIpHandshakes,
        Refusal::NoDescriptors,
    ];

    /// The `reason` label in `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::MaxHandshakes => "max_handshakes",
            Refusal::PerIpConnections => "max_connections_per_ip",
            Refusal::PerIpHandshakes => "max_handshakes_per_ip",
            Refusal::NoDescriptors => "no_descriptors",
        }
    }

    /// The body of the 503 answer.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "connection limit reached",
            Refusal::MaxHandshakes => "too many connections in their handshake",
            Refusal::PerIpConnections => "too many connections from this address",
            Refusal::PerIpHandshakes => "too many handshakes from this address",
            Refusal::NoDescriptors => "the relay is out of file descriptors",
        }
    }
}

#[derive(Default)]
pub struct NetStats {
    /// Open TCP connections (every stage, upgraded WebSockets included).
    pub open: AtomicU64,
    /// Connections not yet past their first request.
    pub handshaking: AtomicU64,
    refused: [AtomicU64; 5],
    /// TLS handshakes or request headers not finished in `header_timeout`.
    pub header_timeouts: AtomicU64,
    /// HTTP requests not finished in `request_timeout` (answered 408).
    pub request_timeouts: AtomicU64,
    /// Connections dropped after `write_timeout` without write progress.
    pub write_timeouts: AtomicU64,
    /// WebSockets closed after `idle_timeout` without a frame or pong.
    pub idle_timeouts: AtomicU64,
    /// `accept` errors of every kind (EMFILE included).
    pub accept_errors: AtomicU64,
    /// The connection limit in force (after fitting the descriptor limit).
    pub max_connections: AtomicU64,
}

impl NetStats {
    pub fn refused(&self, why: Refusal) {
        self.refused[why as usize].fetch_add(1, Relaxed);
    }

    pub fn refused_count(&self, why: Refusal) -> u64 {
        self.refused[why as usize].load(Relaxed)
    }

    pub fn render(&self) -> String {
        let mut s = String::with_capacity(2048);
        let name = "outpost_connections_refused_total";
        let _ = writeln!(
            s,
            "# HELP {name} new connections refused before a request was read, by reason\n# TYPE {name} counter"
        );
        for why in Refusal::ALL {
            let _ = writeln!(
                s,
                "{name}{{reason=\"{}\"}} {}",
                why.label(),
                self.refused_count(why)
            );
        }
        let series: [(&str, &str, &str, &AtomicU64); 8] = [
            ("outpost_tcp_connections", "gauge", "open TCP connections, every stage", &self.open),
            ("outpost_handshakes", "gauge", "connections not yet past their first request", &self.handshaking),
            ("outpost_max_connections", "gauge", "the connection limit in force", &self.max_connections),
            ("outpost_header_timeouts_total", "counter", "connections closed for a TLS handshake or request headers not finished in server.header_timeout", &self.header_timeouts),
            ("outpost_request_timeouts_total", "counter", "HTTP requests answered 408 after server.request_timeout", &self.request_timeouts),
            ("outpost_write_timeouts_total", "counter", "connections dropped after server.write_timeout without write progress", &self.write_timeouts),
            ("outpost_idle_timeouts_total", "counter", "WebSockets closed after server.idle_timeout with nothing heard", &self.idle_timeouts),
            ("outpost_accept_errors_total", "counter", "failed accept calls (out of descriptors and others)", &self.accept_errors),
        ];
        for (name, kind, help, v) in series {
            crate::metrics::series(&mut s, name, kind, help, v.load(Relaxed));
        }
        s
    }
}

/// At most one line per `every` for a noisy event; the lines in between are
/// counted and reported with the next one. A flood of refusals must not
/// become a flood of log lines.
pub struct LogLimiter {
    every: Duration,
    state: std::sync::Mutex<(Option<Instant>, u64)>,
}

impl LogLimiter {
    pub fn new(every: Duration) -> LogLimiter {
        LogLimiter {
            every,
            state: std::sync::Mutex::new((None, 0)),
        }
    }

    /// Some(n) when a line may be written now: n events were suppressed
    /// since the last one.
    pub fn allow(&self, now: Instant) -> Option<u64> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match st.0 {
            Some(last) if now.duration_since(last) < self.every => {
                st.1 += 1;
                None
            }
            _ => {
                let skipped = st.1;
                *st = (Some(now), 0);
                Some(skipped)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_limiter_lets_one_line_a_period_through_and_counts_the_rest() {
        let l = LogLimiter::new(Duration::from_secs(1));
        let t = Instant::now();
        assert_eq!(l.allow(t), Some(0));
        assert_eq!(l.allow(t + Duration::from_millis(10)), None);
        assert_eq!(l.allow(t + Duration::from_millis(20)), None);
        assert_eq!(l.allow(t + Duration::from_millis(1100)), Some(2));
    }

    #[test]
    fn refusals_render_with_their_reason() {
        let s = NetStats::default();
        s.refused(Refusal::PerIpHandshakes);
        let text = s.render();
        assert!(
            text.contains("outpost_connections_refused_total{reason=\"max_handshakes_per_ip\"} 1"),
            "{text}"
        );
        assert!(text.contains("outpost_connections_refused_total{reason=\"no_descriptors\"} 0"));
    }
}
