//! The relay: it starts every part (store and engine, mesh, upstream,
//! cluster link, listener), owns their tasks, serves the routes
//! ([`routes`]) and the status page ([`console`]), and shuts down
//! gracefully. Handlers get narrow contexts (`dialect::Ctx`,
//! `upstream::hub::HubCtx`), never [`AppState`]; only the app's own
//! routes and the console see the whole relay.
//!
//! Every task of the relay runs in one [`Tasks`] set under its one stop
//! signal: the accept loop (whose `JoinSet` holds each connection, TLS
//! handshake and upgraded WebSocket), the webhook sender, retention, the
//! status sampler, mesh, upstream and cluster link tasks, the watchdog.
//!
//! Shutdown (SIGTERM/SIGINT), one order, bounded in total: flip the signal
//! (the accept loop stops accepting; every connection finishes its
//! in-flight commits and closes with 1001; sessions say goodbye; loops with
//! nothing to finish are dropped); wait for every task up to
//! `server.shutdown_grace`, then abort what is left; close the mesh's QUIC
//! endpoint (at most 1 s more); then the engine drains and flushes the
//! writer.

pub mod console;
pub mod routes;

use crate::auth::Auth;
use crate::config::Settings;
use crate::engine::{Engine, EngineError, EngineSettings, Limits};
use crate::mesh::Mesh;
use crate::metrics::Metrics;
use crate::replicate::Links;
use crate::tasks::Tasks;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Mesh(#[from] crate::mesh::MeshError),
    #[error(transparent)]
    Upstream(#[from] crate::upstream::UpstreamError),
    #[cfg(feature = "jetstream")]
    #[error(transparent)]
    Cluster(#[from] crate::cluster::link::LinkError),
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "the file descriptor limit ({nofile}) leaves room for fewer than {} connections; \
         raise it (ulimit -n, LimitNOFILE=)",
        crate::net::nofile::MIN_CONNECTIONS
    )]
    Descriptors { nofile: u64 },
}

/// Everything a handler needs, shared by all connections.
pub struct AppState {
    pub engine: Arc<Engine>,
    pub auth: Auth,
    pub settings: Settings,
    /// Flips to true when shutdown starts.
    pub shutdown: watch::Receiver<bool>,
    /// Live replication links (mesh peers, upstream).
    pub links: Arc<Links>,
    /// The mesh's bound UDP address, when the mesh is on.
    pub mesh_addr: Option<SocketAddr>,
    /// The link to the upstream hub, when `[upstream]` is configured.
    pub upstream: Option<Arc<crate::upstream::Upstream>>,
    /// Counters of the connection layer (admission, timeouts).
    pub net: Arc<crate::net::stats::NetStats>,
    /// The JetStream link (`[cluster] nats` or `[upstream] nats`), if any.
    pub nats: Option<Arc<dyn crate::cluster::Report>>,
    /// The status page's rate samples and caches.
    pub console: Arc<crate::app::console::Console>,
    /// What the hub's replication endpoint gets (`/ws/replicate`).
    pub hub: crate::upstream::hub::HubCtx,
    /// What the dialects get.
    pub ctx: crate::dialect::Ctx,
}

impl axum::extract::FromRef<Arc<AppState>> for crate::dialect::Ctx {
    fn from_ref(state: &Arc<AppState>) -> Self {
        state.ctx.clone()
    }
}

impl axum::extract::FromRef<Arc<AppState>> for crate::upstream::hub::HubCtx {
    fn from_ref(state: &Arc<AppState>) -> Self {
        state.hub.clone()
    }
}

/// A running relay.
pub struct Relay {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    /// Every task of the relay, and the stop signal.
    tasks: Tasks,
    mesh: Option<Mesh>,
}

impl Relay {
    /// Open the store and bind the listener (port 0 picks a free port).
    pub async fn start(mut settings: Settings) -> Result<Relay, ServerError> {
        let metrics = Arc::new(Metrics::default());
        let engine = Engine::open(
            EngineSettings {
                dir: settings.dir.clone(),
                durability: settings.durability,
                retention: settings.retention,
                limits: Limits::default(),
                max_skew_ms: settings.max_skew.as_millis() as u64,
                min_free_bytes: settings.min_free_bytes,
                cache_bytes: settings.cache_bytes,
                schemas: settings.schemas.clone(),
                max_queued_bytes: settings.max_queued_bytes,
                clock: crate::engine::Clock::system(),
            },
            metrics,
        )?;
        let tasks = Tasks::new();
        let shutdown = tasks.signal();
        // Before maintenance: the webhook pins its log cursor against retention.
        if let Some(w) = &settings.webhook {
            let webhook = crate::dialect::kv::webhook::start(&engine, w.clone(), shutdown.clone());
            tasks.spawn("webhook", webhook);
        }
        // Likewise the upstream: the log past its cursor is its queue.
        if settings.upstream.is_some() {
            engine.pin_cursor(crate::upstream::CURSOR);
        }
        // And a JetStream link: the log past its publish cursor.
        let nats_settings = settings.cluster.clone().or(settings.upstream_nats.clone());
        if let Some(n) = &nats_settings {
            engine.pin_cursor(n.publish_cursor());
        }
        if let Some(retention) = engine.maintenance() {
            tasks.spawn_until_stop("retention", retention);
        }
        // Every connection is a descriptor: fit the connection limit under
        // RLIMIT_NOFILE (raised to its hard limit first).
        let nofile = crate::net::nofile::raise();
        match crate::net::nofile::fit(settings.max_connections, nofile) {
            Ok(n) if n < settings.max_connections => {
                tracing::warn!(
                    configured = settings.max_connections,
                    using = n,
                    nofile,
                    reserve = crate::net::nofile::RESERVE,
                    "server.max_connections does not fit the file descriptor limit; \
                     clamped (raise LimitNOFILE= or the hard limit to serve more)"
                );
                settings.max_connections = n;
            }
            Ok(_) => {}
            Err(nofile) => return Err(ServerError::Descriptors { nofile }),
        }
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .map_err(|source| ServerError::Bind {
                addr: settings.listen,
                source,
            })?;
        let addr = listener.local_addr()?;
        // Report the bound address (port 0 picks one) wherever it is shown.
        settings.listen = addr;
        let links = Arc::new(Links::default());
        let mesh = match &settings.mesh {
            Some(m) => Some(Mesh::start(
                m,
                &settings.dir,
                engine.clone(),
                links.clone(),
                &tasks,
            )?),
            None => None,
        };
        let upstream = match &settings.upstream {
            Some(u) => Some(crate::upstream::Upstream::new(
                u.clone(),
                engine.clone(),
                links.clone(),
            )?),
            None => None,
        };
        if let Some(u) = &upstream {
            tasks.spawn("upstream", u.run(shutdown.clone()));
        }
        let nats = start_nats(nats_settings, &engine, &links, &tasks).await?;
        let console = Arc::new(crate::app::console::Console::default());
        tasks.spawn_until_stop("status sampler", console.sampler(&engine));
        let auth = Auth::new(settings.jwt_secret.as_deref(), settings.anonymous);
        let hub = crate::upstream::hub::HubCtx {
            engine: engine.clone(),
            auth: auth.clone(),
            links: links.clone(),
            shutdown: shutdown.clone(),
        };
        let net = Arc::new(crate::net::stats::NetStats::default());
        let ctx = crate::dialect::Ctx::new(crate::dialect::Shared {
            engine: engine.clone(),
            auth: auth.clone(),
            settings: crate::dialect::ConnSettings::of(&settings),
            shutdown: shutdown.clone(),
            net: net.clone(),
            upstream: upstream.clone().map(|u| {
                let wake: crate::dialect::Wake = Arc::new(move || u.wake());
                wake
            }),
        });
        let state = Arc::new(AppState {
            ctx,
            engine,
            auth,
            settings,
            shutdown,
            hub,
            links,
            mesh_addr: mesh.as_ref().map(|m| m.local_addr),
            upstream,
            net,
            nats,
            console,
        });
        let app = routes::router(state.clone());
        let st = &state.settings;
        let serve = crate::net::serve(
            listener,
            app,
            crate::net::ListenerConfig {
                limits: crate::net::admission::Limits {
                    connections: st.max_connections,
                    handshakes: st.max_handshakes.min(st.max_connections),
                    connections_per_ip: st.max_connections_per_ip,
                    handshakes_per_ip: st.max_handshakes_per_ip,
                },
                header_timeout: st.header_timeout,
                request_timeout: st.request_timeout,
                write_timeout: st.write_timeout,
                tls: st.tls.clone(),
            },
            state.net.clone(),
            state.shutdown.clone(),
        );
        tasks.spawn("accept loop", async move {
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "the accept loop failed");
            }
        });
        Ok(Relay {
            addr,
            state,
            tasks,
            mesh,
        })
    }

    /// The relay's task set: what else runs as part of the relay (the
    /// systemd watchdog) is spawned here, under the same stop signal.
    pub fn tasks(&self) -> &Tasks {
        &self.tasks
    }

    /// Graceful stop: see the module doc for the order. Returns once every
    /// task of the relay has ended and the writer has flushed.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        // One grace period in all, not one per step.
        let grace = self.state.settings.shutdown_grace;
        let deadline = tokio::time::Instant::now() + grace;
        let aborted = self.tasks.join(deadline).await;
        if !aborted.is_empty() {
            tracing::warn!(
                ?aborted,
                // Counted where connections are admitted (`net::admission`).
                connections = self
                    .state
                    .net
                    .open
                    .load(std::sync::atomic::Ordering::Relaxed),
                "shutdown grace period over: the tasks left were aborted"
            );
        }
        if let Some(mesh) = self.mesh {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            mesh.close(left.max(Duration::from_secs(1))).await;
        }
        let engine = self.state.engine.clone();
        tokio::task::spawn_blocking(move || engine.shutdown())
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(())
    }
}

type NatsLink = Option<Arc<dyn crate::cluster::Report>>;

/// Start the JetStream link, if configured (config validation refuses the
/// keys in a build without the `jetstream` feature).
#[cfg(feature = "jetstream")]
async fn start_nats(
    s: Option<crate::cluster::settings::NatsSettings>,
    engine: &Arc<Engine>,
    links: &Arc<Links>,
    tasks: &Tasks,
) -> Result<NatsLink, ServerError> {
    let Some(s) = s else {
        return Ok(None);
    };
    let link = crate::cluster::link::Link::start(s, engine.clone(), links.clone(), tasks).await?;
    Ok(Some(link))
}

#[cfg(not(feature = "jetstream"))]
async fn start_nats(
    _: Option<crate::cluster::settings::NatsSettings>,
    _: &Arc<Engine>,
    _: &Arc<Links>,
    _: &Tasks,
) -> Result<NatsLink, ServerError> {
    Ok(None)
}

/// Resolves on SIGTERM or SIGINT.
pub async fn terminate_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
