//! The scenarios: fan-out (one or many writers) against the floor, idle
//! connections, and replication between two meshed relays.

use super::floor;
use super::load::{self, Load, LoadResult, Proto, Target};
use super::procs::{ChildProc, TempDir, Usage};
use super::relay::{MeshOpts, Owned, Relay};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What the scenarios need from the command line.
#[derive(Clone, Debug)]
pub struct Params {
    pub root: PathBuf,
    pub url: Option<SocketAddr>,
    /// Subscribe here instead of at `url` (another instance of a tier).
    pub sub_url: Option<SocketAddr>,
    pub pid: Option<u32>,
    pub subscribers: usize,
    pub changes: u64,
    pub window: usize,
    pub writers: usize,
    pub idle_clients: usize,
    pub repl_changes: u64,
    pub catchup_changes: u64,
    pub quiet: Duration,
}

/// A space name no earlier run on the same relay used, nor a concurrent
/// bench process (scripts/bench-tier.sh runs three at once).
fn fresh_space(tag: &str) -> String {
    let ms = crate::engine::now_ms();
    format!("bench-{tag}-{ms}-{}", std::process::id())
}

/// The relay under test: the one at `--url`, or a fresh child.
fn relay_for(p: &Params, tag: &str) -> Result<(Relay, Option<Owned>)> {
    match p.url {
        Some(addr) => Ok((Relay::external(addr, p.pid), None)),
        None => {
            let owned = Owned::new(&p.root, tag, MeshOpts::default())?;
            let r = Relay::external(owned.relay.addr, owned.relay.pid);
            Ok((r, Some(owned)))
        }
    }
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

/// Fan-out with `writers` writers: the relay, then the floor under the
/// same load, and their ratios.
pub async fn fanout(p: &Params, tag: &str, writers: usize) -> Result<Value> {
    let load = Load {
        subscribers: p.subscribers,
        writers,
        changes: p.changes,
        window: p.window,
        quiet: p.quiet,
    };
    let (relay, owned) = relay_for(p, tag)?;
    let rest_kib = relay.rss_kib();
    let target = Target {
        proto: Proto::Native {
            space: fresh_space(tag),
        },
        write_url: relay.ws_url(),
        sub_url: p
            .sub_url
            .map_or_else(|| relay.ws_url(), |a| format!("ws://{a}/ws")),
    };
    let before = Usage::of(relay.pid);
    let r = load::run(&target, load).await.context("relay run")?;
    let used = before.zip(Usage::of(relay.pid)).map(|(a, b)| a.until(b));
    let (rss_kib, hwm_kib) = (relay.rss_kib(), relay.hwm_kib());
    // The run's writes include what it left to write once it ended: the
    // checkpoint that follows its last group writes the data file's share
    // of up to 4 MiB of logged changes, which a count stopped at the last
    // ack missed (it reported 810-863 B per change at M=20000; counted
    // through the checkpoint, 1038-1063 B, and 1076-1099 B at M=100000).
    tokio::time::sleep(SETTLE).await;
    let settled = Usage::of(relay.pid);
    let written = before.zip(settled).map(|(a, b)| a.until(b).written);
    let idle_written = idle_writes(settled, relay.pid).await;
    drop(owned);
    let (f, floor_used) = run_floor(p, tag, load).await.context("floor run")?;
    let relay_cpu = used.map(|u| per(u.cpu_us, r.deliveries));
    let floor_cpu = floor_used.map(|u| per(u.cpu_us, f.deliveries));
    Ok(json!({
        "relay": r,
        "relay_rss_kib": {"before": rest_kib, "after": rss_kib, "peak": hwm_kib},
        "relay_usage": used.map(|u| json!({
            "cpu_us": u.cpu_us,
            "cpu_us_per_delivery": relay_cpu,
            "written_bytes": written,
            "written_bytes_per_change": written.map(|w| per(w, r.acked)),
            "idle_written_bytes": idle_written,
        })),
        "floor": f,
        "floor_usage": floor_used.map(|u| json!({
            "cpu_us": u.cpu_us,
            "cpu_us_per_delivery": floor_cpu,
        })),
        "ratio": {
            "deliveries_per_s": ratio(r.deliveries_per_s, f.deliveries_per_s),
            "acked_writes_per_s": ratio(r.acked_writes_per_s, f.acked_writes_per_s),
            "e2e_p99": ratio(r.e2e.p99_us as f64, f.e2e.p99_us as f64),
            "cpu_us_per_delivery": relay_cpu.zip(floor_cpu).and_then(|(a, b)| ratio(a, b)),
        },
    }))
}

fn per(total: u64, n: u64) -> f64 {
    total as f64 / n.max(1) as f64
}

/// How long the relay is left alone after a run before its idle writes
/// are counted: background flushes of the run (relaxed durability's 1 s
/// flush, a log checkpoint) are allowed to finish first, and count as the
/// run's writes.
const SETTLE: Duration = Duration::from_secs(2);
/// How long an idle relay is watched for disk writes.
const IDLE_WATCH: Duration = Duration::from_secs(3);

/// Bytes the relay wrote while idle (its clients connected or gone, no
/// writes): an idle relay should write nothing (SD-card wear).
async fn idle_writes(settled: Option<Usage>, pid: Option<u32>) -> Option<u64> {
    let a = settled?;
    tokio::time::sleep(IDLE_WATCH).await;
    Some(a.until(Usage::of(pid)?).written)
}

async fn run_floor(p: &Params, tag: &str, load: Load) -> Result<(LoadResult, Option<Usage>)> {
    let dir = TempDir::new(&p.root, &format!("floor-{tag}"))?;
    let args = vec![
        "bench-floor".to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--capacity".into(),
        load.changes.max(4096).to_string(),
    ];
    let child = ChildProc::spawn(
        &args,
        "floor",
        &dir.0.join("floor.log"),
        Duration::from_secs(30),
    )?;
    let target = Target {
        proto: Proto::Floor,
        write_url: format!("ws://{}/pub", child.addr),
        sub_url: format!("ws://{}/sub", child.addr),
    };
    let before = Usage::of(Some(child.pid()));
    let r = load::run(&target, load).await?;
    let used = before
        .zip(Usage::of(Some(child.pid())))
        .map(|(a, b)| a.until(b));
    drop(child);
    Ok((r, used))
}

/// The floor server itself (`outpost bench-floor`).
pub async fn serve_floor(listen: &str, capacity: usize) -> Result<()> {
    floor::serve(listen, capacity).await
}

/// Relay RSS at rest and with `idle_clients` connected, subscribed, idle.
pub async fn idle(p: &Params) -> Result<Value> {
    let (relay, _owned) = relay_for(p, "idle")?;
    if relay.pid.is_none() {
        bail!("RSS needs the relay's pid: run without --url, or give --pid");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rest_kib = relay.rss_kib();
    let target = Target {
        proto: Proto::Native {
            space: fresh_space("idle"),
        },
        write_url: relay.ws_url(),
        sub_url: relay.ws_url(),
    };
    let t = Instant::now();
    let clients = load::open_in_waves(p.idle_clients, &target, |t| async move {
        load::open_subscriber(&t).await
    })
    .await?;
    let connect_s = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_kib = relay.rss_kib();
    let status = relay.status().await?;
    let per_client = match (rest_kib, idle_kib) {
        (Some(a), Some(b)) if !clients.is_empty() => {
            Some(b.saturating_sub(a) as f64 / clients.len() as f64)
        }
        _ => None,
    };
    drop(clients);
    Ok(json!({
        "clients": p.idle_clients,
        "clients_seen_by_relay": status["clients"],
        "connect_s": connect_s,
        "rss_rest_kib": rest_kib,
        "rss_idle_kib": idle_kib,
        "kib_per_client": per_client,
    }))
}

/// Two relays meshed on loopback: live throughput and latency from writes
/// on A to a subscriber on B, then catch-up of changes written on A while
/// B was stopped.
pub async fn replication(p: &Params) -> Result<Value> {
    if p.url.is_some() {
        bail!("replication starts its own two relays; run it without --url");
    }
    let mesh = MeshOpts {
        enabled: true,
        peers: vec![],
    };
    let a = Owned::new(&p.root, "repl-a", mesh.clone())?;
    let a_mesh = a.relay.mesh_addr().await?;
    let mut b = Owned::new(
        &p.root,
        "repl-b",
        MeshOpts {
            enabled: true,
            peers: vec![a_mesh],
        },
    )?;
    let t = Instant::now();
    wait_peered(&a.relay, Duration::from_secs(30)).await?;
    let connect_s = t.elapsed().as_secs_f64();

    let space = fresh_space("repl");
    let target = Target {
        proto: Proto::Native { space },
        write_url: a.relay.ws_url(),
        sub_url: b.relay.ws_url(),
    };
    let live = load::run(
        &target,
        Load {
            subscribers: 1,
            writers: 1,
            changes: p.repl_changes,
            window: p.window,
            quiet: p.quiet.max(Duration::from_secs(10)),
        },
    )
    .await
    .context("live replication run")?;

    // Catch-up: B down, A takes the writes, B back up.
    b.relay.stop();
    let t = Instant::now();
    load::bulk_write(
        &a.relay.ws_url(),
        &fresh_space("catchup"),
        p.catchup_changes,
        100,
    )
    .await
    .context("writing the catch-up backlog on A")?;
    let write_s = t.elapsed().as_secs_f64();
    let want = a.relay.status().await?["version_vector"].clone();
    let t = Instant::now();
    b.relay.start()?;
    let started_s = t.elapsed().as_secs_f64();
    let deadline = t + Duration::from_secs(600);
    loop {
        if let Ok(st) = b.relay.status().await {
            if covers(&st["version_vector"], &want) {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!("B did not catch up within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let catchup_s = t.elapsed().as_secs_f64();
    Ok(json!({
        "mesh_connect_s": connect_s,
        "live": {
            "changes": live.changes,
            "changes_per_s": live.deliveries_per_s,
            "acked_writes_per_s": live.acked_writes_per_s,
            "a_to_b": live.e2e,
            "ack": live.ack,
            "check": live.check,
        },
        "catchup": {
            "changes": p.catchup_changes,
            "write_on_a_s": write_s,
            "b_start_s": started_s,
            "catchup_s": catchup_s,
            "changes_per_s": if catchup_s > 0.0 { p.catchup_changes as f64 / catchup_s } else { 0.0 },
        },
    }))
}

/// Whether version vector `have` holds everything `want` does (every
/// origin of `want` at least as far).
fn covers(have: &Value, want: &Value) -> bool {
    want.as_object().is_some_and(|w| {
        w.iter()
            .all(|(origin, seq)| have[origin].as_u64() >= seq.as_u64())
    })
}

/// Wait until `relay` lists a mesh peer that said hello.
async fn wait_peered(relay: &Relay, wait: Duration) -> Result<()> {
    let until = Instant::now() + wait;
    loop {
        let st = relay.status().await?;
        let up = st["peers"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| !p["node_id"].is_null()));
        if up {
            return Ok(());
        }
        if Instant::now() > until {
            bail!("the two relays did not connect within {wait:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
