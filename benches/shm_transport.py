"""How tensors reach the server, side by side in one run, with one client (Triton's perf_analyzer,
batch-1 requests) and two models: `identity` (y = x: the input comes back) and `reduce`
(y = [mean(x)]: large input, 4-byte output), FP32 tensors of 4 KiB to 64 MiB, at concurrency 1 and 16:

    accel-tcp    Accel, gRPC over TCP loopback, tensors in the messages
    accel-uds    Accel, gRPC over a Unix domain socket
    accel-shm    Accel, gRPC over TCP, inputs and outputs in system shared memory
    triton-tcp   NVIDIA Triton 2.51 (PyPI nvidia-pytriton, numpy in its Python backend), gRPC over TCP
    triton-shm   the same Triton with system shared memory

For each size and concurrency the five run back to back (drift on a shared machine hits all alike).
Prints Markdown for BENCHMARKS.md: throughput, p50 and p99 latency, and the ratios the goals name.

    .venv/bin/python benches/shm_transport.py [--bin target/release/accel] [--sizes 4KiB,64KiB,1MiB,16MiB,64MiB]
        [--concurrency 1,16] [--interval-ms 2000] [--only accel-tcp,accel-shm]
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
sys.path.insert(0, os.path.join(ROOT, "tests"))
import modelgen  # noqa: E402
from hf_embeddings import port  # noqa: E402

KINDS = ["accel-tcp", "accel-uds", "accel-shm", "triton-tcp", "triton-shm"]


def repository(root: str) -> str:
    import onnx
    from onnx import TensorProto, helper

    def save(name, nodes, out_shape, extra_inits=()):
        d = os.path.join(root, name, "1")
        os.makedirs(d, exist_ok=True)
        model = modelgen.make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
                                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], extra_inits)
        onnx.save(model, os.path.join(d, "model.onnx"))
        dims = "[ -1 ]" if out_shape == ["n"] else "[ 1 ]"
        modelgen.write_config(os.path.join(root, name), f"""max_batch_size: 0
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: {dims} }} ]
""")

    save("identity", [helper.make_node("Identity", ["x"], ["y"])], ["n"])
    save("reduce", [helper.make_node("ReduceMean", ["x"], ["y"], keepdims=1)], [1])
    return root


def parse_size(s: str) -> int:
    units = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "B": 1}
    for u, m in units.items():
        if s.endswith(u):
            return int(s[: -len(u)]) * m
    return int(s)


def show(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"


def perf_analyzer_env():
    venv = os.environ.get("ACCEL_BENCH_VENV", os.path.join(ROOT, ".venv-bench"))
    binary = os.path.join(venv, "bin", "perf_analyzer")
    if not os.path.exists(binary):
        sys.exit("perf_analyzer missing: run `. scripts/lib.sh; ensure_perf_analyzer` first")
    lib = subprocess.run([os.path.join(venv, "bin", "python"), "-c",
                          "import nvidia.cuda_runtime, os; print(os.path.join(nvidia.cuda_runtime.__path__[0], 'lib'))"],
                         capture_output=True, text=True, check=True).stdout.strip()
    return binary, dict(os.environ, LD_LIBRARY_PATH=lib)


def wait_model(url: str, model: str, proc, timeout=300):
    import tritonclient.grpc as g

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode}")
        try:
            if g.InferenceServerClient(url).is_model_ready(model):
                return
        except Exception:
            pass
        time.sleep(0.2)
    sys.exit(f"{model} not ready at {url}")


def run_pa(binary, env, url, model, size, concurrency, shm, interval_ms):
    """One point; a point that does not settle is measured again with windows twice as long."""
    r = run_pa_once(binary, env, url, model, size, concurrency, shm, interval_ms)
    if "error" in r and "stable" in r["error"]:
        r = run_pa_once(binary, env, url, model, size, concurrency, shm, 2 * interval_ms)
    return r


def run_pa_once(binary, env, url, model, size, concurrency, shm, interval_ms):
    elements = size // 4
    # Large tensors take long enough per request that a short window holds too few of them to settle.
    interval_ms = interval_ms * (4 if size >= 64 << 20 else 2 if size >= 16 << 20 else 1)
    args = [binary, "-m", model, "-i", "grpc", "-u", url, "-b", "1", "--shape", f"x:{elements}",
            "--concurrency-range", str(concurrency), "--measurement-interval", str(interval_ms), "-r", "8",
            "-s", "30"]
    if shm:
        args += ["--shared-memory", "system", "--output-shared-memory-size", str(max(size, 4))]
    with tempfile.NamedTemporaryFile(suffix=".csv") as f:
        r = subprocess.run(args + ["-f", f.name], capture_output=True, text=True, env=env, timeout=600)
        text = open(f.name).read() if os.path.exists(f.name) else ""
    if r.returncode != 0 or not text.strip():
        tail = (r.stdout + r.stderr).strip().splitlines()[-3:]
        return {"error": " / ".join(tail)[:200]}
    row = next(csv.DictReader(io.StringIO(text)))
    return {"infer_s": float(row["Inferences/Second"]), "p50_ms": float(row["p50 latency"]) / 1000,
            "p99_ms": float(row["p99 latency"]) / 1000}


def main():
    # Stopped with SIGTERM, still stop the servers (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    p = argparse.ArgumentParser()
    p.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "accel"))
    p.add_argument("--sizes", default="4KiB,64KiB,1MiB,16MiB,64MiB")
    p.add_argument("--concurrency", default="1,16")
    p.add_argument("--interval-ms", type=int, default=2000)
    p.add_argument("--only", default=",".join(KINDS))
    p.add_argument("--triton-venv", default=os.path.join(ROOT, ".venv-triton"))
    args = p.parse_args()
    kinds = args.only.split(",")
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    levels = [int(c) for c in args.concurrency.split(",")]
    binary, env = perf_analyzer_env()
    work = tempfile.mkdtemp(prefix="accel-transport-")
    repo = repository(os.path.join(work, "repo"))
    sock = os.path.join(work, "grpc.sock")
    procs = []
    accel_port, triton_port = port(), port()
    try:
        logs = open(os.path.join(work, "accel.log"), "w")
        accel = subprocess.Popen([args.bin, "serve", "--model-repository", repo, "--model-control-mode", "none",
                                  "--grpc-port", str(accel_port), "--http-port", "0", "--metrics-port", "0",
                                  "--metrics-address", "127.0.0.1", "--allow-client-shm"], stdout=logs, stderr=logs)
        procs.append(accel)
        accel_uds = subprocess.Popen([args.bin, "serve", "--model-repository", repo, "--model-control-mode", "none",
                                      "--grpc-address", f"unix:{sock}", "--http-port", "0", "--metrics-port", "0",
                                      "--metrics-address", "127.0.0.1"], stdout=logs, stderr=logs)
        procs.append(accel_uds)
        urls = {"accel-tcp": f"127.0.0.1:{accel_port}", "accel-uds": f"unix://{sock}",
                "accel-shm": f"127.0.0.1:{accel_port}"}
        if any(k.startswith("triton") for k in kinds):
            libdir = subprocess.run([os.path.join(args.triton_venv, "bin", "python"), "-c",
                                     "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                                    capture_output=True, text=True, check=True).stdout.strip()
            tlog = open(os.path.join(work, "triton.log"), "w")
            triton = subprocess.Popen([os.path.join(args.triton_venv, "bin", "python"),
                                       os.path.join(HERE, "triton", "serve_transport.py"), "--grpc-port", str(triton_port),
                                       "--http-port", str(port()), "--metrics-port", str(port())],
                                      stdout=tlog, stderr=tlog, env=dict(os.environ, LD_LIBRARY_PATH=libdir))
            procs.append(triton)
            urls["triton-tcp"] = urls["triton-shm"] = f"127.0.0.1:{triton_port}"
            wait_model(urls["triton-tcp"], "reduce", triton)
        wait_model(urls["accel-tcp"], "reduce", accel)
        wait_model(urls["accel-uds"], "reduce", accel_uds)

        results = {}
        for model in ("identity", "reduce"):
            for size in sizes:
                for c in levels:
                    for kind in kinds:
                        r = run_pa(binary, env, urls[kind], model, size, c, kind.endswith("shm"), args.interval_ms)
                        results[(model, size, c, kind)] = r
                        print(f"{model} {show(size)} c={c} {kind}: {r}", file=sys.stderr, flush=True)
        report(results, sizes, levels, kinds)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


def report(results, sizes, levels, kinds):
    def cell(r):
        if r is None:
            return "—"
        if "error" in r:
            return "failed"
        return f"{r['infer_s']:,.0f} ({r['p50_ms']:.2f} / {r['p99_ms']:.2f})"

    def ratio(a, b):
        if not a or not b or "error" in a or "error" in b:
            return "—"
        return f"{a['infer_s'] / b['infer_s']:.2f}×"

    for model in ("identity", "reduce"):
        print(f"\n**{model}** — infer/s (p50 / p99 ms)\n")
        print("| size | conc | " + " | ".join(kinds) + " | shm / tcp | uds / tcp | accel shm / triton shm |")
        print("|---|---|" + "---|" * len(kinds) + "---|---|---|")
        for size in sizes:
            for c in levels:
                row = [results.get((model, size, c, k)) for k in kinds]
                get = lambda k: results.get((model, size, c, k))  # noqa: E731
                print(f"| {show(size)} | {c} | " + " | ".join(cell(r) for r in row)
                      + f" | {ratio(get('accel-shm'), get('accel-tcp'))} | {ratio(get('accel-uds'), get('accel-tcp'))}"
                      + f" | {ratio(get('accel-shm'), get('triton-shm'))} |")
        # Where shared memory starts to pay: the smallest size from which it stays ahead of TCP by 10%.
        for c in levels:
            crossover = None
            for size in reversed(sizes):
                a, b = results.get((model, size, c, "accel-shm")), results.get((model, size, c, "accel-tcp"))
                if not a or not b or "error" in a or "error" in b:
                    continue  # a failed point neither confirms nor breaks the run
                if a["infer_s"] >= 1.1 * b["infer_s"]:
                    crossover = size
                else:
                    break
            print(f"\n{model}, concurrency {c}: shared memory ≥ 1.1× TCP from "
                  + (show(crossover) if crossover else "no size measured") + " up")


if __name__ == "__main__":
    main()
