//! The relay's tasks and their one stop signal. The app makes one
//! [`Tasks`] and spawns every long-lived task of the relay into it (the
//! accept loop, the webhook sender, retention, the status sampler, mesh,
//! upstream and cluster link tasks, the watchdog). Nothing of the relay
//! is spawned detached: a task that starts tasks of its own keeps them in
//! a `JoinSet` (or behind [`AbortOnDrop`]), so dropping or aborting the
//! parent ends the children too.
//!
//! Shutdown is [`Tasks::join`]: flip the signal, wait until every task has
//! ended or the deadline passes, then abort what is left (logged by name)
//! and reap it. A leaf: it imports nothing of the crate.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::sync::{watch, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// The task set and the stop signal; clones share both.
#[derive(Clone)]
pub struct Tasks {
    inner: Arc<Inner>,
}

struct Inner {
    set: Mutex<JoinSet<()>>,
    /// Live tasks by name: which ones a late shutdown waited for.
    live: Mutex<BTreeMap<&'static str, usize>>,
    ended: Notify,
    stop: watch::Sender<bool>,
}

impl Default for Tasks {
    fn default() -> Self {
        Tasks::new()
    }
}

impl Tasks {
    pub fn new() -> Tasks {
        Tasks {
            inner: Arc::new(Inner {
                set: Mutex::new(JoinSet::new()),
                live: Mutex::new(BTreeMap::new()),
                ended: Notify::new(),
                stop: watch::Sender::new(false),
            }),
        }
    }

    /// The stop signal: flips to true once shutdown starts. Tasks that have
    /// something to say before they go (close frames, a goodbye, a saved
    /// cursor) watch it themselves.
    pub fn signal(&self) -> watch::Receiver<bool> {
        self.inner.stop.subscribe()
    }

    /// Whether shutdown has started.
    pub fn stopping(&self) -> bool {
        *self.inner.stop.borrow()
    }

    /// Run `task` in the set. It must end on the stop signal by itself.
    pub fn spawn<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let guard = Live::enter(self.inner.clone(), name);
        let mut set = lock(&self.inner.set);
        // Reap what has ended, so a long-running relay keeps no results.
        while let Some(r) = set.try_join_next() {
            report(r);
        }
        set.spawn(async move {
            let _guard = guard;
            task.await
        });
    }

    /// Run `task` in the set until the stop signal, then drop it: for loops
    /// with nothing to finish (samplers, timers, pings).
    pub fn spawn_until_stop<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut stop = self.signal();
        self.spawn(name, async move {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => {}
                _ = task => {}
            }
        });
    }

    /// Live tasks by name (for tests and the shutdown log).
    pub fn live(&self) -> Vec<(&'static str, usize)> {
        lock(&self.inner.live)
            .iter()
            .map(|(n, c)| (*n, *c))
            .collect()
    }

    /// Flip the stop signal without waiting.
    pub fn stop(&self) {
        self.inner.stop.send_replace(true);
    }

    /// Flip the stop signal, wait for every task until `deadline`, then
    /// abort what is left and reap it. Returns the names (and counts) of
    /// the tasks that had to be aborted; empty when all ended by
    /// themselves.
    pub async fn join(&self, deadline: Instant) -> Vec<(&'static str, usize)> {
        self.stop();
        let mut aborted = Vec::new();
        loop {
            // Taken out of the lock so it can be awaited; a task spawned
            // meanwhile lands in the fresh set and is joined next round.
            let mut set = std::mem::take(&mut *lock(&self.inner.set));
            if set.is_empty() {
                return aborted;
            }
            loop {
                match tokio::time::timeout_at(deadline, set.join_next()).await {
                    Ok(Some(r)) => report(r),
                    Ok(None) => break,
                    Err(_) => {
                        let left = self.live();
                        tracing::warn!(
                            ?left,
                            "tasks still running after the shutdown grace period; aborting them"
                        );
                        if aborted.is_empty() {
                            aborted = left;
                        }
                        set.abort_all();
                        // Aborted tasks end at their next poll.
                        while let Some(r) = set.join_next().await {
                            if let Err(e) = r {
                                if e.is_panic() {
                                    tracing::error!(error = %e, "a relay task panicked");
                                }
                            }
                        }
                        break;
                    }
                }
            }
        }
    }

    /// Resolves once no task of the set is live.
    pub async fn idle(&self) {
        loop {
            let ended = self.inner.ended.notified();
            if lock(&self.inner.live).is_empty() {
                return;
            }
            ended.await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn report(r: Result<(), tokio::task::JoinError>) {
    if let Err(e) = r {
        if e.is_panic() {
            tracing::error!(error = %e, "a relay task panicked");
        }
    }
}

/// Counts a task as live under its name until dropped (also when the task
/// panics or is aborted).
struct Live {
    inner: Arc<Inner>,
    name: &'static str,
}

impl Live {
    fn enter(inner: Arc<Inner>, name: &'static str) -> Live {
        *lock(&inner.live).entry(name).or_insert(0) += 1;
        Live { inner, name }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let mut live = lock(&self.inner.live);
        if let Some(n) = live.get_mut(self.name) {
            *n -= 1;
            if *n == 0 {
                live.remove(self.name);
            }
        }
        drop(live);
        self.inner.ended.notify_waiters();
    }
}

/// A spawned task that ends when its owner drops this handle: for a helper
/// task that belongs to one object (a hyper client connection's driver, a
/// dial loop of one discovered peer). Awaiting it awaits the task.
pub struct AbortOnDrop<T>(JoinHandle<T>);

impl<T: Send + 'static> AbortOnDrop<T> {
    pub fn spawn<F>(task: F) -> AbortOnDrop<T>
    where
        F: Future<Output = T> + Send + 'static,
    {
        AbortOnDrop(tokio::spawn(task))
    }

    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn join_waits_for_tasks_that_follow_the_signal_and_aborts_the_rest() {
        let tasks = Tasks::new();
        let mut s = tasks.signal();
        let said_goodbye = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let said = said_goodbye.clone();
        tasks.spawn("polite", async move {
            let _ = s.wait_for(|s| *s).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            said.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        tasks.spawn_until_stop("sampler", std::future::pending());
        tasks.spawn("stuck", std::future::pending());
        assert_eq!(
            tasks.live(),
            vec![("polite", 1), ("sampler", 1), ("stuck", 1)]
        );
        let aborted = tasks
            .join(Instant::now() + Duration::from_millis(300))
            .await;
        assert!(said_goodbye.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(aborted, vec![("stuck", 1)]);
        assert!(tasks.live().is_empty());
    }

    #[tokio::test]
    async fn ended_tasks_are_reaped_and_not_counted() {
        let tasks = Tasks::new();
        for _ in 0..3 {
            tasks.spawn("quick", async {});
        }
        tasks.idle().await;
        assert!(tasks.live().is_empty());
        assert!(tasks
            .join(Instant::now() + Duration::from_millis(100))
            .await
            .is_empty());
    }

    #[tokio::test]
    async fn a_dropped_abort_on_drop_ends_its_task() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let t = AbortOnDrop::spawn(async move {
            let _tx = tx;
            std::future::pending::<()>().await
        });
        drop(t);
        // The sender inside the task goes with the task.
        assert!(tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .unwrap()
            .is_err());
    }
}
