"""/metrics, parsed the way Prometheus parses it: Triton's names and labels, counters that move by
exactly the requests sent, a batch-size histogram that agrees with ModelStatistics, host gauges."""

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from conftest import MLP_DIMS, infer_input, scrape, value


def test_triton_counters_move_by_exactly_the_requests_sent(server, client):
    model = "mlp_two_instances"
    before = scrape(server)
    rng = np.random.default_rng(30)
    requests = [rng.standard_normal((int(rng.integers(1, 4)), MLP_DIMS[0])).astype(np.float32) for _ in range(50)]

    def one(x):
        c = server.client()
        try:
            c.infer(model, [infer_input("INPUT0", x)])
        finally:
            c.close()

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, requests))
    with pytest.raises(InferenceServerException):
        client.infer(model, [infer_input("INPUT0", np.zeros((1, 3), np.float32))])
    after = scrape(server)
    labels = {"model": model, "version": "1"}
    delta = lambda name, **extra: value(after, name, **labels, **extra) - value(before, name, **labels, **extra)  # noqa: E731
    assert delta("nv_inference_request_success_total") == 50
    assert delta("nv_inference_count_total") == sum(x.shape[0] for x in requests)
    assert delta("nv_inference_request_failure_total", reason="OTHER") == 1
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    assert value(after, "nv_inference_exec_count_total", **labels) == int(stats["execution_count"])
    assert value(after, "nv_inference_request_duration_us_total", **labels) > 0
    assert value(after, "nv_inference_compute_infer_duration_us_total", **labels) > 0


def test_batch_size_histogram_matches_model_statistics(server, client):
    model = "mlp_a"
    rng = np.random.default_rng(31)
    xs = [rng.standard_normal((1, MLP_DIMS[0])).astype(np.float32) for _ in range(80)]

    def one(x):
        c = server.client()
        try:
            c.infer(model, [infer_input("INPUT0", x)])
        finally:
            c.close()

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(one, xs))
    samples = scrape(server)
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    executions = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats["batch_stats"]}
    labels = {"model": model, "version": "1"}
    assert value(samples, "accel_batch_size_count", **labels) == sum(executions.values())
    assert value(samples, "accel_batch_size_sum", **labels) == sum(b * n for b, n in executions.items())
    for le in ("1", "2", "4", "8", "16", "+Inf"):
        bound = float(le)
        expected = sum(n for b, n in executions.items() if b <= bound)
        assert value(samples, "accel_batch_size_bucket", le=le, **labels) == expected, le


def test_host_and_model_gauges(server, client):
    time.sleep(0.5)  # a few sampler intervals (--metrics-interval-ms 200 in tests)
    samples = scrape(server)
    assert value(samples, "nv_cpu_memory_total_bytes") > 0
    assert 0 < value(samples, "nv_cpu_memory_used_bytes") <= value(samples, "nv_cpu_memory_total_bytes")
    assert ("nv_cpu_utilization", ()) in samples
    stats = client.get_inference_statistics("mlp_b", as_json=True)["model_stats"][0]
    resident = int(stats["memory_usage"][0]["byte_size"])
    assert resident > 0
    assert value(samples, "accel_model_resident_bytes", model="mlp_b", version="1") == resident
    assert value(samples, "accel_model_instances", model="mlp_two_instances", version="1") == 2
    assert ("accel_executor_duty_cycle", (("model", "mlp_b"), ("version", "1"))) in samples
    assert value(samples, "accel_model_loads_total", model="mlp_b", source="file") == 1
    assert value(samples, "accel_model_load_failures_total", model="broken_file") == 1
    assert value(samples, "accel_server_draining") == 0


def test_rejections_are_counted_as_rejected(server):
    before = scrape(server)
    x = np.zeros((1, 1024), np.float32)

    def one(_):
        c = server.client()
        try:
            c.infer("slow_bounded", [infer_input("x", x)])
            return "ok"
        except InferenceServerException as e:
            return e.status()
        finally:
            c.close()

    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(one, range(16)))
    after = scrape(server)
    labels = {"model": "slow_bounded", "version": "1", "reason": "REJECTED"}
    rejected = value(after, "nv_inference_request_failure_total", **labels) - value(before, "nv_inference_request_failure_total", **labels)
    assert rejected == sum(1 for o in outcomes if o == "StatusCode.UNAVAILABLE") > 0
