//! Scale-out on NATS JetStream (issue 19) with real `nats-server` and relay
//! processes on loopback: hub instances share one stream, each merging what
//! the others wrote; writes are acked after JetStream holds them; a stream
//! with other settings refuses the start.
#![cfg(feature = "jetstream")]

mod common;

use common::nats::Nats;
use common::replication::*;
use common::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// One relay process with its own data dir and config file.
struct Node {
    proc: Option<Proc>,
    _dir: tempfile::TempDir,
    cfg: PathBuf,
    data: PathBuf,
    http: SocketAddr,
}

impl Node {
    fn new(config: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("outpost.toml");
        std::fs::write(&cfg, config).unwrap();
        let data = dir.path().join("data");
        Node {
            proc: None,
            cfg,
            data,
            http: "127.0.0.1:0".parse().unwrap(),
            _dir: dir,
        }
    }

    /// A hub instance of the tier on `nats`'s stream.
    fn hub(nats: &Nats, replicas: usize, extra: &str) -> Node {
        Node::new(&format!(
            "[auth]\njwt_secret = \"{SECRET}\"\nanonymous = \"write\"\n\
             [cluster]\nnats = {}\nack_timeout = \"30s\"\n{extra}\n\
             [cluster.stream]\nreplicas = {replicas}\n",
            nats.toml_urls()
        ))
    }

    fn args(&self) -> Vec<String> {
        [
            "serve",
            "--config",
            self.cfg.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--data",
            self.data.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    }

    fn run(mut self) -> Node {
        self.start();
        self
    }

    fn start(&mut self) {
        let args = self.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let p = Proc::spawn(&args);
        self.http = p.addr;
        self.proc = Some(p);
    }
}

async fn cluster_status(addr: SocketAddr) -> Value {
    status(addr).await["cluster"].clone()
}

async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let (_, body) = http_get(addr, "/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {body}"))
}

/// Poll `check` every 100 ms until it holds (panics after `secs`).
async fn wait_until<F, Fut>(secs: u64, what: &str, mut check: F)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hub_instances_share_one_stream() {
    let nats = Nats::start(1);
    let a = Node::hub(&nats, 1, "").run();
    let b = Node::hub(&nats, 1, "").run();
    for n in [&a, &b] {
        let st = cluster_status(n.http).await;
        assert_eq!(st["connected"], true, "{st}");
        assert_eq!(st["stream"]["name"], "OUTPOST", "{st}");
    }
    // Acked writes are in the stream already: the ack waited for JetStream.
    let wa = writes("a", 150, "a");
    write_all(a.http, &wa).await;
    let st = cluster_status(a.http).await;
    assert_eq!(st["changes_waiting"], 0, "{st}");
    assert!(st["stream"]["last_seq"].as_u64().unwrap() >= 150, "{st}");
    let wb = writes("b", 150, "b");
    write_all(b.http, &wb).await;
    converge(&[a.http, b.http], 300, &ids(&[&wa, &wb])).await;
    // Each instance read the whole stream; nothing was published twice.
    for n in [&a, &b] {
        wait_until(20, "lag 0", || async {
            cluster_status(n.http).await["lag"] == 0
        })
        .await;
        let st = cluster_status(n.http).await;
        assert_eq!(st["position"], 300, "{st}");
        assert_eq!(st["stream"]["last_seq"], 300, "{st}");
        assert_eq!(st["merged"], 150, "{st}");
        assert_eq!(metric(n.http, "outpost_jetstream_reachable").await, 1.0);
        assert_eq!(metric(n.http, "outpost_jetstream_lag").await, 0.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incompatible_stream_refuses_the_start() {
    let nats = Nats::start(1);
    // The first instance creates the stream with a 2 minute window.
    let a = Node::hub(&nats, 1, "").run();
    assert_eq!(cluster_status(a.http).await["connected"], true);
    let b = Node::new(&format!(
        "[cluster]\nnats = {}\n[cluster.stream]\nreplicas = 1\nduplicate_window = \"5m\"\n",
        nats.toml_urls()
    ));
    let args = b.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = run_cli(&args);
    assert_ne!(code, 0);
    assert!(
        err.contains("NATS stream OUTPOST") && err.contains("duplicate_window"),
        "{err}"
    );
}
