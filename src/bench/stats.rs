//! Latency summaries and the exactly-once/in-order check (pure).

use serde::Serialize;

/// Percentiles of a set of latencies, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Latency {
    pub n: usize,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl Latency {
    /// Summarize `samples` (sorted in place). Nearest-rank percentiles.
    pub fn of(samples: &mut [u64]) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_unstable();
        let rank = |p: f64| {
            let i = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            samples[i - 1]
        };
        Latency {
            n: samples.len(),
            p50_us: rank(0.50),
            p99_us: rank(0.99),
            max_us: samples[samples.len() - 1],
        }
    }
}

/// What one subscriber saw, for the exactly-once check. Changes are
/// numbered `0..total`; writer `w` sends `w*per .. min((w+1)*per, total)`
/// in that order, so within one writer numbers must arrive ascending by one.
#[derive(Debug, Clone)]
pub struct Tally {
    per: u64,
    counts: Vec<u8>,
    next: Vec<u64>,
    pub received: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub foreign: u64,
}

impl Tally {
    pub fn new(total: u64, writers: u64) -> Tally {
        let writers = writers.max(1);
        let per = total.div_ceil(writers).max(1);
        Tally {
            per,
            counts: vec![0; total as usize],
            next: (0..writers).map(|w| w * per).collect(),
            received: 0,
            duplicated: 0,
            reordered: 0,
            foreign: 0,
        }
    }

    /// Record change number `n`.
    pub fn see(&mut self, n: u64) {
        let Some(c) = self.counts.get_mut(n as usize) else {
            self.foreign += 1;
            return;
        };
        self.received += 1;
        if *c > 0 {
            self.duplicated += 1;
            *c = c.saturating_add(1);
            return;
        }
        *c = 1;
        let w = (n / self.per) as usize;
        if self.next[w] != n {
            self.reordered += 1;
        }
        // Resume expectations after the number seen, so one misplaced change
        // counts once rather than shifting everything after it.
        self.next[w] = n + 1;
    }

    /// Distinct changes received.
    pub fn distinct(&self) -> u64 {
        self.received - self.duplicated
    }

    pub fn missing(&self) -> u64 {
        self.counts.iter().filter(|&&c| c == 0).count() as u64
    }
}

/// The check over all subscribers of one run.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Check {
    pub ok: bool,
    pub subscribers: u64,
    pub expected_each: u64,
    pub missing: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub foreign: u64,
    pub resyncs: u64,
}

impl Check {
    pub fn of(tallies: &[Tally], expected_each: u64, resyncs: u64) -> Check {
        let mut c = Check {
            subscribers: tallies.len() as u64,
            expected_each,
            resyncs,
            ..Check::default()
        };
        for t in tallies {
            c.missing += t.missing();
            c.duplicated += t.duplicated;
            c.reordered += t.reordered;
            c.foreign += t.foreign;
        }
        c.ok = c.missing == 0 && c.duplicated == 0 && c.reordered == 0 && c.foreign == 0;
        c
    }
}

/// A rate, guarding against a zero interval.
pub fn per_second(count: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let mut v: Vec<u64> = (1..=100).rev().collect();
        let l = Latency::of(&mut v);
        assert_eq!((l.n, l.p50_us, l.p99_us, l.max_us), (100, 50, 99, 100));
        assert_eq!(Latency::of(&mut []), Latency::default());
        assert_eq!(Latency::of(&mut [7]).p99_us, 7);
    }

    #[test]
    fn tally_exactly_once_in_order() {
        let mut t = Tally::new(6, 2); // writer 0: 0,1,2; writer 1: 3,4,5
        for n in [0, 3, 1, 4, 2, 5] {
            t.see(n);
        }
        let c = Check::of(&[t], 6, 0);
        assert!(c.ok, "{c:?}");
    }

    #[test]
    fn tally_reports_missing_duplicates_reordering() {
        let mut t = Tally::new(5, 1);
        for n in [0, 2, 1, 2, 9] {
            t.see(n);
        }
        let c = Check::of(&[t], 5, 0);
        assert!(!c.ok);
        assert_eq!(c.missing, 2); // 3, 4
        assert_eq!(c.duplicated, 1);
        assert_eq!(c.reordered, 2); // 2 before 1, then 1 after 2
        assert_eq!(c.foreign, 1);
    }
}
