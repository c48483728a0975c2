//! Host-side tensors, the `Device` seam and the CPU reference ops.
//!
//! This crate is hop 5 of the request path: what the guest's `tensors`,
//! `inference` and `ops` imports work on. It defines the types and the small
//! trait set every device implements ([`Device`], [`Model`], [`Ops`]) and a
//! plain-Rust CPU implementation of the single ops. It does not load ONNX
//! models itself: that is a device's job (`wasmscore-device-ort` for CPU).

pub mod batch;
mod cpu_ops;
mod device;
mod tensor;

pub use cpu_ops::{bias_dims, conv2d_dims, gemm_dims, Conv2dDims, CpuOps, MAX_GEMM_WORK, MAX_OUTPUT_ELEMENTS};
pub use device::{Device, DeviceKind, Devices, Model, OpCost, Ops, Resident, TensorInfo, Value};
/// The 16-bit float types of [`TensorData::Float16`] and [`TensorData::Bfloat16`].
pub use half;
pub use tensor::{element_count, DType, Tensor, TensorData, MAX_RANK};

/// Errors from tensor work. The split is the one the guest sees:
/// the caller's fault (`BadInput`, HTTP 400) or not (`Failed`, HTTP 500).
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum TensorError {
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    Failed(String),
    /// The device cannot do this op (or this dtype or shape of it). Not the
    /// client's fault; the guest sees `failed` unless the version chose a
    /// fallback device.
    #[error("{0}")]
    Unsupported(String),
}

impl TensorError {
    pub fn bad(msg: impl Into<String>) -> Self {
        TensorError::BadInput(msg.into())
    }
    pub fn failed(msg: impl Into<String>) -> Self {
        TensorError::Failed(msg.into())
    }
}

/// Fuzz entry points (fuzz/ and the corpus replay test in tests/).
pub mod fuzzing {
    use crate::{CpuOps, Ops, Tensor, TensorData};

    /// Bytes -> a tensor as a guest could make it (any dtype, any shape,
    /// data that may not match it) -> the CPU ops on it. Must never panic,
    /// hang or allocate beyond what the data itself holds.
    pub fn tensors_and_ops(data: &[u8]) {
        let mut it = data.iter().copied();
        let mut next = || it.next().unwrap_or(0);
        let tensor = |next: &mut dyn FnMut() -> u8| -> Option<Tensor> {
            let dtype = next() % 12;
            let rank = next() % 5;
            let shape: Vec<u64> = (0..rank)
                .map(|_| match next() {
                    // Hostile dimensions: huge or overflowing products.
                    250 => u64::MAX,
                    251 => 1 << 40,
                    252 => 0,
                    b => u64::from(b % 9),
                })
                .collect();
            let n = usize::from(next() % 64);
            let vals: Vec<u8> = (0..n).map(|_| next()).collect();
            let f = |b: &u8| f32::from(*b) - 128.0;
            let d = match dtype {
                0 => TensorData::Float32(vals.iter().map(f).collect()),
                1 => TensorData::Float64(vals.iter().map(|b| f64::from(f(b))).collect()),
                2 => TensorData::Int8(vals.iter().map(|b| *b as i8).collect()),
                3 => TensorData::Int16(vals.iter().map(|b| i16::from(*b)).collect()),
                4 => TensorData::Int32(vals.iter().map(|b| i32::from(*b)).collect()),
                5 => TensorData::Int64(vals.iter().map(|b| i64::from(*b)).collect()),
                6 => TensorData::Uint8(vals),
                7 => TensorData::Uint16(vals.iter().map(|b| u16::from(*b)).collect()),
                8 => TensorData::Uint32(vals.iter().map(|b| u32::from(*b)).collect()),
                9 => TensorData::Uint64(vals.iter().map(|b| u64::from(*b)).collect()),
                10 => TensorData::Bool(vals.iter().map(|b| b % 2 == 1).collect()),
                _ => TensorData::String(vals.iter().map(|b| b.to_string()).collect()),
            };
            Tensor::new(shape, d).ok()
        };
        let a = tensor(&mut next);
        let b = tensor(&mut next);
        let axis = i32::from(next() as i8);
        let (ta, tb) = (next() % 2 == 1, next() % 2 == 1);
        let ops = CpuOps;
        if let Some(a) = &a {
            let _ = ops.relu(a);
            let _ = ops.softmax(a, axis);
            let _ = a.data().byte_size();
            if let Some(b) = &b {
                let _ = ops.matmul(a, b);
                let _ = ops.add(a, b);
                let _ = ops.gemm(a, b, None, 1.0, 0.0, ta, tb);
                let _ = ops.gemm(a, b, Some(a), 0.5, 2.0, ta, tb);
                let strides = [u32::from(next() % 4), u32::from(next() % 4)];
                let pads = [u32::from(next() % 3), u32::from(next())];
                let _ = ops.conv2d(a, b, None, strides, pads);
            }
        }
    }
}
