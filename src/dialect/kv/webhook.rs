//! The seed 003 webhook: every stored op of collection `kv` (in any
//! workspace, from any dialect or peer) is POSTed to `[webhook] url` as a
//! `doc.updated` event.
//!
//! The queue is the engine's log itself: a durable cursor (`webhook:kv`)
//! marks the last log entry handled, and it is pinned so retention never
//! trims what is undelivered. Writers never wait for the webhook; the sender
//! task reads the log behind them. Events go out one at a time, in log
//! order, each retried with exponential backoff until the receiver answers
//! 2xx (at-least-once: the cursor is saved after each page, so a crash can
//! repeat up to a page). The backlog is bounded by `webhook.max_backlog`
//! entries: past it the oldest events are dropped and counted, so a receiver
//! that is gone for good cannot pin the log until the disk fills.
//!
//! The HTTP client is hyper's HTTP/1 client connection (hyper is already in
//! the tree through axum), over a plain TCP stream: http:// only.

use super::{hex, history_item, COLLECTION};
use crate::config::WebhookSettings;
use crate::engine::{off_worker, Engine, PAGE_BYTES};
use crate::store::{Cap, LogEntry};
use crate::tasks::AbortOnDrop;
use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::watch;

/// The engine cursor (and retention pin) of the webhook.
pub const CURSOR: &str = "webhook:kv";
/// Header carrying `sha256=<hex HMAC-SHA256 of the body>` when a secret is set.
pub const SIGNATURE_HEADER: &str = "x-outpost-signature";
/// Header naming the event type.
pub const EVENT_HEADER: &str = "x-outpost-event";

/// How often an idle sender looks for new log entries.
const POLL: Duration = Duration::from_millis(100);
/// Log entries read per pass; the cursor is saved after each.
const PAGE: usize = 64;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The `doc.updated` body for a log entry (None: not a key/value op).
pub fn event_body(seq: u64, e: &LogEntry) -> Option<Bytes> {
    if e.change.collection != COLLECTION {
        return None;
    }
    let mut v = history_item(seq, e);
    let m = v.as_object_mut()?;
    m.insert("type".into(), "doc.updated".into());
    m.insert("workspace".into(), Value::String(e.change.space.clone()));
    Some(Bytes::from(v.to_string()))
}

/// The signature header value for `body`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    format!("sha256={}", hex(ring::hmac::sign(&key, body).as_ref()))
}

/// The sender: pins the cursor now (before retention can run, so call this
/// before the engine's maintenance starts) and returns the loop for the app
/// to run among its tasks. It stops when `shutdown` flips, saving its
/// cursor.
pub fn start(
    engine: &Arc<Engine>,
    cfg: WebhookSettings,
    shutdown: watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    engine.pin_cursor(CURSOR);
    run(Arc::downgrade(engine), cfg, shutdown)
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("cannot connect to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("bad request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("the receiver answered HTTP {0}")]
    Status(u16),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// One receiver, one kept-alive HTTP/1 connection.
struct Poster {
    cfg: WebhookSettings,
    conn: Option<Conn>,
}

/// A kept-alive connection: the request half and the task driving it,
/// which ends when the connection is dropped.
struct Conn {
    tx: http1::SendRequest<Full<Bytes>>,
    _driver: AbortOnDrop<()>,
}

impl Poster {
    async fn post(&mut self, body: &Bytes) -> Result<(), DeliveryError> {
        let t = self.cfg.timeout;
        match tokio::time::timeout(t, self.attempt(body)).await {
            Ok(Ok(status)) if (200..300).contains(&status) => Ok(()),
            Ok(Ok(status)) => Err(DeliveryError::Status(status)),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                self.conn = None;
                Err(DeliveryError::Timeout(t))
            }
        }
    }

    async fn attempt(&mut self, body: &Bytes) -> Result<u16, DeliveryError> {
        // A kept-alive connection that the receiver closed meanwhile fails
        // before any answer: that is not the receiver failing, so try once
        // more on a fresh connection.
        if let Some(c) = self.conn.take() {
            if let Ok(status) = self.send(c, body).await {
                return Ok(status);
            }
        }
        let c = self.connect().await?;
        self.send(c, body).await
    }

    async fn connect(&self) -> Result<Conn, DeliveryError> {
        let a = &self.cfg.authority;
        let stream = tokio::net::TcpStream::connect(a)
            .await
            .map_err(|e| DeliveryError::Connect(a.clone(), e))?;
        let _ = stream.set_nodelay(true);
        let (tx, conn) = http1::handshake(TokioIo::new(stream)).await?;
        // Drives the connection; ends when `tx` is dropped or the peer
        // closes, and at the latest when the `Conn` is dropped.
        let driver = AbortOnDrop::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn {
            tx,
            _driver: driver,
        })
    }

    async fn send(&mut self, mut c: Conn, body: &Bytes) -> Result<u16, DeliveryError> {
        use hyper::header;
        c.tx.ready().await?;
        let mut req = hyper::Request::post(self.cfg.path.as_str())
            .header(header::HOST, self.cfg.authority.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("outpost/", env!("CARGO_PKG_VERSION")),
            )
            .header(EVENT_HEADER, "doc.updated");
        if let Some(secret) = &self.cfg.secret {
            req = req.header(SIGNATURE_HEADER, signature(secret, body));
        }
        let resp =
            c.tx.send_request(req.body(Full::new(body.clone()))?)
                .await?;
        let status = resp.status().as_u16();
        // Read the answer out so the connection can carry the next event.
        if resp.into_body().collect().await.is_ok() {
            self.conn = Some(c);
        }
        Ok(status)
    }
}

/// Sleep `d` unless shutdown comes first (true: stop now).
async fn stopped_within(shutdown: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = shutdown.wait_for(|s| *s) => true,
        _ = tokio::time::sleep(d) => false,
    }
}

/// `d` scaled by a random factor in [0.5, 1), so many relays that lost the
/// same receiver do not retry in step.
fn jitter(d: Duration) -> Duration {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 2];
    let r = ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map(|()| u16::from_le_bytes(b))
        .unwrap_or(u16::MAX / 2);
    d.mul_f64(0.5 + f64::from(r) / f64::from(u16::MAX) / 2.0)
}

enum Sent {
    Delivered,
    /// Fell out of the newest `max_backlog` log entries while retrying.
    Dropped,
    /// Shutdown came first.
    Stopped,
}

/// Post one event until it is accepted, it falls out of the backlog bound,
/// or shutdown comes.
async fn deliver(
    poster: &mut Poster,
    seq: u64,
    body: &Bytes,
    weak: &Weak<Engine>,
    max_backlog: u64,
    shutdown: &mut watch::Receiver<bool>,
) -> Sent {
    let mut backoff = BACKOFF_MIN;
    let mut attempts = 0u32;
    loop {
        let Some(engine) = weak.upgrade() else {
            return Sent::Stopped;
        };
        let metrics = engine.metrics.clone();
        let behind = engine.last_seq().saturating_sub(seq);
        drop(engine);
        metrics.webhook_backlog.store(behind + 1, Relaxed);
        if behind >= max_backlog {
            return Sent::Dropped;
        }
        let r = tokio::select! {
            r = poster.post(body) => r,
            _ = shutdown.wait_for(|s| *s) => return Sent::Stopped,
        };
        match r {
            Ok(()) => {
                metrics.webhook_delivered.fetch_add(1, Relaxed);
                return Sent::Delivered;
            }
            Err(e) => {
                metrics.webhook_failures.fetch_add(1, Relaxed);
                attempts += 1;
                let wait = jitter(backoff);
                // Warn on the first failure of an event, then at powers of
                // two, so a dead receiver does not flood the log.
                if attempts.is_power_of_two() {
                    tracing::warn!(seq, attempts, error = %e, retry_in = ?wait, "webhook delivery failed");
                }
                if stopped_within(shutdown, wait).await {
                    return Sent::Stopped;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Count the key/value events in `(from, to]`: the ones the backlog bound
/// is about to drop.
fn count_events(engine: &Engine, mut from: u64, to: u64) -> u64 {
    let mut n = 0;
    while from < to {
        let Ok(page) = engine
            .log_after_page(from, Cap::new(1024, PAGE_BYTES))
            .map(|p| p.items)
        else {
            break;
        };
        if page.is_empty() {
            break;
        }
        for (seq, e) in page {
            if seq > to {
                return n;
            }
            from = seq;
            n += u64::from(e.change.collection == COLLECTION);
        }
    }
    n
}

async fn save(engine: &Engine, cursor: u64) -> bool {
    match engine.set_cursor(CURSOR, cursor).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "cannot save the webhook cursor");
            false
        }
    }
}

async fn run(weak: Weak<Engine>, cfg: WebhookSettings, mut shutdown: watch::Receiver<bool>) {
    let max_backlog = cfg.max_backlog;
    let mut poster = Poster { cfg, conn: None };
    let mut cursor: Option<u64> = None;
    let mut unsaved = false;
    loop {
        // A dropped sender (the relay went away without a shutdown) also stops.
        if *shutdown.borrow() || shutdown.has_changed().is_err() {
            break;
        }
        let Some(engine) = weak.upgrade() else { return };
        let c = match cursor {
            Some(c) => c,
            // Store reads here run on the blocking pool (`off_worker`):
            // this loop shares the async workers with every connection.
            None => match off_worker({
                let e = engine.clone();
                move || e.cursor(CURSOR)
            })
            .await
            {
                Ok(c) => *cursor.insert(c),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the webhook cursor");
                    drop(engine);
                    if stopped_within(&mut shutdown, BACKOFF_MAX).await {
                        return;
                    }
                    continue;
                }
            },
        };
        let last = engine.last_seq();
        if last.saturating_sub(c) > max_backlog {
            let to = last - max_backlog;
            let dropped = off_worker({
                let e = engine.clone();
                move || count_events(&e, c, to)
            })
            .await;
            engine.metrics.webhook_dropped.fetch_add(dropped, Relaxed);
            tracing::warn!(
                dropped,
                max_backlog,
                "webhook backlog over webhook.max_backlog: the oldest events are dropped"
            );
            cursor = Some(to);
            unsaved = !save(&engine, to).await;
            continue;
        }
        engine
            .metrics
            .webhook_backlog
            .store(last.saturating_sub(c), Relaxed);
        let page = if last > c {
            let e = engine.clone();
            off_worker(move || e.log_after_page(c, Cap::new(PAGE, PAGE_BYTES)))
                .await
                .map(|p| p.items)
        } else {
            Ok(vec![])
        };
        let page = match page {
            Ok(p) if !p.is_empty() => p,
            Ok(_) => {
                if unsaved {
                    unsaved = !save(&engine, c).await;
                }
                drop(engine);
                if stopped_within(&mut shutdown, POLL).await {
                    break;
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the log for the webhook");
                drop(engine);
                if stopped_within(&mut shutdown, BACKOFF_MAX).await {
                    break;
                }
                continue;
            }
        };
        let metrics = engine.metrics.clone();
        // Hold no engine reference while waiting on the receiver.
        drop(engine);
        for (seq, entry) in page {
            if let Some(body) = event_body(seq, &entry) {
                let sent = deliver(&mut poster, seq, &body, &weak, max_backlog, &mut shutdown);
                match sent.await {
                    Sent::Delivered => {}
                    Sent::Dropped => {
                        metrics.webhook_dropped.fetch_add(1, Relaxed);
                        tracing::warn!(
                            seq,
                            max_backlog,
                            "webhook event dropped: over webhook.max_backlog"
                        );
                    }
                    Sent::Stopped => break,
                }
            }
            cursor = Some(seq);
            unsaved = true;
        }
        let Some(engine) = weak.upgrade() else { return };
        if let Some(c) = cursor.filter(|_| unsaved) {
            unsaved = !save(&engine, c).await;
        }
    }
    // Shutdown: keep what was delivered (the store is still open here).
    if let (Some(engine), Some(c), true) = (weak.upgrade(), cursor, unsaved) {
        save(&engine, c).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Change, NodeId, Op, Stamp};
    use serde_json::json;
    use std::collections::BTreeMap;

    #[test]
    fn event_shape_and_signature() {
        let e = LogEntry {
            change: Change {
                space: "workspace-123".into(),
                collection: COLLECTION.into(),
                id: "foo".into(),
                op: Op::Patch,
                fields: BTreeMap::from([("value".into(), json!("bar"))]),
                stamp: Stamp {
                    ms: 1_700_000_000_123,
                    counter: 0,
                    node: NodeId(1),
                },
                origin: NodeId(1),
                seq: 1,
                actor: "alice".into(),
            },
            at_ms: 0,
            version: 1,
            created: true,
            type_version: 0,
        };
        let body = event_body(9, &e).unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            json!({"type": "doc.updated", "workspace": "workspace-123", "key": "foo",
                   "value": "bar", "timestamp": 1_700_000_000_123_000u64, "seq": 9, "actor": "alice"})
        );
        let mut other = e.clone();
        other.change.collection = "notes".into();
        assert!(event_body(9, &other).is_none());
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let j = jitter(Duration::from_secs(2));
        assert!(j >= Duration::from_secs(1) && j <= Duration::from_secs(2));
    }
}
