#!/usr/bin/env bash
# Side by side on one machine, in one run, with one load tool (accel-bench, closed loop, batch-1
# requests, concurrency 1/16/64) and one model (the example MLP, FP32 256 -> 1024 -> ReLU -> 256):
#   - the serving ceiling: echo-server (tonic, same proto, same release profile) answering with its input
#   - Accel, with dynamic batching (model mlp) and without (mlp_nobatch, at concurrency 64), on its
#     candle engine; and Accel on its ONNX Runtime engine (the onnxruntime wheel's library)
#   - NVIDIA Triton 2.51 (PyPI nvidia-pytriton), the same ONNX file through onnxruntime, dynamic batching
#     with the same max batch (64) and delay (0)
#   - in-process compute of the same file: Accel's candle executor and onnxruntime, batch 1/8/64
#   - with ACCEL_BEFORE=PATH, another accel binary (an earlier build) beside this one, to show what a
#     change costs: its figures and the ratio of this build's to them
# Servers are interleaved round by round so that drift on a shared machine hits all of them alike;
# every figure is min / median / max over the rounds. Prints Markdown for BENCHMARKS.md.
#
#   [ACCEL_BEFORE=path/to/old/accel] scripts/bench-side-by-side.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ROUNDS=${1:-3}
ensure_protoc
ensure_venv
cargo build --locked --release -j "${CARGO_BUILD_JOBS:-2}" -p accel -p accel-bench >&2
TRITON_VENV=${ACCEL_TRITON_VENV:-.venv-triton}
if [ ! -x "$TRITON_VENV/bin/python" ] || ! "$TRITON_VENV/bin/python" -c "import pytriton" 2>/dev/null; then
    python3 -m venv "$TRITON_VENV"
    "$TRITON_VENV/bin/pip" install -q --disable-pip-version-check 'nvidia-pytriton==0.7.0' 'tritonclient[grpc,http]' 'numpy<2' onnxruntime >&2
fi
# PyTriton's Python-backend stub links libpython from the system path: point it at this Python's.
TRITON_LIBDIR=$("$TRITON_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
MODEL=examples/model_repository/mlp/1/model.onnx
ORT_LIB=$("$VENV/bin/python" -c 'import glob, os, onnxruntime; print(sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so.1*")))[-1])')
OUT=target/bench-side-by-side/$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
PORT=18401
SERVER=""
trap 'if [ -n "$SERVER" ]; then kill $SERVER 2>/dev/null || true; fi' EXIT

wait_ready() {  # wait_ready PORT LOG: until the model answers ModelMetadata (PyTriton loads it after start)
    for _ in $(seq 600); do
        if "$VENV/bin/python" -c "import tritonclient.grpc as g; g.InferenceServerClient('127.0.0.1:$1').get_model_metadata('mlp')" 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$SERVER" 2>/dev/null; then
            echo "server died:" >&2; cat "$2" >&2; return 1
        fi
        sleep 0.2
    done
    echo "server not ready:" >&2; cat "$2" >&2; return 1
}

start() {  # start KIND
    local log="$OUT/$1.log"
    case "$1" in
        echo) target/release/echo-server --address "127.0.0.1:$PORT" >"$log" 2>&1 & ;;
        accel) target/release/accel serve --model-repository examples/model_repository --grpc-port "$PORT" \
                   --http-port 0 --metrics-port 0 --metrics-address 127.0.0.1 --default-backend candle >"$log" 2>&1 & ;;
        accel-ort) target/release/accel serve --model-repository examples/model_repository --grpc-port "$PORT" \
                   --http-port 0 --metrics-port 0 --metrics-address 127.0.0.1 --onnxruntime-library "$ORT_LIB" \
                   --default-backend onnxruntime >"$log" 2>&1 & ;;
        accel-before) "$ACCEL_BEFORE" serve --model-repository examples/model_repository --grpc-port "$PORT" \
                   --http-port 0 --metrics-port 0 --metrics-address 127.0.0.1 --default-backend candle >"$log" 2>&1 & ;;
        triton) LD_LIBRARY_PATH="$TRITON_LIBDIR" "$TRITON_VENV/bin/python" benches/triton/serve_onnx.py --onnx "$MODEL" \
                    --name mlp --grpc-port "$PORT" --http-port $((PORT + 1)) --metrics-port $((PORT + 2)) \
                    --max-batch-size 64 --max-queue-delay-us 0 >"$log" 2>&1 & ;;
    esac
    SERVER=$!
    wait_ready "$PORT" "$log"
}

stop() {
    kill "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
    SERVER=""
    sleep 1
}

bench() {  # bench NAME MODEL CONCURRENCY
    target/release/accel-bench run --url "http://127.0.0.1:$PORT" --model "$2" --concurrency "$3" \
        --warmup 2 --window 3 --quiet --json "$OUT/$1.json" >&2
}

for r in $(seq "$ROUNDS"); do
    echo "round $r/$ROUNDS" >&2
    start echo; bench "echo-$r" mlp 1,16,64; stop
    start accel; bench "accel-$r" mlp 1,16,64; bench "accel-nobatch-$r" mlp_nobatch 64; stop
    if [ -n "${ACCEL_BEFORE:-}" ]; then
        start accel-before; bench "accel-before-$r" mlp 1,16,64; bench "accel-before-nobatch-$r" mlp_nobatch 64; stop
    fi
    start accel-ort; bench "accel-ort-$r" mlp 1,16,64; stop
    start triton; bench "triton-$r" mlp 1,16,64; stop
done
RAYON_NUM_THREADS=1 target/release/accel-bench compute --onnx "$MODEL" --batch 1,8,64 --repeats "$ROUNDS" >"$OUT/candle.md"
"$VENV/bin/python" benches/triton/ort_compute.py --onnx "$MODEL" --batch 1,8,64 --repeats "$ROUNDS" >"$OUT/ort.md"

"$VENV/bin/python" - "$OUT" "$ROUNDS" "${ACCEL_BEFORE:-}" <<'PY'
import json, statistics, sys
out, rounds, before = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def levels(name):
    runs = [json.load(open(f"{out}/{name}-{r}.json")) for r in range(1, rounds + 1)]
    by = {}
    for run in runs:
        for lvl in run:
            by.setdefault(lvl["concurrency"], []).append(lvl)
    return by
def fmt(xs):
    xs = sorted(xs)
    return f"{xs[0]:,.0f} / {statistics.median(xs):,.0f} / {xs[-1]:,.0f}"
servers = {"echo ceiling": levels("echo"), "Accel": levels("accel"), "Accel (onnxruntime engine)": levels("accel-ort"),
           "Triton (PyTriton + onnxruntime)": levels("triton")}
nobatch = levels("accel-nobatch")
errors = sum(l["error_count"] for s in servers.values() for ls in s.values() for l in ls)
print("| server | concurrency | throughput infer/s (min / median / max) | p50 ms | p99 ms |")
print("|---|---|---|---|---|")
med = {}
for name, by in servers.items():
    for c in sorted(by):
        ls = by[c]
        med[(name, c)] = statistics.median(l["infer_per_sec"] for l in ls)
        print(f"| {name} | {c} | {fmt([l['infer_per_sec'] for l in ls])} | {statistics.median(l['p50_ms'] for l in ls):.2f} | {statistics.median(l['p99_ms'] for l in ls):.2f} |")
for c, ls in nobatch.items():
    med[("nobatch", c)] = statistics.median(l["infer_per_sec"] for l in ls)
    print(f"| Accel, no dynamic batching | {c} | {fmt([l['infer_per_sec'] for l in ls])} | {statistics.median(l['p50_ms'] for l in ls):.2f} | {statistics.median(l['p99_ms'] for l in ls):.2f} |")
print()
T, O = "Triton (PyTriton + onnxruntime)", "Accel (onnxruntime engine)"
print("| concurrency | Accel / Triton | Accel(ort) / Triton | Accel / echo ceiling | Accel(ort) / echo ceiling | Accel p99 / Triton p99 |")
print("|---|---|---|---|---|---|")
for c in sorted(servers["Accel"]):
    p99 = lambda n: statistics.median(l["p99_ms"] for l in servers[n][c])
    print(f"| {c} | {med[('Accel', c)] / med[(T, c)]:.1f}x | {med[(O, c)] / med[(T, c)]:.1f}x | {med[('Accel', c)] / med[('echo ceiling', c)]:.2f} | {med[(O, c)] / med[('echo ceiling', c)]:.2f} | {p99('Accel') / p99(T):.2f} |")
print()
print(f"Batching on / off at concurrency 64: {med[('Accel', 64)] / med[('nobatch', 64)]:.1f}x")
if before:
    b, bn = levels("accel-before"), levels("accel-before-nobatch")
    print()
    print(f"This build against the one before ({before}), same rounds:")
    print()
    print("| model | concurrency | before infer/s (min / median / max) | this build / before | p99 this / before |")
    print("|---|---|---|---|---|")
    for label, now, then in (("mlp", servers["Accel"], b), ("mlp_nobatch", nobatch, bn)):
        for c in sorted(then):
            t = statistics.median(l["infer_per_sec"] for l in then[c])
            n = statistics.median(l["infer_per_sec"] for l in now[c])
            p = statistics.median(l["p99_ms"] for l in now[c]) / statistics.median(l["p99_ms"] for l in then[c])
            print(f"| {label} | {c} | {fmt([l['infer_per_sec'] for l in then[c]])} | {n / t:.2f} | {p:.2f} |")
    errors += sum(l["error_count"] for s in (b, bn) for ls in s.values() for l in ls)
print(f"Failed requests across all runs: {errors}")
print()
print("In-process compute, one thread — Accel's candle executor:")
print()
print(open(f"{out}/candle.md").read())
print("onnxruntime (Python):")
print()
print(open(f"{out}/ort.md").read())
PY
echo "raw results in $OUT" >&2
