//! systemd notifications from the real binary: the test binds the socket
//! that `$NOTIFY_SOCKET` names, as systemd would, and reads what arrives.

mod common;

use common::*;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

/// Start `outpost serve` on a free loopback port with extra environment.
fn spawn_with_env(data: &std::path::Path, env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outpost"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc::spawn_cmd(cmd)
}

/// Datagrams received within `wait` (stops early once `enough` says so).
fn collect(sock: &UnixDatagram, wait: Duration, enough: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !enough(&got) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        sock.set_read_timeout(Some(left)).unwrap();
        match sock.recv(&mut buf) {
            Ok(n) => got.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => break,
        }
    }
    got
}

fn count(msgs: &[String], line: &str) -> usize {
    msgs.iter().filter(|m| m.lines().any(|l| l == line)).count()
}

#[tokio::test]
async fn ready_after_bind_then_watchdog_pings_then_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let mut relay = spawn_with_env(
        &dir.path().join("data"),
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );

    let first = collect(&sock, Duration::from_secs(10), |g| !g.is_empty());
    assert_eq!(first.len(), 1, "no notification arrived");
    let ready: Vec<&str> = first[0].lines().collect();
    assert_eq!(ready[0], "READY=1", "{first:?}");
    assert_eq!(
        ready[1],
        format!("STATUS=listening on {}", relay.addr),
        "{first:?}"
    );
    // READY means serving: the listener answers at once.
    let (status, _) = http_get(relay.addr, "/healthz").await;
    assert_eq!(status, 200);

    // WATCHDOG_USEC=200ms: a ping every 100 ms after a health check.
    let pings = collect(&sock, Duration::from_secs(10), |g| {
        count(g, "WATCHDOG=1") >= 3
    });
    assert!(count(&pings, "WATCHDOG=1") >= 3, "{pings:?}");
    assert_eq!(count(&pings, "READY=1"), 0, "READY is sent once: {pings:?}");

    let status = relay.terminate().expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    let rest = collect(&sock, Duration::from_millis(500), |g| {
        count(g, "STOPPING=1") > 0
    });
    assert_eq!(count(&rest, "STOPPING=1"), 1, "{rest:?}");
}

#[tokio::test]
async fn abstract_socket_and_a_watchdog_meant_for_another_process() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("outpost-notify-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // WATCHDOG_PID names another process (inherited variables): no pings.
    let mut relay = spawn_with_env(
        dir.path(),
        &[
            ("NOTIFY_SOCKET", &format!("@{name}")),
            ("WATCHDOG_USEC", "100000"),
            ("WATCHDOG_PID", "1"),
        ],
    );
    let got = collect(&sock, Duration::from_secs(10), |g| !g.is_empty());
    assert_eq!(count(&got, "READY=1"), 1, "{got:?}");
    let more = collect(&sock, Duration::from_millis(600), |_| false);
    assert_eq!(count(&more, "WATCHDOG=1"), 0, "{more:?}");
    assert!(relay.terminate().expect("exits").success());
}
