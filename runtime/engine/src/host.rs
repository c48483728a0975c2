//! The host side of the guest's imports: tensors, inference, ops, log.
//!
//! Lifecycle: the linker is built once (`ScoringEngine::new`), a
//! [`VersionContext`] is configured per version (its models and device), and a
//! [`HostState`] is prepared per instance (its resource table and limits).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime};

use wasmscore_tensor::{DType, Devices, Model, Ops, Tensor, TensorData, TensorError, Value};
use wasmtime::component::{Resource, ResourceTable};
use wasmtime::ResourceLimiter;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use wasmscore_collect::{Designation, VersionCollector};

use crate::bindings::{
    byte_strings, data_collection, half_floats, inference, log, metrics, ops, responses, scoring_types, tensors, types, HostError,
};
use crate::usage::DeviceUsage;
pub use wasmscore_rules::verdict::Moments;

/// A tensor held for the guest, with the device that holds it: host
/// data, or a value a device keeps (a model's output left on the GPU),
/// copied to the host once, when something first needs the elements.
pub struct TensorRes {
    value: Value,
    host: OnceLock<Tensor>,
    pub device: Arc<str>,
}

impl TensorRes {
    /// The elements in host memory.
    fn host(&self) -> Result<&Tensor, TensorError> {
        match &self.value {
            Value::Host(t) => Ok(t),
            Value::Resident(r) => {
                if self.host.get().is_none() {
                    let _ = self.host.set(r.to_host()?);
                }
                Ok(self.host.get().expect("set above"))
            }
        }
    }

    /// The device whose value was read into host memory, if one was.
    fn read_from(&self) -> Option<&str> {
        match &self.value {
            Value::Resident(r) if self.host.get().is_some() => Some(r.device()),
            _ => None,
        }
    }
}

/// A model handle given to the guest, with the device its session is on.
pub struct ModelRes {
    file: String,
    model: Arc<dyn Model>,
    device: Arc<str>,
}

/// Reads a model file of the version by name (from the control plane's
/// blobs), for sessions made on another device than the version's.
pub type ModelSource = Arc<dyn Fn(&str) -> Result<Vec<u8>, String> + Send + Sync>;

/// One line a module logged.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LogLine {
    pub unix_ms: u128,
    pub level: &'static str,
    pub message: String,
    /// The W3C trace id of the request it was logged in, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// Lines kept per version for `service logs`; older ones are dropped.
const LOG_LINES_KEPT: usize = 1000;
/// The longest log line kept, in bytes; the rest is cut.
pub const MAX_LOG_LINE: usize = 16 << 10;

/// What a tensor handle holds on the host besides its data and shape (the
/// table entry and its value): counted against the instance's memory
/// limit, so tensors of no data are not free to make without end.
pub(crate) const HANDLE_BYTES: usize = 128;

/// What a tensor handed to the guest holds on the host: its data, its
/// shape, the handle's own share.
fn held(v: &Value) -> u64 {
    (v.byte_size() + 8 * v.shape().len() + HANDLE_BYTES) as u64
}

/// What every replica of one version shares: its models (sessions made at
/// deploy time), its device, its limits and its log.
pub struct VersionContext {
    pub endpoint: String,
    pub version: String,
    /// Sessions by model file name.
    pub models: HashMap<String, Arc<dyn Model>>,
    pub devices: Devices,
    /// Where `ops` calls that name no device run. Shared so tagging each
    /// tensor with its device does not allocate.
    pub default_device: Arc<str>,
    /// Where the models' sessions were made (the version's device, or the
    /// fallback when that device runs single ops only).
    pub model_device: Arc<str>,
    /// The device ops go to when theirs cannot do them (the version's
    /// `device_fallback`); none means such ops fail.
    pub fallback: Option<Arc<str>>,
    /// Which device served, and for how long.
    pub usage: DeviceUsage,
    /// Where `load-on` reads model files; none: only the version's sessions.
    model_source: Option<ModelSource>,
    /// Sessions made by `load-on`, by (file, device). A mutex is fine: it
    /// is taken when a module loads a model (in init), never per request.
    other_sessions: Mutex<HashMap<(String, String), Arc<dyn Model>>>,
    /// Bytes an instance may hold: its linear memories plus the tensors it
    /// keeps on the host.
    pub memory_limit: u64,
    /// Recent log lines. A mutex is fine here: logging is rare next to scoring
    /// and never on the path of a request that does not log.
    logs: Mutex<VecDeque<LogLine>>,
    /// What the module reported through the `metrics` import.
    pub reported: Reported,
    /// What the module may reach through WASI beyond its own memory.
    pub sandbox: Sandbox,
    /// Model data collection, when the version has it on.
    pub collector: Option<Arc<VersionCollector>>,
    /// Whether its calls may send responses before they return
    /// (`decoupled: true`, Triton's decoupled transaction policy).
    pub decoupled: bool,
}

/// Names a version may report at most.
pub const REPORTED_NAMES: usize = 32;

/// A version's reported numbers by name. A mutex: a module that reports
/// does so once per request at most, next to a model run.
#[derive(Default)]
pub struct Reported {
    by_name: Mutex<Vec<(String, Moments)>>,
    /// Records refused: a bad name, a value that is not finite or is past
    /// 1e150 in size (or whose moments would not stay finite), too many
    /// names.
    pub dropped: std::sync::atomic::AtomicU64,
}

impl Reported {
    pub fn record(&self, name: &str, value: f64) {
        let name_ok = !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        // Past 1e150 a value's squared deviations could leave f64's range.
        if !name_ok || !value.is_finite() || value.abs() > 1e150 {
            self.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        let mut all = self.by_name.lock().unwrap_or_else(|p| p.into_inner());
        let i = match all.iter().position(|(n, _)| n == name) {
            Some(i) => i,
            None if all.len() < REPORTED_NAMES => {
                all.push((name.to_string(), Moments::default()));
                all.len() - 1
            }
            None => {
                self.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return;
            }
        };
        if !all[i].1.push(value) {
            self.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Adds moments kept from before (persisted across a restart).
    pub fn add(&self, name: &str, m: Moments) {
        let mut all = self.by_name.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, have)) = all.iter_mut().find(|(n, _)| n == name) {
            if !have.merge(&m) {
                tracing::warn!(
                    name,
                    "reported moments kept from before would not stay finite added to these; left out"
                );
            }
        } else if all.len() < REPORTED_NAMES {
            all.push((name.to_string(), m));
        }
    }

    pub fn snapshot(&self) -> Vec<(String, Moments)> {
        self.by_name.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What a version's deployment config grants its module through WASI.
/// Nothing else is reachable: no files (no preopened directory), no
/// sockets (TCP, UDP and name lookup are off), no arguments, stdin empty,
/// stdout and stderr discarded (module logs go through the `log` import).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sandbox {
    /// Environment variables the module sees (none unless granted).
    pub env: Vec<(String, String)>,
    /// The host's clocks at full resolution; otherwise both clocks read in
    /// whole milliseconds (a timing side channel gets 1 ms steps).
    pub precise_clocks: bool,
}

/// Resolution of the clocks a module sees unless precise clocks are granted.
pub const COARSE_CLOCK_NS: u64 = 1_000_000;

struct CoarseWallClock;

impl wasmtime_wasi::HostWallClock for CoarseWallClock {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(COARSE_CLOCK_NS)
    }
    fn now(&self) -> std::time::Duration {
        let d = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        std::time::Duration::from_millis(d.as_millis() as u64)
    }
}

struct CoarseMonotonicClock(std::time::Instant);

impl wasmtime_wasi::HostMonotonicClock for CoarseMonotonicClock {
    fn resolution(&self) -> u64 {
        COARSE_CLOCK_NS
    }
    fn now(&self) -> u64 {
        let ns = self.0.elapsed().as_nanos() as u64;
        ns - ns % COARSE_CLOCK_NS
    }
}

impl VersionContext {
    pub fn new(
        endpoint: &str,
        version: &str,
        models: HashMap<String, Arc<dyn Model>>,
        devices: Devices,
        default_device: &str,
        memory_limit: u64,
    ) -> Self {
        VersionContext {
            endpoint: endpoint.into(),
            version: version.into(),
            models,
            usage: DeviceUsage::new(devices.names()),
            devices,
            default_device: Arc::from(default_device),
            model_device: Arc::from(default_device),
            fallback: None,
            model_source: None,
            other_sessions: Mutex::new(HashMap::new()),
            memory_limit,
            logs: Mutex::new(VecDeque::new()),
            reported: Reported::default(),
            sandbox: Sandbox::default(),
            collector: None,
            decoupled: false,
        }
    }

    /// The same context with models on `model_device` and ops falling back
    /// to `fallback` when their device cannot do them.
    pub fn with_devices(mut self, model_device: &str, fallback: Option<&str>) -> Self {
        self.model_device = Arc::from(model_device);
        self.fallback = fallback.map(Arc::from);
        self
    }

    /// The same context, decoupled or not (`decoupled: true`).
    pub fn decoupled(mut self, decoupled: bool) -> Self {
        self.decoupled = decoupled;
        self
    }

    /// The same context with `load-on` reading model files from `source`.
    pub fn with_model_source(mut self, source: ModelSource) -> Self {
        self.model_source = Some(source);
        self
    }

    /// The session of `file` on `device`: the version's own when that is
    /// its model device, else made once and kept.
    pub(crate) fn session_on(&self, file: &str, device: &str) -> Result<Arc<dyn Model>, TensorError> {
        let own = self.models.get(file).cloned().ok_or_else(|| {
            let mut names: Vec<&String> = self.models.keys().collect();
            names.sort();
            TensorError::failed(format!("no model file {file:?} ships with this version; it has {names:?}"))
        })?;
        if device == &*self.model_device {
            return Ok(own);
        }
        let key = (file.to_string(), device.to_string());
        if let Some(m) = self.other_sessions.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(m.clone());
        }
        let dev = self.devices.get(device).map_err(|e| TensorError::failed(e.to_string()))?;
        let source = self
            .model_source
            .as_ref()
            .ok_or_else(|| TensorError::failed(format!("model {file} can only run on {} here", self.model_device)))?;
        let bytes = source(file).map_err(TensorError::failed)?;
        let model = dev.load_model(file, &bytes)?;
        self.other_sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, model.clone());
        Ok(model)
    }

    /// The same context with these grants.
    pub fn with_sandbox(mut self, sandbox: Sandbox) -> Self {
        self.sandbox = sandbox;
        self
    }

    /// The same context collecting model data through `collector`.
    pub fn with_collector(mut self, collector: Arc<VersionCollector>) -> Self {
        self.collector = Some(collector);
        self
    }

    pub fn log(&self, level: &'static str, message: String) {
        self.log_in(level, message, None);
    }

    /// A line logged while serving the request of trace TRACE_ID; one over
    /// MAX_LOG_LINE bytes is cut there (a module's lines are kept, 1000 a
    /// version, and go to the process's log).
    pub fn log_in(&self, level: &'static str, mut message: String, trace_id: Option<&str>) {
        if message.len() > MAX_LOG_LINE {
            let mut at = MAX_LOG_LINE;
            while !message.is_char_boundary(at) {
                at -= 1;
            }
            let cut = message.len() - at;
            message.truncate(at);
            message.push_str(&format!(" [{cut} more bytes cut]"));
        }
        let trace = trace_id.unwrap_or("");
        // One line of the process's log per line of the module's: a
        // newline in it cannot make a line that seems the host's own.
        let line = escaped(&message);
        match level {
            "error" => tracing::error!(endpoint = %self.endpoint, version = %self.version, trace_id = trace, "{line}"),
            "warn" => tracing::warn!(endpoint = %self.endpoint, version = %self.version, trace_id = trace, "{line}"),
            "debug" => tracing::debug!(endpoint = %self.endpoint, version = %self.version, trace_id = trace, "{line}"),
            _ => tracing::info!(endpoint = %self.endpoint, version = %self.version, trace_id = trace, "{line}"),
        }
        let unix_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let mut logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        if logs.len() == LOG_LINES_KEPT {
            logs.pop_front();
        }
        logs.push_back(LogLine {
            unix_ms,
            level,
            message,
            trace_id: trace_id.map(str::to_string),
        });
    }

    pub fn recent_logs(&self) -> Vec<LogLine> {
        self.logs.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }
}

/// `text` with its control characters escaped (`\n`, `\u{1b}`), borrowed
/// when it has none.
fn escaped(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// Per-instance state: WASI (with nothing granted), the resource table, and
/// the memory accounting the limiter enforces.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) version: Arc<VersionContext>,
    /// Bytes of linear memory the instance has now.
    memory_bytes: u64,
    /// Bytes of host tensors the instance holds now.
    tensor_bytes: u64,
    /// Set when a growth was refused for the limit, so the trap that follows
    /// is reported as the memory limit, not as a generic trap.
    pub(crate) hit_memory_limit: bool,
    /// This instance's op handles, by device, opened on first use (a
    /// plugin's instance_init) and closed when the instance is dropped.
    ops: Vec<(Arc<str>, Arc<dyn Ops>)>,
    /// The trace id of the request being run, for its log lines.
    pub(crate) trace_id: Option<String>,
    /// When the call in progress must be answered (its scoring timeout): a
    /// batched model does not hold it past then.
    pub(crate) deadline: Option<Instant>,
    /// The correlation id of the request being run when it is sampled for
    /// data collection: the module's `collect` calls go in under it.
    pub(crate) collecting: Option<String>,
    /// Where the call in progress sends responses before it returns, if it
    /// may.
    pub(crate) responses: Option<crate::replica::Responses>,
    /// What the call in progress (an init() or a run()) has logged.
    pub(crate) logged: Logged,
}

/// Log lines a call may write, at most: a module logging in a loop for its
/// whole timeout would otherwise write gigabytes to the process's log.
pub const LOG_LINES_PER_CALL: u32 = 1000;
/// Bytes of log lines a call may write, at most.
pub const LOG_BYTES_PER_CALL: usize = 1 << 20;

/// A call's log lines so far, and those dropped past its budget.
#[derive(Debug, Default)]
pub(crate) struct Logged {
    lines: u32,
    bytes: usize,
    dropped: u32,
}

impl Logged {
    /// Whether a line of `len` bytes is within the call's budget; counted
    /// as dropped when it is not.
    fn take(&mut self, len: usize) -> bool {
        if self.lines < LOG_LINES_PER_CALL && self.bytes.saturating_add(len) <= LOG_BYTES_PER_CALL {
            self.lines += 1;
            self.bytes += len;
            true
        } else {
            self.dropped += 1;
            false
        }
    }
}

impl HostState {
    /// Ends a call's log budget: says in the log how many of its lines were
    /// dropped, if any, and starts the next call's.
    pub(crate) fn end_log_budget(&mut self) {
        let dropped = std::mem::take(&mut self.logged).dropped;
        if dropped > 0 {
            let message = format!(
                "{dropped} more log lines of this call dropped: a call logs at most {LOG_LINES_PER_CALL} lines and {LOG_BYTES_PER_CALL} bytes"
            );
            self.version.log_in("warn", message, self.trace_id.as_deref());
        }
    }
}

impl HostState {
    pub fn new(version: Arc<VersionContext>) -> Self {
        // Only what the version's config grants (see `Sandbox`): no
        // preopened directories, no arguments, no network, and the
        // environment and clock resolution it was given.
        let mut b = WasiCtx::builder();
        b.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
        b.envs(&version.sandbox.env);
        if !version.sandbox.precise_clocks {
            b.wall_clock(CoarseWallClock);
            b.monotonic_clock(CoarseMonotonicClock(std::time::Instant::now()));
        }
        let wasi = b.build();
        HostState {
            wasi,
            table: ResourceTable::new(),
            version,
            memory_bytes: 0,
            tensor_bytes: 0,
            hit_memory_limit: false,
            ops: Vec::new(),
            trace_id: None,
            deadline: None,
            collecting: None,
            responses: None,
            logged: Logged::default(),
        }
    }

    pub(crate) fn push_tensor(&mut self, tensor: Tensor, device: Arc<str>) -> Result<Resource<TensorRes>, HostError> {
        self.push_value(Value::Host(tensor), device)
    }

    /// A tensor the guest made (`tensors.create`, `half-floats.from-*`,
    /// `byte-strings.from-bytes`):
    /// the shape checked against the data, held for the version's device.
    fn made_by_guest(&mut self, shape: Vec<u64>, data: TensorData) -> Result<Resource<TensorRes>, HostError> {
        let t = Tensor::new(shape, data)?;
        let dev = self.device_name();
        self.push_tensor(t, dev)
    }

    /// Hands a value to the guest. A resident one counts at its full size
    /// now: that is what its host copy takes if it is ever read.
    fn push_value(&mut self, value: Value, device: Arc<str>) -> Result<Resource<TensorRes>, HostError> {
        self.reserve_tensor_bytes(held(&value))?;
        Ok(self.table.push(TensorRes {
            value,
            host: OnceLock::new(),
            device,
        })?)
    }

    /// Takes a tensor back from the guest (a response tensor), in host memory.
    pub(crate) fn take_tensor(&mut self, r: Resource<TensorRes>) -> Result<Tensor, HostError> {
        let t = self.forget(r)?;
        if let Value::Resident(r) = &t.value {
            if t.host.get().is_none() {
                self.version.usage.host_read(r.device());
            }
        }
        match (t.value, t.host.into_inner()) {
            (_, Some(copy)) => Ok(copy),
            (value, None) => Ok(value.into_host()?),
        }
    }

    /// Counts `size` more bytes of host tensors held by the instance, or
    /// refuses them past its memory limit.
    pub(crate) fn reserve_tensor_bytes(&mut self, size: u64) -> Result<(), TensorError> {
        if self.memory_bytes + self.tensor_bytes + size > self.version.memory_limit {
            self.hit_memory_limit = true;
            return Err(TensorError::bad(format!(
                "tensor of {size} bytes would exceed the instance's memory limit of {} bytes",
                self.version.memory_limit
            )));
        }
        self.tensor_bytes += size;
        Ok(())
    }

    /// Drops a tensor the guest was never given (a request's, when a later
    /// one could not be pushed), its bytes with it.
    pub(crate) fn drop_tensor(&mut self, r: Resource<TensorRes>) {
        let _ = self.forget(r);
    }

    pub(crate) fn release_tensor_bytes(&mut self, size: u64) {
        self.tensor_bytes -= size;
    }

    pub(crate) fn table_mut(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    /// Removes a tensor from the table and its bytes from the count,
    /// noting a resident value that was read into host memory.
    fn forget(&mut self, r: Resource<TensorRes>) -> Result<TensorRes, HostError> {
        let t = self.table.delete(r)?;
        self.tensor_bytes -= held(&t.value);
        if let Some(device) = t.read_from() {
            self.version.usage.host_read(device);
        }
        Ok(t)
    }

    fn device_name(&self) -> Arc<str> {
        self.version.default_device.clone()
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl ResourceLimiter for HostState {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let grow = (desired - current) as u64;
        if self.memory_bytes + grow + self.tensor_bytes > self.version.memory_limit {
            self.hit_memory_limit = true;
            // Refusing with an error traps the guest: a runaway allocation stops here.
            return Err(wasmtime::format_err!(
                "memory limit of {} bytes reached (asked to grow to {} bytes)",
                self.version.memory_limit,
                self.memory_bytes + grow + self.tensor_bytes
            ));
        }
        self.memory_bytes += grow;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= crate::engine::MAX_TABLE_ELEMENTS)
    }
}

fn to_wit_dtype(d: DType) -> types::Dtype {
    use types::Dtype as W;
    match d {
        DType::Float32 => W::Float32,
        DType::Float64 => W::Float64,
        DType::Int8 => W::Int8,
        DType::Int16 => W::Int16,
        DType::Int32 => W::Int32,
        DType::Int64 => W::Int64,
        DType::Uint8 => W::Uint8,
        // `dtype` has no 16-bit float case (half-floats tells them apart).
        DType::Uint16 | DType::Float16 | DType::Bfloat16 => W::Uint16,
        DType::Uint32 => W::Uint32,
        DType::Uint64 => W::Uint64,
        DType::Bool => W::Boolean,
        DType::String => W::String,
    }
}

pub(crate) fn from_wit_data(d: types::TensorData) -> TensorData {
    use types::TensorData as W;
    match d {
        W::Float32(v) => TensorData::Float32(v),
        W::Float64(v) => TensorData::Float64(v),
        W::Int8(v) => TensorData::Int8(v),
        W::Int16(v) => TensorData::Int16(v),
        W::Int32(v) => TensorData::Int32(v),
        W::Int64(v) => TensorData::Int64(v),
        W::Uint8(v) => TensorData::Uint8(v),
        W::Uint16(v) => TensorData::Uint16(v),
        W::Uint32(v) => TensorData::Uint32(v),
        W::Uint64(v) => TensorData::Uint64(v),
        W::Boolean(v) => TensorData::Bool(v),
        W::String(v) => TensorData::String(v),
    }
}

fn to_wit_data(d: &TensorData) -> types::TensorData {
    use types::TensorData as W;
    match d {
        TensorData::Float32(v) => W::Float32(v.clone()),
        TensorData::Float64(v) => W::Float64(v.clone()),
        TensorData::Int8(v) => W::Int8(v.clone()),
        TensorData::Int16(v) => W::Int16(v.clone()),
        TensorData::Int32(v) => W::Int32(v.clone()),
        TensorData::Int64(v) => W::Int64(v.clone()),
        TensorData::Uint8(v) => W::Uint8(v.clone()),
        TensorData::Uint16(v) => W::Uint16(v.clone()),
        TensorData::Float16(v) => W::Uint16(v.iter().map(|x| x.to_bits()).collect()),
        TensorData::Bfloat16(v) => W::Uint16(v.iter().map(|x| x.to_bits()).collect()),
        TensorData::Uint32(v) => W::Uint32(v.clone()),
        TensorData::Uint64(v) => W::Uint64(v.clone()),
        TensorData::Bool(v) => W::Boolean(v.clone()),
        TensorData::String(v) => W::String(v.clone()),
        // `byte-strings.to-bytes` gives these exactly.
        TensorData::Bytes(v) => W::String(v.iter().map(|e| String::from_utf8_lossy(e).into_owned()).collect()),
    }
}

impl types::Host for HostState {
    fn convert_error(&mut self, err: HostError) -> wasmtime::Result<types::Error> {
        match err {
            HostError::Guest(TensorError::BadInput(m)) => Ok(types::Error::BadInput(m)),
            HostError::Guest(TensorError::Failed(m) | TensorError::Unsupported(m)) => Ok(types::Error::Failed(m)),
            HostError::Trap(e) => Err(e),
        }
    }
}

impl tensors::Host for HostState {}
impl scoring_types::Host for HostState {}

impl tensors::HostTensor for HostState {
    fn create(&mut self, shape: Vec<u64>, data: types::TensorData) -> Result<Resource<TensorRes>, HostError> {
        self.made_by_guest(shape, from_wit_data(data))
    }

    fn dtype(&mut self, t: Resource<TensorRes>) -> wasmtime::Result<types::Dtype> {
        Ok(to_wit_dtype(self.table.get(&t)?.value.dtype()))
    }

    fn shape(&mut self, t: Resource<TensorRes>) -> wasmtime::Result<Vec<u64>> {
        Ok(self.table.get(&t)?.value.shape().to_vec())
    }

    fn data(&mut self, t: Resource<TensorRes>) -> wasmtime::Result<types::TensorData> {
        // A device that cannot hand its value back is a host failure: trap.
        let host = self
            .table
            .get(&t)?
            .host()
            .map_err(|e| wasmtime::format_err!("reading a tensor from its device: {e}"))?;
        Ok(to_wit_data(host.data()))
    }

    fn device(&mut self, t: Resource<TensorRes>) -> wasmtime::Result<String> {
        Ok(self.table.get(&t)?.device.to_string())
    }

    fn drop(&mut self, t: Resource<TensorRes>) -> wasmtime::Result<()> {
        match self.forget(t) {
            Ok(_) => Ok(()),
            Err(HostError::Trap(e)) => Err(e),
            Err(HostError::Guest(e)) => Err(wasmtime::format_err!("{e}")),
        }
    }
}

impl inference::Host for HostState {}

fn half_type(d: DType) -> Option<half_floats::HalfType> {
    match d {
        DType::Float16 => Some(half_floats::HalfType::Float16),
        DType::Bfloat16 => Some(half_floats::HalfType::Bfloat16),
        _ => None,
    }
}

impl half_floats::Host for HostState {
    fn type_of(&mut self, t: Resource<TensorRes>) -> wasmtime::Result<Option<half_floats::HalfType>> {
        Ok(half_type(self.table.get(&t)?.value.dtype()))
    }

    fn model_types(&mut self, m: Resource<ModelRes>) -> wasmtime::Result<Vec<(String, half_floats::HalfType)>> {
        let model = &self.table.get(&m)?.model;
        let all = model.inputs().iter().chain(model.outputs());
        Ok(all.filter_map(|i| Some((i.name.clone(), half_type(i.dtype)?))).collect())
    }

    fn from_f32(&mut self, ty: half_floats::HalfType, shape: Vec<u64>, values: Vec<f32>) -> Result<Resource<TensorRes>, HostError> {
        use wasmscore_tensor::half::{bf16, f16};
        let data = match ty {
            half_floats::HalfType::Float16 => TensorData::Float16(values.into_iter().map(f16::from_f32).collect()),
            half_floats::HalfType::Bfloat16 => TensorData::Bfloat16(values.into_iter().map(bf16::from_f32).collect()),
        };
        self.made_by_guest(shape, data)
    }

    fn from_bits(&mut self, ty: half_floats::HalfType, shape: Vec<u64>, bits: Vec<u16>) -> Result<Resource<TensorRes>, HostError> {
        use wasmscore_tensor::half::{bf16, f16};
        let data = match ty {
            half_floats::HalfType::Float16 => TensorData::Float16(bits.into_iter().map(f16::from_bits).collect()),
            half_floats::HalfType::Bfloat16 => TensorData::Bfloat16(bits.into_iter().map(bf16::from_bits).collect()),
        };
        self.made_by_guest(shape, data)
    }

    fn to_f32(&mut self, t: Resource<TensorRes>) -> Result<Vec<f32>, HostError> {
        match get(&self.table, &t)?.data() {
            TensorData::Float16(v) => Ok(v.iter().map(|x| x.to_f32()).collect()),
            TensorData::Bfloat16(v) => Ok(v.iter().map(|x| x.to_f32()).collect()),
            other => Err(TensorError::bad(format!("to-f32 takes an FP16 or BF16 tensor, this one is {}", other.dtype().name())).into()),
        }
    }
}

impl byte_strings::Host for HostState {
    fn from_bytes(&mut self, shape: Vec<u64>, elements: Vec<Vec<u8>>) -> Result<Resource<TensorRes>, HostError> {
        self.made_by_guest(shape, TensorData::from_byte_strings(elements))
    }

    fn to_bytes(&mut self, t: Resource<TensorRes>) -> Result<Vec<Vec<u8>>, HostError> {
        let data = get(&self.table, &t)?.data();
        match data.byte_strings() {
            Some(elements) => Ok(elements.into_iter().map(<[u8]>::to_vec).collect()),
            None => Err(TensorError::bad(format!("to-bytes takes a string tensor, this one is {}", data.dtype().name())).into()),
        }
    }
}

fn info(i: &wasmscore_tensor::TensorInfo) -> inference::TensorInfo {
    inference::TensorInfo {
        name: i.name.clone(),
        dtype: to_wit_dtype(i.dtype),
        shape: i.shape.clone(),
    }
}

impl inference::HostModel for HostState {
    fn load(&mut self, name: String) -> Result<Resource<ModelRes>, HostError> {
        let device = self.version.model_device.clone();
        let model = self.version.session_on(&name, &device)?;
        Ok(self.table.push(ModelRes { file: name, model, device })?)
    }

    fn load_on(&mut self, name: String, device: String) -> Result<Resource<ModelRes>, HostError> {
        let version = self.version.clone();
        let (model, device) = match (version.session_on(&name, &device), &version.fallback) {
            (Err(TensorError::Unsupported(why)), Some(fallback)) => {
                version.usage.fell_back(&device, "load-on");
                version.log(
                    "warn",
                    format!("model {name} runs on the fallback device {fallback} (device_fallback): {why}"),
                );
                (version.session_on(&name, fallback)?, fallback.clone())
            }
            (Err(TensorError::Unsupported(why)), None) => {
                return Err(TensorError::failed(format!(
                    "{why}; run it on another device, or set device_fallback: \"cpu\" on the version"
                ))
                .into())
            }
            (result, _) => (result?, Arc::from(device.as_str())),
        };
        Ok(self.table.push(ModelRes { file: name, model, device })?)
    }

    fn inputs(&mut self, m: Resource<ModelRes>) -> wasmtime::Result<Vec<inference::TensorInfo>> {
        Ok(self.table.get(&m)?.model.inputs().iter().map(info).collect())
    }

    fn outputs(&mut self, m: Resource<ModelRes>) -> wasmtime::Result<Vec<inference::TensorInfo>> {
        Ok(self.table.get(&m)?.model.outputs().iter().map(info).collect())
    }

    fn run(
        &mut self,
        m: Resource<ModelRes>,
        inputs: Vec<(String, Resource<TensorRes>)>,
        outputs: Vec<String>,
    ) -> Result<Vec<(String, Resource<TensorRes>)>, HostError> {
        let (model, device) = {
            let m = self.table.get(&m)?;
            (m.model.clone(), m.device.clone())
        };
        let results = {
            let mut named = Vec::with_capacity(inputs.len());
            for (name, r) in &inputs {
                named.push((name.as_str(), &self.table.get(r)?.value));
            }
            let wanted: Vec<&str> = outputs.iter().map(String::as_str).collect();
            let started = Instant::now();
            // Inputs already on the model's device stay there; outputs may too.
            let results = model.run_values_by(&named, &wanted, self.deadline);
            self.version.usage.inference(&device, started.elapsed());
            results?
        };
        let mut out = Vec::with_capacity(results.len());
        for (name, v) in results {
            if let Value::Resident(r) = &v {
                self.version.usage.kept_on_device(r.device());
            }
            match self.push_value(v, device.clone()) {
                Ok(r) => out.push((name, r)),
                Err(e) => {
                    // Past the memory limit: the outputs handed out before
                    // never reach the guest, so they go, their bytes too.
                    for (_, r) in out {
                        self.drop_tensor(r);
                    }
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    fn drop(&mut self, m: Resource<ModelRes>) -> wasmtime::Result<()> {
        let _ = self.table.delete(m)?.file;
        Ok(())
    }
}

impl HostState {
    /// This instance's handle for `device`, opened on first use.
    fn ops_for(&mut self, device: &str) -> Result<(Arc<str>, Arc<dyn Ops>), TensorError> {
        if let Some((n, o)) = self.ops.iter().find(|(n, _)| &**n == device) {
            return Ok((n.clone(), o.clone()));
        }
        let v = &self.version;
        // A device the module names and the host has not is the module's
        // error (500), not the client's.
        let dev = v.devices.get(device).map_err(|e| TensorError::failed(e.to_string()))?;
        let handle = dev.open_ops(&format!("{}/{}", v.endpoint, v.version))?;
        let name: Arc<str> = Arc::from(device);
        self.ops.push((name.clone(), handle.clone()));
        Ok((name, handle))
    }

    /// Runs one op on the named (or the version's) device and hands the
    /// result to the guest. An op that device cannot do runs on the
    /// version's fallback device when it chose one, counted and logged
    /// (the first time per op); otherwise the guest gets the device's
    /// message.
    fn op(
        &mut self,
        op: &'static str,
        device: Option<String>,
        f: impl Fn(&dyn Ops, &ResourceTable) -> Result<Tensor, HostError>,
    ) -> Result<Resource<TensorRes>, HostError> {
        let version = self.version.clone();
        let (name, ops) = self.ops_for(device.as_deref().unwrap_or(&version.default_device))?;
        let started = Instant::now();
        let result = f(&*ops, &self.table);
        let (name, result) = match (result, &version.fallback) {
            (Err(HostError::Guest(TensorError::Unsupported(why))), Some(fallback)) if *fallback != name => {
                if version.usage.fell_back(&name, op) {
                    version.log(
                        "warn",
                        format!("{op} ran on the fallback device {fallback} (device_fallback): {why}; later ones are counted in fell_back"),
                    );
                }
                let (fb, fb_ops) = self.ops_for(fallback)?;
                let started = Instant::now();
                let result = f(&*fb_ops, &self.table);
                record(&version, &fb, &*fb_ops, started, result.is_ok());
                (fb, result)
            }
            (result, _) => {
                record(&version, &name, &*ops, started, result.is_ok());
                (name, result)
            }
        };
        self.push_tensor(result?, name)
    }
}

fn record(version: &VersionContext, device: &str, ops: &dyn Ops, started: Instant, ok: bool) {
    if ok {
        version.usage.op(device, started.elapsed(), ops.last_cost());
    } else {
        version.usage.op_error(device);
    }
}

fn get<'a>(table: &'a ResourceTable, r: &Resource<TensorRes>) -> Result<&'a Tensor, HostError> {
    Ok(table.get(r)?.host()?)
}

impl ops::Host for HostState {
    fn matmul(&mut self, a: Resource<TensorRes>, b: Resource<TensorRes>, device: Option<String>) -> Result<Resource<TensorRes>, HostError> {
        self.op("matmul", device, |ops, t| Ok(ops.matmul(get(t, &a)?, get(t, &b)?)?))
    }

    fn gemm(
        &mut self,
        a: Resource<TensorRes>,
        b: Resource<TensorRes>,
        c: Option<Resource<TensorRes>>,
        alpha: f32,
        beta: f32,
        trans_a: bool,
        trans_b: bool,
        device: Option<String>,
    ) -> Result<Resource<TensorRes>, HostError> {
        self.op("gemm", device, |ops, t| {
            let c = match &c {
                Some(c) => Some(get(t, c)?),
                None => None,
            };
            Ok(ops.gemm(get(t, &a)?, get(t, &b)?, c, alpha, beta, trans_a, trans_b)?)
        })
    }

    fn add(&mut self, a: Resource<TensorRes>, b: Resource<TensorRes>, device: Option<String>) -> Result<Resource<TensorRes>, HostError> {
        self.op("add", device, |ops, t| Ok(ops.add(get(t, &a)?, get(t, &b)?)?))
    }

    fn relu(&mut self, x: Resource<TensorRes>, device: Option<String>) -> Result<Resource<TensorRes>, HostError> {
        self.op("relu", device, |ops, t| Ok(ops.relu(get(t, &x)?)?))
    }

    fn conv2d(
        &mut self,
        x: Resource<TensorRes>,
        w: Resource<TensorRes>,
        bias: Option<Resource<TensorRes>>,
        strides: (u32, u32),
        pads: (u32, u32),
        device: Option<String>,
    ) -> Result<Resource<TensorRes>, HostError> {
        self.op("conv2d", device, |ops, t| {
            let bias = match &bias {
                Some(b) => Some(get(t, b)?),
                None => None,
            };
            Ok(ops.conv2d(get(t, &x)?, get(t, &w)?, bias, [strides.0, strides.1], [pads.0, pads.1])?)
        })
    }

    fn softmax(&mut self, x: Resource<TensorRes>, axis: i32, device: Option<String>) -> Result<Resource<TensorRes>, HostError> {
        self.op("softmax", device, |ops, t| Ok(ops.softmax(get(t, &x)?, axis)?))
    }
}

impl metrics::Host for HostState {
    fn record(&mut self, name: String, value: f64) -> wasmtime::Result<()> {
        self.version.reported.record(&name, value);
        Ok(())
    }
}

impl data_collection::Host for HostState {
    fn collect(&mut self, designation: data_collection::Designation, name: String, data: String) -> wasmtime::Result<()> {
        use data_collection::Designation as D;
        if let (Some(c), Some(id)) = (&self.version.collector, &self.collecting) {
            let d = match designation {
                D::Inputs => Designation::Inputs,
                D::Predictions => Designation::Predictions,
                D::Labels => Designation::Labels,
                D::Signals => Designation::Signals,
                D::General => Designation::General,
            };
            c.collect(d, id, &name, "text/plain", data.into_bytes());
        }
        Ok(())
    }
}

impl responses::Host for HostState {
    fn send(&mut self, response: scoring_types::Response) -> Result<(), HostError> {
        let mut tensors = Vec::with_capacity(response.tensors.len());
        for (name, r) in response.tensors {
            tensors.push((name, self.take_tensor(r)?));
        }
        if !self.version.decoupled {
            return Err(TensorError::failed(
                "this version is not decoupled: deploy it with `decoupled: true` to send more than one response",
            )
            .into());
        }
        let Some(sink) = &self.responses else {
            return Err(TensorError::failed(
                "this call takes one response: a decoupled version's responses are sent over gRPC ModelStreamInfer",
            )
            .into());
        };
        // A sampled call's responses are all collected, those it sent in
        // the order sent, then its last.
        let out = crate::ScoreResponse {
            body: response.body,
            content_type: response.content_type,
            tensors,
        };
        let collecting = match (&self.version.collector, &self.collecting) {
            (Some(c), Some(id)) if out.tensors.is_empty() || crate::replica::has_room(c, &out.tensors) => Some((c, id, out.clone())),
            _ => None,
        };
        (sink.0)(out).map_err(|why| TensorError::failed(format!("the response was not sent: {why}")))?;
        if let Some((c, id, out)) = collecting {
            let call = (out.body.as_slice(), out.content_type.as_str(), out.tensors.as_slice());
            crate::replica::collect_call(c, (Designation::Predictions, "response", id), "outputs", call);
        }
        Ok(())
    }
}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            log::Level::Debug => "debug",
            log::Level::Info => "info",
            log::Level::Warn => "warn",
            log::Level::Error => "error",
        };
        if self.logged.take(message.len().min(MAX_LOG_LINE)) {
            self.version.log_in(level, message, self.trace_id.as_deref());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmscore_tensor::TensorData;

    fn state(memory_limit: u64) -> HostState {
        let ctx = VersionContext::new("e", "v", HashMap::new(), Devices::new(), "cpu", memory_limit);
        HostState::new(Arc::new(ctx))
    }

    #[test]
    fn a_tensor_counts_its_data_its_shape_and_its_handle_and_gives_them_back() {
        let mut s = state(10_000);
        let t = Tensor::new(vec![100], TensorData::Float32(vec![0.0; 100])).unwrap();
        let r = s.push_tensor(t, Arc::from("cpu")).unwrap();
        assert_eq!(s.tensor_bytes, 400 + 8 + HANDLE_BYTES as u64);
        s.drop_tensor(r);
        assert_eq!(s.tensor_bytes, 0);
        // Tensors of no data are not free: the limit stops a guest making
        // them without end.
        let empty = || Tensor::new(vec![0; 64], TensorData::Float32(vec![])).unwrap();
        let made = (0..100).take_while(|_| s.push_tensor(empty(), Arc::from("cpu")).is_ok()).count();
        assert_eq!(made, 10_000 / (8 * 64 + HANDLE_BYTES), "{made}");
        assert!(Tensor::new(vec![1; 65], TensorData::Float32(vec![0.0])).is_err(), "65 dimensions");
    }

    /// A model whose two outputs hold 100 and 10,000 bytes.
    struct TwoOutputs;

    impl Model for TwoOutputs {
        fn inputs(&self) -> &[wasmscore_tensor::TensorInfo] {
            &[]
        }
        fn outputs(&self) -> &[wasmscore_tensor::TensorInfo] {
            &[]
        }
        fn run(&self, _: &[(&str, &Tensor)], _: &[&str]) -> Result<Vec<(String, Tensor)>, TensorError> {
            let of = |n: usize| Tensor::new(vec![n as u64], TensorData::Uint8(vec![0; n])).unwrap();
            Ok(vec![("small".into(), of(100)), ("large".into(), of(10_000))])
        }
    }

    #[test]
    fn outputs_past_the_memory_limit_give_back_those_handed_out_before() {
        let mut s = state(2_000);
        let m = s
            .table
            .push(ModelRes {
                file: "m.onnx".into(),
                model: Arc::new(TwoOutputs),
                device: Arc::from("cpu"),
            })
            .unwrap();
        let e = inference::HostModel::run(&mut s, m, Vec::new(), Vec::new()).unwrap_err();
        assert!(format!("{e:?}").contains("memory limit"), "{e:?}");
        assert_eq!(s.tensor_bytes, 0, "the first output is still held");
    }

    #[test]
    fn a_call_logs_within_its_budget_and_says_how_many_lines_it_dropped() {
        use log::Host as _;
        let mut s = state(1 << 20);
        for i in 0..LOG_LINES_PER_CALL + 5 {
            s.log(log::Level::Info, format!("line {i}\nforged")).unwrap();
        }
        s.end_log_budget();
        let lines = s.version.recent_logs();
        // The version keeps its last 1000 lines: the call's last, then the
        // count of those dropped past it.
        let last = &lines[lines.len() - 2..];
        assert_eq!(last[0].message, format!("line {}\nforged", LOG_LINES_PER_CALL - 1));
        assert!(
            last[1].message.starts_with("5 more log lines of this call dropped"),
            "{}",
            last[1].message
        );
        // The next call has a budget of its own.
        s.log(log::Level::Info, "next".into()).unwrap();
        assert_eq!(s.version.recent_logs().last().unwrap().message, "next");
        assert_eq!(escaped("a\nb\u{1b}[31m"), "a\\nb\\u{1b}[31m");
    }

    #[test]
    fn a_long_log_line_is_cut() {
        let ctx = VersionContext::new("e", "v", HashMap::new(), Devices::new(), "cpu", 1 << 20);
        ctx.log("info", format!("{}é", "x".repeat(MAX_LOG_LINE - 1)));
        ctx.log("info", "short".into());
        let lines = ctx.recent_logs();
        assert!(lines[0].message.starts_with(&"x".repeat(MAX_LOG_LINE - 1)), "kept up to the limit");
        assert!(
            lines[0].message.ends_with(" [2 more bytes cut]"),
            "{}",
            &lines[0].message[MAX_LOG_LINE - 8..]
        );
        assert_eq!(lines[1].message, "short");
    }
}
