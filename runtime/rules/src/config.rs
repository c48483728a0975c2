//! A version's deployment config: raw (JSON, Azure ML's names), then resolved.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::RuleError;

/// The settings a version may carry, with Azure ML's names. Unknown keys are
/// refused so a typo does not silently fall back to a default.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    /// Longest one `run()` may take (default 60000), then 504.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scoring_timeout_ms: Option<u64>,
    /// Memory per replica: the instance's linear memory plus its host tensors (default 0.5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_gb: Option<f64>,
    /// Fixed replica count (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_replicas: Option<usize>,
    /// Requests one replica runs at once (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica_max_concurrent_requests: Option<usize>,
    /// Longest a request waits in the queue, in ms (default 500), then 503.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_request_wait_time: Option<u64>,
    /// CPU cores a replica asks of the machine's capacity (default 0.1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_cores: Option<f64>,
    /// Most CPU cores a replica may use (Azure ML's `cpu_cores_limit`;
    /// default: no limit). Enforced: a cgroup's CPU quota for the version's
    /// instance threads under `up` and on a node, the pod's CPU limit on
    /// Kubernetes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_cores_limit: Option<f64>,
    /// Autoscaling on utilization (default: on unless num_replicas is given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autoscale_enabled: Option<bool>,
    /// Fewest replicas (default 1; 0 lets an idle version scale to zero).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autoscale_min_replicas: Option<usize>,
    /// Most replicas (default 10).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autoscale_max_replicas: Option<usize>,
    /// Utilization to keep, in percent (default 70).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autoscale_target_utilization: Option<u32>,
    /// How often the autoscaler decides, in seconds (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autoscale_refresh_seconds: Option<f64>,
    /// How long utilization must stay below the target before replicas are
    /// removed, in seconds (default 60; ours: Azure ML fixes it at about a minute).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autoscale_scale_down_delay_seconds: Option<f64>,
    /// Probe settings (Azure ML's names): seconds between probes (default 10).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period_seconds: Option<f64>,
    /// Seconds after a version starts serving before the first probe
    /// (default 0: a version serves only after init() ran, which is what
    /// Azure ML's 310 s waits for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_delay_seconds: Option<f64>,
    /// Seconds a probe may take (default 2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<f64>,
    /// Passed probes that make an Unhealthy version ready again (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<u32>,
    /// Replica failures in a row (or failed probes) that make a version
    /// Unhealthy (default 3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<u32>,
    /// Sandbox grant: environment variables the module sees (default none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment_variables: Option<std::collections::BTreeMap<String, String>>,
    /// Sandbox grant: clocks at full resolution (default: 1 ms steps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precise_clocks: Option<bool>,
    /// Where the version's tensor work runs: "cpu" (default), "cuda", or a
    /// loaded device plugin's name ("fpga-sim").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// GPUs per replica (Azure ML's gpu_cores); more than 0 means device "cuda".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_cores: Option<u32>,
    /// Where work goes that the version's device cannot take ("cpu"): a
    /// device this host does not have, an op or a model a plugin does not
    /// run. Logged and counted. None (the default): such work fails.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_fallback: Option<String>,
    /// Model data collection: requests, responses and the module's
    /// `collect` records as Parquet under DATA_DIR/collected (default off;
    /// Azure ML's `collect_model_data`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collect_model_data: Option<bool>,
    /// The share of requests collected, in (0, 1] (default 1: Azure ML v1
    /// collects every request).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collect_sample_rate: Option<f64>,
    /// Transparent dynamic batching (default off): concurrent `inference`
    /// runs of the version's replicas on one model are merged into one
    /// ONNX Runtime run along the first dimension.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batching: Option<BatchingConfig>,
    /// Triton's decoupled transaction policy (default false): the module
    /// may send several responses to one request (`responses.send`), and
    /// the version is called over gRPC ModelStreamInfer only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decoupled: Option<bool>,
}

/// `batching: {"max_batch_size": N, "max_queue_delay_us": D}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchingConfig {
    /// Rows one merged run takes at most (2..=1024).
    pub max_batch_size: usize,
    /// How long the first call of a batch waits for others (0..=100000 µs;
    /// default 0: merge only what is already waiting, as Triton's batcher
    /// with no delay).
    #[serde(default)]
    pub max_queue_delay_us: u64,
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub timeout: Duration,
    pub memory_limit: u64,
    /// The pool's first replicas are `num_replicas`, or the autoscaler's
    /// minimum (at least 1: a deploy proves init() works).
    pub pool: PoolSettings,
    /// None when the count is fixed.
    pub autoscale: Option<Autoscale>,
    pub probes: Probes,
    /// What one replica asks of the machine's capacity.
    pub cpu_cores: f64,
    /// The most CPU one replica may use (cores); none: no limit.
    pub cpu_limit: Option<f64>,
    pub memory_gb: f64,
    /// What the module may reach through WASI.
    pub sandbox: SandboxGrant,
    /// The device the version asks for ("cpu", "cuda", a plugin's name).
    pub device: String,
    /// Where work goes that `device` cannot take; none: it fails.
    pub fallback: Option<String>,
    /// The share of requests whose data is collected; none: collection off.
    pub collect: Option<f64>,
    /// Dynamic batching; none: off.
    pub batching: Option<BatchingConfig>,
    /// Several responses per request, over gRPC streams only.
    pub decoupled: bool,
}

/// A version's replica pool, as its config sets it (the pool's own limits,
/// such as its queue's capacity, are the pool's business).
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSettings {
    pub replicas: usize,
    /// Instances per replica (`replica_max_concurrent_requests`).
    pub max_concurrent: usize,
    /// `max_request_wait_time`.
    pub max_wait: Duration,
}

/// What the module may reach through WASI beyond nothing.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SandboxGrant {
    pub env: Vec<(String, String)>,
    pub precise_clocks: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Autoscale {
    pub min: usize,
    pub max: usize,
    /// 0 < target <= 1.
    pub target: f64,
    pub refresh: Duration,
    pub down_delay: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Probes {
    pub period: Duration,
    pub initial_delay: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

/// Upper bounds that keep one version from taking the machine.
const MAX_REPLICAS: usize = 64;
const MAX_MEMORY_GB: f64 = 4.0;

fn seconds(name: &str, v: Option<f64>, default: f64, min: f64, max: f64) -> Result<Duration, RuleError> {
    let s = v.unwrap_or(default);
    if !(s >= min && s <= max) {
        return Err(RuleError::Refused(format!(
            "deployment config: {name} must be in {min}..={max} seconds, got {s}"
        )));
    }
    Ok(Duration::from_secs_f64(s))
}

impl DeploymentConfig {
    pub fn parse(v: &serde_json::Value) -> Result<Self, RuleError> {
        if v.is_null() {
            return Ok(Self::default());
        }
        serde_json::from_value(v.clone()).map_err(|e| RuleError::Refused(format!("deployment config: {e}")))
    }

    pub fn resolve(&self) -> Result<Resolved, RuleError> {
        let bad = |m: String| Err(RuleError::Refused(format!("deployment config: {m}")));
        let timeout_ms = self.scoring_timeout_ms.unwrap_or(60_000);
        if timeout_ms == 0 || timeout_ms > 3_600_000 {
            return bad(format!("scoring_timeout_ms must be in 1..=3600000, got {timeout_ms}"));
        }
        let memory_gb = self.memory_gb.unwrap_or(0.5);
        if !(memory_gb > 0.0 && memory_gb <= MAX_MEMORY_GB) {
            return bad(format!("memory_gb must be in (0, {MAX_MEMORY_GB}], got {memory_gb}"));
        }
        let cpu_cores = self.cpu_cores.unwrap_or(0.1);
        if !(cpu_cores > 0.0 && cpu_cores <= 64.0) {
            return bad(format!("cpu_cores must be in (0, 64], got {cpu_cores}"));
        }
        if let Some(limit) = self.cpu_cores_limit {
            if !(limit >= cpu_cores.max(0.01) && limit <= 64.0) {
                return bad(format!(
                    "cpu_cores_limit must be in [cpu_cores, 64] and at least 0.01 (cpu_cores is {cpu_cores}: a replica is limited to at least what it asks), got {limit}"
                ));
            }
        }
        let autoscale_on = match (self.autoscale_enabled, self.num_replicas) {
            (Some(true), Some(_)) => {
                return bad("num_replicas fixes the replica count; leave it out, or set autoscale_enabled to false".into())
            }
            (Some(on), _) => on,
            (None, n) => n.is_none(),
        };
        let autoscale = if autoscale_on {
            let min = self.autoscale_min_replicas.unwrap_or(1);
            let max = self.autoscale_max_replicas.unwrap_or(10);
            if max == 0 || max > MAX_REPLICAS || min > max {
                return bad(format!(
                    "autoscale_min_replicas ({min}) and autoscale_max_replicas ({max}) must satisfy 0 <= min <= max, 1 <= max <= {MAX_REPLICAS}"
                ));
            }
            let target = self.autoscale_target_utilization.unwrap_or(70);
            if target == 0 || target > 100 {
                return bad(format!("autoscale_target_utilization is a percentage in 1..=100, got {target}"));
            }
            Some(Autoscale {
                min,
                max,
                target: f64::from(target) / 100.0,
                refresh: seconds("autoscale_refresh_seconds", self.autoscale_refresh_seconds, 1.0, 0.1, 3600.0)?,
                down_delay: seconds(
                    "autoscale_scale_down_delay_seconds",
                    self.autoscale_scale_down_delay_seconds,
                    60.0,
                    0.0,
                    86400.0,
                )?,
            })
        } else {
            for (name, given) in [
                ("autoscale_min_replicas", self.autoscale_min_replicas.is_some()),
                ("autoscale_max_replicas", self.autoscale_max_replicas.is_some()),
                ("autoscale_target_utilization", self.autoscale_target_utilization.is_some()),
            ] {
                if given {
                    return bad(format!(
                        "{name} needs autoscaling, which num_replicas or autoscale_enabled=false turn off"
                    ));
                }
            }
            None
        };
        let replicas = match &autoscale {
            Some(a) => a.min.max(1),
            None => self.num_replicas.unwrap_or(1),
        };
        if replicas == 0 || replicas > MAX_REPLICAS {
            return bad(format!("num_replicas must be in 1..={MAX_REPLICAS}, got {replicas}"));
        }
        let threshold = |name: &str, v: Option<u32>, default: u32| match v.unwrap_or(default) {
            n @ 1..=100 => Ok(n),
            n => Err(RuleError::Refused(format!("deployment config: {name} must be in 1..=100, got {n}"))),
        };
        let env = self.environment_variables.clone().unwrap_or_default();
        if env.len() > 64 {
            return bad(format!("environment_variables holds at most 64 variables, got {}", env.len()));
        }
        for (k, v) in &env {
            let name_ok = !k.is_empty()
                && k.len() <= 128
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !k.starts_with(|c: char| c.is_ascii_digit());
            if !name_ok || v.len() > 4096 || v.contains('\0') {
                return bad(format!(
                    "environment variable {k:?}: names are letters, digits and _ (not first a digit), values at most 4096 bytes"
                ));
            }
        }
        let sandbox = SandboxGrant {
            env: env.into_iter().collect(),
            precise_clocks: self.precise_clocks.unwrap_or(false),
        };
        let probes = Probes {
            period: seconds("period_seconds", self.period_seconds, 10.0, 0.1, 3600.0)?,
            initial_delay: seconds("initial_delay_seconds", self.initial_delay_seconds, 0.0, 0.0, 3600.0)?,
            timeout: seconds("timeout_seconds", self.timeout_seconds, 2.0, 0.1, 600.0)?,
            success_threshold: threshold("success_threshold", self.success_threshold, 1)?,
            failure_threshold: threshold("failure_threshold", self.failure_threshold, 3)?,
        };
        let conc = self.replica_max_concurrent_requests.unwrap_or(1);
        if conc == 0 || conc > 64 {
            return bad(format!("replica_max_concurrent_requests must be in 1..=64, got {conc}"));
        }
        let (device, fallback) = self.device()?;
        let wait = self.max_request_wait_time.unwrap_or(500);
        if wait > 600_000 {
            return bad(format!("max_request_wait_time must be at most 600000 ms, got {wait}"));
        }
        let collect = match (self.collect_model_data.unwrap_or(false), self.collect_sample_rate) {
            (false, Some(_)) => return bad("collect_sample_rate needs collect_model_data: true".into()),
            (false, None) => None,
            (true, rate) => match rate.unwrap_or(1.0) {
                r if r > 0.0 && r <= 1.0 => Some(r),
                r => return bad(format!("collect_sample_rate must be in (0, 1], got {r}")),
            },
        };
        if let Some(b) = self.batching {
            if !(2..=1024).contains(&b.max_batch_size) {
                return bad(format!("batching.max_batch_size must be in 2..=1024, got {}", b.max_batch_size));
            }
            if b.max_queue_delay_us > 100_000 {
                return bad(format!(
                    "batching.max_queue_delay_us must be at most 100000, got {}",
                    b.max_queue_delay_us
                ));
            }
        }
        Ok(Resolved {
            collect,
            batching: self.batching,
            decoupled: self.decoupled.unwrap_or(false),
            timeout: Duration::from_millis(timeout_ms),
            memory_limit: (memory_gb * (1u64 << 30) as f64) as u64,
            pool: PoolSettings {
                replicas,
                max_concurrent: conc,
                max_wait: Duration::from_millis(wait),
            },
            autoscale,
            probes,
            cpu_cores,
            cpu_limit: self.cpu_cores_limit,
            memory_gb,
            sandbox,
            device,
            fallback,
        })
    }

    fn device(&self) -> Result<(String, Option<String>), RuleError> {
        let bad = |m: String| Err(RuleError::Refused(format!("deployment config: {m}")));
        let gpus = self.gpu_cores.unwrap_or(0);
        if gpus > 16 {
            return bad(format!("gpu_cores must be in 0..=16, got {gpus}"));
        }
        let device = match (self.device.as_deref(), gpus) {
            (None, 0) => "cpu".to_string(),
            (None, _) => "cuda".to_string(),
            (Some(d), 0) => d.to_string(),
            (Some("cuda"), _) => "cuda".to_string(),
            (Some(d), g) => return bad(format!("gpu_cores {g} asks for device cuda, but device is {d:?}; give one of them")),
        };
        let name_ok = !device.is_empty() && device.len() <= 64 && device.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok {
            return bad(format!(
                "device {device:?} must be \"cpu\", \"cuda\" or a device plugin's name (letters, digits, '-', '_')"
            ));
        }
        let fallback = match self.device_fallback.as_deref() {
            None => None,
            Some("cpu") if device == "cpu" => return bad("device_fallback \"cpu\" on a cpu version falls back to itself".into()),
            Some("cpu") => Some("cpu".to_string()),
            Some(other) => {
                return bad(format!(
                    "device_fallback may only be \"cpu\" (the device that runs every op and model), got {other:?}"
                ))
            }
        };
        Ok((device, fallback))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_azure_mls() {
        let r = DeploymentConfig::default().resolve().unwrap();
        assert_eq!(r.timeout, Duration::from_secs(60));
        assert_eq!(r.pool.max_wait, Duration::from_millis(500));
        assert_eq!(r.pool.replicas, 1);
        assert_eq!(r.pool.max_concurrent, 1);
        let a = r.autoscale.expect("autoscaling is on unless num_replicas is given");
        assert_eq!((a.min, a.max, a.target, a.refresh), (1, 10, 0.7, Duration::from_secs(1)));
        assert_eq!(a.down_delay, Duration::from_secs(60));
        assert_eq!((r.cpu_cores, r.cpu_limit, r.memory_gb), (0.1, None, 0.5));
        assert_eq!(r.probes.period, Duration::from_secs(10));
        assert_eq!((r.probes.success_threshold, r.probes.failure_threshold), (1, 3));
    }

    #[test]
    fn the_device_comes_from_device_or_gpu_cores() {
        let dev = |c: DeploymentConfig| c.resolve().map(|r| (r.device, r.fallback));
        assert_eq!(dev(DeploymentConfig::default()).unwrap(), ("cpu".into(), None));
        let gpu = DeploymentConfig {
            gpu_cores: Some(1),
            ..Default::default()
        };
        assert_eq!(dev(gpu).unwrap(), ("cuda".into(), None));
        let plugin = DeploymentConfig {
            device: Some("fpga-sim".into()),
            device_fallback: Some("cpu".into()),
            ..Default::default()
        };
        assert_eq!(dev(plugin).unwrap(), ("fpga-sim".into(), Some("cpu".into())));
        for (bad, says) in [
            (
                DeploymentConfig {
                    device: Some("fpga-sim".into()),
                    gpu_cores: Some(1),
                    ..Default::default()
                },
                "give one of them",
            ),
            (
                DeploymentConfig {
                    device_fallback: Some("cpu".into()),
                    ..Default::default()
                },
                "falls back to itself",
            ),
            (
                DeploymentConfig {
                    device: Some("cuda".into()),
                    device_fallback: Some("fpga-sim".into()),
                    ..Default::default()
                },
                "may only be",
            ),
            (
                DeploymentConfig {
                    device: Some("../x".into()),
                    ..Default::default()
                },
                "device plugin's name",
            ),
        ] {
            let e = dev(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn num_replicas_fixes_the_count() {
        let r = DeploymentConfig {
            num_replicas: Some(3),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!((r.pool.replicas, r.autoscale), (3, None));
        let both = DeploymentConfig {
            num_replicas: Some(3),
            autoscale_enabled: Some(true),
            ..Default::default()
        };
        assert!(both.resolve().unwrap_err().to_string().contains("num_replicas fixes"));
    }

    #[test]
    fn min_zero_starts_one_replica_and_bounds_are_checked() {
        let r = DeploymentConfig {
            autoscale_min_replicas: Some(0),
            autoscale_max_replicas: Some(4),
            autoscale_refresh_seconds: Some(0.2),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(r.pool.replicas, 1);
        assert_eq!(r.autoscale.unwrap().min, 0);
        for bad in [
            serde_json::json!({"autoscale_min_replicas": 5, "autoscale_max_replicas": 2}),
            serde_json::json!({"autoscale_target_utilization": 0}),
            serde_json::json!({"autoscale_refresh_seconds": 0}),
            serde_json::json!({"failure_threshold": 0}),
            serde_json::json!({"cpu_cores": -1}),
            serde_json::json!({"cpu_cores": 0.5, "cpu_cores_limit": 0.25}),
            serde_json::json!({"cpu_cores_limit": 65}),
            serde_json::json!({"num_replicas": 2, "autoscale_max_replicas": 4}),
        ] {
            let err = DeploymentConfig::parse(&bad).unwrap().resolve().unwrap_err();
            assert!(matches!(err, RuleError::Refused(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = DeploymentConfig::parse(&serde_json::json!({"scoring_timeout": 5})).unwrap_err();
        assert!(err.to_string().contains("unknown field `scoring_timeout`"), "{err}");
    }

    #[test]
    fn out_of_range_values_say_which() {
        let err = DeploymentConfig {
            num_replicas: Some(0),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("num_replicas"), "{err}");
    }

    #[test]
    fn batching_is_off_by_default_and_its_bounds_are_checked() {
        let resolve = |v: serde_json::Value| DeploymentConfig::parse(&v).unwrap().resolve();
        let b = resolve(serde_json::json!({"batching": {"max_batch_size": 8}}))
            .unwrap()
            .batching
            .unwrap();
        assert_eq!((b.max_batch_size, b.max_queue_delay_us), (8, 0));
        assert!(resolve(serde_json::json!({})).unwrap().batching.is_none());
        for (bad, says) in [
            (
                serde_json::json!({"batching": {"max_batch_size": 1}}),
                "max_batch_size must be in 2..=1024",
            ),
            (
                serde_json::json!({"batching": {"max_batch_size": 8, "max_queue_delay_us": 200000}}),
                "at most 100000",
            ),
            (serde_json::json!({"batching": {"max_batch_size": 8, "delay": 1}}), "unknown field"),
            (serde_json::json!({"batching": {}}), "missing field"),
        ] {
            let e = DeploymentConfig::parse(&bad)
                .and_then(|c| c.resolve())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn collection_is_off_by_default_and_samples_everything_when_on() {
        let resolve = |v: serde_json::Value| DeploymentConfig::parse(&v).unwrap().resolve();
        assert_eq!(resolve(serde_json::json!({})).unwrap().collect, None);
        assert_eq!(resolve(serde_json::json!({"collect_model_data": true})).unwrap().collect, Some(1.0));
        let r = resolve(serde_json::json!({"collect_model_data": true, "collect_sample_rate": 0.1})).unwrap();
        assert_eq!(r.collect, Some(0.1));
        for (bad, why) in [
            (serde_json::json!({"collect_sample_rate": 0.5}), "needs collect_model_data"),
            (
                serde_json::json!({"collect_model_data": true, "collect_sample_rate": 0.0}),
                "(0, 1]",
            ),
            (
                serde_json::json!({"collect_model_data": true, "collect_sample_rate": 1.5}),
                "(0, 1]",
            ),
        ] {
            let err = resolve(bad.clone()).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
