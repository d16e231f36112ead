//! The one catch-up-to-live feed: a subscription of one connection to one
//! space, brought up to date from the log and then fed live by fan-out.
//!
//! Lag policy (the same on every endpoint): when fan-out drops a feed
//! because its connection's queue is over its bound (items or bytes, or
//! the relay-wide budget), the queued items are freed at once and the
//! dialect is asked what to do ([`crate::dialect::Lag`]):
//! - `Resume` (every dialect but native): the feed re-subscribes from the
//!   last seq it delivered and replays the gap from the log (current
//!   entity states if retention trimmed it), so the client sees every
//!   change once, later; it needs no resync message.
//! - `Drop` (native, whose protocol has `resync`): the feed ends and the
//!   client is told where to resume; it resubscribes itself.
//!
//! A replay never echoes a client's own writes to a dialect that does not
//! echo them live: fan-out records the seqs a connection wrote (see
//! `engine::ConnSignal::own`), and the replay skips them.
//!
//! Catch-up pages are read off the async workers (`spawn_blocking`); each
//! page re-checks the retention horizon (in the engine), so a trim between
//! pages becomes a snapshot instead of a gap.

use crate::engine::Committed;
use crate::engine::{CatchUp, ConnLink, Engine, EngineError, Filter, Subscription};
use std::sync::Arc;

/// One followed space.
pub struct Feed {
    pub space: String,
    pub filter: Filter,
    /// The hub subscription, once live (None while catching up or after
    /// a lag drop).
    pub sub: Option<u64>,
    /// The last seq delivered or skipped: a resume starts after it, and
    /// anything at or below it that arrives again is dropped.
    pub last: u64,
    /// Whether the client gets its own writes back.
    pub echo: bool,
}

impl Feed {
    /// A feed of `space` that delivers after seq `last`, not live yet.
    pub fn new(space: String, filter: Filter, last: u64, echo: bool) -> Feed {
        Feed {
            space,
            filter,
            sub: None,
            last,
            echo,
        }
    }

    /// Whether to pass a catch-up change on (not a duplicate, nor the
    /// client's own write for a dialect that does not echo).
    pub fn accept_catch_up(&mut self, c: &Committed, own: impl Fn(u64) -> bool) -> bool {
        if c.seq <= self.last {
            return false;
        }
        self.last = c.seq;
        self.echo || !own(c.seq)
    }

    /// Whether to pass a live change on (not queued for a dropped
    /// subscription, not already replayed, nor the client's own write).
    pub fn accept_live(&mut self, sub: u64, c: &Committed, conn: u64) -> bool {
        if Some(sub) != self.sub || c.seq <= self.last {
            return false;
        }
        self.last = c.seq;
        self.echo || c.source != Some(conn)
    }
}

/// Pages of a subscription's catch-up, each read on a blocking thread.
pub struct Pages {
    engine: Arc<Engine>,
    sub: Option<Subscription>,
}

impl Pages {
    pub fn start(
        engine: &Arc<Engine>,
        feed: &mut Feed,
        link: ConnLink,
    ) -> Result<Pages, EngineError> {
        let sub = engine.start_subscription(&feed.space, feed.last, feed.filter.clone(), link)?;
        // A resume point past anything this relay committed comes from
        // another history: the engine starts over, and so does the feed.
        feed.last = feed.last.min(sub.reached());
        Ok(Pages {
            engine: engine.clone(),
            sub: Some(sub),
        })
    }

    /// The next page; None once the subscription is live (then
    /// [`Pages::live`] says where it stands).
    pub async fn next(&mut self) -> Result<Option<Vec<CatchUp>>, EngineError> {
        let Some(mut sub) = self.sub.take() else {
            return Ok(None);
        };
        let engine = self.engine.clone();
        let (sub, page) = tokio::task::spawn_blocking(move || {
            let page = engine.next_page(&mut sub);
            (sub, page)
        })
        .await
        .map_err(|e| EngineError::Internal(format!("catch-up task failed: {e}")))?;
        if page.is_err() {
            if let Some(id) = sub.id {
                self.engine.unsubscribe(&sub.space, id);
            }
            return page;
        }
        self.sub = Some(sub);
        page
    }

    /// The live subscription's id and the seq its catch-up reached.
    pub fn live(&self) -> Option<(u64, u64)> {
        let sub = self.sub.as_ref()?;
        Some((sub.id?, sub.reached()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{ConnSignal, EngineSettings, Outbox};
    use crate::store::{Durability, LocalWrite};
    use std::collections::BTreeMap;

    fn engine(dir: &std::path::Path) -> Arc<Engine> {
        let s = EngineSettings {
            durability: Durability::Relaxed,
            max_queued_bytes: usize::MAX,
            ..EngineSettings::for_tests(dir)
        };
        Engine::open(s, Default::default()).unwrap()
    }

    fn write(id: &str) -> LocalWrite {
        LocalWrite {
            collection: "c".into(),
            id: id.into(),
            op: crate::model::Op::Patch,
            fields: BTreeMap::from([("v".to_string(), serde_json::json!(1))]),
            client_us: None,
            expect: None,
        }
    }

    /// Replay a feed to live; the ids of the changes it passes on.
    async fn replay(engine: &Arc<Engine>, feed: &mut Feed, link: &ConnLink) -> Vec<String> {
        let mut seen = Vec::new();
        let mut pages = Pages::start(engine, &mut *feed, link.clone()).unwrap();
        while let Some(page) = pages.next().await.unwrap() {
            for item in page {
                if let CatchUp::Change(c) = item {
                    if feed.accept_catch_up(&c, |s| link.signal.is_own(s)) {
                        seen.push(c.entry.change.id.clone());
                    }
                }
            }
        }
        let (id, reached) = pages.live().unwrap();
        feed.sub = Some(id);
        feed.last = feed.last.max(reached);
        seen
    }

    /// A feed dropped for lagging replays the gap from the log, where its
    /// own writes have lost their source: a dialect that does not echo
    /// still skips them (fan-out recorded them), and one that does gets
    /// them.
    #[tokio::test]
    async fn a_replay_after_a_lag_drop_skips_the_clients_own_writes() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(dir.path());
        for echo in [false, true] {
            let conn = engine.next_conn_id();
            // A queue of 16 items: the 20-change push below overflows it.
            let link = ConnLink {
                conn,
                outbox: Outbox::new(16, usize::MAX),
                signal: Arc::new(ConnSignal::default()),
            };
            engine.hub().attach(conn, link.signal.clone());
            let space = format!("s{echo}");
            let mut feed = Feed::new(space.clone(), Filter::default(), engine.last_seq(), echo);
            assert!(replay(&engine, &mut feed, &link).await.is_empty());
            // The client writes; before it takes anything from its queue,
            // another writer overflows it and the feed is dropped.
            engine
                .push(&space, "me", Some(conn), vec![write("mine")])
                .await
                .unwrap();
            let others: Vec<LocalWrite> = (0..20).map(|i| write(&format!("o{i}"))).collect();
            engine.push(&space, "other", None, others).await.unwrap();
            assert_eq!(link.signal.take_lagged(), vec![feed.sub.unwrap()]);
            assert!(link.outbox.is_empty(), "the dropped feed's queue was freed");
            feed.sub = None;
            let seen = replay(&engine, &mut feed, &link).await;
            let others: Vec<String> = (0..20).map(|i| format!("o{i}")).collect();
            if echo {
                let mut all = vec!["mine".to_string()];
                all.extend(others);
                assert_eq!(seen, all);
            } else {
                assert_eq!(seen, others, "no echo of the client's own write");
            }
            // Live again: a later own write arrives with its source.
            link.signal.forget_own(feed.last);
            engine.drop_conn(conn);
        }
        engine.shutdown();
    }
}
