//! The device seam: what a device must do for the host imports.
//!
//! Lifecycle (the same words as the plugin ABI): a device is initialized
//! once per process (`up` makes it), configured per version (`load_model`
//! makes the sessions at deploy time), opened per instance (`open_ops`: a
//! plugin's version_init + instance_init) and executes per request
//! (`Model::run`, `Ops`).

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

/// Tensor data a device keeps between the guest's calls (an ONNX Runtime
/// value, in GPU memory on cuda), so one model's output feeds the next
/// model on that device without a trip through host memory. The host reads
/// the elements only when something needs them (the guest's `data()`, an
/// op, a model on another device).
pub trait Resident: Send + Sync {
    /// The device that holds it.
    fn device(&self) -> &str;
    fn dtype(&self) -> DType;
    fn shape(&self) -> &[u64];
    /// A copy in host memory.
    fn to_host(&self) -> Result<Tensor, TensorError>;
    /// For the device that made it, to get its own type back.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// A model's input or output: in host memory, or kept by a device.
#[derive(Clone)]
pub enum Value {
    Host(Tensor),
    Resident(Arc<dyn Resident>),
}

impl Value {
    pub fn dtype(&self) -> DType {
        match self {
            Value::Host(t) => t.dtype(),
            Value::Resident(r) => r.dtype(),
        }
    }

    pub fn shape(&self) -> &[u64] {
        match self {
            Value::Host(t) => t.shape(),
            Value::Resident(r) => r.shape(),
        }
    }

    /// Bytes the elements take (what a host copy would take).
    pub fn byte_size(&self) -> usize {
        match self {
            Value::Host(t) => t.data().byte_size(),
            Value::Resident(r) => r.shape().iter().product::<u64>() as usize * r.dtype().width(),
        }
    }

    /// The host tensor, copied from the device when it is resident.
    pub fn into_host(self) -> Result<Tensor, TensorError> {
        match self {
            Value::Host(t) => Ok(t),
            Value::Resident(r) => r.to_host(),
        }
    }
}

/// A model loaded on a device. `run` takes `&self`: replicas of a version run
/// the same model concurrently, with no lock around it.
pub trait Model: Send + Sync {
    fn inputs(&self) -> &[TensorInfo];
    fn outputs(&self) -> &[TensorInfo];
    /// Runs the model. `outputs` names the outputs wanted; empty means all.
    fn run(&self, inputs: &[(&str, &Tensor)], outputs: &[&str]) -> Result<Vec<(String, Tensor)>, TensorError>;
    /// Runs on values that may already be on this device, and may leave the
    /// outputs there. The default reads resident inputs into host memory
    /// and returns host outputs.
    fn run_values(&self, inputs: &[(&str, &Value)], outputs: &[&str]) -> Result<Vec<(String, Value)>, TensorError> {
        on_host(inputs, |refs| self.run(refs, outputs))
    }
    /// `run_values` for a call that must be answered by `deadline`: a model
    /// that holds calls back to merge them (`batch::Batched`) does not hold
    /// one past it.
    fn run_values_by(
        &self,
        inputs: &[(&str, &Value)],
        outputs: &[&str],
        _deadline: Option<std::time::Instant>,
    ) -> Result<Vec<(String, Value)>, TensorError> {
        self.run_values(inputs, outputs)
    }
}

/// Calls `run` with every input in host memory (resident ones read back)
/// and hands back its outputs as host values.
pub fn on_host(
    inputs: &[(&str, &Value)],
    run: impl FnOnce(&[(&str, &Tensor)]) -> Result<Vec<(String, Tensor)>, TensorError>,
) -> Result<Vec<(String, Value)>, TensorError> {
    let host: Vec<(&str, std::borrow::Cow<'_, Tensor>)> = inputs
        .iter()
        .map(|(n, v)| {
            Ok((
                *n,
                match v {
                    Value::Host(t) => std::borrow::Cow::Borrowed(t),
                    Value::Resident(r) => std::borrow::Cow::Owned(r.to_host()?),
                },
            ))
        })
        .collect::<Result<_, TensorError>>()?;
    let refs: Vec<(&str, &Tensor)> = host.iter().map(|(n, t)| (*n, t.as_ref())).collect();
    Ok(run(&refs)?.into_iter().map(|(n, t)| (n, Value::Host(t))).collect())
}

/// What the last op cost on its device, as the device reports it (a
/// plugin's execute stats). The host measures wall time itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpCost {
    pub device_ns: u64,
    pub cycles: u64,
}

/// Single tensor ops on a device. A device that cannot do an op (or a dtype
/// or shape of it) answers [`TensorError::Unsupported`]; the host then
/// runs it on the version's fallback device if one was chosen, and says so.
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
    /// 2-D convolution: x [N, C, H, W], w [O, C, KH, KW], bias [O] -> [N, O, HO, WO].
    fn conv2d(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, strides: [u32; 2], pads: [u32; 2]) -> Result<Tensor, TensorError>;
    /// The device's own account of the op this handle ran last, if it
    /// keeps one. Handles are per instance, so "last" is this instance's.
    fn last_cost(&self) -> Option<OpCost> {
        None
    }
}

/// What kind of device it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
    Cuda,
    Plugin,
}

impl DeviceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
            DeviceKind::Plugin => "plugin",
        }
    }
}

/// A place where tensor work runs: "cpu", "cuda", or a device plugin by its
/// name ("fpga-sim").
pub trait Device: Send + Sync {
    /// The name versions and guests use to pick it.
    fn name(&self) -> &str;
    fn kind(&self) -> DeviceKind;
    /// One line for `wasmscore devices` (a simulator says so here).
    fn description(&self) -> String;
    /// Makes a session for a model's bytes. Called at deploy time, once per
    /// (model, device); `file` names the model in errors. A device that runs
    /// single ops only answers [`TensorError::Unsupported`].
    fn load_model(&self, file: &str, bytes: &[u8]) -> Result<Arc<dyn Model>, TensorError>;
    /// Ops for one instance of `version` ("endpoint/version"), made when the
    /// instance first uses this device and dropped with the instance.
    fn open_ops(&self, version: &str) -> Result<Arc<dyn Ops>, TensorError>;
}

/// The devices this process has, by name, and the ones it has not with
/// why (a plugin that was refused, no GPU, a build without `cuda`). Made
/// once at start-up.
#[derive(Clone, Default)]
pub struct Devices {
    by_name: BTreeMap<String, Arc<dyn Device>>,
    unavailable: BTreeMap<String, String>,
}

impl Devices {
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a device; a second one with a taken name is refused.
    pub fn add(&mut self, device: Arc<dyn Device>) -> Result<(), String> {
        let name = device.name().to_string();
        if self.by_name.contains_key(&name) {
            return Err(format!("a device named {name:?} is already loaded"));
        }
        self.unavailable.remove(&name);
        self.by_name.insert(name, device);
        Ok(())
    }
    /// Records a device this host does not have, and why.
    pub fn mark_unavailable(&mut self, name: &str, why: impl Into<String>) {
        if !self.by_name.contains_key(name) {
            self.unavailable.insert(name.to_string(), why.into());
        }
    }
    pub fn get(&self, name: &str) -> Result<&Arc<dyn Device>, TensorError> {
        if let Some(d) = self.by_name.get(name) {
            return Ok(d);
        }
        let have = self.by_name.keys().cloned().collect::<Vec<_>>().join(", ");
        Err(TensorError::bad(match self.unavailable.get(name) {
            Some(why) => format!("device {name:?} is not available on this host: {why} (it has: {have})"),
            None => format!("no device named {name:?}; this host has: {have}"),
        }))
    }
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
    pub fn all(&self) -> impl Iterator<Item = &Arc<dyn Device>> {
        self.by_name.values()
    }
    /// Devices asked for that this host has not, with why.
    pub fn unavailable(&self) -> &BTreeMap<String, String> {
        &self.unavailable
    }
}
