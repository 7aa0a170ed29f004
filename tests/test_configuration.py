"""How an operator configures and watches the process: every flag from ACCEL_* variables (how Helm
values reach the container), JSON logs, invalid configuration refused with exit status 64."""

import json
import os
import subprocess
import time

import numpy as np

from conftest import ACCEL_BIN, Server, free_port, infer_input


def test_flags_from_environment_variables(main_repository, tmp_path):
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    env = dict(os.environ)
    env.update({
        "ACCEL_MODEL_REPOSITORY": main_repository,
        "ACCEL_GRPC_PORT": str(grpc_port),
        "ACCEL_HTTP_PORT": str(http_port),
        "ACCEL_METRICS_PORT": str(metrics_port),
        "ACCEL_METRICS_ADDRESS": "127.0.0.1",
        "ACCEL_MODEL_CONTROL_MODE": "explicit",
        "ACCEL_LOAD_MODEL": "mlp_a,add_sub_int32",
        "ACCEL_LOG_FORMAT": "json",
    })
    log = open(tmp_path / "env.log", "w")
    proc = subprocess.Popen([ACCEL_BIN, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        for _ in range(400):
            try:
                if client.is_server_ready():
                    break
            except Exception:
                pass
            time.sleep(0.05)
        assert client.is_model_ready("mlp_a")
        assert client.is_model_ready("add_sub_int32")
        assert not client.is_model_ready("mlp_b"), "explicit mode loads only ACCEL_LOAD_MODEL"
        index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
        assert index["mlp_b"]["state"] == "UNAVAILABLE" and index["mlp_b"]["reason"] == "unloaded"
        y = client.infer("mlp_a", [infer_input("INPUT0", np.zeros((1, 64), np.float32))]).as_numpy("OUTPUT0")
        assert y.shape == (1, 32)
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        log.close()
    lines = [line for line in open(tmp_path / "env.log").read().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is a JSON object
    assert any(r.get("fields", {}).get("message") == "listening" for r in records), records[:3]
    assert all("level" in r and "timestamp" in r for r in records)


def test_invalid_configuration_exits_64(tmp_path):
    cases = [
        ["serve", "--model-repository", str(tmp_path / "missing")],
        ["serve", "--model-repository", str(tmp_path), "--grpc-port", "9100", "--http-port", "9100"],
        ["serve", "--model-repository", str(tmp_path), "--model-control-mode", "poll"],
        ["serve", "--model-repository", str(tmp_path), "--max-queued-requests", "0"],
    ]
    for args in cases:
        r = subprocess.run([ACCEL_BIN, *args], capture_output=True, text=True, timeout=30)
        assert r.returncode == 64, (args, r.returncode, r.stderr)
        assert r.stderr.strip(), "a clear line says why"


def test_help_documents_every_flag_with_its_environment_variable():
    out = subprocess.run([ACCEL_BIN, "serve", "--help"], capture_output=True, text=True, timeout=30).stdout
    flags = [w for w in out.split() if w.startswith("--") and w not in ("--help",)]
    assert len(flags) >= 20
    for flag in {f.rstrip(",").split("=")[0].split("<")[0] for f in flags}:
        env = "ACCEL_" + flag[2:].replace("-", "_").upper()
        if flag in ("--load-model",):
            env = "ACCEL_LOAD_MODEL"
        assert env in out, f"{flag} has no {env}"


def test_sigterm_with_nothing_in_flight_exits_zero_quickly(main_repository, tmp_path):
    s = Server(main_repository, str(tmp_path / "quiet.log"))
    started = time.monotonic()
    assert s.stop() == 0
    assert time.monotonic() - started < 10
