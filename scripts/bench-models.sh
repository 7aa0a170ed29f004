#!/usr/bin/env bash
# Real exported models (tests/fetch_models.py: PaddleOCR cls/det/rec, YOLOv8n, Magika, Silero VAD) on
# both of Accel's engines, against onnxruntime in-process, on one machine in one run:
#   - in-process compute, one thread (Accel's --intra-op-threads default): Accel's candle executor and
#     ONNX Runtime through the same accel-bench harness (accel-bench compute), ms per batch-1 call
#   - served: Accel with --default-backend candle and with --default-backend onnxruntime (the wheel's
#     library), accel-bench closed loop with batch-1 requests: p50 latency at concurrency 1, throughput
#     at concurrency 8 (dynamic batching for the models whose graphs batch)
#   - onnxruntime in-process from Python (one intra-op thread): ms per batch-1 call, and samples/s at
#     batch 8 (one call per 8 samples, no serving in between)
# Rounds interleave the engines so that drift on a shared machine hits both; figures are medians.
#
#   scripts/bench-models.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ROUNDS=${1:-3}
ensure_protoc
ensure_venv
cargo build --locked --release -j "${CARGO_BUILD_JOBS:-2}" -p accel -p accel-bench >&2
"$VENV/bin/python" tests/fetch_models.py >&2
CACHE=tests/.cache
LIB=$("$VENV/bin/python" -c 'import glob, os, onnxruntime; print(sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so.1*")))[-1])')
OUT=target/bench-models/$(date +%Y%m%d-%H%M%S)
REPO="$OUT/repo"
PORT=18701
SERVER=""
trap 'if [ -n "$SERVER" ]; then kill $SERVER 2>/dev/null || true; fi' EXIT

# model -> the whole shape of each input (batch first)
declare -A SHAPES=(
    [ppocr_cls]="x:1,3,48,192"
    [ppocr_det]="x:1,3,256,256"
    [ppocr_rec]="x:1,3,48,320"
    [nudenet]="images:1,3,320,320"
    [magika]="bytes:1,2048"
    [silero_vad]="input:1,576 h:1,1,128 c:1,1,128"
)
MODELS="ppocr_cls ppocr_det ppocr_rec nudenet magika silero_vad"
for m in $MODELS; do
    mkdir -p "$REPO/$m/1"
    ln -sf "$(realpath "$CACHE/models/$m.onnx")" "$REPO/$m/1/model.onnx"
done

shape_args() { for s in ${SHAPES[$1]}; do printf -- '--shape %s ' "$s"; done; }

start() {  # start ENGINE
    local log="$OUT/accel-$1.log"
    target/release/accel serve --model-repository "$REPO" --grpc-port "$PORT" --http-port 0 --metrics-port 0 \
        --metrics-address 127.0.0.1 --model-control-mode none --onnxruntime-library "$LIB" \
        --default-backend "$1" >"$log" 2>&1 &
    SERVER=$!
    for _ in $(seq 600); do
        if "$VENV/bin/python" -c "import tritonclient.grpc as g; assert g.InferenceServerClient('127.0.0.1:$PORT').is_server_ready()" 2>/dev/null; then
            return 0
        fi
        kill -0 "$SERVER" 2>/dev/null || { echo "accel died:" >&2; cat "$log" >&2; return 1; }
        sleep 0.2
    done
    echo "accel not ready" >&2; return 1
}

stop() {
    kill "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
    SERVER=""
    sleep 1
}

for r in $(seq "$ROUNDS"); do
    for engine in candle onnxruntime; do
        echo "round $r/$ROUNDS: $engine" >&2
        start "$engine"
        for m in $MODELS; do
            # shellcheck disable=SC2046
            target/release/accel-bench run --url "http://127.0.0.1:$PORT" --model "$m" $(shape_args "$m") \
                --concurrency 1,8 --warmup 1 --window 2 --stable-windows 2 --max-windows 4 --quiet \
                --json "$OUT/served-$engine-$m-$r.json" >&2
        done
        stop
        for m in $MODELS; do
            # shellcheck disable=SC2046
            RAYON_NUM_THREADS=1 target/release/accel-bench compute --onnx "$CACHE/models/$m.onnx" --engine "$engine" \
                --onnxruntime-library "$LIB" $(shape_args "$m") --batch 1 --seconds 2 --repeats 1 \
                >"$OUT/compute-$engine-$m-$r.md"
        done
    done
done

"$VENV/bin/python" - "$OUT" "$ROUNDS" "$CACHE" "$MODELS" <<'PY'
import json, statistics, sys, time
sys.path.insert(0, "tests")
import numpy as np
import onnxruntime as ort
import fetch_models

out, rounds, cache, models = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].split()
shapes = {
    "ppocr_cls": {"x": (1, 3, 48, 192)}, "ppocr_det": {"x": (1, 3, 256, 256)}, "ppocr_rec": {"x": (1, 3, 48, 320)},
    "nudenet": {"images": (1, 3, 320, 320)}, "magika": {"bytes": (1, 2048)},
    "silero_vad": {"input": (1, 576), "h": (1, 1, 128), "c": (1, 1, 128)},
}
batchable = {"silero_vad": False}

def inputs(name, batch):
    rng = np.random.default_rng(0)
    feed = {}
    for k, s in shapes[name].items():
        s = (batch,) + tuple(s[1:]) if k in ("x", "images", "bytes", "input") else s
        feed[k] = rng.integers(0, 256, s).astype(np.int32) if name == "magika" else rng.random(s, dtype=np.float32)
    return feed

def timed(session, feed, seconds=2.0):
    session.run(None, feed)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        session.run(None, feed)
        n += 1
    return (time.perf_counter() - t0) / n

def median(xs):
    return statistics.median(xs)

def compute_ms(engine, m):
    vals = []
    for r in range(1, rounds + 1):
        row = [l for l in open(f"{out}/compute-{engine}-{m}-{r}.md") if l.startswith("| 1 |")][0]
        vals.append(float(row.split("|")[3]))
    return median(vals)

def served(engine, m, c, key):
    vals = []
    for r in range(1, rounds + 1):
        for lvl in json.load(open(f"{out}/served-{engine}-{m}-{r}.json")):
            if lvl["concurrency"] == c:
                assert lvl["error_count"] == 0, (engine, m, lvl)
                vals.append(lvl[key])
    return median(vals)

options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
inproc = {}
for m in models:
    s = ort.InferenceSession(fetch_models.model_path(cache, m), options, providers=["CPUExecutionProvider"])
    lat = median([timed(s, inputs(m, 1)) for _ in range(rounds)]) * 1000
    b = 8 if batchable.get(m, True) else 1
    thr = median([b / timed(s, inputs(m, b)) for _ in range(rounds)])
    inproc[m] = (lat, thr, b)

print("In-process compute, batch 1, one thread (accel-bench compute: the same harness for both engines):")
print()
print("| model | input | candle ms | onnxruntime ms | candle / onnxruntime |")
print("|---|---|---|---|---|")
for m in models:
    c, o = compute_ms("candle", m), compute_ms("onnxruntime", m)
    print(f"| {m} | {' '.join(f'{k} {list(v)}' for k, v in shapes[m].items())} | {c:.3f} | {o:.3f} | {c / o:.2f}x |")
print()
print("Served over gRPC (accel-bench, batch-1 requests), against onnxruntime in-process from Python (one thread):")
print()
print("| model | Accel(candle) p50 ms c=1 | Accel(onnxruntime) p50 ms c=1 | onnxruntime in-process ms | Accel(ort) / in-process | Accel(candle) infer/s c=8 | Accel(onnxruntime) infer/s c=8 | in-process samples/s (batch) | Accel(ort) / in-process |")
print("|---|---|---|---|---|---|---|---|---|")
for m in models:
    lc, lo = served("candle", m, 1, "p50_ms"), served("onnxruntime", m, 1, "p50_ms")
    tc, to = served("candle", m, 8, "infer_per_sec"), served("onnxruntime", m, 8, "infer_per_sec")
    il, it, b = inproc[m]
    print(f"| {m} | {lc:.2f} | {lo:.2f} | {il:.2f} | {lo / il:.2f}x | {tc:,.0f} | {to:,.0f} | {it:,.0f} ({b}) | {to / it:.2f} |")
PY
