//! Watching versions: what /metrics says of each version's requests (the
//! duration histogram, answers by status class, the replica's queue wait
//! and run time), labelled with the version's role in the rollout.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{bin, hostile, Server};

const ROW: &str = r#"{"data": [[5.1, 3.5, 1.4, 0.2]]}"#;

/// `name{labels} value` lines of the text format, by name and labels.
fn samples(text: &str) -> HashMap<(String, String), f64> {
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n.to_string(), l.trim_end_matches('}').to_string()),
            None => (series.to_string(), String::new()),
        };
        out.insert((name, labels), value.parse().unwrap());
    }
    out
}

#[test]
fn metrics_give_each_version_a_latency_histogram_answers_by_class_and_its_role() {
    let s = super::iris_control_and_treatment();
    for _ in 0..100 {
        assert_eq!(s.score("iris", ROW).0, 200);
    }
    for _ in 0..10 {
        assert_eq!(s.score("iris", r#"{"data": "not rows"}"#).0, 400);
    }
    let text = s.get_admin_text("/metrics");
    let m = samples(&text);
    let get = |name: &str, labels: &str| {
        *m.get(&(name.to_string(), labels.to_string()))
            .unwrap_or_else(|| panic!("no {name}{{{labels}}} in\n{text}"))
    };
    let v1 = r#"endpoint="iris",version="v1",role="control""#;
    let v2 = r#"endpoint="iris",version="v2",role="treatment""#;
    for family in [
        "wasmscore_request_duration_seconds",
        "wasmscore_queue_wait_seconds",
        "wasmscore_run_seconds",
    ] {
        assert!(text.contains(&format!("# TYPE {family} histogram\n")), "{family}");
    }
    // The split: 70 / 30 of the good and the bad requests alike.
    let count = |v: &str| get("wasmscore_request_duration_seconds_count", v);
    assert_eq!((count(v1), count(v2)), (77.0, 33.0));
    let ok = |v: &str| get("wasmscore_responses_total", &format!("{v},code=\"2xx\""));
    let bad = |v: &str| get("wasmscore_responses_total", &format!("{v},code=\"4xx\""));
    assert_eq!((ok(v1) + ok(v2), bad(v1) + bad(v2)), (100.0, 10.0));
    assert_eq!(get("wasmscore_responses_total", &format!("{v1},code=\"5xx\"")), 0.0);
    for v in [v1, v2] {
        // Buckets are cumulative and end at the count; the sum is the time.
        let mut last = 0.0;
        for le in ["0.00005", "0.0001", "0.001", "0.01", "0.1", "1", "10", "60", "+Inf"] {
            let n = get("wasmscore_request_duration_seconds_bucket", &format!("{v},le=\"{le}\""));
            assert!(n >= last, "{le}: {n} < {last}");
            last = n;
        }
        assert_eq!(last, count(v));
        let sum = get("wasmscore_request_duration_seconds_sum", v);
        assert!(sum > 0.0 && sum < count(v), "{sum}");
        // Every request that reached an instance waited and ran.
        assert_eq!(get("wasmscore_run_seconds_count", v), count(v));
        assert_eq!(get("wasmscore_queue_wait_seconds_count", v), count(v));
        assert!(get("wasmscore_run_seconds_sum", v) <= sum);
    }
}

#[test]
fn logs_follow_new_lines_as_json_lines_of_every_version_or_one() {
    let s = Server::start(&[]);
    s.deploy_ok("h", &hostile(), &[], None);
    let cli = |args: &[&str]| {
        let out = Command::new(bin())
            .args(args)
            .arg("--data-dir")
            .arg(s.data.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let h = hostile();
    cli(&[
        "version",
        "create",
        "--endpoint",
        "h",
        "--version",
        "v2",
        "--module",
        h.to_str().unwrap(),
        "--traffic",
        "50",
    ]);
    // Follow every version's log while requests log through each.
    let mut follow = Command::new(bin())
        .args(["service", "logs", "h", "--json", "--follow", "--data-dir"])
        .arg(s.data.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    for _ in 0..4 {
        assert_eq!(s.score("h", "log").0, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut deploys = 0;
    while seen.len() < 2 || seen.values().sum::<usize>() < 4 {
        assert!(Instant::now() < deadline, "followed: {seen:?}");
        let line = lines.next().unwrap().unwrap();
        let e: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not a JSON line: {line}"));
        assert!(e["unix_ms"].as_u64().is_some(), "{e}");
        match e["kind"].as_str().unwrap() {
            "deploy" => deploys += 1,
            _ => *seen.entry(e["version"].as_str().unwrap().to_string()).or_default() += 1,
        }
    }
    assert!(deploys > 0);
    let _ = follow.kill();
    let _ = follow.wait();
    // One version's only, and the text form names the version on each line.
    let v2 = cli(&["service", "logs", "h", "--version", "v2"]);
    assert!(!v2.is_empty() && v2.lines().all(|l| l.split(' ').nth(1) == Some("v2")), "{v2}");
}

#[test]
fn a_requests_trace_is_continued_answered_and_on_its_log_lines() {
    let s = Server::start(&[]);
    s.deploy_ok("t", &hostile(), &[], None);
    let traceparent = |head: &str| -> String {
        head.lines()
            .find_map(|l| l.strip_prefix("traceparent: "))
            .unwrap_or_else(|| panic!("no traceparent in {head}"))
            .trim()
            .to_string()
    };
    // The client's trace: kept, with this hop's own span id.
    let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (st, head, _) = s.score_with("t", &[("traceparent", given)], "log");
    assert_eq!(st, 200);
    let answered = traceparent(&head);
    let parts: Vec<&str> = answered.split('-').collect();
    assert_eq!(
        (parts[0], parts[1], parts[3]),
        ("00", "4bf92f3577b34da6a3ce929d0e0e4736", "01"),
        "{answered}"
    );
    assert!(parts[2].len() == 16 && parts[2] != "00f067aa0ba902b7", "{answered}");
    // None, or an invalid one: a new trace.
    for sent in [None, Some("00-not-a-trace-01")] {
        let headers: Vec<(&str, &str)> = sent.iter().map(|t| ("traceparent", *t)).collect();
        let (_, head, _) = s.score_with("t", &headers, "log");
        let made = traceparent(&head);
        let p: Vec<&str> = made.split('-').collect();
        assert!(
            p.len() == 4 && p[1].len() == 32 && p[1] != "4bf92f3577b34da6a3ce929d0e0e4736",
            "{made}"
        );
    }
    // The module's log line of the first request carries its trace id.
    let out = Command::new(bin())
        .args(["service", "logs", "t", "--json", "--data-dir"])
        .arg(s.data.path())
        .output()
        .unwrap();
    let logs = String::from_utf8(out.stdout).unwrap();
    let traced: Vec<Value> = logs
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["message"] == "hostile says hello")
        .collect();
    assert_eq!(traced.len(), 3, "{logs}");
    assert_eq!(traced[0]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736", "{logs}");
    assert!(traced[1]["trace_id"].as_str().is_some_and(|t| t.len() == 32), "{logs}");
}

/// An OTLP/HTTP collector inside the test: every request's path, content
/// type and body, answered 200 as a collector does.
pub(crate) fn otlp_receiver() -> (String, std::sync::mpsc::Receiver<(String, String, Vec<u8>)>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 65536];
                // Keep-alive: several requests on one connection.
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match conn.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let header = |name: &str| {
                        head.lines().find_map(|l| {
                            l.split_once(':')
                                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                                .map(|(_, v)| v.trim().to_string())
                        })
                    };
                    let len: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
                    while buf.len() < end + 4 + len {
                        match conn.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = buf[end + 4..end + 4 + len].to_vec();
                    buf.drain(..end + 4 + len);
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    let _ = tx.send((path, header("content-type").unwrap_or_default(), body));
                    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n");
                }
            });
        }
    });
    (addr, rx)
}

/// The spans `up` exported to the receiver, once it has stopped.
fn exported_spans(received: &std::sync::mpsc::Receiver<(String, String, Vec<u8>)>) -> Vec<opentelemetry_proto::tonic::trace::v1::Span> {
    exported_spans_by_service(received)
        .into_iter()
        .map(|(service, span)| {
            assert_eq!(service, "wasmscore");
            span
        })
        .collect()
}

/// The spans exported to the receiver, each with its process's service
/// name, once the processes have stopped.
pub(crate) fn exported_spans_by_service(
    received: &std::sync::mpsc::Receiver<(String, String, Vec<u8>)>,
) -> Vec<(String, opentelemetry_proto::tonic::trace::v1::Span)> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    let mut spans = Vec::new();
    while let Ok((path, content_type, body)) = received.recv_timeout(Duration::from_secs(2)) {
        assert_eq!((path.as_str(), content_type.as_str()), ("/v1/traces", "application/x-protobuf"));
        let req = ExportTraceServiceRequest::decode(body.as_slice()).expect("an OTLP protobuf body");
        for rs in req.resource_spans {
            use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
            let service = rs
                .resource
                .unwrap()
                .attributes
                .into_iter()
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value?.value);
            let Some(Any::StringValue(service)) = service else {
                panic!("no service.name: {service:?}")
            };
            spans.extend(rs.scope_spans.into_iter().flat_map(|ss| ss.spans).map(|sp| (service.clone(), sp)));
        }
    }
    spans
}

/// Triton's trace settings choose the spans exported: one new trace in
/// `trace_rate`, none for a model whose level is OFF (its callers' flags
/// passed on), and no more than `trace_count`; the answer's flag says which.
#[test]
fn the_trace_settings_choose_the_spans_exported() {
    let (collector, received) = otlp_receiver();
    let mut s = Server::start(&["--otlp-endpoint", &collector]);
    s.deploy_ok("t", &hostile(), &[], None);
    s.deploy_ok("u", &hostile(), &[], None);
    let admin = format!("Bearer {}", s.admin_token());
    let set = |path: &str, body: &str| {
        let (st, _, now) = s.request("POST", path, &[("Authorization", &admin)], body.as_bytes());
        assert_eq!(st, 200, "{now}");
        now
    };
    let now = set("/v2/trace/setting", r#"{"trace_rate": "2"}"#);
    assert_eq!(
        (&now["trace_level"], &now["trace_rate"]),
        (&serde_json::json!(["TIMESTAMPS"]), &Value::from("2"))
    );
    let answered = |(st, head, _): (u16, String, Value)| {
        assert_eq!(st, 200);
        head.lines()
            .find_map(|l| l.strip_prefix("traceparent: "))
            .unwrap()
            .trim()
            .to_string()
    };
    let sampled = |tp: &str| tp.ends_with("-01");
    // A refused request counts for no trace_rate.
    let refused = s.request("POST", "/api/v1/service/t/score", &[("Authorization", "Bearer nope")], b"log");
    assert_eq!(refused.0, 401);
    // Four new traces: every other one sampled and exported.
    let fresh: Vec<String> = (0..4).map(|_| answered(s.score("t", "log"))).collect();
    assert_eq!(
        fresh.iter().map(|t| sampled(t)).collect::<Vec<_>>(),
        [true, false, true, false],
        "{fresh:?}"
    );
    // u's own level OFF: nothing exported, the caller's flag passed on.
    set("/v2/models/u/trace/setting", r#"{"trace_level": ["OFF"]}"#);
    let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let off = answered(s.score_with("u", &[("traceparent", given)], "log"));
    assert!(sampled(&off), "{off}");
    // One span left: the first sampled caller's is exported, the second's
    // goes on unsampled.
    set("/v2/trace/setting", r#"{"trace_count": "1"}"#);
    let counted: Vec<String> = (0..2)
        .map(|_| answered(s.score_with("t", &[("traceparent", given)], "log")))
        .collect();
    assert_eq!(counted.iter().map(|t| sampled(t)).collect::<Vec<_>>(), [true, false], "{counted:?}");
    let (_, _, now) = s.request("GET", "/v2/trace/setting", &[("Authorization", &admin)], b"");
    assert_eq!(now["trace_count"], "0", "{now}");
    // A deleted endpoint's own settings go with it.
    let (st, _, _) = s.request("DELETE", "/admin/v1/endpoints/u", &[("Authorization", &admin)], b"");
    assert_eq!(st, 200);
    s.deploy_ok("u", &hostile(), &[], None);
    let (_, _, again) = s.request("GET", "/v2/models/u/trace/setting", &[("Authorization", &admin)], b"");
    assert_eq!(again["trace_level"], serde_json::json!(["TIMESTAMPS"]), "{again}");
    assert!(s.terminate());
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mut got: Vec<String> = exported_spans(&received).iter().map(|sp| hex(&sp.span_id)).collect();
    got.sort();
    let mut want: Vec<String> = [&fresh[0], &fresh[2], &counted[0]]
        .iter()
        .map(|t| t.split('-').nth(2).unwrap().to_string())
        .collect();
    want.sort();
    assert_eq!(got, want, "the sampled new traces and the one counted span, nothing of u");
}

/// The trace settings choose for gRPC's calls too: tritonclient.grpc's
/// ModelInfer with `trace_rate` 2, every other call's span exported.
#[test]
fn the_trace_settings_choose_grpc_calls_spans_too() {
    let (collector, received) = otlp_receiver();
    let mut s = Server::start(&["--otlp-endpoint", &collector, "--grpc-port", "0"]);
    let model = super::root().join("examples/iris/model.onnx");
    s.cli_ok(&["deploy", "--name", "iris", "--model", model.to_str().unwrap()]);
    let admin = format!("Bearer {}", s.admin_token());
    let (st, _, now) = s.request("POST", "/v2/trace/setting", &[("Authorization", &admin)], br#"{"trace_rate": "2"}"#);
    assert_eq!(st, 200, "{now}");
    let info: Value = serde_json::from_slice(&std::fs::read(s.data.path().join("server.json")).unwrap()).unwrap();
    let script = "import sys, numpy as np, tritonclient.grpc as tg\n\
        c = tg.InferenceServerClient(sys.argv[1])\n\
        x = tg.InferInput('X', [1, 4], 'FP32')\n\
        x.set_data_from_numpy(np.array([[5.1, 3.5, 1.4, 0.2]], np.float32))\n\
        for _ in range(4):\n\
        \x20   c.infer('iris', [x], headers={'authorization': 'Bearer ' + sys.argv[2]})\n";
    let args = [info["grpc_addr"].as_str().unwrap(), &s.key("iris").unwrap()];
    super::clients_python(script, &args, "", String::new);
    assert!(s.terminate());
    let spans = exported_spans(&received);
    let names: Vec<&str> = spans.iter().map(|sp| sp.name.as_str()).collect();
    assert_eq!(
        names, ["POST /inference.GRPCInferenceService/ModelInfer"; 2],
        "two of four calls: {names:?}"
    );
}

#[test]
fn sampled_spans_are_exported_over_otlp_http_with_the_ids_clients_see() {
    let (collector, received) = otlp_receiver();
    let mut s = Server::start(&["--otlp-endpoint", &collector]);
    s.deploy_ok("t", &hostile(), &[], None);
    let answered = |head: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix("traceparent: "))
            .unwrap()
            .trim()
            .to_string()
    };
    // Five sampled requests of one trace, one not sampled, one with no
    // trace (a new, sampled one) and one that fails (500).
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut ours = Vec::new();
    for _ in 0..5 {
        let (st, head, _) = s.score_with("t", &[("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01"))], "log");
        assert_eq!(st, 200);
        ours.push(answered(&head));
    }
    let (_, unsampled, _) = s.score_with(
        "t",
        &[("traceparent", "00-11111111111111111111111111111111-00f067aa0ba902b7-00")],
        "log",
    );
    assert!(answered(&unsampled).ends_with("-00"));
    let (_, fresh, _) = s.score("t", "log");
    let (st, failed, _) = s.score("t", "trap");
    assert_eq!(st, 500);
    // SIGTERM exports what is queued.
    assert!(s.terminate());
    let spans = exported_spans(&received);
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let attr = |sp: &opentelemetry_proto::tonic::trace::v1::Span, k: &str| {
        sp.attributes
            .iter()
            .find(|a| a.key == k)
            .map(|a| format!("{:?}", a.value.as_ref().unwrap().value.as_ref().unwrap()))
    };
    assert_eq!(spans.len(), 7, "five, the fresh trace and the failure; not the unsampled one");
    // Each exported span has the ids the client got back, under the client's span.
    for tp in &ours {
        let span_id = tp.split('-').nth(2).unwrap();
        let sp = spans
            .iter()
            .find(|sp| hex(&sp.span_id) == span_id)
            .unwrap_or_else(|| panic!("no span {span_id}"));
        assert_eq!(
            (hex(&sp.trace_id), hex(&sp.parent_span_id)),
            (trace.to_string(), "00f067aa0ba902b7".to_string())
        );
        assert_eq!(sp.name, "POST /api/v1/service/{name}/score");
        assert_eq!(sp.kind, 2, "SPAN_KIND_SERVER");
        assert!(sp.end_time_unix_nano > sp.start_time_unix_nano);
        assert_eq!(attr(sp, "http.response.status_code").as_deref(), Some("IntValue(200)"));
        assert_eq!(attr(sp, "wasmscore.version").as_deref(), Some(r#"StringValue("v1")"#));
    }
    let fresh_id = answered(&fresh).split('-').nth(1).unwrap().to_string();
    let root = spans.iter().find(|sp| hex(&sp.trace_id) == fresh_id).unwrap();
    assert!(root.parent_span_id.is_empty(), "a new trace's span has no parent");
    let failed_id = answered(&failed).split('-').nth(2).unwrap().to_string();
    let f = spans.iter().find(|sp| hex(&sp.span_id) == failed_id).unwrap();
    assert_eq!(attr(f, "http.response.status_code").as_deref(), Some("IntValue(500)"));
    assert_eq!(f.status.as_ref().unwrap().code, 2, "STATUS_CODE_ERROR");
}

/// Triton's logging extension changes what the process logs while it
/// serves: a module's info line leaves stderr with `log_info` off and
/// comes back with it on; what a level cannot say is refused.
#[test]
fn the_log_settings_change_what_the_log_keeps_while_serving() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("up.log");
    let how = super::Launch {
        log: Some(path.clone()),
        ..Default::default()
    };
    let s = Server::launch(tempfile::tempdir().unwrap(), &[], &how);
    s.deploy_ok("h", &hostile(), &[], None);
    let said = || std::fs::read_to_string(&path).unwrap().matches("hostile says hello").count();
    let said_at_least = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while said() < n {
            assert!(Instant::now() < deadline, "{n} lines from the module");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert_eq!(s.score("h", "log").0, 200);
    said_at_least(1);
    let admin = format!("Bearer {}", s.admin_token());
    let set = |body: &str| s.request("POST", "/v2/logging", &[("Authorization", &admin)], body.as_bytes());
    let (st, _, now) = set(r#"{"log_info": false}"#);
    assert_eq!(
        (st, &now["log_info"], &now["log_warning"]),
        (200, &Value::Bool(false), &Value::Bool(true)),
        "{now}"
    );
    for _ in 0..3 {
        assert_eq!(s.score("h", "log").0, 200);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(said(), 1, "log_info off: the module's info lines are not logged");
    let (st, _, now) = set(r#"{"log_info": true}"#);
    assert_eq!((st, &now["log_info"]), (200, &Value::Bool(true)), "{now}");
    assert_eq!(s.score("h", "log").0, 200);
    said_at_least(2);
    let log = std::fs::read_to_string(&path).unwrap();
    assert!(log.contains("log settings changed"), "{log}");
    // Refused, with nothing changed.
    let (st, _, e) = set(r#"{"log_warning": false}"#);
    assert_eq!(st, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("log_info on needs log_warning on"), "{e}");
    let (st, _, e) = s.request("POST", "/v2/logging", &[], br#"{"log_info": false}"#);
    assert_eq!(st, 401, "{e}");
    let (st, head, e) = s.request("PUT", "/v2/logging", &[("Authorization", &admin)], b"{}");
    assert_eq!(st, 405, "{e}");
    assert!(head.contains("allow: get, post"), "{head}");
    let (st, _, now) = s.request("GET", "/v2/logging", &[("Authorization", &admin)], b"");
    assert_eq!(
        (st, &now["log_info"], &now["log_warning"]),
        (200, &Value::Bool(true), &Value::Bool(true)),
        "{now}"
    );
}
