"""Shared harness for the end-to-end tests: model repositories written into temporary directories,
the real `accel` binary started on free ports, and Triton's own Python client talking to it.

The binary is $ACCEL_BIN, or target/debug/accel (built by scripts/test.sh before pytest runs).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import fetch_models  # noqa: E402
import modelgen  # noqa: E402
import opmodels  # noqa: E402

# Where cargo put the debug build (CARGO_TARGET_DIR moves it).
TARGET_DIR = os.path.join(ROOT, os.environ.get("CARGO_TARGET_DIR", "target"))
ACCEL_BIN = os.environ.get("ACCEL_BIN", os.path.join(TARGET_DIR, "debug", "accel"))

# Distinct seeded MLPs: a mix-up between models shows as a wrong result.
MLP_SEEDS = {"mlp_a": 11, "mlp_b": 12, "mlp_c": 13}
MLP_DIMS = (64, 128, 32)

# Protocol datatype -> ONNX element type of the y = x + x models.
DATATYPE_MODELS = {
    "BOOL": 9, "UINT8": 2, "UINT16": 4, "UINT32": 12, "UINT64": 13, "INT8": 3, "INT16": 5, "INT32": 6,
    "INT64": 7, "FP16": 10, "FP32": 1, "FP64": 11, "BF16": 16,
}


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nothing listens on, never one this test process handed out before.

    The kernel may give the same ephemeral port to two binds in a row once the
    first socket is closed, so a server asked for three ports could get two equal
    ones; remembering what was handed out rules that out.
    """
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


class Server:
    """A running `accel serve` process."""

    def __init__(self, repository: str, log_path: str, extra_args=(), ready_timeout=120.0):
        self.port, self.http_port, self.metrics_port = free_port(), free_port(), free_port()
        self.url = f"127.0.0.1:{self.port}"
        self.http_url = f"127.0.0.1:{self.http_port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self.log_path = log_path
        self._log = open(log_path, "w")
        args = [ACCEL_BIN, "serve", "--model-repository", repository, "--grpc-port", str(self.port),
                "--http-port", str(self.http_port), "--metrics-port", str(self.metrics_port),
                "--metrics-address", "127.0.0.1", "--metrics-interval-ms", "200", *extra_args]
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)
        client = grpcclient.InferenceServerClient(self.url)
        deadline = time.monotonic() + ready_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"accel exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if client.is_server_ready():
                    break
            except Exception:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"accel not ready after {ready_timeout}s:\n{self.log()}")
            time.sleep(0.05)
        client.close()

    def client(self) -> grpcclient.InferenceServerClient:
        return grpcclient.InferenceServerClient(self.url)

    def http_client(self):
        import tritonclient.http as httpclient

        return httpclient.InferenceServerClient(self.http_url)

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(self.metrics_url, timeout=10) as r:
            return r.read().decode()

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        with open(self.log_path) as f:
            return f.read()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def build_main_repository(root: str) -> str:
    """Models for the protocol, batching and error tests."""
    d_in, d_hidden, d_out = MLP_DIMS
    for name, seed in MLP_SEEDS.items():
        modelgen.mlp(os.path.join(root, name, "1", "model.onnx"), seed, d_in, d_hidden, d_out)
        modelgen.write_config(os.path.join(root, name),
                              modelgen.mlp_config(name, max_batch_size=16, delay_us=2000, d_in=d_in, d_out=d_out))
    # The same weights without dynamic batching.
    modelgen.mlp(os.path.join(root, "mlp_direct", "1", "model.onnx"), 11, d_in, d_hidden, d_out)
    modelgen.write_config(os.path.join(root, "mlp_direct"),
                          modelgen.mlp_config("mlp_direct", max_batch_size=16, d_in=d_in, d_out=d_out, batching=False))
    # Two versions with different weights; the newest serves by default.
    modelgen.mlp(os.path.join(root, "mlp_versions", "1", "model.onnx"), 21, d_in, d_hidden, d_out)
    modelgen.mlp(os.path.join(root, "mlp_versions", "2", "model.onnx"), 22, d_in, d_hidden, d_out)
    modelgen.write_config(os.path.join(root, "mlp_versions"),
                          modelgen.mlp_config("mlp_versions", d_in=d_in, d_out=d_out) + "version_policy: { all: {} }\n")
    # FP16 weights and tensors, no config: completed from the graph (batchable).
    modelgen.mlp(os.path.join(root, "mlp_fp16", "1", "model.onnx"), 31, 16, 32, 8, dtype=np.float16)
    # Integer add/sub, Triton's "simple".
    modelgen.add_sub(os.path.join(root, "add_sub_int32", "1", "model.onnx"), np.int32, dims=16, batch=True)
    modelgen.add_sub(os.path.join(root, "add_sub_int64", "1", "model.onnx"), np.int64, dims=16, batch=True)
    # Large tensors: y = 2x over any length, no batch dimension.
    modelgen.scale_model(os.path.join(root, "scale", "1", "model.onnx"))
    modelgen.write_config(os.path.join(root, "scale"), """max_batch_size: 0
input [ { name: "x" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ -1 ] } ]
""")
    # A slow model with a tiny bounded queue and a short queue timeout.
    modelgen.slow_model(os.path.join(root, "slow_bounded", "1", "model.onnx"))
    modelgen.write_config(os.path.join(root, "slow_bounded"), """max_batch_size: 1
input [ { name: "x" data_type: TYPE_FP32 dims: [ 1024 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 1024 ] } ]
dynamic_batching { default_queue_policy { max_queue_size: 2 } }
""")
    modelgen.slow_model(os.path.join(root, "slow_timeout", "1", "model.onnx"))
    modelgen.write_config(os.path.join(root, "slow_timeout"), """max_batch_size: 1
input [ { name: "x" data_type: TYPE_FP32 dims: [ 1024 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 1024 ] } ]
dynamic_batching {
  default_queue_policy { timeout_action: REJECT default_timeout_microseconds: 1000000 allow_timeout_override: true }
}
""")
    # Every datatype the protocol names, through a y = x + x model (Not for BOOL).
    for wire, elem in DATATYPE_MODELS.items():
        modelgen.double_model(os.path.join(root, f"double_{wire.lower()}", "1", "model.onnx"), elem)
    # Two instances: two executor threads share the queue.
    modelgen.mlp(os.path.join(root, "mlp_two_instances", "1", "model.onnx"), 13, d_in, d_hidden, d_out)
    modelgen.write_config(os.path.join(root, "mlp_two_instances"),
                          modelgen.mlp_config("mlp_two_instances", max_batch_size=16, d_in=d_in, d_out=d_out).replace("count: 1", "count: 2"))
    # Priority levels on a slow model.
    # Slow enough (tens of ms per execution) that requests queue behind it on any machine.
    modelgen.slow_model(os.path.join(root, "slow_priority", "1", "model.onnx"), repeats=512)
    modelgen.write_config(os.path.join(root, "slow_priority"), """max_batch_size: 1
input [ { name: "x" data_type: TYPE_FP32 dims: [ 1024 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 1024 ] } ]
dynamic_batching { priority_levels: 2 default_priority_level: 2 }
""")
    # A tensor whose size comes from the client's values.
    import onnx
    from onnx import TensorProto, helper
    onnx.save(modelgen.make_model([helper.make_node("ConstantOfShape", ["shape"], ["y"])],
                                  [helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])]),
              os.path.join(root, "alloc_from_input", "1", "model.onnx") if os.makedirs(os.path.join(root, "alloc_from_input", "1"), exist_ok=True) is None else None)
    # A transformer encoder as PyTorch exports it.
    modelgen.bert_encoder(os.path.join(root, "bert", "1", "model.onnx"))
    # The same kind of encoder with padded batching across lengths (what KServe's transformer feeds).
    modelgen.bert_encoder(os.path.join(root, "bert_padded", "1", "model.onnx"), seed=2, pooled=True)
    modelgen.write_config(os.path.join(root, "bert_padded"), modelgen.padded_bert_config("bert_padded", max_batch_size=8))
    # Broken models: each must be UNAVAILABLE with its reason while the others serve.
    modelgen.write_config(os.path.join(root, "broken_config"), "name: \"broken_config\"\nmax_batch_size: \"many\"\n")
    os.makedirs(os.path.join(root, "broken_file", "1"), exist_ok=True)
    with open(os.path.join(root, "broken_file", "1", "model.onnx"), "wb") as f:
        f.write(b"this is not an onnx file")
    os.makedirs(os.path.join(root, "no_versions"), exist_ok=True)
    opmodels_unsupported = opmodels.unsupported_model()
    os.makedirs(os.path.join(root, "unsupported_op", "1"), exist_ok=True)
    import onnx
    onnx.save(opmodels_unsupported, os.path.join(root, "unsupported_op", "1", "model.onnx"))
    os.makedirs(os.path.join(root, "unsupported_in_branch", "1"), exist_ok=True)
    onnx.save(opmodels.unsupported_in_branch_model(), os.path.join(root, "unsupported_in_branch", "1", "model.onnx"))
    modelgen.mlp(os.path.join(root, "wrong_config", "1", "model.onnx"), 5, 8, 8, 8)
    modelgen.write_config(os.path.join(root, "wrong_config"), modelgen.mlp_config("wrong_config", d_in=9, d_out=8))
    return root


@pytest.fixture(scope="session")
def main_repository(tmp_path_factory) -> str:
    return build_main_repository(str(tmp_path_factory.mktemp("repo")))


@pytest.fixture(scope="session")
def server(main_repository, tmp_path_factory):
    # Every model loaded at start, so that the tests see the broken ones UNAVAILABLE from the start
    # (test_residency.py covers the default on-demand mode).
    s = Server(main_repository, str(tmp_path_factory.mktemp("logs") / "accel.log"),
               extra_args=["--model-control-mode", "none"])
    yield s
    s.stop()


@pytest.fixture()
def client(server):
    c = server.client()
    yield c
    c.close()


@pytest.fixture(scope="session")
def op_cases():
    return {name: (model, inputs) for name, model, inputs in opmodels.cases()}


@pytest.fixture(scope="session")
def op_server(op_cases, tmp_path_factory):
    import onnx
    root = tmp_path_factory.mktemp("ops")
    for name, (model, _) in op_cases.items():
        os.makedirs(root / name / "1")
        onnx.save(model, str(root / name / "1" / "model.onnx"))
    s = Server(str(root), str(tmp_path_factory.mktemp("logs") / "accel-ops.log"))
    yield s
    s.stop()


@pytest.fixture(scope="session")
def real_models():
    """Real exported models from PyPI wheels (fetched by tests/fetch_models.py beforehand)."""
    cache = os.environ.get("ACCEL_MODEL_CACHE", fetch_models.DEFAULT_CACHE)
    paths = {name: fetch_models.model_path(cache, name) for name in fetch_models.MODELS}
    missing = [n for n, p in paths.items() if not os.path.exists(p)]
    if missing:
        pytest.fail(f"models {missing} are missing: run `python3 tests/fetch_models.py` first (scripts/test.sh does)")
    return paths


def ort_library() -> str:
    """The ONNX Runtime shared library inside the installed onnxruntime wheel (for --onnxruntime-library)."""
    import glob

    import onnxruntime

    capi = os.path.join(os.path.dirname(onnxruntime.__file__), "capi")
    found = sorted(glob.glob(os.path.join(capi, "libonnxruntime.so.1*")))
    if not found:
        pytest.fail(f"no libonnxruntime.so.1* in {capi}: is PyPI's onnxruntime installed?")
    return found[-1]


def scrape(server) -> dict:
    """/metrics parsed as Prometheus parses it: {(name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    samples = {}
    for family in text_string_to_metric_families(server.metrics()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: dict, name: str) -> float:
    """A metric summed over every label set."""
    return sum(v for (n, _), v in samples.items() if n == name)


def infer_input(name: str, array: np.ndarray) -> grpcclient.InferInput:
    from tritonclient.utils import np_to_triton_dtype

    i = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    i.set_data_from_numpy(array)
    return i


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """Largest absolute difference relative to the largest reference value (floored at 1e-3, so that
    outputs that are all but zero are compared absolutely)."""
    got = got.astype(np.float64)
    want = want.astype(np.float64)
    scale = max(float(np.abs(want).max(initial=0.0)), 1e-3)
    return float(np.abs(got - want).max(initial=0.0)) / scale
