"""accel-bench against a real Accel: a short run whose counts agree with ModelStatistics, and a
failing server reported as errors, never as throughput."""

import json
import os
import subprocess
import time

import pytest

from conftest import ACCEL_BIN, TARGET_DIR, Server

BENCH = os.environ.get("ACCEL_BENCH_BIN", os.path.join(TARGET_DIR, "debug", "accel-bench"))


def bench(server, *args):
    cmd = [BENCH, "run", "--url", f"http://{server.url}", "--warmup", "0.3", "--window", "0.5", "--stable-windows", "1",
           "--max-windows", "2", "--json", "-", "--quiet", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    return r, r.stdout[r.stdout.index("["):] if "[" in r.stdout else None


@pytest.fixture()
def fresh_server(main_repository, tmp_path):
    s = Server(main_repository, str(tmp_path / "accel.log"), extra_args=["--model-control-mode", "explicit",
                                                                          "--load-model", "mlp_b,mlp_a"])
    yield s
    s.stop()


def test_counts_agree_with_model_statistics(fresh_server):
    r, out = bench(fresh_server, "--model", "mlp_b", "--concurrency", "1,8", "--batch-size", "2")
    assert r.returncode == 0, r.stderr
    levels = json.loads(out)
    assert [l["concurrency"] for l in levels] == [1, 8]
    assert all(l["error_count"] == 0 and l["infer_per_sec"] > 0 for l in levels)
    c = fresh_server.client()
    stats = c.get_inference_statistics("mlp_b", as_json=True)["model_stats"][0]
    c.close()
    sent = sum(l["total_ok"] for l in levels)
    assert int(stats["inference_stats"]["success"]["count"]) == sent
    assert int(stats["inference_count"]) == sum(l["total_rows"] for l in levels) == 2 * sent
    assert "concurrency 8" in r.stdout  # the table


def test_zipf_spreads_requests_over_models_by_rank(fresh_server):
    r, out = bench(fresh_server, "--model", "mlp_a", "--model", "mlp_b", "--zipf", "1.5", "--concurrency", "4")
    assert r.returncode == 0, r.stderr
    level = json.loads(out)[0]
    c = fresh_server.client()
    counts = [int(c.get_inference_statistics(m, as_json=True)["model_stats"][0]["inference_stats"]["success"]["count"])
              for m in ("mlp_a", "mlp_b")]
    c.close()
    assert sum(counts) == level["total_ok"] > 100
    # Rank 1 gets 1 / (1 + 2^-1.5) = 74% of the requests.
    assert 0.64 < counts[0] / sum(counts) < 0.84, counts


def test_a_failing_server_is_reported_as_errors(fresh_server):
    # Batch 17 for a model whose max_batch_size is 16: every request fails with INVALID_ARGUMENT.
    r, out = bench(fresh_server, "--model", "mlp_a", "--concurrency", "4", "--batch-size", "17")
    assert r.returncode == 1, (r.returncode, r.stderr)
    level = json.loads(out)[0]
    assert level["infer_per_sec"] == 0 and level["requests"] == 0
    assert level["errors"].get("InvalidArgument", 0) > 0
    assert "failed" in r.stderr


def test_an_unreachable_server_is_an_error(tmp_path):
    r = subprocess.run([BENCH, "run", "--url", "http://127.0.0.1:1", "--model", "m", "--quiet"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "cannot connect" in r.stderr


def test_a_server_that_goes_away_mid_run_is_reported_as_errors(main_repository, tmp_path):
    s = Server(main_repository, str(tmp_path / "accel.log"), extra_args=["--model-control-mode", "explicit",
                                                                          "--load-model", "mlp_a"])
    try:
        p = subprocess.Popen([BENCH, "run", "--url", f"http://{s.url}", "--model", "mlp_a", "--concurrency", "4",
                              "--warmup", "0", "--window", "1", "--stable-windows", "4", "--max-windows", "4",
                              "--json", "-", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
    finally:
        s.stop()
    out, err = p.communicate(timeout=120)
    assert p.returncode == 1, (p.returncode, err)
    level = json.loads(out[out.index("["):])[0]
    assert level["error_count"] > 0 and level["total_ok"] > 0
    # Throughput counts answered requests only: the windows after the stop carry none.
    assert min(level["window_throughputs"]) == 0


def test_shared_memory_over_a_unix_socket_with_an_input_size_sweep(main_repository, tmp_path):
    import tritonclient.grpc as grpcclient

    sock = str(tmp_path / "g.sock")
    uds = subprocess.Popen([ACCEL_BIN, "serve", "--model-repository", main_repository, "--grpc-address", f"unix:{sock}",
                            "--http-port", "0", "--metrics-port", "0", "--metrics-address", "127.0.0.1",
                            "--model-control-mode", "explicit", "--load-model", "scale", "--allow-client-shm"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(sock) and time.monotonic() < deadline:
            time.sleep(0.1)
        c = grpcclient.InferenceServerClient(f"unix://{sock}")
        while not c.is_model_ready("scale") and time.monotonic() < deadline:
            time.sleep(0.1)
        cmd = [BENCH, "run", "--url", f"unix://{sock}", "--model", "scale", "--shared-memory", "system",
               "--input-bytes", "4KiB,256KiB", "--concurrency", "2", "--warmup", "0.3", "--window", "0.5",
               "--stable-windows", "1", "--max-windows", "2", "--json", "-", "--quiet"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        levels = json.loads(r.stdout[r.stdout.index("["):])
        assert [l["label"] for l in levels] == ["4KiB concurrency 2", "256KiB concurrency 2"]
        assert all(l["error_count"] == 0 and l["total_ok"] > 0 for l in levels)
        stats = c.get_inference_statistics("scale", as_json=True)["model_stats"][0]
        assert int(stats["inference_stats"]["success"]["count"]) == sum(l["total_ok"] for l in levels)
        # The bench unregistered and removed its regions.
        assert not c.get_system_shared_memory_status(as_json=True).get("regions")
        assert not [f for f in os.listdir("/dev/shm") if f.startswith("accel_bench_")]
        c.close()
    finally:
        uds.terminate()
        uds.wait(timeout=20)
