//! The one client connection loop, generic over a [`Dialect`].
//!
//! One actor per connection: a `select!` (biased, in this order) over
//! 1. shutdown: stop reading, answer what is in flight, close with 1001;
//! 2. the in-band authentication deadline of the dialect (1008);
//! 3. answers of in-flight requests and engine calls, in request order;
//! 4. the lag signal of fan-out (the one lag policy, see `feed`);
//! 5. the bounded fan-out queue: up to [`BATCH`] frames per flush;
//! 6. the socket, while fewer than `server.max_inflight` requests are in
//!    flight (in ordered mode: while none is), with the keepalive and
//!    idle timeout of [`super::socket`].
//!
//! A client that stops reading is cut off by the socket's write timeout
//! (`net::io`), which every write here goes through.
//!
//! The driver makes the engine calls and store reads its dialect asks for
//! ([`Call`], [`Publish`], a [`Read`]'s queries) and feeds their results
//! back; every store read (a `Get`, a paged read's query, a catch-up page,
//! the entity states a change is rendered with) runs on tokio's blocking
//! pool, never on a worker.

use super::feed::{Feed, Pages};
use super::socket::{Gone, Socket};
use super::ConnCtx;
use crate::dialect::{Call, Dialect, Failed, Follow, Handled, Lag, Read, Refusal, Reply, Since};
use crate::engine::{
    off_worker, Batch, CatchUp, Committed, Delivery, EngineError, Event, WriteOrder,
};
use crate::store::StoredEntity;
use axum::extract::ws::{Message, Utf8Bytes};
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// Queued deliveries written per flush: bounds the time the actor spends
/// away from its other duties and its write buffer; frames written
/// together go out in one syscall.
pub const BATCH: usize = 64;

/// How long a closing connection waits for its in-flight requests.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

struct Driver<D> {
    socket: Socket,
    cc: ConnCtx,
    dialect: D,
    /// Feed key -> feed.
    feeds: HashMap<u64, Feed>,
    /// In-flight requests and engine calls, answered in request order.
    pending: FuturesOrdered<Answering>,
    /// The connection's pushes reach the writer in the order their frames
    /// were read (see `engine::WriteOrder`).
    order: WriteOrder,
    /// A batch's rendered frames (kept: not regrown for every batch).
    out: Vec<Utf8Bytes>,
}

/// An in-flight [`Call`] comes back with its token and result, for the
/// dialect.
type Answer = (u64, Reply);

type Answering = Pin<Box<dyn Future<Output = Answer> + Send>>;

/// A delivery or a replayed change, accepted for rendering.
enum Item {
    Change(u64, Arc<Committed>),
    Event(u64, Arc<Event>),
    Snapshot(u64, Box<(String, String, StoredEntity)>),
}

/// Why the loop ended.
enum End {
    /// The client left (or its socket failed): nothing more to say.
    Gone,
    /// Close with this code and reason.
    Close(u16, &'static str),
}

impl From<Gone> for End {
    fn from(_: Gone) -> End {
        End::Gone
    }
}

/// Why a catch-up stopped short of live.
enum Stop {
    /// The client is gone.
    Gone,
    /// The store failed.
    Failed(EngineError),
}

impl From<EngineError> for Stop {
    fn from(e: EngineError) -> Stop {
        Stop::Failed(e)
    }
}

/// Serve one connection until it closes or the relay shuts down.
pub async fn run<D: Dialect>(socket: Socket, cc: ConnCtx, dialect: D) {
    let mut d = Driver {
        socket,
        cc,
        dialect,
        feeds: HashMap::new(),
        pending: FuturesOrdered::new(),
        order: WriteOrder::default(),
        out: Vec::new(),
    };
    let end = d.serve().await;
    match end {
        End::Gone => {}
        End::Close(code, reason) => d.socket.close(code, reason).await,
    }
}

impl<D: Dialect> Driver<D> {
    async fn serve(&mut self) -> End {
        let opened_at = tokio::time::Instant::now();
        let opened = self.dialect.open(self.now_ms());
        if let Err(e) = self.apply(opened).await {
            return e;
        }
        let mut shutdown = self.cc.state.shutdown.clone();
        let max_inflight = self.cc.state.settings.max_inflight;
        loop {
            let reading = if self.dialect.ordered() {
                self.pending.is_empty()
            } else {
                self.pending.len() < max_inflight
            };
            let deadline = self.dialect.auth_timeout().map(|d| opened_at + d);
            let step: Result<(), End> = tokio::select! {
                biased;
                _ = shutdown.changed() => return self.drain().await,
                _ = sleep_until_opt(deadline), if deadline.is_some() => {
                    Err(End::Close(1008, "authentication required"))
                }
                Some(answer) = self.pending.next(), if !self.pending.is_empty() => {
                    self.answered(answer).await
                }
                _ = self.cc.signal.notify.notified() => self.lagged().await,
                Some(first) = self.cc.rx.take(BATCH) => self.deliver(first).await,
                msg = self.socket.recv(), if reading => match msg {
                    Some(m) => self.on_message(m).await,
                    None => Err(End::Gone),
                },
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// `first` and the answers right behind it that are ready too, in
    /// request order: a commit group's acks go out with one write. Each
    /// call's result goes to the dialect (`Dialect::reply`); an answer that
    /// asks for more than frames (seed 002's next call) is carried out in
    /// its turn. (Polling with a
    /// no-op waker is safe here: the loop polls `pending` again with its
    /// own waker before it waits.)
    async fn answered(&mut self, first: Answer) -> Result<(), End> {
        let mut frames: Vec<Utf8Bytes> = Vec::new();
        let mut next = Some(first);
        while let Some((token, reply)) = next.take() {
            let now_ms = self.now_ms();
            let mut h = self.dialect.reply(token, reply, now_ms);
            frames.extend(std::mem::take(&mut h.now).into_iter().map(Utf8Bytes::from));
            let more = h.publish.is_some()
                || h.read.is_some()
                || h.call.is_some()
                || !h.follow.is_empty()
                || !h.unfollow.is_empty();
            if more {
                let sent = std::mem::take(&mut frames);
                self.socket.send_all(sent, &self.dialect).await?;
                Box::pin(self.apply(h)).await?;
            }
            if frames.len() < BATCH {
                next = self.pending.next().now_or_never().flatten();
            }
        }
        Ok(self.socket.send_all(frames, &self.dialect).await?)
    }

    /// Shutdown: answer in-flight requests (bounded), then 1001.
    async fn drain(&mut self) -> End {
        let answered = tokio::time::timeout(DRAIN, async {
            while let Some(answer) = self.pending.next().await {
                self.answered(answer).await?;
            }
            Ok::<(), End>(())
        })
        .await;
        match answered {
            Ok(Err(end)) => end,
            _ => End::Close(1001, "relay shutting down"),
        }
    }

    /// The time a dialect is given with each input: the relay's clock
    /// (the engine's, which stamps the writes too).
    fn now_ms(&self) -> u64 {
        self.cc.state.engine.clock().now_ms()
    }

    /// Start an engine call; its answer joins the in-flight queue.
    fn call(&mut self, token: u64, call: Call) {
        let engine = self.cc.state.engine.clone();
        let answering: Answering = match call {
            Call::Write {
                space,
                actor,
                writes,
                write_ids,
            } => {
                let source = Some(self.cc.id);
                let pushed = self
                    .order
                    .push(engine, space, actor, source, writes, write_ids);
                Box::pin(async move { (token, Reply::Written(pushed.await)) })
            }
            Call::Get { space, keys } => {
                Box::pin(async move { (token, Call::get(engine, space, keys).await) })
            }
            Call::Scan(scan) => Box::pin(async move { (token, Call::scan(engine, scan).await) }),
        };
        self.pending.push_back(answering);
    }

    async fn on_message(&mut self, msg: Message) -> Result<(), End> {
        let max = self.cc.state.settings.max_frame_bytes;
        let now_ms = self.now_ms();
        let handled = match msg {
            Message::Text(t) if t.len() > max => Handled::reply(
                self.dialect
                    .refuse(Refusal::TooLarge { len: t.len(), max }, now_ms),
            ),
            Message::Text(t) => self.dialect.on_text(&t, now_ms),
            Message::Binary(b) => self.dialect.on_binary(&b, now_ms),
            Message::Close(_) => return Err(End::Gone),
            Message::Ping(_) | Message::Pong(_) => return Ok(()),
        };
        self.apply(handled).await
    }

    /// Carry out what the dialect asked for, in order. A feed live from
    /// now is registered with fan-out before `now` is sent, so whatever is
    /// committed or published after the client reads those frames (a
    /// welcome, typically) reaches it; its deliveries wait in the queue
    /// until `now` is written, and its `live` frames keep their place.
    async fn apply(&mut self, h: Handled) -> Result<(), End> {
        // Which of the dialect's follows are live already (by position: a
        // read's follows below may reuse a key).
        let started: Vec<bool> = h
            .follow
            .iter()
            .map(|f| f.since == Since::Now && !h.unfollow.contains(&f.key) && self.start_now(f))
            .collect();
        let now = h.now.into_iter().map(Utf8Bytes::from);
        self.socket.send_all(now, &self.dialect).await?;
        if h.wake_upstream {
            if let Some(wake) = &self.cc.state.upstream {
                wake();
            }
        }
        if let Some(p) = h.publish {
            let engine = &self.cc.state.engine;
            engine.publish(&p.space, &p.topic, p.payload, &p.actor, Some(self.cc.id));
        }
        let mut follow: Vec<(Follow, bool)> = h.follow.into_iter().zip(started).collect();
        if let Some(read) = h.read {
            follow.extend(self.read(read).await?.into_iter().map(|f| (f, false)));
        }
        if let Some(c) = h.call {
            let (token, call) = *c;
            self.call(token, call);
        }
        for key in h.unfollow {
            self.end_feed(key);
        }
        for (f, started) in follow {
            if started {
                self.send_live(f.key).await?;
            } else {
                self.follow(f).await?;
            }
        }
        Ok(())
    }

    /// End feed `key`'s subscription, if there is such a feed; whether
    /// there was.
    fn end_feed(&mut self, key: u64) -> bool {
        let Some(old) = self.feeds.remove(&key) else {
            return false;
        };
        if let Some(id) = old.sub {
            self.cc.state.engine.unsubscribe(&old.space, id);
        }
        true
    }

    /// Keep `feed`, live now, as feed `key`: the seqs it is past are no
    /// longer the client's own to skip in a replay.
    fn keep_live(&mut self, key: u64, feed: Feed) {
        self.cc.signal.forget_own(feed.last);
        self.feeds.insert(key, feed);
    }

    /// The dialect's frames for feed `key` having gone live.
    async fn send_live(&mut self, key: u64) -> Result<(), End> {
        let last = self.feeds.get(&key).map(|f| f.last).unwrap_or(0);
        let frames = self.dialect.live(key, last).into_iter();
        Ok(self
            .socket
            .send_all(frames.map(Utf8Bytes::from), &self.dialect)
            .await?)
    }

    /// Register a feed live from now at once, with nothing to replay;
    /// false when it must take the ordinary way (over the subscription
    /// limit, refused in its turn; a bad space name, answered then).
    fn start_now(&mut self, f: &Follow) -> bool {
        let max = self.cc.state.settings.max_subscriptions;
        if !self.feeds.contains_key(&f.key) && self.feeds.len() >= max {
            return false;
        }
        let (space, filter, link) = (&f.space, f.filter.clone(), self.cc.link.clone());
        let Ok((id, last)) = self.cc.state.engine.subscribe_live(space, filter, link) else {
            return false;
        };
        self.end_feed(f.key);
        let mut feed = Feed::new(f.space.clone(), f.filter.clone(), last, self.dialect.echo());
        feed.sub = Some(id);
        self.keep_live(f.key, feed);
        true
    }

    /// Run a paged read: each of its queries on a blocking thread, each
    /// page's frames sent before the next query is made; the follows it
    /// asks for once done.
    async fn read(&mut self, mut read: Box<dyn Read>) -> Result<Vec<Follow>, End> {
        while let Some(query) = read.query() {
            let engine = self.cc.state.engine.clone();
            match off_worker(move || query.run(&engine)).await {
                Ok(rows) => {
                    let frames = read.rows(rows).into_iter().map(Utf8Bytes::from);
                    self.socket.send_all(frames, &self.dialect).await?;
                }
                Err(e) => {
                    let failed = self.dialect.read_failed(&e);
                    self.failed(failed, &e).await?;
                    return Ok(Vec::new());
                }
            }
        }
        Ok(read.then())
    }

    /// Answer a failed read or feed the dialect's way.
    async fn failed(&mut self, f: Failed, e: &EngineError) -> Result<(), End> {
        let (frames, close) = match f {
            Failed::Answer(frames) => (frames, None),
            Failed::Close(frames, reason) => (frames, Some(reason)),
        };
        if !frames.is_empty() {
            let m = &self.cc.state.engine.metrics;
            m.errors_sent.fetch_add(1, Relaxed);
        }
        let frames = frames.into_iter().map(Utf8Bytes::from);
        self.socket.send_all(frames, &self.dialect).await?;
        match close {
            None => Ok(()),
            Some(reason) => {
                tracing::warn!(error = %e, "reading the store failed; closing the connection");
                Err(End::Close(1011, reason))
            }
        }
    }

    /// Start (or replace) a feed and bring it up to date.
    async fn follow(&mut self, f: Follow) -> Result<(), End> {
        let max = self.cc.state.settings.max_subscriptions;
        if !self.end_feed(f.key) && self.feeds.len() >= max {
            let now_ms = self.now_ms();
            let frame = self
                .dialect
                .refuse_follow(f.key, Refusal::TooManyFeeds { max }, now_ms);
            self.cc
                .state
                .engine
                .metrics
                .errors_sent
                .fetch_add(1, Relaxed);
            return Ok(self.socket.send_all([frame.into()], &self.dialect).await?);
        }
        let last = match f.since {
            Since::Now => self.cc.state.engine.hub().last_seq(),
            Since::After(seq) => seq,
        };
        let feed = Feed::new(f.space, f.filter, last, self.dialect.echo());
        self.catch_up(f.key, feed).await
    }

    /// Replay `feed` from its last seq until it is live, then keep it.
    async fn catch_up(&mut self, key: u64, mut feed: Feed) -> Result<(), End> {
        let engine = self.cc.state.engine.clone();
        let signal = self.cc.signal.clone();
        let read = async {
            let mut pages = Pages::start(&engine, &mut feed, self.cc.link.clone())?;
            while let Some(page) = pages.next().await? {
                let mut items = Vec::with_capacity(page.len());
                for item in page {
                    match item {
                        CatchUp::Change(c) => {
                            if feed.accept_catch_up(&c, |seq| signal.is_own(seq)) {
                                items.push(Item::Change(key, c));
                            }
                        }
                        CatchUp::Snapshot {
                            collection,
                            id,
                            entity,
                        } => items.push(Item::Snapshot(key, Box::new((collection, id, entity)))),
                    }
                }
                if self.render(items).await.is_err() {
                    return Err(Stop::Gone);
                }
            }
            pages.live().ok_or(Stop::Gone)
        };
        match read.await {
            Ok((id, reached)) => {
                feed.sub = Some(id);
                feed.last = feed.last.max(reached);
                self.keep_live(key, feed);
                self.send_live(key).await
            }
            Err(Stop::Gone) => Err(End::Gone),
            Err(Stop::Failed(e)) => {
                let failed = self.dialect.feed_failed(key, &e);
                self.failed(failed, &e).await
            }
        }
    }

    /// Fan-out dropped some feeds for lagging: the one lag policy.
    async fn lagged(&mut self) -> Result<(), End> {
        for id in self.cc.signal.take_lagged() {
            let Some(key) = self
                .feeds
                .iter()
                .find_map(|(k, f)| (f.sub == Some(id)).then_some(*k))
            else {
                continue;
            };
            let Some(mut feed) = self.feeds.remove(&key) else {
                continue;
            };
            self.cc.state.engine.metrics.resyncs.fetch_add(1, Relaxed);
            match self.dialect.lagged(key, feed.last) {
                Lag::Resume => {
                    feed.sub = None;
                    self.catch_up(key, feed).await?;
                }
                Lag::Drop(frames) => {
                    let frames = frames.into_iter().map(Utf8Bytes::from);
                    self.socket.send_all(frames, &self.dialect).await?;
                }
            }
        }
        Ok(())
    }

    /// `first` and whatever else is queued (up to [`BATCH`] deliveries),
    /// one flush. A commit group comes as one batch: its feed is looked up
    /// once, and each change's frame is the one rendered for every
    /// subscriber of the dialect (shared bytes, no copy until the socket).
    async fn deliver(&mut self, first: Batch) -> Result<(), End> {
        let conn = self.cc.id;
        let mut items = Vec::new();
        let mut next = Some(first);
        let mut taken = 0;
        // The batches stay alive (with their relay-wide charge) until their
        // frames are written.
        let mut held = Vec::new();
        while let Some(b) = next.take() {
            match &b {
                Batch::Changes {
                    sub,
                    changes,
                    from,
                    to,
                    ..
                } => {
                    taken += to - from;
                    if let Some((key, feed)) =
                        self.feeds.iter_mut().find(|(_, f)| f.sub == Some(*sub))
                    {
                        for item in &changes[*from..*to] {
                            if feed.accept_live(*sub, item, conn) {
                                items.push(Item::Change(*key, item.clone()));
                            }
                        }
                    }
                }
                Batch::One(d) => {
                    taken += 1;
                    self.deliver_one(d, conn, &mut items);
                }
            }
            held.push(b);
            if taken < BATCH {
                next = self.cc.rx.try_take(BATCH - taken);
            }
        }
        self.render(items).await?;
        drop(held);
        Ok(())
    }

    /// Render accepted items through the dialect and send them in one
    /// flush. The entity states some changes are rendered with are read
    /// first, together, on a blocking thread.
    async fn render(&mut self, items: Vec<Item>) -> Result<(), Gone> {
        let wanted: Vec<(String, String, String)> = items
            .iter()
            .filter_map(|i| match i {
                Item::Change(key, c) if self.dialect.needs_state(*key, c) => {
                    let ch = &c.entry.change;
                    Some((ch.space.clone(), ch.collection.clone(), ch.id.clone()))
                }
                _ => None,
            })
            .collect();
        let mut states = if wanted.is_empty() {
            Vec::new()
        } else {
            let engine = self.cc.state.engine.clone();
            off_worker(move || {
                wanted
                    .iter()
                    .map(|(s, c, id)| {
                        engine.entity(s, c, id).unwrap_or_else(|e| {
                            // Rendered without it (as a missing entity);
                            // the client converges with the next change.
                            tracing::warn!(error = %e, %id, "reading an entity to render a change failed");
                            None
                        })
                    })
                    .collect::<Vec<_>>()
            })
            .await
        }
        .into_iter();
        self.out.clear();
        let now_ms = self.now_ms();
        for item in items {
            match item {
                Item::Change(key, c) => {
                    let state = if self.dialect.needs_state(key, &c) {
                        states.next().flatten()
                    } else {
                        None
                    };
                    self.dialect.change(key, &c, state.as_ref(), &mut self.out);
                }
                Item::Event(key, e) => {
                    if let Some(f) = self.dialect.event(key, &e, now_ms) {
                        self.out.push(f);
                    }
                }
                Item::Snapshot(key, s) => {
                    let (collection, id, entity) = &*s;
                    self.dialect
                        .snapshot(key, collection, id, entity, now_ms, &mut self.out)
                }
            }
        }
        self.socket
            .send_all(self.out.drain(..), &self.dialect)
            .await
    }

    fn deliver_one(&mut self, d: &Delivery, conn: u64, items: &mut Vec<Item>) {
        match d {
            Delivery::Change { sub, item } => {
                if let Some((key, feed)) = self.feeds.iter_mut().find(|(_, f)| f.sub == Some(*sub))
                {
                    if feed.accept_live(*sub, item, conn) {
                        items.push(Item::Change(*key, item.clone()));
                    }
                }
            }
            Delivery::Event { sub, event } => {
                if let Some(key) = self
                    .feeds
                    .iter()
                    .find_map(|(k, f)| (f.sub == Some(*sub)).then_some(*k))
                {
                    items.push(Item::Event(key, event.clone()));
                }
            }
        }
    }
}

/// Sleep until `at`; never when there is none.
async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
