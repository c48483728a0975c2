//! Rows in, rows out, for any model.onnx with one float32 input [-1, F]
//! and float32 outputs: the module reads the input's name and width from
//! the model at init(), so one component serves every such model. Used by
//! the batching benchmark and tests. Build:
//! `wasmscore build examples/rows-rust -o rows.wasm`
//!
//! Request: `{"data": [[F numbers], ...]}`. Response: `{"outputs":
//! {"NAME": [[...], ...]}}`, each output cut into one row per input row.

wit_bindgen::generate!({ path: "../../wit", world: "scorer" });

use std::cell::RefCell;

use wasmscore::scoring::inference::Model;
use wasmscore::scoring::tensors::Tensor;
use wasmscore::scoring::types::{Dtype, TensorData};

struct Rows;

struct Loaded {
    model: Model,
    input: String,
    width: usize,
}

thread_local! {
    static MODEL: RefCell<Option<Loaded>> = const { RefCell::new(None) };
}

fn bad(msg: impl Into<String>) -> Error {
    Error::BadInput(msg.into())
}

impl Guest for Rows {
    fn init() -> Result<(), Error> {
        let model = Model::load("model.onnx")?;
        let inputs = model.inputs();
        let [first] = inputs.as_slice() else {
            return Err(Error::Failed(format!("model.onnx has {} inputs; this module feeds one", inputs.len())));
        };
        let width = match (first.dtype, first.shape.as_slice()) {
            (Dtype::Float32, [_, w]) if *w > 0 => *w as usize,
            _ => return Err(Error::Failed(format!("input {} must be float32 [-1, F], got {:?}", first.name, first.shape))),
        };
        let input = first.name.clone();
        MODEL.with(|m| *m.borrow_mut() = Some(Loaded { model, input, width }));
        Ok(())
    }

    fn run(request: Request) -> Result<Response, Error> {
        MODEL.with(|m| {
            let m = m.borrow();
            let l = m.as_ref().ok_or_else(|| Error::Failed("init() did not run".into()))?;
            let v: serde_json::Value = serde_json::from_slice(&request.body).map_err(|e| bad(format!("malformed JSON: {e}")))?;
            let rows = v.get("data").and_then(|d| d.as_array()).filter(|r| !r.is_empty());
            let rows = rows.ok_or_else(|| bad(format!("the body needs \"data\": [[{} numbers], ...]", l.width)))?;
            let mut flat = Vec::with_capacity(rows.len() * l.width);
            for row in rows {
                let row = row.as_array().filter(|r| r.len() == l.width);
                let row = row.ok_or_else(|| bad(format!("each row of \"data\" needs {} numbers", l.width)))?;
                for x in row {
                    flat.push(x.as_f64().ok_or_else(|| bad("\"data\" must hold numbers"))? as f32);
                }
            }
            let x = Tensor::create(&[rows.len() as u64, l.width as u64], &TensorData::Float32(flat))?;
            let mut outputs = serde_json::Map::new();
            for (name, t) in l.model.run(&[(l.input.clone(), &x)], &[])? {
                let TensorData::Float32(values) = t.data() else {
                    return Err(Error::Failed(format!("output {name} is not float32")));
                };
                let per_row = values.len() / rows.len();
                let cut: Vec<&[f32]> = values.chunks(per_row.max(1)).collect();
                outputs.insert(name, serde_json::json!(cut));
            }
            let body = serde_json::to_vec(&serde_json::json!({ "outputs": outputs })).map_err(|e| Error::Failed(e.to_string()))?;
            Ok(Response { body, content_type: "application/json".into(), tensors: Vec::new() })
        })
    }
}

export!(Rows);
