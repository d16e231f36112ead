//! The disk's own durability cost: small write + fdatasync, the floor for
//! an `immediate`-durability ack.

use super::stats::Latency;
use anyhow::{Context, Result};
use serde::Serialize;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

/// `n` appends of 256 bytes, each followed by fdatasync, in a file under
/// `dir` (removed afterwards).
pub fn fsync_latency(dir: &Path, n: usize) -> Result<Latency> {
    let path = dir.join("fsync-probe");
    let mut f =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let buf = [b'x'; 256];
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f.write_all(&buf)?;
        f.sync_data()?;
        samples.push(t.elapsed().as_micros() as u64);
    }
    drop(f);
    let _ = std::fs::remove_file(&path);
    Ok(Latency::of(&mut samples))
}

/// What the bench ran on.
#[derive(Debug, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub mem_total_kib: u64,
    /// The filesystem holding the data dirs: device, type, mount point.
    pub disk: String,
    pub kernel: String,
}

pub fn machine(data: &Path) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|v| v.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let mem_total_kib = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    Machine {
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        cpu,
        mem_total_kib,
        disk: disk_of(data),
        kernel,
    }
}

/// The mount (longest mount-point prefix) holding `path`, from /proc/mounts.
fn disk_of(path: &Path) -> String {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut best: Option<(usize, String)> = None;
    for l in mounts.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 3 || !path.starts_with(f[1]) {
            continue;
        }
        if best.as_ref().is_none_or(|(len, _)| f[1].len() >= *len) {
            let dev = f[0];
            let rot = dev
                .strip_prefix("/dev/")
                .and_then(|d| {
                    std::fs::read_to_string(format!("/sys/block/{d}/queue/rotational")).ok()
                })
                .map(|r| {
                    if r.trim() == "1" {
                        ", rotational"
                    } else {
                        ", non-rotational"
                    }
                })
                .unwrap_or("");
            best = Some((f[1].len(), format!("{dev} ({}{rot}) on {}", f[2], f[1])));
        }
    }
    best.map(|b| b.1).unwrap_or_else(|| "unknown".into())
}
