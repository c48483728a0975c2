//! `wasmscore version create|update|delete --kube`: the same commands and
//! rollout rules as local mode, applied to an `Endpoint` resource. The
//! operator does the rest (Deployments, Services, keys); this waits until
//! its status has caught up and prints it.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::Value;
use wasmscore_control::azureml;
use wasmscore_operator::crd::{Auth, Endpoint, EndpointSpec, VersionSpec, VersionState};
use wasmscore_operator::desired;
use wasmscore_rules::rollout::{self, Rollout, RolloutChange};

use crate::manage::{VersionArgs, VersionCommand};

/// `--kube [--namespace NS]` on a version command.
#[derive(clap::Args, Clone, Default)]
pub struct KubeTarget {
    /// Apply the change to the Endpoint resource on the cluster of the
    /// kubeconfig (KUBECONFIG or ~/.kube/config) instead of a local `up`.
    #[arg(long)]
    pub kube: bool,
    /// The Endpoint's namespace (default: the kubeconfig's).
    #[arg(long, requires = "kube")]
    pub namespace: Option<String>,
}

/// How long a change may take to show in the Endpoint's status.
const WAIT: Duration = Duration::from_secs(300);

pub fn version(cmd: VersionCommand) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(run(cmd))
}

async fn run(cmd: VersionCommand) -> Result<()> {
    let (target, endpoint) = match &cmd {
        VersionCommand::Create { cluster, endpoint, .. }
        | VersionCommand::Update { cluster, endpoint, .. }
        | VersionCommand::Delete { cluster, endpoint, .. }
        | VersionCommand::List { cluster, endpoint, .. } => (cluster.clone(), endpoint.clone()),
    };
    let client = Client::try_default()
        .await
        .context("no Kubernetes API server to talk to (KUBECONFIG or ~/.kube/config)")?;
    let ns = target.namespace.unwrap_or_else(|| client.default_namespace().to_string());
    let api: Api<Endpoint> = Api::namespaced(client, &ns);
    let (json, wait, version) = match &cmd {
        VersionCommand::Create { args, version, .. } | VersionCommand::Update { args, version, .. } => {
            (args.json, !args.no_wait, Some(version.clone()))
        }
        VersionCommand::Delete { json, .. } => (*json, true, None),
        VersionCommand::List { json, .. } => {
            let ep = api
                .get(&endpoint)
                .await
                .with_context(|| format!("endpoint {endpoint} in namespace {ns}"))?;
            return print(&ep, *json);
        }
    };
    // Read, change, write back with the resourceVersion read: a concurrent
    // change makes the write fail with 409, and the change is made again
    // on what is there now.
    let mut attempts = 0;
    let written = loop {
        attempts += 1;
        let current = api.get_opt(&endpoint).await?;
        let Some(next) = change(&cmd, &endpoint, current.as_ref())? else {
            api.delete(&endpoint, &DeleteParams::default()).await?;
            println!("endpoint {endpoint}: its last version is deleted, and with it the Endpoint");
            return Ok(());
        };
        desired::check(&endpoint, &next.spec).map_err(|e| anyhow!("{e}"))?;
        let sent = match &current {
            None => api.create(&PostParams::default(), &next).await,
            Some(_) => api.replace(&endpoint, &PostParams::default(), &next).await,
        };
        match sent {
            Ok(ep) => break ep,
            Err(kube::Error::Api(s)) if s.code == 409 && attempts < 5 => continue,
            Err(kube::Error::Api(s)) => bail!("the API server refused the change ({} {}): {}", s.code, s.reason, s.message),
            Err(e) => return Err(e.into()),
        }
    };
    if !wait {
        return print(&written, json);
    }
    let ep = settle(&api, &endpoint, written.metadata.generation.unwrap_or(0), version.as_deref()).await?;
    print(&ep, json)
}

/// The Endpoint after the command, or None when its last version goes.
fn change(cmd: &VersionCommand, endpoint: &str, current: Option<&Endpoint>) -> Result<Option<Endpoint>> {
    let mut spec = current.map(|e| e.spec.clone()).unwrap_or(EndpointSpec {
        auth: Auth::default(),
        versions: Vec::new(),
    });
    let rollouts = desired::rollouts(&spec);
    let next: Vec<Rollout> = match cmd {
        VersionCommand::Create { version, args, .. } => {
            let (config, change) = version_fields(args)?;
            let artifact = args.artifact.clone().ok_or_else(|| {
                anyhow!("--artifact is needed: on a cluster a version is an OCI artifact (`wasmscore push` prints its reference)")
            })?;
            let next = rollout::create(&rollouts, version, &change)?;
            spec.versions.push(VersionSpec {
                name: version.clone(),
                artifact,
                traffic: 0,
                default: false,
                control: false,
                mirror: 0,
                config: config.unwrap_or_default(),
            });
            next
        }
        VersionCommand::Update { version, args, .. } => {
            if current.is_none() {
                bail!("no endpoint {endpoint:?}");
            }
            let (config, change) = version_fields(args)?;
            let next = rollout::update(&rollouts, version, &change)?;
            let v = spec.versions.iter_mut().find(|v| &v.name == version).expect("the rules found it");
            if let Some(a) = &args.artifact {
                v.artifact = a.clone();
            }
            if let Some(c) = config {
                v.config = c;
            }
            next
        }
        VersionCommand::Delete { version, new_default, .. } => {
            if current.is_none() {
                bail!("no endpoint {endpoint:?}");
            }
            let next = rollout::delete(&rollouts, version, new_default.as_deref())?;
            spec.versions.retain(|v| &v.name != version);
            if spec.versions.is_empty() {
                return Ok(None);
            }
            next
        }
        VersionCommand::List { .. } => unreachable!("list changes nothing"),
    };
    for v in &mut spec.versions {
        let r = next.iter().find(|r| r.name == v.name).expect("the rules keep every version");
        v.traffic = r.traffic;
        v.default = r.is_default;
        v.control = r.is_control;
        v.mirror = r.mirror;
    }
    Ok(Some(match current {
        Some(ep) => Endpoint {
            spec,
            status: None,
            metadata: ep.metadata.clone(),
        },
        None => Endpoint::new(endpoint, spec),
    }))
}

/// The config (from --dc: ours, or Azure ML's deploymentconfig.json
/// mapped as locally) and the rollout flags.
fn version_fields(a: &VersionArgs) -> Result<(Option<serde_json::Map<String, Value>>, RolloutChange)> {
    if a.module.is_some() || !a.models.is_empty() || a.ic.is_some() {
        bail!("--module, --model and --ic are for a local `up`; on a cluster `wasmscore push` them and give --artifact REF@sha256:...");
    }
    let mut change = RolloutChange {
        traffic: a.traffic,
        default: a.default,
        control: a.control,
        mirror: a.mirror,
    };
    let Some(dc) = &a.dc else {
        return Ok((None, change));
    };
    let v: Value = serde_json::from_slice(&std::fs::read(dc).with_context(|| format!("reading {}", dc.display()))?)
        .with_context(|| format!("{} is not JSON", dc.display()))?;
    if !azureml::is_azureml_deployment(&v) {
        let Value::Object(config) = v else {
            bail!("{}: a deployment config is a JSON object", dc.display());
        };
        return Ok((Some(config), change));
    }
    let m = azureml::map_deployment(&v).map_err(|e| anyhow!("{}: {e}", dc.display()))?;
    for line in &m.mapped {
        eprintln!("{}: mapped {line}", dc.display());
    }
    for line in &m.ignored {
        eprintln!("{}: ignored {line}", dc.display());
    }
    change.traffic = change.traffic.or(m.traffic);
    change.default = change.default.or(m.default);
    change.control = change.control.or(m.control);
    Ok((Some(m.config), change))
}

/// Waits until the operator has seen GENERATION and VERSION (if any) has
/// left Transitioning, printing each state it passes through.
async fn settle(api: &Api<Endpoint>, name: &str, generation: i64, version: Option<&str>) -> Result<Endpoint> {
    let started = Instant::now();
    let mut said = String::new();
    loop {
        let ep = api.get(name).await?;
        let status = ep.status.clone().unwrap_or_default();
        let seen = status.observed_generation.unwrap_or(0) >= generation;
        let v = version.and_then(|n| status.versions.iter().find(|v| v.name == n));
        if let Some(v) = v.filter(|_| seen) {
            let line = format!(
                "{} {:?}{}",
                v.name,
                v.state,
                if v.reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", v.reason)
                }
            );
            if line != said {
                eprintln!("{line}");
                said = line;
            }
        }
        let done = match v {
            _ if !seen => false,
            None => true,
            Some(v) => v.state != VersionState::Transitioning,
        };
        if let Some(v) = v.filter(|v| done && v.state == VersionState::Failed) {
            let share = if v.ready_replicas > 0 {
                ""
            } else {
                " (its share goes to the default)"
            };
            bail!("version {} is Failed: {}{share}", v.name, v.reason);
        }
        if done {
            return Ok(ep);
        }
        if started.elapsed() > WAIT {
            bail!(
                "the operator has not reported on the change within {} s (is it running? `kubectl -n {} get endpoint {name}`)",
                WAIT.as_secs(),
                ep.metadata.namespace.as_deref().unwrap_or("default")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn print(ep: &Endpoint, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(ep)?);
        return Ok(());
    }
    let status = ep.status.clone().unwrap_or_default();
    let name = ep.metadata.name.as_deref().unwrap_or("?");
    println!("endpoint {name}: {}", status.summary.as_deref().unwrap_or("(no status yet)"));
    for v in &ep.spec.versions {
        let s = status.versions.iter().find(|s| s.name == v.name);
        println!(
            "  {}{}{}: traffic {}% (effective {}), {}, ready {}/{}{}",
            v.name,
            if v.default { " (default)" } else { "" },
            if v.control { " (control)" } else { "" },
            v.traffic,
            s.map_or("?".into(), |s| format!("{}%", s.effective_traffic)),
            s.map_or("?".into(), |s| format!("{:?}", s.state)),
            s.map_or(0, |s| s.ready_replicas),
            s.and_then(|s| s.desired_replicas).map_or("auto".into(), |d| d.to_string()),
            s.filter(|s| !s.reason.is_empty())
                .map_or(String::new(), |s| format!(" ({})", s.reason)),
        );
    }
    if let Some(url) = &status.url {
        println!("  scoring URL: {url}");
    }
    Ok(())
}

/// `endpoint get-keys|regen-key --kube`: the endpoint's keys Secret (the
/// operator made it once and never overwrites it), read or with one key
/// replaced; the routers follow the Secret.
pub fn keys(target: &KubeTarget, endpoint: &str, regenerate: Option<&str>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let client = Client::try_default()
            .await
            .context("no Kubernetes API server to talk to (KUBECONFIG or ~/.kube/config)")?;
        let ns = target.namespace.clone().unwrap_or_else(|| client.default_namespace().to_string());
        let api: Api<Secret> = Api::namespaced(client, &ns);
        let name = desired::secret_name(endpoint);
        if let Some(which) = regenerate {
            let field = if which == "secondary" { "secondaryKey" } else { "primaryKey" };
            let fresh = desired::Keys::generate().primary;
            let patch = serde_json::json!({"stringData": {field: fresh}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .with_context(|| format!("Secret {name} in namespace {ns} (is endpoint {endpoint} there?)"))?;
        }
        let secret = api.get(&name).await.with_context(|| format!("Secret {name} in namespace {ns}"))?;
        let read = |k: &str| -> String {
            secret
                .data
                .as_ref()
                .and_then(|d| d.get(k))
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                .or_else(|| secret.string_data.as_ref().and_then(|d| d.get(k)).cloned())
                .unwrap_or_default()
        };
        let keys = serde_json::json!({"primaryKey": read("primaryKey"), "secondaryKey": read("secondaryKey")});
        println!("{}", serde_json::to_string_pretty(&keys)?);
        Ok(())
    })
}
