//! A loaded plugin behind the host's device seam, and loading the
//! configured plugin directory.
//!
//! Lifecycle: the plugin is initialized once when `up` loads the directory;
//! each version that uses it gets version_init (shared by its instances,
//! version_fini when the last one goes), each Wasm instance that calls an op
//! on it gets instance_init (instance_fini when the instance is dropped).
//! Tensors are handed over in place: the plugin reads the host tensor's
//! bytes and writes the output's, no copy on either side.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use wasmscore_plugin_sdk::abi::{self, Capability, OpKind, OpParams};
use wasmscore_tensor::{conv2d_dims, gemm_dims, DType, Device, DeviceKind, Devices, Model, OpCost, Ops, Tensor, TensorData, TensorError};

use crate::{CallError, Instance, Plugin, VersionHandle};

/// A plugin as a device.
pub struct PluginDevice {
    plugin: Arc<Plugin>,
    path: PathBuf,
    /// Version state by "endpoint/version", shared by the version's
    /// instances. Taken only when an instance opens the device, never per op.
    versions: Mutex<HashMap<String, Weak<VersionHandle>>>,
}

impl PluginDevice {
    pub fn new(plugin: Plugin, path: &Path) -> Self {
        PluginDevice {
            plugin: Arc::new(plugin),
            path: path.to_path_buf(),
            versions: Mutex::new(HashMap::new()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    /// "matmul int8/int16/float32, gemm float32, ..." for messages.
    fn declared(&self) -> String {
        let mut by_op: Vec<(&str, Vec<&str>)> = Vec::new();
        for c in self.plugin.capabilities() {
            match by_op.iter_mut().find(|(op, _)| *op == c.op.name()) {
                Some((_, d)) => d.push(c.dtype.name()),
                None => by_op.push((c.op.name(), vec![c.dtype.name()])),
            }
        }
        by_op
            .iter()
            .map(|(op, d)| format!("{op} {}", d.join("/")))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn call_error(device: &str, e: CallError) -> TensorError {
    let msg = format!("device {device}: {}", e.message);
    match e.code {
        abi::Status::InvalidArgument => TensorError::BadInput(msg),
        abi::Status::Unsupported => TensorError::Unsupported(msg),
        _ => TensorError::Failed(msg),
    }
}

impl Device for PluginDevice {
    fn name(&self) -> &str {
        &self.plugin.name
    }

    fn kind(&self) -> DeviceKind {
        DeviceKind::Plugin
    }

    fn description(&self) -> String {
        let (major, minor) = self.plugin.abi_version();
        format!(
            "device plugin {} (ABI {major}.{minor}): {}; ops: {}",
            self.path.display(),
            self.plugin.description,
            self.declared()
        )
    }

    fn load_model(&self, file: &str, _bytes: &[u8]) -> Result<Arc<dyn Model>, TensorError> {
        Err(TensorError::Unsupported(format!(
            "device {} is a device plugin: it runs single ops ({}), not whole models like {file}",
            self.plugin.name,
            self.declared()
        )))
    }

    fn open_ops(&self, version: &str) -> Result<Arc<dyn Ops>, TensorError> {
        let name = &self.plugin.name;
        let v = {
            // A control-plane-rate lock: once per instance and device.
            let mut versions = self.versions.lock().unwrap_or_else(|p| p.into_inner());
            versions.retain(|_, w| w.strong_count() > 0);
            match versions.get(version).and_then(Weak::upgrade) {
                Some(v) => v,
                None => {
                    let v = self
                        .plugin
                        .open_version(version)
                        .map_err(|e| TensorError::Failed(format!("device {name}: version_init: {}", e.message)))?;
                    versions.insert(version.to_string(), Arc::downgrade(&v));
                    v
                }
            }
        };
        let instance = v
            .instance()
            .map_err(|e| TensorError::Failed(format!("device {name}: instance_init: {}", e.message)))?;
        Ok(Arc::new(PluginOps {
            name: name.clone(),
            declared: self.declared(),
            capabilities: self.plugin.capabilities().to_vec(),
            state: Mutex::new(OpsState { instance, last: None }),
        }))
    }
}

struct OpsState {
    instance: Instance,
    last: Option<OpCost>,
}

/// One Wasm instance's handle on the plugin.
struct PluginOps {
    name: String,
    declared: String,
    capabilities: Vec<Capability>,
    /// Never contended: the handle belongs to one Wasm instance, which runs
    /// one call at a time. The ABI forbids two threads in one instance; the
    /// mutex makes that hold even if a handle were shared.
    state: Mutex<OpsState>,
}

fn abi_dtype(d: DType) -> Option<abi::DType> {
    Some(match d {
        DType::Float32 => abi::DType::Float32,
        DType::Float64 => abi::DType::Float64,
        DType::Int8 => abi::DType::Int8,
        DType::Int16 => abi::DType::Int16,
        DType::Int32 => abi::DType::Int32,
        _ => return None,
    })
}

/// The tensor's elements as the bytes they are in memory.
// The ABI's buffers are little-endian; host tensors are handed over as they
// lie in memory.
const _: () = assert!(
    cfg!(target_endian = "little"),
    "the plugin ABI hands tensors over in place, little-endian"
);

fn bytes_of(d: &TensorData) -> &[u8] {
    fn raw<T>(v: &[T]) -> &[u8] {
        // SAFETY: plain numbers without padding; any byte pattern is readable.
        unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), std::mem::size_of_val(v)) }
    }
    match d {
        TensorData::Float32(v) => raw(v),
        TensorData::Float64(v) => raw(v),
        TensorData::Int8(v) => raw(v),
        TensorData::Int16(v) => raw(v),
        TensorData::Int32(v) => raw(v),
        _ => &[],
    }
}

/// The same, writable: the plugin fills the output tensor in place.
fn bytes_of_mut(d: &mut TensorData) -> &mut [u8] {
    fn raw<T>(v: &mut [T]) -> &mut [u8] {
        // SAFETY: plain numbers without padding; any byte pattern is valid.
        unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast(), std::mem::size_of_val(v)) }
    }
    match d {
        TensorData::Float32(v) => raw(v),
        TensorData::Float64(v) => raw(v),
        TensorData::Int32(v) => raw(v),
        _ => &mut [],
    }
}

impl PluginOps {
    fn unsupported(&self, op: &str) -> TensorError {
        TensorError::Unsupported(format!(
            "device {} does not run {op} (it runs {}); name device \"cpu\" for it, or set device_fallback",
            self.name, self.declared
        ))
    }

    /// Checks the call against what the plugin declared.
    fn covered(&self, op: OpKind, inputs: &[&Tensor]) -> Result<abi::DType, TensorError> {
        let dtype = inputs[0].dtype();
        let d = abi_dtype(dtype)
            .filter(|d| self.capabilities.iter().any(|c| c.op == op && c.dtype == *d))
            .ok_or_else(|| {
                TensorError::Unsupported(format!(
                    "device {} does not run {} on {} (it runs {})",
                    self.name,
                    op.name(),
                    dtype.name(),
                    self.declared
                ))
            })?;
        let cap = self.capabilities.iter().find(|c| c.op == op && c.dtype == d).expect("found above");
        for t in inputs {
            if t.dtype() != dtype {
                return Err(TensorError::bad(format!(
                    "{} takes tensors of one dtype, got {} and {}",
                    op.name(),
                    dtype.name(),
                    t.dtype().name()
                )));
            }
            let too_big = t.shape().iter().any(|x| *x > cap.max_dim as u64);
            if t.shape().len() > cap.max_rank as usize || too_big {
                return Err(TensorError::Unsupported(format!(
                    "device {} takes {} on at most {} dimensions of at most {} each; got {:?}",
                    self.name,
                    op.name(),
                    cap.max_rank,
                    cap.max_dim,
                    t.shape()
                )));
            }
        }
        if cap.memory_kinds & (1 << abi::MemoryKind::Host as u32) == 0 {
            return Err(TensorError::Unsupported(format!(
                "device {} does not read host memory for {}",
                self.name,
                op.name()
            )));
        }
        Ok(d)
    }

    /// Runs `op` on the plugin; `shape` is the output's, already checked
    /// against the limits (gemm_dims, conv2d_dims).
    fn run(&self, op: OpKind, params: &OpParams, inputs: &[&Tensor], shape: &[u64]) -> Result<Tensor, TensorError> {
        let dtype = self.covered(op, inputs)?;
        let n = shape.iter().product::<u64>() as usize;
        let shapes: Vec<Vec<i64>> = inputs.iter().map(|t| t.shape().iter().map(|d| *d as i64).collect()).collect();
        let views: Vec<crate::TensorView<'_>> = inputs
            .iter()
            .zip(&shapes)
            .map(|(t, s)| crate::TensorView {
                dtype,
                shape: s,
                bytes: bytes_of(t.data()),
            })
            .collect();
        // Integer products accumulate in int32; float ones keep their type.
        let (out_dtype, mut data) = match dtype {
            abi::DType::Float32 => (dtype, TensorData::Float32(vec![0.0; n])),
            abi::DType::Float64 => (dtype, TensorData::Float64(vec![0.0; n])),
            _ => (abi::DType::Int32, TensorData::Int32(vec![0; n])),
        };
        let out_shape: Vec<i64> = shape.iter().map(|d| *d as i64).collect();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let stats = state
            .instance
            .execute_views(op, params, &views, out_dtype, &out_shape, bytes_of_mut(&mut data))
            .map_err(|e| call_error(&self.name, e))?;
        state.last = Some(OpCost {
            device_ns: stats.device_ns,
            cycles: stats.device_cycles,
        });
        drop(state);
        Tensor::new(shape.to_vec(), data)
    }
}

impl Ops for PluginOps {
    fn matmul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor, TensorError> {
        let (m, _, n) = gemm_dims(a, b, false, false, "matmul")?;
        self.run(OpKind::MatMul, &OpParams::default(), &[a, b], &[m as u64, n as u64])
    }

    fn gemm(
        &self,
        a: &Tensor,
        b: &Tensor,
        c: Option<&Tensor>,
        alpha: f32,
        beta: f32,
        trans_a: bool,
        trans_b: bool,
    ) -> Result<Tensor, TensorError> {
        let (m, _, n) = gemm_dims(a, b, trans_a, trans_b, "gemm")?;
        let (m, n) = (m as u64, n as u64);
        let params = OpParams {
            alpha,
            beta,
            trans_a: trans_a.into(),
            trans_b: trans_b.into(),
            ..OpParams::default()
        };
        match c {
            Some(c) => self.run(OpKind::Gemm, &params, &[a, b, c], &[m, n]),
            None => self.run(OpKind::Gemm, &params, &[a, b], &[m, n]),
        }
    }

    fn add(&self, _a: &Tensor, _b: &Tensor) -> Result<Tensor, TensorError> {
        Err(self.unsupported("add"))
    }

    fn relu(&self, _x: &Tensor) -> Result<Tensor, TensorError> {
        Err(self.unsupported("relu"))
    }

    fn softmax(&self, _x: &Tensor, _axis: i32) -> Result<Tensor, TensorError> {
        Err(self.unsupported("softmax"))
    }

    fn conv2d(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, strides: [u32; 2], pads: [u32; 2]) -> Result<Tensor, TensorError> {
        let d = conv2d_dims(x, w, bias, strides, pads)?;
        let params = OpParams {
            stride: strides,
            pad: pads,
            ..OpParams::default()
        };
        let shape = [d.n as u64, d.o as u64, d.ho as u64, d.wo as u64];
        match bias {
            Some(b) => self.run(OpKind::Conv2d, &params, &[x, w, b], &shape),
            None => self.run(OpKind::Conv2d, &params, &[x, w], &shape),
        }
    }

    fn last_cost(&self) -> Option<OpCost> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).last
    }
}

/// What loading a plugin directory did.
pub struct Loaded {
    /// Plugins loaded, with their files.
    pub loaded: Vec<(String, PathBuf)>,
    /// Files refused, with why.
    pub refused: Vec<(PathBuf, String)>,
}

/// Loads every shared library (`*.so`, `*.dylib`) in `dir` into `devices`.
/// `NAME.json` beside `NAME.so` is handed to the plugin's initialize. A
/// plugin that fails to load, asks for another ABI major, or takes a name
/// already used is refused with a message (logged, and listed by
/// `wasmscore devices` under its file's name); the others load.
pub fn load_dir(dir: &Path, devices: &mut Devices) -> Result<Loaded, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("plugin directory {}: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("so" | "dylib")))
        .collect();
    files.sort();
    let mut out = Loaded {
        loaded: Vec::new(),
        refused: Vec::new(),
    };
    for path in files {
        let config = std::fs::read_to_string(path.with_extension("json")).unwrap_or_else(|_| "{}".into());
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("plugin").to_string();
        match Plugin::load(&path, &config) {
            Ok(plugin) => {
                let name = plugin.name.clone();
                let bad_name = name.is_empty()
                    || name == "cpu"
                    || name == "cuda"
                    || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                if bad_name {
                    let why = format!(
                        "{}: the plugin's name {name:?} is not usable (letters, digits, '-' and '_'; not cpu or cuda)",
                        path.display()
                    );
                    tracing::error!("device plugin refused: {why}");
                    devices.mark_unavailable(&stem, why.clone());
                    out.refused.push((path, why));
                    continue;
                }
                match devices.add(Arc::new(PluginDevice::new(plugin, &path))) {
                    Ok(()) => {
                        tracing::info!(device = %name, path = %path.display(), "device plugin loaded");
                        out.loaded.push((name, path));
                    }
                    Err(e) => {
                        let why = format!("{}: {e}", path.display());
                        tracing::error!("device plugin refused: {why}");
                        out.refused.push((path, why));
                    }
                }
            }
            Err(e) => {
                let why = e.to_string();
                tracing::error!("device plugin refused: {why}");
                devices.mark_unavailable(&stem, why.clone());
                out.refused.push((path, why));
            }
        }
    }
    Ok(out)
}
