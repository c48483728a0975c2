//! The CPU device: whole ONNX models through ONNX Runtime, single ops through
//! the plain-Rust reference ops.
//!
//! ONNX Runtime is loaded at run time (`ort`'s `load-dynamic`) from the
//! `onnxruntime` wheel that the project's setup installs into `.venv`, or from
//! `ORT_DYLIB_PATH`. Nothing is downloaded. The CUDA device (`cuda`) is
//! behind the `cuda` cargo feature; without it [`cuda::discover`] says so.

pub mod cuda;
mod locate;
mod session;

use std::path::Path;
use std::sync::Arc;

use wasmscore_tensor::{CpuOps, Device, DeviceKind, Model, Ops, TensorError};

pub use locate::{find_onnxruntime, project_paths, venv_candidates, SETUP_HINT};
pub use session::OrtModel;

/// Errors while starting ONNX Runtime.
#[derive(Debug, thiserror::Error)]
pub enum OrtInitError {
    #[error("ONNX Runtime library not found ({searched}). {hint}")]
    NotFound { searched: String, hint: &'static str },
    #[error("loading ONNX Runtime from {path}: {message}. {hint}")]
    Load { path: String, message: String, hint: &'static str },
}

/// ONNX Runtime on the CPU.
pub struct OrtCpu {
    env: ort::environment::Environment,
    /// Threads each session may use inside one `run`. Replicas already run
    /// requests in parallel, so one thread per run avoids oversubscribing the
    /// cores (see `new`).
    intra_threads: usize,
    ops: Arc<CpuOps>,
}

impl OrtCpu {
    /// Loads the ONNX Runtime shared library and builds its environment. Done
    /// once per process.
    pub fn new(library: &Path) -> Result<Self, OrtInitError> {
        let load_err = |message: String| OrtInitError::Load {
            path: library.display().to_string(),
            message,
            hint: SETUP_HINT,
        };
        let builder = ort::init_from(library).map_err(|e| load_err(e.to_string()))?;
        let env = builder.with_name("wasmscore").build().map_err(|e| load_err(e.to_string()))?;
        tracing::info!(library = %library.display(), "ONNX Runtime loaded");
        Ok(OrtCpu {
            env,
            intra_threads: 1,
            ops: Arc::new(CpuOps),
        })
    }

    /// The ONNX Runtime environment (the CUDA device makes its sessions in it).
    pub fn env(&self) -> &ort::environment::Environment {
        &self.env
    }

    /// Finds the library (ORT_DYLIB_PATH, then the project's .venv) and loads it.
    pub fn discover() -> Result<Self, OrtInitError> {
        let path = find_onnxruntime()?;
        Self::new(&path)
    }
}

impl Device for OrtCpu {
    fn name(&self) -> &str {
        "cpu"
    }

    fn kind(&self) -> DeviceKind {
        DeviceKind::Cpu
    }

    fn description(&self) -> String {
        "ONNX Runtime on the CPU for models; plain-Rust reference ops".into()
    }

    fn load_model(&self, file: &str, bytes: &[u8]) -> Result<Arc<dyn Model>, TensorError> {
        Ok(Arc::new(OrtModel::load(&self.env, file, bytes, self.intra_threads)?))
    }

    fn open_ops(&self, _version: &str) -> Result<Arc<dyn Ops>, TensorError> {
        // Stateless: every instance shares the one handle.
        Ok(self.ops.clone())
    }
}
