//! A seeded simulation of many relays in one process: the real engine, the
//! real store (redb in temporary dirs) and the real replication sessions
//! (`replicate::session`), linked by in-memory transports. One seed drives
//! everything the simulation decides: the number of relays (3 to 7), the
//! topology, the space filters, every write (kind, space, entity, fields,
//! client clock skew), partitions and heals, relay restarts, retention
//! trims, and per-frame network delays. After the script, every link is
//! healed and the relays must converge; then the invariants are checked:
//!
//! - relays that carry a space hold identical entity states (every field,
//!   with its stamp);
//! - every acknowledged write is present (or superseded by a newer one) on
//!   its relay and on every relay that carries its space;
//! - no log holds one change twice;
//! - no space passes a filter;
//! - a sender's durable per-peer cursor never passes what the peer holds;
//! - a relay's version vector never counts an acked write it should hold
//!   while its state lacks it (checked after every step).
//!
//! Without `SIM_SEEDS` it runs seeds 0..16, 120 steps each (about a minute
//! on two busy cores); it is `#[ignore]` until the open finding below is
//! fixed (pass `-- --ignored`). A failing seed prints itself;
//! replay it alone with `SIM_SEED=<n> cargo test --test sim -- --ignored`, with
//! `SIM_DEBUG=1` for the script and session log (`SIM_LOG` sets the tracing
//! filter, e.g. `outpost=trace` for every frame). The long mode:
//! `SIM_SEEDS=100000 SIM_STEPS=300 cargo test --release --test sim` (seeds
//! 0..n). What replays exactly is the script (every decision above); the
//! interleaving of the concurrent session tasks on the tokio runtime is
//! not under the seed's control, so a failure that depends on a rare
//! interleaving may need several runs of its seed. See docs/reliability.md.

use outpost::engine::{Engine, EngineSettings, Limits};
use outpost::metrics::Metrics;
use outpost::model::{NodeId, Op, VersionVector};
use outpost::replicate::session::{self, SessionError};
use outpost::replicate::{FrameSink, FrameSource, Links, SessionOpts};
use outpost::store::{Durability, LocalWrite};
use serde_json::json;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

const SPACES: [&str; 3] = ["home", "work", "attic"];

/// splitmix64: tiny, seedable, good enough to drive a script.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

struct Tx(mpsc::Sender<Vec<u8>>);
struct Rx(mpsc::Receiver<Vec<u8>>);

impl FrameSink for Tx {
    async fn send(&mut self, bytes: Vec<u8>) -> Result<(), SessionError> {
        self.0
            .send(bytes)
            .await
            .map_err(|_| SessionError::Transport("link down".into()))
    }
}

impl FrameSource for Rx {
    async fn recv(&mut self) -> Result<Option<Vec<u8>>, SessionError> {
        Ok(self.0.recv().await)
    }
}

struct Relay {
    dir: tempfile::TempDir,
    engine: Option<Arc<Engine>>,
    /// Spaces this relay replicates (None: all), on every link.
    spaces: Option<HashSet<String>>,
    node: NodeId,
}

impl Relay {
    fn carries(&self, space: &str) -> bool {
        self.spaces.as_ref().is_none_or(|s| s.contains(space))
    }
}

struct Link {
    a: usize,
    b: usize,
    up: bool,
    tasks: Vec<JoinHandle<()>>,
    /// Per-link delay generator (seeded from the script).
    delay_seed: u64,
}

/// An acknowledged local write, to look for at the end.
struct Acked {
    relay: usize,
    space: String,
    id: String,
    op: Op,
    fields: Vec<String>,
    key: outpost::model::WriteKey,
}

fn open(dir: &std::path::Path) -> Arc<Engine> {
    Engine::open(
        EngineSettings {
            dir: dir.to_path_buf(),
            durability: Durability::Immediate,
            retention: None,
            limits: Limits::default(),
            max_skew_ms: 60_000,
            min_free_bytes: 0,
            cache_bytes: 1 << 20,
            schemas: Default::default(),
            max_queued_bytes: 64 << 20,
        },
        Arc::new(Metrics::default()),
    )
    .expect("engine opens")
}

/// Frames from `rx` to `tx`, each after a delay drawn from `seed`.
fn wire(mut rx: mpsc::Receiver<Vec<u8>>, tx: mpsc::Sender<Vec<u8>>, seed: u64) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut rng = Rng(seed);
        while let Some(f) = rx.recv().await {
            let ms = match rng.below(10) {
                0..=5 => 0,
                6..=8 => rng.below(3),
                _ => rng.below(20),
            };
            if ms > 0 {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            } else {
                tokio::task::yield_now().await;
            }
            if tx.send(f).await.is_err() {
                return;
            }
        }
    })
}

struct Sim {
    rng: Rng,
    relays: Vec<Relay>,
    links: Vec<Link>,
    acked: Vec<Acked>,
    stop: watch::Sender<bool>,
    stats: Arc<Links>,
    log: Vec<String>,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Rng(seed);
        let n = 3 + rng.below(5) as usize;
        let mut relays = Vec::new();
        for _ in 0..n {
            let dir = tempfile::tempdir().unwrap();
            let engine = open(dir.path());
            relays.push(Relay {
                node: engine.node_id(),
                dir,
                engine: Some(engine),
                spaces: None,
            });
        }
        // A random tree, then a few extra links among the unfiltered.
        let mut links = Vec::new();
        for i in 1..n {
            let j = rng.below(i as u64) as usize;
            links.push((j, i));
        }
        // Leaves may filter: one link only, so each space reaches them by
        // one route (the documented contract of space filters).
        let mut degree = vec![0; n];
        for &(a, b) in &links {
            degree[a] += 1;
            degree[b] += 1;
        }
        for (i, r) in relays.iter_mut().enumerate() {
            if degree[i] == 1 && rng.chance(50) {
                let keep: HashSet<String> = SPACES
                    .iter()
                    .filter(|_| rng.chance(50))
                    .map(|s| s.to_string())
                    .collect();
                r.spaces = Some(keep);
            }
        }
        let open: Vec<usize> = (0..n).filter(|&i| relays[i].spaces.is_none()).collect();
        for _ in 0..rng.below(3) {
            if open.len() < 3 {
                break;
            }
            let a = open[rng.below(open.len() as u64) as usize];
            let b = open[rng.below(open.len() as u64) as usize];
            if a != b && !links.contains(&(a, b)) && !links.contains(&(b, a)) {
                links.push((a, b));
            }
        }
        let links = links
            .into_iter()
            .map(|(a, b)| Link {
                a,
                b,
                up: true,
                tasks: vec![],
                delay_seed: rng.next(),
            })
            .collect();
        let (stop, _) = watch::channel(false);
        Sim {
            rng,
            relays,
            links,
            acked: vec![],
            stop,
            stats: Arc::new(Links::default()),
            log: vec![],
        }
    }

    /// Start sessions on every link that is up, has both relays running,
    /// and has none running (a dialler reconnecting).
    fn dial(&mut self) {
        for k in 0..self.links.len() {
            let l = &mut self.links[k];
            l.tasks.retain(|t| !t.is_finished());
            if !l.up || l.tasks.len() == 4 {
                continue;
            }
            for t in l.tasks.drain(..) {
                t.abort();
            }
            let (Some(ea), Some(eb)) = (
                self.relays[l.a].engine.clone(),
                self.relays[l.b].engine.clone(),
            ) else {
                continue;
            };
            l.delay_seed = Rng(l.delay_seed).next();
            let (a_out, a_wire) = mpsc::channel(16);
            let (b_in_tx, b_in) = mpsc::channel(16);
            let (b_out, b_wire) = mpsc::channel(16);
            let (a_in_tx, a_in) = mpsc::channel(16);
            l.tasks.push(wire(a_wire, b_in_tx, l.delay_seed));
            l.tasks.push(wire(b_wire, a_in_tx, l.delay_seed ^ 1));
            for (e, rx, tx, spaces) in [
                (ea, a_in, a_out, self.relays[l.a].spaces.clone()),
                (eb, b_in, b_out, self.relays[l.b].spaces.clone()),
            ] {
                let stop = self.stop.subscribe();
                let guard = self.stats.open("sim", format!("link{k}"), true, 0);
                let span = tracing::debug_span!("link", k, node = %e.node_id());
                l.tasks.push(tokio::spawn(tracing::Instrument::instrument(
                    async move {
                        let (mut rx, mut tx) = (Rx(rx), Tx(tx));
                        let Ok(g) = session::hello(&e, &mut rx, &mut tx).await else {
                            return;
                        };
                        let opts = SessionOpts {
                            cursor: format!("peer:{}", g.peer),
                            spaces,
                        };
                        let r = session::run(e, g, rx, tx, opts, guard.stats.clone(), stop).await;
                        if std::env::var("SIM_DEBUG").is_ok() {
                            eprintln!("link {k}: session ended: {r:?}");
                        }
                    },
                    span,
                )));
            }
        }
    }

    /// Record a script event (printed as it happens with `SIM_DEBUG`).
    fn note(&mut self, what: String) {
        if std::env::var("SIM_DEBUG").is_ok() {
            eprintln!("sim: {what}");
        }
        self.log.push(what);
    }

    fn cut(&mut self, k: usize) {
        for t in self.links[k].tasks.drain(..) {
            t.abort();
        }
    }

    async fn step(&mut self) {
        let n = self.relays.len();

        match self.rng.below(100) {
            0..=69 => self.write().await,
            70..=79 => {
                let k = self.rng.below(self.links.len() as u64) as usize;
                self.links[k].up = !self.links[k].up;
                self.note(format!(
                    "link {k} ({}-{}) {}",
                    self.links[k].a,
                    self.links[k].b,
                    if self.links[k].up { "heals" } else { "cut" }
                ));
                if !self.links[k].up {
                    self.cut(k);
                }
            }
            80..=89 => {
                let i = self.rng.below(n as u64) as usize;
                self.note(format!("relay {i} restarts"));
                self.restart(i).await;
            }
            _ => {
                let i = self.rng.below(n as u64) as usize;
                if let Some(e) = self.relays[i].engine.clone() {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    let t = e.trim(Duration::ZERO).await.unwrap();
                    self.note(format!("relay {i} trims {t}"));
                }
            }
        }
        self.dial();
        // Let the network move a little between steps.
        for _ in 0..self.rng.below(4) {
            tokio::task::yield_now().await;
        }
        if self.rng.chance(20) {
            tokio::time::sleep(Duration::from_millis(self.rng.below(5))).await;
        }
    }

    async fn write(&mut self) {
        let i = self.rng.below(self.relays.len() as u64) as usize;
        let Some(e) = self.relays[i].engine.clone() else {
            return;
        };
        let space = SPACES[self.rng.below(3) as usize].to_string();
        let id = format!("e{}", self.rng.below(6));
        let op = match self.rng.below(10) {
            0..=1 => Op::Put,
            2 => Op::Delete,
            _ => Op::Patch,
        };
        let mut fields = BTreeMap::new();
        if op != Op::Delete {
            for f in ["a", "b", "c"] {
                if self.rng.chance(50) {
                    fields.insert(f.to_string(), json!(self.rng.below(1000)));
                }
            }
        }
        // Client clocks: mostly none, sometimes skewed either way.
        let client_ms = self.rng.chance(30).then(|| {
            let now = outpost::engine::now_ms();
            let skew = self.rng.below(20_000);
            if self.rng.chance(50) {
                now.saturating_sub(skew)
            } else {
                now + skew
            }
        });
        let names: Vec<String> = fields.keys().cloned().collect();
        let w = LocalWrite {
            collection: "c".into(),
            id: id.clone(),
            op,
            fields,
            client_us: client_ms.map(|ms| ms * 1000),
            expect: None,
        };
        let out = e.push(&space, "sim", None, vec![w]).await.expect("write");
        let o = &out[0];
        if std::env::var("SIM_DEBUG").is_ok() {
            eprintln!(
                "sim: relay {i} writes {op:?} {space}/{id} seq {}",
                o.origin_seq
            );
        }
        self.acked.push(Acked {
            relay: i,
            space,
            id,
            op,
            fields: names,
            key: outpost::model::WriteKey {
                stamp: o.stamp,
                seq: o.origin_seq,
            },
        });
    }

    /// Stop a relay (its links drop, its writer drains and closes the
    /// file) and open it again from its data dir.
    async fn restart(&mut self, i: usize) {
        for k in 0..self.links.len() {
            if self.links[k].a == i || self.links[k].b == i {
                self.cut(k);
            }
        }
        // Aborted tasks drop their engine handles on their next poll.
        tokio::time::sleep(Duration::from_millis(5)).await;
        if let Some(e) = self.relays[i].engine.take() {
            e.shutdown();
            for _ in 0..200 {
                if Arc::strong_count(&e) == 1 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert_eq!(Arc::strong_count(&e), 1, "a task still holds relay {i}");
        }
        self.relays[i].engine = Some(open(self.relays[i].dir.path()));
    }

    fn engines(&self) -> Vec<Arc<Engine>> {
        self.relays
            .iter()
            .map(|r| r.engine.clone().expect("running"))
            .collect()
    }

    async fn converge(&mut self) -> Result<(), String> {
        for l in &mut self.links {
            l.up = true;
        }
        for _ in 0..1000 {
            self.dial();
            let vvs: Vec<VersionVector> = self
                .engines()
                .iter()
                .map(|e| e.version_vector().unwrap())
                .collect();
            if vvs.windows(2).all(|w| w[0] == w[1]) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let vvs: Vec<VersionVector> = self
            .engines()
            .iter()
            .map(|e| e.version_vector().unwrap())
            .collect();
        Err(format!("no convergence in 20 s: {vvs:?}"))
    }

    /// At any moment: a relay's version vector never counts an acked write
    /// that it should hold (it carries the space, and so does the writer)
    /// while its state lacks it. The vector is read before the states,
    /// which only grow, so a write committed in between cannot fail this.
    fn check_vv_backed(&self) -> Result<(), String> {
        for (i, r) in self.relays.iter().enumerate() {
            let Some(e) = &r.engine else { continue };
            let vv = e.version_vector().unwrap();
            for w in &self.acked {
                let origin = self.relays[w.relay].node;
                if i == w.relay
                    || !r.carries(&w.space)
                    || !self.relays[w.relay].carries(&w.space)
                    || vv.get(&origin).copied().unwrap_or(0) < w.key.seq
                {
                    continue;
                }
                if !holds(e, w) {
                    return Err(format!(
                        "relay {i} counts {:?} {}/{} (origin relay {} seq {}) in its version vector {vv:?} but lacks it",
                        w.op, w.space, w.id, w.relay, w.key.seq
                    ));
                }
            }
        }
        Ok(())
    }

    fn check(&self) -> Result<(), String> {
        let es = self.engines();
        for space in SPACES {
            let carriers: Vec<usize> = (0..es.len())
                .filter(|&i| self.relays[i].carries(space))
                .collect();
            // Relays that carry a space hold identical states of it.
            let states: Vec<Vec<u8>> = carriers
                .iter()
                .map(|&i| {
                    let all = es[i].entities(space, None, None, 100_000).unwrap();
                    let v: Vec<_> = all.into_iter().map(|(c, id, e)| (c, id, e.state)).collect();
                    rmp_serde::to_vec(&v).unwrap()
                })
                .collect();
            if let Some(w) = states.windows(2).position(|w| w[0] != w[1]) {
                let (i, j) = (carriers[w], carriers[w + 1]);
                let diff: Vec<String> = es[i]
                    .entities(space, None, None, 100_000)
                    .unwrap()
                    .into_iter()
                    .filter_map(|(_, id, e)| {
                        let other = es[j].entity(space, "c", &id).unwrap();
                        (other.as_ref().map(|o| &o.state) != Some(&e.state))
                            .then(|| format!("{id}: {:?} vs {:?}", e.state, other.map(|o| o.state)))
                    })
                    .collect();
                return Err(format!(
                    "relays {i} and {j} carry {space} but differ: {diff:?}; vvs {:?} / {:?}",
                    es[i].version_vector().unwrap(),
                    es[j].version_vector().unwrap()
                ));
            }
            // A relay that filters a space holds only its own writes there.
            for (i, r) in self.relays.iter().enumerate() {
                if r.carries(space) {
                    continue;
                }
                for (_, id, e) in es[i].entities(space, None, None, 100_000).unwrap() {
                    for cell in e.state.fields.values() {
                        if cell.key.stamp.node != r.node {
                            return Err(format!(
                                "relay {i} filters {space} but holds {id} from another relay"
                            ));
                        }
                    }
                }
            }
            // ...and its writes there reach nobody.
            for (i, e) in es.iter().enumerate() {
                if !self.relays[i].carries(space) {
                    continue;
                }
                for (_, id, ent) in e.entities(space, None, None, 100_000).unwrap() {
                    for cell in ent.state.fields.values() {
                        let from = self
                            .relays
                            .iter()
                            .position(|r| r.node == cell.key.stamp.node);
                        if let Some(j) = from {
                            if !self.relays[j].carries(space) {
                                return Err(format!(
                                    "{space}/{id} of relay {j} leaked past its filter to relay {i}"
                                ));
                            }
                        }
                    }
                }
            }
        }
        // Every acknowledged write is there, or superseded by a newer one.
        for w in &self.acked {
            let holders: Vec<usize> = if self.relays[w.relay].carries(&w.space) {
                (0..es.len())
                    .filter(|&i| self.relays[i].carries(&w.space))
                    .collect()
            } else {
                vec![w.relay]
            };
            for i in holders {
                if !holds(&es[i], w) {
                    return Err(format!(
                        "relay {i}: acked {:?} of {}/{} from relay {} lost",
                        w.op, w.space, w.id, w.relay
                    ));
                }
            }
        }
        for (i, e) in es.iter().enumerate() {
            // No change twice in a log.
            let log = e.log_after(0, 1_000_000).unwrap();
            let ids: HashSet<(NodeId, u64)> = log
                .iter()
                .map(|(_, l)| (l.change.origin, l.change.seq))
                .collect();
            if ids.len() != log.len() {
                return Err(format!("relay {i} logged a change twice"));
            }
            // A peer cursor never passes what the peer holds.
            for (j, r) in self.relays.iter().enumerate() {
                let c = e.cursor(&format!("peer:{}", r.node)).unwrap();
                let vv = es[j].version_vector().unwrap();
                for (seq, l) in &log {
                    if *seq > c || l.change.origin == r.node {
                        continue;
                    }
                    if vv.get(&l.change.origin).copied().unwrap_or(0) < l.change.seq {
                        return Err(format!(
                            "relay {i}'s cursor for relay {j} passed a change it lacks"
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    async fn finish(mut self) {
        let _ = self.stop.send(true);
        for k in 0..self.links.len() {
            self.cut(k);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        for r in &mut self.relays {
            if let Some(e) = r.engine.take() {
                e.shutdown();
            }
        }
    }
}

/// The relay's state holds the acked write `w` or something newer.
fn holds(e: &Engine, w: &Acked) -> bool {
    let Some(ent) = e.entity(&w.space, "c", &w.id).unwrap() else {
        return false;
    };
    let s = &ent.state;
    if w.op == Op::Delete {
        s.tomb.is_some_and(|t| t >= w.key)
    } else {
        w.fields.iter().all(|f| {
            let cell = s.fields.get(f).map(|c| c.key);
            cell.is_some_and(|k| k >= w.key) || s.reset.is_some_and(|r| r > w.key)
        })
    }
}

async fn run_seed(seed: u64, steps: usize) -> Result<(), String> {
    let mut sim = Sim::new(seed);
    sim.dial();
    let mut result = Ok(());
    for _ in 0..steps {
        sim.step().await;
        result = sim.check_vv_backed();
        if result.is_err() {
            break;
        }
    }
    let result = match result {
        Err(e) => Err(e),
        Ok(()) => match sim.converge().await {
            Ok(()) => sim.check_vv_backed().and_then(|()| sim.check()),
            Err(e) => Err(e),
        },
    };
    let result = result.map_err(|e| {
        let filters: Vec<_> = sim
            .relays
            .iter()
            .map(|r| (r.node, r.spaces.clone()))
            .collect();
        let links: Vec<_> = sim.links.iter().map(|l| (l.a, l.b)).collect();
        format!(
            "seed {seed}: {e}\n  relays {} links {links:?} filters {filters:?}\n  last events: {:?}\n  replay: SIM_SEED={seed} SIM_STEPS={steps} cargo test --test sim -- --ignored (SIM_DEBUG=1 for a trace)",
            sim.relays.len(),
            sim.log.iter().rev().take(12).collect::<Vec<_>>()
        )
    });
    sim.finish().await;
    result
}

fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("SIM_SEED") {
        return vec![s.parse().expect("SIM_SEED is a number")];
    }
    let n = std::env::var("SIM_SEEDS")
        .map(|n| n.parse().expect("SIM_SEEDS is a number"))
        .unwrap_or(16);
    (0..n).collect()
}

// Not in CI yet: one interleaving still fails rarely (about 1 in 200
// seed runs, seen with seed 7 under load): a session's own snapshot merge
// in flight can mask a merge from another link, so the session vouches for
// the other merge's range (docs/reliability.md, "Known open findings").
// Run: `cargo test --test sim -- --ignored`.
#[ignore = "a rare open finding (docs/reliability.md); run with --ignored"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_relays_converge_and_keep_every_acked_write() {
    if std::env::var("SIM_DEBUG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(std::env::var("SIM_LOG").unwrap_or("outpost=debug".into()))
            .with_writer(std::io::stderr)
            .try_init();
    }
    let steps: usize = std::env::var("SIM_STEPS")
        .ok()
        .map(|s| s.parse().expect("SIM_STEPS is a number"))
        .unwrap_or(120);
    for seed in seeds() {
        if let Err(e) = run_seed(seed, steps).await {
            panic!("{e}");
        }
    }
}
