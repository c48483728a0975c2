//! Hop 3 across the network: a version whose replicas are `wasmscore node`
//! processes (on Kubernetes, the pods of the version's Deployment).
//!
//! Both ends of the internal scoring protocol live here, so they cannot
//! drift apart: [`wire`] is the protocol (HTTP/2 cleartext, one POST per
//! request, the node's load on every response), [`node`] serves a local
//! replica pool over it, and [`nodes`] is the router's side: a version's
//! nodes, picked by the power of two choices on outstanding requests over
//! pooled HTTP/2 connections, with outlier ejection and retries only for
//! requests that provably never reached a module. [`streams`] drives a
//! served connection and its HTTP/2 streams on one task, for the node here
//! and for the front server (wasmscore-server). [`shards`] runs a
//! router's connections on threads of their own, each with its own
//! connections to the nodes. [`ahead`] bounds a decoupled call's responses
//! waiting for their reader, here and at the gRPC edge.
//!
//! It leaves out where node addresses come from (the router's discovery)
//! and what runs in a replica (the replica pool and the engine).

pub mod ahead;
pub mod logging;
pub mod node;
pub mod nodes;
pub mod otlp;
pub mod shards;
pub mod streams;
pub mod trace;
pub mod wire;

pub use nodes::{Call, NodeHttp, NodeView, Nodes, NodesConfig};
