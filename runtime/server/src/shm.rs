//! Triton's system shared memory extension (tritonclient's
//! `register_system_shared_memory` and `tritonclient.utils.shared_memory`):
//! a client on the same machine makes a POSIX shared memory object, has it
//! registered under a name, then gives inputs and takes outputs by
//! reference to a place in it instead of in the request's bytes.
//!
//! Registering opens the object (`/dev/shm/<key>`) once; a call reads and
//! writes it with `pread`/`pwrite`, never through a mapping, so an object
//! the client shrinks or removes while it is registered fails that call
//! with a clear error instead of a SIGBUS that would stop the server.
//! Registering, listing and unregistering take the admin token: a region
//! is any object this process may open, and every model's calls may name
//! it, as in Triton, where regions are the server's.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::{Arc, Mutex};

use wasmscore_oip::InRegion;

use crate::errors::ApiError;

/// Regions one server holds at most (each holds an open file).
const MAX_REGIONS: usize = 1024;

/// A registered region, as Triton's status reports it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub(crate) struct RegionStatus {
    pub name: String,
    pub key: String,
    pub offset: u64,
    pub byte_size: u64,
}

struct Region {
    status: RegionStatus,
    file: Arc<File>,
}

/// The regions registered with this server (one for its REST and gRPC
/// ports), and the most one call may read from them.
pub(crate) struct Regions {
    by_name: Mutex<HashMap<String, Region>>,
    max_read: u64,
}

/// A region's name from a path segment (tritonclient percent-encodes it).
pub(crate) fn unescape(segment: &str) -> String {
    let b = segment.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn refused(message: String) -> ApiError {
    ApiError::new(400, "bad_request", message)
}

/// The file of a POSIX shared memory object's key, as `shm_open` finds it:
/// leading slashes dropped, then one file name.
fn object(key: &str) -> Result<std::path::PathBuf, ApiError> {
    let name = key.trim_start_matches('/');
    if name.is_empty() || name.len() > 255 || name.contains('/') || name == "." || name == ".." || name.contains('\0') {
        return Err(refused(format!(
            "shared memory key {key:?} is not a POSIX shared memory name (\"/name\", one file name under /dev/shm)"
        )));
    }
    Ok(std::path::Path::new("/dev/shm").join(name))
}

impl Regions {
    pub(crate) fn new(max_read: u64) -> Regions {
        Regions {
            by_name: Mutex::new(HashMap::new()),
            max_read,
        }
    }

    fn regions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Region>> {
        self.by_name.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens the object `key` and registers `byte_size` bytes of it from
    /// `offset` as `name`.
    pub(crate) fn register(&self, name: &str, key: &str, offset: u64, byte_size: u64) -> Result<(), ApiError> {
        if name.is_empty() {
            return Err(refused("a shared memory region needs a name".into()));
        }
        if byte_size == 0 {
            return Err(refused(format!("shared memory region {name:?}: byte_size must be more than 0")));
        }
        let path = object(key)?;
        let Some(end) = offset.checked_add(byte_size) else {
            return Err(refused(format!("shared memory region {name:?}: offset plus byte_size overflows")));
        };
        if self.regions().contains_key(name) {
            return Err(ApiError::new(
                409,
                "already_exists",
                format!("shared memory region {name:?} is already registered; unregister it first"),
            ));
        }
        // Never through a link: a key names a shared memory object, not a
        // way to reach the server's other files.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| {
                refused(format!(
                    "shared memory region {name:?}: cannot open key {key:?} ({}): {e}",
                    path.display()
                ))
            })?;
        let meta = file
            .metadata()
            .map_err(|e| refused(format!("shared memory region {name:?}: {e}")))?;
        if !meta.is_file() {
            return Err(refused(format!(
                "shared memory region {name:?}: key {key:?} is not a shared memory object"
            )));
        }
        if meta.len() < end {
            return Err(refused(format!(
                "shared memory region {name:?}: key {key:?} holds {} bytes, fewer than offset {offset} plus byte_size {byte_size}",
                meta.len()
            )));
        }
        let mut regions = self.regions();
        if regions.len() >= MAX_REGIONS {
            return Err(refused(format!("this server holds {MAX_REGIONS} shared memory regions already")));
        }
        if regions.contains_key(name) {
            return Err(ApiError::new(
                409,
                "already_exists",
                format!("shared memory region {name:?} is already registered; unregister it first"),
            ));
        }
        let status = RegionStatus {
            name: name.into(),
            key: key.into(),
            offset,
            byte_size,
        };
        tracing::info!(region = name, key, offset, byte_size, "shared memory region registered");
        regions.insert(
            name.into(),
            Region {
                status,
                file: Arc::new(file),
            },
        );
        Ok(())
    }

    /// Forgets one region (nothing happens for a name not registered, as
    /// in Triton), or every region.
    pub(crate) fn unregister(&self, name: Option<&str>) {
        let mut regions = self.regions();
        match name {
            Some(n) => {
                regions.remove(n);
            }
            None => regions.clear(),
        }
    }

    /// One region's status (404 for a name not registered), or every one's.
    pub(crate) fn status(&self, name: Option<&str>) -> Result<Vec<RegionStatus>, ApiError> {
        let regions = self.regions();
        match name {
            Some(n) => match regions.get(n) {
                Some(r) => Ok(vec![r.status.clone()]),
                None => Err(ApiError::new(
                    404,
                    "not_found",
                    format!("no shared memory region {n:?} is registered"),
                )),
            },
            None => {
                let mut all: Vec<RegionStatus> = regions.values().map(|r| r.status.clone()).collect();
                all.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(all)
            }
        }
    }

    /// The file and the position in it of `len` bytes at the place, checked
    /// against the registered region.
    fn place(&self, at: &InRegion, len: u64) -> Result<(Arc<File>, u64), String> {
        let regions = self.regions();
        let Some(r) = regions.get(&at.region) else {
            return Err(format!("no shared memory region {:?} is registered", at.region));
        };
        let s = &r.status;
        if at.offset.checked_add(len).is_none_or(|end| end > s.byte_size) {
            return Err(format!(
                "{len} bytes at shared_memory_offset {} go past region {:?}'s {} bytes",
                at.offset, at.region, s.byte_size
            ));
        }
        Ok((r.file.clone(), s.offset + at.offset))
    }
}

impl wasmscore_oip::Regions for Regions {
    fn max_read(&self) -> u64 {
        self.max_read
    }

    fn read(&self, at: &InRegion) -> Result<Vec<u8>, String> {
        if at.byte_size > self.max_read {
            return Err(format!(
                "shared_memory_byte_size {} is over this server's limit of {} bytes a call",
                at.byte_size, self.max_read
            ));
        }
        let (file, pos) = self.place(at, at.byte_size)?;
        let mut buf = vec![0; at.byte_size as usize];
        file.read_exact_at(&mut buf, pos).map_err(|e| {
            format!(
                "reading region {:?} failed ({e}): was its shared memory object shrunk or removed?",
                at.region
            )
        })?;
        Ok(buf)
    }

    fn write(&self, at: &InRegion, bytes: &[u8]) -> Result<(), String> {
        let (file, pos) = self.place(at, bytes.len() as u64)?;
        // An object shrunk since it was registered is not grown back.
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if pos + bytes.len() as u64 > len {
            return Err(format!(
                "region {:?}'s shared memory object holds {len} bytes now, too few to write {} at {pos}",
                at.region,
                bytes.len()
            ));
        }
        file.write_all_at(bytes, pos)
            .map_err(|e| format!("writing region {:?} failed: {e}", at.region))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmscore_oip::Regions as _;

    /// A shared memory object of `len` bytes, removed when dropped.
    struct Object(String);

    impl Object {
        fn new(tag: &str, len: usize) -> Object {
            let key = format!("/wasmscore-test-{tag}-{}", std::process::id());
            std::fs::write(object(&key).unwrap(), vec![0u8; len]).unwrap();
            Object(key)
        }
    }

    impl Drop for Object {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(object(&self.0).unwrap());
        }
    }

    fn at(region: &str, offset: u64, byte_size: u64) -> InRegion {
        InRegion {
            region: region.into(),
            offset,
            byte_size,
        }
    }

    #[test]
    fn a_region_is_read_and_written_at_its_offset() {
        let o = Object::new("rw", 32);
        let regions = Regions::new(1 << 20);
        regions.register("r", &o.0, 8, 16).unwrap();
        regions.write(&at("r", 4, 8), b"abcdefgh").unwrap();
        let file = std::fs::read(object(&o.0).unwrap()).unwrap();
        assert_eq!(&file[12..20], b"abcdefgh", "region offset 8 plus place offset 4");
        assert_eq!(regions.read(&at("r", 4, 8)).unwrap(), b"abcdefgh");
        assert_eq!(
            regions.status(None).unwrap(),
            vec![RegionStatus {
                name: "r".into(),
                key: o.0.clone(),
                offset: 8,
                byte_size: 16
            }]
        );
        let e = regions.read(&at("r", 12, 8)).unwrap_err();
        assert!(e.contains("go past region \"r\"'s 16 bytes"), "{e}");
        let e = regions.register("r", &o.0, 0, 8).unwrap_err();
        assert_eq!(e.status, 409);
        regions.unregister(Some("r"));
        assert!(regions.read(&at("r", 0, 8)).unwrap_err().contains("no shared memory region \"r\""));
        assert_eq!(regions.status(Some("r")).unwrap_err().status, 404);
        regions.unregister(Some("r"));
    }

    #[test]
    fn one_call_reads_at_most_the_limit_from_all_its_inputs() {
        let o = Object::new("many", 16);
        let regions = Regions::new(8);
        regions.register("r", &o.0, 0, 16).unwrap();
        let input = |name: &str| {
            serde_json::json!({"name": name, "shape": [8], "datatype": "UINT8",
                "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 8}})
        };
        let body = |inputs: Vec<serde_json::Value>| serde_json::to_vec(&serde_json::json!({ "inputs": inputs })).unwrap();
        assert!(wasmscore_oip::decode(&body(vec![input("a")]), None, &regions).is_ok());
        // The same 8 bytes named twice: 16 in one call.
        let e = wasmscore_oip::decode(&body(vec![input("a"), input("b")]), None, &regions).unwrap_err();
        assert!(e.0.contains("limit of 8 bytes a call"), "{}", e.0);
    }

    #[test]
    fn an_object_shrunk_after_registering_fails_the_call_not_the_server() {
        let o = Object::new("shrunk", 64);
        let regions = Regions::new(1 << 20);
        regions.register("r", &o.0, 0, 64).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(object(&o.0).unwrap())
            .unwrap()
            .set_len(8)
            .unwrap();
        let e = regions.read(&at("r", 0, 64)).unwrap_err();
        assert!(e.contains("shrunk or removed"), "{e}");
        let e = regions.write(&at("r", 32, 8), b"12345678").unwrap_err();
        assert!(e.contains("holds 8 bytes now"), "{e}");
        assert_eq!(std::fs::metadata(object(&o.0).unwrap()).unwrap().len(), 8, "not grown back");
    }

    #[test]
    fn bad_registrations_are_refused() {
        let o = Object::new("bad", 16);
        let regions = Regions::new(1 << 20);
        let link = format!("{}-link", o.0);
        std::os::unix::fs::symlink(object(&o.0).unwrap(), object(&link).unwrap()).unwrap();
        let cases = [
            ("r", "/../etc/passwd", 0, 8, "not a POSIX shared memory name"),
            ("r", "/a/b", 0, 8, "not a POSIX shared memory name"),
            ("r", "/", 0, 8, "not a POSIX shared memory name"),
            ("r", "/wasmscore-no-such-object", 0, 8, "cannot open key"),
            ("r", &link, 0, 8, "cannot open key"),
            ("r", &o.0, 8, 16, "fewer than offset 8 plus byte_size 16"),
            ("r", &o.0, 0, 0, "more than 0"),
            ("", &o.0, 0, 8, "needs a name"),
            ("r", &o.0, u64::MAX, 8, "overflows"),
        ];
        for (name, key, offset, size, want) in cases {
            let e = regions.register(name, key, offset, size).unwrap_err();
            assert!(e.message.contains(want), "{key}: {}", e.message);
            assert_eq!(e.status, 400);
        }
        let _ = std::fs::remove_file(object(&link).unwrap());
        let regions = Regions::new(4);
        regions.register("r", &o.0, 0, 16).unwrap();
        assert!(regions.read(&at("r", 0, 8)).unwrap_err().contains("limit of 4 bytes"));
    }
}
