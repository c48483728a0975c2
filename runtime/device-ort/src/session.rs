//! One ONNX Runtime session per (model, device), shared by every replica.
//!
//! `ort` makes `Session::run` take `&mut self` out of caution about some
//! execution providers. ONNX Runtime documents `OrtApi::Run` on one session as
//! safe to call from many threads at once, and the CPU provider is the case it
//! was designed for, so for the CPU device we call `Run` through the C API on
//! the shared session: replicas of a version never wait on each other here.
//! A device whose provider is not safe this way (CUDA, later) must give each
//! replica its own binding instead.

use std::ffi::{c_char, CString};
use std::ptr::{self, NonNull};

use ort::session::Session;
use ort::value::{DynValue, TensorElementType, TensorRef, ValueType};
use ort::AsPointer;
use std::sync::Arc;

use wasmscore_tensor::{DType, Model, Resident, Tensor, TensorData, TensorError, TensorInfo, Value};

/// A loaded ONNX model.
pub struct OrtModel {
    file: Arc<str>,
    session: Session,
    inputs: Vec<TensorInfo>,
    outputs: Vec<TensorInfo>,
    /// NUL-terminated names, made once so `run` does not allocate them.
    input_names: Vec<CString>,
    output_names: Vec<CString>,
    /// The same names, shared with the outputs the device keeps.
    output_labels: Vec<Arc<str>>,
}

// SAFETY: `Session` is Send + Sync in `ort`; the CStrings are immutable after load.
unsafe impl Sync for OrtModel {}

fn dtype_of(ty: TensorElementType) -> Option<DType> {
    Some(match ty {
        TensorElementType::Float32 => DType::Float32,
        TensorElementType::Float64 => DType::Float64,
        TensorElementType::Float16 => DType::Float16,
        TensorElementType::Bfloat16 => DType::Bfloat16,
        TensorElementType::Int8 => DType::Int8,
        TensorElementType::Int16 => DType::Int16,
        TensorElementType::Int32 => DType::Int32,
        TensorElementType::Int64 => DType::Int64,
        TensorElementType::Uint8 => DType::Uint8,
        TensorElementType::Uint16 => DType::Uint16,
        TensorElementType::Uint32 => DType::Uint32,
        TensorElementType::Uint64 => DType::Uint64,
        TensorElementType::Bool => DType::Bool,
        TensorElementType::String => DType::String,
        _ => return None,
    })
}

fn info(file: &str, name: &str, vt: &ValueType) -> Result<TensorInfo, TensorError> {
    match vt {
        ValueType::Tensor { ty, shape, .. } => Ok(TensorInfo {
            name: name.to_string(),
            dtype: dtype_of(*ty).ok_or_else(|| {
                TensorError::failed(format!("{file}: {name} has element type {ty:?}, which wasmscore does not support yet"))
            })?,
            shape: shape.iter().copied().collect(),
        }),
        other => Err(TensorError::failed(format!(
            "{file}: {name} is not a tensor ({other:?}); export the model with tensor outputs only (for scikit-learn classifiers: options={{'zipmap': False}})"
        ))),
    }
}

/// A session's inputs and outputs.
pub(crate) fn describe(file: &str, session: &Session) -> Result<(Vec<TensorInfo>, Vec<TensorInfo>), TensorError> {
    let list = |v: &[ort::value::Outlet]| v.iter().map(|o| info(file, o.name(), o.dtype())).collect::<Result<Vec<_>, _>>();
    Ok((list(session.inputs())?, list(session.outputs())?))
}

impl OrtModel {
    /// Makes the session. Errors name the file.
    pub fn load(env: &ort::environment::Environment, file: &str, bytes: &[u8], intra_threads: usize) -> Result<Self, TensorError> {
        let fail = |e: String| {
            let hint = if e.contains("locale") {
                " (this model needs the en_US.UTF-8 locale, e.g. for StringNormalizer; install it with `apt-get install locales` and generate en_US.UTF-8)"
            } else {
                ""
            };
            TensorError::failed(format!("model {file}: {e}{hint}"))
        };
        let mut builder = Session::builder(env)
            .map_err(|e| fail(e.to_string()))?
            .with_intra_threads(intra_threads)
            .map_err(|e| fail(e.to_string()))?
            .with_inter_threads(1)
            .map_err(|e| fail(e.to_string()))?;
        // No CPU memory arena: ONNX Runtime's arena keeps the most a run ever
        // needed for the session's life (one request of 500,000 iris rows
        // left 20 MiB resident for good). Without it a run's tensors are
        // malloc'd and freed with the run, and glibc's malloc hands the big
        // ones back (runtime/cli/src/alloc.rs). Shrinking the arena after
        // each run instead cost iris 5.6% more CPU per request; this cost
        // none, and the MLP of bench/batching.sh 6% less (BENCHMARKS.md,
        // "one big request").
        // SAFETY: the builder's options pointer is valid and ours until
        // commit; the call only sets a flag in them.
        if let Some(e) = status_message(unsafe { (ort::api().DisableCpuMemArena)(builder.ptr_mut()) }) {
            return Err(fail(e));
        }
        let session = builder.commit_from_memory(bytes).map_err(|e| fail(e.to_string()))?;
        let (inputs, outputs) = describe(file, &session)?;
        let cstr = |s: &str| CString::new(s).map_err(|_| TensorError::failed(format!("{file}: a tensor name has a NUL byte")));
        let input_names = inputs.iter().map(|i| cstr(&i.name)).collect::<Result<_, _>>()?;
        let output_names = outputs.iter().map(|o| cstr(&o.name)).collect::<Result<_, _>>()?;
        Ok(OrtModel {
            file: Arc::from(file),
            output_labels: outputs.iter().map(|o| Arc::from(o.name.as_str())).collect(),
            session,
            inputs,
            outputs,
            input_names,
            output_names,
        })
    }

    fn check_input(&self, name: &str, dtype: DType, shape: &[u64]) -> Result<usize, TensorError> {
        check_input(&self.file, &self.inputs, name, dtype, shape)
    }
}

/// Where input `name` is among the model's inputs, if `t` fits it.
pub(crate) fn check_input(file: &str, inputs: &[TensorInfo], name: &str, dtype: DType, shape: &[u64]) -> Result<usize, TensorError> {
    let idx = inputs.iter().position(|i| i.name == name).ok_or_else(|| {
        TensorError::bad(format!(
            "{file} has no input named {name:?}; its inputs are {:?}",
            inputs.iter().map(|i| &i.name).collect::<Vec<_>>()
        ))
    })?;
    let want = &inputs[idx];
    if want.dtype != dtype {
        return Err(TensorError::bad(format!(
            "{file}: input {name} takes {}, got {}",
            want.dtype.name(),
            dtype.name()
        )));
    }
    let shape_ok = want.shape.len() == shape.len() && want.shape.iter().zip(shape).all(|(&w, &g)| w < 0 || w as u64 == g);
    if !shape_ok {
        return Err(TensorError::bad(format!(
            "{file}: input {name} takes shape {:?} (-1 = any), got {shape:?}",
            want.shape
        )));
    }
    Ok(idx)
}

/// An ONNX Runtime value made from a host tensor, borrowing its data where it can.
pub(crate) enum Input<'a> {
    Ref(DynValueRef<'a>),
    Owned(DynValue),
    /// A value the device already holds (a model output it kept).
    Kept(&'a DynValue),
}
type DynValueRef<'a> = ort::value::ValueRef<'a, ort::value::DynValueTypeMarker>;

impl Input<'_> {
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn value(&self) -> &ort::value::DynValue {
        match self {
            Input::Ref(v) => v,
            Input::Owned(v) => v,
            Input::Kept(v) => v,
        }
    }
    fn ptr(&self) -> *const ort::sys::OrtValue {
        self.value().ptr()
    }
}

/// `owned`: a copy of the data instead of a view, for an IoBinding. ort
/// 2.0.0-rc.15's `IoBinding::bind_input` copies a borrowed view through its
/// identity session while it holds that session cache's lock, and the copy
/// binds the view again: the thread waits on itself (found on the CUDA
/// device, the one device that binds). An owned value is bound as it is.
pub(crate) fn to_ort(t: &Tensor, owned: bool) -> Result<Input<'_>, ort::Error> {
    let shape: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
    macro_rules! view {
        ($v:expr) => {
            if owned {
                Input::Owned(ort::value::Tensor::from_array((shape, $v.clone()))?.into_dyn())
            } else {
                Input::Ref(TensorRef::from_array_view((shape, $v.as_slice()))?.into_dyn())
            }
        };
    }
    Ok(match t.data() {
        TensorData::Float32(v) => view!(v),
        TensorData::Float64(v) => view!(v),
        TensorData::Float16(v) => view!(v),
        TensorData::Bfloat16(v) => view!(v),
        TensorData::Int8(v) => view!(v),
        TensorData::Int16(v) => view!(v),
        TensorData::Int32(v) => view!(v),
        TensorData::Int64(v) => view!(v),
        TensorData::Uint8(v) => view!(v),
        TensorData::Uint16(v) => view!(v),
        TensorData::Uint32(v) => view!(v),
        TensorData::Uint64(v) => view!(v),
        TensorData::Bool(v) => view!(v),
        TensorData::String(_) | TensorData::Bytes(_) => {
            Input::Owned(string_tensor(&shape, &t.data().byte_strings().expect("a string tensor"))?)
        }
    })
}

/// An ONNX Runtime string tensor from its elements' bytes, which may hold
/// any byte: ort's `from_string_array` copies each element into a C
/// string, which cannot hold a NUL, so it refuses binary data (an image in
/// an OIP BYTES tensor). ONNX Runtime holds each element as a C++ string of
/// the length given here.
fn string_tensor(shape: &[i64], elements: &[&[u8]]) -> Result<DynValue, ort::Error> {
    let mut allocator = ort::memory::Allocator::default();
    let mut value: *mut ort::sys::OrtValue = ptr::null_mut();
    let ty = ort::sys::ONNXTensorElementDataType::ONNX_TENSOR_ELEMENT_DATA_TYPE_STRING;
    // SAFETY: ONNX Runtime's C API as documented: the value is created with the
    // default allocator, owned by the DynValue from here on (released on drop),
    // and each element's buffer is `e.len()` bytes long.
    unsafe {
        ort::Error::result_from_status(ort::ortsys![CreateTensorAsOrtValue](
            allocator.ptr_mut(),
            shape.as_ptr(),
            shape.len(),
            ty,
            &mut value,
        ))?;
        let owned = NonNull::new(value).ok_or_else(|| ort::Error::new("ONNX Runtime made no string tensor"))?;
        let out = DynValue::from_ptr(owned, Some(&allocator));
        for (i, e) in elements.iter().enumerate() {
            let mut buf: *mut c_char = ptr::null_mut();
            ort::Error::result_from_status(ort::ortsys![GetResizedStringTensorElementBuffer](value, i, e.len(), &mut buf))?;
            if !e.is_empty() {
                ptr::copy_nonoverlapping(e.as_ptr(), buf.cast::<u8>(), e.len());
            }
        }
        Ok(out)
    }
}

/// A string output's elements as bytes (ort's `try_extract_strings`
/// refuses any that is not UTF-8).
fn string_elements(v: &DynValue, count: usize) -> Result<Vec<Vec<u8>>, ort::Error> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let mut total = 0usize;
    // SAFETY: `v` is a CPU string tensor of `count` elements (checked by the
    // caller); the buffers are the sizes ONNX Runtime asked for.
    unsafe {
        ort::Error::result_from_status(ort::ortsys![GetStringTensorDataLength](v.ptr(), &mut total))?;
        let mut content = vec![0u8; total];
        let mut offsets = vec![0usize; count + 1];
        ort::Error::result_from_status(ort::ortsys![GetStringTensorContent](
            v.ptr(),
            content.as_mut_ptr().cast(),
            total,
            offsets.as_mut_ptr(),
            count,
        ))?;
        offsets[count] = total;
        Ok(offsets.windows(2).map(|w| content[w[0]..w[1]].to_vec()).collect())
    }
}

pub(crate) fn from_ort(file: &str, name: &str, v: &DynValue) -> Result<Tensor, TensorError> {
    let err = |e: ort::Error| TensorError::failed(format!("{file}: reading output {name}: {e}"));
    let ValueType::Tensor { ty, shape: dims, .. } = v.dtype() else {
        return Err(TensorError::failed(format!("{file}: output {name} is not a tensor")));
    };
    macro_rules! grab {
        ($t:ty, $variant:ident) => {{
            let (shape, data) = v.try_extract_tensor::<$t>().map_err(err)?;
            (
                shape.iter().map(|&d| d as u64).collect::<Vec<u64>>(),
                TensorData::$variant(data.to_vec()),
            )
        }};
    }
    let (shape, data) = match ty {
        TensorElementType::Float32 => grab!(f32, Float32),
        TensorElementType::Float64 => grab!(f64, Float64),
        TensorElementType::Float16 => grab!(wasmscore_tensor::half::f16, Float16),
        TensorElementType::Bfloat16 => grab!(wasmscore_tensor::half::bf16, Bfloat16),
        TensorElementType::Int8 => grab!(i8, Int8),
        TensorElementType::Int16 => grab!(i16, Int16),
        TensorElementType::Int32 => grab!(i32, Int32),
        TensorElementType::Int64 => grab!(i64, Int64),
        TensorElementType::Uint8 => grab!(u8, Uint8),
        TensorElementType::Uint16 => grab!(u16, Uint16),
        TensorElementType::Uint32 => grab!(u32, Uint32),
        TensorElementType::Uint64 => grab!(u64, Uint64),
        TensorElementType::Bool => grab!(bool, Bool),
        TensorElementType::String => {
            let shape: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
            let count = shape.iter().product::<u64>() as usize;
            (shape, TensorData::from_byte_strings(string_elements(v, count).map_err(err)?))
        }
        other => {
            return Err(TensorError::failed(format!(
                "{file}: output {name} has unsupported element type {other:?}"
            )))
        }
    };
    Tensor::new(shape, data)
}

/// A model output that ONNX Runtime keeps: on the CPU device in host
/// memory (reading it is the copy `run` would have made anyway), on cuda in
/// GPU memory. A model on the same device takes it as an input as it is.
pub struct OrtResident {
    file: Arc<str>,
    name: Arc<str>,
    device: &'static str,
    dtype: DType,
    shape: Vec<u64>,
    pub(crate) value: DynValue,
}

impl OrtResident {
    /// Wraps an output; strings (and types we do not map) go to the host at once.
    pub(crate) fn wrap(file: &Arc<str>, name: &Arc<str>, device: &'static str, value: DynValue) -> Result<Value, TensorError> {
        let ValueType::Tensor { ty, shape, .. } = value.dtype() else {
            return Ok(Value::Host(from_ort(file, name, &value)?));
        };
        match dtype_of(*ty) {
            Some(dtype) if dtype != DType::String => Ok(Value::Resident(Arc::new(OrtResident {
                file: file.clone(),
                name: name.clone(),
                device,
                dtype,
                shape: shape.iter().map(|d| *d as u64).collect(),
                value,
            }))),
            _ => Ok(Value::Host(from_ort(file, name, &value)?)),
        }
    }

    /// The kept value when `device` is the one holding it.
    pub(crate) fn on<'a>(v: &'a Value, device: &str) -> Option<&'a DynValue> {
        match v {
            Value::Resident(r) if r.device() == device => r.as_any().downcast_ref::<OrtResident>().map(|o| &o.value),
            _ => None,
        }
    }
}

impl Resident for OrtResident {
    fn device(&self) -> &str {
        self.device
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn shape(&self) -> &[u64] {
        &self.shape
    }
    fn to_host(&self) -> Result<Tensor, TensorError> {
        if self.device == "cpu" {
            return from_ort(&self.file, &self.name, &self.value);
        }
        let fail = |e: ort::Error| TensorError::failed(format!("{}: copying output {} off {}: {e}", self.file, self.name, self.device));
        let tensor = self.value.view().downcast::<ort::value::DynTensorValueType>().map_err(fail)?;
        let host = tensor.to(ort::memory::AllocationDevice::CPU, 0).map_err(fail)?.into_dyn();
        from_ort(&self.file, &self.name, &host)
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Host copies of the inputs that another device than `device` keeps (read
/// before a run, so the copies outlive the values made from them).
pub(crate) fn host_copies(inputs: &[(&str, &Value)], device: &str) -> Result<Vec<Option<Tensor>>, TensorError> {
    inputs
        .iter()
        .map(|(_, v)| match v {
            Value::Resident(r) if OrtResident::on(v, device).is_none() => r.to_host().map(Some),
            _ => Ok(None),
        })
        .collect()
}

/// What a model on `device` is given for `v`: the value it keeps as it is,
/// else a view of the host data (or of its host copy); `owned`: a copy of
/// it instead of a view (see [`to_ort`]).
pub(crate) fn feed<'a>(v: &'a Value, copy: &'a Option<Tensor>, device: &str, owned: bool) -> Result<Input<'a>, ort::Error> {
    match (OrtResident::on(v, device), copy, v) {
        (Some(kept), _, _) => Ok(Input::Kept(kept)),
        (None, Some(t), _) | (None, None, Value::Host(t)) => to_ort(t, owned),
        (None, None, Value::Resident(_)) => unreachable!("host_copies made a copy"),
    }
}

impl OrtModel {
    /// Runs the session through the C API (see the module comment) and
    /// returns the outputs as ONNX Runtime values.
    /// `inputs` pairs each value with its index among the model's inputs
    /// (from `check_input`).
    /// Outputs come back with their index among the model's outputs.
    fn run_ort(&self, inputs: &[(usize, Input<'_>)], wanted: &[&str]) -> Result<Vec<(usize, DynValue)>, TensorError> {
        let in_names: Vec<*const c_char> = inputs.iter().map(|(idx, _)| self.input_names[*idx].as_ptr()).collect();
        for (k, want) in self.inputs.iter().enumerate() {
            if !inputs.iter().any(|(idx, _)| *idx == k) {
                return Err(TensorError::bad(format!("{}: missing input {:?}", self.file, want.name)));
            }
        }
        let out_idx: Vec<usize> = if wanted.is_empty() {
            (0..self.outputs.len()).collect()
        } else {
            wanted
                .iter()
                .map(|w| {
                    self.outputs
                        .iter()
                        .position(|o| o.name == *w)
                        .ok_or_else(|| TensorError::bad(format!("{} has no output named {w:?}", self.file)))
                })
                .collect::<Result<_, _>>()?
        };
        let out_names: Vec<*const c_char> = out_idx.iter().map(|&i| self.output_names[i].as_ptr()).collect();
        let in_ptrs: Vec<*const ort::sys::OrtValue> = inputs.iter().map(|(_, v)| v.ptr()).collect();
        let mut out_ptrs: Vec<*mut ort::sys::OrtValue> = vec![ptr::null_mut(); out_names.len()];

        // SAFETY: the session outlives the call; every pointer array has the
        // length passed with it; ONNX Runtime allows concurrent Run on a session
        // (see the module comment).
        let status = unsafe {
            (ort::api().Run)(
                self.session.ptr().cast_mut(),
                ptr::null(),
                in_names.as_ptr(),
                in_ptrs.as_ptr(),
                in_ptrs.len(),
                out_names.as_ptr(),
                out_names.len(),
                out_ptrs.as_mut_ptr(),
            )
        };
        if let Some(msg) = status_message(status) {
            // Outputs are not filled on failure.
            return Err(TensorError::bad(format!("{}: {msg}", self.file)));
        }
        let mut outs = Vec::with_capacity(out_ptrs.len());
        for (k, p) in out_ptrs.into_iter().enumerate() {
            let p = NonNull::new(p).ok_or_else(|| TensorError::failed(format!("{}: ONNX Runtime returned no output", self.file)))?;
            // SAFETY: `p` is an OrtValue that Run just gave us to own, allocated
            // by the session's allocator.
            let value: DynValue = unsafe { DynValue::from_ptr(p, Some(self.session.allocator())) };
            outs.push((out_idx[k], value));
        }
        Ok(outs)
    }
}

impl Model for OrtModel {
    fn inputs(&self) -> &[TensorInfo] {
        &self.inputs
    }
    fn outputs(&self) -> &[TensorInfo] {
        &self.outputs
    }

    fn run(&self, inputs: &[(&str, &Tensor)], wanted: &[&str]) -> Result<Vec<(String, Tensor)>, TensorError> {
        let mut values = Vec::with_capacity(inputs.len());
        for (name, t) in inputs {
            let idx = self.check_input(name, t.dtype(), t.shape())?;
            values.push((
                idx,
                to_ort(t, false).map_err(|e| TensorError::bad(format!("{}: input {name}: {e}", self.file)))?,
            ));
        }
        self.run_ort(&values, wanted)?
            .into_iter()
            .map(|(k, v)| {
                let name = &self.outputs[k].name;
                Ok((name.clone(), from_ort(&self.file, name, &v)?))
            })
            .collect()
    }

    /// Outputs stay ONNX Runtime values (no copy until read); inputs that
    /// an earlier run on this device kept go in as they are.
    fn run_values(&self, inputs: &[(&str, &Value)], wanted: &[&str]) -> Result<Vec<(String, Value)>, TensorError> {
        // Values kept by another device are read into host memory first.
        let mut idx = Vec::with_capacity(inputs.len());
        for (name, v) in inputs {
            idx.push(self.check_input(name, v.dtype(), v.shape())?);
        }
        let copies = host_copies(inputs, "cpu")?;
        let mut values = Vec::with_capacity(inputs.len());
        for (((name, v), copy), idx) in inputs.iter().zip(&copies).zip(idx) {
            values.push((
                idx,
                feed(v, copy, "cpu", false).map_err(|e| TensorError::bad(format!("{}: input {name}: {e}", self.file)))?,
            ));
        }
        self.run_ort(&values, wanted)?
            .into_iter()
            .map(|(k, v)| {
                let name = &self.output_labels[k];
                Ok((name.to_string(), OrtResident::wrap(&self.file, name, "cpu", v)?))
            })
            .collect()
    }
}

/// Takes an OrtStatus: None when it is OK, else its message (and frees it).
fn status_message(status: ort::sys::OrtStatusPtr) -> Option<String> {
    let raw = status.0;
    if raw.is_null() {
        return None;
    }
    // SAFETY: a non-null status from the API; we read its message and release it once.
    unsafe {
        let api = ort::api();
        let msg = std::ffi::CStr::from_ptr((api.GetErrorMessage)(raw)).to_string_lossy().into_owned();
        (api.ReleaseStatus)(raw);
        Some(msg)
    }
}
