#!/usr/bin/env bash
# Runs the fuzz targets (fuzz/, cargo-fuzz on the nightly toolchain) for SECONDS each, starting from
# the committed seeds (fuzz/seeds/<target>); what they find goes to fuzz/work/<target> (new inputs)
# and fuzz/artifacts/<target> (crashes). Exits non-zero on the first crash, leak, timeout or
# out-of-memory input.
#
#   scripts/fuzz.sh SECONDS [TARGET...]      (default: every target)
#   scripts/fuzz.sh smoke [TARGET...]        a fixed number of runs from a fixed seed (a few seconds
#                                            each; what the test command runs, so that CI repeats
#                                            the run that passed here instead of a new random one)
#
# Without a nightly toolchain it says so and exits 0 (CI runs it where nightly is installed).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-10}
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    TARGETS=(config_pbtxt rest_body grpc_request grpc_authority onnx_model)
fi
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: no nightly toolchain here: fuzz targets not run"
    exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz from crates.io" >&2
    cargo install cargo-fuzz --locked --quiet
fi
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
# -O: dependencies as they ship; fuzz/Cargo.toml turns overflow checks on for Accel's own crates.
cargo +nightly fuzz build -O
# Runs per target in smoke mode: about five seconds each on a 2-core machine.
smoke_runs() {
    case "$1" in
        onnx_model) echo 15000 ;;
        *) echo 100000 ;;
    esac
}
for t in "${TARGETS[@]}"; do
    if [ "$SECONDS_EACH" = smoke ]; then
        # A fresh corpus from the seeds alone, so that the run does not depend on earlier runs here.
        WORK=$(mktemp -d)
        LIMIT=(-seed=1 -runs="$(smoke_runs "$t")")
        echo "fuzz: $t, $(smoke_runs "$t") runs from seed 1"
    else
        WORK="fuzz/work/$t"
        mkdir -p "$WORK"
        LIMIT=(-max_total_time="$SECONDS_EACH")
        echo "fuzz: $t for ${SECONDS_EACH}s"
    fi
    # -rss_limit_mb: an input that makes a target hold more than this is a finding, as is one that
    # takes longer than -timeout seconds.
    cargo +nightly fuzz run -O "$t" "$WORK" "fuzz/seeds/$t" -- \
        "${LIMIT[@]}" -rss_limit_mb=4096 -timeout=20 -max_len=262144 \
        -print_final_stats=1 2>&1 | grep -E "^(stat::|#[0-9]+ *DONE|==|SUMMARY|INFO: Running|Done )|panicked|ERROR|crash" || true
    if [ "$SECONDS_EACH" = smoke ]; then rm -rf "$WORK"; fi
    # cargo fuzz run exits non-zero on a finding; with the pipe above, check the artifacts instead.
    if [ -n "$(ls -A "fuzz/artifacts/$t" 2>/dev/null)" ]; then
        echo "fuzz: $t found a crashing input:" fuzz/artifacts/"$t"/* >&2
        exit 1
    fi
done
