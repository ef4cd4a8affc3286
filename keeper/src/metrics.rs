//! Pieces of the Prometheus text exposition shared by the keeper's daemons: a histogram kept in memory with
//! atomics, and label escaping. Each daemon renders its own metrics with them (`serve`:
//! [`crate::metering::api`]; `run`: [`crate::settlement::metrics`]).

use std::{
    fmt::Write,
    sync::atomic::{AtomicU64, Ordering},
};

/// Upper bounds (seconds) for request latencies: from half a millisecond (an entitlement answer) to ten seconds.
pub const LATENCY_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A Prometheus histogram kept in memory: bucket counts, a sum and a count, each an atomic (no lock on the hot
/// path).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative; summed when rendered).
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// An empty histogram with these bucket upper bounds (ascending, seconds).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(), count: AtomicU64::new(0), sum_micros: AtomicU64::new(0) }
    }

    /// Records one observation.
    pub fn observe(&self, seconds: f64) {
        if let Some(i) = self.bounds.iter().position(|bound| seconds <= *bound) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    /// Appends the `_bucket`, `_sum` and `_count` lines of `name`, each with `labels` (`key="value",...`, already
    /// escaped, or empty).
    pub fn render(&self, name: &str, labels: &str, out: &mut String) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bucket, bound) in self.buckets.iter().zip(self.bounds) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// A label value escaped for the text exposition (backslash, double quote and newline).
pub fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_counts_cumulatively_with_labels() {
        let histogram = Histogram::new(&[0.05, 0.5, 15.0]);
        for seconds in [0.01, 0.3, 0.3, 20.0] {
            histogram.observe(seconds);
        }
        let mut text = String::new();
        histogram.render("h", "route=\"/x\"", &mut text);
        assert_eq!(
            text,
            "h_bucket{route=\"/x\",le=\"0.05\"} 1\nh_bucket{route=\"/x\",le=\"0.5\"} 3\nh_bucket{route=\"/x\",le=\"15\"} 3\n\
             h_bucket{route=\"/x\",le=\"+Inf\"} 4\nh_sum{route=\"/x\"} 20.61\nh_count{route=\"/x\"} 4\n"
        );
        let mut bare = String::new();
        Histogram::new(&[1.0]).render("g", "", &mut bare);
        assert_eq!(bare, "g_bucket{le=\"1\"} 0\ng_bucket{le=\"+Inf\"} 0\ng_sum 0\ng_count 0\n");
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
