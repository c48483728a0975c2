//! The Open Inference Protocol (KServe v2, Triton's HTTP API) on the wire:
//! infer requests and responses as JSON, with the binary tensor extension
//! (`Inference-Header-Content-Length`, `binary_data_size`, `binary_data`,
//! `binary_data_output`).
//!
//! Pure and synchronous: bytes in, host tensors out, and back. The server
//! decodes at the edge, hands the tensors to the version (`run()` gets them
//! in `request.tensors`), and encodes the tensors the module answers with.
//! [`pack`] and [`unpack`] carry a call's body and tensors between the
//! router and a node in the same framing.
//!
//! Triton's system shared memory extension is spoken here too: a tensor
//! may name a region (`shared_memory_region`, `shared_memory_byte_size`,
//! `shared_memory_offset`) instead of carrying its bytes; the server's
//! [`Regions`] reads and writes them.
//!
//! Every error is the client's fault (HTTP 400, gRPC INVALID_ARGUMENT) and
//! says which input and why. Nothing is allocated from a claimed size: a
//! tensor holds only what the body really carried.

use serde::Deserialize;
use serde_json::{json, Map, Value};
use wasmscore_tensor::half::{bf16, f16};
use wasmscore_tensor::{DType, Tensor, TensorData};

/// The header carrying the JSON part's length when binary data follows it.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// A request the client got wrong: the message says what and where.
#[derive(Debug, Clone, PartialEq)]
pub struct OipError(pub String);

impl std::fmt::Display for OipError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OipError {}

fn err<T>(msg: impl Into<String>) -> Result<T, OipError> {
    Err(OipError(msg.into()))
}

/// An output the client asked for, and how it wants it.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    pub name: String,
    /// `parameters.binary_data` of the output; none: the request's default.
    pub binary: Option<bool>,
    /// Written into this shared memory region instead of the response.
    pub region: Option<InRegion>,
}

/// A place in a registered shared memory region (Triton's system shared
/// memory extension): a tensor's bytes, by reference.
#[derive(Debug, Clone, PartialEq)]
pub struct InRegion {
    /// The name the region was registered under.
    pub region: String,
    /// From the start of the registered region.
    pub offset: u64,
    pub byte_size: u64,
}

impl InRegion {
    /// The place a tensor's parameters name, if they name one:
    /// `shared_memory_region` with its `shared_memory_byte_size` and,
    /// optionally, `shared_memory_offset` (0).
    pub fn of(
        what: &str,
        name: &str,
        region: Option<Result<&str, String>>,
        byte_size: Option<Result<u64, String>>,
        offset: Option<Result<u64, String>>,
    ) -> Result<Option<InRegion>, OipError> {
        let bad = |e: String| OipError(format!("{what} {name:?}: {e}"));
        let Some(region) = region else {
            if byte_size.is_some() || offset.is_some() {
                return err(format!(
                    "{what} {name:?} has a shared memory size or offset but no shared_memory_region"
                ));
            }
            return Ok(None);
        };
        let Some(byte_size) = byte_size else {
            return err(format!("{what} {name:?}: shared_memory_region needs shared_memory_byte_size"));
        };
        Ok(Some(InRegion {
            region: region.map_err(bad)?.to_string(),
            byte_size: byte_size.map_err(bad)?,
            offset: offset.transpose().map_err(bad)?.unwrap_or(0),
        }))
    }

    /// The place named by a JSON tensor's `parameters`.
    fn in_json(what: &str, name: &str, p: &Map<String, Value>) -> Result<Option<InRegion>, OipError> {
        let count = |k: &str| {
            p.get(k)
                .map(|v| v.as_u64().ok_or_else(|| format!("{k} must be a byte count, got {v}")))
        };
        let region = p.get("shared_memory_region").map(|v| {
            v.as_str()
                .ok_or_else(|| format!("shared_memory_region must be a region's name, got {v}"))
        });
        InRegion::of(what, name, region, count("shared_memory_byte_size"), count("shared_memory_offset"))
    }
}

/// The shared memory regions clients registered: where tensors given by
/// reference are read from and written to.
pub trait Regions {
    /// The `byte_size` bytes at `offset` in the region.
    fn read(&self, at: &InRegion) -> Result<Vec<u8>, String>;
    /// Writes `bytes` (at most `byte_size`) at `offset` in the region.
    fn write(&self, at: &InRegion, bytes: &[u8]) -> Result<(), String>;
    /// The most one call may read from regions, all its inputs together.
    fn max_read(&self) -> u64 {
        u64::MAX
    }
}

/// One call's reads from `regions`, held to `max_read` all together: a
/// request naming one region in many inputs cannot read it many times over.
pub struct CallReads<'a> {
    regions: &'a dyn Regions,
    left: std::cell::Cell<u64>,
}

impl<'a> CallReads<'a> {
    pub fn new(regions: &'a dyn Regions) -> CallReads<'a> {
        CallReads {
            regions,
            left: std::cell::Cell::new(regions.max_read()),
        }
    }
}

impl Regions for CallReads<'_> {
    fn read(&self, at: &InRegion) -> Result<Vec<u8>, String> {
        let left = self.left.get();
        if at.byte_size > left {
            return Err(format!(
                "the call's inputs read more from shared memory than this server's limit of {} bytes a call",
                self.regions.max_read()
            ));
        }
        self.left.set(left - at.byte_size);
        self.regions.read(at)
    }
    fn write(&self, at: &InRegion, bytes: &[u8]) -> Result<(), String> {
        self.regions.write(at, bytes)
    }
    fn max_read(&self) -> u64 {
        self.regions.max_read()
    }
}

/// No region is registered (a node's hop from the router, the fuzzers).
pub struct NoRegions;

impl Regions for NoRegions {
    fn read(&self, at: &InRegion) -> Result<Vec<u8>, String> {
        Err(format!("no shared memory region {:?} is registered", at.region))
    }
    fn write(&self, at: &InRegion, _: &[u8]) -> Result<(), String> {
        Err(format!("no shared memory region {:?} is registered", at.region))
    }
}

/// A decoded infer request.
#[derive(Debug, Clone, PartialEq)]
pub struct InferRequest {
    pub id: Option<String>,
    /// The inputs, in the request's order, as host tensors.
    pub inputs: Vec<(String, Tensor)>,
    /// The outputs asked for; empty: all of them.
    pub outputs: Vec<Wanted>,
    /// `parameters.binary_data_output`: every output binary unless it says otherwise.
    pub binary_output: bool,
    /// The JSON part as the client sent it (what the module sees as its body).
    pub header: Vec<u8>,
}

/// The OIP datatype name of a host dtype.
pub fn datatype(d: DType) -> &'static str {
    match d {
        DType::Bool => "BOOL",
        DType::Uint8 => "UINT8",
        DType::Uint16 => "UINT16",
        DType::Uint32 => "UINT32",
        DType::Uint64 => "UINT64",
        DType::Int8 => "INT8",
        DType::Int16 => "INT16",
        DType::Int32 => "INT32",
        DType::Int64 => "INT64",
        DType::Float32 => "FP32",
        DType::Float64 => "FP64",
        DType::Float16 => "FP16",
        DType::Bfloat16 => "BF16",
        DType::String => "BYTES",
    }
}

/// The host dtype of an OIP datatype name.
pub fn dtype(datatype: &str) -> Result<DType, OipError> {
    Ok(match datatype {
        "BOOL" => DType::Bool,
        "UINT8" => DType::Uint8,
        "UINT16" => DType::Uint16,
        "UINT32" => DType::Uint32,
        "UINT64" => DType::Uint64,
        "INT8" => DType::Int8,
        "INT16" => DType::Int16,
        "INT32" => DType::Int32,
        "INT64" => DType::Int64,
        "FP32" => DType::Float32,
        "FP64" => DType::Float64,
        "FP16" => DType::Float16,
        "BF16" => DType::Bfloat16,
        "BYTES" => DType::String,
        other => return err(format!("unknown datatype {other:?}")),
    })
}

#[derive(Deserialize)]
struct WireTensor {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Deserialize)]
struct WireOutput {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

#[derive(Deserialize)]
struct WireRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<WireTensor>,
    #[serde(default)]
    outputs: Vec<WireOutput>,
}

#[derive(Deserialize)]
struct WireResponse {
    #[serde(default)]
    outputs: Vec<WireTensor>,
}

/// Splits a body into its JSON part and its binary part by the header's value.
fn split<'a>(body: &'a [u8], header_len: Option<&str>) -> Result<(&'a [u8], &'a [u8]), OipError> {
    let Some(h) = header_len else { return Ok((body, &[])) };
    let n: usize = match h.trim().parse() {
        Ok(n) => n,
        Err(_) => return err(format!("Inference-Header-Content-Length must be a byte count, got {h:?}")),
    };
    if n > body.len() {
        return err(format!(
            "Inference-Header-Content-Length is {n} but the body holds {} bytes",
            body.len()
        ));
    }
    Ok(body.split_at(n))
}

/// Decodes an infer request: `body` as received, `header_len` the value of
/// `Inference-Header-Content-Length` if the client sent one; inputs given
/// by reference are read from `regions`.
pub fn decode(body: &[u8], header_len: Option<&str>, regions: &dyn Regions) -> Result<InferRequest, OipError> {
    let regions = &CallReads::new(regions);
    let (head, mut binary) = split(body, header_len)?;
    let req: WireRequest = match serde_json::from_slice(head) {
        Ok(r) => r,
        Err(e) => return err(format!("malformed inference request: {e}")),
    };
    if req.inputs.is_empty() {
        return err("the request has no inputs");
    }
    if let Some(name) = repeated(&req.inputs, |w| &w.name) {
        return err(format!("input {name:?} is given twice"));
    }
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for w in req.inputs {
        let t = tensor(&w, &mut binary, "input", regions)?;
        inputs.push((w.name, t));
    }
    if !binary.is_empty() {
        return err(format!(
            "{} bytes of binary data follow the inputs that no input's binary_data_size claims",
            binary.len()
        ));
    }
    // Each one asked for is encoded: the same twice would be encoded twice
    // (Triton refuses it too).
    if let Some(name) = repeated(&req.outputs, |o| &o.name) {
        return err(format!("output {name:?} is asked for twice"));
    }
    let mut outputs = Vec::with_capacity(req.outputs.len());
    for o in req.outputs {
        let binary = match o.parameters.get("binary_data") {
            None => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(v) => return err(format!("output {:?}: binary_data must be true or false, got {v}", o.name)),
        };
        let region = InRegion::in_json("output", &o.name, &o.parameters)?;
        outputs.push(Wanted {
            name: o.name,
            binary,
            region,
        });
    }
    let binary_output = match req.parameters.get("binary_data_output") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => return err(format!("binary_data_output must be true or false, got {v}")),
    };
    Ok(InferRequest {
        id: req.id,
        inputs,
        outputs,
        binary_output,
        header: head.to_vec(),
    })
}

/// The first name that `items` hold twice. A few (most calls) are compared
/// pairwise, with no allocation; many go through a set, so a request of a
/// million names costs a million steps, not a million squared.
pub fn repeated<T>(items: &[T], name: impl Fn(&T) -> &str) -> Option<&str> {
    if items.len() <= 16 {
        return items
            .iter()
            .enumerate()
            .find(|(i, a)| items[..*i].iter().any(|b| name(b) == name(a)))
            .map(|(_, a)| name(a));
    }
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    items.iter().map(&name).find(|n| !seen.insert(*n))
}

/// A tensor's declared datatype and shape, checked: its dtype, its shape
/// and its element count.
pub fn declared(name: &str, what: &str, datatype: &str, shape: &[i64]) -> Result<(DType, Vec<u64>, u64), OipError> {
    let d = dtype(datatype).map_err(|e| OipError(format!("{what} {name:?}: {e}")))?;
    let mut dims = Vec::with_capacity(shape.len());
    for &s in shape {
        if s < 0 {
            return err(format!("{what} {name:?}: shape {shape:?} has a negative dimension"));
        }
        dims.push(s as u64);
    }
    let count = match wasmscore_tensor::element_count(&dims) {
        Ok(c) => c,
        Err(e) => return err(format!("{what} {name:?}: {e}")),
    };
    Ok((d, dims, count))
}

/// A tensor from its raw bytes (the binary extension's layout, and gRPC's
/// `raw_input_contents`), checked against its datatype and shape.
pub fn from_raw(name: &str, what: &str, datatype: &str, shape: &[i64], bytes: &[u8]) -> Result<Tensor, OipError> {
    let (d, dims, count) = declared(name, what, datatype, shape)?;
    let data = from_bytes(d, bytes, count).map_err(|e| OipError(format!("{what} {name:?}: {e}")))?;
    shaped(name, what, dims, count, data)
}

/// A tensor read from shared memory: its place's size is checked against
/// its shape and datatype before the region is read (a request of a few
/// bytes naming 100 MB of a region would have them read, then refused).
pub fn from_region(
    name: &str,
    what: &str,
    (datatype, shape): (&str, &[i64]),
    at: &InRegion,
    regions: &dyn Regions,
) -> Result<Tensor, OipError> {
    let (d, dims, count) = declared(name, what, datatype, shape)?;
    fits(name, what, d, count, at)?;
    let bytes = regions.read(at).map_err(|e| OipError(format!("{what} {name:?}: {e}")))?;
    let data = from_bytes(d, &bytes, count).map_err(|e| OipError(format!("{what} {name:?}: {e}")))?;
    shaped(name, what, dims, count, data)
}

/// Whether `count` elements of `d` take `at.byte_size` bytes (BYTES, whose
/// elements vary, take at least 4 bytes each).
fn fits(name: &str, what: &str, d: DType, count: u64, at: &InRegion) -> Result<(), OipError> {
    let fixed = d != DType::String;
    let needs = count.saturating_mul(if fixed { d.width() as u64 } else { 4 });
    if (fixed && at.byte_size != needs) || at.byte_size < needs {
        return err(format!(
            "{what} {name:?}: {count} {} elements take {}{needs} bytes, but its shared_memory_byte_size is {}",
            datatype(d),
            if fixed { "" } else { "at least " },
            at.byte_size
        ));
    }
    Ok(())
}

/// A tensor from data that must hold exactly `count` elements.
pub fn shaped(name: &str, what: &str, dims: Vec<u64>, count: u64, data: TensorData) -> Result<Tensor, OipError> {
    if data.len() as u64 != count {
        return err(format!(
            "{what} {name:?}: shape {dims:?} needs {count} elements, got {}",
            data.len()
        ));
    }
    Tensor::new(dims, data).map_err(|e| OipError(format!("{what} {name:?}: {e}")))
}

/// One tensor of a request or response: from its `data`, from the next
/// `binary_data_size` bytes of `binary`, or from a shared memory region.
fn tensor(w: &WireTensor, binary: &mut &[u8], what: &str, regions: &dyn Regions) -> Result<Tensor, OipError> {
    let name = &w.name;
    let (d, dims, count) = declared(name, what, &w.datatype, &w.shape)?;
    let size = match w.parameters.get("binary_data_size") {
        None => None,
        Some(v) => match v.as_u64() {
            Some(n) => Some(n),
            None => return err(format!("{what} {name:?}: binary_data_size must be a byte count, got {v}")),
        },
    };
    let region = InRegion::in_json(what, name, &w.parameters)?;
    if let Some(at) = region {
        if w.data.is_some() || size.is_some() {
            return err(format!("{what} {name:?} is in shared memory and also has data or binary_data_size"));
        }
        fits(name, what, d, count, &at)?;
        let bytes = regions.read(&at).map_err(|e| OipError(format!("{what} {name:?}: {e}")))?;
        let data = from_bytes(d, &bytes, count).map_err(|e| OipError(format!("{what} {name:?}: {e}")))?;
        return shaped(name, what, dims, count, data);
    }
    let data = match (&w.data, size) {
        (Some(_), Some(_)) => return err(format!("{what} {name:?} has both data and binary_data_size")),
        (None, None) => {
            return err(format!(
                "{what} {name:?} has no data, no binary_data_size and no shared_memory_region"
            ))
        }
        (Some(v), None) => from_json(d, v).map_err(|e| OipError(format!("{what} {name:?}: {e}")))?,
        (None, Some(n)) => {
            if n > binary.len() as u64 {
                return err(format!(
                    "{what} {name:?}: binary_data_size is {n} but only {} bytes of binary data are left",
                    binary.len()
                ));
            }
            let (mine, rest) = binary.split_at(n as usize);
            *binary = rest;
            from_bytes(d, mine, count).map_err(|e| OipError(format!("{what} {name:?}: {e}")))?
        }
    };
    shaped(name, what, dims, count, data)
}

/// Flattens nested JSON arrays (OIP allows both flat and nested `data`).
fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other),
    }
}

fn from_json(d: DType, v: &Value) -> Result<TensorData, String> {
    let mut flat = Vec::new();
    flatten(v, &mut flat);
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
        DType::Bool => TensorData::Bool(each(&flat, "a boolean", Value::as_bool)?),
        DType::Uint8 => TensorData::Uint8(each(&flat, "a UINT8", uint)?),
        DType::Uint16 => TensorData::Uint16(each(&flat, "a UINT16", uint)?),
        DType::Uint32 => TensorData::Uint32(each(&flat, "a UINT32", uint)?),
        DType::Uint64 => TensorData::Uint64(each(&flat, "a UINT64", Value::as_u64)?),
        DType::Int8 => TensorData::Int8(each(&flat, "an INT8", int)?),
        DType::Int16 => TensorData::Int16(each(&flat, "an INT16", int)?),
        DType::Int32 => TensorData::Int32(each(&flat, "an INT32", int)?),
        DType::Int64 => TensorData::Int64(each(&flat, "an INT64", Value::as_i64)?),
        // Rounded to the nearest value of the type (as tritonclient's numpy
        // does for 16-bit floats); one past the type's range is refused, not
        // made infinite (JSON has no infinity to mean).
        DType::Float32 => TensorData::Float32(each(&flat, "an FP32 number", |v| {
            v.as_f64().map(|f| f as f32).filter(|x| x.is_finite())
        })?),
        DType::Float64 => TensorData::Float64(each(&flat, "a number", Value::as_f64)?),
        DType::Float16 => TensorData::Float16(each(&flat, "an FP16 number", |v| {
            v.as_f64().map(f16::from_f64).filter(|x| x.is_finite())
        })?),
        DType::Bfloat16 => TensorData::Bfloat16(each(&flat, "a BF16 number", |v| {
            v.as_f64().map(bf16::from_f64).filter(|x| x.is_finite())
        })?),
        DType::String => TensorData::String(each(&flat, "a string", |v| v.as_str().map(str::to_string))?),
    })
}

fn from_bytes(d: DType, b: &[u8], count: u64) -> Result<TensorData, String> {
    if d == DType::String {
        // Each element: a 4-byte little-endian length, then that many bytes.
        // No more than the shape's count are made: 100 MB of empty
        // elements would be 25 million of them before the shape refused it.
        let mut out = Vec::with_capacity(usize::try_from(count).unwrap_or(usize::MAX).min(b.len() / 4));
        let mut rest = b;
        while !rest.is_empty() {
            if out.len() as u64 == count {
                return Err(format!("its BYTES data holds more than the {count} elements of its shape"));
            }
            if rest.len() < 4 {
                return Err(format!("BYTES element {} is cut inside its 4-byte length", out.len()));
            }
            let n = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            rest = &rest[4..];
            if n > rest.len() {
                return Err(format!("BYTES element {} claims {n} bytes but {} are left", out.len(), rest.len()));
            }
            out.push(rest[..n].to_vec());
            rest = &rest[n..];
        }
        return Ok(TensorData::from_byte_strings(out));
    }
    let width = d.width();
    if b.len() as u64 != count.saturating_mul(width as u64) {
        return Err(format!(
            "its data is {} bytes but {count} {} elements take {}",
            b.len(),
            datatype(d),
            count.saturating_mul(width as u64)
        ));
    }
    macro_rules! le {
        ($t:ty, $v:ident) => {
            TensorData::$v(
                b.chunks_exact(width)
                    .map(|c| <$t>::from_le_bytes(c.try_into().expect("width")))
                    .collect(),
            )
        };
    }
    Ok(match d {
        DType::Bool => {
            // One byte each, 0 or 1 (numpy's bool); another byte is not a bool.
            if let Some(i) = b.iter().position(|x| *x > 1) {
                return Err(format!("BOOL element {i} is the byte {}, not 0 or 1", b[i]));
            }
            TensorData::Bool(b.iter().map(|x| *x != 0).collect())
        }
        DType::Uint8 => TensorData::Uint8(b.to_vec()),
        DType::Int8 => TensorData::Int8(b.iter().map(|x| *x as i8).collect()),
        DType::Uint16 => le!(u16, Uint16),
        DType::Uint32 => le!(u32, Uint32),
        DType::Uint64 => le!(u64, Uint64),
        DType::Int16 => le!(i16, Int16),
        DType::Int32 => le!(i32, Int32),
        DType::Int64 => le!(i64, Int64),
        DType::Float32 => le!(f32, Float32),
        DType::Float64 => le!(f64, Float64),
        DType::Float16 => le!(f16, Float16),
        DType::Bfloat16 => le!(bf16, Bfloat16),
        DType::String => unreachable!("handled above"),
    })
}

/// A tensor's elements as the binary extension lays them out.
pub fn to_bytes(data: &TensorData) -> Vec<u8> {
    /// Each element's bytes, into a buffer made at its size once (a
    /// `flat_map` would grow it a byte at a time: 4x slower on 16 MiB).
    fn le<T: Copy, const N: usize>(v: &[T], bytes: impl Fn(T) -> [u8; N]) -> Vec<u8> {
        let mut out = Vec::with_capacity(v.len() * N);
        for x in v {
            out.extend_from_slice(&bytes(*x));
        }
        out
    }
    match data {
        TensorData::Bool(v) => v.iter().map(|b| u8::from(*b)).collect(),
        TensorData::Uint8(v) => v.clone(),
        TensorData::Int8(v) => v.iter().map(|x| *x as u8).collect(),
        TensorData::Uint16(v) => le(v, u16::to_le_bytes),
        TensorData::Uint32(v) => le(v, u32::to_le_bytes),
        TensorData::Uint64(v) => le(v, u64::to_le_bytes),
        TensorData::Int16(v) => le(v, i16::to_le_bytes),
        TensorData::Int32(v) => le(v, i32::to_le_bytes),
        TensorData::Int64(v) => le(v, i64::to_le_bytes),
        TensorData::Float32(v) => le(v, f32::to_le_bytes),
        TensorData::Float64(v) => le(v, f64::to_le_bytes),
        TensorData::Float16(v) => le(v, f16::to_le_bytes),
        TensorData::Bfloat16(v) => le(v, bf16::to_le_bytes),
        TensorData::String(_) | TensorData::Bytes(_) => {
            let elements = data.byte_strings().expect("a string tensor");
            let mut out = Vec::with_capacity(elements.iter().map(|s| s.len() + 4).sum());
            for s in elements {
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                out.extend_from_slice(s);
            }
            out
        }
    }
}

/// A tensor's elements as a flat JSON array. Floats that JSON cannot hold
/// (NaN, infinities) become null, as serde_json writes them.
fn to_json(data: &TensorData) -> Value {
    match data {
        TensorData::Bool(v) => json!(v),
        TensorData::Uint8(v) => json!(v),
        TensorData::Int8(v) => json!(v),
        TensorData::Uint16(v) => json!(v),
        TensorData::Uint32(v) => json!(v),
        TensorData::Uint64(v) => json!(v),
        TensorData::Int16(v) => json!(v),
        TensorData::Int32(v) => json!(v),
        TensorData::Int64(v) => json!(v),
        TensorData::Float32(v) => json!(v),
        TensorData::Float64(v) => json!(v),
        // Every 16-bit float is exactly a float32.
        TensorData::Float16(v) => json!(v.iter().map(|x| x.to_f32()).collect::<Vec<_>>()),
        TensorData::Bfloat16(v) => json!(v.iter().map(|x| x.to_f32()).collect::<Vec<_>>()),
        TensorData::String(v) => json!(v),
        TensorData::Bytes(_) => unreachable!("encode_response sends bytes that are not UTF-8 in binary only"),
    }
}

/// Tensors as OIP's JSON writes them, data included, under `key`
/// (`{"inputs": [{"name", "datatype", "shape", "data"}]}`), beside the
/// other fields of `body` when it is a JSON object (an OIP request's `id`,
/// `parameters`, `outputs`): what model data collection keeps of a call's
/// tensors. Written straight from the tensors' data, FP32 and the 16-bit
/// floats as float32 prints them; BYTES that are not UTF-8 as arrays of
/// their byte values.
pub fn to_json_with_data(key: &str, body: &[u8], tensors: &[(String, Tensor)]) -> Vec<u8> {
    use serde::ser::{SerializeMap, Serializer};
    struct Data<'a>(&'a TensorData);
    impl serde::Serialize for Data<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            match self.0 {
                TensorData::Bool(v) => v.serialize(s),
                TensorData::Uint8(v) => v.serialize(s),
                TensorData::Int8(v) => v.serialize(s),
                TensorData::Uint16(v) => v.serialize(s),
                TensorData::Uint32(v) => v.serialize(s),
                TensorData::Uint64(v) => v.serialize(s),
                TensorData::Int16(v) => v.serialize(s),
                TensorData::Int32(v) => v.serialize(s),
                TensorData::Int64(v) => v.serialize(s),
                TensorData::Float32(v) => v.serialize(s),
                TensorData::Float64(v) => v.serialize(s),
                TensorData::Float16(v) => s.collect_seq(v.iter().map(|x| x.to_f32())),
                TensorData::Bfloat16(v) => s.collect_seq(v.iter().map(|x| x.to_f32())),
                TensorData::String(v) => v.serialize(s),
                TensorData::Bytes(v) => v.serialize(s),
            }
        }
    }
    #[derive(serde::Serialize)]
    struct Entry<'a> {
        name: &'a str,
        datatype: &'static str,
        shape: &'a [u64],
        data: Data<'a>,
    }
    struct Record<'a> {
        // Read as text, not as a Value per element: a REST request's body
        // holds its inputs' data too (the entry replaced here).
        fields: std::collections::BTreeMap<String, Box<serde_json::value::RawValue>>,
        key: &'a str,
        tensors: Vec<Entry<'a>>,
    }
    impl serde::Serialize for Record<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut m = s.serialize_map(None)?;
            for (k, v) in self.fields.iter().filter(|(k, _)| *k != self.key) {
                m.serialize_entry(k, v)?;
            }
            m.serialize_entry(self.key, &self.tensors)?;
            m.end()
        }
    }
    let record = Record {
        fields: serde_json::from_slice(body).unwrap_or_default(),
        key,
        tensors: tensors
            .iter()
            .map(|(name, t)| Entry {
                name,
                datatype: datatype(t.dtype()),
                shape: t.shape(),
                data: Data(t.data()),
            })
            .collect(),
    };
    serde_json::to_vec(&record).expect("tensors serialize")
}

/// An encoded body: JSON, or JSON followed by binary tensor data (then
/// `header_len` is the JSON part's length, for `Inference-Header-Content-Length`).
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub body: Vec<u8>,
    pub header_len: Option<usize>,
}

/// How an output goes back.
enum Out<'a> {
    Json,
    Binary,
    /// Written into a shared memory region: its place and the bytes written.
    Region(&'a InRegion, usize),
}

impl Out<'_> {
    fn binary(binary: bool) -> Self {
        if binary {
            Out::Binary
        } else {
            Out::Json
        }
    }
}

/// Encodes an infer response: the outputs the request asked for (all of
/// them when it named none), each binary or JSON as it asked, or written
/// into the shared memory region it named.
pub fn encode_response(
    model_name: &str,
    model_version: &str,
    request: &InferRequest,
    outputs: &[(String, Tensor)],
    regions: &dyn Regions,
) -> Result<Encoded, OipError> {
    let mut chosen: Vec<(&String, &Tensor, Out)> = if request.outputs.is_empty() {
        outputs.iter().map(|(n, t)| (n, t, Out::binary(request.binary_output))).collect()
    } else {
        let mut chosen = Vec::with_capacity(request.outputs.len());
        for w in &request.outputs {
            let Some((n, t)) = outputs.iter().find(|(n, _)| *n == w.name) else {
                let have: Vec<&str> = outputs.iter().map(|(n, _)| n.as_str()).collect();
                return err(format!("there is no output {:?} (the outputs are {have:?})", w.name));
            };
            let out = match &w.region {
                Some(at) => Out::Region(at, 0),
                None => Out::binary(w.binary.unwrap_or(request.binary_output)),
            };
            chosen.push((n, t, out));
        }
        chosen
    };
    let json_bytes = |(_, t, out): &&(&String, &Tensor, Out)| matches!(out, Out::Json) && matches!(t.data(), TensorData::Bytes(_));
    if let Some((n, _, _)) = chosen.iter().find(json_bytes) {
        return err(format!(
            "output {n:?} holds BYTES that are not UTF-8, which JSON cannot carry; \
             ask for it in binary (\"binary_data\": true in its parameters) or over gRPC"
        ));
    }
    for (n, t, out) in &mut chosen {
        if let Out::Region(at, written) = out {
            *written = to_region(n, t, at, regions)?;
        }
    }
    let mut head = Map::new();
    head.insert("model_name".into(), json!(model_name));
    head.insert("model_version".into(), json!(model_version));
    if let Some(id) = &request.id {
        head.insert("id".into(), json!(id));
    }
    Ok(frame(head, "outputs", chosen))
}

/// Writes an output into the region the request named for it: the bytes
/// written, or why they do not fit.
pub fn to_region(name: &str, t: &Tensor, at: &InRegion, regions: &dyn Regions) -> Result<usize, OipError> {
    let bytes = to_bytes(t.data());
    if bytes.len() as u64 > at.byte_size {
        return err(format!(
            "output {name:?} takes {} bytes but its shared_memory_byte_size is {}",
            bytes.len(),
            at.byte_size
        ));
    }
    regions.write(at, &bytes).map_err(|e| OipError(format!("output {name:?}: {e}")))?;
    Ok(bytes.len())
}

/// The JSON part with its tensors under `key`, binary ones appended after it.
fn frame(mut head: Map<String, Value>, key: &str, tensors: Vec<(&String, &Tensor, Out)>) -> Encoded {
    let mut binary = Vec::new();
    let mut list = Vec::with_capacity(tensors.len());
    for (name, t, out) in tensors {
        let mut o = json!({"name": name, "datatype": datatype(t.dtype()), "shape": t.shape()});
        match out {
            Out::Binary => {
                let bytes = to_bytes(t.data());
                o["parameters"] = json!({"binary_data_size": bytes.len()});
                binary.extend_from_slice(&bytes);
            }
            Out::Json => o["data"] = to_json(t.data()),
            Out::Region(at, written) => {
                o["parameters"] = json!({"shared_memory_region": at.region, "shared_memory_byte_size": written});
                if at.offset != 0 {
                    o["parameters"]["shared_memory_offset"] = json!(at.offset);
                }
            }
        }
        list.push(o);
    }
    head.insert(key.into(), Value::Array(list));
    let mut body = serde_json::to_vec(&head).expect("a JSON map serializes");
    let header_len = (!binary.is_empty()).then_some(body.len());
    body.extend_from_slice(&binary);
    Encoded { body, header_len }
}

/// Reads the outputs of an infer response (what a client does; the router
/// reads a node's answer with it through [`unpack`]).
pub fn decode_response(body: &[u8], header_len: Option<&str>) -> Result<Vec<(String, Tensor)>, OipError> {
    let (head, mut binary) = split(body, header_len)?;
    let resp: WireResponse = match serde_json::from_slice(head) {
        Ok(r) => r,
        Err(e) => return err(format!("malformed inference response: {e}")),
    };
    let mut out = Vec::with_capacity(resp.outputs.len());
    for w in resp.outputs {
        let t = tensor(&w, &mut binary, "output", &NoRegions)?;
        out.push((w.name, t));
    }
    Ok(out)
}

/// A call's body and tensors in one buffer, for the hop between the router
/// and a node: the body, then the tensors as an all-binary OIP response.
/// The returned header value (`body length,JSON length`) goes with it.
pub fn pack(body: &[u8], tensors: &[(String, Tensor)]) -> (Vec<u8>, String) {
    let framed = frame(Map::new(), "outputs", tensors.iter().map(|(n, t)| (n, t, Out::Binary)).collect());
    let mut out = Vec::with_capacity(body.len() + framed.body.len());
    out.extend_from_slice(body);
    out.extend_from_slice(&framed.body);
    let json_len = framed.header_len.unwrap_or(framed.body.len());
    (out, format!("{},{json_len}", body.len()))
}

/// A call's body and its named tensors, as [`pack`] frames them.
pub type Packed = (Vec<u8>, Vec<(String, Tensor)>);

/// Undoes [`pack`]: the body and the tensors.
pub fn unpack(buf: &[u8], header: &str) -> Result<Packed, OipError> {
    let parsed = header.split_once(',').and_then(|(b, j)| Some((b.parse::<usize>().ok()?, j)));
    let Some((body_len, json_len)) = parsed else {
        return err(format!("malformed tensor framing header {header:?}"));
    };
    if body_len > buf.len() {
        return err("the tensor framing claims a longer body than was sent");
    }
    let (body, rest) = buf.split_at(body_len);
    let tensors = decode_response(rest, Some(json_len))?;
    Ok((body.to_vec(), tensors))
}

/// Fuzz entry points (fuzz/ and the corpus replay in tests/).
pub mod fuzzing {
    /// Bytes -> the infer request decoder, with and without a header
    /// length taken from the first bytes. Must never panic or allocate
    /// beyond what the bytes hold.
    pub fn infer_request(data: &[u8]) {
        let none = &crate::NoRegions;
        let _ = crate::decode(data, None, none);
        if let Some((&n, rest)) = data.split_first() {
            let _ = crate::decode(rest, Some(&n.to_string()), none);
            let _ = crate::decode_response(rest, Some(&n.to_string()));
            if let Ok(r) = crate::decode(rest, Some(&n.to_string()), none) {
                let _ = crate::encode_response("m", "v", &r, &r.inputs, none);
            }
        }
    }
}

#[cfg(test)]
mod tests;
