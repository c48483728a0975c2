//! `wasmscore bench`: the request path measured piece by piece, in one run,
//! so the figures can be compared as ratios on a shared, noisy machine:
//! the compute floor (raw ONNX Runtime), a guest `run()` without HTTP,
//! instance creation, component load uncached and from the cache, and with
//! wrk (a real HTTP load generator) the network floor (a static responder on
//! the same hyper stack) and the full HTTP path at 1 and 16 connections,
//! with key auth (as deployed by default), auth off, token auth and TLS.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use wasmscore_device_ort::OrtCpu;
use wasmscore_engine::{EngineConfig, Prepared, ScoreRequest, ScoringEngine, VersionContext};
use wasmscore_tensor::{Device, Devices, Tensor, TensorData};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// The iris ONNX model.
    #[arg(long, default_value = "examples/iris/model.onnx")]
    pub model: PathBuf,
    /// Scoring modules to measure, as NAME=PATH.wasm (e.g. rust=iris-rust.wasm python=iris-python.wasm).
    #[arg(long = "module", required = true)]
    pub modules: Vec<String>,
    /// Iterations per in-process measurement.
    #[arg(long, default_value_t = 20000)]
    pub iterations: u32,
    /// Seconds of wrk load per HTTP measurement (0 skips the HTTP part).
    #[arg(long, default_value_t = 10)]
    pub http_seconds: u32,
    /// Versions of the first module to deploy for the density figure (0 skips it).
    #[arg(long, default_value_t = 200)]
    pub density: u32,
    /// Rounds of the scaling figures: wake from zero per module, and load
    /// step -> new replica serving (0 skips them).
    #[arg(long, default_value_t = 5)]
    pub scaling_rounds: u32,
    /// Virtual environments made by ../shared/peers/setup.sh DIR: measure the
    /// peers' cold start (process start -> first 200) beside ours.
    #[arg(long)]
    pub peers_dir: Option<PathBuf>,
    /// The peers' scripts (run.sh).
    #[arg(long, default_value = "../shared/peers")]
    pub peers_scripts: PathBuf,
    /// A device plugin (e.g. target/release/libwasmscore_fpga_sim.so):
    /// call overhead through the ABI against a direct Rust call, and its
    /// cycle counts by shape.
    #[arg(long)]
    pub plugin: Option<PathBuf>,
    /// The test program tests/programs/hostile (its copy-up / copy-down
    /// commands): host <-> guest tensor copy cost per MB.
    #[arg(long)]
    pub copy_module: Option<PathBuf>,
}

const BODY: &str = r#"{"data": [[5.1, 3.5, 1.4, 0.2]]}"#;

/// Every endpoint the bench makes uses this primary key (key auth on, as a
/// user deploys), so one wrk script serves them all.
const BENCH_KEY: &str = "bench-primary-key-0123456789";

/// wrk's script: the request, with the key.
fn wrk_script(extra: &str) -> String {
    format!(
        "wrk.method = \"POST\"\nwrk.body = '{BODY}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"Authorization\"] = \"Bearer {BENCH_KEY}\"\n{extra}"
    )
}

struct Stats {
    p50: Duration,
    p99: Duration,
    mean: Duration,
}

fn measure(n: u32, mut f: impl FnMut()) -> Stats {
    for _ in 0..(n / 10).max(1) {
        f();
    }
    let mut v = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let t = Instant::now();
        f();
        v.push(t.elapsed());
    }
    v.sort();
    let mean = v.iter().sum::<Duration>() / n;
    Stats {
        p50: v[v.len() / 2],
        p99: v[v.len() * 99 / 100],
        mean,
    }
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

pub fn run(args: BenchArgs) -> Result<()> {
    let cpu = Arc::new(OrtCpu::discover()?);
    let model_bytes = std::fs::read(&args.model).with_context(|| format!("reading {}", args.model.display()))?;
    let session = cpu.load_model("model.onnx", &model_bytes)?;
    let x = Tensor::new(vec![1, 4], TensorData::Float32(vec![5.1, 3.5, 1.4, 0.2]))?;
    println!("# wasmscore bench ({} iterations per in-process figure)\n", args.iterations);
    println!("| measurement | p50 | p99 | mean |\n| --- | --- | --- | --- |");
    let floor = measure(args.iterations, || {
        session.run(&[("X", &x)], &["probabilities"]).expect("ort run");
    });
    println!(
        "| raw ONNX Runtime run, iris, 1 row (compute floor) | {} | {} | {} |",
        us(floor.p50),
        us(floor.p99),
        us(floor.mean)
    );

    let mut devices = Devices::new();
    devices.add(cpu.clone()).map_err(anyhow::Error::msg)?;
    for spec in &args.modules {
        let (name, path) = spec.split_once('=').unwrap_or(("module", spec.as_str()));
        let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
        let cache = tempfile::tempdir()?;
        let engine = ScoringEngine::new(EngineConfig::new(cache.path().to_path_buf()))?;
        let (_, uncached) = engine.load(&bytes)?;
        // A fresh engine, as after a restart: only the disk cache is shared.
        let engine2 = ScoringEngine::new(EngineConfig::new(cache.path().to_path_buf()))?;
        let (pre, restart) = engine2.load(&bytes)?;
        assert!(restart.from_cache, "the second load must come from the cache");
        let mut models = HashMap::new();
        models.insert("model.onnx".to_string(), session.clone());
        let ctx = Arc::new(VersionContext::new("bench", name, models, devices.clone(), "cpu", 1 << 30));
        let prepared = Prepared::new(pre, ctx, Duration::from_secs(60), Duration::from_secs(300));
        let inst = measure((args.iterations / 10).max(100), || {
            drop(prepared.instantiate().expect("instantiate"));
        });
        let mut replica = prepared.start()?;
        let req = ScoreRequest {
            body: BODY.as_bytes().to_vec(),
            content_type: "application/json".into(),
            tensors: Vec::new(),
            trace_id: None,
            responses: None,
        };
        let run = measure(args.iterations, || {
            replica.run(req.clone()).expect("run");
        });
        println!(
            "| {name}: component load, uncached (compile) | {:.1} ms | | |",
            uncached.elapsed.as_secs_f64() * 1e3
        );
        println!(
            "| {name}: component load from the disk cache (new engine) | {:.1} ms | | |",
            restart.elapsed.as_secs_f64() * 1e3
        );
        println!(
            "| {name}: instance creation (pooling allocator, no init) | {} | {} | {} |",
            us(inst.p50),
            us(inst.p99),
            us(inst.mean)
        );
        println!(
            "| {name}: guest run(), no HTTP | {} | {} | {} |",
            us(run.p50),
            us(run.p99),
            us(run.mean)
        );
    }
    if args.http_seconds > 0 {
        http(&args)?;
    }
    if args.density > 0 {
        density(&args)?;
    }
    if args.scaling_rounds > 0 {
        scaling(&args)?;
        cold_starts(&args)?;
    }
    if let Some(p) = &args.plugin {
        plugin(p, args.iterations)?;
    }
    if let Some(p) = &args.copy_module {
        copies(p, &devices)?;
    }
    Ok(())
}

/// Tensor copies across the component boundary, per MB: `Tensor::create`
/// (the host lifts a list<f32> out of guest memory) and `tensor.data()`
/// (the host lowers one into guest memory), against a plain memcpy of the
/// same bytes. Each figure is (run with 1 + R copies - run with 1) / R, the
/// median of 5, so what the guest does around the copies cancels out.
fn copies(path: &Path, devices: &Devices) -> Result<()> {
    const R: u32 = 8;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let cache = tempfile::tempdir()?;
    let engine = ScoringEngine::new(EngineConfig::new(cache.path().to_path_buf()))?;
    let (pre, _) = engine.load(&bytes)?;
    let ctx = Arc::new(VersionContext::new(
        "bench",
        "copy",
        HashMap::new(),
        devices.clone(),
        "cpu",
        3 << 30,
    ));
    let mut replica = Prepared::new(pre, ctx, Duration::from_secs(60), Duration::from_secs(60)).start()?;
    let mut time = |cmd: String| -> Result<Duration> {
        let req = ScoreRequest {
            body: cmd.into_bytes(),
            content_type: "text/plain".into(),
            tensors: Vec::new(),
            trace_id: None,
            responses: None,
        };
        let t = Instant::now();
        replica.run(req).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(t.elapsed())
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "\n| tensor copy, float32 | guest -> host (Tensor::create) per MB | host -> guest (data()) per MB | memcpy per MB (floor) | ratio to memcpy (up / down) |\n| --- | --- | --- | --- | --- |"
    );
    for mb in [1u64, 8, 64] {
        let mut per = |dir: &str| -> Result<f64> {
            let mut v = Vec::new();
            for _ in 0..5 {
                let one = time(format!("copy-{dir}:{mb}:1"))?;
                let many = time(format!("copy-{dir}:{mb}:{}", 1 + R))?;
                v.push(many.saturating_sub(one).as_secs_f64() / f64::from(R) / mb as f64);
            }
            Ok(median(v))
        };
        let (up, down) = (per("up")?, per("down")?);
        let src = vec![1.5f32; (mb << 18) as usize];
        let floor = median(
            (0..5)
                .map(|_| {
                    let t = Instant::now();
                    std::hint::black_box(src.clone());
                    t.elapsed().as_secs_f64() / mb as f64
                })
                .collect(),
        );
        println!(
            "| {mb} MB | {:.0} µs ({:.1} GB/s) | {:.0} µs ({:.1} GB/s) | {:.0} µs | {:.1}x / {:.1}x |",
            up * 1e6,
            1.0 / 1024.0 / up,
            down * 1e6,
            1.0 / 1024.0 / down,
            floor * 1e6,
            up / floor,
            down / floor
        );
    }
    Ok(())
}

/// Device plugin figures: the ABI's cost per call for small int8 matmuls
/// (through dlopen'd execute vs calling the same Rust function directly),
/// and fpga-sim's cycle counts by shape.
fn plugin(path: &Path, iterations: u32) -> Result<()> {
    use wasmscore_device_plugin::{HostTensor, Plugin};
    use wasmscore_plugin_sdk::abi::{DType, OpKind, OpParams};
    let p = std::sync::Arc::new(Plugin::load(path, "{}")?);
    let mut inst = p.instance("bench").map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "\n| plugin {}: int8 matmul | through the ABI (p50) | direct Rust call (p50) | ABI overhead |\n| --- | --- | --- | --- |",
        p.name
    );
    for (m, k, n) in [(1usize, 1usize, 1usize), (4, 4, 4), (16, 16, 16), (64, 64, 64)] {
        let a: Vec<u8> = (0..m * k).map(|i| (i % 7) as u8).collect();
        let b: Vec<u8> = (0..k * n).map(|i| (i % 5) as u8).collect();
        let mut inputs = vec![
            HostTensor::new(DType::Int8, vec![m as i64, k as i64], &a, 0),
            HostTensor::new(DType::Int8, vec![k as i64, n as i64], &b, 0),
        ];
        let mut out = HostTensor::zeros(DType::Int32, vec![m as i64, n as i64], 0);
        let params = OpParams::default();
        let n_iter = if m >= 64 { iterations / 20 } else { iterations }.max(100);
        let via = measure(n_iter, || {
            inst.execute(OpKind::MatMul, &params, &mut inputs, &mut out).expect("execute");
        });
        let ai: Vec<i32> = a.iter().map(|x| i32::from(*x as i8)).collect();
        let bi: Vec<i32> = b.iter().map(|x| i32::from(*x as i8)).collect();
        let direct = measure(n_iter, || {
            std::hint::black_box(wasmscore_fpga_sim::systolic_matmul(&ai, &bi, m, k, n));
        });
        let ns = |d: Duration| format!("{} ns", d.as_nanos());
        println!(
            "| {m}x{k}x{n} | {} | {} | {} |",
            ns(via.p50),
            ns(direct.p50),
            ns(via.p50.saturating_sub(direct.p50))
        );
    }
    println!(
        "\n| fpga-sim (a simulator), int8 matmul | cycles | MACs | array utilization (MACs / (cycles x 256)) |\n| --- | --- | --- | --- |"
    );
    for (m, k, n) in [
        (1usize, 16usize, 16usize),
        (16, 16, 16),
        (64, 64, 64),
        (128, 256, 64),
        (256, 256, 256),
        (17, 33, 15),
    ] {
        let mut inputs = vec![
            HostTensor::zeros(DType::Int8, vec![m as i64, k as i64], 0),
            HostTensor::zeros(DType::Int8, vec![k as i64, n as i64], 0),
        ];
        let mut out = HostTensor::zeros(DType::Int32, vec![m as i64, n as i64], 0);
        let st = inst
            .execute(OpKind::MatMul, &OpParams::default(), &mut inputs, &mut out)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let macs = (m * k * n) as u64;
        println!(
            "| {m}x{k}x{n} | {} | {macs} | {:.1}% |",
            st.device_cycles,
            100.0 * macs as f64 / (st.device_cycles.max(1) as f64 * 256.0)
        );
    }
    Ok(())
}

/// A free port on 127.0.0.1.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Times `start` (a process) until POST `path` on `port` answers 200.
fn cold_start(mut cmd: Command, port: u16, path: &str) -> Result<Duration> {
    use std::io::{Read, Write};
    let t = Instant::now();
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    let result = loop {
        if t.elapsed() > Duration::from_secs(60) {
            break Err(anyhow::anyhow!("no 200 within 60 s"));
        }
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = write!(
                s,
                "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {BENCH_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{BODY}",
                BODY.len()
            );
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            if out.starts_with(b"HTTP/1.1 200") || out.starts_with(b"HTTP/1.0 200") {
                break Ok(t.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// Process start -> first 200: wasmscore restarting with the Rust module
/// deployed (from its compile cache), and the peers when `--peers-dir` is given.
fn cold_starts(args: &BenchArgs) -> Result<()> {
    let (_, path) = args.modules[0].split_once('=').unwrap_or(("module", args.modules[0].as_str()));
    let dir = tempfile::tempdir()?;
    {
        let (mut child, c) = start_up(dir.path())?;
        let model = c.register_model(&args.model, "iris", &serde_json::json!({}), "")?;
        let model_id = model["id"].as_str().unwrap_or("iris:1").to_string();
        let (sha, _) = c.upload_module(Path::new(path))?;
        let made = create_version(&c, "cold", "v1", &sha, &model_id, 0);
        let _ = child.kill();
        let _ = child.wait();
        made?;
    }
    let mut rows: Vec<(String, Vec<Duration>)> = Vec::new();
    let mut ours = Vec::new();
    for _ in 0..args.scaling_rounds {
        let port = free_port()?;
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(["up", "--port", &port.to_string(), "--data-dir"])
            .arg(dir.path().join("data"));
        ours.push(cold_start(cmd, port, "/api/v1/service/cold/score")?);
    }
    rows.push((format!("wasmscore up, {path} deployed (restart, compile cache warm)"), ours));
    if let Some(peers) = &args.peers_dir {
        let run = args.peers_scripts.join("run.sh");
        for kind in ["azml", "fastapi"] {
            let mut times = Vec::new();
            for _ in 0..args.scaling_rounds.min(3) {
                let port = free_port()?;
                let mut cmd = Command::new(&run);
                cmd.arg(kind).arg(port.to_string()).arg(&args.model).arg(peers);
                times.push(cold_start(cmd, port, "/score")?);
            }
            rows.push((format!("peer {kind} (../shared/peers/run.sh)"), times));
        }
    }
    println!("\n| cold start: process start -> first 200 | p50 | min | max |\n| --- | --- | --- | --- |");
    for (name, mut v) in rows {
        v.sort();
        println!("| {name} | {} | {} | {} |", ms(v[v.len() / 2]), ms(v[0]), ms(v[v.len() - 1]));
    }
    Ok(())
}

/// One scoring request on a new connection; its status and time.
fn score_once(base: &str, endpoint: &str) -> Result<(u16, Duration)> {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    write!(
        s,
        "POST /api/v1/service/{endpoint}/score HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {BENCH_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    )?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let took = t.elapsed();
    let head = String::from_utf8_lossy(&out[..out.len().min(16)]).to_string();
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, took))
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Polls a version's `show` until `f` holds (at most `limit`).
fn poll_version(c: &crate::client::Client, endpoint: &str, limit: Duration, f: impl Fn(&serde_json::Value) -> bool) -> Result<Duration> {
    let t = Instant::now();
    loop {
        let v = c.get(&format!("/admin/v1/endpoints/{endpoint}/versions/v1"))?;
        if f(&v) {
            return Ok(t.elapsed());
        }
        if t.elapsed() > limit {
            bail!("{endpoint}: condition not reached within {limit:?}: {v}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Wake from zero (idle version at 0 replicas -> first response) per module,
/// and load step -> a new replica serving.
fn scaling(args: &BenchArgs) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut child, c) = start_up(dir.path())?;
    let result = (|| -> Result<()> {
        let model = c.register_model(&args.model, "iris", &serde_json::json!({}), "")?;
        let model_id = model["id"].as_str().unwrap_or("iris:1").to_string();
        println!(
            "\n| scaling, {} rounds | p50 | min | max |\n| --- | --- | --- | --- |",
            args.scaling_rounds
        );
        let summary = |mut v: Vec<Duration>| {
            v.sort();
            format!("{} | {} | {}", ms(v[v.len() / 2]), ms(v[0]), ms(v[v.len() - 1]))
        };
        for spec in &args.modules {
            let (name, path) = spec.split_once('=').unwrap_or(("module", spec.as_str()));
            let (sha, _) = c.upload_module(Path::new(path))?;
            let endpoint = format!("zero-{name}");
            create_version_with(
                &c,
                &endpoint,
                "v1",
                &sha,
                &model_id,
                0,
                serde_json::json!({"autoscale_min_replicas": 0, "autoscale_scale_down_delay_seconds": 0.3, "autoscale_refresh_seconds": 0.1}),
            )?;
            let (mut woke, mut warm) = (Vec::new(), Vec::new());
            for _ in 0..args.scaling_rounds {
                poll_version(&c, &endpoint, Duration::from_secs(10), |v| v["replicas"] == 0)?;
                let (status, t) = score_once(c.base_url(), &endpoint)?;
                if status != 200 {
                    bail!("{endpoint}: the first request after zero got {status}");
                }
                woke.push(t);
                warm.push(score_once(c.base_url(), &endpoint)?.1);
            }
            println!(
                "| {name}: wake from zero (0 replicas -> first response, new connection) | {} |",
                summary(woke)
            );
            println!("| {name}: the next request, replica warm (new connection) | {} |", summary(warm));
        }
        // Load step: 16 connections of wrk start at once on a version with
        // one replica; time until a second replica serves.
        let (_, path) = args.modules[0].split_once('=').unwrap_or(("module", args.modules[0].as_str()));
        let (sha, _) = c.upload_module(Path::new(path))?;
        let lua = dir.path().join("post.lua");
        std::fs::write(&lua, wrk_script(""))?;
        for refresh in [1.0, 0.2] {
            let endpoint = format!("step-{}", (refresh * 10.0) as u32);
            create_version_with(
                &c,
                &endpoint,
                "v1",
                &sha,
                &model_id,
                0,
                serde_json::json!({"autoscale_refresh_seconds": refresh, "autoscale_scale_down_delay_seconds": 0.5}),
            )?;
            let mut took = Vec::new();
            for _ in 0..args.scaling_rounds {
                poll_version(&c, &endpoint, Duration::from_secs(10), |v| v["replicas"] == 1)?;
                let url = format!("{}/api/v1/service/{endpoint}/score", c.base_url());
                let mut wrk = Command::new("wrk")
                    .args(["-t", "2", "-c", "16", "-d", "2s", "-s"])
                    .arg(&lua)
                    .arg(&url)
                    .stdout(Stdio::null())
                    .spawn()
                    .context("running wrk")?;
                took.push(poll_version(&c, &endpoint, Duration::from_secs(10), |v| {
                    v["replicas"].as_u64().unwrap_or(0) >= 2
                })?);
                wrk.wait()?;
            }
            println!(
                "| {path}: load step (wrk 16 conns) -> 2nd replica serving, autoscale_refresh_seconds {refresh} | {} |",
                summary(took)
            );
        }
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// A `wasmscore up` of our own in `dir`, and a client for it.
fn start_up(dir: &Path) -> Result<(std::process::Child, crate::client::Client)> {
    let data = dir.join("data");
    let child = Command::new(std::env::current_exe()?)
        .args(["up", "--port", "0", "--tls-port", "0", "--tls-self-signed", "--data-dir"])
        .arg(&data)
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !data.join("server.json").is_file() {
        if Instant::now() > deadline {
            bail!("wasmscore up did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    Ok((child, crate::client::Client::from_data_dir(&data)?))
}

/// Creates a version from an uploaded module and a registered model, and
/// waits until it serves.
fn create_version(c: &crate::client::Client, endpoint: &str, version: &str, module_sha: &str, model_id: &str, traffic: u32) -> Result<()> {
    create_version_with(c, endpoint, version, module_sha, model_id, traffic, serde_json::Value::Null)
}

fn create_version_with(
    c: &crate::client::Client,
    endpoint: &str,
    version: &str,
    module_sha: &str,
    model_id: &str,
    traffic: u32,
    config: serde_json::Value,
) -> Result<()> {
    let mut config = config;
    if config.is_null() {
        config = serde_json::json!({});
    }
    config["primary_key"] = BENCH_KEY.into();
    let body = serde_json::json!({"name": version, "module": module_sha, "module_name": "bench.wasm",
        "models": [{"model": model_id}], "traffic": traffic, "config": config});
    let answer = c.request(
        "POST",
        &format!("/admin/v1/endpoints/{endpoint}/versions"),
        serde_json::to_vec(&body)?,
    )?;
    if let Some(g) = answer["generation"].as_u64() {
        c.wait(endpoint, version, g, false)?;
    }
    Ok(())
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")
}

/// Density: N versions of the first module across endpoints (6 per
/// endpoint, the rollout limit); resident memory and deploy time per version.
fn density(args: &BenchArgs) -> Result<()> {
    let (_, path) = args.modules[0].split_once('=').unwrap_or(("module", args.modules[0].as_str()));
    let dir = tempfile::tempdir()?;
    let (mut child, c) = start_up(dir.path())?;
    let result = (|| -> Result<()> {
        let (sha, _) = c.upload_module(Path::new(path))?;
        let model = c.register_model(&args.model, "iris", &serde_json::json!({}), "")?;
        let model_id = model["id"].as_str().unwrap_or("iris:1").to_string();
        // One version first, so the compile and the session are not in the per-version figures.
        create_version(&c, "warm", "v1", &sha, &model_id, 0)?;
        let before = rss_kib(child.id())?;
        let started = Instant::now();
        for i in 0..args.density {
            create_version(&c, &format!("d{}", i / 6), &format!("v{}", i % 6), &sha, &model_id, 0)?;
        }
        let took = started.elapsed();
        let after = rss_kib(child.id())?;
        println!(
            "\n| density: {} versions of {path} | value |\n| --- | --- |\n| deploy time per version (create -> serving, sequential) | {:.2} ms |\n| resident memory per version | {:.0} KiB |\n| process RSS before / after | {} / {} MiB |\n| versions per GiB (at this RSS per version) | {:.0} |",
            args.density,
            took.as_secs_f64() * 1000.0 / args.density as f64,
            (after.saturating_sub(before)) as f64 / args.density as f64,
            before / 1024,
            after / 1024,
            (1024.0 * 1024.0) / ((after.saturating_sub(before)) as f64 / args.density as f64).max(1.0),
        );
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// The HTTP part: wrk against a static responder and against `wasmscore up`.
fn http(args: &BenchArgs) -> Result<()> {
    if Command::new("wrk")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        bail!("wrk is not installed (apt-get install wrk); rerun with --http-seconds 0 to skip the HTTP part");
    }
    let dir = tempfile::tempdir()?;
    let lua = dir.path().join("post.lua");
    std::fs::write(&lua, wrk_script(""))?;

    let static_addr = static_responder()?;
    let (mut child, client) = start_up(dir.path())?;
    let result = (|| -> Result<()> {
        println!(
            "\n| HTTP, wrk {}s, 2 threads | conns | req/s | p50 | p99 | errors |\n| --- | --- | --- | --- | --- | --- |",
            args.http_seconds
        );
        for c in [1u32, 16] {
            let r = wrk(&lua, &format!("http://{static_addr}/"), c, args.http_seconds)?;
            println!("| static responder (network floor) | {c} | {} |", r);
        }
        let model = client.register_model(&args.model, "iris", &serde_json::json!({}), "")?;
        let model_id = model["id"].as_str().unwrap_or("iris:1").to_string();
        let mut first_sha = None;
        for spec in &args.modules {
            let (name, path) = spec.split_once('=').unwrap_or(("module", spec.as_str()));
            let (sha, _) = client.upload_module(Path::new(path))?;
            first_sha.get_or_insert(sha.clone());
            create_version(&client, name, "v1", &sha, &model_id, 0)?;
            let url = format!("{}/api/v1/service/{name}/score", client.base_url());
            for c in [1u32, 16] {
                let r = wrk(&lua, &url, c, args.http_seconds)?;
                println!("| wasmscore {name}, full path | {c} | {} |", r);
            }
        }
        // What auth and TLS cost: one endpoint of the first module with a
        // fixed replica count (so autoscaling does not move between runs),
        // scored with its key over plain HTTP and over TLS, then with auth
        // off, then with tokens.
        let sha = first_sha.clone().expect("at least one module");
        let (first, _) = args.modules[0].split_once('=').unwrap_or(("module", args.modules[0].as_str()));
        create_version_with(&client, "auth", "v1", &sha, &model_id, 0, serde_json::json!({"num_replicas": 2}))?;
        let info: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("data/server.json"))?)?;
        let plain = format!("{}/api/v1/service/auth/score", client.base_url());
        let tls = format!("{}/api/v1/service/auth/score", info["tls_url"].as_str().unwrap_or(""));
        let set_auth =
            |body: serde_json::Value| client.request("PATCH", "/admin/v1/endpoints/auth", serde_json::to_vec(&body).unwrap_or_default());
        for c in [1u32, 16] {
            println!(
                "| {first} (2 replicas), key auth | {c} | {} |",
                wrk(&lua, &plain, c, args.http_seconds)?
            );
            println!(
                "| {first} (2 replicas), key auth over TLS 1.3 (HTTP/1.1) | {c} | {} |",
                wrk(&lua, &tls, c, args.http_seconds)?
            );
        }
        set_auth(serde_json::json!({"auth_enabled": false}))?;
        for c in [1u32, 16] {
            println!(
                "| {first} (2 replicas), auth off | {c} | {} |",
                wrk(&lua, &plain, c, args.http_seconds)?
            );
        }
        set_auth(serde_json::json!({"token_auth_enabled": true}))?;
        let token = client.request("POST", "/admin/v1/endpoints/auth/token", Vec::new())?;
        let token_lua = dir.path().join("token.lua");
        std::fs::write(
            &token_lua,
            wrk_script(&format!(
                "wrk.headers[\"Authorization\"] = \"Bearer {}\"\n",
                token["accessToken"].as_str().unwrap_or("")
            )),
        )?;
        for c in [1u32, 16] {
            println!(
                "| {first} (2 replicas), token auth (HS256 JWT) | {c} | {} |",
                wrk(&token_lua, &plain, c, args.http_seconds)?
            );
        }
        // The router's hop: the same module as one version pinned, and
        // through a 3-version split (34/33/33).
        create_version(&client, "split", "s1", &sha, &model_id, 34)?;
        create_version(&client, "split", "s2", &sha, &model_id, 33)?;
        create_version(&client, "split", "s3", &sha, &model_id, 33)?;
        let pinned = dir.path().join("pinned.lua");
        std::fs::write(&pinned, wrk_script("wrk.headers[\"x-wasmscore-version\"] = \"s1\"\n"))?;
        let url = format!("{}/api/v1/service/split/score", client.base_url());
        for c in [1u32, 16] {
            let r = wrk(&pinned, &url, c, args.http_seconds)?;
            println!("| split endpoint, pinned to one version | {c} | {} |", r);
            let r = wrk(&lua, &url, c, args.http_seconds)?;
            println!("| split endpoint, 3-version weighted split | {c} | {} |", r);
        }
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// Runs wrk; returns "req/s | p50 | p99 | errors".
fn wrk(lua: &Path, url: &str, conns: u32, secs: u32) -> Result<String> {
    let threads = conns.min(2);
    let out = Command::new("wrk")
        .args([
            "-t",
            &threads.to_string(),
            "-c",
            &conns.to_string(),
            "-d",
            &format!("{secs}s"),
            "--latency",
            "-s",
        ])
        .arg(lua)
        .arg(url)
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let find = |key: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?")
            .to_string()
    };
    let errors = text
        .lines()
        .filter(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ");
    Ok(format!(
        "{} | {} | {} | {}",
        find("Requests/sec:"),
        find("50%"),
        find("99%"),
        if errors.is_empty() { "0".into() } else { errors }
    ))
}

/// A static HTTP responder on the same hyper stack: the network floor.
fn static_responder() -> Result<std::net::SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(
                            br#"{"probabilities": [[0.98, 0.018, 0.0]]}"#,
                        ))))
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
    Ok(addr)
}
