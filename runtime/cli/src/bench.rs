//! `wasmscore bench`: the request path measured piece by piece, in one run.
//! HTTP load figures come from `bench/run.sh` with wrk (a real load generator).

use std::path::PathBuf;

use anyhow::Result;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// The iris ONNX model.
    #[arg(long)]
    pub model: PathBuf,
    /// Scoring modules to measure (.wasm).
    #[arg(long = "module")]
    pub modules: Vec<PathBuf>,
    /// Iterations per measurement.
    #[arg(long, default_value_t = 20000)]
    pub iterations: u32,
}

pub fn run(_args: BenchArgs) -> Result<()> {
    anyhow::bail!("bench: filled in below")
}
