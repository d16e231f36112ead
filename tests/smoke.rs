//! Start, serve, push, receive, restart: the smoke test of a built binary.
//!
//! By default it runs this build's binary. scripts/cross-test.sh points
//! `OUTPOST_SMOKE_BIN` at a cross-built ARM binary instead, which the kernel
//! runs under qemu-user (binfmt_misc), so the same checks prove the ARM
//! build serves real clients.

mod common;

use common::*;
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn spawn(bin: &str, data: &Path) -> Proc {
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .env_remove("NOTIFY_SOCKET");
    Proc::spawn_cmd(cmd)
}

#[tokio::test]
async fn start_serve_push_receive_restart() {
    let bin = std::env::var("OUTPOST_SMOKE_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_outpost").to_string());
    let dir = tempfile::tempdir().unwrap();
    let mut relay = spawn(&bin, dir.path());

    let (status, body) = http_get(relay.addr, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    // A subscriber, then a writer on another connection.
    let mut sub = Client::native(relay.addr).await;
    sub.send(json!({"type": "subscribe", "rid": 1, "space": "smoke"}))
        .await;
    let (_, synced) = sub.until("synced").await;
    assert_eq!(synced["seq"], 0, "{synced}");
    let mut writer = Client::native(relay.addr).await;
    let ack = writer.put("smoke", "n1", json!({"title": "hello"})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let (_, change) = sub.until("change").await;
    assert_eq!(change["id"], "n1", "{change}");
    assert_eq!(change["fields"]["title"], "hello", "{change}");
    drop((sub, writer));

    // A clean stop, and the write is still there after a restart.
    assert!(relay.terminate().expect("exits after SIGTERM").success());
    let relay = spawn(&bin, dir.path());
    let mut c = Client::native(relay.addr).await;
    c.send(json!({"type": "get", "rid": 2, "space": "smoke", "collection": "notes", "id": "n1"}))
        .await;
    let got = tokio::time::timeout(Duration::from_secs(30), c.until("entity"))
        .await
        .expect("entity reply")
        .1;
    assert_eq!(got["fields"]["title"], "hello", "{got}");
}
