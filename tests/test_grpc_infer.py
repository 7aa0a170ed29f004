"""Inference through tritonclient[grpc]: results against numpy references, every datatype path the
models use, typed and raw contents, output subsets, ids, versions, large tensors."""

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2

import modelgen
from conftest import MLP_DIMS, MLP_SEEDS, infer_input, relative_error


def mlp_ref(x, seed):
    return modelgen.mlp_reference(x, seed, *MLP_DIMS)


@pytest.mark.parametrize("name", sorted(MLP_SEEDS))
@pytest.mark.parametrize("rows", [1, 3, 16])
def test_mlp_matches_numpy(client, name, rows):
    x = np.random.default_rng(rows).standard_normal((rows, MLP_DIMS[0])).astype(np.float32)
    result = client.infer(name, [infer_input("INPUT0", x)])
    y = result.as_numpy("OUTPUT0")
    assert y.shape == (rows, MLP_DIMS[2])
    assert relative_error(y, mlp_ref(x, MLP_SEEDS[name])) < 1e-5
    response = result.get_response(as_json=True)
    assert response["model_name"] == name
    assert response["model_version"] == "1"


def test_models_with_different_weights_give_different_results(client):
    x = np.ones((1, MLP_DIMS[0]), np.float32)
    ys = [client.infer(n, [infer_input("INPUT0", x)]).as_numpy("OUTPUT0") for n in sorted(MLP_SEEDS)]
    assert not np.allclose(ys[0], ys[1])


@pytest.mark.parametrize("dtype,name", [(np.int32, "add_sub_int32"), (np.int64, "add_sub_int64")])
def test_integer_add_sub_is_exact(client, dtype, name):
    info = np.iinfo(dtype)
    a = np.array([[0, 1, -1, 7, info.max, info.min, 123456, -98765] * 2], dtype=dtype)
    b = np.array([[5, -3, 2, 7, 1, -1, 654321, 12345] * 2], dtype=dtype)
    r = client.infer(name, [infer_input("INPUT0", a), infer_input("INPUT1", b)])
    with np.errstate(over="ignore"):
        assert np.array_equal(r.as_numpy("OUTPUT0"), a + b)  # wraps like the model's arithmetic
        assert np.array_equal(r.as_numpy("OUTPUT1"), a - b)
    assert r.as_numpy("OUTPUT0").dtype == dtype


def test_fp16_model(client):
    x = np.random.default_rng(1).standard_normal((4, 16)).astype(np.float16)
    y = client.infer("mlp_fp16", [infer_input("INPUT0", x)]).as_numpy("OUTPUT0")
    assert y.dtype == np.float16
    want = modelgen.mlp_reference(x.astype(np.float32), 31, 16, 32, 8, dtype=np.float16)
    assert relative_error(y, want) < 2e-2


def test_requested_output_subset_and_id(client):
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 3, np.int32)
    r = client.infer("add_sub_int32", [infer_input("INPUT0", a), infer_input("INPUT1", b)],
                     outputs=[grpcclient.InferRequestedOutput("OUTPUT1")], request_id="req-42")
    assert r.as_numpy("OUTPUT0") is None
    assert np.array_equal(r.as_numpy("OUTPUT1"), a - b)
    assert r.get_response().id == "req-42"


def test_typed_contents_are_accepted(client):
    """FP32 and INT32 sent in typed `contents` fields instead of raw bytes."""
    x = np.random.default_rng(2).standard_normal((2, MLP_DIMS[0])).astype(np.float32)
    req = service_pb2.ModelInferRequest(model_name="mlp_b")
    t = req.inputs.add(name="INPUT0", datatype="FP32", shape=[2, MLP_DIMS[0]])
    t.contents.fp32_contents.extend(x.ravel().tolist())
    resp = client._client_stub.ModelInfer(req)
    y = np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(2, MLP_DIMS[2])
    assert relative_error(y, mlp_ref(x, MLP_SEEDS["mlp_b"])) < 1e-5

    req = service_pb2.ModelInferRequest(model_name="add_sub_int32")
    for name, values in (("INPUT0", range(16)), ("INPUT1", [-5] * 16)):
        t = req.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        t.contents.int_contents.extend(values)
    resp = client._client_stub.ModelInfer(req)
    assert list(np.frombuffer(resp.raw_output_contents[0], np.int32)) == [v - 5 for v in range(16)]


def test_version_selection(client):
    x = np.random.default_rng(3).standard_normal((2, MLP_DIMS[0])).astype(np.float32)
    latest = client.infer("mlp_versions", [infer_input("INPUT0", x)])
    assert latest.get_response().model_version == "2"
    assert relative_error(latest.as_numpy("OUTPUT0"), mlp_ref(x, 22)) < 1e-5
    v1 = client.infer("mlp_versions", [infer_input("INPUT0", x)], model_version="1")
    assert relative_error(v1.as_numpy("OUTPUT0"), mlp_ref(x, 21)) < 1e-5


def test_tensor_larger_than_4_mib(client):
    n = 3_000_000  # 12 MB in, 12 MB out: over tonic's and grpc's default 4 MiB limits
    x = np.random.default_rng(4).standard_normal(n).astype(np.float32)
    y = client.infer("scale", [infer_input("x", x)]).as_numpy("y")
    assert y.shape == (n,)
    assert np.array_equal(y, x * 2)


def test_transformer_encoder_with_padding_mask(client, tmp_path):
    import onnxruntime as ort

    path = modelgen.bert_encoder(str(tmp_path / "bert.onnx"))
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 96, (3, 11)).astype(np.int64)
    mask = np.ones((3, 11), np.int64)
    mask[1, 6:] = 0
    mask[2, 2:] = 0
    want = ort.InferenceSession(path).run(None, {"input_ids": ids, "attention_mask": mask})[0]
    got = client.infer("bert", [infer_input("input_ids", ids), infer_input("attention_mask", mask)]).as_numpy("last_hidden_state")
    assert got.shape == (3, 11, 32)
    assert relative_error(got, want) < 1e-4


NUMPY_TYPES = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
    "FP32": np.float32, "FP64": np.float64,
}


@pytest.mark.parametrize("wire", sorted(NUMPY_TYPES) + ["BF16"])
def test_every_datatype_round_trips_exactly(client, wire):
    rng = np.random.default_rng(6)
    if wire == "BF16":
        import ml_dtypes

        x = (rng.integers(-1000, 1000, (3, 8)) / 8).astype(ml_dtypes.bfloat16)
        inp = grpcclient.InferInput("x", [3, 8], "BF16")
        inp.set_data_from_numpy(x)
        y = client.infer("double_bf16", [inp]).as_numpy("y")
        assert np.array_equal(y.astype(np.float32), (x + x).astype(np.float32))
        return
    t = NUMPY_TYPES[wire]
    if t is np.bool_:
        x = rng.integers(0, 2, (3, 8)).astype(bool)
        want = ~x
    elif np.issubdtype(t, np.integer):
        info = np.iinfo(t)
        x = rng.integers(info.min, info.max, (3, 8), dtype=t, endpoint=True)
        x[0, :2] = [info.min, info.max]
        with np.errstate(over="ignore"):
            want = x + x  # wraps, as the model's arithmetic does
    else:
        x = rng.standard_normal((3, 8)).astype(t)
        want = x + x
    y = client.infer(f"double_{wire.lower()}", [infer_input("x", x)]).as_numpy("y")
    assert y.dtype == want.dtype
    assert np.array_equal(y, want), (wire, x, y)


def test_batched_results_equal_the_request_run_alone(server, client):
    """The same rows give the same bits whether they run alone or inside a larger batch."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(12)
    xs = [rng.standard_normal((int(rng.integers(1, 4)), MLP_DIMS[0])).astype(np.float32) for _ in range(64)]
    alone = [client.infer("mlp_a", [infer_input("INPUT0", x)]).as_numpy("OUTPUT0") for x in xs]

    def one(x):
        c = server.client()
        try:
            return c.infer("mlp_a", [infer_input("INPUT0", x)]).as_numpy("OUTPUT0")
        finally:
            c.close()

    with ThreadPoolExecutor(32) as pool:
        batched = list(pool.map(one, xs))
    for a, b in zip(alone, batched):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)
