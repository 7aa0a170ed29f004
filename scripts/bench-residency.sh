#!/usr/bin/env bash
# Residency benchmarks, printed as Markdown for BENCHMARKS.md:
#   1. Cold load (read + compile the ONNX file) against a reload from the host tier, per model, as
#      the server measures them (its "model ready" log events; time spent waiting for memory left out).
#      One server per model, in on-demand mode, with a budget that holds the model or its twin (the
#      same file under another name) but not both. Each round: unload the model (which also empties
#      the host tier), request it (a cold load), request the twin (the model is evicted to the host
#      tier), request the model again (a reload from the host tier).
#   2. Hit rates of Accel's eviction policy, LRU and Belady's rule on Zipf traces
#      (accel-bench residency-sim, offline, the server's policy code).
#
#   scripts/bench-residency.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ROUNDS=${1:-5}
ensure_protoc
ensure_venv
cargo build --locked --release -j "${CARGO_BUILD_JOBS:-2}" -p accel -p accel-bench >&2
OUT=target/bench-residency/$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"

"$VENV/bin/python" - "$OUT" "$ROUNDS" <<'PY'
import json, os, statistics, subprocess, sys, time
sys.path.insert(0, "tests")
import numpy as np
import tritonclient.grpc as grpcclient
import modelgen

out, rounds = sys.argv[1], int(sys.argv[2])
models = {
    "mlp_2MiB": lambda p: modelgen.mlp(p, 1, 256, 1024, 256),
    "mlp_16MiB": lambda p: modelgen.mlp(p, 2, 256, 8192, 256),
    "mlp_64MiB": lambda p: modelgen.mlp(p, 3, 256, 32768, 256),
    "bert_encoder_20MiB": lambda p: modelgen.bert_encoder(p, vocab=8192, hidden=256, heads=4, layers=4, ffn=1024, max_positions=128),
}
print("| model | footprint | cold load ms (min / median / max) | host-tier reload ms (min / median / max) | cold / reload (medians) |")
print("|---|---|---|---|---|")
def start(repo, log, *args):
    port = 18601
    proc = subprocess.Popen(["target/release/accel", "serve", "--model-repository", repo, "--grpc-port", str(port),
                             "--http-port", "0", "--metrics-port", "0", "--metrics-address", "127.0.0.1",
                             "--memory-reserve", "0", "--log-format", "json", *args],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)
    c = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    for _ in range(400):
        try:
            if c.is_server_ready():
                return proc, c
        except Exception:
            pass
        time.sleep(0.05)
    raise SystemExit(f"accel did not start: see {log}")

for name, build in models.items():
    repo = os.path.join(out, name)
    build(os.path.join(repo, name, "1", "model.onnx"))
    # A twin of the same size: loading it must evict the model.
    os.makedirs(os.path.join(repo, "twin", "1"), exist_ok=True)
    os.link(os.path.join(repo, name, "1", "model.onnx"), os.path.join(repo, "twin", "1", "model.onnx"))
    # The footprint as the server measures it, then a budget that holds one copy, not two.
    proc, c = start(repo, os.path.join(out, f"{name}-probe.log"))
    c.get_model_metadata(name)
    footprint = int(c.get_inference_statistics(name, as_json=True)["model_stats"][0]["memory_usage"][0]["byte_size"])
    proc.terminate(); proc.wait()
    log = os.path.join(out, f"{name}.log")
    proc, c = start(repo, log, "--memory-budget", str(int(footprint * 1.5)))
    try:
        meta = c.get_model_metadata(name, as_json=True)  # the first load; not counted below
        def request(model):
            inputs = []
            for i in meta["inputs"]:
                dims = [1 if int(d) < 0 else int(d) for d in i["shape"]]
                dt = i["datatype"]
                arr = np.zeros(dims, {"FP32": np.float32, "INT64": np.int64, "INT32": np.int32}[dt])
                inputs.append(grpcclient.InferInput(i["name"], dims, dt).set_data_from_numpy(arr))
            c.infer(model, inputs)
        for r in range(rounds):
            c.unload_model(name)
            request(name)       # cold
            time.sleep(0.15)    # past the fresh-load grace, so that the next load can evict it at once
            request("twin")     # evicts the model to the host tier
            time.sleep(0.15)
            request(name)       # reload from the host tier (evicting the twin)
            time.sleep(0.15)
    finally:
        proc.terminate()
        proc.wait()
    cold, host = [], []
    for line in open(log):
        try:
            e = json.loads(line)
        except ValueError:
            continue
        f = e.get("fields", {})
        if f.get("message") == "model ready" and f.get("model") == name:
            (cold if f.get("source") == "file" else host).append(f["load_us"] / 1000)
    cold = cold[1:]  # the load at start-up (metadata) is not part of a round
    fmt = lambda xs: f"{min(xs):.2f} / {statistics.median(xs):.2f} / {max(xs):.2f}"
    print(f"| {name} | {footprint / 2**20:.1f} MiB | {fmt(cold)} | {fmt(host)} | {statistics.median(cold) / statistics.median(host):.0f}x |")
PY
echo
target/release/accel-bench residency-sim
echo "raw logs in $OUT" >&2
