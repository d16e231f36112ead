//! Subscribing while writers commit: the seam between catch-up from the log
//! and live delivery has no gap and no duplicate.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

const WRITERS: u64 = 3;
const PER_WRITER: u64 = 300;
const TOTAL: u64 = WRITERS * PER_WRITER;

/// Read until seq `TOTAL`, checking that seqs run `since+1, since+2, …`.
async fn expect_contiguous(c: &mut Client, since: u64) {
    let mut next = since + 1;
    let mut synced = false;
    while next <= TOTAL || !synced {
        let v = c.recv().await;
        match v["type"].as_str() {
            Some("change") => {
                assert_eq!(v["seq"], next, "subscriber from {since}: gap or duplicate");
                next += 1;
            }
            Some("synced") => {
                assert!(!synced, "one synced marker");
                synced = true;
                assert_eq!(v["seq"], next - 1, "synced names the last catch-up seq");
            }
            _ => panic!("unexpected frame {v}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_opened_during_writes_see_every_change_once() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let addr = relay.addr;

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        writers.push(tokio::spawn(async move {
            let mut c = Client::native(addr).await;
            for n in 0..PER_WRITER {
                let ack = c.put("race", &format!("w{w}-{n}"), json!({"n": n})).await;
                assert_eq!(ack["type"], "ack");
            }
        }));
    }

    // Subscribers join at staggered moments, each from a different point:
    // from the start, from the current head, and from somewhere between.
    let mut subs = Vec::new();
    for k in 0..30u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        subs.push(tokio::spawn(async move {
            let mut c = Client::native(addr).await;
            // The current head, from a probe subscription.
            let (_, head) = Client::native(addr).await.subscribe("race", 0).await;
            let head = head["seq"].as_u64().unwrap();
            let since = match k % 3 {
                0 => 0,
                1 => head,
                _ => head / 2,
            };
            c.send(json!({"type": "subscribe", "space": "race", "since": since}))
                .await;
            expect_contiguous(&mut c, since).await;
        }));
    }
    for t in writers.into_iter().chain(subs) {
        tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("task finishes")
            .expect("task succeeds");
    }
    relay.shutdown().await.unwrap();
}

/// The seam, step by step against the engine: changes committed after the
/// subscription registered for live delivery but before its catch-up read
/// the seam arrive exactly once (live), and none is skipped.
#[tokio::test]
async fn commits_between_registration_and_seam_arrive_once() {
    use outpost::engine::{
        CatchUp, ConnLink, ConnSignal, Delivery, Engine, EngineSettings, Filter,
    };
    use outpost::metrics::Metrics;
    use outpost::model::Op;
    use outpost::store::LocalWrite;
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(
        EngineSettings::for_tests(dir.path()),
        Arc::new(Metrics::default()),
    )
    .unwrap();
    let write = |n: u64| LocalWrite {
        collection: "c".into(),
        id: format!("e{n}"),
        op: Op::Put,
        fields: [("n".to_string(), json!(n))].into(),
        client_us: None,
        expect: None,
    };
    for n in 0..10 {
        engine.push("s", "t", None, vec![write(n)]).await.unwrap();
    }
    let rx = outpost::engine::Outbox::new(64, usize::MAX);
    let link = ConnLink {
        conn: 1,
        outbox: rx.clone(),
        signal: Arc::new(ConnSignal::default()),
    };
    let mut sub = engine
        .start_subscription(
            "s",
            0,
            Filter {
                collections: None,
                events: false,
            },
            link,
        )
        .unwrap();
    let mut seen = Vec::new();
    let collect = |page: Vec<CatchUp>, seen: &mut Vec<u64>| {
        for item in page {
            match item {
                CatchUp::Change(c) => seen.push(c.seq),
                CatchUp::Snapshot { .. } => panic!("no snapshot without retention"),
            }
        }
    };
    // First page: the backlog (short), then registration for live delivery.
    let page = engine.next_page(&mut sub).unwrap().expect("backlog page");
    collect(page, &mut seen);
    assert!(sub.id.is_some(), "registered after the short backlog page");
    // Commits now go to the live queue; the seam read must not repeat them.
    for n in 10..15 {
        engine.push("s", "t", None, vec![write(n)]).await.unwrap();
    }
    while let Some(page) = engine.next_page(&mut sub).unwrap() {
        collect(page, &mut seen);
    }
    let reached = sub.reached();
    while let Some(d) = rx.try_recv() {
        if let Delivery::Change { item, .. } = d {
            // The dialect skips live items at or below the catch-up's reach.
            if item.seq > reached {
                seen.push(item.seq);
            }
        }
    }
    assert_eq!(seen, (1..=15).collect::<Vec<u64>>());
    engine.shutdown();
}
