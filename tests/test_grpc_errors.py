"""Every kind of bad input gets the right status and a message naming the tensor, and never harms the
server or other requests."""

import numpy as np
import pytest
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from conftest import MLP_DIMS, infer_input


def expect(call, status, *needles):
    with pytest.raises(InferenceServerException) as e:
        call()
    assert e.value.status() == f"StatusCode.{status}", e.value
    for n in needles:
        assert n in e.value.message(), e.value.message()
    return e.value


def raw_request(model, inputs, raw):
    req = service_pb2.ModelInferRequest(model_name=model)
    for name, datatype, shape in inputs:
        req.inputs.add(name=name, datatype=datatype, shape=shape)
    req.raw_input_contents.extend(raw)
    return req


def stub_call(client, req):
    def call():
        try:
            return client._client_stub.ModelInfer(req)
        except Exception as e:  # grpc.RpcError -> tritonclient's exception type
            from tritonclient.grpc._utils import get_error_grpc

            raise get_error_grpc(e) from None

    return call


X = np.zeros((1, MLP_DIMS[0]), np.float32)


def test_unknown_model_and_version_are_not_found(client):
    expect(lambda: client.infer("nope", [infer_input("INPUT0", X)]), "NOT_FOUND", "unknown model 'nope'")
    expect(lambda: client.infer("mlp_a", [infer_input("INPUT0", X)], model_version="7"), "NOT_FOUND", "version '7'")
    expect(lambda: client.infer("mlp_a", [infer_input("INPUT0", X)], model_version="latest"), "NOT_FOUND")
    expect(lambda: client.get_model_metadata("nope"), "NOT_FOUND")
    expect(lambda: client.get_model_config("nope"), "NOT_FOUND")


def test_wrong_datatype(client):
    expect(lambda: client.infer("mlp_a", [infer_input("INPUT0", X.astype(np.float64))]), "INVALID_ARGUMENT", "INPUT0", "FP64", "FP32")


def test_wrong_feature_dims(client):
    bad = np.zeros((1, MLP_DIMS[0] + 1), np.float32)
    expect(lambda: client.infer("mlp_a", [infer_input("INPUT0", bad)]), "INVALID_ARGUMENT", "INPUT0", "shape [1, 65]", "[-1, 64]")


def test_wrong_rank(client):
    expect(lambda: client.infer("mlp_a", [infer_input("INPUT0", np.zeros(MLP_DIMS[0], np.float32))]), "INVALID_ARGUMENT", "INPUT0", "shape [64]")


def test_batch_larger_than_max_batch_size(client):
    big = np.zeros((17, MLP_DIMS[0]), np.float32)
    expect(lambda: client.infer("mlp_a", [infer_input("INPUT0", big)]), "INVALID_ARGUMENT", "INPUT0", "17", "max_batch_size 16")


def test_byte_length_mismatch(client):
    req = raw_request("mlp_a", [("INPUT0", "FP32", [1, MLP_DIMS[0]])], [b"\0" * (4 * MLP_DIMS[0] - 2)])
    expect(stub_call(client, req), "INVALID_ARGUMENT", "INPUT0", "254 bytes", "256")


def test_raw_and_typed_contents_together(client):
    req = raw_request("mlp_a", [("INPUT0", "FP32", [1, MLP_DIMS[0]])], [b"\0" * (4 * MLP_DIMS[0])])
    req.inputs[0].contents.fp32_contents.extend([0.0] * MLP_DIMS[0])
    expect(stub_call(client, req), "INVALID_ARGUMENT", "INPUT0", "both")


def test_raw_contents_count_mismatch(client):
    req = raw_request("add_sub_int32", [("INPUT0", "INT32", [1, 16]), ("INPUT1", "INT32", [1, 16])], [b"\0" * 64])
    expect(stub_call(client, req), "INVALID_ARGUMENT", "1 entries for 2 inputs")


def test_typed_contents_count_and_kind(client):
    req = service_pb2.ModelInferRequest(model_name="mlp_a")
    t = req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, MLP_DIMS[0]])
    t.contents.fp32_contents.extend([1.0] * 3)
    expect(stub_call(client, req), "INVALID_ARGUMENT", "INPUT0", "3 values")
    req = service_pb2.ModelInferRequest(model_name="mlp_a")
    t = req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, MLP_DIMS[0]])
    t.contents.int_contents.extend([1] * MLP_DIMS[0])
    expect(stub_call(client, req), "INVALID_ARGUMENT", "INPUT0", "do not match")


def test_unknown_and_missing_inputs(client):
    expect(lambda: client.infer("mlp_a", [infer_input("INPUT9", X)]), "INVALID_ARGUMENT", "INPUT9", "INPUT0")
    a = np.zeros((1, 16), np.int32)
    expect(lambda: client.infer("add_sub_int32", [infer_input("INPUT0", a)]), "INVALID_ARGUMENT", "INPUT1")
    expect(lambda: client.infer("add_sub_int32", [infer_input("INPUT0", a), infer_input("INPUT0", a)]), "INVALID_ARGUMENT", "more than once")


def test_unknown_output(client):
    from tritonclient.grpc import InferRequestedOutput

    expect(lambda: client.infer("mlp_a", [infer_input("INPUT0", X)], outputs=[InferRequestedOutput("OUT9")]),
           "INVALID_ARGUMENT", "OUT9", "OUTPUT0")


def test_unknown_datatype_and_negative_shape(client):
    req = raw_request("mlp_a", [("INPUT0", "FLOAT32", [1, MLP_DIMS[0]])], [b"\0" * (4 * MLP_DIMS[0])])
    expect(stub_call(client, req), "INVALID_ARGUMENT", "unknown datatype 'FLOAT32'")
    req = raw_request("mlp_a", [("INPUT0", "FP32", [-1, MLP_DIMS[0]])], [b""])
    expect(stub_call(client, req), "INVALID_ARGUMENT", "negative")


def test_absurd_shapes_do_not_crash_the_server(client):
    for shape in ([2**40, 2**40], [2**62, 2**62, 2**62], [0, MLP_DIMS[0]]):
        req = raw_request("mlp_a", [("INPUT0", "FP32", shape)], [b"\0" * 16])
        expect(stub_call(client, req), "INVALID_ARGUMENT")
    req = raw_request("scale", [("x", "FP32", [2**61])], [b"\0" * 16])
    expect(stub_call(client, req), "INVALID_ARGUMENT", "x")


def test_bad_schedule_parameters(client):
    for key, value in (("timeout", "soon"), ("priority", -1)):
        req = raw_request("mlp_a", [("INPUT0", "FP32", [1, MLP_DIMS[0]])], [b"\0" * (4 * MLP_DIMS[0])])
        if isinstance(value, str):
            req.parameters[key].string_param = value
        else:
            req.parameters[key].int64_param = value
        expect(stub_call(client, req), "INVALID_ARGUMENT", key)


def test_server_still_serves_after_errors(client):
    y = client.infer("mlp_a", [infer_input("INPUT0", X)]).as_numpy("OUTPUT0")
    assert y.shape == (1, MLP_DIMS[2])
    stats = client.get_inference_statistics("mlp_a", as_json=True)["model_stats"][0]
    assert int(stats["inference_stats"]["fail"]["count"]) > 0


def test_sizes_taken_from_input_values_are_bounded(client):
    """A graph that allocates what the client's values say refuses absurd sizes instead of dying."""
    ok = client.infer("alloc_from_input", [infer_input("shape", np.array([2, 3], np.int64))]).as_numpy("y")
    assert ok.shape == (2, 3) and not ok.any()
    # Refused before anything is allocated, naming the operator and the limit.
    expect(lambda: client.infer("alloc_from_input", [infer_input("shape", np.array([1 << 31, 1 << 31], np.int64))]),
           "RESOURCE_EXHAUSTED", "ConstantOfShape", "--max-execution-memory")
    assert client.is_server_live()
