#!/usr/bin/env bash
# Builds Accel with the `cuda` feature on a machine with no GPU and no CUDA toolkit, using NVIDIA's CUDA
# 13.0 PyPI wheels as the toolkit (CUDA 13.0 = the 580 driver of the GPU nodes; PTX from a newer nvcc
# would not JIT there).
#
#   scripts/build-cuda.sh [cargo args...]      default: build --release -j2 -p accel --features cuda
#   scripts/build-cuda.sh clippy -p accel -p accel-kernels --features cuda --all-targets   (-D warnings)
#
# What it does:
#   1. installs the cu13 wheels into a venv (CUDA_WHEEL_VENV, default ~/.cache/accel/cuda13-wheels;
#      about 1.2 GB) and makes their tree look like a toolkit (lib64, unversioned .so links);
#   2. builds a link-time stub of libcuda (no wheel ships the driver; it is never loaded at run time);
#   3. copies candle-core from the cargo registry into target/cuda-vendor and switches its cudarc from
#      `dynamic-linking` to `dynamic-loading` (the same features as ours), applied with `--config patch`,
#      so that the binary opens libcuda/cublas/nvrtc with dlopen: it starts on a machine with no GPU
#      and serves on the CPU, instead of failing to start (Cargo.lock is restored afterwards);
#   4. runs cargo with CUDA_HOME etc. pointing at the wheel tree and CUDA_COMPUTE_CAP (default 90).
# The binary still needs libcudart.so.13 at load time (candle-kernels' libmoe.a links it): the GPU
# check carries the wheel's copy next to the binary.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${CUDA_WHEEL_VENV:-$HOME/.cache/accel/cuda13-wheels}"
PY="${PYTHON:-python3}"
[ -x "$VENV/bin/pip" ] || "$PY" -m venv "$VENV"
PYVER=$("$VENV/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
CU="$VENV/lib/python$PYVER/site-packages/nvidia/cu13"
if [ ! -x "$CU/bin/nvcc" ]; then
    "$VENV/bin/pip" install -q \
        nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
        nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 \
        "nvidia-curand>=10.4.0,<10.4.1" "nvidia-cublas>=13.0,<13.1"
fi
[ -e "$CU/lib64" ] || ln -s lib "$CU/lib64"
for l in cudart.so.13 cublas.so.13 cublasLt.so.13 curand.so.10 nvrtc.so.13; do
    base="lib${l%%.so*}.so"
    [ -e "$CU/lib/$base" ] || ln -s "lib$l" "$CU/lib/$base"
done

cargo fetch -q
REGISTRY="${CARGO_HOME:-$HOME/.cargo}/registry/src"
CUDARC_SRC=$(ls -d "$REGISTRY"/*/cudarc-0.19.* | sort -V | tail -1)
if [ ! -e "$CU/lib/stubs/libcuda.so" ]; then
    mkdir -p "$CU/lib/stubs"
    grep -ohE "fn cu[A-Za-z0-9_]+\(" "$CUDARC_SRC/src/driver/sys/mod.rs" | sed 's/fn //;s/(//' | sort -u \
        | awk '{print "int " $1 "(void){return 999;}"}' >"$CU/lib/stubs/cuda_stub.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$CU/lib/stubs/libcuda.so" "$CU/lib/stubs/cuda_stub.c"
fi

CANDLE_SRC=$(ls -d "$REGISTRY"/*/candle-core-0.11.1 | tail -1)
VENDOR=target/cuda-vendor/candle-core
if [ ! -e "$VENDOR/.patched" ]; then
    rm -rf "$VENDOR"
    mkdir -p "$(dirname "$VENDOR")"
    cp -r "$CANDLE_SRC" "$VENDOR"
    sed -i 's/"cuda-version-from-build-system",/"cuda-13000",/; s/"dynamic-linking",/"dynamic-loading",/' "$VENDOR/Cargo.toml"
    grep -q '"dynamic-loading"' "$VENDOR/Cargo.toml" || { echo "build-cuda: could not patch candle-core" >&2; exit 1; }
    touch "$VENDOR/.patched"
fi

export CUDA_HOME="$CU" CUDA_PATH="$CU" CUDA_ROOT="$CU" NVCC="$CU/bin/nvcc" PATH="$CU/bin:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}" CUDARC_CUDA_VERSION=13000
export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-2}"
export LIBRARY_PATH="$CU/lib:$CU/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
echo "$CU" >target/cuda-vendor/cuda-lib-dir   # for scripts that need the wheel tree (gpu-check.sh)

cp Cargo.lock target/cuda-vendor/Cargo.lock.orig
trap 'cp target/cuda-vendor/Cargo.lock.orig Cargo.lock' EXIT
[ $# -gt 0 ] || set -- build --release -j2 -p accel --features cuda
if [ "$1" = clippy ]; then
    # `cargo clippy` is an external subcommand: the --config patch would not reach its inner build.
    # Run `cargo check` with clippy's driver as the workspace wrapper, lints denied as `-D warnings`.
    shift
    export RUSTC_WORKSPACE_WRAPPER="$(rustc --print sysroot)/bin/clippy-driver"
    export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
    set -- check "$@"
fi
cargo --config "patch.crates-io.candle-core.path=\"$VENDOR\"" "$@"
