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

/// router.json, polled for changes (its inode, times and size, then its
/// bytes): no inotify, so it also works on mounted ConfigMaps. Its bytes are
/// also read every few seconds whatever its metadata says: two writes of
/// one size within a file system's timestamp granularity look the same.
pub struct FileDiscovery {
    rx: watch::Receiver<Arc<FleetSpec>>,
}

/// How often the file is looked at.
const POLL: Duration = Duration::from_millis(250);
/// Every this many looks, its bytes are read even if nothing seems changed.
const READ_EVERY: u32 = 8;

/// What the file's metadata says of its version: a rename over it (as an
/// atomic write or a ConfigMap's symlink swap does) is another inode.
type Stamp = (u64, SystemTime, i64, i64, u64);

fn stamp(path: &PathBuf) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.modified().ok()?, m.ctime(), m.ctime_nsec(), m.len()))
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
            let mut looks = 0u32;
            let mut refused: Option<Vec<u8>> = None;
            loop {
                tokio::time::sleep(POLL).await;
                if tx.is_closed() {
                    return;
                }
                looks = looks.wrapping_add(1);
                let now = stamp(&path);
                if now == seen && !looks.is_multiple_of(READ_EVERY) {
                    continue;
                }
                seen = now;
                let Ok(bytes) = std::fs::read(&path) else {
                    tracing::warn!(path = %path.display(), "router config cannot be read; keeping the last one");
                    continue;
                };
                // (A refused file is said once, not at every read.)
                if bytes == last || refused.as_ref() == Some(&bytes) {
                    continue;
                }
                match FleetSpec::parse_file(&bytes) {
                    Ok(spec) => {
                        tracing::info!(path = %path.display(), "router config changed");
                        last = bytes;
                        refused = None;
                        let _ = tx.send(Arc::new(spec));
                    }
                    Err(e) => {
                        tracing::error!(path = %path.display(), error = %e, "router config refused; keeping the last one");
                        refused = Some(bytes);
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(version: &str) -> String {
        format!(r#"{{"endpoints": [{{"name": "iris", "auth": {{"mode": "none"}}, "versions": [{{"name": "{version}"}}]}}]}}"#)
    }

    /// A change that leaves the inode, size and modification time as they
    /// were (written in place within one timestamp tick; here the time is
    /// put back) is still seen.
    #[tokio::test]
    async fn a_change_its_metadata_does_not_show_is_read_within_seconds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("router.json");
        std::fs::write(&path, config("v1")).unwrap();
        let times = std::fs::metadata(&path).unwrap().modified().unwrap();
        let discovery = FileDiscovery::start(path.clone()).unwrap();
        let mut rx = discovery.subscribe();
        assert_eq!(rx.borrow_and_update().endpoints[0].versions[0].name, "v1");
        tokio::time::sleep(POLL * 2).await;
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        std::io::Write::write_all(&mut &f, config("v2").as_bytes()).unwrap();
        f.set_modified(times).unwrap();
        drop(f);
        let seen = tokio::time::timeout(POLL * (READ_EVERY + 4), rx.changed()).await;
        assert!(seen.is_ok(), "the change was not seen");
        assert_eq!(rx.borrow().endpoints[0].versions[0].name, "v2");
    }
}
