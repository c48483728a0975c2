//! The node's side: one version's replica pool served over the internal
//! protocol (HTTP/2 cleartext for routers; HTTP/1.1 too, for probes and
//! curl on the health routes).
//!
//! The server listens from the start, so a platform can probe it while the
//! version is pulled and built: `GET /v2/health/ready` is 503 with the
//! reason until the pool exists and its replicas ran init(), and again once
//! draining starts. `GET /v2/health/live` is 200 while the process serves.
//!
//! Draining (SIGTERM): ready goes false at once; new score requests are
//! refused with outcome `draining` (the router sends them to another node);
//! requests in flight finish; then `serve` returns.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use wasmscore_engine::ScoreRequest;
use wasmscore_replica::{Pool, ScoreError};

use crate::ahead::{admit, SENT_AHEAD};
use crate::wire::{self, Load, Outcome};

/// Says whether the version may take requests (its init() passed and its
/// health holds), or why not.
pub type Readiness = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

/// One node: the version it serves and its state.
pub struct Node {
    pub endpoint: String,
    pub version: String,
    /// Set once the version is built and its replicas ran init().
    pool: OnceLock<(Arc<Pool>, Readiness)>,
    /// Why the node is not ready yet (pulling, building, retrying).
    starting: std::sync::RwLock<String>,
    draining: AtomicBool,
    in_flight: AtomicUsize,
    /// Largest request body (as the router's edge: 100 MB).
    pub max_body_bytes: usize,
    /// Where this node's spans go (`--otlp-endpoint`), if anywhere.
    pub spans: Option<Arc<crate::otlp::SpanExport>>,
    /// The process's log settings (`GET|POST /v2/logging`), if it has them.
    pub logging: Option<Arc<crate::logging::Logging>>,
    /// The version's model inputs and outputs (OIP metadata), told to the
    /// router in the ready answer.
    signature: OnceLock<(serde_json::Value, serde_json::Value)>,
    /// What it serves, told to the router in the ready answer.
    identity: OnceLock<wire::Identity>,
}

impl Node {
    pub fn new(endpoint: &str, version: &str) -> Node {
        Node {
            endpoint: endpoint.into(),
            version: version.into(),
            pool: OnceLock::new(),
            starting: std::sync::RwLock::new("starting".into()),
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            max_body_bytes: 100 * 1000 * 1000,
            spans: None,
            logging: None,
            signature: OnceLock::new(),
            identity: OnceLock::new(),
        }
    }

    /// What it serves: the names it was given and the artifact it pulled.
    pub fn set_identity(&self, identity: wire::Identity) {
        let _ = self.identity.set(identity);
    }

    /// What the node is doing before it serves ("pulling ...", "retrying ...").
    pub fn set_status(&self, s: impl Into<String>) {
        // A rare write (start-up steps); readers are health checks.
        *self.starting.write().unwrap_or_else(|p| p.into_inner()) = s.into();
    }

    /// The version is built: requests go to this pool from now on.
    pub fn serve_pool(&self, pool: Arc<Pool>, readiness: Readiness) {
        let _ = self.pool.set((pool, readiness));
    }

    /// The model's inputs and outputs, as OIP metadata lists them.
    pub fn set_signature(&self, inputs: serde_json::Value, outputs: serde_json::Value) {
        let _ = self.signature.set((inputs, outputs));
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Ready, or why not.
    pub fn ready(&self) -> Result<(), String> {
        if self.draining.load(Ordering::SeqCst) {
            return Err("draining: shutting down".into());
        }
        match self.pool.get() {
            Some((_, readiness)) => readiness(),
            None => Err(self.starting.read().unwrap_or_else(|p| p.into_inner()).clone()),
        }
    }

    pub fn load(&self) -> Load {
        match self.pool.get() {
            Some((pool, _)) => {
                let st = pool.stats();
                Load {
                    busy: st.busy.load(Ordering::Relaxed) as u32,
                    queued: st.queued.load(Ordering::Relaxed) as u32,
                    replicas: pool.replicas() as u32,
                    max_concurrent: pool.config().max_concurrent as u32,
                }
            }
            None => Load::default(),
        }
    }
}

/// A streamed answer's frames as the node makes them (outcome `stream`).
type Frames = std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<hyper::body::Frame<Bytes>, Infallible>> + Send>>;
type Body = http_body_util::Either<Full<Bytes>, http_body_util::StreamBody<Frames>>;

/// Longer than a router's health-check period (0.5 s) plus its check's
/// time, so no router sends to a closed socket.
const DRAIN_LINGER: Duration = Duration::from_millis(1200);

/// Serves until `shutdown` resolves, then drains: refuses new requests,
/// waits for the ones in flight (at most `drain_limit`), and returns.
pub async fn serve(listener: TcpListener, node: Arc<Node>, shutdown: impl Future<Output = ()>, drain_limit: Duration) {
    let timer = tokio::spawn(crate::shards::keep_a_timer());
    let accept = {
        let node = node.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let node = node.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let node = node.clone();
                        async move { Ok::<_, Infallible>(handle(&node, req).await) }
                    });
                    // The connection's streams run on its task (streams.rs).
                    let (streams, mut spawned) = crate::streams::here();
                    let mut b = hyper_util::server::conn::auto::Builder::new(streams);
                    // Streams at once per router connection: enough for any
                    // concurrency a version's pool can queue.
                    b.http2().timer(TokioTimer::new()).max_concurrent_streams(1024);
                    b.http1().timer(TokioTimer::new());
                    if let Err(e) = spawned.drive(b.serve_connection(TokioIo::new(stream), svc)).await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
        })
    };
    shutdown.await;
    node.start_draining();
    tracing::info!(in_flight = node.in_flight(), "draining: ready is false; new requests are refused");
    let began = tokio::time::Instant::now();
    let deadline = began + drain_limit;
    // Requests in flight finish; and the node stays up (refusing) for at
    // least DRAIN_LINGER, so every router sees it not ready, from a refusal
    // or its health check, before the sockets close.
    while (node.in_flight() > 0 || began.elapsed() < DRAIN_LINGER) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    accept.abort();
    timer.abort();
    tracing::info!(left = node.in_flight(), "drained");
}

fn respond(node: &Node, status: StatusCode, outcome: Option<Outcome>, content_type: &str, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(http_body_util::Either::Left(Full::new(Bytes::from(body))));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("application/json")),
    );
    if let Ok(v) = HeaderValue::from_str(&node.load().encode()) {
        h.insert(wire::LOAD, v);
    }
    if let Some(o) = outcome {
        h.insert(wire::OUTCOME, HeaderValue::from_static(o.as_str()));
    }
    r
}

fn error(node: &Node, e: &ScoreError) -> Response<Body> {
    respond(
        node,
        StatusCode::INTERNAL_SERVER_ERROR,
        Some(Outcome::Error),
        "application/json",
        wire::encode_error(e),
    )
}

async fn handle(node: &Arc<Node>, req: Request<Incoming>) -> Response<Body> {
    let json = |status: StatusCode, v: serde_json::Value| respond(node, status, None, "application/json", v.to_string().into_bytes());
    match (req.method().as_str(), req.uri().path()) {
        ("POST", wire::SCORE_PATH) => score(node, req).await,
        ("GET", wire::READY_PATH) => match node.ready() {
            Ok(()) => {
                let mut body = serde_json::to_value(node.identity.get().cloned().unwrap_or_default()).expect("an identity serializes");
                body["ready"] = true.into();
                if let Some((inputs, outputs)) = node.signature.get() {
                    body["inputs"] = inputs.clone();
                    body["outputs"] = outputs.clone();
                }
                if node.pool.get().is_some_and(|(pool, _)| pool.prepared().context().decoupled) {
                    body["decoupled"] = true.into();
                }
                json(StatusCode::OK, body)
            }
            Err(why) => json(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"error": why})),
        },
        ("GET", "/v2/health/live") => json(StatusCode::OK, serde_json::json!({"live": true})),
        ("GET" | "POST", "/v2/logging") => log_settings(node, req).await,
        (m, p) => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": format!("no route for {m} {p} on a node")}),
        ),
    }
}

/// Triton's logging extension on the node's port, as on `up`'s
/// (logging.rs): with no credentials, as the rest of the internal
/// protocol (a node is reachable by routers and operators only).
async fn log_settings(node: &Node, req: Request<Incoming>) -> Response<Body> {
    let json = |status: StatusCode, v: serde_json::Value| respond(node, status, None, "application/json", v.to_string().into_bytes());
    let Some(logging) = &node.logging else {
        return json(
            StatusCode::NOT_IMPLEMENTED,
            serde_json::json!({"error": "this node has no log settings to change"}),
        );
    };
    if req.method() == hyper::Method::POST {
        let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
                return json(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    serde_json::json!({"error": "a log settings request is at most 64 KiB"}),
                )
            }
            Err(e) => {
                return json(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({"error": format!("reading the body: {e}")}),
                )
            }
        };
        if let Err(e) = logging.update_json(&body) {
            let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return json(status, serde_json::json!({"error": e.message}));
        }
    }
    json(StatusCode::OK, logging.json())
}

async fn score(node: &Arc<Node>, req: Request<Incoming>) -> Response<Body> {
    if node.draining.load(Ordering::SeqCst) {
        return respond(
            node,
            StatusCode::SERVICE_UNAVAILABLE,
            Some(Outcome::Draining),
            "application/json",
            br#"{"error":"draining"}"#.to_vec(),
        );
    }
    let Some((pool, _)) = node.pool.get() else {
        // No module saw it: the router may send it elsewhere, as a drain.
        return respond(
            node,
            StatusCode::SERVICE_UNAVAILABLE,
            Some(Outcome::Draining),
            "application/json",
            serde_json::json!({"error": format!("not ready: {}", node.ready().err().unwrap_or_default())})
                .to_string()
                .into_bytes(),
        );
    };
    // Counted from here, so a drain waits for this request.
    let done = InFlight::enter(node);
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let content_type = header("content-type").unwrap_or_else(|| "application/json".into());
    // A node given names takes no other version's request (a router that
    // has not checked it since router.json changed): refused unstarted, so
    // the router sends it to another node. One not given names serves it.
    let borrowed = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let (for_endpoint, for_version) = (borrowed(wire::ENDPOINT), borrowed(wire::VERSION));
    let identity = node.identity.get();
    if let (Some(id), Some(e), Some(v)) = (identity, for_endpoint, for_version) {
        if let Some(why) = id.disagrees(e, v, None) {
            tracing::warn!(sent_for = %format!("{e}/{v}"), "a request for another version reached this node; refused unstarted");
            return respond(
                node,
                StatusCode::SERVICE_UNAVAILABLE,
                Some(Outcome::Draining),
                "application/json",
                serde_json::json!({ "error": why }).to_string().into_bytes(),
            );
        }
    }
    if for_version.is_some_and(|v| v != node.version) {
        tracing::warn!(sent_for = ?for_version, serving = %node.version, "a request for another version reached this node");
    }
    // The router's span is the parent of this node's; the module's log
    // lines carry the trace id.
    let started = std::time::SystemTime::now();
    let traceparent = header("traceparent");
    let span = traceparent.is_some().then(|| crate::trace::Span::child_of(traceparent.as_deref()));
    let trace_id = span.as_ref().map(|s| s.trace_id.clone());
    if header(wire::DEADLINE_MS).and_then(|d| d.parse::<u64>().ok()) == Some(0) {
        return error(
            node,
            &ScoreError::NodeTimeout {
                node: "router".into(),
                waited_ms: 0,
            },
        );
    }
    let framing = header(wire::TENSORS);
    let decoupled = pool.prepared().context().decoupled;
    if decoupled && !req.headers().contains_key(wire::RESPONSES) {
        // A router sends a stream's message as one call too, until it
        // knows the version is decoupled.
        let more = "; a router that sent a stream's message here as one call did not know it is decoupled: \
                    say \"decoupled\": true in the version's config in router.json";
        return error(node, &ScoreError::unary_to_decoupled(&node.version, more));
    }
    let body = match Limited::new(req.into_body(), node.max_body_bytes).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return error(node, &ScoreError::Unavailable(format!("reading the request body: {e}"))),
    };
    let (body, tensors) = match framing {
        None => (body.to_vec(), Vec::new()),
        Some(framing) => match wasmscore_oip::unpack(&body, &framing) {
            Ok(x) => x,
            Err(e) => return error(node, &ScoreError::Call(wasmscore_engine::CallError::BadInput(e.0))),
        },
    };
    let request = ScoreRequest {
        body,
        content_type,
        tensors,
        trace_id,
        responses: None,
    };
    if decoupled {
        return streamed(node, pool.clone(), request, (span, started));
    }
    let result = pool.score(request).await;
    record(node, span.as_ref(), started, &result);
    drop(done);
    match result {
        Ok(out) => {
            let out = with_content_type(out);
            if out.tensors.is_empty() {
                return respond(node, StatusCode::OK, Some(Outcome::Ok), &out.content_type, out.body);
            }
            let (buf, framing) = wasmscore_oip::pack(&out.body, &out.tensors);
            let mut r = respond(node, StatusCode::OK, Some(Outcome::Ok), &out.content_type, buf);
            if let Ok(v) = HeaderValue::from_str(&framing) {
                r.headers_mut().insert(wire::TENSORS, v);
            }
            r
        }
        Err(e) => error(node, &e),
    }
}

/// A decoupled version's call: answered at once with outcome `stream`, its
/// responses framed into the body as the module sends them, then its last.
/// The call holds the frames' queue weakly: once the last is queued, a call
/// still running (abandoned past its deadline) sends nothing more.
fn streamed(
    node: &Arc<Node>,
    pool: Arc<Pool>,
    mut request: ScoreRequest,
    (span, started): (Option<crate::trace::Span>, std::time::SystemTime),
) -> Response<Body> {
    let streaming = Streaming::enter(node);
    // Frames, each with the bytes it counts against the bound (the last
    // counts none: it always goes).
    let (tx, rx) = tokio::sync::mpsc::channel::<(Bytes, usize)>(SENT_AHEAD);
    let queue = tx.downgrade();
    let queued = Arc::new(AtomicUsize::new(0));
    let counted = queued.clone();
    request.responses = Some(wasmscore_engine::Responses(Arc::new(move |out| {
        let Some(tx) = queue.upgrade() else {
            return Err("the request was answered already (its call outlived its deadline)".to_string());
        };
        let frame = Bytes::from(wire::Frame::Sent(out).encode()?);
        let bytes = frame.len();
        admit(&counted, bytes, "the router")?;
        tx.try_send((frame, bytes)).map_err(|e| {
            counted.fetch_sub(bytes, Ordering::Relaxed);
            match e {
                tokio::sync::mpsc::error::TrySendError::Full(_) => {
                    format!("the router has not taken the {SENT_AHEAD} responses before it")
                }
                tokio::sync::mpsc::error::TrySendError::Closed(_) => "the stream is closed".to_string(),
            }
        })
    })));
    let call = {
        let node = node.clone();
        let streaming = streaming.clone();
        async move {
            let _streaming = streaming;
            let result = pool.score(request).await;
            record(&node, span.as_ref(), started, &result);
            // A last response too big for a frame is the module's error.
            let last = wire::Frame::Last(result.map(with_content_type)).encode().unwrap_or_else(|why| {
                let e = ScoreError::Call(wasmscore_engine::CallError::Failed(format!("its last response: {why}")));
                wire::Frame::Last(Err(e)).encode().expect("an error fits a frame")
            });
            let _ = tx.send((Bytes::from(last), 0)).await;
        }
    };
    tokio::spawn(call);
    let frames = futures_util::stream::unfold((rx, streaming), move |(mut rx, streaming)| {
        let queued = queued.clone();
        async move {
            let (data, bytes) = rx.recv().await?;
            queued.fetch_sub(bytes, Ordering::Relaxed);
            Some((Ok(hyper::body::Frame::data(data)), (rx, streaming)))
        }
    });
    let mut r = respond(node, StatusCode::OK, Some(Outcome::Stream), "application/octet-stream", Vec::new());
    *r.body_mut() = http_body_util::Either::Right(http_body_util::StreamBody::new(Box::pin(frames) as Frames));
    r
}

/// A module's answer with the content type it goes out with.
fn with_content_type(mut out: wasmscore_engine::ScoreResponse) -> wasmscore_engine::ScoreResponse {
    if out.content_type.is_empty() {
        out.content_type = "application/json".into();
    }
    out
}

/// The node's span of a call, when spans are exported.
fn record(
    node: &Node,
    span: Option<&crate::trace::Span>,
    started: std::time::SystemTime,
    result: &Result<wasmscore_engine::ScoreResponse, ScoreError>,
) {
    if let (Some(spans), Some(span)) = (&node.spans, span) {
        let status = result.as_ref().map_or_else(|e| e.status().0, |_| 200);
        spans.record(crate::otlp::Finished {
            span,
            name: "wasmscore.node score",
            start: started,
            end: std::time::SystemTime::now(),
            attributes: vec![
                opentelemetry::KeyValue::new("wasmscore.endpoint", node.endpoint.clone()),
                opentelemetry::KeyValue::new("wasmscore.version", node.version.clone()),
                opentelemetry::KeyValue::new("wasmscore.status_code", i64::from(status)),
            ],
            error: result.as_ref().err().filter(|_| status >= 500).map(|e| e.to_string()),
        });
    }
}

/// Takes a request off the in-flight count however its handler ends.
struct InFlight<'a>(&'a AtomicUsize);

impl InFlight<'_> {
    fn enter(node: &Node) -> InFlight<'_> {
        node.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(&node.in_flight)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A streamed call on the in-flight count until both its call and its
/// body are done: a drain waits for its last frame to be taken, not only
/// queued.
struct Streaming(Arc<Node>);

impl Streaming {
    fn enter(node: &Arc<Node>) -> Arc<Streaming> {
        node.in_flight.fetch_add(1, Ordering::SeqCst);
        Arc::new(Streaming(node.clone()))
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}
