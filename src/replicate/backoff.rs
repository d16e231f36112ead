//! Reconnect delays: exponential from `min` to `max`, with jitter so relays
//! that lost the same peer do not all redial at the same instant. Pure: the
//! caller supplies the randomness.

use std::time::Duration;

pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// After a session that worked for a while: start small again.
    pub fn reset(&mut self) {
        self.next = self.min;
    }

    /// The delay before the next attempt: the current step, ±25% by `rand`.
    pub fn next(&mut self, rand: u64) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let quarter = base.as_millis() as u64 / 4;
        let spread = if quarter == 0 {
            0
        } else {
            rand % (2 * quarter + 1)
        };
        Duration::from_millis(base.as_millis() as u64 - quarter + spread)
    }
}

/// A random u64 for jitter (not for secrets).
pub fn jitter_seed() -> u64 {
    let mut b = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_with_bounded_jitter() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let steps: Vec<u64> = (0..7).map(|_| b.next(0).as_millis() as u64).collect();
        // rand 0 gives the low end: 75% of each step.
        assert_eq!(steps, vec![750, 1500, 3000, 6000, 12000, 22500, 22500]);
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for r in [0, 1, 499, 500, 501, u64::MAX] {
            let d = b.next(r);
            b.reset();
            assert!((750..=1250).contains(&(d.as_millis() as u64)), "{d:?}");
        }
        b.next(0);
        b.reset();
        assert_eq!(b.next(0).as_millis(), 750);
    }
}
