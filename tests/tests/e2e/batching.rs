//! Transparent dynamic batching (`batching` in the deployment config):
//! concurrent calls merge into one ONNX Runtime run and each client gets
//! its own rows, as ONNX Runtime computes them alone; a model whose rows
//! depend on each other is refused at deploy, with the reason in `show`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::{json, Value};

use crate::{built, root, Server};

fn rows_module() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| built("rows-rust", &root().join("examples/rows-rust")))
}

/// mlp/model.onnx and centered/model.onnx, from bench/batch_models.py.
fn models(dir: &Path) -> (PathBuf, PathBuf) {
    let out = Command::new(root().join(".venv/bin/python"))
        .arg(root().join("bench/batch_models.py"))
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (dir.join("mlp/model.onnx"), dir.join("centered/model.onnx"))
}

/// Row i of the test's input: 256 numbers, different for every i.
fn row(i: usize) -> Vec<f64> {
    (0..256).map(|j| ((i * 31 + j * 7) % 97) as f64 / 97.0).collect()
}

/// ONNX Runtime's answer for each row run alone.
fn reference(model: &Path, rows: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let script = "import json,sys,numpy as np,onnxruntime as o\n\
        s=o.InferenceSession(sys.argv[1],providers=['CPUExecutionProvider'])\n\
        rows=json.load(sys.stdin)\n\
        print(json.dumps([s.run(None,{'X':np.asarray([r],dtype=np.float32)})[0][0].astype(float).tolist() for r in rows]))";
    let mut child = Command::new(root().join(".venv/bin/python"))
        .args(["-c", script])
        .arg(model)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(json!(rows).to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn concurrent_calls_are_merged_and_each_gets_onnxruntimes_answer_for_its_own_row() {
    let dir = tempfile::tempdir().unwrap();
    let (mlp, centered) = models(dir.path());
    let s = Server::start(&[]);
    let dc = json!({"replica_max_concurrent_requests": 16, "num_replicas": 1,
                    "batching": {"max_batch_size": 8, "max_queue_delay_us": 20000}});
    s.deploy_ok("mlp", rows_module(), &[&mlp], Some(dc.clone()));

    let rows: Vec<Vec<f64>> = (0..32).map(row).collect();
    let want = reference(&mlp, &rows);
    let got: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let calls: Vec<_> = rows
            .iter()
            .map(|r| {
                let s = &s;
                scope.spawn(move || {
                    let (status, _, body) = s.score("mlp", &json!({"data": [r]}).to_string());
                    (status, body)
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    for (i, ((status, body), want)) in got.iter().zip(&want).enumerate() {
        assert_eq!(*status, 200, "row {i}: {body}");
        let p = body["outputs"]["probabilities"][0].as_array().unwrap();
        assert_eq!(p.len(), want.len());
        for (a, b) in p.iter().zip(want) {
            assert!((a.as_f64().unwrap() - b).abs() < 1e-4, "row {i}: {a} vs {b}");
        }
    }
    // A request of several rows is one call: its rows stay together.
    let (status, _, body) = s.score("mlp", &json!({"data": [rows[3], rows[5]]}).to_string());
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outputs"]["probabilities"].as_array().unwrap().len(), 2);

    let (_, show) = s.get_admin("/admin/v1/endpoints/mlp");
    let b = &show["versions"][0]["batching"];
    assert_eq!(b["max_batch_size"], 8, "{b}");
    let m = &b["models"]["model.onnx"];
    assert_eq!(m["batched"], true, "{m}");
    assert!(m["calls"].as_u64().unwrap() >= 33, "{m}");
    assert!(m["mean_batch_size"].as_f64().unwrap() > 1.0, "nothing merged: {m}");
    assert!(m["batches"].as_u64().unwrap() < 33, "{m}");
    assert_eq!(m["fallbacks"], 0, "{m}");
    let metrics = s.get_admin_text("/metrics");
    assert!(
        metrics.contains("wasmscore_batches_total{endpoint=\"mlp\",version=\"v1\",model=\"model.onnx\"}"),
        "{metrics}"
    );

    // Rows that depend on each other: the probe refuses, the version serves
    // unbatched, and show says why.
    s.deploy_ok("centered", rows_module(), &[&centered], Some(dc));
    let (_, show) = s.get_admin("/admin/v1/endpoints/centered");
    let m = &show["versions"][0]["batching"]["models"]["model.onnx"];
    assert_eq!(m["batched"], false, "{m}");
    assert!(m["reason"].as_str().unwrap().contains("rows are not independent"), "{m}");
    let (status, _, body) = s.score("centered", r#"{"data": [[1, 2, 3, 4]]}"#);
    assert_eq!((status, body["outputs"]["Y"].clone()), (200, json!([[0.0, 0.0, 0.0, 0.0]])));

    // Out of bounds: refused with the setting named.
    let out = s.deploy("bad", rows_module(), &[&mlp], Some(json!({"batching": {"max_batch_size": 1}})));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("batching.max_batch_size must be in 2..=1024"));
}
