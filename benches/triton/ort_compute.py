#!/usr/bin/env python3
"""In-process onnxruntime compute of an ONNX model per batch size (one intra-op thread, as Accel's
executor uses one): the compute ceiling to put serving figures against. Prints a Markdown table."""

import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort

p = argparse.ArgumentParser()
p.add_argument("--onnx", required=True)
p.add_argument("--batch", default="1,8,64")
p.add_argument("--seconds", type=float, default=2.0)
p.add_argument("--repeats", type=int, default=3)
args = p.parse_args()
options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
session = ort.InferenceSession(args.onnx, options, providers=["CPUExecutionProvider"])
inp = session.get_inputs()[0]
print("| batch | samples/s (min / median / max) | ms per batch (median) |")
print("|---|---|---|")
for b in [int(x) for x in args.batch.split(",")]:
    x = np.random.default_rng(0).standard_normal([b] + list(inp.shape[1:])).astype(np.float32)
    rates, per = [], []
    for _ in range(args.repeats):
        session.run(None, {inp.name: x})
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < args.seconds:
            session.run(None, {inp.name: x})
            n += 1
        dt = time.perf_counter() - t0
        rates.append(n * b / dt)
        per.append(dt * 1000 / n)
    rates.sort()
    print(f"| {b} | {rates[0]:,.0f} / {statistics.median(rates):,.0f} / {rates[-1]:,.0f} | {statistics.median(per):.3f} |")
