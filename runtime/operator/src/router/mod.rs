//! The router on Kubernetes: the fleet (runtime/fleet) fed by watchers
//! instead of router.json, and the autoscaler's decisions applied to
//! Deployments by the one router that holds the Lease.
//!
//! - `discovery`: Endpoints, their Secrets and EndpointSlices, watched.
//! - `leader`: the Lease election.
//! - `scaler`: decisions to the Deployment scale subresource.

pub mod discovery;
pub mod leader;
pub mod scaler;

pub use discovery::KubeDiscovery;
pub use leader::{Election, Leadership};
pub use scaler::KubeScaler;
