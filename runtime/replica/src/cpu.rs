//! A CPU limit on a version's instance threads (`cpu_cores_limit`): a
//! cgroup of the cgroup v1 `cpu` controller per pool, under the process's
//! own, whose CFS quota is the limit per replica times the replicas it
//! runs. The threads join it as they start and leave it before they end,
//! so the group can be removed with its pool.
//!
//! The layout, under the `cpu` controller's mount:
//! `<the process's cgroup>/wasmscore-<pid>/<endpoint>-<version>-<n>/`.
//! Groups of processes that are gone are removed when the next one starts.
//! Under cgroup v2 a process's threads can be limited apart only in a
//! threaded subtree, which is not set up here: a limit there is refused
//! with that reason, as it is where the cgroup cannot be written.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// The CFS period; a quota is a share of it.
const PERIOD_US: u64 = 100_000;
/// The kernel's smallest quota.
const MIN_QUOTA_US: u64 = 1_000;

/// One pool's group.
#[derive(Debug)]
pub struct CpuGroup {
    dir: PathBuf,
    /// Where a leaving thread goes back to: the process's own group.
    home: PathBuf,
    cores_per_replica: f64,
    instances_per_replica: usize,
    /// Threads in the group, and the quota they were last given.
    members: Mutex<usize>,
}

/// What the kernel counted for a group (`cpu.stat`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Throttling {
    /// CFS periods in which its threads ran.
    pub periods: u64,
    /// Periods in which they used the quota up and waited.
    pub throttled_periods: u64,
    pub throttled_ms: u64,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

impl CpuGroup {
    /// A group for `label`'s threads: each replica (`instances_per_replica`
    /// threads) may use `cores_per_replica` cores. Err says why this machine
    /// cannot limit them.
    pub fn new(label: &str, cores_per_replica: f64, instances_per_replica: usize) -> Result<CpuGroup, String> {
        let home = own_cpu_group()?;
        let base = home.join(format!("wasmscore-{}", std::process::id()));
        std::fs::create_dir_all(&base).map_err(|e| format!("cannot make the cgroup {}: {e}", base.display()))?;
        let name: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' })
            .collect();
        let dir = base.join(format!("{name}-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot make the cgroup {}: {e}", dir.display()))?;
        let group = CpuGroup {
            dir,
            home,
            cores_per_replica,
            instances_per_replica: instances_per_replica.max(1),
            members: Mutex::new(0),
        };
        write(&group.dir.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
        group.set_quota(0)?;
        Ok(group)
    }

    /// Puts the calling thread in the group (`tid`: its Linux thread id).
    pub fn join(&self, tid: i32) -> Result<(), String> {
        let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        write(&self.dir.join("tasks"), &tid.to_string())?;
        *members += 1;
        self.set_quota(*members)
    }

    /// Takes the calling thread out, back to the process's group.
    pub fn leave(&self, tid: i32) -> Result<(), String> {
        let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        write(&self.home.join("tasks"), &tid.to_string())?;
        *members = members.saturating_sub(1);
        self.set_quota(*members)
    }

    /// The limit for `threads` instances: the replicas they make up, each
    /// at `cores_per_replica`.
    fn set_quota(&self, threads: usize) -> Result<(), String> {
        let replicas = threads.div_ceil(self.instances_per_replica).max(1);
        let quota = ((self.cores_per_replica * replicas as f64 * PERIOD_US as f64) as u64).max(MIN_QUOTA_US);
        write(&self.dir.join("cpu.cfs_quota_us"), &quota.to_string())
    }

    /// The quota now, in cores.
    pub fn cores(&self) -> f64 {
        let members = *self.members.lock().unwrap_or_else(|p| p.into_inner());
        self.cores_per_replica * members.div_ceil(self.instances_per_replica).max(1) as f64
    }

    /// What the kernel counted, if it can be read.
    pub fn throttling(&self) -> Option<Throttling> {
        let stat = std::fs::read_to_string(self.dir.join("cpu.stat")).ok()?;
        let field = |k: &str| {
            stat.lines()
                .find_map(|l| l.strip_prefix(k).and_then(|v| v.trim().parse::<u64>().ok()))
                .unwrap_or(0)
        };
        Some(Throttling {
            periods: field("nr_periods "),
            throttled_periods: field("nr_throttled "),
            throttled_ms: field("throttled_time ") / 1_000_000,
        })
    }
}

impl Drop for CpuGroup {
    fn drop(&mut self) {
        // Empty once its threads left; a thread still blocked in the host
        // (abandoned) keeps it until a later start removes it.
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("writing {value} to {}: {e}", path.display()))
}

/// The process's group of the v1 `cpu` controller, found once (and the
/// groups of processes that are gone removed then).
fn own_cpu_group() -> Result<PathBuf, String> {
    static HOME: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    HOME.get_or_init(|| {
        let home = find_own_cpu_group()?;
        remove_stale(&home);
        Ok(home)
    })
    .clone()
}

fn find_own_cpu_group() -> Result<PathBuf, String> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("reading /proc/self/cgroup: {e}"))?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
    let is_cpu = |list: &str| list.split(',').any(|c| c == "cpu");
    // `ID:controllers:path` (v1); v2 is the one line `0::path`.
    let path = cgroups.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        is_cpu(controllers).then(|| path.to_string())
    });
    // mountinfo: ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS ... - FSTYPE SOURCE SUPEROPTIONS
    let mount = mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mut r = right.split(' ');
        let (fstype, _, superopts) = (r.next()?, r.next()?, r.next()?);
        let f: Vec<&str> = left.split(' ').collect();
        if fstype != "cgroup" || !is_cpu(superopts) {
            return None;
        }
        Some((f.get(3)?.to_string(), f.get(4)?.to_string()))
    });
    let (Some(path), Some((root, mountpoint))) = (path, mount) else {
        return Err(if mountinfo.lines().any(|l| l.contains(" - cgroup2 ")) {
            "this machine has cgroup v2 only, where a process's threads are limited apart only in a threaded \
             cgroup subtree, which wasmscore does not set up yet (on Kubernetes the pod's CPU limit does it)"
                .into()
        } else {
            "this machine has no cgroup cpu controller mounted".into()
        });
    };
    let relative = path.strip_prefix(&root).unwrap_or(&path).trim_start_matches('/');
    let home = Path::new(&mountpoint).join(relative);
    // A group we may not write is found out here, not at the first thread.
    let probe = home.join(format!("wasmscore-{}", std::process::id()));
    std::fs::create_dir_all(&probe).map_err(|e| format!("the cgroup {} cannot be written: {e}", home.display()))?;
    Ok(home)
}

/// Removes the groups of wasmscore processes that are gone.
fn remove_stale(home: &Path) {
    let Ok(entries) = std::fs::read_dir(home) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name.strip_prefix("wasmscore-").and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Ok(groups) = std::fs::read_dir(e.path()) {
            for g in groups.flatten().filter(|g| g.path().is_dir()) {
                let _ = std::fs::remove_dir(g.path());
            }
        }
        let _ = std::fs::remove_dir(e.path());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where this machine can limit threads (root, cgroup v1 cpu), a busy
    /// thread in a group of 0.2 cores gets about that.
    #[test]
    fn a_busy_thread_in_a_group_gets_its_quota() {
        let group = match CpuGroup::new("test/limit", 0.2, 1) {
            Ok(g) => g,
            Err(why) => {
                eprintln!("SKIPPED: {why}");
                return;
            }
        };
        let (cpu, wall) = std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: gettid has no preconditions.
                let tid = unsafe { libc::gettid() };
                group.join(tid).unwrap();
                let (cpu0, start) = (thread_cpu(), std::time::Instant::now());
                while start.elapsed() < std::time::Duration::from_millis(600) {
                    std::hint::black_box(0u64.wrapping_add(1));
                }
                let used = thread_cpu() - cpu0;
                group.leave(tid).unwrap();
                (used, start.elapsed().as_secs_f64())
            })
            .join()
            .unwrap()
        });
        assert!(cpu / wall < 0.35, "{cpu} s of CPU in {wall} s at a 0.2 core limit");
        let t = group.throttling().expect("cpu.stat");
        assert!(t.throttled_periods > 0, "{t:?}");
        assert_eq!(group.cores(), 0.2);
    }

    fn thread_cpu() -> f64 {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: a valid clock id and a pointer to a timespec we own.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
    }
}
