//! A seeded simulation of many relays in one process: the real engine, the
//! real store (redb and its write-ahead log on a simulated disk that loses
//! what was not synced when its relay crashes, `sim/disk.rs`) and the real
//! replication sessions
//! (`replicate::session`), linked by in-memory wires (`sim/wire.rs`). One
//! seed drives everything the simulation decides: the number of relays (3
//! to 7), the topology, the space filters, the batch size limit of each
//! link, every write (kind, space, entity, fields, client clock skew; half
//! of them sent as a frame of one of the six client protocols,
//! `sim/dialects.rs`), each relay's clock (skewed by minutes, set back at
//! restarts),
//! commit groups mixing good and bad jobs, pipelined writes of one
//! connection, client subscriptions (`sim/client.rs`) and their catch-up
//! pages, partitions and heals, relay restarts and crashes, retention
//! trims, per-frame delays, and duplicated or swapped frames on faulty
//! wires. After the script every link is healed and the relays must
//! converge. Checked:
//!
//! - after every step: a relay's version vector never counts an acked
//!   write it should hold while its state lacks it; no link's acked
//!   position (the cursor, the retention pin) passes a change its peer
//!   lacks; each relay's log is contiguous;
//! - at every commit group: every good job is acked (and kept, below), each
//!   bad one refused with its own error, and a trim in the group is not
//!   refused for a neighbour's fault (nor does a refused one move the trim
//!   point);
//! - at every dialect write: the protocol's answer, and the changes logged
//!   for it are the writes the frame stands for, in the relay's state;
//! - at every pipelined burst: commit order is send order, and the last
//!   value sent is the one that stays;
//! - whenever a client subscription goes live, and at the end: its state is
//!   its relay's (a change skipped without a snapshot shows);
//! - at the end: relays that carry a space hold identical entity states
//!   (every field, with its stamp); every acknowledged write is present (or
//!   superseded by a newer one) on its relay and on every relay that
//!   carries its space, across restarts and crashes; no log holds one
//!   change twice; no space passes a filter; a durable per-peer cursor
//!   never passes what the peer holds; a relay's clock-stamped writes
//!   have growing stamps, though its clock went back at restarts.
//!
//! CI runs a fixed set of seeds (`SIM_SEEDS` unset: seeds 0..16, 120 steps
//! each). A failing seed prints itself; replay it alone with
//! `SIM_SEED=<n> cargo test --test sim`, with `SIM_DEBUG=1` for the script
//! and session log (`SIM_LOG` sets the tracing filter, e.g.
//! `outpost=trace` for every frame). The long mode:
//! `SIM_SEEDS=<n> SIM_FROM=<first> SIM_STEPS=300 cargo test --test sim`
//! (seeds first..first+n). What replays exactly is the script (every
//! decision above); the interleaving of the concurrent session tasks on the
//! tokio runtime is not under the seed's control, so a failure that depends
//! on a rare interleaving may need several runs of its seed. See
//! docs/reliability.md.

#[path = "sim/client.rs"]
mod client;
#[path = "sim/dialects.rs"]
mod dialects;
#[path = "sim/disk.rs"]
mod disk;
#[path = "sim/wire.rs"]
mod wire;

use client::Client;
use disk::Disk;
use outpost::engine::{Clock, Engine, EngineError, EngineSettings, WriteOrder};
use outpost::metrics::Metrics;
use outpost::model::{NodeId, Op, VersionVector};
use outpost::replicate::session::{self, SessionError};
use outpost::replicate::{FrameSink, FrameSource, LinkStats, Links, SessionOpts};
use outpost::store::{Expect, LocalWrite, StoreError};
use serde_json::json;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use wire::{wire, Faults};

const SPACES: [&str; 3] = ["home", "work", "attic"];
/// Relays' clocks are off by up to this much either way (5 minutes, five
/// times the tolerated client skew, `max_skew_ms`).
const MAX_SKEW: u64 = 300_000;
/// A space no write ever lands in: each relay's data file holds a corrupt
/// record there (written while it was down), so a write to it fails in
/// the writer (a bad job) and is seen by nothing else.
const ROT: &str = "rot";

/// splitmix64: tiny, seedable, good enough to drive a script.
pub struct Rng(pub u64);

impl Rng {
    pub fn draw(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.draw() % n
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
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
    disk: Arc<Disk>,
    engine: Option<Arc<Engine>>,
    /// Bumped by each restart or crash (clients reconnect).
    generation: u64,
    /// Spaces this relay replicates (None: all), on every link.
    spaces: Option<HashSet<String>>,
    node: NodeId,
    /// How far this relay's clock is off (ms, either way): its engine
    /// stamps and trims by the system clock plus this.
    skew: Arc<std::sync::atomic::AtomicI64>,
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
    /// Largest batch frame each side sends (small ones split pages).
    batch_bytes: usize,
    /// Whether its wires duplicate and swap frames.
    faulty: bool,
    /// Each running session's sender, receiver and stats, and the local
    /// seq up to which its acked position was checked.
    sides: Vec<Side>,
}

struct Side {
    from: usize,
    to: usize,
    stats: Arc<LinkStats>,
    checked: u64,
}

/// An acknowledged local write, to look for at the end.
struct Acked {
    relay: usize,
    space: String,
    collection: String,
    id: String,
    op: Op,
    fields: Vec<String>,
    key: outpost::model::WriteKey,
    /// Stamped by the relay's clock (no client edit time).
    clocked: bool,
}

fn settings(dir: &std::path::Path, skew: &Arc<std::sync::atomic::AtomicI64>) -> EngineSettings {
    // One collection with a schema, so a commit group can hold a job the
    // schema refuses.
    let schemas = outpost::schema::SchemaSet::from_values(
        [(
            "typed".to_string(),
            json!({"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}),
        )]
        .into(),
    )
    .expect("schema compiles");
    let skew = skew.clone();
    EngineSettings {
        schemas: Arc::new(schemas),
        clock: Clock::new(move || {
            (outpost::engine::now_ms() as i64 + skew.load(Relaxed)).max(0) as u64
        }),
        ..EngineSettings::for_tests(dir)
    }
}

/// Open a relay on its disk (data file and write-ahead log), as the
/// process that runs it now.
fn open(
    dir: &std::path::Path,
    disk: &Arc<Disk>,
    skew: &Arc<std::sync::atomic::AtomicI64>,
) -> Arc<Engine> {
    let file = |f: usize| {
        let opener = disk.opener(f);
        outpost::store::Backend(Arc::new(move || {
            Ok(Box::new(opener()) as Box<dyn redb::StorageBackend>)
        }))
    };
    Engine::open_with(
        settings(dir, skew),
        Arc::new(Metrics::default()),
        Some(file(disk::DATA)),
        Some(file(disk::WAL)),
    )
    .expect("engine opens")
}

/// Write a record that does not decode where the relay keeps entity
/// `ROT/c/bad` (as a disk fault or a foreign writer would), while the
/// relay is down. Written with redb on the relay's disk, as the store's
/// own table (`store/tables.rs`: `entity`).
fn plant_rot(disk: &Arc<Disk>) {
    const ENTITY: redb::TableDefinition<(&str, &str, &str), &[u8]> =
        redb::TableDefinition::new("entity");
    let db = redb::Database::builder()
        .create_with_backend(disk.opener(disk::DATA)())
        .expect("opens");
    let tx = db.begin_write().unwrap();
    tx.open_table(ENTITY)
        .unwrap()
        .insert((ROT, "c", "bad"), [0xc1u8, 0xff].as_slice())
        .unwrap();
    tx.commit().unwrap();
}

struct Sim {
    rng: Rng,
    /// Draws the relays' clocks: a stream of its own, so the script the
    /// main generator draws is the same with or without clock skew.
    clocks: Rng,
    /// Draws which writes go through a dialect's frames, and which: a
    /// stream of its own too.
    fronts: Rng,
    relays: Vec<Relay>,
    links: Vec<Link>,
    acked: Vec<Acked>,
    clients: Vec<Client>,
    stop: watch::Sender<bool>,
    stats: Arc<Links>,
    faults: Arc<Faults>,
    /// Pipelined bursts so far (each writes its own entity).
    bursts: u64,
    log: Vec<String>,
    counts: BTreeMap<&'static str, u64>,
}

fn debug() -> bool {
    std::env::var("SIM_DEBUG").is_ok()
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Rng(seed);
        let mut clocks = Rng(seed ^ 0xc10c_c10c_c10c_c10c);
        let n = 3 + rng.below(5) as usize;
        let mut relays = Vec::new();
        for _ in 0..n {
            let dir = tempfile::tempdir().unwrap();
            let disk = Arc::new(Disk::default());
            // Each relay's clock is off by up to MAX_SKEW either way.
            let skew = Arc::new(std::sync::atomic::AtomicI64::new(
                clocks.below(2 * MAX_SKEW + 1) as i64 - MAX_SKEW as i64,
            ));
            // Made once, then the corrupt record written while it is down.
            let engine = open(dir.path(), &disk, &skew);
            let node = engine.node_id();
            engine.shutdown();
            drop(engine);
            plant_rot(&disk);
            relays.push(Relay {
                node,
                engine: Some(open(dir.path(), &disk, &skew)),
                dir,
                disk,
                skew,
                generation: 0,
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
                delay_seed: rng.draw(),
                // Half the links split every page into parts of a change
                // or a few (a change frame is ~150 bytes).
                batch_bytes: if rng.chance(50) {
                    outpost::replicate::frame::MAX_FRAME_BYTES
                } else {
                    200 + rng.below(800) as usize
                },
                faulty: rng.chance(40),
                sides: vec![],
            })
            .collect();
        let (stop, _) = watch::channel(false);
        let faults = Arc::new(Faults::default());
        faults.on.store(true, Relaxed);
        Sim {
            rng,
            clocks,
            fronts: Rng(seed ^ 0xd1a1_ec75_d1a1_ec75),
            relays,
            links,
            acked: vec![],
            clients: vec![],
            stop,
            stats: Arc::new(Links::default()),
            faults,
            bursts: 0,
            log: vec![],
            counts: BTreeMap::new(),
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
            l.sides.clear();
            let (Some(ea), Some(eb)) = (
                self.relays[l.a].engine.clone(),
                self.relays[l.b].engine.clone(),
            ) else {
                continue;
            };
            l.delay_seed = Rng(l.delay_seed).draw();
            let (a_out, a_wire) = mpsc::channel(16);
            let (b_in_tx, b_in) = mpsc::channel(16);
            let (b_out, b_wire) = mpsc::channel(16);
            let (a_in_tx, a_in) = mpsc::channel(16);
            let f = self.faults.clone();
            l.tasks
                .push(wire(a_wire, b_in_tx, l.delay_seed, l.faulty, f.clone()));
            l.tasks
                .push(wire(b_wire, a_in_tx, l.delay_seed ^ 1, l.faulty, f));
            for (e, rx, tx, from, to) in [(ea, a_in, a_out, l.a, l.b), (eb, b_in, b_out, l.b, l.a)]
            {
                let spaces = self.relays[from].spaces.clone();
                let stop = self.stop.subscribe();
                let guard = self.stats.open("sim", format!("link{k}"), true, 0);
                l.sides.push(Side {
                    from,
                    to,
                    stats: guard.stats.clone(),
                    checked: 0,
                });
                let batch_bytes = l.batch_bytes;
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
                            batch_bytes,
                        };
                        let r = session::run(e, g, rx, tx, opts, guard.stats.clone(), stop).await;
                        if debug() {
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
        if debug() {
            eprintln!("sim: {what}");
        }
        self.log.push(what);
    }

    fn count(&mut self, what: &'static str) {
        *self.counts.entry(what).or_default() += 1;
    }

    fn cut(&mut self, k: usize) {
        for t in self.links[k].tasks.drain(..) {
            t.abort();
        }
        self.links[k].sides.clear();
    }

    fn running(&mut self) -> Option<(usize, Arc<Engine>)> {
        let i = self.rng.below(self.relays.len() as u64) as usize;
        self.relays[i].engine.clone().map(|e| (i, e))
    }

    async fn step(&mut self) -> Result<(), String> {
        let n = self.relays.len();
        match self.rng.below(100) {
            0..=49 => self.write().await?,
            50..=57 => {
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
            58..=62 => {
                let i = self.rng.below(n as u64) as usize;
                self.note(format!("relay {i} restarts"));
                self.restart(i, false).await;
            }
            63..=67 => {
                let i = self.rng.below(n as u64) as usize;
                self.restart(i, true).await;
            }
            68..=75 => {
                if let Some((i, e)) = self.running() {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    let t = e.trim(Duration::ZERO).await.unwrap();
                    self.note(format!("relay {i} trims {t}"));
                    *self.counts.entry("log entries trimmed").or_default() += t;
                }
            }
            76..=81 => self.group().await?,
            82..=86 => self.burst().await?,
            87..=91 => {
                if self.clients.len() < 6 {
                    if let Some((i, e)) = self.running() {
                        let space = SPACES[self.rng.below(3) as usize];
                        let page = 1 + self.rng.below(4) as usize;
                        let g = self.relays[i].generation;
                        self.note(format!(
                            "a client subscribes to {space} at relay {i} (pages of {page})"
                        ));
                        self.clients.push(Client::new(&e, i, g, space, page)?);
                    }
                }
            }
            _ => {
                for c in 0..self.clients.len() {
                    self.pump(c, 2).await?;
                }
            }
        }
        // One catch-up page of one client between steps: retention trims
        // and writes land between its pages.
        if !self.clients.is_empty() && self.rng.chance(60) {
            let c = self.rng.below(self.clients.len() as u64) as usize;
            self.pump(c, 1).await?;
        }
        self.dial();
        // Let the network move a little between steps.
        for _ in 0..self.rng.below(4) {
            tokio::task::yield_now().await;
        }
        if self.rng.chance(20) {
            tokio::time::sleep(Duration::from_millis(self.rng.below(5))).await;
        }
        Ok(())
    }

    /// A client takes up to `pages` catch-up pages (reconnecting first if
    /// its relay restarted). When that brings it live, its state is
    /// compared with the relay's, with the writer held still.
    async fn pump(&mut self, c: usize, pages: usize) -> Result<(), String> {
        let i = self.clients[c].relay;
        let Some(e) = self.relays[i].engine.clone() else {
            return Ok(());
        };
        let g = self.relays[i].generation;
        let client = &mut self.clients[c];
        if client.generation != g {
            client.reconnect(&e, g)?;
        }
        let was_live = client.is_live();
        client.pump(&e, pages)?;
        if !was_live && client.is_live() {
            let Ok(hold) = e.hold_writer().await else {
                return Ok(());
            };
            let r = self.clients[c].check(&e);
            drop(hold);
            self.count("client checks");
            r?;
        }
        Ok(())
    }

    /// A local write as a client would make it: a random op on one of six
    /// entities, with the client's clock sometimes skewed either way.
    fn gen_write(&mut self) -> (String, LocalWrite) {
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
        let client_ms = self.rng.chance(30).then(|| {
            let now = outpost::engine::now_ms();
            let skew = self.rng.below(20_000);
            if self.rng.chance(50) {
                now.saturating_sub(skew)
            } else {
                now + skew
            }
        });
        let w = LocalWrite {
            collection: "c".into(),
            id,
            op,
            fields,
            client_us: client_ms.map(|ms| ms * 1000),
            expect: None,
        };
        (space, w)
    }

    fn record(&mut self, relay: usize, space: &str, w: &LocalWrite, o: &outpost::store::Outcome) {
        if debug() {
            eprintln!(
                "sim: relay {relay} wrote {:?} {space}/{} seq {}",
                w.op, w.id, o.origin_seq
            );
        }
        self.acked.push(Acked {
            relay,
            space: space.to_string(),
            collection: w.collection.clone(),
            id: w.id.clone(),
            op: w.op,
            fields: w.fields.keys().cloned().collect(),
            key: outpost::model::WriteKey {
                stamp: o.stamp,
                seq: o.origin_seq,
            },
            clocked: w.client_us.is_none(),
        });
    }

    /// A client's write: half of them straight to the engine (what every
    /// dialect calls), half as a frame of one of the client protocols.
    async fn write(&mut self) -> Result<(), String> {
        let Some((i, e)) = self.running() else {
            return Ok(());
        };
        let (space, w) = self.gen_write();
        if self.fronts.chance(50) {
            let kind = dialects::ALL[self.fronts.below(dialects::ALL.len() as u64) as usize];
            let n = self.fronts.below(3);
            return self.dialect_write(i, &e, kind, &space, &w, n).await;
        }
        let out = e
            .push(&space, "sim", None, vec![w.clone()])
            .await
            .expect("write");
        self.record(i, &space, &w, &out[0]);
        Ok(())
    }

    /// `w` as a frame of dialect `kind` to relay `i`: the answer is the
    /// seed's (checked in `dialects::write`), and the changes the relay
    /// logged for it are the writes the frame stands for (native: at the
    /// seqs its ack gave). Each is an acked write from then on, checked
    /// like the others (present or superseded on every relay that carries
    /// the space), and at once on the relay.
    async fn dialect_write(
        &mut self,
        i: usize,
        e: &Arc<Engine>,
        kind: dialects::Kind,
        space: &str,
        w: &LocalWrite,
        n: u64,
    ) -> Result<(), String> {
        self.note(format!(
            "relay {i}: a {} client writes {:?} {space}/{}",
            kind.name(),
            w.op,
            w.id
        ));
        let before = e.last_seq();
        let ctx = dialects::ctx(e);
        let wrote = dialects::write(&ctx, kind, space, w, n)
            .await
            .map_err(|err| format!("relay {i}: a {} write: {err}", kind.name()))?;
        drop(ctx);
        // Only the sim's steps write locally, one at a time: the relay's
        // own changes after `before` are this frame's.
        let node = e.node_id();
        let logged: Vec<(u64, outpost::store::LogEntry)> = e
            .log_after(before, 100_000)
            .map_err(|err| err.to_string())?
            .into_iter()
            .filter(|(_, l)| l.change.origin == node)
            .collect();
        let (expect, clocked, seqs) = match wrote {
            dialects::Wrote::Refused(why) => {
                if !logged.is_empty() {
                    return Err(format!(
                        "relay {i}: a refused {} write stored {} changes: {why}",
                        kind.name(),
                        logged.len()
                    ));
                }
                self.count("seed 002 uploads refused for a peer's revision");
                return Ok(());
            }
            dialects::Wrote::Stored {
                expect,
                clocked,
                seqs,
            } => (expect, clocked, seqs),
        };
        let got: Vec<_> = logged
            .iter()
            .map(|(_, l)| {
                let c = &l.change;
                (c.collection.clone(), c.id.clone(), c.op, c.fields.clone())
            })
            .collect();
        match expect {
            Some(expect) => {
                let want: Vec<_> = expect
                    .iter()
                    .map(|x| (x.collection.clone(), x.id.clone(), x.op, x.fields.clone()))
                    .collect();
                if got != want {
                    return Err(format!(
                        "relay {i}: a {} write of {want:?} was stored as {got:?}",
                        kind.name()
                    ));
                }
            }
            None => {
                let docs = got
                    .iter()
                    .filter(|g| g.0 == dialects::CONFIG_COLLECTIONS[0])
                    .count();
                if docs != 1
                    || got
                        .iter()
                        .any(|g| !dialects::CONFIG_COLLECTIONS.contains(&g.0.as_str()))
                {
                    return Err(format!(
                        "relay {i}: a seed 002 upload was stored as {got:?}"
                    ));
                }
            }
        }
        let at: Vec<u64> = logged.iter().map(|(seq, _)| *seq).collect();
        if !seqs.is_empty() && seqs != at {
            return Err(format!(
                "relay {i}: a {} write was acked at seqs {seqs:?} but logged at {at:?}",
                kind.name()
            ));
        }
        for (_, l) in logged {
            let c = l.change;
            let a = Acked {
                relay: i,
                space: space.to_string(),
                collection: c.collection,
                id: c.id,
                op: c.op,
                fields: c.fields.keys().cloned().collect(),
                key: outpost::model::WriteKey {
                    stamp: c.stamp,
                    seq: c.seq,
                },
                clocked,
            };
            if !holds(e, &a) {
                return Err(format!(
                    "relay {i}: a {} write of {}/{} was acked, but the relay's state lacks it",
                    kind.name(),
                    a.collection,
                    a.id
                ));
            }
            self.acked.push(a);
        }
        self.count(kind.name());
        Ok(())
    }

    /// One commit group holding good jobs, bad ones (a failed precondition,
    /// a schema violation, a write to a record that does not decode) and
    /// maybe a retention trim, queued in a seeded order behind the held
    /// writer (replication jobs of the relay's sessions may join). Every
    /// good job must be acked, each bad one refused with its own error,
    /// and the trim must not be refused for a neighbour's fault.
    async fn group(&mut self) -> Result<(), String> {
        let Some((i, e)) = self.running() else {
            return Ok(());
        };
        #[derive(Clone, Copy, Debug, PartialEq)]
        enum Kind {
            Good,
            Precondition,
            Schema,
            Rot,
            Trim,
        }
        let mut kinds = vec![Kind::Good; 2 + self.rng.below(4) as usize];
        for _ in 0..1 + self.rng.below(3) {
            kinds.push(match self.rng.below(3) {
                0 => Kind::Precondition,
                1 => Kind::Schema,
                _ => Kind::Rot,
            });
        }
        if self.rng.chance(60) {
            kinds.push(Kind::Trim);
        }
        self.rng.shuffle(&mut kinds);
        self.note(format!("relay {i} commits a group {kinds:?}"));
        let Ok(hold) = e.hold_writer().await else {
            return Ok(());
        };
        let horizon = e.horizon();
        type Pushed = JoinHandle<Result<Vec<outpost::store::Outcome>, EngineError>>;
        type Queued = (Kind, Option<(String, LocalWrite)>, Pushed);
        let mut jobs: Vec<Queued> = Vec::new();
        for &kind in &kinds {
            let before = e.jobs_enqueued();
            let (space, w) = match kind {
                Kind::Trim => {
                    let e2 = e.clone();
                    let t =
                        tokio::spawn(
                            async move { e2.trim(Duration::ZERO).await.map(|_| Vec::new()) },
                        );
                    jobs.push((kind, None, t));
                    wait_queued(&e, before).await?;
                    continue;
                }
                Kind::Good => self.gen_write(),
                Kind::Precondition => {
                    let (space, mut w) = self.gen_write();
                    w.expect = Some(Expect::Version(1_000_000));
                    (space, w)
                }
                Kind::Schema => {
                    let (space, mut w) = self.gen_write();
                    w.collection = "typed".into();
                    w.op = Op::Put;
                    w.fields = [("n".to_string(), json!("not a number"))].into();
                    (space, w)
                }
                Kind::Rot => {
                    let (_, mut w) = self.gen_write();
                    w.id = "bad".into();
                    w.op = Op::Patch;
                    w.fields = [("a".to_string(), json!(1))].into();
                    (ROT.to_string(), w)
                }
            };
            let (e2, s2, w2) = (e.clone(), space.clone(), w.clone());
            let t = tokio::spawn(async move { e2.push(&s2, "sim", None, vec![w2]).await });
            jobs.push((kind, Some((space, w)), t));
            wait_queued(&e, before).await?;
        }
        // A second hold ends the group: once the writer parks on it, the
        // group has committed (or failed) and nothing else has since.
        let before = e.jobs_enqueued();
        let e2 = e.clone();
        let hold2 = tokio::spawn(async move { e2.hold_writer().await });
        wait_queued(&e, before).await?;
        drop(hold);
        let hold2 = hold2.await.unwrap().map_err(|err| err.to_string())?;
        let mut acked = Vec::new();
        let mut answered = Vec::new();
        for (kind, write, t) in jobs {
            answered.push((kind, write, t.await.unwrap()));
        }
        // The good jobs and the trim first: a neighbour's fault must not
        // touch them (the bad ones' own answers are checked after).
        answered.sort_by_key(|(kind, _, _)| !matches!(kind, Kind::Good | Kind::Trim));
        for (kind, write, r) in answered {
            match (kind, &r) {
                (Kind::Good, Ok(out)) => acked.push((write.expect("a write"), out[0].clone())),
                (Kind::Trim, Ok(_)) => {}
                (Kind::Trim, Err(err)) => {
                    if e.horizon() != horizon {
                        return Err(format!(
                            "relay {i}: a refused trim moved the trim point from {horizon} to {}",
                            e.horizon()
                        ));
                    }
                    return Err(format!(
                        "relay {i}: a trim in a group with bad jobs was refused: {err}"
                    ));
                }
                (
                    Kind::Precondition,
                    Err(EngineError::Store(StoreError::PreconditionFailed { .. })),
                )
                | (Kind::Schema, Err(EngineError::Schema { .. }))
                | (Kind::Rot, Err(EngineError::Store(StoreError::Decode(_)))) => {}
                (kind, r) => {
                    return Err(format!(
                        "relay {i}: a {kind:?} job in a group of {kinds:?} was answered {r:?}"
                    ))
                }
            }
        }
        drop(hold2);
        // The good ones were acked: they are checked with the other acked
        // writes (every step, and at the end after restarts and crashes).
        for ((space, w), out) in acked {
            self.record(i, &space, &w, &out);
        }
        self.count("groups");
        Ok(())
    }

    /// Pipelined writes from one connection (`engine::WriteOrder`), whose
    /// futures are polled in a seeded order, as a connection's are in
    /// whatever order the runtime picks: commit order must be send order.
    async fn burst(&mut self) -> Result<(), String> {
        let Some((i, e)) = self.running() else {
            return Ok(());
        };
        let space = SPACES[self.rng.below(3) as usize].to_string();
        let id = format!("pipe{}", self.bursts);
        self.bursts += 1;
        let n = 3 + self.rng.below(8) as usize;
        let mut order = WriteOrder::default();
        let writes: Vec<LocalWrite> = (0..n)
            .map(|k| LocalWrite {
                collection: "c".into(),
                id: id.clone(),
                op: Op::Patch,
                fields: [("v".to_string(), json!(k))].into(),
                client_us: None,
                expect: None,
            })
            .collect();
        let mut futures: Vec<_> = writes
            .iter()
            .enumerate()
            .map(|(k, w)| {
                let f = order.push(
                    e.clone(),
                    space.clone(),
                    "sim".into(),
                    Some(1),
                    vec![w.clone()],
                    vec![],
                );
                async move { (k, f.await) }
            })
            .collect();
        self.rng.shuffle(&mut futures);
        self.note(format!("relay {i} pipelines {n} patches of {space}/{id}"));
        let mut results = futures_util::future::join_all(futures).await;
        results.sort_by_key(|(k, _)| *k);
        let mut last = 0;
        for (k, r) in results {
            let out = match r {
                Ok(o) => o,
                // The relay went down meanwhile: nothing to check.
                Err(_) => return Ok(()),
            };
            if out[0].seq <= last {
                return Err(format!(
                    "relay {i}: pipelined patch {k} of {space}/{id} committed at seq {} before the one sent ahead of it (seq {last})",
                    out[0].seq
                ));
            }
            last = out[0].seq;
            self.record(i, &space, &writes[k], &out[0]);
        }
        let ent = e.entity(&space, "c", &id).map_err(|err| err.to_string())?;
        let v = ent.and_then(|x| x.state.visible().get("v").cloned());
        if v != Some(json!(n - 1)) {
            return Err(format!(
                "relay {i}: after {n} pipelined patches of {space}/{id}.v the value is {v:?}, not the last sent ({})",
                n - 1
            ));
        }
        self.count("bursts");
        Ok(())
    }

    /// Stop a relay and open it again from its disk: drained (its links
    /// drop, its writer finishes what is queued and closes the file), or
    /// crashed (the disk keeps only what was synced, or some of the rest,
    /// and the process can do nothing more).
    async fn restart(&mut self, i: usize, crash: bool) {
        for k in 0..self.links.len() {
            if self.links[k].a == i || self.links[k].b == i {
                self.cut(k);
            }
        }
        // A crash strikes under load: local writes in flight, some acked
        // before it (they must survive), the others refused.
        let mut inflight = Vec::new();
        if crash {
            if let Some(e) = self.relays[i].engine.clone() {
                for _ in 0..self.rng.below(6) {
                    let (space, w) = self.gen_write();
                    let e = e.clone();
                    let w2 = w.clone();
                    let s2 = space.clone();
                    inflight.push((
                        space,
                        w,
                        tokio::spawn(async move { e.push(&s2, "sim", None, vec![w2]).await }),
                    ));
                }
                // Let some of them commit first.
                for _ in 0..self.rng.below(4) {
                    tokio::task::yield_now().await;
                }
            }
        }
        if crash {
            let torn = self.rng.chance(50);
            let seed = self.rng.draw();
            let disk = self.relays[i].disk.clone();
            // Mostly during a commit (the next sync), else wherever it is.
            let what = if inflight.is_empty() {
                disk.crash(seed, torn)
            } else {
                disk.crash_at_next_sync(seed, torn);
                let mut struck = None;
                for _ in 0..20 {
                    struck = disk.crashed();
                    if struck.is_some() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                match struck {
                    Some(c) => c,
                    None => disk
                        .crash_if_armed()
                        .or_else(|| disk.crashed())
                        .unwrap_or_default(),
                }
            };
            self.note(format!(
                "relay {i} crashes ({} unsynced sectors lost, {} kept)",
                what.sectors_lost, what.sectors_kept
            ));
            self.count("crashes");
            *self.counts.entry("unsynced sectors lost").or_default() += what.sectors_lost as u64;
            *self.counts.entry("unsynced sectors kept").or_default() += what.sectors_kept as u64;
        }
        for (space, w, t) in inflight {
            match t.await.unwrap() {
                Ok(out) => {
                    self.count("writes acked just before a crash");
                    self.record(i, &space, &w, &out[0]);
                }
                Err(_) => self.count("writes refused by a crash"),
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
        // The clock as the process finds it at start: often as it was;
        // sometimes set back (a board without a real-time clock, a bad
        // NTP source) by up to MAX_SKEW, or corrected to another skew.
        let r = &mut self.relays[i];
        match self.clocks.below(10) {
            0..=2 => {
                let back = 1 + self.clocks.below(MAX_SKEW) as i64;
                r.skew.fetch_sub(back, Relaxed);
                self.counts
                    .entry("clocks set back at a restart")
                    .and_modify(|n| *n += 1)
                    .or_insert(1);
            }
            3 => r.skew.store(
                self.clocks.below(2 * MAX_SKEW + 1) as i64 - MAX_SKEW as i64,
                Relaxed,
            ),
            _ => {}
        }
        r.generation += 1;
        r.engine = Some(open(r.dir.path(), &r.disk, &r.skew));
    }

    fn engines(&self) -> Vec<Arc<Engine>> {
        self.relays
            .iter()
            .map(|r| r.engine.clone().expect("running"))
            .collect()
    }

    async fn converge(&mut self) -> Result<(), String> {
        self.faults.on.store(false, Relaxed);
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

    /// At any moment: what a session's sender counts as acknowledged (its
    /// durable cursor, the retention pin of an upstream, and the backlog
    /// gauge come from it) is held by the peer. Read in that order: the
    /// peer commits before it acks, and its version vector only grows.
    /// Each side's log is checked once up to each acked position.
    fn check_acked(&mut self) -> Result<(), String> {
        for l in &mut self.links {
            for side in &mut l.sides {
                let acked = side.stats.acked.load(Relaxed);
                if acked <= side.checked {
                    continue;
                }
                let (Some(from), Some(to)) = (
                    self.relays[side.from].engine.as_ref(),
                    self.relays[side.to].engine.as_ref(),
                ) else {
                    continue;
                };
                let vv = to.version_vector().unwrap();
                let peer = self.relays[side.to].node;
                let entries = from
                    .log_after(side.checked, (acked - side.checked) as usize)
                    .unwrap();
                for (seq, l) in entries {
                    if seq > acked {
                        break;
                    }
                    let c = &l.change;
                    if c.origin != peer && vv.get(&c.origin).copied().unwrap_or(0) < c.seq {
                        return Err(format!(
                            "relay {}'s link to relay {} counts local seq {seq} as acked (acked up to {acked}), but the peer lacks that change (origin {} seq {}, peer holds {:?})",
                            side.from, side.to, c.origin, c.seq, vv.get(&c.origin)
                        ));
                    }
                }
                side.checked = acked;
            }
        }
        Ok(())
    }

    /// At any moment: each relay's log holds every seq from its first
    /// entry to its last (retention removes a prefix only).
    fn check_log(&self) -> Result<(), String> {
        for (i, r) in self.relays.iter().enumerate() {
            let Some(e) = &r.engine else { continue };
            let log = e.log_after(0, 1_000_000).unwrap();
            if let (Some((first, _)), Some((last, _))) = (log.first(), log.last()) {
                if log.len() as u64 != last - first + 1 {
                    return Err(format!(
                        "relay {i}'s log has a hole (first {first}, last {last}, {} entries)",
                        log.len()
                    ));
                }
            }
        }
        Ok(())
    }

    async fn check(&mut self) -> Result<(), String> {
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
                    .filter_map(|(c, id, e)| {
                        let other = es[j].entity(space, &c, &id).unwrap();
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
        // A relay's own stamps grow with its writes, though its clock was
        // set back at restarts (the persisted clock, `model::Hlc`).
        for i in 0..es.len() {
            let mut own: Vec<&Acked> = self
                .acked
                .iter()
                .filter(|w| w.relay == i && w.clocked)
                .collect();
            own.sort_by_key(|w| w.key.seq);
            if let Some(p) = own
                .windows(2)
                .position(|p| p[1].key.stamp <= p[0].key.stamp)
            {
                return Err(format!(
                    "relay {i}: write {} stamped {:?}, not after write {} ({:?})",
                    own[p + 1].key.seq,
                    own[p + 1].key.stamp,
                    own[p].key.seq,
                    own[p].key.stamp
                ));
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
        // Every client, brought live, holds its relay's state.
        for c in 0..self.clients.len() {
            let i = self.clients[c].relay;
            let e = es[i].clone();
            let g = self.relays[i].generation;
            if self.clients[c].generation != g {
                self.clients[c].reconnect(&e, g)?;
            }
            let hold = e.hold_writer().await.map_err(|err| err.to_string())?;
            let r = self.clients[c].check(&e);
            drop(hold);
            r?;
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

/// Wait until the relay's writer queue took one more job than `before`.
async fn wait_queued(e: &Engine, before: u64) -> Result<(), String> {
    for _ in 0..5000 {
        if e.jobs_enqueued() > before {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Err("a job never reached the writer queue".into())
}

/// The relay's state holds the acked write `w` or something newer.
fn holds(e: &Engine, w: &Acked) -> bool {
    let Some(ent) = e.entity(&w.space, &w.collection, &w.id).unwrap() else {
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

async fn run_seed(seed: u64, steps: usize) -> Result<BTreeMap<&'static str, u64>, String> {
    let mut sim = Sim::new(seed);
    sim.dial();
    let mut result = Ok(());
    for _ in 0..steps {
        result = sim.step().await;
        if result.is_ok() {
            result = sim
                .check_vv_backed()
                .and_then(|()| sim.check_acked())
                .and_then(|()| sim.check_log());
        }
        if result.is_err() {
            break;
        }
    }
    let result = match result {
        Err(e) => Err(e),
        Ok(()) => match sim.converge().await {
            Ok(()) => match sim.check_vv_backed().and_then(|()| sim.check_acked()) {
                Ok(()) => sim.check().await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        },
    };
    let mut counts = sim.counts.clone();
    counts.insert("frames duplicated", sim.faults.duplicated.load(Relaxed));
    counts.insert("frames swapped", sim.faults.swapped.load(Relaxed));
    counts.insert("acked writes", sim.acked.len() as u64);
    let result = result.map_err(|e| {
        let filters: Vec<_> = sim
            .relays
            .iter()
            .map(|r| (r.node, r.spaces.clone()))
            .collect();
        let links: Vec<_> = sim
            .links
            .iter()
            .map(|l| (l.a, l.b, l.batch_bytes, l.faulty))
            .collect();
        format!(
            "seed {seed}: {e}\n  relays {} links (a, b, batch bytes, faulty) {links:?} filters {filters:?}\n  last events: {:?}\n  replay: SIM_SEED={seed} SIM_STEPS={steps} cargo test --test sim (SIM_DEBUG=1 for a trace)",
            sim.relays.len(),
            sim.log.iter().rev().take(12).collect::<Vec<_>>()
        )
    });
    sim.finish().await;
    result.map(|()| counts)
}

fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("SIM_SEED") {
        return vec![s.parse().expect("SIM_SEED is a number")];
    }
    let from: u64 = std::env::var("SIM_FROM")
        .map(|n| n.parse().expect("SIM_FROM is a number"))
        .unwrap_or(0);
    let n: u64 = std::env::var("SIM_SEEDS")
        .map(|n| n.parse().expect("SIM_SEEDS is a number"))
        .unwrap_or(16);
    (from..from + n).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_relays_converge_and_keep_every_acked_write() {
    if debug() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(std::env::var("SIM_LOG").unwrap_or("outpost=debug".into()))
            .with_writer(std::io::stderr)
            .try_init();
    }
    let steps: usize = std::env::var("SIM_STEPS")
        .ok()
        .map(|s| s.parse().expect("SIM_STEPS is a number"))
        .unwrap_or(120);
    let mut total: BTreeMap<&'static str, u64> = BTreeMap::new();
    let started = std::time::Instant::now();
    let seeds = seeds();
    for &seed in &seeds {
        match run_seed(seed, steps).await {
            Ok(counts) => {
                // A long run says how far it got.
                if seeds.len() > 16 {
                    eprintln!("sim: seed {seed} passed ({:.0?} so far)", started.elapsed());
                }
                for (k, v) in counts {
                    *total.entry(k).or_default() += v;
                }
            }
            Err(e) => panic!("{e}"),
        }
    }
    // What the run exercised (a check that never ran proves nothing).
    eprintln!(
        "sim: {} seeds x {steps} steps in {:.1?}: {total:?}",
        seeds.len(),
        started.elapsed()
    );
    if seeds.len() >= 16 {
        let dialects = dialects::ALL.map(dialects::Kind::name);
        let checks = ["groups", "bursts", "client checks", "crashes"];
        let clocks = ["clocks set back at a restart", "log entries trimmed"];
        for what in checks.iter().chain(&dialects).chain(&clocks) {
            assert!(
                total.get(what).copied().unwrap_or(0) > 0,
                "the seeds exercised no {what}"
            );
        }
    }
}
