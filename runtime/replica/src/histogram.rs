//! A Prometheus classic histogram with fixed buckets, written without a
//! lock on the request path (one atomic add for the bucket, one for the
//! sum) and rendered in the text exposition format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds in seconds: 50 µs (a Rust module's whole request) to 60 s
/// (the longest scoring timeout people set), about 2.5x apart.
pub const BUCKETS: [f64; 20] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
];

#[derive(Default)]
pub struct Histogram {
    /// Per bucket (not cumulative), the last one past 60 s.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        // `le` is inclusive: the first bound at or above s.
        let i = BUCKETS.partition_point(|b| *b < s);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add(d.as_nanos().min(u128::from(u64::MAX)) as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Counts per bucket (not cumulative), the last one past the last bound.
    pub fn counts(&self) -> Vec<u64> {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect()
    }

    /// Cumulative counts per bound, then +Inf.
    pub fn cumulative(&self) -> Vec<u64> {
        let mut total = 0;
        self.counts
            .iter()
            .map(|c| {
                total += c.load(Ordering::Relaxed);
                total
            })
            .collect()
    }

    pub fn sum_nanos(&self) -> u64 {
        self.sum_ns.load(Ordering::Relaxed)
    }

    /// Adds counts kept from before (per bucket, as `counts` gives them)
    /// and their sum: figures persisted across a restart.
    pub fn add(&self, counts: &[u64], sum_ns: u64) {
        for (c, n) in self.counts.iter().zip(counts) {
            c.fetch_add(*n, Ordering::Relaxed);
        }
        self.sum_ns.fetch_add(sum_ns, Ordering::Relaxed);
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9
    }
}

/// A Prometheus label value, escaped (backslash, quote, newline) for the
/// text format.
pub fn label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// One histogram family: HELP, TYPE, then each series' buckets, sum and
/// count. LABELS are the series' own (`endpoint="iris",version="v1"`).
pub fn render(out: &mut String, name: &str, help: &str, series: &[(String, &Histogram)]) {
    if series.is_empty() {
        return;
    }
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (labels, h) in series {
        let cumulative = h.cumulative();
        for (le, n) in BUCKETS.iter().map(|b| b.to_string()).chain(["+Inf".to_string()]).zip(&cumulative) {
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum_seconds());
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", cumulative.last().copied().unwrap_or(0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_inclusive_and_the_last_bucket_takes_the_rest() {
        let h = Histogram::default();
        for us in [50, 51, 100, 1_000, 120_000_000] {
            h.observe(Duration::from_micros(us));
        }
        let c = h.cumulative();
        assert_eq!((c[0], c[1], c[4]), (1, 3, 4), "{c:?}");
        assert_eq!(c[BUCKETS.len() - 1], 4, "120 s is past the last bound");
        assert_eq!((c[BUCKETS.len()], h.count()), (5, 5));
        assert!((h.sum_seconds() - 120.001201).abs() < 1e-9, "{}", h.sum_seconds());
        let mut out = String::new();
        render(&mut out, "x_seconds", "X.", &[("a=\"1\"".into(), &h)]);
        assert!(out.contains("# TYPE x_seconds histogram\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{a=\"1\",le=\"0.00005\"} 1\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{a=\"1\",le=\"+Inf\"} 5\n"), "{out}");
        assert!(out.contains("x_seconds_count{a=\"1\"} 5\n"), "{out}");
    }
}
