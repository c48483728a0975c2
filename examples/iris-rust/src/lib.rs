//! Iris scoring module in Rust. Build:
//! `wasmscore build examples/iris-rust -o iris-rust.wasm`
//!
//! Two ways in:
//! - `/score` with `{"data": [[4 floats], ...]}`: parsed here, answered as JSON.
//! - Open Inference Protocol (`POST /v2/models/iris/infer`, REST or gRPC):
//!   the host has already decoded the tensors into `request.tensors`; they
//!   go straight to the model and its outputs go back as tensors, which the
//!   host encodes for the client (JSON or binary). No JSON is parsed here.

wit_bindgen::generate!({ path: "../../wit", world: "scorer" });

use std::cell::RefCell;

use wasmscore::scoring::inference::Model;
use wasmscore::scoring::tensors::Tensor;
use wasmscore::scoring::types::TensorData;

struct Iris;

thread_local! {
    static MODEL: RefCell<Option<Model>> = const { RefCell::new(None) };
}

fn bad(msg: impl Into<String>) -> Error {
    Error::BadInput(msg.into())
}

impl Guest for Iris {
    fn init() -> Result<(), Error> {
        let model = Model::load("model.onnx")?;
        MODEL.with(|m| *m.borrow_mut() = Some(model));
        Ok(())
    }

    fn run(request: Request) -> Result<Response, Error> {
        if !request.tensors.is_empty() {
            let inputs: Vec<(String, &Tensor)> = request.tensors.iter().map(|(n, t)| (n.clone(), t)).collect();
            let outputs = MODEL.with(|m| {
                let m = m.borrow();
                let model = m.as_ref().ok_or_else(|| Error::Failed("init() did not run".into()))?;
                model.run(&inputs, &[])
            })?;
            return Ok(Response { body: Vec::new(), content_type: String::new(), tensors: outputs });
        }
        let v: serde_json::Value = serde_json::from_slice(&request.body).map_err(|e| bad(format!("malformed JSON: {e}")))?;
        let rows = v.get("data").and_then(|d| d.as_array()).ok_or_else(|| bad("the body needs \"data\": [[4 floats], ...]"))?;
        let mut flat = Vec::with_capacity(rows.len() * 4);
        for row in rows {
            let row = row.as_array().filter(|r| r.len() == 4).ok_or_else(|| bad("each row of \"data\" needs 4 numbers"))?;
            for x in row {
                flat.push(x.as_f64().ok_or_else(|| bad("\"data\" must hold numbers"))? as f32);
            }
        }
        let x = Tensor::create(&[rows.len() as u64, 4], &TensorData::Float32(flat))?;
        let out = MODEL.with(|m| {
            let m = m.borrow();
            let model = m.as_ref().ok_or_else(|| Error::Failed("init() did not run".into()))?;
            model.run(&[("X".to_string(), &x)], &["probabilities".to_string()])
        })?;
        let (_, probs) = out.into_iter().next().ok_or_else(|| Error::Failed("no output".into()))?;
        let TensorData::Float32(p) = probs.data() else {
            return Err(Error::Failed("probabilities is not float32".into()));
        };
        let rows: Vec<&[f32]> = p.chunks(3).collect();
        let body = serde_json::to_vec(&serde_json::json!({ "probabilities": rows })).map_err(|e| Error::Failed(e.to_string()))?;
        Ok(Response { body, content_type: "application/json".into(), tensors: Vec::new() })
    }
}

export!(Iris);
