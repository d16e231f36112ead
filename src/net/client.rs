//! Outgoing connections: the TLS client configuration (rustls on ring)
//! every dialler uses, and a small HTTP/1 client for a relay's admin API
//! (hyper's client half, already in the tree for the webhook), over TCP or
//! TLS. Used by the operator commands (`ops`) and a cluster member reading
//! a peer's status (`cluster::link::bootstrap`).

use crate::tasks::AbortOnDrop;
use axum::body::Bytes;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use rustls::pki_types::CertificateDer;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer read whole (status documents, import results).
const MAX_BODY: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
#[error("TLS: {0}")]
pub struct TlsError(String);

/// A TLS client on ring, trusting `ca` (PEM certificates from a `ca_file`
/// setting) or else the system's roots.
pub fn connector(
    ca: Option<&[CertificateDer<'static>]>,
) -> Result<tokio_rustls::TlsConnector, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(certs) => {
            for c in certs {
                roots
                    .add(c.clone())
                    .map_err(|e| TlsError(format!("ca_file: {e}")))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(TlsError(
                    "no system root certificates found; set a ca_file".into(),
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the relay at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the relay at {url} answered {status}: {body}")]
    Refused {
        url: String,
        status: u16,
        body: String,
    },
    /// The URL is not one this client can reach.
    #[error("{0}")]
    Url(String),
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("bad request: {0}")]
    Request(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A relay's admin API: where it is, and the token to show it.
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
    /// `url` is `http://HOST[:PORT]` or `https://…` (then `ca`, or the
    /// system's roots, verify the relay's certificate).
    pub fn new(
        url: &str,
        token: Option<String>,
        ca: Option<&[CertificateDer<'static>]>,
    ) -> Result<Target, ClientError> {
        let url = url.trim_end_matches('/').to_string();
        let bad = |m: String| ClientError::Url(format!("{url:?}: {m}"));
        let uri: axum::http::Uri = url.parse().map_err(|e| bad(format!("{e}")))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("must start with http:// or https://".into())),
        };
        let host = uri
            .host()
            .ok_or_else(|| bad("no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        let tls = match tls {
            true => Some(connector(ca)?),
            false => None,
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

    fn unreachable(&self, reason: impl std::fmt::Display) -> ClientError {
        ClientError::Unreachable {
            url: self.url.clone(),
            reason: reason.to_string(),
        }
    }

    async fn connect(&self) -> Result<Box<dyn Io>, ClientError> {
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
    ) -> Result<(hyper::Response<hyper::body::Incoming>, AbortOnDrop<()>), ClientError> {
        let io = self.connect().await?;
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.unreachable(e))?;
        // Drives the connection while the caller reads the answer; ends
        // with it, and at the latest when the caller drops the guard.
        let driver = AbortOnDrop::spawn(async move {
            let _ = conn.await;
        });
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.authority);
        if let Some(t) = &self.token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(body)
            .map_err(|e| ClientError::Request(e.to_string()))?;
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
            return Err(ClientError::Refused {
                url: self.url.clone(),
                status,
                body: text.trim().to_string(),
            });
        }
        Ok((resp, driver))
    }

    fn empty() -> Body {
        Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync()
    }

    /// GET, the whole answer (bounded).
    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>, ClientError> {
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
    ) -> Result<(), ClientError> {
        let (resp, _driver) = self.send(hyper::Method::GET, path, Self::empty()).await?;
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
    ) -> Result<Vec<u8>, ClientError> {
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
        let (resp, _driver) = self.send(hyper::Method::POST, path, body).await?;
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.unreachable(e))?
            .to_bytes();
        Ok(body.to_vec())
    }
}
