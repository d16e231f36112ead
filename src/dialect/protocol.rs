//! What a client protocol is to the connection driver ([`crate::conn`]):
//! frames and replies in, frames and requests out. A dialect never touches
//! the socket, the clock's timers, the fan-out queue or the engine: the
//! driver reads and writes frames, keeps the connection alive, runs every
//! catch-up-to-live feed and applies the one lag policy (see `conn::feed`),
//! and makes the engine calls and store reads a dialect asks for ([`Call`],
//! [`Publish`], the [`Query`]s of a [`Read`]), feeding their results back
//! ([`Dialect::reply`], [`Read::rows`]). No dialect holds an engine handle
//! or a future; see docs/architecture.md, "How pure the dialects are".

use crate::engine::{Committed, Engine, EngineError, Event, Filter};
use crate::store::{Cap, LocalWrite, LogEntry, Outcome, StoredEntity};
use axum::extract::ws::Utf8Bytes;

/// An engine call the driver makes for a dialect. Its result comes back
/// through [`Dialect::reply`] with the call's token, in the order the
/// calls were made (and after the answers of earlier requests); calls in
/// flight count against `server.max_inflight`.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    /// Writes as this connection (its id is their source, so fan-out can
    /// skip echoing them): queued in the connection's write order at once,
    /// answered after the commit ([`Reply::Written`]).
    Write {
        space: String,
        actor: String,
        writes: Vec<LocalWrite>,
        /// Client write ids, one per write (empty: none).
        write_ids: Vec<Option<String>>,
    },
    /// The current state of entities (collection, id) of a space, read on
    /// a blocking thread ([`Reply::Got`], in the same order).
    Get {
        space: String,
        keys: Vec<(String, String)>,
    },
    /// A range of entities' fields, read page by page on a blocking
    /// thread ([`Reply::Scanned`]).
    Scan(Scan),
}

/// The entities of `collection` whose ids sort strictly between `after`
/// and `before`, in id order, each as the listed `fields` of its visible
/// state (so a scan of large entities carries only what the dialect
/// needs). The answer is held whole: the dialect bounds the range (seed
/// 002 scans at most `MAX_SCAN` versions of one user's revisions).
#[derive(Debug, Clone, PartialEq)]
pub struct Scan {
    pub space: String,
    pub collection: String,
    pub after: String,
    pub before: String,
    pub fields: Vec<String>,
}

impl Call {
    /// Make the call against `engine` as connection `source`, now: what a
    /// caller without a connection driver does (the table tests, the
    /// simulator). The driver queues writes through the connection's
    /// `WriteOrder` instead, and reads the same way ([`Call::get`]).
    pub async fn make(self, engine: &std::sync::Arc<Engine>, source: Option<u64>) -> Reply {
        match self {
            Call::Write {
                space,
                actor,
                writes,
                write_ids,
            } => Reply::Written(
                engine
                    .push_idempotent(&space, &actor, source, writes, write_ids)
                    .await,
            ),
            Call::Get { space, keys } => Call::get(engine.clone(), space, keys).await,
            Call::Scan(scan) => Call::scan(engine.clone(), scan).await,
        }
    }

    /// A `Get`'s read, on the blocking pool (`engine::off_worker`).
    pub async fn get(
        engine: std::sync::Arc<Engine>,
        space: String,
        keys: Vec<(String, String)>,
    ) -> Reply {
        let got = crate::engine::off_worker(move || {
            keys.iter()
                .map(|(c, id)| engine.entity(&space, c, id))
                .collect::<Result<Vec<_>, _>>()
        })
        .await;
        Reply::Got(got)
    }

    /// A `Scan`'s read, on the blocking pool, in pages bounded in items
    /// and bytes (`engine::PAGE_BYTES`).
    pub async fn scan(engine: std::sync::Arc<Engine>, scan: Scan) -> Reply {
        let Scan {
            space,
            collection,
            after,
            before,
            fields,
        } = scan;
        let scanned = crate::engine::off_worker(move || {
            let cap = Cap::new(256, crate::engine::PAGE_BYTES);
            let mut out = Vec::new();
            let mut cursor = after;
            loop {
                let page = engine.entities_page(
                    &space,
                    Some(&collection),
                    Some((&collection, &cursor)),
                    cap,
                )?;
                let more = page.more;
                for (_, id, e) in page.items {
                    if id >= before {
                        return Ok(out);
                    }
                    let mut visible = e.state.visible();
                    let picked = fields
                        .iter()
                        .filter_map(|f| visible.remove_entry(f))
                        .collect();
                    cursor = id.clone();
                    out.push((id, picked));
                }
                if !more {
                    return Ok(out);
                }
            }
        })
        .await;
        Reply::Scanned(scanned)
    }
}

/// The result of a [`Call`].
#[derive(Debug)]
pub enum Reply {
    Written(Result<Vec<Outcome>, EngineError>),
    Got(Result<Vec<Option<StoredEntity>>, EngineError>),
    Scanned(Result<Vec<Scanned>, EngineError>),
}

/// One entity of a [`Scan`]: its id and the fields asked for (those it
/// has).
pub type Scanned = (String, serde_json::Map<String, serde_json::Value>);

/// An ephemeral event to fan out, published as this connection (which
/// then does not get it back).
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    pub space: String,
    pub topic: String,
    pub payload: serde_json::Value,
    pub actor: String,
}

/// Where a new feed starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// Live from now: nothing committed before is replayed.
    Now,
    /// After this local seq (0: from the beginning).
    After(u64),
}

/// Start following a space. `key` names the feed in later calls; a
/// follow with a key already in use replaces that feed.
#[derive(Debug, Clone)]
pub struct Follow {
    pub key: u64,
    pub space: String,
    pub filter: Filter,
    pub since: Since,
}

/// A paged read of the store (a state snapshot, a `sync`), as a machine
/// with no engine: it asks for one store read at a time ([`Query`]), the
/// driver runs it off the async workers (`engine::off_worker`) and hands
/// back its [`Rows`], the read renders them into frames, which the driver
/// sends before it asks for the next query. So a large answer is never
/// held whole, a slow disk never stalls the runtime, and a table test
/// feeds rows it built by hand.
pub trait Read: Send + 'static {
    /// The next store read; None once the read is done.
    fn query(&mut self) -> Option<Query>;
    /// The rows of the query just made: the frames to send (possibly
    /// none). Rows of another kind than the query asked for end the read.
    fn rows(&mut self, rows: Rows) -> Vec<String>;
    /// Feeds to start once the read is done (e.g. from the seq its
    /// snapshot reflects, so nothing is missed or sent twice at the seam).
    fn then(&mut self) -> Vec<Follow> {
        Vec::new()
    }
}

/// One store read a [`Read`] asks for: the reads the dialects' paged
/// reads are made of.
#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    /// Entities of `space` (of `collection`, or all), in (collection, id)
    /// order after `after`, up to `cap`, with the last seq the read saw
    /// ([`Rows::Entities`]).
    Entities {
        space: String,
        collection: Option<String>,
        after: Option<(String, String)>,
        cap: Cap,
    },
    /// Entities of `collection` changed after per-type version `after`,
    /// in version order, at most `limit`, each with its newest log entry
    /// (None once retention trimmed it), and the collection's latest
    /// per-type version ([`Rows::TypeChanges`]).
    TypeChanges {
        space: String,
        collection: String,
        after: u64,
        limit: usize,
    },
}

/// What a [`Query`] read.
#[derive(Debug, Clone)]
pub enum Rows {
    Entities {
        /// (collection, id, entity).
        items: Vec<(String, String, StoredEntity)>,
        /// The cap stopped the read: more may follow the last item.
        more: bool,
        /// The last committed seq the read saw (its states hold at least
        /// every change up to it).
        seq: u64,
    },
    TypeChanges {
        latest: u64,
        /// (id, entity, its newest log entry).
        items: Vec<(String, StoredEntity, Option<LogEntry>)>,
    },
}

impl Query {
    /// Read it from `engine`: blocking, so the driver (and every other
    /// caller on a runtime) runs it through `engine::off_worker`.
    pub fn run(&self, engine: &Engine) -> Result<Rows, EngineError> {
        match self {
            Query::Entities {
                space,
                collection,
                after,
                cap,
            } => {
                let after = after.as_ref().map(|(c, id)| (c.as_str(), id.as_str()));
                let p = engine.entities_page(space, collection.as_deref(), after, *cap)?;
                Ok(Rows::Entities {
                    items: p.items,
                    more: p.more,
                    seq: p.seq,
                })
            }
            Query::TypeChanges {
                space,
                collection,
                after,
                limit,
            } => {
                let (latest, ents) = engine.type_changes(space, collection, *after, *limit)?;
                let mut items = Vec::with_capacity(ents.len());
                for (id, e) in ents {
                    let newest = engine.log_entry(e.seq)?;
                    items.push((id, e, newest));
                }
                Ok(Rows::TypeChanges { latest, items })
            }
        }
    }
}

/// What handling one client message produced. The driver carries it out
/// in this order: `now`, `publish`, `read`, `call`, `unfollow`, `follow`
/// (then the read's own follows).
#[derive(Default)]
pub struct Handled {
    /// Frames to send right away.
    pub now: Vec<String>,
    /// An event to fan out.
    pub publish: Option<Box<Publish>>,
    /// A paged read whose frames follow `now`.
    pub read: Option<Box<dyn Read>>,
    /// An engine call and its token; the result comes back through
    /// [`Dialect::reply`]. (Boxed, as `publish`: a `Handled` is often an
    /// error's value, kept small.)
    pub call: Option<Box<(u64, Call)>>,
    /// Feeds to start (after `now` is sent), in order.
    pub follow: Vec<Follow>,
    /// Feeds to end.
    pub unfollow: Vec<u64>,
    /// Start a round with the upstream hub now, when the relay has one
    /// (seed 000's `sync_request`).
    pub wake_upstream: bool,
}

impl Handled {
    pub fn reply(frame: String) -> Handled {
        Handled {
            now: vec![frame],
            ..Handled::default()
        }
    }

    pub fn call(token: u64, call: Call) -> Handled {
        Handled {
            call: Some(Box::new((token, call))),
            ..Handled::default()
        }
    }
}

/// Frames refused before the protocol sees them.
#[derive(Debug, Clone, Copy)]
pub enum Refusal {
    Binary,
    TooLarge {
        len: usize,
        max: usize,
    },
    /// A follow past `server.max_subscriptions`.
    TooManyFeeds {
        max: usize,
    },
}

impl Refusal {
    pub fn message(self) -> String {
        match self {
            Refusal::Binary => "binary frames are not supported: send JSON text frames".into(),
            Refusal::TooLarge { len, max } => {
                format!("message of {len} bytes exceeds the {max}-byte limit")
            }
            Refusal::TooManyFeeds { max } => {
                format!("a connection may hold {max} subscriptions (server.max_subscriptions)")
            }
        }
    }
}

/// What a dialect wants when fan-out dropped one of its feeds for lagging.
pub enum Lag {
    /// Replay the gap from the log, then go on live (no message).
    Resume,
    /// End the feed; send these frames (the client resumes by itself).
    Drop(Vec<String>),
}

/// What to do when a read or a feed failed in the store.
pub enum Failed {
    /// Send these frames; the connection goes on without that read or feed.
    Answer(Vec<String>),
    /// Send these frames, then close with 1011 and this reason.
    Close(Vec<String>, &'static str),
}

/// One client protocol, driven by `conn::run`.
///
/// Time is an input, as the frames are: every method that may put a
/// timestamp in a frame (or check a token's expiry) is given `now_ms`,
/// the relay's wall clock in ms since 1970 as the driver read it
/// (`Engine::clock`). A dialect reads no clock of its own, so a table test
/// passes a fixed time and checks the timestamps exactly.
pub trait Dialect: Send + Sync + 'static {
    /// What to send and follow as soon as the connection is up.
    fn open(&mut self, now_ms: u64) -> Handled;
    /// One client text frame (within `server.max_frame_bytes`).
    fn on_text(&mut self, text: &str, now_ms: u64) -> Handled;
    /// One client binary frame; refused unless the protocol has them.
    fn on_binary(&mut self, _data: &[u8], now_ms: u64) -> Handled {
        Handled::reply(self.refuse(Refusal::Binary, now_ms))
    }
    /// The error frame for a refused frame.
    fn refuse(&mut self, why: Refusal, now_ms: u64) -> String;
    /// The error frame for a refused follow (feed `feed` does not start).
    fn refuse_follow(&mut self, _feed: u64, why: Refusal, now_ms: u64) -> String {
        self.refuse(why, now_ms)
    }
    /// The result of the [`Call`] made with `token`.
    fn reply(&mut self, _token: u64, _reply: Reply, _now_ms: u64) -> Handled {
        Handled::default()
    }
    /// Whether rendering `c` (a change of feed `feed`) needs the entity's
    /// current state; the driver then reads it on a blocking thread and
    /// passes it to [`Dialect::change`].
    fn needs_state(&self, _feed: u64, _c: &Committed) -> bool {
        false
    }
    /// Frames for a committed change of feed `feed` (live or replayed);
    /// `state` is the entity's current state when [`Dialect::needs_state`]
    /// asked for it (None: no such entity, or not asked).
    fn change(
        &mut self,
        feed: u64,
        c: &Committed,
        state: Option<&StoredEntity>,
        out: &mut Vec<Utf8Bytes>,
    );
    /// Frames for an entity's current state, replayed when the log was
    /// trimmed past the point a feed resumes from.
    fn snapshot(
        &mut self,
        feed: u64,
        collection: &str,
        id: &str,
        e: &StoredEntity,
        now_ms: u64,
        out: &mut Vec<Utf8Bytes>,
    );
    /// An ephemeral event of feed `feed`'s space (feeds whose filter asks
    /// for events).
    fn event(&mut self, _feed: u64, _e: &Event, _now_ms: u64) -> Option<Utf8Bytes> {
        None
    }
    /// Feed `feed` caught up and is live from `seq` on.
    fn live(&mut self, _feed: u64, _seq: u64) -> Vec<String> {
        Vec::new()
    }
    /// Fan-out dropped feed `feed` (last delivered: `last`) for lagging.
    fn lagged(&mut self, _feed: u64, _last: u64) -> Lag {
        Lag::Resume
    }
    /// Reading feed `feed` failed; the feed is gone.
    fn feed_failed(&mut self, _feed: u64, _e: &EngineError) -> Failed {
        Failed::Close(Vec::new(), "relay storage error")
    }
    /// A [`Read`] failed; what it had sent stays sent.
    fn read_failed(&mut self, _e: &EngineError) -> Failed {
        Failed::Close(Vec::new(), "relay storage error")
    }
    /// Whether the client gets its own writes back through its feeds.
    fn echo(&self) -> bool {
        true
    }
    /// Ordered mode: the next frame is read only once every earlier one is
    /// answered (a request then sees what the previous one stored).
    fn ordered(&self) -> bool {
        false
    }
    /// How long after the connection opened it must have authenticated
    /// in band (None: no deadline, or done); past it the driver closes the
    /// socket with 1008. (A duration, not an instant: the driver keeps the
    /// timer, the dialect reads no clock.)
    fn auth_timeout(&self) -> Option<std::time::Duration> {
        None
    }
    /// A frame as it goes out: text, or (a protocol that compresses) a
    /// binary frame.
    fn outgoing(&self, frame: Utf8Bytes) -> axum::extract::ws::Message {
        axum::extract::ws::Message::Text(frame)
    }
}

/// An accepted handshake: the endpoint (for the per-endpoint gauge) and
/// how to make the dialect once the connection has its id.
pub struct Opening<D> {
    pub endpoint: &'static str,
    pub make: Box<dyn FnOnce(&super::ConnCtx) -> D + Send>,
}

impl<D> Opening<D> {
    pub fn new(
        endpoint: &'static str,
        make: impl FnOnce(&super::ConnCtx) -> D + Send + 'static,
    ) -> Opening<D> {
        Opening {
            endpoint,
            make: Box::new(make),
        }
    }
}

/// A handshake refused before the upgrade: HTTP status and body.
pub type Refused = (axum::http::StatusCode, String);

#[cfg(test)]
mod tests {
    use super::super::table::{block_on, Bench};
    use super::*;
    use crate::model::Op;
    use serde_json::json;

    fn put(collection: &str, id: String, version: u64) -> LocalWrite {
        LocalWrite {
            collection: collection.into(),
            id,
            op: Op::Put,
            fields: [
                ("version".to_string(), json!(version)),
                ("blob".to_string(), json!("x".repeat(64))),
            ]
            .into(),
            client_us: None,
            expect: None,
        }
    }

    /// A scan reads past a page (256 entities) to the end of its range,
    /// and nothing outside it: not the bounds, not other ids or
    /// collections; each entity carries only the fields asked for.
    #[test]
    fn a_scan_reads_its_range_page_by_page() {
        let b = Bench::new();
        let id = |v: u64| format!("u:{v:020}:n");
        let mut writes: Vec<LocalWrite> = (1..=300).map(|v| put("h", id(v), v)).collect();
        writes.push(put("h", "u:zzz".into(), 0));
        writes.push(put("h", "v:1".into(), 0));
        writes.push(put("other", id(5), 5));
        block_on(b.engine().push("s", "t", None, writes)).unwrap();
        let scan = Scan {
            space: "s".into(),
            collection: "h".into(),
            after: format!("u:{:020}", 3),
            before: format!("u:{:020}", 299),
            fields: vec!["version".into(), "absent".into()],
        };
        let Reply::Scanned(Ok(got)) = block_on(Call::scan(b.engine().clone(), scan)) else {
            panic!("a scan's reply")
        };
        let want: Vec<Scanned> = (3..=298)
            .map(|v| {
                let fields = [("version".to_string(), json!(v))].into_iter().collect();
                (id(v), fields)
            })
            .collect();
        assert_eq!(got, want);
    }
}
