//! Commands and their flags.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::{artifact, bench, build, manage, node, router, up};

#[derive(Parser)]
#[command(name = "wasmscore", version, about = "Serve ONNX models behind WebAssembly scoring modules")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Start the local system (control plane, router, replicas) on 127.0.0.1:PORT.
    Up(up::UpArgs),
    /// Build a scoring module: SRC is a score.py or a Rust crate directory.
    Build {
        src: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Deploy a module and its model files: creates endpoint NAME with its
    /// first version, or replaces a version of an existing one without
    /// failing requests. Waits until the version serves (or failed).
    Deploy {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        name: String,
        /// Version name (default: v1 for a new endpoint, else its default version).
        #[arg(long)]
        version: Option<String>,
        #[command(flatten)]
        args: manage::VersionArgs,
    },
    /// The model registry: files registered as name:version.
    Model {
        #[command(subcommand)]
        command: manage::ModelCommand,
    },
    /// Endpoints (services): create, list, show, logs, delete.
    #[command(visible_alias = "service")]
    Endpoint {
        #[command(subcommand)]
        command: manage::EndpointCommand,
    },
    /// An endpoint's versions and their rollout: traffic, default, control, mirror.
    Version {
        #[command(subcommand)]
        command: manage::VersionCommand,
    },
    /// Serve one version to routers (on Kubernetes: a pod of the version's
    /// Deployment): pull it by digest, build it as `up` does, answer the
    /// internal scoring protocol over HTTP/2; SIGTERM drains.
    Node(node::NodeArgs),
    /// Route endpoints to versions on `wasmscore node` processes, by the
    /// rollout rules, auth and limits of `up` (router.json, re-read when it changes).
    Router(router::RouterArgs),
    /// A token for an endpoint of a router whose router.json gives it token
    /// auth, signed with its last signing key: {"accessToken", "refreshBy", ...}.
    RouterToken {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        endpoint: String,
        /// How long the token is valid (default 3600, at most 86400).
        #[arg(long)]
        lifetime_seconds: Option<u64>,
    },
    /// Push a version's module and model files to an OCI registry as one
    /// artifact; prints its digest.
    Push {
        /// HOST:PORT/REPO:TAG
        #[arg(long)]
        registry: String,
        /// The component (.wasm); none: the built-in module serves the
        /// one --model.
        #[arg(long)]
        module: Option<PathBuf>,
        /// A model file, or a registered model (name:version) of the `up`
        /// at --data-dir. Repeat for more.
        #[arg(long = "model")]
        models: Vec<String>,
        /// A deployment config to ship with the version (JSON, `up`'s keys).
        #[arg(long)]
        dc: Option<PathBuf>,
        /// Where registered models (name:version) are looked up.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Plain HTTP (registries on loopback only).
        #[arg(long)]
        insecure: bool,
        /// A CA certificate (PEM) to trust for the registry.
        #[arg(long)]
        registry_ca: Option<PathBuf>,
        /// Print {"digest": "sha256:..."}.
        #[arg(long)]
        json: bool,
    },
    /// Measure the request path piece by piece (see BENCHMARKS.md).
    Bench(bench::BenchArgs),
    /// The devices a running `up` has (cpu, cuda, plugins) and the ones it
    /// has not, with why.
    Devices {
        #[arg(long)]
        data_dir: PathBuf,
        /// Print the JSON as the admin API returns it.
        #[arg(long)]
        json: bool,
    },
    /// Device plugins (plugins/abi): check one against the CPU reference.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Compile a component into a compile cache and exit (what `up` and
    /// `node` run as a child process for each new module).
    #[command(hide = true)]
    CompileComponent {
        component: PathBuf,
        #[arg(long)]
        cache_dir: PathBuf,
    },
    /// Kubernetes: the Endpoint custom resource (`crd` prints its
    /// CustomResourceDefinition; deploy/crd.json is this output).
    Operator {
        #[command(subcommand)]
        command: OperatorCommand,
    },
}

#[derive(Subcommand)]
pub enum OperatorCommand {
    /// Print the CustomResourceDefinition of Endpoint (wasmscore.dev/v1alpha1), as JSON (which kubectl applies as YAML).
    Crd,
    /// Run the operator (deploy/operator.yaml): reconcile Endpoints into a
    /// Deployment of `wasmscore node` pods and a headless Service per
    /// version, and the endpoint's Secret; the status says what serves.
    Run {
        /// Watch one namespace (default: all, as deploy/rbac.yaml allows).
        #[arg(long)]
        namespace: Option<String>,
        /// The image node pods run.
        #[arg(long, default_value = "wasmscore:dev")]
        image: String,
        /// How long a node drains after SIGTERM.
        #[arg(long, default_value_t = 10)]
        drain_seconds: u32,
        /// A directory on each Kubernetes node that node pods share as their
        /// compile cache (hostPath): new pods skip compiling.
        #[arg(long)]
        compile_cache_host_path: Option<String>,
        /// The router's Service in each namespace (the host of the scoring
        /// URL an Endpoint's status gives).
        #[arg(long, default_value = "wasmscore-router")]
        router_service: String,
        /// A label of the router pods, KEY=VALUE (repeat for more; default:
        /// deploy/router.yaml's app.kubernetes.io/name=wasmscore-router).
        /// Each Endpoint's NetworkPolicy lets only pods with all of them
        /// reach its nodes.
        #[arg(long = "router-pod-label", value_name = "KEY=VALUE", value_parser = wasmscore_operator::desired::label)]
        router_pod_labels: Vec<(String, String)>,
    },
}

#[derive(Subcommand)]
pub enum PluginCommand {
    /// The conformance kit: every op x dtype the plugin declares, over
    /// shapes and edge cases, against the CPU reference; a pass/fail table;
    /// exits non-zero on any failure.
    Check {
        /// The plugin's shared library.
        path: PathBuf,
        /// Float outputs may differ from the reference by this fraction of
        /// the largest reference magnitude (a quantizing device needs some).
        #[arg(long, default_value_t = 0.05)]
        tolerance: f64,
        /// JSON handed to the plugin's initialize.
        #[arg(long, default_value = "{}")]
        config: String,
    },
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Up(args) => up::run(args),
        Command::Build { src, output } => {
            let info = build::build(&src, &output)?;
            println!("built {} ({} bytes) from {}", output.display(), info, src.display());
            Ok(())
        }
        Command::Deploy {
            data_dir,
            name,
            version,
            args,
        } => manage::deploy(&data_dir, &name, version.as_deref(), args),
        Command::Model { command } => manage::model(command),
        Command::Endpoint { command } => manage::endpoint(command),
        Command::Version { command } => manage::version(command),
        Command::Bench(args) => bench::run(args),
        Command::Node(args) => node::run(args),
        Command::CompileComponent { component, cache_dir } => {
            let bytes = std::fs::read(&component).with_context(|| format!("reading {}", component.display()))?;
            match wasmscore_engine::compile_to_cache(&wasmscore_engine::EngineConfig::new(cache_dir), &bytes) {
                Ok(_) => Ok(()),
                Err(wasmscore_engine::EngineError::InvalidComponent(m)) => {
                    // The last line is the parent's message (compile_in_child).
                    eprintln!("{}", m.replace('\n', " "));
                    std::process::exit(wasmscore_engine::COMPILE_INVALID_EXIT)
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Router(args) => router::run(args),
        Command::RouterToken {
            config,
            endpoint,
            lifetime_seconds,
        } => {
            let bytes = std::fs::read(&config).with_context(|| format!("reading {}", config.display()))?;
            let spec = wasmscore_fleet::FleetSpec::parse_file(&bytes).map_err(anyhow::Error::msg)?;
            let ep = spec
                .endpoints
                .iter()
                .find(|e| e.name == endpoint)
                .with_context(|| format!("{} has no endpoint {endpoint:?}", config.display()))?;
            let wasmscore_fleet::AuthSpec::Token { signing_keys } = &ep.auth else {
                anyhow::bail!("endpoint {endpoint:?} does not use token auth in {}", config.display());
            };
            let key = signing_keys.last().expect("checked: at least one").key();
            let lifetime = wasmscore_control::token_lifetime(lifetime_seconds.map(std::time::Duration::from_secs))?;
            println!("{}", wasmscore_control::issue_token(&key, &endpoint, lifetime));
            Ok(())
        }
        Command::Push {
            registry,
            module,
            models,
            dc,
            data_dir,
            insecure,
            registry_ca,
            json,
        } => {
            let push = manage::push_contents(module.as_deref(), &models, dc.as_deref(), data_dir.as_deref())?;
            let opts = artifact::RegistryOptions {
                insecure,
                ca_file: registry_ca,
            };
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let digest = rt.block_on(artifact::push(&registry, push, &opts))?;
            if json {
                println!("{}", serde_json::json!({"digest": digest}));
            } else {
                let repo = registry
                    .rsplit_once(':')
                    .filter(|(r, _)| r.contains('/'))
                    .map(|(r, _)| r)
                    .unwrap_or(&registry);
                println!("pushed {registry}\ndigest {digest}\nnode:  wasmscore node --artifact {repo}@{digest} --port PORT");
            }
            Ok(())
        }
        Command::Devices { data_dir, json } => manage::devices(&data_dir, json),
        Command::Operator {
            command: OperatorCommand::Crd,
        } => {
            println!("{}", wasmscore_operator::crd_json());
            Ok(())
        }
        Command::Operator {
            command:
                OperatorCommand::Run {
                    namespace,
                    image,
                    drain_seconds,
                    compile_cache_host_path,
                    router_service,
                    router_pod_labels,
                },
        } => {
            crate::up::init_logging();
            let defaults = wasmscore_operator::desired::Settings::default();
            let settings = wasmscore_operator::desired::Settings {
                image,
                drain_seconds,
                compile_cache: compile_cache_host_path,
                router_service,
                router_pods: if router_pod_labels.is_empty() {
                    defaults.router_pods.clone()
                } else {
                    router_pod_labels.into_iter().collect()
                },
                ..defaults
            };
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(wasmscore_operator::reconcile::run(settings, namespace))?;
            Ok(())
        }
        Command::Plugin {
            command: PluginCommand::Check { path, tolerance, config },
        } => {
            let plugin = std::sync::Arc::new(wasmscore_device_plugin::Plugin::load(&path, &config)?);
            println!("{}: {}", plugin.name, plugin.description);
            let report = wasmscore_device_plugin::check::check(&plugin, tolerance);
            print!("{}", report.table());
            anyhow::ensure!(
                report.passed(),
                "{} of {} checks failed",
                report.rows.iter().filter(|r| !r.passed).count(),
                report.rows.len()
            );
            Ok(())
        }
    }
}
