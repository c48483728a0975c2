//! Hop 2 of the request path: from an endpoint name to one of its versions.
//!
//! The table of endpoints is immutable and swapped whole on every change
//! (`ArcSwap`), so the hot path reads a snapshot with no lock. Today a request
//! goes to the pinned version (`x-wasmscore-version`) or the default one; the
//! weighted split between versions reads the same table.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use wasmscore_replica::Pool;

/// A deployed version: its name and its replica pool.
pub struct Version {
    pub name: String,
    pub pool: Arc<Pool>,
}

/// An endpoint: its versions and which one is the default.
pub struct Endpoint {
    pub name: String,
    pub versions: Vec<Arc<Version>>,
    pub default_version: String,
}

impl Endpoint {
    pub fn version(&self, name: &str) -> Option<&Arc<Version>> {
        self.versions.iter().find(|v| v.name == name)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RouteError {
    #[error("no service named {0:?}")]
    UnknownEndpoint(String),
    #[error("service {endpoint:?} has no version {version:?}")]
    UnknownVersion { endpoint: String, version: String },
}

type Table = HashMap<String, Arc<Endpoint>>;

/// The routing table.
#[derive(Default)]
pub struct Router {
    table: ArcSwap<Table>,
}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    /// Picks the version for one request.
    pub fn route(&self, endpoint: &str, pin: Option<&str>) -> Result<Arc<Version>, RouteError> {
        let table = self.table.load();
        let ep = table
            .get(endpoint)
            .ok_or_else(|| RouteError::UnknownEndpoint(endpoint.to_string()))?;
        let want = pin.unwrap_or(&ep.default_version);
        ep.version(want).cloned().ok_or_else(|| RouteError::UnknownVersion {
            endpoint: endpoint.into(),
            version: want.into(),
        })
    }

    pub fn endpoint(&self, name: &str) -> Option<Arc<Endpoint>> {
        self.table.load().get(name).cloned()
    }

    pub fn endpoints(&self) -> Vec<Arc<Endpoint>> {
        let mut v: Vec<_> = self.table.load().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Adds or replaces one version. Requests already holding the old version
    /// finish on it; its pool drains and stops when the last one is done.
    pub fn put_version(&self, endpoint: &str, version: Arc<Version>, make_default: bool) {
        self.table.rcu(|old| {
            let mut t: Table = (**old).clone();
            let (mut versions, mut default_version) = match t.get(endpoint) {
                Some(ep) => (ep.versions.clone(), ep.default_version.clone()),
                None => (Vec::new(), version.name.clone()),
            };
            versions.retain(|v| v.name != version.name);
            versions.push(version.clone());
            if make_default {
                default_version = version.name.clone();
            }
            t.insert(
                endpoint.to_string(),
                Arc::new(Endpoint {
                    name: endpoint.into(),
                    versions,
                    default_version,
                }),
            );
            t
        });
    }

    /// Removes an endpoint; true if it existed.
    pub fn remove_endpoint(&self, endpoint: &str) -> bool {
        let mut existed = false;
        self.table.rcu(|old| {
            let mut t: Table = (**old).clone();
            existed = t.remove(endpoint).is_some();
            t
        });
        existed
    }
}
