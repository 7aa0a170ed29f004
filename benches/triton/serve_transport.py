#!/usr/bin/env python3
"""Serves the transport benchmark's two models with NVIDIA Triton (the tritonserver bundled in PyPI's
nvidia-pytriton), numpy in Triton's Python backend: `identity` (y = x) and `reduce` (y = [mean(x)]),
FP32 of any length, no batching. For benches/shm_transport.py only.

    serve_transport.py --grpc-port 8101 --http-port 8100 --metrics-port 8102
"""

import argparse
import signal
import sys

import numpy as np
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

try:  # PyTriton >= 0.7 guards statistics and shared memory behind a token unless told not to.
    from pytriton.triton import TritonSecurityConfig
except ImportError:  # pragma: no cover
    TritonSecurityConfig = None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--grpc-port", type=int, default=8101)
    p.add_argument("--http-port", type=int, default=8100)
    p.add_argument("--metrics-port", type=int, default=8102)
    args = p.parse_args()

    # Without batching a callable gets the list of requests and answers each.
    def identity(requests):
        return [{"y": r["x"]} for r in requests]

    def reduce(requests):
        return [{"y": np.asarray([r["x"].mean()], dtype=np.float32)} for r in requests]

    config = TritonConfig(grpc_port=args.grpc_port, http_port=args.http_port, metrics_port=args.metrics_port)
    kwargs = {"config": config}
    if TritonSecurityConfig is not None:
        kwargs["security_config"] = TritonSecurityConfig(restricted_endpoints=["model-repository", "trace", "logging"])
    with Triton(**kwargs) as triton:
        for name, fn, out in (("identity", identity, (-1,)), ("reduce", reduce, (1,))):
            triton.bind(
                model_name=name,
                infer_func=fn,
                inputs=[Tensor(name="x", dtype=np.float32, shape=(-1,))],
                outputs=[Tensor(name="y", dtype=np.float32, shape=out)],
                config=ModelConfig(batching=False),
            )
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        triton.serve()


if __name__ == "__main__":
    main()
