//! The floor: the least a WebSocket broadcast can cost on this machine.
//! Every text frame from a writer (`/pub`) is answered with a tiny ack and
//! forwarded verbatim to every subscriber (`/sub`): no parsing beyond the
//! WebSocket framing, no storage. It runs as its own child process (hidden
//! `outpost bench-floor`), so the relay and the floor meet the same load
//! on the same footing.
//!
//! It is written on plain TCP rather than axum + tungstenite (issue 16):
//! a floor must cost less than any relay could, and the framework's
//! per-frame work (a task wake and a copy per frame per subscriber, a
//! flush per ack) measured 0.9–1.4 µs of CPU per delivery, a third of what
//! a broadcaster needs on these cores. Here each frame is encoded once,
//! header included, into a shared append-only log; a subscriber, woken
//! when the log grows, writes everything past its position with one
//! `write`; the writer's frames of one read are acked with one `write`.

use std::io::Write;
use std::sync::{Arc, RwLock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Bytes a subscriber writes per `write` at most.
const WRITE_CHUNK: usize = 256 * 1024;
/// Bytes the writer's side reads per `read`.
const READ_CHUNK: usize = 256 * 1024;

/// Every frame published so far, encoded as a server sends it.
struct Log {
    frames: RwLock<Vec<Arc<[u8]>>>,
    /// The frame count, for subscribers to wait on.
    len: watch::Sender<usize>,
    capacity: usize,
}

/// Serve the floor on `listen` until killed; prints
/// `floor listening on ADDR` once bound. `capacity`: frames kept for the
/// run (the bench passes at least the run's change count); past it, new
/// frames are dropped and the check reports them missing.
pub async fn serve(listen: &str, capacity: usize) -> anyhow::Result<()> {
    let log = Arc::new(Log {
        frames: RwLock::new(Vec::with_capacity(capacity.min(1 << 20))),
        len: watch::Sender::new(0),
        capacity: capacity.max(16),
    });
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "floor listening on {addr}")?;
        out.flush()?;
    }
    loop {
        let (sock, _) = listener.accept().await?;
        let log = log.clone();
        tokio::spawn(async move {
            let _ = connection(sock, log).await;
        });
    }
}

async fn connection(mut sock: TcpStream, log: Arc<Log>) -> anyhow::Result<()> {
    sock.set_nodelay(true)?;
    let (path, rest) = handshake(&mut sock).await?;
    match path.as_str() {
        "/pub" => publisher(sock, log, rest).await,
        "/sub" => subscriber(sock, log).await,
        _ => Ok(()),
    }
}

/// Read the upgrade request, answer `101`; returns the path and any bytes
/// read past the request.
async fn handshake(sock: &mut TcpStream) -> anyhow::Result<(String, Vec<u8>)> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        anyhow::ensure!(buf.len() < 64 * 1024, "request too long");
        let n = sock.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "closed during the handshake");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..end])?;
    let path = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("/")
        .to_string();
    let key = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("sec-websocket-key")
                .then(|| v.trim().to_string())
        })
        .ok_or_else(|| anyhow::anyhow!("no Sec-WebSocket-Key"))?;
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        super::wire::accept_key(&key)
    );
    sock.write_all(resp.as_bytes()).await?;
    Ok((path, buf[end..].to_vec()))
}

/// An unmasked server frame of `op` around `payload`.
fn server_frame(op: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 10);
    f.push(0x80 | op);
    let len = payload.len();
    if len < 126 {
        f.push(len as u8);
    } else if len <= usize::from(u16::MAX) {
        f.push(126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(127);
        f.extend_from_slice(&(len as u64).to_be_bytes());
    }
    f.extend_from_slice(payload);
    f
}

/// A writer: each text message is published and acked; the messages of
/// one read are published under one lock and acked with one write.
async fn publisher(mut sock: TcpStream, log: Arc<Log>, first: Vec<u8>) -> anyhow::Result<()> {
    let ack = server_frame(0x1, br#"{"type":"ack"}"#);
    let mut buf = first;
    let mut start = 0;
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut partial: Option<(u8, Vec<u8>)> = None;
    loop {
        let mut frames = Vec::new();
        let mut acks = Vec::new();
        let mut closing = false;
        // Walk the complete client frames (masked, as the RFC requires).
        loop {
            let b = &buf[start..];
            if b.len() < 2 {
                break;
            }
            let (fin, op, masked) = (b[0] & 0x80 != 0, b[0] & 0x0f, b[1] & 0x80 != 0);
            anyhow::ensure!(masked, "an unmasked client frame");
            let (len, at) = match b[1] & 0x7f {
                126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                127 if b.len() >= 10 => {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(&b[2..10]);
                    (usize::try_from(u64::from_be_bytes(a))?, 10)
                }
                126 | 127 => break,
                n => (n as usize, 2),
            };
            if b.len() < at + 4 + len {
                break;
            }
            let key = [b[at], b[at + 1], b[at + 2], b[at + 3]];
            let payload: Vec<u8> = b[at + 4..at + 4 + len]
                .iter()
                .enumerate()
                .map(|(i, x)| x ^ key[i & 3])
                .collect();
            start += at + 4 + len;
            let message = match (op, fin, partial.take()) {
                (0x1, true, None) => Some(payload),
                (0x1, false, None) => {
                    partial = Some((op, payload));
                    None
                }
                (0x0, fin, Some((o, mut p))) => {
                    p.extend_from_slice(&payload);
                    if fin {
                        Some(p)
                    } else {
                        partial = Some((o, p));
                        None
                    }
                }
                (0x8, _, _) => {
                    closing = true;
                    break;
                }
                (0x9, _, p) => {
                    partial = p;
                    acks.extend_from_slice(&server_frame(0xA, &payload));
                    None
                }
                (_, _, p) => {
                    partial = p;
                    None
                }
            };
            if let Some(m) = message {
                frames.push(Arc::<[u8]>::from(server_frame(0x1, &m)));
                acks.extend_from_slice(&ack);
            }
        }
        if !frames.is_empty() {
            let n = {
                let mut all = log.frames.write().unwrap_or_else(|p| p.into_inner());
                let room = log.capacity.saturating_sub(all.len());
                all.extend(frames.into_iter().take(room));
                all.len()
            };
            log.len.send_replace(n);
        }
        if !acks.is_empty() {
            sock.write_all(&acks).await?;
        }
        if closing {
            return Ok(());
        }
        buf.drain(..start);
        start = 0;
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A subscriber: says it is registered, then writes every frame past its
/// position, as many as fit in one write, each time the log grows.
async fn subscriber(sock: TcpStream, log: Arc<Log>) -> anyhow::Result<()> {
    let (mut rd, mut wr) = sock.into_split();
    let mut len = log.len.subscribe();
    let mut at = *len.borrow_and_update();
    wr.write_all(&server_frame(0x1, br#"{"type":"synced"}"#))
        .await?;
    // Its reads only watch for the close (the load sends nothing else).
    let mut gone = tokio::spawn(async move {
        let mut b = [0u8; 512];
        while matches!(rd.read(&mut b).await, Ok(n) if n > 0) {}
    });
    let mut out = Vec::with_capacity(WRITE_CHUNK + 4096);
    loop {
        let end = *len.borrow_and_update();
        while at < end {
            out.clear();
            {
                let all = log.frames.read().unwrap_or_else(|p| p.into_inner());
                while at < end && out.len() < WRITE_CHUNK {
                    out.extend_from_slice(&all[at]);
                    at += 1;
                }
            }
            wr.write_all(&out).await?;
        }
        tokio::select! {
            r = len.changed() => if r.is_err() { return Ok(()) },
            _ = &mut gone => return Ok(()),
        }
    }
}
