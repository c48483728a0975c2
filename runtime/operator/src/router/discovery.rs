//! The router's view of a namespace: Endpoints, their keys Secrets and
//! EndpointSlices, followed by kube-runtime watchers (list, then watch from
//! the list's resourceVersion; a 410 Gone relists) into reflector stores.
//! Each change rebuilds the fleet's spec through `routing` and hands it to
//! the fleet, the same way router.json's discovery does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::{watch, Notify};
use wasmscore_fleet::{Discovery, EndpointSpec, FleetSpec};

use crate::crd::Endpoint;
use crate::desired::{secret_name, LABEL_ENDPOINT};
use crate::routing;

/// Changes that arrive together (a scale-up's slice updates) are taken
/// as one.
const SETTLE: Duration = Duration::from_millis(20);

pub struct KubeDiscovery {
    rx: watch::Receiver<Arc<FleetSpec>>,
}

/// Follows one kind into a store; every event (or watch error, which the
/// watcher retries with backoff) wakes the rebuild.
fn follow<K>(api: Api<K>, config: watcher::Config, changed: Arc<Notify>) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let kind = K::kind(&()).to_string();
    let stream = reflector::reflector(writer, watcher(api, config).default_backoff());
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            if let Err(e) = event {
                tracing::warn!(kind, error = %e, "watch failed; retrying (the router keeps what it has)");
            }
            changed.notify_one();
        }
    });
    store
}

struct Stores {
    namespace: String,
    endpoints: Store<Endpoint>,
    secrets: Store<Secret>,
    slices: Store<EndpointSlice>,
}

impl KubeDiscovery {
    /// Watches NAMESPACE; returns once every watcher has listed (the router
    /// is not ready before: it would serve an empty table).
    pub async fn start(client: Client, namespace: &str) -> Result<KubeDiscovery, String> {
        let changed = Arc::new(Notify::new());
        let stores = Stores {
            namespace: namespace.to_string(),
            endpoints: follow(
                Api::namespaced(client.clone(), namespace),
                watcher::Config::default(),
                changed.clone(),
            ),
            // Only the endpoints' keys: the router has no business with other Secrets.
            secrets: follow(
                Api::namespaced(client.clone(), namespace),
                watcher::Config::default().labels(LABEL_ENDPOINT),
                changed.clone(),
            ),
            slices: follow(
                Api::namespaced(client, namespace),
                watcher::Config::default().labels(routing::SERVICE_NAME_LABEL),
                changed.clone(),
            ),
        };
        tracing::info!(namespace, "listing Endpoints, their Secrets and EndpointSlices");
        for ready in [
            stores.endpoints.wait_until_ready().await,
            stores.secrets.wait_until_ready().await,
            stores.slices.wait_until_ready().await,
        ] {
            ready.map_err(|e| format!("a watcher stopped before its first list: {e}"))?;
        }
        let mut last_good = HashMap::new();
        let mut complaints = HashMap::new();
        let first = stores.spec(&mut last_good, &mut complaints);
        let (tx, rx) = watch::channel(Arc::new(first));
        tokio::spawn(async move {
            loop {
                changed.notified().await;
                tokio::time::sleep(SETTLE).await;
                if tx.is_closed() {
                    return;
                }
                let spec = stores.spec(&mut last_good, &mut complaints);
                if *tx.borrow().as_ref() != spec {
                    let _ = tx.send(Arc::new(spec));
                }
            }
        });
        Ok(KubeDiscovery { rx })
    }
}

impl Discovery for KubeDiscovery {
    fn subscribe(&self) -> watch::Receiver<Arc<FleetSpec>> {
        self.rx.clone()
    }
}

impl Stores {
    /// What the stores say now. An Endpoint the rules refuse (the operator
    /// says why in its status) keeps its last good entry, as a refused
    /// router.json keeps the last good file; one being deleted is dropped.
    fn spec(&self, last_good: &mut HashMap<String, EndpointSpec>, complaints: &mut HashMap<String, String>) -> FleetSpec {
        let slices: Vec<EndpointSlice> = self.slices.state().iter().map(|s| (**s).clone()).collect();
        let mut endpoints = Vec::new();
        let mut names: Vec<String> = Vec::new();
        for ep in self.endpoints.state() {
            let name = ep.name_any();
            if ep.meta().deletion_timestamp.is_some() {
                continue;
            }
            names.push(name.clone());
            let key = ObjectRef::new(&secret_name(&name)).within(&self.namespace);
            let secret = self.secrets.get(&key);
            let entry = routing::router_endpoint(&ep, secret.as_deref(), &slices).and_then(|e| {
                let spec = FleetSpec::parse(&serde_json::to_vec(&serde_json::json!({"endpoints": [e]})).expect("JSON"))?;
                Ok(spec.endpoints.into_iter().next().expect("one endpoint"))
            });
            match entry {
                Ok(e) => {
                    complaints.remove(&name);
                    last_good.insert(name, e.clone());
                    endpoints.push(e);
                }
                Err(why) => {
                    if complaints.get(&name) != Some(&why) {
                        tracing::warn!(endpoint = %name, reason = %why, "endpoint not taken; serving its last good spec, if any");
                        complaints.insert(name.clone(), why);
                    }
                    // Its last good rollout and config, with the nodes its
                    // versions have now (pods still come and go) and its
                    // auth as it is now: a key rotated or revoked while the
                    // rest is refused takes effect, and auth that does not
                    // read lets no request in (the complaint above says why).
                    if let Some(e) = last_good.get(&name) {
                        let mut e = e.clone();
                        e.auth = routing::router_auth_now(&ep, secret.as_deref()).unwrap_or_else(|(none, _)| none);
                        for v in &mut e.versions {
                            let mut nodes = routing::ready_nodes(&name, &v.name, &slices);
                            nodes.truncate(wasmscore_fleet::config::MAX_NODES);
                            v.nodes = nodes;
                        }
                        endpoints.push(e);
                    }
                }
            }
        }
        last_good.retain(|n, _| names.contains(n));
        endpoints.sort_by(|a, b| a.name.cmp(&b.name));
        FleetSpec { endpoints }
    }
}
