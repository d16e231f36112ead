//! The wall clock the relay stamps with: the one seam between time and
//! state. The writer reads it once per commit group (the stamps of local
//! writes, the receive time of log entries that retention compares, the
//! limit on clients' future edit times) and retention reads it for its
//! cut-off; nothing else that decides state reads the time. A relay runs
//! on the system clock; the simulator gives each relay a clock of its own
//! (skewed by minutes, jumping backwards at a restart) to check that
//! stamps and merges hold up when relays' clocks disagree.
//!
//! A plain function rather than a trait with a mock: the only thing a
//! clock does is answer "milliseconds since 1970 now", and a closure
//! shared by an `Arc` is cheap to clone into the writer thread.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since 1970, as this relay's clock reads them.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> u64 + Send + Sync>);

impl Clock {
    /// The system clock (what a relay runs on).
    pub fn system() -> Clock {
        Clock(Arc::new(system_ms))
    }

    /// A clock that reads `f` (a test's or the simulator's).
    pub fn new(f: impl Fn() -> u64 + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(f))
    }

    pub fn now_ms(&self) -> u64 {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Clock({} ms)", self.now_ms())
    }
}

/// The system clock in ms since 1970 (0 before 1970).
pub fn system_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

    #[test]
    fn a_clock_reads_its_function_each_time() {
        let t = Arc::new(AtomicU64::new(5));
        let c = Clock::new({
            let t = t.clone();
            move || t.load(Relaxed)
        });
        assert_eq!(c.now_ms(), 5);
        t.store(3, Relaxed);
        assert_eq!(c.clone().now_ms(), 3, "a clone reads the same source");
        let sys = Clock::system().now_ms();
        assert!(
            sys > 1_700_000_000_000,
            "the system clock is past 2023: {sys}"
        );
    }
}
