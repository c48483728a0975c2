//! A version's request-path counts (what the verdict compares) kept across
//! restarts: written to the store every few seconds and at shutdown, read
//! back when the same version (the same module, models and config) is
//! built again. A version whose spec changed starts from zero.

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wasmscore_engine::{Moments, Reported};
use wasmscore_router::VersionStats;

use crate::deploy::{lock, Control, VersionSpec};

/// What is persisted of one version.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Counters {
    /// Request duration, per bucket (not cumulative), and the sum.
    pub duration: Vec<u64>,
    pub duration_sum_ns: u64,
    /// Answers by status class, 1xx to 5xx.
    pub responses: [u64; 5],
    /// Answers to the requests the weighted split routed (none in what an
    /// older release saved).
    #[serde(default)]
    pub split: u64,
    /// Time taken by the 2xx answers and by the others, and when the last
    /// answer went out (Triton's statistics; none in what an older release
    /// saved).
    #[serde(default)]
    pub ok_ns: u64,
    #[serde(default)]
    pub failed_ns: u64,
    #[serde(default)]
    pub last_ms: u64,
    /// The module's reported numbers.
    pub reported: Vec<(String, Moments)>,
}

impl Counters {
    pub(crate) fn of(stats: &VersionStats, reported: &Reported) -> Counters {
        Counters {
            duration: stats.duration.counts(),
            duration_sum_ns: stats.duration.sum_nanos(),
            responses: std::array::from_fn(|i| stats.responses[i].load(Ordering::Relaxed)),
            split: stats.split.load(Ordering::Relaxed),
            ok_ns: stats.ok_ns.load(Ordering::Relaxed),
            failed_ns: stats.failed_ns.load(Ordering::Relaxed),
            last_ms: stats.last_ms.load(Ordering::Relaxed),
            reported: reported.snapshot(),
        }
    }

    /// Adds these counts to a freshly built version's.
    pub(crate) fn add_to(&self, stats: &VersionStats, reported: &Reported) {
        stats.duration.add(&self.duration, self.duration_sum_ns);
        for (c, n) in stats.responses.iter().zip(self.responses) {
            c.fetch_add(n, Ordering::Relaxed);
        }
        stats.split.fetch_add(self.split, Ordering::Relaxed);
        stats.ok_ns.fetch_add(self.ok_ns, Ordering::Relaxed);
        stats.failed_ns.fetch_add(self.failed_ns, Ordering::Relaxed);
        stats.last_ms.fetch_max(self.last_ms, Ordering::Relaxed);
        for (name, m) in &self.reported {
            reported.add(name, *m);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.responses.iter().all(|n| *n == 0) && self.reported.is_empty()
    }
}

impl Control {
    /// Saves every serving version's counters (the monitor does it every
    /// `SAVE_EVERY`, shutdown once more).
    pub(crate) fn save_counters(&self) {
        let mut inner = lock(&self.inner);
        let mut rows = Vec::new();
        for (name, ep) in &inner.endpoints {
            for v in &ep.versions {
                let Some(b) = &v.live else { continue };
                let c = Counters::of(&b.version.stats, &b.pool.prepared().context().reported);
                if !c.is_empty() {
                    let json = serde_json::to_string(&c).expect("counters serialize");
                    rows.push((name.clone(), v.row.rollout.name.clone(), spec_sha(&b.spec), json));
                }
            }
        }
        if rows.is_empty() {
            return;
        }
        if let Err(e) = inner.store.save_counters(&rows) {
            tracing::warn!(error = %e, "saving version counters failed; they are kept in memory and saved again later");
        }
    }
}

/// How often the monitor saves the counters.
pub(crate) const SAVE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// What identifies "the same version" for its counts: its spec's hash.
pub(crate) fn spec_sha(spec: &VersionSpec) -> String {
    hex::encode(Sha256::digest(serde_json::to_vec(spec).expect("a spec serializes")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_round_trip_and_add_up() {
        let (stats, reported) = (VersionStats::default(), Reported::default());
        stats.duration.observe(std::time::Duration::from_millis(2));
        stats.responses[1].store(7, Ordering::Relaxed);
        stats.split.store(5, Ordering::Relaxed);
        stats.ok_ns.store(900, Ordering::Relaxed);
        stats.last_ms.store(1_800_000_000_000, Ordering::Relaxed);
        reported.record("clicks", 2.0);
        let c = Counters::of(&stats, &reported);
        let back: Counters = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        let (fresh, fresh_reported) = (VersionStats::default(), Reported::default());
        back.add_to(&fresh, &fresh_reported);
        back.add_to(&fresh, &fresh_reported);
        let twice = Counters::of(&fresh, &fresh_reported);
        assert_eq!(twice.responses[1], 14);
        assert_eq!(twice.split, 10);
        assert_eq!((twice.ok_ns, twice.last_ms), (1800, 1_800_000_000_000));
        assert_eq!(twice.duration.iter().sum::<u64>(), 2);
        assert_eq!(twice.duration_sum_ns, 2 * c.duration_sum_ns);
        assert_eq!(twice.reported[0].1.count, 2);
    }

    #[test]
    fn a_huge_reported_value_is_refused_and_the_counts_still_read_back() {
        // Before, 1e200 made the sum of squares infinite, which JSON writes
        // as null and reads back as no counts at all.
        let (stats, reported) = (VersionStats::default(), Reported::default());
        reported.record("x", 1.0);
        reported.record("x", 1e200);
        reported.record("x", 3.0);
        assert_eq!(reported.dropped.load(Ordering::Relaxed), 1);
        let c = Counters::of(&stats, &reported);
        let back: Counters = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back.reported[0].1, wasmscore_rules::verdict::Moments::of([1.0, 3.0]));
    }

    /// Reported numbers an older release saved as sums read back.
    #[test]
    fn reported_sums_saved_by_an_older_release_read_as_moments() {
        let old = r#"{"duration":[],"duration_sum_ns":0,"responses":[0,2,0,0,0],"reported":[["x",{"count":2,"sum":4.0,"sum_sq":10.0}]]}"#;
        let c: Counters = serde_json::from_str(old).unwrap();
        assert_eq!(c.reported[0].1, wasmscore_rules::verdict::Moments::of([1.0, 3.0]));
    }

    /// What an older release saved has no split count: it reads as none.
    #[test]
    fn counts_saved_before_the_split_count_read_as_none_routed_by_it() {
        let old = r#"{"duration":[1,0],"duration_sum_ns":5,"responses":[0,3,0,0,0],"reported":[]}"#;
        let c: Counters = serde_json::from_str(old).unwrap();
        assert_eq!((c.responses[1], c.split, c.ok_ns, c.last_ms), (3, 0, 0, 0));
    }
}
