//! Hop 3 of the request path: a version's replica pool.
//!
//! A pool owns a version's replicas. Each replica is `max_concurrent` Wasm
//! instances that ran `init()` once; each instance lives on its own OS
//! thread, so a guest call never blocks the async runtime's worker threads.
//! Requests wait in one bounded queue per version for at most
//! `max_request_wait_time`, then get 503; an instance that traps, times out
//! or runs out of memory is replaced (its `init()` rerun, backing off while
//! it fails) while the others keep serving.
//!
//! The replica count moves: `scale_to` starts instances (each runs `init()`
//! on its own thread before it takes a request) or retires idle ones by
//! sending them a retire message through the same queue, so the scoring
//! path never takes a lock. A pool scaled to zero wakes on the first
//! request, which waits for the new replica's `init()` instead of failing.
//! Deciding the count is the autoscaler's job (`wasmscore-control`'s
//! monitor); the pool only counts.

pub mod cpu;
pub mod histogram;
mod spin;

pub use spin::spun_seconds;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tokio::sync::oneshot;
use wasmscore_engine::{CallError, EngineError, Prepared, Replica, ScoreRequest, ScoreResponse};

/// A pool's settings (Azure ML's names and defaults).
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Replicas to start with (`num_replicas`, or the autoscaler's minimum,
    /// at least 1 so a deploy proves `init()` works).
    pub replicas: usize,
    /// `replica_max_concurrent_requests`: a Wasm instance runs one call at a
    /// time, so a replica gets this many instances.
    pub max_concurrent: usize,
    /// `max_request_wait_time`: longest a request waits for a free instance.
    pub max_wait: Duration,
    /// Requests that may wait at once; more are refused at once with 503.
    /// Bounded so an overload costs bounded memory.
    pub queue_capacity: usize,
    /// How long a request that arrives at a pool with no replica (scaled to
    /// zero, or all replicas failing init) waits for one to start.
    pub cold_start_wait: Duration,
    /// `cpu_cores_limit`: the group its instance threads run in.
    pub cpu: Option<Arc<cpu::CpuGroup>>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            replicas: 1,
            max_concurrent: 1,
            max_wait: Duration::from_millis(500),
            queue_capacity: 1024,
            cold_start_wait: Duration::from_secs(60),
            cpu: None,
        }
    }
}

/// Why a request got no response from a version's replicas, in this
/// process or on a node. Serializable: a node sends it to the router as it
/// is, so the client sees the same error either way.
#[derive(Debug, Clone, thiserror::Error, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoreError {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("the version is overloaded: no replica was free within {waited_ms} ms")]
    Overloaded { waited_ms: u64 },
    #[error("the version has no running replica: {0}")]
    Unavailable(String),
    /// The host failed while it ran the call (a panic: a bug of ours, not
    /// the module's). The instance is replaced.
    #[error("the server failed while running this request (a bug; the instance is replaced): {0}")]
    Internal(String),
    /// A node failed the request itself (it answered garbage, reset the
    /// connection, or went away mid-request): not the module's answer.
    #[error("the version's node {node} failed: {message}")]
    Node { node: String, message: String },
    /// A node did not answer within the request's deadline.
    #[error("the version's node {node} did not answer within {waited_ms} ms")]
    NodeTimeout { node: String, waited_ms: u64 },
}

impl ScoreError {
    /// A call that can take one response only, to a decoupled version:
    /// refused, as Triton refuses a decoupled model's unary calls. `more`
    /// follows the reason.
    pub fn unary_to_decoupled(version: &str, more: &str) -> ScoreError {
        ScoreError::Call(CallError::BadInput(format!(
            "version {version} is decoupled (it may answer one request several times): call it over gRPC ModelStreamInfer \
             (tritonclient.grpc: start_stream, async_stream_infer){more}"
        )))
    }

    /// The HTTP status and error code a client gets for it.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            ScoreError::Call(CallError::BadInput(_)) => (400, "bad_input"),
            ScoreError::Call(CallError::Failed(_)) => (500, "module_failed"),
            ScoreError::Call(CallError::Trap(_)) => (500, "module_trapped"),
            ScoreError::Call(CallError::MemoryLimit(_)) => (500, "memory_limit_exceeded"),
            ScoreError::Call(CallError::Timeout(_)) => (504, "scoring_timeout"),
            ScoreError::Overloaded { .. } => (503, "overloaded"),
            ScoreError::Unavailable(_) => (503, "unavailable"),
            ScoreError::Internal(_) => (500, "internal_error"),
            ScoreError::Node { .. } => (502, "bad_gateway"),
            ScoreError::NodeTimeout { .. } => (504, "node_timeout"),
        }
    }
}

const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const ABANDONED: u8 = 2;
/// The call outlived its deadline plus `STUCK_GRACE` (blocked in a host
/// call the epoch deadline cannot interrupt, such as a WASI sleep): the
/// client got 504, a substitute instance was started, and the stuck one
/// exits when its call returns.
const STUCK: u8 = 3;
/// As STUCK, but with no substitute started (MAX_BLOCKED were blocked
/// already): the instance serves on once its call returns.
const STUCK_KEPT: u8 = 4;
/// The call returned before the pool gave up on it.
const DONE: u8 = 5;

/// The most calls of one version left blocked in the host past their
/// deadline that get a substitute instance each. Past it no substitute is
/// started: a module that blocks every call cannot take the process's
/// instance slots and memory from the other versions one call at a time.
const MAX_BLOCKED: usize = 4;

/// How long past `scoring_timeout_ms` the pool waits before it gives up on
/// a call that the engine's deadline did not stop.
const STUCK_GRACE: Duration = Duration::from_secs(1);

struct Job {
    req: ScoreRequest,
    enqueued: Instant,
    state: Arc<AtomicU8>,
    reply: oneshot::Sender<Result<ScoreResponse, ScoreError>>,
}

/// What the version's queue carries. A job is boxed: the queue is a ring
/// of `queue_capacity` slots (1024) made and touched when the pool starts,
/// so a slot the size of a `Job` (about 130 bytes) would cost every
/// version 140 KiB of resident memory before its first request.
enum Msg {
    Score(Box<Job>),
    /// The instance that takes this stops (scale down).
    Retire,
}

/// Counters the pool keeps for `service show`, metrics and the autoscaler.
/// Counts are in instances (a replica is `max_concurrent` instances).
#[derive(Default)]
pub struct PoolStats {
    /// Instances that ran init() and take requests.
    pub instances: AtomicUsize,
    /// When `instances` last went from 0 to 1 (a cold start ended).
    serving_since: Mutex<Option<Instant>>,
    /// Instances started that have not finished init() yet.
    pub starting: AtomicUsize,
    /// Instances the pool is moving towards.
    pub target: AtomicUsize,
    /// Retire messages sent and not taken yet.
    pub retiring: AtomicUsize,
    pub busy: AtomicUsize,
    pub queued: AtomicUsize,
    pub served: AtomicU64,
    /// Calls that left their instance usable (an answer or a module error).
    pub ok: AtomicU64,
    /// Instances replaced after a trap, timeout or memory overrun.
    pub replaced: AtomicU64,
    pub overloaded: AtomicU64,
    /// Replica failures: poisoned calls and failed init() runs.
    pub failures: AtomicU64,
    /// Failures since the last call or init() that went well.
    pub consecutive_failures: AtomicU64,
    pub init_failures: AtomicU64,
    /// Instances started after the pool's first ones, and retired.
    pub started: AtomicU64,
    pub retired: AtomicU64,
    /// Times a request found no replica and woke the pool.
    pub wakes: AtomicU64,
    /// Calls given up on past their deadline (blocked in the host).
    pub stuck: AtomicU64,
    /// Of those, the ones still blocked now.
    pub blocked: AtomicUsize,
    /// Of those, the ones a substitute replaced: counted in `instances`
    /// until their call returns and they exit, but not serving (scaling
    /// does not count them).
    replaced_blocked: AtomicUsize,
    /// Time a request waited for a free instance, and its call's time.
    pub queue_wait: histogram::Histogram,
    pub run_time: histogram::Histogram,
    /// The last call's time in µs (whether a caller may spin for a reply).
    last_run_us: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// The instances' threads (Linux thread ids), each with whether it is
    /// in a call now.
    threads: Mutex<Vec<(i32, Arc<AtomicBool>)>>,
    /// Where the next look at the threads starts.
    next_look: AtomicUsize,
}

/// The most thread states one look at a pool reads.
pub const LOOKS_PER_SAMPLE: u32 = 16;

impl PoolStats {
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn set_error(&self, e: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }
    fn failed(&self, e: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed);
        self.set_error(e);
    }
    /// Forgets the run of failures (a probe found the version healthy again).
    pub fn clear_failures(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }

    /// One look at the instances running a call: how many there are, and
    /// how many of those are on a core or waiting for one (state R in
    /// /proc) rather than asleep or blocked. Over many looks, the share of
    /// its calls' time a version needs a core for, however many instances
    /// share the cores.
    ///
    /// A read of a thread's state costs about 11 µs of CPU; of many
    /// instances in a call, [`LOOKS_PER_SAMPLE`] are read, starting where
    /// the last look stopped, and the running count is scaled to all.
    pub fn sample_running(&self) -> (u32, u32) {
        let threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        let n = threads.len();
        let start = self.next_look.load(Ordering::Relaxed) % n.max(1);
        let (mut busy, mut read, mut running) = (0u32, 0u32, 0u32);
        for i in 0..n {
            let (tid, in_call) = &threads[(start + i) % n];
            if !in_call.load(Ordering::Relaxed) {
                continue;
            }
            if read == LOOKS_PER_SAMPLE {
                busy += 1;
                continue;
            }
            // A thread that has just exited has no state: not counted.
            if let Some(state) = thread_state(*tid) {
                busy += 1;
                read += 1;
                running += u32::from(state == 'R');
                self.next_look.store(start + i + 1, Ordering::Relaxed);
            }
        }
        if read < busy {
            running = (f64::from(running) * f64::from(busy) / f64::from(read)).round() as u32;
        }
        (busy, running)
    }

    fn serving(&self, tid: i32, in_call: Arc<AtomicBool>) {
        self.threads.lock().unwrap_or_else(|p| p.into_inner()).push((tid, in_call));
    }

    fn gone(&self, tid: i32) {
        self.threads.lock().unwrap_or_else(|p| p.into_inner()).retain(|(t, _)| *t != tid);
    }
}

/// A thread's state letter (field 3 of /proc/self/task/TID/stat, after its
/// name's closing parenthesis).
fn thread_state(tid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().next()?.chars().next()
}

/// What the pool's threads share.
struct Shared {
    rx: Receiver<Msg>,
    stats: Arc<PoolStats>,
    prepared: Prepared,
    label: String,
    /// Set when the pool is dropped: threads still retrying init() give up.
    closed: AtomicBool,
    /// Its share of the process's requests, for spinning (spin.rs).
    share: Arc<spin::Share>,
    /// The CPU limit its instance threads run under, if it has one.
    cpu: Option<Arc<cpu::CpuGroup>>,
    /// Serializes scale changes (never taken on the scoring path, except by
    /// the request that wakes a pool at zero, or the last instance leaving
    /// with requests queued).
    scaling: Mutex<()>,
}

/// A version's replicas and their queue.
pub struct Pool {
    tx: Sender<Msg>,
    cfg: PoolConfig,
    shared: Arc<Shared>,
}

impl Pool {
    /// Starts the first replicas and waits until each has run `init()`.
    /// Blocks: call it from a blocking context. Fails (and stops the others)
    /// if any init fails.
    pub fn start(prepared: Prepared, cfg: PoolConfig) -> Result<Pool, EngineError> {
        let (tx, rx) = crossbeam_channel::bounded::<Msg>(cfg.queue_capacity);
        let label = format!("{}/{}", prepared.context().endpoint, prepared.context().version);
        let shared = Arc::new(Shared {
            rx,
            stats: Arc::new(PoolStats::default()),
            prepared,
            label,
            closed: AtomicBool::new(false),
            share: spin::Share::register(),
            cpu: cfg.cpu.clone(),
            scaling: Mutex::new(()),
        });
        let n = cfg.replicas.max(1) * cfg.max_concurrent.max(1);
        shared.stats.target.store(n, Ordering::Relaxed);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        for _ in 0..n {
            spawn_instance(&shared, Some(ready_tx.clone())).map_err(EngineError::Instantiate)?;
        }
        drop(ready_tx);
        let mut first_error = None;
        for _ in 0..n {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => first_error = first_error.or(Some(e)),
                Err(_) => first_error = first_error.or(Some(EngineError::Instantiate("replica thread died".into()))),
            }
        }
        let pool = Pool { tx, cfg, shared };
        match first_error {
            None => Ok(pool),
            // Dropping the pool stops the instances that did start.
            Some(e) => Err(e),
        }
    }

    pub fn stats(&self) -> &Arc<PoolStats> {
        &self.shared.stats
    }

    pub fn config(&self) -> &PoolConfig {
        &self.cfg
    }

    pub fn prepared(&self) -> &Prepared {
        &self.shared.prepared
    }

    /// Replicas that serve now (instances that ran init(), rounded up).
    pub fn replicas(&self) -> usize {
        self.shared
            .stats
            .instances
            .load(Ordering::Relaxed)
            .div_ceil(self.cfg.max_concurrent.max(1))
    }

    /// Replicas the pool is moving towards.
    pub fn target_replicas(&self) -> usize {
        self.shared
            .stats
            .target
            .load(Ordering::Relaxed)
            .div_ceil(self.cfg.max_concurrent.max(1))
    }

    /// Moves the pool towards `replicas` replicas: starts instances (each
    /// serves once its init() ran) or asks idle ones to retire. Returns at
    /// once.
    pub fn scale_to(&self, replicas: usize) {
        let _g = self.shared.scaling.lock().unwrap_or_else(|p| p.into_inner());
        self.scale_locked(replicas * self.cfg.max_concurrent.max(1));
    }

    fn scale_locked(&self, want: usize) {
        let st = &self.shared.stats;
        let alive = st.instances.load(Ordering::Acquire) + st.starting.load(Ordering::Acquire);
        let gone = st.retiring.load(Ordering::Acquire) + st.replaced_blocked.load(Ordering::Acquire);
        let have = alive.saturating_sub(gone);
        st.target.store(want, Ordering::Relaxed);
        if want > have {
            for _ in have..want {
                if let Err(e) = spawn_instance(&self.shared, None) {
                    tracing::error!(pool = %self.shared.label, error = %e, "starting a replica thread failed");
                    st.set_error(e);
                    break;
                }
                st.started.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            for _ in want..have {
                st.retiring.fetch_add(1, Ordering::AcqRel);
                if self.tx.try_send(Msg::Retire).is_err() {
                    // The queue is full, so the pool is not idle: the next
                    // decision tries again.
                    st.retiring.fetch_sub(1, Ordering::AcqRel);
                    break;
                }
            }
        }
    }

    /// Starts one replica if none is running or starting (scale from zero).
    fn wake(&self) {
        let _g = self.shared.scaling.lock().unwrap_or_else(|p| p.into_inner());
        let st = &self.shared.stats;
        if st.instances.load(Ordering::Acquire) + st.starting.load(Ordering::Acquire) > 0 {
            return;
        }
        st.wakes.fetch_add(1, Ordering::Relaxed);
        tracing::info!(pool = %self.shared.label, "a request arrived at zero replicas: starting one");
        let want = st.target.load(Ordering::Relaxed).max(self.cfg.max_concurrent.max(1));
        self.scale_locked(want);
    }

    /// True while no instance serves but one is starting.
    fn waking(&self) -> bool {
        let st = &self.shared.stats;
        st.instances.load(Ordering::Acquire) == 0 && st.starting.load(Ordering::Acquire) > 0
    }

    /// Scores one request: waits for a free instance (at most `max_wait`, or
    /// for a replica to start when there is none), then for the call
    /// (bounded by the engine's deadline). While requests come one at a
    /// time it polls for the reply before it awaits it (spin.rs).
    pub async fn score(&self, req: ScoreRequest) -> Result<ScoreResponse, ScoreError> {
        let st = &self.shared.stats;
        let _in_flight = spin::InFlight::enter();
        if st.instances.load(Ordering::Acquire) == 0 && st.starting.load(Ordering::Acquire) == 0 {
            self.wake();
        }
        let state = Arc::new(AtomicU8::new(QUEUED));
        let (reply, rx) = oneshot::channel();
        let enqueued = Instant::now();
        let job = Job {
            req,
            enqueued,
            state: state.clone(),
            reply,
        };
        st.queued.fetch_add(1, Ordering::SeqCst);
        self.shared.share.arrived();
        match self.tx.try_send(Msg::Score(Box::new(job))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                st.queued.fetch_sub(1, Ordering::Relaxed);
                st.overloaded.fetch_add(1, Ordering::Relaxed);
                return Err(ScoreError::Overloaded { waited_ms: 0 });
            }
            Err(TrySendError::Disconnected(_)) => {
                st.queued.fetch_sub(1, Ordering::Relaxed);
                return Err(ScoreError::Unavailable("the version is shutting down".into()));
            }
        }
        // A caller that stops waiting (a client gone, a deadline upstream)
        // withdraws its job while it is still queued: no instance runs it.
        let _withdraw = Withdraw {
            state: &state,
            queued: &st.queued,
            shared: &self.shared,
        };
        // The last replica may have retired between the check above and the
        // send: then this request wakes the pool (or the retiring instance
        // saw it queued and did).
        if st.instances.load(Ordering::SeqCst) == 0 && st.starting.load(Ordering::Acquire) == 0 {
            self.wake();
        }
        let mut rx = rx;
        if let Some(r) = spin::reply(&mut rx, st.last_run_us.load(Ordering::Relaxed)) {
            return r.unwrap_or_else(stopped);
        }
        let mut wait = self.cfg.max_wait;
        loop {
            match tokio::time::timeout(wait, &mut rx).await {
                Ok(r) => return r.unwrap_or_else(|_| stopped()),
                Err(_) => {
                    if state.load(Ordering::Acquire) == QUEUED
                        && st.instances.load(Ordering::Acquire) == 0
                        && st.starting.load(Ordering::Acquire) == 0
                    {
                        self.wake();
                    }
                    // No replica yet but one is starting: keep waiting for it,
                    // up to cold_start_wait.
                    if self.waking() && enqueued.elapsed() < self.cfg.max_wait + self.cfg.cold_start_wait {
                        wait = Duration::from_millis(50);
                        continue;
                    }
                    // Came before the pool served again (from zero): it gets
                    // max_wait from when it did, as a request that came to a
                    // running pool, however long the cold start took.
                    let since = *st.serving_since.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(since) = since.filter(|s| *s > enqueued && state.load(Ordering::Acquire) == QUEUED) {
                        let left = (since + self.cfg.max_wait).saturating_duration_since(Instant::now());
                        if !left.is_zero() {
                            wait = left;
                            continue;
                        }
                    }
                    // Still queued? Withdraw it and answer 503.
                    if state
                        .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        st.queued.fetch_sub(1, Ordering::Relaxed);
                        st.overloaded.fetch_add(1, Ordering::Relaxed);
                        if st.instances.load(Ordering::Acquire) == 0 {
                            return Err(ScoreError::Unavailable(
                                st.last_error().unwrap_or_else(|| "no replica could be started".into()),
                            ));
                        }
                        return Err(ScoreError::Overloaded {
                            waited_ms: enqueued.elapsed().as_millis() as u64,
                        });
                    }
                    // A replica has it: the engine's deadline bounds the
                    // call; past it (plus grace) the pool gives up on it.
                    let limit = self.shared.prepared.timeout() + STUCK_GRACE;
                    return match tokio::time::timeout(limit, &mut rx).await {
                        Ok(r) => r.unwrap_or_else(|_| stopped()),
                        Err(_) if give_up(&self.shared, &state) => Err(ScoreError::Call(CallError::Timeout(
                            self.shared.prepared.timeout().as_millis() as u64,
                        ))),
                        // It returned just now: its answer is on its way.
                        Err(_) => rx.await.unwrap_or_else(|_| stopped()),
                    };
                }
            }
        }
    }

    /// Starts a fresh instance of this version and runs its init() on a
    /// thread of its own (a readiness probe); the answer comes on the
    /// returned channel. The instance is dropped after.
    pub fn probe(&self) -> std::sync::mpsc::Receiver<Result<(), String>> {
        let (tx, rx) = std::sync::mpsc::channel();
        let prepared = self.shared.prepared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("probe-{}", self.shared.label))
            .spawn(move || {
                let _ = tx.send(start(&prepared).map(drop).map_err(|e| e.to_string()));
            });
        if let Err(e) = spawned {
            tracing::error!(pool = %self.shared.label, error = %e, "starting a probe thread failed");
        }
        rx
    }
}

/// A call outlived its deadline plus the grace: the pool gives up on it
/// (its caller is answered 504) and starts a substitute instance so it
/// keeps its size while the stuck one is blocked, up to MAX_BLOCKED of
/// them. False when the call returned meanwhile (its answer is coming).
fn give_up(shared: &Arc<Shared>, state: &AtomicU8) -> bool {
    let st = &shared.stats;
    // A substitute's slot is taken before the state changes: callers
    // giving up at once cannot pass MAX_BLOCKED together.
    let substitute = st
        .blocked
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| (b < MAX_BLOCKED).then_some(b + 1))
        .is_ok();
    // Counted before the state changes, too: the instance subtracts them
    // when its call returns, which may be at once.
    if substitute {
        st.replaced_blocked.fetch_add(1, Ordering::AcqRel);
    } else {
        st.blocked.fetch_add(1, Ordering::AcqRel);
    }
    let to = if substitute { STUCK } else { STUCK_KEPT };
    if state.compare_exchange(TAKEN, to, Ordering::AcqRel, Ordering::Acquire).is_err() {
        st.blocked.fetch_sub(1, Ordering::AcqRel);
        if substitute {
            st.replaced_blocked.fetch_sub(1, Ordering::AcqRel);
        }
        return false;
    }
    st.stuck.fetch_add(1, Ordering::Relaxed);
    if substitute {
        st.failed(format!(
            "a call was still blocked {} ms after scoring_timeout_ms; its instance is abandoned",
            STUCK_GRACE.as_millis()
        ));
        tracing::warn!(pool = %shared.label, "a call outlived its deadline (blocked in the host); starting a substitute instance");
        if let Err(e) = spawn_instance(shared, None) {
            st.set_error(e);
        }
    } else {
        st.failed(format!(
            "{MAX_BLOCKED} calls are blocked in the host past scoring_timeout_ms: no substitute instance is started \
             for another; this one serves again once its call returns"
        ));
        tracing::warn!(pool = %shared.label, blocked = MAX_BLOCKED, "a call outlived its deadline (blocked in the host); no substitute: too many are blocked");
    }
    true
}

/// Withdraws a queued job when its caller's future is dropped; a no-op
/// once it was answered or withdrawn by the wait's end. A call still
/// running when its caller goes (a client gone, a router past its
/// deadline) is watched to its deadline all the same: if it is blocked in
/// the host past it, the pool gives up on it as if the caller had waited.
struct Withdraw<'a> {
    state: &'a Arc<AtomicU8>,
    queued: &'a AtomicUsize,
    shared: &'a Arc<Shared>,
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        match self.state.compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                self.queued.fetch_sub(1, Ordering::Relaxed);
            }
            Err(TAKEN) => {
                let Ok(rt) = tokio::runtime::Handle::try_current() else {
                    return;
                };
                let (state, shared) = (self.state.clone(), self.shared.clone());
                // It was taken by now at the latest: its deadline and grace
                // run out no later than this.
                let limit = Instant::now() + shared.prepared.timeout() + STUCK_GRACE;
                rt.spawn(async move {
                    tokio::time::sleep_until(limit.into()).await;
                    give_up(&shared, &state);
                });
            }
            Err(_) => {}
        }
    }
}

/// The answer when the instance holding a call went away without replying.
fn stopped() -> Result<ScoreResponse, ScoreError> {
    Err(ScoreError::Unavailable("the replica stopped".into()))
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Threads exit when the queue is drained and this (the only sender)
        // is gone, so in-flight requests finish; init retries stop.
        self.shared.closed.store(true, Ordering::Release);
    }
}

fn spawn_instance(shared: &Arc<Shared>, ready: Option<std::sync::mpsc::Sender<Result<(), EngineError>>>) -> Result<(), String> {
    shared.stats.starting.fetch_add(1, Ordering::AcqRel);
    let s = shared.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("replica-{}", shared.label))
        .spawn(move || instance_thread(s, ready));
    match spawned {
        Ok(_) => Ok(()), // detached: it exits with the queue
        Err(e) => {
            shared.stats.starting.fetch_sub(1, Ordering::AcqRel);
            Err(e.to_string())
        }
    }
}

fn instance_thread(shared: Arc<Shared>, ready: Option<std::sync::mpsc::Sender<Result<(), EngineError>>>) {
    let stats = &shared.stats;
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // init() and the calls run under the version's CPU limit.
    let _limited = shared.cpu.as_deref().map(|group| Limited::join(group, tid, &shared));
    let first = match ready {
        // One of the pool's first instances: a failed init fails the deploy.
        Some(ready) => match start(&shared.prepared) {
            Ok(r) => {
                let _ = ready.send(Ok(()));
                Some(r)
            }
            Err(e) => {
                stats.failed(e.to_string());
                stats.init_failures.fetch_add(1, Ordering::Relaxed);
                stats.starting.fetch_sub(1, Ordering::AcqRel);
                let _ = ready.send(Err(e));
                return;
            }
        },
        // Scaling up or waking: retry init with backoff, as a replacement would.
        None => start_with_backoff(&shared),
    };
    let Some(mut replica) = first else {
        stats.starting.fetch_sub(1, Ordering::AcqRel);
        return;
    };
    {
        // Written before the count shows it serving: a waiting request that
        // sees the count sees when it began.
        let mut since = stats.serving_since.lock().unwrap_or_else(|p| p.into_inner());
        if stats.instances.fetch_add(1, Ordering::AcqRel) == 0 {
            *since = Some(Instant::now());
        }
    }
    stats.starting.fetch_sub(1, Ordering::AcqRel);
    let in_call = Arc::new(AtomicBool::new(false));
    stats.serving(tid, in_call.clone());
    // A limited instance does not spin for its next call: the spin would
    // spend the quota its calls need.
    let next = |rx: &Receiver<Msg>| match shared.cpu {
        Some(_) => rx.recv().map_err(|_| crossbeam_channel::RecvError),
        None => spin::next(rx, &shared.share),
    };
    while let Ok(msg) = next(&shared.rx) {
        let job = match msg {
            Msg::Score(job) => *job,
            Msg::Retire => {
                stats.retiring.fetch_sub(1, Ordering::AcqRel);
                // The last instance stays while requests wait behind the
                // retire message (they came after the decision to scale to
                // zero); the next decision sees them.
                if stats.instances.load(Ordering::Acquire) == 1 && !shared.rx.is_empty() {
                    stats.target.fetch_max(1, Ordering::Relaxed);
                    continue;
                }
                stats.retired.fetch_add(1, Ordering::Relaxed);
                break;
            }
        };
        if job
            .state
            .compare_exchange(QUEUED, TAKEN, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            continue; // the client already got its 503
        }
        stats.queued.fetch_sub(1, Ordering::Relaxed);
        stats.busy.fetch_add(1, Ordering::Relaxed);
        let taken = Instant::now();
        stats.queue_wait.observe(taken - job.enqueued);
        in_call.store(true, Ordering::Relaxed);
        // A panic in the host's code for this call (a bug) answers it 500
        // and replaces the instance; the thread and the pool's counts go
        // on as after any failed call.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| replica.run(job.req)));
        let (result, panicked) = match outcome {
            Ok(r) => (r.map_err(ScoreError::Call), false),
            Err(p) => {
                let why = panic_text(p.as_ref());
                tracing::error!(pool = %shared.label, panic = %why, "the host panicked in a call; the instance is replaced");
                (Err(ScoreError::Internal(why)), true)
            }
        };
        in_call.store(false, Ordering::Relaxed);
        let ran = taken.elapsed();
        stats.run_time.observe(ran);
        stats.last_run_us.store(ran.as_micros() as u64, Ordering::Relaxed);
        stats.busy.fetch_sub(1, Ordering::Relaxed);
        stats.served.fetch_add(1, Ordering::Relaxed);
        let poisoned = panicked || replica.is_poisoned();
        match &result {
            Err(e) if poisoned => stats.failed(e.to_string()),
            _ => {
                stats.ok.fetch_add(1, Ordering::Relaxed);
                if stats.consecutive_failures.load(Ordering::Relaxed) != 0 {
                    stats.consecutive_failures.store(0, Ordering::Relaxed);
                }
            }
        }
        // Settled here, once: either the call returned in time (DONE, and
        // the pool can no longer give up on it) or the pool gave up first.
        let given_up = job.state.compare_exchange(TAKEN, DONE, Ordering::AcqRel, Ordering::Acquire).err();
        let _ = job.reply.send(result);
        match given_up {
            Some(STUCK) => {
                // The caller gave up and started a substitute: this one goes.
                stats.blocked.fetch_sub(1, Ordering::Relaxed);
                stats.replaced_blocked.fetch_sub(1, Ordering::AcqRel);
                tracing::info!(pool = %shared.label, "an abandoned call returned; its instance stops");
                break;
            }
            Some(STUCK_KEPT) => {
                stats.blocked.fetch_sub(1, Ordering::Relaxed);
                tracing::info!(pool = %shared.label, "an abandoned call returned; its instance serves again");
            }
            _ => {}
        }
        if poisoned {
            match start_with_backoff(&shared) {
                Some(r) => {
                    stats.replaced.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(pool = %shared.label, "replica replaced");
                    replica = r;
                }
                None => break,
            }
        }
    }
    stats.gone(tid);
    // SeqCst here and on the caller's side (its count, then its look at the
    // instances): one of the two sees the other.
    let last = stats.instances.fetch_sub(1, Ordering::SeqCst) == 1;
    // A request sent as the last instance retired (after its caller saw it
    // serving) would wait max_wait before waking the pool: it wakes now.
    if last && stats.queued.load(Ordering::SeqCst) > 0 {
        // Under the scaling lock, as a caller's own wake: one of the two
        // starts it.
        let _g = shared.scaling.lock().unwrap_or_else(|p| p.into_inner());
        let none = stats.instances.load(Ordering::Acquire) + stats.starting.load(Ordering::Acquire) == 0;
        if none && !shared.closed.load(Ordering::Acquire) {
            stats.wakes.fetch_add(1, Ordering::Relaxed);
            stats.target.fetch_max(1, Ordering::Relaxed);
            tracing::info!(pool = %shared.label, "a request came as the last replica retired: starting one");
            match spawn_instance(&shared, None) {
                Ok(()) => drop(stats.started.fetch_add(1, Ordering::Relaxed)),
                Err(e) => stats.set_error(e),
            }
        }
    }
}

/// An instance thread in its version's CPU group, until it ends.
struct Limited<'a> {
    group: &'a cpu::CpuGroup,
    tid: i32,
    shared: &'a Shared,
    joined: bool,
}

impl<'a> Limited<'a> {
    /// A thread that cannot join runs unlimited: the pool says so in its
    /// last error and the log (the group was made, so this is rare).
    fn join(group: &'a cpu::CpuGroup, tid: i32, shared: &'a Shared) -> Limited<'a> {
        let joined = group.join(tid);
        if let Err(e) = &joined {
            tracing::error!(pool = %shared.label, error = %e, "an instance could not join its CPU limit's cgroup; it runs unlimited");
            shared.stats.set_error(format!("cpu_cores_limit: an instance runs unlimited: {e}"));
        }
        Limited {
            group,
            tid,
            shared,
            joined: joined.is_ok(),
        }
    }
}

impl Drop for Limited<'_> {
    fn drop(&mut self) {
        if !self.joined {
            return;
        }
        if let Err(e) = self.group.leave(self.tid) {
            tracing::warn!(pool = %self.shared.label, error = %e, "an instance could not leave its CPU limit's cgroup");
        }
    }
}

/// Makes a fresh instance and runs its `init()`. A panic in the host's
/// code meanwhile (a bug) is a failed start, not a thread gone with the
/// pool's counts.
fn start(prepared: &Prepared) -> Result<Replica, EngineError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| prepared.start())).unwrap_or_else(|p| {
        Err(EngineError::Instantiate(format!(
            "the server failed (a bug): {}",
            panic_text(p.as_ref())
        )))
    })
}

/// What a panic said.
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// Makes a fresh instance and runs `init()`, backing off (10 ms doubling to
/// 5 s) while it fails. None once the pool is gone.
fn start_with_backoff(shared: &Shared) -> Option<Replica> {
    let mut backoff = Duration::from_millis(10);
    loop {
        if shared.closed.load(Ordering::Acquire) {
            return None;
        }
        match start(&shared.prepared) {
            Ok(r) => return Some(r),
            Err(e) => {
                tracing::error!(pool = %shared.label, error = %e, ?backoff, "starting a replica failed; retrying");
                shared.stats.failed(e.to_string());
                shared.stats.init_failures.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queue slot stays a pointer and a tag: the ring of 1024 is made
    /// and touched per version at start (see `Msg`).
    #[test]
    fn a_thread_in_a_call_is_seen_running_or_asleep() {
        let stats = PoolStats::default();
        let in_call = Arc::new(AtomicBool::new(false));
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        stats.serving(tid, in_call.clone());
        assert_eq!(stats.sample_running(), (0, 0), "not in a call: not counted");
        in_call.store(true, Ordering::Relaxed);
        // This thread reads its own state: running.
        assert_eq!(stats.sample_running(), (1, 1));
        let (tx, rx) = std::sync::mpsc::channel();
        let sleeper = std::thread::spawn(move || {
            // SAFETY: as above.
            tx.send(unsafe { libc::gettid() }).unwrap();
            std::thread::sleep(Duration::from_secs(2));
        });
        stats.serving(rx.recv().unwrap(), Arc::new(AtomicBool::new(true)));
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(stats.sample_running(), (2, 1), "the sleeping thread is in a call but not running");
        stats.gone(tid);
        sleeper.join().unwrap();
        assert_eq!(
            stats.sample_running(),
            (0, 0),
            "threads gone, or out of their calls, are not counted"
        );
    }

    #[test]
    fn many_threads_in_calls_are_sampled_and_counted_in_full() {
        let stats = PoolStats::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let stop_rx = Arc::new(Mutex::new(stop_rx));
        let sleepers: Vec<_> = (0..40)
            .map(|_| {
                let (tx, stop) = (tx.clone(), stop_rx.clone());
                std::thread::spawn(move || {
                    // SAFETY: gettid has no preconditions.
                    tx.send(unsafe { libc::gettid() }).unwrap();
                    let _ = stop.lock().unwrap().recv_timeout(Duration::from_secs(10));
                })
            })
            .collect();
        for _ in 0..40 {
            stats.serving(rx.recv().unwrap(), Arc::new(AtomicBool::new(true)));
        }
        std::thread::sleep(Duration::from_millis(100));
        // 40 in a call, 16 read a look (none running), each look starting
        // where the last one stopped.
        for _ in 0..3 {
            assert_eq!(stats.sample_running(), (40, 0));
        }
        assert_eq!(stats.next_look.load(Ordering::Relaxed) % 40, (3 * 16) % 40);
        drop(stop_tx);
        for s in sleepers {
            s.join().unwrap();
        }
    }

    #[test]
    fn a_queue_slot_is_a_pointer_wide() {
        assert!(std::mem::size_of::<Msg>() <= 16, "Msg is {} bytes", std::mem::size_of::<Msg>());
        assert!(std::mem::size_of::<Job>() > 64, "the box is worth it only for a large job");
    }
}
