//! The configuration: one TOML file, every key optional with a documented
//! default (see `config/outpost.toml`), CLI flags on top, validated once at
//! startup into errors that name the key.

use crate::cluster::settings::NatsSettings;
use crate::schema::{SchemaError, SchemaSet};
use crate::store::Durability;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config key `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("config key `{key}`: {source}")]
    Schema { key: String, source: SchemaError },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// The whole file. Unknown keys are an error (a typo must not be ignored).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: Server,
    pub storage: Storage,
    pub auth: AuthConfig,
    pub log: Log,
    pub webhook: WebhookConfig,
    pub mesh: MeshConfig,
    pub upstream: UpstreamConfig,
    /// `[cluster]`: a hub tier on a NATS JetStream stream.
    pub cluster: crate::cluster::settings::ClusterConfig,
    /// Seed 004 forms: name -> JSON Schema file (relative to the config file).
    pub forms: BTreeMap<String, PathBuf>,
    /// Collection schemas enforced on every local push: collection -> file.
    pub schemas: BTreeMap<String, PathBuf>,
    /// The config file's directory, against which schema paths resolve.
    #[serde(skip)]
    pub base_dir: Option<PathBuf>,
    /// The file as parsed, to tell keys that were written from defaults
    /// (see `warnings`).
    #[serde(skip)]
    pub raw: Option<toml::Table>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// HTTP + WebSocket listen address.
    pub listen: String,
    /// Open TCP connections (any stage) beyond this are refused with HTTP 503.
    pub max_connections: usize,
    /// Connections not yet past their first HTTP request (TLS handshake,
    /// headers); beyond this new ones are refused with 503.
    pub max_handshakes: usize,
    /// Open connections from one IP address (IPv6: one /64).
    pub max_connections_per_ip: usize,
    /// Handshakes in flight from one IP address (IPv6: one /64).
    pub max_handshakes_per_ip: usize,
    /// TLS handshake, and each request's headers, must arrive within this.
    pub header_timeout: String,
    /// A whole HTTP request (body and handler; not a WebSocket after its
    /// upgrade) must finish within this.
    pub request_timeout: String,
    /// A client that accepts no bytes for this long is disconnected.
    pub write_timeout: String,
    /// WebSocket: nothing heard (no message, no pong) for this long closes
    /// the connection; a ping goes out after half of it in silence.
    pub idle_timeout: String,
    /// Largest accepted WebSocket message; larger ones get error 413.
    pub max_frame_bytes: usize,
    /// Per-connection outbound queue (messages). A subscriber that falls
    /// this far behind is told to resync.
    pub queue_depth: usize,
    /// Per-connection outbound queue (MiB of queued frames); past it, as
    /// past `queue_depth`, the subscriber is told to resync.
    pub queue_mb: u64,
    /// Relay-wide bound on queued outbound frames (MiB), all connections
    /// together: past it, subscribers that are behind are told to resync.
    pub max_queued_mb: u64,
    /// Most unacknowledged pushes one connection may have in flight before
    /// the relay stops reading from it (backpressure).
    pub max_inflight: usize,
    /// Most subscriptions (followed spaces, entity-type feeds) one
    /// connection may hold; past it a subscribe is refused with an error.
    pub max_subscriptions: usize,
    /// How long SIGTERM waits for connections to finish.
    pub shutdown_grace: String,
    /// Serve HTTPS/WSS with this certificate chain (PEM); needs `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub tls_key: Option<PathBuf>,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: "127.0.0.1:7070".into(),
            max_connections: 4096,
            max_handshakes: 1024,
            max_connections_per_ip: 1024,
            max_handshakes_per_ip: 64,
            header_timeout: "5s".into(),
            request_timeout: "30s".into(),
            write_timeout: "30s".into(),
            idle_timeout: "60s".into(),
            max_frame_bytes: 1 << 20,
            queue_depth: 1024,
            queue_mb: 16,
            max_queued_mb: 128,
            max_inflight: 256,
            max_subscriptions: 256,
            shutdown_grace: "10s".into(),
            tls_cert: None,
            tls_key: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    pub dir: PathBuf,
    /// "immediate" (fsync before every ack) or "relaxed" (fsync at most 1 s later).
    pub durability: Durability,
    /// Keep log entries this long ("30d", "12h", ...; "forever" keeps all).
    pub retention: String,
    /// Refuse writes when the data disk has less free space than this (MiB).
    pub min_free_mb: u64,
    /// redb page cache (MiB). Bounds the store's share of memory.
    pub cache_mb: u64,
    /// Client edit times further ahead than this are clamped.
    pub max_clock_skew: String,
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            dir: PathBuf::from("./outpost-data"),
            durability: Durability::Immediate,
            retention: "30d".into(),
            min_free_mb: 64,
            cache_mb: 16,
            max_clock_skew: "60s".into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Anonymous {
    None,
    Read,
    Write,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HS256 secret for JWTs (prefer `jwt_secret_file`).
    pub jwt_secret: Option<String>,
    /// File holding the secret (trailing whitespace is ignored).
    pub jwt_secret_file: Option<PathBuf>,
    /// Access without a token. Default: "write" on a loopback listener,
    /// "none" otherwise.
    pub anonymous: Option<Anonymous>,
}

/// `[webhook]`: POST a `doc.updated` event for every stored key/value op
/// (seed 003). Off unless `url` is set.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Receiver, `http://HOST[:PORT][/PATH]` (plain HTTP only).
    pub url: Option<String>,
    /// HMAC-SHA256 key for the `X-Outpost-Signature` header.
    pub secret: Option<String>,
    /// Give up on one attempt after this long (it is retried).
    pub timeout: String,
    /// Most undelivered events kept; beyond it the oldest are dropped.
    pub max_backlog: u64,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            url: None,
            secret: None,
            timeout: "10s".into(),
            max_backlog: 100_000,
        }
    }
}

/// The validated webhook target.
#[derive(Clone, Debug, PartialEq)]
pub struct WebhookSettings {
    /// `host:port`, as given (resolved at each connect).
    pub authority: String,
    /// Request target, starting with `/`.
    pub path: String,
    pub secret: Option<Vec<u8>>,
    pub timeout: Duration,
    pub max_backlog: u64,
}

impl WebhookConfig {
    fn validate(&self) -> Result<Option<WebhookSettings>, ConfigError> {
        // Checked even without a url: a bad value is a mistake either way.
        let timeout = duration_in(
            "webhook.timeout",
            &self.timeout,
            Duration::from_millis(1),
            Duration::from_secs(600),
        )?;
        in_range("webhook.max_backlog", self.max_backlog, 1, 100_000_000)?;
        let Some(url) = self.url.as_deref().map(str::trim).filter(|u| !u.is_empty()) else {
            if self.secret.is_some() {
                return Err(invalid("webhook.secret", "set webhook.url too"));
            }
            return Ok(None);
        };
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            invalid(
                "webhook.url",
                format!("{url:?}: only plain http:// URLs are supported"),
            )
        })?;
        let (host, path) = match rest.find(['/', '?']) {
            Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        if host.is_empty() || host.contains('@') || host.contains(char::is_whitespace) {
            return Err(invalid("webhook.url", format!("{url:?}: bad host")));
        }
        let authority = if host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            host.to_string()
        } else if host.starts_with('[') && !host.ends_with(']') {
            return Err(invalid("webhook.url", format!("{url:?}: bad host")));
        } else {
            format!("{host}:80")
        };
        if path.contains(char::is_whitespace) {
            return Err(invalid(
                "webhook.url",
                format!("{url:?}: spaces in the path"),
            ));
        }
        Ok(Some(WebhookSettings {
            authority,
            path,
            secret: self.secret.as_ref().map(|s| s.as_bytes().to_vec()),
            timeout,
            max_backlog: self.max_backlog,
        }))
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// tracing filter, e.g. "info" or "outpost=debug"; RUST_LOG overrides.
    pub level: String,
    /// "text" or "json".
    pub format: LogFormat,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

/// The validated, typed view the relay runs on.
#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    pub max_connections: usize,
    pub max_handshakes: usize,
    pub max_connections_per_ip: usize,
    pub max_handshakes_per_ip: usize,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
    pub write_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_frame_bytes: usize,
    pub queue_depth: usize,
    /// `server.queue_mb` in bytes.
    pub max_queue_bytes: usize,
    /// `server.max_queued_mb` in bytes.
    pub max_queued_bytes: usize,
    pub max_inflight: usize,
    pub max_subscriptions: usize,
    pub shutdown_grace: Duration,
    pub dir: PathBuf,
    pub durability: Durability,
    pub retention: Option<Duration>,
    pub min_free_bytes: u64,
    pub cache_bytes: usize,
    pub max_skew: Duration,
    pub jwt_secret: Option<Vec<u8>>,
    pub anonymous: Anonymous,
    pub webhook: Option<WebhookSettings>,
    pub mesh: Option<MeshSettings>,
    /// `[upstream]`: the hub this relay forwards to (None: no upstream).
    pub upstream: Option<UpstreamSettings>,
    /// `[upstream] nats`: the edge forwards straight into JetStream.
    pub upstream_nats: Option<NatsSettings>,
    /// `[cluster] nats`: this relay is one instance of a JetStream hub tier.
    pub cluster: Option<NatsSettings>,
    /// `[server] tls_cert`/`tls_key`: serve TLS on the listener.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Compiled `[forms]` schemas.
    pub forms: Arc<SchemaSet>,
    /// Compiled `[schemas]`, keyed by collection.
    pub schemas: Arc<SchemaSet>,
    /// The effective configuration as TOML, secrets redacted (status page).
    pub effective_toml: String,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut c = Self::parse(&text, &path.display().to_string())?;
        c.base_dir = path.parent().map(Path::to_path_buf);
        Ok(c)
    }

    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let err = |e: toml::de::Error| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        };
        let mut c: Config = toml::from_str(text).map_err(err)?;
        // Only for `warnings`: a value TOML's own integers cannot hold
        // (a u64 past i64::MAX) is caught by `validate`, not here.
        c.raw = toml::from_str(text).ok();
        Ok(c)
    }

    /// Settings that were written but take no effect: a section whose
    /// switch is off. `check-config` prints them and `serve` logs them as
    /// warnings (they are not errors: turning a section off by its switch,
    /// keeping its settings for later, is legitimate).
    pub fn warnings(&self) -> Vec<String> {
        let Some(raw) = &self.raw else {
            return Vec::new();
        };
        // Keys written with a value other than their default (a key set to
        // its default changes nothing either way, as in the shipped file).
        let defaults = toml::Table::try_from(Config::default()).unwrap_or_default();
        // A sub-table (`[cluster.stream]`) counts only for what it sets.
        fn differs(v: &toml::Value, d: Option<&toml::Value>) -> bool {
            match (v, d) {
                (toml::Value::Table(t), Some(toml::Value::Table(dt))) => {
                    t.iter().any(|(k, v)| differs(v, dt.get(k)))
                }
                (toml::Value::Table(t), None) => !t.is_empty(),
                (v, d) => Some(v) != d,
            }
        }
        let keys = |section: &str, except: &[&str]| -> Vec<String> {
            let dflt = defaults.get(section).and_then(|v| v.as_table());
            raw.get(section)
                .and_then(|v| v.as_table())
                .map(|t| {
                    t.iter()
                        .filter(|(k, _)| !except.contains(&k.as_str()))
                        .filter(|(k, v)| differs(v, dflt.and_then(|d| d.get(k.as_str()))))
                        .map(|(k, _)| format!("{section}.{k}"))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut out = Vec::new();
        let mesh = keys("mesh", &["enabled"]);
        if !self.mesh.enabled && !mesh.is_empty() {
            out.push(format!(
                "[mesh] sets {} but not `enabled = true`: the mesh is off and these settings are ignored",
                mesh.join(", ")
            ));
        }
        let url_set = |u: &Option<String>| u.as_deref().is_some_and(|u| !u.trim().is_empty());
        let webhook = keys("webhook", &["url"]);
        if !url_set(&self.webhook.url) && !webhook.is_empty() {
            out.push(format!(
                "[webhook] sets {} but no `url`: no webhook is sent and these settings are ignored",
                webhook.join(", ")
            ));
        }
        let upstream = keys("upstream", &["url", "nats"]);
        if !url_set(&self.upstream.url) && self.upstream.nats.is_empty() && !upstream.is_empty() {
            out.push(format!(
                "[upstream] sets {} but neither `url` nor `nats`: there is no upstream and these settings are ignored",
                upstream.join(", ")
            ));
        }
        let cluster = keys("cluster", &["nats"]);
        if self.cluster.nats.is_empty() && !cluster.is_empty() {
            out.push(format!(
                "[cluster] sets {} but no `nats` servers: this relay is not clustered and these settings are ignored",
                cluster.join(", ")
            ));
        }
        out
    }

    /// Check every key and produce the settings the relay runs on.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let s = &self.server;
        let listen: SocketAddr = s.listen.parse().map_err(|e| {
            invalid(
                "server.listen",
                format!("{:?} is not an address:port ({e})", s.listen),
            )
        })?;
        in_range("server.max_connections", s.max_connections, 1, 1_000_000)?;
        in_range("server.max_handshakes", s.max_handshakes, 1, 1_000_000)?;
        in_range(
            "server.max_connections_per_ip",
            s.max_connections_per_ip,
            1,
            1_000_000,
        )?;
        in_range(
            "server.max_handshakes_per_ip",
            s.max_handshakes_per_ip,
            1,
            1_000_000,
        )?;
        let second = Duration::from_secs(1);
        let (ms, hour) = (Duration::from_millis(100), Duration::from_secs(3600));
        let header_timeout = duration_in("server.header_timeout", &s.header_timeout, ms, hour)?;
        let request_timeout = duration_in("server.request_timeout", &s.request_timeout, ms, hour)?;
        let write_timeout = duration_in("server.write_timeout", &s.write_timeout, second, hour)?;
        let idle_timeout = duration_in("server.idle_timeout", &s.idle_timeout, second, hour)?;
        in_range("server.max_frame_bytes", s.max_frame_bytes, 1024, 64 << 20)?;
        in_range("server.queue_depth", s.queue_depth, 16, 1 << 20)?;
        in_range("server.queue_mb", s.queue_mb, 1, 4096)?;
        in_range("server.max_queued_mb", s.max_queued_mb, 1, 65536)?;
        if s.queue_mb > s.max_queued_mb {
            return Err(invalid(
                "server.queue_mb",
                format!(
                    "{} is more than server.max_queued_mb ({})",
                    s.queue_mb, s.max_queued_mb
                ),
            ));
        }
        in_range("server.max_inflight", s.max_inflight, 1, 65_536)?;
        in_range("server.max_subscriptions", s.max_subscriptions, 1, 65_536)?;
        let shutdown_grace = duration_in(
            "server.shutdown_grace",
            &s.shutdown_grace,
            Duration::ZERO,
            Duration::from_secs(3600),
        )?;
        let st = &self.storage;
        if st.dir.as_os_str().is_empty() {
            return Err(invalid("storage.dir", "must not be empty"));
        }
        let retention = match st.retention.trim() {
            "forever" | "0" => None,
            r => Some(duration_in(
                "storage.retention",
                r,
                Duration::from_secs(1),
                Duration::from_secs(100 * 365 * 86_400),
            )?),
        };
        let max_skew = duration_in(
            "storage.max_clock_skew",
            &st.max_clock_skew,
            Duration::ZERO,
            Duration::from_secs(7 * 86_400),
        )?;
        // Upper bounds keep the byte figures far from overflow; a value
        // beyond them is a typo, not a disk or a board.
        in_range("storage.min_free_mb", st.min_free_mb, 0, 1 << 30)?;
        in_range("storage.cache_mb", st.cache_mb, 1, 1 << 20)?;
        validate_log_filter(&self.log.level)?;
        let a = &self.auth;
        let jwt_secret = read_secret(
            ("auth.jwt_secret", "auth.jwt_secret_file"),
            &a.jwt_secret,
            &a.jwt_secret_file,
        )?;
        let mesh = self.mesh.validate()?;
        let upstream_nats = self.upstream.validate_nats()?;
        let upstream = match upstream_nats {
            Some(_) => None,
            None => self.upstream.validate()?,
        };
        let cluster = self.cluster.validate()?;
        if cluster.is_some() && upstream_nats.is_some() {
            return Err(invalid(
                "upstream.nats",
                "a [cluster] member publishes to the stream itself: drop upstream.nats",
            ));
        }
        let tls = server_tls(s)?;
        let anonymous = match a.anonymous {
            Some(x) => x,
            None if listen.ip().is_loopback() => Anonymous::Write,
            None => Anonymous::None,
        };
        if anonymous != Anonymous::Write && jwt_secret.is_none() {
            return Err(invalid(
                "auth.jwt_secret",
                if a.anonymous.is_none() {
                    "a non-loopback listener needs a JWT secret (or set auth.anonymous explicitly)"
                } else {
                    "required unless auth.anonymous = \"write\""
                },
            ));
        }
        let webhook = self.webhook.validate()?;
        let base = self.base_dir.as_deref();
        let load = |section: &str, entries| {
            SchemaSet::load(entries, base)
                .map(Arc::new)
                .map_err(|(name, source)| ConfigError::Schema {
                    key: format!("{section}.{name}"),
                    source,
                })
        };
        let forms = load("forms", &self.forms)?;
        let schemas = load("schemas", &self.schemas)?;
        let mut settings = Settings {
            listen,
            max_connections: s.max_connections,
            max_handshakes: s.max_handshakes,
            max_connections_per_ip: s.max_connections_per_ip,
            max_handshakes_per_ip: s.max_handshakes_per_ip,
            header_timeout,
            request_timeout,
            write_timeout,
            idle_timeout,
            max_frame_bytes: s.max_frame_bytes,
            queue_depth: s.queue_depth,
            max_queue_bytes: (s.queue_mb as usize).saturating_mul(1 << 20),
            max_queued_bytes: (s.max_queued_mb as usize).saturating_mul(1 << 20),
            max_inflight: s.max_inflight,
            max_subscriptions: s.max_subscriptions,
            shutdown_grace,
            dir: st.dir.clone(),
            durability: st.durability,
            retention,
            min_free_bytes: st.min_free_mb << 20,
            cache_bytes: (st.cache_mb as usize).saturating_mul(1 << 20),
            max_skew,
            jwt_secret,
            anonymous,
            webhook,
            mesh,
            upstream,
            upstream_nats,
            cluster,
            tls,
            forms,
            schemas,
            effective_toml: String::new(),
        };
        settings.effective_toml = self.effective_toml(&settings);
        Ok(settings)
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn effective_toml(&self, s: &Settings) -> String {
        let mut c = self.clone();
        c.auth.anonymous = Some(s.anonymous);
        if c.auth.jwt_secret.is_some() {
            c.auth.jwt_secret = Some("<redacted>".into());
        }
        if c.webhook.secret.is_some() {
            c.webhook.secret = Some("<redacted>".into());
        }
        if c.mesh.secret.is_some() {
            c.mesh.secret = Some("<redacted>".into());
        }
        if c.upstream.token.is_some() {
            c.upstream.token = Some("<redacted>".into());
        }
        for b in [&mut c.cluster.bootstrap, &mut c.upstream.bootstrap] {
            if b.token.is_some() {
                b.token = Some("<redacted>".into());
            }
        }
        // Credentials are named by file only (creds_file, token_file).
        toml::to_string(&c).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// A secret given inline or in a file (trailing newline ignored), at least
/// 16 bytes; never both.
fn read_secret(
    keys: (&'static str, &'static str),
    inline: &Option<String>,
    file: &Option<PathBuf>,
) -> Result<Option<Vec<u8>>, ConfigError> {
    let secret = match (inline, file) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                keys.0,
                format!("set {} or {}, not both", keys.0, keys.1),
            ))
        }
        (Some(s), None) => Some(s.as_bytes().to_vec()),
        (None, Some(p)) => {
            let s = std::fs::read_to_string(p)
                .map_err(|e| invalid(keys.1, format!("cannot read {}: {e}", p.display())))?;
            Some(s.trim_end().as_bytes().to_vec())
        }
        (None, None) => None,
    };
    if secret.as_ref().is_some_and(|s| s.len() < 16) {
        return Err(invalid(keys.0, "must be at least 16 bytes"));
    }
    Ok(secret)
}

/// `[mesh]`: replication with peer relays over QUIC.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeshConfig {
    /// Join a mesh (needs `secret` or `secret_file`).
    pub enabled: bool,
    /// UDP address of the QUIC endpoint.
    pub listen: String,
    /// Shared by every relay of the mesh; at least 16 bytes.
    pub secret: Option<String>,
    pub secret_file: Option<PathBuf>,
    /// Relays to dial, "host:port" (work without mDNS).
    pub peers: Vec<String>,
    /// Advertise and discover relays on the LAN with mDNS.
    pub mdns: bool,
    /// Replicate only these spaces with every peer, both ways (default: all).
    pub spaces: Option<Vec<String>>,
    /// Per peer (keyed by its node id, 16 hex digits): replicate only these
    /// spaces with it, instead of `spaces`.
    pub peer_spaces: BTreeMap<String, Vec<String>>,
    /// Incoming QUIC connections not yet through their handshake, proof
    /// and hello, at most; in all and from one address.
    pub max_handshakes: usize,
    pub max_handshakes_per_ip: usize,
    /// An incoming connection's QUIC handshake, proof and hello must be
    /// done within this.
    pub handshake_timeout: String,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            enabled: false,
            listen: "0.0.0.0:7071".into(),
            secret: None,
            secret_file: None,
            peers: Vec::new(),
            mdns: true,
            spaces: None,
            peer_spaces: Default::default(),
            max_handshakes: 64,
            max_handshakes_per_ip: 8,
            handshake_timeout: "10s".into(),
        }
    }
}

/// The validated mesh settings.
#[derive(Clone, Debug, PartialEq)]
pub struct MeshSettings {
    pub listen: SocketAddr,
    pub secret: Vec<u8>,
    pub peers: Vec<String>,
    pub mdns: bool,
    /// Spaces replicated with every peer not in `peer_spaces` (all: None).
    pub spaces: Option<HashSet<String>>,
    /// Spaces replicated with the peer of this node id.
    pub peer_spaces: std::collections::HashMap<crate::model::NodeId, HashSet<String>>,
    /// Incoming connections in their handshake (QUIC, membership proof,
    /// hello) at most, in all and per address (IPv6: per /64).
    pub max_handshakes: usize,
    pub max_handshakes_per_ip: usize,
    /// The time an incoming connection has for all of its handshake.
    pub handshake_timeout: Duration,
}

impl MeshSettings {
    /// The spaces this relay replicates with `peer` (None: all).
    pub fn spaces_for(&self, peer: crate::model::NodeId) -> Option<HashSet<String>> {
        match self.peer_spaces.get(&peer) {
            Some(s) => Some(s.clone()),
            None => self.spaces.clone(),
        }
    }
}

/// A list of space names, each checked as a space name (`key` names it).
fn space_set(key: &'static str, spaces: &[String]) -> Result<HashSet<String>, ConfigError> {
    for s in spaces {
        crate::engine::validate_name("space", s).map_err(|e| invalid(key, e.to_string()))?;
    }
    Ok(spaces.iter().cloned().collect())
}

impl MeshConfig {
    fn validate(&self) -> Result<Option<MeshSettings>, ConfigError> {
        let secret = read_secret(
            ("mesh.secret", "mesh.secret_file"),
            &self.secret,
            &self.secret_file,
        )?;
        if !self.enabled {
            return Ok(None);
        }
        let secret = secret.ok_or_else(|| {
            invalid(
                "mesh.secret",
                "the mesh needs a secret (mesh.secret or mesh.secret_file)",
            )
        })?;
        let listen = self
            .listen
            .parse()
            .map_err(|e| invalid("mesh.listen", format!("{:?}: {e}", self.listen)))?;
        in_range("mesh.max_handshakes", self.max_handshakes, 1, 1_000_000)?;
        in_range(
            "mesh.max_handshakes_per_ip",
            self.max_handshakes_per_ip,
            1,
            1_000_000,
        )?;
        let handshake_timeout = duration_in(
            "mesh.handshake_timeout",
            &self.handshake_timeout,
            Duration::from_millis(100),
            Duration::from_secs(3600),
        )?;
        for p in &self.peers {
            let ok = p
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                return Err(invalid("mesh.peers", format!("{p:?} is not \"host:port\"")));
            }
        }
        let spaces = match &self.spaces {
            Some(v) => Some(space_set("mesh.spaces", v)?),
            None => None,
        };
        let mut peer_spaces = std::collections::HashMap::new();
        for (node, v) in &self.peer_spaces {
            let id = (node.len() == 16)
                .then(|| node.parse::<crate::model::NodeId>().ok())
                .flatten()
                .ok_or_else(|| {
                    invalid(
                        "mesh.peer_spaces",
                        format!(
                            "{node:?} is not a node id (16 hex digits, as `outpost status` shows it)"
                        ),
                    )
                })?;
            let spaces = space_set("mesh.peer_spaces", v)?;
            if peer_spaces.insert(id, spaces).is_some() {
                return Err(invalid(
                    "mesh.peer_spaces",
                    format!("node id {node:?} is listed twice"),
                ));
            }
        }
        Ok(Some(MeshSettings {
            listen,
            secret,
            peers: self.peers.clone(),
            mdns: self.mdns,
            spaces,
            peer_spaces,
            max_handshakes: self.max_handshakes,
            max_handshakes_per_ip: self.max_handshakes_per_ip,
            handshake_timeout,
        }))
    }
}

/// `[upstream]`: store-and-forward to a hub relay over WebSocket. Off
/// unless `url` is set.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// `ws://HOST[:PORT]/PATH` or `wss://…`, e.g. `wss://hub.example/ws/replicate`.
    pub url: Option<String>,
    /// A token of the hub with `admin` scope (prefer `token_file`).
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    /// PEM certificates to trust for a `wss://` hub instead of the system
    /// roots (a self-hosted hub's own or its CA's certificate).
    pub ca_file: Option<PathBuf>,
    /// Replicate only these spaces, both ways (default: all).
    pub spaces: Option<Vec<String>>,
    /// Forward into a NATS JetStream stream instead of a hub (`nats://` or
    /// `tls://` URLs; needs the `jetstream` build). Exclusive with `url`.
    pub nats: Vec<String>,
    /// NATS credentials file (with `nats`).
    pub creds_file: Option<PathBuf>,
    /// The stream (with `nats`): `[upstream.stream]`, as `[cluster.stream]`.
    pub stream: crate::cluster::settings::StreamConfig,
    /// With `nats`: `[upstream.bootstrap]`, as `[cluster.bootstrap]`.
    pub bootstrap: crate::cluster::settings::BootstrapConfig,
}

/// The validated upstream.
#[derive(Clone, Debug)]
pub struct UpstreamSettings {
    /// As configured (for status).
    pub url: String,
    pub tls: bool,
    /// Host as written (brackets stripped from IPv6), for DNS and SNI.
    pub host: String,
    pub port: u16,
    pub token: String,
    /// Trust anchors from `ca_file` (None: the system roots).
    pub ca: Option<Vec<rustls::pki_types::CertificateDer<'static>>>,
    pub spaces: Option<std::collections::HashSet<String>>,
}

impl crate::cluster::settings::ClusterConfig {
    fn validate(&self) -> Result<Option<NatsSettings>, ConfigError> {
        use crate::cluster::settings::{self as cs, Connection, Role};
        if self.nats.is_empty() {
            if self.creds_file.is_some()
                || self.token_file.is_some()
                || self.ca_file.is_some()
                || self.bootstrap.url.is_some()
            {
                return Err(invalid("cluster.nats", "set cluster.nats too"));
            }
            return Ok(None);
        }
        let ack_timeout = match &self.ack_timeout {
            None => Duration::from_secs(10),
            Some(t) => parse_duration(t).map_err(|e| invalid("cluster.ack_timeout", e))?,
        };
        if ack_timeout.is_zero() {
            return Err(invalid("cluster.ack_timeout", "must be above 0"));
        }
        let c = Connection {
            servers: &self.nats,
            creds_file: &self.creds_file,
            token: None,
            token_file: &self.token_file,
            ca_file: &self.ca_file,
            stream: &self.stream,
        };
        let mut settings = cs::validate(
            c,
            &cs::CLUSTER_KEYS,
            Role::Cluster { ack_timeout },
            None,
            parse_duration,
        )
        .map_err(|(key, reason)| invalid(key, reason))?;
        settings.bootstrap = validate_bootstrap(&self.bootstrap, &CLUSTER_BOOTSTRAP)?;
        Ok(Some(settings))
    }
}

/// The keys of `[cluster.bootstrap]` or `[upstream.bootstrap]`, for refusals.
struct BootstrapKeys {
    url: &'static str,
    token: &'static str,
    token_file: &'static str,
    ca_file: &'static str,
    /// What `upstream.` becomes in a reused `[upstream]` refusal.
    prefix: &'static str,
}

const CLUSTER_BOOTSTRAP: BootstrapKeys = BootstrapKeys {
    url: "cluster.bootstrap.url",
    token: "cluster.bootstrap.token",
    token_file: "cluster.bootstrap.token_file",
    ca_file: "cluster.bootstrap.ca_file",
    prefix: "cluster.bootstrap.",
};

const UPSTREAM_BOOTSTRAP: BootstrapKeys = BootstrapKeys {
    url: "upstream.bootstrap.url",
    token: "upstream.bootstrap.token",
    token_file: "upstream.bootstrap.token_file",
    ca_file: "upstream.bootstrap.ca_file",
    prefix: "upstream.bootstrap.",
};

/// `[cluster.bootstrap]` / `[upstream.bootstrap]`: the peer's base URL
/// gives both its `/v1/status` and its `/ws/replicate`; token and CA as
/// `[upstream]`.
fn validate_bootstrap(
    b: &crate::cluster::settings::BootstrapConfig,
    k: &BootstrapKeys,
) -> Result<Option<crate::cluster::settings::Bootstrap>, ConfigError> {
    let Some(url) = b.url.as_deref().map(str::trim).filter(|u| !u.is_empty()) else {
        if b.token.is_some() || b.token_file.is_some() || b.ca_file.is_some() {
            return Err(invalid(k.url, format!("set {} too", k.url)));
        }
        return Ok(None);
    };
    let url = url.trim_end_matches('/');
    let ws = match url.split_once("://") {
        Some(("http", rest)) if !rest.contains('/') => format!("ws://{rest}/ws/replicate"),
        Some(("https", rest)) if !rest.contains('/') => format!("wss://{rest}/ws/replicate"),
        _ => {
            return Err(invalid(
                k.url,
                format!("{url:?}: expected http://HOST:PORT or https://HOST:PORT (one instance, not the load balancer)"),
            ))
        }
    };
    // The same checks as an upstream hub's (token with admin scope, CA for
    // TLS), named by this section's keys.
    let as_upstream = UpstreamConfig {
        url: Some(ws),
        token: b.token.clone(),
        token_file: b.token_file.clone(),
        ca_file: b.ca_file.clone(),
        ..Default::default()
    };
    let replicate = as_upstream
        .validate()
        .map_err(|e| match e {
            ConfigError::Invalid { key, reason } => invalid(
                match key {
                    "upstream.token" => k.token,
                    "upstream.token_file" => k.token_file,
                    "upstream.ca_file" => k.ca_file,
                    _ => k.url,
                },
                reason
                    .replace("upstream.", k.prefix)
                    .replace("a wss:// url", "an https:// url"),
            ),
            other => other,
        })?
        .ok_or_else(|| invalid(k.url, "required"))?;
    Ok(Some(crate::cluster::settings::Bootstrap {
        url: url.to_string(),
        token: replicate.token.clone(),
        ca_file: b.ca_file.clone(),
        replicate,
    }))
}

impl UpstreamConfig {
    /// `[upstream] nats`: None unless set.
    fn validate_nats(&self) -> Result<Option<NatsSettings>, ConfigError> {
        use crate::cluster::settings::{self as cs, Connection, Role};
        if self.nats.is_empty() {
            if self.creds_file.is_some() {
                return Err(invalid("upstream.nats", "set upstream.nats too"));
            }
            if self.bootstrap.url.is_some() {
                return Err(invalid(
                    "upstream.bootstrap.url",
                    "only with upstream.nats (a WebSocket upstream's hub sends a state snapshot itself)",
                ));
            }
            return Ok(None);
        }
        if self.url.is_some() {
            return Err(invalid(
                "upstream.url",
                "set upstream.url (a hub) or upstream.nats (JetStream), not both",
            ));
        }
        let spaces = self.spaces()?;
        let c = Connection {
            servers: &self.nats,
            creds_file: &self.creds_file,
            token: self.token.as_ref().map(|t| t.trim().to_string()),
            token_file: &self.token_file,
            ca_file: &self.ca_file,
            stream: &self.stream,
        };
        let mut settings = cs::validate(
            c,
            &cs::UPSTREAM_KEYS,
            Role::Upstream,
            spaces,
            parse_duration,
        )
        .map_err(|(key, reason)| invalid(key, reason))?;
        settings.bootstrap = validate_bootstrap(&self.bootstrap, &UPSTREAM_BOOTSTRAP)?;
        Ok(Some(settings))
    }

    fn spaces(&self) -> Result<Option<HashSet<String>>, ConfigError> {
        match &self.spaces {
            None => Ok(None),
            Some(v) => space_set("upstream.spaces", v).map(Some),
        }
    }

    fn validate(&self) -> Result<Option<UpstreamSettings>, ConfigError> {
        let Some(url) = self.url.as_deref().map(str::trim).filter(|u| !u.is_empty()) else {
            if self.token.is_some() || self.token_file.is_some() || self.ca_file.is_some() {
                return Err(invalid("upstream.url", "set upstream.url too"));
            }
            return Ok(None);
        };
        let uri: axum::http::Uri = url
            .parse()
            .map_err(|e| invalid("upstream.url", format!("{url:?}: {e}")))?;
        let tls = match uri.scheme_str() {
            Some("wss") => true,
            Some("ws") => false,
            _ => {
                return Err(invalid(
                    "upstream.url",
                    format!("{url:?}: must start with ws:// or wss://"),
                ))
            }
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| invalid("upstream.url", format!("{url:?}: no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(invalid(
                "upstream.url",
                "no credentials in the URL; use upstream.token",
            ));
        }
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let token = match (&self.token, &self.token_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "upstream.token",
                    "set upstream.token or upstream.token_file, not both",
                ))
            }
            (Some(t), None) => t.trim().to_string(),
            (None, Some(p)) => std::fs::read_to_string(p)
                .map_err(|e| {
                    invalid(
                        "upstream.token_file",
                        format!("cannot read {}: {e}", p.display()),
                    )
                })?
                .trim()
                .to_string(),
            (None, None) => String::new(),
        };
        if token.is_empty() {
            return Err(invalid(
                "upstream.token",
                "the hub admits only tokens with admin scope: set upstream.token or upstream.token_file",
            ));
        }
        let ca = match &self.ca_file {
            None => None,
            Some(p) => {
                if !tls {
                    return Err(invalid("upstream.ca_file", "only for a wss:// url"));
                }
                Some(read_certs(p).map_err(|e| invalid("upstream.ca_file", e))?)
            }
        };
        let spaces = self.spaces()?;
        Ok(Some(UpstreamSettings {
            url: url.to_string(),
            tls,
            host,
            port,
            token,
            ca,
            spaces,
        }))
    }
}

/// Every certificate in a PEM file (at least one).
pub fn read_certs(p: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(p)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", p.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", p.display()));
    }
    Ok(certs)
}

/// `[server] tls_cert` + `tls_key`: the listener's TLS config (HTTP/1.1).
fn server_tls(s: &Server) -> Result<Option<Arc<rustls::ServerConfig>>, ConfigError> {
    use rustls::pki_types::pem::PemObject;
    let (cert, key) = match (&s.tls_cert, &s.tls_key) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (c, k),
        (Some(_), None) => return Err(invalid("server.tls_key", "set it with server.tls_cert")),
        (None, Some(_)) => return Err(invalid("server.tls_cert", "set it with server.tls_key")),
    };
    let chain = read_certs(cert).map_err(|e| invalid("server.tls_cert", e))?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key)
        .map_err(|e| invalid("server.tls_key", format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("server.tls_cert", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            invalid(
                "server.tls_key",
                format!("does not fit server.tls_cert: {e}"),
            )
        })?;
    // WebSocket upgrades need HTTP/1.1 (the listener speaks only that).
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(cfg)))
}

/// A number key within `lo..=hi`; the error names the key and the range.
fn in_range<T: PartialOrd + std::fmt::Display>(
    key: &'static str,
    v: T,
    lo: T,
    hi: T,
) -> Result<(), ConfigError> {
    if v < lo || v > hi {
        return Err(invalid(
            key,
            format!("{v} is out of range: must be between {lo} and {hi}"),
        ));
    }
    Ok(())
}

/// A duration key within `lo..=hi`.
fn duration_in(
    key: &'static str,
    text: &str,
    lo: Duration,
    hi: Duration,
) -> Result<Duration, ConfigError> {
    let d = parse_duration(text).map_err(|e| invalid(key, e))?;
    if d < lo || d > hi {
        return Err(invalid(
            key,
            format!(
                "{text:?} is out of range: must be between {} and {}",
                show_duration(lo),
                show_duration(hi)
            ),
        ));
    }
    Ok(d)
}

fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0s".into(),
        ms if ms % 86_400_000 == 0 => format!("{}d", ms / 86_400_000),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// `log.level` must parse as a tracing filter: a typo would otherwise log
/// nothing (or everything) without a word. tracing's own parser accepts
/// some nonsense (`loud==` is a target named `loud=`), so each directive is
/// also checked for the shape `LEVEL`, `TARGET` or `TARGET[SPAN]=LEVEL`.
fn validate_log_filter(filter: &str) -> Result<(), ConfigError> {
    let bad = |why: String| {
        invalid(
            "log.level",
            format!(
                "{filter:?} is not a log filter like \"info\" or \"outpost=debug,warn\" ({why})"
            ),
        )
    };
    let is_level = |l: &str| {
        ["trace", "debug", "info", "warn", "error", "off"]
            .iter()
            .any(|n| l.eq_ignore_ascii_case(n))
            || matches!(l, "0" | "1" | "2" | "3" | "4" | "5")
    };
    for d in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let target = match d.rsplit_once('=') {
            Some((t, l)) if is_level(l.trim()) && !t.trim().is_empty() => t.trim(),
            Some(_) => return Err(bad(format!("{d:?} does not end in a level"))),
            None if is_level(d) => continue,
            None => d,
        };
        let name = target.split('[').next().unwrap_or_default();
        let name_ok = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_:.-".contains(c));
        if !name_ok || (name.is_empty() && !target.starts_with('[')) {
            return Err(bad(format!("{target:?} is not a module path")));
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(filter)
        .map(drop)
        .map_err(|e| bad(e.to_string()))
}

/// "500ms", "10s", "5m", "24h", "30d" (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like \"10s\", \"24h\" or \"30d\""))?;
    let per = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (use ms, s, m, h or d)"
            ))
        }
    };
    let ms = n
        .checked_mul(per)
        .ok_or_else(|| format!("{s:?} is too long a duration"))?;
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_to_loopback_write() {
        let s = Config::default().validate().unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:7070");
        assert_eq!(s.anonymous, Anonymous::Write);
        assert_eq!(s.retention, Some(Duration::from_secs(30 * 86400)));
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::parse("[server]\nlisten_addr = \"x\"\n", "t").unwrap_err();
        assert!(e.to_string().contains("listen_addr"), "{e}");
    }

    #[test]
    fn public_listener_needs_a_secret() {
        let mut c = Config::default();
        c.server.listen = "0.0.0.0:7070".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("auth.jwt_secret"), "{e}");
        c.auth.jwt_secret = Some("0123456789abcdef0123".into());
        assert_eq!(c.validate().unwrap().anonymous, Anonymous::None);
    }

    #[cfg(feature = "jetstream")]
    #[test]
    fn cluster_bootstrap_is_checked() {
        let cluster = |extra: &str| {
            Config::parse(
                &format!(
                    "[cluster]\nnats = [\"nats://127.0.0.1:4222\"]\n[cluster.bootstrap]\n{extra}"
                ),
                "t",
            )
            .unwrap()
            .validate()
            .map(|s| s.cluster.unwrap().bootstrap)
        };
        assert!(cluster("").unwrap().is_none());
        let b = cluster("url = \"http://10.0.0.21:7070/\"\ntoken = \"t\"\n")
            .unwrap()
            .unwrap();
        assert_eq!(b.url, "http://10.0.0.21:7070");
        assert_eq!(b.replicate.url, "ws://10.0.0.21:7070/ws/replicate");
        assert_eq!((b.replicate.port, b.replicate.tls), (7070, false));
        let b = cluster("url = \"https://hub-a.example\"\ntoken = \"t\"\n")
            .unwrap()
            .unwrap();
        assert_eq!(b.replicate.url, "wss://hub-a.example/ws/replicate");
        for (extra, key) in [
            (
                "url = \"ws://a:7070\"\ntoken = \"t\"\n",
                "cluster.bootstrap.url",
            ),
            (
                "url = \"http://a:7070/x\"\ntoken = \"t\"\n",
                "cluster.bootstrap.url",
            ),
            ("url = \"http://a:7070\"\n", "cluster.bootstrap.token"),
            ("token = \"t\"\n", "cluster.bootstrap.url"),
            (
                "url = \"http://a:7070\"\ntoken = \"t\"\nca_file = \"/nonexistent\"\n",
                "cluster.bootstrap.ca_file",
            ),
        ] {
            let e = cluster(extra).unwrap_err().to_string();
            assert!(e.contains(key), "{extra}: {e}");
        }
        let e = Config::parse("[cluster.bootstrap]\nurl = \"http://a:1\"\n", "t")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("cluster.nats"), "{e}");
        // An [upstream] nats edge takes the same keys; a WebSocket upstream
        // does not (its hub sends a snapshot itself).
        let upstream = |head: &str| {
            Config::parse(
                &format!("[upstream]\n{head}[upstream.bootstrap]\nurl = \"http://a:7070\"\n"),
                "t",
            )
            .unwrap()
            .validate()
        };
        let e = upstream("nats = [\"nats://127.0.0.1:4222\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("upstream.bootstrap.token"), "{e}");
        let e = upstream("url = \"ws://hub:7070/ws/replicate\"\ntoken = \"t\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("upstream.bootstrap.url"), "{e}");
        let s = Config::parse(
            "[upstream]\nnats = [\"nats://127.0.0.1:4222\"]\n[upstream.bootstrap]\nurl = \"http://a:7070\"\ntoken = \"t\"\n",
            "t",
        )
        .unwrap()
        .validate()
        .unwrap();
        let b = s.upstream_nats.unwrap().bootstrap.unwrap();
        assert_eq!(b.replicate.url, "ws://a:7070/ws/replicate");
    }

    #[test]
    fn mesh_spaces_are_checked_and_apply_per_peer() {
        let base = "[mesh]\nenabled = true\nsecret = \"0123456789abcdef0123\"\nmdns = false\n";
        let mesh = |extra: &str| {
            Config::parse(&format!("{base}{extra}"), "t")
                .unwrap()
                .validate()
                .map(|s| s.mesh.unwrap())
        };
        let m = mesh("").unwrap();
        assert_eq!(m.spaces_for(crate::model::NodeId(7)), None, "default: all");
        let m = mesh(
            "spaces = [\"family\"]\n[mesh.peer_spaces]\n\"00000000000000aB\" = [\"family\", \"photos\"]\n",
        )
        .unwrap();
        let set = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect::<HashSet<_>>());
        assert_eq!(
            m.spaces_for(crate::model::NodeId(0xab)),
            set(&["family", "photos"])
        );
        assert_eq!(m.spaces_for(crate::model::NodeId(1)), set(&["family"]));
        // An empty list shares nothing (and is allowed: a peer for events only).
        let m = mesh("spaces = []\n").unwrap();
        assert_eq!(m.spaces_for(crate::model::NodeId(1)), set(&[]));
        for (extra, key, says) in [
            ("spaces = [\"a\\u0001\"]\n", "mesh.spaces", "control"),
            (
                "[mesh.peer_spaces]\n\"xyz\" = []\n",
                "mesh.peer_spaces",
                "node id",
            ),
            (
                "[mesh.peer_spaces]\n\"00000000000000ab0\" = []\n",
                "mesh.peer_spaces",
                "node id",
            ),
            (
                "[mesh.peer_spaces]\n\"00000000000000ab\" = [\"\"]\n",
                "mesh.peer_spaces",
                "space",
            ),
            (
                "[mesh.peer_spaces]\n\"00000000000000ab\" = []\n\"00000000000000AB\" = []\n",
                "mesh.peer_spaces",
                "twice",
            ),
        ] {
            let e = mesh(extra).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(says), "{extra}: {e}");
        }
        // Set while the mesh is off: warned about like the other keys.
        let c = Config::parse("[mesh]\nspaces = [\"a\"]\n", "t").unwrap();
        assert!(
            c.warnings()[0].contains("mesh.spaces"),
            "{:?}",
            c.warnings()
        );
    }

    #[test]
    fn webhook_url_is_checked() {
        let mut c = Config::default();
        assert_eq!(c.validate().unwrap().webhook, None);
        c.webhook.url = Some("http://127.0.0.1:9000/hooks/kv?x=1".into());
        c.webhook.secret = Some("s3cret".into());
        let w = c.validate().unwrap().webhook.unwrap();
        assert_eq!(w.authority, "127.0.0.1:9000");
        assert_eq!(w.path, "/hooks/kv?x=1");
        assert_eq!(w.secret.as_deref(), Some(&b"s3cret"[..]));
        c.webhook.url = Some("http://example.org".into());
        let w = c.validate().unwrap().webhook.unwrap();
        assert_eq!(
            (w.authority.as_str(), w.path.as_str()),
            ("example.org:80", "/")
        );
        c.webhook.url = Some("https://example.org/x".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("webhook.url") && e.contains("http://"), "{e}");
        c.webhook.url = None;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("webhook.secret"), "{e}");
    }

    #[test]
    fn schema_paths_resolve_against_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("forms")).unwrap();
        std::fs::write(
            dir.path().join("forms/contact.schema.json"),
            r#"{"type":"object"}"#,
        )
        .unwrap();
        let file = dir.path().join("outpost.toml");
        std::fs::write(
            &file,
            "[forms]\ncontact = \"forms/contact.schema.json\"\n[schemas]\nnotes = \"forms/missing.json\"\n",
        )
        .unwrap();
        let c = Config::load(&file).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("`schemas.notes`") && e.contains("missing.json"),
            "{e}"
        );
        let mut c = c;
        c.schemas.clear();
        let s = c.validate().unwrap();
        assert!(s.forms.contains("contact"));
        assert!(s.schemas.is_empty());
    }

    #[test]
    fn numbers_out_of_range_name_their_key() {
        let cases: [(&str, &str); 9] = [
            (
                "[storage]\nmin_free_mb = 18446744073709551615\n",
                "storage.min_free_mb",
            ),
            ("[storage]\ncache_mb = 0\n", "storage.cache_mb"),
            (
                "[storage]\ncache_mb = 18446744073709551615\n",
                "storage.cache_mb",
            ),
            ("[server]\nmax_connections = 0\n", "server.max_connections"),
            ("[server]\nqueue_depth = 8\n", "server.queue_depth"),
            ("[server]\nmax_inflight = 1000000\n", "server.max_inflight"),
            (
                "[server]\nshutdown_grace = \"99999999999999999d\"\n",
                "server.shutdown_grace",
            ),
            ("[webhook]\nmax_backlog = 0\n", "webhook.max_backlog"),
            ("[log]\nlevel = \"loud==\"\n", "log.level"),
        ];
        for (text, key) in cases {
            let e = Config::parse(text, "t")
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("`{key}`")), "{text}: {e}");
        }
        for bad in ["loud==", "info,=debug", "outpost=verbose", "a b"] {
            assert!(validate_log_filter(bad).is_err(), "{bad}");
        }
        for good in [
            "info",
            "WARN",
            "outpost=debug,warn",
            "outpost::mesh=trace",
            "quinn",
            "[conn]=debug",
            "",
        ] {
            validate_log_filter(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        let ok = "[log]\nlevel = \"outpost=debug,warn\"\n[storage]\nmin_free_mb = 0\n";
        Config::parse(ok, "t").unwrap().validate().unwrap();
    }

    #[test]
    fn settings_without_their_switch_are_warned_about() {
        let c = Config::parse(
            "[upstream]\nspaces = [\"a\"]\n[cluster]\nack_timeout = \"5s\"\n[mesh]\nmdns = true\n",
            "t",
        )
        .unwrap();
        let w = c.warnings();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].starts_with("[upstream] sets upstream.spaces"), "{w:?}");
        assert!(
            w[1].starts_with("[cluster] sets cluster.ack_timeout"),
            "{w:?}"
        );
        // mdns = true is the default: nothing to say about [mesh].
        assert!(Config::default().warnings().is_empty());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("3w").is_err());
        assert!(parse_duration("18446744073709551615d").is_err());
    }
}
