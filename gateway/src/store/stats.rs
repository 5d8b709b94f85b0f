//! What `/metrics` shows of the store: how long its commits take, how many
//! operations each commit takes, and (a SQLite file) how long each fsync of the
//! WAL takes. A decision is answered only once its commit is durable, so these
//! are most of a decision's latency under load.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bounds of the duration histograms, in µs.
const DURATION_BOUNDS_US: [u64; 12] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
];

/// Bounds of the operations-per-commit histogram.
const OPERATION_BOUNDS: [u64; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];

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
    fn new(bounds: &'static [u64]) -> Self {
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
    fn render(&self, out: &mut String, name: &str, help: &str, unit: f64) {
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

/// A store's commit and fsync figures.
#[derive(Debug)]
pub(crate) struct StoreStats {
    /// How long each commit took, in µs: sending what the group held back and
    /// the commit itself (on PostgreSQL, its round trip, the server's flush of its
    /// WAL included; on SQLite, without the fsync).
    pub(crate) commit_us: Histogram,
    /// How many operations each commit took.
    pub(crate) operations: Histogram,
    /// How long each fsync of a SQLite file's WAL took, in µs (each covers every
    /// commit before it).
    pub(crate) fsync_us: Histogram,
}

impl Default for StoreStats {
    fn default() -> Self {
        Self {
            commit_us: Histogram::new(&DURATION_BOUNDS_US),
            operations: Histogram::new(&OPERATION_BOUNDS),
            fsync_us: Histogram::new(&DURATION_BOUNDS_US),
        }
    }
}

impl StoreStats {
    /// Writes the figures in the Prometheus text format; the fsync histogram only
    /// for a store that fsyncs.
    pub(crate) fn render(&self, out: &mut String, fsyncs: bool) {
        self.commit_us.render(
            out,
            "paybond_store_commit_duration_seconds",
            "Time to commit a group of operations (sending its held-back writes included; \
             on SQLite the fsync is not).",
            1e6,
        );
        self.operations.render(
            out,
            "paybond_store_commit_operations",
            "Operations each commit took (group commit).",
            1.0,
        );
        if fsyncs {
            self.fsync_us.render(
                out,
                "paybond_store_fsync_duration_seconds",
                "Time of one fsync of the SQLite WAL, which makes every commit before it durable.",
                1e6,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_renders_cumulative_buckets_its_sum_and_its_count() {
        let stats = StoreStats::default();
        for ops in [1, 3, 3, 300] {
            stats.operations.observe(ops);
        }
        stats.commit_us.observe(120);
        let mut out = String::new();
        stats.render(&mut out, false);
        for line in [
            "# TYPE paybond_store_commit_operations histogram",
            "paybond_store_commit_operations_bucket{le=\"1\"} 1",
            "paybond_store_commit_operations_bucket{le=\"2\"} 1",
            "paybond_store_commit_operations_bucket{le=\"4\"} 3",
            "paybond_store_commit_operations_bucket{le=\"256\"} 3",
            "paybond_store_commit_operations_bucket{le=\"+Inf\"} 4",
            "paybond_store_commit_operations_sum 307",
            "paybond_store_commit_operations_count 4",
            "paybond_store_commit_duration_seconds_bucket{le=\"0.0001\"} 0",
            "paybond_store_commit_duration_seconds_bucket{le=\"0.00025\"} 1",
            "paybond_store_commit_duration_seconds_sum 0.00012",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} in\n{out}");
        }
        assert!(!out.contains("paybond_store_fsync"), "{out}");
        let mut out = String::new();
        stats.render(&mut out, true);
        assert!(
            out.contains("paybond_store_fsync_duration_seconds_count 0"),
            "{out}"
        );
    }
}
