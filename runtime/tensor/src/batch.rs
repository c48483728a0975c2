//! Transparent dynamic batching: concurrent runs of one model, from the
//! replicas of one version, merged into one run along the first dimension
//! and split back, invisible to the modules.
//!
//! No thread of its own: a call that finds a lane free (one per CPU core,
//! since a run uses one core) leads a batch. It waits up to `max_queue_delay` (never past its own deadline) for
//! more calls with the same input names, dtypes and trailing dimensions and
//! the same outputs, takes up to `max_batch_size` rows of them in arrival
//! order, runs the merged inputs and hands each call its rows. Calls that
//! arrive while every lane runs a batch wait; when one ends, one of them
//! leads the next batch with everything that waited (delay 0 merges only that, as
//! Triton's batcher with no delay). A merged run that fails, or whose
//! outputs do not split into the calls' rows, is run again call by call.
//!
//! `probe` decides at deploy whether a model qualifies: every input and
//! output has a dynamic first dimension, and rows are independent (x1, x2
//! and x1+x2 give the same rows).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::device::{Model, TensorInfo, Value};
use crate::{DType, Tensor, TensorData, TensorError};

/// A version's `batching` setting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchSettings {
    pub max_batch_size: usize,
    pub max_queue_delay: Duration,
}

/// What a batched model did, for `show` and `/metrics`.
#[derive(Debug, Default)]
pub struct BatchStats {
    /// Runs of the model for batched calls (a batch of one counts).
    pub batches: AtomicU64,
    /// Calls answered from those runs.
    pub calls: AtomicU64,
    pub rows: AtomicU64,
    /// Summed over calls: arrival until their batch started to run.
    pub waited_ns: AtomicU64,
    /// Merged runs that failed or did not split, re-run call by call.
    pub fallbacks: AtomicU64,
    /// Calls that could not merge (no rows, more rows than a batch) and ran alone.
    pub alone: AtomicU64,
    /// Calls whose scoring deadline passed while they waited: not run.
    pub expired: AtomicU64,
}

impl BatchStats {
    /// One run for `calls` calls of `rows` rows that waited `waited_ns` in all.
    fn record(&self, calls: usize, rows: usize, waited_ns: u64) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.calls.fetch_add(calls as u64, Ordering::Relaxed);
        self.rows.fetch_add(rows as u64, Ordering::Relaxed);
        self.waited_ns.fetch_add(waited_ns, Ordering::Relaxed);
    }

    /// Calls per run, 0 before the first.
    pub fn mean_batch_size(&self) -> f64 {
        let b = self.batches.load(Ordering::Relaxed);
        if b == 0 {
            0.0
        } else {
            self.calls.load(Ordering::Relaxed) as f64 / b as f64
        }
    }

    /// Mean time a call waited for its batch, in µs.
    pub fn mean_wait_us(&self) -> f64 {
        let c = self.calls.load(Ordering::Relaxed);
        if c == 0 {
            0.0
        } else {
            self.waited_ns.load(Ordering::Relaxed) as f64 / c as f64 / 1000.0
        }
    }
}

type Outputs = Result<Vec<(String, Tensor)>, TensorError>;

/// Calls merge only when this is equal: input names, dtypes and trailing
/// dimensions, and the outputs asked for.
#[derive(PartialEq)]
struct Key {
    inputs: Vec<(String, DType, Vec<u64>)>,
    outputs: Vec<String>,
}

struct Call {
    key: Key,
    rows: usize,
    inputs: Vec<(String, Tensor)>,
    arrived: Instant,
    result: Mutex<Option<Outputs>>,
    /// Its thread waits here (with the queue's lock) for its result or its
    /// turn to lead: woken one by one, never all at once.
    wake: Condvar,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Arc<Call>>,
    /// Calls leading a batch (waiting for more, or running it).
    leading: usize,
}

/// A model whose concurrent runs are merged. One per version and model: the
/// version's replicas share it.
pub struct Batched {
    inner: Arc<dyn Model>,
    settings: BatchSettings,
    /// Batches that may run at once.
    lanes: usize,
    queue: Mutex<Queue>,
    /// Leaders wait here for more calls.
    arrived: Condvar,
    stats: Arc<BatchStats>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Batched {
    /// `lanes`: batches that may run at once (the cores a model's runs can use).
    pub fn new(inner: Arc<dyn Model>, settings: BatchSettings, lanes: usize) -> Self {
        Batched {
            inner,
            settings,
            lanes: lanes.max(1),
            queue: Mutex::new(Queue::default()),
            arrived: Condvar::new(),
            stats: Arc::new(BatchStats::default()),
        }
    }

    pub fn stats(&self) -> &Arc<BatchStats> {
        &self.stats
    }

    pub fn settings(&self) -> BatchSettings {
        self.settings
    }

    /// Runs one call through the batcher; `deadline` bounds its wait.
    fn submit(&self, inputs: &[(&str, &Tensor)], outputs: &[&str], deadline: Option<Instant>) -> Outputs {
        let rows = inputs.first().and_then(|(_, t)| t.shape().first().copied()).unwrap_or(0) as usize;
        let mergeable =
            rows > 0 && rows <= self.settings.max_batch_size && inputs.iter().all(|(_, t)| t.shape().first() == Some(&(rows as u64)));
        if !mergeable {
            self.stats.alone.fetch_add(1, Ordering::Relaxed);
            return self.inner.run(inputs, outputs);
        }
        // Nothing waits, a lane is free and no delay is asked: a batch of
        // one, run on the caller's own tensors with nothing copied.
        if self.settings.max_queue_delay.is_zero() {
            let mut q = lock(&self.queue);
            if q.waiting.is_empty() && q.leading < self.lanes {
                q.leading += 1;
                drop(q);
                self.stats.record(1, rows, 0);
                let out = self.inner.run(inputs, outputs);
                let mut q = lock(&self.queue);
                q.leading -= 1;
                if let Some(next) = q.waiting.front() {
                    next.wake.notify_one();
                }
                return out;
            }
        }
        let call = Arc::new(Call {
            key: Key {
                inputs: inputs
                    .iter()
                    .map(|(n, t)| (n.to_string(), t.dtype(), t.shape()[1..].to_vec()))
                    .collect(),
                outputs: outputs.iter().map(|s| s.to_string()).collect(),
            },
            rows,
            inputs: inputs.iter().map(|(n, t)| (n.to_string(), (*t).clone())).collect(),
            arrived: Instant::now(),
            result: Mutex::new(None),
            wake: Condvar::new(),
        });
        let mut q = lock(&self.queue);
        q.waiting.push_back(call.clone());
        // Every gathering leader looks: the one this call completes may not
        // be the one notify_one would wake (leaders of other keys wait too).
        self.arrived.notify_all();
        loop {
            if let Some(r) = lock(&call.result).take() {
                return r;
            }
            // Still waiting (not taken by another lane's batch) and a lane
            // is free: it leads.
            if q.leading < self.lanes && q.waiting.iter().any(|c| Arc::ptr_eq(c, &call)) {
                q.leading += 1;
                q = self.gather(q, &call.key, deadline);
                let batch = take(&mut q, &call.key, self.settings.max_batch_size);
                // Calls left behind (another key, or past the batch's rows)
                // lead in a free lane, if there is one.
                if q.leading < self.lanes {
                    if let Some(next) = q.waiting.front() {
                        next.wake.notify_one();
                    }
                }
                drop(q);
                self.run_batch(&batch);
                q = lock(&self.queue);
                q.leading -= 1;
                for c in &batch {
                    c.wake.notify_one();
                }
                // The lane is free: the longest waiting call leads next.
                if let Some(next) = q.waiting.front() {
                    next.wake.notify_one();
                }
                continue;
            }
            let now = Instant::now();
            q = match deadline {
                // Past its deadline and still waiting: it leaves the queue
                // unrun: the module's call fails, saying so. Running it now
                // would only take a core from batches still in time.
                Some(d) if now >= d => match q.waiting.iter().position(|c| Arc::ptr_eq(c, &call)) {
                    Some(i) => {
                        q.waiting.remove(i);
                        drop(q);
                        self.stats.expired.fetch_add(1, Ordering::Relaxed);
                        return Err(TensorError::failed("the scoring deadline passed while the call waited for a batch"));
                    }
                    // Taken by the running batch: its answer is coming.
                    None => call.wake.wait(q).unwrap_or_else(|p| p.into_inner()),
                },
                Some(d) => call.wake.wait_timeout(q, d - now).unwrap_or_else(|p| p.into_inner()).0,
                None => call.wake.wait(q).unwrap_or_else(|p| p.into_inner()),
            };
        }
    }

    /// The leader waits for a full batch, at most the queue delay and never
    /// past its own deadline.
    fn gather<'a>(&'a self, mut q: MutexGuard<'a, Queue>, key: &Key, deadline: Option<Instant>) -> MutexGuard<'a, Queue> {
        let mut until = Instant::now() + self.settings.max_queue_delay;
        if let Some(d) = deadline {
            until = until.min(d);
        }
        loop {
            let rows: usize = q.waiting.iter().filter(|c| c.key == *key).map(|c| c.rows).sum();
            let now = Instant::now();
            if rows >= self.settings.max_batch_size || now >= until {
                return q;
            }
            q = self.arrived.wait_timeout(q, until - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Runs a batch and answers each of its calls.
    fn run_batch(&self, batch: &[Arc<Call>]) {
        if batch.is_empty() {
            return;
        }
        let started = Instant::now();
        let st = &self.stats;
        let waited = |c: &Call| started.saturating_duration_since(c.arrived).as_nanos() as u64;
        let outputs: Vec<&str> = batch[0].key.outputs.iter().map(String::as_str).collect();
        if batch.len() > 1 {
            if let Some(split) = self.run_merged(batch, &outputs) {
                st.record(
                    batch.len(),
                    batch.iter().map(|c| c.rows).sum(),
                    batch.iter().map(|c| waited(c)).sum(),
                );
                for (call, out) in batch.iter().zip(split) {
                    *lock(&call.result) = Some(Ok(out));
                }
                return;
            }
            st.fallbacks.fetch_add(1, Ordering::Relaxed);
        }
        // Call by call: each is a batch of one in the figures, and each
        // caller goes on as soon as its own run is done (woken under the
        // queue's lock, which it holds when it looks for its result).
        for call in batch {
            st.record(1, call.rows, waited(call));
            let inputs: Vec<(&str, &Tensor)> = call.inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
            *lock(&call.result) = Some(self.inner.run(&inputs, &outputs));
            let _q = lock(&self.queue);
            call.wake.notify_one();
        }
    }

    /// One run for the whole batch, split per call; None when the run
    /// fails or an output does not have one row per input row.
    fn run_merged(&self, batch: &[Arc<Call>], outputs: &[&str]) -> Option<Vec<Vec<(String, Tensor)>>> {
        let mut merged = Vec::with_capacity(batch[0].inputs.len());
        for (i, (name, _)) in batch[0].inputs.iter().enumerate() {
            let parts: Vec<&Tensor> = batch.iter().map(|c| &c.inputs[i].1).collect();
            merged.push((name.as_str(), concat_rows(&parts).ok()?));
        }
        let refs: Vec<(&str, &Tensor)> = merged.iter().map(|(n, t)| (*n, t)).collect();
        let out = self.inner.run(&refs, outputs).ok()?;
        let rows: Vec<usize> = batch.iter().map(|c| c.rows).collect();
        let mut per_call: Vec<Vec<(String, Tensor)>> = batch.iter().map(|_| Vec::with_capacity(out.len())).collect();
        for (name, t) in out {
            for (i, part) in split_rows(&t, &rows)?.into_iter().enumerate() {
                per_call[i].push((name.clone(), part));
            }
        }
        Some(per_call)
    }
}

/// Takes the waiting calls with `key`, in arrival order, up to `max_rows`.
fn take(q: &mut Queue, key: &Key, max_rows: usize) -> Vec<Arc<Call>> {
    let mut batch = Vec::new();
    let mut rows = 0;
    let mut i = 0;
    while i < q.waiting.len() {
        let c = &q.waiting[i];
        if c.key == *key && rows + c.rows <= max_rows {
            rows += c.rows;
            batch.extend(q.waiting.remove(i));
        } else {
            i += 1;
        }
    }
    batch
}

impl Model for Batched {
    fn inputs(&self) -> &[TensorInfo] {
        self.inner.inputs()
    }

    fn outputs(&self) -> &[TensorInfo] {
        self.inner.outputs()
    }

    fn run(&self, inputs: &[(&str, &Tensor)], outputs: &[&str]) -> Outputs {
        self.submit(inputs, outputs, None)
    }

    fn run_values_by(
        &self,
        inputs: &[(&str, &Value)],
        outputs: &[&str],
        deadline: Option<Instant>,
    ) -> Result<Vec<(String, Value)>, TensorError> {
        crate::device::on_host(inputs, |refs| self.submit(refs, outputs, deadline))
    }
}

/// Stacks tensors of one dtype and trailing shape along the first dimension.
pub fn concat_rows(parts: &[&Tensor]) -> Result<Tensor, TensorError> {
    let first = parts.first().ok_or_else(|| TensorError::failed("nothing to concatenate"))?;
    let mut shape = first.shape().to_vec();
    if shape.is_empty() || parts.iter().any(|t| t.shape().len() != shape.len() || t.shape()[1..] != shape[1..]) {
        return Err(TensorError::failed("tensors to concatenate differ in shape"));
    }
    shape[0] = parts.iter().map(|t| t.shape()[0]).sum();
    if parts.iter().any(|t| matches!(t.data(), TensorData::Bytes(_))) {
        // Text and bytes that are not text are one dtype: stack them as bytes.
        let mut out = Vec::with_capacity(parts.iter().map(|t| t.len()).sum());
        for t in parts {
            let elements = t
                .data()
                .byte_strings()
                .ok_or_else(|| TensorError::failed("tensors to concatenate differ in dtype"))?;
            out.extend(elements.into_iter().map(<[u8]>::to_vec));
        }
        return Tensor::new(shape, TensorData::Bytes(out));
    }
    macro_rules! cat {
        ($($v:ident),*) => {
            match first.data() {
                $(TensorData::$v(_) => {
                    let mut out = Vec::with_capacity(parts.iter().map(|t| t.len()).sum());
                    for t in parts {
                        match t.data() {
                            TensorData::$v(x) => out.extend_from_slice(x),
                            _ => return Err(TensorError::failed("tensors to concatenate differ in dtype")),
                        }
                    }
                    TensorData::$v(out)
                })*
            }
        };
    }
    let data = cat!(Float32, Float64, Float16, Bfloat16, Int8, Int16, Int32, Int64, Uint8, Uint16, Uint32, Uint64, Bool, String, Bytes);
    Tensor::new(shape, data)
}

/// Cuts a tensor along the first dimension into parts of `rows` rows; None
/// when its first dimension is not their sum.
pub fn split_rows(t: &Tensor, rows: &[usize]) -> Option<Vec<Tensor>> {
    let total: usize = rows.iter().sum();
    if t.shape().first().copied() != Some(total as u64) || total == 0 {
        return None;
    }
    let per_row = t.len() / total;
    let mut out = Vec::with_capacity(rows.len());
    let mut at = 0;
    for &r in rows {
        let mut shape = t.shape().to_vec();
        shape[0] = r as u64;
        let range = at * per_row..(at + r) * per_row;
        macro_rules! cut {
            ($($v:ident),*) => {
                match t.data() {
                    $(TensorData::$v(x) => TensorData::$v(x[range].to_vec()),)*
                    // A part may be all text: it holds its elements as `String` then.
                    TensorData::Bytes(x) => TensorData::from_byte_strings(x[range].to_vec()),
                }
            };
        }
        let data = cut!(Float32, Float64, Float16, Bfloat16, Int8, Int16, Int32, Int64, Uint8, Uint16, Uint32, Uint64, Bool, String);
        out.push(Tensor::new(shape, data).ok()?);
        at += r;
    }
    Some(out)
}

/// Whether `model` may be batched: every input and output has a dynamic
/// first dimension, and its rows are independent: two random rows run
/// alone and stacked give the same outputs. Err says why not.
pub fn probe(model: &dyn Model) -> Result<(), String> {
    for (kind, infos) in [("input", model.inputs()), ("output", model.outputs())] {
        for i in infos {
            match i.shape.first() {
                Some(-1) => {}
                Some(d) => {
                    return Err(format!(
                        "{kind} {} has a fixed first dimension ({d}), not a batch dimension",
                        i.name
                    ))
                }
                None => return Err(format!("{kind} {} is a scalar: no batch dimension", i.name)),
            }
        }
    }
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let row = |seed: &mut u64| -> Result<Vec<(String, Tensor)>, String> {
        model.inputs().iter().map(|i| Ok((i.name.clone(), random_row(i, seed)?))).collect()
    };
    let x1 = row(&mut seed)?;
    // The second row differs from the first in every input: two equal
    // rows would hide a coupling (x minus the batch's mean, say).
    let x2 = row(&mut seed)?
        .into_iter()
        .zip(&x1)
        .map(|((n, t), (_, first))| Ok((n, unlike(first, t)?)))
        .collect::<Result<Vec<_>, String>>()?;
    let both: Vec<(String, Tensor)> = x1
        .iter()
        .zip(&x2)
        .map(|((n, a), (_, b))| Ok((n.clone(), concat_rows(&[a, b]).map_err(|e| e.to_string())?)))
        .collect::<Result<_, String>>()?;
    let run = |x: &[(String, Tensor)], what: &str| {
        let refs: Vec<(&str, &Tensor)> = x.iter().map(|(n, t)| (n.as_str(), t)).collect();
        model.run(&refs, &[]).map_err(|e| format!("the probe's run on {what} failed: {e}"))
    };
    let (r1, r2, r12) = (run(&x1, "one row")?, run(&x2, "one row")?, run(&both, "two rows")?);
    for (name, t) in &r12 {
        let parts = split_rows(t, &[1, 1]).ok_or_else(|| {
            format!(
                "output {name} has shape {:?} for two input rows: not one row per input row",
                t.shape()
            )
        })?;
        for (part, alone) in parts.iter().zip([&r1, &r2]) {
            let alone = alone.iter().find(|(n, _)| n == name).map(|(_, t)| t);
            if !alone.is_some_and(|a| close(a, part)) {
                return Err(format!(
                    "output {name} changes when another row is in the batch: rows are not independent"
                ));
            }
        }
    }
    Ok(())
}

/// One row of plausible data for an input: dynamic dimensions other than
/// the first are 1; floats in [0, 1), integers in 0..3.
fn random_row(info: &TensorInfo, seed: &mut u64) -> Result<Tensor, String> {
    let mut shape: Vec<u64> = info.shape.iter().map(|&d| if d < 0 { 1 } else { d as u64 }).collect();
    shape[0] = 1;
    let n = shape.iter().product::<u64>() as usize;
    let mut next = || {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    };
    let data = match info.dtype {
        DType::Float32 => TensorData::Float32((0..n).map(|_| (next() % 10_000) as f32 / 10_000.0).collect()),
        DType::Float64 => TensorData::Float64((0..n).map(|_| (next() % 10_000) as f64 / 10_000.0).collect()),
        DType::Float16 => TensorData::Float16((0..n).map(|_| half::f16::from_f32((next() % 100) as f32 / 100.0)).collect()),
        DType::Bfloat16 => TensorData::Bfloat16((0..n).map(|_| half::bf16::from_f32((next() % 100) as f32 / 100.0)).collect()),
        DType::Int8 => TensorData::Int8((0..n).map(|_| (next() % 3) as i8).collect()),
        DType::Int16 => TensorData::Int16((0..n).map(|_| (next() % 3) as i16).collect()),
        DType::Int32 => TensorData::Int32((0..n).map(|_| (next() % 3) as i32).collect()),
        DType::Int64 => TensorData::Int64((0..n).map(|_| (next() % 3) as i64).collect()),
        DType::Uint8 => TensorData::Uint8((0..n).map(|_| (next() % 3) as u8).collect()),
        DType::Uint16 => TensorData::Uint16((0..n).map(|_| (next() % 3) as u16).collect()),
        DType::Uint32 => TensorData::Uint32((0..n).map(|_| (next() % 3) as u32).collect()),
        DType::Uint64 => TensorData::Uint64((0..n).map(|_| next() % 3).collect()),
        DType::Bool => TensorData::Bool((0..n).map(|_| next() % 2 == 0).collect()),
        DType::String => TensorData::String((0..n).map(|_| format!("w{}", next() % 3)).collect()),
    };
    Tensor::new(shape, data).map_err(|e| format!("input {}: {e}", info.name))
}

/// `t`, or `t` with its first element changed when it equals `first`.
fn unlike(first: &Tensor, t: Tensor) -> Result<Tensor, String> {
    if first.data() != t.data() {
        return Ok(t);
    }
    let mut data = t.data().clone();
    macro_rules! bump {
        ($($v:ident => $f:expr),*) => {
            match &mut data {
                $(TensorData::$v(v) => if let Some(x) = v.first_mut() { $f(x) },)*
            }
        };
    }
    bump!(
        Float32 => |x: &mut f32| *x += 0.5,
        Float64 => |x: &mut f64| *x += 0.5,
        Float16 => |x: &mut half::f16| *x = half::f16::from_f32(x.to_f32() + 0.5),
        Bfloat16 => |x: &mut half::bf16| *x = half::bf16::from_f32(x.to_f32() + 0.5),
        Int8 => |x: &mut i8| *x += 1,
        Int16 => |x: &mut i16| *x += 1,
        Int32 => |x: &mut i32| *x += 1,
        Int64 => |x: &mut i64| *x += 1,
        Uint8 => |x: &mut u8| *x += 1,
        Uint16 => |x: &mut u16| *x += 1,
        Uint32 => |x: &mut u32| *x += 1,
        Uint64 => |x: &mut u64| *x += 1,
        Bool => |x: &mut bool| *x = !*x,
        String => |x: &mut String| x.push('x'),
        Bytes => |x: &mut Vec<u8>| x.push(b'x')
    );
    Tensor::new(t.shape().to_vec(), data).map_err(|e| e.to_string())
}

/// Equal, with floats within a relative 1e-4 (a merged run may sum in
/// another order; 1e-2 for the 16-bit floats, which keep 3 and 2 digits).
fn close(a: &Tensor, b: &Tensor) -> bool {
    if a.shape() != b.shape() {
        return false;
    }
    let near = |x: f64, y: f64, tol: f64| (x - y).abs() <= tol * x.abs().max(y.abs()).max(1.0) || (x.is_nan() && y.is_nan());
    match (a.data(), b.data()) {
        (TensorData::Float32(x), TensorData::Float32(y)) => x.iter().zip(y).all(|(p, q)| near(*p as f64, *q as f64, 1e-4)),
        (TensorData::Float64(x), TensorData::Float64(y)) => x.iter().zip(y).all(|(p, q)| near(*p, *q, 1e-4)),
        (TensorData::Float16(x), TensorData::Float16(y)) => x.iter().zip(y).all(|(p, q)| near(p.to_f64(), q.to_f64(), 1e-2)),
        (TensorData::Bfloat16(x), TensorData::Bfloat16(y)) => x.iter().zip(y).all(|(p, q)| near(p.to_f64(), q.to_f64(), 1e-2)),
        (x, y) => x == y,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// y = 2x per row, or (rows_interact) y = x - mean over the batch; counts runs.
    struct Toy {
        io: Vec<TensorInfo>,
        rows_interact: bool,
        runs: AtomicU64,
        delay: Duration,
    }

    impl Toy {
        fn new(rows_interact: bool, delay: Duration) -> Self {
            let io = vec![TensorInfo {
                name: "x".into(),
                dtype: DType::Float32,
                shape: vec![-1, 2],
            }];
            Toy {
                io,
                rows_interact,
                runs: AtomicU64::new(0),
                delay,
            }
        }
    }

    impl Model for Toy {
        fn inputs(&self) -> &[TensorInfo] {
            &self.io
        }
        fn outputs(&self) -> &[TensorInfo] {
            &self.io
        }
        fn run(&self, inputs: &[(&str, &Tensor)], _: &[&str]) -> Outputs {
            self.runs.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(self.delay);
            let t = inputs[0].1;
            let TensorData::Float32(v) = t.data() else { unreachable!() };
            let mean = v.iter().sum::<f32>() / v.len() as f32;
            let out = v.iter().map(|x| if self.rows_interact { x - mean } else { 2.0 * x }).collect();
            Ok(vec![("x".into(), Tensor::new(t.shape().to_vec(), TensorData::Float32(out))?)])
        }
    }

    fn rows(n: u64, base: f32) -> Tensor {
        Tensor::new(vec![n, 2], TensorData::Float32((0..n * 2).map(|i| base + i as f32).collect())).unwrap()
    }

    #[test]
    fn concat_and_split_round_trip_every_dtype() {
        let a = Tensor::new(vec![1, 2], TensorData::Int64(vec![1, 2])).unwrap();
        let b = Tensor::new(vec![2, 2], TensorData::Int64(vec![3, 4, 5, 6])).unwrap();
        let ab = concat_rows(&[&a, &b]).unwrap();
        assert_eq!(ab.shape(), &[3, 2]);
        assert_eq!(split_rows(&ab, &[1, 2]).unwrap(), vec![a.clone(), b]);
        assert!(split_rows(&ab, &[1, 1]).is_none(), "rows must add up");
        let s = Tensor::new(vec![1], TensorData::String(vec!["x".into()])).unwrap();
        assert_eq!(concat_rows(&[&s, &s]).unwrap().shape(), &[2]);
        // Text and bytes that are not text stack as bytes, and split back
        // into text and bytes.
        let raw = Tensor::new(vec![1], TensorData::from_byte_strings(vec![vec![0xff, 0]])).unwrap();
        let both = concat_rows(&[&s, &raw]).unwrap();
        assert_eq!(both.data(), &TensorData::Bytes(vec![b"x".to_vec(), vec![0xff, 0]]));
        assert_eq!(split_rows(&both, &[1, 1]).unwrap(), vec![s.clone(), raw]);
        let f = Tensor::new(vec![1, 2], TensorData::Float32(vec![1.0, 2.0])).unwrap();
        assert!(concat_rows(&[&a, &f]).is_err(), "dtypes must match");
    }

    #[test]
    fn the_probe_takes_independent_rows_and_refuses_the_others() {
        assert_eq!(probe(&Toy::new(false, Duration::ZERO)), Ok(()));
        let err = probe(&Toy::new(true, Duration::ZERO)).unwrap_err();
        assert!(err.contains("rows are not independent"), "{err}");
        let mut fixed = Toy::new(false, Duration::ZERO);
        fixed.io[0].shape = vec![1, 2];
        assert!(probe(&fixed).unwrap_err().contains("fixed first dimension (1)"));
    }

    /// y = x + the batch's sum, on INT64 rows of two: coupled rows.
    struct SumsInts(Vec<TensorInfo>);

    impl Model for SumsInts {
        fn inputs(&self) -> &[TensorInfo] {
            &self.0
        }
        fn outputs(&self) -> &[TensorInfo] {
            &self.0
        }
        fn run(&self, inputs: &[(&str, &Tensor)], _: &[&str]) -> Outputs {
            let t = inputs[0].1;
            let TensorData::Int64(v) = t.data() else { unreachable!() };
            let sum: i64 = v.iter().sum();
            let out = v.iter().map(|x| x + sum).collect();
            Ok(vec![("ids".into(), Tensor::new(t.shape().to_vec(), TensorData::Int64(out))?)])
        }
    }

    /// Small integer rows from the probe's generator come out equal (all
    /// zeros); the second row is made to differ, so a coupling shows.
    #[test]
    fn the_probe_finds_coupled_rows_of_few_integers() {
        let io = vec![TensorInfo {
            name: "ids".into(),
            dtype: DType::Int64,
            shape: vec![-1, 2],
        }];
        let err = probe(&SumsInts(io)).unwrap_err();
        assert!(err.contains("rows are not independent"), "{err}");
    }

    #[test]
    fn concurrent_calls_merge_and_each_gets_its_own_rows() {
        for (lanes, calls, delay) in [(1, 8, 20), (2, 48, 0), (2, 48, 1)] {
            merge_and_check(lanes, calls, Duration::from_millis(delay));
        }
    }

    fn merge_and_check(lanes: usize, calls: usize, delay: Duration) {
        let toy = Arc::new(Toy::new(false, Duration::from_millis(5)));
        let b = Arc::new(Batched::new(
            toy.clone(),
            BatchSettings {
                max_batch_size: 8,
                max_queue_delay: delay,
            },
            lanes,
        ));
        let threads: Vec<_> = (0..calls)
            .map(|i| {
                let b = b.clone();
                std::thread::spawn(move || {
                    let x = rows(1 + i as u64 % 2, i as f32 * 10.0);
                    let out = b.run(&[("x", &x)], &[]).unwrap();
                    let TensorData::Float32(want) = x.data() else { unreachable!() };
                    let want: Vec<f32> = want.iter().map(|v| v * 2.0).collect();
                    assert_eq!(out[0].1.data(), &TensorData::Float32(want));
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let st = b.stats();
        assert_eq!(st.calls.load(Ordering::Relaxed), calls as u64);
        assert!(toy.runs.load(Ordering::Relaxed) < calls as u64, "some calls merged");
        assert!(st.mean_batch_size() > 1.0);
        assert_eq!(st.fallbacks.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn outputs_that_do_not_split_are_run_again_call_by_call() {
        // Rows interact: the merged run's rows differ, but they still split
        // by count, so use a model whose output loses the batch dimension.
        struct Sum(Vec<TensorInfo>);
        impl Model for Sum {
            fn inputs(&self) -> &[TensorInfo] {
                &self.0
            }
            fn outputs(&self) -> &[TensorInfo] {
                &self.0
            }
            fn run(&self, inputs: &[(&str, &Tensor)], _: &[&str]) -> Outputs {
                std::thread::sleep(Duration::from_millis(5));
                let TensorData::Float32(v) = inputs[0].1.data() else {
                    unreachable!()
                };
                Ok(vec![("x".into(), Tensor::new(vec![1], TensorData::Float32(vec![v.iter().sum()]))?)])
            }
        }
        let info = TensorInfo {
            name: "x".into(),
            dtype: DType::Float32,
            shape: vec![-1, 2],
        };
        let b = Arc::new(Batched::new(
            Arc::new(Sum(vec![info])),
            BatchSettings {
                max_batch_size: 8,
                max_queue_delay: Duration::from_millis(20),
            },
            1,
        ));
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let b = b.clone();
                std::thread::spawn(move || {
                    let x = rows(1, i as f32);
                    let out = b.run(&[("x", &x)], &[]).unwrap();
                    assert_eq!(out[0].1.data(), &TensorData::Float32(vec![2.0 * i as f32 + 1.0]));
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(b.stats().fallbacks.load(Ordering::Relaxed) >= 1);
    }

    /// Every lane busy: a call still waiting at its deadline leaves unrun
    /// (the engine answers it as a timeout), rather than running off the
    /// lanes when its answer is no use.
    #[test]
    fn a_call_still_waiting_at_its_deadline_is_not_run() {
        let toy = Arc::new(Toy::new(false, Duration::from_millis(300)));
        let b = Arc::new(Batched::new(
            toy.clone(),
            BatchSettings {
                max_batch_size: 64,
                max_queue_delay: Duration::ZERO,
            },
            1,
        ));
        let busy = {
            let b = b.clone();
            std::thread::spawn(move || b.run(&[("x", &rows(1, 0.0))], &[]).unwrap())
        };
        std::thread::sleep(Duration::from_millis(50));
        let x = Value::Host(rows(1, 1.0));
        let Err(e) = b.run_values_by(&[("x", &x)], &[], Some(Instant::now() + Duration::from_millis(20))) else {
            panic!("a call past its deadline was run");
        };
        assert!(e.to_string().contains("deadline passed"), "{e}");
        busy.join().unwrap();
        assert_eq!(b.stats().expired.load(Ordering::Relaxed), 1);
        assert_eq!(toy.runs.load(Ordering::Relaxed), 1, "only the call in time ran");
    }

    #[test]
    fn a_waiting_call_does_not_wait_past_its_deadline() {
        let b = Batched::new(
            Arc::new(Toy::new(false, Duration::ZERO)),
            BatchSettings {
                max_batch_size: 64,
                max_queue_delay: Duration::from_millis(100),
            },
            2,
        );
        let x = Value::Host(rows(1, 0.0));
        let started = Instant::now();
        b.run_values_by(&[("x", &x)], &[], Some(started + Duration::from_millis(5)))
            .unwrap();
        assert!(started.elapsed() < Duration::from_millis(80), "{:?}", started.elapsed());
        // Too many rows for one batch: it runs alone.
        let big = rows(65, 0.0);
        b.run(&[("x", &big)], &[]).unwrap();
        assert_eq!(b.stats().alone.load(Ordering::Relaxed), 1);
    }
}
