//! The admin API (JSON over HTTP under /admin/v1/), transport-free: the
//! server hands us method, path and body after checking the admin token.

use std::sync::Arc;

use crate::deploy::{Control, VersionSpec};
use crate::ControlError;

/// A status code and a JSON body.
pub struct AdminResponse {
    pub status: u16,
    pub body: serde_json::Value,
}

fn ok(body: serde_json::Value) -> AdminResponse {
    AdminResponse { status: 200, body }
}

fn error(e: ControlError) -> AdminResponse {
    AdminResponse {
        status: e.status(),
        body: serde_json::json!({"error": {"code": e.code(), "message": e.to_string()}}),
    }
}

impl Control {
    /// Handles one admin request. Deploys block, so this runs them on a blocking thread.
    pub async fn admin(self: &Arc<Self>, method: &str, path: &str, body: Vec<u8>) -> AdminResponse {
        let rest = path.trim_start_matches("/admin/v1").trim_matches('/');
        let parts: Vec<&str> = if rest.is_empty() { vec![] } else { rest.split('/').collect() };
        let this = self.clone();
        let result: Result<serde_json::Value, ControlError> = match (method, parts.as_slice()) {
            ("POST", ["blobs"]) => {
                let this = this.clone();
                blocking(move || {
                    this.put_blob(&body)
                        .map(|sha| serde_json::json!({"sha256": sha, "size": body.len()}))
                })
                .await
            }
            ("GET", ["endpoints"]) => Ok(this.list()),
            ("GET", ["endpoints", ep]) => this.show(ep),
            ("GET", ["endpoints", ep, "logs"]) => this.logs(ep, None),
            ("GET", ["endpoints", ep, "versions", v, "logs"]) => this.logs(ep, Some(v)),
            ("DELETE", ["endpoints", ep]) => this.delete_endpoint(ep),
            ("PUT", ["endpoints", ep, "versions", v]) => match serde_json::from_slice::<VersionSpec>(&body) {
                Err(e) => Err(ControlError::BadRequest(format!("version spec: {e}"))),
                Ok(spec) => {
                    let (ep, v) = (ep.to_string(), v.to_string());
                    blocking(move || this.deploy(&ep, &v, spec)).await
                }
            },
            _ => Err(ControlError::NotFound(format!("no admin route {method} {path}"))),
        };
        match result {
            Ok(body) => ok(body),
            Err(e) => error(e),
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ControlError> + Send + 'static) -> Result<T, ControlError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(ControlError::Store(format!("admin task panicked: {e}"))))
}
