//! The HTTP server and its routes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use wasmscore_engine::ScoreRequest;
use wasmscore_engine::ScoreResponse;
use wasmscore_oip as oip;
use wasmscore_remote::trace::Span;
use wasmscore_remote::Call;
use wasmscore_replica::ScoreError;
use wasmscore_router::{Route, Router, Version};

use crate::errors::ApiError;
use crate::plane::Plane;

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest scoring request body (Azure ML's limit: 100 MB), then 413.
    pub max_body_bytes: usize,
    /// Largest admin upload (modules and model files).
    pub max_admin_body_bytes: usize,
    /// The admin token every /admin/v1/ call must carry.
    pub admin_token: String,
    /// Open connections at most (plain and TLS together); more are answered
    /// 503 (plain) or closed (TLS) at once.
    pub max_connections: usize,
    /// A client has this long to send a request's headers (and to finish
    /// the TLS handshake); slower ones are cut.
    pub header_read_timeout: Duration,
    /// Largest request head (HTTP/1.1: 431 beyond it; HTTP/2: the header list).
    pub max_header_bytes: usize,
    /// Streams at once on one HTTP/2 connection.
    pub max_h2_streams: u32,
    /// Where the `/score` spans go (`--otlp-endpoint`), if anywhere.
    pub spans: Option<Arc<wasmscore_remote::otlp::SpanExport>>,
    /// Threads that each run their connections on a runtime of their own
    /// (a router's; wasmscore_remote::shards). None: the caller's runtime.
    pub shards: Option<Arc<wasmscore_remote::shards::Shards>>,
    /// The process's log settings, for Triton's logging extension. None:
    /// its routes answer 501.
    pub logging: Option<Arc<crate::logging::Logging>>,
    /// Which spans go to `spans`, for Triton's trace extension (traces.rs).
    pub traces: Arc<crate::traces::Traces>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_body_bytes: 100 * 1000 * 1000,
            max_admin_body_bytes: 2 << 30,
            admin_token: String::new(),
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(30),
            max_header_bytes: 32 * 1024,
            max_h2_streams: 256,
            spans: None,
            shards: None,
            logging: None,
            traces: Arc::new(crate::traces::Traces::new(false)),
        }
    }
}

impl ServerConfig {
    /// Exports spans to `spans` (`--otlp-endpoint`), if anywhere: with
    /// every span at first, as Triton's trace settings then say.
    pub fn export_spans(&mut self, spans: Option<Arc<wasmscore_remote::otlp::SpanExport>>) {
        self.traces = Arc::new(crate::traces::Traces::new(spans.is_some()));
        self.spans = spans;
    }
}

/// Where to listen: plain HTTP, TLS, or both; and gRPC (over TLS when it
/// has a config).
#[derive(Default)]
pub struct Listeners {
    pub plain: Option<TcpListener>,
    pub tls: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
    pub grpc: Option<(TcpListener, Option<Arc<rustls::ServerConfig>>)>,
}

/// What an accept loop's connections speak.
#[derive(Clone, Copy, PartialEq)]
enum Speaks {
    Http,
    Grpc,
}

pub(crate) struct App<P> {
    pub(crate) plane: Arc<P>,
    pub(crate) cfg: ServerConfig,
    /// Requests being handled, for the drain at shutdown.
    in_flight: std::sync::atomic::AtomicUsize,
    /// Woken when the last request in flight ends.
    idle: tokio::sync::Notify,
    /// Shared memory regions clients registered (Triton's extension).
    pub(crate) regions: crate::shm::Regions,
    /// True once the server stops accepting: its connections then end
    /// gracefully (`until_stopped`).
    pub(crate) stopped: tokio::sync::watch::Receiver<bool>,
}

/// Longest shutdown waits for requests in flight (the default scoring
/// timeout, and a little).
const DRAIN: Duration = Duration::from_secs(65);

/// How long open connections get to end once no request is in flight.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Counts a request as in flight for as long as it lives (a dropped
/// connection drops it too).
pub(crate) struct InFlight<P>(Arc<App<P>>);

impl<P> InFlight<P> {
    pub(crate) fn enter(app: Arc<App<P>>) -> Self {
        app.in_flight.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        InFlight(app)
    }
}

impl<P> Drop for InFlight<P> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

type Body = Full<Bytes>;

/// Serves until `shutdown` resolves, then stops accepting and drains: every
/// open connection ends once it has answered what it took (an HTTP/1.1 one
/// after its answer in progress, at once when idle; an HTTP/2 one with
/// GOAWAY, after the streams opened before it), so clients send their next
/// requests elsewhere (another router) instead of being refused here. It
/// returns once no request is in flight (up to `DRAIN`) and the
/// connections have ended (up to `CLOSE_GRACE` more), so what the answered
/// requests did (their collected data) is all in before the caller shuts
/// the rest down.
pub async fn serve<P: Plane>(
    listeners: Listeners,
    plane: Arc<P>,
    cfg: ServerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let conns = Arc::new(Semaphore::new(cfg.max_connections));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let app = Arc::new(App {
        plane,
        regions: crate::shm::Regions::new(cfg.max_body_bytes as u64),
        cfg,
        in_flight: Default::default(),
        idle: tokio::sync::Notify::new(),
        stopped: stopped.clone(),
    });
    let mut loops = tokio::task::JoinSet::new();
    // Request deadlines and hyper's timers then wake no parked worker.
    let timer = tokio::spawn(wasmscore_remote::shards::keep_a_timer());
    if let Some(l) = listeners.plain {
        loops.spawn(accept_loop(l, None, Speaks::Http, app.clone(), conns.clone(), stopped.clone()));
    }
    if let Some((l, tls)) = listeners.tls {
        let tls = Some(TlsAcceptor::from(tls));
        loops.spawn(accept_loop(l, tls, Speaks::Http, app.clone(), conns.clone(), stopped.clone()));
    }
    if let Some((l, tls)) = listeners.grpc {
        let tls = tls.map(TlsAcceptor::from);
        loops.spawn(accept_loop(l, tls, Speaks::Grpc, app.clone(), conns.clone(), stopped.clone()));
    }
    shutdown.await;
    let _ = stop.send(true);
    while loops.join_next().await.is_some() {}
    let deadline = tokio::time::sleep(DRAIN);
    tokio::pin!(deadline);
    requests_done(&app, deadline.as_mut()).await;
    // Then the connections end: HTTP/2's GOAWAY takes a round trip, and a
    // peer that does not answer is not waited for beyond CLOSE_GRACE. What
    // they took meanwhile (streams opened before the GOAWAY) finishes.
    // Every connection holds a permit until it ends.
    let all = u32::try_from(app.cfg.max_connections).unwrap_or(u32::MAX);
    tokio::select! {
        _ = conns.acquire_many(all) => {}
        _ = tokio::time::sleep(CLOSE_GRACE) => {
            let open = app.cfg.max_connections - conns.available_permits();
            tracing::debug!(connections = open, "shutdown: connections still open after the grace");
        }
        _ = deadline.as_mut() => {}
    }
    requests_done(&app, deadline.as_mut()).await;
    timer.abort();
    Ok(())
}

/// Waits until no request is in flight, or the deadline.
async fn requests_done<P>(app: &App<P>, mut deadline: std::pin::Pin<&mut tokio::time::Sleep>) {
    loop {
        let idle = app.idle.notified();
        let left = app.in_flight.load(std::sync::atomic::Ordering::Acquire);
        if left == 0 {
            return;
        }
        tokio::select! {
            _ = idle => {}
            _ = deadline.as_mut() => {
                tracing::warn!(requests = left, "shutdown: requests still in flight after the drain");
                return;
            }
        }
    }
}

async fn accept_loop<P: Plane>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    speaks: Speaks,
    app: Arc<App<P>>,
    conns: Arc<Semaphore>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let (stream, _peer): (_, SocketAddr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors, say: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stopped.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            refuse(stream, tls.is_some() || speaks == Speaks::Grpc);
            continue;
        };
        let shards = app.cfg.shards.clone();
        let (app, tls) = (app.clone(), tls.clone());
        let serve = async move |stream: tokio::net::TcpStream| {
            let _permit = permit;
            let limit = app.cfg.header_read_timeout;
            let first = Arc::new(FirstByte::default());
            match tls {
                None => {
                    serve_in(
                        speaks,
                        app,
                        TokioIo::new(FirstByteDeadline::new(stream, limit, first.clone())),
                        first,
                    )
                    .await
                }
                Some(acceptor) => match tokio::time::timeout(app.cfg.header_read_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => serve_in(speaks, app, TokioIo::new(FirstByteDeadline::new(s, limit, first.clone())), first).await,
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                },
            }
        };
        match shards {
            None => drop(tokio::spawn(serve(stream))),
            // Taken off this runtime's reactor and registered with the
            // shard's, which then wakes the connection on its own thread.
            Some(shards) => match stream.into_std() {
                Ok(stream) => shards.spawn(async move {
                    match tokio::net::TcpStream::from_std(stream) {
                        Ok(stream) => serve(stream).await,
                        Err(e) => tracing::warn!(error = %e, "cannot serve an accepted connection"),
                    }
                }),
                Err(e) => tracing::warn!(error = %e, "cannot hand an accepted connection to a thread"),
            },
        }
    }
}

/// Serves one accepted connection in the protocol its port speaks.
async fn serve_in<P: Plane, I>(speaks: Speaks, app: Arc<App<P>>, io: TokioIo<I>, first: Arc<FirstByte>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    match speaks {
        Speaks::Http => serve_connection(app, io, first).await,
        Speaks::Grpc => crate::grpc::serve_connection(app, io, first).await,
    }
}

/// Whether a connection has sent enough to tell its protocol, for a
/// graceful end (`FirstByteDeadline`), and what it has in flight, for its
/// end once idle.
#[derive(Default)]
pub(crate) struct FirstByte {
    seen: std::sync::atomic::AtomicBool,
    came: tokio::sync::Notify,
    /// Requests whose handler began, and those whose handler returned.
    started: std::sync::atomic::AtomicU64,
    handled: std::sync::atomic::AtomicU64,
    /// Answers' bodies waiting on the server for their next data (a
    /// ModelStreamInfer stream waiting on an inference).
    in_app: std::sync::atomic::AtomicU64,
    /// Reads and writes on the connection that moved bytes.
    moved: std::sync::atomic::AtomicU64,
}

impl FirstByte {
    fn saw(&self) {
        self.seen.store(true, std::sync::atomic::Ordering::Release);
        // Kept as a permit when nobody waits yet.
        self.came.notify_one();
    }

    async fn wait(&self) {
        if !self.seen.load(std::sync::atomic::Ordering::Acquire) {
            self.came.notified().await;
        }
    }

    /// A request of the connection begins; its handler holds the guard.
    pub(crate) fn begin(self: &Arc<Self>) -> Busy {
        self.started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Busy(Some(self.clone()))
    }

    /// Returns once the connection has been idle for `idle`: no handler
    /// running, no answer's body waiting on the server, and no request
    /// begun and no byte read or written in that time. HTTP/2 has no timer
    /// of its own for that (hyper's header timer covers an idle HTTP/1.1
    /// connection), so a client that sends the preface and then nothing
    /// would hold its slot for good; so would one that never opens its
    /// flow-control window on an answer (nothing moves, the body waits on
    /// the peer, not on the server).
    async fn idle_for(&self, idle: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let counts = || (self.started.load(Relaxed), self.handled.load(Relaxed), self.moved.load(Relaxed));
        let mut seen = counts();
        loop {
            tokio::time::sleep(idle.max(Duration::from_millis(1))).await;
            let now = counts();
            if now == seen && now.0 == now.1 && self.in_app.load(Relaxed) == 0 {
                return;
            }
            seen = now;
        }
    }
}

/// A request's handler running on its connection (`FirstByte::begin`).
pub(crate) struct Busy(Option<Arc<FirstByte>>);

impl Busy {
    /// The handler returned: its connection, for the answer's body.
    fn handled(mut self) -> Arc<FirstByte> {
        let conn = self.0.take().expect("taken once");
        conn.handled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        conn
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            conn.handled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// An answer's body that counts on its connection as in flight while it
/// waits on the server for its next data (`FirstByte::in_app`).
pub(crate) struct Guarded<B> {
    inner: B,
    conn: Arc<FirstByte>,
    waiting: bool,
}

impl<B> Guarded<B> {
    /// The answer of a handler that held `busy`.
    pub(crate) fn response(r: Response<B>, busy: Busy) -> Response<Guarded<B>> {
        let conn = busy.handled();
        r.map(|inner| Guarded {
            inner,
            conn,
            waiting: false,
        })
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        use std::sync::atomic::Ordering::Relaxed;
        let r = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match (r.is_pending(), self.waiting) {
            (true, false) => {
                self.conn.in_app.fetch_add(1, Relaxed);
                self.waiting = true;
            }
            (false, true) => {
                self.conn.in_app.fetch_sub(1, Relaxed);
                self.waiting = false;
            }
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Guarded<B> {
    fn drop(&mut self) {
        if self.waiting {
            self.conn.in_app.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// A request body that fails once no data came for `idle`, or once it
/// comes slower than `MIN_BODY_RATE` on average after its first `idle`: a
/// client that stops, or sends its body a byte at a time, holds its
/// connection and its request no longer. The timer and the clock are used
/// only once the body has to be waited for (a small body in the request's
/// first frames needs neither).
pub(crate) struct IdleBody<B> {
    inner: B,
    idle: Duration,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// When the body was first waited for, and the bytes that came since.
    waited: Option<(std::time::Instant, u64)>,
}

/// Bytes a second a request body that has to be waited for comes at, at
/// least, on average once its first `idle` is past.
pub(crate) const MIN_BODY_RATE: u64 = 1024;

impl<B> IdleBody<B> {
    pub(crate) fn new(inner: B, idle: Duration) -> IdleBody<B> {
        IdleBody {
            inner,
            idle,
            timer: None,
            waited: None,
        }
    }
}

/// The error of a body that went `idle` with no data, or came too slowly.
#[derive(Debug)]
pub(crate) enum BodyIdle {
    Stopped(Duration),
    Slow { bytes: u64, took: Duration },
}

impl std::fmt::Display for BodyIdle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyIdle::Stopped(idle) => write!(f, "no data of the request body came for {} ms", idle.as_millis()),
            BodyIdle::Slow { bytes, took } => write!(
                f,
                "the request body came at under {MIN_BODY_RATE} bytes a second ({bytes} bytes in {} ms)",
                took.as_millis()
            ),
        }
    }
}

impl std::error::Error for BodyIdle {}

impl<B> hyper::body::Body for IdleBody<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        use std::future::Future;
        use std::task::Poll;
        match std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                self.timer = None;
                let idle = self.idle;
                if let (Some((since, bytes)), Some(Ok(f))) = (&mut self.waited, &frame) {
                    *bytes += f.data_ref().map_or(0, |d| d.len() as u64);
                    let took = since.elapsed();
                    if took > idle && *bytes < MIN_BODY_RATE.saturating_mul(took.as_secs()) {
                        return Poll::Ready(Some(Err(Box::new(BodyIdle::Slow { bytes: *bytes, took }))));
                    }
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let idle = self.idle;
                self.waited.get_or_insert_with(|| (std::time::Instant::now(), 0));
                let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyIdle::Stopped(idle))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A connection must send its first bytes, enough to tell which protocol
/// it speaks, within the header read timeout. (hyper's own header timer
/// starts only once it knows the protocol, so a client that connects and
/// sends nothing, or only the start of HTTP/2's preface, would otherwise
/// hold its slot.) After them it is transparent: long calls are not cut.
struct FirstByteDeadline<I> {
    inner: I,
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    first: Arc<FirstByte>,
    /// How many of the bytes read so far are HTTP/2's preface.
    preface: usize,
}

/// hyper-util tells HTTP/2 from HTTP/1.1 by this: the protocol is known
/// once a byte differs from it, or all of it came.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether `read`, after `matched` bytes of the preface, tells the protocol.
fn protocol_known(matched: &mut usize, read: &[u8]) -> bool {
    for &b in read {
        if H2_PREFACE.get(*matched) != Some(&b) {
            return true;
        }
        *matched += 1;
        if *matched == H2_PREFACE.len() {
            return true;
        }
    }
    false
}

impl<I> FirstByteDeadline<I> {
    /// Counts a write that moved bytes (the connection is not idle).
    fn wrote(&self, r: &std::task::Poll<std::io::Result<usize>>) {
        if matches!(r, std::task::Poll::Ready(Ok(n)) if *n > 0) {
            self.first.moved.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn new(inner: I, limit: Duration, first: Arc<FirstByte>) -> Self {
        FirstByteDeadline {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(limit))),
            first,
            preface: 0,
        }
    }
}

impl<I: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for FirstByteDeadline<I> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::future::Future;
        use std::task::Poll;
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.first.moved.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if self.deadline.is_none() {
            return r;
        }
        match r {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                let this = &mut *self;
                if protocol_known(&mut this.preface, &buf.filled()[before..]) {
                    this.deadline = None;
                    this.first.saw();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match self.deadline.as_mut().map(|d| d.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no request within the header read timeout",
                ))),
                _ => Poll::Pending,
            },
            other => other,
        }
    }
}

impl<I: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for FirstByteDeadline<I> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(&r);
        r
    }
    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&r);
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Over the connection cap: a plain client is told 503 (bounded by a
/// timeout, so a client that does not read cannot hold the task); a TLS
/// client is closed before the handshake.
fn refuse(mut stream: tokio::net::TcpStream, tls: bool) {
    tracing::debug!("connection refused: at the connection cap");
    if tls {
        return;
    }
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let body = r#"{"error":{"code":"overloaded","message":"too many open connections; retry"}}"#;
        let resp = format!(
            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(resp.as_bytes())).await;
    });
}

async fn serve_connection<P: Plane, I>(app: Arc<App<P>>, io: TokioIo<I>, first: Arc<FirstByte>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let cfg = app.cfg.clone();
    let stopped = app.stopped.clone();
    let conn = first.clone();
    let svc = hyper::service::service_fn(move |req| {
        let app = app.clone();
        let busy = conn.begin();
        async move {
            let _counted = InFlight::enter(app.clone());
            Ok::<_, Infallible>(Guarded::response(app.handle(req).await, busy))
        }
    });
    let (streams, mut spawned) = wasmscore_remote::streams::here();
    let mut builder = hyper_util::server::conn::auto::Builder::new(streams);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        // hyper's own 431 (no body) only past twice the limit: up to it,
        // `handle` answers a head over the limit with a JSON error.
        .max_buf_size(cfg.max_header_bytes.saturating_mul(2).max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(cfg.max_header_bytes as u32)
        .max_concurrent_streams(cfg.max_h2_streams);
    if let Err(e) = spawned
        .drive(until_stopped(
            builder.serve_connection(io, svc),
            stopped,
            first,
            cfg.header_read_timeout,
        ))
        .await
    {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Serves `conn` to its end; once the server stops, or the connection has
/// been idle for `idle` (no request in flight, none begun), asks it to end
/// gracefully: hyper then closes an HTTP/1.1 connection after the answer
/// in progress (at once when idle) and sends an HTTP/2 one GOAWAY, serving
/// the streams opened before it. A connection that has not yet sent
/// enough to tell its protocol is first let send it: hyper would cancel
/// one still reading which protocol it speaks, dropping a request on its
/// way.
pub(crate) async fn until_stopped<I, S, E, B>(
    conn: hyper_util::server::conn::auto::Connection<'_, I, S, E>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
    first: Arc<FirstByte>,
    idle: Duration,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Future: 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    E: hyper_util::server::conn::auto::HttpServerConnExec<S::Future, B>,
{
    tokio::pin!(conn);
    let idled = tokio::select! {
        r = conn.as_mut() => return r,
        // (the guard `wait_for` returns is not Send: dropped at once)
        _ = async { drop(stopped.wait_for(|s| *s).await) } => false,
        () = first.idle_for(idle) => true,
    };
    tokio::select! {
        r = conn.as_mut() => return r,
        _ = first.wait() => {}
    }
    conn.as_mut().graceful_shutdown();
    if !idled {
        return conn.await;
    }
    // An idle HTTP/2 peer that does not answer the GOAWAY's PING (one that
    // sent its preface and nothing since) is not waited for once it has
    // been idle as long again; one with a stream opened before the GOAWAY
    // is, as long as that stream is in flight.
    tokio::select! {
        r = conn => r,
        () = first.idle_for(idle) => Ok(()),
    }
}

/// What the mirror copies in flight may hold together, in KiB (256 MiB): a
/// mirror answers no one, so a slow or stuck one must not take the memory
/// of the requests it copies.
const MIRROR_BUDGET_KIB: usize = 256 << 10;

/// The mirror budget's share for a copy of `req` (its body, its tensors and
/// 4 KiB for its task), or None when the copies in flight hold too much.
fn mirror_permit(budget: &Arc<Semaphore>, req: &ScoreRequest) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let bytes = req.body.len() + req.tensors.iter().map(|(n, t)| n.len() + t.data().byte_size()).sum::<usize>();
    let kib = u32::try_from(4 + bytes / 1024).ok()?;
    budget.clone().try_acquire_many_owned(kib).ok()
}

fn json(status: u16, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// An OIP call's answer from the module's tensors (or, for a module that
/// answered OIP JSON itself, the tensors in its body), encoded as the
/// request asked: JSON, binary, or into the shared memory regions it named.
fn oip_answer(
    endpoint: &str,
    version: &str,
    infer: &oip::InferRequest,
    out: ScoreResponse,
    regions: &crate::shm::Regions,
) -> Result<Response<Body>, ApiError> {
    let tensors = if out.tensors.is_empty() {
        // A module that answers OIP JSON itself: its outputs
        // still go to the regions the request named.
        oip::decode_response(&out.body, None).map_err(|e| {
            ApiError::new(
                500,
                "module_failed",
                format!("the module answered no tensors and its body is not an inference response: {e}"),
            )
        })?
    } else {
        out.tensors
    };
    let encoded = oip::encode_response(endpoint, version, infer, &tensors, regions).map_err(|e| ApiError::new(400, "bad_request", e.0))?;
    let binary = encoded.header_len.is_some();
    let mut r = Response::new(Full::new(Bytes::from(encoded.body)));
    let ct = if binary { "application/octet-stream" } else { "application/json" };
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(ct));
    if let Some(n) = encoded.header_len {
        r.headers_mut().insert(oip::HEADER_LENGTH, HeaderValue::from(n));
    }
    Ok(r)
}

/// A model's configuration as Triton states it (model_config.proto in its
/// JSON form), the part that describes the tensors: each input's and
/// output's `data_type` (`TYPE_` and the datatype, BYTES as Triton's
/// `TYPE_STRING`) and `dims` with the batch dimension in them, so
/// `max_batch_size` is 0 (Triton's "dims are the whole shape"); and its
/// transaction policy (`decoupled`: [`wasmscore_router::Endpoint::decoupled`]).
pub(crate) fn triton_config(endpoint: &str, m: &serde_json::Value, decoupled: bool) -> serde_json::Value {
    let tensors = |key: &str| -> Vec<serde_json::Value> {
        m[key]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                let dt = match t["datatype"].as_str().unwrap_or_default() {
                    "BYTES" => "STRING",
                    "" => "INVALID",
                    other => other,
                };
                serde_json::json!({
                    "name": t["name"],
                    "data_type": format!("TYPE_{dt}"),
                    "dims": t["shape"],
                })
            })
            .collect()
    };
    serde_json::json!({
        "name": endpoint,
        "platform": m["platform"],
        "backend": "wasmscore",
        "max_batch_size": 0,
        "input": tensors("inputs"),
        "output": tensors("outputs"),
        "model_transaction_policy": {"decoupled": decoupled},
    })
}

/// Whether `endpoint` (or its version `version`) is decoupled, as its
/// model config says.
pub(crate) fn decoupled(router: &Router, endpoint: &str, version: Option<&str>) -> bool {
    router.endpoint(endpoint).is_some_and(|ep| ep.decoupled(version))
}

/// A call that is the admin token's: refused (401) without it, saying what
/// needs it.
pub(crate) fn admin_only(admin: bool, what: &str) -> Result<(), ApiError> {
    if admin {
        return Ok(());
    }
    Err(ApiError::new(
        401,
        "unauthorized",
        format!("{what}: `Authorization: Bearer <admin token>` is needed"),
    ))
}

/// Whether an `Authorization` header's value carries the admin token.
pub(crate) fn is_admin(cfg: &ServerConfig, authorization: Option<&str>) -> bool {
    match authorization.and_then(|v| v.strip_prefix("Bearer ")) {
        Some(t) => !cfg.admin_token.is_empty() && wasmscore_router::auth::same_secret(t.as_bytes(), cfg.admin_token.as_bytes()),
        None => false,
    }
}

/// The method a known route takes, for the 405 of another method.
fn allowed(segs: &[&str]) -> Option<&'static str> {
    match segs {
        ["api", "v1", "service", _, "score"]
        | ["v2", "models", _, "infer"]
        | ["v2", "models", _, "versions", _, "infer"]
        | ["v2", "repository", "index"]
        | ["v2", "repository", "models", _, "load" | "unload"]
        | ["v2", "systemsharedmemory", "unregister"]
        | ["v2", "systemsharedmemory", "region", _, "register" | "unregister"] => Some("POST"),
        ["api", "v1", "service", _, "swagger.json"]
        | ["v2"]
        | ["v2", "health", "live" | "ready"]
        | ["v2", "models", _]
        | ["v2", "models", _, "ready" | "config" | "stats"]
        | ["v2", "models", _, "versions", _]
        | ["v2", "models", _, "versions", _, "ready" | "config" | "stats"]
        | ["v2", "systemsharedmemory", "status"]
        | ["v2", "systemsharedmemory", "region", _, "status"]
        | ["metrics"] => Some("GET"),
        ["v2", "logging"] | ["v2", "trace", "setting"] | ["v2", "models", _, "trace", "setting"] => Some("GET, POST"),
        _ => None,
    }
}

/// A call of Triton's system shared memory extension, with the region's
/// name where the route has one.
enum Shm<'a> {
    Status(Option<&'a str>),
    Register(&'a str),
    Unregister(Option<&'a str>),
}

/// The ways a request is scored.
#[derive(Clone, Copy)]
pub(crate) enum Protocol<'a> {
    /// Azure ML's `/score`: the body goes to the module as sent.
    Azure,
    /// Open Inference Protocol infer over REST, pinned to a version by its path or not.
    Oip { pinned: Option<&'a str> },
    /// Open Inference Protocol ModelInfer over gRPC.
    Grpc,
}

impl Protocol<'_> {
    fn route(self) -> &'static str {
        match self {
            Protocol::Azure => "POST /api/v1/service/{name}/score",
            Protocol::Oip { pinned: None } => "POST /v2/models/{name}/infer",
            Protocol::Oip { pinned: Some(_) } => "POST /v2/models/{name}/versions/{version}/infer",
            Protocol::Grpc => "POST /inference.GRPCInferenceService/ModelInfer",
        }
    }
}

/// A request head (its line and headers, as sent) over `limit` bytes:
/// 431 with the route's JSON error, and the connection is closed after it.
fn head_too_large<B>(req: &Request<B>, limit: usize) -> Option<Response<Body>> {
    let target = req.uri().path_and_query().map_or(1, |p| p.as_str().len());
    let line = req.method().as_str().len() + target + 12;
    let head = req.headers().iter().fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4);
    if head <= limit {
        return None;
    }
    let e = ApiError::new(
        431,
        "headers_too_large",
        format!("the request's headers are {head} bytes, more than this server's {limit} (--max-header-bytes)"),
    );
    let mut r = if req.uri().path().starts_with("/v2") {
        oip_error(e)
    } else {
        error_response(e)
    };
    r.headers_mut().insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    Some(r)
}

/// An error on an Open Inference Protocol route: `{"error": "..."}`.
fn oip_error(e: ApiError) -> Response<Body> {
    let mut r = json(
        e.status,
        serde_json::to_vec(&serde_json::json!({ "error": e.message })).expect("json"),
    );
    if let Some(s) = e.retry_after {
        r.headers_mut().insert("retry-after", HeaderValue::from(s));
    }
    if e.status == 401 {
        r.headers_mut()
            .insert(hyper::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
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
async fn read_body(req: Request<Incoming>, limit: usize, idle: Duration) -> Result<(http::request::Parts, Bytes), ApiError> {
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
    match Limited::new(IdleBody::new(body, idle), limit).collect().await {
        Ok(c) => Ok((parts, c.to_bytes())),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(too_large()),
        Err(e) if e.downcast_ref::<BodyIdle>().is_some() => Err(ApiError::new(408, "request_timeout", e.to_string())),
        Err(e) => Err(ApiError::new(400, "bad_request", format!("reading the request body: {e}"))),
    }
}

impl<P: Plane> App<P> {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        if let Some(r) = head_too_large(&req, self.cfg.max_header_bytes) {
            return r;
        }
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method.as_str(), segs.as_slice()) {
            ("POST", ["api", "v1", "service", name, "score"]) => {
                let name = name.to_string();
                self.score(req, &name, Protocol::Azure).await.unwrap_or_else(error_response)
            }
            ("GET", ["api", "v1", "service", name, "swagger.json"]) => match self.plane.model_metadata(name, None) {
                Ok(meta) => json(200, serde_json::to_vec(&crate::openapi::document(name, &meta)).expect("json")),
                Err((status, code, message)) => error_response(ApiError::new(status, code, message)),
            },
            ("POST", ["v2", "models", name, "infer"]) => {
                let name = name.to_string();
                self.score(req, &name, Protocol::Oip { pinned: None })
                    .await
                    .unwrap_or_else(oip_error)
            }
            ("POST", ["v2", "models", name, "versions", v, "infer"]) => {
                let (name, v) = (name.to_string(), v.to_string());
                self.score(req, &name, Protocol::Oip { pinned: Some(&v) })
                    .await
                    .unwrap_or_else(oip_error)
            }
            ("GET", ["v2"] | ["v2", ""]) => json(
                200,
                serde_json::to_vec(&serde_json::json!({
                    "name": "wasmscore",
                    "version": env!("CARGO_PKG_VERSION"),
                    "extensions": crate::triton::EXTENSIONS,
                }))
                .expect("json"),
            ),
            ("GET", ["v2", "health", "live"]) => json(200, br#"{"live":true}"#.to_vec()),
            ("GET", ["v2", "health", "ready"]) => {
                if self.plane.is_ready() {
                    json(200, br#"{"ready":true}"#.to_vec())
                } else {
                    oip_error(ApiError::new(503, "not_ready", "restoring deployed versions"))
                }
            }
            ("POST", ["v2", "repository", "index"]) => self.repository_index(req).await.unwrap_or_else(oip_error),
            ("POST", ["v2", "repository", "models", name, "load" | "unload"]) => oip_error(crate::triton::not_loadable(name)),
            ("GET", ["v2", "systemsharedmemory", "status"]) => self.shared_memory(req, Shm::Status(None)).await,
            ("GET", ["v2", "systemsharedmemory", "region", name, "status"]) => {
                let name = crate::shm::unescape(name);
                self.shared_memory(req, Shm::Status(Some(&name))).await
            }
            ("POST", ["v2", "systemsharedmemory", "region", name, "register"]) => {
                let name = crate::shm::unescape(name);
                self.shared_memory(req, Shm::Register(&name)).await
            }
            ("POST", ["v2", "systemsharedmemory", "unregister"]) => self.shared_memory(req, Shm::Unregister(None)).await,
            ("POST", ["v2", "systemsharedmemory", "region", name, "unregister"]) => {
                let name = crate::shm::unescape(name);
                self.shared_memory(req, Shm::Unregister(Some(&name))).await
            }
            ("GET" | "POST", ["v2", "logging"]) => self.logging(req).await.unwrap_or_else(oip_error),
            ("GET" | "POST", ["v2", "trace", "setting"]) => self.trace_settings(req, None).await.unwrap_or_else(oip_error),
            ("GET" | "POST", ["v2", "models", name, "trace", "setting"]) => {
                let name = name.to_string();
                self.trace_settings(req, Some(&name)).await.unwrap_or_else(oip_error)
            }
            ("GET", ["v2", "models", "stats"]) => self.model_stats(&req, "", None),
            ("GET", ["v2", "models", name, "stats"]) => self.model_stats(&req, name, None),
            ("GET", ["v2", "models", name, "versions", v, "stats"]) => self.model_stats(&req, name, Some(v)),
            ("GET", ["v2", "models", name]) => self.model_metadata(name, None),
            ("GET", ["v2", "models", name, "versions", v]) => self.model_metadata(name, Some(v)),
            ("GET", ["v2", "models", name, "config"]) => self.model_config(name, None),
            ("GET", ["v2", "models", name, "versions", v, "config"]) => self.model_config(name, Some(v)),
            ("GET", ["v2", "models", name, "ready"]) => self.model_ready(&req, name, None),
            ("GET", ["v2", "models", name, "versions", v, "ready"]) => self.model_ready(&req, name, Some(v)),
            ("GET", ["metrics"]) => {
                if let Err(e) = self.admin_authorized(&req) {
                    return error_response(e);
                }
                let mut r = Response::new(Full::new(Bytes::from(self.plane.metrics())));
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
                r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                r
            }
            ("GET", ["ui", ..]) => {
                let rest = path.trim_start_matches("/ui").trim_start_matches('/');
                crate::ui::file(rest).unwrap_or_else(|| error_response(ApiError::new(404, "not_found", format!("no page {path}"))))
            }
            (_, ["admin", "v1", ..]) => self.admin(req, &path).await.unwrap_or_else(error_response),
            _ => {
                // Under /v2, OIP's error body ({"error": "..."}).
                let answer = if segs.first() == Some(&"v2") { oip_error } else { error_response };
                match allowed(&segs) {
                    Some(allow) => {
                        let mut r = answer(ApiError::new(
                            405,
                            "method_not_allowed",
                            format!("{path} takes {allow}, not {method}"),
                        ));
                        r.headers_mut().insert(hyper::header::ALLOW, HeaderValue::from_static(allow));
                        r
                    }
                    None => answer(ApiError::new(404, "not_found", format!("no route for {method} {path}"))),
                }
            }
        }
    }

    /// Open Inference Protocol model readiness: 200 when the endpoint (or the
    /// version) takes traffic, else 503 with the state and the reason. The
    /// reason (a node's address, a module's init() error) only to a caller
    /// with the endpoint's key or token, or the admin token.
    fn model_ready(&self, req: &Request<Incoming>, endpoint: &str, version: Option<&str>) -> Response<Body> {
        match self.plane.model_ready(endpoint, version) {
            Ok((true, body)) => json(200, serde_json::to_vec(&body).expect("json")),
            Ok((false, mut body)) => {
                let auth = req.headers().get(hyper::header::AUTHORIZATION);
                let shown = self.plane.router().authorize(endpoint, auth.map(|v| v.as_bytes())).is_ok()
                    || is_admin(&self.cfg, auth.and_then(|v| v.to_str().ok()));
                if !shown && body.get("reason").is_some() {
                    body["reason"] = serde_json::Value::String("not ready (the reason is shown with the endpoint's key or token)".into());
                }
                // OIP's error field, beside the state and the reason.
                let why = body["reason"]
                    .as_str()
                    .or(body["state"].as_str())
                    .unwrap_or("not ready")
                    .to_string();
                body["error"] = serde_json::Value::String(format!("{endpoint} is not ready: {why}"));
                let mut r = json(503, serde_json::to_vec(&body).expect("json"));
                r.headers_mut().insert("retry-after", HeaderValue::from(1));
                r
            }
            Err((status, code, message)) => oip_error(ApiError::new(status, code, message)),
        }
    }

    /// Open Inference Protocol model metadata.
    fn model_metadata(&self, endpoint: &str, version: Option<&str>) -> Response<Body> {
        match self.plane.model_metadata(endpoint, version) {
            Ok(body) => json(200, serde_json::to_vec(&body).expect("json")),
            Err((status, code, message)) => oip_error(ApiError::new(status, code, message)),
        }
    }

    /// Triton's model configuration (its extension, tritonclient's
    /// `get_model_config`), from the model metadata.
    fn model_config(&self, endpoint: &str, version: Option<&str>) -> Response<Body> {
        match self.plane.model_metadata(endpoint, version) {
            Ok(m) => {
                let decoupled = decoupled(self.plane.router(), endpoint, version);
                json(200, serde_json::to_vec(&triton_config(endpoint, &m, decoupled)).expect("json"))
            }
            Err((status, code, message)) => oip_error(ApiError::new(status, code, message)),
        }
    }

    /// Triton's statistics (its extension, tritonclient's
    /// `get_inference_statistics`): a model's under its key or token,
    /// every model's under the admin token.
    fn model_stats(&self, req: &Request<Incoming>, endpoint: &str, version: Option<&str>) -> Response<Body> {
        let authorization = req.headers().get(hyper::header::AUTHORIZATION);
        let admin = is_admin(&self.cfg, authorization.and_then(|v| v.to_str().ok()));
        let router = self.plane.router();
        match crate::triton::stats(router, endpoint, version, authorization.map(|v| v.as_bytes()), admin) {
            Ok(model_stats) => json(
                200,
                serde_json::to_vec(&serde_json::json!({ "model_stats": model_stats })).expect("json"),
            ),
            Err(e) => oip_error(e),
        }
    }

    /// Triton's repository index, under the admin token; its body may ask
    /// for the ready versions only (`{"ready": true}`), tritonclient sends
    /// none.
    async fn repository_index(&self, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
        let authorization = req.headers().get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let admin = is_admin(&self.cfg, authorization);
        // Refused before the body is read.
        admin_only(admin, "the repository index")?;
        #[derive(serde::Deserialize, Default)]
        struct Index {
            #[serde(default)]
            ready: bool,
        }
        let (_, body) = read_body(req, 64 * 1024, self.cfg.header_read_timeout).await?;
        let asked: Index = if body.iter().all(u8::is_ascii_whitespace) {
            Index::default()
        } else {
            serde_json::from_slice(&body).map_err(|e| {
                ApiError::new(
                    400,
                    "bad_request",
                    format!("a repository index request is {{\"ready\": true|false}}: {e}"),
                )
            })?
        };
        let models = crate::triton::index(self.plane.versions(), admin, asked.ready)?;
        Ok(json(200, serde_json::to_vec(&models).expect("json")))
    }

    /// Triton's logging extension (logging.rs), under the admin token: the
    /// settings (GET), or changed by a JSON object of those to change
    /// (POST), answered with them all.
    async fn logging(&self, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
        let authorization = req.headers().get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        admin_only(is_admin(&self.cfg, authorization), "the log settings")?;
        let logging = self.cfg.logging.as_ref().ok_or_else(crate::errors::no_log_settings)?;
        if req.method() == hyper::Method::POST {
            let (_, body) = read_body(req, 64 * 1024, self.cfg.header_read_timeout).await?;
            logging.update_json(&body)?;
        }
        Ok(json(200, serde_json::to_vec(&logging.json()).expect("json")))
    }

    /// Triton's trace extension (traces.rs), under the admin token: the
    /// settings, global or a model's (GET), or changed by a JSON object of
    /// those to change (POST), answered with them all.
    async fn trace_settings(&self, req: Request<Incoming>, model: Option<&str>) -> Result<Response<Body>, ApiError> {
        let authorization = req.headers().get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        admin_only(is_admin(&self.cfg, authorization), "the trace settings")?;
        if let Some(m) = model {
            self.plane
                .model_ready(m, None)
                .map_err(|(status, code, message)| ApiError::new(status, code, message))?;
        }
        if req.method() == hyper::Method::POST {
            let (_, body) = read_body(req, 64 * 1024, self.cfg.header_read_timeout).await?;
            self.cfg.traces.update_json(model, &body)?;
        }
        Ok(json(200, serde_json::to_vec(&self.cfg.traces.json(model)).expect("json")))
    }

    /// Triton's system shared memory extension (shm.rs), under the admin
    /// token: a region's or every region's status, registering one (its
    /// body: `{"key", "offset", "byte_size"}`), unregistering one or all.
    async fn shared_memory(&self, req: Request<Incoming>, call: Shm<'_>) -> Response<Body> {
        let authorization = req.headers().get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if let Err(e) = admin_only(is_admin(&self.cfg, authorization), "shared memory regions") {
            return oip_error(e);
        }
        #[derive(serde::Deserialize)]
        struct Register {
            key: String,
            #[serde(default)]
            offset: u64,
            byte_size: u64,
        }
        let done = match call {
            Shm::Status(name) => {
                return match self.regions.status(name) {
                    Ok(all) => json(200, serde_json::to_vec(&all).expect("json")),
                    Err(e) => oip_error(e),
                }
            }
            Shm::Unregister(name) => {
                self.regions.unregister(name);
                Ok(())
            }
            Shm::Register(name) => match read_body(req, 64 * 1024, self.cfg.header_read_timeout).await {
                Err(e) => Err(e),
                Ok((_, body)) => match serde_json::from_slice::<Register>(&body) {
                    Ok(r) => self.regions.register(name, &r.key, r.offset, r.byte_size),
                    Err(e) => Err(ApiError::new(
                        400,
                        "bad_request",
                        format!("a register request is {{\"key\": \"/name\", \"offset\": 0, \"byte_size\": N}}: {e}"),
                    )),
                },
            },
        };
        match done {
            Ok(()) => json(200, b"{}".to_vec()),
            Err(e) => oip_error(e),
        }
    }

    /// Scores one request: Azure ML's `/score` (the body goes to the module
    /// as sent) or an Open Inference Protocol infer (the host decodes the
    /// tensors for the module and encodes the tensors it answers with).
    async fn score(&self, req: Request<Incoming>, endpoint: &str, protocol: Protocol<'_>) -> Result<Response<Body>, ApiError> {
        let started = std::time::SystemTime::now();
        // The headers are read in place: routing needs no copy of them.
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        let authorization = req.headers().get(hyper::header::AUTHORIZATION).map(|v| v.as_bytes());
        let pinned = match protocol {
            Protocol::Oip { pinned: Some(v) } => Some(v),
            _ => header("x-wasmscore-version"),
        };
        let routed = self
            .plane
            .router()
            .route_authorized(endpoint, authorization, pinned, header("x-wasmscore-cohort"));
        let route = match routed {
            Ok(r) => r,
            Err(e) => {
                // Read (a bounded part of) the body first, so the client
                // sees the answer instead of a reset while still sending.
                let _ = tokio::time::timeout(Duration::from_secs(1), Limited::new(req.into_body(), 64 * 1024).collect()).await;
                return Err(e.into());
            }
        };
        let (parts, body) = read_body(req, self.cfg.max_body_bytes, self.cfg.header_read_timeout).await?;
        let content_type = parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_string();
        // This hop's span of the request's trace (the client's, or a new
        // one): answered in `traceparent`, the parent of the node's work,
        // and on the module's log lines.
        let mut span = Span::child_of(parts.headers.get("traceparent").and_then(|v| v.to_str().ok()));
        let (request, infer) = match protocol {
            Protocol::Azure | Protocol::Grpc => (
                ScoreRequest {
                    body: body.to_vec(),
                    content_type,
                    tensors: Vec::new(),
                    trace_id: Some(span.trace_id.clone()),
                    responses: None,
                },
                None,
            ),
            Protocol::Oip { .. } => {
                let length = parts.headers.get(oip::HEADER_LENGTH).and_then(|v| v.to_str().ok());
                let mut infer = oip::decode(&body, length, &self.regions).map_err(|e| ApiError::new(400, "bad_request", e.0))?;
                let request = ScoreRequest {
                    body: std::mem::take(&mut infer.header),
                    content_type: "application/json".into(),
                    tensors: std::mem::take(&mut infer.inputs),
                    trace_id: Some(span.trace_id.clone()),
                    responses: None,
                };
                (request, Some(infer))
            }
        };
        let tracestate = parts.headers.get("tracestate").and_then(|v| v.to_str().ok());
        // Sampled once the request is one to run (a refused one counts for
        // no trace_rate or trace_count).
        self.cfg.traces.decide(&mut span, endpoint);
        let (version, traceparent, result) = self.dispatch(endpoint, route, request, &span, tracestate, protocol, started).await;
        let mut resp = match (result, infer) {
            // A module's own JSON answer goes out as it wrote it unless the
            // request asked for some outputs, or for them in binary.
            (Ok(out), Some(infer)) if !out.tensors.is_empty() || !infer.outputs.is_empty() || infer.binary_output => {
                // Its failure is answered as the version's too (it ran).
                oip_answer(endpoint, &version.name, &infer, out, &self.regions).unwrap_or_else(oip_error)
            }
            (Ok(out), _) => {
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
            (Err(e), None) => error_response(e.into()),
            (Err(e), Some(_)) => oip_error(e.into()),
        };
        if let Ok(v) = HeaderValue::from_str(&version.name) {
            resp.headers_mut().insert("x-wasmscore-version", v);
        }
        if let Ok(mut v) = HeaderValue::from_str(&traceparent) {
            // New on every response: HTTP/2 sends it as never indexed
            // rather than churning both ends' HPACK tables with it.
            v.set_sensitive(true);
            resp.headers_mut().insert("traceparent", v);
        }
        Ok(resp)
    }

    /// Hop 3, whatever the protocol: the mirror gets its copy, the routed
    /// version answers, and this hop's span is recorded. Returns the
    /// version that answered and the `traceparent` to answer with.
    pub(crate) async fn dispatch(
        &self,
        endpoint: &str,
        route: Route,
        request: ScoreRequest,
        span: &Span,
        tracestate: Option<&str>,
        protocol: Protocol<'_>,
        started: std::time::SystemTime,
    ) -> (Arc<Version>, String, Result<ScoreResponse, ScoreError>) {
        if let Some(mirror) = route.mirror {
            // A copy for the mirror, answered by no one: its result, slow or
            // failed, never reaches this client (the pool counts it), and
            // nor do the responses a decoupled mirror sends before it. The
            // copies in flight hold at most MIRROR_BUDGET_KIB; past it the
            // copy is skipped (and counted), not made.
            static BUDGET: std::sync::LazyLock<Arc<Semaphore>> = std::sync::LazyLock::new(|| Arc::new(Semaphore::new(MIRROR_BUDGET_KIB)));
            match mirror_permit(&BUDGET, &request) {
                Some(permit) => {
                    let mut copy = request.clone();
                    copy.responses = mirror.decoupled().then(|| wasmscore_engine::Responses(Arc::new(|_| Ok(()))));
                    let endpoint = endpoint.to_string();
                    tokio::spawn(async move {
                        let call = Call {
                            endpoint: &endpoint,
                            version: &mirror.name,
                            ..Call::default()
                        };
                        if let Err(e) = mirror.score(copy, &call).await {
                            tracing::debug!(version = %mirror.name, error = %e, "mirrored request failed");
                        }
                        drop(permit);
                    });
                }
                None => {
                    mirror.stats.mirror_skipped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(version = %mirror.name, "mirror copy skipped: the copies in flight hold their whole budget");
                }
            }
        }
        let (version, by_split) = (route.version, route.by_split);
        let traceparent = span.traceparent();
        let call = Call {
            endpoint,
            version: &version.name,
            traceparent: Some(&traceparent),
            tracestate,
        };
        let result = version.score(request, &call).await;
        if by_split {
            version.stats.split.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(spans) = &self.cfg.spans {
            let status = result.as_ref().map_or_else(|e| e.status().0, |_| 200);
            spans.record(wasmscore_remote::otlp::Finished {
                span,
                name: protocol.route(),
                start: started,
                end: std::time::SystemTime::now(),
                attributes: vec![
                    opentelemetry::KeyValue::new("http.request.method", "POST"),
                    opentelemetry::KeyValue::new("http.route", protocol.route().trim_start_matches("POST ")),
                    opentelemetry::KeyValue::new("http.response.status_code", i64::from(status)),
                    opentelemetry::KeyValue::new("wasmscore.endpoint", endpoint.to_string()),
                    opentelemetry::KeyValue::new("wasmscore.version", version.name.clone()),
                ],
                error: result.as_ref().err().filter(|_| status >= 500).map(|e| e.to_string()),
            });
        }
        (version, traceparent, result)
    }

    /// The admin token, and only it (no scoring key or token), opens the
    /// admin API and /metrics.
    fn admin_authorized(&self, req: &Request<Incoming>) -> Result<(), ApiError> {
        let given = req.headers().get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if !is_admin(&self.cfg, given) {
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
        let (_, body) = read_body(req, self.cfg.max_admin_body_bytes, self.cfg.header_read_timeout).await?;
        let r = self.plane.admin(&method, path, &query, body.to_vec()).await;
        // A deleted endpoint's own trace settings go with it: one deployed
        // later under its name starts from the global ones.
        if let ("DELETE", 200..=299) = (method.as_str(), r.status) {
            if let ["admin", "v1", "endpoints", name] = path.trim_start_matches('/').split('/').collect::<Vec<_>>()[..] {
                self.cfg.traces.clear(name);
            }
        }
        let mut resp = json(r.status, serde_json::to_vec(&r.body).expect("json"));
        // Keys, tokens and figures: never for a cache (a proxy's blanket
        // rule, a browser's disk).
        resp.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protocol_is_known_once_a_byte_leaves_http2s_preface_or_all_of_it_came() {
        let mut m = 0;
        assert!(protocol_known(&mut m, b"GET / HTTP/1.1"));
        let mut m = 0;
        assert!(!protocol_known(&mut m, b"P"), "POST or the preface");
        assert!(protocol_known(&mut m, b"OST / HTTP/1.1"));
        let mut m = 0;
        assert!(!protocol_known(&mut m, &H2_PREFACE[..10]));
        assert!(!protocol_known(&mut m, &H2_PREFACE[10..23]));
        assert!(protocol_known(&mut m, &H2_PREFACE[23..]));
        let mut m = 0;
        assert!(protocol_known(&mut m, &[H2_PREFACE, b"\0\0\0\x04"].concat()));
    }

    #[test]
    fn mirror_copies_in_flight_share_one_budget() {
        let budget = Arc::new(Semaphore::new(100));
        let of = |bytes: usize| ScoreRequest {
            body: vec![0; bytes],
            ..ScoreRequest::default()
        };
        // 4 KiB for the task and the body's KiB.
        let big = mirror_permit(&budget, &of(60 << 10)).expect("64 of 100 KiB");
        assert_eq!(budget.available_permits(), 36);
        assert!(mirror_permit(&budget, &of(40 << 10)).is_none(), "44 KiB more than the 36 left");
        let small = mirror_permit(&budget, &of(100)).expect("4 KiB");
        drop(big);
        drop(small);
        assert_eq!(budget.available_permits(), 100, "an ended copy gives its share back");
    }
}
