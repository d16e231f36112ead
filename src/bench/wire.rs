//! A lean WebSocket client (RFC 6455) for the load's hot path.
//!
//! Why not tokio-tungstenite here: at S=50 a broadcaster on this machine
//! delivers a few million frames a second, and the load has to read them
//! on the same two cores. Per frame, tungstenite allocates the payload,
//! validates its UTF-8, and the old load wrapped every read in its own
//! timer; that made the bench's clients, not the server, the bottleneck
//! (issue 16: the floor measured 250–360k/s). This client reads in bulk
//! (256 KiB per `read`), walks the frames in place and hands out borrowed
//! payloads; the caller timestamps once per read. Writes are masked as
//! the RFC requires of clients and batched by the caller.
//!
//! It does what the load needs and checks what a client must: the
//! handshake's `101` and `Sec-WebSocket-Accept`, unmasked server frames,
//! fragmented messages (reassembled), pings (answered), close.

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// Bytes asked of the kernel per read.
const READ_CHUNK: usize = 256 * 1024;
/// The largest message accepted (the relay's frames are far smaller).
const MAX_MESSAGE: usize = 64 << 20;
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// One complete message (or control frame) from the server.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Text(&'a [u8]),
    Binary(&'a [u8]),
    Ping(&'a [u8]),
    Pong,
    Close,
}

/// The read side: a buffer of bytes read and not yet walked.
pub struct Reader {
    rd: Option<OwnedReadHalf>,
    buf: Vec<u8>,
    head: usize,
    tail: usize,
    /// A fragmented message being reassembled: its opcode and bytes.
    partial: Option<(u8, Vec<u8>)>,
    /// The last reassembled message (borrowed by the `Frame` handed out).
    whole: Vec<u8>,
}

/// The write side: masked frames queued until [`Writer::flush`].
pub struct Writer {
    wr: OwnedWriteHalf,
    out: Vec<u8>,
    /// xorshift state for the masking keys.
    seed: u64,
}

/// `ws://host:port/path` → (host:port, /path).
fn split_url(url: &str) -> Result<(&str, &str)> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| anyhow!("{url}: only ws:// URLs"))?;
    Ok(match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    })
}

pub fn accept_key(key: &str) -> String {
    let d = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{GUID}").as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(d.as_ref())
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    (t ^ (u64::from(std::process::id()) << 32)) | 1
}

/// Connect and upgrade, within 10 s.
pub async fn connect(url: &str) -> Result<(Reader, Writer)> {
    tokio::time::timeout(Duration::from_secs(10), connect_inner(url))
        .await
        .map_err(|_| anyhow!("connecting to {url} timed out"))?
        .with_context(|| format!("connecting to {url}"))
}

async fn connect_inner(url: &str) -> Result<(Reader, Writer)> {
    let (host, path) = split_url(url)?;
    let mut stream = TcpStream::connect(host).await?;
    stream.set_nodelay(true)?;
    let mut s = seed();
    let key_bytes: Vec<u8> = (0..16).map(|_| next_rand(&mut s) as u8).collect();
    let key = base64::engine::general_purpose::STANDARD.encode(&key_bytes);
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await?;
    let mut buf = vec![0u8; READ_CHUNK];
    let mut have = 0;
    let end = loop {
        if let Some(i) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if have == buf.len() {
            bail!("handshake response too long");
        }
        let n = stream.read(&mut buf[have..]).await?;
        if n == 0 {
            bail!("closed during the handshake");
        }
        have += n;
    };
    let head = std::str::from_utf8(&buf[..end]).context("handshake response")?;
    let status = head.lines().next().unwrap_or("");
    if status.split_whitespace().nth(1) != Some("101") {
        bail!("upgrade refused: {status}");
    }
    let want = accept_key(&key);
    let accepted = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("sec-websocket-accept") && v.trim() == want
        })
    });
    if !accepted {
        bail!("bad or missing Sec-WebSocket-Accept");
    }
    let (rd, wr) = stream.into_split();
    let reader = Reader {
        rd: Some(rd),
        buf,
        head: end,
        tail: have,
        partial: None,
        whole: Vec::new(),
    };
    let writer = Writer {
        wr,
        out: Vec::with_capacity(64 * 1024),
        seed: s,
    };
    Ok((reader, writer))
}

fn next_rand(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// A frame header: (fin, opcode, masked, payload length, header length),
/// or None if `b` does not hold the whole header yet.
fn header(b: &[u8]) -> Option<(bool, u8, bool, usize, usize)> {
    if b.len() < 2 {
        return None;
    }
    let fin = b[0] & 0x80 != 0;
    let op = b[0] & 0x0f;
    let masked = b[1] & 0x80 != 0;
    let (len, at) = match b[1] & 0x7f {
        126 => {
            if b.len() < 4 {
                return None;
            }
            (u16::from_be_bytes([b[2], b[3]]) as usize, 4)
        }
        127 => {
            if b.len() < 10 {
                return None;
            }
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[2..10]);
            (
                usize::try_from(u64::from_be_bytes(a)).unwrap_or(usize::MAX),
                10,
            )
        }
        n => (n as usize, 2),
    };
    let at = if masked { at + 4 } else { at };
    (b.len() >= at).then_some((fin, op, masked, len, at))
}

impl Reader {
    /// Read once more from the socket (up to 256 KiB), within `wait`.
    /// Returns the bytes read; 0 means the server closed the connection.
    pub async fn fill(&mut self, wait: Duration) -> Result<usize> {
        if self.head == self.tail {
            self.head = 0;
            self.tail = 0;
        } else if self.buf.len() - self.tail < READ_CHUNK / 4 {
            // Move the unwalked bytes (an incomplete frame) to the front.
            self.buf.copy_within(self.head..self.tail, 0);
            self.tail -= self.head;
            self.head = 0;
        }
        if self.buf.len() - self.tail < READ_CHUNK / 4 {
            let grown = self.buf.len() * 2;
            self.buf.resize(grown, 0);
        }
        let Some(rd) = self.rd.as_mut() else {
            return Ok(0);
        };
        let n = tokio::time::timeout(wait, rd.read(&mut self.buf[self.tail..]))
            .await
            .map_err(|_| anyhow!("nothing received within {wait:?}"))??;
        if n == 0 {
            self.rd = None;
        }
        self.tail += n;
        Ok(n)
    }

    /// The next complete frame already read, without IO (None: call
    /// [`Reader::fill`]). Fragments are reassembled into one message.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>> {
        loop {
            let avail = &self.buf[self.head..self.tail];
            let Some((fin, op, masked, len, at)) = header(avail) else {
                return Ok(None);
            };
            if masked {
                bail!("the server sent a masked frame");
            }
            if len > MAX_MESSAGE {
                bail!("frame of {len} bytes");
            }
            if avail.len() < at + len {
                // Make room for the rest of a large frame.
                let need = at + len;
                if self.buf.len() - self.head < need {
                    self.buf.copy_within(self.head..self.tail, 0);
                    self.tail -= self.head;
                    self.head = 0;
                    if self.buf.len() < need + READ_CHUNK / 4 {
                        self.buf.resize(need + READ_CHUNK, 0);
                    }
                }
                return Ok(None);
            }
            let (from, to) = (self.head + at, self.head + at + len);
            self.head = to;
            match (op, fin) {
                (0x1 | 0x2, true) if self.partial.is_none() => {
                    let p = &self.buf[from..to];
                    return Ok(Some(if op == 0x1 {
                        Frame::Text(p)
                    } else {
                        Frame::Binary(p)
                    }));
                }
                (0x1 | 0x2, false) if self.partial.is_none() => {
                    self.partial = Some((op, self.buf[from..to].to_vec()));
                }
                (0x0, _) => {
                    let Some((first, mut bytes)) = self.partial.take() else {
                        bail!("a continuation frame without a start");
                    };
                    bytes.extend_from_slice(&self.buf[from..to]);
                    if bytes.len() > MAX_MESSAGE {
                        bail!("message of {} bytes", bytes.len());
                    }
                    if !fin {
                        self.partial = Some((first, bytes));
                        continue;
                    }
                    self.whole = bytes;
                    return Ok(Some(if first == 0x1 {
                        Frame::Text(&self.whole)
                    } else {
                        Frame::Binary(&self.whole)
                    }));
                }
                (0x1 | 0x2, _) => bail!("a new message inside a fragmented one"),
                (0x8, _) => return Ok(Some(Frame::Close)),
                (0x9, _) => return Ok(Some(Frame::Ping(&self.buf[from..to]))),
                (0xA, _) => return Ok(Some(Frame::Pong)),
                (op, _) => bail!("unknown opcode {op:#x}"),
            }
        }
    }

    /// The next text message, reading as needed, within `wait` per read;
    /// pings are answered through `w`. For the handshake phase, not the
    /// hot path (it copies).
    pub async fn next_text(&mut self, w: &mut Writer, wait: Duration) -> Result<String> {
        loop {
            let mut pong = None;
            match self.next_frame()? {
                Some(Frame::Text(t)) => return Ok(String::from_utf8_lossy(t).into_owned()),
                Some(Frame::Close) => bail!("connection closed"),
                Some(Frame::Ping(p)) => pong = Some(p.to_vec()),
                Some(_) => continue,
                None => {
                    if self.fill(wait).await? == 0 {
                        bail!("connection closed");
                    }
                }
            }
            if let Some(p) = pong {
                w.pong(&p);
                w.flush().await?;
            }
        }
    }
}

/// Append a masked client frame of `op` with `payload` to `out`.
fn mask_into(out: &mut Vec<u8>, op: u8, payload: &[u8], seed: &mut u64) {
    out.push(0x80 | op);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let key = (next_rand(seed) as u32).to_be_bytes();
    out.extend_from_slice(&key);
    let at = out.len();
    out.extend_from_slice(payload);
    for (i, b) in out[at..].iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

impl Writer {
    fn frame(&mut self, op: u8, payload: &[u8]) {
        mask_into(&mut self.out, op, payload, &mut self.seed);
    }

    /// Queue a text message.
    pub fn text(&mut self, payload: &str) {
        self.frame(0x1, payload.as_bytes());
    }

    /// Queue the answer to a ping.
    pub fn pong(&mut self, payload: &[u8]) {
        self.frame(0xA, payload);
    }

    /// Queue a close frame (code 1000).
    pub fn close(&mut self) {
        self.frame(0x8, &1000u16.to_be_bytes());
    }

    /// Write everything queued, in one `write` when the socket takes it.
    pub async fn flush(&mut self) -> Result<()> {
        if !self.out.is_empty() {
            self.wr.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Queue and send a text message.
    pub async fn send_text(&mut self, payload: &str) -> Result<()> {
        self.text(payload);
        self.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(bytes: &[u8]) -> Reader {
        let mut buf = bytes.to_vec();
        buf.resize(READ_CHUNK, 0);
        Reader {
            rd: None,
            buf,
            head: 0,
            tail: bytes.len(),
            partial: None,
            whole: Vec::new(),
        }
    }

    #[test]
    fn the_accept_key_of_rfc_6455() {
        // The example of RFC 6455, section 1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn walks_frames_in_place_and_reassembles_fragments() {
        let mut b = vec![0x81, 3];
        b.extend_from_slice(b"abc");
        b.extend_from_slice(&[0x01, 2, b'd', b'e']); // text, not fin
        b.extend_from_slice(&[0x89, 1, b'p']); // ping between fragments
        b.extend_from_slice(&[0x80, 1, b'f']); // continuation, fin
        b.extend_from_slice(&[0x81, 126, 0, 200]);
        b.extend_from_slice(&[b'x'; 200]);
        b.extend_from_slice(&[0x81, 5, b'h']); // incomplete
        let mut r = reader(&b);
        assert_eq!(r.next_frame().unwrap(), Some(Frame::Text(b"abc")));
        assert_eq!(r.next_frame().unwrap(), Some(Frame::Ping(b"p")));
        assert_eq!(r.next_frame().unwrap(), Some(Frame::Text(b"def")));
        assert_eq!(r.next_frame().unwrap(), Some(Frame::Text(&[b'x'; 200])));
        assert_eq!(r.next_frame().unwrap(), None);
    }

    #[test]
    fn refuses_what_a_server_must_not_send() {
        let mut r = reader(&[0x81, 0x81, 1, 2, 3, 4, 0]);
        assert!(r.next_frame().is_err(), "masked");
        let mut r = reader(&[0x80, 1, 0]);
        assert!(r.next_frame().is_err(), "continuation without a start");
    }

    #[test]
    fn client_frames_are_masked() {
        let mut seed = 7;
        for (len, head) in [(5usize, 2), (300, 4), (70_000, 10)] {
            let payload = vec![b'a'; len];
            let mut out = Vec::new();
            mask_into(&mut out, 0x1, &payload, &mut seed);
            let (fin, op, masked, n, at) = header(&out).unwrap();
            assert!(fin && op == 1 && masked && n == len);
            assert_eq!(at, head + 4);
            assert_eq!(out.len(), at + len);
            let key = &out[at - 4..at];
            let back: Vec<u8> = out[at..]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ key[i & 3])
                .collect();
            assert_eq!(back, payload);
        }
    }
}
