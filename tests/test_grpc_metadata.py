"""Server and model metadata, configuration, repository index and health, through tritonclient."""

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException


def test_server_live_ready_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "accel"
    assert set(meta["extensions"]) >= {"model_configuration", "statistics"}
    # Only what is implemented is claimed.
    assert "model_repository" in meta["extensions"]
    assert "system_shared_memory" in meta["extensions"]
    assert "cuda_shared_memory" not in meta["extensions"]


def test_model_metadata_reports_batch_dimension(client):
    meta = client.get_model_metadata("mlp_a", as_json=True)
    assert meta["name"] == "mlp_a"
    assert meta["versions"] == ["1"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": ["-1", "64"]}]
    assert meta["outputs"] == [{"name": "OUTPUT0", "datatype": "FP32", "shape": ["-1", "32"]}]


def test_model_without_config_is_completed_from_the_graph(client):
    meta = client.get_model_metadata("mlp_fp16", as_json=True)
    assert meta["inputs"][0]["datatype"] == "FP16"
    assert meta["inputs"][0]["shape"] == ["-1", "16"]
    config = client.get_model_config("mlp_fp16", as_json=True)["config"]
    assert config["name"] == "mlp_fp16"
    assert config["max_batch_size"] == 32  # --default-max-batch-size
    assert "dynamic_batching" in config
    ints = client.get_model_config("add_sub_int32", as_json=True)["config"]
    assert [i["name"] for i in ints["input"]] == ["INPUT0", "INPUT1"]
    assert ints["input"][0]["data_type"] == "TYPE_INT32"


def test_model_config_matches_config_pbtxt(client):
    config = client.get_model_config("mlp_a", as_json=True)["config"]
    assert config["max_batch_size"] == 16
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == "2000"
    assert config["input"][0]["dims"] == ["64"]
    assert config["instance_group"][0]["kind"] == "KIND_CPU"


def test_versions(client):
    meta = client.get_model_metadata("mlp_versions", as_json=True)
    assert meta["versions"] == ["1", "2"]
    assert client.is_model_ready("mlp_versions", "1")
    assert client.is_model_ready("mlp_versions", "2")
    assert not client.is_model_ready("mlp_versions", "3")


def test_repository_index_reports_every_model_and_why_some_are_unavailable(client):
    index = {(m["name"], m.get("version", "")): m for m in client.get_model_repository_index(as_json=True)["models"]}
    assert index[("mlp_a", "1")]["state"] == "READY"
    assert index[("mlp_versions", "2")]["state"] == "READY"
    reasons = {
        "broken_config": "max_batch_size",
        "broken_file": "not an ONNX model",
        "no_versions": "no version directory",
        "unsupported_op": "Einsum",
        "unsupported_in_branch": "Einsum",
        "wrong_config": "[9]",
    }
    for name, needle in reasons.items():
        entry = next(m for (n, _), m in index.items() if n == name)
        assert entry["state"] == "UNAVAILABLE", entry
        assert needle in entry["reason"], entry
    ready_only = client.get_model_repository_index(as_json=True)
    assert ready_only


def test_unavailable_model_requests_say_why(client):
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("unsupported_op")
    assert "UNAVAILABLE" in e.value.status()
    assert "Einsum" in e.value.message()
    assert not client.is_model_ready("broken_file")


def test_grpc_health_check(server):
    with grpc.insecure_channel(server.url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        assert stub.Check(health_pb2.HealthCheckRequest(service="")).status == health_pb2.HealthCheckResponse.SERVING
        assert stub.Check(health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")).status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as e:
            stub.Check(health_pb2.HealthCheckRequest(service="nope"))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_not_yet_implemented_rpcs_say_so(client):
    with pytest.raises(InferenceServerException) as e:
        client.get_trace_settings()
    assert "UNIMPLEMENTED" in e.value.status()
    assert "tracing" in e.value.message()
    # Client shared memory is off unless the server is started with --allow-client-shm.
    with pytest.raises(InferenceServerException) as e:
        client.register_system_shared_memory("r", "/accel_never", 16)
    assert "UNIMPLEMENTED" in e.value.status() and "--allow-client-shm" in e.value.message()
