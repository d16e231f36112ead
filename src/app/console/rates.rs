//! The rate chart's data: a small ring of counter samples taken every
//! `INTERVAL`, turned into per-second rates. Pure; the sampler task in
//! `mod.rs` feeds it.

use serde::Serialize;
use std::collections::VecDeque;
use std::time::Duration;

pub const INTERVAL: Duration = Duration::from_secs(2);
/// Ten minutes of samples.
pub const SAMPLES: usize = 300;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    pub at_ms: u64,
    /// Changes committed (all sources), and messages fanned out.
    pub written: u64,
    pub delivered: u64,
}

#[derive(Default)]
pub struct Rates {
    samples: VecDeque<Sample>,
}

/// What the page draws: rates per second over each interval, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RateSeries {
    pub interval_ms: u64,
    /// End time of the newest interval.
    pub last_ms: u64,
    pub written: Vec<f64>,
    pub delivered: Vec<f64>,
}

impl Rates {
    pub fn push(&mut self, s: Sample) {
        if self.samples.len() > SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(s);
    }

    pub fn series(&self) -> RateSeries {
        let mut out = RateSeries {
            interval_ms: INTERVAL.as_millis() as u64,
            last_ms: self.samples.back().map_or(0, |s| s.at_ms),
            ..Default::default()
        };
        let mut prev: Option<&Sample> = None;
        for s in &self.samples {
            if let Some(p) = prev {
                let dt = s.at_ms.saturating_sub(p.at_ms).max(1) as f64 / 1000.0;
                let rate = |a: u64, b: u64| (a.saturating_sub(b) as f64 / dt * 10.0).round() / 10.0;
                out.written.push(rate(s.written, p.written));
                out.delivered.push(rate(s.delivered, p.delivered));
            }
            prev = Some(s);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_per_second_over_a_bounded_window() {
        let mut r = Rates::default();
        for i in 0..(SAMPLES as u64 + 10) {
            r.push(Sample {
                at_ms: i * 2000,
                written: i * 10,
                delivered: i * 40,
            });
        }
        let s = r.series();
        assert_eq!(s.written.len(), SAMPLES);
        assert!(s.written.iter().all(|&w| w == 5.0));
        assert!(s.delivered.iter().all(|&d| d == 20.0));
        assert_eq!(s.last_ms, (SAMPLES as u64 + 9) * 2000);
    }
}
