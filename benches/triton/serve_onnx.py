#!/usr/bin/env python3
"""Serves one ONNX model with NVIDIA Triton (the tritonserver bundled in PyPI's nvidia-pytriton), the
compute done by onnxruntime in Triton's Python backend, with Triton's dynamic batcher. For the
side-by-side benchmark only: `scripts/bench-side-by-side.sh` starts it.

    serve_onnx.py --onnx model.onnx --name mlp --grpc-port 8101 --http-port 8100 --metrics-port 8102 \\
        --max-batch-size 64 --max-queue-delay-us 0
"""

import argparse
import signal
import sys

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

try:  # PyTriton >= 0.7 guards statistics (which perf_analyzer reads) behind a token unless told not to.
    from pytriton.triton import TritonSecurityConfig
except ImportError:  # pragma: no cover
    TritonSecurityConfig = None

DTYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--onnx", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--grpc-port", type=int, default=8101)
    p.add_argument("--http-port", type=int, default=8100)
    p.add_argument("--metrics-port", type=int, default=8102)
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--max-queue-delay-us", type=int, default=0)
    args = p.parse_args()

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(args.onnx, options, providers=["CPUExecutionProvider"])
    in_meta = session.get_inputs()
    out_meta = session.get_outputs()

    @batch
    def infer(**inputs):
        outs = session.run(None, {m.name: inputs[m.name] for m in in_meta})
        return {m.name: o for m, o in zip(out_meta, outs)}

    config = TritonConfig(grpc_port=args.grpc_port, http_port=args.http_port, metrics_port=args.metrics_port)
    kwargs = {"config": config}
    if TritonSecurityConfig is not None:
        kwargs["security_config"] = TritonSecurityConfig(restricted_endpoints=["model-repository", "trace", "logging"])
    with Triton(**kwargs) as triton:
        triton.bind(
            model_name=args.name,
            infer_func=infer,
            inputs=[Tensor(name=m.name, dtype=DTYPES[m.type], shape=tuple(m.shape[1:])) for m in in_meta],
            outputs=[Tensor(name=m.name, dtype=DTYPES[m.type], shape=tuple(d if isinstance(d, int) else -1 for d in m.shape[1:])) for m in out_meta],
            config=ModelConfig(max_batch_size=args.max_batch_size, batcher=DynamicBatcher(max_queue_delay_microseconds=args.max_queue_delay_us)),
        )
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        triton.serve()


if __name__ == "__main__":
    main()
