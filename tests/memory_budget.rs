//! Issue 12, memory: a subscriber that never reads, while another client
//! writes large changes, keeps the relay's RSS (from /proc) under its queue
//! budget; the subscriber is dropped and its frames freed; and RSS returns
//! near its baseline once it leaves. And the relay runs with transparent
//! huge pages off, which kept its allocator's RSS within the Pi budgets.

mod common;

use common::{Client, Proc};
use serde_json::json;
use std::time::{Duration, Instant};

/// ~900 KB changes, each under the default 1 MiB frame limit.
const PAD: usize = 900 * 1000;
const CHANGES: u64 = 60; // ~54 MB of change data past the stalled reader
/// `server.max_queued_mb`; before the byte bounds the relay held about two
/// copies of every change for the stalled reader (~100 MiB here).
const BUDGET_MB: u64 = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_never_reading_subscriber_stays_under_the_memory_budget() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("outpost.toml");
    std::fs::write(
        &cfg,
        // The reader stalls for the whole run (which can pass the default
        // write and idle timeouts on a loaded machine): keep it connected, this
        // test is about the queue budget.
        format!(
            "[server]\nqueue_mb = 8\nmax_queued_mb = {BUDGET_MB}\nwrite_timeout = \"1h\"\nidle_timeout = \"1h\"\n\
             [storage]\ncache_mb = 2\n"
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let relay = Proc::serve(&cfg, &data);
    let addr = relay.addr;

    let mut w = Client::native(addr).await;
    // Warm up the write path (buffers, the store's first pages) so the
    // baseline is a relay that has already handled one large change.
    let pad = "x".repeat(PAD);
    w.send(json!({"type": "push", "rid": "warm", "space": "warm",
                  "changes": [{"collection": "c", "id": "w", "op": "put", "fields": {"pad": pad}}]}))
        .await;
    w.until("ack").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = relay.rss_kib();

    let mut slow = Client::native(addr).await;
    slow.subscribe("feed", 0).await;
    // From here on `slow` reads nothing.

    let started = Instant::now();
    let mut peak = baseline;
    for i in 0..CHANGES {
        w.send(json!({"type": "push", "rid": i, "space": "feed",
                      "changes": [{"collection": "c", "id": format!("e{i}"), "op": "put",
                                   "fields": {"pad": pad, "n": i}}]}))
            .await;
        let (_, ack) = w.until("ack").await;
        assert_eq!(ack["rid"], i, "{ack}");
        peak = peak.max(relay.rss_kib());
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "writes took too long"
        );
    }
    let grown = peak.saturating_sub(baseline) / 1024;
    eprintln!(
        "relay RSS: baseline {baseline} KiB, peak {peak} KiB (+{grown} MiB) while {} MB went past a never-reading subscriber ({:?})",
        CHANGES * PAD as u64 / 1_000_000,
        started.elapsed()
    );
    assert!(
        grown < BUDGET_MB + 16,
        "relay RSS grew by {grown} MiB, over the {BUDGET_MB} MiB budget plus slack"
    );

    // When it reads at last: what was in flight, then the resync notice
    // naming the last change it was given (it resumes from the log).
    let mut last = 0;
    let since = loop {
        let v = slow.recv().await;
        match v["type"].as_str() {
            Some("change") => last = v["seq"].as_u64().unwrap(),
            Some("resync") => {
                assert_eq!(v["reason"], "queue_full", "{v}");
                break v["since"].as_u64().unwrap();
            }
            _ => panic!("unexpected frame {v}"),
        }
    };
    assert_eq!(since, last);
    assert!(since < CHANGES, "dropped before the end: {since}");

    // The subscriber leaves: its frames are freed and RSS comes back down.
    drop(slow);
    let mut after = relay.rss_kib();
    let deadline = Instant::now() + Duration::from_secs(10);
    while after > baseline + 16 * 1024 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        after = relay.rss_kib();
    }
    eprintln!("relay RSS after the subscriber left: {after} KiB");
    assert!(
        after <= baseline + 16 * 1024,
        "RSS stayed at {after} KiB after the subscriber left (baseline {baseline} KiB)"
    );
    // Still serving.
    let ack = w.put("feed", "after", json!({"n": 1})).await;
    assert_eq!(ack["type"], "ack");
}

/// src/main.rs turns THP off (`PR_SET_THP_DISABLE`): with them on, mimalloc's
/// aligned regions were backed by 2 MiB pages and the relay's RSS doubled at
/// rest and tripled with 1,000 idle clients (docs/performance.md). The kernel
/// reports the flag in /proc/PID/status (Linux 5.0+; this test needs it).
#[test]
fn the_relay_runs_with_transparent_huge_pages_off() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let relay = Proc::serve_defaults(&data);
    let status = std::fs::read_to_string(format!("/proc/{}/status", relay.pid())).unwrap();
    let thp = status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .expect("THP_enabled in /proc/PID/status (Linux 5.0+)");
    assert_eq!(
        thp.trim(),
        "0",
        "the relay runs with transparent huge pages on"
    );
}
