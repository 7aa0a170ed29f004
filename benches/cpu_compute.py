"""In-process compute, candle against ONNX Runtime, the same thread count, in one run: the example MLP
(FP32 256 -> 1024 -> ReLU -> 256) through Accel's candle ONNX executor and through ONNX Runtime (both
via `accel-bench compute`), and all-MiniLM-L6-v2 through Accel's Hugging Face engine (candle, token
ids of a fixed length in) against ONNX Runtime on an ONNX graph of the same safetensors
(benches/hf_embeddings.py writes it). Rounds interleave the engines; medians of the rounds' medians.
Prints Markdown for BENCHMARKS.md.

    .venv/bin/python benches/cpu_compute.py [--rounds 3] [--seconds 2] [--tokens 64] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, HERE)
import fetch_models  # noqa: E402
import hf_embeddings  # noqa: E402


def run(bench: str, args: list[str]) -> dict[int, float]:
    out = subprocess.run([bench, "compute", *args], check=True, capture_output=True, text=True).stdout
    rates = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 3 and cells[0].isdigit():
            rates[int(cells[0])] = float(cells[1].split("/")[1])
    return rates


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", default=os.path.join(ROOT, "target", "release", "accel-bench"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import onnxruntime

    ort = os.path.join(os.path.dirname(onnxruntime.__file__), "capi", f"libonnxruntime.so.{onnxruntime.__version__}")
    minilm = fetch_models.directory_path(os.environ.get("ACCEL_MODEL_CACHE", fetch_models.DEFAULT_CACHE), "all-minilm-l6-v2")
    tmp = tempfile.mkdtemp()
    graph = os.path.join(tmp, "minilm.onnx")
    hf_embeddings.onnx_from_safetensors(minilm, graph)
    common = ["--seconds", str(args.seconds), "--repeats", "1", "--threads", str(args.threads)]
    t = args.tokens
    ids = [f"--shape=input_ids:1,{t}", f"--shape=attention_mask:1,{t}", "--fill", "attention_mask=1"]
    cases = {
        ("MLP", "candle"): ["--onnx", os.path.join(ROOT, "examples/model_repository/mlp/1/model.onnx")],
        ("MLP", "onnxruntime"): ["--onnx", os.path.join(ROOT, "examples/model_repository/mlp/1/model.onnx"),
                                 "--engine", "onnxruntime", "--onnxruntime-library", ort],
        ("MiniLM", "candle"): ["--model", os.path.join(minilm, "config.json"), "--engine", "huggingface", *ids,
                               f"--shape=token_type_ids:1,{t}", "--fill", "token_type_ids=0"],
        ("MiniLM", "onnxruntime"): ["--onnx", graph, "--engine", "onnxruntime", "--onnxruntime-library", ort, *ids],
    }
    results: dict[tuple[str, str], dict[int, list[float]]] = {k: {} for k in cases}
    for _ in range(args.rounds):
        for key, extra in cases.items():
            for b, r in run(args.bench, [*extra, *common]).items():
                results[key].setdefault(b, []).append(r)
    print(f"{args.threads} thread(s) per engine; MiniLM rows of {t} tokens; medians of {args.rounds} rounds\n")
    print("| model | batch | candle samples/s | onnxruntime samples/s | candle / onnxruntime |")
    print("|---|---|---|---|---|")
    for model in ("MLP", "MiniLM"):
        for b in sorted(results[(model, "candle")]):
            c = statistics.median(results[(model, "candle")][b])
            o = statistics.median(results[(model, "onnxruntime")][b])
            print(f"| {model} | {b} | {c:,.0f} | {o:,.0f} | {c / o:.2f}x |")


if __name__ == "__main__":
    main()
