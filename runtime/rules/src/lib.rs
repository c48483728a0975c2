//! What decides, with no I/O: the controlled-rollout rules and the split
//! they give, the autoscaler's decision, and a version's deployment config
//! (raw, then resolved and validated). Pure functions over plain data, so
//! local mode (`up`'s control plane), the router across the network and the
//! Kubernetes operator share one copy and every rule is table-tested here.
//!
//! It leaves out everything that acts: storing, building, scaling pools,
//! publishing routing tables.

pub mod autoscale;
pub mod config;
pub mod rollout;

/// A refusal, naming the rule it breaks; each maps to an HTTP status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuleError {
    /// The change breaks a rule (400).
    #[error("{0}")]
    Refused(String),
    /// It names a version that does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// It creates a version that exists (409).
    #[error("{0}")]
    Conflict(String),
}
