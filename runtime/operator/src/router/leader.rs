//! One router acts on the autoscaler's decisions: the holder of a
//! `coordination.k8s.io/v1` Lease, as client-go's leader election keeps it
//! (and kube-lease-manager): the holder renews `renewTime` every
//! `retry` period; another router takes the Lease over only once it has
//! gone unrenewed for `leaseDurationSeconds`. Every write is a replace with
//! the resourceVersion read, so two routers racing for it cannot both win
//! (the loser gets 409 Conflict). A holder that cannot renew within its
//! lease duration stops acting before anyone else may start.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

#[derive(Clone)]
pub struct Election {
    pub lease: String,
    pub identity: String,
    /// How long an unrenewed Lease keeps its holder (client-go: 15 s).
    pub duration: Duration,
}

impl Election {
    /// How often the Lease is read and renewed (client-go: 2 s).
    fn retry(&self) -> Duration {
        (self.duration / 7).max(Duration::from_millis(200))
    }
}

/// Whether this router holds the Lease now.
#[derive(Clone, Default)]
pub struct Leadership(Arc<AtomicBool>);

impl Leadership {
    pub fn is_leader(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn set(&self, leader: bool, e: &Election) {
        if self.0.swap(leader, Ordering::AcqRel) != leader {
            if leader {
                tracing::info!(lease = %e.lease, identity = %e.identity, "leader: this router now applies the autoscaler's decisions");
            } else {
                tracing::info!(lease = %e.lease, identity = %e.identity, "not the leader: this router only routes");
            }
        }
    }
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// Runs the election until the process ends; `leadership` follows it.
pub async fn run(client: Client, namespace: String, e: Election, leadership: Leadership) {
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    let mut renewed = Instant::now();
    loop {
        match try_hold(&api, &e).await {
            Ok(true) => {
                renewed = Instant::now();
                leadership.set(true, &e);
            }
            Ok(false) => leadership.set(false, &e),
            Err(err) => {
                tracing::warn!(lease = %e.lease, error = %err, "lease not read or renewed");
                // Stop acting before another router may take over.
                if renewed.elapsed() + e.retry() >= e.duration {
                    leadership.set(false, &e);
                }
            }
        }
        tokio::time::sleep(e.retry()).await;
    }
}

/// One round: create the Lease, renew it, take it over once expired, or
/// leave it to its holder. Ok(true) when this router holds it.
async fn try_hold(api: &Api<Lease>, e: &Election) -> Result<bool, kube::Error> {
    let seconds = e.duration.as_secs().max(1) as i32;
    let Some(mut lease) = api.get_opt(&e.lease).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(e.lease.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(e.identity.clone()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(err) => Err(err),
        };
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder != e.identity {
        let held_for = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(seconds).max(0) as u64);
        let expired = match &spec.renew_time {
            Some(t) => Timestamp::now().duration_since(t.0).as_secs_f64() > held_for.as_secs_f64(),
            None => true,
        };
        if !holder.is_empty() && !expired {
            return Ok(false);
        }
        tracing::info!(lease = %e.lease, previous = %holder, "taking over the lease");
        spec.holder_identity = Some(e.identity.clone());
        spec.acquire_time = Some(now());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(now());
    spec.lease_duration_seconds = Some(seconds);
    // A replace carries the resourceVersion read: a stale one is a 409.
    match api.replace(&e.lease, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(err) => Err(err),
    }
}

/// Gives the Lease up on shutdown so another router takes over at once.
pub async fn release(client: Client, namespace: &str, e: &Election) {
    let api: Api<Lease> = Api::namespaced(client, namespace);
    let Ok(Some(mut lease)) = api.get_opt(&e.lease).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(&e.identity) {
        return;
    }
    spec.holder_identity = None;
    spec.renew_time = None;
    match api.replace(&e.lease, &PostParams::default(), &lease).await {
        Ok(_) => tracing::info!(lease = %e.lease, "lease released"),
        Err(err) => tracing::warn!(lease = %e.lease, error = %err, "lease not released; it expires on its own"),
    }
}
