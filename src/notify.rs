//! systemd service notifications (`sd_notify(3)`) without libsystemd: one
//! datagram per state change to the socket named by `$NOTIFY_SOCKET`.
//!
//! With `Type=notify` systemd considers the relay started only when it
//! sends `READY=1`, which `main` does once the listeners are bound and the
//! store is open. With `WatchdogSec=` systemd sets `$WATCHDOG_USEC` and
//! restarts the service when no `WATCHDOG=1` arrives within that time; the
//! pings here are sent only after an engine health check (a store read and
//! a round trip through the writer queue) answers within a deadline, so a
//! wedged engine stops the pings and gets the service restarted. Outside
//! systemd (no `$NOTIFY_SOCKET`) all of this is a no-op.

use crate::engine::Engine;
use std::ffi::OsStr;
use std::future::Future;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::Duration;

/// A connection to systemd's notification socket.
pub struct Notifier {
    sock: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`; `None` when it is unset (not run by systemd
    /// as a notify service). A set but unusable value is an error.
    pub fn from_env() -> io::Result<Option<Notifier>> {
        match std::env::var_os("NOTIFY_SOCKET") {
            None => Ok(None),
            Some(v) if v.is_empty() => Ok(None),
            Some(v) => Notifier::new(&v).map(Some),
        }
    }

    /// `path` is a file system path or, starting with '@', an abstract
    /// socket name (what systemd uses by default in recent versions).
    pub fn new(path: &OsStr) -> io::Result<Notifier> {
        Ok(Notifier {
            sock: UnixDatagram::unbound()?,
            addr: socket_addr(path)?,
        })
    }

    /// Send one notification, e.g. "READY=1" or "STATUS=...".
    pub fn send(&self, state: &str) -> io::Result<()> {
        self.sock.send_to_addr(state.as_bytes(), &self.addr)?;
        Ok(())
    }
}

fn socket_addr(path: &OsStr) -> io::Result<SocketAddr> {
    let bytes = path.as_bytes();
    match bytes.first() {
        Some(b'@') => abstract_addr(&bytes[1..]),
        Some(b'/') => SocketAddr::from_pathname(path),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "NOTIFY_SOCKET must be an absolute path or start with '@'",
        )),
    }
}

#[cfg(target_os = "linux")]
fn abstract_addr(name: &[u8]) -> io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(target_os = "linux"))]
fn abstract_addr(_: &[u8]) -> io::Result<SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract sockets exist only on Linux",
    ))
}

/// The watchdog timeout systemd asks for, from the values of
/// `$WATCHDOG_USEC` and `$WATCHDOG_PID`: none when unset, zero or not a
/// number, or when `WATCHDOG_PID` names another process (the variables were
/// inherited, not meant for us).
pub fn watchdog_timeout(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if let Some(p) = pid {
        if p.trim().parse::<u32>().ok()? != own_pid {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Send `WATCHDOG=1` every `period` for as long as `check` succeeds
/// within `period`. A check that fails or hangs skips that ping (and logs
/// it), so systemd's timeout runs out while the engine stays wedged.
pub async fn watchdog_loop<F, Fut, E>(notifier: Notifier, period: Duration, check: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        match tokio::time::timeout(period, check()).await {
            Ok(Ok(())) => {
                // `systemctl status` shows the fault while it lasts.
                let msg = if std::mem::take(&mut failing) {
                    "WATCHDOG=1\nSTATUS=healthy"
                } else {
                    "WATCHDOG=1"
                };
                if let Err(e) = notifier.send(msg) {
                    tracing::warn!(error = %e, "cannot send the systemd watchdog ping");
                }
            }
            Ok(Err(e)) => {
                failing = true;
                let _ = notifier.send(&format!("STATUS=unhealthy: {e}"));
                tracing::error!(error = %e, "health check failed; withholding the watchdog ping")
            }
            Err(_) => tracing::error!(
                deadline = ?period,
                "health check timed out; withholding the watchdog ping"
            ),
        }
    }
}

/// Tell systemd the relay is ready (call once the listeners are bound and
/// the store is open). Returns the watchdog's ping loop when a watchdog is
/// set, for the app to run among its tasks; it is dropped at the stop
/// signal (systemd stops watching once the stop has begun).
pub fn service_ready(
    engine: &Arc<Engine>,
    status: &str,
) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
    let notifier = match Notifier::from_env() {
        Ok(Some(n)) => n,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(error = %e, "NOTIFY_SOCKET is unusable; not notifying systemd");
            return None;
        }
    };
    if let Err(e) = notifier.send(&format!("READY=1\nSTATUS={status}")) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
    let timeout = watchdog_timeout(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    );
    let t = timeout?;
    // Half the timeout, as sd_watchdog_enabled(3) advises: one late or
    // failed check does not yet get the service killed.
    let period = t / 2;
    tracing::info!(timeout = ?t, "systemd watchdog enabled");
    let e = engine.clone();
    Some(watchdog_loop(notifier, period, move || {
        let e = e.clone();
        async move { e.health_check().await }
    }))
}

/// Tell systemd a graceful stop has begun (no-op outside systemd).
pub fn stopping() {
    if let Ok(Some(n)) = Notifier::from_env() {
        let _ = n.send("STOPPING=1");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    #[test]
    fn watchdog_timeout_follows_systemd_rules() {
        assert_eq!(
            watchdog_timeout(Some("30000000"), None, 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            watchdog_timeout(Some("200000"), Some("7"), 7),
            Some(Duration::from_millis(200))
        );
        // Inherited from a parent service: not ours.
        assert_eq!(watchdog_timeout(Some("200000"), Some("8"), 7), None);
        assert_eq!(watchdog_timeout(Some("200000"), Some("x"), 7), None);
        assert_eq!(watchdog_timeout(Some("0"), None, 7), None);
        assert_eq!(watchdog_timeout(Some("soon"), None, 7), None);
        assert_eq!(watchdog_timeout(None, None, 7), None);
    }

    #[test]
    fn relative_socket_paths_are_refused() {
        assert!(Notifier::new(&OsString::from("notify.sock")).is_err());
        assert!(Notifier::new(&OsString::from("")).is_err());
    }

    fn recv_all(sock: &UnixDatagram) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 512];
        while let Ok(n) = sock.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }

    #[test]
    fn sends_to_path_and_abstract_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        server.set_nonblocking(true).unwrap();
        Notifier::new(path.as_os_str())
            .unwrap()
            .send("READY=1")
            .unwrap();
        assert_eq!(recv_all(&server), vec!["READY=1"]);

        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let name = format!("outpost-notify-unit-{}", std::process::id());
            let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
            let server = UnixDatagram::bind_addr(&addr).unwrap();
            server.set_nonblocking(true).unwrap();
            Notifier::new(&OsString::from(format!("@{name}")))
                .unwrap()
                .send("WATCHDOG=1")
                .unwrap();
            assert_eq!(recv_all(&server), vec!["WATCHDOG=1"]);
        }
    }

    #[tokio::test]
    async fn watchdog_pings_only_while_the_check_answers_in_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        server.set_nonblocking(true).unwrap();
        let period = Duration::from_millis(20);

        // Healthy: pings flow.
        let n = Notifier::new(path.as_os_str()).unwrap();
        let healthy = tokio::spawn(watchdog_loop(n, period, || async { Ok::<(), String>(()) }));
        tokio::time::sleep(Duration::from_millis(200)).await;
        healthy.abort();
        let _ = healthy.await;
        let got = recv_all(&server);
        assert!(got.len() >= 3, "expected several pings, got {got:?}");
        assert!(got.iter().all(|m| m == "WATCHDOG=1"), "{got:?}");

        // A check that never answers (a wedged engine) and one that fails:
        // no pings at all; the failing one says why in STATUS.
        let n = Notifier::new(path.as_os_str()).unwrap();
        let wedged = tokio::spawn(watchdog_loop(n, period, || {
            std::future::pending::<Result<(), String>>()
        }));
        let n = Notifier::new(path.as_os_str()).unwrap();
        let failing = tokio::spawn(watchdog_loop(n, period, || async {
            Err::<(), String>("no space left on device".into())
        }));
        tokio::time::sleep(Duration::from_millis(200)).await;
        wedged.abort();
        failing.abort();
        let got = recv_all(&server);
        assert!(!got.is_empty(), "the failure is reported");
        assert!(
            got.iter()
                .all(|m| m == "STATUS=unhealthy: no space left on device"),
            "{got:?}"
        );
    }
}
