//! `outpost bench`: measure a relay the way a user choosing one would, over
//! real WebSockets, against a floor measured in the same run.
//!
//! - [`load`]: subscribers and windowed writers, latency and the
//!   exactly-once check, used alike for the relay and the floor.
//! - [`scenarios`]: fan-out (one writer, many writers), idle connections,
//!   replication between two meshed relays.
//! - [`wire`]: the load's lean WebSocket client (bulk reads, frames
//!   walked in place), so the clients are not the bottleneck.
//! - [`floor`]: the minimal broadcast server (the hidden `bench-floor`).
//! - [`relay`], [`procs`]: child processes, temp dirs, /proc, status.
//! - [`disk`]: fsync latency and the machine description.
//! - [`report`]: the table and the JSON line, with the budget of issue 7.

pub mod disk;
pub mod floor;
pub mod load;
pub mod procs;
pub mod relay;
pub mod report;
pub mod scenarios;
pub mod stats;
pub mod wire;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use scenarios::Params;
use serde_json::{json, Map, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// S subscribers, one writer.
    Fanout,
    /// S subscribers, --writers writers.
    Writers,
    /// RSS at rest and with --idle-clients idle subscribers.
    Idle,
    /// Two meshed relays: live A→B, then catch-up after B was down.
    Replication,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Fanout => "fanout",
            Scenario::Writers => "writers",
            Scenario::Idle => "idle",
            Scenario::Replication => "replication",
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Target a running relay (host:port of its HTTP/WebSocket listener)
    /// instead of starting child relays. Replication needs child relays.
    #[arg(long)]
    pub url: Option<String>,
    /// With --url: subscribe at this relay instead (host:port), e.g.
    /// another hub instance of the same JetStream tier, so latency is end
    /// to end through the stream (scripts/bench-tier.sh).
    #[arg(long, requires = "url")]
    pub sub_url: Option<String>,
    /// The pid of the relay at --url, to read its RSS from /proc.
    #[arg(long, requires = "url")]
    pub pid: Option<u32>,
    /// Scenarios to run (comma-separated); all by default.
    #[arg(long, value_enum, value_delimiter = ',',
          default_values_t = [Scenario::Fanout, Scenario::Writers, Scenario::Idle, Scenario::Replication])]
    pub scenarios: Vec<Scenario>,
    /// Subscribers in the fan-out scenarios (S).
    #[arg(long, default_value_t = 50)]
    pub subscribers: usize,
    /// Changes written per fan-out run (M), about 256 bytes of JSON each.
    #[arg(long, default_value_t = 20_000)]
    pub changes: u64,
    /// Unacknowledged pushes allowed per writer (W).
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Writers in the many-writers scenario.
    #[arg(long, default_value_t = 8)]
    pub writers: usize,
    /// Idle subscribed clients in the idle scenario.
    #[arg(long, default_value_t = 1000)]
    pub idle_clients: usize,
    /// Changes written on A in the live replication run.
    #[arg(long, default_value_t = 20_000)]
    pub repl_changes: u64,
    /// Changes written on A while B is stopped, for the catch-up time.
    #[arg(long, default_value_t = 100_000)]
    pub catchup_changes: u64,
    /// Time limit per scenario, in seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Where the temp data dirs go (the fsync probe runs there too).
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// Small write+fdatasync probes for the disk's latency.
    #[arg(long, default_value_t = 1000)]
    pub fsync_samples: usize,
}

/// Run the bench; prints the table and the JSON line. Returns whether
/// every scenario ran and every exactly-once check passed.
pub async fn run(args: BenchArgs) -> Result<bool> {
    let root = match &args.data_root {
        Some(r) => r.clone(),
        None => std::env::temp_dir(),
    };
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let addr = |u: &str| -> Result<SocketAddr> {
        u.trim_start_matches("ws://")
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .trim_end_matches("/ws")
            .parse()
            .context("--url and --sub-url must be host:port, e.g. 127.0.0.1:7070")
    };
    let url = args.url.as_deref().map(addr).transpose()?;
    let sub_url = args.sub_url.as_deref().map(addr).transpose()?;
    let need = (args.idle_clients.max(args.subscribers) as u64) * 2 + 256;
    let nofile = procs::raise_nofile(need);
    let params = Params {
        root: root.clone(),
        url,
        sub_url,
        pid: args.pid,
        subscribers: args.subscribers,
        changes: args.changes,
        window: args.window,
        writers: args.writers,
        idle_clients: args.idle_clients,
        repl_changes: args.repl_changes,
        catchup_changes: args.catchup_changes,
        quiet: Duration::from_secs(5),
    };
    let probe = procs::TempDir::new(&root, "fsync")?;
    eprintln!("bench: fsync probe ({} samples)", args.fsync_samples);
    let fsync = disk::fsync_latency(&probe.0, args.fsync_samples.max(1))?;
    drop(probe);
    let machine = disk::machine(&root);
    let started = crate::engine::now_ms();
    let limit = Duration::from_secs(args.timeout.max(1));
    let mut results = Map::new();
    let mut ok = true;
    for sc in &args.scenarios {
        eprintln!("bench: {} …", sc.name());
        let fut = async {
            match sc {
                Scenario::Fanout => scenarios::fanout(&params, "fanout", 1).await,
                Scenario::Writers => scenarios::fanout(&params, "writers", args.writers).await,
                Scenario::Idle => scenarios::idle(&params).await,
                Scenario::Replication => scenarios::replication(&params).await,
            }
        };
        let v = match tokio::time::timeout(limit, fut).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                ok = false;
                json!({"error": format!("{e:#}")})
            }
            Err(_) => {
                ok = false;
                json!({"error": format!("timed out after {} s", limit.as_secs())})
            }
        };
        ok &= report::checks_pass(&v);
        results.insert(sc.name().into(), v);
    }
    let results = Value::Object(results);
    let budget = report::budget(&results, &fsync);
    let doc = json!({
        "bench": "outpost",
        "version": crate::VERSION,
        "started_ms": started,
        "machine": machine,
        "open_files_limit": nofile,
        "params": {
            "subscribers": args.subscribers, "changes": args.changes, "window": args.window,
            "writers": args.writers, "idle_clients": args.idle_clients,
            "repl_changes": args.repl_changes, "catchup_changes": args.catchup_changes,
            "change_bytes": load::CHANGE_BYTES, "durability": "immediate",
            "target": args.url.as_deref().unwrap_or("child relays"),
            "subscribe_at": args.sub_url.as_deref().or(args.url.as_deref()).unwrap_or("child relays"),
        },
        "fsync": fsync,
        "scenarios": results,
        "budget": budget,
        "ok": ok,
    });
    print!("{}", report::table(&doc));
    println!("{}", serde_json::to_string(&doc)?);
    Ok(ok)
}
