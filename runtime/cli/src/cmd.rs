//! Commands and their flags.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::{bench, build, client, up};

#[derive(Parser)]
#[command(name = "wasmscore", version, about = "Serve ONNX models behind WebAssembly scoring modules")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Start the local system (control plane, router, replicas) on 127.0.0.1:PORT.
    Up {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Where compiled modules are cached (default: DATA_DIR/cache).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Largest scoring request body in bytes (default 100 MB, as Azure ML).
        #[arg(long, default_value_t = 100_000_000)]
        max_body_bytes: usize,
    },
    /// Build a scoring module: SRC is a score.py or a Rust crate directory.
    Build {
        src: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Deploy a module and its model files as a version of endpoint NAME.
    Deploy {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        name: String,
        /// A .wasm component, a score.py or a Rust crate directory.
        #[arg(long)]
        module: PathBuf,
        /// Model files that ship with the version (loaded by file name).
        #[arg(long = "model")]
        models: Vec<PathBuf>,
        /// Version name (default: v1 for a new endpoint, else its default version).
        #[arg(long)]
        version: Option<String>,
        /// Deployment config JSON (scoring_timeout_ms, memory_gb, num_replicas, ...).
        #[arg(long)]
        dc: Option<PathBuf>,
        /// Make this version the default.
        #[arg(long)]
        default: bool,
        /// Wait until the version serves (deploys are synchronous today; accepted for compatibility).
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
    },
    /// Services (endpoints) and their versions.
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
    },
    /// Measure the request path piece by piece (see BENCHMARKS.md).
    Bench(bench::BenchArgs),
}

#[derive(Subcommand)]
pub enum ServiceCommand {
    /// List services.
    List {
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Show one service's state, versions and replicas.
    Show {
        #[arg(long)]
        data_dir: PathBuf,
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Recent log lines of a service's module.
    Logs {
        #[arg(long)]
        data_dir: PathBuf,
        name: String,
        #[arg(long)]
        version: Option<String>,
    },
    /// Delete a service and all its versions.
    Delete {
        #[arg(long)]
        data_dir: PathBuf,
        name: String,
    },
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Up {
            data_dir,
            port,
            cache_dir,
            max_body_bytes,
        } => up::run(up::UpArgs {
            data_dir,
            port,
            cache_dir,
            max_body_bytes,
        }),
        Command::Build { src, output } => {
            let info = build::build(&src, &output)?;
            println!("built {} ({} bytes) from {}", output.display(), info, src.display());
            Ok(())
        }
        Command::Deploy {
            data_dir,
            name,
            module,
            models,
            version,
            dc,
            default,
            wait: _,
            json,
        } => {
            let c = client::Client::from_data_dir(&data_dir)?;
            let config = match dc {
                Some(p) => serde_json::from_slice(&std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?)
                    .with_context(|| format!("{} is not JSON", p.display()))?,
                None => serde_json::Value::Null,
            };
            let shown = c.deploy(&name, version.as_deref(), &module, &models, config, default)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&shown)?);
            } else {
                print_summary(&shown, c.base_url());
            }
            Ok(())
        }
        Command::Service { command } => service(command),
        Command::Bench(args) => bench::run(args),
    }
}

fn service(cmd: ServiceCommand) -> Result<()> {
    match cmd {
        ServiceCommand::List { data_dir } => {
            let v = client::Client::from_data_dir(&data_dir)?.get("/admin/v1/endpoints")?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        ServiceCommand::Show { data_dir, name, json } => {
            let c = client::Client::from_data_dir(&data_dir)?;
            let v = c.get(&format!("/admin/v1/endpoints/{name}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_summary(&v, c.base_url());
            }
        }
        ServiceCommand::Logs { data_dir, name, version } => {
            let c = client::Client::from_data_dir(&data_dir)?;
            let path = match version {
                Some(v) => format!("/admin/v1/endpoints/{name}/versions/{v}/logs"),
                None => format!("/admin/v1/endpoints/{name}/logs"),
            };
            let v = c.get(&path)?;
            for line in v["lines"].as_array().into_iter().flatten() {
                println!(
                    "{} {} {}",
                    line["unix_ms"],
                    line["level"].as_str().unwrap_or(""),
                    line["message"].as_str().unwrap_or("")
                );
            }
        }
        ServiceCommand::Delete { data_dir, name } => {
            client::Client::from_data_dir(&data_dir)?.request("DELETE", &format!("/admin/v1/endpoints/{name}"), Vec::new())?;
            println!("deleted {name}");
        }
    }
    Ok(())
}

fn print_summary(v: &serde_json::Value, base: &str) {
    let name = v["name"].as_str().unwrap_or("?");
    println!(
        "service {name}: {} (default version {})",
        v["state"].as_str().unwrap_or("?"),
        v["default_version"].as_str().unwrap_or("?")
    );
    for ver in v["versions"].as_array().into_iter().flatten() {
        println!(
            "  version {}: {}  module {}  instances {}  served {}{}",
            ver["name"].as_str().unwrap_or("?"),
            ver["state"].as_str().unwrap_or("?"),
            ver["module"].as_str().unwrap_or("-"),
            ver["instances"],
            ver["served"],
            ver["last_error"].as_str().map(|e| format!("  last error: {e}")).unwrap_or_default()
        );
    }
    println!("scoring URL: {base}/api/v1/service/{name}/score");
}
