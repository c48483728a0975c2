//! The device seam: what a device must do for the host imports.
//!
//! Lifecycle (the same words as the plugin ABI will use): a device is
//! initialized once per process, configured per version (`load_model` makes the
//! sessions at deploy time), and executes per request (`Model::run`, `Ops`).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::{DType, Tensor, TensorError};

/// One input or output of a model; `-1` marks a dynamic dimension.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<i64>,
}

/// A model loaded on a device. `run` takes `&self`: replicas of a version run
/// the same model concurrently, with no lock around it.
pub trait Model: Send + Sync {
    fn inputs(&self) -> &[TensorInfo];
    fn outputs(&self) -> &[TensorInfo];
    /// Runs the model. `outputs` names the outputs wanted; empty means all.
    fn run(&self, inputs: &[(&str, &Tensor)], outputs: &[&str]) -> Result<Vec<(String, Tensor)>, TensorError>;
}

/// Single tensor ops on a device.
pub trait Ops: Send + Sync {
    fn matmul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor, TensorError>;
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        a: &Tensor,
        b: &Tensor,
        c: Option<&Tensor>,
        alpha: f32,
        beta: f32,
        trans_a: bool,
        trans_b: bool,
    ) -> Result<Tensor, TensorError>;
    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor, TensorError>;
    fn relu(&self, x: &Tensor) -> Result<Tensor, TensorError>;
    fn softmax(&self, x: &Tensor, axis: i32) -> Result<Tensor, TensorError>;
}

/// A place where tensor work runs: "cpu" now; CUDA and plugin devices later.
pub trait Device: Send + Sync {
    /// The name versions and guests use to pick it ("cpu").
    fn name(&self) -> &str;
    /// Makes a session for a model's bytes. Called at deploy time, once per
    /// (model, device); `file` names the model in errors.
    fn load_model(&self, file: &str, bytes: &[u8]) -> Result<Arc<dyn Model>, TensorError>;
    fn ops(&self) -> &dyn Ops;
}

/// The devices this process has, by name. Made once at start-up.
#[derive(Clone, Default)]
pub struct Devices {
    by_name: BTreeMap<String, Arc<dyn Device>>,
}

impl Devices {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn add(&mut self, device: Arc<dyn Device>) {
        self.by_name.insert(device.name().to_string(), device);
    }
    pub fn get(&self, name: &str) -> Result<&Arc<dyn Device>, TensorError> {
        self.by_name.get(name).ok_or_else(|| {
            TensorError::bad(format!(
                "no device named {name:?}; this host has: {}",
                self.by_name.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
}
