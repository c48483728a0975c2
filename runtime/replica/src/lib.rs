//! Hop 3 of the request path: a version's replica pool.
//!
//! A pool owns a version's replicas. Each replica is a Wasm instance that ran
//! `init()` once; it lives on its own OS thread, so a guest call never blocks
//! the async runtime's worker threads. Requests wait in one bounded queue per
//! version for at most `max_request_wait_time`, then get 503; a replica that
//! traps, times out or runs out of memory is replaced (its `init()` rerun)
//! while the others keep serving. Scaling the replica count on utilization is
//! `wasmscore-autoscale`'s job, not this crate's; the pool only counts.

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tokio::sync::oneshot;
use wasmscore_engine::{CallError, EngineError, Prepared, Replica, ScoreRequest, ScoreResponse};

/// A pool's settings (Azure ML's names and defaults).
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Replicas to run (`num_replicas`, or the autoscaler's count).
    pub replicas: usize,
    /// `replica_max_concurrent_requests`: a Wasm instance runs one call at a
    /// time, so a replica gets this many instances.
    pub max_concurrent: usize,
    /// `max_request_wait_time`: longest a request waits for a free instance.
    pub max_wait: Duration,
    /// Requests that may wait at once; more are refused at once with 503.
    /// Bounded so an overload costs bounded memory.
    pub queue_capacity: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            replicas: 1,
            max_concurrent: 1,
            max_wait: Duration::from_millis(500),
            queue_capacity: 1024,
        }
    }
}

/// Why a request got no response from the pool.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ScoreError {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("the version is overloaded: no replica was free within {waited_ms} ms")]
    Overloaded { waited_ms: u64 },
    #[error("the version has no running replica: {0}")]
    Unavailable(String),
}

const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const ABANDONED: u8 = 2;

struct Job {
    req: ScoreRequest,
    state: Arc<AtomicU8>,
    reply: oneshot::Sender<Result<ScoreResponse, ScoreError>>,
}

/// Counters the pool keeps for `service show`, metrics and the autoscaler.
#[derive(Default)]
pub struct PoolStats {
    pub instances: AtomicUsize,
    pub busy: AtomicUsize,
    pub queued: AtomicUsize,
    pub served: AtomicU64,
    pub replaced: AtomicU64,
    pub overloaded: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl PoolStats {
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn set_error(&self, e: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }
}

/// A version's replicas and their queue.
pub struct Pool {
    tx: Sender<Job>,
    cfg: PoolConfig,
    stats: Arc<PoolStats>,
    prepared: Prepared,
}

impl Pool {
    /// Starts the replicas and waits until each has run `init()`. Blocks: call
    /// it from a blocking context. Fails (and stops the others) if any init fails.
    pub fn start(prepared: Prepared, cfg: PoolConfig) -> Result<Pool, EngineError> {
        let (tx, rx) = crossbeam_channel::bounded::<Job>(cfg.queue_capacity);
        let stats = Arc::new(PoolStats::default());
        let n = cfg.replicas.max(1) * cfg.max_concurrent.max(1);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut threads = Vec::with_capacity(n);
        let label = format!("{}/{}", prepared.context().endpoint, prepared.context().version);
        for i in 0..n {
            let (prepared, rx, stats, ready_tx) = (prepared.clone(), rx.clone(), stats.clone(), ready_tx.clone());
            let handle = std::thread::Builder::new()
                .name(format!("replica-{label}-{i}"))
                .spawn(move || replica_thread(prepared, rx, stats, ready_tx))
                .map_err(|e| EngineError::Instantiate(e.to_string()))?;
            threads.push(handle);
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
        // Threads are detached: they exit when the pool (the only sender) is
        // dropped and the queue is drained, so in-flight requests finish.
        drop(threads);
        match first_error {
            None => Ok(Pool { tx, cfg, stats, prepared }),
            // Dropping `tx` here stops the replicas that did start.
            Some(e) => Err(e),
        }
    }

    pub fn stats(&self) -> &Arc<PoolStats> {
        &self.stats
    }

    pub fn config(&self) -> &PoolConfig {
        &self.cfg
    }

    pub fn prepared(&self) -> &Prepared {
        &self.prepared
    }

    /// Scores one request: waits for a free instance (at most `max_wait`),
    /// then for the call (bounded by the engine's deadline).
    pub async fn score(&self, req: ScoreRequest) -> Result<ScoreResponse, ScoreError> {
        let state = Arc::new(AtomicU8::new(QUEUED));
        let (reply, rx) = oneshot::channel();
        let job = Job {
            req,
            state: state.clone(),
            reply,
        };
        let enqueued = Instant::now();
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.stats.queued.fetch_sub(1, Ordering::Relaxed);
                self.stats.overloaded.fetch_add(1, Ordering::Relaxed);
                return Err(ScoreError::Overloaded { waited_ms: 0 });
            }
            Err(TrySendError::Disconnected(_)) => {
                self.stats.queued.fetch_sub(1, Ordering::Relaxed);
                return Err(ScoreError::Unavailable("the version is shutting down".into()));
            }
        }
        let mut rx = rx;
        match tokio::time::timeout(self.cfg.max_wait, &mut rx).await {
            Ok(r) => r.unwrap_or_else(|_| Err(ScoreError::Unavailable("the replica stopped".into()))),
            Err(_) => {
                // Still queued after max_wait? Withdraw it and answer 503.
                if state
                    .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    self.stats.queued.fetch_sub(1, Ordering::Relaxed);
                    self.stats.overloaded.fetch_add(1, Ordering::Relaxed);
                    return Err(ScoreError::Overloaded {
                        waited_ms: enqueued.elapsed().as_millis() as u64,
                    });
                }
                // A replica has it: the engine's deadline bounds the wait.
                rx.await
                    .unwrap_or_else(|_| Err(ScoreError::Unavailable("the replica stopped".into())))
            }
        }
    }
}

fn replica_thread(prepared: Prepared, rx: Receiver<Job>, stats: Arc<PoolStats>, ready: std::sync::mpsc::Sender<Result<(), EngineError>>) {
    let mut replica: Replica = match prepared.start() {
        Ok(r) => {
            let _ = ready.send(Ok(()));
            r
        }
        Err(e) => {
            stats.set_error(e.to_string());
            let _ = ready.send(Err(e));
            return;
        }
    };
    drop(ready);
    stats.instances.fetch_add(1, Ordering::Relaxed);
    while let Ok(job) = rx.recv() {
        if job
            .state
            .compare_exchange(QUEUED, TAKEN, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            continue; // the client already got its 503
        }
        stats.queued.fetch_sub(1, Ordering::Relaxed);
        stats.busy.fetch_add(1, Ordering::Relaxed);
        let result = replica.run(job.req).map_err(ScoreError::Call);
        stats.busy.fetch_sub(1, Ordering::Relaxed);
        stats.served.fetch_add(1, Ordering::Relaxed);
        let poisoned = replica.is_poisoned();
        if let Err(e) = &result {
            if poisoned {
                stats.set_error(e.to_string());
            }
        }
        let _ = job.reply.send(result);
        if poisoned {
            replica = replace(&prepared, &stats);
        }
    }
    stats.instances.fetch_sub(1, Ordering::Relaxed);
}

/// Makes a fresh instance and reruns `init()`, backing off while it fails.
fn replace(prepared: &Prepared, stats: &PoolStats) -> Replica {
    let mut backoff = Duration::from_millis(10);
    loop {
        match prepared.start() {
            Ok(r) => {
                stats.replaced.fetch_add(1, Ordering::Relaxed);
                tracing::info!(endpoint = %prepared.context().endpoint, version = %prepared.context().version, "replica replaced");
                return r;
            }
            Err(e) => {
                tracing::error!(error = %e, ?backoff, "replacing a replica failed; retrying");
                stats.set_error(e.to_string());
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
