//! Replication sessions between engines in one process, over an in-memory
//! transport: the protocol logic without sockets (the mesh and upstream
//! tests drive the same sessions over QUIC and WebSocket).

use outpost::engine::{Engine, EngineSettings};
use outpost::metrics::Metrics;
use outpost::model::Op;
use outpost::replicate::session::{self, SessionError};
use outpost::replicate::{FrameSink, FrameSource, Links, SessionOpts};
use outpost::store::LocalWrite;
use serde_json::json;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

struct Tx(mpsc::Sender<Vec<u8>>);
struct Rx(mpsc::Receiver<Vec<u8>>);

impl FrameSink for Tx {
    async fn send(&mut self, bytes: Vec<u8>) -> Result<(), SessionError> {
        self.0
            .send(bytes)
            .await
            .map_err(|_| SessionError::Transport("closed".into()))
    }
}

impl FrameSource for Rx {
    async fn recv(&mut self) -> Result<Option<Vec<u8>>, SessionError> {
        Ok(self.0.recv().await)
    }
}

fn engine(dir: &std::path::Path) -> Arc<Engine> {
    Engine::open(EngineSettings::for_tests(dir), Arc::new(Metrics::default())).unwrap()
}

async fn write(e: &Engine, id: &str, fields: serde_json::Value) {
    write_in(e, "s", id, fields).await
}

async fn write_in(e: &Engine, space: &str, id: &str, fields: serde_json::Value) {
    let fields = fields.as_object().unwrap().clone().into_iter().collect();
    e.push(
        space,
        "t",
        None,
        vec![LocalWrite {
            collection: "c".into(),
            id: id.into(),
            op: Op::Patch,
            fields,
            client_us: None,
            expect: None,
        }],
    )
    .await
    .unwrap();
}

/// Connect two engines, reconnecting whenever a session ends (as the mesh
/// dialler does); the tasks end when `stop` flips.
fn link(a: &Arc<Engine>, b: &Arc<Engine>, stop: &watch::Receiver<bool>) -> Arc<AtomicU64> {
    link_spaces(a, b, stop, None, None)
}

/// `link` with each side's space filter.
fn link_spaces(
    a: &Arc<Engine>,
    b: &Arc<Engine>,
    stop: &watch::Receiver<bool>,
    a_spaces: Option<&[&str]>,
    b_spaces: Option<&[&str]>,
) -> Arc<AtomicU64> {
    let set = |s: Option<&[&str]>| s.map(|s| s.iter().map(|x| x.to_string()).collect());
    let (a_spaces, b_spaces): (Option<HashSet<String>>, Option<HashSet<String>>) =
        (set(a_spaces), set(b_spaces));
    let (a, b, stop) = (a.clone(), b.clone(), stop.clone());
    let ends = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = ends.clone();
    tokio::spawn(async move {
        let links = Arc::new(Links::default());
        while !*stop.borrow() {
            let (a_tx, b_rx) = mpsc::channel(16);
            let (b_tx, a_rx) = mpsc::channel(16);
            let mut sides = Vec::new();
            for (e, rx, tx, outbound, spaces) in [
                (a.clone(), a_rx, a_tx, true, a_spaces.clone()),
                (b.clone(), b_rx, b_tx, false, b_spaces.clone()),
            ] {
                let stop = stop.clone();
                let ends = ends.clone();
                let guard = links.open("test", "mem".into(), outbound, 0);
                sides.push(tokio::spawn(async move {
                    let (mut rx, mut tx) = (Rx(rx), Tx(tx));
                    let g = session::hello(&e, &mut rx, &mut tx).await?;
                    let opts = SessionOpts {
                        cursor: format!("peer:{}", g.peer),
                        spaces,
                        batch_bytes: outpost::replicate::frame::MAX_FRAME_BYTES,
                    };
                    let r = session::run(e, g, rx, tx, opts, guard.stats.clone(), stop).await;
                    eprintln!("session ended: {r:?}");
                    ends.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    r
                }));
            }
            for s in sides {
                let _ = s.await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    counted
}

/// Every entity of space "s" with its merged state, serialized.
/// A fake peer of `a` on the in-memory transport: `a` runs a session with
/// it, its hello (as `node`, holding `vv`) is sent and `a`'s hello read.
struct FakePeer {
    tx: mpsc::Sender<Vec<u8>>,
    rx: mpsc::Receiver<Vec<u8>>,
    session: tokio::task::JoinHandle<Result<String, SessionError>>,
    stats: Arc<outpost::replicate::LinkStats>,
    _link: outpost::replicate::LinkGuard,
    _stop: watch::Sender<bool>,
}

async fn fake_peer(
    a: &Arc<Engine>,
    node: outpost::model::NodeId,
    vv: outpost::model::VersionVector,
) -> FakePeer {
    use outpost::replicate::frame::{decode, encode, Frame, PROTO_VERSION};
    let (a_tx, mut rx) = mpsc::channel(64);
    let (tx, a_rx) = mpsc::channel(16);
    let (stop_tx, stop) = watch::channel(false);
    let links = Arc::new(Links::default());
    let link = links.open("test", "mem".into(), true, 0);
    let stats = link.stats.clone();
    let (e, s) = (a.clone(), stats.clone());
    let session = tokio::spawn(async move {
        let (mut rx, mut tx) = (Rx(a_rx), Tx(a_tx));
        let g = session::hello(&e, &mut rx, &mut tx).await?;
        let opts = SessionOpts {
            cursor: "peer:fake".into(),
            spaces: None,
            batch_bytes: outpost::replicate::frame::MAX_FRAME_BYTES,
        };
        session::run(e, g, rx, tx, opts, s, stop).await
    });
    let hello = Frame::Hello {
        proto: PROTO_VERSION,
        node,
        vv,
        software: "test".into(),
    };
    tx.send(encode(&hello).unwrap()).await.unwrap();
    assert!(matches!(
        decode(&rx.recv().await.unwrap()).unwrap(),
        Frame::Hello { .. }
    ));
    FakePeer {
        tx,
        rx,
        session,
        stats,
        _link: link,
        _stop: stop_tx,
    }
}

fn state(e: &Engine) -> Vec<(String, Vec<u8>)> {
    state_of(e, "s")
}

fn state_of(e: &Engine, space: &str) -> Vec<(String, Vec<u8>)> {
    e.entities(space, None, None, 100_000)
        .unwrap()
        .into_iter()
        .map(|(c, id, ent)| (format!("{c}/{id}"), rmp_serde::to_vec(&ent.state).unwrap()))
        .collect()
}

async fn converge(engines: &[&Arc<Engine>]) {
    for _ in 0..500 {
        let vvs: Vec<_> = engines
            .iter()
            .map(|e| e.version_vector().unwrap())
            .collect();
        if vvs.windows(2).all(|w| w[0] == w[1]) {
            let states: Vec<_> = engines.iter().map(|e| state(e)).collect();
            assert!(
                states.windows(2).all(|w| w[0] == w[1]),
                "same changes, different state"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no convergence in 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_converges_and_forwards_without_duplicates() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, b, c) = (
        engine(dirs[0].path()),
        engine(dirs[1].path()),
        engine(dirs[2].path()),
    );
    for n in 0..300 {
        write(&a, &format!("a{n}"), json!({"n": n})).await;
    }
    for n in 0..50 {
        write(&b, &format!("b{n}"), json!({"n": n})).await;
        // The same fields of the same entities on two relays: conflicts.
        write(&c, &format!("a{n}"), json!({"n": -1})).await;
    }
    let (stop_tx, stop) = watch::channel(false);
    link(&a, &b, &stop);
    link(&b, &c, &stop);
    converge(&[&a, &b, &c]).await;
    // Live: new writes on either end cross the chain.
    write(&a, "live-a", json!({"x": 1})).await;
    write(&c, "live-c", json!({"x": 2})).await;
    converge(&[&a, &b, &c]).await;
    for e in [&a, &b, &c] {
        // 300 + 50 + 50 + 2 changes, each in each log exactly once.
        assert_eq!(e.log_len().unwrap(), 402);
    }
    stop_tx.send(true).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_triangle_converges_and_events_arrive_once() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let es: Vec<_> = dirs.iter().map(|d| engine(d.path())).collect();
    let (stop_tx, stop) = watch::channel(false);
    link(&es[0], &es[1], &stop);
    link(&es[1], &es[2], &stop);
    link(&es[2], &es[0], &stop);
    for round in 0..20 {
        for (i, e) in es.iter().enumerate() {
            write(
                e,
                &format!("k{}", round % 5),
                json!({"by": i, "round": round}),
            )
            .await;
        }
    }
    converge(&[&es[0], &es[1], &es[2]]).await;
    for e in &es {
        assert_eq!(e.log_len().unwrap(), 60);
    }
    // An event published on one relay reaches a subscriber on each other
    // relay once, though the triangle offers two paths.
    let mut events = es[2].watch_events();
    tokio::time::sleep(Duration::from_millis(100)).await;
    es[0].publish("s", "presence", json!({"here": true}), "t", None);
    let ev = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("event arrives")
        .unwrap();
    assert_eq!(ev.topic, "presence");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), events.recv())
            .await
            .is_err(),
        "delivered once"
    );
    stop_tx.send(true).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_behind_the_retention_horizon_gets_a_snapshot() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, b, c) = (
        engine(dirs[0].path()),
        engine(dirs[1].path()),
        engine(dirs[2].path()),
    );
    for n in 0..300 {
        write(&a, &format!("a{}", n % 120), json!({"n": n, "pad": "x"})).await;
    }
    // B has its own history, and a live subscriber whose catch-up must be
    // redone from state once the snapshot lands.
    write(&b, "a1", json!({"n": -1})).await;
    write(&b, "b-own", json!({"mine": true})).await;
    let rx = outpost::engine::Outbox::new(64, usize::MAX);
    let signal = Arc::new(outpost::engine::ConnSignal::default());
    let link_b = outpost::engine::ConnLink {
        conn: 7,
        outbox: rx.clone(),
        signal: signal.clone(),
    };
    let mut sub = b
        .start_subscription(
            "s",
            0,
            outpost::engine::Filter {
                collections: None,
                events: false,
            },
            link_b,
        )
        .unwrap();
    while b.next_page(&mut sub).unwrap().is_some() {}
    // A trims everything: the changes B lacks are gone from A's log.
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(a.trim(Duration::ZERO).await.unwrap(), 300);
    let (stop_tx, stop) = watch::channel(false);
    link(&a, &b, &stop);
    // B then forwards to C, whose needs B's log cannot serve either.
    link(&b, &c, &stop);
    converge(&[&a, &b, &c]).await;
    assert_eq!(state(&b).len(), 121);
    // B's subscriber was told to resync, and a catch-up from its old
    // position now starts with the merged states.
    assert!(
        !signal.take_lagged().is_empty(),
        "the subscriber was told to resync"
    );
    assert!(b.horizon() > 2);
    // Live changes keep flowing after the snapshot.
    write(&a, "after", json!({"x": 1})).await;
    converge(&[&a, &b, &c]).await;
    while rx.try_recv().is_some() {}
    stop_tx.send(true).unwrap();
}

/// One pull-once session from `from` into `into` (the source side runs the
/// usual session): how the pull ended, bounded in time.
async fn pull_once(from: &Arc<Engine>, into: &Arc<Engine>) -> Result<String, SessionError> {
    let (a_tx, b_rx) = mpsc::channel(16);
    let (b_tx, a_rx) = mpsc::channel(16);
    let links = Arc::new(Links::default());
    let (_stop_tx, stop) = watch::channel(false);
    let source = {
        let (e, stop) = (from.clone(), stop.clone());
        let guard = links.open("test", "mem".into(), false, 0);
        tokio::spawn(async move {
            let (mut rx, mut tx) = (Rx(a_rx), Tx(a_tx));
            let g = session::hello(&e, &mut rx, &mut tx).await?;
            let opts = SessionOpts {
                cursor: format!("peer:{}", g.peer),
                spaces: None,
                batch_bytes: outpost::replicate::frame::MAX_FRAME_BYTES,
            };
            session::run(e, g, rx, tx, opts, guard.stats.clone(), stop).await
        })
    };
    let guard = links.open("test", "mem".into(), true, 0);
    let (mut rx, mut tx) = (Rx(b_rx), Tx(b_tx));
    let g = session::hello(into, &mut rx, &mut tx).await.unwrap();
    let opts = SessionOpts {
        cursor: "bootstrap".into(),
        spaces: None,
        batch_bytes: outpost::replicate::frame::MAX_FRAME_BYTES,
    };
    let pulled = session::pull(into.clone(), g, rx, tx, opts, guard.stats.clone(), stop);
    let r = tokio::time::timeout(Duration::from_secs(10), pulled)
        .await
        .expect("the pull ends by itself");
    // The source's session ends too, once the puller is gone.
    let _ = tokio::time::timeout(Duration::from_secs(10), source)
        .await
        .expect("the source's session ends");
    r
}

/// `session::pull` (a cluster member's bootstrap) ends by itself once the
/// puller holds what the source held at hello: from the source's log (each
/// change once), from a state snapshot where the source's log was trimmed,
/// and at once when there is nothing to pull.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_once_session_ends_when_it_holds_the_peers_vector() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, b, c) = (
        engine(dirs[0].path()),
        engine(dirs[1].path()),
        engine(dirs[2].path()),
    );
    for n in 0..300 {
        write(&a, &format!("a{}", n % 120), json!({"n": n})).await;
    }
    // From the log: every change once.
    assert_eq!(pull_once(&a, &b).await.unwrap(), session::PULLED);
    assert_eq!(b.version_vector().unwrap(), a.version_vector().unwrap());
    assert_eq!(b.log_len().unwrap(), 300);
    assert_eq!(state(&b), state(&a));
    // Nothing left to pull: it ends at once, and adds nothing.
    assert_eq!(pull_once(&a, &b).await.unwrap(), session::PULLED);
    assert_eq!(b.log_len().unwrap(), 300);
    // From a snapshot: the source's log is trimmed.
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(a.trim(Duration::ZERO).await.unwrap(), 300);
    assert_eq!(pull_once(&a, &c).await.unwrap(), session::PULLED);
    assert_eq!(c.version_vector().unwrap(), a.version_vector().unwrap());
    assert_eq!(c.log_len().unwrap(), 0, "states, not log entries");
    assert_eq!(state(&c), state(&a));
}

/// Bug: with a space filter, the sender skipped the filtered changes and the
/// receiver took the skipped origin seqs for a gap, so once a relay had
/// written to a space that is not forwarded, replication stalled for good
/// (every session ended with "gap"). Covers let the receiver advance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_space_filter_does_not_stall_replication() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (edge, hub, other) = (
        engine(dirs[0].path()),
        engine(dirs[1].path()),
        engine(dirs[2].path()),
    );
    // The edge writes a private change first, then shared ones: the first
    // shared change already follows a filtered one.
    write_in(&edge, "private", "p0", json!({"secret": 1})).await;
    for n in 0..5 {
        write_in(&edge, "shared", &format!("s{n}"), json!({"n": n})).await;
    }
    let (stop_tx, stop) = watch::channel(false);
    // The edge forwards only "shared"; the hub takes everything.
    let ends = link_spaces(&edge, &hub, &stop, Some(&["shared"]), None);
    // The hub passes on to a third relay unfiltered: its log has a hole
    // where the private change was, which it must vouch for in turn.
    link(&hub, &other, &stop);
    for round in 0..3 {
        write_in(
            &edge,
            "private",
            &format!("p{}", round + 1),
            json!({"x": round}),
        )
        .await;
        write_in(
            &edge,
            "shared",
            &format!("live{round}"),
            json!({"r": round}),
        )
        .await;
    }
    // Everything settles: same vv (filtered changes counted as vouched
    // for), same shared state, and no private space past the filter.
    converge_spaces(&[&edge, &hub, &other], &["shared"]).await;
    assert_eq!(state_of(&hub, "shared").len(), 8);
    for e in [&hub, &other] {
        assert!(state_of(e, "private").is_empty(), "private leaked");
    }
    assert_eq!(ends.load(Relaxed), 0, "no session ended (no gap)");
    stop_tx.send(true).unwrap();
}

async fn converge_spaces(engines: &[&Arc<Engine>], spaces: &[&str]) {
    for _ in 0..500 {
        let vvs: Vec<_> = engines
            .iter()
            .map(|e| e.version_vector().unwrap())
            .collect();
        if vvs.windows(2).all(|w| w[0] == w[1]) {
            for s in spaces {
                let states: Vec<_> = engines.iter().map(|e| state_of(e, s)).collect();
                assert!(
                    states.windows(2).all(|w| w[0] == w[1]),
                    "same changes, different state of {s}"
                );
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no convergence in 10 s");
}

/// Bug: when a page's frame was too large and split in two, both halves
/// were registered as covering the whole page, so the first half's ack
/// claimed the second half too (the cursor is the retention pin and the
/// backlog gauge). Each part now acks up to its own last entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_batch_acks_only_what_each_half_carried() {
    use outpost::model::{NodeId, VersionVector};
    use outpost::replicate::frame::{decode, encode, Frame};
    let dir = tempfile::tempdir().unwrap();
    let a = engine(dir.path());
    // 256 changes of ~40 KB: one page, over the 8 MiB frame limit.
    let big = "x".repeat(40_000);
    let writes = (0..256)
        .map(|n| LocalWrite {
            collection: "c".into(),
            id: format!("e{n}"),
            op: Op::Put,
            fields: [("body".to_string(), json!(big))].into(),
            client_us: None,
            expect: None,
        })
        .collect();
    a.push("s", "t", None, writes).await.unwrap();
    assert_eq!(a.last_seq(), 256);
    // The fake peer: hello with nothing held, then ack the first batch only.
    let mut peer = fake_peer(&a, NodeId(42), VersionVector::new()).await;
    let mut carried = Vec::new();
    for _ in 0..2 {
        let f = decode(&peer.rx.recv().await.unwrap()).unwrap();
        let Frame::Batch { id, changes, .. } = f else {
            panic!("expected a batch, got {f:?}")
        };
        carried.push((id, changes.len()));
    }
    assert_eq!(carried.len(), 2, "the page was split");
    let first = carried[0].1 as u64;
    assert!(first < 256);
    let ack = Frame::Ack { id: carried[0].0 };
    peer.tx.send(encode(&ack).unwrap()).await.unwrap();
    for _ in 0..100 {
        if peer.stats.acked.load(Relaxed) != 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        peer.stats.acked.load(Relaxed),
        first,
        "the first half's ack covers only the first half"
    );
    assert_eq!(peer.stats.backlog.load(Relaxed), 256 - first);
    peer.session.abort();
}

/// Bug (found by tests/sim.rs): a relay whose log holds an origin's changes
/// before and after a range it got only as merged snapshot state planned
/// a peer lacking the first of them from the log, and its covers vouched
/// for the merged range: the peer counted changes it never got (equal
/// version vectors, different states). It now sends a snapshot first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_merged_from_a_snapshot_is_never_vouched_for() {
    use outpost::model::{NodeId, VersionVector};
    use outpost::replicate::frame::{decode, Frame};
    use outpost::store::SnapEntity;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (engine(da.path()), engine(db.path()));
    for n in 1..=5 {
        write(&b, &format!("e{n}"), json!({"n": n})).await;
    }
    let log = |e: &Engine| -> Vec<outpost::model::Change> {
        e.log_after(0, 100)
            .unwrap()
            .into_iter()
            .map(|(_, l)| l.change)
            .collect()
    };
    // A: origin B's seq 1 from the log, 2..=5 from a snapshot, 6 from the log.
    a.apply_covered(log(&b)[..1].to_vec(), vec![], None)
        .await
        .unwrap();
    let states = b
        .entities("s", None, None, 100)
        .unwrap()
        .into_iter()
        .map(|(collection, id, e)| SnapEntity {
            space: "s".into(),
            collection,
            id,
            state: e.state,
        })
        .collect();
    a.merge_snapshot(states, Some(b.version_vector().unwrap()), 999)
        .await
        .unwrap();
    write(&b, "e6", json!({"n": 6})).await;
    a.apply_covered(log(&b)[5..].to_vec(), vec![], None)
        .await
        .unwrap();
    assert_eq!(a.version_vector().unwrap()[&b.node_id()], 6);

    // A fake peer that holds nothing.
    let mut peer = fake_peer(&a, NodeId(42), VersionVector::new()).await;
    // The states come first (a batch would vouch for seqs 2..=5).
    let f = decode(&peer.rx.recv().await.unwrap()).unwrap();
    let Frame::Snapshot { entities, .. } = f else {
        panic!("expected a snapshot, got {f:?}")
    };
    assert_eq!(entities.len(), 6);
    peer.session.abort();
}

/// Bug (found by tests/sim.rs): a session that ended while its inbound was
/// merging a peer's snapshot (the merge finishes in the writer anyway) did
/// not tell the relay's other links, so an idle link never planned again
/// and never passed on what the snapshot brought: the relays stopped short
/// of convergence. The other links are told even when the caller is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_whose_caller_is_cancelled_still_replans_the_other_links() {
    use outpost::model::NodeId;
    let dir = tempfile::tempdir().unwrap();
    let a = engine(dir.path());
    let mut merges = a.watch_merges();
    merges.borrow_and_update();
    let mut commits = a.watch_commits();
    commits.borrow_and_update();
    let hold = a.hold_writer().await.unwrap();
    let vv = [(NodeId(7), 3)].into();
    // Queued behind the hold, then abandoned (the session ended).
    let merge = a.merge_snapshot(vec![], Some(vv), 5);
    assert!(tokio::time::timeout(Duration::from_millis(100), merge)
        .await
        .is_err());
    drop(hold);
    tokio::time::timeout(Duration::from_secs(5), merges.changed())
        .await
        .expect("the other links are told to plan again")
        .unwrap();
    assert_eq!(merges.borrow().1, 5, "by the link that merged");
    // They may have planned before the merge committed: its commit report
    // wakes them again (an idle session then sees the merge count moved).
    tokio::time::timeout(Duration::from_secs(5), commits.changed())
        .await
        .expect("the merge's commit wakes the sessions")
        .unwrap();
    assert_eq!(a.version_vector().unwrap().get(&NodeId(7)), Some(&3));
}

/// Bug (found by tests/sim.rs with relay clock skew, whose new trim
/// pattern made a snapshot cross a faulty wire): a `snapshot_done` that
/// overtook the snapshot page before it raised the receiver's version
/// vector over states it never got (and a batch's covers could vouch for
/// changes of a batch still behind it). Data frames carry consecutive
/// ids; one out of order ends the session before it is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_out_of_order_ends_the_session_before_it_is_applied() {
    use outpost::model::{NodeId, VersionVector};
    use outpost::replicate::frame::{decode, encode, Frame};
    let dir = tempfile::tempdir().unwrap();
    let a = engine(dir.path());
    let peer = NodeId(42);
    let vv: VersionVector = [(peer, 5)].into();
    // The peer's frames after its hello: (frames, whether A ends up
    // counting the peer's five changes).
    let cases = [
        // Page 1 is late: the end of the snapshot comes first.
        (
            vec![Frame::SnapshotDone {
                id: 2,
                vv: vv.clone(),
            }],
            false,
        ),
        // In order: the end of the (empty) snapshot raises the vector.
        (
            vec![Frame::SnapshotDone {
                id: 1,
                vv: vv.clone(),
            }],
            true,
        ),
    ];
    for (frames, raised) in cases {
        let mut fake = fake_peer(&a, peer, vv.clone()).await;
        for f in frames {
            fake.tx.send(encode(&f).unwrap()).await.unwrap();
        }
        if raised {
            // Acked once merged.
            loop {
                let f = decode(&fake.rx.recv().await.unwrap()).unwrap();
                if matches!(f, Frame::Ack { id: 1 }) {
                    break;
                }
            }
            fake.session.abort();
        } else {
            let r = tokio::time::timeout(Duration::from_secs(10), fake.session)
                .await
                .expect("the session ends")
                .unwrap();
            assert!(
                matches!(&r, Err(SessionError::Protocol(m)) if m.contains("frame 2 arrived where frame 1 was due")),
                "{r:?}"
            );
        }
        assert_eq!(
            a.version_vector().unwrap().get(&peer).copied().unwrap_or(0),
            if raised { 5 } else { 0 },
            "frames {raised}"
        );
    }
}
