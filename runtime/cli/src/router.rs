//! `wasmscore router`: the client-facing API of `up` (the same server and
//! router code), with each version's replicas on `wasmscore node`
//! processes named in router.json (runtime/fleet).

use std::path::PathBuf;

use anyhow::{Context, Result};
use std::sync::Arc;

use wasmscore_fleet::{FileDiscovery, Fleet, LogScaler};
use wasmscore_operator::router::{leader, Election, KubeDiscovery, KubeScaler, Leadership};
use wasmscore_remote::NodeHttp;

use crate::up::EdgeArgs;

#[derive(clap::Args)]
pub struct RouterArgs {
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Address to listen on (loopback by default; `0.0.0.0` in a pod).
    #[arg(long, default_value = "127.0.0.1")]
    pub listen: std::net::IpAddr,
    /// Endpoints, versions and their nodes (re-read when it changes).
    #[arg(long, required_unless_present = "kube", conflicts_with = "kube")]
    pub config: Option<PathBuf>,
    /// On Kubernetes: watch the namespace's Endpoints, their Secrets and
    /// EndpointSlices (kubeconfig or the pod's service account), and scale
    /// Deployments while this router holds the Lease.
    #[arg(long)]
    pub kube: bool,
    /// The namespace to serve (default: the kubeconfig's, or the pod's).
    #[arg(long, requires = "kube")]
    pub namespace: Option<String>,
    /// The Lease routers elect their autoscaler with.
    #[arg(long, default_value = "wasmscore-router", requires = "kube")]
    pub lease: String,
    /// How long an unrenewed Lease keeps its holder.
    #[arg(long, default_value_t = 15, requires = "kube")]
    pub lease_seconds: u64,
    /// This router's name in the Lease (default: $POD_NAME, else host-pid).
    #[arg(long, requires = "kube")]
    pub identity: Option<String>,
    /// Keeps server.json, the admin token (for /metrics and
    /// /admin/v1/status) and the development TLS CA. Without it the admin
    /// token is WASMSCORE_ADMIN_TOKEN, and /metrics is closed if that is unset.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Largest scoring request body in bytes (default 100 MB, as Azure ML).
    #[arg(long, default_value_t = 100_000_000)]
    pub max_body_bytes: usize,
    /// Talk to nodes over HTTP/1.1 keep-alive connections instead of one
    /// HTTP/2 connection per node (faster on loopback; BENCHMARKS.md).
    #[arg(long)]
    pub node_http1: bool,
    /// Threads that serve connections, each on a runtime of its own with
    /// its own connection to each node (default: one per core); 0 serves
    /// them on one multi-thread runtime instead.
    #[arg(long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub edge: EdgeArgs,
    #[command(flatten)]
    pub trace: crate::up::TraceArgs,
}

pub fn run(args: RouterArgs) -> Result<()> {
    let logging = crate::up::init_logging();
    crate::up::private_files();
    let token = match &args.data_dir {
        Some(d) => {
            wasmscore_control::data_dir::make_private(d)?;
            crate::up::admin_token(d)?
        }
        None => std::env::var("WASMSCORE_ADMIN_TOKEN").unwrap_or_default(),
    };
    let tls = args.edge.tls(args.data_dir.as_deref())?;
    // The exporter's blocking HTTP client is made outside the runtime.
    let spans = args.trace.export("wasmscore-router")?;
    crate::alloc::give_back_freed_memory();
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // Started before the fleet: its node connections are one per shard.
    let shards = match threads {
        0 => None,
        n => Some(Arc::new(
            wasmscore_remote::shards::Shards::start(n).context("starting the connection threads")?,
        )),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let http = if args.node_http1 { NodeHttp::H1 } else { NodeHttp::H2 };
        let (fleet, source, election) = match &args.config {
            Some(config) => {
                let discovery = FileDiscovery::start(config.clone()).map_err(anyhow::Error::msg)?;
                let fleet = Fleet::new(Box::new(LogScaler), http);
                let f = fleet.clone();
                tokio::spawn(async move { f.run(&discovery).await });
                (fleet, config.display().to_string(), None)
            }
            None => {
                let (fleet, source, election) = on_kubernetes(&args, http).await?;
                (fleet, source, Some(election))
            }
        };
        let (listeners, info) = args.edge.listen(args.listen, args.port, tls).await?;
        let info_path = args.data_dir.as_ref().map(|d| d.join("server.json"));
        if let Some(p) = &info_path {
            std::fs::write(p, serde_json::to_vec_pretty(&info)?).with_context(|| format!("writing {}", p.display()))?;
        }
        tracing::info!(url = %info["url"], tls_url = %info["tls_url"], source, "wasmscore router is up");
        let mut cfg = args.edge.server_config(args.max_body_bytes, token);
        cfg.export_spans(spans.clone());
        cfg.shards = shards;
        cfg.logging = Some(logging);
        wasmscore_server::serve(listeners, fleet, cfg, crate::up::shutdown_signal()).await?;
        crate::up::flush_spans(spans).await;
        tracing::info!("shutting down");
        if let Some((client, namespace, election)) = election {
            leader::release(client, &namespace, &election).await;
        }
        if let Some(p) = info_path {
            let _ = std::fs::remove_file(p);
        }
        Ok(())
    })
}

/// The fleet fed by the namespace's Endpoints, Secrets and EndpointSlices,
/// its decisions applied while this router holds the Lease.
async fn on_kubernetes(args: &RouterArgs, http: NodeHttp) -> Result<(Arc<Fleet>, String, (kube::Client, String, Election))> {
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes API server to talk to (KUBECONFIG, ~/.kube/config or the pod's service account)")?;
    let namespace = args.namespace.clone().unwrap_or_else(|| client.default_namespace().to_string());
    let identity = args.identity.clone().unwrap_or_else(|| {
        std::env::var("POD_NAME").unwrap_or_else(|_| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        })
    });
    let election = Election {
        lease: args.lease.clone(),
        identity: identity.clone(),
        duration: std::time::Duration::from_secs(args.lease_seconds.max(1)),
    };
    let leadership = Leadership::default();
    tokio::spawn(leader::run(client.clone(), namespace.clone(), election.clone(), leadership.clone()));
    let scaler = KubeScaler {
        deployments: kube::Api::namespaced(client.clone(), &namespace),
        identity,
        leadership,
        runtime: tokio::runtime::Handle::current(),
    };
    let discovery = KubeDiscovery::start(client.clone(), &namespace).await.map_err(anyhow::Error::msg)?;
    let fleet = Fleet::new(Box::new(scaler), http);
    let f = fleet.clone();
    tokio::spawn(async move { f.run(&discovery).await });
    Ok((fleet, format!("kubernetes namespace {namespace}"), (client, namespace, election)))
}
