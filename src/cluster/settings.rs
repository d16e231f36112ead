//! `[cluster]` and the NATS half of `[upstream]`: which NATS servers, how to
//! authenticate, and the JetStream stream every member shares. Validated at
//! startup into [`NatsSettings`]; pure (reads only the files it names).

use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

/// Why a `[cluster]` or `[upstream]` NATS key is refused: (key, reason).
pub type Refusal = (&'static str, String);

/// `[cluster]`: join a hub tier whose shared log is a JetStream stream.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// NATS server URLs (`nats://`, `tls://`); empty: not clustered.
    pub nats: Vec<String>,
    /// A NATS credentials file (`.creds`: user JWT and nkey seed).
    pub creds_file: Option<PathBuf>,
    /// A file holding a NATS token (trailing newline ignored).
    pub token_file: Option<PathBuf>,
    /// PEM CA certificates to trust for the NATS servers; setting it
    /// requires TLS.
    pub ca_file: Option<PathBuf>,
    /// How long a write waits for JetStream's publish ack before its writer
    /// is answered 503 (default "10s"). The write stays durable here and is
    /// published once JetStream is back.
    pub ack_timeout: Option<String>,
    pub stream: StreamConfig,
    /// `[cluster.bootstrap]`: the peer instance a member seeds itself from
    /// when the stream no longer holds what it lacks.
    pub bootstrap: BootstrapConfig,
}

/// `[cluster.bootstrap]` / `[upstream.bootstrap]`: one running instance of
/// the tier (its own address, not the load balancer's) and an admin token
/// of it. Used only when this relay's stream position is below the
/// stream's first message (a new instance on a trimmed stream, or a member
/// or `[upstream] nats` edge down longer than `max_age`): see
/// docs/scale-out.md, "Bootstrap".
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BootstrapConfig {
    /// `http://HOST:PORT` or `https://…` of the peer instance.
    pub url: Option<String>,
    /// A token of the peer with admin scope (prefer `token_file`).
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    /// PEM certificates to trust for an `https://` peer instead of the
    /// system roots.
    pub ca_file: Option<PathBuf>,
}

/// The stream: `[cluster.stream]` / `[upstream.stream]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    /// Stream name (default "OUTPOST").
    pub name: String,
    /// Subjects are `<subject_prefix>.<space>` (default "outpost").
    pub subject_prefix: String,
    /// Copies JetStream keeps, 1..=5 (default 3: survives one NATS node).
    pub replicas: usize,
    /// Retention policy: only "limits" fits (each relay keeps its own
    /// position, so messages must stay by age/size, not by interest).
    pub retention: String,
    /// Messages older than this are dropped (default "30d"; "0" = never).
    pub max_age: String,
    /// Size bound of the stream in MiB (default 0 = unbounded).
    pub max_bytes_mb: u64,
    /// Window in which JetStream drops a republished Nats-Msg-Id (default "2m").
    pub duplicate_window: String,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            name: "OUTPOST".into(),
            subject_prefix: "outpost".into(),
            replicas: 3,
            retention: "limits".into(),
            max_age: "30d".into(),
            max_bytes_mb: 0,
            duplicate_window: "2m".into(),
        }
    }
}

/// How the relay authenticates to NATS.
#[derive(Clone, Debug, PartialEq)]
pub enum NatsAuth {
    None,
    Token(String),
    Creds(PathBuf),
}

/// A validated stream.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamSettings {
    pub name: String,
    pub subject_prefix: String,
    pub replicas: usize,
    /// None: keep forever.
    pub max_age: Option<Duration>,
    /// None: unbounded.
    pub max_bytes: Option<u64>,
    pub duplicate_window: Duration,
}

/// Which role the link plays.
#[derive(Clone, Debug, PartialEq)]
pub enum Role {
    /// A hub instance of the tier: every write is acked to its writer only
    /// after JetStream acked it (or `ack_timeout` answers 503).
    Cluster { ack_timeout: Duration },
    /// An edge forwarding straight into JetStream: acks on the local fsync;
    /// the log past the cursor is the backlog.
    Upstream,
}

/// A validated `[cluster]` or `[upstream]` NATS link.
#[derive(Clone, Debug)]
pub struct NatsSettings {
    pub servers: Vec<String>,
    pub auth: NatsAuth,
    pub ca_file: Option<PathBuf>,
    pub stream: StreamSettings,
    pub role: Role,
    /// Replicate only these spaces, both ways (None: all).
    pub spaces: Option<HashSet<String>>,
    /// `[cluster.bootstrap]` or `[upstream.bootstrap]`.
    pub bootstrap: Option<Bootstrap>,
}

/// A validated `[cluster.bootstrap]`.
#[derive(Clone, Debug)]
pub struct Bootstrap {
    /// The peer's base URL (`http://HOST:PORT`), for `/v1/status`.
    pub url: String,
    pub token: String,
    pub ca_file: Option<PathBuf>,
    /// The peer's `/ws/replicate`, dialled as a site would.
    pub replicate: crate::config::UpstreamSettings,
}

impl NatsSettings {
    /// Durable cursor (a local log seq) of what JetStream holds; pinned
    /// against retention, as the log past it is the outbound queue.
    pub fn publish_cursor(&self) -> &'static str {
        match self.role {
            Role::Cluster { .. } => "cluster.publish",
            Role::Upstream => "upstream",
        }
    }

    /// Durable position in the stream (a stream seq): everything up to it
    /// is merged here.
    pub fn consume_cursor(&self) -> &'static str {
        match self.role {
            Role::Cluster { .. } => "cluster.stream",
            Role::Upstream => "upstream.stream",
        }
    }
}

/// The connection part shared by `[cluster]` and `[upstream]`.
pub struct Connection<'a> {
    pub servers: &'a [String],
    pub creds_file: &'a Option<PathBuf>,
    pub token: Option<String>,
    pub token_file: &'a Option<PathBuf>,
    pub ca_file: &'a Option<PathBuf>,
    pub stream: &'a StreamConfig,
}

/// Keys named in refusals, per section.
pub struct Keys {
    pub nats: &'static str,
    pub creds_file: &'static str,
    pub token_file: &'static str,
    pub ca_file: &'static str,
    pub stream: &'static str,
}

pub const CLUSTER_KEYS: Keys = Keys {
    nats: "cluster.nats",
    creds_file: "cluster.creds_file",
    token_file: "cluster.token_file",
    ca_file: "cluster.ca_file",
    stream: "cluster.stream",
};

pub const UPSTREAM_KEYS: Keys = Keys {
    nats: "upstream.nats",
    creds_file: "upstream.creds_file",
    token_file: "upstream.token_file",
    ca_file: "upstream.ca_file",
    stream: "upstream.stream",
};

/// Check a NATS link: servers, one way to authenticate, the CA file, the
/// stream. `parse_duration` is the config's duration parser.
pub fn validate(
    c: Connection<'_>,
    keys: &Keys,
    role: Role,
    spaces: Option<HashSet<String>>,
    parse_duration: fn(&str) -> Result<Duration, String>,
) -> Result<NatsSettings, Refusal> {
    if !cfg!(feature = "jetstream") {
        return Err((
            keys.nats,
            "this build has no NATS JetStream support: build outpost with `--features jetstream` (the cloud build)".into(),
        ));
    }
    let mut servers = Vec::new();
    for s in c.servers {
        let s = s.trim();
        let rest = ["nats://", "tls://"]
            .iter()
            .find_map(|p| s.strip_prefix(p))
            .ok_or_else(|| {
                (
                    keys.nats,
                    format!("{s:?}: must start with nats:// or tls://"),
                )
            })?;
        if rest.is_empty() || rest.contains('/') {
            return Err((keys.nats, format!("{s:?}: expected nats://HOST:PORT")));
        }
        if rest.contains('@') {
            return Err((
                keys.nats,
                format!(
                    "{s:?}: no credentials in the URL; use {} or {}",
                    keys.token_file, keys.creds_file
                ),
            ));
        }
        servers.push(s.to_string());
    }
    let auth = match (c.token, c.token_file, c.creds_file) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
            return Err((
                keys.token_file,
                format!(
                    "set one of the token, {} or {}",
                    keys.token_file, keys.creds_file
                ),
            ))
        }
        (Some(t), None, None) => NatsAuth::Token(t),
        (None, Some(p), None) => {
            let t = std::fs::read_to_string(p)
                .map_err(|e| (keys.token_file, format!("cannot read {}: {e}", p.display())))?;
            let t = t.trim().to_string();
            if t.is_empty() {
                return Err((keys.token_file, format!("{} is empty", p.display())));
            }
            NatsAuth::Token(t)
        }
        (None, None, Some(p)) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| (keys.creds_file, format!("cannot read {}: {e}", p.display())))?;
            if !text.contains("BEGIN NATS USER JWT") || !text.contains("BEGIN USER NKEY SEED") {
                return Err((
                    keys.creds_file,
                    format!("{}: not a NATS credentials file", p.display()),
                ));
            }
            NatsAuth::Creds(p.clone())
        }
        (None, None, None) => NatsAuth::None,
    };
    if let Some(p) = c.ca_file {
        let text = std::fs::read_to_string(p)
            .map_err(|e| (keys.ca_file, format!("cannot read {}: {e}", p.display())))?;
        if !text.contains("BEGIN CERTIFICATE") {
            return Err((
                keys.ca_file,
                format!("{}: no PEM certificate in it", p.display()),
            ));
        }
    }
    let stream = validate_stream(c.stream, keys.stream, parse_duration)?;
    Ok(NatsSettings {
        servers,
        auth,
        ca_file: c.ca_file.clone(),
        stream,
        role,
        spaces,
        bootstrap: None,
    })
}

fn validate_stream(
    s: &StreamConfig,
    key: &'static str,
    parse_duration: fn(&str) -> Result<Duration, String>,
) -> Result<StreamSettings, Refusal> {
    let token_ok = |t: &str| {
        !t.is_empty()
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    if !token_ok(&s.name) {
        return Err((
            key,
            format!("name {:?}: letters, digits, - and _ only", s.name),
        ));
    }
    if s.subject_prefix.is_empty() || !s.subject_prefix.split('.').all(token_ok) {
        return Err((
            key,
            format!(
                "subject_prefix {:?}: dot-separated tokens of letters, digits, - and _",
                s.subject_prefix
            ),
        ));
    }
    if !(1..=5).contains(&s.replicas) {
        return Err((key, format!("replicas {}: must be 1 to 5", s.replicas)));
    }
    if s.retention != "limits" {
        return Err((
            key,
            format!(
                "retention {:?}: only \"limits\" fits (every relay keeps its own position in the stream)",
                s.retention
            ),
        ));
    }
    let max_age = match s.max_age.trim() {
        "0" | "forever" => None,
        a => Some(parse_duration(a).map_err(|e| (key, format!("max_age: {e}")))?),
    };
    let duplicate_window =
        parse_duration(&s.duplicate_window).map_err(|e| (key, format!("duplicate_window: {e}")))?;
    if duplicate_window.is_zero() {
        return Err((key, "duplicate_window: must be above 0".into()));
    }
    if max_age.is_some_and(|a| a < duplicate_window) {
        return Err((
            key,
            "max_age: must not be shorter than duplicate_window".into(),
        ));
    }
    Ok(StreamSettings {
        name: s.name.clone(),
        subject_prefix: s.subject_prefix.clone(),
        replicas: s.replicas,
        max_age,
        max_bytes: (s.max_bytes_mb > 0).then(|| s.max_bytes_mb.saturating_mul(1 << 20)),
        duplicate_window,
    })
}
