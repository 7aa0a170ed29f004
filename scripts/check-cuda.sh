#!/usr/bin/env bash
# The check to run before submitting a change that touches GPU code (CI builds and tests the CPU
# variant only: the CUDA toolchain is 1.2 GB of wheels and a long nvcc build). On a machine with no GPU:
#   - the `cuda` feature of accel and accel-kernels compiles, clippy-clean (-D warnings), tests included;
#   - NVRTC (from the wheels, no GPU needed) compiles the batch kernels for sm_75/80/90;
#   - the kernels' CPU references pass, and their GPU tests say they are skipped;
#   - a `cuda` binary asked for `--gpu 0` finds no driver, says so, and serves on the CPU.
# On a machine with a GPU the same tests run the kernels against their references for real; the full
# check there is scripts/gpu-check.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-cuda.sh clippy -j2 -p accel -p accel-kernels --features cuda --all-targets
CU=$(cat target/cuda-vendor/cuda-lib-dir)
export LD_LIBRARY_PATH="$CU/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
scripts/build-cuda.sh test -j2 -p accel-kernels --features cuda -- --nocapture batch cuda 2>&1 \
    | grep -E "^test |skipped|test result|panicked"
scripts/build-cuda.sh test -j2 -p accel --features cuda --lib -- device:: 2>&1 | grep -E "^test |test result|panicked"
scripts/build-cuda.sh build -j2 -p accel --features cuda --bin accel
. scripts/lib.sh
ensure_venv
ACCEL_BIN=target/debug/accel "$VENV/bin/python" -m pytest tests/test_gpu.py -q -p no:cacheprovider
echo "check-cuda: the cuda build compiles, is clippy-clean, and falls back to the CPU without a GPU"
