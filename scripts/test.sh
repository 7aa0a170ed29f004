#!/usr/bin/env bash
# The test command: Rust unit tests, then the end-to-end tests that start the real `accel` binary and
# talk to it with Triton's Python client (tritonclient) and the KServe SDK, comparing results with numpy
# and onnxruntime, the hostile-input suite, the Helm chart checked with a real helm, and a short run of
# every fuzz target where a nightly toolchain is installed (a fixed-seed smoke run of a few seconds
# each; ACCEL_FUZZ_SECONDS=N runs each for N seconds instead, 0 skips them).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_protoc
ensure_venv
JOBS=${CARGO_BUILD_JOBS:-2}
cargo build --locked -j "$JOBS" --bins
cargo test --locked -j "$JOBS" --workspace
"$VENV/bin/python" tests/fetch_models.py >/dev/null
"$VENV/bin/python" tests/fetch_helm.py >/dev/null
"$VENV/bin/python" -m pytest tests -q -p no:cacheprovider "$@"
if [ "${ACCEL_FUZZ_SECONDS:-smoke}" != 0 ]; then
    scripts/fuzz.sh "${ACCEL_FUZZ_SECONDS:-smoke}"
fi
