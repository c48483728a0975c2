//! `wasmscore up`: the whole local system in one process.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use wasmscore_control::{Capacity, Control};
use wasmscore_device_ort::OrtCpu;
use wasmscore_engine::{EngineConfig, ScoringEngine};
use wasmscore_router::Router;
use wasmscore_server::ServerConfig;
use wasmscore_tensor::Devices;

#[derive(clap::Args)]
pub struct UpArgs {
    #[arg(long)]
    pub data_dir: PathBuf,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Where compiled modules are cached (default: DATA_DIR/cache).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Largest scoring request body in bytes (default 100 MB, as Azure ML).
    #[arg(long, default_value_t = 100_000_000)]
    pub max_body_bytes: usize,
    /// CPU cores that replicas' cpu_cores are counted against when the
    /// autoscaler adds replicas (default: this machine's cores).
    #[arg(long)]
    pub cpu_capacity: Option<f64>,
    /// GB that replicas' memory_gb are counted against (default: this
    /// machine's memory).
    #[arg(long)]
    pub memory_capacity_gb: Option<f64>,
    /// Load every device plugin (*.so) in this directory; NAME.json beside
    /// NAME.so is its config. One that fails to load is refused with a
    /// message and the rest load.
    #[arg(long)]
    pub plugin_dir: Option<PathBuf>,
    #[command(flatten)]
    pub edge: EdgeArgs,
    #[command(flatten)]
    pub collect: CollectArgs,
    #[command(flatten)]
    pub trace: TraceArgs,
}

/// Where spans go.
#[derive(clap::Args, Debug)]
pub struct TraceArgs {
    /// Export each sampled request's span over OTLP/HTTP (protobuf) to this
    /// collector, e.g. http://127.0.0.1:4318 (spans go to its /v1/traces).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

impl TraceArgs {
    /// The exporter, named SERVICE, when an endpoint was given.
    pub fn export(&self, service: &str) -> Result<Option<Arc<wasmscore_remote::otlp::SpanExport>>> {
        // reqwest (shared with the registry client) is built with rustls
        // and no provider: ring is the one this binary has.
        let _ = rustls::crypto::ring::default_provider().install_default();
        self.otlp_endpoint
            .as_deref()
            .map(|e| {
                wasmscore_remote::otlp::SpanExport::start(e, service)
                    .map(Arc::new)
                    .map_err(anyhow::Error::msg)
            })
            .transpose()
    }
}

/// Exports the spans still queued (at shutdown), off the async threads.
pub async fn flush_spans(spans: Option<Arc<wasmscore_remote::otlp::SpanExport>>) {
    if let Some(s) = spans {
        let _ = tokio::task::spawn_blocking(move || s.shutdown()).await;
    }
}

/// Where collected model data goes (versions with `collect_model_data`).
#[derive(clap::Args, Debug)]
pub struct CollectArgs {
    /// Close each collected-data file (making it readable) this many
    /// seconds after it was opened; files also close at the hour's end and
    /// on shutdown.
    #[arg(long, default_value_t = 300.0)]
    pub collect_rotate_seconds: f64,
    /// Bytes of collected data waiting for the writer, at most; records
    /// past it are dropped (and counted), so scoring never waits.
    #[arg(long, default_value_t = 64 << 20)]
    pub collect_queue_bytes: usize,
}

impl CollectArgs {
    pub fn settings(&self) -> Result<wasmscore_control::CollectSettings> {
        let s = self.collect_rotate_seconds;
        anyhow::ensure!(s > 0.0 && s <= 3600.0, "--collect-rotate-seconds must be in (0, 3600], got {s}");
        Ok(wasmscore_control::CollectSettings {
            rotate_after: std::time::Duration::from_secs_f64(s),
            max_queued_bytes: self.collect_queue_bytes,
            ..Default::default()
        })
    }
}

/// TLS and the limits at the edge.
#[derive(clap::Args, Debug)]
pub struct EdgeArgs {
    /// Serve HTTPS on this port (0: any free port) besides plain HTTP.
    #[arg(long)]
    pub tls_port: Option<u16>,
    /// PEM certificate chain (leaf first) for HTTPS.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Make (once) a development CA and certificate for localhost under
    /// DATA_DIR/tls; clients trust DATA_DIR/tls/dev-ca.pem.
    #[arg(long, conflicts_with = "tls_cert")]
    pub tls_self_signed: bool,
    /// Serve HTTPS only (needs --tls-port); the CLI then talks TLS too.
    #[arg(long, requires = "tls_port")]
    pub no_plain_http: bool,
    /// Serve the Open Inference Protocol over gRPC on this port (0: any
    /// free port); over TLS when HTTPS is configured.
    #[arg(long)]
    pub grpc_port: Option<u16>,
    /// Open connections at most; more get 503 at once.
    #[arg(long, default_value_t = 4096)]
    pub max_connections: usize,
    /// Milliseconds a client has to send a request's headers (or finish the TLS handshake).
    #[arg(long, default_value_t = 30_000)]
    pub header_read_timeout_ms: u64,
    /// Largest request head in bytes (431 beyond it).
    #[arg(long, default_value_t = 32 * 1024)]
    pub max_header_bytes: usize,
}

/// A TLS server config and the CA clients should trust, if any.
type Tls = Option<(Arc<rustls::ServerConfig>, Option<PathBuf>)>;

impl EdgeArgs {
    /// The TLS setup the flags ask for (`--tls-self-signed` keeps its
    /// development CA under DATA_DIR/tls).
    pub fn tls(&self, data_dir: Option<&Path>) -> Result<Tls> {
        let tls = match (&self.tls_cert, &self.tls_key, self.tls_self_signed) {
            (Some(c), Some(k), _) => Some((wasmscore_server::tls::server_config(c, k)?, None)),
            (_, _, true) => {
                let dir = data_dir.context("--tls-self-signed keeps its CA in --data-dir; give one")?;
                let dev = wasmscore_server::tls::dev_cert(&dir.join("tls"))?;
                Some((wasmscore_server::tls::server_config(&dev.cert, &dev.key)?, Some(dev.ca)))
            }
            _ => None,
        };
        anyhow::ensure!(
            tls.is_none() || self.tls_port.is_some(),
            "--tls-cert/--tls-self-signed need --tls-port (0 for any free port)"
        );
        anyhow::ensure!(
            tls.is_some() || self.tls_port.is_none(),
            "--tls-port needs --tls-cert and --tls-key, or --tls-self-signed"
        );
        anyhow::ensure!(self.max_connections > 0, "--max-connections must be at least 1");
        Ok(tls)
    }

    /// Binds the plain and TLS ports on `ip`; returns them with what
    /// server.json says about them (pid, url, tls_url, tls_addr, tls_ca,
    /// grpc_addr, grpc_tls).
    pub async fn listen(&self, ip: std::net::IpAddr, port: u16, tls: Tls) -> Result<(wasmscore_server::Listeners, serde_json::Value)> {
        let mut listeners = wasmscore_server::Listeners::default();
        let mut info = serde_json::json!({"pid": std::process::id()});
        if !self.no_plain_http {
            let l = tokio::net::TcpListener::bind((ip, port))
                .await
                .with_context(|| format!("binding {ip}:{port}"))?;
            info["url"] = format!("http://{}", l.local_addr()?).into();
            listeners.plain = Some(l);
        }
        if let Some(port) = self.grpc_port {
            let l = tokio::net::TcpListener::bind((ip, port))
                .await
                .with_context(|| format!("binding {ip}:{port} for gRPC"))?;
            info["grpc_addr"] = l.local_addr()?.to_string().into();
            info["grpc_tls"] = tls.is_some().into();
            listeners.grpc = Some((l, tls.as_ref().map(|(cfg, _)| wasmscore_server::tls::grpc_config(cfg))));
        }
        if let (Some((cfg, ca)), Some(port)) = (tls, self.tls_port) {
            let l = tokio::net::TcpListener::bind((ip, port))
                .await
                .with_context(|| format!("binding {ip}:{port} for TLS"))?;
            let a = l.local_addr()?;
            info["tls_url"] = format!("https://localhost:{}", a.port()).into();
            info["tls_addr"] = a.to_string().into();
            let trust = ca.or_else(|| self.tls_cert.clone());
            if let Some(p) = trust {
                info["tls_ca"] = std::fs::canonicalize(&p).unwrap_or(p).display().to_string().into();
            }
            listeners.tls = Some((l, cfg));
        }
        Ok((listeners, info))
    }

    pub fn server_config(&self, max_body_bytes: usize, admin_token: String) -> ServerConfig {
        ServerConfig {
            max_body_bytes,
            admin_token,
            max_connections: self.max_connections,
            header_read_timeout: std::time::Duration::from_millis(self.header_read_timeout_ms.max(1)),
            max_header_bytes: self.max_header_bytes,
            ..ServerConfig::default()
        }
    }
}

/// The devices: the CPU (ONNX Runtime must load), CUDA when this build
/// has it and the machine a GPU, and the plugins in --plugin-dir. A device
/// that is not there is recorded with why, so a version asking for it is
/// refused with that reason.
pub fn devices(plugin_dir: Option<&Path>) -> Result<Devices> {
    let mut devices = Devices::new();
    let ort_library = wasmscore_device_ort::find_onnxruntime()?;
    let cpu = Arc::new(OrtCpu::new(&ort_library)?);
    devices.add(cpu.clone()).map_err(anyhow::Error::msg)?;
    match wasmscore_device_ort::cuda::discover(&cpu, &ort_library) {
        Ok(cuda) => {
            tracing::info!(device = "cuda", "{}", cuda.description());
            devices.add(cuda).map_err(anyhow::Error::msg)?;
        }
        Err(why) => {
            tracing::info!("no cuda device: {why}");
            devices.mark_unavailable("cuda", why);
        }
    }
    if let Some(dir) = plugin_dir {
        match wasmscore_device_plugin::load_dir(dir, &mut devices) {
            Ok(l) => tracing::info!(
                loaded = l.loaded.len(),
                refused = l.refused.len(),
                dir = %dir.display(),
                "device plugins"
            ),
            // The host serves without them; versions asking for one are refused with this.
            Err(e) => tracing::error!("{e}; no device plugins loaded"),
        }
    }
    Ok(devices)
}

/// Everything this process creates is readable by its user only (files 600,
/// directories 700), whatever umask it was started with: the data directory
/// holds keys, signing secrets and model files (see data_dir.rs in control).
pub fn private_files() {
    // SAFETY: umask(2) cannot fail; it only swaps the process's file mode mask.
    unsafe {
        libc::umask(0o077);
    }
}

/// The admin token: made at first start, kept in DATA_DIR/admin.token (0600).
pub fn admin_token(data_dir: &Path) -> Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join("admin.token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        return Ok(t.trim().to_string());
    }
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    let token = hex::encode(bytes);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(token.as_bytes())?;
    f.sync_all()?;
    Ok(token)
}

/// Logs to stderr; `WASMSCORE_LOG` filters (default info). The filter
/// can be changed while the process serves, through Triton's logging
/// extension (`/v2/logging`, gRPC LogSettings): the handle for it.
pub fn init_logging() -> Arc<wasmscore_server::logging::Logging> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("WASMSCORE_LOG").unwrap_or_else(|_| "info".into());
    let max = filter.max_level_hint();
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .init();
    Arc::new(wasmscore_server::logging::Logging::new(
        max,
        Box::new(move |directive| {
            let filter = EnvFilter::try_new(directive).map_err(|e| e.to_string())?;
            handle.reload(filter).map_err(|e| e.to_string())
        }),
    ))
}

pub fn run(args: UpArgs) -> Result<()> {
    let logging = init_logging();
    private_files();
    wasmscore_control::data_dir::make_private(&args.data_dir)?;
    let token = admin_token(&args.data_dir)?;
    let devices = devices(args.plugin_dir.as_deref())?;
    let cache_dir = args.cache_dir.clone().unwrap_or_else(|| args.data_dir.join("cache"));
    let engine = Arc::new(ScoringEngine::new(EngineConfig::new(cache_dir).with_compiler(compiler_exe()?))?);
    let router = Arc::new(Router::new());
    let collected = args.data_dir.join("collected");
    let control = Arc::new(Control::open_collecting(
        &args.data_dir,
        engine,
        devices,
        router,
        &collected,
        args.collect.settings()?,
        wasmscore_control::Kept::Store,
    )?);
    let machine = Capacity::of_machine();
    let capacity = Capacity {
        cpu_cores: args.cpu_capacity.unwrap_or(machine.cpu_cores),
        memory_gb: args.memory_capacity_gb.unwrap_or(machine.memory_gb),
    };
    anyhow::ensure!(
        capacity.cpu_cores > 0.0 && capacity.memory_gb > 0.0,
        "--cpu-capacity and --memory-capacity-gb must be positive"
    );
    control.set_capacity(capacity);
    tracing::info!(
        cpu_cores = capacity.cpu_cores,
        memory_gb = format!("{:.1}", capacity.memory_gb),
        "capacity that autoscaled replicas are counted against"
    );

    let tls = args.edge.tls(Some(&args.data_dir))?;
    // The exporter's blocking HTTP client is made outside the runtime.
    let spans = args.trace.export("wasmscore")?;
    crate::alloc::give_back_freed_memory();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let (listeners, info) = args.edge.listen(std::net::Ipv4Addr::LOCALHOST.into(), args.port, tls).await?;
        let info_path = args.data_dir.join("server.json");
        std::fs::write(&info_path, serde_json::to_vec_pretty(&info)?).with_context(|| format!("writing {}", info_path.display()))?;
        tracing::info!(url = %info["url"], tls_url = %info["tls_url"], data_dir = %args.data_dir.display(), "wasmscore is up; restoring deployed versions");
        {
            let control = control.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = control.restore() {
                    tracing::error!(error = %e, "restoring deployed versions failed");
                }
                tracing::info!("ready");
            });
        }
        let mut cfg = args.edge.server_config(args.max_body_bytes, token);
        cfg.export_spans(spans.clone());
        cfg.logging = Some(logging);
        wasmscore_server::serve(listeners, control.clone(), cfg, shutdown_signal()).await?;
        tracing::info!("shutting down");
        // Every request answered: what they collected is written now, before
        // the spans' export, which waits on a collector that may hang.
        tokio::task::spawn_blocking(move || control.shutdown()).await?;
        flush_spans(spans).await;
        let _ = std::fs::remove_file(&info_path);
        Ok(())
    })
}

pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

/// This executable, which `up` and `node` run as `compile-component` to
/// compile new modules outside the serving process.
pub fn compiler_exe() -> Result<PathBuf> {
    std::env::current_exe().context("finding this executable (the module compiler runs it)")
}
