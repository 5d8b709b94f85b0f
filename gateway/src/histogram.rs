//! A Prometheus histogram of whole numbers, lock-free: what `/metrics` renders
//! for verify latency and the store's commits.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// A Prometheus histogram of whole numbers, lock-free.
#[derive(Debug)]
pub(crate) struct Histogram {
    bounds: &'static [u64],
    /// Observations at or below each bound (not cumulative).
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum: AtomicU64,
}

impl Histogram {
    pub(crate) fn new(bounds: &'static [u64]) -> Self {
        Self {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    /// Counts one observation of `value`.
    pub(crate) fn observe(&self, value: u64) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
        if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one duration, in µs.
    pub(crate) fn observe_since(&self, started: std::time::Instant) {
        self.observe(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
    }

    /// How many observations so far.
    #[cfg(test)]
    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The sum of the observations so far.
    #[cfg(test)]
    pub(crate) fn sum(&self) -> u64 {
        self.sum.load(Ordering::Relaxed)
    }

    /// Writes the histogram in the Prometheus text format, its values divided by
    /// `unit` (1e6 turns µs into seconds).
    pub(crate) fn render(&self, out: &mut String, name: &str, help: &str, unit: f64) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, n) in self.bounds.iter().zip(self.buckets.iter()) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{}\"}} {cumulative}",
                *bound as f64 / unit
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum.load(Ordering::Relaxed) as f64 / unit
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}
