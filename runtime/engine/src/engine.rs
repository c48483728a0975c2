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
}

impl EngineConfig {
    pub fn new(cache_dir: PathBuf) -> Self {
        EngineConfig {
            cache_dir,
            max_instances: 1000,
            max_memory_bytes: 4 << 30,
        }
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
    stop_ticker: Arc<AtomicBool>,
}

impl ScoringEngine {
    pub fn new(cfg: EngineConfig) -> Result<Self, EngineError> {
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
        let engine = Engine::new(&config).map_err(|e| EngineError::Config(format!("{e:#}")))?;

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

impl Drop for ScoringEngine {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}
