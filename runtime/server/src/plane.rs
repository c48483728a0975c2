//! What the server asks of whoever publishes the routing table: `up`'s
//! control plane (versions in this process, state in SQLite), or the
//! router's fleet (endpoints from a config file, versions on remote nodes).
//! The request path is the same for both; only this side differs.

use std::future::Future;
use std::sync::Arc;

use wasmscore_control::Control;
use wasmscore_router::Router;

/// A status code and a JSON body.
pub struct Answer {
    pub status: u16,
    pub body: serde_json::Value,
}

pub trait Plane: Send + Sync + 'static {
    fn router(&self) -> &Router;
    /// `/v2/health/ready`: serving what it should (stored versions restored,
    /// or the config loaded and checked once).
    fn is_ready(&self) -> bool;
    /// `/metrics`, Prometheus text.
    fn metrics(&self) -> String;
    /// `/v2/models/{endpoint}[/versions/{v}]/ready`: ready or not, with the
    /// state and the reason; an error for an unknown endpoint or version.
    fn model_ready(&self, endpoint: &str, version: Option<&str>) -> Result<(bool, serde_json::Value), (u16, &'static str, String)>;
    /// `/v2/models/{endpoint}[/versions/{v}]`: Open Inference Protocol
    /// model metadata (name, versions, platform, inputs, outputs).
    fn model_metadata(&self, endpoint: &str, version: Option<&str>) -> Result<serde_json::Value, (u16, &'static str, String)>;
    /// Every version, serving or not (Triton's repository index):
    /// (endpoint, version, why it does not serve).
    fn versions(&self) -> Vec<(String, String, Option<String>)>;
    /// `/admin/v1/...`, after the admin token was checked.
    fn admin(self: &Arc<Self>, method: &str, path: &str, query: &str, body: Vec<u8>) -> impl Future<Output = Answer> + Send;
}

impl Plane for Control {
    fn router(&self) -> &Router {
        Control::router(self)
    }
    fn is_ready(&self) -> bool {
        Control::is_ready(self)
    }
    fn metrics(&self) -> String {
        Control::metrics(self)
    }
    fn model_ready(&self, endpoint: &str, version: Option<&str>) -> Result<(bool, serde_json::Value), (u16, &'static str, String)> {
        self.ready(endpoint, version).map_err(|e| (e.status(), e.code(), e.to_string()))
    }
    fn model_metadata(&self, endpoint: &str, version: Option<&str>) -> Result<serde_json::Value, (u16, &'static str, String)> {
        self.metadata(endpoint, version).map_err(|e| (e.status(), e.code(), e.to_string()))
    }
    fn versions(&self) -> Vec<(String, String, Option<String>)> {
        Control::versions(self)
    }
    async fn admin(self: &Arc<Self>, method: &str, path: &str, query: &str, body: Vec<u8>) -> Answer {
        let r = Control::admin(self, method, path, query, body).await;
        Answer {
            status: r.status,
            body: r.body,
        }
    }
}
