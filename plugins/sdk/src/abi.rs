//! The `repr(C)` mirror of plugins/abi/wasmscore_plugin.h. Keep the two in
//! step: new table entries only at the end, with a MINOR bump.

use std::ffi::{c_char, c_void};

pub const ABI_MAJOR: u32 = 1;
pub const ABI_MINOR: u32 = 0;
pub const ABI_VERSION: u32 = (ABI_MAJOR << 16) | ABI_MINOR;
/// The exported symbol.
pub const ENTRY_POINT: &[u8] = b"wasmscore_plugin_get_api\0";

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    Float32 = 1,
    Float64 = 2,
    Int8 = 3,
    Int16 = 4,
    Int32 = 5,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::Int8 => 1,
            DType::Int16 => 2,
            DType::Float32 | DType::Int32 => 4,
            DType::Float64 => 8,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::Float32 => "float32",
            DType::Float64 => "float64",
            DType::Int8 => "int8",
            DType::Int16 => "int16",
            DType::Int32 => "int32",
        }
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    MatMul = 1,
    Gemm = 2,
    Conv2d = 3,
}

impl OpKind {
    pub fn name(self) -> &'static str {
        match self {
            OpKind::MatMul => "matmul",
            OpKind::Gemm => "gemm",
            OpKind::Conv2d => "conv2d",
        }
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryKind {
    Host = 0,
    HostPinned = 1,
    Device = 2,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    InvalidArgument = 1,
    Unsupported = 2,
    DeviceError = 3,
    Internal = 4,
}

#[repr(C)]
pub struct Error {
    pub code: Status,
    pub message: *const c_char,
}

#[repr(C)]
pub struct Tensor {
    pub dtype: DType,
    pub memory: MemoryKind,
    pub rank: u32,
    pub shape: *const i64,
    pub data: *mut c_void,
    pub bytes: usize,
}

/// One thing a plugin can do: an op on a dtype, within limits.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Capability {
    pub op: OpKind,
    pub dtype: DType,
    pub max_rank: u32,
    pub max_dim: i64,
    /// Bit `1 << MemoryKind` per accepted kind.
    pub memory_kinds: u32,
}

impl Capability {
    /// An op on a dtype that takes host memory (what the SDK's views read).
    pub fn host(op: OpKind, dtype: DType, max_rank: u32, max_dim: i64) -> Capability {
        Capability {
            op,
            dtype,
            max_rank,
            max_dim,
            memory_kinds: 1 << MemoryKind::Host as u32,
        }
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct OpParams {
    pub alpha: f32,
    pub beta: f32,
    pub trans_a: u8,
    pub trans_b: u8,
    pub stride: [u32; 2],
    pub pad: [u32; 2],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ExecStats {
    pub device_cycles: u64,
    pub device_ns: u64,
}

pub type InitializeFn = unsafe extern "C" fn(*const c_char, *mut *mut c_void) -> *mut Error;
pub type CapabilitiesFn = unsafe extern "C" fn(*mut c_void, *mut *const Capability, *mut usize) -> *mut Error;
pub type VersionInitFn = unsafe extern "C" fn(*mut c_void, *const c_char, *mut *mut c_void) -> *mut Error;
pub type InstanceInitFn = unsafe extern "C" fn(*mut c_void, *mut *mut c_void) -> *mut Error;
pub type ExecuteFn =
    unsafe extern "C" fn(*mut c_void, OpKind, *const OpParams, *const Tensor, usize, *mut Tensor, *mut ExecStats) -> *mut Error;
pub type FiniFn = unsafe extern "C" fn(*mut c_void);
pub type ErrorFreeFn = unsafe extern "C" fn(*mut Error);

/// The function table (`ws_plugin_api`). Optional entries may be NULL;
/// `execute` is required.
#[repr(C)]
pub struct PluginApi {
    pub abi_version: u32,
    pub name: *const c_char,
    pub description: *const c_char,
    pub initialize: Option<InitializeFn>,
    pub capabilities: Option<CapabilitiesFn>,
    pub version_init: Option<VersionInitFn>,
    pub instance_init: Option<InstanceInitFn>,
    pub execute: Option<ExecuteFn>,
    pub instance_fini: Option<FiniFn>,
    pub version_fini: Option<FiniFn>,
    pub finalize: Option<FiniFn>,
    pub error_free: Option<ErrorFreeFn>,
}

pub type GetApiFn = unsafe extern "C" fn(u32) -> *const PluginApi;
