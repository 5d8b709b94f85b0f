//! What `/metrics` shows of the store: how long its commits take, how many
//! operations each commit takes, and (a SQLite file) how long each fsync of the
//! WAL takes. A decision is answered only once its commit is durable, so these
//! are most of a decision's latency under load.

use crate::histogram::Histogram;

/// Bounds of the duration histograms, in µs.
const DURATION_BOUNDS_US: [u64; 12] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
];

/// Bounds of the operations-per-commit histogram.
const OPERATION_BOUNDS: [u64; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];

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
    /// A commit of `ops` operations, begun at `started`.
    pub(crate) fn committed(&self, started: std::time::Instant, ops: usize) {
        self.commit_us.observe_since(started);
        self.operations
            .observe(u64::try_from(ops).unwrap_or(u64::MAX));
    }

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
