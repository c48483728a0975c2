//! The control plane: the model registry, endpoints and their versions kept
//! in an embedded store, the controlled-rollout rules, building versions, and
//! the admin API that changes all of it.
//!
//! A change is checked against the rollout rules, committed to SQLite and
//! only then acknowledged; a version it (re)builds compiles its module
//! (through the engine's cache, shared between versions with the same bytes),
//! makes its model sessions (shared the same way), starts its replicas, and
//! takes traffic only once they ran init(). Every change publishes a new
//! immutable routing table. On start, everything in the store is deployed
//! again. It does not serve scoring traffic.

mod access;
mod admin;
mod autoscale;
pub mod azureml;
mod config;
mod deploy;
mod monitor;
mod registry;
mod rollout;
pub mod rules;
mod status;
mod store;

pub use access::AuthSettings;
pub use admin::AdminResponse;
pub use config::DeploymentConfig;
pub use deploy::{Control, ModelRef, VersionSpec, MAX_MODELS};
pub use monitor::Capacity;
pub use rollout::{Mode, VersionRequest};

/// Control-plane errors; each maps to an HTTP status and a code.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("deploy failed: {0}")]
    DeployFailed(String),
    #[error("store: {0}")]
    Store(String),
}

impl ControlError {
    pub fn status(&self) -> u16 {
        match self {
            ControlError::BadRequest(_) => 400,
            ControlError::NotFound(_) => 404,
            ControlError::Conflict(_) => 409,
            ControlError::DeployFailed(_) => 422,
            ControlError::Store(_) => 500,
        }
    }
    pub fn code(&self) -> &'static str {
        match self {
            ControlError::BadRequest(_) => "bad_request",
            ControlError::NotFound(_) => "not_found",
            ControlError::Conflict(_) => "conflict",
            ControlError::DeployFailed(_) => "deploy_failed",
            ControlError::Store(_) => "store_error",
        }
    }
}

impl From<rusqlite::Error> for ControlError {
    fn from(e: rusqlite::Error) -> Self {
        ControlError::Store(e.to_string())
    }
}
