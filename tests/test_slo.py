"""SLO mode and version traffic splits, end to end with tritonclient and accel-bench.

SLO mode: a model with `accel.slo_ms` sizes and times its batches to meet the target; a lone request
goes at once (the static delay in its config is ignored), the tail under open-loop load stays
within the target where a static delay that is too long does not, and `shed` answers UNAVAILABLE
with the reason for requests that cannot meet it. Version splits: requests that name no version
follow `accel.version_weights`, deterministically per routing key whichever way it is sent, with
weights changed through the repository API without a reload, and bad weights refused.
"""

import json
import os
import subprocess
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

import modelgen
from conftest import TARGET_DIR, Server, infer_input, scrape, total

BENCH = os.environ.get("ACCEL_BENCH_BIN", os.path.join(TARGET_DIR, "debug", "accel-bench"))

D_IN, D_HIDDEN, D_OUT = 64, 128, 32
SLOW_WIDTH = 1024


def params(**kv) -> str:
    items = ", ".join(f'{{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in kv.items())
    return f"parameters [ {items} ]\n"


def scale_versions(root: str, name: str, weights: str | None) -> None:
    """Versions 1, 2, 3 of y = x * version: the answer says which version ran."""
    for v in (1, 2, 3):
        modelgen.scale_model(os.path.join(root, name, str(v), "model.onnx"), float(v))
    extra = params(**{"accel.version_weights": weights}) if weights is not None else ""
    modelgen.write_config(os.path.join(root, name), f"""name: "{name}"
max_batch_size: 0
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ -1 ] }} ]
version_policy: {{ all: {{ }} }}
{extra}""")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("slo_repo"))
    for name in ("slo_mlp", "static_mlp"):
        modelgen.mlp(os.path.join(root, name, "1", "model.onnx"), 21, D_IN, D_HIDDEN, D_OUT)
    # Both configs ask for a 300 ms delay; SLO mode ignores it.
    modelgen.write_config(os.path.join(root, "slo_mlp"), modelgen.mlp_config(
        "slo_mlp", max_batch_size=64, delay_us=300_000, d_in=D_IN, d_out=D_OUT,
        extra=params(**{"accel.slo_ms": "100"})))
    modelgen.write_config(os.path.join(root, "static_mlp"), modelgen.mlp_config(
        "static_mlp", max_batch_size=64, delay_us=300_000, d_in=D_IN, d_out=D_OUT))
    modelgen.slow_model(os.path.join(root, "slow_shed", "1", "model.onnx"), width=SLOW_WIDTH, repeats=16)
    modelgen.write_config(os.path.join(root, "slow_shed"), f"""name: "slow_shed"
max_batch_size: 8
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ {SLOW_WIDTH} ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ {SLOW_WIDTH} ] }} ]
dynamic_batching {{ }}
{params(**{"accel.slo_ms": "40", "accel.slo_action": "shed"})}""")
    modelgen.mlp(os.path.join(root, "slo_bad", "1", "model.onnx"), 22, D_IN, D_HIDDEN, D_OUT)
    modelgen.write_config(os.path.join(root, "slo_bad"), modelgen.mlp_config(
        "slo_bad", d_in=D_IN, d_out=D_OUT, extra=params(**{"accel.slo_ms": "-5"})))
    scale_versions(root, "split", "1:90,2:10,3:0")
    scale_versions(root, "split_bad", "1:90,7:10")
    s = Server(root, str(tmp_path_factory.mktemp("slo_logs") / "accel.log"))
    yield s
    s.stop()


def mlp_input(rows=1, seed=0):
    return np.random.default_rng(seed).standard_normal((rows, D_IN)).astype(np.float32)


def timed_infer(client, model, x, **kw):
    t = time.monotonic()
    r = client.infer(model, [infer_input("INPUT0", x)], **kw)
    return time.monotonic() - t, r


# ---- SLO mode ---------------------------------------------------------------------------------


def test_a_lone_request_goes_at_once_and_the_static_delay_is_ignored(server):
    c = server.client()
    x = mlp_input()
    for _ in range(3):  # first executions pay for first-call allocation
        timed_infer(c, "slo_mlp", x)
    time.sleep(0.5)  # the model is idle
    slo_latency, r = timed_infer(c, "slo_mlp", x)
    static_latency, r2 = timed_infer(c, "static_mlp", x)
    c.close()
    np.testing.assert_allclose(r.as_numpy("OUTPUT0"), r2.as_numpy("OUTPUT0"), rtol=1e-5)
    # The static delay holds a lone request for its 300 ms; SLO mode sends it at once.
    assert static_latency >= 0.3, static_latency
    assert slo_latency < 0.1, slo_latency
    assert "SLO mode: max_queue_delay_microseconds and preferred_batch_size are ignored" in server.log()


def bench(server, model, rate, slo_ms, seconds=3.0):
    cmd = [BENCH, "run", "--url", f"http://{server.url}", "--model", model, "--rate", str(rate), "--warmup", "0.5",
           "--window", str(seconds), "--stable-windows", "1", "--max-windows", "1", "--slo-ms", str(slo_ms),
           "--json", "-", "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout[r.stdout.index("["):])[0]


def test_under_open_loop_load_the_tail_stays_within_the_target(server):
    slo = bench(server, "slo_mlp", 100, 100)
    static = bench(server, "static_mlp", 100, 100)
    assert slo["error_count"] == 0 and static["error_count"] == 0
    # The target is 100 ms at the server; the client's clock adds its own scheduling.
    assert slo["slo_attainment"] >= 0.99, slo
    assert slo["p99_ms"] < 100, slo
    # A delay longer than the target holds nearly every request past it at this rate.
    assert static["slo_attainment"] < 0.5, static
    assert static["p50_ms"] > 100, static
    # The controller batched: fewer executions than requests.
    c = server.client()
    st = c.get_inference_statistics("slo_mlp", as_json=True)["model_stats"][0]
    c.close()
    assert int(st["execution_count"]) <= int(st["inference_count"])


def slow_input(rows=1):
    return np.random.default_rng(1).standard_normal((rows, SLOW_WIDTH)).astype(np.float32)


def test_shedding_answers_unavailable_with_the_reason(server):
    c = server.client()
    for k in range(24):  # the controller learns the execution time, at several batch sizes
        c.infer("slow_shed", [infer_input("x", slow_input(1 + k % 8))])
    per_request = json.load(urllib.request.urlopen(f"http://{server.http_url}/v2/models/slow_shed/slo", timeout=10))
    inst = per_request["versions"][0]["slo"]["instances"][0]
    assert inst["executions"] >= 12 and inst["per_row_ms"] is not None
    batch_ms = 8 * inst["per_row_ms"] + (inst["fixed_ms"] or 0.0)

    # A burst of full batches far beyond what 40 ms can serve: what cannot make it is shed, at
    # once, with the reason.
    burst = min(200, max(24, int(4 * 40 / max(batch_ms, 0.1))))
    results = []

    def done(result, error):
        results.append((time.monotonic(), result, error))

    t0 = time.monotonic()
    for _ in range(burst):
        c.async_infer("slow_shed", [infer_input("x", slow_input(8))], done)
    deadline = time.monotonic() + 60
    while len(results) < burst and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(results) == burst
    shed = [(t, e) for t, _, e in results if e is not None]
    ok = [(t, r) for t, r, e in results if e is None]
    lat = sorted(t - t0 for t, _, _ in results)
    assert shed, f"nothing was shed: batch {batch_ms} ms, burst {burst}, inst {inst}, latencies {lat[::8]}"
    assert ok, "nothing was served"
    for _, e in shed:
        assert e.status() == "StatusCode.UNAVAILABLE", e
        assert "shed the request" in e.message() and "accel.slo_ms" in e.message(), e.message()
    # Shed requests are answered long before the served ones would have been.
    assert min(t for t, _ in shed) - t0 < 0.5 * (max(t for t, _ in ok) - t0) + 0.2

    # A request's own target may lower the model's: behind a few full batches, 0.01 ms cannot be met.
    # (A request that finds the queue empty always executes: the controller's measurements must
    # never stop.)
    results.clear()
    for _ in range(10):
        c.async_infer("slow_shed", [infer_input("x", slow_input(8))], done)
    time.sleep(0.005)
    with pytest.raises(InferenceServerException) as e:
        c.infer("slow_shed", [infer_input("x", slow_input())], parameters={"accel.slo_ms": 0.01})
    assert "shed the request" in e.value.message()
    while len(results) < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(InferenceServerException) as e:
        c.infer("slow_shed", [infer_input("x", slow_input())], parameters={"accel.slo_ms": "soon"})
    assert "INVALID_ARGUMENT" in str(e.value.status()) and "accel.slo_ms" in e.value.message()
    c.close()

    state = json.load(urllib.request.urlopen(f"http://{server.http_url}/v2/models/slow_shed/slo", timeout=10))
    assert state["versions"][0]["slo"]["shed"] >= len(shed) + 1 + sum(e is not None for _, _, e in results)
    samples = scrape(server)
    assert total(samples, "accel_slo_violations_total") >= len(shed) + 1


def test_the_controller_state_and_metrics_are_published(server):
    c = server.client()
    for k in range(20):
        c.infer("slo_mlp", [infer_input("INPUT0", mlp_input(1 + k % 4))])
    c.close()
    state = json.load(urllib.request.urlopen(f"http://{server.http_url}/v2/models/slo_mlp/versions/1/slo", timeout=10))
    slo = state["versions"][0]["slo"]
    assert slo["target_ms"] == pytest.approx(100) and slo["percentile"] == pytest.approx(99)
    assert slo["action"] == "best_effort" and slo["headroom"] == pytest.approx(0.1)
    inst = slo["instances"][0]
    assert inst["executions"] >= 20 and inst["last_measured_ms"] > 0 and inst["last_predicted_ms"] > 0
    assert inst["fixed_ms"] is not None and inst["spread"] > 0
    # A model without SLO mode reports none.
    plain = json.load(urllib.request.urlopen(f"http://{server.http_url}/v2/models/static_mlp/slo", timeout=10))
    assert plain["versions"][0]["slo"] is None
    text = server.metrics()
    for name in ("accel_batch_wait_seconds_count", "accel_predicted_execution_seconds_count",
                 "accel_execution_seconds_count"):
        assert f'{name}{{model="slo_mlp",version="1"}}' in text, name
    assert 'accel_batch_wait_seconds_count{model="static_mlp"' not in text


def test_bad_slo_parameters_fail_the_load_with_the_reason(server):
    c = server.client()
    with pytest.raises(InferenceServerException) as e:
        c.load_model("slo_bad")
    assert "accel.slo_ms must be" in e.value.message()
    index = {m["name"]: m for m in c.get_model_repository_index(as_json=True)["models"]}
    c.close()
    assert index["slo_bad"]["state"] == "UNAVAILABLE"
    assert "accel.slo_ms must be" in index["slo_bad"]["reason"]


# ---- version splits ---------------------------------------------------------------------------


def scale_input(n=4):
    return np.arange(n, dtype=np.float32) + 1


def version_of(result) -> int:
    r = result.get_response()
    v = int(r["model_version"] if isinstance(r, dict) else r.model_version)
    # The answer is x * version: the response's version is the one that ran.
    np.testing.assert_allclose(result.as_numpy("y"), scale_input() * v)
    return v


def grpc_split(c, **kw):
    return version_of(c.infer("split", [infer_input("x", scale_input())], **kw))


def test_requests_that_name_no_version_follow_the_weights(server):
    c = server.client()
    counts = {1: 0, 2: 0, 3: 0}
    n = 2000
    for _ in range(n):
        counts[grpc_split(c)] += 1
    # 10% of 2000 is 200, binomial sd 13.4: within 4 sd.
    assert abs(counts[2] - 200) <= 54, counts
    assert counts[3] == 0, counts  # weight 0: loaded, only explicit traffic
    assert grpc_split(c, model_version="3") == 3
    stats = {s["version"]: int(s["inference_stats"]["success"]["count"])
             for s in c.get_inference_statistics("split", as_json=True)["model_stats"]}
    assert stats["2"] >= counts[2] and stats["3"] >= 1
    c.close()


def test_a_routing_key_sticks_whichever_way_it_is_sent(server):
    g = server.client()
    h = server.http_client()
    landed = {}
    for k in range(60):
        key = f"user-{k}"
        seen = {
            grpc_split(g, parameters={"accel.routing_key": key}),
            grpc_split(g, headers={"accel-routing-key": key}),
            grpc_split(g, parameters={"accel.routing_key": key}),
        }
        hx = httpclient.InferInput("x", [4], "FP32")
        hx.set_data_from_numpy(scale_input())
        seen.add(version_of(h.infer("split", [hx], headers={"accel-routing-key": key})))
        seen.add(version_of(h.infer("split", [hx], parameters={"accel.routing_key": key})))
        assert len(seen) == 1, (key, seen)
        landed[key] = seen.pop()
    # The parameter wins over the header.
    key = next(k for k, v in landed.items() if v == 1)
    other = next((k for k, v in landed.items() if v == 2), None)
    if other is not None:
        assert grpc_split(g, parameters={"accel.routing_key": other}, headers={"accel-routing-key": key}) == 2
    # Integer keys are their digits.
    assert grpc_split(g, parameters={"accel.routing_key": 77}) == grpc_split(g, headers={"accel-routing-key": "77"})
    with pytest.raises(InferenceServerException) as e:
        g.infer("split", [infer_input("x", scale_input())], parameters={"accel.routing_key": "k" * 2000})
    assert "routing key" in e.value.message()
    assert 3 not in landed.values()
    g.close()
    h.close()


def test_weights_change_at_run_time_without_a_reload_and_bad_ones_are_refused(server):
    c = server.client()
    config = c.get_model_config("split", as_json=True)["config"]
    assert config["parameters"]["accel.version_weights"]["string_value"] == "1:90,2:10,3:0"
    loads_before = server.log().count("model ready")
    config["parameters"]["accel.version_weights"]["string_value"] = "2:1"
    c.load_model("split", config=json.dumps(config))
    assert "version weights changed without reloading the versions" in server.log()
    assert server.log().count("model ready") == loads_before
    assert {grpc_split(c) for _ in range(50)} == {2}
    assert c.get_model_config("split", as_json=True)["config"]["parameters"]["accel.version_weights"][
        "string_value"] == "2:1"

    for bad, needle in (("1:50,7:50", "does not serve"), ("1:0", "weight 0"), ("two:1", "not version:weight")):
        config["parameters"]["accel.version_weights"]["string_value"] = bad
        with pytest.raises(InferenceServerException) as e:
            c.load_model("split", config=json.dumps(config))
        assert needle in e.value.message(), e.value.message()
        # The old split keeps serving.
        assert {grpc_split(c) for _ in range(20)} == {2}
    assert c.is_model_ready("split")

    # Back to a split: the keys that move are only those the new weights move.
    config["parameters"]["accel.version_weights"]["string_value"] = "1:50,2:50"
    c.load_model("split", config=json.dumps(config))
    seen = {grpc_split(c, parameters={"accel.routing_key": f"u{k}"}) for k in range(40)}
    assert seen == {1, 2}
    c.close()


def test_weights_that_name_a_missing_version_fail_the_load(server):
    c = server.client()
    with pytest.raises(InferenceServerException) as e:
        c.infer("split_bad", [infer_input("x", scale_input())])
    assert "names version 7" in e.value.message()
    index = {m["name"]: m for m in c.get_model_repository_index(as_json=True)["models"]}
    c.close()
    assert index["split_bad"]["state"] == "UNAVAILABLE"
    assert "names version 7, which the model does not serve" in index["split_bad"]["reason"]
