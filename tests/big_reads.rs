//! Issue 12, reads: a space of large entities (~900 KB each) is read
//! through every bounded read: REST list (`GET /api/atome`), seed-003
//! history (`GET /v1/history`) and `init` (`/v1/sync`), and a native
//! catch-up. Each keeps the relay's RSS (sampled from /proc while it runs)
//! far below the size of the space, returns pages with a cursor to the next
//! one, and no message holds the whole space.

mod common;

use common::{http_get, Client, Proc};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const N: usize = 24;
const PAD: usize = 900 * 1000; // N x PAD = ~22 MB per collection
/// Before the byte bounds each read below held the space two to four
/// times (pages, the reply, its JSON): 60 to 120 MiB here.
const MAX_GROWTH_MIB: u64 = 32;
/// redb's page cache is bounded by configuration, and what it holds at the
/// base sample depends on timing (the writes' idle checkpoint, 0.5 s after
/// the last group, may or may not have run): with the default 16 MiB the
/// growth ranged from +10 to +33 MiB between runs, with 1 MiB from +12 to
/// +24. One MiB keeps the figure closer to what a read itself holds.
const CACHE_TOML: &str = "[storage]\ncache_mb = 1\n";

/// Peak RSS of `pid` while `f` runs, sampled every 5 ms.
async fn peak_during<T>(pid: u32, f: impl std::future::Future<Output = T>) -> (T, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(common::rss_kib(pid)));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(common::rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let out = f.await;
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    (out, peak.load(Ordering::Relaxed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_space_reads_are_paged_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("outpost.toml");
    std::fs::write(&config, CACHE_TOML).unwrap();
    let relay = Proc::serve(&config, &data);
    let (addr, pid) = (relay.addr, relay.child.id());
    let mut w = Client::native(addr).await;
    let pad = "x".repeat(PAD);
    for i in 0..N {
        for (collection, field) in [("atome", "pad"), ("kv", "value")] {
            w.send(json!({"type": "push", "rid": i, "space": "big",
                          "changes": [{"collection": collection, "id": format!("k{i:03}"),
                                       "op": "put", "fields": {field: pad}}]}))
                .await;
            let (_, ack) = w.until("ack").await;
            assert_eq!(ack["type"], "ack", "{ack}");
        }
    }
    drop(w);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = common::rss_kib(pid);
    let check = |what: &str, peak: u64| {
        let grown = peak.saturating_sub(base) / 1024;
        eprintln!("{what}: RSS {base} -> peak {peak} KiB (+{grown} MiB)");
        assert!(
            grown < MAX_GROWTH_MIB,
            "{what}: RSS grew by {grown} MiB for a ~{} MB space",
            N * PAD / 1_000_000
        );
    };

    // REST list: pages of bounded size, `next` leads to the following one.
    let (ids, peak) = peak_during(pid, async {
        let mut ids = Vec::new();
        let mut after = String::new();
        for _ in 0..N + 1 {
            let (code, body) = http_get(
                addr,
                &format!("/api/atome?space=big&limit=10000&after={after}"),
            )
            .await;
            assert_eq!(code, 200, "{body}");
            assert!(body.len() < 8 << 20, "a page of {} bytes", body.len());
            let v: Value = serde_json::from_str(&body).unwrap();
            for a in v["atomes"].as_array().unwrap() {
                ids.push(a["id"].as_str().unwrap().to_string());
            }
            match v["next"].as_str() {
                Some(n) => after = n.to_string(),
                None => break,
            }
        }
        ids
    })
    .await;
    assert_eq!(ids, (0..N).map(|i| format!("k{i:03}")).collect::<Vec<_>>());
    check("GET /api/atome", peak);

    // Seed-003 history: `more` and `next` page through it.
    let (seqs, peak) = peak_during(pid, async {
        let mut seqs = Vec::new();
        let mut since = 0;
        for _ in 0..N + 1 {
            let (code, body) =
                http_get(addr, &format!("/v1/history/big?limit=1000&since={since}")).await;
            assert_eq!(code, 200, "{body}");
            assert!(body.len() < 8 << 20, "a page of {} bytes", body.len());
            let v: Value = serde_json::from_str(&body).unwrap();
            for op in v["ops"].as_array().unwrap() {
                seqs.push(op["key"].as_str().unwrap().to_string());
            }
            since = v["next"].as_u64().unwrap();
            if v["more"] != true {
                break;
            }
        }
        seqs
    })
    .await;
    assert_eq!(seqs.len(), N, "every op once: {seqs:?}");
    check("GET /v1/history", peak);

    // Seed-003 init: an `init` with the first chunk, the rest as `op`s.
    let (keys, peak) = peak_during(pid, async {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/sync/big"))
            .await
            .unwrap();
        let mut keys = std::collections::BTreeSet::new();
        let mut first = true;
        loop {
            // Generous: the heads hash the whole workspace first (slow in a
            // debug build on a loaded machine).
            let m = tokio::time::timeout(Duration::from_secs(60), ws.next()).await;
            let Ok(Some(Ok(m))) = m else {
                eprintln!("sync ended: {m:?}");
                break;
            };
            let text = m.into_text().unwrap();
            assert!(text.len() < 2 << 20, "a message of {} bytes", text.len());
            let v: Value = serde_json::from_str(&text).unwrap();
            if first {
                assert_eq!(v["type"], "init", "{}", &text[..100.min(text.len())]);
                keys.extend(v["data"].as_object().unwrap().keys().cloned());
                assert!(keys.len() < N, "the init is chunked");
                first = false;
            } else if v["type"] == "op" {
                keys.insert(v["payload"]["key"].as_str().unwrap().to_string());
            }
            if keys.len() == N {
                break;
            }
        }
        keys
    })
    .await;
    assert_eq!(keys.len(), N, "every key arrives");
    check("/v1/sync init", peak);

    // Native catch-up from 0: pages bounded in bytes too.
    let (n, peak) = peak_during(pid, async {
        let mut c = Client::native(addr).await;
        let (frames, synced) = c.subscribe("big", 0).await;
        assert_eq!(synced["type"], "synced");
        frames.iter().filter(|v| v["type"] == "change").count()
    })
    .await;
    assert_eq!(n, 2 * N);
    check("native catch-up", peak);
}
