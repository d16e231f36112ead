//! Child processes (relays, the floor server), temp dirs, /proc readings
//! and a minimal HTTP GET for `/v1/status`.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(root: &Path, tag: &str) -> Result<TempDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = root.join(format!(
            "outpost-bench-{}-{tag}-{nanos:x}",
            std::process::id()
        ));
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (by pid) when dropped.
pub struct ChildProc {
    child: Child,
    /// The address from its "… listening on ADDR" line.
    pub addr: SocketAddr,
}

impl ChildProc {
    /// Run the current executable with `args` and wait (up to `wait`) for
    /// its first stdout line, `"<prefix> listening on ADDR"`. Stderr goes to
    /// `log` so a failed start can be explained.
    pub fn spawn(args: &[String], prefix: &str, log: &Path, wait: Duration) -> Result<ChildProc> {
        let exe = std::env::current_exe().context("locating the outpost binary")?;
        let err =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err);
        // If the bench dies (Ctrl-C, a crash), its children must not outlive it.
        // SAFETY: prctl is async-signal-safe; nothing else runs in the hook.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().context("spawning a child outpost")?;
        let stdout = child.stdout.take().context("child stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let r = BufReader::new(stdout).read_line(&mut line).map(|_| line);
            let _ = tx.send(r);
        });
        let mut proc = ChildProc {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let line = match rx.recv_timeout(wait) {
            Ok(Ok(l)) => l,
            _ => bail!(
                "{prefix} did not start within {wait:?}; its log: {}",
                tail(log)
            ),
        };
        let want = format!("{prefix} listening on ");
        proc.addr = line
            .trim()
            .strip_prefix(&want)
            .ok_or_else(|| anyhow!("unexpected first line {line:?}; log: {}", tail(log)))?
            .parse()
            .context("parsing the listen address")?;
        Ok(proc)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last lines of a log file, for error messages.
pub fn tail(path: &Path) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`).
pub fn proc_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// GET a JSON document over plain HTTP/1.1 (the relay's `/v1/status`).
pub async fn get_json(addr: SocketAddr, path: &str) -> Result<Value> {
    let fut = async {
        let mut s = TcpStream::connect(addr).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| anyhow!("GET {path} timed out"))??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("GET {path}: no HTTP body"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
    }
    // One JSON object; taking it from the first brace to the last also
    // reads a single-chunk chunked body.
    let (a, b) = (body.find('{'), body.rfind('}'));
    match (a, b) {
        (Some(a), Some(b)) if a < b => Ok(serde_json::from_str(&body[a..=b])?),
        _ => bail!("GET {path}: body is not a JSON object"),
    }
}

/// Raise the soft open-files limit to at least `want` (up to the hard
/// limit), so a thousand client sockets fit. Children inherit it.
// The casts are no-ops on 64-bit targets but not on 32-bit glibc (armv7).
#[allow(clippy::unnecessary_cast)]
pub fn raise_nofile(want: u64) -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid, owned struct.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        // rlim_t is 32 bits on 32-bit glibc targets (armv7): compare in u64.
        let (cur, max) = (r.rlim_cur as u64, r.rlim_max as u64);
        if cur < want {
            let new = libc::rlimit {
                rlim_cur: want.min(max) as libc::rlim_t,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &new) == 0 {
                return new.rlim_cur as u64;
            }
        }
        cur
    }
}

/// CPU time (user + system) the process `pid` has used so far, in µs,
/// from `/proc/<pid>/stat` (all its threads).
pub fn cpu_us(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count from its ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are 11, 12.
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf with a valid name has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Some(ticks * 1_000_000 / hz)
}

/// Bytes the process `pid` caused to be written to storage so far
/// (`write_bytes` of `/proc/<pid>/io`: pages it dirtied, counted when
/// dirtied; the file system's journal, written by the kernel, is not
/// included).
pub fn written_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// CPU and disk writes of a process, read before and after a measured
/// stretch.
#[derive(Clone, Copy, Debug)]
pub struct Usage {
    pub cpu_us: u64,
    pub written: u64,
}

impl Usage {
    pub fn of(pid: Option<u32>) -> Option<Usage> {
        let pid = pid?;
        Some(Usage {
            cpu_us: cpu_us(pid)?,
            written: written_bytes(pid)?,
        })
    }

    /// What was used between `self` and `later`.
    pub fn until(self, later: Usage) -> Usage {
        Usage {
            cpu_us: later.cpu_us.saturating_sub(self.cpu_us),
            written: later.written.saturating_sub(self.written),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_cpu_and_writes() {
        let me = std::process::id();
        let before = Usage::of(Some(me)).expect("/proc readable");
        // Burn a little CPU and dirty a file, so both counters can move.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, vec![7u8; 1 << 20]).unwrap();
        std::fs::File::open(&p).unwrap().sync_all().unwrap();
        let used = before.until(Usage::of(Some(me)).unwrap());
        assert!(used.cpu_us > 0, "{used:?}");
        // tmpfs does not count writes; a disk-backed temp dir does.
        let _ = used.written;
    }
}
