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
pub mod azureml;
mod counters;
pub mod data_dir;
mod deploy;
mod monitor;
mod pages;
mod registry;
mod rollout;
mod series;
mod status;
mod store;

// The pure cores live in wasmscore-rules (shared with the router and the
// operator); these names keep the control plane's paths short.
use wasmscore_rules::{autoscale, config, rollout as rules};

pub use access::{issue_token, token_lifetime, AuthSettings};
pub use admin::AdminResponse;
pub use config::DeploymentConfig;
pub use deploy::{CollectSettings, Control, Kept, ModelRef, VersionSpec, MAX_MODELS};
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

impl From<wasmscore_rules::RuleError> for ControlError {
    fn from(e: wasmscore_rules::RuleError) -> Self {
        use wasmscore_rules::RuleError;
        match e {
            RuleError::Refused(m) => ControlError::BadRequest(m),
            RuleError::NotFound(m) => ControlError::NotFound(m),
            RuleError::Conflict(m) => ControlError::Conflict(m),
        }
    }
}

impl From<rusqlite::Error> for ControlError {
    fn from(e: rusqlite::Error) -> Self {
        ControlError::Store(e.to_string())
    }
}

/// Fuzz entry points (fuzz/ and the corpus replay test in tests/).
pub mod fuzzing {
    /// Bytes as an admin request body: a version change (with its
    /// deployment config and endpoint auth fields), an Azure ML
    /// deploymentconfig.json and inferenceconfig.json. Must never panic.
    pub fn admin_bodies(data: &[u8]) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
            return;
        };
        if let Ok(mut req) = serde_json::from_value::<crate::VersionRequest>(v.clone()) {
            if let Some(c) = req.config.as_mut() {
                let _ = crate::AuthSettings::take_from(c);
                if let Ok(d) = crate::DeploymentConfig::parse(c) {
                    let _ = d.resolve();
                }
            }
        }
        let mut c = v.clone();
        let _ = crate::AuthSettings::take_from(&mut c);
        if let Ok(d) = crate::DeploymentConfig::parse(&c) {
            let _ = d.resolve();
        }
        if let Ok(s) = serde_json::from_value::<crate::AuthSettings>(v.clone()) {
            let mut row = crate::store::EndpointRow {
                name: "fuzz".into(),
                description: String::new(),
                tags: Default::default(),
                primary_key: "p".repeat(32),
                secondary_key: "s".repeat(32),
                created_at: String::new(),
                auth_mode: Default::default(),
                token_keys: Vec::new(),
            };
            let _ = s.apply(&mut row);
        }
        if crate::azureml::is_azureml_deployment(&v) {
            if let Ok(m) = crate::azureml::map_deployment(&v) {
                if let Ok(d) = crate::DeploymentConfig::parse(&serde_json::Value::Object(m.config)) {
                    let _ = d.resolve();
                }
            }
        }
        let _ = crate::azureml::map_inference(&v);
    }
}
