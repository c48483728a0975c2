//! The HTTP server and its routes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use wasmscore_control::Control;
use wasmscore_engine::ScoreRequest;

use crate::errors::ApiError;

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest scoring request body (Azure ML's limit: 100 MB), then 413.
    pub max_body_bytes: usize,
    /// Largest admin upload (modules and model files).
    pub max_admin_body_bytes: usize,
    /// The admin token every /admin/v1/ call must carry.
    pub admin_token: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_body_bytes: 100 * 1000 * 1000,
            max_admin_body_bytes: 2 << 30,
            admin_token: String::new(),
        }
    }
}

struct App {
    control: Arc<Control>,
    cfg: ServerConfig,
}

type Body = Full<Bytes>;

/// Serves until `shutdown` resolves, then stops accepting; open connections finish.
pub async fn serve(
    listener: TcpListener,
    control: Arc<Control>,
    cfg: ServerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let app = Arc::new(App { control, cfg });
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _peer): (_, SocketAddr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => { tracing::warn!(error = %e, "accept failed"); continue; }
            },
            _ = &mut shutdown => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(app.handle(req).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), svc).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}

fn json(status: u16, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error_response(e: ApiError) -> Response<Body> {
    let mut r = json(e.status, e.body());
    if let Some(s) = e.retry_after {
        r.headers_mut().insert("retry-after", HeaderValue::from(s));
    }
    if e.status == 401 {
        r.headers_mut()
            .insert(hyper::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

/// Reads the body up to `limit` bytes; a declared or actual larger body is 413.
async fn read_body(req: Request<Incoming>, limit: usize) -> Result<(http::request::Parts, Bytes), ApiError> {
    let too_large = || ApiError::new(413, "payload_too_large", format!("request body exceeds the limit of {limit} bytes"));
    if let Some(len) = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit as u64 {
            return Err(too_large());
        }
    }
    let (parts, body) = req.into_parts();
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok((parts, c.to_bytes())),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => Err(ApiError::new(400, "bad_request", format!("reading the request body: {e}"))),
    }
}

impl App {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method.as_str(), segs.as_slice()) {
            ("POST", ["api", "v1", "service", name, "score"]) => {
                let name = name.to_string();
                self.score(req, &name).await.unwrap_or_else(error_response)
            }
            ("GET", ["v2", "health", "live"]) => json(200, br#"{"live":true}"#.to_vec()),
            ("GET", ["v2", "health", "ready"]) => {
                if self.control.is_ready() {
                    json(200, br#"{"ready":true}"#.to_vec())
                } else {
                    error_response(ApiError::new(503, "not_ready", "restoring deployed versions"))
                }
            }
            ("GET", ["v2", "models", name, "ready"]) => self.model_ready(name, None),
            ("GET", ["v2", "models", name, "versions", v, "ready"]) => self.model_ready(name, Some(v)),
            ("GET", ["metrics"]) => {
                if let Err(e) = self.admin_authorized(&req) {
                    return error_response(e);
                }
                let mut r = Response::new(Full::new(Bytes::from(self.control.metrics())));
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
                r
            }
            (_, ["admin", "v1", ..]) => self.admin(req, &path).await.unwrap_or_else(error_response),
            _ => error_response(ApiError::new(404, "not_found", format!("no route for {method} {path}"))),
        }
    }

    /// Open Inference Protocol model readiness: 200 when the endpoint (or the
    /// version) takes traffic, else 503 with the state and the reason.
    fn model_ready(&self, endpoint: &str, version: Option<&str>) -> Response<Body> {
        match self.control.ready(endpoint, version) {
            Ok((true, body)) => json(200, serde_json::to_vec(&body).expect("json")),
            Ok((false, body)) => {
                let mut r = json(503, serde_json::to_vec(&body).expect("json"));
                r.headers_mut().insert("retry-after", HeaderValue::from(1));
                r
            }
            Err(e) => error_response(ApiError::new(e.status(), e.code(), e.to_string())),
        }
    }

    async fn score(&self, req: Request<Incoming>, endpoint: &str) -> Result<Response<Body>, ApiError> {
        // The headers are read in place: routing needs no copy of them.
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        let authorization = req.headers().get(hyper::header::AUTHORIZATION).map(|v| v.as_bytes());
        let route =
            self.control
                .router()
                .route_authorized(endpoint, authorization, header("x-wasmscore-version"), header("x-wasmscore-cohort"))?;
        let (parts, body) = read_body(req, self.cfg.max_body_bytes).await?;
        let content_type = parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_string();
        let request = ScoreRequest {
            body: body.to_vec(),
            content_type,
            tensors: Vec::new(),
        };
        if let Some(mirror) = route.mirror {
            // A copy for the mirror, answered by no one: its result, slow or
            // failed, never reaches this client (the pool counts it).
            let copy = request.clone();
            tokio::spawn(async move {
                if let Err(e) = mirror.pool.score(copy).await {
                    tracing::debug!(version = %mirror.name, error = %e, "mirrored request failed");
                }
            });
        }
        let version = route.version;
        let result = version.pool.score(request).await;
        let mut resp = match result {
            Ok(out) => {
                let ct = if out.content_type.is_empty() {
                    "application/json".to_string()
                } else {
                    out.content_type
                };
                let mut r = Response::new(Full::new(Bytes::from(out.body)));
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_str(&ct).unwrap_or(HeaderValue::from_static("application/json")),
                );
                r
            }
            Err(e) => error_response(e.into()),
        };
        if let Ok(v) = HeaderValue::from_str(&version.name) {
            resp.headers_mut().insert("x-wasmscore-version", v);
        }
        Ok(resp)
    }

    /// The admin token, and only it (no scoring key or token), opens the
    /// admin API and /metrics.
    fn admin_authorized(&self, req: &Request<Incoming>) -> Result<(), ApiError> {
        let given = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let authorized = match given {
            Some(t) => constant_time_eq(t.as_bytes(), self.cfg.admin_token.as_bytes()),
            None => false,
        };
        if self.cfg.admin_token.is_empty() || !authorized {
            return Err(ApiError::new(
                401,
                "unauthorized",
                "the admin API needs `Authorization: Bearer <admin token>` (the token is in the data dir's admin.token)",
            ));
        }
        Ok(())
    }

    async fn admin(&self, req: Request<Incoming>, path: &str) -> Result<Response<Body>, ApiError> {
        self.admin_authorized(&req)?;
        let method = req.method().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let (_, body) = read_body(req, self.cfg.max_admin_body_bytes).await?;
        let r = self.control.admin(&method, path, &query, body.to_vec()).await;
        Ok(json(r.status, serde_json::to_vec(&r.body).expect("json")))
    }
}

use wasmscore_router::auth::constant_time_eq;
