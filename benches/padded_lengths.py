"""Mixed-length text traffic against one Accel binary, side by side in one run: a BERT-style encoder
(INT64 input_ids / attention_mask [1, n], n drawn uniformly from 8..128, as KServe's Hugging Face
transformer sends them) served three ways on the same weights:

  padded   accel.padded_inputs: requests of different lengths share a batch, padded to its longest
  nobatch  no dynamic batching: every request executes alone, at its own length
  pad128   the client pads every request to 128 (mask 0 beyond its length): one shape, batched

at concurrency 16 and 64 (accel-bench, closed loop, batch-1 requests), rounds interleaved; then
onnxruntime in-process on the same length distribution, one request at a time (samples/s at the same
tokens). Padding efficiency is real tokens / computed tokens: the server's own counters for `padded`,
mean length / 128 for `pad128`, 1 for `nobatch`. Prints Markdown for BENCHMARKS.md.

    .venv/bin/python benches/padded_lengths.py [--bin target/release/accel] [--rounds 2]
        [--hidden 384 --layers 6 --heads 12 --ffn 1536]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import modelgen  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_embeddings import port  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
LO, HI = 8, 128


def repository(root: str, a) -> str:
    path = os.path.join(root, "bert.onnx")
    modelgen.bert_encoder(path, seed=1, vocab=1024, hidden=a.hidden, heads=a.heads, layers=a.layers, ffn=a.ffn,
                          max_positions=HI, pooled=True)
    group = f"instance_group [ {{ count: {a.instances} kind: KIND_CPU }} ]\nbackend: \"{a.backend}\"\n"
    configs = {
        "padded": modelgen.padded_bert_config("padded", max_batch_size=64, delay_us=0, tokens=64 * HI,
                                              hidden=a.hidden, extra=group),
        "nobatch": modelgen.padded_bert_config("nobatch", max_batch_size=64, hidden=a.hidden, extra=group)
        .split("dynamic_batching")[0] + group,
        "pad128": modelgen.padded_bert_config("pad128", max_batch_size=64, delay_us=0, hidden=a.hidden, extra=group)
        .split("parameters [")[0] + group,
    }
    for name, text in configs.items():
        os.makedirs(os.path.join(root, name, "1"))
        os.link(path, os.path.join(root, name, "1", "model.onnx"))
        modelgen.write_config(os.path.join(root, name), text)
    return root


def tokens(metrics_url: str) -> tuple[float, float]:
    """The padded model's real and computed tokens so far, from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    found = {"real": 0.0, "computed": 0.0}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "accel_batch_tokens_total" and s.labels.get("model") == "padded":
                found[s.labels["kind"]] += s.value
    return found["real"], found["computed"]


def bench(a, grpc_port: int, model: str, concurrency: int, out: str) -> dict:
    args = [a.bench, "run", "--url", f"http://127.0.0.1:{grpc_port}", "--model", model, "--concurrency",
            str(concurrency), "--lengths", f"{LO}:{HI}", "--fill", "attention_mask=1", "--warmup", "2", "--window",
            str(a.window), "--quiet", "--json", out]
    if model == "pad128":
        args += ["--pad-to", str(HI)]
    subprocess.run(args, check=True)
    with open(out) as f:
        data = json.load(f)
    return data[0]


def onnxruntime_alone(path: str, seconds: float = 10.0) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    n, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < seconds:
        length = int(rng.integers(LO, HI + 1))
        ids = rng.integers(0, 1000, size=(1, length), dtype=np.int64)
        session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
        n += 1
    return n / (time.monotonic() - t0)


def ort_library() -> str:
    import glob

    import onnxruntime

    capi = os.path.join(os.path.dirname(onnxruntime.__file__), "capi")
    return sorted(glob.glob(os.path.join(capi, "libonnxruntime.so.1*")))[-1]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "accel"))
    p.add_argument("--bench", default=os.path.join(ROOT, "target", "release", "accel-bench"))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--window", type=float, default=3.0)
    p.add_argument("--hidden", type=int, default=384)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--ffn", type=int, default=1536)
    p.add_argument("--instances", type=int, default=2)
    p.add_argument("--concurrency", default="16,64")
    p.add_argument("--backend", default="candle", help="the engine: candle or onnxruntime")
    a = p.parse_args()
    root = repository(tempfile.mkdtemp(), a)
    out = tempfile.mkdtemp()
    g, m = port(), port()
    log = open(os.path.join(out, "accel.log"), "w")
    proc = subprocess.Popen([a.bin, "serve", "--model-repository", root, "--grpc-port", str(g), "--http-port", "0",
                             "--metrics-port", str(m), "--metrics-address", "127.0.0.1", "--model-control-mode", "none",
                             *(["--onnxruntime-library", ort_library()] if a.backend == "onnxruntime" else [])],
                            stdout=log, stderr=subprocess.STDOUT)
    metrics_url = f"http://127.0.0.1:{m}/metrics"
    for _ in range(1200):
        try:
            urllib.request.urlopen(f"{metrics_url}", timeout=1)
            import tritonclient.grpc as grpcclient

            if grpcclient.InferenceServerClient(f"127.0.0.1:{g}").is_server_ready():
                break
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.1)
    else:
        proc.kill()
        sys.exit("accel did not become ready")
    results: dict[tuple[str, int], list[dict]] = {}
    try:
        for r in range(a.rounds):
            for c in [int(x) for x in a.concurrency.split(",")]:
                for model in ("padded", "nobatch", "pad128"):
                    before = tokens(metrics_url)
                    level = bench(a, g, model, c, os.path.join(out, f"{model}-{c}-{r}.json"))
                    after = tokens(metrics_url)
                    if model == "padded":
                        real, computed = after[0] - before[0], after[1] - before[1]
                        level["efficiency"] = real / computed if computed else float("nan")
                    else:
                        level["efficiency"] = 1.0 if model == "nobatch" else (LO + HI) / 2 / HI
                    results.setdefault((model, c), []).append(level)
                    print(f"round {r + 1} c={c} {model}: {level['infer_per_sec']:.1f} infer/s", file=sys.stderr)
    finally:
        proc.terminate()
        proc.wait()
    ort_rate = onnxruntime_alone(os.path.join(root, "padded", "1", "model.onnx"))
    print(f"\nEngine {a.backend}. BERT-style encoder: hidden {a.hidden}, {a.layers} layers, {a.heads} heads, FFN {a.ffn}; lengths "
          f"uniform {LO}..{HI}; {a.instances} instances; {a.rounds} rounds (median; min..max)\n")
    print("| concurrency | mode | infer/s | p99 ms | padding efficiency | vs nobatch |")
    print("|---|---|---|---|---|---|")
    for c in [int(x) for x in a.concurrency.split(",")]:
        base = np.median([x["infer_per_sec"] for x in results[("nobatch", c)]])
        for model in ("padded", "nobatch", "pad128"):
            runs = results[(model, c)]
            rate = [x["infer_per_sec"] for x in runs]
            p99 = [x["p99_ms"] for x in runs]
            eff = np.median([x["efficiency"] for x in runs])
            print(f"| {c} | {model} | {np.median(rate):.1f} ({min(rate):.1f}..{max(rate):.1f}) | "
                  f"{np.median(p99):.0f} | {eff:.0%} | {np.median(rate) / base:.2f}x |")
    print(f"\nonnxruntime in-process, one request at a time ({os.cpu_count()} threads): {ort_rate:.1f} samples/s")


if __name__ == "__main__":
    main()
