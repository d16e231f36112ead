//! The operator console: the live status page (`/ui`, with `/` redirecting
//! to it), its feed (`/v1/status/stream`), and the admin API behind
//! `outpost status`, `export`, `import` and `backup`.
//!
//! Access (`access.rs`): a token with the admin scope, or none where
//! anonymous clients may already do as much (read for status and export,
//! write for import and backup).

pub mod access;
pub mod assets;
mod dump;
pub mod logring;
pub mod rates;
mod status;

use crate::app::AppState;
use axum::routing::{get, post};
use axum::Router;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use access::require_admin;
pub use status::{status, status_json};

/// The console's own state: the rate samples and a cache of the per-space
/// figures that cost a scan.
#[derive(Default)]
pub struct Console {
    rates: Mutex<rates::Rates>,
    spaces: Mutex<Option<(Instant, HashMap<String, crate::engine::SpaceFigures>)>>,
}

/// How long the per-space entity counts (a key scan) are reused.
const SPACE_SCAN_EVERY: Duration = Duration::from_secs(5);

impl Console {
    /// Sample the counters for the rate chart, every `rates::INTERVAL`,
    /// until the engine is gone: a loop for the app's tasks (dropped at
    /// shutdown).
    pub fn sampler(
        self: &Arc<Self>,
        engine: &Arc<crate::engine::Engine>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let weak = Arc::downgrade(engine);
        let me = self.clone();
        async move {
            let mut tick = tokio::time::interval(rates::INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(engine) = weak.upgrade() else { return };
                me.sample(&engine);
            }
        }
    }

    fn sample(&self, engine: &crate::engine::Engine) {
        use std::sync::atomic::Ordering::Relaxed;
        let s = rates::Sample {
            at_ms: crate::engine::now_ms(),
            written: engine.metrics.commit_changes.load(Relaxed),
            delivered: engine.metrics.deliveries.load(Relaxed),
        };
        if let Ok(mut r) = self.rates.lock() {
            r.push(s);
        }
    }

    pub fn rate_series(&self) -> rates::RateSeries {
        self.rates.lock().map(|r| r.series()).unwrap_or_default()
    }

    /// Per-space figures, rescanned at most every `SPACE_SCAN_EVERY`.
    fn space_figures(
        &self,
        engine: &crate::engine::Engine,
        names: &[String],
    ) -> HashMap<String, crate::engine::SpaceFigures> {
        let Ok(mut cache) = self.spaces.lock() else {
            return HashMap::new();
        };
        let fresh = cache.as_ref().is_some_and(|(at, m)| {
            at.elapsed() < SPACE_SCAN_EVERY && names.iter().all(|n| m.contains_key(n))
        });
        if !fresh {
            let m = names
                .iter()
                .filter_map(|n| Some((n.clone(), engine.space_figures(n).ok()?)))
                .collect();
            *cache = Some((Instant::now(), m));
        }
        let mut out = cache.as_ref().map(|(_, m)| m.clone()).unwrap_or_default();
        // The last write is a point lookup: always fresh.
        for (name, f) in out.iter_mut() {
            if let Ok(t) = engine.last_write_ms(name) {
                f.last_write_ms = t;
            }
        }
        out
    }
}

/// The console's routes (merged into the main router).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(assets::root))
        .route("/ui", get(assets::index))
        .route("/ui/", get(assets::index))
        .route("/ui/app.js", get(assets::script))
        .route("/ui/app.css", get(assets::style))
        .route("/ui/icon.svg", get(assets::icon))
        .route("/v1/status/stream", get(status::stream))
        .route("/v1/export", get(dump::export))
        .route("/v1/import", post(dump::import))
        .route("/v1/backup", get(dump::backup))
}
