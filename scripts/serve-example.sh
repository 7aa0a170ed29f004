#!/usr/bin/env bash
# The run command: builds the release binary and serves the bundled example repository
# (examples/model_repository) on gRPC port 8001. Extra arguments go to `accel serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_protoc
cargo build --locked --release -j "${CARGO_BUILD_JOBS:-2}" -p accel
exec target/release/accel serve --model-repository examples/model_repository "$@"
