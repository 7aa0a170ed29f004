#!/usr/bin/env bash
# Measures Accel with Triton's perf_analyzer on the example MLP (FP32 256 -> 1024 -> ReLU -> 256,
# batch-1 requests) with dynamic batching on (model `mlp`) and off (`mlp_nobatch`), at concurrency
# 1, 16 and 64, each point repeated; prints a Markdown table for BENCHMARKS.md.
#
#   scripts/bench-batching.sh [REPEATS]
#
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
REPEATS=${1:-3}
ensure_perf_analyzer
ensure_protoc
cargo build --locked --release -j "${CARGO_BUILD_JOBS:-2}" -p accel >&2
PORT=${ACCEL_BENCH_PORT:-18101}
start_example_server
trap 'kill $SERVER 2>/dev/null || true' EXIT
OUT=$(mktemp -d)
for model in mlp mlp_nobatch; do
    for c in 1 16 64; do
        for r in $(seq "$REPEATS"); do
            "$PERF_ANALYZER" -m "$model" -i grpc -u "127.0.0.1:$PORT" -b 1 --concurrency-range "$c" \
                --measurement-interval 3000 -f "$OUT/$model-$c-$r.csv" >"$OUT/$model-$c-$r.log" 2>&1 \
                || { cat "$OUT/$model-$c-$r.log" >&2; exit 1; }
        done
    done
done
"$BENCH_VENV/bin/python" - "$OUT" "$REPEATS" <<'PY'
import csv, statistics, sys
out, repeats = sys.argv[1], int(sys.argv[2])
print("| model | batching | concurrency | throughput infer/s (min / median / max) | p50 ms | p99 ms |")
print("|---|---|---|---|---|---|")
medians = {}
for model, batching in (("mlp", "on"), ("mlp_nobatch", "off")):
    for c in (1, 16, 64):
        rows = []
        for r in range(1, repeats + 1):
            with open(f"{out}/{model}-{c}-{r}.csv") as f:
                rows.append(next(csv.DictReader(f)))
        tput = sorted(float(row["Inferences/Second"]) for row in rows)
        p50 = statistics.median(float(row["p50 latency"]) for row in rows) / 1000
        p99 = statistics.median(float(row["p99 latency"]) for row in rows) / 1000
        medians[(model, c)] = statistics.median(tput)
        print(f"| {model} | {batching} | {c} | {tput[0]:,.0f} / {statistics.median(tput):,.0f} / {tput[-1]:,.0f} | {p50:.2f} | {p99:.2f} |")
print()
for c in (16, 64):
    print(f"batching on / off at concurrency {c}: {medians[('mlp', c)] / medians[('mlp_nobatch', c)]:.1f}x")
PY
