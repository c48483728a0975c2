//! Host-side tensors, the `Device` seam and the CPU reference ops.
//!
//! This crate is hop 5 of the request path: what the guest's `tensors`,
//! `inference` and `ops` imports work on. It defines the types and the small
//! trait set every device implements ([`Device`], [`Model`], [`Ops`]) and a
//! plain-Rust CPU implementation of the single ops. It does not load ONNX
//! models itself: that is a device's job (`wasmscore-device-ort` for CPU).

mod cpu_ops;
mod device;
mod tensor;

pub use cpu_ops::CpuOps;
pub use device::{Device, Devices, Model, Ops, TensorInfo};
pub use tensor::{DType, Tensor, TensorData};

/// Errors from tensor work. The split is the one the guest sees:
/// the caller's fault (`BadInput`, HTTP 400) or not (`Failed`, HTTP 500).
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum TensorError {
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    Failed(String),
}

impl TensorError {
    pub fn bad(msg: impl Into<String>) -> Self {
        TensorError::BadInput(msg.into())
    }
    pub fn failed(msg: impl Into<String>) -> Self {
        TensorError::Failed(msg.into())
    }
}
