//! Model data collection: versions with `collect_model_data` keep sampled
//! requests, responses and what the module collects as Parquet under
//! DATA_DIR/collected, read back here as an analyst would (pyarrow with
//! Hive partitions, DuckDB's read_parquet), with nothing acknowledged lost
//! on SIGTERM and a full queue dropping and counting instead of waiting.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{iris_python, model, post_score, root, Server};

/// Every collected row under DATA_DIR/collected, read twice: by pyarrow
/// (Hive partitions as columns, checked against each row's time) and by
/// DuckDB (counts by endpoint, version, designation and name).
const READ_BACK: &str = r#"
import json, sys
import duckdb
import pyarrow.dataset as ds

root = sys.argv[1]
t = ds.dataset(root, format="parquet", partitioning="hive").to_table()
df = t.to_pandas()
rows = []
for r in df.itertuples():
    # The partition a row sits in is the UTC date and hour of its time.
    assert str(r.date) == r.time.strftime("%Y-%m-%d"), (r.date, r.time)
    assert int(r.hour) == r.time.hour, (r.hour, r.time)
    rows.append({k: getattr(r, k) for k in ("correlation_id", "endpoint", "version", "designation", "name", "content_type", "encoding", "data")})
counts = duckdb.sql(
    f"select endpoint, version, designation, name, count(*) from read_parquet('{root}/**/*.parquet', hive_partitioning=true) group by all"
).fetchall()
print(json.dumps({"rows": rows, "duckdb": [list(c) for c in counts]}))
"#;

fn read_back(data: &std::path::Path) -> (Vec<Value>, HashMap<String, u64>) {
    let out = Command::new(root().join(".venv/bin/python"))
        .args(["-c", READ_BACK])
        .arg(data.join("collected"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let counts = v["duckdb"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let c = c.as_array().unwrap();
            let key = (0..4).map(|i| c[i].as_str().unwrap()).collect::<Vec<_>>().join("/");
            (key, c[4].as_u64().unwrap())
        })
        .collect();
    (v["rows"].as_array().unwrap().clone(), counts)
}

fn trace(i: u64) -> (String, String) {
    let id = format!("{:032x}", 0x0c01_1ec7_0000_0000_u64 + i);
    (format!("00-{id}-00000000000000a1-01"), id)
}

const ROW: &str = r#"{"data": [[5.1, 3.5, 1.4, 0.2]]}"#;

#[test]
fn collected_data_reads_back_with_pyarrow_and_duckdb_and_survives_sigterm() {
    let mut s = Server::start(&["--collect-rotate-seconds", "1"]);
    s.deploy_ok("iris", iris_python(), &[&model()], Some(json!({"collect_model_data": true})));
    s.deploy_ok(
        "sampled",
        iris_python(),
        &[&model()],
        Some(json!({"collect_model_data": true, "collect_sample_rate": 0.1})),
    );
    s.deploy_ok("off", iris_python(), &[&model()], None);
    // 50 good requests and 5 bad ones (one not even UTF-8) on the endpoint
    // that collects everything, each with its own trace.
    for i in 0..50 {
        let (tp, _) = trace(i);
        assert_eq!(s.score_with("iris", &[("traceparent", &tp)], ROW).0, 200);
    }
    for i in 50..54 {
        let (tp, _) = trace(i);
        assert_eq!(s.score_with("iris", &[("traceparent", &tp)], r#"{"data": "no rows"}"#).0, 400);
    }
    let key = s.key("iris").unwrap();
    let auth = format!("Bearer {key}");
    let (tp, _) = trace(54);
    let (st, _, _) = s.request(
        "POST",
        "/api/v1/service/iris/score",
        &[
            ("Authorization", &auth),
            ("traceparent", &tp),
            ("Content-Type", "application/octet-stream"),
        ],
        &[0xff, 0xfe, 0x00, 0x01],
    );
    assert_eq!(st, 400);
    for i in 0..1000 {
        let (tp, _) = trace(1000 + i);
        assert_eq!(s.score_with("sampled", &[("traceparent", &tp)], ROW).0, 200);
        assert_eq!(s.score("off", ROW).0, 200);
    }
    // Files close after a second (--collect-rotate-seconds): readable while
    // the server runs, every record queued (as `show` counts them) in.
    let queued: u64 = ["iris", "sampled"]
        .iter()
        .map(|e| {
            let (_, st) = s.get_admin(&format!("/admin/v1/endpoints/{e}"));
            let r = &st["versions"][0]["data_collection"]["records"];
            r.as_object().unwrap().values().map(|n| n.as_u64().unwrap()).sum::<u64>()
        })
        .sum();
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        let (rows, _) = read_back(s.data.path());
        if rows.len() as u64 == queued {
            break rows;
        }
        assert!(
            Instant::now() < deadline,
            "collected files never became readable: {} rows",
            rows.len()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let iris: Vec<&Value> = first.iter().filter(|r| r["endpoint"] == "iris").collect();
    let ids = |designation: &str, name: &str| -> HashSet<String> {
        iris.iter()
            .filter(|r| r["designation"] == designation && r["name"] == name)
            .map(|r| r["correlation_id"].as_str().unwrap().to_string())
            .collect()
    };
    let all: HashSet<String> = (0..55).map(|i| trace(i).1).collect();
    let good: HashSet<String> = (0..50).map(|i| trace(i).1).collect();
    // Every request's body, the answers of the good ones, and the module's
    // own records (the predicted class) under the same correlation ids.
    assert_eq!(ids("inputs", "request"), all);
    assert_eq!(ids("predictions", "response"), good);
    assert_eq!(ids("predictions", "class"), good);
    let row = |name: &str, id: &str| iris.iter().find(|r| r["name"] == name && r["correlation_id"] == id).unwrap();
    let id0 = trace(0).1;
    assert_eq!(row("request", &id0)["data"], ROW);
    assert_eq!(row("request", &id0)["content_type"], "application/json");
    let answer: Value = serde_json::from_str(row("response", &id0)["data"].as_str().unwrap()).unwrap();
    assert_eq!(answer["probabilities"].as_array().unwrap().len(), 1);
    assert_eq!(row("class", &id0)["data"], "[0]");
    let binary = row("request", &trace(54).1);
    assert_eq!(
        (binary["encoding"].as_str(), binary["data"].as_str()),
        (Some("base64"), Some("//4AAQ=="))
    );
    // About 10% of the sampled endpoint, whole requests (both records or neither).
    let sampled: Vec<&Value> = first.iter().filter(|r| r["endpoint"] == "sampled").collect();
    let in_ids: HashSet<&str> = sampled
        .iter()
        .filter(|r| r["name"] == "request")
        .map(|r| r["correlation_id"].as_str().unwrap())
        .collect();
    let out_ids: HashSet<&str> = sampled
        .iter()
        .filter(|r| r["name"] == "response")
        .map(|r| r["correlation_id"].as_str().unwrap())
        .collect();
    assert!((50..=150).contains(&in_ids.len()), "{} of 1000 sampled at 0.1", in_ids.len());
    assert_eq!(in_ids, out_ids);
    assert!(!first.iter().any(|r| r["endpoint"] == "off"));
    // show counts what it queued, and dropped nothing.
    let (_, status) = s.get_admin("/admin/v1/endpoints/iris");
    let dc = &status["versions"][0]["data_collection"];
    assert_eq!(dc["records"]["inputs"], 55, "{dc}");
    assert_eq!(dc["records"]["predictions"], 100, "{dc}");
    assert_eq!((dc["dropped"].as_u64(), dc["sample_rate"].as_f64()), (Some(0), Some(1.0)), "{dc}");
    let metrics = s.get_admin_text("/metrics");
    assert!(
        metrics.contains(r#"wasmscore_collected_records_total{endpoint="iris",version="v1",designation="inputs"} 55"#),
        "{metrics}"
    );

    // SIGTERM under load: every request answered 200 before the server
    // stopped has its request and response on disk.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(Mutex::new(Vec::new()));
    let (addr, key) = (s.addr.clone(), key.clone());
    let load = {
        let (stop, answered) = (stop.clone(), answered.clone());
        std::thread::spawn(move || {
            let mut i = 10_000;
            while !stop.load(Ordering::Relaxed) {
                let (tp, id) = trace(i);
                i += 1;
                if let Some(200) = post_score(&addr, "iris", &key, &[("traceparent", &tp)], ROW) {
                    answered.lock().unwrap().push(id);
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(800));
    assert!(s.terminate(), "wasmscore did not exit 0 after SIGTERM");
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let answered = answered.lock().unwrap().clone();
    assert!(answered.len() > 10, "only {} requests answered under load", answered.len());
    let (rows, counts) = read_back(s.data.path());
    let on_disk = |name: &str| -> HashSet<String> {
        rows.iter()
            .filter(|r| r["endpoint"] == "iris" && r["name"] == name)
            .map(|r| r["correlation_id"].as_str().unwrap().to_string())
            .collect()
    };
    let (requests, responses) = (on_disk("request"), on_disk("response"));
    for id in &answered {
        assert!(
            requests.contains(id) && responses.contains(id),
            "request {id} was answered but not collected"
        );
    }
    // DuckDB reads the same rows.
    let n = |k: &str| counts.get(k).copied().unwrap_or(0);
    assert_eq!(n("iris/v1/inputs/request"), requests.len() as u64);
    assert_eq!(n("iris/v1/predictions/response"), responses.len() as u64);
    assert_eq!(n("sampled/v1/inputs/request"), in_ids.len() as u64);
    // Nothing hidden (unfinished) is left behind by a clean stop.
    let leftovers = Command::new("find")
        .arg(s.data.path().join("collected"))
        .args(["-name", "*.inprogress"])
        .output()
        .unwrap();
    assert!(leftovers.stdout.is_empty(), "{}", String::from_utf8_lossy(&leftovers.stdout));
}

#[test]
fn a_full_collection_queue_drops_and_counts_and_scoring_goes_on() {
    // A queue of 1 KiB: each 2 KiB request body is dropped, the small
    // responses are kept.
    let mut s = Server::start(&["--collect-queue-bytes", "1024"]);
    s.deploy_ok("iris", iris_python(), &[&model()], Some(json!({"collect_model_data": true})));
    let padded = format!(r#"{{"data": [[5.1, 3.5, 1.4, 0.2]], "pad": "{}"}}"#, "x".repeat(2048));
    for _ in 0..20 {
        assert_eq!(s.score("iris", &padded).0, 200);
    }
    let (_, status) = s.get_admin("/admin/v1/endpoints/iris");
    let dc = &status["versions"][0]["data_collection"];
    // Every 2 KiB body is dropped. The 40 small records (20 responses, 20
    // from collect()) are kept unless the writer fell behind by a whole
    // KiB on a busy machine: then those are dropped and counted too.
    // Nothing goes missing without a count.
    let dropped = dc["dropped"].as_u64().unwrap();
    let kept = dc["records"]["predictions"].as_u64().unwrap();
    assert_eq!(dc["records"]["inputs"], 0, "{dc}");
    assert!(dropped >= 20, "{dc}");
    assert_eq!(kept + (dropped - 20), 40, "{dc}");
    let metrics = s.get_admin_text("/metrics");
    assert!(
        metrics.lines().any(|l| l.starts_with("wasmscore_collected_dropped_total{")
            && l.contains(r#"endpoint="iris""#)
            && l.ends_with(&format!(" {dropped}"))),
        "{metrics}"
    );
    assert!(s.terminate());
    let (rows, _) = read_back(s.data.path());
    assert_eq!(rows.iter().filter(|r| r["name"] == "request").count(), 0);
    let responses = rows.iter().filter(|r| r["name"] == "response").count() as u64;
    assert!(responses + (dropped - 20) >= 20 && responses <= 20, "{responses} responses, {dc}");
}

/// Calls whose tensors the host decodes (the Open Inference Protocol) are
/// collected with their tensors' data, as OIP's JSON writes them, not the
/// module's body that names only their shapes; a decoupled call's
/// responses are all collected, in the order sent, under its correlation
/// id.
#[test]
fn tensors_and_every_response_of_a_decoupled_call_are_collected() {
    let mut s = Server::start(&["--grpc-port", "0", "--collect-rotate-seconds", "1"]);
    let grpc = serde_json::from_slice::<Value>(&std::fs::read(s.data.path().join("server.json")).unwrap()).unwrap()["grpc_addr"]
        .as_str()
        .unwrap()
        .to_string();
    let collect = json!({"collect_model_data": true});
    s.deploy_ok("iris", super::iris_rust(), &[&model()], Some(collect.clone()));
    s.deploy_ok(
        "counter",
        &super::hostile(),
        &[],
        Some(json!({"collect_model_data": true, "decoupled": true})),
    );
    let (tp, iris_id) = trace(1);
    let auth = format!("Bearer {}", s.key("iris").unwrap());
    let body = r#"{"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}"#;
    let (st, _, answer) = s.request(
        "POST",
        "/v2/models/iris/infer",
        &[("Authorization", &auth), ("traceparent", &tp)],
        body.as_bytes(),
    );
    assert_eq!(st, 200, "{answer}");
    let (tp, counter_id) = trace(2);
    let script = "import sys, queue, numpy as np, tritonclient.grpc as tg\n\
        grpc, key, tp = sys.argv[1:4]\n\
        got = queue.Queue()\n\
        c = tg.InferenceServerClient(grpc)\n\
        c.start_stream(lambda result, error: got.put((result, error)), headers={'authorization': 'Bearer ' + key, 'traceparent': tp})\n\
        x = tg.InferInput('COUNT', [1], 'INT64'); x.set_data_from_numpy(np.array([3], np.int64))\n\
        c.async_stream_infer('counter', [x], request_id='count-3')\n\
        a = [got.get(timeout=30) for _ in range(3)]\n\
        c.stop_stream()\n\
        assert [int(r.as_numpy('INDEX')[0]) for r, e in a] == [0, 1, 2], a\n\
        print('three responses')\n";
    super::clients_python(script, &[&grpc, &s.key("counter").unwrap(), &tp], "three responses", String::new);
    assert!(s.terminate());
    let (rows, _) = read_back(s.data.path());
    let data = |id: &str, name: &str| -> Vec<Value> {
        rows.iter()
            .filter(|r| r["correlation_id"] == id && r["name"] == name)
            .map(|r| {
                assert_eq!(r["content_type"], "application/json", "{r}");
                serde_json::from_str(r["data"].as_str().unwrap()).unwrap()
            })
            .collect()
    };
    let request = data(&iris_id, "request");
    assert_eq!(request.len(), 1, "{request:?}");
    let x = &request[0]["inputs"][0];
    assert_eq!(
        (&x["name"], &x["datatype"], &x["shape"]),
        (&json!("X"), &json!("FP32"), &json!([1, 4])),
        "{x}"
    );
    // FP32 values, as float32 holds them.
    let values: Vec<f32> = x["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    assert_eq!(values, [5.1f32, 3.5, 1.4, 0.2]);
    let response = data(&iris_id, "response");
    assert_eq!(response.len(), 1, "{response:?}");
    let outputs: Vec<&str> = response[0]["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(outputs, ["label", "probabilities"], "{response:?}");
    // The same outputs the client got.
    let probabilities = &response[0]["outputs"][1]["data"];
    let sent = answer["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "probabilities")
        .unwrap();
    let as_f32 = |v: &Value| -> Vec<f32> { v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect() };
    assert_eq!(as_f32(probabilities), as_f32(&sent["data"]), "{response:?}");
    // The decoupled call: its request's tensor, then its three responses,
    // the two it sent and its last, in order.
    // Beside the tensor, what else the request said (its id).
    let request = &data(&counter_id, "request")[0];
    assert_eq!(
        (&request["inputs"][0]["data"], &request["id"]),
        (&json!([3]), &json!("count-3")),
        "{request}"
    );
    let indexes: Vec<Value> = data(&counter_id, "response")
        .iter()
        .map(|r| r["outputs"][0]["data"].clone())
        .collect();
    assert_eq!(indexes, [json!([0]), json!([1]), json!([2])]);
}
