//! Hop 4 of the request path: wasmtime.
//!
//! The one `bindgen!` of the project lives here (`bindings`), with the
//! engine configuration (pooling allocator, epoch interruption), the on-disk
//! compile cache, per-version preparation (`InstancePre` plus the version's
//! models) and a [`Replica`]: one instance that ran `init()` once and then
//! serves `run()` calls under a deadline and a memory limit. The host side of
//! the guest's imports (`host`) forwards tensor work to `wasmscore-tensor`
//! devices. It does not queue or schedule calls: that is `wasmscore-replica`.

mod bindings;
mod cache;
mod engine;
mod host;
mod nn;
mod replica;
mod usage;

pub use engine::{compile_to_cache, EngineConfig, LoadInfo, ScoringEngine, COMPILE_INVALID_EXIT};
pub use host::{LogLine, ModelSource, Moments, Reported, Sandbox, VersionContext, COARSE_CLOCK_NS};
pub use replica::{CallError, Prepared, Replica, Responses, ScoreRequest, ScoreResponse};
pub use usage::{DeviceUsage, DeviceUsageSnapshot};

/// A compiled, pre-linked component: what versions that ship the same module
/// bytes share. Cheap to clone.
pub type Compiled = bindings::ScorerPre<host::HostState>;

/// Errors while loading or preparing a component.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("configuring wasmtime: {0}")]
    Config(String),
    #[error("the module is not a valid WebAssembly component: {0}")]
    InvalidComponent(String),
    #[error("the module does not fit the wasmscore:scoring/scorer world: {0}")]
    Link(String),
    #[error("compile cache at {path}: {message}")]
    Cache { path: String, message: String },
    #[error("instantiating the module: {0}")]
    Instantiate(String),
    #[error("init() failed: {0}")]
    Init(String),
}
