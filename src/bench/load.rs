//! The load: S subscribers and N writers over real WebSockets, each writer
//! keeping at most W pushes unacknowledged. Used unchanged against the
//! relay (native `/ws` protocol) and the floor (`/pub`, `/sub`), so the
//! two are comparable.
//!
//! Changes are numbered `0..M`; the number travels in the change's fields
//! (`"bn":N`), and its send time in a shared table, so each subscriber's
//! receipt gives an end-to-end latency and feeds the exactly-once check.

use super::stats::{per_second, Check, Latency, Tally};
use super::wire;
use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use memchr::memmem::Finder;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Which server protocol the clients speak.
#[derive(Clone, Debug)]
pub enum Proto {
    /// outpost's `/ws`: welcome, subscribe → synced, push → ack.
    Native { space: String },
    /// The floor: `/sub` sends one ready frame, `/pub` acks every frame.
    Floor,
}

/// Where writers and subscribers connect (they may be different relays).
#[derive(Clone, Debug)]
pub struct Target {
    pub proto: Proto,
    pub write_url: String,
    pub sub_url: String,
}

#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub subscribers: usize,
    pub writers: usize,
    pub changes: u64,
    pub window: usize,
    /// A subscriber gives up after this long without a frame.
    pub quiet: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadResult {
    pub subscribers: usize,
    pub writers: usize,
    pub changes: u64,
    pub window: usize,
    pub deliveries: u64,
    pub deliveries_per_s: f64,
    pub acked: u64,
    pub acked_writes_per_s: f64,
    pub write_errors: u64,
    /// Send of a push to its receipt by each subscriber.
    pub e2e: Latency,
    /// Send of a push to its ack.
    pub ack: Latency,
    pub check: Check,
    pub elapsed_s: f64,
    /// CPU (user + system) the bench process itself used per delivery:
    /// the load's clients, on the same cores as the server under test.
    pub client_cpu_us_per_delivery: Option<f64>,
}

/// Bytes of the pushed change object (`{"collection":…,"fields":{…}}`).
pub const CHANGE_BYTES: usize = 256;

pub async fn connect(url: &str) -> Result<Ws> {
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .map_err(|_| anyhow!("connecting to {url} timed out"))?
    .with_context(|| format!("connecting to {url}"))?;
    Ok(ws)
}

/// The next text frame, within `wait`.
async fn next_text(ws: &mut Ws, wait: Duration) -> Result<String> {
    loop {
        match tokio::time::timeout(wait, ws.next()).await {
            Err(_) => bail!("no frame within {wait:?}"),
            Ok(None) => bail!("connection closed"),
            Ok(Some(Err(e))) => bail!("socket error: {e}"),
            Ok(Some(Ok(Message::Text(t)))) => return Ok(t.to_string()),
            Ok(Some(Ok(Message::Close(_)))) => bail!("connection closed"),
            Ok(Some(Ok(_))) => {}
        }
    }
}

fn frame_type(text: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    v["type"].as_str().map(str::to_string)
}

/// Subscribe on `space` from `since` and wait for `synced`.
async fn native_subscribe(ws: &mut Ws, space: &str, since: u64) -> Result<()> {
    let sub = serde_json::json!({"type": "subscribe", "rid": "bench", "space": space,
        "since": since, "events": false});
    ws.send(Message::Text(sub.to_string().into())).await?;
    loop {
        let t = next_text(ws, Duration::from_secs(30)).await?;
        match frame_type(&t).as_deref() {
            Some("synced") => return Ok(()),
            Some("error") => bail!("subscribe refused: {t}"),
            _ => {}
        }
    }
}

/// A connected, subscribed, live subscriber.
pub async fn open_subscriber(t: &Target) -> Result<Ws> {
    let mut ws = connect(&t.sub_url).await?;
    match &t.proto {
        Proto::Native { space } => {
            next_text(&mut ws, Duration::from_secs(10)).await?; // welcome
            native_subscribe(&mut ws, space, 0).await?;
        }
        Proto::Floor => {
            next_text(&mut ws, Duration::from_secs(10)).await?; // ready
        }
    }
    Ok(ws)
}

/// The first change number carried in a frame, if it carries one.
pub fn change_number(text: &str) -> Option<u64> {
    change_numbers(text.as_bytes()).next()
}

/// One push of change `n` with `pad` bringing the change object to
/// about [`CHANGE_BYTES`].
pub fn push_frame(space: &str, n: u64, pad: &str) -> String {
    format!(
        r#"{{"type":"push","rid":{n},"space":"{space}","changes":[{{"collection":"bench","id":"e{}","fields":{{"bn":{n},"pad":"{pad}"}}}}]}}"#,
        n % 1000
    )
}

pub fn pad_for_change_bytes() -> String {
    let base = r#"{"collection":"bench","id":"e999","fields":{"bn":12345,"pad":""}}"#.len();
    "x".repeat(CHANGE_BYTES.saturating_sub(base))
}

/// State shared by the clients of one run.
struct Shared {
    t0: Instant,
    /// Send time of each change, ns after `t0` (0 = not sent yet).
    sent: Vec<AtomicU64>,
}

impl Shared {
    fn since_t0(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.t0).as_nanos() as u64
    }

    /// Microseconds from the send of `n` to `at`.
    fn latency_us(&self, n: u64, at: Instant) -> Option<u64> {
        let s = self.sent.get(n as usize)?.load(Ordering::Acquire);
        (s > 0).then(|| self.since_t0(at).saturating_sub(s) / 1000)
    }
}

struct SubOut {
    tally: Tally,
    latencies: Vec<u64>,
    last: Option<Instant>,
    resyncs: u64,
}

/// Every change number in a frame (each `"bn":N`: the relay sends one
/// change per `change` frame today, the floor forwards one push per frame;
/// a frame carrying several changes would be counted change by change).
pub fn change_numbers(text: &[u8]) -> impl Iterator<Item = u64> + '_ {
    // Built once: building a searcher per frame cost more than the search.
    static BN: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"bn\":"));
    BN.find_iter(text).filter_map(move |i| {
        let digits = &text[i + 5..];
        let len = digits.iter().take_while(|b| b.is_ascii_digit()).count();
        if len == 0 {
            return None;
        }
        digits[..len].iter().try_fold(0u64, |n, d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
    })
}

static ACK: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""type":"ack""#));
static ERROR: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""type":"error""#));

/// A subscribed client of the load: reads in bulk, takes the receipt time
/// once per read (the frames of one read arrived together), and counts
/// every change number it finds for the exactly-once and order check.
/// Frames without a change number are parsed as JSON (rare: `resync`).
async fn run_subscriber(
    mut r: wire::Reader,
    mut w: wire::Writer,
    proto: Proto,
    shared: Arc<Shared>,
    load: Load,
) -> Result<SubOut> {
    let mut out = SubOut {
        tally: Tally::new(load.changes, load.writers as u64),
        latencies: Vec::with_capacity(load.changes as usize),
        last: None,
        resyncs: 0,
    };
    'read: while out.tally.distinct() < load.changes {
        match r.fill(load.quiet).await {
            Ok(n) if n > 0 => {}
            _ => break,
        }
        let now = Instant::now();
        let mut resync = None;
        loop {
            let frame = match r.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => break 'read,
            };
            match frame {
                wire::Frame::Text(t) => {
                    let mut any = false;
                    for n in change_numbers(t) {
                        any = true;
                        if let Some(l) = shared.latency_us(n, now) {
                            out.latencies.push(l);
                        }
                        out.tally.see(n);
                    }
                    if any {
                        out.last = Some(now);
                    } else if let Proto::Native { .. } = proto {
                        // A lagging subscriber is dropped with `resync`:
                        // resume from where it says, as a client would.
                        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(t) {
                            if v["type"] == "resync" {
                                resync = Some(v["since"].as_u64().unwrap_or(0));
                            }
                        }
                    }
                }
                wire::Frame::Ping(p) => w.pong(p),
                wire::Frame::Close => break 'read,
                wire::Frame::Binary(_) | wire::Frame::Pong => {}
            }
        }
        if let (Some(since), Proto::Native { space }) = (resync, &proto) {
            out.resyncs += 1;
            let sub = serde_json::json!({"type": "subscribe", "space": space,
                "since": since, "events": false});
            w.text(&sub.to_string());
        }
        w.flush().await?;
    }
    w.close();
    let _ = w.flush().await;
    Ok(out)
}

struct WriterOut {
    acks: Vec<u64>,
    errors: u64,
    last_ack: Option<Instant>,
}

/// Writer `w` of `writers`: changes `w*per .. min((w+1)*per, total)`.
/// Sends as many pushes as the window allows with one write, reads the
/// acks in bulk and frees their window slots per read.
async fn run_writer(
    mut r: wire::Reader,
    mut w: wire::Writer,
    proto: Proto,
    shared: Arc<Shared>,
    range: std::ops::Range<u64>,
    window: usize,
) -> Result<WriterOut> {
    let space = match &proto {
        Proto::Native { space } => space.clone(),
        Proto::Floor => "floor".into(),
    };
    let pad = pad_for_change_bytes();
    let permits = Arc::new(Semaphore::new(window.max(1)));
    let count = range.end - range.start;
    // Pings that reach the reading half are answered by the writing one.
    let (pong_tx, mut pong_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let send = {
        let permits = permits.clone();
        let shared = shared.clone();
        let range = range.clone();
        async move {
            let mut n = range.start;
            while n < range.end {
                tokio::select! {
                    p = permits.acquire() => {
                        p?.forget();
                        let mut k = 1;
                        while n + k < range.end {
                            match permits.try_acquire() {
                                Ok(p) => p.forget(),
                                Err(_) => break,
                            }
                            k += 1;
                        }
                        let at = shared.since_t0(Instant::now()).max(1);
                        for i in n..n + k {
                            shared.sent[i as usize].store(at, Ordering::Release);
                            w.text(&push_frame(&space, i, &pad));
                        }
                        w.flush().await?;
                        n += k;
                    }
                    Some(p) = pong_rx.recv() => {
                        w.pong(&p);
                        w.flush().await?;
                    }
                }
            }
            anyhow::Ok(w)
        }
    };
    let recv = async {
        let mut out = WriterOut {
            acks: Vec::with_capacity(count as usize),
            errors: 0,
            last_ack: None,
        };
        let mut j = 0u64;
        while j < count {
            match r.fill(Duration::from_secs(30)).await {
                Err(_) => bail!("no ack within 30 s ({j} of {count} acked)"),
                Ok(0) => bail!("writer connection lost after {j} acks"),
                Ok(_) => {}
            }
            let now = Instant::now();
            let mut freed = 0;
            while let Some(frame) = r.next_frame()? {
                let t = match frame {
                    wire::Frame::Text(t) => t,
                    wire::Frame::Ping(p) => {
                        let _ = pong_tx.try_send(p.to_vec());
                        continue;
                    }
                    wire::Frame::Close => bail!("writer connection closed after {j} acks"),
                    wire::Frame::Binary(_) | wire::Frame::Pong => continue,
                };
                let is_ack = ACK.find(t).is_some();
                if !is_ack && ERROR.find(t).is_none() {
                    continue;
                }
                // Acks and in-order errors answer pushes in order.
                if is_ack {
                    if let Some(l) = shared.latency_us(range.start + j, now) {
                        out.acks.push(l);
                    }
                } else {
                    out.errors += 1;
                }
                j += 1;
                freed += 1;
            }
            if freed > 0 {
                out.last_ack = Some(now);
                permits.add_permits(freed);
            }
        }
        Ok(out)
    };
    let (sent, out) = tokio::join!(send, recv);
    let out = out?;
    let mut w = sent?;
    w.close();
    let _ = w.flush().await;
    Ok(out)
}

/// A subscriber of the load on the lean client, subscribed and live.
async fn open_load_subscriber(t: &Target) -> Result<(wire::Reader, wire::Writer)> {
    let (mut r, mut w) = wire::connect(&t.sub_url).await?;
    let wait = Duration::from_secs(10);
    match &t.proto {
        Proto::Native { space } => {
            r.next_text(&mut w, wait).await?; // welcome
            let sub = serde_json::json!({"type": "subscribe", "rid": "bench", "space": space,
                "since": 0, "events": false});
            w.send_text(&sub.to_string()).await?;
            loop {
                let t = r.next_text(&mut w, Duration::from_secs(30)).await?;
                match frame_type(&t).as_deref() {
                    Some("synced") => break,
                    Some("error") => bail!("subscribe refused: {t}"),
                    _ => {}
                }
            }
        }
        Proto::Floor => {
            r.next_text(&mut w, wait).await?; // ready
        }
    }
    Ok((r, w))
}

/// A writer of the load on the lean client, past the greeting.
async fn open_load_writer(t: &Target) -> Result<(wire::Reader, wire::Writer)> {
    let (mut r, mut w) = wire::connect(&t.write_url).await?;
    if let Proto::Native { .. } = t.proto {
        r.next_text(&mut w, Duration::from_secs(10)).await?; // welcome
    }
    Ok((r, w))
}

/// Connections the bench opens at once. A relay refuses handshakes past
/// `server.max_handshakes_per_ip` in flight from one address (64 by
/// default) with 503, so a bench of 200 subscribers against a relay started
/// with the defaults (`--url`) failed; waves of 32 stay under it, and they
/// keep the listen backlog from overflowing.
const OPEN_AT_ONCE: usize = 32;

/// Open `n` connections to `target` with `open`, [`OPEN_AT_ONCE`] at a
/// time; the first failure ends it.
pub async fn open_in_waves<T, F, Fut>(n: usize, target: &Target, open: F) -> Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(Target) -> Fut,
    Fut: std::future::Future<Output = Result<T>> + Send + 'static,
{
    let mut done = Vec::with_capacity(n);
    while done.len() < n {
        let mut wave = JoinSet::new();
        for _ in 0..(n - done.len()).min(OPEN_AT_ONCE) {
            wave.spawn(open(target.clone()));
        }
        while let Some(r) = wave.join_next().await {
            done.push(r??);
        }
    }
    Ok(done)
}

/// Run one load against `target`; bounded by the caller's timeout.
pub async fn run(target: &Target, load: Load) -> Result<LoadResult> {
    // Subscribers first, all live before the first write.
    let subs = open_in_waves(load.subscribers, target, |t| async move {
        open_load_subscriber(&t).await
    })
    .await?;
    let mut writers = Vec::with_capacity(load.writers);
    for _ in 0..load.writers.max(1) {
        writers.push(open_load_writer(target).await?);
    }
    let cpu_before = super::procs::cpu_us(std::process::id());
    let shared = Arc::new(Shared {
        t0: Instant::now(),
        sent: (0..load.changes).map(|_| AtomicU64::new(0)).collect(),
    });
    let mut sub_tasks = JoinSet::new();
    for (r, w) in subs {
        sub_tasks.spawn(run_subscriber(
            r,
            w,
            target.proto.clone(),
            shared.clone(),
            load,
        ));
    }
    let per = load.changes.div_ceil(load.writers.max(1) as u64).max(1);
    let mut writer_tasks = JoinSet::new();
    for (w, (rd, wr)) in writers.into_iter().enumerate() {
        let start = (w as u64 * per).min(load.changes);
        let end = ((w as u64 + 1) * per).min(load.changes);
        writer_tasks.spawn(run_writer(
            rd,
            wr,
            target.proto.clone(),
            shared.clone(),
            start..end,
            load.window,
        ));
    }
    let mut acks = Vec::with_capacity(load.changes as usize);
    let (mut write_errors, mut last_ack) = (0, shared.t0);
    while let Some(r) = writer_tasks.join_next().await {
        let w = r??;
        acks.extend(w.acks);
        write_errors += w.errors;
        last_ack = last_ack.max(w.last_ack.unwrap_or(shared.t0));
    }
    let (mut tallies, mut e2e, mut resyncs, mut last_rx) = (Vec::new(), Vec::new(), 0, shared.t0);
    while let Some(r) = sub_tasks.join_next().await {
        let s = r??;
        tallies.push(s.tally);
        e2e.extend(s.latencies);
        resyncs += s.resyncs;
        last_rx = last_rx.max(s.last.unwrap_or(shared.t0));
    }
    // The bench process's own CPU over the run: its clients' cost per
    // delivery, reported so a client-bound run shows as one.
    let client_cpu_us = cpu_before
        .zip(super::procs::cpu_us(std::process::id()))
        .map(|(a, b)| b.saturating_sub(a));
    let deliveries: u64 = tallies.iter().map(|t| t.received).sum();
    let acked = acks.len() as u64;
    let end = last_rx.max(last_ack);
    Ok(LoadResult {
        subscribers: load.subscribers,
        writers: load.writers,
        changes: load.changes,
        window: load.window,
        deliveries,
        deliveries_per_s: per_second(deliveries, (last_rx - shared.t0).as_secs_f64()),
        acked,
        acked_writes_per_s: per_second(acked, (last_ack - shared.t0).as_secs_f64()),
        write_errors,
        e2e: Latency::of(&mut e2e),
        ack: Latency::of(&mut acks),
        check: Check::of(&tallies, load.changes, resyncs),
        elapsed_s: (end - shared.t0).as_secs_f64(),
        client_cpu_us_per_delivery: client_cpu_us.map(|c| c as f64 / deliveries.max(1) as f64),
    })
}

/// Write `count` changes to `space` fast (pushes of `per_push`, a window
/// of 16), for the catch-up measure. Returns when all are acked.
pub async fn bulk_write(url: &str, space: &str, count: u64, per_push: u64) -> Result<()> {
    let mut ws = connect(url).await?;
    next_text(&mut ws, Duration::from_secs(10)).await?; // welcome
    let pad = pad_for_change_bytes();
    let (mut sink, mut stream) = ws.split();
    let pushes = count.div_ceil(per_push.max(1));
    let permits = Arc::new(Semaphore::new(16));
    let send = {
        let permits = permits.clone();
        async move {
            for p in 0..pushes {
                permits.acquire().await?.forget();
                let lo = p * per_push;
                let hi = (lo + per_push).min(count);
                let changes: Vec<String> = (lo..hi)
                    .map(|n| {
                        format!(
                            r#"{{"collection":"bulk","id":"e{}","fields":{{"bn":{n},"pad":"{pad}"}}}}"#,
                            n % 1000
                        )
                    })
                    .collect();
                let frame = format!(
                    r#"{{"type":"push","rid":{p},"space":"{space}","changes":[{}]}}"#,
                    changes.join(",")
                );
                sink.send(Message::Text(frame.into())).await?;
            }
            anyhow::Ok(sink)
        }
    };
    let recv = async {
        for j in 0..pushes {
            let t = next_text_stream(&mut stream).await?;
            if t.contains(r#""type":"error""#) {
                bail!("bulk push {j} refused: {t}");
            }
            if t.contains(r#""type":"ack""#) {
                permits.add_permits(1);
            }
        }
        anyhow::Ok(())
    };
    let (s, r) = tokio::join!(send, recv);
    r?;
    let _ = s?.close().await;
    Ok(())
}

async fn next_text_stream(stream: &mut futures_util::stream::SplitStream<Ws>) -> Result<String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(60), stream.next()).await {
            Err(_) => bail!("no frame within 60 s"),
            Ok(None) | Ok(Some(Err(_))) => bail!("connection lost"),
            Ok(Some(Ok(Message::Text(t)))) => return Ok(t.to_string()),
            Ok(Some(Ok(_))) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_their_number_and_size() {
        let pad = pad_for_change_bytes();
        let f = push_frame("s", 12345, &pad);
        assert_eq!(change_number(&f), Some(12345));
        let v: serde_json::Value = serde_json::from_str(&f).unwrap();
        let change = serde_json::to_string(&v["changes"][0]).unwrap();
        assert!((240..=270).contains(&change.len()), "{}", change.len());
        assert_eq!(change_number(r#"{"type":"synced"}"#), None);
        let two = br#"[{"fields":{"bn":7}},{"fields":{"bn":18446744073709551615}},{"bn":x}]"#;
        assert_eq!(change_numbers(two).collect::<Vec<_>>(), vec![7, u64::MAX]);
    }
}
