//! The engine's clock seam (`EngineSettings::clock`): local stamps,
//! log entry times and retention read the relay's own clock, stamps never
//! go backwards when it does (within a run and across a restart), and a
//! client's future edit time is clamped against it.

use outpost::engine::{Clock, Engine, EngineSettings};
use outpost::metrics::Metrics;
use outpost::model::{Op, Stamp};
use outpost::store::LocalWrite;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

const T0: u64 = 1_800_000_000_000;

fn open(dir: &std::path::Path, time: &Arc<AtomicU64>) -> Arc<Engine> {
    let t = time.clone();
    let s = EngineSettings {
        clock: Clock::new(move || t.load(Relaxed)),
        ..EngineSettings::for_tests(dir)
    };
    Engine::open(s, Arc::new(Metrics::default())).unwrap()
}

async fn write(e: &Engine, id: &str, client_us: Option<u64>) -> Stamp {
    let w = LocalWrite {
        collection: "c".into(),
        id: id.into(),
        op: Op::Patch,
        fields: [("v".to_string(), json!(id))].into(),
        client_us,
        expect: None,
    };
    e.push("s", "t", None, vec![w]).await.unwrap()[0].stamp
}

#[tokio::test]
async fn stamps_and_retention_follow_the_engines_clock() {
    let dir = tempfile::tempdir().unwrap();
    let time = Arc::new(AtomicU64::new(T0));
    let e = open(dir.path(), &time);
    assert_eq!(e.clock().now_ms(), T0);
    let a = write(&e, "a", None).await;
    assert_eq!(
        (a.ms, a.counter),
        (T0, 0),
        "a local stamp is the clock's time"
    );
    let log = e.log_after(0, 10).unwrap();
    assert_eq!(log[0].1.at_ms, T0, "the log entry's time too");

    // The clock jumps back five minutes: stamps still grow.
    time.store(T0 - 300_000, Relaxed);
    let b = write(&e, "b", None).await;
    assert!(b > a, "{b:?} after {a:?}");
    assert_eq!(b.ms, T0, "the logical counter carries on");
    // A client edit time ten minutes ahead of this clock is clamped to
    // the clock + max_skew (a minute), not to the system clock.
    let c = write(&e, "c", Some((T0 + 300_000) * 1000)).await;
    assert_eq!(
        c.ms,
        T0 - 300_000 + 60_000,
        "clamped against the relay's clock"
    );

    // Retention cuts by the engine's clock: an hour of retention keeps
    // everything now, and nothing an hour and a bit later.
    assert_eq!(e.trim(Duration::from_secs(3600)).await.unwrap(), 0);
    time.store(T0 + 3_700_000, Relaxed);
    assert_eq!(e.trim(Duration::from_secs(3600)).await.unwrap(), 3);
    e.shutdown();
    drop(e);

    // A restart with a clock a day behind: the persisted clock keeps the
    // next stamp above every stamp issued before.
    time.store(T0 - 86_400_000, Relaxed);
    let e = open(dir.path(), &time);
    let d = write(&e, "d", None).await;
    assert!(d > b, "{d:?} after {b:?}");
    e.shutdown();
}
