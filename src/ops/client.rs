//! A small HTTP/1 client for the admin API (hyper's client half, already
//! in the tree for the webhook), over TCP or TLS (rustls on ring).

use super::OpsError;
use crate::config::Config;
use axum::body::Bytes;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use std::path::PathBuf;

use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer read whole (status documents, import results).
const MAX_BODY: usize = 64 << 20;

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

pub struct Target {
    pub url: String,
    host: String,
    port: u16,
    authority: String,
    tls: Option<tokio_rustls::TlsConnector>,
    token: Option<String>,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

impl Target {
    pub fn new(args: &TargetArgs) -> Result<Target, OpsError> {
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
        let uri: axum::http::Uri = url
            .parse()
            .map_err(|e| usage(format!("--url {url:?}: {e}")))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(usage(format!(
                    "--url {url:?}: must start with http:// or https://"
                )))
            }
        };
        let host = uri
            .host()
            .ok_or_else(|| usage(format!("--url {url:?}: no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        let tls = if tls {
            let ca = match &args.ca_file {
                Some(p) => Some(crate::config::read_certs(p).map_err(usage)?),
                None => None,
            };
            Some(crate::upstream::connector(ca.as_deref()).map_err(|e| usage(e.to_string()))?)
        } else {
            None
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
        Ok(Target {
            url,
            host,
            port,
            authority,
            tls,
            token,
        })
    }

    fn unreachable(&self, reason: impl std::fmt::Display) -> OpsError {
        OpsError::Unreachable {
            url: self.url.clone(),
            reason: reason.to_string(),
        }
    }

    async fn connect(&self) -> Result<Box<dyn Io>, OpsError> {
        let addr = (self.host.as_str(), self.port);
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| self.unreachable("connection timed out"))?
            .map_err(|e| self.unreachable(e))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some(c) => {
                let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|e| self.unreachable(e))?;
                let s = c
                    .connect(name, tcp)
                    .await
                    .map_err(|e| self.unreachable(e))?;
                Ok(Box::new(s))
            }
        }
    }

    async fn send(
        &self,
        method: hyper::Method,
        path: &str,
        body: Body,
    ) -> Result<hyper::Response<hyper::body::Incoming>, OpsError> {
        let io = self.connect().await?;
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.unreachable(e))?;
        tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.authority);
        if let Some(t) = &self.token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req.body(body).map_err(|e| OpsError::Usage(e.to_string()))?;
        let resp = tx
            .send_request(req)
            .await
            .map_err(|e| self.unreachable(e))?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&body[..body.len().min(4096)]);
            return Err(OpsError::Refused {
                url: self.url.clone(),
                status,
                body: text.trim().to_string(),
            });
        }
        Ok(resp)
    }

    fn empty() -> Body {
        Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync()
    }

    /// GET, the whole answer (bounded).
    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>, OpsError> {
        let mut out = Vec::new();
        self.get_stream(path, |c| {
            if out.len() + c.len() > MAX_BODY {
                return Err(std::io::Error::other("answer too large"));
            }
            out.extend_from_slice(c);
            Ok(())
        })
        .await?;
        Ok(out)
    }

    /// GET, handing each chunk of the answer to `sink` as it arrives.
    pub async fn get_stream(
        &self,
        path: &str,
        mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), OpsError> {
        let resp = self.send(hyper::Method::GET, path, Self::empty()).await?;
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.unreachable(format!("reading the answer: {e}")))?;
            if let Some(d) = frame.data_ref() {
                sink(d)?;
            }
        }
        Ok(())
    }

    /// POST `input` as the body (streamed), the whole answer back.
    pub async fn post_stream(
        &self,
        path: &str,
        input: impl AsyncRead + Send + Unpin + 'static,
    ) -> Result<Vec<u8>, OpsError> {
        let chunks = futures_util::stream::unfold(input, |mut r| async move {
            let mut buf = vec![0u8; 64 << 10];
            match r.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Frame::data(Bytes::from(buf))), r))
                }
                Err(e) => Some((Err(e), r)),
            }
        });
        let body = BodyExt::boxed_unsync(StreamBody::new(chunks));
        let resp = self.send(hyper::Method::POST, path, body).await?;
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.unreachable(e))?
            .to_bytes();
        Ok(body.to_vec())
    }
}
