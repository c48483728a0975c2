//! The `wasmscore` binary: parse the command line, resolve it, call `run`.
//! The only crate that uses `anyhow`; errors print their whole cause chain.

mod alloc;
mod artifact;
mod bench;
mod build;
mod client;
mod cluster;
mod cmd;
mod credentials;
mod manage;
mod node;
mod router;
mod up;

use clap::Parser;

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
