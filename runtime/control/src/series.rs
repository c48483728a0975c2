//! The last hour of each serving version, for the `/ui` page's plots: the
//! monitor samples the version's cumulative counts every `EVERY`; the
//! route turns consecutive samples into rates and latency percentiles.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use wasmscore_replica::histogram::BUCKETS;
use wasmscore_rules::verdict::quantile;

use crate::deploy::{lock, Built, Control};
use crate::ControlError;

/// How often a version is sampled.
pub(crate) const EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// Samples kept: one hour.
const KEPT: usize = 3600 / 5 + 1;

/// A version's cumulative counts at one moment.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    unix: f64,
    durations: Vec<u64>,
    responses: [u64; 5],
    replicas: usize,
    queued: usize,
}

impl Sample {
    pub(crate) fn of(b: &Built) -> Sample {
        let st = &b.version.stats;
        Sample {
            unix: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
            durations: st.duration.counts(),
            responses: std::array::from_fn(|i| st.responses[i].load(Ordering::Relaxed)),
            replicas: b.pool.replicas(),
            queued: b.pool.stats().queued.load(Ordering::Relaxed),
        }
    }
}

/// One interval between two samples, as the plots show it: the time at
/// its end, requests and 5xx answers per second, p50 and p99 in ms (None
/// without requests), replicas and queue at its end.
#[derive(Debug, Clone, Copy)]
struct Interval {
    t: f64,
    answered: u64,
    rps: f64,
    errors_per_second: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    replicas: u32,
    queued: u32,
}

impl Interval {
    /// From `a` to `b`; None if no time passed between them.
    fn between(a: &Sample, b: &Sample) -> Option<Interval> {
        let dt = b.unix - a.unix;
        if dt <= 0.0 {
            return None;
        }
        let diff: Vec<u64> = b.durations.iter().zip(&a.durations).map(|(x, y)| x.saturating_sub(*y)).collect();
        let n: u64 = diff.iter().sum();
        let answered: u64 = b.responses.iter().sum::<u64>().saturating_sub(a.responses.iter().sum());
        let ms = |q: f64| (n > 0).then(|| (quantile(&diff, &BUCKETS, q) * 1e6).round() / 1e3);
        Some(Interval {
            t: (b.unix * 1000.0).round() / 1000.0,
            answered,
            rps: ((answered as f64 / dt) * 100.0).round() / 100.0,
            errors_per_second: ((b.responses[4].saturating_sub(a.responses[4]) as f64 / dt) * 100.0).round() / 100.0,
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            replicas: u32::try_from(b.replicas).unwrap_or(u32::MAX),
            queued: u32::try_from(b.queued).unwrap_or(u32::MAX),
        })
    }
}

/// The last hour of one version: the intervals between its samples, oldest
/// first, and its last sample, which the next interval starts from. Kept
/// as intervals rather than samples: a sample holds the cumulative latency
/// histogram (21 counts on the heap, about 260 bytes in all), an interval
/// 72 bytes, and every serving version keeps an hour of them.
#[derive(Default)]
pub(crate) struct Series {
    last: Option<Sample>,
    intervals: VecDeque<Interval>,
}

impl Series {
    pub(crate) fn push(&mut self, s: Sample) {
        if let Some(i) = self.last.as_ref().and_then(|a| Interval::between(a, &s)) {
            if self.intervals.len() == KEPT - 1 {
                self.intervals.pop_front();
            } else if self.intervals.len() == self.intervals.capacity() {
                // Doubling, but never past the hour.
                let len = self.intervals.len();
                self.intervals.reserve_exact(len.max(8).min(KEPT - 1 - len));
            }
            self.intervals.push_back(i);
        }
        self.last = Some(s);
    }

    /// The requests answered over the hour, and its intervals, the last
    /// one ending now.
    fn json(&self, now: Sample) -> Value {
        let current = self.last.as_ref().and_then(|a| Interval::between(a, &now));
        let all: Vec<&Interval> = self.intervals.iter().chain(current.as_ref()).collect();
        let each = |f: fn(&Interval) -> Value| -> Vec<Value> { all.iter().map(|i| f(i)).collect() };
        json!({
            "requests": all.iter().map(|i| i.answered).sum::<u64>(),
            "t": each(|i| json!(i.t)),
            "rps": each(|i| json!(i.rps)),
            "errors_per_second": each(|i| json!(i.errors_per_second)),
            "p50_ms": each(|i| json!(i.p50_ms)),
            "p99_ms": each(|i| json!(i.p99_ms)),
            "replicas": each(|i| json!(i.replicas)),
            "queued": each(|i| json!(i.queued)),
        })
    }
}

impl Control {
    /// Samples every serving version (the monitor, every `EVERY`).
    pub(crate) fn sample_series(&self) {
        let mut inner = lock(&self.inner);
        for ep in inner.endpoints.values_mut() {
            for v in ep.versions.iter_mut() {
                if let Some(b) = v.live.as_mut() {
                    let s = Sample::of(b);
                    b.series.push(s);
                }
            }
        }
    }

    /// `GET /admin/v1/endpoints/E/series`: the last hour of each version.
    pub fn series(&self, endpoint: &str) -> Result<Value, ControlError> {
        let inner = lock(&self.inner);
        let ep = inner
            .endpoints
            .get(endpoint)
            .ok_or_else(|| ControlError::NotFound(format!("no service named {endpoint:?}")))?;
        let versions: Vec<Value> = ep
            .versions
            .iter()
            .filter_map(|v| {
                let b = v.live.as_ref()?;
                let mut j = b.series.json(Sample::of(b));
                j["name"] = json!(v.row.rollout.name);
                j["role"] = json!(v.row.rollout.role());
                Some(j)
            })
            .collect();
        Ok(json!({"endpoint": endpoint, "interval_seconds": EVERY.as_secs_f64(), "versions": versions}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(unix: f64, fast: u64, slow: u64, failed: u64) -> Sample {
        let mut durations = vec![0; BUCKETS.len() + 1];
        durations[4] = fast; // <= 1 ms
        durations[9] = slow; // <= 50 ms
        Sample {
            unix,
            durations,
            responses: [0, fast + slow - failed, 0, 0, failed],
            replicas: 2,
            queued: 1,
        }
    }

    #[test]
    fn intervals_give_rates_and_percentiles() {
        let mut s = Series::default();
        s.push(sample(100.0, 0, 0, 0));
        s.push(sample(105.0, 0, 0, 0));
        let j = s.json(sample(110.0, 90, 10, 5));
        assert_eq!(j["t"], json!([105.0, 110.0]));
        assert_eq!(j["rps"], json!([0.0, 20.0]));
        assert_eq!(j["errors_per_second"], json!([0.0, 1.0]));
        assert_eq!(j["p50_ms"][0], Value::Null);
        let (p50, p99) = (j["p50_ms"][1].as_f64().unwrap(), j["p99_ms"][1].as_f64().unwrap());
        assert!(p50 > 0.5 && p50 <= 1.0, "{p50}");
        assert!(p99 > 25.0 && p99 <= 50.0, "{p99}");
        assert_eq!(j["replicas"], json!([2, 2]));
        assert_eq!(j["requests"], 100);
    }

    #[test]
    fn an_hour_is_kept_in_an_hours_room() {
        let mut s = Series::default();
        for i in 0..KEPT + 10 {
            s.push(sample(i as f64, 0, 0, 0));
        }
        // The samples 10..KEPT+9 are an hour: the intervals between them.
        assert_eq!(s.intervals.len(), KEPT - 1);
        assert_eq!(s.intervals[0].t, 11.0);
        assert_eq!(s.intervals.capacity(), KEPT - 1);
        assert!(std::mem::size_of::<Interval>() <= 72, "{}", std::mem::size_of::<Interval>());
        let j = s.json(sample(KEPT as f64 + 10.0, 0, 0, 0));
        assert_eq!(j["t"].as_array().unwrap().len(), KEPT);
    }

    #[test]
    fn samples_without_time_between_them_make_no_interval() {
        let mut s = Series::default();
        s.push(sample(100.0, 0, 0, 0));
        s.push(sample(100.0, 5, 0, 0));
        assert!(s.intervals.is_empty());
        let j = s.json(sample(100.0, 5, 0, 0));
        assert_eq!(j["t"], json!([]));
        assert_eq!(j["requests"], 0);
    }
}
