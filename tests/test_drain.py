"""SIGTERM under load: readiness turns false, new requests are refused, every request accepted before
the signal is answered correctly, and the process exits 0."""

import os
import signal
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

import modelgen
from conftest import Server, infer_input


@pytest.fixture()
def drain_repository(tmp_path):
    root = tmp_path / "repo"
    modelgen.slow_model(str(root / "slow" / "1" / "model.onnx"), width=512, repeats=24)
    modelgen.write_config(str(root / "slow"), """max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 512 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 512 ] } ]
dynamic_batching { }
""")
    # One long execution (about a second) keeps the drain open long enough to observe it.
    modelgen.slow_model(str(root / "long" / "1" / "model.onnx"), width=2048, repeats=2000)
    return str(root)


def ready(server):
    try:
        with urllib.request.urlopen(f"http://{server.http_url}/v2/health/ready", timeout=5) as r:
            return r.status == 200
    except urllib.error.HTTPError:
        return False


def test_sigterm_drains_accepted_requests_and_exits_zero(drain_repository, tmp_path):
    server = Server(drain_repository, str(tmp_path / "accel.log"), extra_args=["--exit-timeout-secs", "60"])
    c = server.client()
    x = np.random.default_rng(40).standard_normal((1, 512)).astype(np.float32)
    reference = c.infer("slow", [infer_input("x", x)]).as_numpy("y")
    c.close()

    records = []  # (sent, finished, outcome)
    lock = threading.Lock()
    stop = threading.Event()

    def caller():
        client = server.client()
        while not stop.is_set():
            sent = time.monotonic()
            try:
                y = client.infer("slow", [infer_input("x", x)], client_timeout=60).as_numpy("y")
                outcome = "ok" if np.array_equal(y, reference) else "wrong"
            except InferenceServerException as e:
                outcome = e.status() or "error"
            with lock:
                records.append((sent, time.monotonic(), outcome))
            if outcome not in ("ok", "wrong"):
                break
        client.close()

    long_result = {}

    def long_call():
        client = server.client()
        try:
            z = np.ones((1, 2048), np.float32)
            long_result["y"] = client.infer("long", [infer_input("x", z)], client_timeout=120).as_numpy("y")
            long_result["finished"] = time.monotonic()
        except InferenceServerException as e:
            long_result["error"] = e
        client.close()

    threads = [threading.Thread(target=caller) for _ in range(12)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    long_thread = threading.Thread(target=long_call)
    long_thread.start()
    time.sleep(0.3)  # the long request is executing
    signalled = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.1)
    # Draining: not ready (REST and gRPC health), and new requests are refused with UNAVAILABLE.
    assert not ready(server)
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(server.url) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="")).status
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    late = server.client()
    with pytest.raises(InferenceServerException) as e:
        late.infer("slow", [infer_input("x", x)])
    assert e.value.status() == "StatusCode.UNAVAILABLE" and "shutting down" in e.value.message()
    late.close()
    stop.set()
    for t in threads + [long_thread]:
        t.join(timeout=120)
    rc = server.proc.wait(timeout=120)
    server.stop()

    assert rc == 0, server.log()[-2000:]
    assert "error" not in long_result, long_result
    assert long_result["y"].shape == (1, 2048)
    assert all(o != "wrong" for _, _, o in records), "every answer is correct"
    accepted = [r for r in records if r[0] < signalled - 0.05]
    assert accepted and all(o == "ok" for _, _, o in accepted), [r for r in accepted if r[2] != "ok"]
    # The long request was executing when the signal came: it was answered, after the signal.
    assert long_result["finished"] > signalled
    answered_after = [r for r in records if r[0] < signalled < r[1] and r[2] == "ok"]
    assert answered_after, "short requests in flight at the signal were answered too"
    assert "draining" in server.log()
