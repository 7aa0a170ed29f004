"""SLO mode against static batching delays, open loop (Poisson arrivals, accel-bench --rate), side by
side in one Accel: each model is served six ways on the same weights (SLO mode with a target, and
static max_queue_delay_microseconds 0, 100, 500, 2000), at four rates from 10% to 95% of the model's
saturated throughput, the settings interleaved within each rate and the rounds repeated. For each
rate and setting (medians over the rounds; attainment also min-max): attainment of the target (the fraction of requests answered within it, measured by
the client from each request's intended send time; errors are misses), throughput, p50 and p99.

Writes the results as JSON, a Markdown table for BENCHMARKS.md, and a plot (attainment and throughput
against rate, one panel per model) as a PNG.

    .venv-bench/bin/python benches/slo_sweep.py [--bin target/release/accel]
        [--bench target/release/accel-bench] [--rounds 3] [--window 3] [--warmup 2]
        [--out benches/results/slo]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "tests"))
import fetch_models  # noqa: E402

STATIC_US = [0, 100, 500, 2000]
FRACTIONS = [0.10, 0.40, 0.70, 0.95]


def model_sources(cache: str) -> dict:
    """name -> (model file, config body without name and batching, bench args, target ms)."""
    mlp = os.path.join(ROOT, "examples", "model_repository", "mlp", "1", "model.onnx")
    cls = fetch_models.fetch(cache)["ppocr_cls"]
    return {
        # The bundled example: 256 -> 1024 -> ReLU -> 256.
        "mlp": (mlp, 'max_batch_size: 64\ninput [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 256 ] } ]\n'
                     'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 256 ] } ]\n', [], 3.0),
        # A real exported CNN: PaddleOCR's text-direction classifier (MobileNetV3), 3x48x192 images.
        "ppocr_cls": (cls, "max_batch_size: 32\n", ["--shape", "x:1,3,48,192"], 10.0),
    }


def write_repository(root: str, sources: dict, targets: dict) -> None:
    for model, (path, body, _, _) in sources.items():
        settings = {f"{model}_slo": ("dynamic_batching { }\n", (targets[model], "best_effort")),
                    f"{model}_shed": ("dynamic_batching { }\n", (targets[model], "shed"))}
        settings.update({f"{model}_d{d}": (f"dynamic_batching {{ max_queue_delay_microseconds: {d} }}\n", None)
                         for d in STATIC_US})
        for name, (batching, slo_ms) in settings.items():
            os.makedirs(os.path.join(root, name, "1"))
            os.link(path, os.path.join(root, name, "1", "model.onnx")) if same_fs(path, root) else \
                shutil.copy(path, os.path.join(root, name, "1", "model.onnx"))
            params = (f'parameters [ {{ key: "accel.slo_ms" value: {{ string_value: "{slo_ms[0]}" }} }}, '
                      f'{{ key: "accel.slo_action" value: {{ string_value: "{slo_ms[1]}" }} }} ]\n'
                      if slo_ms is not None else "")
            with open(os.path.join(root, name, "config.pbtxt"), "w") as f:
                f.write(f'name: "{name}"\n{body}{batching}instance_group [ {{ count: 1 kind: KIND_CPU }} ]\n{params}')


def same_fs(a: str, b: str) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev


def port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(binary: str, repo: str, log: str):
    grpc, http, metrics = port(), port(), port()
    proc = subprocess.Popen([binary, "serve", "--model-repository", repo, "--grpc-port", str(grpc),
                             "--http-port", str(http), "--metrics-port", str(metrics),
                             "--model-control-mode", "none"], stdout=open(log, "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=1) as r:
                if r.status == 200:
                    return proc, grpc, http
        except Exception:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"accel did not start; see {log}")


def bench(a, grpc: int, model: str, extra: list, level: list, slo_ms: float | None) -> dict:
    cmd = [a.bench, "run", "--url", f"http://127.0.0.1:{grpc}", "--model", model, *extra, *level,
           "--warmup", str(a.warmup), "--window", str(a.window), "--stable-windows", "1", "--max-windows", "1",
           "--json", "-", "--quiet"]
    if slo_ms is not None:
        cmd += ["--slo-ms", str(slo_ms)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode not in (0, 1):
        raise RuntimeError(f"accel-bench failed: {r.stderr}")
    return json.loads(r.stdout[r.stdout.index("["):])[0]


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "accel"))
    p.add_argument("--bench", default=os.path.join(ROOT, "target", "release", "accel-bench"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--window", type=float, default=3.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--models", default="mlp,ppocr_cls")
    p.add_argument("--target", action="append", default=[], help="MODEL=MS: the SLO target of a model")
    p.add_argument("--out", default=os.path.join(ROOT, "benches", "results", "slo"))
    a = p.parse_args()
    sources = {k: v for k, v in model_sources(os.path.join(ROOT, "tests", ".cache")).items()
               if k in a.models.split(",")}
    targets = {m: v[3] for m, v in sources.items()}
    for t in a.target:
        m, ms = t.split("=")
        targets[m] = float(ms)
    os.makedirs(a.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="accel-slo-")
    repo = os.path.join(work, "repo")
    write_repository(repo, sources, targets)
    proc, grpc, _ = start(a.bin, repo, os.path.join(work, "accel.log"))
    results = {"targets": targets, "models": {}}
    try:
        for model, (_, _, extra, _) in sources.items():
            target = targets[model]
            # Saturated throughput: what open loop achieves when offered more than it can take (the
            # closed loop's ceiling, with 32 callers filling batches, is higher: an open-loop client
            # costs more per request on the same cores), the better of two static delays.
            closed = max(bench(a, grpc, f"{model}_d{d}", extra, ["--concurrency", "32"], None)["infer_per_sec"]
                         for d in (0, 500))
            sat = max(bench(a, grpc, f"{model}_d{d}", extra, ["--rate", str(round(1.5 * closed))], None)
                      ["infer_per_sec"] for d in (0, 500))
            rates = [round(f * sat, 1) for f in FRACTIONS]
            print(f"{model}: saturated {sat:.0f} infer/s, target {target} ms, rates {rates}", file=sys.stderr)
            settings = [f"{model}_slo", f"{model}_shed"] + [f"{model}_d{d}" for d in STATIC_US]
            runs = {s: {r: [] for r in rates} for s in settings}
            for rnd in range(a.rounds):
                for rate in rates:
                    # Each round starts from another setting, so none is always first after a change.
                    shift = (rnd * 5 + rates.index(rate)) % len(settings)
                    order = settings[shift:] + settings[:shift]
                    for s in order:
                        level = bench(a, grpc, s, extra, ["--rate", str(rate)], target)
                        runs[s][rate].append(level)
                        print(f"  round {rnd + 1} rate {rate:>8} {s:>16}: attainment "
                              f"{level['slo_attainment']:.4f} {level['infer_per_sec']:>8.0f} infer/s "
                              f"p50 {level['p50_ms']:.2f} p99 {level['p99_ms']:.2f}", file=sys.stderr)
            summary = {}
            for s in settings:
                summary[s] = []
                for rate in rates:
                    levels = runs[s][rate]
                    summary[s].append({
                        "rate": rate,
                        "attainment": median([lv["slo_attainment"] for lv in levels]),
                        "attainment_min": min(lv["slo_attainment"] for lv in levels),
                        "attainment_max": max(lv["slo_attainment"] for lv in levels),
                        "infer_per_sec": median([lv["infer_per_sec"] for lv in levels]),
                        "p50_ms": median([lv["p50_ms"] for lv in levels]),
                        "p99_ms": median([lv["p99_ms"] for lv in levels]),
                        "errors": sum(lv["error_count"] for lv in levels),
                    })
            results["models"][model] = {"saturated": sat, "closed_loop": closed, "rates": rates, "summary": summary}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    with open(os.path.join(a.out, "slo.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(markdown(results))
    plot(results, os.path.join(a.out, "slo.png"))
    shutil.rmtree(work, ignore_errors=True)


def markdown(results: dict) -> str:
    out = []
    for model, r in results["models"].items():
        target = results["targets"][model]
        out.append(f"\n**{model}** (saturated {r['saturated']:.0f} infer/s; target {target} ms)\n")
        out.append("| rate /s | setting | attainment, median (min-max) | infer/s | p50 ms | p99 ms | errors |")
        out.append("|---|---|---|---|---|---|---|")
        for k, rate in enumerate(r["rates"]):
            for s, rows in r["summary"].items():
                row = rows[k]
                label = label_of(s)
                out.append(f"| {rate:.0f} | {label} | {row['attainment']:.3f} ({row['attainment_min']:.3f}-"
                           f"{row['attainment_max']:.3f}) | {row['infer_per_sec']:.0f} | "
                           f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['errors']} |")
        out.append("")
        out.append("| rate /s | best static attainment (delay) | SLO attainment | SLO infer/s / best static's | "
                   "SLO+shed attainment | SLO+shed infer/s / best static's |")
        out.append("|---|---|---|---|---|---|")
        for k, rate in enumerate(r["rates"]):
            slo = next(rows[k] for s, rows in r["summary"].items() if s.endswith("_slo"))
            shed = next(rows[k] for s, rows in r["summary"].items() if s.endswith("_shed"))
            statics = [(rows[k], s.split("_d")[-1]) for s, rows in r["summary"].items() if "_d" in s]
            best, delay = max(statics, key=lambda x: (x[0]["attainment"], x[0]["infer_per_sec"]))
            ratio = lambda x: x["infer_per_sec"] / max(best["infer_per_sec"], 1e-9)  # noqa: E731
            out.append(f"| {rate:.0f} | {best['attainment']:.4f} ({delay} us) | {slo['attainment']:.4f} | "
                       f"{ratio(slo):.3f} | {shed['attainment']:.4f} | {ratio(shed):.3f} |")
    return "\n".join(out)


def label_of(setting: str) -> str:
    if setting.endswith("_slo"):
        return "SLO mode"
    if setting.endswith("_shed"):
        return "SLO mode, shed"
    return f"static {setting.split('_d')[-1]} us"


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results["models"])
    fig, axes = plt.subplots(2, len(models), figsize=(6 * len(models), 7), squeeze=False)
    for col, model in enumerate(models):
        r = results["models"][model]
        fractions = [rate / r["saturated"] for rate in r["rates"]]
        for s, rows in r["summary"].items():
            label = label_of(s)
            style = (dict(linewidth=2.5, color="black", marker="s") if s.endswith("_slo") else
                     dict(linewidth=2.5, color="tab:red", marker="^") if s.endswith("_shed") else
                     dict(linestyle="--", marker="o"))
            axes[0][col].plot(fractions, [x["attainment"] for x in rows], label=label, **style)
            axes[1][col].plot(fractions, [x["infer_per_sec"] for x in rows], label=label, **style)
        axes[0][col].set_title(f"{model}: target {results['targets'][model]} ms")
        axes[0][col].set_ylabel("attainment (within target)")
        axes[1][col].set_ylabel("throughput, infer/s")
        axes[1][col].set_xlabel("offered load / saturated throughput")
        axes[0][col].legend(fontsize=8)
        axes[0][col].grid(alpha=0.3)
        axes[1][col].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    main()
