//! Hop 6 for accelerators: loading device plugins (shared libraries built
//! against plugins/abi/wasmscore_plugin.h) and checking them.
//!
//! [`Plugin::load`] opens the library, finds `wasmscore_plugin_get_api`,
//! does the MAJOR/MINOR handshake (a different MAJOR or a newer MINOR is
//! refused with a message that says which), checks the table (`execute` is
//! required), runs `initialize` and reads the capabilities; [`Instance`]s
//! (version_init + instance_init) run ops. Errors come back as the plugin's
//! returned error objects, freed with its `error_free`.
//!
//! [`check`] is the conformance kit behind `wasmscore plugin check`: every
//! op x dtype the plugin declares, over shapes and edge cases, against a
//! plain CPU reference.
//!
//! [`PluginDevice`] puts a loaded plugin behind the host's device seam, so
//! a version that names it (`device = "fpga-sim"`) sends its `ops` calls
//! there; [`load_dir`] loads every plugin in the configured directory,
//! refusing the ones that fail with a message while the rest load.

pub mod check;
mod device;

use std::ffi::{c_void, CStr, CString};
use std::path::Path;
use std::sync::Arc;

pub use device::{load_dir, Loaded, PluginDevice};

use wasmscore_plugin_sdk::abi::{self, Capability, ExecStats, OpKind, OpParams, PluginApi};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LoadError {
    #[error("{path}: cannot be loaded as a shared library: {message}")]
    Open { path: String, message: String },
    #[error("{0}: not a wasmscore device plugin (no wasmscore_plugin_get_api symbol)")]
    NoEntryPoint(String),
    #[error("{path}: the plugin does not serve this host's plugin ABI major version {host} (it was built for another major; rebuild it against this host's wasmscore_plugin.h)")]
    Refused { path: String, host: u32 },
    #[error(
        "{path}: built for plugin ABI {major}.{minor}; this host speaks {host_major}.{host_minor} (a newer major or minor is refused)"
    )]
    Version {
        path: String,
        major: u32,
        minor: u32,
        host_major: u32,
        host_minor: u32,
    },
    #[error("{path}: the plugin's table has no {0}", path = .1)]
    Missing(&'static str, String),
    #[error("{path}: initialize failed: {message}")]
    Initialize { path: String, message: String },
}

/// An op the plugin refused or failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message} ({code:?})")]
pub struct CallError {
    pub code: abi::Status,
    pub message: String,
}

/// Checks a function table against this host's ABI.
pub fn check_table(api: &PluginApi, path: &str) -> Result<(), LoadError> {
    let (major, minor) = (api.abi_version >> 16, api.abi_version & 0xffff);
    if major != abi::ABI_MAJOR || minor > abi::ABI_MINOR {
        return Err(LoadError::Version {
            path: path.into(),
            major,
            minor,
            host_major: abi::ABI_MAJOR,
            host_minor: abi::ABI_MINOR,
        });
    }
    if api.execute.is_none() {
        return Err(LoadError::Missing("execute", path.into()));
    }
    if api.error_free.is_none() {
        return Err(LoadError::Missing("error_free", path.into()));
    }
    Ok(())
}

/// A loaded, initialized plugin.
pub struct Plugin {
    api: *const PluginApi,
    state: *mut c_void,
    pub name: String,
    pub description: String,
    capabilities: Vec<Capability>,
    /// Held for each lifecycle call (version_init and _fini, instance_init
    /// and _fini): the header promises they never run at once, so a
    /// plugin's lists of versions and instances need no lock of their own.
    /// One per library file: two plugins loaded from one file share its
    /// state (the loader maps it once).
    lifecycle: Arc<std::sync::Mutex<()>>,
    // Last: the library is unloaded after finalize ran (see Drop).
    _lib: libloading::Library,
}

// SAFETY: the ABI says execute may run concurrently on different instances;
// the table and the plugin state are only read.
unsafe impl Send for Plugin {}
unsafe impl Sync for Plugin {}

fn cstr(p: *const std::ffi::c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: the plugin's static NUL-terminated strings.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// The lifecycle lock of the library file at `path` (by device and
/// inode, as the loader tells files apart), shared by every plugin loaded
/// from it.
fn lifecycle_lock(path: &Path) -> Arc<std::sync::Mutex<()>> {
    use std::os::unix::fs::MetadataExt;
    type Locks = std::sync::Mutex<std::collections::HashMap<(u64, u64), std::sync::Weak<std::sync::Mutex<()>>>>;
    static LOCKS: std::sync::OnceLock<Locks> = std::sync::OnceLock::new();
    let Ok(meta) = std::fs::metadata(path) else {
        return Arc::default();
    };
    let mut locks = LOCKS.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    locks.retain(|_, l| l.strong_count() > 0);
    let key = (meta.dev(), meta.ino());
    if let Some(l) = locks.get(&key).and_then(std::sync::Weak::upgrade) {
        return l;
    }
    let l = Arc::default();
    locks.insert(key, Arc::downgrade(&l));
    l
}

impl Plugin {
    /// Loads, handshakes and initializes the plugin at `path`.
    pub fn load(path: &Path, config_json: &str) -> Result<Plugin, LoadError> {
        let shown = path.display().to_string();
        // SAFETY: loading a library runs its initializers; that is what a
        // platform team asks for by configuring this plugin.
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| LoadError::Open {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        // SAFETY: the symbol's type is the header's.
        let get: libloading::Symbol<'_, abi::GetApiFn> =
            unsafe { lib.get(abi::ENTRY_POINT) }.map_err(|_| LoadError::NoEntryPoint(shown.clone()))?;
        // SAFETY: calling the plugin's entry point with our major.
        let api = unsafe { get(abi::ABI_MAJOR) };
        if api.is_null() {
            return Err(LoadError::Refused {
                path: shown,
                host: abi::ABI_MAJOR,
            });
        }
        // SAFETY: a non-null table lives as long as the library.
        let table = unsafe { &*api };
        check_table(table, &shown)?;
        // initialize, and finalize on a refusal, under the library's
        // lifecycle lock: another device of the same file may be running
        // its own lifecycle calls.
        let lifecycle = lifecycle_lock(path);
        let one = lifecycle.lock().unwrap_or_else(|p| p.into_inner());
        let mut state = std::ptr::null_mut();
        if let Some(init) = table.initialize {
            let cfg = CString::new(config_json).unwrap_or_default();
            // SAFETY: per the header.
            let e = unsafe { init(cfg.as_ptr(), &mut state) };
            if let Some(err) = take_error(table, e) {
                return Err(LoadError::Initialize {
                    path: shown,
                    message: err.message,
                });
            }
        }
        // Refused after a successful initialize: its state is finalized
        // before the library is unloaded (a thread it started must stop).
        let finalize = |state: *mut c_void| {
            if let Some(f) = table.finalize {
                // SAFETY: the state from initialize, not used after.
                unsafe { f(state) };
            }
        };
        let mut capabilities = Vec::new();
        if let Some(caps) = table.capabilities {
            let (mut ptr, mut n) = (std::ptr::null(), 0usize);
            // SAFETY: per the header; the array lives as long as the state.
            let e = unsafe { caps(state, &mut ptr, &mut n) };
            if let Some(err) = take_error(table, e) {
                finalize(state);
                return Err(LoadError::Initialize {
                    path: shown,
                    message: format!("capabilities: {}", err.message),
                });
            }
            if !ptr.is_null() && n > 0 {
                if n > MAX_CAPABILITIES {
                    finalize(state);
                    return Err(LoadError::Initialize {
                        path: shown,
                        message: format!("capabilities: {n} of them, over {MAX_CAPABILITIES}"),
                    });
                }
                // Read as plain integers first: an op or dtype number the
                // header does not define is refused, never taken for an enum.
                // SAFETY: per the header, `n` capabilities at `ptr`; RawCapability
                // has Capability's layout with its enums as the u32s they are.
                let raw = unsafe { std::slice::from_raw_parts(ptr.cast::<RawCapability>(), n) };
                match raw.iter().map(RawCapability::checked).collect() {
                    Ok(c) => capabilities = c,
                    Err(m) => {
                        finalize(state);
                        return Err(LoadError::Initialize {
                            path: shown,
                            message: format!("capabilities: {m}"),
                        });
                    }
                }
            }
        }
        drop(one);
        Ok(Plugin {
            api,
            state,
            name: cstr(table.name),
            description: cstr(table.description),
            capabilities,
            lifecycle,
            _lib: lib,
        })
    }

    fn table(&self) -> &PluginApi {
        // SAFETY: valid while the library is loaded, which `self` ensures.
        unsafe { &*self.api }
    }

    pub fn capabilities(&self) -> &[Capability] {
        &self.capabilities
    }

    fn one_at_a_time(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lifecycle.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn abi_version(&self) -> (u32, u32) {
        let v = self.table().abi_version;
        (v >> 16, v & 0xffff)
    }

    /// Per-version state (the plugin's version_init), closed with
    /// version_fini when the last handle to it goes.
    pub fn open_version(self: &Arc<Self>, version: &str) -> Result<Arc<VersionHandle>, CallError> {
        let t = self.table();
        let mut v = self.state;
        if let Some(f) = t.version_init {
            let _one = self.one_at_a_time();
            let name = CString::new(version).unwrap_or_default();
            // SAFETY: per the header.
            if let Some(e) = take_error(t, unsafe { f(self.state, name.as_ptr(), &mut v) }) {
                return Err(e);
            }
        }
        Ok(Arc::new(VersionHandle {
            plugin: self.clone(),
            handle: v,
        }))
    }

    /// A per-version, per-instance handle to run ops on.
    pub fn instance(self: &Arc<Self>, version: &str) -> Result<Instance, CallError> {
        self.open_version(version)?.instance()
    }
}

/// A version's state in the plugin.
pub struct VersionHandle {
    plugin: Arc<Plugin>,
    handle: *mut c_void,
}

// SAFETY: the ABI lets instance_init and execute run on any thread; the
// handle is only passed back to the plugin.
unsafe impl Send for VersionHandle {}
unsafe impl Sync for VersionHandle {}

impl VersionHandle {
    /// Per-instance state (instance_init), closed with instance_fini.
    pub fn instance(self: &Arc<Self>) -> Result<Instance, CallError> {
        let t = self.plugin.table();
        let mut i = self.handle;
        if let Some(f) = t.instance_init {
            let _one = self.plugin.one_at_a_time();
            // SAFETY: per the header.
            if let Some(e) = take_error(t, unsafe { f(self.handle, &mut i) }) {
                return Err(e);
            }
        }
        Ok(Instance {
            version: self.clone(),
            instance: i,
        })
    }
}

impl Drop for VersionHandle {
    fn drop(&mut self) {
        if let Some(f) = self.plugin.table().version_fini {
            let _one = self.plugin.one_at_a_time();
            // SAFETY: the handle from version_init, not used after.
            unsafe { f(self.handle) };
        }
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        if let Some(f) = self.table().finalize {
            let _one = self.one_at_a_time();
            // SAFETY: the state from initialize, not used after.
            unsafe { f(self.state) };
        }
    }
}

/// More capabilities than any device has: a count this large is a bug.
const MAX_CAPABILITIES: usize = 4096;

/// [`abi::Capability`] as its bytes are: its enums as u32s (repr(C) enums
/// are C ints), read before any is taken for an enum.
#[repr(C)]
struct RawCapability {
    op: u32,
    dtype: u32,
    max_rank: u32,
    max_dim: i64,
    memory_kinds: u32,
}

const _: () = assert!(std::mem::size_of::<RawCapability>() == std::mem::size_of::<Capability>());
const _: () = assert!(std::mem::align_of::<RawCapability>() == std::mem::align_of::<Capability>());

impl RawCapability {
    fn checked(&self) -> Result<Capability, String> {
        let op = match self.op {
            1 => abi::OpKind::MatMul,
            2 => abi::OpKind::Gemm,
            3 => abi::OpKind::Conv2d,
            n => return Err(format!("op {n} is not one the ABI defines")),
        };
        let dtype = match self.dtype {
            1 => abi::DType::Float32,
            2 => abi::DType::Float64,
            3 => abi::DType::Int8,
            4 => abi::DType::Int16,
            5 => abi::DType::Int32,
            n => return Err(format!("dtype {n} is not one the ABI defines")),
        };
        Ok(Capability {
            op,
            dtype,
            max_rank: self.max_rank,
            max_dim: self.max_dim,
            memory_kinds: self.memory_kinds,
        })
    }
}

/// [`abi::Error`] as its bytes are.
#[repr(C)]
struct RawError {
    code: u32,
    message: *const std::ffi::c_char,
}

const _: () = assert!(std::mem::size_of::<RawError>() == std::mem::size_of::<abi::Error>());

fn take_error(t: &PluginApi, e: *mut abi::Error) -> Option<CallError> {
    if e.is_null() {
        return None;
    }
    // SAFETY: a returned error object (read as its integers: a code the
    // header does not define is Internal), freed once with the plugin's
    // error_free.
    let err = unsafe { &*e.cast::<RawError>() };
    let code = match err.code {
        1 => abi::Status::InvalidArgument,
        2 => abi::Status::Unsupported,
        3 => abi::Status::DeviceError,
        _ => abi::Status::Internal,
    };
    let out = CallError {
        code,
        message: cstr(err.message),
    };
    if let Some(free) = t.error_free {
        unsafe { free(e) };
    }
    Some(out)
}

/// A tensor in host memory for a plugin call. `offset` shifts the data
/// inside its buffer, to hand the plugin unaligned memory on purpose.
#[derive(Debug, Clone)]
pub struct HostTensor {
    pub dtype: abi::DType,
    pub shape: Vec<i64>,
    buf: Vec<u8>,
    offset: usize,
}

impl HostTensor {
    pub fn new(dtype: abi::DType, shape: Vec<i64>, bytes: &[u8], offset: usize) -> HostTensor {
        let mut buf = vec![0u8; offset + bytes.len()];
        buf[offset..].copy_from_slice(bytes);
        HostTensor { dtype, shape, buf, offset }
    }
    pub fn zeros(dtype: abi::DType, shape: Vec<i64>, offset: usize) -> HostTensor {
        let n: i64 = shape.iter().product();
        let len = n.max(0) as usize * dtype.size();
        HostTensor::new(dtype, shape, &vec![0u8; len], offset)
    }
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.offset..]
    }
    fn raw(&mut self) -> abi::Tensor {
        let bytes = self.buf.len() - self.offset;
        abi::Tensor {
            dtype: self.dtype,
            memory: abi::MemoryKind::Host,
            rank: self.shape.len() as u32,
            shape: self.shape.as_ptr(),
            // SAFETY: within the buffer (an offset of at most its length).
            data: unsafe { self.buf.as_mut_ptr().add(self.offset) }.cast(),
            bytes,
        }
    }
}

/// One instance's state in the plugin. The ABI allows execute on different
/// instances at once, never on one instance from two threads: `execute`
/// takes `&mut self`.
pub struct Instance {
    version: Arc<VersionHandle>,
    instance: *mut c_void,
}

// SAFETY: an instance may move between threads (not be shared: execute
// takes &mut self).
unsafe impl Send for Instance {}

/// A tensor handed to `execute` as it lies in the caller's memory.
pub struct TensorView<'a> {
    pub dtype: abi::DType,
    pub shape: &'a [i64],
    pub bytes: &'a [u8],
}

impl Instance {
    /// Runs one op; the output's shape and dtype are set by the caller.
    pub fn execute(
        &mut self,
        op: OpKind,
        params: &OpParams,
        inputs: &mut [HostTensor],
        output: &mut HostTensor,
    ) -> Result<ExecStats, CallError> {
        let raw_in: Vec<abi::Tensor> = inputs.iter_mut().map(HostTensor::raw).collect();
        let mut raw_out = output.raw();
        self.execute_raw(op, params, &raw_in, &mut raw_out)
    }

    /// Runs one op on tensors in place (no copy): the inputs are read, the
    /// output's bytes are written.
    pub fn execute_views(
        &mut self,
        op: OpKind,
        params: &OpParams,
        inputs: &[TensorView<'_>],
        out_dtype: abi::DType,
        out_shape: &[i64],
        out: &mut [u8],
    ) -> Result<ExecStats, CallError> {
        let raw_in: Vec<abi::Tensor> = inputs
            .iter()
            .map(|t| abi::Tensor {
                dtype: t.dtype,
                memory: abi::MemoryKind::Host,
                rank: t.shape.len() as u32,
                shape: t.shape.as_ptr(),
                // The header's inputs are const; the field is shared with outputs.
                data: t.bytes.as_ptr().cast_mut().cast(),
                bytes: t.bytes.len(),
            })
            .collect();
        let mut raw_out = abi::Tensor {
            dtype: out_dtype,
            memory: abi::MemoryKind::Host,
            rank: out_shape.len() as u32,
            shape: out_shape.as_ptr(),
            data: out.as_mut_ptr().cast(),
            bytes: out.len(),
        };
        self.execute_raw(op, params, &raw_in, &mut raw_out)
    }

    fn execute_raw(
        &mut self,
        op: OpKind,
        params: &OpParams,
        inputs: &[abi::Tensor],
        out: &mut abi::Tensor,
    ) -> Result<ExecStats, CallError> {
        let t = self.version.plugin.table();
        let mut stats = ExecStats::default();
        let exec = t.execute.expect("checked at load");
        // SAFETY: all pointers live across the call; per the header.
        let e = unsafe { exec(self.instance, op, params, inputs.as_ptr(), inputs.len(), out, &mut stats) };
        match take_error(t, e) {
            Some(err) => Err(err),
            None => Ok(stats),
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(f) = self.version.plugin.table().instance_fini {
            let _one = self.version.plugin.one_at_a_time();
            // SAFETY: the handle from instance_init, not used after.
            unsafe { f(self.instance) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plugins loaded from one library file (by any path to it) share one
    /// lifecycle lock; another file has its own.
    #[test]
    fn one_library_file_has_one_lifecycle_lock() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, link) = (dir.path().join("a.so"), dir.path().join("b.so"), dir.path().join("link.so"));
        std::fs::write(&a, b"a").unwrap();
        std::fs::write(&b, b"b").unwrap();
        std::os::unix::fs::symlink(&a, &link).unwrap();
        let first = lifecycle_lock(&a);
        assert!(Arc::ptr_eq(&first, &lifecycle_lock(&a)));
        assert!(Arc::ptr_eq(&first, &lifecycle_lock(&link)), "a link to the same file");
        assert!(!Arc::ptr_eq(&first, &lifecycle_lock(&b)));
    }

    fn table(version: u32, execute: bool) -> PluginApi {
        unsafe extern "C" fn exec(
            _: *mut c_void,
            _: OpKind,
            _: *const OpParams,
            _: *const abi::Tensor,
            _: usize,
            _: *mut abi::Tensor,
            _: *mut ExecStats,
        ) -> *mut abi::Error {
            std::ptr::null_mut()
        }
        unsafe extern "C" fn free(_: *mut abi::Error) {}
        PluginApi {
            abi_version: version,
            name: std::ptr::null(),
            description: std::ptr::null(),
            initialize: None,
            capabilities: None,
            version_init: None,
            instance_init: None,
            execute: if execute { Some(exec) } else { None },
            instance_fini: None,
            version_fini: None,
            finalize: None,
            error_free: Some(free),
        }
    }

    #[test]
    fn the_handshake_refuses_other_majors_newer_minors_and_no_execute() {
        assert!(check_table(&table(abi::ABI_VERSION, true), "p.so").is_ok());
        let newer_major = check_table(&table(2 << 16, true), "p.so").unwrap_err().to_string();
        assert!(
            newer_major.contains("built for plugin ABI 2.0") && newer_major.contains("speaks 1.0"),
            "{newer_major}"
        );
        assert!(check_table(&table((1 << 16) | 1, true), "p.so").is_err(), "a newer minor");
        assert!(check_table(&table(0, true), "p.so").is_err(), "major 0");
        let no_exec = check_table(&table(abi::ABI_VERSION, false), "p.so").unwrap_err().to_string();
        assert!(no_exec.contains("no execute"), "{no_exec}");
    }

    /// Numbers the header does not define, from a C plugin, are refused
    /// (a capability) or read as Internal (an error's code); never taken for
    /// a Rust enum, which would be undefined behaviour.
    #[test]
    fn numbers_the_abi_does_not_define_are_refused_or_read_as_internal() {
        let cap = |op, dtype| RawCapability {
            op,
            dtype,
            max_rank: 2,
            max_dim: 1024,
            memory_kinds: 1,
        };
        let ok = cap(1, 5).checked().unwrap();
        assert_eq!((ok.op, ok.dtype, ok.max_dim), (OpKind::MatMul, abi::DType::Int32, 1024));
        assert!(cap(4, 1).checked().unwrap_err().contains("op 4"));
        assert!(cap(0, 1).checked().unwrap_err().contains("op 0"));
        assert!(cap(2, 9).checked().unwrap_err().contains("dtype 9"));
        for (code, read) in [
            (0, abi::Status::Internal),
            (3, abi::Status::DeviceError),
            (u32::MAX, abi::Status::Internal),
        ] {
            let mut raw = RawError {
                code,
                message: c"boom".as_ptr(),
            };
            let e = take_error(&table(abi::ABI_VERSION, true), (&mut raw as *mut RawError).cast()).unwrap();
            assert_eq!((e.code, e.message.as_str()), (read, "boom"));
        }
    }

    #[test]
    fn a_file_that_is_not_a_plugin_is_refused_with_a_message() {
        let dir = std::env::temp_dir().join(format!("ws-plugin-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("junk.so");
        std::fs::write(&p, b"not an ELF file").unwrap();
        let e = Plugin::load(&p, "").err().expect("refused").to_string();
        assert!(e.contains("cannot be loaded as a shared library"), "{e}");
        let missing = Plugin::load(&dir.join("nope.so"), "").err().expect("refused").to_string();
        assert!(missing.contains("nope.so"), "{missing}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
