//! A version's deployment config: raw (JSON, Azure ML's names), then resolved.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use wasmscore_replica::PoolConfig;

use crate::ControlError;

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
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub timeout: Duration,
    pub memory_limit: u64,
    pub pool: PoolConfig,
}

/// Upper bounds that keep one version from taking the machine.
const MAX_REPLICAS: usize = 64;
const MAX_MEMORY_GB: f64 = 4.0;

impl DeploymentConfig {
    pub fn parse(v: &serde_json::Value) -> Result<Self, ControlError> {
        if v.is_null() {
            return Ok(Self::default());
        }
        serde_json::from_value(v.clone()).map_err(|e| ControlError::BadRequest(format!("deployment config: {e}")))
    }

    pub fn resolve(&self) -> Result<Resolved, ControlError> {
        let bad = |m: String| Err(ControlError::BadRequest(format!("deployment config: {m}")));
        let timeout_ms = self.scoring_timeout_ms.unwrap_or(60_000);
        if timeout_ms == 0 || timeout_ms > 3_600_000 {
            return bad(format!("scoring_timeout_ms must be in 1..=3600000, got {timeout_ms}"));
        }
        let memory_gb = self.memory_gb.unwrap_or(0.5);
        if !(memory_gb > 0.0 && memory_gb <= MAX_MEMORY_GB) {
            return bad(format!("memory_gb must be in (0, {MAX_MEMORY_GB}], got {memory_gb}"));
        }
        let replicas = self.num_replicas.unwrap_or(1);
        if replicas == 0 || replicas > MAX_REPLICAS {
            return bad(format!("num_replicas must be in 1..={MAX_REPLICAS}, got {replicas}"));
        }
        let conc = self.replica_max_concurrent_requests.unwrap_or(1);
        if conc == 0 || conc > 64 {
            return bad(format!("replica_max_concurrent_requests must be in 1..=64, got {conc}"));
        }
        let wait = self.max_request_wait_time.unwrap_or(500);
        if wait > 600_000 {
            return bad(format!("max_request_wait_time must be at most 600000 ms, got {wait}"));
        }
        Ok(Resolved {
            timeout: Duration::from_millis(timeout_ms),
            memory_limit: (memory_gb * (1u64 << 30) as f64) as u64,
            pool: PoolConfig {
                replicas,
                max_concurrent: conc,
                max_wait: Duration::from_millis(wait),
                ..PoolConfig::default()
            },
        })
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
}
