"""Hostile input against the real binary: requests, config overrides, model files and connections
written to crash Accel, hang it, exhaust its memory or make it read outside its repository. For each
class the server stays alive, answers with the right status code, and a witness running correct
requests beside the attack keeps getting correct answers.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

import hostile_models as hm
import modelgen
from conftest import Server, infer_input, ort_library, relative_error, scrape, value

D_IN, D_HIDDEN, D_OUT = 16, 32, 8
WITNESS_SEED = 5
EXEC_LIMIT = 256 << 20
LOAD_TIMEOUT = 6
HEADER_TIMEOUT = 2
BODY_TIMEOUT = 3
METRICS_CONNECTIONS = 8


def status_of(call):
    try:
        call()
    except InferenceServerException as e:
        return e.status(), e.message()
    return "OK", ""


def expect(call, status, *needles):
    got, message = status_of(call)
    assert got == f"StatusCode.{status}", (got, message)
    for n in needles:
        assert n in message, message
    return message


def rss(pid: int, field: str = "VmHWM") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field}")


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Witness:
    """Correct requests to an unrelated model, all along: every answer is checked."""

    def __init__(self, url: str):
        self.url = url
        self.ok = 0
        self.errors: list[str] = []
        self.latencies: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        client = grpcclient.InferenceServerClient(self.url)
        rng = np.random.default_rng(0)
        while not self._stop.is_set():
            x = rng.standard_normal((2, D_IN)).astype(np.float32)
            t0 = time.monotonic()
            try:
                y = client.infer("witness", [infer_input("INPUT0", x)], client_timeout=30).as_numpy("OUTPUT0")
                want = modelgen.mlp_reference(x, WITNESS_SEED, D_IN, D_HIDDEN, D_OUT)
                if relative_error(y, want) > 1e-4:
                    self.errors.append("wrong answer")
                else:
                    self.ok += 1
            except Exception as e:  # noqa: BLE001 - every failure is one
                self.errors.append(repr(e))
            self.latencies.append((t0, time.monotonic() - t0))
            time.sleep(0.005)
        client.close()

    def check(self, since: int = 0) -> None:
        """No wrong answer and no failure so far, and answers still coming (more than `since`)."""
        deadline = time.monotonic() + 10
        while self.ok <= since and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not self.errors, self.errors[:5]
        assert self.ok > since, "the witness got no answer"

    def max_latency(self, start: float, end: float) -> float:
        return max((d for t, d in self.latencies if start <= t <= end), default=0.0)

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=30)


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    """Files outside the repository that no model may read."""
    d = tmp_path_factory.mktemp("outside")
    modelgen.mlp(str(d / "model.onnx"), 99, D_IN, D_HIDDEN, D_OUT)
    np.full(4, 42.0, np.float32).tofile(d / "secret.bin")
    return d


def cfg(name: str, backend: str, inputs: str, outputs: str, extra: str = "") -> str:
    return (f'name: "{name}"\nbackend: "{backend}"\nmax_batch_size: 0\n'
            f"input [ {inputs} ]\noutput [ {outputs} ]\n{extra}")


VEC4 = '{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }'
VEC4_OUT = '{ name: "y" data_type: TYPE_FP32 dims: [ 4 ] }'


@pytest.fixture(scope="module")
def repo(tmp_path_factory, outside):
    root = tmp_path_factory.mktemp("hostile") / "repo"
    r = str(root)
    modelgen.mlp(f"{r}/witness/1/model.onnx", WITNESS_SEED, D_IN, D_HIDDEN, D_OUT)
    modelgen.write_config(f"{r}/witness", modelgen.mlp_config("witness", 16, 0, D_IN, D_OUT))
    modelgen.mlp(f"{r}/reloadable/1/model.onnx", WITNESS_SEED, D_IN, D_HIDDEN, D_OUT)
    modelgen.write_config(f"{r}/reloadable", modelgen.mlp_config("reloadable", 16, 0, D_IN, D_OUT))
    modelgen.mlp(f"{r}/late/1/model.onnx", 7, D_IN, D_HIDDEN, D_OUT)
    # Links and external data leading out, on both engines.
    for backend in ("candle", "onnxruntime"):
        b = backend[:3]
        os.makedirs(f"{r}/link_out_{b}/1")
        os.symlink(outside / "model.onnx", f"{r}/link_out_{b}/1/model.onnx")
        os.makedirs(f"{r}/link_missing_{b}/1")
        os.symlink(outside / "nothing_here.onnx", f"{r}/link_missing_{b}/1/model.onnx")
        for name, location, target in [
            (f"ext_out_{b}", "w.bin", outside / "secret.bin"),
            (f"ext_zero_{b}", "w.bin", "/dev/zero"),
            (f"ext_proc_{b}", "w.bin", "/proc/self/environ"),
            (f"ext_dotdot_{b}", "../../../outside/secret.bin", None),
            (f"ext_abs_{b}", str(outside / "secret.bin"), None),
        ]:
            hm.external_identity(f"{r}/{name}/1/model.onnx", location)
            if target is not None:
                os.symlink(target, f"{r}/{name}/1/{location}")
            modelgen.write_config(f"{r}/{name}", cfg(name, backend, VEC4, VEC4_OUT))
        # A link that stays inside the model's directory is followed (ONNX Runtime, which opens
        # external data itself, also wants it inside the version directory).
        name = f"ext_inside_{b}"
        hm.external_identity(f"{r}/{name}/1/model.onnx", "w.bin")
        os.makedirs(f"{r}/{name}/1/data")
        np.arange(4, dtype=np.float32).tofile(f"{r}/{name}/1/data/weights.bin")
        os.symlink("data/weights.bin", f"{r}/{name}/1/w.bin")
        modelgen.write_config(f"{r}/{name}", cfg(name, backend, VEC4, VEC4_OUT))
        for name in (f"link_out_{b}", f"link_missing_{b}"):
            modelgen.write_config(f"{r}/{name}", modelgen.mlp_config(name, 16, 0, D_IN, D_OUT).replace(
                'platform: "onnxruntime_onnx"', f'backend: "{backend}"'))
    # Memory from the request.
    hm.column_with_its_transpose(f"{r}/outer/1/model.onnx", "MatMul")
    hm.column_with_its_transpose(f"{r}/broadcast/1/model.onnx", "Add")
    hm.two_fills(f"{r}/two_fills/1/model.onnx")
    hm.gather_rows(f"{r}/gather/1/model.onnx")
    # Without batching: the request's first dimension is the model's.
    column = '{ name: "x" data_type: TYPE_FP32 dims: [ -1, 1 ] }'
    square = '{ name: "y" data_type: TYPE_FP32 dims: [ -1, -1 ] }'
    for name in ("outer", "broadcast"):
        modelgen.write_config(f"{r}/{name}", cfg(name, "candle", column, square))
    modelgen.write_config(f"{r}/two_fills", cfg("two_fills", "candle", '{ name: "shape" data_type: TYPE_INT64 dims: [ 2 ] }',
                                                '{ name: "a" data_type: TYPE_FP32 dims: [ -1, -1 ] }, '
                                                '{ name: "b" data_type: TYPE_FP32 dims: [ -1, -1 ] }'))
    modelgen.write_config(f"{r}/gather", cfg("gather", "candle", '{ name: "idx" data_type: TYPE_INT64 dims: [ -1 ] }',
                                             '{ name: "y" data_type: TYPE_FP32 dims: [ -1, 256 ] }'))
    # Work from the request, and work to fold at load.
    hm.wide_pool(f"{r}/wide_pool/1/model.onnx")
    modelgen.write_config(f"{r}/wide_pool", cfg("wide_pool", "candle", '{ name: "x" data_type: TYPE_FP32 dims: [ 1, 1, -1, -1 ] }',
                                                '{ name: "y" data_type: TYPE_FP32 dims: [ 1, 1, -1, -1 ] }'))
    hm.constant_square(f"{r}/const_square/1/model.onnx")
    modelgen.write_config(f"{r}/const_square", cfg("const_square", "candle", VEC4, VEC4_OUT))
    # Limits at load.
    hm.huge_initializer(f"{r}/huge_init/1/model.onnx")
    hm.deep_config(f"{r}/deep_config")
    modelgen.mlp(f"{r}/many_instances/1/model.onnx", 3, D_IN, D_HIDDEN, D_OUT)
    modelgen.write_config(f"{r}/many_instances", modelgen.mlp_config("many_instances", 16, 0, D_IN, D_OUT).replace(
        "count: 1", "count: 2147483647"))
    # Loops.
    hm.request_loop(f"{r}/request_loop/1/model.onnx")
    hm.constant_loop(f"{r}/const_loop_capped/1/model.onnx", 10**12)
    hm.constant_loop(f"{r}/const_loop_slow_a/1/model.onnx", 999_999)
    hm.constant_loop(f"{r}/const_loop_slow_b/1/model.onnx", 999_998)
    # A broken file that has not been tried yet (on-demand).
    os.makedirs(f"{r}/broken/1")
    with open(f"{r}/broken/1/model.onnx", "wb") as f:
        f.write(b"\x08\x07garbage")
    # Shapes: a graph that declares the wrong output shape, Triton's scalar models.
    for backend in ("candle", "onnxruntime"):
        b = backend[:3]
        hm.declared_shape_lies(f"{r}/lies_{b}/1/model.onnx")
        modelgen.write_config(f"{r}/lies_{b}", cfg(f"lies_{b}", backend, '{ name: "x" data_type: TYPE_FP32 dims: [ 1, 5 ] }',
                                                  '{ name: "y" data_type: TYPE_FP32 dims: [ 3, 1, 5 ] }'))
        hm.declared_shape_lies(f"{r}/lies_wrong_{b}/1/model.onnx")
        modelgen.write_config(f"{r}/lies_wrong_{b}", cfg(f"lies_wrong_{b}", backend,
                                                        '{ name: "x" data_type: TYPE_FP32 dims: [ 1, 5 ] }',
                                                        '{ name: "y" data_type: TYPE_FP32 dims: [ 2, 2 ] }'))
        hm.scalar_model(f"{r}/scalar_{b}/1/model.onnx")
        modelgen.write_config(f"{r}/scalar_{b}", cfg(f"scalar_{b}", backend, '{ name: "x" data_type: TYPE_FP32 dims: [ 1 ] }',
                                                    '{ name: "y" data_type: TYPE_FP32 dims: [ 1 ] }'))
    # Large REST bodies.
    modelgen.scale_model(f"{r}/scale/1/model.onnx")
    modelgen.write_config(f"{r}/scale", 'max_batch_size: 0\ninput [ { name: "x" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
                                        'output [ { name: "y" data_type: TYPE_FP32 dims: [ -1 ] } ]\n')
    return r


LIMIT_ARGS = [
    "--max-execution-memory", str(EXEC_LIMIT), "--max-loop-iterations", "1000000",
    "--model-load-timeout-secs", str(LOAD_TIMEOUT), "--http-header-timeout-secs", str(HEADER_TIMEOUT),
    "--http-body-timeout-secs", str(BODY_TIMEOUT), "--metrics-max-connections", str(METRICS_CONNECTIONS),
    "--default-backend", "candle",
]


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    s = Server(repo, str(tmp_path_factory.mktemp("logs") / "accel-hostile.log"),
               extra_args=[*LIMIT_ARGS, "--onnxruntime-library", ort_library()])
    yield s
    s.stop()


@pytest.fixture(scope="module")
def witness(server):
    w = Witness(server.url)
    w.check()
    yield w
    w.stop()
    assert server.proc.poll() is None, "the server died"


@pytest.fixture()
def client(server):
    c = server.client()
    yield c
    c.close()


X4 = np.zeros(4, np.float32)


# ---- files outside the repository ------------------------------------------------------------------


@pytest.mark.parametrize("b", ["can", "onn"])
def test_nothing_outside_the_repository_is_read(server, witness, client, repo, outside, b):
    before = witness.ok
    host_paths = [repo, str(outside), os.path.dirname(repo)]
    messages = {}
    for name in (f"link_out_{b}", f"link_missing_{b}", f"ext_out_{b}", f"ext_zero_{b}", f"ext_proc_{b}",
                 f"ext_dotdot_{b}", f"ext_abs_{b}"):
        t0 = time.monotonic()
        assert not client.is_model_ready(name), name
        # A device or /proc file is never read without end.
        assert time.monotonic() - t0 < 5, name
        x = np.zeros((1, D_IN), np.float32) if name.startswith("link") else X4
        inp = "INPUT0" if name.startswith("link") else "x"
        message = expect(lambda: client.infer(name, [infer_input(inp, x)]), "UNAVAILABLE", name)
        messages[name] = message
        for p in host_paths:
            assert p not in message, (name, message)
    # Whether a path outside exists is not told.
    assert (messages[f"link_out_{b}"].replace(f"link_out_{b}", "M")
            == messages[f"link_missing_{b}"].replace(f"link_missing_{b}", "M"))
    assert "leaves" in messages[f"ext_dotdot_{b}"] or "not a relative path" in messages[f"ext_dotdot_{b}"]
    index = client.get_model_repository_index(as_json=True)["models"]
    for entry in index:
        for p in host_paths:
            assert p not in entry.get("reason", ""), entry
    # A link that stays inside the model's directory is followed.
    y = client.infer(f"ext_inside_{b}", [infer_input("x", X4)]).as_numpy("y")
    assert np.array_equal(y, np.arange(4, dtype=np.float32))
    witness.check(before)


def test_overrides_cannot_name_files_outside(server, witness, client, outside):
    before = witness.ok
    x = np.zeros((1, D_IN), np.float32)
    want = client.infer("reloadable", [infer_input("INPUT0", x)]).as_numpy("OUTPUT0")
    for filename in (str(outside / "model.onnx"), "../late/1/model.onnx", "..", "1/model.onnx"):
        config = json.dumps({"name": "reloadable", "backend": "candle", "default_model_filename": filename})
        with pytest.raises(InferenceServerException) as e:
            client.load_model("reloadable", config=config)
        assert "must be a file name" in e.value.message(), e.value.message()
        assert str(outside) not in e.value.message()
    # The copy that was serving still serves.
    assert np.array_equal(client.infer("reloadable", [infer_input("INPUT0", x)]).as_numpy("OUTPUT0"), want)
    witness.check(before)


# ---- memory from one request -------------------------------------------------------------------------


def test_one_request_cannot_make_an_execution_exhaust_memory(server, witness, client):
    before = witness.ok
    small = np.arange(4, dtype=np.float32).reshape(4, 1)
    for model, op, want in [("outer", "MatMul", small @ small.T), ("broadcast", "Add", small + small.T)]:
        assert np.allclose(client.infer(model, [infer_input("x", small)]).as_numpy("y"), want)
        big = np.ones((100_000, 1), np.float32)  # 400 KB asking for 40 GB
        expect(lambda: client.infer(model, [infer_input("x", big)]), "RESOURCE_EXHAUSTED", op,
               "--max-execution-memory")
    # Two operators that each fit, together do not: the budget is per execution.
    ok = client.infer("two_fills", [infer_input("shape", np.array([100, 100], np.int64))])
    assert ok.as_numpy("a").shape == (100, 100) and ok.as_numpy("b").shape == (100, 100)
    side = int(np.sqrt(EXEC_LIMIT * 0.6 / 4))
    expect(lambda: client.infer("two_fills", [infer_input("shape", np.array([side, side], np.int64))]),
           "RESOURCE_EXHAUSTED", "ConstantOfShape")
    # A Gather of many indices (8 MB of request, 1 GB of rows).
    idx = np.zeros(1_000_000, np.int64)
    expect(lambda: client.infer("gather", [infer_input("idx", idx)]), "RESOURCE_EXHAUSTED", "Gather")
    assert client.infer("gather", [infer_input("idx", np.array([3, 1], np.int64))]).as_numpy("y").shape == (2, 256)
    assert rss(server.proc.pid, "VmHWM") < 2 << 30
    witness.check(before)


def test_duplicate_requested_outputs_are_refused(server, witness, client):
    before = witness.ok
    x = np.zeros((1, D_IN), np.float32)
    outputs = [grpcclient.InferRequestedOutput("OUTPUT0") for _ in range(3)]
    expect(lambda: client.infer("witness", [infer_input("INPUT0", x)], outputs=outputs), "INVALID_ARGUMENT",
           "OUTPUT0", "more than once")
    import tritonclient.http as httpclient
    h = server.http_client()
    i = httpclient.InferInput("INPUT0", [1, D_IN], "FP32")
    i.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as e:
        h.infer("witness", [i], outputs=[httpclient.InferRequestedOutput("OUTPUT0") for _ in range(3)])
    assert e.value.status() == "400" and "more than once" in e.value.message()
    witness.check(before)


# ---- limits at load ------------------------------------------------------------------------------------


def test_model_files_and_configs_are_bounded_at_load(server, witness, client):
    before = witness.ok
    threads_before = rss(server.proc.pid, "Threads")
    for name, needle in [("huge_init", "more elements than a tensor may have"),
                         ("deep_config", "nest more than"),
                         ("many_instances", "more than 64 instances")]:
        t0 = time.monotonic()
        expect(lambda: client.infer(name, [infer_input("INPUT0", np.zeros((1, D_IN), np.float32))]),
               "UNAVAILABLE", needle)
        assert time.monotonic() - t0 < 10, name
    # The same instance count through the repository API: refused before any instance exists.
    config = json.dumps({"name": "reloadable", "backend": "candle", "max_batch_size": 16,
                         "instance_group": [{"count": 2147483647, "kind": "KIND_CPU"}]})
    with pytest.raises(InferenceServerException) as e:
        client.load_model("reloadable", config=config)
    assert "more than 64 instances" in e.value.message()
    assert rss(server.proc.pid, "Threads") < threads_before + 16
    witness.check(before)


# ---- hangs ------------------------------------------------------------------------------------------


def test_loops_are_capped_and_stop_when_their_client_leaves(server, witness, client):
    before = witness.ok
    m = lambda n: [infer_input("m", np.array([n], np.int64))]  # noqa: E731
    # The answer of a short loop is right.
    s = np.full((1, 64), 0.5, np.float32)
    w = (np.random.default_rng(2).standard_normal((64, 64)) / np.sqrt(64)).astype(np.float32)
    want = s
    for _ in range(3):
        want = np.tanh(want @ w)
    assert relative_error(client.infer("request_loop", m(3)).as_numpy("s"), want) < 1e-5
    # A trip count beyond the limit is refused before anything runs.
    t0 = time.monotonic()
    expect(lambda: client.infer("request_loop", m(10**12)), "INVALID_ARGUMENT", "--max-loop-iterations")
    assert time.monotonic() - t0 < 2
    # How long one iteration takes here, so that the next check means something on any machine.
    t0 = time.monotonic()
    client.infer("request_loop", m(20_000))
    full = (time.monotonic() - t0) * 999_999 / 20_000
    assert full > 5, f"a full loop would take only {full:.1f}s: the check below would prove nothing"
    # A client that gives up (its deadline passes) stops the computation: the next request to the
    # same (single-instance) model is answered long before the abandoned loop would have ended.
    # (The client's own timer says DEADLINE_EXCEEDED; tonic, enforcing the same grpc-timeout on the
    # server, answers CANCELLED "Timeout expired" when its timer fires first.)
    got, message = status_of(lambda: client.infer("request_loop", m(999_999), client_timeout=0.5))
    assert got in ("StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED"), (got, message)
    t0 = time.monotonic()
    client.infer("request_loop", m(1), client_timeout=60)
    assert time.monotonic() - t0 < full / 4, f"{time.monotonic() - t0:.1f}s: the abandoned loop ran on"
    samples = scrape(server)
    assert value(samples, "nv_inference_request_failure_total", model="request_loop", version="1", reason="CANCELED") >= 1
    witness.check(before)


def test_work_is_bounded_before_it_runs(server, witness, client):
    before = witness.ok
    # A small image through a million-position window is answered, and rightly (every window covers
    # the whole image).
    x = np.random.default_rng(5).standard_normal((1, 1, 4, 4)).astype(np.float32)
    y = client.infer("wide_pool", [infer_input("x", x)]).as_numpy("y")
    assert y.shape == (1, 1, 3, 3) and np.all(y == x.max())
    # A 4 MiB image would take 10^12 window positions (hours): refused at once, naming the flag.
    t0 = time.monotonic()
    big = [infer_input("x", np.zeros((1, 1, 1024, 1024), np.float32))]
    expect(lambda: client.infer("wide_pool", big), "RESOURCE_EXHAUSTED", "--max-execution-work", "MaxPool")
    assert time.monotonic() - t0 < 5
    # The message names the node once.
    _, message = status_of(lambda: client.infer("wide_pool", big))
    assert message.count("MaxPool") == 1, message
    # A constant product past the folding work limit is not folded at load but computed per request
    # (3072 · 0.001² = 0.003072), within the request's limits.
    x = np.arange(4, dtype=np.float32)
    y = client.infer("const_square", [infer_input("x", x)]).as_numpy("y")
    assert relative_error(y, x + 3072 * 0.001 * 0.001) < 1e-3
    witness.check(before)


def test_constant_loops_cannot_hold_the_load_slots(server, witness, client):
    before = witness.ok
    # Over the iteration limit: not folded at load; every request is refused with the reason.
    expect(lambda: client.infer("const_loop_capped", [infer_input("x", np.zeros((1, 64), np.float32))]),
           "INVALID_ARGUMENT", "--max-loop-iterations")
    # Under it but long: the fold runs at load and is stopped by the load deadline, which frees both
    # load slots for the model that comes next.
    t0 = time.monotonic()
    results = {}

    def load(name):
        c = server.client()
        results[name] = status_of(lambda: c.infer(name, [infer_input("x", np.zeros((1, 64), np.float32))]))
        c.close()

    threads = [threading.Thread(target=load, args=(n,)) for n in ("const_loop_slow_a", "const_loop_slow_b")]
    for t in threads:
        t.start()
    time.sleep(0.5)
    y = client.infer("late", [infer_input("INPUT0", np.zeros((1, D_IN), np.float32))], client_timeout=60)
    assert y.as_numpy("OUTPUT0").shape == (1, D_OUT)
    for t in threads:
        t.join(timeout=60)
    assert time.monotonic() - t0 < LOAD_TIMEOUT + 10
    for name in ("const_loop_slow_a", "const_loop_slow_b"):
        status, message = results[name]
        assert status == "StatusCode.UNAVAILABLE" and "deadline" in message, (name, status, message)
    witness.check(before)


def test_deep_config_and_broken_files_leave_the_server_alive(server, witness, client):
    assert not client.is_model_ready("deep_config")
    assert server.proc.poll() is None
    witness.check()


# ---- the REST front end ----------------------------------------------------------------------------


def http_request(server, method, path, body=b"", headers=None, read_body=True, timeout=30):
    import http.client

    host, port = server.http_url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    data = r.read() if read_body else b""
    conn.close()
    return r.status, data


def json_body(n: int) -> bytes:
    data = ",".join(["0.5"] * n)
    return ('{"parameters":{"binary_data_output":true},"inputs":[{"name":"x","shape":[%d],"datatype":"FP32","data":[%s]}]}'
            % (n, data)).encode()


def test_rest_decodes_off_the_runtime_and_within_a_multiple_of_the_body(server, witness):
    before = witness.ok
    body = json_body(8_000_000)  # 32 MiB of JSON
    results = []

    def post():
        t0 = time.monotonic()
        status, data = http_request(server, "POST", "/v2/models/scale/infer", body,
                                    {"Content-Type": "application/json"}, timeout=120)
        results.append((status, time.monotonic() - t0, data[:200]))

    hwm = rss(server.proc.pid)
    start = time.monotonic()
    posts = [threading.Thread(target=post) for _ in range(2)]
    for t in posts:
        t.start()
    for t in posts:
        t.join(timeout=180)
    end = time.monotonic()
    assert [r[0] for r in results] == [200, 200], results
    # gRPC requests beside the two decodes were not stalled behind them.
    latency = witness.max_latency(start + 0.2, end - 0.2)
    slowest = max(r[1] for r in results)
    assert latency < 1.0 and latency < slowest / 2, (latency, slowest)
    # Two bodies in flight at once: within a small multiple of their size (the JSON tree cost ~28x).
    assert rss(server.proc.pid) - hwm < 2 * 6 * len(body), (rss(server.proc.pid) - hwm, len(body))
    witness.check(before)


def test_an_unknown_model_costs_nothing_of_its_body(server, witness):
    host, port = server.http_url.split(":")
    hwm = rss(server.proc.pid)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /v2/models/no_such_model/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 50331648\r\n\r\n")
        # The answer comes before any of the 48 MiB is sent.
        reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 404"), reply
    assert b"unknown model" in reply
    assert rss(server.proc.pid) - hwm < 16 << 20
    witness.check()


def test_slow_clients_are_cut_off(server, witness):
    before = witness.ok
    host, port = server.http_url.split(":")

    def closed_within(s, seconds, trickle=None):
        s.settimeout(0.2)
        t0 = time.monotonic()
        got = b""
        while time.monotonic() - t0 < seconds:
            if trickle:
                try:
                    s.sendall(trickle)
                except OSError:
                    return time.monotonic() - t0, got
            try:
                chunk = s.recv(4096)
                if not chunk:
                    return time.monotonic() - t0, got
                got += chunk
            except socket.timeout:
                pass
            except OSError:
                return time.monotonic() - t0, got
        return None, got

    # Headers sent a byte at a time.
    s = socket.create_connection((host, int(port)))
    s.sendall(b"POST /v2/models/witness/infer HTTP/1.1\r\nHost: x\r\n")
    took, _ = closed_within(s, HEADER_TIMEOUT + 4, trickle=b"X")
    s.close()
    assert took is not None and took < HEADER_TIMEOUT + 3, took
    # A body of 3 GB promised, sent at a trickle.
    s = socket.create_connection((host, int(port)))
    s.sendall(b"POST /v2/models/witness/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 3000000000\r\n\r\n")
    took, got = closed_within(s, BODY_TIMEOUT + 6, trickle=b"[" * 256)
    s.close()
    assert took is not None and took < BODY_TIMEOUT + 4, (took, got[:100])
    assert got.startswith(b"HTTP/1.1 408"), got[:200]
    # An idle connection.
    s = socket.create_connection((host, int(port)))
    took, _ = closed_within(s, HEADER_TIMEOUT + 4)
    s.close()
    assert took is not None and took < HEADER_TIMEOUT + 3, took
    witness.check(before)


def test_idle_connections_to_one_port_cannot_stop_the_others(server, witness, client):
    before = witness.ok
    host, port = server.metrics_url.split("//")[1].split("/")[0].split(":")
    fds = open_files(server.proc.pid)
    held = []
    for _ in range(100):
        try:
            held.append(socket.create_connection((host, int(port)), timeout=2))
        except OSError:
            pass
    time.sleep(0.3)
    # The limit bounds what the flood holds open in the server.
    assert open_files(server.proc.pid) < fds + METRICS_CONNECTIONS + 10
    # REST and gRPC still answer.
    assert http_request(server, "GET", "/v2/health/ready")[0] == 200
    assert client.infer("witness", [infer_input("INPUT0", np.zeros((1, D_IN), np.float32))]).as_numpy("OUTPUT0").shape == (1, D_OUT)
    for s in held:
        s.close()
    # Once the idle connections are gone, Prometheus scrapes again, and the refusals were counted.
    deadline = time.monotonic() + HEADER_TIMEOUT + 5
    while True:
        try:
            samples = scrape(server)
            break
        except OSError:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    assert value(samples, "accel_connections_refused_total", listener="metrics") >= 50
    witness.check(before)


# ---- also fixed -------------------------------------------------------------------------------------


def test_model_ready_tells_the_truth(server, client):
    # On-demand: asking loads the model, so a broken file that has not been tried is not ready.
    assert not client.is_model_ready("broken")
    assert http_request(server, "GET", "/v2/models/broken/ready")[0] == 400
    assert client.is_model_ready("late")
    status, body = http_request(server, "GET", "/v2/models/late/ready")
    assert status == 200 and json.loads(body) == {"name": "late", "ready": True}


def test_health_bodies_are_the_open_inference_protocol_s(server):
    status, body = http_request(server, "GET", "/v2/health/live")
    assert status == 200 and json.loads(body) == {"live": True}
    status, body = http_request(server, "GET", "/v2/health/ready")
    assert status == 200 and json.loads(body) == {"ready": True}


@pytest.mark.parametrize("b", ["can", "onn"])
def test_output_shapes_trust_the_config_and_are_checked(server, client, b):
    x = np.arange(5, dtype=np.float32).reshape(1, 5)
    y = client.infer(f"lies_{b}", [infer_input("x", x)]).as_numpy("y")
    assert y.shape == (3, 1, 5) and np.array_equal(y[2, 0], x[0])
    meta = client.get_model_metadata(f"lies_{b}", as_json=True)
    assert meta["outputs"][0]["shape"] == ["3", "1", "5"]
    # A config that states a shape the model does not produce: the answer is an error naming it.
    expect(lambda: client.infer(f"lies_wrong_{b}", [infer_input("x", x)]), "INTERNAL", "'y'", "[2, 2]")


@pytest.mark.parametrize("b", ["can", "onn"])
def test_scalar_models_serve_on_both_engines(client, b):
    y = client.infer(f"scalar_{b}", [infer_input("x", np.array([1.5], np.float32))]).as_numpy("y")
    assert y.shape == (1,) and y[0] == 3.0


def test_log_format_changes_at_run_time(server, client):
    assert http_request(server, "POST", "/v2/logging", b'{"log_format": "json"}')[0] == 200
    # A log line after the change: loading a model logs.
    client.load_model("late")
    lines = [line for line in server.log().splitlines() if line.strip()]
    assert json.loads(lines[-1])["fields"], lines[-1]
    settings = client.update_log_settings({"log_format": "default"}, as_json=True)
    assert settings["settings"]["log_format"]["string_param"] == "default"
    client.load_model("late")
    last = server.log().splitlines()[-1]
    assert not last.startswith("{"), last
