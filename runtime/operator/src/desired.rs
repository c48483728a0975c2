//! From an `Endpoint` to what serves it, with no I/O: every version gets a
//! Deployment of `wasmscore node` pods and a headless Service whose
//! EndpointSlices the router watches. The spec is first checked with
//! local mode's rules and deployment config; a refusal names the rule and
//! nothing is made.
//!
//! Replicas: a version that autoscales has its Deployment's `replicas`
//! left unset, so the router (the only autoscaler, through the scale
//! subresource) owns the count and a server-side apply by the operator
//! never fights it; `num_replicas` fixes it.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, HTTPGetAction, HostPathVolumeSource, Lifecycle, LifecycleHandler,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, Secret, SecurityContext, Service,
    ServicePort, ServiceSpec, SleepAction, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use wasmscore_rules::config::{DeploymentConfig, Resolved};
use wasmscore_rules::rollout::{self, Rollout};
use wasmscore_rules::RuleError;

use crate::crd::{Endpoint, EndpointSpec, VersionSpec};

/// Labels on every object the operator makes (and the pods' selector).
pub const LABEL_ENDPOINT: &str = "wasmscore.dev/endpoint";
pub const LABEL_VERSION: &str = "wasmscore.dev/version";
/// A plugin device's pods go to machines labelled with it.
pub const LABEL_DEVICE: &str = "wasmscore.dev/device";

/// How the cluster runs nodes: the operator's own settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The wasmscore image (`deploy/Dockerfile`).
    pub image: String,
    /// The port a node serves the internal protocol and its health on.
    pub node_port: u16,
    /// How long a node drains after SIGTERM (`wasmscore node --drain-seconds`).
    pub drain_seconds: u32,
    /// What a pod takes beyond its version's memory_gb: the process itself
    /// (wasmtime, ONNX Runtime, the compile cache in memory), in MiB.
    pub process_memory_mib: u32,
    /// The router's Service in each namespace (the scoring URL's host).
    pub router_service: String,
    /// The labels that pick the router pods (deploy/router.yaml's): the
    /// only pods an endpoint's NetworkPolicy lets reach its nodes.
    pub router_pods: BTreeMap<String, String>,
    /// A directory on each Kubernetes node that node pods share as their
    /// compile cache (a hostPath at /cache): a new pod on a node that ran
    /// the version before skips compiling. None: each pod compiles.
    pub compile_cache: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            image: "wasmscore:dev".into(),
            node_port: 8081,
            drain_seconds: 10,
            process_memory_mib: 256,
            router_service: "wasmscore-router".into(),
            router_pods: BTreeMap::from([(ROUTER_POD_LABEL.0.into(), ROUTER_POD_LABEL.1.into())]),
            compile_cache: None,
        }
    }
}

/// The objects that serve one Endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub deployments: Vec<Deployment>,
    pub services: Vec<Service>,
    pub network_policy: NetworkPolicy,
}

/// The label deploy/router.yaml puts on the router pods (the default of
/// `Settings::router_pods`).
pub const ROUTER_POD_LABEL: (&str, &str) = ("app.kubernetes.io/name", "wasmscore-router");

/// A version with its resolved deployment config.
pub type Checked<'a> = Vec<(&'a VersionSpec, Resolved)>;

/// Local mode's rules on the spec: names, the rollout rules across
/// versions, each version's deployment config.
pub fn check<'a>(name: &str, spec: &'a EndpointSpec) -> Result<Checked<'a>, RuleError> {
    dns_label("endpoint", name)?;
    // It begins every object's name, and a Service's must begin with a
    // letter (a DNS-1035 label); it is also a label value (63 at most).
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) || name.len() > 63 {
        return Err(RuleError::Refused(format!(
            "endpoint name {name:?} must begin with a letter and have at most 63 characters on Kubernetes (it begins its Services' names)"
        )));
    }
    let mut out: Checked<'a> = Vec::with_capacity(spec.versions.len());
    for v in &spec.versions {
        dns_label("version", &v.name)?;
        if object_name(name, &v.name).len() > 63 {
            return Err(RuleError::Refused(format!(
                "endpoint {name} with version {} names objects {} characters long; Kubernetes allows 63",
                v.name,
                object_name(name, &v.name).len()
            )));
        }
        if out.iter().any(|(o, _)| o.name == v.name) {
            return Err(RuleError::Conflict(format!("version {} is listed twice", v.name)));
        }
        let resolved = DeploymentConfig::parse(&serde_json::Value::Object(v.config.clone()))
            .and_then(|c| c.resolve())
            .map_err(|e| RuleError::Refused(format!("version {}: {e}", v.name)))?;
        out.push((v, resolved));
    }
    rollout::check(&rollouts(spec))?;
    Ok(out)
}

/// Local mode's name rule, and a DNS label on top (it names Kubernetes
/// objects): lowercase letters, digits and '-', not at either end.
fn dns_label(kind: &str, s: &str) -> Result<(), RuleError> {
    wasmscore_rules::valid_name(kind, s)?;
    let ok = s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') && !s.starts_with('-') && !s.ends_with('-');
    if !ok {
        return Err(RuleError::Refused(format!(
            "{kind} name {s:?} must be a DNS label on Kubernetes: lowercase letters, digits and '-', not at either end"
        )));
    }
    Ok(())
}

/// A Kubernetes label given as `KEY=VALUE`, checked as the API server
/// checks one: the key an optional DNS-subdomain prefix and `/`, then a
/// name of up to 63 characters; the value up to 63 characters, maybe empty.
/// Names and values begin and end with a letter or digit and hold only
/// those, `-`, `_` and `.`.
pub fn label(s: &str) -> Result<(String, String), String> {
    let (key, value) = s.split_once('=').ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    let (prefix, name) = key.rsplit_once('/').map_or((None, key), |(p, n)| (Some(p), n));
    let segment = |t: &str| {
        t.len() <= 63
            && t.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && t.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
            && t.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric())
    };
    let subdomain = |p: &str| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            })
    };
    if name.is_empty() || !segment(name) || prefix.is_some_and(|p| !subdomain(p)) {
        return Err(format!(
            "label key {key:?}: a name of up to 63 letters, digits, '-', '_' and '.' (beginning and ending with a letter or digit), after an optional DNS subdomain and '/'"
        ));
    }
    if !segment(value) {
        return Err(format!(
            "label value {value:?}: up to 63 letters, digits, '-', '_' and '.', beginning and ending with a letter or digit"
        ));
    }
    Ok((key.to_string(), value.to_string()))
}

/// The rollout part of each version, as the rules see it.
pub fn rollouts(spec: &EndpointSpec) -> Vec<Rollout> {
    spec.versions
        .iter()
        .map(|v| Rollout {
            name: v.name.clone(),
            traffic: v.traffic,
            is_default: v.default,
            is_control: v.control,
            mirror: v.mirror,
        })
        .collect()
}

/// Everything that serves `ep`, or the rule its spec breaks.
pub fn desired(ep: &Endpoint, settings: &Settings) -> Result<Desired, RuleError> {
    let name = ep.name_any();
    let checked = check(&name, &ep.spec)?;
    Ok(Desired {
        deployments: checked.iter().map(|(v, r)| deployment(ep, v, r, settings)).collect(),
        services: checked.iter().map(|(v, _)| service(ep, v, settings)).collect(),
        network_policy: network_policy(ep, settings),
    })
}

/// A version's objects are named ENDPOINT-VERSION.
pub fn object_name(endpoint: &str, version: &str) -> String {
    format!("{endpoint}-{version}")
}

pub fn labels(endpoint: &str, version: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "wasmscore-node".into()),
        ("app.kubernetes.io/managed-by".into(), "wasmscore-operator".into()),
        (LABEL_ENDPOINT.into(), endpoint.into()),
        (LABEL_VERSION.into(), version.into()),
    ])
}

fn meta(ep: &Endpoint, version: &str) -> ObjectMeta {
    let endpoint = ep.name_any();
    ObjectMeta {
        name: Some(object_name(&endpoint, version)),
        namespace: ep.namespace(),
        labels: Some(labels(&endpoint, version)),
        owner_references: ep.controller_owner_ref(&()).map(|r| vec![r]),
        ..Default::default()
    }
}

fn selector(endpoint: &str, version: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(LABEL_ENDPOINT.into(), endpoint.into()), (LABEL_VERSION.into(), version.into())])
}

/// The version's Deployment of node pods.
pub fn deployment(ep: &Endpoint, v: &VersionSpec, r: &Resolved, s: &Settings) -> Deployment {
    let endpoint = ep.name_any();
    let http = |path: &str| HTTPGetAction {
        path: Some(path.into()),
        port: IntOrString::Int(i32::from(s.node_port)),
        ..Default::default()
    };
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(http(path)),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    };
    let container = Container {
        name: "node".into(),
        image: Some(s.image.clone()),
        args: Some(
            [
                "node",
                "--artifact",
                &v.artifact,
                "--endpoint",
                &endpoint,
                "--version",
                &v.name,
                "--listen",
                "0.0.0.0",
                "--port",
                &s.node_port.to_string(),
                "--data-dir",
                "/data",
                "--drain-seconds",
                &s.drain_seconds.to_string(),
            ]
            .map(String::from)
            .into_iter()
            .chain(
                s.compile_cache
                    .iter()
                    .flat_map(|_| ["--cache-dir".to_string(), "/cache".to_string()]),
            )
            // The pod's CPU limit is the version's: the node makes no
            // cgroup of its own.
            .chain(r.cpu_limit.map(|_| "--cpu-limited-by-container".to_string()))
            // The Endpoint's config over the artifact's (the node keeps what
            // is its own: timeouts, instances, limits, the device).
            .chain(
                (!v.config.is_empty())
                    .then(|| ["--config".to_string(), serde_json::Value::Object(v.config.clone()).to_string()])
                    .into_iter()
                    .flatten(),
            )
            .collect(),
        ),
        ports: Some(vec![ContainerPort {
            name: Some("internal".into()),
            container_port: i32::from(s.node_port),
            ..Default::default()
        }]),
        // Ready once its replicas ran init(); 503 while it drains.
        readiness_probe: Some(probe("/v2/health/ready", 1, 1)),
        liveness_probe: Some(probe("/v2/health/live", 10, 3)),
        // Routers see the pod leave its EndpointSlice before SIGTERM
        // starts the drain.
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction { seconds: 2 }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        resources: Some(resources(v, r, s)),
        // A node that exits (a bad artifact, init() failing) says why in its
        // last log lines; the kubelet keeps them as the termination message,
        // which the operator puts in the version's status.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        // The artifact, the compile cache and the node's scratch store: the
        // only writable place.
        volume_mounts: Some(
            std::iter::once(VolumeMount {
                name: "data".into(),
                mount_path: "/data".into(),
                ..Default::default()
            })
            .chain(s.compile_cache.iter().map(|_| VolumeMount {
                name: "cache".into(),
                mount_path: "/cache".into(),
                ..Default::default()
            }))
            .collect(),
        ),
        ..Default::default()
    };
    let plugin = !matches!(r.device.as_str(), "cpu" | "cuda");
    let pod = PodSpec {
        containers: vec![container],
        // preStop, then the drain, then a margin.
        termination_grace_period_seconds: Some(i64::from(2 + s.drain_seconds + 5)),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            fs_group: Some(65532),
            ..Default::default()
        }),
        node_selector: plugin.then(|| BTreeMap::from([(LABEL_DEVICE.to_string(), r.device.clone())])),
        volumes: Some(
            std::iter::once(Volume {
                name: "data".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            })
            .chain(s.compile_cache.iter().map(|path| Volume {
                name: "cache".into(),
                host_path: Some(HostPathVolumeSource {
                    path: path.clone(),
                    type_: Some("DirectoryOrCreate".into()),
                }),
                ..Default::default()
            }))
            .collect(),
        ),
        automount_service_account_token: Some(false),
        ..Default::default()
    };
    Deployment {
        metadata: meta(ep, &v.name),
        spec: Some(DeploymentSpec {
            // Autoscaled: the router owns the count (scale subresource).
            replicas: r.autoscale.is_none().then_some(r.pool.replicas as i32),
            selector: LabelSelector {
                match_labels: Some(selector(&endpoint, &v.name)),
                ..Default::default()
            },
            // A new pod serves before an old one goes.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(&endpoint, &v.name)),
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A replica's share of the machine: its config's cpu_cores and memory_gb
/// (plus the process), its cpu_cores_limit, and a GPU when it asks for cuda.
fn resources(v: &VersionSpec, r: &Resolved, s: &Settings) -> ResourceRequirements {
    let memory_mib = (r.memory_gb * 1024.0).ceil() as u64 + u64::from(s.process_memory_mib);
    let mut requests = BTreeMap::from([
        ("cpu".to_string(), Quantity(format!("{}m", (r.cpu_cores * 1000.0).round() as u64))),
        ("memory".to_string(), Quantity(format!("{memory_mib}Mi"))),
    ]);
    let mut limits = BTreeMap::from([("memory".to_string(), Quantity(format!("{memory_mib}Mi")))]);
    if let Some(cores) = r.cpu_limit {
        limits.insert("cpu".into(), Quantity(format!("{}m", (cores * 1000.0).round() as u64)));
    }
    if r.device == "cuda" {
        let gpus = v.config.get("gpu_cores").and_then(|g| g.as_u64()).unwrap_or(1).max(1);
        requests.insert("nvidia.com/gpu".into(), Quantity(gpus.to_string()));
        limits.insert("nvidia.com/gpu".into(), Quantity(gpus.to_string()));
    }
    ResourceRequirements {
        requests: Some(requests),
        limits: Some(limits),
        ..Default::default()
    }
}

/// The version's headless Service: its EndpointSlices list the pods (ready,
/// serving, terminating) for the routers.
pub fn service(ep: &Endpoint, v: &VersionSpec, s: &Settings) -> Service {
    Service {
        metadata: meta(ep, &v.name),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector(&ep.name_any(), &v.name)),
            ports: Some(vec![ServicePort {
                name: Some("internal".into()),
                port: i32::from(s.node_port),
                target_port: Some(IntOrString::Int(i32::from(s.node_port))),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The endpoint's NetworkPolicy: its node pods take connections from the
/// router pods of their namespace only, on the node port. The internal
/// protocol carries no credentials (the router checks keys and tokens), so
/// without it any pod of the cluster could score past the keys. Kubelet
/// probes and `kubectl port-forward` are not affected (Kubernetes always
/// lets a pod's own node in); a CNI that does not enforce NetworkPolicy
/// ignores it. Policies add up: a namespace's own policy may let more in
/// (a metrics scraper, say).
pub fn network_policy(ep: &Endpoint, s: &Settings) -> NetworkPolicy {
    let endpoint = ep.name_any();
    let pods = |labels: BTreeMap<String, String>| LabelSelector {
        match_labels: Some(labels),
        ..Default::default()
    };
    NetworkPolicy {
        metadata: endpoint_meta(ep, policy_name(&endpoint)),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pods(BTreeMap::from([
                ("app.kubernetes.io/name".into(), "wasmscore-node".into()),
                (LABEL_ENDPOINT.into(), endpoint),
            ]))),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![NetworkPolicyPeer {
                    pod_selector: Some(pods(s.router_pods.clone())),
                    ..Default::default()
                }]),
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(i32::from(s.node_port))),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
            }]),
            ..Default::default()
        }),
    }
}

/// An object of the whole endpoint (not of one version), owned by it.
fn endpoint_meta(ep: &Endpoint, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: ep.namespace(),
        labels: Some(BTreeMap::from([
            ("app.kubernetes.io/managed-by".into(), "wasmscore-operator".into()),
            (LABEL_ENDPOINT.into(), ep.name_any()),
        ])),
        owner_references: ep.controller_owner_ref(&()).map(|r| vec![r]),
        ..Default::default()
    }
}

/// The endpoint's NetworkPolicy is named ENDPOINT-nodes.
pub fn policy_name(endpoint: &str) -> String {
    format!("{endpoint}-nodes")
}

/// The endpoint's keys: made once by the operator, read by the routers,
/// regenerated by the CLI.
pub fn secret_name(endpoint: &str) -> String {
    format!("{endpoint}-keys")
}

/// An endpoint's credentials, as local mode makes them: two keys and a
/// token signing key (32 random bytes each, hex).
#[derive(Clone, PartialEq)]
pub struct Keys {
    pub primary: String,
    pub secondary: String,
    pub signing_kid: String,
    pub signing_secret: String,
}

impl Keys {
    pub fn generate() -> Keys {
        let key = || {
            let mut b = [0u8; 32];
            rand::fill(&mut b);
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        };
        let signing_secret = key();
        Keys {
            primary: key(),
            secondary: key(),
            signing_kid: signing_secret[..8].to_string(),
            signing_secret,
        }
    }
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(<redacted>)")
    }
}

/// The endpoint's Secret: `primaryKey`, `secondaryKey` and `signingKeys`
/// (router.json's `[{"kid", "secret"}]`).
pub fn secret(ep: &Endpoint, keys: &Keys) -> Secret {
    let endpoint = ep.name_any();
    let signing = serde_json::json!([{"kid": keys.signing_kid, "secret": keys.signing_secret}]).to_string();
    Secret {
        metadata: endpoint_meta(ep, secret_name(&endpoint)),
        string_data: Some(BTreeMap::from([
            ("primaryKey".into(), keys.primary.clone()),
            ("secondaryKey".into(), keys.secondary.clone()),
            ("signingKeys".into(), signing),
        ])),
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::fixtures::{endpoint, version, DIGEST};

    fn json<T: serde::Serialize>(t: &T) -> serde_json::Value {
        serde_json::to_value(t).unwrap()
    }

    #[test]
    fn the_seeds_steps_give_one_deployment_and_service_per_version() {
        let s = Settings::default();
        // 20% first version (it gets everything), then a second at 10%,
        // then 40% and default, then the first deleted.
        let steps = [
            vec![version("v1", 20, true, serde_json::json!({}))],
            vec![
                version("v1", 20, true, serde_json::json!({})),
                version("v2", 10, false, serde_json::json!({})),
            ],
            vec![
                version("v1", 20, false, serde_json::json!({})),
                version("v2", 40, true, serde_json::json!({})),
            ],
            vec![version("v2", 40, true, serde_json::json!({}))],
        ];
        let want: [&[&str]; 4] = [&["iris-v1"], &["iris-v1", "iris-v2"], &["iris-v1", "iris-v2"], &["iris-v2"]];
        for (versions, want) in steps.into_iter().zip(want) {
            let d = desired(&endpoint(versions), &s).unwrap();
            let names = |v: Vec<Option<String>>| v.into_iter().map(Option::unwrap).collect::<Vec<_>>();
            assert_eq!(names(d.deployments.iter().map(|x| x.metadata.name.clone()).collect()), want);
            assert_eq!(names(d.services.iter().map(|x| x.metadata.name.clone()).collect()), want);
        }
    }

    #[test]
    fn a_broken_rule_or_config_names_it_and_makes_nothing() {
        let s = Settings::default();
        let cases = [
            (
                vec![
                    version("v1", 60, true, serde_json::json!({})),
                    version("v2", 60, false, serde_json::json!({})),
                ],
                "add up to 120%",
            ),
            (vec![version("v1", 10, false, serde_json::json!({}))], "exactly one default"),
            (vec![version("v1", 0, true, serde_json::json!({"replicas": 2}))], "version v1: "),
            (
                vec![
                    version("v1", 0, true, serde_json::json!({})),
                    version("v1", 0, false, serde_json::json!({})),
                ],
                "listed twice",
            ),
            (vec![version("V_1", 0, true, serde_json::json!({}))], "must be a DNS label"),
            (
                vec![version(&"v".repeat(60), 0, true, serde_json::json!({}))],
                "Kubernetes allows 63",
            ),
        ];
        for (versions, want) in cases {
            let e = desired(&endpoint(versions), &s).unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} should contain {want:?}");
        }
        // A Service's name begins with a letter: so must an endpoint's.
        let mut digit = endpoint(vec![version("v1", 0, true, serde_json::json!({}))]);
        digit.metadata.name = Some("3d-seg".into());
        let e = desired(&digit, &s).unwrap_err().to_string();
        assert!(e.contains("must begin with a letter"), "{e}");
    }

    #[test]
    fn the_policy_lets_in_the_router_pods_the_operator_is_told_of() {
        let ep = endpoint(vec![version("v1", 0, true, serde_json::json!({}))]);
        let from = |s: &Settings| json(&network_policy(&ep, s))["spec"]["ingress"][0]["from"][0]["podSelector"].clone();
        assert_eq!(
            from(&Settings::default()),
            serde_json::json!({"matchLabels": {"app.kubernetes.io/name": "wasmscore-router"}})
        );
        let s = Settings {
            router_pods: BTreeMap::from([("app".into(), "edge".into()), ("team".into(), "ml".into())]),
            ..Settings::default()
        };
        assert_eq!(from(&s), serde_json::json!({"matchLabels": {"app": "edge", "team": "ml"}}));
    }

    #[test]
    fn a_label_is_checked_as_kubernetes_checks_it() {
        let ok = |s: &str, k: &str, v: &str| assert_eq!(label(s), Ok((k.to_string(), v.to_string())), "{s}");
        ok("app=edge", "app", "edge");
        ok(
            "app.kubernetes.io/name=wasmscore-router",
            "app.kubernetes.io/name",
            "wasmscore-router",
        );
        ok("tier=", "tier", "");
        ok("a_b.c=x.y_z-1", "a_b.c", "x.y_z-1");
        for bad in [
            "app",
            "=x",
            "-app=x",
            "app=-x",
            "App.IO/name=x",
            "/name=x",
            "a/b/c=x",
            "app=x y",
            &format!("app={}", "v".repeat(64)),
        ] {
            assert!(label(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn replicas_are_left_to_the_router_unless_fixed() {
        let s = Settings::default();
        let d = desired(&endpoint(vec![version("v1", 0, true, serde_json::json!({}))]), &s).unwrap();
        assert_eq!(
            json(&d.deployments[0])["spec"].get("replicas"),
            None,
            "autoscaled: no replicas field"
        );
        let d = desired(&endpoint(vec![version("v1", 0, true, serde_json::json!({"num_replicas": 3}))]), &s).unwrap();
        assert_eq!(json(&d.deployments[0])["spec"]["replicas"], 3);
    }

    #[test]
    fn node_pods_are_locked_down_probed_and_sized_by_the_config() {
        let s = Settings::default();
        let ep = endpoint(vec![version("v1", 0, true, serde_json::json!({"cpu_cores": 0.5, "memory_gb": 1}))]);
        let d = json(&desired(&ep, &s).unwrap().deployments[0]);
        let owner = &d["metadata"]["ownerReferences"][0];
        assert_eq!(
            (owner["kind"].as_str(), owner["controller"].as_bool()),
            (Some("Endpoint"), Some(true))
        );
        let pod = &d["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        let args: Vec<&str> = c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        assert_eq!(args[..3], ["node", "--artifact", &*format!("registry:5000/iris@sha256:{DIGEST}")]);
        // The Endpoint's config reaches the node, over the artifact's.
        let at = args.iter().position(|a| *a == "--config").expect("--config");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(args[at + 1]).unwrap(),
            serde_json::json!({"cpu_cores": 0.5, "memory_gb": 1})
        );
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/v2/health/ready");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/v2/health/live");
        assert_eq!(c["lifecycle"]["preStop"]["sleep"]["seconds"], 2);
        assert!(pod["terminationGracePeriodSeconds"].as_i64().unwrap() > i64::from(s.drain_seconds) + 2);
        let sc = &c["securityContext"];
        assert_eq!(
            (
                sc["runAsNonRoot"].as_bool(),
                sc["readOnlyRootFilesystem"].as_bool(),
                sc["allowPrivilegeEscalation"].as_bool()
            ),
            (Some(true), Some(true), Some(false))
        );
        assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
        assert_eq!(c["resources"]["requests"]["cpu"], "500m");
        assert_eq!(c["resources"]["requests"]["memory"], "1280Mi");
        assert_eq!(c["resources"]["limits"]["memory"], "1280Mi");
        assert_eq!(c["resources"]["limits"].get("cpu"), None, "no cpu_cores_limit, no CPU limit");
        assert!(!args.contains(&"--cpu-limited-by-container"));
        assert_eq!(pod.get("nodeSelector"), None);
        // cpu_cores_limit is the pod's CPU limit, and the node leaves it to the pod.
        let ep = endpoint(vec![version(
            "v1",
            0,
            true,
            serde_json::json!({"cpu_cores": 0.5, "cpu_cores_limit": 1.5}),
        )]);
        let d = json(&desired(&ep, &s).unwrap().deployments[0]);
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["resources"]["limits"]["cpu"], "1500m");
        assert!(c["args"].as_array().unwrap().iter().any(|a| a == "--cpu-limited-by-container"));
    }

    #[test]
    fn gpus_and_plugin_devices_reach_the_scheduler() {
        let s = Settings::default();
        let ep = endpoint(vec![version("v1", 0, true, serde_json::json!({"gpu_cores": 2}))]);
        let d = json(&desired(&ep, &s).unwrap().deployments[0]);
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], "2");
        let ep = endpoint(vec![version("v1", 0, true, serde_json::json!({"device": "fpga-sim"}))]);
        let d = json(&desired(&ep, &s).unwrap().deployments[0]);
        assert_eq!(d["spec"]["template"]["spec"]["nodeSelector"][LABEL_DEVICE], "fpga-sim");
    }

    #[test]
    fn the_secret_holds_fresh_keys_and_is_owned_by_the_endpoint() {
        let ep = endpoint(vec![version("v1", 0, true, serde_json::json!({}))]);
        let (a, b) = (Keys::generate(), Keys::generate());
        assert_ne!(a.primary, b.primary);
        assert_eq!(a.primary.len(), 64);
        assert_eq!(format!("{a:?}"), "Keys(<redacted>)");
        let s = json(&secret(&ep, &a));
        assert_eq!(s["metadata"]["name"], "iris-keys");
        assert_eq!(s["metadata"]["ownerReferences"][0]["kind"], "Endpoint");
        assert_eq!(s["stringData"]["primaryKey"], a.primary.as_str());
        let signing: serde_json::Value = serde_json::from_str(s["stringData"]["signingKeys"].as_str().unwrap()).unwrap();
        assert_eq!(signing[0]["secret"], a.signing_secret.as_str());
    }

    #[test]
    fn each_version_has_a_headless_service_over_its_pods() {
        let s = Settings::default();
        let d = desired(&endpoint(vec![version("v1", 0, true, serde_json::json!({}))]), &s).unwrap();
        let svc = json(&d.services[0]);
        assert_eq!(svc["spec"]["clusterIP"], "None");
        assert_eq!(svc["spec"]["selector"][LABEL_VERSION], "v1");
        assert_eq!(svc["spec"]["ports"][0]["port"], 8081);
        let dep = json(&d.deployments[0]);
        assert_eq!(dep["spec"]["selector"]["matchLabels"], svc["spec"]["selector"]);
    }
}
