//! Which relay an operator command talks to, and with which token: from
//! the flags, else the config file. The HTTP client itself is
//! `net::client`.

use super::OpsError;
use crate::config::Config;
use crate::net::client::ClientError;
pub use crate::net::client::Target;
use std::path::PathBuf;

/// Where the relay is and how to authenticate (shared by the commands).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TargetArgs {
    /// The relay's URL, e.g. http://127.0.0.1:7070 [default: from --config's
    /// [server] listen, else http://127.0.0.1:7070]
    #[arg(long, env = "OUTPOST_URL")]
    pub url: Option<String>,
    /// A token with the admin scope [default: minted from --config's JWT
    /// secret; a loopback relay with anonymous write needs none]
    #[arg(long, env = "OUTPOST_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The relay's config file (gives the URL and a token).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// PEM certificates to trust for an https:// relay [default: the
    /// system's roots].
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
}

/// The relay `args` name (or the config's listener), with a token.
pub fn target(args: &TargetArgs) -> Result<Target, OpsError> {
    let usage = |m: String| OpsError::Usage(m);
    let settings = match &args.config {
        Some(p) => {
            let c = Config::load(p).map_err(|e| usage(e.to_string()))?;
            Some(c.validate().map_err(|e| usage(e.to_string()))?)
        }
        None => None,
    };
    let url = match (&args.url, &settings) {
        (Some(u), _) => u.trim_end_matches('/').to_string(),
        (None, Some(s)) => {
            let mut a = s.listen;
            if a.ip().is_unspecified() {
                a.set_ip(if a.is_ipv4() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                });
            }
            let scheme = if s.tls.is_some() { "https" } else { "http" };
            format!("{scheme}://{a}")
        }
        (None, None) => "http://127.0.0.1:7070".into(),
    };
    // The CA file matters only for https.
    let ca = match &args.ca_file {
        Some(p) if url.starts_with("https:") => Some(crate::config::read_certs(p).map_err(usage)?),
        _ => None,
    };
    let token = match (&args.token, &settings) {
        (Some(t), _) => Some(t.trim().to_string()),
        (None, Some(s)) => match &s.jwt_secret {
            Some(secret) => {
                let now = crate::auth::now_s();
                let auth = crate::auth::Auth::new(Some(secret), s.anonymous);
                let t = auth
                    .mint("outpost-cli", crate::auth::Scope::Admin, None, 300, now)
                    .map_err(|e| usage(e.to_string()))?;
                Some(t)
            }
            None => None,
        },
        (None, None) => None,
    };
    Target::new(&url, token, ca.as_deref()).map_err(|e| match e {
        ClientError::Url(m) => usage(format!("--url {m}")),
        e => e.into(),
    })
}
