//! Counts live connection actors (WebSocket clients, replication sessions)
//! so shutdown can wait for them to say goodbye.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

#[derive(Default, Clone)]
pub struct ConnTracker {
    live: Arc<(AtomicUsize, Notify)>,
}

/// Held by a connection actor; dropping it marks the actor finished.
pub struct ConnToken(Arc<(AtomicUsize, Notify)>);

impl ConnTracker {
    pub fn enter(&self) -> ConnToken {
        self.live.0.fetch_add(1, Ordering::AcqRel);
        ConnToken(self.live.clone())
    }

    pub fn live(&self) -> usize {
        self.live.0.load(Ordering::Acquire)
    }

    /// Resolves once no actor is live.
    pub async fn idle(&self) {
        loop {
            let notified = self.live.1.notified();
            if self.live() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for ConnToken {
    fn drop(&mut self) {
        if self.0 .0.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0 .1.notify_waiters();
        }
    }
}
