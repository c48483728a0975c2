//! Where the router learns its endpoints and their nodes: one interface,
//! a file now (router.json, re-read when it changes), Kubernetes
//! EndpointSlices next.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::config::FleetSpec;

pub trait Discovery: Send + Sync + 'static {
    /// The spec now, and every new one after it. A source that cannot
    /// read a change keeps the last good spec (the router keeps serving)
    /// and says why in the log.
    fn subscribe(&self) -> watch::Receiver<Arc<FleetSpec>>;
}

/// router.json, polled for changes (its modification time and size, then
/// its bytes): no inotify, so it also works on mounted ConfigMaps.
pub struct FileDiscovery {
    rx: watch::Receiver<Arc<FleetSpec>>,
}

/// How often the file is looked at.
const POLL: Duration = Duration::from_millis(250);

fn stamp(path: &PathBuf) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl FileDiscovery {
    /// Reads and checks the file once (an error here stops the router from
    /// starting), then follows it from a task on the current runtime.
    pub fn start(path: PathBuf) -> Result<FileDiscovery, String> {
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let spec = FleetSpec::parse_file(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        let (tx, rx) = watch::channel(Arc::new(spec));
        tokio::spawn(async move {
            let mut seen = stamp(&path);
            let mut last = bytes;
            loop {
                tokio::time::sleep(POLL).await;
                if tx.is_closed() {
                    return;
                }
                let now = stamp(&path);
                if now == seen {
                    continue;
                }
                seen = now;
                let Ok(bytes) = std::fs::read(&path) else {
                    tracing::warn!(path = %path.display(), "router config cannot be read; keeping the last one");
                    continue;
                };
                if bytes == last {
                    continue;
                }
                match FleetSpec::parse_file(&bytes) {
                    Ok(spec) => {
                        tracing::info!(path = %path.display(), "router config changed");
                        last = bytes;
                        let _ = tx.send(Arc::new(spec));
                    }
                    Err(e) => tracing::error!(path = %path.display(), error = %e, "router config refused; keeping the last one"),
                }
            }
        });
        Ok(FileDiscovery { rx })
    }
}

impl Discovery for FileDiscovery {
    fn subscribe(&self) -> watch::Receiver<Arc<FleetSpec>> {
        self.rx.clone()
    }
}
