//! Blocking store reads, kept off the async workers.
//!
//! A redb read can wait on the disk; on a tokio worker that wait would
//! stall every connection and request scheduled on it. Every read a
//! handler or a connection makes goes through [`off_worker`] (or through
//! the connection driver, which does the same), so it runs on tokio's
//! blocking pool instead.

/// Run `f` on tokio's blocking pool and wait for it without holding a
/// worker. Outside a runtime (the dialects' table tests drive futures with
/// a plain executor) `f` runs on the calling thread, which is then not a
/// worker of anything. A panic in `f` is resumed here.
pub async fn off_worker<T, F>(f: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => match e.try_into_panic() {
            Ok(p) => std::panic::resume_unwind(p),
            // Only a runtime shutting down cancels a blocking task: the
            // caller is being torn down with it.
            Err(e) => panic!("a blocking read was cancelled: {e}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// On a runtime with one worker, a read that waits for something only
    /// another task on that worker can do finishes: the read is not on the
    /// worker. (Run inline, it would block the worker and time out.)
    #[tokio::test(flavor = "current_thread")]
    async fn a_slow_read_does_not_hold_the_worker() {
        let (tx, rx) = mpsc::channel::<()>();
        let other = tokio::spawn(async move {
            tokio::task::yield_now().await;
            tx.send(()).unwrap();
        });
        let got = off_worker(move || rx.recv_timeout(Duration::from_secs(5))).await;
        assert!(got.is_ok(), "the other task could not run during the read");
        other.await.unwrap();
    }

    #[test]
    fn outside_a_runtime_it_runs_inline() {
        let here = std::thread::current().id();
        let there =
            futures_util::FutureExt::now_or_never(off_worker(move || std::thread::current().id()));
        assert_eq!(there, Some(here));
    }
}
