//! The Open Inference Protocol with the clients people already have:
//! tritonclient (http and grpc, binary and JSON), kserve's v2 REST and gRPC
//! clients, every datatype, errors, auth and version pinning
//! (tests/oip/clients.py, run in .venv-clients); models deployed with no
//! module (the built-in one) and Rust and Python modules that take the
//! tensors; the OpenAPI document checked by schemathesis.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::{built, hostile, iris_python, iris_rust, model, root, Server};

/// tests/oip/make_models.py's models under `dir`.
fn make_models(dir: &Path) {
    let out = Command::new(root().join(".venv/bin/python"))
        .arg(root().join("tests/oip/make_models.py"))
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::copy(model(), dir.join("iris.onnx")).unwrap();
}

fn server_json(s: &Server) -> Value {
    serde_json::from_slice(&std::fs::read(s.data.path().join("server.json")).unwrap()).unwrap()
}

#[test]
fn tritonclient_and_kserve_clients_work_unmodified_over_rest_and_grpc() {
    let dir = tempfile::tempdir().unwrap();
    make_models(dir.path());
    let s = Server::start(&["--grpc-port", "0", "--max-body-bytes", "1048576"]);
    let grpc = server_json(&s)["grpc_addr"].as_str().unwrap().to_string();
    let m = |name: &str| dir.path().join(name).join("model.onnx").display().to_string();
    for ep in ["identity", "halves", "simple", "simple_fp32", "simple_fp64", "simple_int64"] {
        s.cli_ok(&["deploy", "--name", ep, "--model", &m(ep)]);
    }
    s.cli_ok(&[
        "version",
        "create",
        "--endpoint",
        "simple",
        "--version",
        "v2",
        "--model",
        &m("simple"),
    ]);
    s.deploy_ok("iris", iris_rust(), &[&model()], None);
    s.deploy_ok("iris-py", iris_python(), &[&model()], None);
    // A decoupled version (several responses per request) of the test
    // module, which counts off a COUNT input.
    s.deploy_ok("counter", &hostile(), &[], Some(json!({"decoupled": true})));
    s.deploy_ok("counter-unary", &hostile(), &[], None);
    // Modules that use the helpers' 16-bit floats and byte strings.
    for (ep, src) in [
        ("helper-py", "tests/oip/helper.py"),
        ("helper-js", "tests/oip/helper.js"),
        ("helper-c", "tests/oip/helper-c"),
    ] {
        let module = built(ep, &root().join(src));
        s.deploy_ok(ep, &module, &[Path::new(&m("halves"))], None);
        if ep == "helper-py" {
            // The Python helper's `send`, on a decoupled version.
            s.deploy_ok("counter-py", &module, &[Path::new(&m("halves"))], Some(json!({"decoupled": true})));
        }
    }

    // `show` names the built-in module.
    let (_, shown) = s.get_admin("/admin/v1/endpoints/simple");
    assert_eq!(shown["versions"][0]["module"], "built-in (model only)", "{shown}");

    let keys: serde_json::Map<String, Value> = [
        "identity",
        "halves",
        "simple",
        "simple_fp32",
        "simple_fp64",
        "simple_int64",
        "iris",
        "iris-py",
        "helper-py",
        "counter",
        "counter-unary",
        "counter-py",
    ]
    .iter()
    .map(|ep| (ep.to_string(), json!(s.key(ep).unwrap())))
    .chain([("admin".to_string(), json!(s.admin_token().trim()))])
    .collect();
    let keys = Value::Object(keys).to_string();
    for part in ["triton", "kserve"] {
        let out = Command::new(root().join(".venv-clients/bin/python"))
            .arg(root().join("tests/oip/clients.py"))
            .args([&s.addr, &grpc])
            .arg(dir.path())
            .args([&keys, part])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{part}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("checks passed"), "{stdout}");
        // Each check's line, seen with --nocapture.
        println!("{stdout}");
    }

    // The OpenAPI document (Azure ML's swagger.json route), checked by
    // schemathesis against the running server: every status, content type
    // and body as documented, no 5xx, schema-invalid requests refused, 405
    // for other methods. Not `positive_data_acceptance`: a tensor request's
    // validity depends on relations JSON Schema cannot state (the data's
    // length is the product of the shape; inputs share a batch size).
    for ep in ["simple", "iris"] {
        let url = format!("http://{}/api/v1/service/{ep}/swagger.json", s.addr);
        let key = format!("Authorization: Bearer {}", s.key(ep).unwrap());
        let out = Command::new(root().join(".venv-clients/bin/schemathesis"))
            .args(["run", &url, "--url", &format!("http://{}", s.addr), "-H", &key])
            .args(["--checks", "all", "--exclude-checks", "positive_data_acceptance"])
            .args(["--max-examples", "50", "--workers", "1", "--seed", "20261203"])
            .env("NO_COLOR", "1")
            // Its cache (.schemathesis/) goes to the test's temporary directory.
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "schemathesis on {ep}:\n{stdout}");
        assert!(stdout.contains(" passed"), "{stdout}");
    }

    // The same model's /score route takes {"inputs": {name: nested list}}.
    let row = |v: f32| vec![vec![v; 16]];
    let (status, _, body) = s.score(
        "simple_fp32",
        &json!({"inputs": {"INPUT0": row(1.0), "INPUT1": row(0.5)}}).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outputs"]["OUTPUT0"], json!(row(1.5)));
    assert_eq!(body["outputs"]["OUTPUT1"], json!(row(0.5)));
    let (status, _, body) = s.score("simple_fp32", r#"{"inputs": {"INPUT0": [[1.0, 2.0]]}}"#);
    assert_eq!(status, 400, "{body}");

    // FP16 and BF16 through /score JSON: the built-in module finds the
    // model's 16-bit inputs and outputs through the half-floats import;
    // numbers are rounded to the nearest 16-bit float on the way in.
    let (status, _, body) = s.score("halves", r#"{"inputs": {"H": [[1.5, 0.1]], "B": [[2.0, -3.0e20]]}}"#);
    assert_eq!(status, 200, "{body}");
    let h = 0.0999755859375; // 0.1 as FP16
    assert_eq!(body["outputs"]["H2"], json!([[1.5, h]]), "{body}");
    assert_eq!(body["outputs"]["HF"], json!([[1.5, h]]), "{body}");
    let b = body["outputs"]["B2"][0].as_array().unwrap();
    assert_eq!(b[0], json!(2.0), "{body}");
    assert!((b[1].as_f64().unwrap() / -3.0e20 - 1.0).abs() < 1e-2, "{body}");
    let (status, _, body) = s.score("halves", r#"{"inputs": {"H": [[1.5]], "B": [["x"]]}}"#);
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("not a number"), "{body}");
    // The same from Python (wasmscore.tensor(x, dtype="float16"), .tolist())
    // and JavaScript (tensor(x, "float16"), toList()), with a string tensor
    // of bytes that are not UTF-8 made and read back.
    for ep in ["helper-py", "helper-js"] {
        let answer = s.score(ep, r#"{"H": [[1.5, 0.1]], "B": [[2.0, -3.0e20]]}"#);
        check_halves(ep, &answer);
        let raw = json!({"dtype": "string", "data": [[0x89, 0x50, 0x4e, 0x47, 0, 0xff], "t\u{e9}xt"]});
        assert_eq!(answer.2["bytes"], raw, "{ep}: {}", answer.2);
        if ep == "helper-js" {
            // tensor(x, "string") takes a Uint8Array as one element too.
            let strings = &answer.2["strings"];
            assert_eq!(strings["shape"], json!([2]), "{}", answer.2);
            assert_eq!(strings["data"], raw["data"], "{}", answer.2);
        }
        if ep == "helper-py" {
            // INT8 and UINT8 through the bindings' bytes, BOOL named as
            // tensor() takes it, out-of-range values a 400 not a trap, NaN
            // as null.
            let body = &answer.2;
            assert_eq!(
                body["ints"],
                json!({"int8": [[-1, 127], [-128, 0]], "uint8": [0, 255], "bool": "bool"}),
                "{body}"
            );
            let refused: Vec<&str> = body["refused"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap_or(""))
                .collect();
            assert!(refused[0].contains("a uint8 tensor holds 0..255"), "{body}");
            assert!(refused[1].contains("a int8 tensor holds -128..127"), "{body}");
            assert!(refused[2].contains("a uint32 tensor holds"), "{body}");
            assert!(refused[3].contains("a bool tensor takes true/false"), "{body}");
            assert_eq!(body["nan"], Value::Null, "{body}");
        }
    }
    // And from C (ws_tensor_half, ws_tensor_half_data, ws_tensor_bytes,
    // ws_tensor_bytes_data); it prints floats with 9 digits.
    let (status, _, body) = s.score("helper-c", "{}");
    assert_eq!(status, 200, "{body}");
    let h = 0.0999755859375; // 0.1 as FP16
    for out in ["H2", "HF"] {
        let v: Vec<f64> = body[out].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert!(v.len() == 2 && v[0] == 1.5 && (v[1] - h).abs() < 1e-9, "{out}: {body}");
    }
    assert_eq!((&body["type"], &body["refused"]), (&json!(0), &json!(1)), "{body}");
    assert_eq!(
        body["bytes"],
        json!([[0x89, 0x50, 0x4e, 0x47, 0, 0xff], [116, 0xc3, 0xa9, 120, 116]]),
        "{body}"
    );
    // Text that is not UTF-8 (a Latin-1 log line and metric name, an error
    // cut mid-character) is fixed by the helper, not a trap: the error is
    // the module's 400, and the instance serves on.
    let (status, _, body) = s.score("helper-c", "latin1");
    let message = body["error"]["message"].as_str().unwrap_or("");
    assert_eq!(status, 400, "{body}");
    assert!(message.starts_with("caf? aaa") && message.ends_with("aaa?"), "{body}");
    assert_eq!(s.score("helper-c", "{}").0, 200);
    // From Python: a message with a lone surrogate (json.loads makes one of
    // "\ud800") is the module's error, the surrogate replaced, not a trap.
    let (status, _, body) = s.score("helper-py", r#"{"surrogate": "\ud800"}"#);
    assert_eq!((status, body["error"]["message"].as_str()), (400, Some("refused ?")), "{body}");
    let (status, _, body) = s.score("helper-py", r#"{"surrogate": "\ud800", "fail": true}"#);
    let message = body["error"]["message"].as_str().unwrap_or("");
    assert!(status == 500 && message.ends_with("ValueError: failed on ?"), "{body}");

    // An output the model does not have: 400 after the version ran, so
    // the answer names the version, as every answer it gave does.
    let auth = format!("Bearer {}", s.key("iris").unwrap());
    let body =
        r#"{"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}], "outputs": [{"name": "nope"}]}"#;
    let (status, head, answer) = s.request("POST", "/v2/models/iris/infer", &[("Authorization", &auth)], body.as_bytes());
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("no output \"nope\""), "{answer}");
    assert!(head.contains("x-wasmscore-version: v1"), "{head}");

    // A module that answers an inference response it wrote as JSON, with
    // no tensors: the request's `outputs` and `binary_data_output` still
    // apply (they were ignored over REST; gRPC always read them).
    let auth = format!("Bearer {}", s.key("counter-unary").unwrap());
    let ask = |rest: &str| {
        let body = format!(r#"{{"inputs": [{{"name": "ANSWER_JSON", "shape": [1], "datatype": "INT64", "data": [1]}}]{rest}}}"#);
        s.request(
            "POST",
            "/v2/models/counter-unary/infer",
            &[("Authorization", &auth)],
            body.as_bytes(),
        )
    };
    let (status, _, answer) = ask(r#", "outputs": [{"name": "B"}]"#);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["model_name"], "counter-unary", "{answer}");
    assert_eq!(
        answer["outputs"],
        json!([{"name": "B", "datatype": "FP32", "shape": [2], "data": [0.5, 1.5]}])
    );
    let (status, head, _) = ask(r#", "parameters": {"binary_data_output": true}"#);
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("inference-header-content-length: "), "{head}");
    assert!(head.contains("content-type: application/octet-stream"), "{head}");
    let (status, _, answer) = ask(r#", "outputs": [{"name": "C"}]"#);
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("no output \"C\""), "{answer}");

    // A model-only deploy needs exactly one model.
    let out = s.cli(&["deploy", "--name", "two", "--model", &m("simple"), "--model", &m("identity")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exactly one --model"));
}

/// A module's answer on the halves model: each output's dtype and data,
/// and the model's inputs as the helper describes them.
fn check_halves(ep: &str, (status, _, body): &(u16, String, Value)) {
    let h = 0.0999755859375; // 0.1 as FP16
    assert_eq!(*status, 200, "{ep}: {body}");
    assert_eq!(
        body["outputs"]["H2"],
        json!({"dtype": "float16", "data": [[1.5, h]]}),
        "{ep}: {body}"
    );
    assert_eq!(
        body["outputs"]["HF"],
        json!({"dtype": "float32", "data": [[1.5, h]]}),
        "{ep}: {body}"
    );
    assert_eq!(body["outputs"]["B2"]["dtype"], "bfloat16", "{ep}: {body}");
    assert_eq!(body["outputs"]["B2"]["data"][0][0].as_f64(), Some(2.0), "{ep}: {body}");
    assert_eq!(
        (&body["inputs"][0][1], &body["inputs"][1][1]),
        (&json!("float16"), &json!("bfloat16")),
        "{ep}: {body}"
    );
}

/// gRPC over TLS (the development CA, as HTTPS uses it) with the message
/// limit: tritonclient.grpc with `ssl=True` is served; a message over
/// `--max-body-bytes` is refused with a status and the server keeps serving;
/// an error after the version ran names it (`x-wasmscore-version`; a
/// failed message of a stream, `model_version`).
#[test]
fn grpc_serves_over_tls_and_refuses_an_oversize_message() {
    let dir = tempfile::tempdir().unwrap();
    make_models(dir.path());
    let s = Server::start(&[
        "--tls-port",
        "0",
        "--tls-self-signed",
        "--grpc-port",
        "0",
        "--max-body-bytes",
        "1048576",
    ]);
    let info = server_json(&s);
    assert_eq!(info["grpc_tls"], true, "{info}");
    let port = info["grpc_addr"].as_str().unwrap().rsplit(':').next().unwrap().to_string();
    let model = dir.path().join("simple_fp32/model.onnx");
    s.cli_ok(&["deploy", "--name", "simple_fp32", "--model", model.to_str().unwrap()]);
    let script = "import sys, numpy as np, tritonclient.grpc as tg\n\
        from tritonclient.utils import InferenceServerException\n\
        addr, ca, key = sys.argv[1:4]\n\
        c = tg.InferenceServerClient(addr, ssl=True, root_certificates=ca)\n\
        h = {'authorization': 'Bearer ' + key}\n\
        def call(rows):\n\
        \x20   ins = [tg.InferInput(n, [rows, 16], 'FP32') for n in ('INPUT0', 'INPUT1')]\n\
        \x20   for i in ins: i.set_data_from_numpy(np.full((rows, 16), 2.0, np.float32))\n\
        \x20   return c.infer('simple_fp32', ins, headers=h)\n\
        assert (call(1).as_numpy('OUTPUT0') == 4.0).all()\n\
        try:\n\
        \x20   call(20000)\n\
        \x20   raise SystemExit('a 2.5 MB message was served')\n\
        except InferenceServerException as e:\n\
        \x20   print('refused:', e.status(), e.message())\n\
        import grpc\n\
        raw = grpc.secure_channel(addr, grpc.ssl_channel_credentials(open(ca, 'rb').read())).unary_unary(\n\
        \x20   '/inference.GRPCInferenceService/ModelInfer', request_serializer=lambda b: b, response_deserializer=lambda b: b)\n\
        try:\n\
        \x20   raw(b'\\xff\\xff\\xff', metadata=[('authorization', 'Bearer ' + key)], timeout=30)\n\
        \x20   raise SystemExit('a message that is not protobuf was served')\n\
        except grpc.RpcError as e:\n\
        \x20   assert e.code() == grpc.StatusCode.INTERNAL and 'decode' in e.details(), (e.code(), e.details())\n\
        from tritonclient.grpc import service_pb2 as pb\n\
        nope = pb.ModelInferRequest(model_name='simple_fp32', raw_input_contents=[np.full(16, 2.0, np.float32).tobytes()] * 2,\n\
        \x20   inputs=[pb.ModelInferRequest.InferInputTensor(name=n, datatype='FP32', shape=[1, 16]) for n in ('INPUT0', 'INPUT1')],\n\
        \x20   outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name='nope')])\n\
        try:\n\
        \x20   raw(nope.SerializeToString(), metadata=[('authorization', 'Bearer ' + key)], timeout=30)\n\
        \x20   raise SystemExit('an output the model does not have was served')\n\
        except grpc.RpcError as e:\n\
        \x20   md = dict(e.trailing_metadata() or ())\n\
        \x20   assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and md.get('x-wasmscore-version') == 'v1', (e.code(), e.details(), md)\n\
        stream = grpc.secure_channel(addr, grpc.ssl_channel_credentials(open(ca, 'rb').read())).stream_stream(\n\
        \x20   '/inference.GRPCInferenceService/ModelStreamInfer', request_serializer=lambda b: b,\n\
        \x20   response_deserializer=pb.ModelStreamInferResponse.FromString)\n\
        failed = next(iter(stream(iter([nope.SerializeToString()]), metadata=[('authorization', 'Bearer ' + key)], timeout=30)))\n\
        assert 'nope' in failed.error_message and failed.infer_response.model_version == 'v1', failed\n\
        assert (call(2).as_numpy('OUTPUT1') == 0.0).all()\n\
        try:\n\
        \x20   tg.InferenceServerClient(addr).is_server_live()\n\
        \x20   raise SystemExit('plaintext gRPC was served on the TLS port')\n\
        except InferenceServerException:\n\
        \x20   print('plaintext refused')\n";
    let (addr, key) = (format!("localhost:{port}"), s.key("simple_fp32").unwrap());
    let stdout = crate::clients_python(
        script,
        &[&addr, info["tls_ca"].as_str().unwrap(), &key],
        "plaintext refused",
        String::new,
    );
    assert!(
        stdout.contains("refused: StatusCode.") && stdout.contains("plaintext refused"),
        "{stdout}"
    );
}

/// SIGTERM with a gRPC channel, an HTTP/2 REST connection and an idle
/// HTTP/1.1 keep-alive connection open: the server sends the HTTP/2 ones
/// GOAWAY and closes the HTTP/1.1 one, so the clients' next calls go to a
/// new connection (refused here, where no other server is; on a cluster,
/// the other router) instead of being refused on the old one; a stream
/// open on the channel ends UNAVAILABLE, saying to open it again; a
/// connection that had sent nothing yet has its first request served; a
/// call in progress finishes.
#[test]
fn a_stopping_server_sends_clients_away_and_finishes_calls_in_progress() {
    use std::io::{BufRead, BufReader, Write};
    let mut s = Server::start(&["--grpc-port", "0"]);
    let grpc = server_json(&s)["grpc_addr"].as_str().unwrap().to_string();
    s.deploy_ok("iris", iris_rust(), &[&model()], None);
    s.deploy_ok("slow", &hostile(), &[], None);
    let script = "import sys, time, queue, numpy as np, tritonclient.grpc as tg\n\
        from tritonclient.utils import InferenceServerException\n\
        grpc, key = sys.argv[1:3]\n\
        c = tg.InferenceServerClient(grpc)\n\
        x = tg.InferInput('X', [1, 4], 'FP32'); x.set_data_from_numpy(np.array([[5.1, 3.5, 1.4, 0.2]], np.float32))\n\
        h = {'authorization': 'Bearer ' + key}\n\
        c.infer('iris', [x], headers=dict(h))\n\
        got = queue.Queue()\n\
        c.start_stream(lambda result, error: got.put((result, error)), headers=dict(h))\n\
        c.async_stream_infer('iris', [x], request_id='before')\n\
        r, e = got.get(timeout=10); assert e is None and r.get_response().id == 'before', e\n\
        print('connected', flush=True)\n\
        sys.stdin.readline()\n\
        r, e = got.get(timeout=10)\n\
        assert r is None and e is not None and 'open the stream again' in str(e), (r, e)\n\
        print('stream ended:', e)\n\
        deadline = time.time() + 10\n\
        while True:\n\
        \x20   try:\n\
        \x20       c.infer('iris', [x], headers=dict(h), client_timeout=10)\n\
        \x20   except InferenceServerException as e:\n\
        \x20       print('refused', e.status(), e.message()); break\n\
        \x20   assert time.time() < deadline, 'still answered on the old connection'\n\
        \x20   time.sleep(0.05)\n";
    let mut py = Command::new(root().join(".venv-clients/bin/python"))
        .args(["-c", script, &grpc, &s.key("iris").unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(py.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "connected");
    let (h2, h2_go) = h2_calls_until_sent_away(&s.addr);
    let mut h1 = std::net::TcpStream::connect(&s.addr).unwrap();
    h1.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut head = [0u8; 512];
    let n = std::io::Read::read(&mut h1, &mut head).unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head[..n]));
    // A connection that has sent nothing yet at the SIGTERM.
    let mut quiet = std::net::TcpStream::connect(&s.addr).unwrap();
    // A call in progress keeps the server draining while the client calls again.
    let (addr, key) = (s.addr.clone(), s.key("slow").unwrap());
    let slow = std::thread::spawn(move || crate::post_score(&addr, "slow", &key, &[], "sleep:3000"));
    std::thread::sleep(std::time::Duration::from_millis(300));
    let pid = s.pid().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let _ = h2_go.send(());
    // The idle keep-alive connection is closed while the slow call runs.
    h1.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let mut rest_of_h1 = Vec::new();
    let closed = std::io::Read::read_to_end(&mut h1, &mut rest_of_h1);
    assert!(
        closed.is_ok() && !slow.is_finished(),
        "the idle HTTP/1.1 connection was not closed while a call was in progress: {closed:?}"
    );
    // The quiet connection's first request is served (then it is closed).
    quiet.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    quiet.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let read = std::io::Read::read_to_end(&mut quiet, &mut answer);
    assert!(
        read.is_ok() && answer.starts_with(b"HTTP/1.1 200") && !slow.is_finished(),
        "a connection made before the SIGTERM had its request dropped: {read:?} {}",
        String::from_utf8_lossy(&answer)
    );
    let h2 = h2.join().unwrap();
    assert!(
        h2.as_ref()
            .is_ok_and(|(st, why)| why.starts_with("GOAWAY") && st.iter().all(|c| *c == 200))
            && !slow.is_finished(),
        "the HTTP/2 connection was not sent away while a call was in progress: {h2:?}"
    );
    py.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut py.stderr.take().unwrap(), &mut err).unwrap();
    assert!(py.wait().unwrap().success(), "{rest}{err}");
    // Calls before the client saw GOAWAY are served; the first one refused
    // is refused by no server, not by this one's "shutting down".
    assert!(
        rest.contains("refused StatusCode.UNAVAILABLE") && !rest.contains("shutting down;"),
        "the call after SIGTERM went to the old connection: {rest}"
    );
    assert_eq!(slow.join().unwrap(), Some(200), "the call in progress was not finished");
    assert!(s.terminate());
}

/// The statuses an HTTP/2 connection's calls got, and why they stopped.
type H2Calls = std::thread::JoinHandle<Result<(Vec<u16>, String), String>>;

/// An HTTP/2 connection (REST, prior knowledge) on its own thread: one call
/// once connected; then, told to go on, a call every 50 ms until one fails.
/// Gives the statuses before that, and the failure (`GOAWAY ...` when the
/// server sent the connection away).
fn h2_calls_until_sent_away(addr: &str) -> (H2Calls, tokio::sync::oneshot::Sender<()>) {
    let (connected, is_connected) = std::sync::mpsc::channel();
    let (go, gone) = tokio::sync::oneshot::channel::<()>();
    let addr = addr.to_string();
    let calls = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let tcp = tokio::net::TcpStream::connect(&addr).await.map_err(|e| e.to_string())?;
            let (client, conn) = h2::client::handshake(tcp).await.map_err(|e| e.to_string())?;
            let conn = tokio::spawn(conn);
            let call = |client: h2::client::SendRequest<bytes::Bytes>| {
                let uri = format!("http://{addr}/v2/health/live");
                let call = async move {
                    let mut client = client.ready().await?;
                    let (answer, _) = client.send_request(http::Request::get(uri).body(()).unwrap(), true)?;
                    Ok::<u16, h2::Error>(answer.await?.status().as_u16())
                };
                async move {
                    let limit = std::time::Duration::from_secs(10);
                    tokio::time::timeout(limit, call).await.expect("an HTTP/2 call took over 10 s")
                }
            };
            let mut statuses = vec![call(client.clone()).await.map_err(|e| e.to_string())?];
            connected.send(()).unwrap();
            let _ = gone.await;
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
            while tokio::time::Instant::now() < deadline {
                match call(client.clone()).await {
                    Ok(status) => statuses.push(status),
                    Err(e) if e.is_go_away() => return Ok((statuses, format!("GOAWAY {e}"))),
                    Err(e) => return Err(format!("{e} after {statuses:?}; the connection: {:?}", conn.await)),
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(format!("never sent away: {statuses:?}"))
        })
    });
    is_connected
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the HTTP/2 connection's first call");
    (calls, go)
}
