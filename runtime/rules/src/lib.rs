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
pub mod verdict;

/// Endpoint, version and model names: 1-64 letters, digits, '-', '_' or
/// '.', not starting with '.' (they become URL path segments and labels).
pub fn valid_name(kind: &str, s: &str) -> Result<(), RuleError> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !s.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(RuleError::Refused(format!(
            "{kind} name {s:?} must be 1-64 characters of letters, digits, '-', '_' or '.'"
        )))
    }
}

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
