"""Four embedding models under Zipf load: one Accel serving all four against the same four served one
per process (the way HF text-embeddings-inference runs: one model per server), and one Accel under a
memory budget that holds two of them (the others evicted to the host tier and brought back). Each
model is a copy of all-MiniLM-L6-v2 (the sentence-transformers directory tests/fetch_models.py
fetches) under its own name; batch-1 text requests of 8..128 tokens from Python tritonclient gRPC
threads, each picking a model by a Zipf law (s = 1), the same seeded sequence in every setup, on
the same cores. Reports throughput, p99 latency and the servers' resident memory (VmRSS summed).
Prints Markdown for BENCHMARKS.md.

    .venv/bin/python benches/hf_multi_model.py [--bin target/release/accel] [--seconds 20] [--concurrency 16]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, HERE)
import fetch_models  # noqa: E402
from hf_embeddings import closed_loop, port, sentences, text_input  # noqa: E402

MODELS = [f"enc_{i}" for i in range(4)]
CONFIG = 'backend: "huggingface"\nmax_batch_size: 64\ndynamic_batching { }\n'


def start(binary: str, repo: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
    import tritonclient.grpc as grpcclient

    g = port()
    proc = subprocess.Popen([binary, "serve", "--model-repository", repo, "--grpc-port", str(g), "--http-port", "0",
                             "--metrics-port", "0", *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"127.0.0.1:{g}"
    for _ in range(900):
        try:
            if grpcclient.InferenceServerClient(url).is_server_ready():
                return proc, url
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.1)
    raise RuntimeError("the server did not become ready")


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def drive(urls: dict[str, str], texts: list[str], concurrency: int, seconds: float) -> tuple[float, float, int]:
    """Closed-loop load: each thread picks a model by Zipf, sends one sentence. (rate, p99 ms, errors)."""
    import tritonclient.grpc as grpcclient

    weights = np.array([1.0 / (i + 1) for i in range(len(MODELS))])
    weights /= weights.sum()
    rngs = [np.random.default_rng(k) for k in range(concurrency)]
    clients = [{u: grpcclient.InferenceServerClient(u) for u in set(urls.values())} for _ in range(concurrency)]

    def send(k, i):
        model = MODELS[int(rngs[k].choice(len(MODELS), p=weights))]
        clients[k][urls[model]].infer(model, [text_input(texts[i % len(texts)])])

    # The warm-up lets every model run before the window.
    return closed_loop(send, concurrency, seconds, warmup=3.0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bin", default=os.path.join(HERE, "..", "target", "release", "accel"))
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--concurrency", type=int, default=16)
    a = p.parse_args()
    directory = fetch_models.fetch_directories()["all-minilm-l6-v2"]
    work = tempfile.mkdtemp()
    texts = sentences(512)

    def repo(name: str, models: list[str]) -> str:
        root = os.path.join(work, name)
        for m in models:
            shutil.copytree(directory, os.path.join(root, m, "1"))
            with open(os.path.join(root, m, "config.pbtxt"), "w") as f:
                f.write(CONFIG)
        return root

    rows = []
    # One Accel, all four resident.
    proc, url = start(a.bin, repo("one", MODELS), ["--model-control-mode", "none"])
    try:
        rate, p99, errors = drive({m: url for m in MODELS}, texts, a.concurrency, a.seconds)
        rows.append(("one Accel, 4 models resident", rate, p99, errors, rss(proc.pid)))
    finally:
        proc.terminate()
        proc.wait()
    # One Accel whose budget holds two: on-demand loads, evictions to the host tier.
    procs = []
    try:
        urls = {}
        for m in MODELS:
            proc, url = start(a.bin, repo(f"alone_{m}", [m]), ["--model-control-mode", "none"])
            procs.append(proc)
            urls[m] = url
        rate, p99, errors = drive(urls, texts, a.concurrency, a.seconds)
        rows.append(("4 processes, one model each", rate, p99, errors, sum(rss(p.pid) for p in procs)))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()
    # all-MiniLM-L6-v2 measures about 100 MiB loaded (weights, packed weights, tokenizer).
    budget = 230 << 20
    proc, url = start(a.bin, repo("budget", MODELS), ["--memory-budget", str(budget), "--memory-reserve", "0"])
    try:
        rate, p99, errors = drive({m: url for m in MODELS}, texts, a.concurrency, a.seconds)
        rows.append((f"one Accel, budget {budget >> 20} MiB (holds 2 of 4)", rate, p99, errors, rss(proc.pid)))
    finally:
        proc.terminate()
        proc.wait()
    base = rows[1][1]
    print(f"\n4 copies of all-MiniLM-L6-v2, Zipf (s = 1) over them, batch-1 text requests of 8..128 tokens, "
          f"concurrency {a.concurrency}, {a.seconds:.0f} s each\n")
    print("| setup | sentences/s | vs one per process | p99 ms | errors | resident memory (MiB) |")
    print("|---|---|---|---|---|---|")
    for name, rate, p99, errors, mem in rows:
        print(f"| {name} | {rate:.1f} | {rate / base:.2f}x | {p99:.0f} | {errors} | {mem / 2**20:.0f} |")


if __name__ == "__main__":
    main()
