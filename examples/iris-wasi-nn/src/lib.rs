//! Iris scoring module in Rust whose inference goes through `wasi:nn`
//! (0.2.0-rc-2024-10-28) instead of wasmscore's `inference` import. Build:
//! `wasmscore build examples/iris-wasi-nn -o iris-nn.wasm`
//!
//! Everything under `wasi::nn` is the portable part: the same calls run on
//! any host that provides this version of wasi-nn with an ONNX backend.
//! `init`/`run`, `Request`, `Response` and `Error` are wasmscore's contract.

// `generate_all`: wit-bindgen otherwise expects `wasi:*` interfaces to come
// from another crate (`with: {...}`); here the bindings are generated in place.
wit_bindgen::generate!({ path: "../../wit", world: "scorer-nn", generate_all });

use std::cell::RefCell;

use wasi::nn::errors::{Error as NnError, ErrorCode};
use wasi::nn::graph::{self, Graph};
use wasi::nn::inference::GraphExecutionContext;
use wasi::nn::tensor::{Tensor, TensorType};

/// The model file shipped with the version (`wasmscore deploy --model model.onnx`).
const MODEL: &str = "model.onnx";
/// The model's input, float32 [n, 4], and the output we return, float32 [n, 3].
const INPUT: &str = "X";
const OUTPUT: &str = "probabilities";

struct Iris;

/// The graph and its execution context, made once per instance in `init`.
struct Session {
    // Kept alive for as long as the context that was made from it.
    _graph: Graph,
    ctx: GraphExecutionContext,
}

thread_local! {
    static SESSION: RefCell<Option<Session>> = const { RefCell::new(None) };
}

fn bad(msg: impl Into<String>) -> Error {
    Error::BadInput(msg.into())
}

/// An error code as the WIT spells it.
fn code_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::InvalidArgument => "invalid-argument",
        ErrorCode::InvalidEncoding => "invalid-encoding",
        ErrorCode::Timeout => "timeout",
        ErrorCode::RuntimeError => "runtime-error",
        ErrorCode::UnsupportedOperation => "unsupported-operation",
        ErrorCode::TooLarge => "too-large",
        ErrorCode::NotFound => "not-found",
        ErrorCode::Security => "security",
        ErrorCode::Unknown => "unknown",
    }
}

/// A wasi-nn error as a module failure (HTTP 500), with its code and the
/// host's message.
fn nn_failed(call: &str, e: NnError) -> Error {
    Error::Failed(format!("wasi-nn {call}: {}: {}", code_name(e.code()), e.data()))
}

/// The rows of `{"data": [[4 numbers], ...]}`, flattened to f32.
fn parse(body: &[u8]) -> Result<(u32, Vec<f32>), Error> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| bad(format!("malformed JSON: {e}")))?;
    let rows = v
        .get("data")
        .and_then(|d| d.as_array())
        .ok_or_else(|| bad("the body needs \"data\": [[4 floats], ...]"))?;
    let n = u32::try_from(rows.len()).map_err(|_| bad("too many rows"))?;
    let mut flat = Vec::with_capacity(rows.len() * 4);
    for row in rows {
        let row = row
            .as_array()
            .filter(|r| r.len() == 4)
            .ok_or_else(|| bad("each row of \"data\" needs 4 numbers"))?;
        for x in row {
            flat.push(x.as_f64().ok_or_else(|| bad("\"data\" must hold numbers"))? as f32);
        }
    }
    Ok((n, flat))
}

impl Guest for Iris {
    fn init() -> Result<(), Error> {
        let graph = graph::load_by_name(MODEL).map_err(|e| nn_failed(&format!("load-by-name({MODEL:?})"), e))?;
        let ctx = graph.init_execution_context().map_err(|e| nn_failed("init-execution-context", e))?;
        SESSION.with(|s| *s.borrow_mut() = Some(Session { _graph: graph, ctx }));
        Ok(())
    }

    fn run(request: Request) -> Result<Response, Error> {
        let (n, flat) = parse(&request.body)?;
        // wasi-nn tensors are little-endian bytes of the element type.
        let bytes: Vec<u8> = flat.iter().flat_map(|x| x.to_le_bytes()).collect();
        let x = Tensor::new(&[n, 4], TensorType::Fp32, &bytes);
        let outputs = SESSION.with(|s| {
            let s = s.borrow();
            let s = s.as_ref().ok_or_else(|| Error::Failed("init() did not run".into()))?;
            s.ctx.compute(vec![(INPUT.to_string(), x)]).map_err(|e| nn_failed("compute", e))
        })?;
        // compute returns every output of the model ("label" too); take ours.
        let (_, probs) = outputs
            .into_iter()
            .find(|(name, _)| name == OUTPUT)
            .ok_or_else(|| Error::Failed(format!("the model has no output {OUTPUT:?}")))?;
        if probs.ty() != TensorType::Fp32 || probs.dimensions() != [n, 3] {
            return Err(Error::Failed(format!(
                "{OUTPUT} is {:?} {:?}, expected FP32 [{n}, 3]",
                probs.ty(),
                probs.dimensions()
            )));
        }
        let p: Vec<f32> = probs
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let rows: Vec<&[f32]> = p.chunks(3).collect();
        let body = serde_json::to_vec(&serde_json::json!({ "probabilities": rows })).map_err(|e| Error::Failed(e.to_string()))?;
        Ok(Response {
            body,
            content_type: "application/json".into(),
            tensors: Vec::new(),
        })
    }
}

export!(Iris);
