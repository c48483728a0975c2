//! The router across the network: its control side. Where `up` has a
//! control plane with SQLite, `wasmscore router` has this: the endpoints
//! and their versions' nodes from a [`Discovery`] source (router.json now,
//! Kubernetes EndpointSlices next), checked by the same rollout rules as
//! `up` (wasmscore-rules); the nodes' health; the split it publishes to the
//! router (a version with no ready node gives its share to the default, as
//! an Unhealthy one does under `up`); and the autoscaler across nodes, fed
//! by the load the nodes report, whose decisions go to a [`Scaler`].
//!
//! It leaves out the request path itself (server, router, remote) and
//! starting or stopping nodes (the Scaler's business: a person with the
//! file discovery, the operator on Kubernetes).

pub mod config;
pub mod discovery;
mod fleet;

pub use config::{AuthSpec, EndpointSpec, FleetSpec, SigningKeySpec, VersionSpec};
pub use discovery::{Discovery, FileDiscovery};
pub use fleet::{Fleet, LogScaler, Scaler};
