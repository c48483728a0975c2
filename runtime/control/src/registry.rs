//! The model registry: files registered under a name get `name:version`,
//! auto-incremented, with their sha256, size, tags and description. Versions
//! refer to registered models; a model in use cannot be deleted.

use serde::Deserialize;

use crate::deploy::{lock, valid_name, Control};
use crate::store::{ModelRow, Tags};
use crate::ControlError;

/// A registration, as the admin API takes it (the bytes were uploaded as a blob).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterModel {
    pub name: String,
    /// The file name modules load it by (default: the name plus ".onnx").
    #[serde(default)]
    pub file_name: Option<String>,
    pub sha256: String,
    #[serde(default)]
    pub tags: Tags,
    #[serde(default)]
    pub description: String,
}

fn parse_id(id: &str) -> Result<(&str, Option<i64>), ControlError> {
    match id.split_once(':') {
        None => Ok((id, None)),
        Some((n, v)) => v
            .parse()
            .map(|v| (n, Some(v)))
            .map_err(|_| ControlError::BadRequest(format!("model id {id:?} is not name:version"))),
    }
}

impl Control {
    pub fn register_model(&self, req: RegisterModel) -> Result<serde_json::Value, ControlError> {
        valid_name("model", &req.name)?;
        let file_name = req.file_name.unwrap_or_else(|| format!("{}.onnx", req.name));
        valid_name("model file", &file_name)?;
        let size = self.blob_size(&req.sha256, &format!("model {}", req.name))?;
        let mut inner = lock(&self.inner);
        let (row, created) = inner
            .store
            .register_model(&req.name, &file_name, &req.sha256, size, &req.tags, &req.description)?;
        if created {
            tracing::info!(model = %row.id, sha256 = %row.sha256, size, "model registered");
        }
        let mut v = serde_json::to_value(&row).expect("model row serializes");
        v["created"] = created.into();
        Ok(v)
    }

    pub fn models(&self, name: Option<&str>) -> Result<serde_json::Value, ControlError> {
        let rows = lock(&self.inner).store.models(name)?;
        Ok(serde_json::json!({ "models": rows }))
    }

    pub fn model(&self, id: &str) -> Result<ModelRow, ControlError> {
        let (name, version) = parse_id(id)?;
        lock(&self.inner)
            .store
            .model(name, version)?
            .ok_or_else(|| ControlError::NotFound(format!("no registered model {id:?}")))
    }

    /// Deletes one model version; refused while a version uses it.
    pub fn delete_model(&self, id: &str) -> Result<serde_json::Value, ControlError> {
        let (name, version) = parse_id(id)?;
        let version = version.ok_or_else(|| ControlError::BadRequest(format!("name the model version to delete: {name}:N")))?;
        let full = format!("{name}:{version}");
        let mut inner = lock(&self.inner);
        let users: Vec<String> = inner
            .endpoints
            .values()
            .flat_map(|e| e.versions.iter())
            .filter(|v| v.row.spec.models.iter().any(|m| m.model.as_deref() == Some(full.as_str())))
            .map(|v| format!("{}/{}", v.row.endpoint, v.row.rollout.name))
            .collect();
        if !users.is_empty() {
            return Err(ControlError::Conflict(format!(
                "model {full} is used by {}; delete or update those versions first",
                users.join(", ")
            )));
        }
        if !inner.store.delete_model(name, version)? {
            return Err(ControlError::NotFound(format!("no registered model {full:?}")));
        }
        Ok(serde_json::json!({ "deleted": full }))
    }
}
