//! A replica: one instance that ran `init()` once and then serves `run()`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmscore_tensor::Tensor;
use wasmtime::{Store, Trap};

use crate::bindings::{scoring_types, types, Scorer, ScorerPre};
use crate::engine::EPOCH_TICK;
use crate::host::{HostState, VersionContext};
use crate::EngineError;
use wasmscore_collect::Designation;

/// Collects what model data collection keeps of a request or a response:
/// its tensors, data included, as OIP's JSON writes them under `key`
/// ("inputs" or "outputs") beside its body's other fields, when it has
/// any; else its body as it is. Tensors the collector's queue has no room
/// for now are counted as dropped, not written out first ([`has_room`]).
pub(crate) fn collect_call(
    c: &wasmscore_collect::VersionCollector,
    (designation, name, id): (Designation, &str, &str),
    key: &str,
    (body, content_type, tensors): (&[u8], &str, &[(String, Tensor)]),
) {
    if tensors.is_empty() {
        // A body the queue has no room for is not copied first.
        if c.has_room(body.len()) {
            c.collect(designation, id, name, content_type, body.to_vec());
        }
    } else if has_room(c, tensors) {
        let data = wasmscore_oip::to_json_with_data(key, body, tensors);
        c.collect(designation, id, name, "application/json", data);
    }
}

/// Whether the collector's queue has room now for these tensors written
/// out as JSON, counted as dropped when it has not. The size is what the
/// JSON takes at most, so that what would not fit is never built (a
/// 100 MB binary request of float32 is about 275 MB of JSON): a number its
/// longest text and a comma (float32 18 bytes: "-0.0000012345678," as
/// the printer writes small exponents in full), a
/// string its bytes and its quotes and comma (escapes aside), a byte
/// string (an array of numbers) four bytes a byte.
pub(crate) fn has_room(c: &wasmscore_collect::VersionCollector, tensors: &[(String, Tensor)]) -> bool {
    use wasmscore_tensor::TensorData;
    let json = |t: &Tensor| -> usize {
        let each = match t.data() {
            TensorData::String(v) => return v.iter().map(|s| s.len() + 3).sum(),
            TensorData::Bytes(v) => return v.iter().map(|b| 4 * b.len() + 3).sum(),
            TensorData::Bool(_) => 6,
            TensorData::Uint8(_) => 4,
            TensorData::Int8(_) => 5,
            TensorData::Uint16(_) => 6,
            TensorData::Int16(_) => 7,
            TensorData::Uint32(_) => 11,
            TensorData::Int32(_) => 12,
            TensorData::Uint64(_) | TensorData::Int64(_) => 21,
            // Half precision is written as float32 prints it.
            TensorData::Float32(_) | TensorData::Float16(_) | TensorData::Bfloat16(_) => 18,
            TensorData::Float64(_) => 26,
        };
        each * t.len()
    };
    c.has_room(tensors.iter().map(|(_, t)| json(t)).sum())
}

/// A correlation id for a request that came with no trace (a probe, a
/// caller of the library): 32 hex digits, as a W3C trace id.
fn random_correlation_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!(
        "{t:016x}{:08x}{:08x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed) as u32
    )
}

/// A request as the host hands it to `run`.
#[derive(Debug, Clone, Default)]
pub struct ScoreRequest {
    pub body: Vec<u8>,
    pub content_type: String,
    pub tensors: Vec<(String, Tensor)>,
    /// The request's W3C trace id (32 hex digits): the module's log lines
    /// during the call carry it.
    pub trace_id: Option<String>,
    /// Where a decoupled version's responses go before `run` returns
    /// (gRPC ModelStreamInfer); none: the call takes one response.
    pub responses: Option<Responses>,
}

/// Takes the responses a call sends before it returns (`responses.send`),
/// on the instance's thread: Err says why one was not taken (the client
/// has not read the ones before).
#[derive(Clone)]
pub struct Responses(pub Arc<dyn Fn(ScoreResponse) -> Result<(), String> + Send + Sync>);

impl std::fmt::Debug for Responses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Responses")
    }
}

/// What `run` gave back.
#[derive(Debug, Clone, Default)]
pub struct ScoreResponse {
    pub body: Vec<u8>,
    pub content_type: String,
    pub tensors: Vec<(String, Tensor)>,
}

/// Why a call did not produce a response. The variants name the phase and
/// map to a status code (see `status`).
#[derive(Debug, Clone, thiserror::Error, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum CallError {
    #[error("{0}")]
    BadInput(String),
    #[error("the module failed: {0}")]
    Failed(String),
    #[error("the module trapped: {0}")]
    Trap(String),
    #[error("scoring took longer than scoring_timeout_ms ({0} ms) and was stopped")]
    Timeout(u64),
    #[error("the module exceeded its memory limit: {0}")]
    MemoryLimit(String),
}

impl CallError {
    /// True when the instance can no longer be trusted and must be replaced.
    pub fn poisons_replica(&self) -> bool {
        matches!(self, CallError::Trap(_) | CallError::Timeout(_) | CallError::MemoryLimit(_))
    }
}

/// A version ready to make replicas: the pre-instantiated component and the
/// version's shared context.
#[derive(Clone)]
pub struct Prepared {
    pre: ScorerPre<HostState>,
    ctx: Arc<VersionContext>,
    timeout: Duration,
    init_timeout: Duration,
}

fn ticks(d: Duration) -> u64 {
    (d.as_micros() / EPOCH_TICK.as_micros()) as u64 + 1
}

impl Prepared {
    pub fn new(pre: ScorerPre<HostState>, ctx: Arc<VersionContext>, timeout: Duration, init_timeout: Duration) -> Self {
        Prepared {
            pre,
            ctx,
            timeout,
            init_timeout,
        }
    }

    pub fn context(&self) -> &Arc<VersionContext> {
        &self.ctx
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Makes an instance without calling `init` (for measuring instantiation).
    pub fn instantiate(&self) -> Result<Replica, EngineError> {
        let mut store = Store::new(self.pre.engine(), HostState::new(self.ctx.clone()));
        store.limiter(|s| s as &mut dyn wasmtime::ResourceLimiter);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(ticks(self.init_timeout));
        let scorer = self.pre.instantiate(&mut store).map_err(|e| {
            if store.data().hit_memory_limit {
                EngineError::Instantiate(format!(
                    "the instance does not fit its memory limit of {} bytes: {e:#}",
                    self.ctx.memory_limit
                ))
            } else {
                EngineError::Instantiate(format!("{e:#}"))
            }
        })?;
        Ok(Replica {
            store,
            scorer,
            run_ticks: ticks(self.timeout),
            timeout: self.timeout,
            init_ticks: ticks(self.init_timeout),
            poisoned: false,
        })
    }

    /// Makes an instance and runs its `init()`.
    pub fn start(&self) -> Result<Replica, EngineError> {
        let mut r = self.instantiate()?;
        r.init()?;
        Ok(r)
    }
}

/// One instance of a version's module.
pub struct Replica {
    store: Store<HostState>,
    scorer: Scorer,
    run_ticks: u64,
    init_ticks: u64,
    timeout: Duration,
    poisoned: bool,
}

impl Replica {
    pub fn init(&mut self) -> Result<(), EngineError> {
        self.store.set_epoch_deadline(self.init_ticks);
        self.store.data_mut().hit_memory_limit = false;
        let done = self.scorer.call_init(&mut self.store);
        self.store.data_mut().end_log_budget();
        match done {
            Ok(Ok(())) => Ok(()),
            Ok(Err(types::Error::BadInput(m) | types::Error::Failed(m))) => Err(EngineError::Init(m)),
            Err(e) => Err(EngineError::Init(self.classify(e).to_string())),
        }
    }

    /// True once a call trapped: the caller must drop this replica.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    pub fn run(&mut self, req: ScoreRequest) -> Result<ScoreResponse, CallError> {
        if self.poisoned {
            return Err(CallError::Trap("replica was poisoned by an earlier trap".into()));
        }
        self.store.data_mut().hit_memory_limit = false;
        // A sampled request's body (or its tensors) is copied for the
        // collector (the only copy collection makes); others cost one hash.
        let collector = self.store.data().version.collector.clone();
        let collecting = collector.as_ref().and_then(|c| {
            let id = req.trace_id.clone().unwrap_or_else(random_correlation_id);
            c.sampled(&id).then(|| {
                let call = (req.body.as_slice(), req.content_type.as_str(), req.tensors.as_slice());
                collect_call(c, (Designation::Inputs, "request", &id), "inputs", call);
                id
            })
        });
        let mut tensors = Vec::with_capacity(req.tensors.len());
        for (name, t) in req.tensors {
            let dev = self.store.data().version.default_device.clone();
            match self.store.data_mut().push_tensor(t, dev) {
                Ok(r) => tensors.push((name, r)),
                Err(e) => {
                    // The ones pushed before never reach the guest: dropped
                    // here, or they would hold the instance's memory for good.
                    for (_, r) in tensors {
                        self.store.data_mut().drop_tensor(r);
                    }
                    return Err(match e {
                        crate::bindings::HostError::Guest(g) => CallError::BadInput(g.to_string()),
                        crate::bindings::HostError::Trap(t) => CallError::Failed(format!("{t:#}")),
                    });
                }
            }
        }
        let wreq = scoring_types::Request {
            body: req.body,
            content_type: req.content_type,
            tensors,
        };
        self.store.set_epoch_deadline(self.run_ticks);
        let started = Instant::now();
        self.store.data_mut().trace_id = req.trace_id;
        self.store.data_mut().deadline = Some(started + self.timeout);
        self.store.data_mut().collecting = collecting.clone();
        self.store.data_mut().responses = req.responses;
        let result = self.scorer.call_run(&mut self.store, &wreq);
        self.store.data_mut().end_log_budget();
        self.store.data_mut().trace_id = None;
        self.store.data_mut().deadline = None;
        self.store.data_mut().collecting = None;
        self.store.data_mut().responses = None;
        let result = self.outputs(result, started);
        if let (Some(c), Some(id), Ok(resp)) = (&collector, &collecting, &result) {
            let call = (resp.body.as_slice(), resp.content_type.as_str(), resp.tensors.as_slice());
            collect_call(c, (Designation::Predictions, "response", id), "outputs", call);
        }
        result
    }

    /// The call's answer, its tensors taken from the store, or its error.
    fn outputs(
        &mut self,
        result: wasmtime::Result<Result<scoring_types::Response, types::Error>>,
        started: Instant,
    ) -> Result<ScoreResponse, CallError> {
        match result {
            Ok(Ok(resp)) => {
                let mut out = Vec::with_capacity(resp.tensors.len());
                for (name, r) in resp.tensors {
                    let t = self
                        .store
                        .data_mut()
                        .take_tensor(r)
                        .map_err(|_| CallError::Failed(format!("output tensor {name} is not a live tensor")))?;
                    out.push((name, t));
                }
                Ok(ScoreResponse {
                    body: resp.body,
                    content_type: resp.content_type,
                    tensors: out,
                })
            }
            Ok(Err(types::Error::BadInput(m))) => Err(CallError::BadInput(m)),
            // Past its deadline (a host call, such as a batched model's,
            // gave up on it and the module passed that on before the next
            // epoch tick stopped it): a timeout, as the tick would have said.
            Ok(Err(types::Error::Failed(_))) if started.elapsed() >= self.timeout => {
                Err(CallError::Timeout(self.timeout.as_millis() as u64))
            }
            Ok(Err(types::Error::Failed(m))) => Err(CallError::Failed(m)),
            Err(e) => {
                self.poisoned = true;
                let err = self.classify(e);
                tracing::warn!(elapsed_ms = started.elapsed().as_millis() as u64, error = %err, "replica poisoned");
                Err(err)
            }
        }
    }

    fn classify(&self, e: wasmtime::Error) -> CallError {
        if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            CallError::Timeout(self.timeout.as_millis() as u64)
        } else if self.store.data().hit_memory_limit {
            CallError::MemoryLimit(format!("{e:#}"))
        } else {
            CallError::Trap(format!("{e:#}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmscore_collect::{Collector, Settings};
    use wasmscore_tensor::TensorData;

    #[test]
    fn room_is_asked_for_what_the_json_takes_at_most() {
        let dir = tempfile::tempdir().unwrap();
        let c = Collector::start(
            dir.path().into(),
            Settings {
                max_queued_bytes: 1_000,
                ..Settings::default()
            },
        )
        .unwrap();
        let v = c.for_version("e", "v", 1.0);
        let one = |data: TensorData| vec![("x".to_string(), Tensor::new(vec![1], data).unwrap())];
        // One element, but 600 bytes: as a string 603 bytes of JSON, as a
        // byte string (numbers) up to 2,403.
        assert!(has_room(&v, &one(TensorData::String(vec!["s".repeat(600)]))));
        assert!(!has_room(&v, &one(TensorData::Bytes(vec![vec![0xff; 600]]))));
        assert!(!has_room(&v, &one(TensorData::String(vec!["s".repeat(1_000)]))));
        assert!(has_room(&v, &one(TensorData::Float32(vec![1.0]))));
        // 100 float32 may print as 1,800 bytes: not built for a 1,000-byte
        // queue (at least 200 bytes, as before, would have let it through).
        let floats = vec![(
            "x".to_string(),
            Tensor::new(vec![100], TensorData::Float32(vec![-1.1754944e-38; 100])).unwrap(),
        )];
        assert!(!has_room(&v, &floats));
        assert!(wasmscore_oip::to_json_with_data("inputs", b"{}", &floats).len() > 1_000);
        assert_eq!(v.stats.dropped.load(std::sync::atomic::Ordering::Relaxed), 3);
        c.shutdown();
    }
}
