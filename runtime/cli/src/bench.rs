//! `wasmscore bench`: the request path measured piece by piece, in one run,
//! so the figures can be compared as ratios on a shared, noisy machine:
//! the compute floor (raw ONNX Runtime), a guest `run()` without HTTP,
//! instance creation, component load uncached and from the cache, and with
//! wrk (a real HTTP load generator) the network floor (a static responder on
//! the same hyper stack) and the full HTTP path at 1 and 16 connections.

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
}

const BODY: &str = r#"{"data": [[5.1, 3.5, 1.4, 0.2]]}"#;

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
    devices.add(cpu.clone());
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
    Ok(())
}

/// A `wasmscore up` of our own in `dir`, and a client for it.
fn start_up(dir: &Path) -> Result<(std::process::Child, crate::client::Client)> {
    let data = dir.join("data");
    let child = Command::new(std::env::current_exe()?)
        .args(["up", "--port", "0", "--data-dir"])
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
    let body = serde_json::json!({"name": version, "module": module_sha, "module_name": "bench.wasm",
        "models": [{"model": model_id}], "traffic": traffic});
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
    std::fs::write(
        &lua,
        format!("wrk.method = \"POST\"\nwrk.body = '{BODY}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n"),
    )?;

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
        // The router's hop: the same module as one version pinned, and
        // through a 3-version split (34/33/33).
        let sha = first_sha.expect("at least one module");
        create_version(&client, "split", "s1", &sha, &model_id, 34)?;
        create_version(&client, "split", "s2", &sha, &model_id, 33)?;
        create_version(&client, "split", "s3", &sha, &model_id, 33)?;
        let pinned = dir.path().join("pinned.lua");
        std::fs::write(
            &pinned,
            format!("wrk.method = \"POST\"\nwrk.body = '{BODY}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"x-wasmscore-version\"] = \"s1\"\n"),
        )?;
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
