//! The wasmtime engine, configured once per process.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::bindings::ScorerPre;
use crate::host::HostState;
use crate::{cache, EngineError};

/// How often the epoch advances. A call's deadline is counted in these ticks,
/// so a timeout fires at most one tick late; 2 ms keeps that small while the
/// ticker thread stays cheap.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// Largest table an instance may have: CPython's function table has tens of
/// thousands of entries. Used for the pooling slots and the store limiter alike.
pub const MAX_TABLE_ELEMENTS: usize = 200_000;

/// Engine-wide settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where compiled artifacts are kept.
    pub cache_dir: PathBuf,
    /// Instances the pooling allocator keeps slots for, across all versions.
    /// Each replica is one instance; 1000 covers the densest deployments we
    /// plan for on one machine while the reserved address space stays far below
    /// the 128 TiB a process has.
    pub max_instances: u32,
    /// Largest linear memory any instance may have. Per-version limits
    /// (`memory_gb`) are enforced below this by the store's limiter.
    pub max_memory_bytes: u64,
    /// Compile in a child process: this executable, run as
    /// `EXE compile-component COMPONENT --cache-dir DIR`, compiles with the
    /// same engine settings into the compile cache and exits. Cranelift's
    /// code and its allocations (hundreds of MB for a CPython component) then
    /// never stay in the serving process, and a compiler crash fails the
    /// deploy, not the server. `None` compiles in this process.
    pub compiler: Option<PathBuf>,
}

impl EngineConfig {
    pub fn new(cache_dir: PathBuf) -> Self {
        EngineConfig {
            cache_dir,
            max_instances: 1000,
            max_memory_bytes: 4 << 30,
            compiler: None,
        }
    }

    /// Compiles in a child process running `exe` (see `compiler`).
    pub fn with_compiler(mut self, exe: PathBuf) -> Self {
        self.compiler = Some(exe);
        self
    }
}

/// How a component got loaded, for logs and benchmarks.
#[derive(Debug, Clone, Copy)]
pub struct LoadInfo {
    pub from_cache: bool,
    pub elapsed: Duration,
}

/// The process's wasmtime engine, linker and epoch ticker.
pub struct ScoringEngine {
    engine: Engine,
    linker: Linker<HostState>,
    cache_dir: PathBuf,
    compiler: Option<PathBuf>,
    stop_ticker: Arc<AtomicBool>,
}

/// The wasmtime settings every engine of this process family uses: a child
/// compiler makes artifacts the serving process can load only if they match.
fn wasmtime_config(cfg: &EngineConfig) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.parallel_compilation(true);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(cfg.max_instances);
    // componentize-py components hold several core modules, memories and
    // tables (CPython, libc, the bindings); these bounds fit them with room.
    pool.total_core_instances(cfg.max_instances * 16);
    pool.total_memories(cfg.max_instances * 4);
    pool.total_tables(cfg.max_instances * 8);
    pool.max_core_instances_per_component(32);
    pool.max_memories_per_component(8);
    pool.max_tables_per_component(16);
    pool.max_memory_size(cfg.max_memory_bytes as usize);
    pool.table_elements(MAX_TABLE_ELEMENTS);
    pool.max_component_instance_size(1 << 20);
    pool.max_core_instance_size(1 << 20);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

impl ScoringEngine {
    pub fn new(cfg: EngineConfig) -> Result<Self, EngineError> {
        let engine = Engine::new(&wasmtime_config(&cfg)).map_err(|e| EngineError::Config(format!("{e:#}")))?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| EngineError::Config(format!("{e:#}")))?;
        crate::bindings::Scorer::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| EngineError::Config(format!("{e:#}")))?;

        let stop_ticker = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = stop_ticker.clone();
            std::thread::Builder::new()
                .name("epoch-ticker".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| EngineError::Config(e.to_string()))?;
        }
        Ok(ScoringEngine {
            engine,
            linker,
            cache_dir: cfg.cache_dir,
            compiler: cfg.compiler,
            stop_ticker,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles a component (or loads it from the cache) and pre-instantiates
    /// it against our imports.
    pub fn load(&self, bytes: &[u8]) -> Result<(ScorerPre<HostState>, LoadInfo), EngineError> {
        let start = Instant::now();
        let key = cache::cache_key(&self.engine, bytes);
        let path = cache::artifact_path(&self.cache_dir, &key);
        let (component, from_cache) = match cache::load(&self.engine, &path) {
            Some(c) => (c, true),
            None => match &self.compiler {
                Some(exe) => {
                    compile_in_child(exe, &self.cache_dir, &key, bytes)?;
                    let c = cache::load(&self.engine, &path).ok_or_else(|| EngineError::Cache {
                        path: path.display().to_string(),
                        message: "the compiler process left no usable artifact".into(),
                    })?;
                    (c, false)
                }
                None => {
                    // Validate and compile; the serialized form is what we keep.
                    let artifact = self
                        .engine
                        .precompile_component(bytes)
                        .map_err(|e| EngineError::InvalidComponent(format!("{e:#}")))?;
                    cache::store(&path, &artifact)?;
                    // SAFETY: `artifact` was produced by this engine just now.
                    let c = unsafe { Component::deserialize(&self.engine, &artifact) }
                        .map_err(|e| EngineError::InvalidComponent(format!("{e:#}")))?;
                    (c, false)
                }
            },
        };
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| EngineError::Link(format!("{e:#}")))?;
        let pre = ScorerPre::new(pre).map_err(|e| EngineError::Link(format!("{e:#}")))?;
        Ok((
            pre,
            LoadInfo {
                from_cache,
                elapsed: start.elapsed(),
            },
        ))
    }
}

/// Exit status of `compile-component` for a component that does not
/// validate or compile (the deploy's fault, not the machine's).
pub const COMPILE_INVALID_EXIT: i32 = 3;

/// What `EXE compile-component` runs: compiles `component` with the
/// engine settings of `cfg` into `cfg.cache_dir` under the key the serving
/// process computes, and returns the artifact's path.
pub fn compile_to_cache(cfg: &EngineConfig, component: &[u8]) -> Result<PathBuf, EngineError> {
    let engine = Engine::new(&wasmtime_config(cfg)).map_err(|e| EngineError::Config(format!("{e:#}")))?;
    let path = cache::artifact_path(&cfg.cache_dir, &cache::cache_key(&engine, component));
    let artifact = engine
        .precompile_component(component)
        .map_err(|e| EngineError::InvalidComponent(format!("{e:#}")))?;
    cache::store(&path, &artifact)?;
    Ok(path)
}

/// Runs the compiler child on `bytes` (written next to the cache entry) and
/// turns its exit into an error: an invalid component, or a compiler that
/// failed or crashed.
fn compile_in_child(exe: &std::path::Path, cache_dir: &std::path::Path, key: &str, bytes: &[u8]) -> Result<(), EngineError> {
    let err = |message: String| EngineError::Cache {
        path: cache_dir.display().to_string(),
        message,
    };
    std::fs::create_dir_all(cache_dir).map_err(|e| err(e.to_string()))?;
    let input = crate::cache::write_new(cache_dir, key, "component", bytes).map_err(|e| err(e.to_string()))?;
    let out = std::process::Command::new(exe)
        .arg("compile-component")
        .arg(&input)
        .arg("--cache-dir")
        .arg(cache_dir)
        .stdin(std::process::Stdio::null())
        .output();
    let _ = std::fs::remove_file(&input);
    let out = out.map_err(|e| err(format!("starting the compiler process {}: {e}", exe.display())))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let message = stderr.trim().lines().last().unwrap_or("").to_string();
    match out.status.code() {
        Some(COMPILE_INVALID_EXIT) => Err(EngineError::InvalidComponent(message)),
        Some(code) => Err(err(format!("the compiler process failed (exit {code}): {message}"))),
        None => Err(err(format!("the compiler process was killed ({}): {message}", out.status))),
    }
}

impl Drop for ScoringEngine {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compiler_process_that_fails_fails_the_load_with_its_message() {
        let dir = tempfile::tempdir().unwrap();
        let engine = ScoringEngine::new(EngineConfig::new(dir.path().to_path_buf()).with_compiler(PathBuf::from("/bin/false"))).unwrap();
        let err = engine.load(b"\0asm\x0d\0\x01\0").err().expect("the load fails");
        assert!(
            matches!(&err, EngineError::Cache { message, .. } if message.contains("exit 1")),
            "{err}"
        );
        // Nothing is left behind in the cache directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
