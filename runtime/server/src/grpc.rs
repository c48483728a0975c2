//! The Open Inference Protocol over gRPC (`up --grpc-port`, and the
//! router's): `inference.GRPCInferenceService` from proto/inference.proto,
//! served by the same hyper stack, connection cap and TLS as HTTP.
//!
//! ModelInfer takes the REST path's hops: the `authorization` metadata is
//! checked like the header, the model's version is pinned by
//! `model_version` (or the split picks one), the tensors (raw or typed
//! contents) reach `run()` decoded, and the module's output tensors come
//! back in `raw_output_contents`. Errors are gRPC status codes with the
//! REST path's messages. ModelInfer is read and answered here, in the gRPC
//! wire format (`unary_model_infer`); tonic serves the other calls.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};

use hyper_util::rt::{TokioIo, TokioTimer};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use wasmscore_engine::{ScoreRequest, ScoreResponse};
use wasmscore_oip as oip;
use wasmscore_remote::trace::Span;
use wasmscore_router::Version;
use wasmscore_tensor::{DType, Tensor, TensorData};

use crate::errors::ApiError;
use crate::http::{App, InFlight, Protocol};
use crate::plane::Plane;

/// The generated messages and service.
#[allow(clippy::all)]
pub mod proto {
    tonic::include_proto!("inference");
}

use proto::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use proto::model_infer_request::InferInputTensor;
use proto::model_infer_response::InferOutputTensor;
use proto::model_metadata_response::TensorMetadata;
use proto::*;

/// Serves one connection (HTTP/2 only) until the client closes it.
pub(crate) async fn serve_connection<P: Plane, I>(app: Arc<App<P>>, io: TokioIo<I>, first: Arc<crate::http::FirstByte>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let cfg = app.cfg.clone();
    let stopped = app.stopped.clone();
    let streamed = Arc::new(tokio::sync::Semaphore::new(cfg.max_h2_streams.max(1) as usize));
    let svc = GrpcInferenceServiceServer::new(Oip {
        app: app.clone(),
        streamed,
    })
    .max_decoding_message_size(cfg.max_body_bytes)
    .max_encoding_message_size(usize::MAX);
    let (streams, mut spawned) = wasmscore_remote::streams::here();
    let mut builder = hyper_util::server::conn::auto::Builder::new(streams).http2_only();
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(cfg.max_header_bytes as u32)
        .max_concurrent_streams(cfg.max_h2_streams);
    // ModelInfer, the call per inference, is served here; the other calls
    // (and a compressed ModelInfer) by tonic.
    let conn = first.clone();
    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        // tonic's service is cloned only for the calls it serves.
        let ours = req.uri().path() == MODEL_INFER && !req.headers().contains_key("grpc-encoding");
        let (app, tonic) = (app.clone(), (!ours).then(|| svc.clone()));
        let busy = conn.begin();
        async move {
            let answer = match tonic {
                None => Ok(unary_model_infer(&app, req).await.map(http_body_util::Either::Right)),
                Some(mut tonic) => tower_service::Service::call(&mut tonic, req)
                    .await
                    .map(|r| r.map(http_body_util::Either::Left)),
            };
            // In flight while its body waits on the server (a stream on
            // an inference).
            answer.map(|r| crate::http::Guarded::response(r, busy))
        }
    });
    // Once the server stops: GOAWAY, so the client's channel takes its next
    // calls elsewhere while the calls it has running here finish.
    let served = crate::http::until_stopped(builder.serve_connection(io, svc), stopped, first, cfg.header_read_timeout);
    if let Err(e) = spawned.drive(served).await {
        tracing::debug!(error = %e, "gRPC connection ended with an error");
    }
}

const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

/// What the start of a ModelInfer message says of its model's name.
#[derive(Debug, PartialEq)]
enum Leading<'a> {
    /// Field 1, `model_name`, whole.
    Name(&'a str),
    /// Not enough of it yet.
    More,
    /// It starts with something else (or a name no endpoint has: longer
    /// than 16 KiB, not UTF-8).
    Other,
}

/// The model name a ModelInfer message starts with: protobuf encoders
/// write fields in number order, and `model_name` is field 1 (tag 0x0a,
/// a varint length, the bytes).
fn leading_model_name(m: &[u8]) -> Leading<'_> {
    let Some((&tag, rest)) = m.split_first() else {
        return Leading::More;
    };
    if tag != 0x0a {
        return Leading::Other;
    }
    let mut len = 0usize;
    for (i, &b) in rest.iter().enumerate().take(2) {
        len |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            let name = &rest[i + 1..];
            return match name.get(..len) {
                None => Leading::More,
                Some(n) => std::str::from_utf8(n).map_or(Leading::Other, Leading::Name),
            };
        }
    }
    // Two bytes of length and more to come: over 16 KiB; fewer: not yet whole.
    if rest.len() < 2 {
        Leading::More
    } else {
        Leading::Other
    }
}

/// ModelInfer as one read of its message, one call of `infer`, one frame
/// of its answer and its trailers: the gRPC wire format (a message is a
/// compressed flag, a big-endian length and the protobuf), without tonic's
/// per-call codec buffers, boxed futures and body state machine. Errors
/// are answered trailers-only, as tonic answers them, with the codes tonic
/// gives (the messages of a malformed message are this server's).
async fn unary_model_infer<P: Plane>(app: &Arc<App<P>>, req: http::Request<hyper::body::Incoming>) -> http::Response<Unary> {
    use http_body_util::BodyExt;
    use prost::Message;
    let (parts, body) = req.into_parts();
    let limit = app.cfg.max_body_bytes;
    let idle = app.cfg.header_read_timeout;
    // The call's credential is checked as soon as the message's model name
    // has come (its first field), before the rest is read: a client with
    // no key makes the server hold no more than that.
    let auth = parts.headers.get("authorization").map(|v| v.as_bytes());
    let mut body = crate::http::IdleBody::new(body, idle);
    let mut bytes = bytes::BytesMut::new();
    let mut checked: Option<String> = None;
    let mut gated = false;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) if e.downcast_ref::<crate::http::BodyIdle>().is_some() => return Status::deadline_exceeded(e.to_string()).into_http(),
            Err(e) => return Status::cancelled(format!("reading the request: {e}")).into_http(),
        };
        let Ok(data) = frame.into_data() else { continue };
        if bytes.len() + data.len() > limit.saturating_add(5) {
            return Status::out_of_range(format!("a message of more than {limit} bytes (--max-body-bytes)")).into_http();
        }
        bytes.extend_from_slice(&data);
        if !gated && bytes.len() > 5 {
            match leading_model_name(&bytes[5..]) {
                Leading::More => {}
                Leading::Name(name) => {
                    gated = true;
                    if let Err(e) = app.plane.router().authorize(name, auth) {
                        return status(e.into()).into_http();
                    }
                    checked = Some(name.to_string());
                }
                Leading::Other => {
                    // Not a message a protobuf encoder writes (they write
                    // fields in number order, the name first): read on only
                    // for a credential some endpoint takes.
                    gated = true;
                    if !app.plane.router().opens_any(auth) {
                        return Status::unauthenticated("the call's credential opens no endpoint here").into_http();
                    }
                }
            }
        }
    }
    let bytes = bytes.freeze();
    let Some((head, message)) = bytes.split_first_chunk::<5>() else {
        return Status::internal("Missing request message.").into_http();
    };
    if head[0] != 0 {
        return Status::internal("protocol error: received message with compressed-flag but no grpc-encoding was specified").into_http();
    }
    if u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize != message.len() {
        return Status::internal("a unary call carries exactly one whole message").into_http();
    }
    let r = match ModelInferRequest::decode(message) {
        Ok(r) => r,
        Err(e) => return Status::internal(format!("failed to decode Protobuf message: {e}")).into_http(),
    };
    let meta = MetadataMap::from_headers(parts.headers);
    let (out, version, traceparent) = match infer(app, &meta, r, None, checked.as_deref()).await {
        Ok(Answer::One(out, version, traceparent)) => (out, version, traceparent),
        Ok(Answer::Sent) => unreachable!("a unary call has no stream to send on"),
        Err(s) => return s.into_http(),
    };
    let len = out.encoded_len();
    if u32::try_from(len).is_err() {
        let mut too_big = Status::resource_exhausted(format!("an answer of {len} bytes is more than a gRPC message can carry"));
        if let Ok(v) = version.name.parse() {
            too_big.metadata_mut().insert("x-wasmscore-version", v);
        }
        return too_big.into_http();
    }
    let mut buf = Vec::with_capacity(5 + len);
    buf.push(0);
    buf.extend_from_slice(&(len as u32).to_be_bytes());
    out.encode(&mut buf).expect("a Vec grows to fit");
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let mut resp = http::Response::new(Unary {
        data: Some(bytes::Bytes::from(buf)),
        trailers: Some(trailers),
    });
    let h = resp.headers_mut();
    h.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    if let Ok(v) = http::HeaderValue::from_str(&version.name) {
        h.insert("x-wasmscore-version", v);
    }
    if let Ok(mut v) = http::HeaderValue::from_str(&traceparent) {
        // New on every response: never indexed in HPACK (as on REST).
        v.set_sensitive(true);
        h.insert("traceparent", v);
    }
    resp
}

/// A unary call's answer: its one message, then its trailers; empty for
/// an error answered trailers-only.
#[derive(Default)]
pub(crate) struct Unary {
    data: Option<bytes::Bytes>,
    trailers: Option<http::HeaderMap>,
}

impl hyper::body::Body for Unary {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let frame = match (this.data.take(), this.trailers.take()) {
            (Some(data), trailers) => {
                this.trailers = trailers;
                Some(Ok(hyper::body::Frame::data(data)))
            }
            (None, Some(trailers)) => Some(Ok(hyper::body::Frame::trailers(trailers))),
            (None, None) => None,
        };
        std::task::Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

struct Oip<P> {
    app: Arc<App<P>>,
    /// The connection's stream messages read and not yet answered: at most
    /// `max_h2_streams`, as many as its ModelInfer calls, however many
    /// streams it opens.
    streamed: Arc<tokio::sync::Semaphore>,
}

impl<P: Plane> Oip<P> {
    /// The admin token's calls: refused without it.
    fn admin(&self, meta: &MetadataMap, what: &str) -> Result<(), Status> {
        let given = meta.get("authorization").and_then(|v| v.to_str().ok());
        crate::http::admin_only(crate::http::is_admin(&self.app.cfg, given), what).map_err(status)
    }
}

/// The gRPC code for an HTTP status.
fn status(e: ApiError) -> Status {
    let code = match e.status {
        400 | 413 | 422 => tonic::Code::InvalidArgument,
        401 => tonic::Code::Unauthenticated,
        403 => tonic::Code::PermissionDenied,
        501 => tonic::Code::Unimplemented,
        404 => tonic::Code::NotFound,
        409 => tonic::Code::AlreadyExists,
        429 | 503 => tonic::Code::Unavailable,
        504 => tonic::Code::DeadlineExceeded,
        _ => tonic::Code::Internal,
    };
    Status::new(code, e.message)
}

fn bad(e: oip::OipError) -> Status {
    Status::invalid_argument(e.0)
}

/// A string field: proto3 sends an empty one for one not given.
fn given(v: &str) -> Option<&str> {
    (!v.is_empty()).then_some(v)
}

#[tonic::async_trait]
impl<P: Plane> GrpcInferenceService for Oip<P> {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse {
            ready: self.app.plane.is_ready(),
        }))
    }

    async fn model_ready(&self, req: Request<ModelReadyRequest>) -> Result<Response<ModelReadyResponse>, Status> {
        let r = req.into_inner();
        match self.app.plane.model_ready(&r.name, given(&r.version)) {
            Ok((ready, _)) => Ok(Response::new(ModelReadyResponse { ready })),
            Err((s, code, message)) => Err(status(ApiError::new(s, code, message))),
        }
    }

    async fn server_metadata(&self, _: Request<ServerMetadataRequest>) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: "wasmscore".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: crate::triton::EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        }))
    }

    async fn model_metadata(&self, req: Request<ModelMetadataRequest>) -> Result<Response<ModelMetadataResponse>, Status> {
        let r = req.into_inner();
        let m = self
            .app
            .plane
            .model_metadata(&r.name, given(&r.version))
            .map_err(|(s, code, message)| status(ApiError::new(s, code, message)))?;
        let tensors = |key: &str| -> Vec<TensorMetadata> {
            m[key]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| TensorMetadata {
                    name: t["name"].as_str().unwrap_or_default().into(),
                    datatype: t["datatype"].as_str().unwrap_or_default().into(),
                    shape: t["shape"].as_array().into_iter().flatten().filter_map(|d| d.as_i64()).collect(),
                })
                .collect()
        };
        Ok(Response::new(ModelMetadataResponse {
            name: r.name.clone(),
            versions: m["versions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
            platform: m["platform"].as_str().unwrap_or("wasmscore").into(),
            inputs: tensors("inputs"),
            outputs: tensors("outputs"),
        }))
    }

    /// Triton's model configuration, as REST's `/v2/models/{m}/config`
    /// states it.
    async fn model_config(&self, req: Request<ModelConfigRequest>) -> Result<Response<ModelConfigResponse>, Status> {
        let r = req.into_inner();
        let m = self
            .app
            .plane
            .model_metadata(&r.name, given(&r.version))
            .map_err(|(s, code, message)| status(ApiError::new(s, code, message)))?;
        let decoupled = crate::http::decoupled(self.app.plane.router(), &r.name, given(&r.version));
        let c = crate::http::triton_config(&r.name, &m, decoupled);
        let text = |t: &serde_json::Value| t.as_str().unwrap_or_default().to_string();
        // Each tensor's name, data_type and dims.
        let tensors = |key: &str| -> Vec<(String, i32, Vec<i64>)> {
            c[key]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    let dt = DataType::from_str_name(t["data_type"].as_str().unwrap_or_default());
                    let dims = t["dims"].as_array().into_iter().flatten().filter_map(|d| d.as_i64()).collect();
                    (text(&t["name"]), dt.unwrap_or(DataType::TypeInvalid) as i32, dims)
                })
                .collect()
        };
        Ok(Response::new(ModelConfigResponse {
            config: Some(ModelConfig {
                name: text(&c["name"]),
                platform: text(&c["platform"]),
                backend: text(&c["backend"]),
                max_batch_size: 0,
                input: tensors("input")
                    .into_iter()
                    .map(|(name, data_type, dims)| ModelInput { name, data_type, dims })
                    .collect(),
                output: tensors("output")
                    .into_iter()
                    .map(|(name, data_type, dims)| ModelOutput { name, data_type, dims })
                    .collect(),
                model_transaction_policy: Some(ModelTransactionPolicy { decoupled }),
            }),
        }))
    }

    /// Triton's statistics, as REST's `/v2/models/{m}/stats` states them.
    async fn model_statistics(&self, req: Request<ModelStatisticsRequest>) -> Result<Response<ModelStatisticsResponse>, Status> {
        let (meta, _, r) = req.into_parts();
        let authorization = meta.get("authorization").map(|v| v.as_bytes());
        let admin = crate::http::is_admin(&self.app.cfg, authorization.and_then(|v| std::str::from_utf8(v).ok()));
        let model_stats =
            crate::triton::stats(self.app.plane.router(), &r.name, given(&r.version), authorization, admin).map_err(status)?;
        Ok(Response::new(ModelStatisticsResponse { model_stats }))
    }

    /// Triton's repository index, as REST's `/v2/repository/index` states it.
    async fn repository_index(&self, req: Request<RepositoryIndexRequest>) -> Result<Response<RepositoryIndexResponse>, Status> {
        let given = req.metadata().get("authorization").and_then(|v| v.to_str().ok());
        let admin = crate::http::is_admin(&self.app.cfg, given);
        let models = crate::triton::index(self.app.plane.versions(), admin, req.get_ref().ready).map_err(status)?;
        Ok(Response::new(RepositoryIndexResponse { models }))
    }

    /// Triton's system shared memory extension, as REST's
    /// `/v2/systemsharedmemory/...` routes state it (shm.rs).
    async fn system_shared_memory_status(
        &self,
        req: Request<SystemSharedMemoryStatusRequest>,
    ) -> Result<Response<SystemSharedMemoryStatusResponse>, Status> {
        self.admin(req.metadata(), "shared memory regions")?;
        let name = req.into_inner().name;
        let regions = self.app.regions.status(given(&name)).map_err(status)?;
        let regions = regions
            .into_iter()
            .map(|r| {
                let s = system_shared_memory_status_response::RegionStatus {
                    name: r.name,
                    key: r.key,
                    offset: r.offset,
                    byte_size: r.byte_size,
                };
                (s.name.clone(), s)
            })
            .collect();
        Ok(Response::new(SystemSharedMemoryStatusResponse { regions }))
    }

    async fn system_shared_memory_register(
        &self,
        req: Request<SystemSharedMemoryRegisterRequest>,
    ) -> Result<Response<SystemSharedMemoryRegisterResponse>, Status> {
        self.admin(req.metadata(), "shared memory regions")?;
        let r = req.into_inner();
        self.app.regions.register(&r.name, &r.key, r.offset, r.byte_size).map_err(status)?;
        Ok(Response::new(SystemSharedMemoryRegisterResponse {}))
    }

    async fn system_shared_memory_unregister(
        &self,
        req: Request<SystemSharedMemoryUnregisterRequest>,
    ) -> Result<Response<SystemSharedMemoryUnregisterResponse>, Status> {
        self.admin(req.metadata(), "shared memory regions")?;
        self.app.regions.unregister(given(&req.into_inner().name));
        Ok(Response::new(SystemSharedMemoryUnregisterResponse {}))
    }

    /// Triton's trace extension, as REST's `/v2/trace/setting` states it
    /// (traces.rs). A request with no settings reads them.
    async fn trace_setting(&self, req: Request<TraceSettingRequest>) -> Result<Response<TraceSettingResponse>, Status> {
        self.admin(req.metadata(), "the trace settings")?;
        let r = req.into_inner();
        let model = given(&r.model_name);
        if let Some(m) = model {
            self.app
                .plane
                .model_ready(m, None)
                .map_err(|(code, kind, message)| status(ApiError::new(code, kind, message)))?;
        }
        let traces = &self.app.cfg.traces;
        if !r.settings.is_empty() {
            let changes: Vec<_> = r
                .settings
                .into_iter()
                .map(|(name, v)| (name, (!v.value.is_empty()).then_some(v.value)))
                .collect();
            traces.update(model, &changes).map_err(status)?;
        }
        let settings = traces
            .settings(model)
            .into_iter()
            .map(|(name, value)| (name.to_string(), TraceSettingValue { value }))
            .collect();
        Ok(Response::new(TraceSettingResponse { settings }))
    }

    /// Triton's logging extension, as REST's `/v2/logging` states it
    /// (logging.rs).
    async fn log_settings(&self, req: Request<LogSettingsRequest>) -> Result<Response<LogSettingsResponse>, Status> {
        use crate::logging::Setting;
        use log_setting_value::ParameterChoice as Value;
        self.admin(req.metadata(), "the log settings")?;
        let logging = self
            .app
            .cfg
            .logging
            .as_ref()
            .ok_or_else(|| status(crate::errors::no_log_settings()))?;
        let changes = req
            .into_inner()
            .settings
            .into_iter()
            .map(|(name, v)| match v.parameter_choice {
                Some(Value::BoolParam(b)) => Ok((name, Setting::Bool(b))),
                Some(Value::Uint32Param(n)) => Ok((name, Setting::Uint(n))),
                Some(Value::StringParam(s)) => Ok((name, Setting::Text(s))),
                None => Err(Status::invalid_argument(format!("log setting {name:?} has no value"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !changes.is_empty() {
            logging.update(&changes).map_err(|e| status(e.into()))?;
        }
        let settings = logging
            .settings()
            .into_iter()
            .map(|(name, v)| {
                let v = match v {
                    Setting::Bool(b) => Value::BoolParam(b),
                    Setting::Uint(n) => Value::Uint32Param(n),
                    Setting::Text(s) => Value::StringParam(s),
                };
                let v = LogSettingValue { parameter_choice: Some(v) };
                (name.to_string(), v)
            })
            .collect();
        Ok(Response::new(LogSettingsResponse { settings }))
    }

    async fn model_infer(&self, req: Request<ModelInferRequest>) -> Result<Response<ModelInferResponse>, Status> {
        // The metadata stays with this call: its values are read in place.
        let (meta, _, r) = req.into_parts();
        let Answer::One(out, version, traceparent) = infer(&self.app, &meta, r, None, None).await? else {
            unreachable!("a unary call has no stream to send on")
        };
        let mut resp = Response::new(out);
        if let Ok(v) = version.name.parse() {
            resp.metadata_mut().insert("x-wasmscore-version", v);
        }
        if let Ok(mut v) = traceparent.parse::<tonic::metadata::MetadataValue<_>>() {
            // New on every response: never indexed in HPACK (as on REST).
            v.set_sensitive(true);
            resp.metadata_mut().insert("traceparent", v);
        }
        Ok(resp)
    }

    type ModelStreamInferStream = Pin<Box<dyn Stream<Item = Result<ModelStreamInferResponse, Status>> + Send + 'static>>;

    /// Triton's stream of inferences (tritonclient.grpc's `start_stream`
    /// and `async_stream_infer`): each message is a ModelInfer request
    /// with the stream's metadata (key or token, cohort, traceparent).
    /// A message is read only with one of the connection's
    /// `max_h2_streams` places free, so its streams together run no more
    /// than its ModelInfer calls could; the answers come back in the order
    /// of the requests, as Triton answers a model that is not decoupled. A
    /// decoupled version's responses (those its call sends, then its last)
    /// come as they are made, beside the others. A
    /// message that fails gets its status in `error_message` and its id in
    /// the response, as Triton reports it, and the stream goes on; a broken
    /// stream ends the call with its status.
    async fn model_stream_infer(
        &self,
        req: Request<tonic::Streaming<ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let (meta, _, inbound) = req.into_parts();
        // Each message names its model, so each is checked once read; a
        // stream whose credential opens no endpoint is refused before any.
        if !self.app.plane.router().opens_any(meta.get("authorization").map(|v| v.as_bytes())) {
            return Err(Status::unauthenticated(
                "Unauthenticated: the stream's credential (its authorization metadata) opens no endpoint here",
            ));
        }
        let meta = Arc::new(meta);
        let app = self.app.clone();
        let at_once = app.cfg.max_h2_streams.max(1) as usize;
        let (side, side_rx) = tokio::sync::mpsc::channel::<ModelStreamInferResponse>(at_once);
        // The reader holds the side queue's sender and gives each message
        // its own: once the client's half ends and the last call sent its
        // responses, the side ends and so does the stream. Once the server
        // stops, it reads no more: the messages read are answered, then the
        // stream ends UNAVAILABLE, so the client opens it again elsewhere.
        let state = (inbound, self.streamed.clone(), side, app.stopped.clone(), false);
        let read = futures_util::stream::unfold(state, |(mut inbound, places, side, mut stopped, ended)| async move {
            if ended {
                return None;
            }
            let place = places.clone().acquire_owned().await.ok()?;
            let message = tokio::select! {
                biased;
                m = inbound.next() => m?,
                _ = async { drop(stopped.wait_for(|s| *s).await) } => {
                    let why = Status::unavailable("the server is shutting down: open the stream again (another server takes it)");
                    return Some(((Err(why), place, side.clone()), (inbound, places, side, stopped, true)));
                }
            };
            Some(((message, place, side.clone()), (inbound, places, side, stopped, false)))
        });
        let answers = read
            .map(move |(message, place, side)| {
                let (app, meta) = (app.clone(), meta.clone());
                async move {
                    let _place = place;
                    let r = message?;
                    let (id, model_name, final_flag) = (r.id.clone(), r.model_name.clone(), wants_final_flag(&r));
                    Ok(match infer(&app, &meta, r, Some(&side), None).await {
                        Ok(Answer::One(out, _, _)) => Some(streamed(if final_flag { flagged(out, true) } else { out })),
                        Ok(Answer::Sent) => None,
                        Err(s) => Some(last_failed(id, model_name, &s, final_flag)),
                    })
                }
            })
            .buffered(at_once)
            .filter_map(|answer: Result<Option<_>, Status>| std::future::ready(answer.transpose()));
        let sent = futures_util::stream::unfold(side_rx, |mut rx| async move { rx.recv().await.map(|m| (Ok(m), rx)) });
        Ok(Response::new(Box::pin(futures_util::stream::select(answers, sent))))
    }
}

/// A stream's answer to one message.
fn streamed(out: ModelInferResponse) -> ModelStreamInferResponse {
    ModelStreamInferResponse {
        error_message: String::new(),
        infer_response: Some(out),
    }
}

fn stream_failed(id: String, model_name: String, s: &Status) -> ModelStreamInferResponse {
    ModelStreamInferResponse {
        error_message: stream_error(&id, s),
        infer_response: Some(ModelInferResponse {
            id,
            model_name,
            // The version that failed it, once one ran (`infer` names it).
            model_version: s
                .metadata()
                .get("x-wasmscore-version")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
            ..Default::default()
        }),
    }
}

/// A decoupled call's failure, as its last response.
fn last_failed(id: String, model_name: String, s: &Status, final_flag: bool) -> ModelStreamInferResponse {
    let mut m = stream_failed(id, model_name, s);
    if final_flag {
        m.infer_response = m.infer_response.map(|r| flagged(r, true));
    }
    m
}

/// What one inference gave: its response, the version that served it and
/// the traceparent to answer with; or, for a decoupled version on a
/// stream, word that its responses were sent.
enum Answer {
    One(ModelInferResponse, Arc<Version>, String),
    Sent,
}

use wasmscore_remote::ahead::{admit, SENT_AHEAD};

/// A decoupled call's queue of responses to the stream, and the bytes in it.
struct Ahead {
    tx: tokio::sync::mpsc::Sender<(ModelStreamInferResponse, usize)>,
    bytes: Arc<std::sync::atomic::AtomicUsize>,
}

/// Whether the client asked for an empty last response that says so
/// (tritonclient's `enable_empty_final_response`), as Triton reads it.
fn wants_final_flag(r: &ModelInferRequest) -> bool {
    matches!(
        r.parameters
            .get("triton_enable_empty_final_response")
            .and_then(|p| p.parameter_choice.as_ref()),
        Some(infer_parameter::ParameterChoice::BoolParam(true))
    )
}

/// Marks `out` final or not, as Triton does for a client that asked
/// (`triton_final_response`).
fn flagged(mut out: ModelInferResponse, last: bool) -> ModelInferResponse {
    out.parameters.insert(
        "triton_final_response".into(),
        InferParameter {
            parameter_choice: Some(infer_parameter::ParameterChoice::BoolParam(last)),
        },
    );
    out
}

/// A failed message of a stream as `error_message` says it: the request's
/// id, as Triton prefixes it, and the status that ModelInfer would give.
fn stream_error(id: &str, s: &Status) -> String {
    let code = format!("{:?}", s.code());
    if id.is_empty() {
        format!("{code}: {}", s.message())
    } else {
        format!("[request id: {id}] {code}: {}", s.message())
    }
}

/// One inference, for ModelInfer and for each message of ModelStreamInfer
/// (`stream`: where a decoupled version's responses go as they come).
async fn infer<P: Plane>(
    app: &Arc<App<P>>,
    meta: &MetadataMap,
    mut r: ModelInferRequest,
    stream: Option<&tokio::sync::mpsc::Sender<ModelStreamInferResponse>>,
    checked: Option<&str>,
) -> Result<Answer, Status> {
    // A call HTTP/2 took while the server stops is served: the connection's
    // GOAWAY tells the client to take its next calls elsewhere, and the
    // drain waits for this one.
    let _counted = InFlight::enter(app.clone());
    let started = std::time::SystemTime::now();
    let text = |k: &str| meta.get(k).and_then(|v| v.to_str().ok());
    let endpoint = std::mem::take(&mut r.model_name);
    let mut span = Span::child_of(text("traceparent"));
    let router = app.plane.router();
    // A name whose credential was checked before the message was read
    // whole is not checked twice; another (a message naming the model
    // twice, the last one kept) is.
    let route = if checked == Some(endpoint.as_str()) {
        router.route(&endpoint, given(&r.model_version), text("x-wasmscore-cohort"))
    } else {
        router.route_authorized(
            &endpoint,
            meta.get("authorization").map(|v| v.as_bytes()),
            given(&r.model_version),
            text("x-wasmscore-cohort"),
        )
    }
    .map_err(|e| status(e.into()))?;
    let inputs = inputs(&r, &app.regions).map_err(bad)?;
    let wanted: Vec<&str> = r.outputs.iter().map(|o| o.name.as_str()).collect();
    // Each one asked for is encoded: the same twice would be encoded twice
    // (Triton refuses it too).
    if let Some(twice) = oip::repeated(&r.outputs, |o| &o.name) {
        return Err(bad(oip::OipError(format!("output {twice:?} is asked for twice"))));
    }
    let places = r
        .outputs
        .iter()
        .map(|o| in_region("output", &o.name, &o.parameters))
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    // A decoupled version's responses to this message go, in order, to
    // the stream by a queue of their own. Its call holds the queue weakly:
    // once the last response is queued, a call still running (abandoned
    // past its deadline) sends nothing more, and the queue drains and ends.
    let decoupled = stream.filter(|_| route.version.decoupled()).map(|side| {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(ModelStreamInferResponse, usize)>(SENT_AHEAD);
        let side = side.clone();
        let ahead = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let sent = ahead.clone();
        let forwarded = tokio::spawn(async move {
            while let Some((m, bytes)) = rx.recv().await {
                sent.fetch_sub(bytes, std::sync::atomic::Ordering::Relaxed);
                if side.send(m).await.is_err() {
                    break;
                }
            }
        });
        (Ahead { tx, bytes: ahead }, forwarded)
    });
    let final_flag = wants_final_flag(&r);
    let responses = decoupled.as_ref().map(|(ahead, _)| {
        let (tx, queued) = (ahead.tx.downgrade(), ahead.bytes.clone());
        let (endpoint, version, id) = (endpoint.clone(), route.version.name.clone(), r.id.clone());
        let wanted: Vec<String> = wanted.iter().map(|w| w.to_string()).collect();
        wasmscore_engine::Responses(Arc::new(move |out: ScoreResponse| {
            let wanted: Vec<&str> = wanted.iter().map(String::as_str).collect();
            let resp = response(out, &wanted, &[], None, endpoint.clone(), &version, id.clone()).map_err(|s| s.message().to_string())?;
            let resp = if final_flag { flagged(resp, false) } else { resp };
            let Some(tx) = tx.upgrade() else {
                return Err("the request was answered already (its call outlived its deadline)".to_string());
            };
            // Bytes waiting for the client, bounded too: 256 responses of a
            // GB each would otherwise sit in the host's memory.
            let bytes = resp.raw_output_contents.iter().map(Vec::len).sum::<usize>() + 256;
            admit(&queued, bytes, "the client")?;
            tx.try_send((streamed(resp), bytes)).map_err(|e| {
                queued.fetch_sub(bytes, std::sync::atomic::Ordering::Relaxed);
                match e {
                    tokio::sync::mpsc::error::TrySendError::Full(_) => {
                        format!("the client has not read the {SENT_AHEAD} responses before it")
                    }
                    tokio::sync::mpsc::error::TrySendError::Closed(_) => "the stream is closed".to_string(),
                }
            })
        }))
    });
    let request = ScoreRequest {
        body: module_body(&r, &inputs),
        content_type: "application/json".into(),
        tensors: inputs,
        trace_id: Some(span.trace_id.clone()),
        responses,
    };
    // Sampled once the request is one to run (a refused one counts for no
    // trace_rate or trace_count).
    app.cfg.traces.decide(&mut span, &endpoint);
    let (version, traceparent, result) = app
        .dispatch(&endpoint, route, request, &span, text("tracestate"), Protocol::Grpc, started)
        .await;
    // An error of the version is answered as its own, as on REST.
    let named = |mut s: Status| {
        if let Ok(v) = version.name.parse() {
            s.metadata_mut().insert("x-wasmscore-version", v);
        }
        s
    };
    if let Some((tx, forwarded)) = decoupled {
        // The last of its responses: what run() returned (none for an
        // empty one, unless the client asked for a last that says so), or
        // its error (flagged last too, when the client asked).
        let last = match result {
            Ok(out) if out.tensors.is_empty() && out.body.is_empty() => final_flag.then(|| {
                let empty = ModelInferResponse {
                    model_name: endpoint.clone(),
                    model_version: version.name.clone(),
                    id: r.id.clone(),
                    ..Default::default()
                };
                streamed(flagged(empty, true))
            }),
            Ok(out) => Some(
                match response(
                    out,
                    &wanted,
                    &places,
                    Some(&app.regions),
                    endpoint.clone(),
                    &version.name,
                    r.id.clone(),
                ) {
                    Ok(resp) => streamed(if final_flag { flagged(resp, true) } else { resp }),
                    Err(s) => last_failed(r.id.clone(), endpoint.clone(), &named(s), final_flag),
                },
            ),
            Err(e) => Some(last_failed(r.id.clone(), endpoint.clone(), &named(status(e.into())), final_flag)),
        };
        if let Some(m) = last {
            // The last goes whatever the bytes ahead: it waits its turn.
            let _ = tx.tx.send((m, 0)).await;
        }
        drop(tx);
        // The message keeps its place on the connection until its responses
        // reached the stream: a client that does not read them holds up
        // its next messages, not the server's memory.
        let _ = forwarded.await;
        return Ok(Answer::Sent);
    }
    let out = result.map_err(|e| named(status(e.into())))?;
    let resp = response(out, &wanted, &places, Some(&app.regions), endpoint, &version.name, r.id).map_err(named)?;
    Ok(Answer::One(resp, version, traceparent))
}

/// A module's response as ModelInfer answers it: the outputs asked for
/// (all without `outputs`), raw, or written into the shared memory regions
/// `places` names.
fn response(
    out: ScoreResponse,
    wanted: &[&str],
    places: &[Option<oip::InRegion>],
    regions: Option<&crate::shm::Regions>,
    endpoint: String,
    version: &str,
    id: String,
) -> Result<ModelInferResponse, Status> {
    let tensors = if out.tensors.is_empty() {
        // A module that answers OIP JSON itself (it predates tensors).
        oip::decode_response(&out.body, None).map_err(|e| {
            Status::internal(format!(
                "the module answered no tensors and its body is not an inference response: {e}"
            ))
        })?
    } else {
        out.tensors
    };
    let chosen: Vec<&(String, Tensor)> = if wanted.is_empty() {
        tensors.iter().collect()
    } else {
        let mut chosen = Vec::with_capacity(wanted.len());
        for w in wanted {
            match tensors.iter().find(|(n, _)| n == w) {
                Some(t) => chosen.push(t),
                None => {
                    let have: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
                    return Err(Status::invalid_argument(format!(
                        "there is no output {w:?} (the outputs are {have:?})"
                    )));
                }
            }
        }
        chosen
    };
    // Every output has its entry in raw_output_contents (tritonclient
    // reads them by the outputs' order); one written into shared memory has
    // an empty one and names its place in its parameters, as in Triton.
    let mut outputs = Vec::with_capacity(chosen.len());
    let mut raw = Vec::with_capacity(chosen.len());
    for (i, (n, t)) in chosen.iter().enumerate() {
        let mut parameters = std::collections::HashMap::new();
        match places.get(i).and_then(Option::as_ref).zip(regions) {
            Some((at, regions)) => {
                let written = oip::to_region(n, t, at, regions).map_err(bad)?;
                let param = |c| InferParameter { parameter_choice: Some(c) };
                use infer_parameter::ParameterChoice as C;
                parameters.insert("shared_memory_region".to_string(), param(C::StringParam(at.region.clone())));
                parameters.insert("shared_memory_byte_size".to_string(), param(C::Int64Param(written as i64)));
                if at.offset != 0 {
                    parameters.insert("shared_memory_offset".to_string(), param(C::Int64Param(at.offset as i64)));
                }
                raw.push(Vec::new());
            }
            None => raw.push(oip::to_bytes(t.data())),
        }
        outputs.push(InferOutputTensor {
            name: n.clone(),
            datatype: oip::datatype(t.dtype()).into(),
            shape: t.shape().iter().map(|d| *d as i64).collect(),
            parameters,
            contents: None,
        });
    }
    Ok(ModelInferResponse {
        model_name: endpoint,
        model_version: version.to_string(),
        id,
        parameters: Default::default(),
        outputs,
        raw_output_contents: raw,
    })
}

/// The module's body for a call: the request as OIP's JSON would state
/// it, without the data (the tensors go beside it), its `parameters` and
/// each tensor's included, as a REST call's body has them. Written
/// directly, not through a `serde_json::Value`, as it is made for every
/// call. `inputs` are `r`'s, in its order.
fn module_body(r: &ModelInferRequest, inputs: &[(String, Tensor)]) -> Vec<u8> {
    type Params = std::collections::BTreeMap<String, serde_json::Value>;
    #[derive(serde::Serialize)]
    struct Input<'a> {
        datatype: &'static str,
        name: &'a str,
        shape: &'a [u64],
        #[serde(skip_serializing_if = "Params::is_empty")]
        parameters: Params,
    }
    #[derive(serde::Serialize)]
    struct Output<'a> {
        name: &'a str,
        #[serde(skip_serializing_if = "Params::is_empty")]
        parameters: Params,
    }
    #[derive(serde::Serialize)]
    struct Body<'a> {
        id: &'a str,
        #[serde(skip_serializing_if = "Params::is_empty")]
        parameters: Params,
        inputs: Vec<Input<'a>>,
        outputs: Vec<Output<'a>>,
    }
    fn json(p: &std::collections::HashMap<String, InferParameter>) -> Params {
        use infer_parameter::ParameterChoice as C;
        p.iter()
            .filter_map(|(k, v)| {
                let v = match v.parameter_choice.as_ref()? {
                    C::BoolParam(b) => serde_json::Value::from(*b),
                    C::Int64Param(i) => serde_json::Value::from(*i),
                    C::StringParam(s) => serde_json::Value::from(s.as_str()),
                    C::DoubleParam(d) => serde_json::Value::from(*d),
                    C::Uint64Param(u) => serde_json::Value::from(*u),
                };
                Some((k.clone(), v))
            })
            .collect()
    }
    let body = Body {
        id: &r.id,
        parameters: json(&r.parameters),
        inputs: inputs
            .iter()
            .zip(&r.inputs)
            .map(|((n, t), i)| Input {
                datatype: oip::datatype(t.dtype()),
                name: n,
                shape: t.shape(),
                parameters: json(&i.parameters),
            })
            .collect(),
        outputs: r
            .outputs
            .iter()
            .map(|o| Output {
                name: &o.name,
                parameters: json(&o.parameters),
            })
            .collect(),
    };
    let mut out = Vec::with_capacity(128);
    serde_json::to_writer(&mut out, &body).expect("json");
    out
}

/// The request's input tensors: from shared memory for those that name a
/// region, else from `raw_input_contents` (one per input not in shared
/// memory, in order, as Triton reads them) or from each input's typed
/// `contents`.
fn inputs(r: &ModelInferRequest, regions: &dyn oip::Regions) -> Result<Vec<(String, Tensor)>, oip::OipError> {
    let regions = &oip::CallReads::new(regions);
    if r.inputs.is_empty() {
        return Err(oip::OipError("the request has no inputs".into()));
    }
    let places = r
        .inputs
        .iter()
        .map(|i| in_region("input", &i.name, &i.parameters))
        .collect::<Result<Vec<_>, _>>()?;
    let sent = places.iter().filter(|p| p.is_none()).count();
    let raw = !r.raw_input_contents.is_empty();
    if raw && r.raw_input_contents.len() != sent {
        return Err(oip::OipError(format!(
            "raw_input_contents has {} entries for {sent} inputs not in shared memory",
            r.raw_input_contents.len(),
        )));
    }
    if let Some(name) = oip::repeated(&r.inputs, |i| &i.name) {
        return Err(oip::OipError(format!("input {name:?} is given twice")));
    }
    let mut raw_contents = r.raw_input_contents.iter();
    let mut out: Vec<(String, Tensor)> = Vec::with_capacity(r.inputs.len());
    for (input, place) in r.inputs.iter().zip(places) {
        let from_raw = |bytes: &[u8]| oip::from_raw(&input.name, "input", &input.datatype, &input.shape, bytes);
        let t = match (place, raw) {
            (Some(at), _) => {
                if input.contents.is_some() {
                    return Err(oip::OipError(format!(
                        "input {:?} is in shared memory and also has contents",
                        input.name
                    )));
                }
                oip::from_region(&input.name, "input", (&input.datatype, &input.shape), &at, regions)?
            }
            (None, true) => {
                if input.contents.is_some() {
                    return Err(oip::OipError(format!(
                        "input {:?} has contents although raw_input_contents is used",
                        input.name
                    )));
                }
                from_raw(raw_contents.next().expect("counted above"))?
            }
            (None, false) => typed(input)?,
        };
        out.push((input.name.clone(), t));
    }
    Ok(out)
}

/// The shared memory place a tensor's parameters name, if any (Triton's
/// names: the region in `string_param`, sizes in `int64_param`, as
/// tritonclient sends them, or `uint64_param`).
fn in_region(
    what: &str,
    name: &str,
    p: &std::collections::HashMap<String, InferParameter>,
) -> Result<Option<oip::InRegion>, oip::OipError> {
    use infer_parameter::ParameterChoice as C;
    let count = |k: &str| {
        p.get(k).map(|v| match &v.parameter_choice {
            Some(C::Int64Param(n)) if *n >= 0 => Ok(*n as u64),
            Some(C::Uint64Param(n)) => Ok(*n),
            other => Err(format!("{k} must be a byte count in int64_param, got {other:?}")),
        })
    };
    let region = p.get("shared_memory_region").map(|v| match &v.parameter_choice {
        Some(C::StringParam(s)) => Ok(s.as_str()),
        other => Err(format!(
            "shared_memory_region must be a region's name in string_param, got {other:?}"
        )),
    });
    oip::InRegion::of(what, name, region, count("shared_memory_byte_size"), count("shared_memory_offset"))
}

/// An input from its typed contents (the field its datatype uses).
fn typed(input: &InferInputTensor) -> Result<Tensor, oip::OipError> {
    let name = &input.name;
    let (d, dims, count) = oip::declared(name, "input", &input.datatype, &input.shape)?;
    let Some(c) = &input.contents else {
        return Err(oip::OipError(format!("input {name:?} has no contents and no raw_input_contents")));
    };
    // INT8/16 ride in int_contents and UINT8/16 in uint_contents: each value must fit.
    fn narrow<S: Copy, T: TryFrom<S>>(v: &[S], name: &str, what: &str) -> Result<Vec<T>, oip::OipError> {
        v.iter()
            .map(|x| T::try_from(*x).map_err(|_| oip::OipError(format!("input {name:?}: a value does not fit {what}"))))
            .collect()
    }
    let data = match d {
        DType::Bool => TensorData::Bool(c.bool_contents.clone()),
        DType::Int8 => TensorData::Int8(narrow(&c.int_contents, name, "INT8")?),
        DType::Int16 => TensorData::Int16(narrow(&c.int_contents, name, "INT16")?),
        DType::Int32 => TensorData::Int32(c.int_contents.clone()),
        DType::Int64 => TensorData::Int64(c.int64_contents.clone()),
        DType::Uint8 => TensorData::Uint8(narrow(&c.uint_contents, name, "UINT8")?),
        DType::Uint16 => TensorData::Uint16(narrow(&c.uint_contents, name, "UINT16")?),
        DType::Uint32 => TensorData::Uint32(c.uint_contents.clone()),
        DType::Uint64 => TensorData::Uint64(c.uint64_contents.clone()),
        DType::Float32 => TensorData::Float32(c.fp32_contents.clone()),
        DType::Float64 => TensorData::Float64(c.fp64_contents.clone()),
        DType::Float16 | DType::Bfloat16 => {
            return Err(oip::OipError(format!(
                "input {name:?}: {} has no typed contents in the protocol; send it in raw_input_contents",
                input.datatype
            )))
        }
        DType::String => TensorData::from_byte_strings(c.bytes_contents.clone()),
    };
    oip::shaped(name, "input", dims, count, data)
}

/// Fuzz entry point: bytes -> a ModelInferRequest (protobuf) -> its tensors.
/// Must never panic or allocate beyond what the bytes hold.
pub fn fuzz_infer_request(data: &[u8]) {
    use prost::Message;
    if let Ok(r) = ModelInferRequest::decode(data) {
        let _ = inputs(&r, &oip::NoRegions);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_model_name_is_read_from_the_start_of_a_message() {
        use super::{leading_model_name, Leading};
        use prost::Message;
        let r = super::ModelInferRequest {
            model_name: "iris".into(),
            model_version: "v1".into(),
            raw_input_contents: vec![vec![0; 100]],
            ..Default::default()
        };
        let bytes = r.encode_to_vec();
        assert_eq!(leading_model_name(&bytes), Leading::Name("iris"));
        for cut in 0..6 {
            assert_eq!(leading_model_name(&bytes[..cut]), Leading::More, "{cut} bytes");
        }
        let long = super::ModelInferRequest {
            model_name: "m".repeat(300),
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(leading_model_name(&long[..2]), Leading::More);
        assert_eq!(leading_model_name(&long), Leading::Name(&"m".repeat(300)));
        assert_eq!(leading_model_name(b"\xff\xff\xff"), Leading::Other);
        assert_eq!(leading_model_name(&[0x0a, 0xff, 0xff, 0x01]), Leading::Other);
        // No name (proto3 leaves an empty one out): another field first.
        let nameless = super::ModelInferRequest {
            id: "x".into(),
            ..Default::default()
        };
        assert_eq!(leading_model_name(&nameless.encode_to_vec()), Leading::Other);
    }

    use super::*;

    fn input(name: &str, datatype: &str, shape: &[i64], contents: Option<InferTensorContents>) -> InferInputTensor {
        InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
            parameters: Default::default(),
            contents,
        }
    }

    #[test]
    fn the_module_body_states_the_request_without_its_data() {
        let x = Tensor::new(vec![1, 2], TensorData::Float32(vec![1.5, 2.0])).unwrap();
        let s = Tensor::new(vec![1], TensorData::String(vec!["hi".into()])).unwrap();
        let param = |c| InferParameter { parameter_choice: Some(c) };
        use infer_parameter::ParameterChoice as C;
        let tensor = |name: &str| model_infer_request::InferInputTensor {
            name: name.into(),
            ..Default::default()
        };
        let r = ModelInferRequest {
            id: "r1".into(),
            parameters: [("priority".to_string(), param(C::Int64Param(2)))].into(),
            inputs: vec![
                model_infer_request::InferInputTensor {
                    parameters: [("lang".to_string(), param(C::StringParam("en".into())))].into(),
                    ..tensor("x")
                },
                tensor("s"),
            ],
            outputs: vec![model_infer_request::InferRequestedOutputTensor {
                name: "y".into(),
                parameters: [("top_k".to_string(), param(C::Uint64Param(3)))].into(),
            }],
            ..Default::default()
        };
        let body = module_body(&r, &[("x".into(), x), ("s".into(), s)]);
        let got: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            got,
            serde_json::json!({
                "id": "r1",
                "parameters": {"priority": 2},
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "parameters": {"lang": "en"}},
                           {"name": "s", "datatype": "BYTES", "shape": [1]}],
                "outputs": [{"name": "y", "parameters": {"top_k": 3}}],
            })
        );
        let none: serde_json::Value = serde_json::from_slice(&module_body(&ModelInferRequest::default(), &[])).unwrap();
        assert_eq!(none, serde_json::json!({"id": "", "inputs": [], "outputs": []}));
    }

    #[test]
    fn raw_and_typed_contents_become_tensors_and_mismatches_are_refused() {
        let raw = ModelInferRequest {
            inputs: vec![input("x", "FP32", &[1, 2], None), input("s", "BYTES", &[1], None)],
            raw_input_contents: vec![[1.5f32.to_le_bytes(), 2.0f32.to_le_bytes()].concat(), b"\x02\0\0\0hi".to_vec()],
            ..Default::default()
        };
        let got = inputs(&raw, &oip::NoRegions).unwrap();
        assert_eq!(got[0].1, Tensor::new(vec![1, 2], TensorData::Float32(vec![1.5, 2.0])).unwrap());
        assert_eq!(got[1].1, Tensor::new(vec![1], TensorData::String(vec!["hi".into()])).unwrap());

        let typed_req = ModelInferRequest {
            inputs: vec![input(
                "u",
                "UINT8",
                &[2],
                Some(InferTensorContents {
                    uint_contents: vec![1, 255],
                    ..Default::default()
                }),
            )],
            ..Default::default()
        };
        assert_eq!(
            inputs(&typed_req, &oip::NoRegions).unwrap()[0].1.data(),
            &TensorData::Uint8(vec![1, 255])
        );

        let cases: Vec<(ModelInferRequest, &str)> = vec![
            (ModelInferRequest::default(), "no inputs"),
            (
                ModelInferRequest {
                    inputs: vec![input("x", "FP32", &[3], None)],
                    raw_input_contents: vec![vec![0; 8]],
                    ..Default::default()
                },
                "3 FP32 elements take 12",
            ),
            (
                ModelInferRequest {
                    inputs: vec![input("x", "FP32", &[1], None), input("y", "FP32", &[1], None)],
                    raw_input_contents: vec![vec![0; 4]],
                    ..Default::default()
                },
                "1 entries for 2 inputs",
            ),
            (
                ModelInferRequest {
                    inputs: vec![input(
                        "u",
                        "UINT8",
                        &[1],
                        Some(InferTensorContents {
                            uint_contents: vec![256],
                            ..Default::default()
                        }),
                    )],
                    ..Default::default()
                },
                "does not fit UINT8",
            ),
            (
                ModelInferRequest {
                    inputs: vec![input("x", "FP32", &[2], Some(InferTensorContents::default()))],
                    ..Default::default()
                },
                "needs 2 elements, got 0",
            ),
            (
                ModelInferRequest {
                    inputs: vec![input("x", "BF16", &[1], Some(InferTensorContents::default()))],
                    ..Default::default()
                },
                "BF16 has no typed contents in the protocol",
            ),
            (
                ModelInferRequest {
                    inputs: vec![input("x", "FP32", &[1], None)],
                    ..Default::default()
                },
                "no contents and no raw_input_contents",
            ),
        ];
        for (req, want) in cases {
            let e = inputs(&req, &oip::NoRegions).unwrap_err();
            assert!(e.0.contains(want), "{e} does not say {want:?}");
        }
    }

    #[test]
    fn fuzz_entry_survives_garbage() {
        for b in [
            &b""[..],
            b"\x2a\x05\x0a\x01x",
            b"\xff\xff\xff\xff\x0f",
            b"\x3a\x00\x2a\x0b\x0a\x01x\x12\x04FP32\x1a\x01\x05",
        ] {
            fuzz_infer_request(b);
        }
    }
}
