//! The process's allocators: mimalloc for the Rust side, glibc's malloc for
//! ONNX Runtime's C++; and what makes both give freed memory back to the
//! kernel, so that one big request does not leave the process tens of MiB
//! larger for good (BENCHMARKS.md, "one big request").

/// mimalloc instead of glibc's malloc: a request's buffers are made on a
/// tokio worker and freed on an instance thread and back, and glibc takes
/// the other arena's lock for each such free once the thread's cache is
/// full; mimalloc frees across threads without a lock. Measured side by
/// side in BENCHMARKS.md ("the allocator"): more req/s on `/score` and
/// gRPC, and about 105 KiB more resident per instance thread (each
/// thread's heap has its own pages). `no_thp`: its arenas are not marked
/// for transparent huge pages, which cost 20 MiB more.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How often the purger runs: mimalloc returns a freed page to the kernel
/// once its purge delay (1 s) has passed, and it checks only when a thread
/// frees a page or allocates on its slow path; this checks when no thread
/// does.
const EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// glibc's malloc serves an allocation of this size or more with its own
/// mapping, unmapped when freed. Its default threshold starts at 128 KiB
/// and rises to the largest block freed (up to 32 MiB), after which big
/// tensors are carved from its heaps and stay resident when freed.
/// Setting it fixes it. Smaller blocks, a small model's tensors, stay in
/// the heaps, reused from run to run.
#[cfg(target_env = "gnu")]
const MMAP_AT: libc::c_int = 1 << 20;

/// How much free memory at the top of a glibc heap it keeps rather than
/// returning: twice `MMAP_AT`, glibc's own rule. Fixing the mmap threshold
/// would leave it at 128 KiB, and then memory a run frees at a heap's top
/// is handed back and faulted in again every run (with ONNX Runtime's
/// arena off, which puts each run's tensors on these heaps: 3% more CPU
/// per request of the MLP of bench/batching.sh, and 6% less with this).
#[cfg(target_env = "gnu")]
const TRIM_AT: libc::c_int = 2 * MMAP_AT;

/// A server command calls this once: freed memory goes back to the
/// kernel, from both allocators, even when no request follows.
pub(crate) fn give_back_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets glibc's malloc parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_AT);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_AT);
    }
    start_purger();
}

/// Starts the purger: every `EVERY`, mimalloc's freed pages whose delay has
/// passed go back to the kernel. Without it the memory freed at the end of
/// a burst or of a big request stays resident until the next one.
fn start_purger() {
    let started = std::thread::Builder::new().name("mi-purge".into()).spawn(|| {
        // SAFETY: sets up this thread's mimalloc heap, which mi_collect
        // needs (it does nothing on a thread that never allocated).
        unsafe { libmimalloc_sys::mi_thread_init() };
        loop {
            std::thread::sleep(EVERY);
            // SAFETY: frees this thread's empty pages and purges, process
            // wide, the freed ranges whose delay has passed (a clock read
            // when none has), under mimalloc's own locks.
            unsafe { libmimalloc_sys::mi_collect(false) };
        }
    });
    if let Err(e) = started {
        tracing::warn!(error = %e, "no thread to purge freed memory; it stays resident until the next allocation");
    }
}
