//! After a build, the process hands back the pages it ran only to build.
//!
//! Making a model's session runs code that serving never runs again (ONNX
//! Runtime's kernel registry and graph optimizers), and the kernel mapped
//! it in runs around every page touched: of 55 MiB resident after a load
//! run with one iris version, 17 MiB were ONNX Runtime's library. Those are
//! clean file pages, so `madvise(MADV_PAGEOUT)` drops them at no risk; the
//! ones serving touches come back on their next use (a fault each, read
//! from the page cache or the disk, once), and the next build reads the
//! rest back the same way. A page another process maps too is left where
//! it is. glibc's malloc (ONNX Runtime's) returns its free pages too. It
//! happens 2 s after the build, off the path of the first requests.
//!
//! `WASMSCORE_PAGE_OUT` picks which pages: everything read-only but the
//! executable's code (the default: the shared libraries and the
//! executable's constants, 41.5 MiB after bench/memory.sh's load run
//! against 55.4 for none; the constants cost no CPU per request
//! measurably), `all` (the executable's code too: 37.5 MiB, but once the
//! request path's code is read back, each gRPC request took 7-11% more
//! CPU in two side-by-side runs; HTTP/1.1 showed no consistent
//! difference), or `0` (none).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// How long after a build its pages are handed back: past the first
/// requests of a process that just started (a restart, a new replica), so
/// they do not wait for code read back from the disk. Builds within it
/// share one hand-back.
const AFTER: Duration = Duration::from_secs(2);

/// Hands the pages back `AFTER` from now on a thread of its own, unless
/// a hand-back is already waiting.
pub(crate) fn hand_back_soon() {
    static WAITING: AtomicBool = AtomicBool::new(false);
    if scope() == Scope::Off || WAITING.swap(true, Ordering::AcqRel) {
        return;
    }
    let started = std::thread::Builder::new().name("page-out".into()).spawn(|| {
        std::thread::sleep(AFTER);
        WAITING.store(false, Ordering::Release);
        if let Some((before, after)) = hand_back() {
            tracing::debug!(before_kib = before, after_kib = after, "build pages handed back");
        }
    });
    if let Err(e) = started {
        WAITING.store(false, Ordering::Release);
        tracing::warn!(error = %e, "no thread to hand back the build's pages; they stay");
    }
}

/// Which read-only file mappings a build pages out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Off,
    /// Every read-only file mapping but the executable's code.
    Libraries,
    All,
}

/// `WASMSCORE_PAGE_OUT`: `0`, `all`, or unset (`libraries`).
fn scope() -> Scope {
    static SCOPE: OnceLock<Scope> = OnceLock::new();
    *SCOPE.get_or_init(|| parse_scope(std::env::var("WASMSCORE_PAGE_OUT").ok().as_deref()))
}

fn parse_scope(v: Option<&str>) -> Scope {
    match v {
        None | Some("libraries") => Scope::Libraries,
        Some("0") => Scope::Off,
        Some("all") => Scope::All,
        Some(other) => {
            tracing::warn!(value = other, "WASMSCORE_PAGE_OUT is 0, libraries or all; paging out the libraries");
            Scope::Libraries
        }
    }
}

/// Pages out the read-only file mappings of the process that `scope`
/// names (code and constants of its libraries, compiled module images,
/// the executable's constants, with `all` its code) and trims glibc's heap. Returns the
/// resident KiB before and after.
fn hand_back() -> Option<(u64, u64)> {
    let scope = scope();
    if scope == Scope::Off {
        return None;
    }
    let before = resident_kib()?;
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let exe = match scope {
        Scope::All => None,
        _ => std::fs::read_link("/proc/self/exe").ok(),
    };
    for (start, len) in read_only_files(&maps, exe.as_deref().and_then(|p| p.to_str())) {
        // SAFETY: MADV_PAGEOUT only drops pages the kernel can read back
        // from their file (these mappings are not writable), or from swap
        // for the private copies a relocated read-only segment holds
        // (without swap those stay); the mapping itself and its contents
        // are unchanged. An error (a locked
        // mapping, an old kernel) leaves the pages where they are.
        unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_PAGEOUT) };
    }
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
    Some((before, resident_kib()?))
}

/// (start, length) of each mapping in a /proc/PID/maps text that is backed
/// by a file and not writable, but for the code of `keep_code` (its
/// executable mappings; its constants go).
fn read_only_files(maps: &str, keep_code: Option<&str>) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let range = f.next()?;
            let perms = f.next()?.as_bytes();
            let path = f.nth(3)?;
            let code = perms.get(2) == Some(&b'x');
            if !path.starts_with('/') || perms.get(1) != Some(&b'-') || (code && Some(path) == keep_code) {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            let (a, b) = (usize::from_str_radix(a, 16).ok()?, usize::from_str_radix(b, 16).ok()?);
            Some((a, b.checked_sub(a)?))
        })
        .collect()
}

fn resident_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_read_only_file_mappings_are_paged_out() {
        let maps = "\
5600a0000000-5600a0100000 r--p 00000000 fd:01 123 /usr/bin/wasmscore
5600a0100000-5600a0400000 r-xp 00100000 fd:01 123 /usr/bin/wasmscore
5600a0400000-5600a0401000 rw-p 00400000 fd:01 123 /usr/bin/wasmscore
5600a1000000-5600a2000000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000010000 rw-p 00000000 00:00 0
7f0000010000-7f0000020000 r-xp 00000000 fd:01 456 /opt/lib/libonnxruntime.so.1.20
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0 [vdso]
";
        assert_eq!(
            read_only_files(maps, None),
            vec![(0x5600a0000000, 0x100000), (0x5600a0100000, 0x300000), (0x7f0000010000, 0x10000)]
        );
        // The executable's code stays; its constants go.
        assert_eq!(
            read_only_files(maps, Some("/usr/bin/wasmscore")),
            vec![(0x5600a0000000, 0x100000), (0x7f0000010000, 0x10000)]
        );
    }

    #[test]
    fn the_scope_is_the_libraries_unless_asked() {
        assert_eq!(parse_scope(None), Scope::Libraries);
        assert_eq!(parse_scope(Some("0")), Scope::Off);
        assert_eq!(parse_scope(Some("all")), Scope::All);
        assert_eq!(parse_scope(Some("everything")), Scope::Libraries);
    }

    /// Rss of the mapping that starts at `start`, in KiB.
    fn mapping_rss(start: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let head = format!("{start:x}-");
        let from = smaps.lines().position(|l| l.starts_with(&head)).expect("the mapping is listed");
        let rss = smaps.lines().skip(from).find(|l| l.starts_with("Rss:")).unwrap();
        rss.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn a_read_only_file_mapping_is_handed_back_and_reads_the_same() {
        // Beside the test binary: a disk (tmpfs pages could not be dropped).
        let dir = tempfile::tempdir_in(std::env::current_exe().unwrap().parent().unwrap()).unwrap();
        let path = dir.path().join("pages");
        let bytes: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        file.sync_all().unwrap(); // clean pages: reclaim need not write them
        let len = bytes.len();
        // SAFETY: a private read-only mapping of a file nobody else writes.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
            )
        };
        assert_ne!(at, libc::MAP_FAILED);
        // SAFETY: the mapping is `len` bytes long and lives until munmap below.
        let mapped = unsafe { std::slice::from_raw_parts(at as *const u8, len) };
        assert_eq!(mapped, &bytes[..]);
        assert_eq!(mapping_rss(at as usize), 1024);
        hand_back().expect("Linux has /proc/self");
        let left = mapping_rss(at as usize);
        assert!(left < 1024, "{left} KiB of the mapping still resident");
        assert_eq!(mapped, &bytes[..], "pages read back from the file are the same");
        // SAFETY: `mapped` is not used after this.
        unsafe { libc::munmap(at, len) };
    }
}
