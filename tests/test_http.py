"""REST v2 through tritonclient[http]: health, metadata, configuration, statistics, inference with JSON
tensors and with the binary tensor extension, errors as {"error": ...} with the right status."""

import json
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

import modelgen
from conftest import MLP_DIMS, MLP_SEEDS, relative_error


@pytest.fixture()
def http(server):
    c = server.http_client()
    yield c
    c.close()


def http_input(name, array, binary=True):
    i = httpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    i.set_data_from_numpy(array, binary_data=binary)
    return i


def raw(server, method, path, body=None, headers=None):
    req = urllib.request.Request(f"http://{server.http_url}{path}", data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_health_and_server_metadata(server, http):
    assert http.is_server_live()
    assert http.is_server_ready()
    meta = http.get_server_metadata()
    assert meta["name"] == "accel"
    assert "binary_tensor_data" in meta["extensions"]
    assert raw(server, "GET", "/v2/health/live")[0] == 200
    assert raw(server, "GET", "/v2/health/ready")[0] == 200


def test_model_metadata_config_ready_and_index(http):
    meta = http.get_model_metadata("mlp_a")
    assert meta["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, 64]}]
    assert meta["versions"] == ["1"]
    config = http.get_model_config("mlp_a")
    assert config["max_batch_size"] == 16
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    assert config["input"][0]["dims"] == [64]
    assert http.is_model_ready("mlp_a")
    assert http.is_model_ready("mlp_versions", "1")
    assert not http.is_model_ready("broken_file")
    assert not http.is_model_ready("nope")
    index = {m["name"]: m for m in http.get_model_repository_index()}
    assert index["mlp_a"]["state"] == "READY"
    assert index["broken_file"]["state"] == "UNAVAILABLE"
    assert "not an ONNX model" in index["broken_file"]["reason"]


@pytest.mark.parametrize("binary_in,binary_out", [(False, False), (True, True), (True, False), (False, True)])
def test_mlp_json_and_binary_tensors(http, binary_in, binary_out):
    x = np.random.default_rng(20).standard_normal((3, MLP_DIMS[0])).astype(np.float32)
    result = http.infer("mlp_c", [http_input("INPUT0", x, binary_in)],
                        outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary_out)], request_id="h1")
    y = result.as_numpy("OUTPUT0")
    assert y.shape == (3, MLP_DIMS[2])
    assert relative_error(y, modelgen.mlp_reference(x, MLP_SEEDS["mlp_c"], *MLP_DIMS)) < 1e-5
    response = result.get_response()
    assert response["id"] == "h1"
    assert response["model_version"] == "1"


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_integer_json_and_binary(http, dtype):
    a = np.arange(-8, 8, dtype=dtype).reshape(1, 16)
    b = np.full((1, 16), 3, dtype)
    for binary in (False, True):
        r = http.infer(f"add_sub_{np.dtype(dtype).name}", [http_input("INPUT0", a, binary), http_input("INPUT1", b, binary)],
                       outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary),
                                httpclient.InferRequestedOutput("OUTPUT1", binary_data=binary)])
        assert np.array_equal(r.as_numpy("OUTPUT0"), a + b)
        assert np.array_equal(r.as_numpy("OUTPUT1"), a - b)


def test_bool_and_fp16_over_http(http):
    x = np.array([[True, False, True, True, False, False, True, False]])
    y = http.infer("double_bool", [http_input("x", x, binary=False)],
                   outputs=[httpclient.InferRequestedOutput("y", binary_data=False)]).as_numpy("y")
    assert np.array_equal(y, ~x)
    h = np.random.default_rng(21).standard_normal((2, 8)).astype(np.float16)
    y = http.infer("double_fp16", [http_input("x", h)]).as_numpy("y")
    assert y.dtype == np.float16 and np.array_equal(y, h + h)


def test_nested_json_data_and_raw_binary_body(server):
    x = np.arange(6, dtype=np.float32)
    body = json.dumps({"inputs": [{"name": "x", "shape": [6], "datatype": "FP32", "data": [[0, 1, 2], [3, 4, 5]]}]}).encode()
    status, _, out = raw(server, "POST", "/v2/models/scale/infer", body, {"Content-Type": "application/json"})
    assert status == 200, out
    assert json.loads(out)["outputs"][0]["data"] == (x * 2).tolist()
    # Inference-Header-Content-Length: 0 -> the body is the one input's bytes; outputs come back binary.
    status, headers, out = raw(server, "POST", "/v2/models/scale/infer", x.tobytes(), {"Inference-Header-Content-Length": "0"})
    assert status == 200, out
    n = int(headers["inference-header-content-length"])
    header = json.loads(out[:n])
    assert header["outputs"][0]["parameters"]["binary_data_size"] == 24
    assert np.array_equal(np.frombuffer(out[n:], np.float32), x * 2)


def error_of(server, path, body, headers=None):
    status, _, out = raw(server, "POST", path, body, headers or {"Content-Type": "application/json"})
    return status, json.loads(out)["error"]


def test_errors_have_status_codes_and_an_error_body(server, http):
    x = np.zeros((1, MLP_DIMS[0]), np.float32)
    with pytest.raises(InferenceServerException) as e:
        http.infer("nope", [http_input("INPUT0", x)])
    assert e.value.status() == "404" and "unknown model 'nope'" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        http.infer("mlp_a", [http_input("INPUT0", np.zeros((1, 65), np.float32))])
    assert e.value.status() == "400" and "INPUT0" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        http.infer("mlp_a", [http_input("INPUT0", x.astype(np.float64))])
    assert e.value.status() == "400" and "FP64" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        http.infer("unsupported_op", [http_input("a", np.zeros((2, 3), np.float32)), http_input("b", np.zeros((3, 4), np.float32))])
    assert e.value.status() == "503" and "Einsum" in e.value.message()
    body = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 64], "datatype": "FP32", "data": [1.0, 2.0]}]}).encode()
    assert error_of(server, "/v2/models/mlp_a/infer", body) == (400, "input 'INPUT0': 2 values in data, but shape [1, 64] needs 64")
    status, message = error_of(server, "/v2/models/mlp_a/infer", b"{not json")
    assert status == 400 and "not valid inference JSON" in message
    status, message = error_of(server, "/v2/models/mlp_a/infer", b"{}", {"Inference-Header-Content-Length": "99"})
    assert status == 400 and "99" in message
    status, message = error_of(server, "/v2/systemsharedmemory/region/r/register", b'{"key": "/accel_never", "byte_size": 16}')
    assert status == 501 and "--allow-client-shm" in message
    status, message = error_of(server, "/v2/repository/models/nope/load", b"")
    assert status == 404 and "nope" in message
    status, message = error_of(server, "/v2/repository/models/mlp_a/load", b'{"parameters": {"config": "{not json"}}')
    assert status == 400 and "config" in message
    status, _, out = raw(server, "GET", "/v2/no/such/endpoint")
    assert status == 404 and "error" in json.loads(out)


def test_statistics_over_http_match_grpc(http, client):
    x = np.zeros((2, MLP_DIMS[0]), np.float32)
    http.infer("mlp_versions", [http_input("INPUT0", x)], model_version="1")
    h = http.get_inference_statistics("mlp_versions", "1")["model_stats"][0]
    g = client.get_inference_statistics("mlp_versions", "1", as_json=True)["model_stats"][0]
    assert h["inference_count"] == int(g["inference_count"]) >= 2
    assert h["execution_count"] == int(g["execution_count"])
    assert h["inference_stats"]["success"]["count"] == int(g["inference_stats"]["success"]["count"])


def test_log_settings_over_grpc_and_http(http, client):
    settings = http.get_log_settings()
    assert settings["log_info"] is True
    assert settings["log_verbose_level"] == 0
    updated = http.update_log_settings({"log_verbose_level": 1})
    assert updated["log_verbose_level"] == 1
    g = client.get_log_settings(as_json=True)["settings"]
    assert g["log_verbose_level"]["uint32_param"] == 1
    client.update_log_settings({"log_verbose_level": 0})
    assert http.get_log_settings()["log_verbose_level"] == 0
    with pytest.raises(InferenceServerException) as e:
        http.update_log_settings({"log_colour": "blue"})
    assert e.value.status() == "400"
