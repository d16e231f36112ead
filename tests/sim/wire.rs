//! The simulated network: one direction of a link carries whole frames
//! from a session's sink to its peer's source, each after a seeded delay.
//!
//! A faulty wire also duplicates a frame now and then, or swaps it with the
//! next one. The real transports (a QUIC stream, a WebSocket over TCP) never
//! do either, so these model a transport bug, and the contract checked is:
//! the session notices (an ack out of order, a change before its
//! predecessors, a hello mid-session) and ends, or the fault is harmless
//! (a change applied twice is a duplicate), and no state is ever corrupted.
//! Replays across reconnects (a new session resending what the last one
//! sent but never saw acknowledged) and one change arriving by two paths in
//! either order happen without faults: every cut link resends on its next
//! session, and the topology has cycles.

use super::Rng;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Fault switches and counters shared by all wires of the simulation.
#[derive(Default)]
pub struct Faults {
    /// Off while the network heals at the end (so it can converge).
    pub on: AtomicBool,
    pub duplicated: AtomicU64,
    pub swapped: AtomicU64,
}

/// Frames from `rx` to `tx`, each after a delay drawn from `seed`; on a
/// `faulty` wire, with duplicates and swaps while `faults.on`.
pub fn wire(
    mut rx: mpsc::Receiver<Vec<u8>>,
    tx: mpsc::Sender<Vec<u8>>,
    seed: u64,
    faulty: bool,
    faults: Arc<Faults>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut rng = Rng(seed);
        // A frame held back to go after the next one.
        let mut held: Option<Vec<u8>> = None;
        loop {
            let f = match held.take() {
                None => match rx.recv().await {
                    Some(f) => f,
                    None => return,
                },
                Some(h) => {
                    match tokio::time::timeout(Duration::from_millis(5), rx.recv()).await {
                        Ok(Some(f)) => {
                            held = Some(h);
                            f
                        }
                        // Nothing followed: the held frame goes alone.
                        Ok(None) | Err(_) => {
                            if tx.send(h).await.is_err() {
                                return;
                            }
                            continue;
                        }
                    }
                }
            };
            let ms = match rng.below(10) {
                0..=5 => 0,
                6..=8 => rng.below(3),
                _ => rng.below(20),
            };
            // Drawn for every frame, so the delays do not depend on the faults.
            let fault = rng.below(1000);
            if ms > 0 {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            } else {
                tokio::task::yield_now().await;
            }
            let on = faulty && faults.on.load(Relaxed);
            if on && held.is_none() && fault < 15 {
                faults.swapped.fetch_add(1, Relaxed);
                held = Some(f);
                continue;
            }
            let twice = on && (15..30).contains(&fault);
            if twice {
                faults.duplicated.fetch_add(1, Relaxed);
                if tx.send(f.clone()).await.is_err() {
                    return;
                }
            }
            if tx.send(f).await.is_err() {
                return;
            }
            if let Some(h) = held.take() {
                if tx.send(h).await.is_err() {
                    return;
                }
            }
        }
    })
}
