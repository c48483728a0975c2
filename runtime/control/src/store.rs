//! The embedded store: SQLite in WAL mode under the data dir, with
//! `synchronous = FULL`, so a change is on disk when its transaction
//! commits, and every change commits before the admin API acknowledges it.
//!
//! Tables: `endpoints` (with their keys), `versions` (rollout flags, module,
//! models and deployment config), `models` (the registry: `name:version`,
//! auto-incremented) and `modules` (components by content hash). Blobs
//! themselves live beside the database under `blobs/<sha256>`.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::deploy::VersionSpec;
use crate::rules::Rollout;
use crate::ControlError;

/// The schema this build writes (`PRAGMA user_version`). 1 was the first
/// release's single `versions` table; 2 had no auth mode and no token
/// signing keys per endpoint; 3 kept no version counters; 4 kept no spec
/// a version last served; `open` migrates them all.
const SCHEMA: i64 = 5;

pub struct Store {
    conn: Connection,
}

pub type Tags = BTreeMap<String, String>;

/// Debug leaves the keys and signing secrets out (see the impl below).
#[derive(Clone, Serialize, Deserialize)]
pub struct EndpointRow {
    pub name: String,
    pub description: String,
    pub tags: Tags,
    /// Scoring keys, generated at creation or given; checked by the router
    /// when `auth_mode` is key. Never shown but by `get-keys`.
    #[serde(skip_serializing)]
    pub primary_key: String,
    #[serde(skip_serializing)]
    pub secondary_key: String,
    pub created_at: String,
    pub auth_mode: AuthMode,
    /// Token signing keys, the current one last.
    #[serde(skip_serializing)]
    pub token_keys: Vec<TokenKey>,
}

/// How an endpoint's scoring calls authenticate.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// A primary or secondary key (the default).
    #[default]
    Key,
    /// A token from `get-access-token`.
    Token,
    /// `auth_enabled = false`.
    None,
}

impl AuthMode {
    fn as_str(self) -> &'static str {
        match self {
            AuthMode::Key => "key",
            AuthMode::Token => "token",
            AuthMode::None => "none",
        }
    }
    fn parse(s: &str) -> Result<AuthMode, ControlError> {
        match s {
            "key" => Ok(AuthMode::Key),
            "token" => Ok(AuthMode::Token),
            "none" => Ok(AuthMode::None),
            other => Err(ControlError::Store(format!("unknown auth mode {other:?} in the store"))),
        }
    }
}

/// A token signing key; `retired_at` (Unix seconds) once a newer one signs.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenKey {
    pub kid: String,
    /// Hex.
    pub secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<u64>,
}

// Secrets live in the store and leave it only through `get-keys` and signed
// tokens: a `{:?}` in a log line or a panic message must not print them.
impl std::fmt::Debug for EndpointRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointRow")
            .field("name", &self.name)
            .field("description", &self.description)
            .field("tags", &self.tags)
            .field("primary_key", &"<redacted>")
            .field("secondary_key", &"<redacted>")
            .field("created_at", &self.created_at)
            .field("auth_mode", &self.auth_mode)
            .field("token_keys", &self.token_keys)
            .finish()
    }
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey")
            .field("kid", &self.kid)
            .field("secret", &"<redacted>")
            .field("retired_at", &self.retired_at)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct VersionRow {
    pub endpoint: String,
    pub rollout: Rollout,
    pub spec: VersionSpec,
    pub description: String,
    pub tags: Tags,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelRow {
    pub name: String,
    pub version: i64,
    /// `name:version`, the id versions refer to.
    pub id: String,
    pub file_name: String,
    pub sha256: String,
    pub size: i64,
    pub tags: Tags,
    pub description: String,
    pub created_at: String,
}

fn json_err(e: serde_json::Error) -> ControlError {
    ControlError::Store(format!("a stored JSON column does not parse: {e}"))
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, ControlError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a commit is on disk before we acknowledge it.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let mut store = Store { conn };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<(), ControlError> {
        let version: i64 = self.conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        // A later release's store: this build would misread it, and its
        // marking the schema as its own would have the later release
        // migrate it again.
        if version > SCHEMA {
            return Err(ControlError::Store(format!(
                "the store is of schema {version}, written by a later release of wasmscore; this one reads schemas up to {SCHEMA}: run the later release"
            )));
        }
        let had_v1 = version == 0
            && self
                .conn
                .query_row("SELECT 1 FROM sqlite_master WHERE type='table' AND name='versions'", [], |_| Ok(()))
                .optional()?
                .is_some();
        let tx = self.conn.transaction()?;
        if had_v1 {
            tx.execute_batch("ALTER TABLE versions RENAME TO versions_v1;")?;
        }
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS endpoints (
                name TEXT PRIMARY KEY,
                description TEXT NOT NULL DEFAULT '',
                tags TEXT NOT NULL DEFAULT '{}',
                primary_key TEXT NOT NULL,
                secondary_key TEXT NOT NULL,
                created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
                auth_mode TEXT NOT NULL DEFAULT 'key',
                token_keys TEXT NOT NULL DEFAULT '[]'
            );
            CREATE TABLE IF NOT EXISTS versions (
                endpoint TEXT NOT NULL REFERENCES endpoints(name) ON DELETE CASCADE,
                version TEXT NOT NULL,
                module_sha TEXT NOT NULL,
                module_name TEXT NOT NULL,
                models TEXT NOT NULL,
                config TEXT NOT NULL,
                traffic INTEGER NOT NULL DEFAULT 0,
                is_default INTEGER NOT NULL DEFAULT 0,
                is_control INTEGER NOT NULL DEFAULT 0,
                mirror INTEGER NOT NULL DEFAULT 0,
                description TEXT NOT NULL DEFAULT '',
                tags TEXT NOT NULL DEFAULT '{}',
                created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
                updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
                serving TEXT,
                PRIMARY KEY (endpoint, version)
            );
            CREATE TABLE IF NOT EXISTS models (
                name TEXT NOT NULL,
                version INTEGER NOT NULL,
                file_name TEXT NOT NULL,
                sha256 TEXT NOT NULL,
                size INTEGER NOT NULL,
                tags TEXT NOT NULL DEFAULT '{}',
                description TEXT NOT NULL DEFAULT '',
                created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
                PRIMARY KEY (name, version)
            );
            CREATE TABLE IF NOT EXISTS version_counters (
                endpoint TEXT NOT NULL,
                version TEXT NOT NULL,
                spec_sha TEXT NOT NULL,
                counters TEXT NOT NULL,
                updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
                PRIMARY KEY (endpoint, version),
                FOREIGN KEY (endpoint, version) REFERENCES versions(endpoint, version) ON DELETE CASCADE
            );
            CREATE TABLE IF NOT EXISTS modules (
                sha256 TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                size INTEGER NOT NULL,
                created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
            );",
        )?;
        let has_serving = tx
            .query_row("SELECT 1 FROM pragma_table_info('versions') WHERE name = 'serving'", [], |_| Ok(()))
            .optional()?
            .is_some();
        if !has_serving {
            // Schemas 2 to 4: no version has a spec it last served on record.
            tx.execute_batch("ALTER TABLE versions ADD COLUMN serving TEXT;")?;
        } else if version < SCHEMA {
            // A release that knew no `serving` ran on this store since (it
            // marked it as its own schema), so what the column says may be
            // older than what served last.
            tx.execute_batch("UPDATE versions SET serving = NULL;")?;
        }
        if version == 2 {
            // Schema 2's endpoints: key auth (the default), no token keys yet.
            tx.execute_batch(
                "ALTER TABLE endpoints ADD COLUMN auth_mode TEXT NOT NULL DEFAULT 'key';
                 ALTER TABLE endpoints ADD COLUMN token_keys TEXT NOT NULL DEFAULT '[]';",
            )?;
        }
        if had_v1 {
            // The first release kept versions only; their endpoints get fresh keys.
            let names: Vec<String> = {
                let mut stmt = tx.prepare("SELECT DISTINCT endpoint FROM versions_v1")?;
                let rows = stmt.query_map([], |r| r.get(0))?;
                rows.collect::<Result<_, _>>()?
            };
            for n in names {
                tx.execute(
                    "INSERT INTO endpoints (name, primary_key, secondary_key) VALUES (?1, ?2, ?3)",
                    params![n, new_key(), new_key()],
                )?;
            }
            tx.execute_batch(
                "INSERT INTO versions (endpoint, version, module_sha, module_name, models, config, is_default, created_at)
                   SELECT endpoint, version, module_sha, module_name, models, config, is_default, created_at FROM versions_v1;
                 DROP TABLE versions_v1;",
            )?;
        }
        tx.pragma_update(None, "user_version", SCHEMA)?;
        tx.commit()?;
        Ok(())
    }

    // ---- endpoints and versions ----

    pub fn endpoints(&self) -> Result<Vec<EndpointRow>, ControlError> {
        let mut stmt = self.conn.prepare(
            "SELECT name, description, tags, primary_key, secondary_key, created_at, auth_mode, token_keys FROM endpoints ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok([
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, String>(7)?,
            ])
        })?;
        rows.map(|r| {
            let [name, description, tags, primary_key, secondary_key, created_at, auth_mode, token_keys] = r?;
            Ok(EndpointRow {
                name,
                description,
                tags: serde_json::from_str(&tags).map_err(json_err)?,
                primary_key,
                secondary_key,
                created_at,
                auth_mode: AuthMode::parse(&auth_mode)?,
                token_keys: serde_json::from_str(&token_keys).map_err(json_err)?,
            })
        })
        .collect()
    }

    pub fn versions(&self) -> Result<Vec<VersionRow>, ControlError> {
        let mut stmt = self.conn.prepare(
            "SELECT endpoint, version, module_sha, module_name, models, config, traffic, is_default, is_control, mirror,
                    description, tags, created_at
               FROM versions ORDER BY endpoint, created_at, version",
        )?;
        type Raw = (
            String,
            String,
            String,
            String,
            String,
            String,
            u32,
            bool,
            bool,
            u32,
            String,
            String,
            String,
        );
        let rows = stmt.query_map([], |r| -> rusqlite::Result<Raw> {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
                r.get(9)?,
                r.get(10)?,
                r.get(11)?,
                r.get(12)?,
            ))
        })?;
        rows.map(|r| {
            let (
                endpoint,
                name,
                module,
                module_name,
                models,
                config,
                traffic,
                is_default,
                is_control,
                mirror,
                description,
                tags,
                created_at,
            ) = r?;
            Ok(VersionRow {
                endpoint,
                rollout: Rollout {
                    name,
                    traffic,
                    is_default,
                    is_control,
                    mirror,
                },
                spec: VersionSpec {
                    module,
                    module_name,
                    models: serde_json::from_str(&models).map_err(json_err)?,
                    config: serde_json::from_str(&config).map_err(json_err)?,
                },
                description,
                tags: serde_json::from_str(&tags).map_err(json_err)?,
                created_at,
            })
        })
        .collect()
    }

    /// Commits one change to an endpoint in one transaction: the endpoint
    /// row if it is new, every version row written (flags move between
    /// versions, so a change may touch several) and the versions deleted.
    pub fn commit_endpoint(&mut self, endpoint: &EndpointRow, upserts: &[VersionRow], deletes: &[String]) -> Result<(), ControlError> {
        let tx = self.conn.transaction()?;
        upsert_endpoint(&tx, endpoint)?;
        for d in deletes {
            tx.execute(
                "DELETE FROM versions WHERE endpoint = ?1 AND version = ?2",
                params![endpoint.name, d],
            )?;
        }
        for v in upserts {
            tx.execute(
                "INSERT INTO versions (endpoint, version, module_sha, module_name, models, config, traffic, is_default, is_control, mirror, description, tags, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
                 ON CONFLICT (endpoint, version) DO UPDATE SET
                   module_sha = excluded.module_sha, module_name = excluded.module_name, models = excluded.models,
                   config = excluded.config, traffic = excluded.traffic, is_default = excluded.is_default,
                   is_control = excluded.is_control, mirror = excluded.mirror, description = excluded.description,
                   tags = excluded.tags, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ','now')",
                params![
                    endpoint.name,
                    v.rollout.name,
                    v.spec.module,
                    v.spec.module_name,
                    serde_json::to_string(&v.spec.models).expect("models serialize"),
                    serde_json::to_string(&v.spec.config).expect("config serializes"),
                    v.rollout.traffic,
                    v.rollout.is_default,
                    v.rollout.is_control,
                    v.rollout.mirror,
                    v.description,
                    serde_json::to_string(&v.tags).expect("tags serialize"),
                    or_now(&v.created_at),
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Writes an endpoint's own row (keys, auth mode, token keys).
    pub fn update_endpoint(&mut self, endpoint: &EndpointRow) -> Result<(), ControlError> {
        let tx = self.conn.transaction()?;
        upsert_endpoint(&tx, endpoint)?;
        tx.commit()?;
        Ok(())
    }

    pub fn delete_endpoint(&mut self, endpoint: &str) -> Result<bool, ControlError> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM versions WHERE endpoint = ?1", params![endpoint])?;
        let n = tx.execute("DELETE FROM endpoints WHERE name = ?1", params![endpoint])?;
        tx.commit()?;
        Ok(n > 0)
    }

    /// Writes versions' counters (endpoint, version, spec hash, JSON) in
    /// one transaction. A version deleted meanwhile is skipped.
    pub fn save_counters(&mut self, rows: &[(String, String, String, String)]) -> Result<(), ControlError> {
        let tx = self.conn.transaction()?;
        for (endpoint, version, sha, counters) in rows {
            tx.execute(
                "INSERT INTO version_counters (endpoint, version, spec_sha, counters)
                 SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM versions WHERE endpoint = ?1 AND version = ?2)
                 ON CONFLICT (endpoint, version) DO UPDATE SET
                   spec_sha = excluded.spec_sha, counters = excluded.counters,
                   updated_at = strftime('%Y-%m-%dT%H:%M:%fZ','now')",
                params![endpoint, version, sha, counters],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Records the spec a version serves now: after a restart that finds
    /// its stored spec (an update acknowledged, not yet built) failing, it
    /// goes back to this one, as an update that fails while the process
    /// runs does.
    pub fn set_serving(&mut self, endpoint: &str, version: &str, spec: &VersionSpec) -> Result<(), ControlError> {
        self.conn.execute(
            "UPDATE versions SET serving = ?3 WHERE endpoint = ?1 AND version = ?2",
            params![endpoint, version, serde_json::to_string(spec).expect("a spec serializes")],
        )?;
        Ok(())
    }

    /// The spec each version last served, where one is on record
    /// (endpoint, version, spec).
    pub fn serving(&self) -> Result<Vec<(String, String, VersionSpec)>, ControlError> {
        let mut stmt = self
            .conn
            .prepare("SELECT endpoint, version, serving FROM versions WHERE serving IS NOT NULL")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?;
        rows.map(|r| {
            let (e, v, json) = r?;
            Ok((e, v, serde_json::from_str(&json).map_err(json_err)?))
        })
        .collect()
    }

    /// A version's saved counters: its spec hash then and the JSON.
    pub fn counters(&self, endpoint: &str, version: &str) -> Result<Option<(String, String)>, ControlError> {
        Ok(self
            .conn
            .query_row(
                "SELECT spec_sha, counters FROM version_counters WHERE endpoint = ?1 AND version = ?2",
                params![endpoint, version],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    pub fn record_module(&mut self, sha: &str, name: &str, size: u64) -> Result<(), ControlError> {
        self.conn.execute(
            "INSERT INTO modules (sha256, name, size) VALUES (?1, ?2, ?3)
             ON CONFLICT (sha256) DO UPDATE SET size = excluded.size",
            params![sha, name, size as i64],
        )?;
        Ok(())
    }

    // ---- the model registry ----

    /// Registers a file under `name`; the version is one more than the
    /// latest. Registering the same bytes and file name as the latest
    /// version returns that version instead of a copy.
    pub fn register_model(
        &mut self,
        name: &str,
        file_name: &str,
        sha: &str,
        size: u64,
        tags: &Tags,
        description: &str,
    ) -> Result<(ModelRow, bool), ControlError> {
        let tx = self.conn.transaction()?;
        let latest: Option<(i64, String, String)> = tx
            .query_row(
                "SELECT version, sha256, file_name FROM models WHERE name = ?1 ORDER BY version DESC LIMIT 1",
                params![name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        if let Some((v, s, f)) = &latest {
            if s == sha && f == file_name && tags.is_empty() && description.is_empty() {
                drop(tx);
                return Ok((self.model(name, Some(*v))?.expect("just read"), false));
            }
        }
        let version = latest.map(|l| l.0).unwrap_or(0) + 1;
        tx.execute(
            "INSERT INTO models (name, version, file_name, sha256, size, tags, description) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                name,
                version,
                file_name,
                sha,
                size as i64,
                serde_json::to_string(tags).expect("tags serialize"),
                description
            ],
        )?;
        tx.commit()?;
        Ok((self.model(name, Some(version))?.expect("just written"), true))
    }

    /// One model version, or the latest when `version` is None.
    pub fn model(&self, name: &str, version: Option<i64>) -> Result<Option<ModelRow>, ControlError> {
        let rows = self.query_models(
            "WHERE name = ?1 AND (?2 IS NULL OR version = ?2) ORDER BY version DESC LIMIT 1",
            params![name, version],
        )?;
        Ok(rows.into_iter().next())
    }

    pub fn models(&self, name: Option<&str>) -> Result<Vec<ModelRow>, ControlError> {
        self.query_models("WHERE (?1 IS NULL OR name = ?1) ORDER BY name, version", params![name])
    }

    fn query_models(&self, filter: &str, p: impl rusqlite::Params) -> Result<Vec<ModelRow>, ControlError> {
        let sql = format!("SELECT name, version, file_name, sha256, size, tags, description, created_at FROM models {filter}");
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(p, |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, String>(7)?,
            ))
        })?;
        rows.map(|r| {
            let (name, version, file_name, sha256, size, tags, description, created_at) = r?;
            Ok(ModelRow {
                id: format!("{name}:{version}"),
                name,
                version,
                file_name,
                sha256,
                size,
                tags: serde_json::from_str(&tags).map_err(json_err)?,
                description,
                created_at,
            })
        })
        .collect()
    }

    pub fn delete_model(&mut self, name: &str, version: i64) -> Result<bool, ControlError> {
        Ok(self
            .conn
            .execute("DELETE FROM models WHERE name = ?1 AND version = ?2", params![name, version])?
            > 0)
    }
}

fn or_now(s: &str) -> String {
    if s.is_empty() {
        now_rfc3339()
    } else {
        s.to_string()
    }
}

/// Now, as RFC 3339 UTC with milliseconds (what the store's own defaults write).
pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d)
}

/// A time since the Unix epoch as RFC 3339 UTC with milliseconds.
pub fn rfc3339(d: std::time::Duration) -> String {
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

fn upsert_endpoint(tx: &rusqlite::Transaction<'_>, endpoint: &EndpointRow) -> Result<(), ControlError> {
    tx.execute(
        "INSERT INTO endpoints (name, description, tags, primary_key, secondary_key, created_at, auth_mode, token_keys)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (name) DO UPDATE SET
           description = excluded.description, tags = excluded.tags, primary_key = excluded.primary_key,
           secondary_key = excluded.secondary_key, auth_mode = excluded.auth_mode, token_keys = excluded.token_keys",
        params![
            endpoint.name,
            endpoint.description,
            serde_json::to_string(&endpoint.tags).expect("tags serialize"),
            endpoint.primary_key,
            endpoint.secondary_key,
            or_now(&endpoint.created_at),
            endpoint.auth_mode.as_str(),
            serde_json::to_string(&endpoint.token_keys).expect("keys serialize"),
        ],
    )?;
    Ok(())
}

/// A fresh random key (32 bytes, hex).
pub fn new_key() -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    hex::encode(bytes)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::deploy::ModelRef;

    pub(crate) fn endpoint(name: &str) -> EndpointRow {
        EndpointRow {
            name: name.into(),
            description: String::new(),
            tags: Tags::new(),
            primary_key: new_key(),
            secondary_key: new_key(),
            created_at: String::new(),
            auth_mode: AuthMode::Key,
            token_keys: Vec::new(),
        }
    }

    fn version(name: &str, traffic: u32, is_default: bool) -> VersionRow {
        VersionRow {
            endpoint: "iris".into(),
            rollout: Rollout {
                name: name.into(),
                traffic,
                is_default,
                is_control: false,
                mirror: 0,
            },
            spec: VersionSpec {
                module: "m".into(),
                module_name: "iris.wasm".into(),
                models: vec![ModelRef {
                    file: "model.onnx".into(),
                    sha256: "s".into(),
                    model: Some("iris:1".into()),
                }],
                config: serde_json::json!({"num_replicas": 2}),
            },
            description: "d".into(),
            tags: Tags::from([("k".into(), "v".into())]),
            created_at: String::new(),
        }
    }

    #[test]
    fn endpoints_versions_and_models_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let ep = endpoint("iris");
        {
            let mut s = Store::open(&path).unwrap();
            s.commit_endpoint(&ep, &[version("v1", 20, true)], &[]).unwrap();
            s.commit_endpoint(&ep, &[version("v1", 20, false), version("v2", 40, true)], &[])
                .unwrap();
            let (m1, new) = s.register_model("iris", "model.onnx", "s", 10, &Tags::new(), "").unwrap();
            assert!(new);
            assert_eq!(m1.id, "iris:1");
            // The same bytes again: the same version.
            let (again, new) = s.register_model("iris", "model.onnx", "s", 10, &Tags::new(), "").unwrap();
            assert!(!new);
            assert_eq!(again.id, "iris:1");
            let (m2, _) = s.register_model("iris", "model.onnx", "t", 11, &Tags::new(), "second").unwrap();
            assert_eq!(m2.id, "iris:2");
        }
        let mut s = Store::open(&path).unwrap();
        let eps = s.endpoints().unwrap();
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].primary_key, ep.primary_key);
        let vs = s.versions().unwrap();
        assert_eq!(vs.len(), 2);
        assert!(!vs[0].rollout.is_default && vs[1].rollout.is_default);
        assert_eq!(vs[1].rollout.traffic, 40);
        assert_eq!(vs[0].spec.config["num_replicas"], 2);
        assert_eq!(vs[0].tags["k"], "v");
        assert_eq!(s.model("iris", None).unwrap().unwrap().version, 2);
        assert_eq!(s.models(Some("iris")).unwrap().len(), 2);
        s.commit_endpoint(&ep, &[], &["v1".to_string()]).unwrap();
        assert_eq!(s.versions().unwrap().len(), 1);
        assert!(s.delete_endpoint("iris").unwrap());
        assert!(s.versions().unwrap().is_empty());
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z') && &t[10..11] == "T", "{t}");
    }

    #[test]
    fn the_first_releases_store_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE versions (endpoint TEXT NOT NULL, version TEXT NOT NULL, module_sha TEXT NOT NULL,
                   module_name TEXT NOT NULL, models TEXT NOT NULL, config TEXT NOT NULL, is_default INTEGER NOT NULL,
                   created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')), PRIMARY KEY (endpoint, version));
                 INSERT INTO versions (endpoint, version, module_sha, module_name, models, config, is_default)
                   VALUES ('iris', 'v1', 'm', 'iris.wasm', '[]', 'null', 1);",
            )
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.endpoints().unwrap()[0].name, "iris");
        let v = s.versions().unwrap();
        assert_eq!(v.len(), 1);
        assert!(v[0].rollout.is_default);
    }

    #[test]
    fn a_store_of_a_later_schema_is_refused_and_left_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch(&format!("PRAGMA user_version = {};", SCHEMA + 1))
            .unwrap();
        let e = Store::open(&path).err().expect("a later schema is refused");
        assert!(e.to_string().contains("later release"), "{e}");
        let version: i64 = Connection::open(&path)
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA + 1);
    }

    #[test]
    fn a_schema_2_store_gets_key_auth_and_its_keys_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE endpoints (name TEXT PRIMARY KEY, description TEXT NOT NULL DEFAULT '',
                   tags TEXT NOT NULL DEFAULT '{}', primary_key TEXT NOT NULL, secondary_key TEXT NOT NULL,
                   created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')));
                 INSERT INTO endpoints (name, primary_key, secondary_key) VALUES ('iris', 'p-key', 's-key');
                 PRAGMA user_version = 2;",
            )
            .unwrap();
        }
        let mut s = Store::open(&path).unwrap();
        let mut e = s.endpoints().unwrap().remove(0);
        assert_eq!((e.primary_key.as_str(), e.auth_mode), ("p-key", AuthMode::Key));
        assert!(e.token_keys.is_empty());
        e.auth_mode = AuthMode::Token;
        e.token_keys.push(TokenKey {
            kid: "k1".into(),
            secret: "00".into(),
            retired_at: None,
        });
        s.update_endpoint(&e).unwrap();
        drop(s);
        let e = Store::open(&path).unwrap().endpoints().unwrap().remove(0);
        assert_eq!((e.auth_mode, e.token_keys.len()), (AuthMode::Token, 1));
    }
}
