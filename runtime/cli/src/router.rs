//! `wasmscore router`: the client-facing API of `up` (the same server and
//! router code), with each version's replicas on `wasmscore node`
//! processes named in router.json (runtime/fleet).

use std::path::PathBuf;

use anyhow::{Context, Result};
use wasmscore_fleet::{FileDiscovery, Fleet, LogScaler};
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
    #[arg(long)]
    pub config: PathBuf,
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
    #[command(flatten)]
    pub edge: EdgeArgs,
}

pub fn run(args: RouterArgs) -> Result<()> {
    crate::up::init_logging();
    crate::up::private_files();
    let token = match &args.data_dir {
        Some(d) => {
            wasmscore_control::data_dir::make_private(d)?;
            crate::up::admin_token(d)?
        }
        None => std::env::var("WASMSCORE_ADMIN_TOKEN").unwrap_or_default(),
    };
    let tls = args.edge.tls(args.data_dir.as_deref())?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let discovery = FileDiscovery::start(args.config.clone()).map_err(anyhow::Error::msg)?;
        let http = if args.node_http1 { NodeHttp::H1 } else { NodeHttp::H2 };
        let fleet = Fleet::new(Box::new(LogScaler), http);
        {
            let fleet = fleet.clone();
            tokio::spawn(async move { fleet.run(&discovery).await });
        }
        let (listeners, info) = args.edge.listen(args.listen, args.port, tls).await?;
        let info_path = args.data_dir.as_ref().map(|d| d.join("server.json"));
        if let Some(p) = &info_path {
            std::fs::write(p, serde_json::to_vec_pretty(&info)?).with_context(|| format!("writing {}", p.display()))?;
        }
        tracing::info!(url = %info["url"], tls_url = %info["tls_url"], config = %args.config.display(), "wasmscore router is up");
        let cfg = args.edge.server_config(args.max_body_bytes, token);
        wasmscore_server::serve(listeners, fleet, cfg, crate::up::shutdown_signal()).await?;
        tracing::info!("shutting down");
        if let Some(p) = info_path {
            let _ = std::fs::remove_file(p);
        }
        Ok(())
    })
}
