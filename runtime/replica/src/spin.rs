//! An idle instance's thread spins for a moment before it parks, but only
//! while a core would otherwise sit idle.
//!
//! Handing a request to a parked thread costs a futex wake, and on a
//! virtual machine an inter-processor interrupt to a halted vCPU: tens of
//! microseconds, more than scoring iris takes. A thread that spins for
//! 250 µs (`WASMSCORE_SPIN_US`) after its call catches the next request of a client that sends
//! one after another without that cost. When the machine is busy, though,
//! a spinning thread takes the core the request needs to arrive (the HTTP
//! workers, the load itself), so no more threads spin at once than the
//! last 100 ms sample of /proc/stat found idle cores, counting the time
//! spent spinning as idle: none on a busy machine, one on two cores
//! serving one client, however many versions and instances wait. And only
//! the threads of a version that got at least 80% of the process's last
//! requests spin: in a split, the next request most likely goes elsewhere.
//!
//! The caller spins too, for its reply, but only while requests come one
//! at a time and a core is idle: its request is the only one the process
//! is scoring, and so was every request of the last 100 ms sample. Then
//! its async worker has nothing else to do and would park, and the reply
//! would cost a second wake. Once two requests overlap (any load that
//! keeps the cores busy) callers await their replies as usual until a
//! sample sees none overlap.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvError, TryRecvError};
use tokio::sync::oneshot;

/// How long an idle thread spins before it parks: 250 µs, or
/// `WASMSCORE_SPIN_US` (0: never spin).
fn spin_for() -> Duration {
    static US: OnceLock<u64> = OnceLock::new();
    Duration::from_micros(*US.get_or_init(|| std::env::var("WASMSCORE_SPIN_US").ok().and_then(|v| v.parse().ok()).unwrap_or(250)))
}
/// How long a sample of the machine's idle time lasts.
const SAMPLE: Duration = Duration::from_millis(100);

/// A pool's requests, and whether it gets most of the process's: only then
/// is its next request likely to come to it rather than to another
/// version (a split of three gives each a third).
#[derive(Default)]
pub(crate) struct Share {
    arrivals: AtomicU64,
    /// Arrivals at the last sample.
    seen: AtomicU64,
    mostly_here: AtomicBool,
}

impl Share {
    /// A pool's share, sampled with the others from now on.
    pub(crate) fn register() -> Arc<Share> {
        let s = Arc::new(Share::default());
        let g = gate();
        let mut pools = g.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.retain(|w| w.strong_count() > 0);
        pools.push(Arc::downgrade(&s));
        s
    }

    pub(crate) fn arrived(&self) {
        self.arrivals.fetch_add(1, Ordering::Relaxed);
    }
}

struct Gate {
    /// Every pool's share (dropped pools linger until the next register).
    pools: Mutex<Vec<Weak<Share>>>,
    /// Threads that may spin at once: the idle cores the last sample found
    /// (0: none, spinning is off).
    allowed: AtomicUsize,
    /// Threads spinning now.
    spinning: AtomicUsize,
    /// Nanoseconds spent spinning, by every pool's threads and callers.
    spun_ns: AtomicU64,
}

/// The process-wide gate, with its sampler thread started on first use.
fn gate() -> &'static Gate {
    static GATE: OnceLock<&'static Gate> = OnceLock::new();
    GATE.get_or_init(|| {
        let g: &'static Gate = Box::leak(Box::new(Gate {
            pools: Mutex::new(Vec::new()),
            allowed: AtomicUsize::new(0),
            spinning: AtomicUsize::new(0),
            spun_ns: AtomicU64::new(0),
        }));
        let started = std::thread::Builder::new().name("spin-gate".into()).spawn(move || sample(g));
        if let Err(e) = started {
            tracing::warn!(error = %e, "no idle sampler: instances park at once");
        }
        g
    })
}

impl Gate {
    /// Takes a spinning slot if one is free: never more spinners than idle
    /// cores, whatever the number of idle instances.
    fn enter(&self) -> bool {
        let allowed = self.allowed.load(Ordering::Relaxed);
        let mut n = self.spinning.load(Ordering::Relaxed);
        while n < allowed {
            match self.spinning.compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(now) => n = now,
            }
        }
        false
    }
}

/// Seconds spent spinning: idle instances for a request, callers for a reply.
pub fn spun_seconds() -> f64 {
    gate().spun_ns.load(Ordering::Relaxed) as f64 / 1e9
}

/// Machine-wide idle and total CPU time in clock ticks (the first line of
/// /proc/stat), None where there is no /proc/stat.
fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is in user).
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((idle, fields.iter().take(8).sum()))
}

fn sample(g: &'static Gate) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let Some(mut last) = cpu_ticks() else { return };
    let mut last_spun = g.spun_ns.load(Ordering::Relaxed);
    let mut last_at = Instant::now();
    loop {
        std::thread::sleep(SAMPLE);
        let Some(now) = cpu_ticks() else { return };
        let spun = g.spun_ns.load(Ordering::Relaxed);
        let wall = last_at.elapsed().as_secs_f64();
        last_at = Instant::now();
        let (idle, total) = (now.0.saturating_sub(last.0), now.1.saturating_sub(last.1));
        if total > 0 {
            // Ticks are per core: idle / total * cores is idle cores; the
            // time spent spinning would have been idle too.
            let idle_cores = idle as f64 / total as f64 * cores + spun.saturating_sub(last_spun) as f64 / 1e9 / wall;
            g.allowed.store((idle_cores + 0.1).floor() as usize, Ordering::Relaxed);
        }
        last = now;
        last_spun = spun;
        let most = MOST_IN_FLIGHT.swap(IN_FLIGHT.load(Ordering::Acquire), Ordering::AcqRel);
        ONE_AT_A_TIME.store(most == 1, Ordering::Relaxed);
        // Which pools got at least 80% of the requests since the last sample.
        let pools: Vec<Arc<Share>> = g
            .pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        let deltas: Vec<u64> = pools
            .iter()
            .map(|p| {
                let n = p.arrivals.load(Ordering::Relaxed);
                n - p.seen.swap(n, Ordering::Relaxed)
            })
            .collect();
        let total: u64 = deltas.iter().sum();
        for (p, d) in pools.iter().zip(deltas) {
            p.mostly_here.store(total > 0 && d * 5 >= total * 4, Ordering::Relaxed);
        }
    }
}

/// The next message: at once if one waits, after a short spin if the
/// gate allows one, else parked until one comes.
pub(crate) fn next<T>(rx: &Receiver<T>, share: &Share) -> Result<T, RecvError> {
    match rx.try_recv() {
        Ok(m) => return Ok(m),
        Err(TryRecvError::Disconnected) => return Err(RecvError),
        Err(TryRecvError::Empty) => {}
    }
    let spin = spin_for();
    let g = gate();
    if !spin.is_zero() && share.mostly_here.load(Ordering::Relaxed) && g.enter() {
        let start = Instant::now();
        let got = spin_poll(spin, || match rx.try_recv() {
            Ok(m) => Some(Ok(m)),
            Err(TryRecvError::Disconnected) => Some(Err(RecvError)),
            Err(TryRecvError::Empty) => None,
        });
        g.spun_ns.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        g.spinning.fetch_sub(1, Ordering::AcqRel);
        if let Some(r) = got {
            return r;
        }
    }
    rx.recv()
}

/// Requests this process is scoring now, in every pool.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
/// The most requests in flight at once since the last sample.
static MOST_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
/// Whether the last sample never saw two requests in flight at once: a
/// client that sends one request after another, the only case the caller
/// spins for.
static ONE_AT_A_TIME: AtomicBool = AtomicBool::new(false);

/// Counts a request as in flight until it is dropped.
pub(crate) struct InFlight(());

impl InFlight {
    pub(crate) fn enter() -> InFlight {
        let n = IN_FLIGHT.fetch_add(1, Ordering::AcqRel) + 1;
        if n > MOST_IN_FLIGHT.load(Ordering::Relaxed) {
            MOST_IN_FLIGHT.fetch_max(n, Ordering::Relaxed);
        }
        InFlight(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The reply (None inside if its sender went away), if it comes within
/// the spin while requests come one at a time, the last sample found an
/// idle core (other processes may keep the machine busy), and the
/// version's calls are short (`last_run_us`, its last call's time). None:
/// await it as usual. The time spun counts as idle for the instances'
/// gate, as theirs does.
pub(crate) fn reply<T>(rx: &mut oneshot::Receiver<T>, last_run_us: u64) -> Option<Option<T>> {
    let spin = spin_for();
    let g = gate();
    let alone = ONE_AT_A_TIME.load(Ordering::Relaxed) && IN_FLIGHT.load(Ordering::Acquire) == 1;
    let idle_core = g.allowed.load(Ordering::Relaxed) > 0;
    if !caller_may_spin(spin, alone, idle_core, last_run_us) {
        return None;
    }
    let start = Instant::now();
    let got = spin_recv(rx, spin);
    g.spun_ns.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    got
}

/// A caller spins only for a request that is alone in the process, while
/// a core is idle, and only for a version whose last call took under half
/// the spin.
fn caller_may_spin(spin: Duration, alone: bool, idle_core: bool, last_run_us: u64) -> bool {
    !spin.is_zero() && alone && idle_core && last_run_us.saturating_mul(2) <= spin.as_micros() as u64
}

/// Polls `rx` for at most `spin`.
fn spin_recv<T>(rx: &mut oneshot::Receiver<T>, spin: Duration) -> Option<Option<T>> {
    spin_poll(spin, || match rx.try_recv() {
        Ok(v) => Some(Some(v)),
        Err(oneshot::error::TryRecvError::Closed) => Some(None),
        Err(oneshot::error::TryRecvError::Empty) => None,
    })
}

/// Calls `poll` until it gives something or `spin` has passed.
fn spin_poll<R>(spin: Duration, mut poll: impl FnMut() -> Option<R>) -> Option<R> {
    let start = Instant::now();
    loop {
        if let Some(r) = poll() {
            return Some(r);
        }
        if start.elapsed() >= spin {
            return None;
        }
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_gives_idle_and_total_ticks() {
        let (idle, total) = cpu_ticks().expect("/proc/stat on Linux");
        assert!(total >= idle && total > 0, "{idle} {total}");
    }

    #[test]
    fn a_waiting_message_comes_at_once_and_a_closed_channel_ends() {
        let (tx, rx) = crossbeam_channel::bounded(1);
        tx.send(7).unwrap();
        let share = Share::default();
        assert_eq!(next(&rx, &share), Ok(7));
        drop(tx);
        assert_eq!(next(&rx, &share), Err(RecvError));
    }

    #[test]
    fn a_caller_spins_only_for_a_lone_request_to_a_version_of_short_calls() {
        let spin = Duration::from_micros(250);
        assert!(caller_may_spin(spin, true, true, 0));
        assert!(caller_may_spin(spin, true, true, 125));
        assert!(!caller_may_spin(spin, true, true, 126), "calls longer than half the spin");
        assert!(!caller_may_spin(spin, false, true, 0), "requests overlap");
        assert!(!caller_may_spin(spin, true, false, 0), "no idle core");
        assert!(!caller_may_spin(Duration::ZERO, true, true, 0), "WASMSCORE_SPIN_US=0");
    }

    #[test]
    fn the_caller_spin_takes_a_reply_sees_a_dropped_sender_and_gives_up_in_time() {
        let (tx, mut rx) = oneshot::channel::<u32>();
        tx.send(5).unwrap();
        assert_eq!(spin_recv(&mut rx, Duration::from_micros(250)), Some(Some(5)));
        let (tx, mut rx) = oneshot::channel::<u32>();
        drop(tx);
        assert_eq!(spin_recv(&mut rx, Duration::from_micros(250)), Some(None));
        let (_tx, mut rx) = oneshot::channel::<u32>();
        let t = Instant::now();
        assert_eq!(spin_recv(&mut rx, Duration::from_micros(250)), None);
        assert!(t.elapsed() >= Duration::from_micros(250));
        // Counting: two requests at once are seen by the next sample.
        let (a, b) = (InFlight::enter(), InFlight::enter());
        assert!(MOST_IN_FLIGHT.load(Ordering::Relaxed) >= 2);
        drop((a, b));
    }
}
