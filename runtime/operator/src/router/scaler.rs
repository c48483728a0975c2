//! Where the leader's autoscaler decisions go on Kubernetes: the version's
//! Deployment's scale subresource (as an HPA would write it; no HPA is
//! made, the router is the only autoscaler). The operator leaves
//! `spec.replicas` out of what it applies for an autoscaled version, so the
//! two never fight over it.

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use wasmscore_fleet::Scaler;

use super::leader::Leadership;
use crate::desired::object_name;

/// The field manager of the router's writes.
pub const FIELD_MANAGER: &str = "wasmscore-router";

pub struct KubeScaler {
    pub deployments: Api<Deployment>,
    pub identity: String,
    pub leadership: Leadership,
    pub runtime: tokio::runtime::Handle,
}

impl Scaler for KubeScaler {
    fn describe(&self) -> serde_json::Value {
        serde_json::json!({"kind": "kubernetes", "identity": self.identity, "leader": self.leadership.is_leader(), "applies": self.leadership.is_leader()})
    }

    fn scale(&self, endpoint: &str, version: &str, from: usize, to: usize, reason: &str) {
        let name = object_name(endpoint, version);
        // Waking from zero is safe for any router: the test makes it a
        // no-op when another router (or the leader) already did.
        let wake = from == 0 && to == 1;
        if !wake && !self.leadership.is_leader() {
            tracing::debug!(deployment = %name, from, to, "not the leader: leaving the decision to it");
            return;
        }
        let (api, reason) = (self.deployments.clone(), reason.to_string());
        self.runtime.spawn(async move {
            let done = if wake {
                wake_up(&api, &name).await
            } else {
                set(&api, &name, to).await
            };
            match done {
                Ok(true) => tracing::info!(deployment = %name, from, to, reason, "scaled"),
                Ok(false) => tracing::debug!(deployment = %name, "already awake"),
                Err(e) => tracing::warn!(deployment = %name, from, to, error = %e, "scale not applied; the next decision tries again"),
            }
        });
    }
}

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

/// The leader's decision: the count, whatever it was.
async fn set(api: &Api<Deployment>, name: &str, to: usize) -> Result<bool, kube::Error> {
    let patch = Patch::Merge(serde_json::json!({"spec": {"replicas": to}}));
    api.patch_scale(name, &params(), &patch).await.map(|_| true)
}

/// 0 -> 1 only if it is still 0: a replace carrying the resourceVersion it
/// read, so a router racing another (or the leader) loses with a 409.
async fn wake_up(api: &Api<Deployment>, name: &str) -> Result<bool, kube::Error> {
    let mut scale = api.get_scale(name).await?;
    let spec = scale.spec.get_or_insert_with(Default::default);
    if spec.replicas.unwrap_or(0) != 0 {
        return Ok(false);
    }
    spec.replicas = Some(1);
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    match api.replace_scale(name, &pp, &scale).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
