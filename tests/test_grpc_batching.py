"""Dynamic batching seen from outside: many concurrent callers each get their own correct result, and
ModelStatistics shows fewer executions than inferences. Queue bounds and queue timeouts answer
UNAVAILABLE without harming the requests that are served."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

import modelgen
from conftest import MLP_DIMS, MLP_SEEDS, infer_input, relative_error


def stats_of(client, model):
    s = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    batches = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in s.get("batch_stats", [])}
    return int(s.get("inference_count", 0)), int(s.get("execution_count", 0)), batches


def run_concurrently(server, model, requests, workers):
    def one(k):
        rows = requests[k].shape[0]
        c = server.client()
        try:
            return c.infer(model, [infer_input("INPUT0", requests[k])], request_id=str(k)).as_numpy("OUTPUT0"), rows
        finally:
            c.close()

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, range(len(requests))))


@pytest.mark.parametrize("model", ["mlp_a", "mlp_c"])
def test_concurrent_callers_are_batched_and_each_gets_its_own_result(server, client, model):
    rng = np.random.default_rng(7)
    requests = [rng.standard_normal((int(rng.integers(1, 4)), MLP_DIMS[0])).astype(np.float32) for _ in range(240)]
    inf0, exe0, batches0 = stats_of(client, model)
    results = run_concurrently(server, model, requests, workers=48)
    for x, (y, rows) in zip(requests, results):
        assert y.shape == (rows, MLP_DIMS[2])
        assert relative_error(y, modelgen.mlp_reference(x, MLP_SEEDS[model], *MLP_DIMS)) < 1e-5
    inf1, exe1, batches1 = stats_of(client, model)
    rows_sent = sum(x.shape[0] for x in requests)
    assert inf1 - inf0 == rows_sent
    executions = exe1 - exe0
    assert executions < len(requests) / 2, f"{executions} executions for {len(requests)} requests: not batched"
    # The per-batch-size table agrees with the totals, and no batch exceeds max_batch_size.
    new = {b: n - batches0.get(b, 0) for b, n in batches1.items() if n - batches0.get(b, 0) > 0}
    assert sum(new.values()) == executions
    assert sum(b * n for b, n in new.items()) == rows_sent
    assert max(new) <= 16
    assert max(new) > 3, "some batch combined several requests"


def test_without_dynamic_batching_every_request_executes_alone(server, client):
    rng = np.random.default_rng(8)
    requests = [rng.standard_normal((1, MLP_DIMS[0])).astype(np.float32) for _ in range(60)]
    inf0, exe0, _ = stats_of(client, "mlp_direct")
    results = run_concurrently(server, "mlp_direct", requests, workers=16)
    for x, (y, _) in zip(requests, results):
        assert relative_error(y, modelgen.mlp_reference(x, 11, *MLP_DIMS)) < 1e-5
    inf1, exe1, _ = stats_of(client, "mlp_direct")
    assert inf1 - inf0 == 60
    assert exe1 - exe0 == 60


def slow_calls(server, model, n, timeout_us=None):
    x = np.random.default_rng(9).standard_normal((1, 1024)).astype(np.float32)

    def one(k):
        c = server.client()
        try:
            y = c.infer(model, [infer_input("x", x)], timeout=(timeout_us(k) if timeout_us else None)).as_numpy("y")
            return "ok", y
        except InferenceServerException as e:
            return e.status(), e.message()
        finally:
            c.close()

    with ThreadPoolExecutor(n) as pool:
        return x, list(pool.map(one, range(n)))


def test_full_queue_answers_unavailable_at_once(server):
    x, outcomes = slow_calls(server, "slow_bounded", 16)
    ok = [r for s, r in outcomes if s == "ok"]
    rejected = [m for s, m in outcomes if s == "StatusCode.UNAVAILABLE"]
    assert len(ok) + len(rejected) == 16, outcomes
    assert rejected, "max_queue_size 2 with 16 concurrent callers must reject some"
    assert all("queued" in m for m in rejected), rejected
    assert len(ok) >= 3
    first = ok[0]
    assert all(np.array_equal(y, first) for y in ok), "served requests are unaffected"


def test_queue_timeout_rejects_with_unavailable(server):
    # The first six callers keep the model busy; the others allow themselves 1 ms in the queue.
    x, outcomes = slow_calls(server, "slow_timeout", 12, timeout_us=lambda k: 1000 if k >= 6 else None)
    timed_out = [m for s, m in outcomes if s == "StatusCode.UNAVAILABLE"]
    assert timed_out, outcomes
    assert all("timed out" in m for m in timed_out)
    assert sum(1 for s, _ in outcomes if s == "ok") >= 1


def test_two_instances_serve_one_queue(server, client):
    rng = np.random.default_rng(13)
    requests = [rng.standard_normal((1, MLP_DIMS[0])).astype(np.float32) for _ in range(120)]
    results = run_concurrently(server, "mlp_two_instances", requests, workers=32)
    for x, (y, _) in zip(requests, results):
        assert relative_error(y, modelgen.mlp_reference(x, 13, *MLP_DIMS)) < 1e-5
    config = client.get_model_config("mlp_two_instances", as_json=True)["config"]
    assert config["instance_group"][0]["count"] == 2


def test_higher_priority_requests_are_served_first(server):
    """Behind a busy model, priority-1 requests that arrive after priority-2 ones still finish first."""
    import threading
    import time

    x = np.zeros((1, 1024), np.float32)
    finished = []
    lock = threading.Lock()

    def call(tag, priority):
        c = server.client()
        try:
            c.infer("slow_priority", [infer_input("x", x)], priority=priority)
            with lock:
                finished.append(tag)
        finally:
            c.close()

    blocker = threading.Thread(target=call, args=("blocker", 2))
    blocker.start()
    time.sleep(0.005)
    low = [threading.Thread(target=call, args=(f"low{k}", 2)) for k in range(6)]
    for t in low:
        t.start()
    # The low-priority requests are queued behind the blocker before the high-priority ones come.
    time.sleep(0.05)
    high = [threading.Thread(target=call, args=(f"high{k}", 1)) for k in range(3)]
    for t in high:
        t.start()
    for t in [blocker, *low, *high]:
        t.join(timeout=60)
    rank = {tag: i for i, tag in enumerate(finished)}
    high_ranks = [rank[f"high{k}"] for k in range(3)]
    low_ranks = [rank[f"low{k}"] for k in range(6)]
    assert len(finished) == 10
    assert sorted(high_ranks + low_ranks)[-1] in low_ranks, finished
    assert sum(high_ranks) / 3 < sum(low_ranks) / 6, finished
