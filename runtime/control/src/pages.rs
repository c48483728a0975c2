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
//! The executable's own code is handed back too, but for the request
//! path's. The link puts the request path's functions together
//! (runtime/cli/hot-text.txt, between [`wasmscore_hot_text_begin`] and
//! [`wasmscore_hot_text_end`]), and that range stays, widened to whole
//! 2 MiB folios of the file ([`in_whole_folios`]): 33.3 MiB after
//! bench/memory.sh's load run against 41.1 keeping all of the code, and no
//! more CPU per request (median ratios 0.99 and 0.99 on `/score` and gRPC
//! over 12 rounds side by side).
//!
//! `WASMSCORE_PAGE_OUT` picks which pages: everything read-only but the
//! request path's code (unset or `cold`: the shared libraries, the
//! executable's constants and its code outside the hot range),
//! `libraries` (all of the executable's code stays), `all` (all of it
//! goes), or `0` (none). Figures in BENCHMARKS.md.

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
    /// Every read-only file mapping but the request path's code.
    Cold,
    All,
}

/// `WASMSCORE_PAGE_OUT`: `0`, `libraries`, `all`, or unset (`cold`).
fn scope() -> Scope {
    static SCOPE: OnceLock<Scope> = OnceLock::new();
    *SCOPE.get_or_init(|| parse_scope(std::env::var("WASMSCORE_PAGE_OUT").ok().as_deref()))
}

fn parse_scope(v: Option<&str>) -> Scope {
    match v {
        None | Some("cold") => Scope::Cold,
        Some("libraries") => Scope::Libraries,
        Some("0") => Scope::Off,
        Some("all") => Scope::All,
        Some(other) => {
            tracing::warn!(value = other, "WASMSCORE_PAGE_OUT is 0, libraries, cold or all; using cold");
            Scope::Cold
        }
    }
}

/// Where the hot range of the executable's code begins. The link puts it
/// first in `.text` and the request path's functions after it, in the
/// order of runtime/cli/hot-text.txt.
#[no_mangle]
#[inline(never)]
pub extern "C" fn wasmscore_hot_text_begin() {
    // Bodies that differ, so the compiler cannot merge the two markers.
    std::hint::black_box(1u8);
}

/// Where the hot range ends: the last name of runtime/cli/hot-text.txt.
#[no_mangle]
#[inline(never)]
pub extern "C" fn wasmscore_hot_text_end() {
    std::hint::black_box(2u8);
}

/// The pages of the executable's code that the link filled with the
/// request path's functions, or None where it did not (a linker without
/// `--symbol-ordering-file`, a build that skipped it): then the markers
/// lie side by side wherever the linker put them.
fn hot_text() -> Option<(usize, usize)> {
    let (begin, end) = (
        wasmscore_hot_text_begin as *const () as usize,
        wasmscore_hot_text_end as *const () as usize,
    );
    let page = page_size();
    (end.checked_sub(begin)? > page).then(|| (begin & !(page - 1), (end + page - 1) & !(page - 1)))
}

fn page_size() -> usize {
    // SAFETY: sysconf only reads a value.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

/// Pages out the read-only file mappings of the process that `scope`
/// names (code and constants of its libraries, compiled module images,
/// the executable's constants, by default its code outside the hot range,
/// with `all` all of its code) and trims glibc's heap. Returns the
/// resident KiB before and after.
fn hand_back() -> Option<(u64, u64)> {
    let scope = scope();
    if scope == Scope::Off {
        return None;
    }
    let hot = match scope {
        Scope::Cold => hot_text().or_else(|| {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| tracing::warn!("this build has no hot range of code (runtime/cli/build.rs); its code stays resident"));
            None
        }),
        _ => None,
    };
    let before = resident_kib()?;
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let exe = std::fs::read_link("/proc/self/exe").ok();
    for m in read_only_files(&maps, exe.as_deref().and_then(|p| p.to_str())) {
        let everything = (0, usize::MAX);
        let keep = match scope {
            _ if !m.exe_code => None,
            Scope::All => None,
            Scope::Cold => Some(hot.map_or(everything, |h| in_whole_folios(h, &m))),
            _ => Some(everything),
        };
        for (start, len) in outside((m.start, m.start + m.len), keep) {
            // SAFETY: MADV_PAGEOUT only drops pages the kernel can read
            // back from their file (these mappings are not writable), or
            // from swap for the private copies a relocated read-only
            // segment holds (without swap those stay); the mapping itself
            // and its contents are unchanged. An error (a locked mapping,
            // an old kernel) leaves the pages where they are.
            unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_PAGEOUT) };
        }
    }
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
    Some((before, resident_kib()?))
}

/// The largest folio the page cache makes on x86-64 (a PMD's 2 MiB).
const FOLIO: usize = 2 << 20;

/// `range` widened to whole `FOLIO`s of the file that `m` maps, when it
/// lies in `m` (else as it is). Handing back part of a large folio splits
/// it, and the exact hot range split every folio it lies in: with it, gRPC
/// took a few percent more CPU per request (median ratio 1.04 and 1.07
/// over 12 rounds); kept whole, none (0.93; `/score` 1.005), for about
/// 1-2 MiB more resident code.
fn in_whole_folios((a, b): (usize, usize), m: &Mapping) -> (usize, usize) {
    if a < m.start || b > m.start + m.len {
        return (a, b);
    }
    // An address less its offset into the folio of the file it maps.
    let down = |x: usize| x - (x - m.start + m.offset) % FOLIO;
    (down(a), down(b + FOLIO - 1))
}

/// (start, length) of the parts of `[start, end)` outside `keep`.
fn outside((start, end): (usize, usize), keep: Option<(usize, usize)>) -> Vec<(usize, usize)> {
    let Some((ks, ke)) = keep else { return vec![(start, end - start)] };
    let mut parts = Vec::new();
    if start < ks.min(end) {
        parts.push((start, ks.min(end) - start));
    }
    if ke.max(start) < end {
        parts.push((ke.max(start), end - ke.max(start)));
    }
    parts
}

/// A file mapping of the process that is not writable.
#[derive(Debug, PartialEq, Eq)]
struct Mapping {
    start: usize,
    len: usize,
    /// Where in the file it starts.
    offset: usize,
    /// Whether it is the executable's code.
    exe_code: bool,
}

/// Each mapping in a /proc/PID/maps text that is backed by a file and not
/// writable; `exe` is the executable's path.
fn read_only_files(maps: &str, exe: Option<&str>) -> Vec<Mapping> {
    maps.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let range = f.next()?;
            let perms = f.next()?.as_bytes();
            let offset = usize::from_str_radix(f.next()?, 16).ok()?;
            let path = f.nth(2)?;
            if !path.starts_with('/') || perms.get(1) != Some(&b'-') {
                return None;
            }
            let exe_code = perms.get(2) == Some(&b'x') && Some(path) == exe;
            let (a, b) = range.split_once('-')?;
            let (a, b) = (usize::from_str_radix(a, 16).ok()?, usize::from_str_radix(b, 16).ok()?);
            Some(Mapping {
                start: a,
                len: b.checked_sub(a)?,
                offset,
                exe_code,
            })
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
        let m = |start, len, offset, exe_code| Mapping {
            start,
            len,
            offset,
            exe_code,
        };
        assert_eq!(
            read_only_files(maps, Some("/usr/bin/wasmscore")),
            vec![
                m(0x5600a0000000, 0x100000, 0, false),
                m(0x5600a0100000, 0x300000, 0x100000, true),
                m(0x7f0000010000, 0x10000, 0, false)
            ]
        );
        assert!(read_only_files(maps, None).iter().all(|m| !m.exe_code));
    }

    #[test]
    fn the_hot_range_is_kept_in_whole_folios_of_the_file() {
        // The code at 0x5600a0b2d000 is 0x1000 past its file offset.
        let text = Mapping {
            start: 0x5600a0001000,
            len: 0x2000000,
            offset: 0,
            exe_code: true,
        };
        assert_eq!(
            in_whole_folios((0x5600a0b2d000, 0x5600a0cdd000), &text),
            (0x5600a0a01000, 0x5600a0e01000)
        );
        // Already whole: unchanged.
        assert_eq!(
            in_whole_folios((0x5600a0201000, 0x5600a0401000), &text),
            (0x5600a0201000, 0x5600a0401000)
        );
        // A range that lies in another mapping: unchanged.
        assert_eq!(in_whole_folios((0x1000, 0x5000), &text), (0x1000, 0x5000));
    }

    #[test]
    fn the_code_outside_the_kept_range_goes() {
        assert_eq!(outside((0x1000, 0x9000), None), vec![(0x1000, 0x8000)]);
        assert_eq!(outside((0x1000, 0x9000), Some((0, usize::MAX))), vec![]);
        assert_eq!(
            outside((0x1000, 0x9000), Some((0x3000, 0x5000))),
            vec![(0x1000, 0x2000), (0x5000, 0x4000)]
        );
        assert_eq!(outside((0x1000, 0x9000), Some((0x1000, 0x5000))), vec![(0x5000, 0x4000)]);
        // A range that lies in another mapping keeps nothing here.
        assert_eq!(outside((0x1000, 0x9000), Some((0xa000, 0xb000))), vec![(0x1000, 0x8000)]);
        assert_eq!(outside((0x5000, 0x9000), Some((0x1000, 0x3000))), vec![(0x5000, 0x4000)]);
    }

    #[test]
    fn the_scope_is_the_cold_code_unless_asked() {
        assert_eq!(parse_scope(None), Scope::Cold);
        assert_eq!(parse_scope(Some("libraries")), Scope::Libraries);
        assert_eq!(parse_scope(Some("0")), Scope::Off);
        assert_eq!(parse_scope(Some("all")), Scope::All);
        assert_eq!(parse_scope(Some("everything")), Scope::Cold);
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
