//! A subscriber that stops reading: the relay's memory stays within its
//! queue bound, the subscriber is told to resync (and can, exactly), and
//! the other subscribers get everything on time.

mod common;

use common::{Client, Proc, WAIT};
use serde_json::json;
use std::time::Duration;

const PUSHES: u64 = 320;
const PER_PUSH: u64 = 25;
const TOTAL: u64 = PUSHES * PER_PUSH; // 8000 changes of ~4 KiB: ~32 MiB of frames

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_is_bounded_and_told_to_resync() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("outpost.toml");
    std::fs::write(
        &cfg,
        // The stalled reader must outlive the run even on a loaded machine:
        // no write or idle timeout in the way (tests/conn_limits.rs and
        // tests/hardening.rs test those).
        "[server]\nqueue_depth = 256\nwrite_timeout = \"1h\"\nidle_timeout = \"1h\"\n[storage]\ncache_mb = 2\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let relay = Proc::serve(&cfg, &data);
    let addr = relay.addr;

    let mut slow = Client::native(addr).await;
    slow.subscribe("feed", 0).await;
    // From here on `slow` reads nothing until the writes are done.

    let mut fast = Client::native(addr).await;
    fast.subscribe("feed", 0).await;
    let reader = tokio::spawn(async move {
        let mut next = 1;
        while next <= TOTAL {
            // Generous: CI machines may be loaded; a stall here is a failure.
            let v = fast
                .try_recv(WAIT * 3)
                .await
                .expect("the fast subscriber keeps receiving");
            assert_eq!(v["type"], "change", "fast subscriber got {v}");
            assert_eq!(v["seq"], next, "no gap, no duplicate");
            next += 1;
        }
    });

    let baseline = relay.rss_kib();
    let mut peak = baseline;
    let mut w = Client::native(addr).await;
    let pad = "x".repeat(4000);
    for p in 0..PUSHES {
        let changes: Vec<_> = (0..PER_PUSH)
            .map(|i| {
                json!({"collection": "c", "id": format!("e{}", p * PER_PUSH + i),
                            "op": "put", "fields": {"pad": pad}})
            })
            .collect();
        w.send(json!({"type": "push", "rid": p, "space": "feed", "changes": changes}))
            .await;
        let (_, ack) = w.until("ack").await;
        assert_eq!(ack["rid"], p);
        peak = peak.max(relay.rss_kib());
    }
    tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("fast subscriber finishes")
        .expect("fast subscriber task");
    peak = peak.max(relay.rss_kib());
    let grown_mib = peak.saturating_sub(baseline) / 1024;
    eprintln!("relay RSS: baseline {baseline} KiB, peak {peak} KiB (+{grown_mib} MiB) while ~32 MiB went past a stalled subscriber");
    // Holding the stalled subscriber's backlog would take over 32 MiB; the
    // store's cache is capped at 2 MiB above, the queue at 256 frames (~1 MiB).
    assert!(
        grown_mib < 16,
        "relay memory grew by {grown_mib} MiB with a stalled subscriber"
    );

    // The stalled subscriber now reads: what was already in flight, then a
    // resync notice naming the last seq it was given.
    let mut last = 0;
    let since = loop {
        let v = slow.recv().await;
        match v["type"].as_str() {
            Some("change") => {
                let seq = v["seq"].as_u64().unwrap();
                assert_eq!(seq, last + 1, "in order up to the resync");
                last = seq;
            }
            Some("resync") => {
                assert_eq!(v["space"], "feed");
                assert_eq!(v["reason"], "queue_full");
                break v["since"].as_u64().unwrap();
            }
            _ => panic!("unexpected frame {v}"),
        }
    };
    assert_eq!(since, last, "resync names the last change delivered");
    assert!(since < TOTAL, "the subscriber was dropped before the end");

    // Resubscribing from there yields exactly the rest.
    let (rest, _) = slow.subscribe("feed", since).await;
    let seqs: Vec<u64> = rest.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, ((since + 1)..=TOTAL).collect::<Vec<_>>());

    // And the connection is live again.
    let ack = w.put("feed", "after", json!({"n": 1})).await;
    assert_eq!(ack["type"], "ack");
    let v = slow.recv().await;
    assert_eq!(v["type"], "change");
    assert_eq!(v["seq"], TOTAL + 1);
}
