//! The NATS side of a cluster member or a NATS upstream: connect, check or
//! create the stream, then two tasks:
//!
//! - the publisher reads the local log past its durable cursor, in order,
//!   and publishes each change (pipelined, up to `PAGE` in flight) with
//!   `Nats-Msg-Id` = its identity; the cursor moves only over acked
//!   messages, and a cluster member's writers are answered through the
//!   engine's ack gate only once the cursor passed their seq;
//! - the consumer reads the stream with an ordered consumer from its own
//!   durable position (a cursor in redb) and merges what others published
//!   through `Engine::apply_unreplicated` (identity dedup, as for peers).
//!
//! What the consumer merged is in the stream already: its identities go in
//! `from_stream`, and the publisher skips them instead of publishing them
//! again. (After a crash that set is empty, so the few entries merged just
//! before it are published again: JetStream drops them inside the
//! duplicate window, and the engine drops any that outlive it.)
//!
//! A member whose position the stream no longer holds seeds itself from a
//! peer first, when `[cluster.bootstrap]` names one (`bootstrap`).

mod bootstrap;

use super::pending::Pending;
use super::read::{self, Read};
use super::settings::{NatsAuth, NatsSettings, Role};
use super::wire;
use crate::engine::{now_ms, AckGate, Engine};
use crate::model::{Change, NodeId, VersionVector};
use crate::replicate::backoff::{jitter_seed, Backoff};
use crate::replicate::Links;
use crate::store::OutcomeKind;
use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// Changes published or merged per round.
const PAGE: usize = 256;
/// How long startup waits for JetStream before serving anyway (an
/// unreachable cluster is retried in the background; an incompatible
/// stream refuses to start).
const STARTUP_WAIT: Duration = Duration::from_secs(10);
/// JetStream API requests and publish acks.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on identities merged from the stream and not yet passed by the
/// publisher: past it the consumer waits for the publisher.
const MAX_FROM_STREAM: usize = 100_000;
/// Bound on changes waiting for a predecessor (see `pending`).
const MAX_PENDING: usize = 10_000;
const MAX_PENDING_BYTES: usize = 64 << 20;
/// Entries of one origin the publisher looks back through for
/// `Outpost-After` after a start (once per origin).
const WALK: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("NATS stream {name}: {reason}")]
    Incompatible { name: String, reason: String },
    #[error("NATS: {0}")]
    Connect(String),
}

/// Counters for status and metrics.
#[derive(Default)]
struct Stats {
    /// The stream's first and last seq, as last seen.
    stream_first: AtomicU64,
    stream_last: AtomicU64,
    /// The last successful JetStream API answer (ms since the epoch).
    last_contact: AtomicU64,
    stream_ok: AtomicBool,
    /// Read up to here; durable position (below a waiting gap) saved.
    read: AtomicU64,
    position: AtomicU64,
    published: AtomicU64,
    publish_duplicates: AtomicU64,
    publish_failures: AtomicU64,
    consumed: AtomicU64,
    merged: AtomicU64,
    merge_duplicates: AtomicU64,
    refused: AtomicU64,
    pending: AtomicU64,
    pending_dropped: AtomicU64,
}

pub struct Link {
    s: NatsSettings,
    engine: Arc<Engine>,
    client: async_nats::Client,
    js: jetstream::Context,
    node: NodeId,
    from_stream: Mutex<HashSet<(NodeId, u64)>>,
    /// Local seq up to which the stream holds every log entry.
    replicated: watch::Sender<u64>,
    ready: watch::Sender<bool>,
    stats: Stats,
    last_error: Mutex<Option<String>>,
    /// Wakes the consumer when the publisher drained `from_stream`.
    drained: Notify,
    /// The app's live replication links (a bootstrap pull shows there).
    links: Arc<Links>,
    /// Per origin, the seqs a bootstrap peer held when this member pulled
    /// from it: in the stream by that peer's route (it publishes all it
    /// merges), so the publisher skips them (see `bootstrap`).
    in_stream_by_peer: Mutex<VersionVector>,
    /// What the bootstrap is doing (status), None when none ran.
    bootstrap: Mutex<Option<String>>,
}

impl Link {
    /// Connect, check the stream (waiting up to `STARTUP_WAIT`), set the
    /// ack gate of a cluster member, and start the tasks.
    pub async fn start(
        s: NatsSettings,
        engine: Arc<Engine>,
        links: Arc<Links>,
        tasks: &crate::tasks::Tasks,
    ) -> Result<Arc<Link>, LinkError> {
        let shutdown = tasks.signal();
        let node = engine.node_id();
        let mut opts = async_nats::ConnectOptions::new()
            .name(format!("outpost {node}"))
            .connection_timeout(Duration::from_secs(5))
            .retry_on_initial_connect()
            .max_reconnects(None);
        match &s.auth {
            NatsAuth::None => {}
            NatsAuth::Token(t) => opts = opts.token(t.clone()),
            NatsAuth::Creds(p) => {
                opts = opts
                    .credentials_file(p)
                    .await
                    .map_err(|e| LinkError::Connect(format!("{}: {e}", p.display())))?
            }
        }
        if let Some(ca) = &s.ca_file {
            opts = opts.add_root_certificates(ca.clone()).require_tls(true);
        }
        let client = async_nats::connect_with_options(s.servers.clone(), opts)
            .await
            .map_err(|e| LinkError::Connect(e.to_string()))?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(REQUEST_TIMEOUT);
        let cursor = engine.cursor(s.publish_cursor()).unwrap_or(0);
        let position = engine.cursor(s.consume_cursor()).unwrap_or(0);
        let link = Arc::new(Link {
            engine: engine.clone(),
            client,
            js,
            node,
            from_stream: Mutex::new(HashSet::new()),
            replicated: watch::Sender::new(cursor),
            ready: watch::Sender::new(false),
            stats: Stats::default(),
            last_error: Mutex::new(None),
            drained: Notify::new(),
            links,
            in_stream_by_peer: Mutex::new(VersionVector::new()),
            bootstrap: Mutex::new(None),
            s,
        });
        link.stats.position.store(position, Relaxed);
        link.stats.read.store(position, Relaxed);
        match tokio::time::timeout(STARTUP_WAIT, link.ensure_stream()).await {
            Ok(Ok(())) => {}
            Ok(Err(e @ LinkError::Incompatible { .. })) => return Err(e),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "JetStream not reachable yet; serving, retrying in the background");
                link.set_error(Some(e.to_string()));
            }
            Err(_) => {
                tracing::warn!(
                    "JetStream not reachable within 10 s; serving, retrying in the background"
                );
                link.set_error(Some("JetStream not reachable yet".into()));
            }
        }
        if let Role::Cluster { ack_timeout } = link.s.role {
            engine.set_ack_gate(AckGate {
                replicated: link.replicated.subscribe(),
                timeout: ack_timeout,
            });
        }
        // They hold no state beyond their cursors: dropped at the signal.
        tasks.spawn_until_stop("cluster ready", link.clone().ready_loop(shutdown.clone()));
        tasks.spawn_until_stop(
            "cluster publisher",
            link.clone().publish_loop(shutdown.clone()),
        );
        tasks.spawn_until_stop("cluster consumer", link.clone().consume_loop(shutdown));
        Ok(link)
    }

    fn set_error(&self, e: Option<String>) {
        if let Ok(mut l) = self.last_error.lock() {
            *l = e;
        }
    }

    fn fail(&self, what: &str, e: impl std::fmt::Display) {
        let msg = format!("{what}: {e}");
        tracing::warn!(stream = %self.s.stream.name, error = %msg, "JetStream link");
        self.set_error(Some(msg));
    }

    fn wants(&self, space: &str) -> bool {
        self.s.spaces.as_ref().is_none_or(|s| s.contains(space))
    }

    fn stream_config(&self) -> stream::Config {
        let st = &self.s.stream;
        stream::Config {
            name: st.name.clone(),
            subjects: vec![wire::filter(&st.subject_prefix, None)],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::Old,
            num_replicas: st.replicas,
            max_age: st.max_age.unwrap_or(Duration::ZERO),
            max_bytes: st.max_bytes.map_or(-1, |b| b as i64),
            max_messages: -1,
            max_messages_per_subject: -1,
            duplicate_window: st.duplicate_window,
            description: Some("outpost changes: one message per change".into()),
            ..Default::default()
        }
    }

    /// Create the stream if it is missing; refuse one whose settings differ.
    async fn ensure_stream(&self) -> Result<(), LinkError> {
        let want = self.stream_config();
        let info = match self.js.get_stream(&want.name).await {
            Ok(mut st) => st
                .info()
                .await
                .map_err(|e| LinkError::Connect(e.to_string()))?
                .clone(),
            Err(e) if is_not_found(&e) => match self.js.create_stream(want.clone()).await {
                Ok(mut st) => {
                    tracing::info!(stream = %want.name, replicas = want.num_replicas, "created the JetStream stream");
                    st.info()
                        .await
                        .map_err(|e| LinkError::Connect(e.to_string()))?
                        .clone()
                }
                Err(e) => {
                    // Another instance may have created it meanwhile.
                    let mut st = self.js.get_stream(&want.name).await.map_err(|_| {
                        LinkError::Connect(format!("creating stream {}: {e}", want.name))
                    })?;
                    st.info()
                        .await
                        .map_err(|e| LinkError::Connect(e.to_string()))?
                        .clone()
                }
            },
            Err(e) => return Err(LinkError::Connect(e.to_string())),
        };
        let differences = compare(&want, &info.config);
        if !differences.is_empty() {
            return Err(LinkError::Incompatible {
                name: want.name,
                reason: format!(
                    "exists with settings this relay cannot share ({}): change the stream (nats stream edit) or [cluster.stream]/[upstream.stream] to match",
                    differences.join("; ")
                ),
            });
        }
        self.note_state(&info.state);
        self.ready.send_replace(true);
        Ok(())
    }

    fn note_state(&self, st: &stream::State) {
        self.stats.stream_first.store(st.first_sequence, Relaxed);
        self.stats.stream_last.fetch_max(st.last_sequence, Relaxed);
        self.stats.last_contact.store(now_ms(), Relaxed);
        self.stats.stream_ok.store(true, Relaxed);
    }

    /// Until the stream is checked, retry; then refresh its state every 2 s
    /// (for lag and reachability).
    async fn ready_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        loop {
            let wait = if !*self.ready.borrow() {
                match self.ensure_stream().await {
                    Ok(()) => {
                        self.set_error(None);
                        backoff.reset();
                        Duration::from_secs(2)
                    }
                    Err(e @ LinkError::Incompatible { .. }) => {
                        // Refused at runtime (it was unreachable at startup):
                        // stay stopped and say why.
                        tracing::error!(error = %e, "JetStream stream incompatible");
                        self.set_error(Some(e.to_string()));
                        Duration::from_secs(30)
                    }
                    Err(e) => {
                        self.stats.stream_ok.store(false, Relaxed);
                        self.set_error(Some(e.to_string()));
                        backoff.next(jitter_seed())
                    }
                }
            } else {
                match self.js.get_stream(&self.s.stream.name).await {
                    Ok(st) => self.note_state(&st.cached_info().state),
                    Err(_) => self.stats.stream_ok.store(false, Relaxed),
                }
                Duration::from_secs(2)
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    async fn wait_ready(&self, shutdown: &mut watch::Receiver<bool>) -> bool {
        let mut ready = self.ready.subscribe();
        tokio::select! {
            r = ready.wait_for(|r| *r) => r.is_ok(),
            _ = shutdown.wait_for(|s| *s) => false,
        }
    }

    async fn publish_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        if !self.wait_ready(&mut shutdown).await {
            return;
        }
        let mut commits = self.engine.watch_commits();
        // Short: a stream leader election takes seconds, and writers wait.
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut done = *self.replicated.borrow();
        // Per origin, the newest of its seqs this relay's log put in the
        // stream (published, or merged from it), for `Outpost-After`.
        let mut last: HashMap<NodeId, u64> = HashMap::new();
        loop {
            if *shutdown.borrow() {
                return;
            }
            // Seen before reading, so a commit landing after the read
            // still wakes the wait below.
            commits.borrow_and_update();
            // On the blocking pool: the link shares the workers with clients.
            let e = self.engine.clone();
            let page = match crate::engine::off_worker(move || e.log_after(done, PAGE)).await {
                Ok(p) => p,
                Err(e) => {
                    self.fail("reading the log", e);
                    Vec::new()
                }
            };
            if page.is_empty() {
                tokio::select! {
                    _ = commits.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
                continue;
            }
            let (reached, err) = self.publish_page(page, &mut last).await;
            if reached > done {
                done = reached;
                self.replicated.send_replace(done);
                self.drained.notify_waiters();
                if let Err(e) = self.engine.set_cursor(self.s.publish_cursor(), done).await {
                    self.fail("saving the publish cursor", e);
                }
            }
            if let Some(e) = err {
                // The page is read again from `reached`: what `last` learnt
                // past it is not in the stream.
                last.clear();
                self.stats.publish_failures.fetch_add(1, Relaxed);
                self.fail("publishing", e);
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next(jitter_seed())) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
            } else {
                backoff.reset();
            }
        }
    }

    /// Publish a page in order, pipelined: returns the seq up to which
    /// everything is in the stream, and the first failure.
    async fn publish_page(
        &self,
        page: Vec<(u64, crate::store::LogEntry)>,
        last: &mut HashMap<NodeId, u64>,
    ) -> (u64, Option<String>) {
        let mut acks = Vec::with_capacity(page.len());
        let mut err = None;
        // Read after the page: an entry a bootstrap pull wrote was committed
        // after its peer's vector was set here, so the page holding it sees
        // that vector.
        let by_peer = self
            .in_stream_by_peer
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default();
        for (seq, e) in page {
            let c = e.change;
            let merged = self
                .from_stream
                .lock()
                .map(|mut s| s.remove(&(c.origin, c.seq)))
                .unwrap_or(false);
            let pulled = by_peer.get(&c.origin).is_some_and(|&p| c.seq <= p);
            if merged || pulled {
                last.insert(c.origin, c.seq);
            }
            if merged || pulled || !self.wants(&c.space) {
                acks.push((seq, Err((c.origin, c.seq, merged))));
                continue;
            }
            let before = match last.get(&c.origin) {
                Some(&y) if y < c.seq => Some(y),
                _ => self.in_stream_before(c.origin, c.seq).await,
            };
            last.insert(c.origin, c.seq);
            // Vouch only for a hole: most changes follow their predecessor.
            let after = before.filter(|&y| y + 1 < c.seq);
            match self.send(&c, after).await {
                Ok(f) => acks.push((seq, Ok(f))),
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        let mut reached = 0;
        let mut failed = false;
        for (seq, ack) in acks {
            match ack {
                // Skipped: in the stream already, or not ours to forward.
                // After a failure, a skipped identity is kept for the retry.
                Err((origin, oseq, known)) => {
                    if failed {
                        if known {
                            if let Ok(mut s) = self.from_stream.lock() {
                                s.insert((origin, oseq));
                            }
                        }
                    } else {
                        reached = seq;
                    }
                }
                Ok(_) if failed => {}
                Ok(f) => match f.await {
                    Ok(ack) => {
                        reached = seq;
                        if ack.duplicate {
                            self.stats.publish_duplicates.fetch_add(1, Relaxed);
                        } else {
                            self.stats.published.fetch_add(1, Relaxed);
                        }
                        self.stats.stream_last.fetch_max(ack.sequence, Relaxed);
                    }
                    Err(e) => {
                        failed = true;
                        err.get_or_insert(e.to_string());
                    }
                },
            }
        }
        if err.is_none() {
            self.set_error(None);
        }
        (reached, err)
    }

    /// The newest seq of `origin` below `seq` that this relay's log put in
    /// the stream (a change of a space it forwards), from the store: after
    /// a start, before `publish_page` has seen the origin. 0 if the log
    /// never held one; None if it cannot tell (trimmed, or past the walk).
    async fn in_stream_before(&self, origin: NodeId, seq: u64) -> Option<u64> {
        // A walk of up to WALK log entries: on the blocking pool.
        let e = self.engine.clone();
        let (older, trimmed) =
            crate::engine::off_worker(move || e.origin_before(origin, seq, WALK))
                .await
                .ok()?;
        if let Some((s, _)) = older.iter().find(|(_, e)| self.wants(&e.change.space)) {
            return Some(*s);
        }
        (older.len() < WALK && !trimmed).then_some(0)
    }

    async fn send(
        &self,
        c: &Change,
        after: Option<u64>,
    ) -> Result<jetstream::context::PublishAckFuture, String> {
        let payload = wire::encode(c).map_err(|e| e.to_string())?;
        let mut msg = jetstream::message::PublishMessage::build()
            .payload(payload.into())
            .message_id(wire::msg_id(c.origin, c.seq))
            .header(wire::PUBLISHER_HEADER, self.node.to_string().as_str());
        if let Some(a) = after {
            msg = msg.header(wire::AFTER_HEADER, a.to_string().as_str());
        }
        self.js
            .send_publish(wire::subject(&self.s.stream.subject_prefix, &c.space), msg)
            .await
            .map_err(|e| e.to_string())
    }

    async fn consume_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
        let mut pending = Pending::new(MAX_PENDING, MAX_PENDING_BYTES);
        loop {
            if !self.wait_ready(&mut shutdown).await {
                return;
            }
            let started = now_ms();
            match self.consume(&mut pending, &mut shutdown).await {
                Ok(()) => return,
                Err(e) => self.fail("reading the stream", e),
            }
            if now_ms().saturating_sub(started) > 10_000 {
                backoff.reset();
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next(jitter_seed())) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    /// Read from the durable position until shutdown (Ok) or a failure.
    async fn consume(
        &self,
        pending: &mut Pending,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), String> {
        let name = &self.s.stream.name;
        let mut stream = self.js.get_stream(name).await.map_err(|e| e.to_string())?;
        let state = stream
            .info()
            .await
            .map_err(|e| e.to_string())?
            .state
            .clone();
        self.note_state(&state);
        let (e, name) = (self.engine.clone(), self.s.consume_cursor());
        let mut pos = crate::engine::off_worker(move || e.cursor(name))
            .await
            .map_err(|e| e.to_string())?;
        // Pending changes are read again from the saved position.
        pending.take();
        if pos > state.last_sequence {
            // Another stream by the same name (recreated): start over; what
            // is held already merges as duplicates.
            tracing::warn!(
                position = pos,
                last = state.last_sequence,
                "the stream is behind this relay's position: reading it from the start"
            );
            pos = 0;
        }
        if pos + 1 < state.first_sequence {
            match &self.s.bootstrap {
                Some(b) => {
                    pos = self.bootstrap(b, shutdown).await?;
                }
                None => tracing::warn!(
                    position = pos,
                    first = state.first_sequence,
                    "the stream no longer holds messages after this relay's position (max_age/max_bytes): set [cluster.bootstrap] to seed this relay from a peer instance"
                ),
            }
        }
        // The whole stream, even with `spaces`: a skipped change has to be
        // seen to be vouched for (`read`), or the origin's next kept change
        // would be a gap.
        let cfg = consumer::pull::OrderedConfig {
            filter_subject: wire::filter(&self.s.stream.subject_prefix, None),
            deliver_policy: if pos == 0 {
                consumer::DeliverPolicy::All
            } else {
                consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: pos + 1,
                }
            },
            ..Default::default()
        };
        let consumer = stream
            .create_consumer(cfg)
            .await
            .map_err(|e| e.to_string())?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| e.to_string())?
            .ready_chunks(PAGE);
        self.set_error(None);
        loop {
            // Backpressure: the publisher has not passed what was merged.
            while self.from_stream.lock().map(|s| s.len()).unwrap_or(0) > MAX_FROM_STREAM {
                tokio::select! {
                    _ = self.drained.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = shutdown.wait_for(|s| *s) => return Ok(()),
                }
            }
            let batch = tokio::select! {
                b = messages.next() => b,
                _ = shutdown.wait_for(|s| *s) => return Ok(()),
            };
            let Some(batch) = batch else {
                return Err("the consumer ended".into());
            };
            let mut read = self.stats.read.load(Relaxed);
            let mut fresh = Vec::with_capacity(batch.len());
            for m in batch {
                let m = m.map_err(|e| e.to_string())?;
                let info = m.info().map_err(|e| e.to_string())?;
                let at = info.stream_sequence;
                read = read.max(at);
                // What the consumer still has to deliver: the lag.
                self.stats.stream_last.fetch_max(at + info.pending, Relaxed);
                self.stats.consumed.fetch_add(1, Relaxed);
                let mine = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(wire::PUBLISHER_HEADER))
                    .is_some_and(|v| v.as_str() == self.node.to_string());
                if mine {
                    continue; // published from this relay's own log
                }
                let change = match wire::decode(&m.payload) {
                    Ok(c) => c,
                    Err(e) => {
                        self.stats.refused.fetch_add(1, Relaxed);
                        tracing::warn!(seq = at, error = %e, "skipping a stream message");
                        continue;
                    }
                };
                if let Err(e) = crate::engine::validate_change(&self.engine.limits, &change) {
                    self.stats.refused.fetch_add(1, Relaxed);
                    tracing::warn!(seq = at, error = %e, "skipping an invalid change from the stream");
                    continue;
                }
                let keep = self.wants(&change.space);
                let after = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(wire::AFTER_HEADER))
                    .and_then(|v| v.as_str().parse().ok());
                fresh.push(Read {
                    at,
                    origin: change.origin,
                    seq: change.seq,
                    change: keep.then_some(change),
                    after,
                    size: if keep { m.payload.len() } else { 64 },
                });
            }
            let mut batch = pending.take();
            batch.extend(fresh);
            if !batch.is_empty() {
                self.merge(batch, pending).await?;
            }
            self.stats.pending.store(pending.len() as u64, Relaxed);
            self.stats.pending_dropped.store(pending.dropped, Relaxed);
            self.stats.read.store(read, Relaxed);
            let position = pending.position(read);
            if position != pos {
                self.engine
                    .set_cursor(self.s.consume_cursor(), position)
                    .await
                    .map_err(|e| format!("saving the stream position: {e}"))?;
                pos = position;
                self.stats.position.store(pos, Relaxed);
            }
        }
    }

    /// Merge reads from the stream, with covers for the skipped ones; gaps
    /// wait in `pending`.
    async fn merge(&self, batch: Vec<Read>, pending: &mut Pending) -> Result<(), String> {
        // Read on the blocking pool, before planning (the plan is pure).
        let e = self.engine.clone();
        let vv = crate::engine::off_worker(move || e.version_vector())
            .await
            .map_err(|e| format!("reading the version vector: {e}"))?;
        let plan = read::plan(batch, |origin| vv.get(&origin).copied().unwrap_or(0));
        for r in plan.waiting {
            pending.push(r);
        }
        if plan.apply.is_empty() && plan.covers.is_empty() {
            return Ok(());
        }
        let batch = plan.apply;
        let ids: Vec<(NodeId, u64)> = batch.iter().map(|r| (r.origin, r.seq)).collect();
        if let Ok(mut s) = self.from_stream.lock() {
            s.extend(ids.iter().copied());
        }
        let changes: Vec<Change> = batch.iter().filter_map(|r| r.change.clone()).collect();
        let outcomes = match self
            .engine
            .apply_unreplicated(changes, plan.covers, None)
            .await
        {
            Ok(o) => o,
            Err(e) => {
                if let Ok(mut s) = self.from_stream.lock() {
                    for id in &ids {
                        s.remove(id);
                    }
                }
                return Err(format!("merging: {e}"));
            }
        };
        let n = batch.len();
        // Past the changes' outcomes, the writer appends a gap per origin
        // whose cover it refused: that origin's skipped reads wait again.
        for o in outcomes.iter().skip(n) {
            if o.kind == OutcomeKind::Gap {
                for r in plan.covered.iter().filter(|r| r.origin == o.origin) {
                    pending.push(r.clone());
                }
            }
        }
        let mut unneeded = Vec::new();
        for (r, o) in batch.into_iter().zip(outcomes) {
            match o.kind {
                OutcomeKind::Applied => {
                    self.stats.merged.fetch_add(1, Relaxed);
                }
                OutcomeKind::Duplicate => {
                    self.stats.merge_duplicates.fetch_add(1, Relaxed);
                    unneeded.push((r.origin, r.seq));
                }
                OutcomeKind::Gap => {
                    unneeded.push((r.origin, r.seq));
                    pending.push(r);
                }
            }
        }
        if let Ok(mut s) = self.from_stream.lock() {
            for id in &unneeded {
                s.remove(id);
            }
        }
        Ok(())
    }

    fn reachable(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
            && self.stats.stream_ok.load(Relaxed)
    }

    /// (log entries not yet in the stream, lag behind the stream).
    fn backlog(&self) -> (u64, u64) {
        let published = *self.replicated.borrow();
        let waiting = self.engine.last_seq().saturating_sub(published);
        let lag = self
            .stats
            .stream_last
            .load(Relaxed)
            .saturating_sub(self.stats.read.load(Relaxed));
        (waiting, lag)
    }
}

impl super::Report for Link {
    fn status(&self) -> Value {
        let st = &self.stats;
        let (waiting, lag) = self.backlog();
        let contact = st.last_contact.load(Relaxed);
        json!({
            "transport": "nats",
            "servers": self.s.servers,
            "connected": self.reachable(),
            "role": match self.s.role { Role::Cluster { .. } => "cluster", Role::Upstream => "upstream" },
            "stream": {
                "name": self.s.stream.name,
                "subject_prefix": self.s.stream.subject_prefix,
                "replicas": self.s.stream.replicas,
                "first_seq": st.stream_first.load(Relaxed),
                "last_seq": st.stream_last.load(Relaxed),
            },
            "position": st.position.load(Relaxed),
            "read": st.read.load(Relaxed),
            "lag": lag,
            "published_seq": *self.replicated.borrow(),
            "changes_waiting": waiting,
            "published": st.published.load(Relaxed),
            "merged": st.merged.load(Relaxed),
            "pending_gaps": st.pending.load(Relaxed),
            "bootstrap": self.bootstrap.lock().ok().and_then(|b| b.clone()),
            "last_contact_ms": (contact != 0).then_some(contact),
            "last_error": self.last_error.lock().ok().and_then(|e| e.clone()),
        })
    }

    fn render_metrics(&self) -> String {
        let st = &self.stats;
        let (waiting, lag) = self.backlog();
        let g = |a: &AtomicU64| a.load(Relaxed) as f64;
        let series: [(&str, &str, &str, f64); 13] = [
            (
                "outpost_jetstream_reachable",
                "gauge",
                "1 while the NATS connection is up and the stream answers",
                u8::from(self.reachable()) as f64,
            ),
            (
                "outpost_jetstream_stream_last_seq",
                "gauge",
                "last sequence of the stream, as last seen",
                g(&st.stream_last),
            ),
            (
                "outpost_jetstream_position",
                "gauge",
                "durable position of this relay in the stream",
                g(&st.position),
            ),
            (
                "outpost_jetstream_lag",
                "gauge",
                "stream messages this relay has not read yet",
                lag as f64,
            ),
            (
                "outpost_jetstream_published_seq",
                "gauge",
                "local seq up to which the stream holds every log entry",
                *self.replicated.borrow() as f64,
            ),
            (
                "outpost_jetstream_backlog",
                "gauge",
                "local log entries not yet acknowledged by JetStream",
                waiting as f64,
            ),
            (
                "outpost_jetstream_published_total",
                "counter",
                "changes published to the stream",
                g(&st.published),
            ),
            (
                "outpost_jetstream_publish_duplicates_total",
                "counter",
                "publishes JetStream dropped as duplicates (Nats-Msg-Id)",
                g(&st.publish_duplicates),
            ),
            (
                "outpost_jetstream_publish_failures_total",
                "counter",
                "publish rounds that failed (retried)",
                g(&st.publish_failures),
            ),
            (
                "outpost_jetstream_consumed_total",
                "counter",
                "stream messages read",
                g(&st.consumed),
            ),
            (
                "outpost_jetstream_merged_total",
                "counter",
                "changes from the stream merged here",
                g(&st.merged),
            ),
            (
                "outpost_jetstream_refused_total",
                "counter",
                "stream messages refused (undecodable or invalid)",
                g(&st.refused),
            ),
            (
                "outpost_jetstream_pending_gaps",
                "gauge",
                "changes read ahead of a predecessor, waiting",
                g(&st.pending),
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, v) in series {
            crate::metrics::series(&mut out, name, kind, help, v);
        }
        out
    }
}

fn is_not_found(e: &jetstream::context::GetStreamError) -> bool {
    match e.kind() {
        jetstream::context::GetStreamErrorKind::JetStream(j) => {
            j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
        }
        _ => false,
    }
}

/// What differs between the wanted and the existing stream, in a form an
/// operator can act on.
fn compare(want: &stream::Config, have: &stream::Config) -> Vec<String> {
    let mut d = Vec::new();
    let subject = &want.subjects[0];
    if !have.subjects.iter().any(|s| s == subject || s == ">") {
        d.push(format!(
            "subjects {:?} do not include {subject:?}",
            have.subjects
        ));
    }
    if have.retention != want.retention {
        d.push(format!("retention {:?}, not limits", have.retention));
    }
    if have.storage != want.storage {
        d.push(format!("storage {:?}, not file", have.storage));
    }
    if have.num_replicas != want.num_replicas {
        d.push(format!(
            "replicas {}, config says {}",
            have.num_replicas, want.num_replicas
        ));
    }
    if have.max_age != want.max_age {
        d.push(format!(
            "max_age {:?}, config says {:?} (0 = forever)",
            have.max_age, want.max_age
        ));
    }
    if have.duplicate_window != want.duplicate_window {
        d.push(format!(
            "duplicate_window {:?}, config says {:?}",
            have.duplicate_window, want.duplicate_window
        ));
    }
    let bytes = |b: i64| if b <= 0 { -1 } else { b };
    if bytes(have.max_bytes) != bytes(want.max_bytes) {
        d.push(format!(
            "max_bytes {}, config says {} (-1 = unbounded)",
            have.max_bytes, want.max_bytes
        ));
    }
    if have.no_ack {
        d.push("no_ack is set: publishes would not be acknowledged".into());
    }
    if have.sealed {
        d.push("sealed: it takes no new messages".into());
    }
    d
}
