//! Hop 1 of the request path: HTTP in, JSON out.
//!
//! Accepts connections (HTTP/1.1 and HTTP/2; plain, or TLS with ALPN) on
//! loopback, applies the edge limits (connection cap, header read timeout,
//! header and body size), checks the endpoint's key or token (through the
//! router's published policy), decodes the Azure ML style `/score` call, asks the
//! router for a version and its pool for a response, and writes it back with
//! the version that served it. Errors are always JSON
//! `{"error":{"code","message"}}` with the matching status. The admin API is
//! routed to the control plane after the admin token is checked.

mod errors;
pub mod grpc;
mod http;
pub use wasmscore_remote::logging;
mod openapi;
pub mod plane;
mod shm;
pub mod tls;
pub mod traces;
mod triton;
mod ui;

pub use http::{serve, Listeners, ServerConfig};
pub use plane::{Answer, Plane};

/// Fuzz entry points (fuzz/ and the corpus replay in tests/).
pub mod fuzzing {
    /// The Open Inference Protocol decoders: byte 0 even, the REST decoder
    /// (JSON and the binary extension's framing); odd, gRPC's
    /// ModelInferRequest with raw and typed contents against shapes and
    /// datatypes. Must never panic or allocate beyond what the bytes hold.
    pub fn oip_decoders(data: &[u8]) {
        match data.split_first() {
            Some((b, rest)) if b % 2 == 0 => wasmscore_oip::fuzzing::infer_request(rest),
            Some((_, rest)) => crate::grpc::fuzz_infer_request(rest),
            None => {}
        }
    }
}
