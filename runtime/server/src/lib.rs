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
mod http;
pub mod plane;
pub mod tls;
mod ui;

pub use http::{serve, Listeners, ServerConfig};
pub use plane::{Answer, Plane};
