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
//! The router's watchers, the leader's scaler and the controller's main
//! (`wasmscore operator run`) are not built yet.

pub mod crd;
pub mod desired;
pub mod reconcile;

/// The Endpoint CustomResourceDefinition, as `wasmscore operator crd`
/// prints it and deploy/crd.json holds it.
pub fn crd_json() -> String {
    use kube::CustomResourceExt;
    serde_json::to_string_pretty(&crd::Endpoint::crd()).expect("a CRD serializes")
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
