//! A relay process with its own temp dir (config file, data dir, log),
//! started, killed and restarted by PID; and the polling helpers the
//! multi-process tests share (upstream, mesh, jetstream).

use super::{http_get, Proc};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// One relay process with its own data dir and config file.
pub struct Node {
    pub proc: Option<Proc>,
    _dir: tempfile::TempDir,
    pub cfg: PathBuf,
    pub data: PathBuf,
    /// The HTTP address of the running process.
    pub http: SocketAddr,
    /// Listen address to (re)start on ("127.0.0.1:0" for any port).
    pub listen: String,
    /// Append the relay's log (stderr) to `log()`; discarded otherwise.
    pub logged: bool,
}

impl Node {
    /// A node with `config` as its file, on any free port; not started.
    pub fn new(config: &str) -> Node {
        Node::on(config, "127.0.0.1:0")
    }

    /// As `new`, (re)started on `listen`.
    pub fn on(config: &str, listen: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("outpost.toml");
        std::fs::write(&cfg, config).unwrap();
        let data = dir.path().join("data");
        Node {
            proc: None,
            cfg,
            data,
            http: "127.0.0.1:0".parse().unwrap(),
            listen: listen.to_string(),
            logged: false,
            _dir: dir,
        }
    }

    /// The relay's log (stderr of every run, when `logged`).
    pub fn log(&self) -> PathBuf {
        self.cfg.with_file_name("outpost.log")
    }

    /// `outpost serve` with this node's config, listen address and data.
    pub fn args(&self) -> Vec<String> {
        [
            "serve",
            "--config",
            self.cfg.to_str().unwrap(),
            "--listen",
            &self.listen,
            "--data",
            self.data.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    }

    pub fn run(mut self) -> Node {
        self.start();
        self
    }

    /// (Re)start the process and wait for its "listening on" line.
    pub fn start(&mut self) {
        let args = self.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let p = if self.logged {
            Proc::spawn_logged(&args, &self.log())
        } else {
            Proc::spawn(&args)
        };
        self.http = p.addr;
        self.proc = Some(p);
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    /// SIGTERM, and a clean exit (bounded).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.terminate().expect("clean exit");
        }
    }
}

/// The value of the Prometheus series `name` on `addr` (panics if absent).
pub async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let (_, body) = http_get(addr, "/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {body}"))
}

/// Poll `check` every 100 ms until it holds (panics after `secs`).
pub async fn wait_until<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
