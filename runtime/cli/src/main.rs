//! The `wasmscore` binary: parse the command line, resolve it, call `run`.
//! The only crate that uses `anyhow`; errors print their whole cause chain.

mod artifact;
mod bench;
mod build;
mod client;
mod cluster;
mod cmd;
mod manage;
mod node;
mod router;
mod up;

use clap::Parser;

/// mimalloc instead of glibc's malloc for the Rust side (ONNX Runtime keeps
/// glibc's): a request's buffers are made on a tokio worker and freed on an
/// instance thread and back, and glibc takes the other arena's lock for
/// each such free once the thread's cache is full; mimalloc frees across
/// threads without a lock. Measured side by side in BENCHMARKS.md ("the
/// allocator"): more req/s on `/score` and gRPC, and about 105 KiB more
/// resident per instance thread (each thread's heap has its own pages).
/// `no_thp`: its arenas are not marked for transparent huge pages, which
/// cost 20 MiB more.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = cmd::Cli::parse();
    match cmd::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            std::process::ExitCode::FAILURE
        }
    }
}
