#!/usr/bin/env bash
# What recording metrics costs: perf_analyzer on the example MLP (batch-1 requests, dynamic batching)
# with --allow-metrics true and false, alternated ROUNDS times so that drift on a shared machine hits
# both alike; prints a Markdown table (min / median / max) and the on/off ratio.
#
#   scripts/bench-metrics.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ROUNDS=${1:-3}
ensure_perf_analyzer
ensure_protoc
cargo build --locked --release -j "${CARGO_BUILD_JOBS:-2}" -p accel >&2
PORT=${ACCEL_BENCH_PORT:-18102}
OUT=$(mktemp -d)
trap 'kill ${SERVER:-0} 2>/dev/null || true' EXIT
for r in $(seq "$ROUNDS"); do
    for metrics in true false; do
        start_example_server --allow-metrics "$metrics"
        for c in 1 64; do
            "$PERF_ANALYZER" -m mlp -i grpc -u "127.0.0.1:$PORT" -b 1 --concurrency-range "$c" \
                --measurement-interval 3000 -f "$OUT/$metrics-$c-$r.csv" >"$OUT/$metrics-$c-$r.log" 2>&1 \
                || { cat "$OUT/$metrics-$c-$r.log" >&2; exit 1; }
        done
        kill "$SERVER"; wait "$SERVER" 2>/dev/null || true
    done
done
"$BENCH_VENV/bin/python" - "$OUT" "$ROUNDS" <<'PY'
import csv, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
print("| metrics | concurrency | throughput infer/s (min / median / max) | p99 ms (median) |")
print("|---|---|---|---|")
med = {}
for c in (1, 64):
    for m in ("true", "false"):
        rows = []
        for r in range(1, rounds + 1):
            with open(f"{out}/{m}-{c}-{r}.csv") as f:
                rows.append(next(csv.DictReader(f)))
        t = sorted(float(x["Inferences/Second"]) for x in rows)
        p99 = statistics.median(float(x["p99 latency"]) for x in rows) / 1000
        med[(m, c)] = statistics.median(t)
        print(f"| {'on' if m == 'true' else 'off'} | {c} | {t[0]:,.0f} / {statistics.median(t):,.0f} / {t[-1]:,.0f} | {p99:.2f} |")
print()
for c in (1, 64):
    print(f"metrics on / off at concurrency {c}: {med[('true', c)] / med[('false', c)]:.3f}")
PY
