//! An MLP scored through the `ops` import, so its matrix products run on
//! the version's device: the CPU, or a device plugin such as fpga-sim (a
//! simulated FPGA) when the version's deployment config says
//! `"device": "fpga-sim"`. Build:
//! `wasmscore build examples/mlp-rust -o mlp.wasm`
//!
//! 16 inputs -> 64 (ReLU) -> 32 (ReLU) -> 4 (softmax). The weights are made
//! at init() from a fixed seed (standing in for trained weights, which a
//! real module would embed or load as a model file), so every replica and
//! every device computes the same network.
//!
//! Request: `{"data": [[16 numbers], ...]}`; optional `"elementwise":
//! "cpu"` (default: add, relu and softmax run on the device named "cpu") or
//! `"version"` (they go to the version's device too; a plugin that does not
//! run them fails unless the version set `device_fallback`).
//! Response: `{"probabilities": [[4], ...], "class": [...], "devices":
//! {"gemm": "...", "elementwise": "..."}}`.

wit_bindgen::generate!({ path: "../../wit", world: "scorer" });

use std::cell::RefCell;

use wasmscore::scoring::ops;
use wasmscore::scoring::tensors::Tensor;
use wasmscore::scoring::types::TensorData;

pub const LAYERS: [usize; 4] = [16, 64, 32, 4];

struct Mlp;

struct Layer {
    w: Tensor,
    b: Tensor,
}

thread_local! {
    static NET: RefCell<Vec<Layer>> = const { RefCell::new(Vec::new()) };
}

fn bad(msg: impl Into<String>) -> Error {
    Error::BadInput(msg.into())
}

/// The weights: a 64-bit LCG, uniform in +-sqrt(6 / (fan_in + fan_out)).
fn weights(seed: u64, fan_in: usize, fan_out: usize) -> Vec<f32> {
    let mut s = seed;
    let limit = (6.0 / (fan_in + fan_out) as f64).sqrt();
    (0..fan_in * fan_out)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let u = (s >> 11) as f64 / (1u64 << 53) as f64;
            ((u * 2.0 - 1.0) * limit) as f32
        })
        .collect()
}

impl Guest for Mlp {
    fn init() -> Result<(), Error> {
        let mut net = Vec::new();
        for (i, pair) in LAYERS.windows(2).enumerate() {
            let (fan_in, fan_out) = (pair[0], pair[1]);
            let w = Tensor::create(&[fan_in as u64, fan_out as u64], &TensorData::Float32(weights(7 + i as u64, fan_in, fan_out)))?;
            let bias: Vec<f32> = (0..fan_out).map(|j| ((j % 5) as f32 - 2.0) * 0.01).collect();
            let b = Tensor::create(&[fan_out as u64], &TensorData::Float32(bias))?;
            net.push(Layer { w, b });
        }
        NET.with(|n| *n.borrow_mut() = net);
        Ok(())
    }

    fn run(request: Request) -> Result<Response, Error> {
        let v: serde_json::Value = serde_json::from_slice(&request.body).map_err(|e| bad(format!("malformed JSON: {e}")))?;
        let width = LAYERS[0];
        let rows = v
            .get("data")
            .and_then(|d| d.as_array())
            .filter(|r| !r.is_empty())
            .ok_or_else(|| bad(format!("the body needs \"data\": [[{width} numbers], ...]")))?;
        let elementwise = match v.get("elementwise").and_then(|e| e.as_str()).unwrap_or("cpu") {
            "cpu" => Some("cpu"),
            "version" => None,
            other => return Err(bad(format!("\"elementwise\" is \"cpu\" or \"version\", got {other:?}"))),
        };
        let mut flat = Vec::with_capacity(rows.len() * width);
        for row in rows {
            let row = row
                .as_array()
                .filter(|r| r.len() == width)
                .ok_or_else(|| bad(format!("each row of \"data\" needs {width} numbers")))?;
            for x in row {
                flat.push(x.as_f64().ok_or_else(|| bad("\"data\" must hold numbers"))? as f32);
            }
        }
        let mut x = Tensor::create(&[rows.len() as u64, width as u64], &TensorData::Float32(flat))?;
        let (mut gemm_device, mut elementwise_device) = (String::new(), String::new());
        NET.with(|net| -> Result<(), Error> {
            let net = net.borrow();
            if net.is_empty() {
                return Err(Error::Failed("init() did not run".into()));
            }
            for (i, layer) in net.iter().enumerate() {
                // The product on the version's device (None); the bias add and
                // the activation where `elementwise` says.
                let h = ops::gemm(&x, &layer.w, None, 1.0, 0.0, false, false, None)?;
                gemm_device = h.device();
                let h = ops::add(&h, &layer.b, elementwise)?;
                x = if i + 1 < net.len() { ops::relu(&h, elementwise)? } else { ops::softmax(&h, -1, elementwise)? };
                elementwise_device = x.device();
            }
            Ok(())
        })?;
        let TensorData::Float32(p) = x.data() else {
            return Err(Error::Failed("probabilities are not float32".into()));
        };
        let out = LAYERS[LAYERS.len() - 1];
        let probs: Vec<&[f32]> = p.chunks(out).collect();
        let class: Vec<usize> = probs
            .iter()
            .map(|r| r.iter().enumerate().fold(0, |best, (i, v)| if *v > r[best] { i } else { best }))
            .collect();
        let body = serde_json::to_vec(&serde_json::json!({
            "probabilities": probs,
            "class": class,
            "devices": {"gemm": gemm_device, "elementwise": elementwise_device},
        }))
        .map_err(|e| Error::Failed(e.to_string()))?;
        Ok(Response {
            body,
            content_type: "application/json".into(),
            tensors: Vec::new(),
        })
    }
}

export!(Mlp);
