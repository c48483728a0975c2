//! The operator's loop, controller-rs style: a finalizer, server-side apply
//! with one field manager, owner references (the API server's garbage
//! collector removes what an Endpoint owned), events, and an error policy
//! with backoff.
//!
//! One reconcile of an Endpoint:
//! 1. the spec is checked (`desired::check`, local mode's rules); a broken
//!    rule sets Ready=False / Degraded=True naming it, and nothing else is
//!    written;
//! 2. each version's Deployment and headless Service are applied; the
//!    endpoint's Secret is made once (never overwritten: the CLI
//!    regenerates keys);
//! 3. objects of versions no longer in the spec are deleted;
//! 4. the status is written from the Deployments' status: each version's
//!    state, its configured and effective traffic (a version with no ready
//!    pod hands its share to the default, as locally), the conditions.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::{Client, Resource, ResourceExt};
use wasmscore_rules::rollout;

use crate::crd::{Endpoint, EndpointStatus, VersionState, VersionStatus};
use crate::desired::{self, Settings, LABEL_ENDPOINT};

/// The one field manager of everything the operator applies.
pub const FIELD_MANAGER: &str = "wasmscore-operator";
/// Held on every Endpoint until the operator has seen it deleted.
pub const FINALIZER: &str = "wasmscore.dev/cleanup";

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub reporter: Reporter,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(String),
    #[error("the Endpoint has no namespace")]
    NoNamespace,
}

/// The controller's reconcile function.
pub async fn reconcile(ep: Arc<Endpoint>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = ep.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<Endpoint> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, ep, |event| async {
        match event {
            Finalizer::Apply(ep) => apply(&ep, &ctx, &ns).await,
            Finalizer::Cleanup(ep) => cleanup(&ep, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    })
}

/// Requeue after a failure: 5 s, then more while it keeps failing is the
/// controller's own backoff on top of this.
pub fn error_policy(_ep: Arc<Endpoint>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

/// Runs the operator until SIGTERM: watches Endpoints (in NAMESPACE, or
/// all), and the Deployments and Services it owns, and reconciles each
/// Endpoint when it or one of those changes. The client is the pod's
/// service account in a cluster, or the kubeconfig outside one.
pub async fn run(settings: Settings, namespace: Option<String>) -> Result<(), Error> {
    use futures::StreamExt;
    use kube::runtime::{watcher, Controller};
    let client = Client::try_default().await?;
    let (endpoints, deployments, services) = match &namespace {
        Some(ns) => (
            Api::<Endpoint>::namespaced(client.clone(), ns),
            Api::<Deployment>::namespaced(client.clone(), ns),
            Api::<Service>::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone()), Api::all(client.clone())),
    };
    let ours = watcher::Config::default().labels("app.kubernetes.io/managed-by=wasmscore-operator");
    let ctx = Arc::new(Context {
        client,
        settings,
        reporter: Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    });
    tracing::info!(namespace = namespace.as_deref().unwrap_or("(all)"), "operator watching Endpoints");
    Controller::new(endpoints, watcher::Config::default())
        .owns(deployments, ours.clone())
        .owns(services, ours)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(endpoint = %obj.name, "reconciled"),
                Err(e) => tracing::warn!(error = %e, "reconcile"),
            }
        })
        .await;
    Ok(())
}

async fn apply(ep: &Endpoint, ctx: &Context, ns: &str) -> Result<Action, Error> {
    let name = ep.name_any();
    let endpoints: Api<Endpoint> = Api::namespaced(ctx.client.clone(), ns);
    let desired = match desired::desired(ep, &ctx.settings) {
        Ok(d) => d,
        Err(rule) => {
            refuse(ctx, ep, &endpoints, &name, &rule.to_string()).await?;
            return Ok(Action::await_change());
        }
    };
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    // Two endpoints can name the same objects (endpoint a with version b-c,
    // endpoint a-b with version c): the one there first keeps them.
    let managed = ListParams::default().labels("app.kubernetes.io/managed-by=wasmscore-operator");
    for other in deployments.list(&managed).await? {
        let theirs = controller_uid(&other.metadata).filter(|uid| Some(*uid) != ep.metadata.uid.as_deref());
        if let (Some(_), true) = (theirs, desired.deployments.iter().any(|d| d.name_any() == other.name_any())) {
            let owner = other.labels().get(LABEL_ENDPOINT).cloned().unwrap_or_default();
            if owner == name {
                // An Endpoint of this name deleted and made again: its old
                // objects are the garbage collector's until they go.
                tracing::info!(endpoint = %name, deployment = %other.name_any(), "waiting for the objects of a deleted Endpoint of this name to go");
                return Ok(Action::requeue(Duration::from_secs(2)));
            }
            let why = format!(
                "Deployment {} belongs to endpoint {owner}, whose objects have the same names as this one's; rename a version",
                other.name_any()
            );
            refuse(ctx, ep, &endpoints, &name, &why).await?;
            // The other may go (no event of ours says so): look again.
            return Ok(Action::requeue(Duration::from_secs(30)));
        }
    }
    let ssa = PatchParams::apply(FIELD_MANAGER).force();
    // The policy first: no node pod is ever open to the whole cluster.
    let policy = &desired.network_policy;
    Api::<NetworkPolicy>::namespaced(ctx.client.clone(), ns)
        .patch(&policy.name_any(), &ssa, &Patch::Apply(policy))
        .await?;
    for d in &desired.deployments {
        deployments.patch(&d.name_any(), &ssa, &Patch::Apply(d)).await?;
    }
    for s in &desired.services {
        services.patch(&s.name_any(), &ssa, &Patch::Apply(s)).await?;
    }
    let secret_name = desired::secret_name(&name);
    if secrets.get_opt(&secret_name).await?.is_none() {
        secrets
            .create(&PostParams::default(), &desired::secret(ep, &desired::Keys::generate()))
            .await?;
        publish(ctx, ep, EventType::Normal, "KeysCreated", &format!("made Secret {secret_name}")).await;
    }
    // Versions no longer in the spec.
    let wanted: Vec<String> = desired.deployments.iter().map(|d| d.name_any()).collect();
    let owned = ListParams::default().labels(&format!("{LABEL_ENDPOINT}={name}"));
    // Only what this Endpoint controls: a user's object may carry the label.
    let ours = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        controller_uid(m).is_some_and(|uid| Some(uid) == ep.metadata.uid.as_deref())
    };
    for d in deployments.list(&owned).await? {
        if !wanted.contains(&d.name_any()) && ours(&d.metadata) {
            deployments.delete(&d.name_any(), &DeleteParams::default()).await?;
            publish(
                ctx,
                ep,
                EventType::Normal,
                "VersionDeleted",
                &format!("deleted Deployment {}", d.name_any()),
            )
            .await;
        }
    }
    for s in services.list(&owned).await? {
        if !wanted.contains(&s.name_any()) && ours(&s.metadata) {
            services.delete(&s.name_any(), &DeleteParams::default()).await?;
        }
    }
    let observed = deployments.list(&owned).await?.items;
    // Why pods do not start (a crash loop, an image that cannot be pulled)
    // is on the pods, not the Deployment.
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), ns).list(&owned).await?.items;
    let status = status_of(ep, &observed, &pods, &ctx.settings);
    write_status(&endpoints, &name, &status).await?;
    // Pods come and go without a change to the Endpoint: look again.
    Ok(Action::requeue(Duration::from_secs(if ready(&status) { 60 } else { 5 })))
}

/// The spec is refused: nothing changes, the objects of the last good spec
/// keep serving, and the status and an event say why.
async fn refuse(ctx: &Context, ep: &Endpoint, endpoints: &Api<Endpoint>, name: &str, why: &str) -> Result<(), Error> {
    let mut status = ep.status.clone().unwrap_or_default();
    status.observed_generation = ep.metadata.generation;
    set(&mut status.conditions, condition("Ready", false, "RuleBroken", why, ep));
    set(&mut status.conditions, condition("Degraded", true, "RuleBroken", why, ep));
    set(
        &mut status.conditions,
        condition("Progressing", false, "RuleBroken", "the spec is refused", ep),
    );
    write_status(endpoints, name, &status).await?;
    publish(ctx, ep, EventType::Warning, "RuleBroken", why).await;
    Ok(())
}

/// The UID of the object's controlling owner.
fn controller_uid(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<&str> {
    m.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
        .map(|r| r.uid.as_str())
}

async fn cleanup(ep: &Endpoint, ctx: &Context) -> Result<Action, Error> {
    // Owner references hand the Deployments, Services, the NetworkPolicy and
    // the Secret to the garbage collector; the finalizer only records that
    // the operator saw it.
    publish(
        ctx,
        ep,
        EventType::Normal,
        "Deleted",
        "the endpoint's objects go with it (owner references)",
    )
    .await;
    Ok(Action::await_change())
}

/// A version's Deployment as the status reads it.
#[derive(Default)]
struct Observed {
    ready: i32,
    desired: Option<i32>,
    rolling: bool,
    /// A failing condition's reason and message.
    failure: Option<(String, String)>,
}

/// The status an Endpoint has, given its version Deployments as observed.
pub fn status_of(ep: &Endpoint, observed: &[Deployment], pods: &[Pod], settings: &Settings) -> EndpointStatus {
    let name = ep.name_any();
    let ready_of = |version: &str| -> Observed {
        let obj = desired::object_name(&name, version);
        let Some(d) = observed.iter().find(|d| d.name_any() == obj) else {
            // Just applied: the Deployment controller has not seen it yet.
            return Observed::default();
        };
        let st = d.status.clone().unwrap_or_default();
        let failure = st
            .conditions
            .clone()
            .unwrap_or_default()
            .into_iter()
            .find(|c| (c.type_ == "Progressing" && c.status == "False") || (c.type_ == "ReplicaFailure" && c.status == "True"));
        let desired = d.spec.as_ref().and_then(|s| s.replicas);
        // An update still rolling: the controller has not seen the new spec,
        // or not every pod runs it, or old pods are still there.
        let updated = st.updated_replicas.unwrap_or(0);
        // (A scale-up is not one: its new pods run the same spec.)
        let rolling = st.observed_generation < d.metadata.generation || st.replicas.unwrap_or(0) > updated;
        Observed {
            ready: st.ready_replicas.unwrap_or(0),
            desired,
            rolling,
            // The reason is the machine's word (ProgressDeadlineExceeded,
            // FailedCreate); the message says it for people.
            failure: failure.map(|c| {
                let reason = c.reason.unwrap_or_default();
                let message = c.message.unwrap_or_else(|| reason.clone());
                (reason, message)
            }),
        }
    };
    let rollouts = desired::rollouts(&ep.spec);
    let serving = |v: &str| ready_of(v).ready > 0;
    let effective = rollout::effective_shares(&rollouts, serving);
    let mut versions = Vec::new();
    for v in &ep.spec.versions {
        let Observed {
            ready,
            desired: desired_replicas,
            rolling,
            failure,
        } = ready_of(&v.name);
        let stuck = if ready == 0 || rolling { pod_trouble(pods, &v.name) } else { None };
        let failed = |reason: &str| matches!(reason, "ProgressDeadlineExceeded" | "FailedCreate");
        let (state, reason) = match (ready, failure) {
            (0, _) if stuck.is_some() => stuck.expect("just checked"),
            (0, Some((r, why))) if failed(&r) => (VersionState::Failed, why),
            (0, Some((_, why))) => (VersionState::Unhealthy, why),
            (0, None) if desired_replicas == Some(0) => (VersionState::Healthy, "scaled to zero; wakes on the first request".into()),
            (0, None) => (VersionState::Transitioning, "no pod is ready yet".into()),
            // Pods of the spec before serve while the update rolls out, or
            // while it fails.
            (_, Some((r, why))) if rolling && failed(&r) => (
                VersionState::Failed,
                format!("the update failed ({why}); pods of the spec before still serve"),
            ),
            // A pod in trouble may be an old one: the Deployment's own
            // deadline says when the update has failed.
            (_, _) if rolling => match stuck {
                Some((_, why)) => (
                    VersionState::Transitioning,
                    format!("an update is rolling out; {why}; pods of the spec before still serve"),
                ),
                None => (VersionState::Transitioning, "an update is rolling out".into()),
            },
            (_, _) => (VersionState::Healthy, String::new()),
        };
        versions.push(VersionStatus {
            name: v.name.clone(),
            state,
            reason,
            traffic: v.traffic,
            effective_traffic: effective.iter().find(|(n, _)| *n == v.name).map_or(0, |(_, s)| *s),
            ready_replicas: ready,
            desired_replicas,
        });
    }
    let mut status = ep.status.clone().unwrap_or_default();
    status.observed_generation = ep.metadata.generation;
    let failing = |v: &&VersionStatus| matches!(v.state, VersionState::Failed | VersionState::Unhealthy);
    let unhealthy: Vec<&str> = versions
        .iter()
        .filter(failing)
        .filter(|v| v.ready_replicas == 0)
        .map(|v| v.name.as_str())
        .collect();
    // A failed update whose pods of the spec before still serve.
    let updates_failed: Vec<&str> = versions
        .iter()
        .filter(failing)
        .filter(|v| v.ready_replicas > 0)
        .map(|v| v.name.as_str())
        .collect();
    let transitioning = versions.iter().any(|v| v.state == VersionState::Transitioning);
    let serving_any = versions.iter().any(|v| v.ready_replicas > 0);
    set(
        &mut status.conditions,
        if serving_any {
            condition("Ready", true, "Serving", "at least one version has a ready pod", ep)
        } else {
            condition("Ready", false, "NoReadyPod", "no version has a ready pod yet", ep)
        },
    );
    set(
        &mut status.conditions,
        condition(
            "Progressing",
            transitioning,
            if transitioning { "PodsStarting" } else { "Settled" },
            if transitioning {
                "versions are starting"
            } else {
                "every version settled"
            },
            ep,
        ),
    );
    set(
        &mut status.conditions,
        if unhealthy.is_empty() && updates_failed.is_empty() {
            condition("Degraded", false, "AllHealthy", "no version is failing", ep)
        } else {
            let mut said = Vec::new();
            if !unhealthy.is_empty() {
                said.push(format!("{} cannot serve; their share goes to the default", unhealthy.join(", ")));
            }
            if !updates_failed.is_empty() {
                said.push(format!(
                    "the update of {} failed; pods of the spec before still serve",
                    updates_failed.join(", ")
                ));
            }
            condition("Degraded", true, "VersionsFailing", &said.join("; "), ep)
        },
    );
    status.summary = Some(
        versions
            .iter()
            .filter(|v| v.effective_traffic > 0)
            .map(|v| format!("{} {}%", v.name, v.effective_traffic))
            .collect::<Vec<_>>()
            .join(", "),
    );
    status.url = Some(format!(
        "http://{}.{}/api/v1/service/{name}/score",
        settings.router_service,
        ep.namespace().unwrap_or_default()
    ));
    status.versions = versions;
    status
}

/// Why a version's pods do not start, from their container statuses: a
/// process that keeps exiting (a bad artifact, init() failing: the node's
/// last log line, which the kubelet keeps as the termination message) is
/// Failed; an image that cannot be pulled or a container that cannot be
/// made is Unhealthy.
fn pod_trouble(pods: &[Pod], version: &str) -> Option<(VersionState, String)> {
    for pod in pods {
        if pod.labels().get(desired::LABEL_VERSION).map(String::as_str) != Some(version) {
            continue;
        }
        let Some(cs) = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
        else {
            continue;
        };
        let Some(waiting) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let reason = waiting.reason.clone().unwrap_or_default();
        let last = cs
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .and_then(|t| t.message.as_deref())
            .and_then(|m| m.lines().rev().find(|l| !l.trim().is_empty()))
            .map(|l| format!(": {}", l.trim()))
            .unwrap_or_default();
        let why = format!("pod {}: {reason} ({} restarts){last}", pod.name_any(), cs.restart_count);
        match reason.as_str() {
            "CrashLoopBackOff" => return Some((VersionState::Failed, why)),
            "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" | "CreateContainerError" | "CreateContainerConfigError" => {
                return Some((VersionState::Unhealthy, why))
            }
            _ => {}
        }
    }
    None
}

fn ready(status: &EndpointStatus) -> bool {
    status.conditions.iter().any(|c| c.type_ == "Progressing" && c.status == "False")
}

fn condition(type_: &str, status: bool, reason: &str, message: &str, ep: &Endpoint) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: ep.metadata.generation,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
    }
}

/// Sets a condition, keeping its transition time when its status holds.
fn set(conditions: &mut Vec<Condition>, mut c: Condition) {
    match conditions.iter_mut().find(|o| o.type_ == c.type_) {
        Some(old) => {
            if old.status == c.status {
                c.last_transition_time = old.last_transition_time.clone();
            }
            *old = c;
        }
        None => conditions.push(c),
    }
}

async fn write_status(api: &Api<Endpoint>, name: &str, status: &EndpointStatus) -> Result<(), Error> {
    let patch = serde_json::json!({
        "apiVersion": "wasmscore.dev/v1alpha1",
        "kind": "Endpoint",
        "status": status,
    });
    api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await?;
    Ok(())
}

/// Events are best effort: a failure to record one is logged, not fatal.
async fn publish(ctx: &Context, ep: &Endpoint, type_: EventType, reason: &str, note: &str) {
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &ep.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "recording an event failed");
    }
}

/// Reconcile against kube-rs's tower-test mock: a fake API server that
/// answers every call the operator makes and records it (the
/// ApiServerVerifier pattern of controller-rs, by what was written rather
/// than by a fixed order, since events interleave).
#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::endpoint;
    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::{json, Value};

    /// What the fake cluster holds before the reconcile.
    #[derive(Default, Clone)]
    struct Cluster {
        secret_exists: bool,
        /// Version Deployments as they are now (name, ready replicas).
        deployments: Vec<(String, i32)>,
        /// Their pods, as the kubelet reports them.
        pods: Vec<Value>,
        /// Deployments another Endpoint controls.
        foreign: Vec<Value>,
    }

    #[derive(Debug, Clone)]
    struct Call {
        method: String,
        path: String,
        query: String,
        body: Value,
    }

    impl Call {
        fn is(&self, method: &str, path_end: &str) -> bool {
            self.method == method && self.path.ends_with(path_end)
        }
    }

    fn version(name: &str, traffic: u32, default: bool) -> crate::crd::VersionSpec {
        crate::fixtures::version(name, traffic, default, json!({}))
    }

    fn deployment_json(name: &str, ready: i32) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": name, "namespace": "models", "labels": {LABEL_ENDPOINT: "iris"},
                            "ownerReferences": [{"apiVersion": "wasmscore.dev/v1", "kind": "Endpoint", "name": "iris",
                                                 "uid": "uid-1", "controller": true}]},
               "spec": {"selector": {"matchLabels": {}}, "template": {}},
               "status": {"readyReplicas": ready, "replicas": ready, "updatedReplicas": ready}})
    }

    /// A request to the fake API server, with where its answer goes.
    type Pending = (Request<Body>, tokio::sync::oneshot::Sender<Response<Body>>);

    /// kube's client's side of a fake API server: each request goes to
    /// `serve`, which holds the other end of the channel until every clone
    /// of the client is dropped.
    #[derive(Clone)]
    struct Fake(tokio::sync::mpsc::UnboundedSender<Pending>);

    impl tower_service::Service<Request<Body>> for Fake {
        type Response = Response<Body>;
        type Error = Box<dyn std::error::Error + Send + Sync>;
        type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<Body>, Self::Error>> + Send>>;

        fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Request<Body>) -> Self::Future {
            let (send, answer) = tokio::sync::oneshot::channel();
            let sent = self.0.send((req, send));
            Box::pin(async move {
                sent.map_err(|_| "the fake API server is gone")?;
                Ok(answer.await.map_err(|_| "the fake API server dropped the request")?)
            })
        }
    }

    /// Answers like an API server: applies and creates echo the object,
    /// gets and lists read the cluster, deletes succeed.
    async fn serve(mut requests: tokio::sync::mpsc::UnboundedReceiver<Pending>, cluster: Cluster) -> Vec<Call> {
        let mut calls = Vec::new();
        while let Some((req, send)) = requests.recv().await {
            let method = req.method().to_string();
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or("").to_string();
            let bytes = req.into_body().collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let not_found = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"});
            let (code, answer) = match method.as_str() {
                "GET" if path.ends_with("/secrets/iris-keys") && !cluster.secret_exists => (404, not_found),
                "GET" if path.ends_with("/secrets/iris-keys") => (
                    200,
                    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "iris-keys", "namespace": "models"}}),
                ),
                "GET" if path.ends_with("/deployments") => (
                    200,
                    json!({"apiVersion": "apps/v1", "kind": "DeploymentList", "metadata": {"resourceVersion": "1"},
                           "items": cluster.deployments.iter().map(|(n, r)| deployment_json(n, *r))
                               .chain(cluster.foreign.iter().cloned()).collect::<Vec<_>>()}),
                ),
                "GET" if path.ends_with("/pods") => (
                    200,
                    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": cluster.pods}),
                ),
                "GET" if path.ends_with("/services") => (
                    200,
                    json!({"apiVersion": "v1", "kind": "ServiceList", "metadata": {"resourceVersion": "1"}, "items": []}),
                ),
                "DELETE" => (200, json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200})),
                _ => {
                    let mut obj = if body.is_object() { body.clone() } else { json!({}) };
                    if path.contains("/endpoints/") {
                        // Status and finalizer patches answer with the Endpoint.
                        obj = serde_json::to_value(endpoint(vec![])).unwrap();
                    }
                    obj["metadata"]["resourceVersion"] = json!("11");
                    (200, obj)
                }
            };
            calls.push(Call { method, path, query, body });
            let resp = Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap();
            let _ = send.send(resp);
        }
        calls
    }

    async fn run(ep: Endpoint, cluster: Cluster) -> (Result<Action, Error>, Vec<Call>) {
        let (service, requests) = tokio::sync::mpsc::unbounded_channel();
        let server = tokio::spawn(serve(requests, cluster));
        let ctx = Arc::new(Context {
            client: Client::new(Fake(service), "models"),
            settings: Settings::default(),
            reporter: Reporter {
                controller: FIELD_MANAGER.into(),
                instance: None,
            },
        });
        let result = reconcile(Arc::new(ep), ctx).await;
        // The context (and its client) is dropped: the fake server ends.
        (result, server.await.unwrap())
    }

    fn writes(calls: &[Call]) -> Vec<String> {
        calls
            .iter()
            .filter(|c| c.method != "GET" && !c.path.contains("/events"))
            .map(|c| format!("{} {}", c.method, c.path.rsplit("/namespaces/models/").next().unwrap()))
            .collect()
    }

    fn status_patch(calls: &[Call]) -> &Value {
        &calls
            .iter()
            .rev()
            .find(|c| c.is("PATCH", "/endpoints/iris/status"))
            .expect("a status patch")
            .body["status"]
    }

    fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
        status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == type_)
            .unwrap()
    }

    #[tokio::test]
    async fn create_applies_each_version_makes_the_secret_once_and_reports_status() {
        let ep = endpoint(vec![version("v1", 20, true)]);
        let (result, calls) = run(ep, Cluster::default()).await;
        result.unwrap();
        assert_eq!(
            writes(&calls),
            [
                "PATCH networkpolicies/iris-nodes",
                "PATCH deployments/iris-v1",
                "PATCH services/iris-v1",
                "POST secrets",
                "PATCH endpoints/iris/status",
            ]
        );
        // Server-side apply with the one field manager, forced.
        let apply = calls.iter().find(|c| c.is("PATCH", "/deployments/iris-v1")).unwrap();
        assert!(
            apply.query.contains("fieldManager=wasmscore-operator") && apply.query.contains("force=true"),
            "{}",
            apply.query
        );
        assert_eq!(apply.body["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        // Node pods take connections from the routers only, on the node port.
        let policy = &calls.iter().find(|c| c.is("PATCH", "/networkpolicies/iris-nodes")).unwrap().body;
        assert_eq!(policy["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert_eq!(
            policy["spec"],
            json!({"podSelector": {"matchLabels": {"app.kubernetes.io/name": "wasmscore-node", LABEL_ENDPOINT: "iris"}},
                   "policyTypes": ["Ingress"],
                   "ingress": [{"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "wasmscore-router"}}}],
                                "ports": [{"port": 8081, "protocol": "TCP"}]}]})
        );
        let secret = calls.iter().find(|c| c.is("POST", "/secrets")).unwrap();
        assert_eq!(secret.body["stringData"]["primaryKey"].as_str().unwrap().len(), 64);
        // No pod is ready yet: transitioning, and the 20% version has all of it.
        let status = status_patch(&calls);
        assert_eq!(status["observedGeneration"], 3);
        assert_eq!(status["versions"][0]["state"], "Transitioning");
        assert_eq!(condition(status, "Ready")["status"], "False");
        assert_eq!(condition(status, "Progressing")["status"], "True");
        // An event said the keys were made.
        assert!(
            calls
                .iter()
                .any(|c| c.path.contains("/events") && c.body["reason"] == "KeysCreated"),
            "{calls:?}"
        );
    }

    #[tokio::test]
    async fn traffic_and_default_changes_reapply_and_the_split_follows_ready_pods() {
        // Step 3 of the seeds: v1 20%, v2 40% and the default; both have
        // ready pods, the Secret exists (it is never rewritten).
        let ep = endpoint(vec![version("v1", 20, false), version("v2", 40, true)]);
        let cluster = Cluster {
            secret_exists: true,
            deployments: vec![("iris-v1".into(), 1), ("iris-v2".into(), 2)],
            ..Default::default()
        };
        let (result, calls) = run(ep, cluster).await;
        result.unwrap();
        assert_eq!(
            writes(&calls),
            [
                "PATCH networkpolicies/iris-nodes",
                "PATCH deployments/iris-v1",
                "PATCH deployments/iris-v2",
                "PATCH services/iris-v1",
                "PATCH services/iris-v2",
                "PATCH endpoints/iris/status",
            ]
        );
        let status = status_patch(&calls);
        let eff: Vec<(String, u64)> = status["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| (v["name"].as_str().unwrap().into(), v["effectiveTraffic"].as_u64().unwrap()))
            .collect();
        assert_eq!(eff, [("v1".to_string(), 20), ("v2".to_string(), 80)]);
        assert_eq!(status["summary"], "v1 20%, v2 80%");
        assert_eq!(condition(status, "Ready")["status"], "True");
        assert_eq!(status["url"], "http://wasmscore-router.models/api/v1/service/iris/score");

        // v1 with no ready pod: its share goes to the default.
        let ep = endpoint(vec![version("v1", 20, false), version("v2", 40, true)]);
        let cluster = Cluster {
            secret_exists: true,
            deployments: vec![("iris-v1".into(), 0), ("iris-v2".into(), 2)],
            ..Default::default()
        };
        let (_, calls) = run(ep, cluster).await;
        assert_eq!(status_patch(&calls)["summary"], "v2 100%");
    }

    #[tokio::test]
    async fn a_deleted_version_loses_its_deployment_and_service() {
        let ep = endpoint(vec![version("v2", 40, true)]);
        let cluster = Cluster {
            secret_exists: true,
            deployments: vec![("iris-v1".into(), 1), ("iris-v2".into(), 1)],
            ..Default::default()
        };
        let (result, calls) = run(ep, cluster).await;
        result.unwrap();
        let w = writes(&calls);
        assert!(w.contains(&"DELETE deployments/iris-v1".to_string()), "{w:?}");
        assert!(!w.iter().any(|c| c.contains("iris-v2") && c.starts_with("DELETE")), "{w:?}");
    }

    #[tokio::test]
    async fn a_crash_looping_version_is_failed_with_the_nodes_last_words_and_its_share_goes_to_the_default() {
        let ep = endpoint(vec![version("v1", 20, true), version("v2", 30, false)]);
        let crashing = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "iris-v2-abc", "namespace": "models", "labels": {LABEL_ENDPOINT: "iris", desired::LABEL_VERSION: "v2"}},
            "status": {"containerStatuses": [{"name": "node", "image": "wasmscore:dev", "imageID": "", "ready": false, "restartCount": 4,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                    "message": "INFO pulling\nError: iris/v2 failed to build: init() failed: no model.onnx\n"}}}]}});
        let cluster = Cluster {
            secret_exists: true,
            deployments: vec![("iris-v1".into(), 1), ("iris-v2".into(), 0)],
            pods: vec![crashing],
            ..Default::default()
        };
        let (result, calls) = run(ep, cluster).await;
        result.unwrap();
        let status = status_patch(&calls);
        let v2 = &status["versions"][1];
        assert_eq!(v2["state"], "Failed", "{status}");
        assert_eq!(
            v2["reason"],
            "pod iris-v2-abc: CrashLoopBackOff (4 restarts): Error: iris/v2 failed to build: init() failed: no model.onnx"
        );
        assert_eq!(
            (status["versions"][0]["effectiveTraffic"].clone(), v2["effectiveTraffic"].clone()),
            (json!(100), json!(0))
        );
        assert_eq!(condition(status, "Degraded")["status"], "True");
    }

    /// An update rolls out behind pods of the spec before: the version is
    /// Transitioning, not Healthy, and a failing update says so (a crash
    /// loop of the new pod, or the Deployment's progress deadline, read by
    /// its reason).
    #[test]
    fn an_update_rolling_out_or_failing_behind_ready_pods_is_not_healthy() {
        let ep = endpoint(vec![version("v1", 0, true)]);
        let deployment = |status: Value| -> Deployment {
            serde_json::from_value(json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "iris-v1", "namespace": "models", "generation": 4},
                "spec": {"replicas": 1, "selector": {"matchLabels": {}}, "template": {}},
                "status": status}))
            .unwrap()
        };
        let state = |status: Value, pods: &[Pod]| {
            let st = status_of(&ep, &[deployment(status)], pods, &Settings::default());
            (st.versions[0].state, st.versions[0].reason.clone())
        };
        let rolling = json!({"observedGeneration": 4, "replicas": 2, "updatedReplicas": 1, "readyReplicas": 1});
        assert_eq!(state(rolling.clone(), &[]).0, VersionState::Transitioning);
        let unseen = json!({"observedGeneration": 3, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1});
        assert_eq!(state(unseen, &[]).0, VersionState::Transitioning);
        let done = json!({"observedGeneration": 4, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1});
        assert_eq!(state(done, &[]), (VersionState::Healthy, String::new()));
        let crashing: Pod = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "iris-v1-new", "namespace": "models", "labels": {LABEL_ENDPOINT: "iris", desired::LABEL_VERSION: "v1"}},
            "status": {"containerStatuses": [{"name": "node", "image": "wasmscore:dev", "imageID": "", "ready": false, "restartCount": 3,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}}))
        .unwrap();
        // A pod in a crash loop (new or old: no telling here) is named,
        // and the Deployment's deadline decides when the update failed.
        let (st, why) = state(rolling.clone(), &[crashing]);
        assert_eq!(st, VersionState::Transitioning);
        assert!(
            why.starts_with("an update is rolling out; pod iris-v1-new: CrashLoopBackOff"),
            "{why}"
        );
        assert!(why.ends_with("pods of the spec before still serve"), "{why}");
        // More replicas of the same spec is no update.
        let scaling = json!({"observedGeneration": 4, "replicas": 3, "updatedReplicas": 3, "readyReplicas": 1});
        assert_eq!(state(scaling, &[]).0, VersionState::Healthy);
        let mut late = rolling;
        late["conditions"] = json!([{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
            "message": "ReplicaSet \"iris-v1-5d8f\" has timed out progressing."}]);
        let (st, why) = state(late.clone(), &[]);
        assert_eq!(st, VersionState::Failed);
        assert!(why.contains("has timed out progressing"), "{why}");
        // With no pod ready, the deadline is read by its reason too.
        late["readyReplicas"] = json!(0);
        assert_eq!(state(late, &[]).0, VersionState::Failed);
    }

    /// Endpoint "ir" with version "is-v1" names its objects as "iris"
    /// with "v1" does: the one there first keeps them, the other is
    /// refused and writes nothing but its status; and a Deployment another
    /// Endpoint controls is never deleted as a version no longer wanted.
    #[tokio::test]
    async fn objects_another_endpoint_controls_are_neither_taken_nor_deleted() {
        let foreign = |name: &str| {
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "namespace": "models", "labels": {LABEL_ENDPOINT: "ir"},
                    "ownerReferences": [{"apiVersion": "wasmscore.dev/v1", "kind": "Endpoint", "name": "ir", "uid": "uid-2", "controller": true}]},
                "spec": {"selector": {"matchLabels": {}}, "template": {}}, "status": {}})
        };
        let cluster = Cluster {
            secret_exists: true,
            foreign: vec![foreign("iris-v1")],
            ..Cluster::default()
        };
        let (result, calls) = run(endpoint(vec![version("v1", 0, true)]), cluster).await;
        result.unwrap();
        assert_eq!(writes(&calls), ["PATCH endpoints/iris/status"]);
        let ready = condition(status_patch(&calls), "Ready");
        assert_eq!(ready["reason"], "RuleBroken");
        assert!(
            ready["message"]
                .as_str()
                .unwrap()
                .contains("Deployment iris-v1 belongs to endpoint ir"),
            "{ready}"
        );
        // Not the same name: served, and the other's Deployment stays.
        let cluster = Cluster {
            secret_exists: true,
            foreign: vec![foreign("iris-old")],
            ..Cluster::default()
        };
        let (result, calls) = run(endpoint(vec![version("v1", 0, true)]), cluster).await;
        result.unwrap();
        assert!(!writes(&calls).iter().any(|w| w.starts_with("DELETE")), "{:?}", writes(&calls));
    }

    #[tokio::test]
    async fn a_broken_rule_sets_a_condition_naming_it_and_writes_nothing_else() {
        let ep = endpoint(vec![version("v1", 70, true), version("v2", 60, false)]);
        let (result, calls) = run(ep, Cluster::default()).await;
        result.unwrap();
        assert_eq!(writes(&calls), ["PATCH endpoints/iris/status"]);
        let status = status_patch(&calls);
        let ready = condition(status, "Ready");
        assert_eq!(
            (ready["status"].as_str(), ready["reason"].as_str()),
            (Some("False"), Some("RuleBroken"))
        );
        assert!(ready["message"].as_str().unwrap().contains("add up to 130%"), "{ready}");
        assert_eq!(condition(status, "Degraded")["status"], "True");
        assert!(
            calls.iter().any(|c| c.path.contains("/events") && c.body["type"] == "Warning"),
            "{calls:?}"
        );
    }

    #[tokio::test]
    async fn the_finalizer_is_added_first_and_removed_on_deletion() {
        let mut ep = endpoint(vec![version("v1", 0, true)]);
        ep.metadata.finalizers = None;
        let (result, calls) = run(ep, Cluster::default()).await;
        result.unwrap();
        assert_eq!(
            writes(&calls),
            ["PATCH endpoints/iris"],
            "only the finalizer is added on the first pass"
        );
        assert!(calls[0].body.to_string().contains(FINALIZER), "{:?}", calls[0]);

        let mut ep = endpoint(vec![version("v1", 0, true)]);
        ep.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        let (result, calls) = run(ep, Cluster::default()).await;
        result.unwrap();
        // Nothing deleted by hand (owner references), the finalizer removed.
        assert_eq!(writes(&calls), ["PATCH endpoints/iris"]);
        assert!(calls.iter().any(|c| c.path.contains("/events") && c.body["reason"] == "Deleted"));
    }
}
