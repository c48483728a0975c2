//! The monitor: one thread, off the request path, that every 50 ms samples
//! each serving version's pool and
//! - feeds its autoscaler (autoscale.rs) and applies its decisions, within
//!   the machine's capacity (reported when that is what stops it);
//! - keeps its readiness: `failure_threshold` replica failures in a row
//!   (traps, timeouts, memory overruns, failed init()) or failed probes make
//!   it Unhealthy, and its traffic share goes to the default version; probes
//!   every `period_seconds` (after `initial_delay_seconds`) start a fresh
//!   instance and run its init() within `timeout_seconds`, and
//!   `success_threshold` passes in a row make it ready again.
//!
//! Every change is an event in the version's log, a tracing line and a
//! counter in `service show` and /metrics.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::autoscale::{cores_left, cpu_bound_limit, Scaler, CPU_BOUND};
use crate::config::Resolved;
use crate::deploy::{lock, Control};

/// How often pools are sampled.
const TICK: Duration = Duration::from_millis(50);

/// The machine's capacity that replicas are counted against (like a
/// cluster's allocatable CPU and memory against pods' requests).
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    pub cpu_cores: f64,
    pub memory_gb: f64,
}

impl Capacity {
    /// This machine: its cores and its memory.
    pub fn of_machine() -> Capacity {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
        let memory_gb = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
            .map(|kb| kb / (1024.0 * 1024.0))
            .unwrap_or(4.0);
        Capacity {
            cpu_cores: cores,
            memory_gb,
        }
    }
}

/// One serving version's autoscaler and health, made with its build.
pub(crate) struct VersionMonitor {
    pub settings: Resolved,
    pub scaler: Option<Scaler>,
    pub ready: bool,
    /// Why it is not ready, or why it last was not.
    pub reason: Option<String>,
    pub unhealthy_since: Option<Instant>,
    next_probe: Instant,
    probe: Option<(Instant, Receiver<Result<(), String>>)>,
    probes_passed_in_a_row: u32,
    probes_failed_in_a_row: u32,
    /// `ok` calls seen at the last probe: calls that went well since count
    /// as a passed probe without starting an instance.
    ok_seen: u64,
    pub probes: u64,
    pub last_probe: Option<(bool, String)>,
    pub scale_events: u64,
    pub capacity_limited: u64,
    pub unhealthy_events: u64,
    /// Failed init() runs of new or replacement replicas already reported.
    init_failures_seen: u64,
    /// How much of its calls' time kept a core busy, per refresh period.
    pub cpu: CpuShare,
}

/// A version's calls' CPU share: of its instances seen in a call at each
/// tick, the share on a core or waiting for one (rather than asleep or
/// blocked), over the last refresh period and the part of this one gone
/// by, so that a load that has just begun has a share at the autoscaler's
/// first decision about it. What `cpu_bound_limit` holds scale-ups to.
#[derive(Default)]
pub(crate) struct CpuShare {
    /// When this period began, and its looks' counts: looks, instances in
    /// a call, and running.
    since: Option<Instant>,
    now: (u32, u32, u32),
    /// The last period's.
    last: (u32, u32, u32),
    pub share: Option<f64>,
    /// The mean count of its instances running (or waiting for a core) at
    /// a look: the cores its calls keep busy. Set with `share`.
    pub cores: Option<f64>,
    /// The count scale-ups are held at now, once said.
    held: Option<usize>,
}

/// Instances seen in a call over the period that a share is taken from.
const SHARE_LOOKS: u32 = 3;

impl CpuShare {
    /// One look at the pool. A new share needs at least [`SHARE_LOOKS`]
    /// instances seen in a call (fewer: too few calls to say).
    fn update(&mut self, now: Instant, every: Duration, st: &wasmscore_replica::PoolStats) {
        let (busy, running) = st.sample_running();
        self.now = (self.now.0 + 1, self.now.1 + busy, self.now.2 + running);
        let since = *self.since.get_or_insert(now);
        if now.duration_since(since) >= every {
            (self.since, self.last, self.now) = (Some(now), self.now, (0, 0, 0));
        }
        let (looks, busy, running) = (self.last.0 + self.now.0, self.last.1 + self.now.1, self.last.2 + self.now.2);
        if busy >= SHARE_LOOKS {
            self.share = Some(f64::from(running) / f64::from(busy));
            self.cores = Some(f64::from(running) / f64::from(looks));
        } else if busy == 0 {
            // No call in a period and more: the load is gone.
            (self.share, self.cores) = (None, None);
        }
        // Between the two, too few calls seen to say anew: the last share
        // holds (a light load, seen in a call at one look in ten, would
        // otherwise come and go, and a scale-up slip through the gaps).
    }

    /// Calls seen, but too few yet to say whether they are CPU-bound (a
    /// load that has just begun, or a light one before its first share).
    fn unsure(&self) -> bool {
        self.share.is_none() && self.last.1 + self.now.1 > 0
    }

    /// The cores this version's calls keep busy, when they are CPU-bound
    /// (as `cpu_bound_limit` counts them). While it is unsure, its
    /// instances in a call, at most what they could keep busy: two
    /// versions whose loads begin together would otherwise each see the
    /// other's share unknown at its first decision, and both scale past
    /// the cores they share.
    fn bound_cores(&self) -> Option<f64> {
        if self.unsure() {
            let (looks, busy) = (self.last.0 + self.now.0, self.last.1 + self.now.1);
            return Some(f64::from(busy) / f64::from(looks.max(1)));
        }
        self.share.filter(|s| *s >= CPU_BOUND).and(self.cores)
    }
}

/// The cores a version's CPU-bound calls keep busy (`bound`), no more than
/// its CPU limit lets `replicas` use (a thread held back by its quota still
/// looks runnable in /proc).
fn within_limit(bound: Option<f64>, limit: Option<f64>, replicas: usize) -> Option<f64> {
    let cores = bound?;
    Some(limit.map_or(cores, |l| cores.min(l * replicas.max(1) as f64)))
}

impl VersionMonitor {
    pub fn new(settings: Resolved, now: Instant) -> Self {
        let scaler = settings
            .autoscale
            .clone()
            .map(|a| Scaler::new(a, settings.pool.max_concurrent, now, settings.pool.replicas));
        let next_probe = now + settings.probes.initial_delay;
        VersionMonitor {
            settings,
            scaler,
            ready: true,
            reason: None,
            unhealthy_since: None,
            next_probe,
            probe: None,
            probes_passed_in_a_row: 0,
            probes_failed_in_a_row: 0,
            ok_seen: 0,
            probes: 0,
            last_probe: None,
            scale_events: 0,
            capacity_limited: 0,
            unhealthy_events: 0,
            init_failures_seen: 0,
            cpu: CpuShare::default(),
        }
    }

    /// Autoscale and health settings and figures, for `service show`.
    pub fn json(&self) -> (Value, Value) {
        let a = match (&self.settings.autoscale, &self.scaler) {
            (Some(a), Some(s)) => json!({
                "enabled": true,
                "min_replicas": a.min,
                "max_replicas": a.max,
                "target_utilization": (a.target * 100.0).round() as u64,
                "refresh_seconds": a.refresh.as_secs_f64(),
                "scale_down_delay_seconds": a.down_delay.as_secs_f64(),
                "desired_replicas": s.desired,
                "utilization": s.utilization.map(|u| (u * 1000.0).round() / 1000.0),
                "load": (s.load * 100.0).round() / 100.0,
                "scale_events": self.scale_events,
                "capacity_limited": self.capacity_limited,
                "cpu_share": self.cpu.share.map(|c| (c * 100.0).round() / 100.0),
                "cpu_cores_busy": self.cpu.cores.map(|c| (c * 100.0).round() / 100.0),
            }),
            _ => json!({"enabled": false, "num_replicas": self.settings.pool.replicas}),
        };
        let p = &self.settings.probes;
        let h = json!({
            "ready": self.ready,
            "reason": self.reason,
            "unhealthy_for_seconds": self.unhealthy_since.map(|t| t.elapsed().as_secs()),
            "unhealthy_events": self.unhealthy_events,
            "probes": self.probes,
            "last_probe": self.last_probe.as_ref().map(|(ok, what)| json!({"passed": ok, "detail": what})),
            "period_seconds": p.period.as_secs_f64(),
            "initial_delay_seconds": p.initial_delay.as_secs_f64(),
            "timeout_seconds": p.timeout.as_secs_f64(),
            "success_threshold": p.success_threshold,
            "failure_threshold": p.failure_threshold,
        });
        (a, h)
    }
}

/// What one tick did to a version, to log outside the borrow.
enum Happened {
    Scaled {
        from: usize,
        to: usize,
        reason: String,
    },
    CapacityLimited {
        wanted: usize,
        granted: usize,
        why: String,
    },
    Unhealthy(String),
    Healthy(String),
    InitFailed {
        count: u64,
        error: String,
    },
    /// A scale-up held at the replicas the machine's cores can run.
    CpuBound {
        wanted: usize,
        granted: usize,
        why: String,
    },
}

impl Control {
    /// Starts the monitor thread. It holds the control plane weakly and ends
    /// with it.
    pub(crate) fn start_monitor(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new().name("monitor".into()).spawn(move || {
            let (mut saved, mut sampled) = (Instant::now(), None::<Instant>);
            loop {
                std::thread::sleep(TICK);
                let Some(control) = weak.upgrade() else { return };
                control.tick(Instant::now());
                if sampled.is_none_or(|t| t.elapsed() >= crate::series::EVERY) {
                    control.sample_series();
                    sampled = Some(Instant::now());
                }
                if saved.elapsed() >= crate::counters::SAVE_EVERY {
                    control.save_counters();
                    saved = Instant::now();
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "the monitor thread did not start: no autoscaling or probes");
        }
    }

    fn tick(&self, now: Instant) {
        let mut inner = lock(&self.inner);
        let capacity = *lock(&self.capacity);
        // What every serving version's replicas ask of the machine now.
        let (mut cpu_used, mut mem_used) = (0.0, 0.0);
        for v in inner.endpoints.values().flat_map(|e| e.versions.iter()) {
            if let Some(b) = &v.live {
                let n = b.pool.target_replicas() as f64;
                cpu_used += n * b.monitor.settings.cpu_cores;
                mem_used += n * b.monitor.settings.memory_gb;
            }
        }
        // What the CPU-bound versions' calls keep busy now, in cores: a
        // scale-up of one is held at the cores the others leave it.
        let (mut bound_cores, mut bound_versions) = (0.0, 0usize);
        for b in inner
            .endpoints
            .values()
            .flat_map(|e| e.versions.iter())
            .filter_map(|v| v.live.as_ref())
        {
            if let Some(c) = within_limit(b.monitor.cpu.bound_cores(), b.monitor.settings.cpu_limit, b.pool.target_replicas()) {
                bound_cores += c;
                bound_versions += 1;
            }
        }
        let mut republish = Vec::new();
        for (name, ep) in inner.endpoints.iter_mut() {
            for v in ep.versions.iter_mut() {
                let Some(built) = v.live.as_mut() else { continue };
                let pool = built.pool.clone();
                let st = pool.stats().clone();
                let m = &mut built.monitor;
                let mut events = Vec::new();

                // Autoscaling.
                if let Some(scaler) = m.scaler.as_mut() {
                    scaler.sample(st.busy.load(Ordering::Relaxed) + st.queued.load(Ordering::Relaxed));
                    let refresh = m.settings.autoscale.as_ref().map_or(Duration::from_secs(1), |a| a.refresh);
                    if let Some(c) = within_limit(m.cpu.bound_cores(), m.settings.cpu_limit, pool.target_replicas()) {
                        bound_cores -= c;
                        bound_versions -= 1;
                    }
                    m.cpu.update(now, refresh, &st);
                    let others = bound_cores.max(0.0);
                    let cores = cores_left(capacity.cpu_cores, others, bound_versions + 1);
                    // This look counts for the versions after it in this tick.
                    if let Some(c) = within_limit(m.cpu.bound_cores(), m.settings.cpu_limit, pool.target_replicas()) {
                        bound_cores += c;
                        bound_versions += 1;
                    }
                    let current = pool.target_replicas();
                    let max_concurrent = m.settings.pool.max_concurrent;
                    let cpu_limit = cpu_bound_limit(m.cpu.share, cores, max_concurrent, m.settings.cpu_limit);
                    if let Some(d) = scaler.decide(now, current, cpu_limit) {
                        let mut to = d.to;
                        if to > current && current > 0 && m.cpu.unsure() {
                            // Asked again next period, with a share to go by:
                            // instances beyond the cores would only queue.
                            to = current;
                        }
                        if let Some(limit) = cpu_limit {
                            let granted = limit.max(current);
                            if to > granted {
                                // Said once while it holds the same count.
                                if m.cpu.held != Some(granted) {
                                    events.push(Happened::CpuBound {
                                        wanted: to,
                                        granted,
                                        why: format!(
                                            "its calls keep a core busy {:.0}% of their time, so more than {limit} replicas would only queue for {}",
                                            m.cpu.share.unwrap_or(0.0) * 100.0,
                                            if others > 0.0 {
                                                format!(
                                                    "the {cores:.1} of this machine's {} CPU cores left beside other CPU-bound versions (keeping {others:.1} busy)",
                                                    capacity.cpu_cores
                                                )
                                            } else {
                                                format!("this machine's {} CPU cores", capacity.cpu_cores)
                                            }
                                        ),
                                    });
                                }
                                m.cpu.held = Some(granted);
                                to = granted;
                            } else {
                                m.cpu.held = None;
                            }
                        }
                        if to > current {
                            let (cpu, mem) = (m.settings.cpu_cores, m.settings.memory_gb);
                            let fit_cpu = ((capacity.cpu_cores - cpu_used) / cpu + 1e-9).floor().max(0.0) as usize;
                            let fit_mem = ((capacity.memory_gb - mem_used) / mem + 1e-9).floor().max(0.0) as usize;
                            let granted = current + fit_cpu.min(fit_mem).min(to - current);
                            if granted < to {
                                m.capacity_limited += 1;
                                events.push(Happened::CapacityLimited {
                                    wanted: to,
                                    granted,
                                    why: format!(
                                        "machine capacity: {cpu_used:.1} of {:.1} CPU cores and {mem_used:.1} of {:.1} GB asked for by running replicas ({cpu} cores, {mem} GB each)",
                                        capacity.cpu_cores, capacity.memory_gb
                                    ),
                                });
                                to = granted;
                            }
                            cpu_used += (to - current) as f64 * cpu;
                            mem_used += (to - current) as f64 * mem;
                            // The instances it gets keep cores busy too.
                            if let (Some(share), Some(_)) = (m.cpu.share, m.cpu.bound_cores()) {
                                bound_cores += share.min(1.0) * ((to - current) * max_concurrent) as f64;
                            }
                        } else {
                            cpu_used -= (current - to) as f64 * m.settings.cpu_cores;
                            mem_used -= (current - to) as f64 * m.settings.memory_gb;
                        }
                        if to != current {
                            pool.scale_to(to);
                            m.scale_events += 1;
                            events.push(Happened::Scaled {
                                from: current,
                                to,
                                reason: d.reason,
                            });
                        }
                    }
                }

                // New or replacement replicas whose init() failed: they retry
                // with backoff (10 ms doubling to 5 s); say so once per tick.
                let init_failures = st.init_failures.load(Ordering::Relaxed);
                if init_failures > m.init_failures_seen {
                    events.push(Happened::InitFailed {
                        count: init_failures - m.init_failures_seen,
                        error: st.last_error().unwrap_or_default(),
                    });
                    m.init_failures_seen = init_failures;
                }

                // Readiness.
                let p = m.settings.probes.clone();
                let failures = st.consecutive_failures.load(Ordering::Relaxed);
                if m.ready && failures >= u64::from(p.failure_threshold) {
                    let why = format!(
                        "{failures} replica failures in a row (last: {})",
                        st.last_error().unwrap_or_default()
                    );
                    events.push(Happened::Unhealthy(why));
                }
                let mut outcome = None;
                if let Some((started, rx)) = &m.probe {
                    match rx.try_recv() {
                        Ok(Ok(())) => outcome = Some(Ok(format!("a fresh replica ran init() in {} ms", started.elapsed().as_millis()))),
                        Ok(Err(e)) => outcome = Some(Err(format!("a fresh replica failed init(): {e}"))),
                        Err(TryRecvError::Disconnected) => outcome = Some(Err("the probe thread died".into())),
                        Err(TryRecvError::Empty) if started.elapsed() > p.timeout => {
                            outcome = Some(Err(format!("no answer within timeout_seconds ({:.1} s)", p.timeout.as_secs_f64())))
                        }
                        Err(TryRecvError::Empty) => {}
                    }
                    if outcome.is_some() {
                        m.probe = None;
                    }
                } else if now >= m.next_probe {
                    m.next_probe = now + p.period;
                    let ok = st.ok.load(Ordering::Relaxed);
                    let served_well = ok > m.ok_seen;
                    m.ok_seen = ok;
                    if m.ready && (served_well || failures == 0) {
                        // Calls went well, or nothing went wrong: no need to
                        // start an instance to know.
                        outcome = Some(Ok(if served_well {
                            "requests were served".into()
                        } else {
                            "idle, no failures".into()
                        }));
                    } else {
                        m.probe = Some((now, pool.probe()));
                    }
                }
                if let Some(result) = outcome {
                    m.probes += 1;
                    match result {
                        Ok(what) => {
                            m.probes_passed_in_a_row += 1;
                            m.probes_failed_in_a_row = 0;
                            if !m.ready && m.probes_passed_in_a_row >= p.success_threshold {
                                events.push(Happened::Healthy(format!(
                                    "{} probe(s) passed; last: {what}",
                                    m.probes_passed_in_a_row
                                )));
                            }
                            m.last_probe = Some((true, what));
                        }
                        Err(what) => {
                            m.probes_failed_in_a_row += 1;
                            m.probes_passed_in_a_row = 0;
                            if m.ready && m.probes_failed_in_a_row >= p.failure_threshold {
                                events.push(Happened::Unhealthy(format!(
                                    "{} probes failed in a row; last: {what}",
                                    m.probes_failed_in_a_row
                                )));
                            }
                            m.last_probe = Some((false, what));
                        }
                    }
                }

                let version = v.row.rollout.name.clone();
                for e in events {
                    let msg = match e {
                        Happened::Scaled { from, to, reason } => {
                            let dir = if to > from { "scale up" } else { "scale down" };
                            tracing::info!(endpoint = %name, %version, from, to, %reason, "{dir}");
                            format!("{dir} {from} -> {to} replicas: {reason}")
                        }
                        Happened::CapacityLimited { wanted, granted, why } => {
                            tracing::warn!(endpoint = %name, %version, wanted, granted, %why, "capacity reached");
                            format!("capacity reached: wanted {wanted} replicas, granted {granted}; {why}")
                        }
                        Happened::CpuBound { wanted, granted, why } => {
                            tracing::info!(endpoint = %name, %version, wanted, granted, %why, "held at the cores");
                            format!("held at {granted} replicas (utilization asks {wanted}): {why}")
                        }
                        Happened::InitFailed { count, error } => {
                            tracing::warn!(endpoint = %name, %version, count, %error, "starting replicas failed; retrying with backoff");
                            format!("starting a replica failed ({count}x): {error}; retrying with backoff")
                        }
                        Happened::Unhealthy(why) => {
                            let m = &mut v.live.as_mut().expect("serving").monitor;
                            m.ready = false;
                            m.reason = Some(why.clone());
                            m.unhealthy_since = Some(now);
                            m.unhealthy_events += 1;
                            m.probes_passed_in_a_row = 0;
                            // A probe started before this counts for nothing:
                            // recovery is judged from the next period on.
                            m.probe = None;
                            m.next_probe = now + m.settings.probes.period;
                            republish.push(name.clone());
                            tracing::warn!(endpoint = %name, %version, %why, "version unhealthy; its traffic share goes to the default version");
                            format!("Unhealthy: {why}; its traffic share goes to the default version until it recovers")
                        }
                        Happened::Healthy(why) => {
                            let m = &mut v.live.as_mut().expect("serving").monitor;
                            m.ready = true;
                            m.unhealthy_since = None;
                            st.clear_failures();
                            republish.push(name.clone());
                            tracing::info!(endpoint = %name, %version, %why, "version healthy again; traffic share restored");
                            format!("Healthy again: {why}; its traffic share is restored")
                        }
                    };
                    v.event(msg);
                }
            }
        }
        republish.dedup();
        for name in republish {
            self.publish(&inner, &name);
        }
    }

    /// Overrides the machine's capacity (`up --cpu-capacity/--memory-capacity-gb`).
    pub fn set_capacity(&self, c: Capacity) {
        *lock(&self.capacity) = c;
    }

    pub fn capacity_json(&self) -> Value {
        let c = *lock(&self.capacity);
        let inner = lock(&self.inner);
        let (mut cpu, mut mem, mut replicas) = (0.0, 0.0, 0usize);
        for b in inner
            .endpoints
            .values()
            .flat_map(|e| e.versions.iter())
            .filter_map(|v| v.live.as_ref())
        {
            let n = b.pool.target_replicas();
            replicas += n;
            cpu += n as f64 * b.monitor.settings.cpu_cores;
            mem += n as f64 * b.monitor.settings.memory_gb;
        }
        json!({
            "cpu_cores": c.cpu_cores,
            "memory_gb": (c.memory_gb * 10.0).round() / 10.0,
            "replicas": replicas,
            "cpu_cores_requested": (cpu * 100.0).round() / 100.0,
            "memory_gb_requested": (mem * 100.0).round() / 100.0,
        })
    }
}
