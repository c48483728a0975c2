//! A scoring module that misbehaves on request, for the fault tests. The body
//! names the misbehaviour: "trap", "loop", "alloc" (1 MiB at a time),
//! "huge" (one 1 GiB allocation), "recurse" (unbounded recursion), "file",
//! "env", "socket" (a TCP connection to PORT with "socket:PORT"), "clock"
//! (the smallest step of the monotonic and wall clocks); "sleep:MS" waits MS
//! milliseconds without using the CPU (a model whose run takes a known time,
//! for the autoscaling tests); "copy-up:MB:REPS" hands the host REPS
//! tensors of MB megabytes (guest -> host) and "copy-down:MB:REPS" reads
//! one back REPS times (host -> guest), for the copy-cost benchmark
//! (`wasmscore bench --copy-module`); "model-on:DEVICE" runs the version's
//! model.onnx (iris) on DEVICE through `load-on`; "conv-on:DEVICE" runs a
//! fixed float32 conv2d through `ops` on DEVICE; "chain:N" feeds
//! chain.onnx's output back into it N times and reads only the last one;
//! through wasi-nn, "nn-load-name:FILE" loads FILE by name,
//! "nn-load-bytes" tries to load a graph from bytes, "nn-bad-tensor"
//! computes with a tensor whose bytes do not fit its dimensions and
//! "nn-fp16" with a half-precision one to a model that takes FP32 (each answers 200 with what it got);
//! an Open Inference Protocol request with an INT64 input COUNT of N answers
//! N times, each a response with an INT64 output INDEX (0..N): N - 1 sent
//! through `responses.send` (a decoupled model) and the last returned (N = 0:
//! an empty response returned); one with an input ANSWER_JSON answers an
//! inference response it wrote itself as JSON, with no tensors (outputs A,
//! INT64 [7], and B, FP32 [0.5, 1.5]); anything else is echoed.

wit_bindgen::generate!({ path: "../../../wit", world: "scorer-nn", generate_all });

use std::hint::black_box;

struct Hostile;

fn json(body: String) -> Result<Response, Error> {
    Ok(Response { body: body.into_bytes(), content_type: "application/json".into(), tensors: Vec::new() })
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

impl Guest for Hostile {
    fn init() -> Result<(), Error> {
        // INIT_SLEEP_MS (the version's config): a slow cold start.
        if let Some(ms) = std::env::var("INIT_SLEEP_MS").ok().and_then(|v| v.parse().ok()) {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        // INIT_FAIL: an init() that fails (after the sleep), with this text.
        if let Ok(why) = std::env::var("INIT_FAIL") {
            return Err(Error::Failed(why));
        }
        Ok(())
    }

    fn run(request: Request) -> Result<Response, Error> {
        if let Some((_, count)) = request.tensors.iter().find(|(n, _)| n == "COUNT") {
            return count_off(count);
        }
        if request.tensors.iter().any(|(n, _)| n == "ANSWER_JSON") {
            return json(r#"{"model_name": "hostile", "outputs": [
                {"name": "A", "datatype": "INT64", "shape": [1], "data": [7]},
                {"name": "B", "datatype": "FP32", "shape": [2], "data": [0.5, 1.5]}]}"#
                .into());
        }
        match std::str::from_utf8(&request.body).unwrap_or("") {
            "trap" => panic!("asked to trap"),
            // Every FAIL_EVERY-th call fails (the version's config sets the
            // variable): a treatment with a known error rate.
            "maybe-fail" => {
                static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let every: u64 = std::env::var("FAIL_EVERY").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
                let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                // A number for the verdict: SCORE_BASE + 0, 1 or 2 in turn.
                let base: f64 = std::env::var("SCORE_BASE").ok().and_then(|v| v.parse().ok()).unwrap_or(0.0);
                wasmscore::scoring::metrics::record("score", base + (n % 3) as f64);
                if every > 0 && n % every == 0 {
                    return Err(Error::Failed(format!("call {n} fails, as FAIL_EVERY={every} asks")));
                }
                json("{}".into())
            }
            "log" => {
                wasmscore::scoring::log::log(wasmscore::scoring::log::Level::Info, "hostile says hello");
                json("{}".into())
            }
            "loop" => {
                let mut i: u64 = 0;
                loop {
                    i = black_box(i.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(black_box(vec![1u8; 1 << 20]));
                }
            }
            "file" => match std::fs::read_to_string("/etc/passwd") {
                Ok(s) => json(format!("{{\"file\":\"read\",\"bytes\":{}}}", s.len())),
                Err(e) => json(format!("{{\"file\":\"denied\",\"error\":{}}}", quote(&e.to_string()))),
            },
            "env" => {
                let vars: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
                json(format!("{{\"env_vars\":{},\"home\":{}}}", vars.len(), std::env::var("HOME").is_ok()))
            }
            "huge" => {
                let v = black_box(vec![7u8; 1 << 30]);
                json(format!("{{\"huge\":{}}}", v.len()))
            }
            "recurse" => json(format!("{{\"depth\":{}}}", recurse(black_box(1)))),
            "clock" => {
                let step = |f: &dyn Fn() -> u128| {
                    let a = f();
                    let mut b = f();
                    let mut spins = 0u64;
                    while b == a && spins < 50_000_000 {
                        b = f();
                        spins += 1;
                    }
                    b.saturating_sub(a)
                };
                let t0 = std::time::Instant::now();
                let mono = step(&|| t0.elapsed().as_nanos());
                let wall = step(&|| {
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_nanos())
                        .unwrap_or(0)
                });
                json(format!("{{\"monotonic_step_ns\":{mono},\"wall_step_ns\":{wall}}}"))
            }
            other if other.starts_with("socket:") => {
                let addr = format!("127.0.0.1:{}", &other[7..]);
                match std::net::TcpStream::connect(&addr) {
                    Ok(_) => json("{\"socket\":\"connected\"}".into()),
                    Err(e) => json(format!("{{\"socket\":\"denied\",\"error\":{}}}", quote(&e.to_string()))),
                }
            }
            other if other.starts_with("env:") => {
                json(format!("{{\"value\":{}}}", std::env::var(&other[4..]).map(|v| quote(&v)).unwrap_or("null".into())))
            }
            other if other.starts_with("sleep:") => {
                let ms: u64 = other[6..].parse().unwrap_or(0);
                std::thread::sleep(std::time::Duration::from_millis(ms));
                json(format!("{{\"slept_ms\":{ms}}}"))
            }
            // Busy on a core for MS ms (a CPU-bound call, unlike sleep).
            other if other.starts_with("burn:") => {
                let ms: u64 = other[5..].parse().unwrap_or(0);
                let until = std::time::Instant::now() + std::time::Duration::from_millis(ms);
                let mut i: u64 = 0;
                while std::time::Instant::now() < until {
                    for _ in 0..1000 {
                        i = black_box(i.wrapping_add(1));
                    }
                }
                json(format!("{{\"burned_ms\":{ms}}}"))
            }
            other if other.starts_with("copy-") => copy(other),
            other if other.starts_with("model-on:") => model_on(&other[9..]),
            other if other.starts_with("conv-on:") => conv_on(&other[8..]),
            other if other.starts_with("chain:") => chain(other[6..].parse().unwrap_or(1)),
            other if other.starts_with("nn-") => nn(other),
            other => json(format!("{{\"echo\":{}}}", quote(other))),
        }
    }
}

/// Iris on the named device: which device the output came from, and it.
fn model_on(device: &str) -> Result<Response, Error> {
    use wasmscore::scoring::inference::Model;
    use wasmscore::scoring::tensors::Tensor;
    use wasmscore::scoring::types::TensorData;
    let model = Model::load_on("model.onnx", device)?;
    let x = Tensor::create(&[1, 4], &TensorData::Float32(vec![5.1, 3.5, 1.4, 0.2]))?;
    let out = model.run(&[("X".to_string(), &x)], &["probabilities".to_string()])?;
    let (_, p) = out.into_iter().next().ok_or_else(|| Error::Failed("no output".into()))?;
    let TensorData::Float32(v) = p.data() else {
        return Err(Error::Failed("probabilities are not float32".into()));
    };
    json(format!("{{\"device\":{},\"probabilities\":{v:?}}}", quote(&p.device())))
}

/// chain.onnx (Y = X + 1, float32 [-1, 4]) run n times on its own output.
fn chain(n: u32) -> Result<Response, Error> {
    use wasmscore::scoring::inference::Model;
    use wasmscore::scoring::tensors::Tensor;
    use wasmscore::scoring::types::TensorData;
    let model = Model::load("chain.onnx")?;
    let mut x = Tensor::create(&[1, 4], &TensorData::Float32(vec![1.0, 2.0, 3.0, 4.0]))?;
    for _ in 0..n {
        let out = model.run(&[("X".to_string(), &x)], &["Y".to_string()])?;
        x = out.into_iter().next().ok_or_else(|| Error::Failed("no output".into()))?.1;
    }
    let TensorData::Float32(v) = x.data() else {
        return Err(Error::Failed("Y is not float32".into()));
    };
    json(format!("{{\"device\":{},\"y\":{v:?}}}", quote(&x.device())))
}

/// x [1, 2, 6, 6] * w [3, 2, 3, 3], stride 1, pad 1, on the named device.
fn conv_on(device: &str) -> Result<Response, Error> {
    use wasmscore::scoring::ops;
    use wasmscore::scoring::tensors::Tensor;
    use wasmscore::scoring::types::TensorData;
    let x: Vec<f32> = (0..72).map(|i| ((i * 7) % 11) as f32 / 5.0 - 1.0).collect();
    let w: Vec<f32> = (0..54).map(|i| ((i * 5) % 13) as f32 / 6.0 - 1.0).collect();
    let x = Tensor::create(&[1, 2, 6, 6], &TensorData::Float32(x))?;
    let w = Tensor::create(&[3, 2, 3, 3], &TensorData::Float32(w))?;
    let y = ops::conv2d(&x, &w, None, (1, 1), (1, 1), Some(device))?;
    let TensorData::Float32(v) = y.data() else {
        return Err(Error::Failed("conv2d output is not float32".into()));
    };
    json(format!("{{\"device\":{},\"shape\":{:?},\"y\":{v:?}}}", quote(&y.device()), y.shape()))
}

/// wasi-nn probes: what the host answered, as {"loaded": FILE} or the
/// error's {"code", "data"}.
fn nn(cmd: &str) -> Result<Response, Error> {
    use wasi::nn::errors::Error as NnError;
    use wasi::nn::graph::{self, ExecutionTarget, GraphEncoding};
    use wasi::nn::tensor::{Tensor, TensorType};
    use wasi::nn::errors::ErrorCode as C;
    let answer = |e: NnError| {
        let code = match e.code() {
            C::InvalidArgument => "invalid-argument",
            C::InvalidEncoding => "invalid-encoding",
            C::Timeout => "timeout",
            C::RuntimeError => "runtime-error",
            C::UnsupportedOperation => "unsupported-operation",
            C::TooLarge => "too-large",
            C::NotFound => "not-found",
            C::Security => "security",
            C::Unknown => "unknown",
        };
        json(format!("{{\"code\":{},\"data\":{}}}", quote(code), quote(&e.data())))
    };
    let compute = |t: Tensor| -> Result<Response, Error> {
        let g = match graph::load_by_name("model.onnx") {
            Ok(g) => g,
            Err(e) => return answer(e),
        };
        let ctx = g.init_execution_context().map_err(|e| Error::Failed(e.data()))?;
        match ctx.compute(vec![("X".to_string(), t)]) {
            Ok(out) => json(format!("{{\"outputs\":{}}}", out.len())),
            Err(e) => answer(e),
        }
    };
    match cmd {
        "nn-load-bytes" => match graph::load(&[vec![0u8; 64]], GraphEncoding::Onnx, ExecutionTarget::Cpu) {
            Ok(_) => json("{\"loaded\":\"bytes\"}".into()),
            Err(e) => answer(e),
        },
        "nn-bad-tensor" => compute(Tensor::new(&[1, 4], TensorType::Fp32, &[0u8; 12])),
        "nn-fp16" => compute(Tensor::new(&[1, 4], TensorType::Fp16, &[0u8; 8])),
        other => {
            let file = other.strip_prefix("nn-load-name:").unwrap_or("");
            match graph::load_by_name(file) {
                Ok(_) => json(format!("{{\"loaded\":{}}}", quote(file))),
                Err(e) => answer(e),
            }
        }
    }
}

/// N responses for a COUNT of N: N - 1 sent as they are made, the last
/// returned.
fn count_off(count: &wasmscore::scoring::tensors::Tensor) -> Result<Response, Error> {
    use wasmscore::scoring::tensors::Tensor;
    use wasmscore::scoring::types::TensorData;
    let n = match count.data() {
        TensorData::Int64(v) if v.len() == 1 => v[0],
        _ => return Err(Error::BadInput("COUNT is one INT64".into())),
    };
    let indexed = |i: i64| -> Result<Response, Error> {
        Ok(Response {
            body: Vec::new(),
            content_type: String::new(),
            tensors: vec![("INDEX".into(), Tensor::create(&[1], &TensorData::Int64(vec![i]))?)],
        })
    };
    for i in 0..n - 1 {
        wasmscore::scoring::responses::send(indexed(i)?)?;
    }
    if n <= 0 {
        return Ok(Response { body: Vec::new(), content_type: String::new(), tensors: Vec::new() });
    }
    indexed(n - 1)
}

/// "copy-up:MB:REPS" or "copy-down:MB:REPS".
fn copy(cmd: &str) -> Result<Response, Error> {
    use wasmscore::scoring::tensors::Tensor;
    use wasmscore::scoring::types::TensorData;
    let parts: Vec<&str> = cmd.split(':').collect();
    let (mb, reps) = match parts[..] {
        [_, mb, reps] => (mb.parse::<u64>().unwrap_or(1), reps.parse::<u32>().unwrap_or(1)),
        _ => return Err(Error::BadInput("copy-up:MB:REPS or copy-down:MB:REPS".into())),
    };
    let n = (mb << 20) / 4;
    let data = TensorData::Float32(vec![1.5f32; n as usize]);
    let mut seen = 0usize;
    if parts[0] == "copy-up" {
        for _ in 0..reps {
            let t = Tensor::create(&[n], &data)?;
            seen += t.shape()[0] as usize;
        }
    } else {
        let t = Tensor::create(&[n], &data)?;
        for _ in 0..reps {
            if let TensorData::Float32(v) = black_box(t.data()) {
                seen += v.len();
            }
        }
    }
    json(format!("{{\"elements\":{seen}}}"))
}

#[inline(never)]
fn recurse(n: u64) -> u64 {
    let pad = black_box([n; 64]);
    if black_box(true) {
        recurse(n + 1) + pad[(n % 64) as usize]
    } else {
        n
    }
}

export!(Hostile);
