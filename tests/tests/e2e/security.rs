//! Security over HTTP with the real binary and CLI: the auth matrix (no
//! header, wrong key, each key, a regenerated key, tokens valid / expired /
//! forged / for another endpoint, rotated signing keys, auth off) over the
//! scoring route and every admin route.

use std::time::Duration;

use super::{error_code, iris_rust, model, Server};

const ROW: &str = r#"{"data": [[5.1, 3.5, 1.4, 0.2]]}"#;

impl Server {
    fn score_as(&self, endpoint: &str, authorization: Option<&str>) -> (u16, String, serde_json::Value) {
        let mut h = vec![("Content-Type", "application/json")];
        if let Some(a) = authorization {
            h.push(("Authorization", a));
        }
        self.request("POST", &format!("/api/v1/service/{endpoint}/score"), &h, ROW.as_bytes())
    }

    pub(crate) fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cli_ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out}"))
    }

    fn token(&self, endpoint: &str, extra: &[&str]) -> String {
        let mut args = vec!["service", "get-access-token", endpoint];
        args.extend_from_slice(extra);
        let t = self.cli_json(&args);
        assert!(t["refreshBy"].as_str().unwrap().ends_with('Z'), "{t}");
        t["accessToken"].as_str().unwrap().to_string()
    }
}

fn bearer(s: &str) -> String {
    format!("Bearer {s}")
}

/// 401, with a JSON error and WWW-Authenticate, naming `what`.
fn refused(r: (u16, String, serde_json::Value), what: &str) {
    let (status, head, body) = r;
    assert_eq!(status, 401, "{body}");
    assert_eq!(error_code(&body), "unauthorized");
    assert!(head.contains("www-authenticate: bearer"), "{head}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains(what), "{msg:?} does not say {what:?}");
}

#[test]
fn the_auth_matrix_over_scoring_and_admin_routes() {
    let s = Server::start(&[]);
    s.deploy_ok("keyed", iris_rust(), &[&model()], None);
    s.deploy_ok("open", iris_rust(), &[&model()], Some(serde_json::json!({"auth_enabled": false})));
    for e in ["tokened", "other"] {
        s.cli_ok(&["service", "create", e, "--token-auth-enabled"]);
        s.deploy_ok(e, iris_rust(), &[&model()], None);
    }

    // Keys: either one, nothing else.
    let keys = s.cli_json(&["service", "get-keys", "keyed"]);
    let (primary, secondary) = (keys["primaryKey"].as_str().unwrap(), keys["secondaryKey"].as_str().unwrap());
    assert_ne!(primary, secondary);
    refused(s.score_as("keyed", None), "Authorization: Bearer <key>");
    refused(s.score_as("keyed", Some("Bearer not-the-key")), "not valid");
    refused(s.score_as("keyed", Some(primary)), "Bearer <key>");
    assert_eq!(s.score_as("keyed", Some(&bearer(primary))).0, 200);
    assert_eq!(s.score_as("keyed", Some(&bearer(secondary))).0, 200);
    // Another endpoint's key does not open this one.
    let open_keys = s.cli_json(&["service", "get-keys", "open"]);
    refused(
        s.score_as("keyed", Some(&bearer(open_keys["primaryKey"].as_str().unwrap()))),
        "not valid",
    );

    // A regenerated key: the old one is refused at once, the other still works.
    let regen = s.cli_json(&["service", "regen-key", "keyed", "--key", "primary"]);
    let new_primary = regen["primaryKey"].as_str().unwrap();
    assert_ne!(new_primary, primary);
    assert_eq!(regen["secondaryKey"], secondary);
    refused(s.score_as("keyed", Some(&bearer(primary))), "not valid");
    assert_eq!(s.score_as("keyed", Some(&bearer(new_primary))).0, 200);
    assert_eq!(s.score_as("keyed", Some(&bearer(secondary))).0, 200);

    // Auth off.
    assert_eq!(s.score_as("open", None).0, 200);

    // Tokens.
    let token = s.token("tokened", &[]);
    assert_eq!(s.score_as("tokened", Some(&bearer(&token))).0, 200);
    refused(s.score_as("tokened", None), "Bearer <token>");
    let tokened_keys = s.cli_json(&["service", "get-keys", "tokened"]);
    refused(
        s.score_as("tokened", Some(&bearer(tokened_keys["primaryKey"].as_str().unwrap()))),
        "not a JWT",
    );
    // Forged: the signature's first character changed.
    let dot = token.rfind('.').unwrap() + 1;
    let flip = if token.as_bytes()[dot] == b'A' { "B" } else { "A" };
    let forged = format!("{}{flip}{}", &token[..dot], &token[dot + 1..]);
    refused(s.score_as("tokened", Some(&bearer(&forged))), "signature");
    let others = s.token("other", &[]);
    refused(s.score_as("tokened", Some(&bearer(&others))), "signing key is unknown");
    // A token is not a key either.
    refused(s.score_as("keyed", Some(&bearer(&token))), "not valid");
    let short = s.token("tokened", &["--lifetime-seconds", "1"]);
    assert_eq!(s.score_as("tokened", Some(&bearer(&short))).0, 200);
    std::thread::sleep(Duration::from_millis(2100));
    refused(s.score_as("tokened", Some(&bearer(&short))), "expired");
    // get-access-token on a key endpoint says how to turn tokens on.
    let out = s.cli(&["service", "get-access-token", "keyed"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("token auth is off"));

    // Rotating the signing key keeps tokens already given valid; new ones
    // are signed with the new key.
    let rotated = s.cli_json(&["service", "rotate-token-key", "tokened"]);
    assert!(rotated["kid"].is_string(), "{rotated}");
    assert_eq!(s.score_as("tokened", Some(&bearer(&token))).0, 200, "an old token after rotation");
    let fresh = s.token("tokened", &[]);
    assert_eq!(s.score_as("tokened", Some(&bearer(&fresh))).0, 200);

    // Every admin route: only the admin token opens it; no scoring key or
    // token does.
    let admin = bearer(&s.admin_token());
    let routes: &[(&str, &str)] = &[
        ("GET", "/admin/v1/endpoints"),
        ("GET", "/admin/v1/devices"),
        ("POST", "/admin/v1/endpoints"),
        ("GET", "/admin/v1/endpoints/keyed"),
        ("PATCH", "/admin/v1/endpoints/keyed"),
        ("DELETE", "/admin/v1/endpoints/nothing-here"),
        ("GET", "/admin/v1/endpoints/keyed/keys"),
        ("POST", "/admin/v1/endpoints/keyed/regen-key"),
        ("POST", "/admin/v1/endpoints/tokened/token"),
        ("POST", "/admin/v1/endpoints/tokened/rotate-token-key"),
        ("GET", "/admin/v1/endpoints/keyed/logs"),
        ("GET", "/admin/v1/endpoints/keyed/versions"),
        ("POST", "/admin/v1/endpoints/keyed/versions"),
        ("GET", "/admin/v1/endpoints/keyed/versions/v1"),
        ("PATCH", "/admin/v1/endpoints/keyed/versions/v1"),
        ("PUT", "/admin/v1/endpoints/keyed/versions/v1"),
        ("DELETE", "/admin/v1/endpoints/keyed/versions/v1"),
        ("GET", "/admin/v1/endpoints/keyed/versions/v1/logs"),
        ("GET", "/admin/v1/models"),
        ("POST", "/admin/v1/models"),
        ("GET", "/admin/v1/models/iris:1"),
        ("DELETE", "/admin/v1/models/iris:1"),
        ("POST", "/admin/v1/blobs"),
        ("GET", "/metrics"),
    ];
    let token_now = s.token("tokened", &[]);
    let keyed_now = s.cli_json(&["service", "get-keys", "keyed"]);
    let wrong: Vec<Option<String>> = vec![
        None,
        Some(bearer(keyed_now["primaryKey"].as_str().unwrap())),
        Some(bearer(keyed_now["secondaryKey"].as_str().unwrap())),
        Some(bearer(&token_now)),
        Some("Bearer ".into()),
        Some(format!("Basic {}", s.admin_token())),
    ];
    for (method, path) in routes {
        for w in &wrong {
            let mut h = vec![];
            if let Some(a) = w {
                h.push(("Authorization", a.as_str()));
            }
            let (status, _, body) = s.request(method, path, &h, b"{}");
            assert_eq!(status, 401, "{method} {path} with {w:?}: {body}");
        }
        // The admin token gets past auth (whatever the route then says to
        // this empty body). Deletes are left out so the server stays whole.
        if *method != "DELETE" {
            let (status, _, body) = s.request(method, path, &[("Authorization", &admin)], b"{}");
            assert_ne!(status, 401, "{method} {path} with the admin token: {body}");
        }
    }

    // Keys never appear in show or logs.
    let show = s.cli_ok(&["service", "show", "keyed", "--json"]);
    let logs = s.cli_ok(&["service", "logs", "keyed"]);
    let keys_now = s.cli_json(&["service", "get-keys", "keyed"]);
    for k in [keys_now["primaryKey"].as_str().unwrap(), keys_now["secondaryKey"].as_str().unwrap()] {
        assert!(!show.contains(k) && !logs.contains(k), "a key is shown");
    }
    let show: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert_eq!(show["auth"]["mode"], "key", "{show}");

    // Keys, modes and signing keys survive a restart; so do tokens given.
    let data = s.kill();
    let s = Server::start_in(data, &[]);
    assert_eq!(s.score_as("keyed", Some(&bearer(keys_now["primaryKey"].as_str().unwrap()))).0, 200);
    assert_eq!(s.score_as("tokened", Some(&bearer(&fresh))).0, 200);
    assert_eq!(s.score_as("open", None).0, 200);
    refused(s.score_as("keyed", None), "Bearer <key>");
}

#[test]
fn auth_settings_from_a_deployment_config_and_azure_mls_file() {
    let s = Server::start(&[]);
    let given = "a-given-primary-key-0123456789";
    s.deploy_ok(
        "given",
        iris_rust(),
        &[&model()],
        Some(serde_json::json!({"primary_key": given, "num_replicas": 1})),
    );
    assert_eq!(s.score_as("given", Some(&bearer(given))).0, 200);
    // The key went to the endpoint, not into the version's stored config.
    let show = s.cli_ok(&["service", "show", "given", "--json"]);
    assert!(!show.contains(given), "{show}");
    // Azure ML's camelCase names: tokenAuthEnabled turns key auth off.
    let dir = tempfile::tempdir().unwrap();
    let dc = dir.path().join("deploymentconfig.json");
    std::fs::write(&dc, r#"{"computeType": "aks", "authEnabled": false, "tokenAuthEnabled": true}"#).unwrap();
    let out = s.cli(&[
        "deploy",
        "--name",
        "az",
        "--module",
        iris_rust().to_str().unwrap(),
        "--model",
        model().to_str().unwrap(),
        "--dc",
        dc.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("mapped tokenAuthEnabled -> token_auth_enabled"), "{err}");
    refused(s.score_as("az", None), "Bearer <token>");
    let t = s.token("az", &[]);
    assert_eq!(s.score_as("az", Some(&bearer(&t))).0, 200);
    // Both on is refused with the rule.
    let out = s.cli(&["service", "update", "az", "--auth-enabled", "--token-auth-enabled"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot both be true"));
    // Turning auth off takes effect at once.
    s.cli_ok(&[
        "service",
        "update",
        "az",
        "--auth-enabled",
        "false",
        "--token-auth-enabled",
        "false",
    ]);
    assert_eq!(s.score_as("az", None).0, 200);
}

fn server_info(s: &Server) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(s.data.path().join("server.json")).unwrap()).unwrap()
}

/// curl's answer: (exit code, body + "\nhttp VERSION STATUS").
fn curl(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "-w", "\nhttp %{http_version} %{http_code}"])
        .args(args)
        .output()
        .expect("curl is installed (Debian's curl)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn tls_with_real_clients_that_verify_the_certificate() {
    let s = Server::start(&["--tls-port", "0", "--tls-self-signed"]);
    s.deploy_ok("iris", iris_rust(), &[&model()], None);
    let info = server_info(&s);
    let (url, ca) = (info["tls_url"].as_str().unwrap(), info["tls_ca"].as_str().unwrap());
    assert!(url.starts_with("https://localhost:"), "{info}");
    let score = format!("{url}/api/v1/service/iris/score");
    let auth = format!("Authorization: Bearer {}", s.key("iris").unwrap());
    // HTTP/2 by ALPN, and HTTP/1.1 when the client asks for it.
    let (code, out) = curl(&["--cacert", ca, "-H", &auth, "-d", ROW, &score]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("probabilities") && out.ends_with("http 2 200"), "{out}");
    let (code, out) = curl(&["--http1.1", "--cacert", ca, "-H", &auth, "-d", ROW, &score]);
    assert!(code == 0 && out.ends_with("http 1.1 200"), "{out}");
    // Auth holds over TLS too.
    let (_, out) = curl(&["--cacert", ca, "-d", ROW, &score]);
    assert!(out.ends_with(" 401"), "{out}");
    // Without the CA the client refuses the certificate (curl exit 60).
    let (code, _) = curl(&["-H", &auth, "-d", ROW, &score]);
    assert_eq!(code, 60);
    // Python requests, verifying against the CA; and refusing without it.
    let py = format!(
        "import requests,sys\nr=requests.post('{score}',json={{'data':[[5.1,3.5,1.4,0.2]]}},headers={{'Authorization':'Bearer {}'}},verify='{ca}')\nprint(r.status_code, r.json()['probabilities'][0][0] > 0.9)\ntry:\n requests.get('{url}/v2/health/live')\n print('unverified!')\nexcept requests.exceptions.SSLError:\n print('refused')\n",
        s.key("iris").unwrap()
    );
    let out = std::process::Command::new(super::root().join(".venv/bin/python"))
        .args(["-c", &py])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.trim(), "200 True\nrefused", "{}", String::from_utf8_lossy(&out.stderr));
    // Plain HTTP is still served beside it.
    assert_eq!(s.score("iris", ROW).0, 200);
}

#[test]
fn https_only_the_cli_and_clients_use_tls() {
    let data = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(super::bin())
        .args([
            "up",
            "--port",
            "0",
            "--tls-port",
            "0",
            "--tls-self-signed",
            "--no-plain-http",
            "--data-dir",
        ])
        .arg(data.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let info_path = data.path().join("server.json");
    let t = std::time::Instant::now();
    let info: serde_json::Value = loop {
        if let Some(v) = std::fs::read(&info_path).ok().and_then(|b| serde_json::from_slice(&b).ok()) {
            break v;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "up did not start");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(info["url"].is_null(), "no plain HTTP: {info}");
    let cli = |args: &[&str]| {
        std::process::Command::new(super::bin())
            .args(args)
            .arg("--data-dir")
            .arg(data.path())
            .output()
            .unwrap()
    };
    let out = cli(&[
        "deploy",
        "--name",
        "iris",
        "--module",
        iris_rust().to_str().unwrap(),
        "--model",
        model().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let keys: serde_json::Value = serde_json::from_slice(&cli(&["service", "get-keys", "iris"]).stdout).unwrap();
    let auth = format!("Authorization: Bearer {}", keys["primaryKey"].as_str().unwrap());
    let score = format!("{}/api/v1/service/iris/score", info["tls_url"].as_str().unwrap());
    let (code, out) = curl(&["--cacert", info["tls_ca"].as_str().unwrap(), "-H", &auth, "-d", ROW, &score]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(code == 0 && out.ends_with(" 200"), "{out}");
}

#[test]
fn edge_limits_cut_slow_clients_cap_connections_and_refuse_huge_headers() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let s = Server::start(&[
        "--max-connections",
        "8",
        "--header-read-timeout-ms",
        "700",
        "--max-header-bytes",
        "8192",
    ]);
    s.deploy_ok("iris", iris_rust(), &[&model()], None);
    let key = s.key("iris").unwrap();

    // A head larger than the limit: 431 with a JSON error, and the server
    // goes on; past twice the limit hyper's own 431 (no body).
    let big = "x".repeat(12_000);
    let (status, _, j) = s.request("POST", "/api/v1/service/iris/score", &[("X-Big", &big)], ROW.as_bytes());
    assert_eq!((status, error_code(&j)), (431, "headers_too_large"), "{j}");
    let (status, _, j) = s.request("POST", "/v2/models/iris/infer", &[("X-Big", &big)], b"{}");
    assert!(status == 431 && j["error"].as_str().unwrap().contains("--max-header-bytes"), "{j}");
    let big = "x".repeat(20_000);
    let (status, _, _) = s.request("POST", "/api/v1/service/iris/score", &[("X-Big", &big)], ROW.as_bytes());
    assert_eq!(status, 431);

    // Slow clients (half a request head, then nothing) are cut after the
    // header read timeout.
    let t = std::time::Instant::now();
    let mut slow: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut c = TcpStream::connect(&s.addr).unwrap();
            c.write_all(b"POST /api/v1/service/iris/score HTTP/1.1\r\nHost: x\r\n").unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            c
        })
        .collect();
    // Others are served meanwhile.
    assert_eq!(s.score("iris", ROW).0, 200);
    for c in &mut slow {
        let mut buf = Vec::new();
        let _ = c.read_to_end(&mut buf); // returns when the server closes it
    }
    let cut = t.elapsed();
    assert!(cut < Duration::from_secs(5), "slow clients held for {cut:?}");

    // The connection cap of 8: 8 idle connections, then a 9th is told 503 at
    // once. (A connection of the steps above may still be closing and hold
    // a slot for a moment; then the 8th is the one refused.)
    let mut held: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(&s.addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut answer = String::new();
    for c in &mut held {
        c.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 512];
        if let Ok(n) = c.read(&mut buf) {
            answer = String::from_utf8_lossy(&buf[..n]).into_owned();
        }
        c.set_nonblocking(false).unwrap();
    }
    if answer.is_empty() {
        let mut ninth = TcpStream::connect(&s.addr).unwrap();
        ninth.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
        let _ = ninth.read_to_string(&mut answer);
    }
    assert!(
        answer.starts_with("HTTP/1.1 503") && answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer:?}"
    );
    assert!(answer.contains("\"overloaded\""), "{answer}");
    // Idle connections that never send a request are cut by the same
    // timeout, so holding the cap does not starve others for long.
    let t = std::time::Instant::now();
    loop {
        let (status, _, _) = s.request(
            "POST",
            "/api/v1/service/iris/score",
            &[("Authorization", &format!("Bearer {key}"))],
            ROW.as_bytes(),
        );
        if status == 200 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(6), "still refused: {status}");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(held);
}

/// A gRPC call of the inference service opened on a connection of its
/// own, with the key if one is given: its answer, and where its messages go.
async fn grpc_call(addr: &str, method: &str, key: Option<&str>) -> (h2::client::ResponseFuture, h2::SendStream<bytes::Bytes>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let mut req = http::Request::post(format!("http://{addr}/inference.GRPCInferenceService/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(key) = key {
        req = req.header("authorization", format!("Bearer {key}"));
    }
    client.send_request(req.body(()).unwrap(), false).unwrap()
}

/// What a client with no key, or a slow one, can hold: a gRPC call is
/// refused once its model's name has come, not after its message; a body
/// that stops coming is cut (408); HTTP/2 connections that send their
/// preface and then nothing end once idle, so they do not hold the
/// connection cap.
#[test]
fn no_key_slow_bodies_and_idle_http2_connections_hold_nothing_for_long() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let s = Server::start(&["--grpc-port", "0", "--max-connections", "8", "--header-read-timeout-ms", "700"]);
    s.deploy_ok("iris", iris_rust(), &[&model()], None);
    let key = s.key("iris").unwrap();
    let grpc = serde_json::from_slice::<serde_json::Value>(&std::fs::read(s.data.path().join("server.json")).unwrap()).unwrap()
        ["grpc_addr"]
        .as_str()
        .unwrap()
        .to_string();

    // ModelInfer with no key: a message that says it is 50 MB, of which the
    // name and a few bytes came. Refused UNAUTHENTICATED at once.
    let status = {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (answer, mut body) = grpc_call(&grpc, "ModelInfer", None).await;
            let mut message = vec![0u8];
            message.extend_from_slice(&50_000_000u32.to_be_bytes());
            message.extend_from_slice(b"\x0a\x04iris\x12\x00");
            body.send_data(bytes::Bytes::from(message), false).unwrap();
            let answer = tokio::time::timeout(Duration::from_secs(5), answer)
                .await
                .expect("no answer within 5 s: the server waits for the 50 MB")
                .unwrap();
            answer.headers().get("grpc-status").map(|v| v.to_str().unwrap().to_string())
        })
    };
    assert_eq!(status.as_deref(), Some("16"), "UNAUTHENTICATED");

    // A ModelStreamInfer stream open past several idle times, its
    // messages far apart: it is in flight all along, so its connection is
    // not closed under it.
    let answered = {
        use prost::Message;
        use wasmscore_server::grpc::proto::{model_infer_request::InferInputTensor, ModelInferRequest, ModelStreamInferResponse};
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (answer, mut send) = grpc_call(&grpc, "ModelStreamInfer", Some(&key)).await;
            let message = |id: &str| {
                let m = ModelInferRequest {
                    model_name: "iris".into(),
                    id: id.into(),
                    inputs: vec![InferInputTensor {
                        name: "X".into(),
                        datatype: "FP32".into(),
                        shape: vec![1, 4],
                        ..Default::default()
                    }],
                    raw_input_contents: vec![[5.1f32, 3.5, 1.4, 0.2].iter().flat_map(|x| x.to_le_bytes()).collect()],
                    ..Default::default()
                }
                .encode_to_vec();
                let mut framed = vec![0u8];
                framed.extend_from_slice(&(m.len() as u32).to_be_bytes());
                framed.extend_from_slice(&m);
                bytes::Bytes::from(framed)
            };
            send.send_data(message("first"), false).unwrap();
            let mut body = answer.await.unwrap().into_body();
            let mut got = Vec::new();
            let mut buf = Vec::new();
            for id in ["second", "third"] {
                tokio::time::sleep(Duration::from_millis(1_600)).await;
                send.send_data(message(id), false).unwrap();
            }
            while got.len() < 3 {
                let Some(Ok(chunk)) = tokio::time::timeout(Duration::from_secs(10), body.data())
                    .await
                    .expect("an answer within 10 s")
                else {
                    break;
                };
                let _ = body.flow_control().release_capacity(chunk.len());
                buf.extend_from_slice(&chunk);
                while buf.len() >= 5 {
                    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                    if buf.len() < 5 + len {
                        break;
                    }
                    let m = ModelStreamInferResponse::decode(&buf[5..5 + len]).unwrap();
                    got.push((m.infer_response.map(|r| r.id).unwrap_or_default(), m.error_message));
                    buf.drain(..5 + len);
                }
            }
            got
        })
    };
    assert_eq!(
        answered,
        [("first", ""), ("second", ""), ("third", "")].map(|(a, b)| (a.to_string(), b.to_string())),
        "a stream open for 3.2 s on a server whose idle time is 0.7 s"
    );

    // A body that stops coming, with the key: 408 once no data came for
    // the header read timeout.
    let mut slow = TcpStream::connect(&s.addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        slow,
        "POST /api/v1/service/iris/score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Length: 1000\r\n\r\n{{"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = slow.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 408") && answer.contains("request_timeout"),
        "{answer:?}"
    );
    // One that comes a byte at a time, each within the timeout: 408 too,
    // once it has come slower than 1 KiB a second past the timeout.
    let mut drip = TcpStream::connect(&s.addr).unwrap();
    write!(
        drip,
        "POST /api/v1/service/iris/score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Length: 100000\r\n\r\n"
    )
    .unwrap();
    let writer = drip.try_clone().unwrap();
    let dripping = std::thread::spawn(move || {
        let mut writer = writer;
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(300));
            if writer.write_all(b" ").is_err() {
                break;
            }
        }
    });
    drip.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = String::new();
    let _ = drip.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 408") && answer.contains("bytes a second"),
        "{answer:?}"
    );
    dripping.join().unwrap();

    // An HTTP/2 client that never opens its flow-control window: the
    // answer cannot go, nothing moves, and the connection ends once idle.
    let closed = {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
            let (client, conn) = h2::client::Builder::new().initial_window_size(0).handshake(tcp).await.unwrap();
            let conn = tokio::spawn(conn);
            let mut client = client.ready().await.unwrap();
            let req = http::Request::post(format!("http://{}/api/v1/service/iris/score", s.addr))
                .body(())
                .unwrap();
            let (_answer, mut send) = client.send_request(req, false).unwrap();
            send.send_data(bytes::Bytes::from_static(ROW.as_bytes()), true).unwrap();
            tokio::time::timeout(Duration::from_secs(8), conn).await.is_ok()
        })
    };
    assert!(closed, "a connection whose answer cannot go was held for 8 s (idle time 0.7 s)");

    // The connection cap of 8 held by HTTP/2 connections that send their
    // preface and SETTINGS, then nothing: they end once idle.
    let held: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut c = TcpStream::connect(&s.addr).unwrap();
            c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
                .unwrap();
            c
        })
        .collect();
    let t = std::time::Instant::now();
    loop {
        let (status, _, _) = s.score_as("iris", Some(&format!("Bearer {key}")));
        if status == 200 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(6), "still refused: {status}");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(held);
}

#[test]
fn a_module_that_blocks_every_call_gets_a_few_substitute_instances_not_one_each() {
    let s = Server::start(&[]);
    let dc = serde_json::json!({"scoring_timeout_ms": 300, "num_replicas": 1, "max_request_wait_time": 300});
    s.deploy_ok("blocker", &super::hostile(), &[], Some(dc));
    s.deploy_ok("calm", iris_rust(), &[&model()], None);
    let run = |body: &str| s.score("blocker", body);
    // Each call blocks in a host call the deadline cannot stop: 504. The
    // first four get a substitute instance each; the fifth does not.
    for i in 0..5 {
        let (st, _, j) = run("sleep:20000");
        assert_eq!((st, error_code(&j)), (504, "scoring_timeout"), "call {i}: {j}");
    }
    let (st, _, j) = run("after");
    assert_eq!(st, 503, "no instance is free, and none was started for the fifth: {j}");
    let v = &s.cli_json(&["service", "show", "blocker", "--json"])["versions"][0];
    assert_eq!(
        (v["abandoned_calls"].as_u64(), v["blocked_calls"].as_u64()),
        (Some(5), Some(5)),
        "{v}"
    );
    assert!(v["last_error"].as_str().unwrap_or("").contains("no substitute instance"), "{v}");
    // Another version is served all along.
    assert_eq!(s.score("calm", ROW).0, 200);
}

/// A client that leaves while its call is blocked in the host still has
/// the pool give up on the call at its deadline and start a substitute:
/// the version serves again long before the blocked call returns (no
/// caller was left to give up on it).
#[test]
fn a_blocked_call_whose_client_left_still_gets_a_substitute_instance() {
    use std::io::Write;
    let s = Server::start(&[]);
    let dc = serde_json::json!({"scoring_timeout_ms": 300, "num_replicas": 1, "max_request_wait_time": 300});
    s.deploy_ok("blocker", &super::hostile(), &[], Some(dc));
    let key = s.key("blocker").unwrap();
    let body = "sleep:20000";
    let mut c = std::net::TcpStream::connect(&s.addr).unwrap();
    write!(
        c,
        "POST /api/v1/service/blocker/score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(150));
    drop(c);
    // Its deadline (300 ms) and the grace (1 s) pass: a substitute serves.
    super::network::wait_for("a substitute instance serving", Duration::from_secs(10), || {
        s.score("blocker", "after").0 == 200
    });
    let v = &s.cli_json(&["service", "show", "blocker", "--json"])["versions"][0];
    assert_eq!(
        (v["abandoned_calls"].as_u64(), v["blocked_calls"].as_u64()),
        (Some(1), Some(1)),
        "{v}"
    );
}

#[test]
fn hostile_modules_are_contained_with_a_clear_error_while_others_are_served() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let s = Server::start(&[]);
    let hostile = super::hostile();
    let dc = |extra: serde_json::Value| {
        let mut c = serde_json::json!({"scoring_timeout_ms": 2000, "memory_gb": 0.25, "num_replicas": 1});
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        Some(c)
    };
    s.deploy_ok("bare", &hostile, &[], dc(serde_json::json!({})));
    s.deploy_ok(
        "granted",
        &hostile,
        &[],
        dc(serde_json::json!({"environment_variables": {"GREETING": "hello"}, "precise_clocks": true})),
    );
    s.deploy_ok("calm", iris_rust(), &[&model()], None);

    // Another endpoint is scored throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let calm = {
        let (addr, token, stop) = (s.addr.clone(), s.admin_token(), stop.clone());
        std::thread::spawn(move || {
            let mut c = super::rollout::KeepAlive::connect_to(&addr, &token);
            let (mut ok, mut other) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                match c.score_full("calm", &[], ROW).0 {
                    200 => ok += 1,
                    _ => other += 1,
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (ok, other)
        })
    };

    let run = |endpoint: &str, body: &str| s.score(endpoint, body);
    // Files, environment, sockets: denied unless granted.
    let (st, _, j) = run("bare", "file");
    assert_eq!((st, j["file"].as_str()), (200, Some("denied")), "{j}");
    let (_, _, j) = run("bare", "env");
    assert_eq!(j["env_vars"], 0, "{j}");
    assert_eq!(run("bare", "env:GREETING").2["value"], serde_json::Value::Null);
    let port = s.addr.rsplit(':').next().unwrap().to_string();
    let (st, _, j) = run("bare", &format!("socket:{port}"));
    assert_eq!((st, j["socket"].as_str()), (200, Some("denied")), "{j}");
    // Clocks: 1 ms steps unless precise clocks are granted.
    let (_, _, j) = run("bare", "clock");
    assert!(j["monotonic_step_ns"].as_u64().unwrap() >= 1_000_000, "{j}");
    assert!(j["wall_step_ns"].as_u64().unwrap() >= 1_000_000, "{j}");
    let (_, _, j) = run("granted", "clock");
    assert!(j["monotonic_step_ns"].as_u64().unwrap() < 1_000_000, "{j}");
    // Granted environment: exactly what was granted.
    assert_eq!(run("granted", "env:GREETING").2["value"], "hello");
    assert_eq!(run("granted", "env").2["env_vars"], 1);
    assert_eq!(run("granted", "env:HOME").2["value"], serde_json::Value::Null);

    // Runaway recursion, a huge allocation, creeping allocation, an endless
    // loop: each a clear error, and the next request is served.
    for (body, status, code) in [
        ("recurse", 500, "module_trapped"),
        ("huge", 500, "memory_limit_exceeded"),
        ("alloc", 500, "memory_limit_exceeded"),
        ("loop", 504, "scoring_timeout"),
    ] {
        let (st, _, j) = run("bare", body);
        assert_eq!((st, error_code(&j)), (status, code), "{body}: {j}");
        assert_eq!(run("bare", "after").2["echo"], "after", "served after {body}");
    }
    // Blocked in a host call (a 30 s sleep) past its 2 s deadline: 504 after
    // the deadline plus a grace second, a substitute instance serves the next.
    let t = std::time::Instant::now();
    let (st, _, j) = run("bare", "sleep:30000");
    assert_eq!((st, error_code(&j)), (504, "scoring_timeout"), "{j}");
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
    assert_eq!(run("bare", "after").2["echo"], "after");

    stop.store(true, Ordering::Relaxed);
    let (ok, other) = calm.join().unwrap();
    assert!(ok > 50 && other == 0, "calm endpoint: {ok} ok, {other} not");

    let show = s.cli_json(&["service", "show", "granted", "--json"]);
    let sb = &show["versions"][0]["sandbox"];
    assert_eq!(sb["environment"], serde_json::json!(["GREETING"]), "{show}");
    assert_eq!(
        (sb["files"].as_str(), sb["sockets"].as_str(), sb["clocks"].as_str()),
        (Some("none"), Some("none"), Some("precise"))
    );
    assert!(!show.to_string().contains("hello"), "a granted value is shown: {show}");
    let bare = s.cli_json(&["service", "show", "bare", "--json"]);
    let v = &bare["versions"][0];
    assert_eq!(v["sandbox"]["clocks"], "coarse (1 ms steps)");
    assert_eq!(v["abandoned_calls"], 1, "{v}");
    assert!(v["replaced"].as_u64().unwrap() >= 4, "{v}");
}
