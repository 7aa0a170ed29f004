"""Many models, one device: on-demand loading under a memory budget, eviction, the host tier, pinning,
the repository API (load, reload with a config override, unload during inference) and memory that
really comes back. Every response is checked against its own model's reference, so a mix-up between
models fails the test."""

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

import modelgen
from conftest import Server, infer_input, relative_error, scrape, total, value

D_IN, D_OUT = 32, 16
N_MODELS = 42
# Hidden widths from 32 to 960: sizes vary 30x (about 6 KiB to 190 KiB of weights).
HIDDEN = [int(round(32 * 30 ** (k / (N_MODELS - 1)))) for k in range(N_MODELS)]
BUDGET = 640 * 1024


def name_of(k: int) -> str:
    return f"m{k:02d}"


def weight_bytes(hidden: int) -> int:
    return 4 * (D_IN * hidden + hidden + hidden * D_OUT + D_OUT)


@pytest.fixture(scope="module")
def many_models(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("many"))
    for k, h in enumerate(HIDDEN):
        # No config.pbtxt: completed from the graph, batching included.
        modelgen.mlp(os.path.join(root, name_of(k), "1", "model.onnx"), 1000 + k, D_IN, h, D_OUT)
    # Larger than the whole budget.
    modelgen.mlp(os.path.join(root, "too_big", "1", "model.onnx"), 7, D_IN, 8192, D_OUT)
    # Slow to execute, for requests in flight during an unload.
    modelgen.slow_model(os.path.join(root, "slow", "1", "model.onnx"), width=1024, repeats=160)
    modelgen.write_config(os.path.join(root, "slow"), """max_batch_size: 1
input [ { name: "x" data_type: TYPE_FP32 dims: [ 1024 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 1024 ] } ]
dynamic_batching { }
""")
    return root


def start(repo, tmp_path, *args):
    return Server(repo, str(tmp_path / "accel.log"), extra_args=["--memory-reserve", "0", *args])


def check(client, k, rng, rows=1):
    x = rng.standard_normal((rows, D_IN)).astype(np.float32)
    y = client.infer(name_of(k), [infer_input("INPUT0", x)]).as_numpy("OUTPUT0")
    want = modelgen.mlp_reference(x, 1000 + k, D_IN, HIDDEN[k], D_OUT)
    assert relative_error(y, want) < 1e-4, name_of(k)


class Sampler(threading.Thread):
    """Reads /metrics while a test runs: memory in use and the budget."""

    def __init__(self, server):
        super().__init__(daemon=True)
        self.server, self.samples, self.stop = server, [], threading.Event()

    def run(self):
        while not self.stop.is_set():
            s = scrape(self.server)
            self.samples.append((value(s, "accel_memory_in_use_bytes"), value(s, "accel_memory_budget_bytes")))
            time.sleep(0.02)


def test_zipf_load_over_many_models_under_a_small_budget(many_models, tmp_path):
    s = start(many_models, tmp_path, "--memory-budget", str(BUDGET), "--pin-model", name_of(3))
    sampler = Sampler(s)
    sampler.start()
    order = np.random.default_rng(5).permutation(N_MODELS)  # popularity rank -> model, sizes mixed
    sent = np.zeros(N_MODELS, int)
    failures = []
    lock = threading.Lock()

    def caller(seed):
        rng = np.random.default_rng(seed)
        c = s.client()
        try:
            for _ in range(40):
                k = int(order[min(rng.zipf(1.3), N_MODELS) - 1])
                rows = int(rng.integers(1, 3))
                try:
                    check(c, k, rng, rows)
                    with lock:
                        sent[k] += rows
                except Exception as e:  # every failure is reported, none tolerated
                    failures.append(f"{name_of(k)}: {e}")
        finally:
            c.close()

    try:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(caller, range(16)))
    finally:
        sampler.stop.set()
        sampler.join()
    try:
        assert failures == []
        samples = scrape(s)
        assert total(samples, "accel_model_evictions_total") > 0
        assert total(samples, "accel_model_reloads_total") > 0, "evicted models came back from the host tier"
        assert value(samples, "accel_model_evictions_total", model=name_of(3)) == 0, "pinned"
        # Memory in use never above the budget, and the budget really was used.
        assert sampler.samples and all(used <= budget for used, budget in sampler.samples)
        assert max(used for used, _ in sampler.samples) > BUDGET / 2
        c = s.client()
        # Statistics survive evictions: every row sent is counted once, on its own model.
        for k in range(N_MODELS):
            if sent[k]:
                st = c.get_inference_statistics(name_of(k), as_json=True)["model_stats"][0]
                assert int(st.get("inference_count", 0)) == sent[k], name_of(k)
        index = {m["name"]: m for m in c.get_model_repository_index(as_json=True)["models"]}
        ready = [n for n, m in index.items() if m.get("state") == "READY"]
        assert name_of(3) in ready
        resident = sum(int(c.get_inference_statistics(n, as_json=True)["model_stats"][0]["memory_usage"][0]["byte_size"])
                       for n in ready)
        assert 0 < resident <= BUDGET
        evicted = [m for m in index.values() if "evicted" in m.get("reason", "")]
        assert evicted, index
        c.close()
    finally:
        s.stop()


def test_concurrent_first_requests_share_one_load(many_models, tmp_path):
    s = start(many_models, tmp_path)
    try:
        def one(seed):
            c = s.client()
            try:
                check(c, 20, np.random.default_rng(seed))
            finally:
                c.close()

        with ThreadPoolExecutor(12) as pool:
            list(pool.map(one, range(12)))
        samples = scrape(s)
        assert value(samples, "accel_model_loads_total", model=name_of(20), source="file") == 1
    finally:
        s.stop()


def test_a_model_larger_than_the_budget_fails_at_once(many_models, tmp_path):
    s = start(many_models, tmp_path, "--memory-budget", str(BUDGET))
    try:
        c = s.client()
        x = np.zeros((1, D_IN), np.float32)
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(InferenceServerException) as e:
                c.infer("too_big", [infer_input("INPUT0", x)])
            assert "RESOURCE_EXHAUSTED" in e.value.status(), e.value
            assert "too_big" in e.value.message() and "budget of 640.0 KiB" in e.value.message()
            assert time.monotonic() - started < 5
        check(c, 0, np.random.default_rng(0))  # the others are unaffected
        c.close()
        h = httpclient.InferenceServerClient(s.http_url)
        inp = httpclient.InferInput("INPUT0", [1, D_IN], "FP32")
        inp.set_data_from_numpy(x)
        with pytest.raises(InferenceServerException) as e:
            h.infer("too_big", [inp])
        assert e.value.status() == "429"
        h.close()
    finally:
        s.stop()


def test_a_load_waits_for_memory_held_by_pinned_models_then_says_why(many_models, tmp_path):
    # Room for the two largest models only; both pinned: the third cannot be admitted.
    budget = weight_bytes(HIDDEN[-1]) + weight_bytes(HIDDEN[-2]) + 64 * 1024
    s = start(many_models, tmp_path, "--memory-budget", str(budget), "--pin-model", f"{name_of(41)},{name_of(40)}",
              "--model-load-timeout-secs", "1")
    try:
        c = s.client()
        started = time.monotonic()
        with pytest.raises(InferenceServerException) as e:
            check(c, 39, np.random.default_rng(0))
        assert "UNAVAILABLE" in e.value.status()
        assert "busy or pinned" in e.value.message()
        assert time.monotonic() - started >= 1.0
        check(c, 41, np.random.default_rng(1))
        c.close()
    finally:
        s.stop()


def slow_requests(server, n, results):
    def one(i):
        c = server.client()
        x = np.full((1, 1024), float(i), np.float32)
        try:
            results.append(("ok", c.infer("slow", [infer_input("x", x)]).as_numpy("y")))
        except InferenceServerException as e:
            results.append(("error", e))
        finally:
            c.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    return threads


def in_flight(server, model):
    return value(scrape(server), "nv_inference_pending_request_count", model=model, version="1")


def test_unload_waits_for_requests_in_flight_then_refuses_explicit(many_models, tmp_path):
    s = start(many_models, tmp_path, "--model-control-mode", "explicit", "--load-model", "slow")
    try:
        c = s.client()
        results = []
        threads = slow_requests(s, 6, results)
        deadline = time.monotonic() + 10
        # One executing, five queued: all six hold the model.
        while in_flight(s, "slow") < 5 and time.monotonic() < deadline:
            time.sleep(0.002)
        c.unload_model("slow")
        # The call returned after the requests in flight were answered.
        assert len(results) == 6
        for t in threads:
            t.join()
        assert [r[0] for r in results] == ["ok"] * 6, results
        with pytest.raises(InferenceServerException) as e:
            c.infer("slow", [infer_input("x", np.zeros((1, 1024), np.float32))])
        assert "UNAVAILABLE" in e.value.status() and "unloaded" in e.value.message()
        index = {m["name"]: m for m in c.get_model_repository_index(as_json=True)["models"]}
        assert index["slow"]["state"] == "UNAVAILABLE" and index["slow"]["reason"] == "unloaded"
        assert not c.is_model_ready("slow")
        c.close()
    finally:
        s.stop()


def test_unload_during_inference_then_on_demand_reloads(many_models, tmp_path):
    s = start(many_models, tmp_path)
    try:
        c = s.client()
        c.infer("slow", [infer_input("x", np.zeros((1, 1024), np.float32))])  # loaded on demand
        results = []
        threads = slow_requests(s, 4, results)
        deadline = time.monotonic() + 10
        while in_flight(s, "slow") < 3 and time.monotonic() < deadline:
            time.sleep(0.002)
        c.unload_model("slow")
        for t in threads:
            t.join()
        assert all(r[0] == "ok" for r in results), results
        # The next request loads it again, from the files (unloading empties the host tier too).
        y = c.infer("slow", [infer_input("x", np.zeros((1, 1024), np.float32))]).as_numpy("y")
        assert y.shape == (1, 1024)
        assert value(scrape(s), "accel_model_loads_total", model="slow", source="file") == 2
        c.close()
    finally:
        s.stop()


def test_repository_api_through_tritonclient(many_models, tmp_path):
    s = start(many_models, tmp_path, "--model-control-mode", "explicit")
    try:
        c = s.client()
        index = {m["name"]: m for m in c.get_model_repository_index(as_json=True)["models"]}
        assert len(index) == N_MODELS + 2 and index[name_of(5)]["state"] == "UNAVAILABLE"
        assert not c.is_model_ready(name_of(5))
        c.load_model(name_of(5))
        assert c.is_model_ready(name_of(5))
        check(c, 5, np.random.default_rng(0))
        assert c.get_model_config(name_of(5), as_json=True)["config"]["max_batch_size"] == 32
        # A reload with a configuration override; requests keep being answered meanwhile.
        config = c.get_model_config(name_of(5), as_json=True)["config"]
        config["max_batch_size"] = 4
        stop = threading.Event()
        errors = []

        def keep_sending():
            cc = s.client()
            rng = np.random.default_rng(9)
            while not stop.is_set():
                try:
                    check(cc, 5, rng)
                except Exception as e:
                    errors.append(e)
            cc.close()

        t = threading.Thread(target=keep_sending)
        t.start()
        time.sleep(0.1)
        c.load_model(name_of(5), config=json.dumps(config))
        time.sleep(0.1)
        stop.set()
        t.join()
        assert errors == []
        assert c.get_model_config(name_of(5), as_json=True)["config"]["max_batch_size"] == 4
        with pytest.raises(InferenceServerException) as e:
            check(c, 5, np.random.default_rng(0), rows=5)
        assert "max_batch_size 4" in e.value.message()
        with pytest.raises(InferenceServerException) as e:
            c.load_model(name_of(5), config='{"max_batch_size": "many"}')
        assert "INVALID_ARGUMENT" in e.value.status()
        with pytest.raises(InferenceServerException) as e:
            c.load_model("no_such_model")
        assert "NOT_FOUND" in e.value.status()
        c.unload_model(name_of(5))
        assert not c.is_model_ready(name_of(5))
        # The same through REST.
        h = httpclient.InferenceServerClient(s.http_url)
        h.load_model(name_of(6))
        assert h.is_model_ready(name_of(6))
        h.unload_model(name_of(6))
        assert not h.is_model_ready(name_of(6))
        assert {m["name"]: m for m in h.get_model_repository_index()}[name_of(6)]["reason"] == "unloaded"
        h.close()
        c.close()
    finally:
        s.stop()


def rss(pid) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_memory_returns_after_unloading_many_models(tmp_path):
    repo = tmp_path / "big"
    n, hidden = 16, 2048
    for k in range(n):
        modelgen.mlp(str(repo / f"b{k:02d}" / "1" / "model.onnx"), k, 256, hidden, 256)
    s = start(str(repo), tmp_path, "--model-control-mode", "explicit", "--host-cache-size", "0")
    try:
        c = s.client()
        time.sleep(0.5)
        before = rss(s.proc.pid)
        for k in range(n):
            c.load_model(f"b{k:02d}")
        loaded = rss(s.proc.pid)
        weights = 4 * (256 * hidden * 2 + hidden + 256)
        # The footprint is measured at load, not guessed: the weights and little else.
        reported = int(c.get_inference_statistics("b00", as_json=True)["model_stats"][0]["memory_usage"][0]["byte_size"])
        assert weights <= reported < 1.5 * weights, (reported, weights)
        assert loaded - before > 0.8 * n * weights
        for k in range(n):
            c.unload_model(f"b{k:02d}")
        deadline = time.monotonic() + 10
        while rss(s.proc.pid) - before > 0.2 * (loaded - before) and time.monotonic() < deadline:
            time.sleep(0.1)
        after = rss(s.proc.pid)
        assert after - before < 0.2 * (loaded - before), (before, loaded, after)
        samples = scrape(s)
        assert value(samples, "accel_memory_in_use_bytes") == 0
        c.close()
    finally:
        s.stop()
