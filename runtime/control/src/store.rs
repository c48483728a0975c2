//! The embedded store: SQLite in WAL mode under the data dir. Every change is
//! committed before the admin API acknowledges it.

use std::path::Path;

use rusqlite::{params, Connection};

use crate::ControlError;

pub struct Store {
    conn: Connection,
}

/// One stored version, as deployed.
#[derive(Debug, Clone)]
pub struct StoredVersion {
    pub endpoint: String,
    pub version: String,
    pub module_sha: String,
    pub module_name: String,
    /// JSON list of {"file", "sha256"}.
    pub models: String,
    /// JSON deployment config.
    pub config: String,
    pub is_default: bool,
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, ControlError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a commit is on disk before we acknowledge it.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS versions (
                endpoint TEXT NOT NULL,
                version TEXT NOT NULL,
                module_sha TEXT NOT NULL,
                module_name TEXT NOT NULL,
                models TEXT NOT NULL,
                config TEXT NOT NULL,
                is_default INTEGER NOT NULL,
                created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
                PRIMARY KEY (endpoint, version)
            );",
        )?;
        Ok(Store { conn })
    }

    pub fn put_version(&mut self, v: &StoredVersion) -> Result<(), ControlError> {
        let tx = self.conn.transaction()?;
        if v.is_default {
            tx.execute("UPDATE versions SET is_default = 0 WHERE endpoint = ?1", params![v.endpoint])?;
        }
        tx.execute(
            "INSERT OR REPLACE INTO versions (endpoint, version, module_sha, module_name, models, config, is_default)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![v.endpoint, v.version, v.module_sha, v.module_name, v.models, v.config, v.is_default],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn delete_endpoint(&mut self, endpoint: &str) -> Result<usize, ControlError> {
        Ok(self.conn.execute("DELETE FROM versions WHERE endpoint = ?1", params![endpoint])?)
    }

    pub fn versions(&self) -> Result<Vec<StoredVersion>, ControlError> {
        let mut stmt = self.conn.prepare(
            "SELECT endpoint, version, module_sha, module_name, models, config, is_default FROM versions ORDER BY endpoint, created_at",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(StoredVersion {
                endpoint: r.get(0)?,
                version: r.get(1)?,
                module_sha: r.get(2)?,
                module_name: r.get(3)?,
                models: r.get(4)?,
                config: r.get(5)?,
                is_default: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_survive_reopen_and_default_moves() {
        let dir = std::env::temp_dir().join(format!("wasmscore-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.db");
        let _ = std::fs::remove_file(&path);
        let v = |name: &str, d: bool| StoredVersion {
            endpoint: "iris".into(),
            version: name.into(),
            module_sha: "m".into(),
            module_name: "iris.wasm".into(),
            models: "[]".into(),
            config: "{}".into(),
            is_default: d,
        };
        {
            let mut s = Store::open(&path).unwrap();
            s.put_version(&v("v1", true)).unwrap();
            s.put_version(&v("v2", true)).unwrap();
        }
        let s = Store::open(&path).unwrap();
        let all = s.versions().unwrap();
        assert_eq!(all.len(), 2);
        assert!(!all.iter().find(|x| x.version == "v1").unwrap().is_default);
        assert!(all.iter().find(|x| x.version == "v2").unwrap().is_default);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
