//! Device plugins: the fpga-sim plugin (a simulator) built as a shared
//! library against plugins/abi, checked by `wasmscore plugin check`; the
//! kit fails a plugin that does not meet it, and refuses a library that is
//! not a plugin. Then the same plugin loaded by `up --plugin-dir` as a
//! device: the MLP example scored through `ops` on cpu and on fpga-sim,
//! device time in show and /metrics, and what happens to devices the host
//! has not (no silent fallback).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::{json, Value};

use super::{bin, built, error_code, hostile, iris_rust, model, root, Server};

/// Builds plugins/fpga-sim in its own target dir (the outer `cargo test`
/// holds the workspace's), once per run.
fn fpga_sim() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let target = root().join("target/plugins");
        let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "-p", "wasmscore-fpga-sim", "--manifest-path"])
            .arg(root().join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", &target)
            .status()
            .unwrap();
        assert!(st.success(), "building fpga-sim failed");
        target.join("release/libwasmscore_fpga_sim.so")
    })
}

#[test]
fn fpga_sim_passes_the_conformance_kit_and_exports_only_its_entry_point() {
    let so = fpga_sim();
    let out = Command::new(bin()).args(["plugin", "check"]).arg(so).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("plugin fpga-sim (ABI 1.0)") && text.contains(", 0 failed"), "{text}");
    for want in [
        "matmul   int8",
        "matmul   int16",
        "matmul   float32",
        "gemm     float32",
        "conv2d   int8",
        "conv2d   float32",
        "unaligned",
        "4x0x4",
        "returned error",
    ] {
        assert!(text.contains(want), "{want:?} not in the report:\n{text}");
    }
    assert!(!text.contains("FAIL"));
    // Integer ops bit-exact; the 128x256x64 int8 matmul takes the array's cycles.
    assert!(
        text.lines()
            .any(|l| l.contains("matmul   int8     128x256x64 ") && l.contains("11136") && l.contains("bit-exact")),
        "{text}"
    );
    let nm = Command::new("nm").args(["-D", "--defined-only"]).arg(so).output().unwrap();
    let symbols: Vec<String> = String::from_utf8_lossy(&nm.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_string))
        .collect();
    assert_eq!(symbols, vec!["wasmscore_plugin_get_api"], "exported symbols");
}

#[test]
fn the_kit_fails_a_plugin_that_misses_and_refuses_what_is_not_a_plugin() {
    // A tolerance no quantizing device meets: float cases fail, exit non-zero.
    let out = Command::new(bin())
        .args(["plugin", "check", "--tolerance", "0.0001"])
        .arg(fpga_sim())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FAIL") && text.contains("bit-exact"), "{text}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("checks failed"));
    // A shared library without the entry point, and a file that is not one.
    let libm = ["/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib/x86_64-linux-gnu/libm.so.6"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    if let Some(libm) = libm {
        let out = Command::new(bin()).args(["plugin", "check", libm]).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("not a wasmscore device plugin"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
    let junk = tempfile::tempdir().unwrap();
    let p = junk.path().join("junk.so");
    std::fs::write(&p, b"not a library").unwrap();
    let out = Command::new(bin()).args(["plugin", "check"]).arg(&p).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be loaded as a shared library"));
}

fn mlp() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| built("mlp-rust", &root().join("examples/mlp-rust")))
}

/// The stated tolerance of the MLP on fpga-sim (float32 quantized to int8
/// per tensor at each of its three products): each probability within
/// 0.02 of the CPU's.
const MLP_TOLERANCE: f64 = 0.02;

fn mlp_rows(n: usize) -> Value {
    let mut s = 12345u64;
    let rows: Vec<Vec<f64>> = (0..n)
        .map(|_| {
            (0..16)
                .map(|_| {
                    s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
                    ((s >> 33) as f64 / (1u64 << 31) as f64) * 4.0 - 2.0
                })
                .collect()
        })
        .collect();
    json!({ "data": rows })
}

fn deploy_error(s: &Server, name: &str, module: &Path, models: &[&Path], dc: Value) -> String {
    let out = s.deploy(name, module, models, Some(dc));
    assert!(!out.status.success(), "{name} must be refused");
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn usage<'a>(show: &'a Value, device: &str) -> &'a Value {
    show["versions"][0]["devices"]["usage"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["device"] == device)
        .unwrap_or_else(|| panic!("no usage for {device}: {show}"))
}

#[test]
fn the_mlp_on_fpga_sim_agrees_with_the_cpu_and_devices_are_never_swapped_silently() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fpga_sim(), dir.path().join("libwasmscore_fpga_sim.so")).unwrap();
    std::fs::write(dir.path().join("broken.so"), b"not a library").unwrap();
    let s = Server::start(&["--plugin-dir", dir.path().to_str().unwrap()]);

    // What the host has: the broken plugin is refused with its reason and
    // the host serves; cuda is missing with why.
    let (st, devices) = s.get_admin("/admin/v1/devices");
    assert_eq!(st, 200);
    let names = device_names(&devices);
    assert_eq!(names, ["cpu", "fpga-sim"], "{devices}");
    assert!(devices["devices"][1]["description"].as_str().unwrap().contains("simulated FPGA"));
    assert!(
        unavailable_why(&devices, "broken")
            .unwrap()
            .contains("cannot be loaded as a shared library"),
        "{devices}"
    );
    assert!(unavailable_why(&devices, "cuda").is_some(), "{devices}");
    let out = Command::new(bin())
        .args(["devices", "--data-dir"])
        .arg(s.data.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("fpga-sim") && text.contains("broken") && text.contains("not available"),
        "{text}"
    );

    // The same module on the two devices: same classes, probabilities
    // within the stated tolerance; the products ran where the version said.
    s.deploy_ok("mlp-cpu", mlp(), &[], None);
    s.deploy_ok("mlp-fpga", mlp(), &[], Some(json!({"device": "fpga-sim", "num_replicas": 1})));
    let body = mlp_rows(32).to_string();
    let (sc, _, cpu) = s.score("mlp-cpu", &body);
    let (sf, _, fpga) = s.score("mlp-fpga", &body);
    assert_eq!((sc, sf), (200, 200), "{cpu} {fpga}");
    assert_eq!(cpu["devices"], json!({"gemm": "cpu", "elementwise": "cpu"}));
    assert_eq!(fpga["devices"], json!({"gemm": "fpga-sim", "elementwise": "cpu"}));
    let mut worst = 0f64;
    for (rc, rf) in cpu["probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .zip(fpga["probabilities"].as_array().unwrap())
    {
        for (a, b) in rc.as_array().unwrap().iter().zip(rf.as_array().unwrap()) {
            worst = worst.max((a.as_f64().unwrap() - b.as_f64().unwrap()).abs());
        }
    }
    assert!(worst > 0.0, "int8 products cannot match float32 exactly");
    assert!(worst < MLP_TOLERANCE, "largest difference {worst}");
    let agree = cpu["class"]
        .as_array()
        .unwrap()
        .iter()
        .zip(fpga["class"].as_array().unwrap())
        .filter(|(a, b)| a == b)
        .count();
    assert!(agree >= 30, "classes agree on {agree} of 32");
    for _ in 0..4 {
        assert_eq!(s.score("mlp-fpga", &body).0, 200);
    }

    // Device time, per version and device, in show and in /metrics.
    let (_, show) = s.get_admin("/admin/v1/endpoints/mlp-fpga");
    let sim = usage(&show, "fpga-sim");
    assert_eq!(sim["op_calls"], 15, "3 products x 5 requests: {sim}");
    assert!(
        sim["device_cycles"].as_u64().unwrap() > 0 && sim["device_seconds"].as_f64().unwrap() > 0.0,
        "{sim}"
    );
    assert_eq!(usage(&show, "cpu")["op_calls"], 30, "add + activation x 3 layers x 5 requests");
    assert_eq!(show["versions"][0]["devices"]["ops"], "fpga-sim");
    let human = Command::new(bin())
        .args(["service", "show", "mlp-fpga", "--data-dir"])
        .arg(s.data.path())
        .output()
        .unwrap();
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(human.contains("on fpga-sim: 15 ops") && human.contains("cycles"), "{human}");
    let auth = format!("Bearer {}", s.admin_token());
    let metrics = raw_metrics(&s, &auth);
    assert!(
        metrics.contains("wasmscore_device_cycles_total{endpoint=\"mlp-fpga\",version=\"v1\",device=\"fpga-sim\"}"),
        "{metrics}"
    );

    // An op the plugin does not run, with no fallback chosen: the guest's
    // error says so (500), and the version keeps serving.
    let mut asks = mlp_rows(2);
    asks["elementwise"] = json!("version");
    let (st, _, j) = s.score("mlp-fpga", &asks.to_string());
    assert_eq!(st, 500, "{j}");
    assert!(j.to_string().contains("does not run add"), "{j}");
    assert_eq!(s.score("mlp-fpga", &body).0, 200);

    // Devices this host has not: refused before the version is
    // acknowledged, with why and what to do.
    let gpu = deploy_error(&s, "mlp-gpu", mlp(), &[], json!({"gpu_cores": 1}));
    assert!(
        gpu.contains("\"cuda\" is not available") && gpu.contains("device_fallback"),
        "{gpu}"
    );
    let nope = deploy_error(&s, "mlp-nope", mlp(), &[], json!({"device": "nope"}));
    assert!(
        nope.contains("no device named \"nope\"") && nope.contains("cpu, fpga-sim"),
        "{nope}"
    );
    let model_on_plugin = deploy_error(&s, "iris-fpga", iris_rust(), &[model().as_path()], json!({"device": "fpga-sim"}));
    assert!(model_on_plugin.contains("not whole models"), "{model_on_plugin}");

    // Falling back is a per-version choice, logged and counted.
    s.deploy_ok("mlp-fb", mlp(), &[], Some(json!({"device": "fpga-sim", "device_fallback": "cpu"})));
    let (st, _, j) = s.score("mlp-fb", &asks.to_string());
    assert_eq!(st, 200, "{j}");
    assert_eq!(j["devices"], json!({"gemm": "fpga-sim", "elementwise": "cpu"}));
    let (_, show) = s.get_admin("/admin/v1/endpoints/mlp-fb");
    assert_eq!(usage(&show, "fpga-sim")["fell_back"], 6, "add and activation of 3 layers");
    let (_, logs) = s.get_admin("/admin/v1/endpoints/mlp-fb/logs");
    let logs = logs.to_string();
    assert!(logs.contains("ran on the fallback device cpu"), "{logs}");
    s.deploy_ok("mlp-gpu-fb", mlp(), &[], Some(json!({"gpu_cores": 1, "device_fallback": "cpu"})));
    let (_, show) = s.get_admin("/admin/v1/endpoints/mlp-gpu-fb");
    let d = &show["versions"][0]["devices"];
    assert_eq!((d["asked"].as_str(), d["ops"].as_str()), (Some("cuda"), Some("cpu")), "{d}");
    assert!(
        d["fallbacks_at_deploy"][0].as_str().unwrap().contains("running on cpu instead"),
        "{d}"
    );
    assert_eq!(s.score("mlp-gpu-fb", &body).0, 200);
    let metrics = raw_metrics(&s, &auth);
    assert!(
        metrics.contains("wasmscore_version_device_fallback_at_deploy{endpoint=\"mlp-gpu-fb\",version=\"v1\"} 1"),
        "{metrics}"
    );
    s.deploy_ok(
        "iris-fb",
        iris_rust(),
        &[model().as_path()],
        Some(json!({"device": "fpga-sim", "device_fallback": "cpu"})),
    );
    let (st, _, j) = s.score("iris-fb", r#"{"data": [[5.1, 3.5, 1.4, 0.2]]}"#);
    assert_eq!(st, 200, "{j}: {}", error_code(&j));
    let (_, show) = s.get_admin("/admin/v1/endpoints/iris-fb");
    assert_eq!(show["versions"][0]["devices"]["models"], "cpu");
    assert_eq!(usage(&show, "cpu")["inference_calls"], 1);
}

/// /metrics as text (the JSON helper reads only JSON bodies).
fn raw_metrics(s: &Server, auth: &str) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(&s.addr).unwrap();
    write!(
        c,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: {auth}\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn a_module_names_the_device_for_a_model_with_load_on() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fpga_sim(), dir.path().join("libwasmscore_fpga_sim.so")).unwrap();
    let s = Server::start(&["--plugin-dir", dir.path().to_str().unwrap()]);
    let h = hostile();
    s.deploy_ok("strict", &h, &[model().as_path()], None);
    s.deploy_ok(
        "lenient",
        &h,
        &[model().as_path()],
        Some(json!({"device_fallback": "cpu", "device": "fpga-sim"})),
    );

    let (st, _, on_cpu) = s.score("strict", "model-on:cpu");
    assert_eq!(st, 200, "{on_cpu}");
    assert_eq!(on_cpu["device"], "cpu");
    let p = on_cpu["probabilities"].as_array().unwrap();
    assert_eq!(p.len(), 3);
    assert!((p.iter().map(|v| v.as_f64().unwrap()).sum::<f64>() - 1.0).abs() < 1e-4, "{on_cpu}");
    // A plugin runs no whole models; a device the host has not; neither
    // falls back on its own: the module's call fails (500), the version serves.
    let (st, _, j) = s.score("strict", "model-on:fpga-sim");
    assert_eq!(st, 500, "{j}");
    assert!(
        j.to_string().contains("not whole models") && j.to_string().contains("device_fallback"),
        "{j}"
    );
    let (st, _, j) = s.score("strict", "model-on:nope");
    assert_eq!(st, 500, "{j}");
    assert!(error_message(&j).contains("no device named \"nope\""), "{j}");
    assert_eq!(s.score("strict", "model-on:cpu").0, 200);

    // conv2d through `ops` on the device the module names: fpga-sim (int8
    // inside) agrees with the CPU within the kit's 5% of the largest value.
    let (sc, _, cpu) = s.score("strict", "conv-on:cpu");
    let (sf, _, sim) = s.score("strict", "conv-on:fpga-sim");
    assert_eq!((sc, sf), (200, 200), "{cpu} {sim}");
    assert_eq!((cpu["device"].as_str(), sim["device"].as_str()), (Some("cpu"), Some("fpga-sim")));
    assert_eq!(cpu["shape"], json!([1, 3, 6, 6]));
    assert_eq!(sim["shape"], cpu["shape"]);
    let (yc, ys) = (cpu["y"].as_array().unwrap(), sim["y"].as_array().unwrap());
    let max = yc.iter().map(|v| v.as_f64().unwrap().abs()).fold(0.0, f64::max);
    let worst = yc
        .iter()
        .zip(ys)
        .map(|(a, b)| (a.as_f64().unwrap() - b.as_f64().unwrap()).abs())
        .fold(0.0, f64::max);
    assert!(max > 1.0 && worst <= 0.05 * max, "worst {worst} of {max}");

    // The version that chose a fallback: the model runs on cpu, counted and logged.
    let (st, _, j) = s.score("lenient", "model-on:fpga-sim");
    assert_eq!(st, 200, "{j}");
    assert_eq!(j["device"], "cpu");
    assert_eq!(j["probabilities"], on_cpu["probabilities"]);
    let (_, show) = s.get_admin("/admin/v1/endpoints/lenient");
    assert_eq!(usage(&show, "fpga-sim")["fell_back"], 1, "{show}");
    assert_eq!(usage(&show, "cpu")["inference_calls"], 1, "{show}");
    let (_, logs) = s.get_admin("/admin/v1/endpoints/lenient/logs");
    assert!(
        logs.to_string().contains("model model.onnx runs on the fallback device cpu"),
        "{logs}"
    );
}

fn error_message(j: &Value) -> &str {
    j["error"]["message"].as_str().unwrap_or("")
}

/// Builds plugins/c-matmul with the system C compiler, as a platform team
/// would: only the header and the linker script. `defines` pick another ABI.
fn c_plugin(dir: &Path, file: &str, defines: &[&str]) -> PathBuf {
    let out = dir.join(file);
    let abi = root().join("plugins/abi");
    let st = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-I"])
        .arg(&abi)
        .arg(format!("-Wl,--version-script={}", abi.join("plugin.map").display()))
        .args(defines)
        .arg("-o")
        .arg(&out)
        .arg(root().join("plugins/c-matmul/c_matmul.c"))
        .status()
        .expect("running cc");
    assert!(st.success(), "cc failed for {file}");
    out
}

#[test]
fn a_plugin_in_c_passes_the_kit_and_other_abi_versions_are_refused_while_the_host_serves() {
    let dir = tempfile::tempdir().unwrap();
    let ok = c_plugin(dir.path(), "libc_matmul.so", &[]);
    c_plugin(dir.path(), "libc_matmul_major2.so", &["-DPLUGIN_MAJOR=2"]);
    c_plugin(dir.path(), "libc_matmul_minor5.so", &["-DPLUGIN_MINOR=5"]);

    let out = Command::new(bin())
        .args(["plugin", "check", "--tolerance", "0.001"])
        .arg(&ok)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("plugin c-matmul (ABI 1.0)") && text.contains(", 0 failed"),
        "{text}"
    );

    let s = Server::start(&["--plugin-dir", dir.path().to_str().unwrap()]);
    let (_, devices) = s.get_admin("/admin/v1/devices");
    let names = device_names(&devices);
    assert_eq!(names, ["c-matmul", "cpu"], "{devices}");
    assert!(unavailable_why(&devices, "libc_matmul_major2")
        .unwrap()
        .contains("does not serve this host's plugin ABI major version 1"));
    assert!(unavailable_why(&devices, "libc_matmul_minor5")
        .unwrap()
        .contains("built for plugin ABI 1.5; this host speaks 1.0"));

    // The host serves; a version on c-matmul gets what c-matmul declares
    // (matmul) and, having chosen the CPU as fallback, gemm there.
    s.deploy_ok("mlp-c", mlp(), &[], Some(json!({"device": "c-matmul", "device_fallback": "cpu"})));
    let (st, _, j) = s.score("mlp-c", &mlp_rows(4).to_string());
    assert_eq!(st, 200, "{j}");
    assert_eq!(j["devices"]["gemm"], "cpu");
    let (_, show) = s.get_admin("/admin/v1/endpoints/mlp-c");
    let c = usage(&show, "c-matmul");
    assert_eq!((c["fell_back"].as_u64(), c["op_errors"].as_u64()), (Some(3), Some(0)), "{c}");
}

fn device_names(devices: &Value) -> Vec<&str> {
    devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect()
}

/// Why `up` has not the device (or plugin file) `name`, if it says so.
fn unavailable_why(devices: &Value, name: &str) -> Option<String> {
    devices["unavailable"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == name)
        .map(|d| d["why"].as_str().unwrap().to_string())
}

/// chain.onnx: Y = X + 1, float32 [-1, 4] (made with the onnx package in .venv).
fn chain_model(dir: &Path) -> PathBuf {
    let out = dir.join("chain.onnx");
    let script = "import sys,onnx\nfrom onnx import helper as h, TensorProto as T\n\
        one=h.make_tensor('one',T.FLOAT,[1],[1.0])\n\
        g=h.make_graph([h.make_node('Add',['X','one'],['Y'])],'chain',\
        [h.make_tensor_value_info('X',T.FLOAT,[None,4])],[h.make_tensor_value_info('Y',T.FLOAT,[None,4])],[one])\n\
        m=h.make_model(g,opset_imports=[h.make_opsetid('',13)])\nm.ir_version=8\nonnx.save(m,sys.argv[1])";
    let st = Command::new(root().join(".venv/bin/python"))
        .args(["-c", script])
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success(), "making chain.onnx");
    out
}

#[test]
fn model_outputs_stay_on_their_device_between_calls_until_read() {
    let dir = tempfile::tempdir().unwrap();
    let chain = chain_model(dir.path());
    let s = Server::start(&[]);
    s.deploy_ok("chain", &hostile(), &[chain.as_path()], None);
    let (st, _, j) = s.score("chain", "chain:5");
    assert_eq!(st, 200, "{j}");
    assert_eq!(j["y"], json!([6.0, 7.0, 8.0, 9.0]));
    assert_eq!(j["device"], "cpu");
    // Five runs, each output kept by the device and fed to the next run as
    // it was; only the last one was read into host memory.
    let (_, show) = s.get_admin("/admin/v1/endpoints/chain");
    let cpu = usage(&show, "cpu");
    assert_eq!(
        (
            cpu["inference_calls"].as_u64(),
            cpu["kept_on_device"].as_u64(),
            cpu["host_reads"].as_u64()
        ),
        (Some(5), Some(5), Some(1)),
        "{cpu}"
    );
}
