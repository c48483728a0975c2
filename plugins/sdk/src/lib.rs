//! The Rust SDK for wasmscore device plugins. A plugin author implements
//! [`Plugin`] (its name, its capabilities, and `execute` for the ops it
//! declares) and writes `export_plugin!(MyPlugin);`; the macro emits the one
//! exported C symbol, `wasmscore_plugin_get_api`, and a function table that
//! follows plugins/abi/wasmscore_plugin.h, catching panics at the boundary
//! and turning them into returned errors.
//!
//! [`abi`] is the header's `repr(C)` mirror; the host's loader
//! (`wasmscore-device-plugin`) uses the same definitions. This crate leaves
//! out memory kinds other than host memory in the safe views (a plugin that
//! takes device memory reads the raw `abi::Tensor`).

pub mod abi;

use std::ffi::CString;

pub use abi::{Capability, DType, OpKind, Status};

/// A read-only view of an input tensor in host memory.
pub struct TensorRef<'a> {
    pub dtype: DType,
    pub shape: &'a [i64],
    pub bytes: &'a [u8],
}

/// The output tensor the host allocated (its shape is the op's result shape).
pub struct TensorMut<'a> {
    pub dtype: DType,
    pub shape: &'a [i64],
    pub bytes: &'a mut [u8],
}

/// An op's parameters (see the header).
pub type OpParams = abi::OpParams;

/// What `execute` reports.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stats {
    pub device_cycles: u64,
    pub device_ns: u64,
}

/// An error returned across the ABI.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginError {
    pub code: Status,
    pub message: String,
}

impl PluginError {
    pub fn invalid(message: impl Into<String>) -> Self {
        PluginError {
            code: Status::InvalidArgument,
            message: message.into(),
        }
    }
    pub fn unsupported(message: impl Into<String>) -> Self {
        PluginError {
            code: Status::Unsupported,
            message: message.into(),
        }
    }
}

/// A device plugin. One value per process (`initialize`); `execute` may be
/// called from several threads at once.
pub trait Plugin: Send + Sync + Sized + 'static {
    const NAME: &'static str;
    const DESCRIPTION: &'static str;
    fn initialize(config_json: &str) -> Result<Self, PluginError>;
    fn capabilities(&self) -> Vec<Capability>;
    fn execute(&self, op: OpKind, params: &OpParams, inputs: &[TensorRef<'_>], output: &mut TensorMut<'_>) -> Result<Stats, PluginError>;
}

/// Machinery for `export_plugin!`; not for direct use.
#[doc(hidden)]
pub mod export {
    use super::*;
    use std::ffi::{c_char, c_void, CStr};
    use std::panic::{catch_unwind, AssertUnwindSafe};

    struct State<P> {
        plugin: P,
        caps: Vec<abi::Capability>,
    }

    fn error(e: PluginError) -> *mut abi::Error {
        let message = CString::new(e.message.replace('\0', " ")).unwrap_or_default().into_raw();
        Box::into_raw(Box::new(abi::Error { code: e.code, message }))
    }

    fn guard(f: impl FnOnce() -> Result<(), PluginError>) -> *mut abi::Error {
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(Ok(())) => std::ptr::null_mut(),
            Ok(Err(e)) => error(e),
            Err(p) => error(PluginError {
                code: Status::Internal,
                message: format!(
                    "the plugin panicked: {}",
                    p.downcast_ref::<&str>()
                        .copied()
                        .or(p.downcast_ref::<String>().map(String::as_str))
                        .unwrap_or("?")
                ),
            }),
        }
    }

    /// # Safety
    /// Called by the host through the table with the header's contract.
    pub unsafe extern "C" fn initialize<P: Plugin>(config: *const c_char, out: *mut *mut c_void) -> *mut abi::Error {
        guard(|| {
            let cfg = if config.is_null() {
                ""
            } else {
                // SAFETY: the host passes a NUL-terminated string or NULL.
                unsafe { CStr::from_ptr(config) }
                    .to_str()
                    .map_err(|_| PluginError::invalid("config is not UTF-8"))?
            };
            let plugin = P::initialize(cfg)?;
            let caps = plugin.capabilities();
            let state = Box::new(State { plugin, caps });
            // SAFETY: `out` is a valid pointer per the header.
            unsafe { *out = Box::into_raw(state).cast() };
            Ok(())
        })
    }

    /// # Safety
    /// `plugin` came from `initialize`.
    pub unsafe extern "C" fn capabilities<P: Plugin>(
        plugin: *mut c_void,
        caps: *mut *const abi::Capability,
        n: *mut usize,
    ) -> *mut abi::Error {
        guard(|| {
            // SAFETY: the host passes back what initialize returned.
            let s = unsafe { &*plugin.cast::<State<P>>() };
            unsafe {
                *caps = s.caps.as_ptr();
                *n = s.caps.len();
            }
            Ok(())
        })
    }

    /// Versions and instances share the plugin's state in this SDK.
    /// # Safety
    /// As the header says.
    pub unsafe extern "C" fn version_init(plugin: *mut c_void, _version: *const c_char, out: *mut *mut c_void) -> *mut abi::Error {
        unsafe { *out = plugin };
        std::ptr::null_mut()
    }

    /// # Safety
    /// As the header says.
    pub unsafe extern "C" fn instance_init(version: *mut c_void, out: *mut *mut c_void) -> *mut abi::Error {
        unsafe { *out = version };
        std::ptr::null_mut()
    }

    /// # Safety
    /// `instance` came from `instance_init`; tensors are as the header says.
    pub unsafe extern "C" fn execute<P: Plugin>(
        instance: *mut c_void,
        op: abi::OpKind,
        params: *const abi::OpParams,
        inputs: *const abi::Tensor,
        n_inputs: usize,
        output: *mut abi::Tensor,
        stats: *mut abi::ExecStats,
    ) -> *mut abi::Error {
        guard(|| {
            // SAFETY: pointers per the header's contract, checked for NULL.
            let s = unsafe { &*instance.cast::<State<P>>() };
            if params.is_null() || output.is_null() || (inputs.is_null() && n_inputs > 0) {
                return Err(PluginError::invalid("NULL params, inputs or output"));
            }
            let params = unsafe { &*params };
            let raw_inputs = if n_inputs == 0 {
                &[][..]
            } else {
                unsafe { std::slice::from_raw_parts(inputs, n_inputs) }
            };
            let mut views = Vec::with_capacity(n_inputs);
            for t in raw_inputs {
                views.push(unsafe { view(t) }?);
            }
            let out = unsafe { &mut *output };
            let shape = unsafe { dims(out) }?;
            let bytes = if out.bytes == 0 {
                &mut [][..]
            } else if out.data.is_null() {
                return Err(PluginError::invalid("output has no buffer"));
            } else {
                unsafe { std::slice::from_raw_parts_mut(out.data.cast::<u8>(), out.bytes) }
            };
            let mut o = TensorMut {
                dtype: out.dtype,
                shape,
                bytes,
            };
            let st = s.plugin.execute(op, params, &views, &mut o)?;
            if !stats.is_null() {
                unsafe {
                    (*stats).device_cycles = st.device_cycles;
                    (*stats).device_ns = st.device_ns;
                }
            }
            Ok(())
        })
    }

    unsafe fn dims<'a>(t: &abi::Tensor) -> Result<&'a [i64], PluginError> {
        if t.rank == 0 {
            return Ok(&[]);
        }
        if t.shape.is_null() {
            return Err(PluginError::invalid("a tensor has rank > 0 and no shape"));
        }
        // SAFETY: rank entries per the header.
        Ok(unsafe { std::slice::from_raw_parts(t.shape, t.rank as usize) })
    }

    unsafe fn view<'a>(t: &abi::Tensor) -> Result<TensorRef<'a>, PluginError> {
        if t.memory != abi::MemoryKind::Host {
            return Err(PluginError::unsupported("only host memory is accepted"));
        }
        let shape = unsafe { dims(t) }?;
        let bytes = if t.bytes == 0 {
            &[][..]
        } else if t.data.is_null() {
            return Err(PluginError::invalid("a tensor has bytes and no data"));
        } else {
            // SAFETY: `bytes` bytes at `data` per the header.
            unsafe { std::slice::from_raw_parts(t.data.cast::<u8>(), t.bytes) }
        };
        Ok(TensorRef {
            dtype: t.dtype,
            shape,
            bytes,
        })
    }

    /// # Safety
    /// As the header says.
    pub unsafe extern "C" fn instance_fini(_: *mut c_void) {}
    /// # Safety
    /// As the header says.
    pub unsafe extern "C" fn version_fini(_: *mut c_void) {}

    /// # Safety
    /// `plugin` came from `initialize` and is not used after.
    pub unsafe extern "C" fn finalize<P: Plugin>(plugin: *mut c_void) {
        if !plugin.is_null() {
            drop(unsafe { Box::from_raw(plugin.cast::<State<P>>()) });
        }
    }

    /// # Safety
    /// `e` came from this plugin and is freed once.
    pub unsafe extern "C" fn error_free(e: *mut abi::Error) {
        if !e.is_null() {
            let e = unsafe { Box::from_raw(e) };
            if !e.message.is_null() {
                drop(unsafe { CString::from_raw(e.message.cast_mut()) });
            }
        }
    }
}

/// Exports a [`Plugin`] as a wasmscore device plugin.
#[macro_export]
macro_rules! export_plugin {
    ($ty:ty) => {
        #[no_mangle]
        pub extern "C" fn wasmscore_plugin_get_api(host_major: u32) -> *const $crate::abi::PluginApi {
            struct Api($crate::abi::PluginApi);
            // SAFETY: the table holds only function pointers and static,
            // never-freed strings.
            unsafe impl Sync for Api {}
            unsafe impl Send for Api {}
            static API: ::std::sync::OnceLock<Api> = ::std::sync::OnceLock::new();
            if host_major != $crate::abi::ABI_MAJOR {
                return ::std::ptr::null();
            }
            let api = API.get_or_init(|| {
                let name: &'static ::std::ffi::CStr = ::std::boxed::Box::leak(
                    ::std::ffi::CString::new(<$ty as $crate::Plugin>::NAME)
                        .expect("no NUL in the name")
                        .into_boxed_c_str(),
                );
                let description: &'static ::std::ffi::CStr = ::std::boxed::Box::leak(
                    ::std::ffi::CString::new(<$ty as $crate::Plugin>::DESCRIPTION)
                        .expect("no NUL")
                        .into_boxed_c_str(),
                );
                Api($crate::abi::PluginApi {
                    abi_version: $crate::abi::ABI_VERSION,
                    name: name.as_ptr(),
                    description: description.as_ptr(),
                    initialize: Some($crate::export::initialize::<$ty>),
                    capabilities: Some($crate::export::capabilities::<$ty>),
                    version_init: Some($crate::export::version_init),
                    instance_init: Some($crate::export::instance_init),
                    execute: Some($crate::export::execute::<$ty>),
                    instance_fini: Some($crate::export::instance_fini),
                    version_fini: Some($crate::export::version_fini),
                    finalize: Some($crate::export::finalize::<$ty>),
                    error_free: Some($crate::export::error_free),
                })
            });
            &api.0
        }
    };
}
