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

/// Samples of one version, oldest first.
#[derive(Default)]
pub(crate) struct Series {
    samples: VecDeque<Sample>,
}

impl Series {
    pub(crate) fn push(&mut self, s: Sample) {
        if self.samples.len() == KEPT {
            self.samples.pop_front();
        }
        self.samples.push_back(s);
    }

    /// The requests answered over the samples, and per interval between
    /// samples (the last one ending now): the time at its end, requests and 5xx answers per second, p50 and p99 in ms (null
    /// without requests), replicas and queue at its end.
    fn json(&self, now: Sample) -> Value {
        let all: Vec<&Sample> = self.samples.iter().chain(std::iter::once(&now)).collect();
        let (mut t, mut rps, mut errors, mut p50, mut p99, mut replicas, mut queued) =
            (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
        let mut requests = 0;
        for w in all.windows(2) {
            let (a, b) = (w[0], w[1]);
            let dt = b.unix - a.unix;
            if dt <= 0.0 {
                continue;
            }
            let diff: Vec<u64> = b.durations.iter().zip(&a.durations).map(|(x, y)| x.saturating_sub(*y)).collect();
            let n: u64 = diff.iter().sum();
            let answered: u64 = b.responses.iter().sum::<u64>().saturating_sub(a.responses.iter().sum());
            requests += answered;
            let ms = |q: f64| (n > 0).then(|| (quantile(&diff, &BUCKETS, q) * 1e6).round() / 1e3);
            t.push((b.unix * 1000.0).round() / 1000.0);
            rps.push(((answered as f64 / dt) * 100.0).round() / 100.0);
            errors.push(((b.responses[4].saturating_sub(a.responses[4]) as f64 / dt) * 100.0).round() / 100.0);
            p50.push(ms(0.5));
            p99.push(ms(0.99));
            replicas.push(b.replicas);
            queued.push(b.queued);
        }
        json!({"requests": requests, "t": t, "rps": rps, "errors_per_second": errors, "p50_ms": p50, "p99_ms": p99, "replicas": replicas, "queued": queued})
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
    fn an_hour_is_kept() {
        let mut s = Series::default();
        for i in 0..KEPT + 10 {
            s.push(sample(i as f64, 0, 0, 0));
        }
        assert_eq!(s.samples.len(), KEPT);
        assert_eq!(s.samples[0].unix, 10.0);
    }
}
