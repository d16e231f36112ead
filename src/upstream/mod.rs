//! Store-and-forward to an upstream hub (DESIGN.md section 6): the edge
//! dials `[upstream] url` over WebSocket (`ws://` or `wss://`) and runs the
//! replication protocol of `replicate` with the hub, one frame per binary
//! message. The hub is another outpost serving `GET /ws/replicate`
//! (`hub`).
//!
//! The queue is the log itself: everything past the durable cursor
//! `upstream` waits, survives restarts, and is bounded only by disk (the
//! cursor is pinned, so retention never trims what the hub has not
//! acknowledged; `storage.min_free_mb` refuses new writes before the disk
//! fills). Where a session starts comes from the version vectors in the
//! hellos, so a change is never lost and never applied twice, however often
//! the link flaps.
//!
//! - `hub`: the `/ws/replicate` endpoint;
//! - this file: the edge's dial loop (backoff 1 s→30 s jittered, forever;
//!   `wake` for an immediate round), status and metrics.

pub mod hub;

use crate::config::UpstreamSettings;
use crate::engine::{now_ms, Engine, PAGE_BYTES};
use crate::replicate::backoff::{jitter_seed, Backoff};
use crate::replicate::dial::dial;
use crate::replicate::{session, ws};
use crate::replicate::{LinkStats, Links, SessionError, SessionOpts};
use crate::store::Cap;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// The durable cursor (and retention pin) of the upstream.
pub const CURSOR: &str = "upstream";
/// The link kind in status and metrics.
pub const KIND: &str = "upstream";
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream TLS: {0}")]
    Tls(String),
}

/// The edge's link to its hub.
pub struct Upstream {
    settings: UpstreamSettings,
    engine: Arc<Engine>,
    links: Arc<Links>,
    tls: Option<tokio_rustls::TlsConnector>,
    wake: Notify,
    /// The current session's link, while one is up.
    live: Mutex<Option<Arc<LinkStats>>>,
    connected: AtomicBool,
    /// When anything was last heard from the hub (ms since the epoch; 0 never).
    contact: Arc<AtomicU64>,
    /// Position reached by the last session (the durable cursor may lag
    /// behind it by up to a second).
    reached: AtomicU64,
    hub_node: AtomicU64,
    last_error: Mutex<Option<String>>,
    sessions: AtomicU64,
    failures: AtomicU64,
}

impl Upstream {
    pub fn new(
        settings: UpstreamSettings,
        engine: Arc<Engine>,
        links: Arc<Links>,
    ) -> Result<Arc<Upstream>, UpstreamError> {
        let tls = if settings.tls {
            Some(
                crate::net::client::connector(settings.ca.as_deref())
                    .map_err(|e| UpstreamError::Tls(e.to_string()))?,
            )
        } else {
            None
        };
        let reached = engine.cursor(CURSOR).unwrap_or(0);
        Ok(Arc::new(Upstream {
            settings,
            engine,
            links,
            tls,
            wake: Notify::new(),
            live: Mutex::new(None),
            connected: AtomicBool::new(false),
            contact: Arc::new(AtomicU64::new(0)),
            reached: AtomicU64::new(reached),
            hub_node: AtomicU64::new(0),
            last_error: Mutex::new(None),
            sessions: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }))
    }

    /// The dial loop: dial and keep a session up until shutdown (the
    /// session says goodbye). The app runs it as one of its tasks.
    pub fn run(
        self: &Arc<Self>,
        shutdown: watch::Receiver<bool>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.clone().dial_loop(shutdown)
    }

    /// An immediate round: if the relay is waiting to redial, dial now. (A
    /// live session already forwards every commit as it happens.)
    pub fn wake(&self) {
        self.wake.notify_waiters();
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Relaxed)
    }

    async fn dial_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        loop {
            if *shutdown.borrow() {
                return;
            }
            // Register for a wake before dialling, so a request made while
            // the dial fails is not lost.
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let (established, result) = self.dial_once(&shutdown).await;
            self.connected.store(false, Relaxed);
            match result {
                Ok(reason) => {
                    tracing::info!(url = %self.settings.url, %reason, "upstream session ended");
                    self.set_error(None);
                }
                Err(e) => {
                    self.failures.fetch_add(1, Relaxed);
                    tracing::warn!(url = %self.settings.url, error = %e, "upstream link down");
                    self.set_error(Some(e));
                }
            }
            if *shutdown.borrow() {
                return;
            }
            // A session that came up and then lost its link: the hub was
            // there a moment ago (a restart, a blip), so retry soon. Refusals
            // and unreachable hubs back off.
            if established {
                backoff.reset();
            }
            let wait = backoff.next(jitter_seed());
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = &mut woken => tracing::info!("upstream round requested"),
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    fn set_error(&self, e: Option<String>) {
        if let Ok(mut l) = self.last_error.lock() {
            *l = e;
        }
    }

    /// One connection: (whether a session was established, how it ended).
    async fn dial_once(&self, shutdown: &watch::Receiver<bool>) -> (bool, Result<String, String>) {
        let socket = match dial(&self.settings, self.tls.as_ref()).await {
            Ok(s) => s,
            Err(e) => return (false, Err(e)),
        };
        let s = &self.settings;
        self.contact.store(now_ms(), Relaxed);
        let (tx, rx, writer) = ws::split(socket, Some(self.contact.clone()), shutdown.clone());
        // The writer runs next to the session, in this task.
        let run = async {
            let (mut tx, mut rx) = (tx, rx);
            let guard = self.links.open(KIND, s.url.clone(), true, now_ms());
            let _ = guard.stats.found.set("config");
            let greeting = match session::hello(&self.engine, &mut rx, &mut tx).await {
                Ok(g) => g,
                Err(e) => return (false, Err(e.to_string())),
            };
            let hub = greeting.peer;
            self.hub_node.store(hub.0, Relaxed);
            self.sessions.fetch_add(1, Relaxed);
            self.connected.store(true, Relaxed);
            self.set_error(None);
            tracing::info!(url = %s.url, %hub, "upstream session up");
            let stats = guard.stats.clone();
            if let Ok(mut l) = self.live.lock() {
                *l = Some(stats.clone());
            }
            let opts = SessionOpts {
                cursor: CURSOR.to_string(),
                spaces: s.spaces.clone(),
                batch_bytes: crate::replicate::frame::MAX_FRAME_BYTES,
            };
            let result = session::run(
                self.engine.clone(),
                greeting,
                rx,
                tx,
                opts,
                stats.clone(),
                shutdown.clone(),
            )
            .await;
            if let Ok(mut l) = self.live.lock() {
                *l = None;
            }
            self.connected.store(false, Relaxed);
            self.save_position(stats.acked.load(Relaxed)).await;
            (true, result.map_err(|e: SessionError| e.to_string()))
        };
        tokio::join!(run, writer).0
    }

    /// Keep what the session reached: the session saves the cursor at most
    /// once a second, so its last acks are saved here.
    async fn save_position(&self, acked: u64) {
        self.reached.fetch_max(acked, Relaxed);
        let e = self.engine.clone();
        let saved = crate::engine::off_worker(move || e.cursor(CURSOR)).await;
        if saved.is_ok_and(|c| c < acked) {
            if let Err(e) = self.engine.set_cursor(CURSOR, acked).await {
                tracing::warn!(error = %e, "cannot save the upstream cursor");
            }
        }
    }

    /// (changes waiting, commit time of the oldest one). Waiting is the log
    /// past what the hub holds: the live session's position, else the
    /// cursor.
    fn backlog(&self) -> (u64, Option<u64>) {
        let last = self.engine.last_seq();
        let live = self.live.lock().ok().and_then(|l| l.clone());
        let pos = match live {
            Some(stats) => stats.acked.load(Relaxed),
            None => self
                .reached
                .load(Relaxed)
                .max(self.engine.cursor(CURSOR).unwrap_or(0)),
        };
        let waiting = last.saturating_sub(pos);
        if waiting == 0 {
            return (0, None);
        }
        let hub = self.hub_node.load(Relaxed);
        let spaces = self.settings.spaces.as_ref();
        let page = self
            .engine
            .log_after_page(pos, Cap::new(256, PAGE_BYTES))
            .map(|p| p.items)
            .unwrap_or_default();
        let oldest = page
            .iter()
            .find(|(_, e)| {
                e.change.origin.0 != hub && spaces.is_none_or(|s| s.contains(&e.change.space))
            })
            .or(page.first())
            .map(|(_, e)| e.at_ms);
        (waiting, oldest)
    }

    /// The `upstream` object of `/v1/status`.
    pub fn status(&self) -> Value {
        let (waiting, oldest) = self.backlog();
        let contact = self.contact.load(Relaxed);
        let hub = self.hub_node.load(Relaxed);
        let mut spaces: Option<Vec<&String>> =
            self.settings.spaces.as_ref().map(|s| s.iter().collect());
        if let Some(s) = spaces.as_mut() {
            s.sort();
        }
        json!({
            "url": self.settings.url,
            "connected": self.is_connected(),
            "hub_node_id": (hub != 0).then(|| crate::model::NodeId(hub).to_string()),
            "last_contact_ms": (contact != 0).then_some(contact),
            "last_error": self.last_error.lock().ok().and_then(|e| e.clone()),
            "spaces": spaces,
            "changes_waiting": waiting,
            "oldest_waiting_age_s": oldest.map(|at| now_ms().saturating_sub(at) / 1000),
            "sessions": self.sessions.load(Relaxed),
        })
    }

    /// Prometheus lines for the upstream.
    pub fn render_metrics(&self) -> String {
        let (waiting, oldest) = self.backlog();
        let age = oldest.map_or(0.0, |at| now_ms().saturating_sub(at) as f64 / 1000.0);
        let series: [(&str, &str, &str, f64); 6] = [
            (
                "outpost_upstream_connected",
                "gauge",
                "1 while a session with the upstream hub is up",
                u8::from(self.is_connected()) as f64,
            ),
            (
                "outpost_upstream_backlog",
                "gauge",
                "local log entries the upstream hub has not acknowledged",
                waiting as f64,
            ),
            (
                "outpost_upstream_oldest_waiting_seconds",
                "gauge",
                "age of the oldest change waiting for the upstream (0 when none)",
                age,
            ),
            (
                "outpost_upstream_last_contact_seconds",
                "gauge",
                "when the hub was last heard from (unix time; 0 never)",
                (self.contact.load(Relaxed) / 1000) as f64,
            ),
            (
                "outpost_upstream_sessions_total",
                "counter",
                "sessions established with the upstream hub",
                self.sessions.load(Relaxed) as f64,
            ),
            (
                "outpost_upstream_failures_total",
                "counter",
                "upstream dials or sessions that failed",
                self.failures.load(Relaxed) as f64,
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, v) in series {
            crate::metrics::series(&mut out, name, kind, help, v);
        }
        out
    }
}
