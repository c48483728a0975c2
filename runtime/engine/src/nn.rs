//! `wasi:nn` (0.2.0-rc-2024-10-28, the version wasmtime 48 ships) over the
//! version's ONNX Runtime sessions, so a module written against the
//! portable ML API scores like one written against `inference`.
//!
//! - `load-by-name(file)` gives the session of a model file shipped with
//!   the version (the one `inference.model.load` gives), nothing else.
//! - `load(bytes, ...)` is refused: a module may not bring models the
//!   version did not ship, nor make the host build sessions per request.
//! - Tensors count against the instance's memory limit as `tensors` do.
//! - FP16, BF16, FP32, FP64, U8, I32 and I64 map to ONNX's types.

use std::sync::Arc;
use std::time::Instant;

use wasmscore_tensor::half::{bf16, f16};
use wasmscore_tensor::{Model, Tensor, TensorData, TensorError, Value};
use wasmtime::component::Resource;

use crate::bindings::nn::{errors, graph, inference, tensor};
use crate::host::HostState;

/// A graph handed to the guest: a session of one of the version's model files.
pub struct NnGraph {
    model: Arc<dyn Model>,
    device: Arc<str>,
}

/// An execution context; the session itself is shared and stateless.
pub struct NnContext {
    model: Arc<dyn Model>,
    device: Arc<str>,
}

/// A wasi-nn tensor: dimensions, element type and little-endian bytes.
#[derive(Debug)]
pub struct NnTensor {
    dims: Vec<u32>,
    ty: tensor::TensorType,
    data: Vec<u8>,
}

/// A wasi-nn error (a resource in this version of the proposal).
#[derive(Debug)]
pub struct NnError {
    code: errors::ErrorCode,
    data: String,
}

type NnResult<T> = wasmtime::Result<Result<T, Resource<NnError>>>;

impl HostState {
    /// An error for the guest. Its text quotes the guest's own strings (a
    /// model's name), so it is cut at `MAX_ERROR` bytes, and it counts
    /// against the instance's memory limit until the guest drops it: a
    /// guest that keeps every error it is given cannot grow the host.
    fn nn_error<T>(&mut self, code: errors::ErrorCode, data: impl Into<String>) -> NnResult<T> {
        let mut data: String = data.into();
        if data.len() > MAX_ERROR {
            let cut = (0..=MAX_ERROR).rev().find(|&i| data.is_char_boundary(i)).unwrap_or(0);
            data.truncate(cut);
            data.push_str(" [cut]");
        }
        self.reserve_tensor_bytes(error_held(&data))
            .map_err(|e| wasmtime::format_err!("{e}"))?;
        let e = self.table_mut().push(NnError { code, data })?;
        Ok(Err(e))
    }

    fn nn_tensor(&mut self, t: NnTensor) -> wasmtime::Result<Resource<NnTensor>> {
        self.reserve_tensor_bytes(held(&t)).map_err(|e| wasmtime::format_err!("{e}"))?;
        Ok(self.table_mut().push(t)?)
    }

    fn nn_forget(&mut self, r: Resource<NnTensor>) -> wasmtime::Result<NnTensor> {
        let t = self.table_mut().delete(r)?;
        self.release_tensor_bytes(held(&t));
        Ok(t)
    }
}

/// The type as the WIT spells it, for messages.
fn type_name(ty: tensor::TensorType) -> &'static str {
    use tensor::TensorType as T;
    match ty {
        T::Fp16 => "FP16",
        T::Fp32 => "FP32",
        T::Fp64 => "FP64",
        T::Bf16 => "BF16",
        T::U8 => "U8",
        T::I32 => "I32",
        T::I64 => "I64",
    }
}

/// The elements' width in bytes.
fn width(ty: tensor::TensorType) -> usize {
    use tensor::TensorType as T;
    match ty {
        T::U8 => 1,
        T::Fp16 | T::Bf16 => 2,
        T::Fp32 | T::I32 => 4,
        T::Fp64 | T::I64 => 8,
    }
}

fn from_bytes<const N: usize, T>(bytes: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
    bytes.chunks_exact(N).map(|c| f(c.try_into().expect("chunks of N"))).collect()
}

fn to_host(t: NnTensor) -> Result<Tensor, TensorError> {
    use tensor::TensorType as T;
    check(&t)?;
    let data = match t.ty {
        T::Fp32 => TensorData::Float32(from_bytes(&t.data, f32::from_le_bytes)),
        T::Fp64 => TensorData::Float64(from_bytes(&t.data, f64::from_le_bytes)),
        T::U8 => TensorData::Uint8(t.data),
        T::I32 => TensorData::Int32(from_bytes(&t.data, i32::from_le_bytes)),
        T::I64 => TensorData::Int64(from_bytes(&t.data, i64::from_le_bytes)),
        T::Fp16 => TensorData::Float16(from_bytes(&t.data, f16::from_le_bytes)),
        T::Bf16 => TensorData::Bfloat16(from_bytes(&t.data, bf16::from_le_bytes)),
    };
    Tensor::new(t.dims.iter().map(|&d| u64::from(d)).collect(), data)
}

fn from_host(name: &str, t: Tensor) -> Result<NnTensor, TensorError> {
    use tensor::TensorType as T;
    let dims = t
        .shape()
        .iter()
        .map(|&d| u32::try_from(d).map_err(|_| TensorError::failed(format!("output {name} has a dimension over u32"))))
        .collect::<Result<Vec<u32>, _>>()?;
    let (ty, data) = match t.data() {
        TensorData::Float32(v) => (T::Fp32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        TensorData::Float64(v) => (T::Fp64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        TensorData::Float16(v) => (T::Fp16, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        TensorData::Bfloat16(v) => (T::Bf16, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        TensorData::Uint8(v) => (T::U8, v.clone()),
        TensorData::Int32(v) => (T::I32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        TensorData::Int64(v) => (T::I64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        other => {
            return Err(TensorError::failed(format!(
                "output {name} is {}, which wasi-nn has no type for; use the wasmscore inference import for this model",
                other.dtype().name()
            )))
        }
    };
    Ok(NnTensor { dims, ty, data })
}

fn code_of(e: &TensorError) -> errors::ErrorCode {
    match e {
        TensorError::BadInput(_) => errors::ErrorCode::InvalidArgument,
        TensorError::Unsupported(_) => errors::ErrorCode::UnsupportedOperation,
        TensorError::Failed(_) => errors::ErrorCode::RuntimeError,
    }
}

impl graph::Host for HostState {
    fn load(
        &mut self,
        builders: Vec<graph::GraphBuilder>,
        encoding: graph::GraphEncoding,
        _target: graph::ExecutionTarget,
    ) -> NnResult<Resource<NnGraph>> {
        let bytes: usize = builders.iter().map(Vec::len).sum();
        self.nn_error(
            errors::ErrorCode::Security,
            format!(
                "loading a graph from bytes ({bytes} bytes, encoding {}) is refused: ship the model with the version \
                 (`wasmscore deploy --model FILE`) and use load-by-name(\"FILE\")",
                format!("{encoding:?}").to_lowercase()
            ),
        )
    }

    fn load_by_name(&mut self, name: String) -> NnResult<Resource<NnGraph>> {
        let version = self.version.clone();
        let device = version.model_device.clone();
        match version.session_on(&name, &device) {
            Ok(model) => Ok(Ok(self.table_mut().push(NnGraph { model, device })?)),
            Err(e) => self.nn_error(errors::ErrorCode::NotFound, e.to_string()),
        }
    }
}

impl graph::HostGraph for HostState {
    fn init_execution_context(&mut self, g: Resource<NnGraph>) -> NnResult<Resource<NnContext>> {
        let g = self.table_mut().get(&g)?;
        let ctx = NnContext {
            model: g.model.clone(),
            device: g.device.clone(),
        };
        Ok(Ok(self.table_mut().push(ctx)?))
    }

    fn drop(&mut self, g: Resource<NnGraph>) -> wasmtime::Result<()> {
        self.table_mut().delete(g)?;
        Ok(())
    }
}

impl inference::Host for HostState {}

impl inference::HostGraphExecutionContext for HostState {
    fn compute(&mut self, ctx: Resource<NnContext>, inputs: Vec<inference::NamedTensor>) -> NnResult<Vec<inference::NamedTensor>> {
        let (model, device) = {
            let c = self.table_mut().get(&ctx)?;
            (c.model.clone(), c.device.clone())
        };
        // The guest hands its input tensors over: all of them leave the
        // table here, before anything can fail.
        let mut given = Vec::with_capacity(inputs.len());
        for (name, r) in inputs {
            given.push((name, self.nn_forget(r)?));
        }
        let mut named: Vec<(String, Value)> = Vec::with_capacity(given.len());
        for (name, t) in given {
            if named.iter().any(|(n, _)| *n == name) {
                return self.nn_error(errors::ErrorCode::InvalidArgument, format!("input {name} is given twice"));
            }
            match to_host(t) {
                Ok(t) => named.push((name, Value::Host(t))),
                Err(e) => return self.nn_error(code_of(&e), format!("input {name}: {e}")),
            }
        }
        let refs: Vec<(&str, &Value)> = named.iter().map(|(n, v)| (n.as_str(), v)).collect();
        let started = Instant::now();
        // A batched model holds a call back no longer than its deadline.
        let results = model.run_values_by(&refs, &[], self.deadline);
        self.version.usage.inference(&device, started.elapsed());
        let results = match results {
            Ok(r) => r,
            Err(e) => return self.nn_error(code_of(&e), e.to_string()),
        };
        let mut converted = Vec::with_capacity(results.len());
        for (name, v) in results {
            match v.into_host().and_then(|t| from_host(&name, t)) {
                Ok(t) => converted.push((name, t)),
                Err(e) => return self.nn_error(code_of(&e), e.to_string()),
            }
        }
        let mut out = Vec::with_capacity(converted.len());
        for (name, t) in converted {
            match self.nn_tensor(t) {
                Ok(r) => out.push((name, r)),
                Err(e) => {
                    // Past the memory limit: give back what was handed out.
                    for (_, r) in out {
                        self.nn_forget(r)?;
                    }
                    return Err(e);
                }
            }
        }
        Ok(Ok(out))
    }

    fn drop(&mut self, ctx: Resource<NnContext>) -> wasmtime::Result<()> {
        self.table_mut().delete(ctx)?;
        Ok(())
    }
}

impl tensor::Host for HostState {}

impl tensor::HostTensor for HostState {
    fn new(&mut self, dims: Vec<u32>, ty: tensor::TensorType, data: Vec<u8>) -> wasmtime::Result<Resource<NnTensor>> {
        // The constructor cannot return an error in this WIT: a tensor whose
        // bytes do not match its dimensions is kept as given and refused by
        // `compute` with invalid-argument, as other hosts do.
        let t = NnTensor { dims, ty, data };
        self.nn_tensor(t)
    }

    fn dimensions(&mut self, t: Resource<NnTensor>) -> wasmtime::Result<Vec<u32>> {
        Ok(self.table_mut().get(&t)?.dims.clone())
    }

    fn ty(&mut self, t: Resource<NnTensor>) -> wasmtime::Result<tensor::TensorType> {
        Ok(self.table_mut().get(&t)?.ty)
    }

    fn data(&mut self, t: Resource<NnTensor>) -> wasmtime::Result<Vec<u8>> {
        Ok(self.table_mut().get(&t)?.data.clone())
    }

    fn drop(&mut self, t: Resource<NnTensor>) -> wasmtime::Result<()> {
        self.nn_forget(t)?;
        Ok(())
    }
}

impl errors::Host for HostState {}

impl errors::HostError for HostState {
    fn code(&mut self, e: Resource<NnError>) -> wasmtime::Result<errors::ErrorCode> {
        Ok(self.table_mut().get(&e)?.code)
    }

    fn data(&mut self, e: Resource<NnError>) -> wasmtime::Result<String> {
        Ok(self.table_mut().get(&e)?.data.clone())
    }

    fn drop(&mut self, e: Resource<NnError>) -> wasmtime::Result<()> {
        let e = self.table_mut().delete(e)?;
        self.release_tensor_bytes(error_held(&e.data));
        Ok(())
    }
}

/// An error's text, at most (the rest is cut).
const MAX_ERROR: usize = 1024;

/// What an error holds on the host, counted as a tensor is.
fn error_held(data: &str) -> u64 {
    (data.len() + crate::host::HANDLE_BYTES) as u64
}

/// What a wasi-nn tensor holds on the host, counted against the instance's
/// memory limit: its data, its dimensions and the handle's own share.
fn held(t: &NnTensor) -> u64 {
    (t.data.len() + 4 * t.dims.len() + crate::host::HANDLE_BYTES) as u64
}

/// A tensor's bytes must match its dimensions and type.
fn check(t: &NnTensor) -> Result<(), TensorError> {
    let w = width(t.ty);
    let elems = t.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(u64::from(d)));
    if elems.and_then(|e| e.checked_mul(w as u64)) != Some(t.data.len() as u64) {
        return Err(TensorError::bad(format!(
            "a {} tensor of dimensions {:?} needs {} bytes, it has {}",
            type_name(t.ty),
            t.dims,
            elems.map_or(u64::MAX, |e| e.saturating_mul(w as u64)),
            t.data.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_through_host_tensors() {
        let t = NnTensor {
            dims: vec![2, 2],
            ty: tensor::TensorType::Fp32,
            data: [1.0f32, -2.5, 3.25, 0.0].iter().flat_map(|x| x.to_le_bytes()).collect(),
        };
        check(&t).unwrap();
        let host = to_host(t).unwrap();
        assert_eq!(host.shape(), &[2, 2]);
        assert_eq!(host.data(), &TensorData::Float32(vec![1.0, -2.5, 3.25, 0.0]));
        let back = from_host("y", host).unwrap();
        assert_eq!(back.dims, vec![2, 2]);
        assert_eq!(back.data.len(), 16);
        let i64s = from_host("l", Tensor::new(vec![2], TensorData::Int64(vec![-1, 7])).unwrap()).unwrap();
        assert_eq!(to_host(i64s).unwrap().data(), &TensorData::Int64(vec![-1, 7]));
    }

    #[test]
    fn errors_are_cut_and_count_against_the_memory_limit_until_dropped() {
        use errors::HostError as _;
        use graph::Host as _;
        let ctx = crate::host::VersionContext::new(
            "e",
            "v",
            std::collections::HashMap::new(),
            wasmscore_tensor::Devices::new(),
            "cpu",
            64 << 10,
        );
        let mut s = HostState::new(std::sync::Arc::new(ctx));
        // A guest that asks for a model by a 1 MiB name and keeps the error.
        let name = "x".repeat(1 << 20);
        let kept: Vec<_> = (0..64)
            .map_while(|_| s.load_by_name(name.clone()).ok().map(|r| r.unwrap_err()))
            .collect();
        assert!(kept.len() < 64, "64 errors of a 1 MiB name kept within a 64 KiB limit");
        let first = s.data(Resource::new_borrow(kept[0].rep())).unwrap();
        assert!(first.len() <= MAX_ERROR + 6 && first.ends_with(" [cut]"), "{}", first.len());
        for e in kept {
            s.drop(e).unwrap();
        }
        assert!(s.load_by_name(name).unwrap().is_err(), "dropped errors give their bytes back");
    }

    #[test]
    fn wrong_sizes_are_refused_and_half_precision_converts() {
        let short = NnTensor {
            dims: vec![3],
            ty: tensor::TensorType::Fp32,
            data: vec![0; 8],
        };
        assert!(check(&short).unwrap_err().to_string().contains("needs 12 bytes, it has 8"));
        let half = NnTensor {
            dims: vec![2],
            ty: tensor::TensorType::Fp16,
            data: vec![0x00, 0x3c, 0x00, 0xc0],
        };
        let host = to_host(half).unwrap();
        assert_eq!(host.data(), &TensorData::Float16(vec![f16::ONE, f16::from_f32(-2.0)]));
        assert_eq!(from_host("y", host).unwrap().data, vec![0x00, 0x3c, 0x00, 0xc0]);
        let strings = Tensor::new(vec![1], TensorData::String(vec!["a".into()])).unwrap();
        assert!(from_host("label", strings).unwrap_err().to_string().contains("no type for"));
    }
}
