//! The CUDA device: whole models through ONNX Runtime's CUDA execution
//! provider (with IO binding), single ops through cuBLAS (cudarc), both
//! loaded at run time.
//!
//! Behind the `cuda` cargo feature. Discovery asks, in order: is there a
//! CUDA driver (libcuda), does it see a GPU, is there cuBLAS, does the ONNX
//! Runtime library that was loaded have the CUDA execution provider (the
//! `onnxruntime-gpu` wheel's library does; point ORT_DYLIB_PATH at it).
//! Each "no" is the reason `up` records, and a version that asks for cuda
//! is refused with it unless it chose `device_fallback: "cpu"`.
//!
//! Tensors stay on the GPU between the guest's calls: a model's outputs are
//! bound to GPU memory and handed to the guest as values the device keeps;
//! a later model run on cuda binds them as they are, and the host copies
//! one to host memory only when something reads it (`data()`, an op, a
//! model on another device). Ops (cuBLAS) copy their operands over and
//! back.

use std::path::Path;
use std::sync::Arc;

use wasmscore_tensor::Device;

use crate::OrtCpu;

/// Why this build has no CUDA device.
#[cfg(not(feature = "cuda"))]
pub fn discover(_cpu: &OrtCpu, _ort_library: &Path) -> Result<Arc<dyn Device>, String> {
    Err("this wasmscore was built without the `cuda` feature (cargo build --release -p wasmscore-cli --features cuda)".into())
}

/// The first GPU as a device, or why there is none.
#[cfg(feature = "cuda")]
pub fn discover(cpu: &OrtCpu, ort_library: &Path) -> Result<Arc<dyn Device>, String> {
    imp::OrtCuda::discover(cpu, ort_library).map(|d| Arc::new(d) as Arc<dyn Device>)
}

#[cfg(feature = "cuda")]
mod imp {
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    use cudarc::cublas::sys::cublasOperation_t;
    use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
    use cudarc::driver::{CudaContext, CudaStream};
    use ort::ep::ExecutionProvider;
    use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
    use ort::session::Session;
    use wasmscore_tensor::{bias_dims, gemm_dims, Device, DeviceKind, Model, Ops, Tensor, TensorData, TensorError, TensorInfo, Value};

    use ort::value::DynValue;

    use crate::session::{check_input, describe, feed, from_ort, host_copies, to_ort, Input, OrtResident};
    use crate::OrtCpu;

    pub struct OrtCuda {
        env: ort::environment::Environment,
        ctx: Arc<CudaContext>,
        description: String,
    }

    impl OrtCuda {
        pub fn discover(cpu: &OrtCpu, ort_library: &Path) -> Result<Self, String> {
            // SAFETY: only tries to open the library.
            if !unsafe { cudarc::driver::sys::is_culib_present() } {
                return Err("no CUDA driver on this machine (libcuda.so not found)".into());
            }
            let n = CudaContext::device_count().map_err(|e| format!("the CUDA driver failed: {e}"))?;
            if n < 1 {
                return Err("the CUDA driver sees no GPU".into());
            }
            // SAFETY: only tries to open the library.
            if !unsafe { cudarc::cublas::sys::is_culib_present() } {
                return Err("no cuBLAS library (libcublas.so) on this machine".into());
            }
            let available = ort::ep::CUDA::is_available().map_err(|e| format!("asking ONNX Runtime for its CUDA provider: {e}"))?;
            if !available {
                return Err(format!(
                    "the ONNX Runtime library {} has no CUDA execution provider; point ORT_DYLIB_PATH at the onnxruntime-gpu wheel's libonnxruntime.so",
                    ort_library.display()
                ));
            }
            let ctx = CudaContext::new(0).map_err(|e| format!("opening GPU 0: {e}"))?;
            let name = ctx.name().map_err(|e| format!("GPU 0's name: {e}"))?;
            let (free, total) = ctx.mem_get_info().map_err(|e| format!("GPU 0's memory: {e}"))?;
            let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
            Ok(OrtCuda {
                env: cpu.env().clone(),
                ctx,
                description: format!(
                    "GPU 0 of {n}: {name}, {:.1} GiB ({:.1} GiB free at start); models through ONNX Runtime's CUDA provider with IO binding, matmul/gemm through cuBLAS",
                    gib(total),
                    gib(free)
                ),
            })
        }
    }

    impl Device for OrtCuda {
        fn name(&self) -> &str {
            "cuda"
        }

        fn kind(&self) -> DeviceKind {
            DeviceKind::Cuda
        }

        fn description(&self) -> String {
            self.description.clone()
        }

        fn load_model(&self, file: &str, bytes: &[u8]) -> Result<Arc<dyn Model>, TensorError> {
            let fail = |e: String| TensorError::failed(format!("model {file} on cuda: {e}"));
            let session = Session::builder(&self.env)
                .map_err(|e| fail(e.to_string()))?
                .with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])
                .map_err(|e| fail(e.to_string()))?
                .commit_from_memory(bytes)
                .map_err(|e| fail(e.to_string()))?;
            let (inputs, outputs) = describe(file, &session)?;
            let pinned = MemoryInfo::new(AllocationDevice::CUDA_PINNED, 0, AllocatorType::Device, MemoryType::CPUOutput)
                .map_err(|e| fail(e.to_string()))?;
            let device_memory =
                MemoryInfo::new(AllocationDevice::CUDA, 0, AllocatorType::Device, MemoryType::Default).map_err(|e| fail(e.to_string()))?;
            Ok(Arc::new(CudaModel {
                file: Arc::from(file),
                session: Mutex::new(session),
                inputs,
                outputs,
                pinned,
                device_memory,
            }))
        }

        fn open_ops(&self, _version: &str) -> Result<Arc<dyn Ops>, TensorError> {
            // Each instance gets its own stream and cuBLAS handle.
            let stream = self
                .ctx
                .new_stream()
                .map_err(|e| TensorError::failed(format!("cuda: new stream: {e}")))?;
            let blas = CudaBlas::new(stream.clone()).map_err(|e| TensorError::failed(format!("cuda: cuBLAS handle: {e}")))?;
            Ok(Arc::new(CublasOps {
                inner: Mutex::new((stream, blas)),
            }))
        }
    }

    /// A model on the GPU. ONNX Runtime's RunWithBinding is not safe to
    /// call concurrently on one session, so runs of one model take turns
    /// (the GPU runs them one after another anyway).
    struct CudaModel {
        file: Arc<str>,
        session: Mutex<Session>,
        inputs: Vec<TensorInfo>,
        outputs: Vec<TensorInfo>,
        pinned: MemoryInfo<'static>,
        device_memory: MemoryInfo<'static>,
    }

    // SAFETY: the session is behind a mutex; the memory info is read only.
    unsafe impl Send for CudaModel {}
    unsafe impl Sync for CudaModel {}

    impl Model for CudaModel {
        fn inputs(&self) -> &[TensorInfo] {
            &self.inputs
        }
        fn outputs(&self) -> &[TensorInfo] {
            &self.outputs
        }

        fn run(&self, inputs: &[(&str, &Tensor)], wanted: &[&str]) -> Result<Vec<(String, Tensor)>, TensorError> {
            let mut feeds = Vec::with_capacity(inputs.len());
            for (name, t) in inputs {
                check_input(&self.file, &self.inputs, name, t.dtype(), t.shape())?;
                feeds.push((*name, to_ort(t, true).map_err(|e| self.bad_input(name, e))?));
            }
            // Outputs to pinned host memory: one copy off the GPU.
            self.bind_and_run(&feeds, wanted, &self.pinned)?
                .into_iter()
                .map(|(name, v)| Ok((name.clone(), from_ort(&self.file, &name, &v)?)))
                .collect()
        }

        /// Inputs an earlier run kept on the GPU are bound as they are;
        /// outputs stay in GPU memory until something reads them.
        fn run_values(&self, inputs: &[(&str, &Value)], wanted: &[&str]) -> Result<Vec<(String, Value)>, TensorError> {
            for (name, v) in inputs {
                check_input(&self.file, &self.inputs, name, v.dtype(), v.shape())?;
            }
            let copies = host_copies(inputs, "cuda")?;
            let mut feeds = Vec::with_capacity(inputs.len());
            for ((name, v), copy) in inputs.iter().zip(&copies) {
                feeds.push((*name, feed(v, copy, "cuda", true).map_err(|e| self.bad_input(name, e))?));
            }
            self.bind_and_run(&feeds, wanted, &self.device_memory)?
                .into_iter()
                .map(|(name, v)| {
                    let label: Arc<str> = Arc::from(name.as_str());
                    Ok((name, OrtResident::wrap(&self.file, &label, "cuda", v)?))
                })
                .collect()
        }
    }

    impl CudaModel {
        fn bad_input(&self, name: &str, e: ort::Error) -> TensorError {
            TensorError::bad(format!("{}: input {name}: {e}", self.file))
        }

        /// Binds the inputs (checked by the caller) and the outputs to
        /// `out_memory`, and runs.
        fn bind_and_run(
            &self,
            inputs: &[(&str, Input<'_>)],
            wanted: &[&str],
            out_memory: &MemoryInfo<'static>,
        ) -> Result<Vec<(String, DynValue)>, TensorError> {
            let err = |e: ort::Error| TensorError::failed(format!("{} on cuda: {e}", self.file));
            let names: Vec<&str> = if wanted.is_empty() {
                self.outputs.iter().map(|o| o.name.as_str()).collect()
            } else {
                wanted.to_vec()
            };
            let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
            let mut binding = session.create_binding().map_err(err)?;
            for (name, v) in inputs {
                binding.bind_input(*name, v.value()).map_err(err)?;
            }
            for name in &names {
                if !self.outputs.iter().any(|o| o.name == *name) {
                    return Err(TensorError::bad(format!("{} has no output named {name:?}", self.file)));
                }
                binding.bind_output_to_device(*name, out_memory).map_err(err)?;
            }
            let mut outs = session.run_binding(&binding).map_err(err)?;
            names
                .iter()
                .map(|name| {
                    let v = outs
                        .remove(*name)
                        .ok_or_else(|| TensorError::failed(format!("{}: no output {name} came back", self.file)))?;
                    Ok((name.to_string(), v))
                })
                .collect()
        }
    }

    /// One instance's cuBLAS handle and stream. Never contended: one Wasm
    /// instance runs one call at a time.
    struct CublasOps {
        inner: Mutex<(Arc<CudaStream>, CudaBlas)>,
    }

    fn unsupported(op: &str) -> TensorError {
        TensorError::Unsupported(format!(
            "device cuda runs matmul and gemm (float32); {op} is not built for it: name device \"cpu\" for it, or set device_fallback"
        ))
    }

    fn f32s<'a>(t: &'a Tensor, op: &str) -> Result<&'a [f32], TensorError> {
        match t.data() {
            TensorData::Float32(v) => Ok(v),
            other => Err(TensorError::Unsupported(format!(
                "device cuda runs {op} on float32, got {}",
                other.dtype().name()
            ))),
        }
    }

    impl Ops for CublasOps {
        fn matmul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor, TensorError> {
            self.gemm(a, b, None, 1.0, 0.0, false, false)
        }

        fn gemm(
            &self,
            a: &Tensor,
            b: &Tensor,
            c: Option<&Tensor>,
            alpha: f32,
            beta: f32,
            trans_a: bool,
            trans_b: bool,
        ) -> Result<Tensor, TensorError> {
            let (av, bv) = (f32s(a, "gemm")?, f32s(b, "gemm")?);
            let (m, k, n) = gemm_dims(a, b, trans_a, trans_b, "gemm")?;
            if m == 0 || n == 0 || k == 0 {
                // Empty products: the CPU's answer, no GPU call to make.
                return wasmscore_tensor::CpuOps.gemm(a, b, c, alpha, beta, trans_a, trans_b);
            }
            let (ac, bc) = (a.shape()[1] as usize, b.shape()[1] as usize);
            // C starts as the bias broadcast to [m, n] (beta scales it).
            let mut out = vec![0f32; m * n];
            let beta = match c {
                Some(c) => {
                    let cv = f32s(c, "gemm")?;
                    let (cr, cc) = bias_dims(c.shape(), m, n)?;
                    for i in 0..m {
                        for j in 0..n {
                            out[i * n + j] = cv[(if cr == 1 { 0 } else { i }) * cc + if cc == 1 { 0 } else { j }];
                        }
                    }
                    beta
                }
                None => 0.0,
            };
            let op = |t| {
                if t {
                    cublasOperation_t::CUBLAS_OP_T
                } else {
                    cublasOperation_t::CUBLAS_OP_N
                }
            };
            let fail = |e: String| TensorError::failed(format!("cuda gemm: {e}"));
            let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let (stream, blas) = &*inner;
            let da = stream.clone_htod(av).map_err(|e| fail(e.to_string()))?;
            let db = stream.clone_htod(bv).map_err(|e| fail(e.to_string()))?;
            let mut dc = stream.clone_htod(&out).map_err(|e| fail(e.to_string()))?;
            // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T:
            // hand cuBLAS B first, with the row lengths as leading dimensions.
            let cfg = GemmConfig {
                transa: op(trans_b),
                transb: op(trans_a),
                m: n as i32,
                n: m as i32,
                k: k as i32,
                alpha,
                lda: bc as i32,
                ldb: ac as i32,
                beta,
                ldc: n as i32,
            };
            // SAFETY: the buffers hold the sizes cfg describes.
            unsafe { blas.gemm(cfg, &db, &da, &mut dc) }.map_err(|e| fail(e.to_string()))?;
            stream.memcpy_dtoh(&dc, &mut out).map_err(|e| fail(e.to_string()))?;
            stream.synchronize().map_err(|e| fail(e.to_string()))?;
            Tensor::new(vec![m as u64, n as u64], TensorData::Float32(out))
        }

        fn add(&self, _a: &Tensor, _b: &Tensor) -> Result<Tensor, TensorError> {
            Err(unsupported("add"))
        }

        fn relu(&self, _x: &Tensor) -> Result<Tensor, TensorError> {
            Err(unsupported("relu"))
        }

        fn softmax(&self, _x: &Tensor, _axis: i32) -> Result<Tensor, TensorError> {
            Err(unsupported("softmax"))
        }

        fn conv2d(&self, _x: &Tensor, _w: &Tensor, _b: Option<&Tensor>, _s: [u32; 2], _p: [u32; 2]) -> Result<Tensor, TensorError> {
            Err(unsupported("conv2d"))
        }
    }
}

/// Runs where the machine has a GPU (and the onnxruntime-gpu library in
/// ORT_DYLIB_PATH); elsewhere each test says it skipped and why, unless
/// WASMSCORE_REQUIRE_GPU=1 (a GPU CI job) makes a missing GPU a failure.
#[cfg(all(test, feature = "cuda"))]
mod tests {
    use wasmscore_tensor::{CpuOps, Ops, Tensor, TensorData};

    use crate::{find_onnxruntime, OrtCpu};

    /// ONNX Runtime allows one environment per process: the tests share one.
    fn cpu() -> &'static OrtCpu {
        static CPU: std::sync::OnceLock<OrtCpu> = std::sync::OnceLock::new();
        CPU.get_or_init(|| OrtCpu::new(&find_onnxruntime().unwrap()).expect("ONNX Runtime loads"))
    }

    fn gpu() -> Option<std::sync::Arc<dyn wasmscore_tensor::Device>> {
        let skip = |why: String| {
            assert!(
                std::env::var("WASMSCORE_REQUIRE_GPU").as_deref() != Ok("1"),
                "WASMSCORE_REQUIRE_GPU=1 but {why}"
            );
            eprintln!("SKIPPED: {why}");
            None
        };
        let lib = match find_onnxruntime() {
            Ok(l) => l,
            Err(e) => return skip(format!("no ONNX Runtime library: {e}")),
        };
        match super::discover(cpu(), &lib) {
            Ok(d) => Some(d),
            Err(why) => skip(format!("no GPU here: {why}")),
        }
    }

    #[test]
    fn cublas_gemm_matches_the_cpu_reference() {
        let Some(gpu) = gpu() else { return };
        let ops = gpu.open_ops("test/v1").unwrap();
        let t = |r: u64, c: u64, seed: u32| {
            let v = (0..r * c)
                .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
                .collect();
            Tensor::new(vec![r, c], TensorData::Float32(v)).unwrap()
        };
        for (m, k, n, ta, tb) in [
            (1, 1, 1, false, false),
            (3, 5, 7, false, false),
            (64, 33, 17, true, false),
            (8, 8, 300, false, true),
        ] {
            let a = if ta { t(k, m, 1) } else { t(m, k, 1) };
            let b = if tb { t(n, k, 2) } else { t(k, n, 2) };
            let c = t(1, n, 3);
            let want = CpuOps.gemm(&a, &b, Some(&c), 0.5, 2.0, ta, tb).unwrap();
            let got = ops.gemm(&a, &b, Some(&c), 0.5, 2.0, ta, tb).unwrap();
            assert_eq!(got.shape(), want.shape());
            let (TensorData::Float32(g), TensorData::Float32(w)) = (got.data(), want.data()) else {
                panic!()
            };
            for (x, y) in g.iter().zip(w) {
                assert!((x - y).abs() < 1e-3, "[{m},{k}]x[{k},{n}] ta {ta} tb {tb}: {x} vs {y}");
            }
        }
    }

    #[test]
    fn a_model_on_cuda_matches_the_cpu() {
        let Some(gpu) = gpu() else { return };
        let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/iris/model.onnx")).unwrap();
        let cpu = cpu();
        use wasmscore_tensor::Device;
        let x = Tensor::new(vec![2, 4], TensorData::Float32(vec![5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3])).unwrap();
        let on_gpu = gpu
            .load_model("model.onnx", &bytes)
            .unwrap()
            .run(&[("X", &x)], &["probabilities"])
            .unwrap();
        let on_cpu = cpu
            .load_model("model.onnx", &bytes)
            .unwrap()
            .run(&[("X", &x)], &["probabilities"])
            .unwrap();
        let (TensorData::Float32(g), TensorData::Float32(c)) = (on_gpu[0].1.data(), on_cpu[0].1.data()) else {
            panic!()
        };
        for (a, b) in g.iter().zip(c) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }
}
