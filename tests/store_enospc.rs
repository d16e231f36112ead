//! Issue 12, storage: a real ENOSPC during a group commit, on a small
//! tmpfs, below `storage.min_free_mb`'s guard. Writes fail with the real
//! cause, `/healthz` reports the fault, and once space is freed the store
//! reopens itself and writes resume without a restart; every acked write
//! is still there (also after a restart).
//!
//! Needs root (it mounts a tmpfs); skipped with a message otherwise. CI
//! runs as root.

mod common;

use common::{http_get, Client, Proc};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmpfs mounted for the test, unmounted when dropped.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, size: &str) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("run mount")
            .success();
        assert!(ok, "mount a tmpfs on {}", at.display());
        Mount(at.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn free_bytes(dir: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid NUL-terminated path and out-pointer.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    s.f_bavail as u64 * s.f_frsize as u64
}

/// Push one put of `pad` bytes; the ack or error frame.
async fn put(c: &mut Client, id: &str, pad: usize) -> Value {
    c.send(json!({"type": "push", "rid": id, "space": "s",
                  "changes": [{"collection": "c", "id": id, "op": "put",
                               "fields": {"pad": "x".repeat(pad), "id": id}}]}))
        .await;
    loop {
        let v = c.recv().await;
        if v["rid"] == id && (v["type"] == "ack" || v["type"] == "error") {
            return v;
        }
    }
}

/// Ids of every entity whose change the space's log holds.
async fn ids_in(addr: std::net::SocketAddr) -> Vec<String> {
    let mut c = Client::native(addr).await;
    let (frames, _) = c.subscribe("s", 0).await;
    let mut ids: Vec<String> = frames
        .iter()
        .filter(|v| v["type"] == "change")
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enospc_is_reported_and_writes_resume_once_space_is_freed() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: store_enospc needs root to mount a tmpfs (CI runs as root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    let _mount = Mount::tmpfs(&mnt, "12m");
    let cfg = dir.path().join("outpost.toml");
    // The guard is too low to catch what comes: ENOSPC reaches redb.
    std::fs::write(&cfg, "[storage]\nmin_free_mb = 1\ncache_mb = 2\n").unwrap();
    let data = mnt.join("data");
    let mut relay = Proc::serve(&cfg, &data);
    let addr = relay.addr;
    let mut w = Client::native(addr).await;

    let mut acked = Vec::new();
    for i in 0..3 {
        let id = format!("before{i}");
        let v = put(&mut w, &id, 50_000).await;
        assert_eq!(v["type"], "ack", "{v}");
        acked.push(id);
    }

    // Fill the file system to ~1.3 MB free: above the 1 MiB guard, below
    // what a 900 KB change needs (the entity and the log entry).
    let filler = mnt.join("filler");
    let room = free_bytes(&mnt).saturating_sub(1_300_000);
    std::fs::write(&filler, vec![7u8; room as usize]).unwrap();
    assert!(free_bytes(&mnt) >= 1 << 20, "above the guard");

    let v = put(&mut w, "big", 900_000).await;
    assert_eq!(v["type"], "error", "the write cannot fit: {v}");
    assert_eq!(v["code"], 507, "{v}");
    assert_eq!(v["reason"], "disk_full", "{v}");
    let msg = v["message"].as_str().unwrap();
    assert!(msg.contains("no space left on device"), "{msg}");
    assert!(!msg.contains("shutting down"), "{msg}");

    // The store is faulted: health says so, and later writes are refused
    // with the same cause (not "shutting down").
    let (code, body) = http_get(addr, "/healthz").await;
    assert_eq!(code, 503, "{body}");
    let v = put(&mut w, "small", 10).await;
    assert_eq!(v["type"], "error", "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("no space left on device"),
        "{v}"
    );

    // Free the space: no restart, the relay recovers by itself.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (code, _) = http_get(addr, "/healthz").await;
        if code == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "healthz still {code}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 0..3 {
        let id = format!("after{i}");
        let v = put(&mut w, &id, 50_000).await;
        assert_eq!(v["type"], "ack", "writes resume: {v}");
        acked.push(id);
    }
    acked.sort();
    let ids = ids_in(addr).await;
    for id in &acked {
        assert!(ids.contains(id), "acked {id} is missing from {ids:?}");
    }

    // And the file itself holds them: restart on the same data.
    drop(w);
    assert!(relay.terminate().is_some_and(|s| s.success()));
    let relay = Proc::serve(&cfg, &data);
    let ids = ids_in(relay.addr).await;
    for id in &acked {
        assert!(ids.contains(id), "after restart: acked {id} is missing");
    }
    drop(relay);
}
