//! The built-in scoring module: a model served with no code of the
//! author's (`wasmscore deploy --name N --model model.onnx`).
//!
//! - Open Inference Protocol calls (`/v2/models/N/infer`, REST or gRPC):
//!   the host decodes the tensors; this module checks each against the
//!   model's inputs (name, datatype, shape with -1 as a wildcard), runs the
//!   model and answers its outputs as tensors, which the host encodes.
//! - `/score`: `{"inputs": {"NAME": nested list, ...}}` with the shape read
//!   from the nesting and the datatype from the model; the answer is
//!   `{"outputs": {"NAME": nested list, ...}}`. FP16 and BF16 inputs and
//!   outputs are plain JSON numbers (rounded to the nearest 16-bit float
//!   on the way in).
//!
//! It runs in the sandbox like any module, with the version's limits,
//! rollout, auth and autoscaling.

wit_bindgen::generate!({ path: "../../wit", world: "scorer" });

use std::cell::RefCell;

use serde_json::Value;
use wasmscore::scoring::byte_strings;
use wasmscore::scoring::half_floats::{self, HalfType};
use wasmscore::scoring::inference::{Model, TensorInfo};
use wasmscore::scoring::tensors::Tensor;
use wasmscore::scoring::types::{Dtype, TensorData};

struct Builtin;

struct Loaded {
    model: Model,
    inputs: Vec<TensorInfo>,
    /// The inputs and outputs that are FP16 or BF16 (their `dtype` says uint16).
    halves: Vec<(String, HalfType)>,
}

impl Loaded {
    fn half(&self, name: &str) -> Option<HalfType> {
        self.halves.iter().find(|(n, _)| n == name).map(|(_, h)| *h)
    }

    /// An input's datatype as OIP names it.
    fn datatype(&self, info: &TensorInfo) -> &'static str {
        datatype(info.dtype, self.half(&info.name))
    }
}

fn datatype(d: Dtype, half: Option<HalfType>) -> &'static str {
    match half {
        Some(HalfType::Float16) => "FP16",
        Some(HalfType::Bfloat16) => "BF16",
        None => dtype_name(d),
    }
}

thread_local! {
    static MODEL: RefCell<Option<Loaded>> = const { RefCell::new(None) };
}

fn bad(msg: impl Into<String>) -> Error {
    Error::BadInput(msg.into())
}

fn dtype_name(d: Dtype) -> &'static str {
    match d {
        Dtype::Float32 => "FP32",
        Dtype::Float64 => "FP64",
        Dtype::Int8 => "INT8",
        Dtype::Int16 => "INT16",
        Dtype::Int32 => "INT32",
        Dtype::Int64 => "INT64",
        Dtype::Uint8 => "UINT8",
        Dtype::Uint16 => "UINT16",
        Dtype::Uint32 => "UINT32",
        Dtype::Uint64 => "UINT64",
        Dtype::Boolean => "BOOL",
        Dtype::String => "BYTES",
    }
}

/// The model's shape with -1 (or 0, an unnamed dimension) as a wildcard.
fn fits(want: &[i64], got: &[u64]) -> bool {
    want.len() == got.len() && want.iter().zip(got).all(|(w, g)| *w <= 0 || *w as u64 == *g)
}

fn check(l: &Loaded, info: &TensorInfo, t: &Tensor) -> Result<(), Error> {
    // Only a tensor that says uint16 can be a 16-bit float: ask the host then.
    let dtype = t.dtype();
    let half = if dtype == Dtype::Uint16 { half_floats::type_of(t) } else { None };
    let (want, got) = (l.datatype(info), datatype(dtype, half));
    if want != got {
        return Err(bad(format!("input {:?} must be {want}, got {got}", info.name)));
    }
    let shape = t.shape();
    if !fits(&info.shape, &shape) {
        return Err(bad(format!(
            "input {:?} must have shape {:?} (-1: any), got {:?}",
            info.name, info.shape, shape
        )));
    }
    Ok(())
}

impl Guest for Builtin {
    fn init() -> Result<(), Error> {
        let model = Model::load("model.onnx")?;
        let inputs = model.inputs();
        let halves = half_floats::model_types(&model);
        MODEL.with(|m| *m.borrow_mut() = Some(Loaded { model, inputs, halves }));
        Ok(())
    }

    fn run(request: Request) -> Result<Response, Error> {
        MODEL.with(|m| {
            let m = m.borrow();
            let l = m.as_ref().ok_or_else(|| Error::Failed("init() did not run".into()))?;
            if request.tensors.is_empty() {
                return score_json(l, &request.body);
            }
            let outputs = run_model(l, request.tensors)?;
            Ok(Response {
                body: Vec::new(),
                content_type: String::new(),
                tensors: outputs,
            })
        })
    }
}

/// Checks the named tensors against the model's inputs and runs it.
fn run_model(l: &Loaded, given: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>, Error> {
    for (name, t) in &given {
        let Some(info) = l.inputs.iter().find(|i| i.name == *name) else {
            let names: Vec<&str> = l.inputs.iter().map(|i| i.name.as_str()).collect();
            return Err(bad(format!("the model has no input {name:?} (its inputs are {names:?})")));
        };
        check(l, info, t)?;
    }
    if let Some(missing) = l.inputs.iter().find(|i| !given.iter().any(|(n, _)| *n == i.name)) {
        return Err(bad(format!(
            "input {:?} ({} {:?}) is missing",
            missing.name,
            l.datatype(missing),
            missing.shape
        )));
    }
    let borrowed: Vec<(String, &Tensor)> = given.iter().map(|(n, t)| (n.clone(), t)).collect();
    l.model.run(&borrowed, &[])
}

/// `/score`: `{"inputs": {"NAME": nested list}}` -> `{"outputs": {"NAME": nested list}}`.
fn score_json(l: &Loaded, body: &[u8]) -> Result<Response, Error> {
    let v: Value = serde_json::from_slice(body).map_err(|e| bad(format!("malformed JSON: {e}")))?;
    let given = v.get("inputs").and_then(Value::as_object).ok_or_else(|| {
        bad("the body needs {\"inputs\": {\"NAME\": [...]}} (or use the Open Inference Protocol: POST /v2/models/NAME/infer)")
    })?;
    let mut tensors = Vec::with_capacity(given.len());
    for (name, value) in given {
        let Some(info) = l.inputs.iter().find(|i| i.name == *name) else {
            let names: Vec<&str> = l.inputs.iter().map(|i| i.name.as_str()).collect();
            return Err(bad(format!("the model has no input {name:?} (its inputs are {names:?})")));
        };
        let mut shape = Vec::new();
        let mut cur = value;
        while let Value::Array(items) = cur {
            shape.push(items.len() as u64);
            match items.first() {
                Some(first) => cur = first,
                None => break,
            }
        }
        let mut flat = Vec::new();
        flatten(value, &mut flat);
        let irregular = |e| match e {
            Error::BadInput(m) | Error::Failed(m) => bad(format!("input {name:?} is not a regular nested list: {m}")),
        };
        let t = match l.half(name) {
            Some(h) => {
                let TensorData::Float32(values) = from_json(Dtype::Float32, &flat).map_err(|e| bad(format!("input {name:?}: {e}")))? else {
                    unreachable!("from_json(Float32) gives float32")
                };
                half_floats::from_f32(h, &shape, &values).map_err(irregular)?
            }
            None => {
                let data = from_json(info.dtype, &flat).map_err(|e| bad(format!("input {name:?}: {e}")))?;
                Tensor::create(&shape, &data).map_err(irregular)?
            }
        };
        tensors.push((name.clone(), t));
    }
    let mut outputs = serde_json::Map::new();
    for (name, t) in run_model(l, tensors)? {
        let flat = match l.half(&name) {
            Some(_) => half_floats::to_f32(&t)?.into_iter().map(Value::from).collect(),
            // `data` would put U+FFFD in place of bytes that are not UTF-8.
            None if t.dtype() == Dtype::String => text(&name, byte_strings::to_bytes(&t)?)?,
            None => to_json(&t.data()),
        };
        outputs.insert(name, nest(&flat, &t.shape()));
    }
    let body = serde_json::to_vec(&serde_json::json!({ "outputs": outputs })).map_err(|e| Error::Failed(e.to_string()))?;
    Ok(Response {
        body,
        content_type: "application/json".into(),
        tensors: Vec::new(),
    })
}

fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other),
    }
}

fn from_json(d: Dtype, flat: &[&Value]) -> Result<TensorData, String> {
    fn each<T>(flat: &[&Value], what: &str, f: impl Fn(&Value) -> Option<T>) -> Result<Vec<T>, String> {
        flat.iter()
            .enumerate()
            .map(|(i, v)| f(v).ok_or_else(|| format!("element {i} ({v}) is not {what}")))
            .collect()
    }
    fn int<T: TryFrom<i64>>(v: &Value) -> Option<T> {
        v.as_i64().and_then(|i| T::try_from(i).ok())
    }
    fn uint<T: TryFrom<u64>>(v: &Value) -> Option<T> {
        v.as_u64().and_then(|i| T::try_from(i).ok())
    }
    Ok(match d {
        Dtype::Boolean => TensorData::Boolean(each(flat, "a boolean", Value::as_bool)?),
        Dtype::Uint8 => TensorData::Uint8(each(flat, "a UINT8", uint)?),
        Dtype::Uint16 => TensorData::Uint16(each(flat, "a UINT16", uint)?),
        Dtype::Uint32 => TensorData::Uint32(each(flat, "a UINT32", uint)?),
        Dtype::Uint64 => TensorData::Uint64(each(flat, "a UINT64", Value::as_u64)?),
        Dtype::Int8 => TensorData::Int8(each(flat, "an INT8", int)?),
        Dtype::Int16 => TensorData::Int16(each(flat, "an INT16", int)?),
        Dtype::Int32 => TensorData::Int32(each(flat, "an INT32", int)?),
        Dtype::Int64 => TensorData::Int64(each(flat, "an INT64", Value::as_i64)?),
        Dtype::Float32 => TensorData::Float32(each(flat, "a number", |v| v.as_f64().map(|f| f as f32))?),
        Dtype::Float64 => TensorData::Float64(each(flat, "a number", Value::as_f64)?),
        Dtype::String => TensorData::String(each(flat, "a string", |v| v.as_str().map(str::to_string))?),
    })
}

/// A string output's elements as JSON strings, when they are text.
fn text(name: &str, elements: Vec<Vec<u8>>) -> Result<Vec<Value>, Error> {
    elements
        .into_iter()
        .map(|e| {
            String::from_utf8(e).map(Value::from).map_err(|_| {
                bad(format!(
                    "output {name:?} holds bytes that are not UTF-8, which JSON cannot carry; \
                     ask for it over the Open Inference Protocol in binary or over gRPC"
                ))
            })
        })
        .collect()
}

fn to_json(d: &TensorData) -> Vec<Value> {
    fn all<T: Clone + Into<Value>>(v: &[T]) -> Vec<Value> {
        v.iter().cloned().map(Into::into).collect()
    }
    match d {
        TensorData::Float32(v) => all(v),
        TensorData::Float64(v) => all(v),
        TensorData::Int8(v) => all(v),
        TensorData::Int16(v) => all(v),
        TensorData::Int32(v) => all(v),
        TensorData::Int64(v) => all(v),
        TensorData::Uint8(v) => all(v),
        TensorData::Uint16(v) => all(v),
        TensorData::Uint32(v) => all(v),
        TensorData::Uint64(v) => all(v),
        TensorData::Boolean(v) => all(v),
        TensorData::String(v) => all(v),
    }
}

/// Flat values back into nested lists by the shape (a scalar stays one value).
fn nest(flat: &[Value], shape: &[u64]) -> Value {
    match shape.split_first() {
        None => flat.first().cloned().unwrap_or(Value::Null),
        Some((&n, rest)) => {
            let step: usize = rest.iter().product::<u64>() as usize;
            if n == 0 {
                return Value::Array(Vec::new());
            }
            Value::Array(
                (0..n as usize)
                    .map(|i| nest(flat.get(i * step..(i + 1) * step).unwrap_or(&[]), rest))
                    .collect(),
            )
        }
    }
}

export!(Builtin);
