//! A simulated client subscription: the engine's catch-up (in tiny pages,
//! so retention trims race it between pages), then live delivery from its
//! connection queue. The client keeps the space's state as it learns it:
//! changes applied in the order received (their seqs must only grow),
//! snapshot states merged. It resumes from the last seq it saw when its
//! subscription is dropped (lag, a merged snapshot) or its relay restarts.
//! The check: once live, and with the relay's writer held still, its state
//! is the relay's, entity by entity. A change skipped without a snapshot
//! (a silent gap) shows as a difference.

use outpost::engine::{CatchUp, ConnLink, ConnSignal, Delivery, Engine, Filter, Outbox};
use outpost::model::{Change, EntityState};
use std::collections::BTreeMap;
use std::sync::Arc;

pub struct Client {
    pub relay: usize,
    pub space: String,
    /// The relay's incarnation this subscription belongs to.
    pub generation: u64,
    pub page: usize,
    link: ConnLink,
    sub: Option<outpost::engine::Subscription>,
    /// The live subscription's id, once the catch-up is over.
    live: Option<u64>,
    /// The last seq applied.
    last: u64,
    pub view: BTreeMap<(String, String), EntityState>,
    pub resyncs: u64,
}

impl Client {
    pub fn new(
        e: &Engine,
        relay: usize,
        generation: u64,
        space: &str,
        page: usize,
    ) -> Result<Client, String> {
        let mut c = Client {
            relay,
            space: space.to_string(),
            generation,
            page,
            link: link(e),
            sub: None,
            live: None,
            last: 0,
            view: BTreeMap::new(),
            resyncs: 0,
        };
        c.start(e)?;
        Ok(c)
    }

    /// (Re)subscribe from the last seq seen, on the relay's current engine.
    fn start(&mut self, e: &Engine) -> Result<(), String> {
        if let Some(id) = self.registered() {
            e.unsubscribe(&self.space, id);
        }
        self.live = None;
        self.link = link(e);
        let sub = e
            .start_subscription(&self.space, self.last, Filter::default(), self.link.clone())
            .map_err(|err| format!("subscribe: {err}"))?
            .page_items(self.page);
        self.sub = Some(sub);
        Ok(())
    }

    /// The relay restarted: the connection dropped; the client reconnects
    /// and resumes.
    pub fn reconnect(&mut self, e: &Engine, generation: u64) -> Result<(), String> {
        self.generation = generation;
        // Nothing to unsubscribe: that hub is gone with its relay.
        self.live = None;
        self.sub = None;
        self.resyncs += 1;
        self.start(e)
    }

    /// The subscription's id once registered with the hub: live, or
    /// still reading the seam (when the hub can already drop it).
    fn registered(&self) -> Option<u64> {
        self.live.or(self.sub.as_ref().and_then(|s| s.id))
    }

    pub fn is_live(&self) -> bool {
        self.live.is_some()
    }

    fn apply(&mut self, seq: u64, change: &Change, how: &str) -> Result<(), String> {
        if std::env::var("SIM_DEBUG").is_ok() {
            eprintln!(
                "client of relay {} on {}: {how} seq {seq} ({}/{})",
                self.relay, self.space, change.collection, change.id
            );
        }
        // As the connection driver's feed does (`conn::feed`): what the
        // client already has (a live change that a catch-up also read, or
        // that current states already hold) is dropped. A change skipped
        // this way that the client lacks shows in `check`.
        if seq <= self.last {
            return Ok(());
        }
        self.last = seq;
        self.view
            .entry((change.collection.clone(), change.id.clone()))
            .or_default()
            .apply(change);
        Ok(())
    }

    /// Take a resync signal, one catch-up page (at most `pages` of them),
    /// and whatever the connection queue holds once live.
    pub fn pump(&mut self, e: &Engine, pages: usize) -> Result<(), String> {
        let lagged = self.link.signal.take_lagged();
        if self.registered().is_some_and(|id| lagged.contains(&id)) {
            self.resyncs += 1;
            self.start(e)?;
        }
        for _ in 0..pages {
            let Some(sub) = self.sub.as_mut() else { break };
            match e.next_page(sub) {
                Ok(Some(items)) => {
                    for item in items {
                        match item {
                            CatchUp::Change(c) => {
                                let (seq, change) = (c.seq, c.entry.change.clone());
                                self.apply(seq, &change, "catch-up")?;
                            }
                            CatchUp::Snapshot {
                                collection,
                                id,
                                entity,
                            } => {
                                if std::env::var("SIM_DEBUG").is_ok() {
                                    eprintln!(
                                        "client of relay {} on {}: state of {collection}/{id} (entity seq {})",
                                        self.relay, self.space, entity.seq
                                    );
                                }
                                self.view
                                    .entry((collection, id))
                                    .or_default()
                                    .merge(&entity.state);
                            }
                        }
                    }
                }
                Ok(None) => {
                    let sub = self.sub.take().expect("catching up");
                    if std::env::var("SIM_DEBUG").is_ok() {
                        eprintln!(
                            "client of relay {} on {}: live at {} (reached {})",
                            self.relay,
                            self.space,
                            self.last,
                            sub.reached()
                        );
                    }
                    self.live = sub.id;
                    self.last = self.last.max(sub.reached());
                }
                // A store error (a relay shutting down): resume later.
                Err(_) => return Ok(()),
            }
        }
        if let Some(id) = self.live {
            while let Some(d) = self.link.outbox.try_recv() {
                if let Delivery::Change { sub, item } = d {
                    if sub == id {
                        let change = item.entry.change.clone();
                        self.apply(item.seq, &change, "live")?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Bring the client live and compare its state with the relay's. The
    /// caller holds the relay's writer, so nothing commits meanwhile.
    pub fn check(&mut self, e: &Engine) -> Result<(), String> {
        for _ in 0..100_000 {
            if self.is_live() {
                break;
            }
            self.pump(e, 1)?;
        }
        self.pump(e, 0)?;
        if !self.is_live() {
            // Dropped again (lag) while catching up: nothing to compare.
            return Ok(());
        }
        let relay: BTreeMap<(String, String), EntityState> = e
            .entities(&self.space, None, None, 1_000_000)
            .map_err(|err| err.to_string())?
            .into_iter()
            .map(|(c, id, ent)| ((c, id), ent.state))
            .collect();
        if relay != self.view {
            let diff: Vec<String> = relay
                .iter()
                .filter(|(k, v)| self.view.get(*k) != Some(v))
                .map(|(k, v)| format!("{k:?}: relay {v:?} client {:?}", self.view.get(k)))
                .take(3)
                .collect();
            let log: Vec<(u64, String)> = e
                .space_log(&self.space, 0, 10_000)
                .map_err(|err| err.to_string())?
                .into_iter()
                .map(|(seq, l)| (seq, l.change.id))
                .collect();
            return Err(format!(
                "a client of relay {} on {} (pages of {}, {} resyncs, at seq {}) holds another state than its relay: {diff:?}; the relay's log of the space (horizon {}): {log:?}",
                self.relay, self.space, self.page, self.resyncs, self.last, e.horizon()
            ));
        }
        Ok(())
    }
}

fn link(e: &Engine) -> ConnLink {
    ConnLink {
        conn: e.next_conn_id(),
        outbox: Outbox::new(4096, 64 << 20),
        signal: Arc::new(ConnSignal::default()),
    }
}
