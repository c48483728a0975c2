//! wasmscore on Kubernetes: the `Endpoint` resource and what the operator
//! makes of it.
//!
//! - `crd`: the custom resource (group `wasmscore.dev`, `v1alpha1`), its
//!   spec, status and schema; `wasmscore operator crd` prints it.
//! - `desired`: pure functions from an Endpoint to the objects that serve
//!   it (a Deployment of `wasmscore node` pods and a headless Service per
//!   version), checked by the same rollout rules and deployment config as
//!   local mode (`wasmscore-rules`).
//!
//! - `reconcile`: the controller's loop over those (finalizer, server-side
//!   apply, owner references, events, status).
//!
//! - `routing`: what a router serves for an Endpoint (router.json's entry)
//!   from the Endpoint, its Secret and its EndpointSlices.
//!
//! - `router`: the router's side on a cluster: watchers that feed
//!   `routing` to the fleet, the Lease election, and the leader's scaler.

pub mod crd;
pub mod desired;
pub mod reconcile;
pub mod router;
pub mod routing;

/// The Endpoint CustomResourceDefinition, as `wasmscore operator crd`
/// prints it and deploy/crd.json holds it.
pub fn crd_json() -> String {
    use kube::CustomResourceExt;
    serde_json::to_string_pretty(&crd::Endpoint::crd()).expect("a CRD serializes")
}

/// Endpoints for the tests of every module.
#[cfg(test)]
pub(crate) mod fixtures {
    use crate::crd::{Auth, AuthMode, Endpoint, EndpointSpec, VersionSpec};

    pub const DIGEST: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    pub fn version(name: &str, traffic: u32, default: bool, config: serde_json::Value) -> VersionSpec {
        VersionSpec {
            name: name.into(),
            artifact: format!("registry:5000/iris@sha256:{DIGEST}"),
            traffic,
            default,
            control: false,
            mirror: 0,
            config: config.as_object().cloned().unwrap_or_default(),
        }
    }

    /// Endpoint "iris" in namespace "models", as the API server gives it
    /// (uid, generation 3, the operator's finalizer).
    pub fn endpoint(versions: Vec<VersionSpec>) -> Endpoint {
        let mut ep = Endpoint::new(
            "iris",
            EndpointSpec {
                auth: Auth { mode: AuthMode::Key },
                versions,
            },
        );
        ep.metadata.namespace = Some("models".into());
        ep.metadata.uid = Some("uid-1".into());
        ep.metadata.generation = Some(3);
        ep.metadata.resource_version = Some("10".into());
        ep.metadata.finalizers = Some(vec![crate::reconcile::FINALIZER.into()]);
        ep
    }
}

#[cfg(test)]
mod tests {
    /// deploy/crd.json is what `wasmscore operator crd` prints; regenerate
    /// it with `target/release/wasmscore operator crd > deploy/crd.json`.
    #[test]
    fn the_committed_crd_is_the_generated_one() {
        let committed = include_str!("../../../deploy/crd.json");
        assert_eq!(
            committed.trim_end(),
            super::crd_json(),
            "deploy/crd.json is stale: run `target/release/wasmscore operator crd > deploy/crd.json`"
        );
    }
}
