//! Issue 12: running out of file descriptors. The relay runs in this
//! process; the test lowers the process's soft limit and takes every free
//! descriptor but one, which the next client's socket uses: the relay's
//! `accept` then fails with EMFILE. It must answer that client with a 503
//! (through its spare descriptor), log and count it, not hang or spin, and
//! serve normally once descriptors are free again. Alone in its own test
//! binary, since it starves the whole process.

mod common;

use common::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

/// Sockets among them (the relay's listeners and its connections).
fn open_sockets() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().starts_with("socket:"))
        .count()
}

fn set_soft_nofile(n: u64) {
    // SAFETY: get/setrlimit on a local struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = n as libc::rlim_t;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
}

async fn request(addr: std::net::SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("an answer, not a hang")
        .ok();
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_relay_answers_503_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let addr = relay.addr;
    let listening = open_sockets();
    assert!(request(addr).await.starts_with("HTTP/1.1 200"));
    // The relay closes its side of that connection a moment after the
    // client has read the answer; a descriptor freed after the hog below
    // let the next accept succeed (a CI run got 200 that way).
    let t = std::time::Instant::now();
    while open_sockets() > listening {
        assert!(t.elapsed() < WAIT, "the relay keeps the connection open");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // A tight limit, then fill it: all descriptors but one are taken.
    set_soft_nofile(open_fds() + 64);
    let mut hog = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => hog.push(f),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}");
                break;
            }
        }
    }
    hog.pop();
    // The client's socket takes the last one; the relay's accept fails.
    let answer = request(addr).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert!(
        answer.ends_with("the relay is out of file descriptors\n"),
        "{answer:?}"
    );

    // Descriptors come back: served as usual, and it was counted.
    drop(hog);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(request(addr).await.starts_with("HTTP/1.1 200"));
    let m = http_get(addr, "/metrics").await.1;
    let refused = m
        .lines()
        .find_map(|l| {
            l.strip_prefix("outpost_connections_refused_total{reason=\"no_descriptors\"} ")
        })
        .unwrap();
    assert!(refused.parse::<u64>().unwrap() >= 1, "{m}");
    let mut c = Client::native(addr).await;
    assert_eq!(
        c.put("s", "k", serde_json::json!({"a": 1})).await["type"],
        "ack"
    );
    relay.shutdown().await.unwrap();
}
