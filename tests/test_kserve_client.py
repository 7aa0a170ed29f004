"""The KServe Python SDK's own inference clients (kserve 0.21: `InferenceRESTClient` and
`InferenceGRPCClient`, the clients KServe's transformers and predictors use) against Accel: health,
readiness and inference over the Open Inference Protocol, unchanged.

kserve and tritonclient both register the `inference` protobuf package in protobuf's default pool,
so they cannot be imported by one process: the SDK runs in a process of its own (`kserve_session`)
and reports what it saw as JSON."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import modelgen
from conftest import HERE, MLP_DIMS, MLP_SEEDS

SESSION = r'''
import asyncio, json, sys
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

grpc_url, http_url = sys.argv[1], "http://" + sys.argv[2]
x = np.asarray(json.loads(sys.argv[3]), np.float32)
TOKENS = json.loads(sys.argv[4])

async def main():
    out = {}
    rest = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    try:
        out["rest_live"] = await rest.is_server_live(http_url)
        out["rest_ready"] = await rest.is_server_ready(http_url)
        out["rest_model_ready"] = await rest.is_model_ready(http_url, "mlp_a")
        out["rest_missing_ready"] = await rest.is_model_ready(http_url, "no_such_model")
        r = await rest.infer(http_url, InferRequest("mlp_a", [InferInput("INPUT0", list(x.shape), "FP32", x)]),
                             model_name="mlp_a")
        out["rest_y"] = r.get_output_by_name("OUTPUT0").as_numpy().tolist()
    finally:
        await rest.close()
    grpc = InferenceGRPCClient(grpc_url, timeout=30)
    try:
        out["grpc_live"] = await grpc.is_server_live()
        out["grpc_ready"] = await grpc.is_server_ready()
        out["grpc_model_ready"] = await grpc.is_model_ready("mlp_b")
        inp = InferInput("INPUT0", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=False)
        r = await grpc.infer(InferRequest("mlp_b", [inp]))
        out["grpc_y"] = np.asarray(r.get_output_by_name("OUTPUT0").as_numpy()).reshape(x.shape[0], -1).tolist()
        # What KServe's Hugging Face transformer sends a v2 predictor: INT64 input_ids and
        # attention_mask of each request's own length, concurrently.
        async def encode(ids):
            ids = np.asarray([ids], np.int64)
            inputs = [InferInput("input_ids", list(ids.shape), "INT64"),
                      InferInput("attention_mask", list(ids.shape), "INT64")]
            inputs[0].set_data_from_numpy(ids)
            inputs[1].set_data_from_numpy(np.ones_like(ids))
            r = await grpc.infer(InferRequest("bert_padded", inputs))
            return np.asarray(r.get_output_by_name("last_hidden_state").as_numpy()).reshape(ids.shape[1], -1).tolist()
        out["bert"] = await asyncio.gather(*(encode(t) for t in TOKENS))
    finally:
        await grpc.close()
    print(json.dumps(out))

asyncio.run(main())
'''


def test_kserve_sdk_clients_work_unchanged(server, main_repository):
    import importlib.util

    if importlib.util.find_spec("kserve") is None:
        pytest.fail("the kserve SDK is missing: it is in tests/requirements.txt")
    x = np.random.default_rng(3).standard_normal((2, MLP_DIMS[0])).astype(np.float32)
    rng = np.random.default_rng(4)
    tokens = [rng.integers(1, 96, size=n).tolist() for n in (3, 9, 17, 30, 2, 25)]
    done = subprocess.run([sys.executable, "-c", SESSION, server.url, server.http_url, json.dumps(x.tolist()),
                           json.dumps(tokens)],
                          capture_output=True, text=True, timeout=120, cwd=HERE,
                          env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["rest_live"] is True and out["rest_ready"] is True
    assert out["rest_model_ready"] is True and out["rest_missing_ready"] is False
    assert out["grpc_live"] is True and out["grpc_ready"] is True and out["grpc_model_ready"] is True
    for key, seed in (("rest_y", MLP_SEEDS["mlp_a"]), ("grpc_y", MLP_SEEDS["mlp_b"])):
        want = modelgen.mlp_reference(x, seed, *MLP_DIMS)
        assert np.allclose(np.asarray(out[key]), want, atol=1e-4), key
    import onnxruntime as ort

    session = ort.InferenceSession(os.path.join(main_repository, "bert_padded", "1", "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    for ids, got in zip(tokens, out["bert"]):
        ids = np.asarray([ids], np.int64)
        want = session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0][0]
        assert np.asarray(got).shape == want.shape
        assert np.abs(np.asarray(got) - want).max() <= 1e-4 * max(1.0, np.abs(want).max())
