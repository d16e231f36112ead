//! Logs as journald sees them: the real binary with stderr on a pipe.

mod common;

use common::*;
use std::io::Read;
use std::process::{Command, Stdio};

/// Run `outpost serve` with stderr piped through one request and a SIGTERM;
/// returns everything it logged.
async fn logs_of(extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outpost"));
    cmd.args(extra)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path())
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn outpost");
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).unwrap();
        s
    });
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr = line
        .trim()
        .strip_prefix("outpost listening on ")
        .expect("listening line")
        .parse()
        .unwrap();
    let mut relay = Proc { child, addr };
    let mut c = Client::native(addr).await;
    let ack = c.put("home", "n1", serde_json::json!({"a": 1})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    drop(c);
    assert!(relay.terminate().expect("exits").success());
    reader.join().unwrap()
}

#[tokio::test]
async fn text_logs_on_a_pipe_are_plain_lines() {
    let err = logs_of(&[]).await;
    assert!(!err.contains('\x1b'), "ANSI escape in piped logs: {err:?}");
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("INFO") && l.contains("outpost listening")),
        "{err}"
    );
    assert!(lines.iter().any(|l| l.contains("stopped cleanly")), "{err}");
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let err = logs_of(&["--log-format", "json"]).await;
    assert!(!err.contains('\x1b'), "{err:?}");
    let mut messages = Vec::new();
    for line in err.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
        assert!(v["timestamp"].is_string(), "{line}");
        assert!(v["level"].is_string(), "{line}");
        messages.push(v["fields"]["message"].as_str().unwrap_or("").to_string());
    }
    let listening = err
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["fields"]["message"] == "outpost listening")
        .unwrap_or_else(|| panic!("{messages:?}"));
    assert_eq!(listening["level"], "INFO");
    assert!(listening["fields"]["addr"].is_string(), "{listening}");
    assert!(
        messages.iter().any(|m| m == "stopped cleanly"),
        "{messages:?}"
    );
}
