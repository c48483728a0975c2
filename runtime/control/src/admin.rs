//! The admin API (JSON over HTTP under /admin/v1/), transport-free: the
//! server hands us method, path, query and body after checking the admin
//! token.
//!
//! ```text
//! POST   blobs                               raw bytes -> {sha256, size}
//! POST   models                              {name, sha256, file_name?, tags?, description?} -> name:version
//! GET    models[?name=N]   GET models/N[:V]  DELETE models/N:V
//! GET    endpoints         POST endpoints {name, description?, tags?, auth_enabled?, token_auth_enabled?, primary_key?, secondary_key?}
//! GET    endpoints/E       DELETE endpoints/E     PATCH endpoints/E {auth_enabled?, token_auth_enabled?, primary_key?, secondary_key?}
//! GET    endpoints/E/keys                    {primaryKey, secondaryKey}
//! POST   endpoints/E/regen-key {key: primary|secondary}
//! POST   endpoints/E/token[?lifetime_seconds=N]  {accessToken, refreshBy, expiresOn}
//! POST   endpoints/E/rotate-token-key
//! GET    endpoints/E/versions                GET endpoints/E/versions/V
//! POST   endpoints/E/versions {name, ...}    create (the endpoint too, if new)     -> 202 while it builds
//! PATCH  endpoints/E/versions/V {...}        update traffic/flags (200) or module/models/config (202)
//! PUT    endpoints/E/versions/V {...}        create or replace (what `deploy` does)
//! DELETE endpoints/E/versions/V[?new_default=W]
//! GET    endpoints/E/logs  GET endpoints/E/versions/V/logs
//! GET    endpoints/E/compare[?alpha=A]   (the verdict)
//! GET    endpoints/E/series              (the last hour, for /ui)
//! GET    devices                             {devices: [...], unavailable: [{name, why}]}
//! ```

use std::sync::Arc;

use serde::Deserialize;

use crate::access::AuthSettings;
use crate::deploy::Control;
use crate::registry::RegisterModel;
use crate::rollout::{Accepted, Mode, VersionRequest};
use crate::store::Tags;
use crate::ControlError;

/// A status code and a JSON body.
pub struct AdminResponse {
    pub status: u16,
    pub body: serde_json::Value,
}

fn error(e: ControlError) -> AdminResponse {
    AdminResponse {
        status: e.status(),
        body: serde_json::json!({"error": {"code": e.code(), "message": e.to_string()}}),
    }
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, body: &[u8]) -> Result<T, ControlError> {
    serde_json::from_slice(body).map_err(|e| ControlError::BadRequest(format!("{what}: {e}")))
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateEndpoint {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    tags: Tags,
    #[serde(default)]
    auth_enabled: Option<bool>,
    #[serde(default)]
    token_auth_enabled: Option<bool>,
    #[serde(default)]
    primary_key: Option<String>,
    #[serde(default)]
    secondary_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegenKey {
    key: String,
}

#[derive(Deserialize)]
struct Named {
    name: String,
}

fn accepted(a: Accepted) -> AdminResponse {
    match a.building {
        Some(g) => AdminResponse {
            status: 202,
            body: serde_json::json!({"generation": g, "service": a.service}),
        },
        None => AdminResponse {
            status: 200,
            body: serde_json::json!({"service": a.service}),
        },
    }
}

impl Control {
    /// Handles one admin request. Work that touches the disk or the store
    /// runs on a blocking thread.
    pub async fn admin(self: &Arc<Self>, method: &str, path: &str, query: &str, body: Vec<u8>) -> AdminResponse {
        let rest = path.trim_start_matches("/admin/v1").trim_matches('/').to_string();
        let (method, query) = (method.to_string(), query.to_string());
        let this = self.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let parts: Vec<&str> = if rest.is_empty() { vec![] } else { rest.split('/').collect() };
            this.route_admin(&method, &parts, &query, &body)
        })
        .await;
        match joined {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => error(e),
            Err(e) => error(ControlError::Store(format!("admin task panicked: {e}"))),
        }
    }

    fn route_admin(self: &Arc<Self>, method: &str, parts: &[&str], query: &str, body: &[u8]) -> Result<AdminResponse, ControlError> {
        let ok = |body| Ok(AdminResponse { status: 200, body });
        match (method, parts) {
            ("POST", ["blobs"]) => {
                let sha = self.put_blob(body)?;
                ok(serde_json::json!({"sha256": sha, "size": body.len()}))
            }
            ("POST", ["models"]) => ok(self.register_model(parse::<RegisterModel>("model registration", body)?)?),
            ("GET", ["models"]) => ok(self.models(query_param(query, "name"))?),
            ("GET", ["models", id]) => ok(serde_json::to_value(self.model(id)?).expect("serializes")),
            ("DELETE", ["models", id]) => ok(self.delete_model(id)?),
            ("GET", ["endpoints"]) => ok(self.list()),
            ("GET", ["devices"]) => ok(self.devices_json()),
            ("POST", ["endpoints"]) => {
                let c: CreateEndpoint = parse("endpoint", body)?;
                let auth = AuthSettings {
                    auth_enabled: c.auth_enabled,
                    token_auth_enabled: c.token_auth_enabled,
                    primary_key: c.primary_key,
                    secondary_key: c.secondary_key,
                };
                ok(self.create_endpoint(&c.name, &c.description, c.tags, &auth)?)
            }
            ("GET", ["endpoints", ep]) => ok(self.show(ep)?),
            ("PATCH", ["endpoints", ep]) => ok(self.update_auth(ep, &parse("endpoint update", body)?)?),
            ("GET", ["endpoints", ep, "keys"]) => ok(self.keys(ep)?),
            ("POST", ["endpoints", ep, "regen-key"]) => ok(self.regen_key(ep, &parse::<RegenKey>("regen-key", body)?.key)?),
            ("POST", ["endpoints", ep, "token"]) => {
                let lifetime = match query_param(query, "lifetime_seconds") {
                    Some(s) => Some(std::time::Duration::from_secs(s.parse().map_err(|_| {
                        ControlError::BadRequest(format!("lifetime_seconds must be a whole number, got {s:?}"))
                    })?)),
                    None => None,
                };
                ok(self.access_token(ep, lifetime)?)
            }
            ("POST", ["endpoints", ep, "rotate-token-key"]) => ok(self.rotate_token_key(ep)?),
            ("DELETE", ["endpoints", ep]) => ok(self.delete_endpoint(ep)?),
            ("GET", ["endpoints", ep, "logs"]) => ok(self.logs(ep, None)?),
            ("GET", ["endpoints", ep, "series"]) => ok(self.series(ep)?),
            ("GET", ["endpoints", ep, "compare"]) => {
                let alpha = match query_param(query, "alpha") {
                    Some(a) => a
                        .parse::<f64>()
                        .ok()
                        .filter(|a| *a > 0.0 && *a < 0.5)
                        .ok_or_else(|| ControlError::BadRequest(format!("alpha must be a number in (0, 0.5), got {a:?}")))?,
                    None => 0.05,
                };
                ok(self.compare(ep, alpha)?)
            }
            ("GET", ["endpoints", ep, "versions"]) => ok(self.show(ep)?["versions"].clone()),
            ("POST", ["endpoints", ep, "versions"]) => {
                let Named { name } = parse("version", body)?;
                let mut v: serde_json::Value = parse("version", body)?;
                v.as_object_mut().map(|o| o.remove("name"));
                let req: VersionRequest = serde_json::from_value(v).map_err(|e| ControlError::BadRequest(format!("version: {e}")))?;
                Ok(accepted(self.change_version(ep, &name, req, Mode::Create)?))
            }
            ("GET", ["endpoints", ep, "versions", v]) => ok(self.version(ep, v)?),
            ("GET", ["endpoints", ep, "versions", v, "logs"]) => ok(self.logs(ep, Some(v))?),
            ("PATCH", ["endpoints", ep, "versions", v]) => Ok(accepted(self.change_version(
                ep,
                v,
                parse("version update", body)?,
                Mode::Update,
            )?)),
            ("PUT", ["endpoints", ep, "versions", v]) => Ok(accepted(self.change_version(ep, v, parse("version", body)?, Mode::Put)?)),
            ("DELETE", ["endpoints", ep, "versions", v]) => ok(self.delete_version(ep, v, query_param(query, "new_default"))?),
            _ => Err(ControlError::NotFound(format!(
                "no admin route {method} /admin/v1/{}",
                parts.join("/")
            ))),
        }
    }
}
