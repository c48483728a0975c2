//! The control plane: what is deployed, kept in an embedded store, and the
//! admin API that changes it.
//!
//! A deploy stores the module and model bytes by sha256 under the data dir,
//! compiles the module (through the engine's cache), makes the model sessions
//! on the version's device, starts the replicas and only then commits the
//! version to SQLite and publishes it to the router. On start, everything in
//! the store is deployed again. It does not serve scoring traffic.

mod admin;
mod config;
mod deploy;
mod store;

pub use admin::AdminResponse;
pub use config::DeploymentConfig;
pub use deploy::{Control, VersionSpec};

/// Control-plane errors; each maps to an HTTP status and a code.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
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
            ControlError::DeployFailed(_) => 422,
            ControlError::Store(_) => 500,
        }
    }
    pub fn code(&self) -> &'static str {
        match self {
            ControlError::BadRequest(_) => "bad_request",
            ControlError::NotFound(_) => "not_found",
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
