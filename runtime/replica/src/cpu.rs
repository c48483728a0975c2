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
    /// The tightest quota of the groups above (cgroup v1 refuses a child
    /// quota above its parent's), in cores; none: no limit above.
    ceiling: Option<f64>,
    /// Threads counted in the group.
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
            ceiling: ceiling(&home),
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

    /// Puts the calling thread in the group (`tid`: its Linux thread id),
    /// its replica's share added to the quota first. Counted only if it
    /// joined.
    pub fn join(&self, tid: i32) -> Result<(), String> {
        let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        self.set_quota(*members + 1)?;
        if let Err(e) = write(&self.dir.join("tasks"), &tid.to_string()) {
            let _ = self.set_quota(*members);
            return Err(e);
        }
        *members += 1;
        Ok(())
    }

    /// Takes a thread that joined out, back to the process's group, and
    /// its share off the quota.
    pub fn leave(&self, tid: i32) -> Result<(), String> {
        let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        let moved = write(&self.home.join("tasks"), &tid.to_string());
        *members = members.saturating_sub(1);
        moved.and(self.set_quota(*members))
    }

    /// The limit for `threads` instances: the replicas they make up, each
    /// at `cores_per_replica`, within the ceiling above.
    fn set_quota(&self, threads: usize) -> Result<(), String> {
        let quota = ((self.cores_for(threads) * PERIOD_US as f64) as u64).max(MIN_QUOTA_US);
        write(&self.dir.join("cpu.cfs_quota_us"), &quota.to_string())
    }

    fn cores_for(&self, threads: usize) -> f64 {
        let replicas = threads.div_ceil(self.instances_per_replica).max(1);
        let cores = self.cores_per_replica * replicas as f64;
        self.ceiling.map_or(cores, |c| cores.min(c))
    }

    /// The quota now, in cores.
    pub fn cores(&self) -> f64 {
        self.cores_for(*self.members.lock().unwrap_or_else(|p| p.into_inner()))
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

/// The tightest CFS quota of `home` and the groups above it, in cores.
fn ceiling(home: &Path) -> Option<f64> {
    let read = |d: &Path, f: &str| std::fs::read_to_string(d.join(f)).ok()?.trim().parse::<i64>().ok();
    home.ancestors()
        .take_while(|d| d.join("cpu.cfs_quota_us").exists())
        .filter_map(|d| match (read(d, "cpu.cfs_quota_us")?, read(d, "cpu.cfs_period_us")?) {
            (q, p) if q > 0 && p > 0 => Some(q as f64 / p as f64),
            _ => None,
        })
        .reduce(f64::min)
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
    // mountinfo: ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS ... - FSTYPE SOURCE SUPEROPTIONS;
    // of the cpu controller's mounts, the one whose root holds our group
    // most closely.
    let mount = path.as_deref().and_then(|path| {
        mountinfo
            .lines()
            .filter_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                let mut r = right.split(' ');
                let (fstype, _, superopts) = (r.next()?, r.next()?, r.next()?);
                let f: Vec<&str> = left.split(' ').collect();
                if fstype != "cgroup" || !is_cpu(superopts) {
                    return None;
                }
                let (root, mountpoint) = (unescape(f.get(3)?), unescape(f.get(4)?));
                let inside = Path::new(path).strip_prefix(&root).ok()?.to_path_buf();
                if inside.components().any(|c| c == std::path::Component::ParentDir) {
                    return None;
                }
                Some((root.len(), PathBuf::from(mountpoint).join(inside)))
            })
            .max_by_key(|(root_len, _)| *root_len)
            .map(|(_, home)| home)
    });
    let (Some(_), Some(home)) = (path, mount) else {
        return Err(if mountinfo.lines().any(|l| l.contains(" - cgroup2 ")) {
            "this machine has cgroup v2 only, where a process's threads are limited apart only in a threaded \
             cgroup subtree, which wasmscore does not set up yet (on Kubernetes, give cpu_cores_limit in the \
             Endpoint's config: it becomes the pod's CPU limit)"
                .into()
        } else {
            "this machine has no cgroup cpu controller mounted".into()
        });
    };
    if !home.join("tasks").exists() {
        return Err(format!(
            "this process's cpu cgroup is not at {} (another cgroup namespace?)",
            home.display()
        ));
    }
    // A group we may not write is found out here, not at the first thread.
    let probe = home.join(format!("wasmscore-{}", std::process::id()));
    match std::fs::create_dir(&probe) {
        Ok(()) => Ok(home),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(home),
        Err(e) => Err(format!("the cgroup {} cannot be written: {e}", home.display())),
    }
}

/// mountinfo's octal escapes (`\040` for a space) decoded.
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        match rest.get(at + 1..at + 4).and_then(|o| u8::from_str_radix(o, 8).ok()) {
            Some(b) => {
                out.push(b as char);
                rest = &rest[at + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
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
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape(r"/sys/fs/cgroup/my\040group"), "/sys/fs/cgroup/my group");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/odd\x"), r"/odd\x");
    }

    #[test]
    fn a_busy_thread_in_a_group_gets_its_quota() {
        let group = match CpuGroup::new("test/limit", 0.1, 1) {
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
        assert!(cpu / wall < 0.2, "{cpu} s of CPU in {wall} s at a 0.1 core limit");
        assert!(group.throttling().is_some(), "cpu.stat");
        assert_eq!(group.cores(), 0.1);
    }

    fn thread_cpu() -> f64 {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: a valid clock id and a pointer to a timespec we own.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
    }
}
