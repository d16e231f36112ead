//! The harness of the dialects' table tests: a dialect fed frames, its
//! effects ([`Handled`]) collected as JSON. No socket, no connection
//! driver, no async runtime.
//!
//! Every dialect but seed 002 is made directly, with no engine at all
//! ([`Conn::pure`]): its engine calls ([`Call`], [`Publish`]) and its paged
//! reads' store queries ([`Query`]) are effects the test reads, and the
//! test feeds their results back ([`Conn::reply`], [`Conn::rows`]) with
//! values it builds ([`fake`]). Seed 002 is still made by its handshake
//! over an engine in a temporary directory ([`Bench`]): its calls are made
//! against it, a write's answer awaited with a plain thread-parking
//! executor (the engine's writer is a thread of its own).

mod atome_sync;
mod config_sync;
pub mod fake;
mod kv;
mod native;
mod sync;
mod unified;

use super::{
    Call, ConnCtx, ConnSettings, Ctx, Dialect, Handled, Publish, Query, Read, Reply, Rows, Shared,
    Since,
};
use crate::auth::{Auth, Scope};
use crate::config::Anonymous;
use crate::engine::{Engine, EngineSettings};
use crate::store::Durability;
use axum::extract::ws::Utf8Bytes;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake};
use std::time::{Duration, Instant};

pub const SECRET: &[u8] = b"a table test secret of 32 bytes!";

/// The time every input of a table test is given (2026-01-01T00:00:00Z),
/// so the timestamps in frames are checked exactly.
pub const NOW: u64 = 1_767_225_600_000;
/// [`NOW`] as the seeds' ISO timestamps render it.
pub const NOW_ISO: &str = "2026-01-01T00:00:00.000Z";

/// An engine in a temporary directory and the context handlers get.
pub struct Bench {
    pub ctx: Ctx,
    _dir: tempfile::TempDir,
}

impl Bench {
    /// Auth with [`SECRET`]; anonymous clients may write.
    pub fn new() -> Bench {
        Bench::with(Anonymous::Write, Default::default())
    }

    /// Anonymous access as given, `forms` the `[forms]` schemas by name.
    pub fn with(anonymous: Anonymous, forms: BTreeMap<String, Value>) -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let s = EngineSettings {
            durability: Durability::Relaxed,
            max_queued_bytes: usize::MAX,
            ..EngineSettings::for_tests(&dir.path().join("data"))
        };
        let engine = Engine::open(s, Default::default()).unwrap();
        let mut paths = BTreeMap::new();
        for (name, schema) in forms {
            let p = dir.path().join(format!("{name}.json"));
            std::fs::write(&p, schema.to_string()).unwrap();
            paths.insert(name, p);
        }
        let forms = crate::schema::SchemaSet::load(&paths, None).unwrap();
        let (_tx, shutdown) = tokio::sync::watch::channel(false);
        let ctx = Ctx::new(Shared {
            engine,
            auth: Auth::new(Some(SECRET), anonymous),
            settings: ConnSettings {
                max_frame_bytes: 1 << 20,
                max_inflight: 256,
                max_subscriptions: 256,
                max_connections: 16,
                queue_depth: 1024,
                max_queue_bytes: 16 << 20,
                idle_timeout: Duration::from_secs(60),
                forms: Arc::new(forms),
            },
            shutdown,
            net: Default::default(),
            upstream: None,
        });
        Bench { ctx, _dir: dir }
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.ctx.engine
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        self.ctx.engine.shutdown();
    }
}

/// One connection's dialect.
pub struct Conn<D> {
    pub dialect: D,
    /// The engine paged reads and calls run against (None: a pure
    /// dialect's test, which has none).
    engine: Option<Arc<Engine>>,
    /// A pure dialect's paged read waiting for the rows of its query
    /// ([`Conn::rows`]).
    reading: Option<Box<dyn Read>>,
    /// The connection's accounting, held while the dialect lives.
    _cc: Option<ConnCtx>,
}

impl<D: Dialect> Conn<D> {
    /// A dialect with no engine behind it.
    pub fn pure(dialect: D) -> Conn<D> {
        Conn {
            dialect,
            engine: None,
            reading: None,
            _cc: None,
        }
    }

    /// The effects of `h`. Over a [`Bench`], an engine call is made
    /// against its engine (a write awaited with [`block_on`]) and the
    /// result fed back at once, as the driver would: what the dialect then
    /// answers is `later`; a paged read is run query by query, all its
    /// pages in `read`. A pure dialect's call is left for the test, and
    /// so is its read: `query` is what it asks first, and the test feeds
    /// rows ([`Conn::rows`]).
    fn effects(&mut self, mut h: Handled) -> Effects {
        let made = match (&self.engine, h.call.take().map(|c| *c)) {
            (Some(engine), Some((token, call))) => Some((token, block_on(call.make(engine, None)))),
            (None, call) => {
                h.call = call.map(Box::new);
                None
            }
            (Some(_), None) => None,
        };
        let read = h.read.take();
        let mut e = Effects::of(h);
        if let Some(mut r) = read {
            match &self.engine {
                Some(engine) => {
                    while let Some(q) = r.query() {
                        let rows = q.run(engine).unwrap();
                        e.read.extend(r.rows(rows).iter().map(|f| parse(f)));
                    }
                    e.followed(r.then());
                }
                None => {
                    self.reading = Some(r);
                    self.next_query(&mut e);
                }
            }
        }
        if let Some((token, reply)) = made {
            let h = self.dialect.reply(token, reply, NOW);
            let answered = self.effects(h);
            e.later.extend(answered.now);
            e.later.extend(answered.later);
        }
        e
    }

    /// The pending read's next query into `e`; its follows once done.
    fn next_query(&mut self, e: &mut Effects) {
        let Some(mut r) = self.reading.take() else {
            return;
        };
        match r.query() {
            Some(q) => {
                e.query = Some(q);
                self.reading = Some(r);
            }
            None => e.followed(r.then()),
        }
    }

    pub fn open(&mut self) -> Effects {
        let h = self.dialect.open(NOW);
        self.effects(h)
    }

    pub fn text(&mut self, frame: &str) -> Effects {
        let h = self.dialect.on_text(frame, NOW);
        self.effects(h)
    }

    pub fn binary(&mut self, data: &[u8]) -> Effects {
        let h = self.dialect.on_binary(data, NOW);
        self.effects(h)
    }

    /// Feed the result of the call made with `token`.
    pub fn reply(&mut self, token: u64, reply: Reply) -> Effects {
        let h = self.dialect.reply(token, reply, NOW);
        self.effects(h)
    }

    /// Feed the rows of the pending read's query: its frames in `read`,
    /// its next query in `query` (or, once done, its follows).
    pub fn rows(&mut self, rows: Rows) -> Effects {
        let r = self.reading.as_mut().expect("a read waiting for rows");
        let mut e = Effects {
            read: r.rows(rows).iter().map(|f| parse(f)).collect(),
            ..Effects::default()
        };
        self.next_query(&mut e);
        e
    }

    pub fn json(&mut self, frame: Value) -> Effects {
        self.text(&frame.to_string())
    }

    /// The frames of `c` (a change of feed `feed`) rendered as the driver
    /// does: with `state` (the entity's current state, which the driver
    /// would read) when the dialect asks for it.
    pub fn render(
        &mut self,
        feed: u64,
        c: &crate::engine::Committed,
        state: Option<&crate::store::StoredEntity>,
    ) -> Vec<Value> {
        let state = if self.dialect.needs_state(feed, c) {
            state
        } else {
            None
        };
        let mut out = Vec::new();
        self.dialect.change(feed, c, state, &mut out);
        out.iter().map(|f| parse(f)).collect()
    }
}

/// A feed started: (key, space, collections (None: all), events, since).
pub type Followed = (u64, String, Option<Vec<String>>, bool, Since);

/// What handling one frame produced, frames parsed as JSON.
#[derive(Debug, Default)]
pub struct Effects {
    /// Sent at once.
    pub now: Vec<Value>,
    /// Sent by the paged read: all its pages over a [`Bench`]; a pure
    /// dialect's, the page of the rows just fed.
    pub read: Vec<Value>,
    /// What a pure dialect's paged read asks to read next.
    pub query: Option<Query>,
    /// Over a [`Bench`]: what the dialect answered once the engine call
    /// it asked for was made and its result fed back (a write's commit).
    pub later: Vec<Value>,
    /// Feeds started, in order.
    pub follow: Vec<Followed>,
    pub unfollow: Vec<u64>,
    /// The engine call made, with its token.
    pub call: Option<(u64, Call)>,
    /// The event published.
    pub publish: Option<Publish>,
    /// Whether a round with the upstream hub was asked for.
    pub wake_upstream: bool,
}

pub fn parse(frame: &str) -> Value {
    serde_json::from_str(frame).unwrap_or_else(|e| panic!("not JSON ({e}): {frame}"))
}

impl Effects {
    /// The effects of `h` but its read (which [`Conn`] runs).
    pub fn of(h: Handled) -> Effects {
        let mut e = Effects {
            now: h.now.iter().map(|f| parse(f)).collect(),
            unfollow: h.unfollow,
            call: h.call.map(|c| *c),
            publish: h.publish.map(|p| *p),
            wake_upstream: h.wake_upstream,
            ..Effects::default()
        };
        e.followed(h.follow);
        e
    }

    fn followed(&mut self, follow: Vec<crate::dialect::Follow>) {
        for f in follow {
            let mut c: Option<Vec<String>> = f.filter.collections.map(|c| c.into_iter().collect());
            if let Some(c) = c.as_mut() {
                c.sort();
            }
            self.follow
                .push((f.key, f.space, c, f.filter.events, f.since));
        }
    }

    /// Nothing at all.
    pub fn is_empty(&self) -> bool {
        self.call.is_none()
            && !self.wake_upstream
            && self.query.is_none()
            && self.publish.is_none()
            && self.now.is_empty()
            && self.read.is_empty()
            && self.later.is_empty()
            && self.follow.is_empty()
            && self.unfollow.is_empty()
    }

    /// The one frame sent at once.
    pub fn reply(&self) -> &Value {
        assert_eq!(self.now.len(), 1, "one frame at once: {self:?}");
        assert!(self.later.is_empty() && self.read.is_empty(), "{self:?}");
        assert!(self.call.is_none(), "{self:?}");
        &self.now[0]
    }

    /// The one engine call made: its token and the call.
    pub fn called(&self) -> (u64, &Call) {
        assert!(self.now.is_empty() && self.later.is_empty(), "{self:?}");
        let (token, call) = self.call.as_ref().expect("an engine call");
        (*token, call)
    }
}

/// Feed `frames` to an atome dialect (seeds 000, 001): each must be one
/// write of atome `a1` in space `s` as `actor`, with the op given, which is
/// then stored (as seq 1, 2, ...) and answered by nothing. The changes
/// stored, in order.
pub fn atome_writes<D: Dialect>(
    c: &mut Conn<D>,
    actor: &str,
    frames: Vec<(Value, crate::model::Op)>,
) -> Vec<crate::model::Change> {
    let mut changes = Vec::new();
    for (seq, (frame, op)) in (1..).zip(frames) {
        let e = c.json(frame.clone());
        let (token, call) = e.called();
        let Call::Write {
            space,
            actor: by,
            writes,
            write_ids,
        } = call
        else {
            panic!("{frame}: a write, not {call:?}")
        };
        assert_eq!((space.as_str(), by.as_str()), ("s", actor), "{frame}");
        assert!(write_ids.is_empty(), "{frame}");
        let w = &writes[0];
        assert_eq!(
            (writes.len(), w.collection.as_str(), w.id.as_str(), w.op),
            (1, "atome", "a1", op),
            "{frame}"
        );
        let fields = serde_json::to_value(&w.fields).unwrap();
        changes.push(fake::change("s", "atome", "a1", op, fields, seq));
        let stored = Reply::Written(Ok(vec![fake::applied(seq, seq)]));
        assert!(c.reply(token, stored).is_empty(), "{frame}: no ack");
    }
    changes
}

/// Whether `actual` holds everything `expected` says: objects by key (more
/// keys allowed), arrays element by element (same length), other values
/// equal.
pub fn fits(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => e
            .iter()
            .all(|(k, v)| a.get(k).is_some_and(|av| fits(v, av))),
        (Value::Array(e), Value::Array(a)) => {
            e.len() == a.len() && e.iter().zip(a).all(|(e, a)| fits(e, a))
        }
        (e, a) => e == a,
    }
}

#[track_caller]
pub fn assert_fits(expected: &Value, actual: &Value, what: &str) {
    assert!(
        fits(expected, actual),
        "{what}:\n expected (at least) {expected}\n got {actual}"
    );
}

/// Run a future to completion on this thread (no runtime: the futures of
/// the dialects wait on channels the engine's writer thread answers).
pub fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        assert!(Instant::now() < deadline, "a future did not finish in 10 s");
        std::thread::park_timeout(Duration::from_millis(50));
    }
}
