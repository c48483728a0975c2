//! Hop 1 of the request path: HTTP in, JSON out.
//!
//! Accepts connections (HTTP/1.1 and HTTP/2) on loopback, applies the edge
//! limits (body size), decodes the Azure ML style `/score` call, asks the
//! router for a version and its pool for a response, and writes it back with
//! the version that served it. Errors are always JSON
//! `{"error":{"code","message"}}` with the matching status. The admin API is
//! routed to the control plane after the admin token is checked.

mod errors;
mod http;

pub use http::{serve, ServerConfig};
