//! The management commands (`deploy`, `model`, `endpoint`/`service`,
//! `version`) on top of the admin API of a running `wasmscore up`.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use wasmscore_control::azureml;

use crate::client::Client;

/// What a version create/update/deploy may set.
#[derive(Args, Default)]
pub struct VersionArgs {
    /// A .wasm component, a score.py or a Rust crate directory.
    #[arg(long)]
    pub module: Option<PathBuf>,
    /// A model file (registered under its file stem) or a registered model
    /// (name:version, or name for its latest). Repeat for more.
    #[arg(long = "model")]
    pub models: Vec<String>,
    /// Percentage of the endpoint's live traffic (0-100).
    #[arg(long)]
    pub traffic: Option<u32>,
    /// Make this version the default (`--default false` is refused on the default: move it instead).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub default: Option<bool>,
    /// Make this version the control (`--control false` unsets it).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub control: Option<bool>,
    /// Make this version a mirror of N% of live traffic (0 stops mirroring).
    #[arg(long)]
    pub mirror: Option<u32>,
    /// Deployment config: ours (scoring_timeout_ms, memory_gb, ...) or Azure ML's deploymentconfig.json.
    #[arg(long)]
    pub dc: Option<PathBuf>,
    /// Azure ML's inferenceconfig.json (its entryScript becomes the module).
    #[arg(long)]
    pub ic: Option<PathBuf>,
    #[arg(long)]
    pub description: Option<String>,
    /// A tag, KEY=VALUE. Repeat for more; given tags replace the version's tags.
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Print each step of the build as it happens.
    #[arg(long)]
    pub wait: bool,
    /// Return once the change is committed, without waiting for the build.
    #[arg(long, conflicts_with = "wait")]
    pub no_wait: bool,
    /// Print the endpoint as JSON.
    #[arg(long)]
    pub json: bool,
    /// On a cluster (--kube): the version's OCI artifact, REF@sha256:...
    /// (`wasmscore push` prints it).
    #[arg(long)]
    pub artifact: Option<String>,
}

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Register a model file as NAME:next-version.
    Register {
        #[arg(long)]
        data_dir: PathBuf,
        file: PathBuf,
        /// Registry name (default: the file stem).
        #[arg(long)]
        name: Option<String>,
        #[arg(long = "tag")]
        tags: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long)]
        json: bool,
    },
    /// List registered models (all, or one name's versions).
    List {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show one model: NAME:VERSION, or NAME for its latest.
    Show {
        #[arg(long)]
        data_dir: PathBuf,
        id: String,
    },
    /// Delete one model version (refused while a version uses it).
    Delete {
        #[arg(long)]
        data_dir: PathBuf,
        id: String,
    },
}

#[derive(Subcommand)]
pub enum EndpointCommand {
    /// Create an empty endpoint (`version create` also creates one).
    Create {
        #[arg(long)]
        data_dir: PathBuf,
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long = "tag")]
        tags: Vec<String>,
        #[command(flatten)]
        auth: AuthArgs,
        #[arg(long)]
        json: bool,
    },
    /// Change who may score an endpoint: key auth (the default), token
    /// auth, or none. Takes effect at once.
    Update {
        #[arg(long)]
        data_dir: PathBuf,
        name: String,
        #[command(flatten)]
        auth: AuthArgs,
        #[arg(long)]
        json: bool,
    },
    /// Print the endpoint's scoring keys: {"primaryKey": ..., "secondaryKey": ...}.
    GetKeys {
        #[arg(long, required_unless_present = "kube")]
        data_dir: Option<PathBuf>,
        name: String,
        #[command(flatten)]
        cluster: crate::cluster::KubeTarget,
    },
    /// Replace the primary or secondary key; the old one is refused at once
    /// (on a cluster, once the routers see the Secret change).
    RegenKey {
        #[arg(long, required_unless_present = "kube")]
        data_dir: Option<PathBuf>,
        name: String,
        #[command(flatten)]
        cluster: crate::cluster::KubeTarget,
        #[arg(long, value_parser = ["primary", "secondary"])]
        key: String,
    },
    /// Print a token for an endpoint with token auth: {"accessToken": ..., "refreshBy": ...}.
    GetAccessToken {
        #[arg(long)]
        data_dir: PathBuf,
        name: String,
        /// How long the token is valid (default 3600, at most 86400).
        #[arg(long)]
        lifetime_seconds: Option<u64>,
    },
    /// Sign new tokens with a new key; tokens already given keep working until they expire.
    RotateTokenKey {
        #[arg(long)]
        data_dir: PathBuf,
        name: String,
    },
    /// List endpoints.
    List {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// One endpoint's state, versions, traffic and replicas.
    Show {
        #[arg(long)]
        data_dir: PathBuf,
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// The verdict: each treatment against the control (error rate,
    /// latency, the split), with always-valid p-values, in one line each.
    Compare {
        #[arg(long)]
        data_dir: PathBuf,
        name: String,
        /// The error rate the p-values and intervals are held to.
        #[arg(long, default_value_t = 0.05)]
        alpha: f64,
        #[arg(long)]
        json: bool,
    },
    /// Deploy events and the module's log lines, oldest first, of every
    /// version or of one (--version).
    Logs {
        #[arg(long)]
        data_dir: PathBuf,
        name: String,
        #[arg(long)]
        version: Option<String>,
        /// One JSON object per line: unix_ms, version, kind (deploy or
        /// log), level, message, and the request's trace_id on a module's
        /// lines.
        #[arg(long)]
        json: bool,
        /// Keep printing new entries as they come (Ctrl-C stops).
        #[arg(long, short)]
        follow: bool,
    },
    /// Delete an endpoint and all its versions.
    Delete {
        #[arg(long)]
        data_dir: PathBuf,
        name: String,
    },
}

/// Azure ML's endpoint-level auth settings.
#[derive(clap::Args, Default)]
pub struct AuthArgs {
    /// Key auth (default true for a new endpoint).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub auth_enabled: Option<bool>,
    /// Token auth instead of keys.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub token_auth_enabled: Option<bool>,
    /// Use this primary key instead of a generated one.
    #[arg(long)]
    pub primary_key: Option<String>,
    #[arg(long)]
    pub secondary_key: Option<String>,
}

impl AuthArgs {
    fn json(&self) -> Value {
        let mut o = serde_json::Map::new();
        for (k, v) in [
            ("auth_enabled", self.auth_enabled.map(Value::from)),
            ("token_auth_enabled", self.token_auth_enabled.map(Value::from)),
            ("primary_key", self.primary_key.clone().map(Value::from)),
            ("secondary_key", self.secondary_key.clone().map(Value::from)),
        ] {
            if let Some(v) = v {
                o.insert(k.into(), v);
            }
        }
        Value::Object(o)
    }
}

#[derive(Subcommand)]
pub enum VersionCommand {
    /// Create a version (and its endpoint, if new).
    Create {
        #[arg(long, required_unless_present = "kube")]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        cluster: crate::cluster::KubeTarget,
        #[arg(long)]
        endpoint: String,
        #[arg(long)]
        version: String,
        #[command(flatten)]
        args: VersionArgs,
    },
    /// Update a version: traffic and flags at once; module, models or config by a new build.
    Update {
        #[arg(long, required_unless_present = "kube")]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        cluster: crate::cluster::KubeTarget,
        #[arg(long)]
        endpoint: String,
        #[arg(long)]
        version: String,
        #[command(flatten)]
        args: VersionArgs,
    },
    /// Delete a version; deleting the default needs --new-default while others remain.
    Delete {
        #[arg(long, required_unless_present = "kube")]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        cluster: crate::cluster::KubeTarget,
        #[arg(long)]
        endpoint: String,
        #[arg(long)]
        version: String,
        #[arg(long)]
        new_default: Option<String>,
        /// Accepted as create and update take it: a delete returns once the
        /// version takes no more traffic (its replicas finish the calls
        /// they have, then stop).
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
    },
    /// List an endpoint's versions.
    List {
        #[arg(long, required_unless_present = "kube")]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        cluster: crate::cluster::KubeTarget,
        #[arg(long)]
        endpoint: String,
        #[arg(long)]
        json: bool,
    },
}

fn tags(list: &[String]) -> Result<Value> {
    let mut m = serde_json::Map::new();
    for t in list {
        let (k, v) = t.split_once('=').ok_or_else(|| anyhow!("tag {t:?} is not KEY=VALUE"))?;
        m.insert(k.to_string(), Value::String(v.to_string()));
    }
    Ok(Value::Object(m))
}

fn read_json(p: &Path) -> Result<Value> {
    serde_json::from_slice(&std::fs::read(p).with_context(|| format!("reading {}", p.display()))?)
        .with_context(|| format!("{} is not JSON", p.display()))
}

/// The built-in scoring module (runtime/builtin, built by build.rs): what a
/// new version with one model and no module runs.
pub const BUILTIN_MODULE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/builtin.wasm"));
/// Its name in `show`.
pub const BUILTIN_NAME: &str = "built-in (model only)";

/// Turns the flags (and --dc/--ic files) into the admin API's version body.
/// A `new` version with no module serves its one model through the
/// built-in module.
fn version_body(c: &Client, a: &VersionArgs, new: bool) -> Result<Value> {
    if a.artifact.is_some() {
        bail!("--artifact names what a cluster's nodes pull (with --kube); a local `up` takes --module and --model");
    }
    let mut body = serde_json::Map::new();
    let mut module = a.module.clone();
    if let Some(ic) = &a.ic {
        let m = azureml::map_inference(&read_json(ic)?).map_err(|e| anyhow!("{}: {e}", ic.display()))?;
        for line in &m.mapped {
            eprintln!("{}: mapped {line}", ic.display());
        }
        for line in &m.ignored {
            eprintln!("{}: ignored {line}", ic.display());
        }
        match (&module, m.entry_script) {
            (Some(given), Some(_)) => eprintln!("{}: entryScript overridden by --module {}", ic.display(), given.display()),
            (None, Some(script)) => module = Some(ic.parent().unwrap_or(Path::new(".")).join(script)),
            (_, None) => {}
        }
    }
    if let Some(dc) = &a.dc {
        let v = read_json(dc)?;
        if azureml::is_azureml_deployment(&v) {
            let m = azureml::map_deployment(&v).map_err(|e| anyhow!("{}: {e}", dc.display()))?;
            for line in &m.mapped {
                eprintln!("{}: mapped {line}", dc.display());
            }
            for line in &m.ignored {
                eprintln!("{}: ignored {line}", dc.display());
            }
            body.insert("config".into(), Value::Object(m.config));
            if let Some(t) = m.traffic {
                body.insert("traffic".into(), t.into());
            }
            if let Some(d) = m.default {
                body.insert("default".into(), d.into());
            }
            if let Some(cv) = m.control {
                body.insert("control".into(), cv.into());
            }
            if let Some(d) = m.description {
                body.insert("description".into(), d.into());
            }
            if let Some(t) = m.tags {
                body.insert("tags".into(), serde_json::to_value(t)?);
            }
        } else {
            body.insert("config".into(), v);
        }
    }
    if let Some(m) = &module {
        if !m.exists() {
            bail!("module {} does not exist", m.display());
        }
    }
    // Check every model file before uploading anything.
    for m in &a.models {
        if (m.contains('/') || m.ends_with(".onnx")) && !Path::new(m).is_file() {
            bail!("model file {m} does not exist");
        }
    }
    let builtin = new && module.is_none();
    if builtin && a.models.len() != 1 {
        bail!(
            "a version needs --module (a .wasm, a score.py or a crate), or exactly one --model to serve it with the built-in module (got {} models)",
            a.models.len()
        );
    }
    if let Some(m) = &module {
        let (sha, name) = c.upload_module(m)?;
        body.insert("module".into(), sha.into());
        body.insert("module_name".into(), name.into());
    }
    if builtin {
        body.insert("module".into(), c.upload_bytes(BUILTIN_MODULE.to_vec())?.into());
        body.insert("module_name".into(), BUILTIN_NAME.into());
    }
    if !a.models.is_empty() {
        let mut refs = c.model_refs(&a.models)?;
        if builtin {
            // The built-in module loads it by this name.
            refs[0]["file"] = "model.onnx".into();
        }
        body.insert("models".into(), Value::Array(refs));
    }
    for (k, v) in [("traffic", a.traffic.map(Value::from)), ("mirror", a.mirror.map(Value::from))] {
        if let Some(v) = v {
            body.insert(k.into(), v);
        }
    }
    for (k, v) in [("default", a.default), ("control", a.control)] {
        if let Some(v) = v {
            body.insert(k.into(), v.into());
        }
    }
    if let Some(d) = &a.description {
        body.insert("description".into(), d.clone().into());
    }
    if !a.tags.is_empty() {
        body.insert("tags".into(), tags(&a.tags)?);
    }
    Ok(Value::Object(body))
}

/// Sends a version change, then follows its build (unless --no-wait) and
/// prints the endpoint.
fn send_version_change(c: &Client, method: &str, path: &str, endpoint: &str, version: &str, body: Value, a: &VersionArgs) -> Result<()> {
    if a.wait {
        eprintln!("{method} {endpoint}/{version} ...");
    }
    let answer = c.request(method, path, serde_json::to_vec(&body)?)?;
    if let Some(g) = answer["generation"].as_u64() {
        if a.no_wait {
            eprintln!("{endpoint}/{version}: deploy #{g} accepted; follow it with `wasmscore service show {endpoint}`");
        } else {
            c.wait(endpoint, version, g, a.wait)?;
        }
    }
    let shown = c.get(&format!("/admin/v1/endpoints/{endpoint}"))?;
    print_service(&shown, c.base_url(), a.json)
}

pub fn deploy(data_dir: &Path, name: &str, version: Option<&str>, args: VersionArgs) -> Result<()> {
    let c = Client::from_data_dir(data_dir)?;
    let version = match version {
        Some(v) => v.to_string(),
        None => match c.get(&format!("/admin/v1/endpoints/{name}")) {
            Ok(ep) => ep["default_version"].as_str().unwrap_or("v1").to_string(),
            Err(_) => "v1".to_string(),
        },
    };
    let mut body = version_body(&c, &args, true)?;
    // A deploy replaces the whole version: models and config not given are
    // not carried over from the version it replaces.
    if let Some(o) = body.as_object_mut() {
        o.entry("models").or_insert_with(|| json!([]));
        o.entry("config").or_insert(Value::Null);
    }
    if args.wait {
        eprintln!("deploying {name}/{version} ...");
    }
    let path = format!("/admin/v1/endpoints/{name}/versions/{version}");
    send_version_change(&c, "PUT", &path, name, &version, body, &args)
}

pub fn model(cmd: ModelCommand) -> Result<()> {
    match cmd {
        ModelCommand::Register {
            data_dir,
            file,
            name,
            tags: t,
            description,
            json,
        } => {
            let c = Client::from_data_dir(&data_dir)?;
            let name = match name {
                Some(n) => n,
                None => file
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .ok_or_else(|| anyhow!("{} has no file name", file.display()))?,
            };
            let row = c.register_model(&file, &name, &tags(&t)?, &description)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&row)?);
            } else {
                println!("{}", row["id"].as_str().unwrap_or("?"));
            }
        }
        ModelCommand::List { data_dir, name, json } => {
            let c = Client::from_data_dir(&data_dir)?;
            let path = match name {
                Some(n) => format!("/admin/v1/models?name={n}"),
                None => "/admin/v1/models".to_string(),
            };
            let v = c.get(&path)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for m in v["models"].as_array().into_iter().flatten() {
                    println!(
                        "{}  {}  {} bytes  sha256 {}  {}",
                        m["id"].as_str().unwrap_or("?"),
                        m["file_name"].as_str().unwrap_or("?"),
                        m["size"],
                        m["sha256"].as_str().unwrap_or("?"),
                        m["description"].as_str().unwrap_or("")
                    );
                }
            }
        }
        ModelCommand::Show { data_dir, id } => {
            let v = Client::from_data_dir(&data_dir)?.get(&format!("/admin/v1/models/{id}"))?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        ModelCommand::Delete { data_dir, id } => {
            Client::from_data_dir(&data_dir)?.request("DELETE", &format!("/admin/v1/models/{id}"), Vec::new())?;
            println!("deleted model {id}");
        }
    }
    Ok(())
}

pub fn endpoint(cmd: EndpointCommand) -> Result<()> {
    match cmd {
        EndpointCommand::Create {
            data_dir,
            name,
            description,
            tags: t,
            auth,
            json,
        } => {
            let c = Client::from_data_dir(&data_dir)?;
            let mut body = json!({"name": name, "description": description, "tags": tags(&t)?});
            if let (Some(o), Value::Object(a)) = (body.as_object_mut(), auth.json()) {
                o.extend(a);
            }
            let v = c.request("POST", "/admin/v1/endpoints", serde_json::to_vec(&body)?)?;
            print_service(&v, c.base_url(), json)?;
        }
        EndpointCommand::Update {
            data_dir,
            name,
            auth,
            json,
        } => {
            let c = Client::from_data_dir(&data_dir)?;
            let v = c.request("PATCH", &format!("/admin/v1/endpoints/{name}"), serde_json::to_vec(&auth.json())?)?;
            print_service(&v, c.base_url(), json)?;
        }
        EndpointCommand::GetKeys { cluster, name, .. } if cluster.kube => crate::cluster::keys(&cluster, &name, None)?,
        EndpointCommand::RegenKey { cluster, name, key, .. } if cluster.kube => crate::cluster::keys(&cluster, &name, Some(&key))?,
        EndpointCommand::GetKeys { data_dir, name, .. } => {
            let data_dir = data_dir.ok_or_else(|| anyhow!("--data-dir is needed (or --kube)"))?;
            let v = Client::from_data_dir(&data_dir)?.get(&format!("/admin/v1/endpoints/{name}/keys"))?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        EndpointCommand::RegenKey { data_dir, name, key, .. } => {
            let data_dir = data_dir.ok_or_else(|| anyhow!("--data-dir is needed (or --kube)"))?;
            let c = Client::from_data_dir(&data_dir)?;
            let v = c.request(
                "POST",
                &format!("/admin/v1/endpoints/{name}/regen-key"),
                serde_json::to_vec(&json!({"key": key}))?,
            )?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        EndpointCommand::GetAccessToken {
            data_dir,
            name,
            lifetime_seconds,
        } => {
            let c = Client::from_data_dir(&data_dir)?;
            let q = lifetime_seconds.map(|s| format!("?lifetime_seconds={s}")).unwrap_or_default();
            let v = c.request("POST", &format!("/admin/v1/endpoints/{name}/token{q}"), Vec::new())?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        EndpointCommand::RotateTokenKey { data_dir, name } => {
            let c = Client::from_data_dir(&data_dir)?;
            let v = c.request("POST", &format!("/admin/v1/endpoints/{name}/rotate-token-key"), Vec::new())?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        EndpointCommand::List { data_dir, json } => {
            let c = Client::from_data_dir(&data_dir)?;
            let v = c.get("/admin/v1/endpoints")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for s in v["services"].as_array().into_iter().flatten() {
                    println!(
                        "{}  {}  default {}  traffic {}",
                        s["name"].as_str().unwrap_or("?"),
                        s["state"].as_str().unwrap_or("?"),
                        s["default_version"].as_str().unwrap_or("-"),
                        s["traffic"]
                    );
                }
            }
        }
        EndpointCommand::Show { data_dir, name, json } => {
            let c = Client::from_data_dir(&data_dir)?;
            let v = c.get(&format!("/admin/v1/endpoints/{name}"))?;
            print_service(&v, c.base_url(), json)?;
        }
        EndpointCommand::Logs {
            data_dir,
            name,
            version,
            json,
            follow,
        } => {
            let c = Client::from_data_dir(&data_dir)?;
            let path = match version {
                Some(v) => format!("/admin/v1/endpoints/{name}/versions/{v}/logs"),
                None => format!("/admin/v1/endpoints/{name}/logs"),
            };
            let mut printed = LogCursor::default();
            loop {
                for entry in printed.new_entries(&c.get(&path)?) {
                    if json {
                        println!("{entry}");
                    } else {
                        println!(
                            "{} {} {} {}",
                            entry["unix_ms"],
                            entry["version"].as_str().unwrap_or(""),
                            entry["level"].as_str().unwrap_or(""),
                            entry["message"].as_str().unwrap_or("")
                        );
                    }
                }
                if !follow {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
        }
        EndpointCommand::Compare {
            data_dir,
            name,
            alpha,
            json,
        } => {
            let v = Client::from_data_dir(&data_dir)?.get(&format!("/admin/v1/endpoints/{name}/compare?alpha={alpha}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let verdict = &v["verdict"];
            println!("control: {}", verdict["control"].as_str().unwrap_or("?"));
            for c in verdict["comparisons"].as_array().into_iter().flatten() {
                let (e, l) = (&c["error_rate"], &c["latency"]);
                let f = |x: &Value| x.as_f64().unwrap_or(f64::NAN);
                println!(
                    "  {}: requests {} vs {}; errors {:.2}% vs {:.2}% (p {:.4}); p50 {:.3} vs {:.3} ms, p99 {:.3} vs {:.3} ms, P(slower) {:.3} (p {:.4})",
                    c["treatment"].as_str().unwrap_or("?"),
                    c["requests"][0],
                    c["requests"][1],
                    f(&e["control"]) * 100.0,
                    f(&e["treatment"]) * 100.0,
                    f(&e["p_adjusted"]),
                    f(&l["p50_ms"][0]),
                    f(&l["p50_ms"][1]),
                    f(&l["p99_ms"][0]),
                    f(&l["p99_ms"][1]),
                    f(&l["slower"]["treatment"]),
                    f(&l["slower"]["p_adjusted"]),
                );
            }
            for line in verdict["lines"].as_array().into_iter().flatten() {
                println!("{}", line.as_str().unwrap_or(""));
            }
        }
        EndpointCommand::Delete { data_dir, name } => {
            Client::from_data_dir(&data_dir)?.request("DELETE", &format!("/admin/v1/endpoints/{name}"), Vec::new())?;
            println!("deleted {name}");
        }
    }
    Ok(())
}

/// What `logs` printed so far: each poll prints what is newer, once. Lines
/// are kept in a bounded ring by the server, so entries are told apart by
/// time, version and text.
#[derive(Default)]
struct LogCursor {
    last_ms: u64,
    at_last_ms: std::collections::HashSet<String>,
}

impl LogCursor {
    /// The entries of a logs answer not printed yet, oldest first.
    fn new_entries(&mut self, v: &Value) -> Vec<Value> {
        let mut all = Vec::new();
        for ver in v["versions"].as_array().into_iter().flatten() {
            let name = ver["version"].clone();
            for e in ver["events"].as_array().into_iter().flatten() {
                all.push(json!({"unix_ms": e["unix_ms"], "version": name, "kind": "deploy", "level": "deploy", "message": e["message"]}));
            }
            for l in ver["lines"].as_array().into_iter().flatten() {
                let mut e = json!({"unix_ms": l["unix_ms"], "version": name, "kind": "log", "level": l["level"], "message": l["message"]});
                if let Some(t) = l["trace_id"].as_str() {
                    e["trace_id"] = t.into();
                }
                all.push(e);
            }
        }
        all.sort_by_key(|e| e["unix_ms"].as_u64().unwrap_or(0));
        let mut out = Vec::new();
        for e in all {
            let ms = e["unix_ms"].as_u64().unwrap_or(0);
            let key = e.to_string();
            if ms < self.last_ms || (ms == self.last_ms && self.at_last_ms.contains(&key)) {
                continue;
            }
            if ms > self.last_ms {
                self.last_ms = ms;
                self.at_last_ms.clear();
            }
            self.at_last_ms.insert(key);
            out.push(e);
        }
        out
    }
}

pub fn version(cmd: VersionCommand) -> Result<()> {
    let on_cluster = match &cmd {
        VersionCommand::Create { cluster, .. }
        | VersionCommand::Update { cluster, .. }
        | VersionCommand::Delete { cluster, .. }
        | VersionCommand::List { cluster, .. } => cluster.kube,
    };
    if on_cluster {
        return crate::cluster::version(cmd);
    }
    let local = |d: Option<PathBuf>| d.ok_or_else(|| anyhow!("--data-dir is needed (or --kube)"));
    match cmd {
        VersionCommand::Create {
            data_dir,
            endpoint,
            version,
            args,
            ..
        } => {
            let c = Client::from_data_dir(&local(data_dir)?)?;
            let mut body = version_body(&c, &args, true)?;
            body["name"] = version.clone().into();
            let path = format!("/admin/v1/endpoints/{endpoint}/versions");
            send_version_change(&c, "POST", &path, &endpoint, &version, body, &args)
        }
        VersionCommand::Update {
            data_dir,
            endpoint,
            version,
            args,
            ..
        } => {
            let c = Client::from_data_dir(&local(data_dir)?)?;
            let body = version_body(&c, &args, false)?;
            let path = format!("/admin/v1/endpoints/{endpoint}/versions/{version}");
            send_version_change(&c, "PATCH", &path, &endpoint, &version, body, &args)
        }
        VersionCommand::Delete {
            data_dir,
            endpoint,
            version,
            new_default,
            json,
            ..
        } => {
            let c = Client::from_data_dir(&local(data_dir)?)?;
            let mut path = format!("/admin/v1/endpoints/{endpoint}/versions/{version}");
            if let Some(d) = new_default {
                path.push_str(&format!("?new_default={d}"));
            }
            let v = c.request("DELETE", &path, Vec::new())?;
            print_service(&v, c.base_url(), json)
        }
        VersionCommand::List {
            data_dir, endpoint, json, ..
        } => {
            let c = Client::from_data_dir(&local(data_dir)?)?;
            let v = c.get(&format!("/admin/v1/endpoints/{endpoint}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v["versions"])?);
                return Ok(());
            }
            print_service(&v, c.base_url(), false)
        }
    }
}

fn print_service(v: &Value, base: &str, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
        return Ok(());
    }
    let name = v["name"].as_str().unwrap_or("?");
    println!(
        "service {name}: {} (default version {})",
        v["state"].as_str().unwrap_or("?"),
        v["default_version"].as_str().unwrap_or("-")
    );
    for ver in v["versions"].as_array().into_iter().flatten() {
        let mut flags = Vec::new();
        if ver["is_default"] == true {
            flags.push("default".to_string());
        }
        if ver["is_control"] == true {
            flags.push("control".to_string());
        }
        if ver["mirror"].as_u64().unwrap_or(0) > 0 {
            flags.push(format!("mirror {}%", ver["mirror"]));
        }
        println!(
            "  version {}: {}  traffic {}% (serves {}%){}  module {}  served {}{}",
            ver["name"].as_str().unwrap_or("?"),
            ver["state"].as_str().unwrap_or("?"),
            ver["traffic"],
            ver["effective_traffic"],
            if flags.is_empty() {
                String::new()
            } else {
                format!(" [{}]", flags.join(", "))
            },
            ver["module"].as_str().unwrap_or("-"),
            ver["served"],
            ver["error"]
                .as_str()
                .or(ver["last_error"].as_str())
                .map(|e| format!("  error: {e}"))
                .unwrap_or_default()
        );
        if !ver["replicas"].is_null() {
            let a = &ver["autoscale"];
            let scaling = if a["enabled"] == true {
                format!(
                    "autoscale {}..{} at {}%, desired {}, utilization {}",
                    a["min_replicas"],
                    a["max_replicas"],
                    a["target_utilization"],
                    a["desired_replicas"],
                    a["utilization"]
                        .as_f64()
                        .map(|u| format!("{:.0}%", u * 100.0))
                        .unwrap_or("-".into())
                )
            } else {
                "fixed count".to_string()
            };
            println!(
                "    replicas {} (target {}; {}), busy {}, queued {}, overloaded {}, replaced {}; {}",
                ver["replicas"],
                ver["target_replicas"],
                scaling,
                ver["busy"],
                ver["queued"],
                ver["overloaded"],
                ver["replaced"],
                match ver["health"]["ready"].as_bool() {
                    Some(false) => format!("not ready: {}", ver["health"]["reason"].as_str().unwrap_or("?")),
                    _ => "ready".to_string(),
                }
            );
        }
        print_devices(&ver["devices"]);
    }
    println!("scoring URL: {base}/api/v1/service/{name}/score");
    println!(
        "auth: {}",
        match v["auth"]["mode"].as_str() {
            Some("key") => format!("keys (`wasmscore service get-keys {name}`, send `Authorization: Bearer <key>`)"),
            Some("token") => format!("tokens (`wasmscore service get-access-token {name}`)"),
            Some("none") => "off (auth_enabled = false)".to_string(),
            _ => "?".to_string(),
        }
    );
    Ok(())
}

/// A version's device line and its usage per device.
fn print_devices(d: &Value) {
    if d.is_null() {
        return;
    }
    let mut line = format!("    device {}", d["ops"].as_str().unwrap_or("?"));
    if d["asked"] != d["ops"] {
        line += &format!(" (asked for {})", d["asked"].as_str().unwrap_or("?"));
    }
    if d["models"] != d["ops"] {
        line += &format!(", models on {}", d["models"].as_str().unwrap_or("?"));
    }
    if let Some(fb) = d["fallback"].as_str() {
        line += &format!(", fallback {fb}");
    }
    println!("{line}");
    for u in d["usage"].as_array().into_iter().flatten() {
        let mut parts = vec![format!(
            "{} ops ({} failed), device time {:.3} ms, wall {:.3} ms",
            u["op_calls"],
            u["op_errors"],
            u["device_seconds"].as_f64().unwrap_or(0.0) * 1e3,
            u["op_wall_seconds"].as_f64().unwrap_or(0.0) * 1e3
        )];
        if u["device_cycles"].as_u64().unwrap_or(0) > 0 {
            parts.push(format!("{} cycles", u["device_cycles"]));
        }
        if u["fell_back"].as_u64().unwrap_or(0) > 0 {
            parts.push(format!("{} ops sent to the fallback", u["fell_back"]));
        }
        if u["inference_calls"].as_u64().unwrap_or(0) > 0 {
            parts.push(format!(
                "{} model runs, {:.3} ms; {} outputs kept on the device, {} read back to the host",
                u["inference_calls"],
                u["inference_wall_seconds"].as_f64().unwrap_or(0.0) * 1e3,
                u["kept_on_device"],
                u["host_reads"]
            ));
        }
        println!("      on {}: {}", u["device"].as_str().unwrap_or("?"), parts.join(", "));
    }
    for note in d["fallbacks_at_deploy"].as_array().into_iter().flatten() {
        println!("      fallback at deploy: {}", note.as_str().unwrap_or(""));
    }
}

/// `wasmscore devices`.
pub fn devices(data_dir: &Path, json: bool) -> Result<()> {
    let v = Client::from_data_dir(data_dir)?.get("/admin/v1/devices")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    for d in v["devices"].as_array().into_iter().flatten() {
        println!(
            "{:<12} {:<7} {}",
            d["name"].as_str().unwrap_or(""),
            d["kind"].as_str().unwrap_or(""),
            d["description"].as_str().unwrap_or("")
        );
    }
    for d in v["unavailable"].as_array().into_iter().flatten() {
        println!(
            "{:<12} {:<7} not available: {}",
            d["name"].as_str().unwrap_or(""),
            "-",
            d["why"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

/// What `push` sends: the module (none: the built-in one, for one model),
/// each model (a file, or a registered `name:version` read from the data
/// dir's blobs and checked against its sha256) and the deployment config.
pub fn push_contents(
    module: Option<&Path>,
    models: &[String],
    dc: Option<&Path>,
    data_dir: Option<&Path>,
) -> Result<crate::artifact::Push> {
    use sha2::Digest;
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let (module_name, bytes) = match module {
        Some(module) => (
            module.file_name().and_then(|n| n.to_str()).unwrap_or("module.wasm").to_string(),
            read(module)?,
        ),
        None => {
            anyhow::ensure!(
                models.len() == 1,
                "push needs --module, or exactly one --model to serve it with the built-in module (got {} models)",
                models.len()
            );
            ("builtin.wasm".to_string(), BUILTIN_MODULE.to_vec())
        }
    };
    anyhow::ensure!(
        bytes.starts_with(b"\0asm"),
        "{module_name} is not a WebAssembly component (build one with `wasmscore build`)"
    );
    let mut out = crate::artifact::Push {
        module_name,
        module: bytes,
        models: Vec::new(),
        config: None,
    };
    for m in models {
        let p = Path::new(m);
        if p.is_file() {
            let name = p.file_name().and_then(|n| n.to_str()).context("a model file needs a name")?;
            out.models.push((name.to_string(), read(p)?));
            continue;
        }
        let dir = data_dir.with_context(|| format!("--model {m}: no such file; a registered model (name:version) needs --data-dir"))?;
        let row = Client::from_data_dir(dir)?.get(&format!("/admin/v1/models/{m}"))?;
        let (file, sha) = (row["file_name"].as_str().unwrap_or(m), row["sha256"].as_str().unwrap_or(""));
        let bytes = read(&dir.join("blobs").join(sha))?;
        anyhow::ensure!(
            hex::encode(sha2::Sha256::digest(&bytes)) == sha,
            "model {m}: its blob does not match sha256 {sha}"
        );
        out.models.push((file.to_string(), bytes));
    }
    if module.is_none() {
        // The built-in module loads it by this name.
        out.models[0].0 = "model.onnx".into();
    }
    // A node refuses what `up` would: checked here, before the push.
    for (i, (name, _)) in out.models.iter().enumerate() {
        wasmscore_rules::valid_name("model file", name)?;
        anyhow::ensure!(
            !out.models[..i].iter().any(|(n, _)| n == name),
            "two models are named {name}: a module loads each by its name"
        );
    }
    if let Some(p) = dc {
        let bytes = read(p)?;
        serde_json::from_slice::<serde_json::Value>(&bytes).with_context(|| format!("{}: not JSON", p.display()))?;
        out.config = Some(bytes);
    }
    Ok(out)
}
