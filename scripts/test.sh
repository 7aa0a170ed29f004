#!/usr/bin/env bash
# The test command: Rust unit tests, then the end-to-end tests that start the real `accel` binary and
# talk to it with Triton's Python client (tritonclient), comparing results with numpy and onnxruntime,
# and the Helm chart checked with a real helm.
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
