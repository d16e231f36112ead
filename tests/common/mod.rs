//! Test harness: relays in-process or as child processes, and a small
//! WebSocket client. Everything listens on 127.0.0.1 with port 0.
#![allow(dead_code)]

pub mod nats;
pub mod node;
pub mod replication;

use futures_util::{SinkExt, StreamExt};
use outpost::app::Relay;
use outpost::config::Config;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-secret-0123456789";

/// A config for tests: loopback, port 0, data in `dir`.
pub fn config(dir: &Path) -> Config {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".into();
    c.storage.dir = dir.to_path_buf();
    c
}

pub async fn start(cfg: Config) -> Relay {
    Relay::start(cfg.validate().expect("valid test config"))
        .await
        .expect("relay starts")
}

/// A relay running as a child process of the real binary.
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Proc {
    /// Start `outpost serve` with the given extra arguments and wait for the
    /// "listening on" line.
    pub fn spawn(args: &[&str]) -> Proc {
        Proc::spawn_in(None, args)
    }

    /// `outpost serve --config CONFIG --listen 127.0.0.1:0 --data DATA`: a
    /// relay on an ephemeral loopback port with its config file and data dir.
    pub fn serve(config: &Path, data: &Path) -> Proc {
        Proc::spawn(&[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--data",
            data.to_str().unwrap(),
        ])
    }

    /// `outpost serve --listen 127.0.0.1:0 --data DATA`: a relay with the
    /// embedded defaults on an ephemeral loopback port.
    pub fn serve_defaults(data: &Path) -> Proc {
        Proc::spawn(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data",
            data.to_str().unwrap(),
        ])
    }

    /// As `spawn`, in working directory `cwd`.
    pub fn spawn_in(cwd: Option<&Path>, args: &[&str]) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_outpost"));
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        cmd.args(args);
        Proc::spawn_cmd(cmd)
    }

    /// As `spawn`, with the relay's log (stderr) appended to `log`.
    pub fn spawn_logged(args: &[&str], log: &Path) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_outpost"));
        cmd.args(args);
        Proc::spawn_cmd_logged(cmd, log)
    }

    /// As `spawn_cmd`, with the relay's log (stderr) appended to `log`.
    pub fn spawn_cmd_logged(mut cmd: Command, log: &Path) -> Proc {
        cmd.env_remove("RUST_LOG");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        Proc::spawn_with(cmd, file.into())
    }

    /// Start a prepared command (e.g. `ip netns exec NS outpost serve …`,
    /// which execs the relay, so the pid is the relay's).
    pub fn spawn_cmd(cmd: Command) -> Proc {
        Proc::spawn_with(cmd, Stdio::null())
    }

    fn spawn_with(mut cmd: Command, stderr: Stdio) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn outpost");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read stdout");
        let addr = line
            .trim()
            .strip_prefix("outpost listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("address");
        Proc { child, addr }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Send `sig` (e.g. 15) by PID; returns at once.
    pub fn signal(&self, sig: i32) {
        unsafe_kill(self.pid(), sig);
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for exit (bounded).
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        unsafe_kill(self.pid(), 15);
        for _ in 0..200 {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
        None
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill9();
        }
    }
}

/// Run the binary to completion: (exit code, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(args)
        .output()
        .expect("run outpost");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn unsafe_kill(pid: i32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The value of metric `name` (a series name, optionally with its labels
/// or the space after it) in Prometheus text; 0 when it is absent.
pub fn metric_in(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or(0)
}

pub struct Client {
    pub ws: Ws,
}

pub const WAIT: Duration = Duration::from_secs(10);

impl Client {
    /// Connect to `path` (e.g. "/ws?token=…") and return the client.
    pub async fn connect(addr: SocketAddr, path: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}{path}"))
            .await
            .expect("websocket connects");
        Client { ws }
    }

    /// Connect with a 4 KiB receive buffer: once this client stops
    /// reading, the relay's writes to it stall after a few frames.
    pub async fn stalling(addr: SocketAddr, path: &str) -> Client {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let tcp = sock.connect(addr).await.expect("connect");
        let tcp = MaybeTlsStream::Plain(tcp);
        let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}{path}"), tcp)
            .await
            .expect("websocket connects");
        Client { ws }
    }

    /// Connect to the native endpoint and consume the welcome.
    pub async fn native(addr: SocketAddr) -> Client {
        let mut c = Client::connect(addr, "/ws").await;
        let w = c.recv().await;
        assert_eq!(w["type"], "welcome", "{w}");
        c
    }

    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("send");
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.expect("send");
    }

    /// Next JSON text frame (panics after WAIT).
    pub async fn recv(&mut self) -> Value {
        self.try_recv(WAIT)
            .await
            .expect("a frame before the timeout")
    }

    pub async fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        loop {
            let m = tokio::time::timeout(wait, self.ws.next())
                .await
                .ok()??
                .ok()?;
            match m {
                Message::Text(t) => return Some(serde_json::from_str(&t).expect("json")),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// Frames until one of type `kind` arrives; returns (skipped, found).
    pub async fn until(&mut self, kind: &str) -> (Vec<Value>, Value) {
        let mut seen = vec![];
        loop {
            let v = self.recv().await;
            if v["type"] == kind {
                return (seen, v);
            }
            seen.push(v);
        }
    }

    pub async fn subscribe(&mut self, space: &str, since: u64) -> (Vec<Value>, Value) {
        self.send(json!({"type": "subscribe", "space": space, "since": since, "rid": "sub"}))
            .await;
        self.until("synced").await
    }

    /// Push one patch and wait for its ack.
    pub async fn put(&mut self, space: &str, id: &str, fields: Value) -> Value {
        self.send(json!({"type": "push", "rid": id, "space": space,
                         "changes": [{"collection": "notes", "id": id, "op": "patch", "fields": fields}]}))
            .await;
        let (_, ack) = self.until("ack").await;
        ack
    }
}

/// Simple HTTP GET on loopback; returns (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path, &[], None).await
}

/// The HTTP status of a WebSocket handshake that is refused.
pub async fn handshake_status(addr: SocketAddr, path: &str, bearer: Option<&str>) -> u16 {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    if let Some(t) = bearer {
        req.headers_mut()
            .insert("Authorization", format!("Bearer {t}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
        Err(e) => panic!("unexpected handshake error {e}"),
    }
}

/// An HTTP/1.1 request on loopback with optional extra headers and a JSON
/// body; returns (status, body).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("http response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A config with JWT auth on and no anonymous access, plus a token minter.
pub fn auth_config(dir: &Path) -> Config {
    let mut c = config(dir);
    c.auth.jwt_secret = Some(SECRET.into());
    c.auth.anonymous = Some(outpost::config::Anonymous::None);
    c
}

/// A token for `sub` with `scope`, valid for an hour (optionally limited to
/// some spaces).
pub fn token(sub: &str, scope: outpost::auth::Scope, spaces: Option<Vec<String>>) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    outpost::auth::Auth::new(Some(SECRET.as_bytes()), outpost::config::Anonymous::None)
        .mint(sub, scope, spaces, 3600, now)
        .expect("mint")
}

/// A self-signed certificate for 127.0.0.1, written to `dir`; returns the
/// cert and key paths and a connector that trusts it.
pub fn tls_certificate(
    dir: &Path,
) -> (
    std::path::PathBuf,
    std::path::PathBuf,
    tokio_rustls::TlsConnector,
) {
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(made.cert.der().clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let c = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (
        cert,
        key,
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(c)),
    )
}
