#!/usr/bin/env bash
# The CUDA device on a machine with an NVIDIA GPU: the device crate's GPU
# tests (WASMSCORE_REQUIRE_GPU=1: a missing GPU fails them), then
# bench/cuda.py (cpu vs cuda, answers compared and timed side by side).
#
# Needs the CUDA 13 runtime libraries (cudart, cuBLAS, cuBLASLt, cuRAND:
# the nvidia-* wheels PyTorch installs will do; found under python3's
# site-packages or given in LD_LIBRARY_PATH), the onnxruntime-gpu 1.31
# wheel's libonnxruntime.so (ORT_DYLIB_PATH), python3 with numpy and onnx.
#
#   cargo build --release -p wasmscore-cli --features cuda
#   cargo test --release -p wasmscore-device-ort --features cuda --no-run   # prints the test binary
#   for m in iris-rust mlp-rust rows-rust; do target/release/wasmscore build examples/$m -o mods/$m.wasm; done
#   ORT_DYLIB_PATH=.../onnxruntime/capi/libonnxruntime.so.1.31.1 \
#   WASMSCORE_BIN=target/release/wasmscore DEVICE_ORT_TESTS=target/release/deps/wasmscore_device_ort-... \
#   MODULES=mods bench/cuda.sh OUT_DIR
# PART=tests or PART=bench runs one half (default: both).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bench/cuda.sh OUT_DIR}
mkdir -p "$out"
: "${ORT_DYLIB_PATH:?libonnxruntime.so of the onnxruntime-gpu wheel}" "${WASMSCORE_BIN:?}" "${DEVICE_ORT_TESTS:?}" "${MODULES:?}"
export ORT_DYLIB_PATH

# CUDA's libraries from the nvidia-* wheels, and unversioned names for the
# ones cudarc opens by name (libcublas.so, ...).
links=$(mktemp -d)
for d in $(python3 -c 'import glob, os, site; print(" ".join(sorted({os.path.dirname(p) for r in site.getsitepackages() for p in glob.glob(r + "/nvidia/**/lib*.so*", recursive=True)})))'); do LD_LIBRARY_PATH=${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d; done
for lib in libcublas.so.13 libcublasLt.so.13 libcudart.so.13 libcurand.so.10; do
  for d in ${LD_LIBRARY_PATH//:/ }; do
    [ -e "$d/$lib" ] && { ln -sf "$d/$lib" "$links/${lib%.so.*}.so"; break; }
  done
done
export LD_LIBRARY_PATH=$links${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"

rc=0
part=${PART:-all}
if [ "$part" != bench ]; then
  echo "== the device crate's GPU tests"
  for t in cublas_gemm_matches_the_cpu_reference a_model_on_cuda_matches_the_cpu; do
    WASMSCORE_REQUIRE_GPU=1 timeout 60 "$DEVICE_ORT_TESTS" --exact "cuda::tests::$t" --nocapture 2>&1 | tee -a "$out/tests.txt" || rc=1
  done
fi
if [ "$part" != tests ]; then
  echo "== cpu vs cuda through wasmscore up"
  python3 bench/cuda.py --bin "$WASMSCORE_BIN" --modules "$MODULES" --out "$out" || rc=1
fi
exit $rc
