//! Dialling a relay's `/ws/replicate` (an edge reaching its hub, a hub
//! instance pulling from a peer): TCP, TLS, and the WebSocket handshake
//! with the token, each bounded. Shared by `upstream` and the cluster's
//! bootstrap pull ([`super::pull`]).

use crate::config::UpstreamSettings;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Bound on connecting: TCP, TLS and the WebSocket handshake each.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connected byte stream, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A WebSocket to a hub's `/ws/replicate`.
pub type Socket = tokio_tungstenite::WebSocketStream<Box<dyn Io>>;

/// TCP, TLS (with `tls`), and the WebSocket handshake with the token:
/// what a hub sees of a site dialling in. Every step is bounded by
/// `CONNECT_TIMEOUT`.
pub async fn dial(
    s: &UpstreamSettings,
    tls: Option<&tokio_rustls::TlsConnector>,
) -> Result<Socket, String> {
    let tcp = connect_tcp(&s.host, s.port).await?;
    let io: Box<dyn Io> = match tls {
        None => Box::new(tcp),
        Some(tls) => {
            let name = rustls::pki_types::ServerName::try_from(s.host.clone())
                .map_err(|e| format!("{:?}: {e}", s.host))?;
            match tokio::time::timeout(CONNECT_TIMEOUT, tls.connect(name, tcp)).await {
                Ok(Ok(stream)) => Box::new(stream),
                Ok(Err(e)) => return Err(format!("TLS: {e}")),
                Err(_) => return Err("TLS handshake timed out".into()),
            }
        }
    };
    let mut req = s
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("bad url: {e}"))?;
    let auth = format!("Bearer {}", s.token)
        .parse()
        .map_err(|_| "the token is not a valid header value".to_string())?;
    req.headers_mut()
        .insert(axum::http::header::AUTHORIZATION, auth);
    let limit = crate::replicate::frame::MAX_FRAME_BYTES + 1024;
    let cfg = WebSocketConfig::default()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    let hs = tokio_tungstenite::client_async_with_config(req, io, Some(cfg));
    match tokio::time::timeout(CONNECT_TIMEOUT, hs).await {
        Ok(Ok((socket, _))) => Ok(socket),
        Ok(Err(tungstenite::Error::Http(resp))) => Err(format!(
            "the hub refused the connection: HTTP {}",
            resp.status()
        )),
        Ok(Err(e)) => Err(format!("WebSocket handshake: {e}")),
        Err(_) => Err("WebSocket handshake timed out".into()),
    }
}

/// TCP to the first address of `host` that answers.
async fn connect_tcp(host: &str, port: u16) -> Result<tokio::net::TcpStream, String> {
    let addrs = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| format!("resolving {host} timed out"))?
        .map_err(|e| format!("resolving {host}: {e}"))?;
    let mut last = format!("{host} resolves to no address");
    for addr in addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => last = format!("connecting to {addr}: {e}"),
            Err(_) => last = format!("connecting to {addr} timed out"),
        }
    }
    Err(last)
}
