//! `wasmscore node`: one version, served to routers over the internal
//! protocol (runtime/remote). The version is built exactly as `up` builds
//! one (the same control plane code: compile cache, sessions, sandbox,
//! limits, deployment config keys and defaults), with its own autoscaling
//! off: across nodes, replicas are the router's business, so a node is one
//! replica (`replica_max_concurrent_requests` instances).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use wasmscore_control::{Control, Mode, ModelRef, VersionRequest};
use wasmscore_engine::{EngineConfig, ScoringEngine};
use wasmscore_remote::node::Node;
use wasmscore_router::{Replicas, Router};

use crate::artifact;

#[derive(clap::Args)]
pub struct NodeArgs {
    /// The version's artifact: HOST:PORT/REPO@sha256:DIGEST (or :TAG),
    /// pushed by `wasmscore push`.
    #[arg(long, required_unless_present = "module")]
    pub artifact: Option<String>,
    /// Instead of an artifact: a module and model files on this machine.
    #[arg(long, conflicts_with = "artifact")]
    pub module: Option<PathBuf>,
    #[arg(long = "model", requires = "module")]
    pub models: Vec<PathBuf>,
    /// Deployment config (JSON, `up`'s keys) for --module.
    #[arg(long, requires = "module")]
    pub dc: Option<PathBuf>,
    #[arg(long)]
    pub port: u16,
    /// Address to listen on. Loopback by default: the internal protocol
    /// carries no credentials (the router checks keys and tokens), so a
    /// node on a network must be reachable by routers only (on Kubernetes:
    /// a NetworkPolicy; `--listen 0.0.0.0` in the pod).
    #[arg(long, default_value = "127.0.0.1")]
    pub listen: std::net::IpAddr,
    /// Blobs, the compile cache and scratch state (default: a new temporary
    /// directory, removed at exit).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Where compiled modules are cached (default: DATA_DIR/cache).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Plain HTTP to the registry (loopback registries in tests).
    #[arg(long)]
    pub insecure: bool,
    /// A CA certificate (PEM) to trust for the registry.
    #[arg(long)]
    pub registry_ca: Option<PathBuf>,
    /// The endpoint and version names it serves, for logs and its ready
    /// route (default: node, v1). Given, a router sends it only that
    /// endpoint's version's requests; not given, its names are not checked.
    #[arg(long)]
    pub endpoint: Option<String>,
    #[arg(long)]
    pub version: Option<String>,
    /// The container's CPU limit is the version's `cpu_cores_limit` (the
    /// operator sets it on the pod): the node makes no cgroup of its own.
    #[arg(long)]
    pub cpu_limited_by_container: bool,
    /// Load device plugins from this directory (as `up --plugin-dir`).
    #[arg(long)]
    pub plugin_dir: Option<PathBuf>,
    /// Longest a drain (SIGTERM) waits for requests in flight.
    #[arg(long, default_value_t = 300)]
    pub drain_seconds: u64,
    /// Deployment config keys (a JSON object) over the artifact's own: what
    /// the operator passes from the Endpoint's `config`.
    #[arg(long)]
    pub config: Option<String>,
    /// Collected model data goes under DATA_DIR/collected (give --data-dir
    /// a lasting folder to keep it).
    #[command(flatten)]
    pub collect: crate::up::CollectArgs,
    #[command(flatten)]
    pub trace: crate::up::TraceArgs,
}

/// What the version is made of, once fetched.
pub struct Fetched {
    pub module: Vec<u8>,
    pub module_name: String,
    pub models: Vec<(String, Vec<u8>)>,
    pub config: serde_json::Value,
    /// The manifest's digest, for an artifact from a registry.
    pub artifact: Option<String>,
}

pub fn run(args: NodeArgs) -> Result<()> {
    let logging = crate::up::init_logging();
    crate::up::private_files();
    let _scratch;
    let data_dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => {
            let t = tempfile::Builder::new().prefix("wasmscore-node").tempdir()?;
            let p = t.path().to_path_buf();
            _scratch = t;
            p
        }
    };
    wasmscore_control::data_dir::make_private(&data_dir)?;
    // The node's store is scratch, in a folder of its own (so pointing
    // --data-dir at an `up` data dir loses nothing): the artifact is the
    // truth, and a restart builds what it is given.
    let collected = (data_dir.join("collected"), args.collect.settings()?);
    let data_dir = data_dir.join("node");
    wasmscore_control::data_dir::make_private(&data_dir)?;
    // The exporter's blocking HTTP client is made outside the runtime.
    let spans = args.trace.export("wasmscore-node")?;
    crate::alloc::give_back_freed_memory();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((args.listen, args.port))
            .await
            .with_context(|| format!("binding {}:{}", args.listen, args.port))?;
        let addr = listener.local_addr()?;
        let endpoint = args.endpoint.clone().unwrap_or_else(|| "node".into());
        let version = args.version.clone().unwrap_or_else(|| "v1".into());
        let mut node = Node::new(&endpoint, &version);
        node.spans = spans.clone();
        node.logging = Some(logging);
        let node = Arc::new(node);
        tracing::info!(%addr, "node listening; ready once the version is built and its replicas ran init()");
        let mut serving = tokio::spawn(wasmscore_remote::node::serve(
            listener,
            node.clone(),
            crate::up::shutdown_signal(),
            Duration::from_secs(args.drain_seconds),
        ));
        let setup = setup(&args, &node, &data_dir, collected, &endpoint, &version);
        // A SIGTERM while pulling or building ends the node at once.
        let control = tokio::select! {
            control = setup => control?,
            _ = &mut serving => {
                tracing::info!("stopped before the version was ready");
                return Ok(());
            }
        };
        serving.await?;
        // Drained: what the requests collected is written now.
        tokio::task::spawn_blocking(move || control.shutdown()).await?;
        crate::up::flush_spans(spans).await;
        Ok(())
    });
    // A build still running on a blocking thread (SIGTERM while building)
    // does not hold the exit.
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

/// Pulls (or reads) the version, builds it and hands its pool to the node.
async fn setup(
    args: &NodeArgs,
    node: &Arc<Node>,
    data_dir: &std::path::Path,
    collected: (PathBuf, wasmscore_control::CollectSettings),
    endpoint: &str,
    version: &str,
) -> Result<Arc<Control>> {
    let (endpoint, version) = (endpoint.to_string(), version.to_string());
    {
        let started = Instant::now();
        let mut fetched = fetch(args, node).await?;
        if let Some(over) = &args.config {
            fetched.config = overlay(fetched.config, over)?;
        }
        if args.cpu_limited_by_container {
            if let Some(c) = fetched.config.as_object_mut() {
                c.remove("cpu_cores_limit");
            }
        }
        node.set_identity(wasmscore_remote::wire::Identity {
            endpoint: args.endpoint.clone(),
            version: args.version.clone(),
            artifact: fetched.artifact.clone(),
        });
        node.set_status(format!("building {endpoint}/{version}: compile, sessions, init()"));
        let control = {
            let (data_dir, args_plugins, cache) = (data_dir.to_path_buf(), args.plugin_dir.clone(), args.cache_dir.clone());
            let (endpoint, version) = (endpoint.clone(), version.clone());
            tokio::task::spawn_blocking(move || build(&data_dir, collected, cache, args_plugins, &endpoint, &version, fetched)).await??
        };
        let pool = match control.router().route(&endpoint, Some(&version), None).map(|r| r.version) {
            Ok(v) => match &v.replicas {
                Replicas::Local(p) => p.clone(),
                Replicas::Remote(_) => bail!("a node's version is local"),
            },
            Err(e) => bail!("{endpoint}/{version} built but is not routable: {e}"),
        };
        let readiness = {
            let (control, endpoint, version) = (control.clone(), endpoint.clone(), version.clone());
            Box::new(move || match control.ready(&endpoint, Some(&version)) {
                Ok((true, _)) => Ok(()),
                Ok((false, body)) => Err(format!(
                    "{} ({})",
                    body["state"].as_str().unwrap_or("not ready"),
                    body["reason"].as_str().unwrap_or("")
                )),
                Err(e) => Err(e.to_string()),
            })
        };
        if let Ok(m) = control.metadata(&endpoint, Some(&version)) {
            node.set_signature(m["inputs"].clone(), m["outputs"].clone());
        }
        node.serve_pool(pool, readiness);
        tracing::info!(
            endpoint,
            version,
            ms = started.elapsed().as_millis() as u64,
            "ready: replicas ran init()"
        );
        Ok(control)
    }
}

/// Gets the version's files: from the registry (retrying while it cannot
/// be reached, saying why in the log and on the ready route) or from disk.
async fn fetch(args: &NodeArgs, node: &Node) -> Result<Fetched> {
    if let Some(module) = &args.module {
        let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let config = match &args.dc {
            Some(p) => serde_json::from_slice(&read(p)?).with_context(|| format!("{}: not JSON", p.display()))?,
            None => serde_json::Value::Null,
        };
        let mut models = Vec::new();
        for m in &args.models {
            let name = m.file_name().and_then(|n| n.to_str()).context("a model file needs a name")?;
            models.push((name.to_string(), read(m)?));
        }
        return Ok(Fetched {
            module: read(module)?,
            module_name: module.file_name().and_then(|n| n.to_str()).unwrap_or("module.wasm").to_string(),
            models,
            config,
            artifact: None,
        });
    }
    let reference = args.artifact.as_deref().expect("clap: artifact or module");
    let opts = artifact::RegistryOptions {
        insecure: args.insecure,
        ca_file: args.registry_ca.clone(),
    };
    let mut backoff = Duration::from_millis(250);
    loop {
        node.set_status(format!("pulling {reference}"));
        match artifact::pull(reference, &opts).await {
            Ok(f) => return Ok(f),
            Err(artifact::PullError::Unreachable(why)) => {
                tracing::warn!(
                    artifact = reference,
                    retry_in_ms = backoff.as_millis() as u64,
                    "registry unreachable: {why}"
                );
                node.set_status(format!(
                    "pulling {reference}: registry unreachable ({why}); retrying in {} ms",
                    backoff.as_millis()
                ));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(artifact::PullError::Refused(why)) => bail!("artifact {reference}: {why}"),
        }
    }
}

/// Builds the version the way `up` does and waits for its replicas' init().
fn build(
    data_dir: &std::path::Path,
    (collected, collect): (PathBuf, wasmscore_control::CollectSettings),
    cache_dir: Option<PathBuf>,
    plugin_dir: Option<PathBuf>,
    endpoint: &str,
    version: &str,
    f: Fetched,
) -> Result<Arc<Control>> {
    let devices = crate::up::devices(plugin_dir.as_deref())?;
    let cache = cache_dir.unwrap_or_else(|| data_dir.join("cache"));
    let engine = Arc::new(ScoringEngine::new(
        EngineConfig::new(cache).with_compiler(crate::up::compiler_exe()?),
    )?);
    let control = Arc::new(Control::open_collecting(
        data_dir,
        engine,
        devices,
        Arc::new(Router::new()),
        &collected,
        collect,
        wasmscore_control::Kept::Nothing,
    )?);
    control.restore()?;
    let module = control.put_blob(&f.module)?;
    let mut models = Vec::new();
    for (file, bytes) in &f.models {
        models.push(ModelRef {
            file: file.clone(),
            sha256: control.put_blob(bytes)?,
            model: None,
        });
    }
    let req = VersionRequest {
        module: Some(module),
        module_name: Some(f.module_name),
        models: Some(models),
        config: Some(node_config(f.config)?),
        ..VersionRequest::default()
    };
    control.change_version(endpoint, version, req, Mode::Put)?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let (ready, body) = control.ready(endpoint, Some(version))?;
        if ready {
            return Ok(control);
        }
        if body["state"] == "Failed" {
            let show = control.show(endpoint)?;
            let error = show["versions"][0]["error"].as_str().unwrap_or("failed").to_string();
            bail!("{endpoint}/{version} failed to build: {error}");
        }
        if Instant::now() > deadline {
            bail!("{endpoint}/{version} was not ready within 600 s: {body}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The artifact's config with OVER's keys on top (OVER: a JSON object).
fn overlay(config: serde_json::Value, over: &str) -> Result<serde_json::Value> {
    let over: serde_json::Value = serde_json::from_str(over).context("--config is not JSON")?;
    let serde_json::Value::Object(over) = over else {
        bail!("--config must be a JSON object");
    };
    let mut c = match config {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    c.extend(over);
    Ok(serde_json::Value::Object(c))
}

/// Keys that belong to the router across nodes are taken out; the node
/// runs one replica with autoscaling off.
fn node_config(config: serde_json::Value) -> Result<serde_json::Value> {
    let mut c = match config {
        serde_json::Value::Null => serde_json::Map::new(),
        serde_json::Value::Object(m) => m,
        other => bail!("the deployment config must be a JSON object, got {other}"),
    };
    c.retain(|k, _| !(k.starts_with("autoscale_") || k == "num_replicas"));
    c.insert("autoscale_enabled".into(), false.into());
    c.insert("num_replicas".into(), 1.into());
    Ok(serde_json::Value::Object(c))
}
