"""Triton's system shared-memory extension and Unix-socket listeners, driven by Triton's own clients:
tritonclient gRPC and HTTP with `tritonclient.utils.shared_memory`, and perf_analyzer
`--shared-memory system` where it is installed (scripts/lib.sh `ensure_perf_analyzer`; .ci/run does)."""

import concurrent.futures
import http.client
import os
import socket
import stat
import subprocess
import threading
import time
import uuid

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

import modelgen
from conftest import ACCEL_BIN, MLP_DIMS, ROOT, Server, free_port, infer_input

D_IN, D_HIDDEN, D_OUT = MLP_DIMS


def build(root: str) -> str:
    modelgen.add_sub(os.path.join(root, "simple", "1", "model.onnx"), np.int32, dims=16, batch=True)
    modelgen.write_config(os.path.join(root, "simple"), """max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] }, { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] }, { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
dynamic_batching { max_queue_delay_microseconds: 2000 }
""")
    modelgen.mlp(os.path.join(root, "mlp", "1", "model.onnx"), 11, D_IN, D_HIDDEN, D_OUT)
    modelgen.write_config(os.path.join(root, "mlp"),
                          modelgen.mlp_config("mlp", max_batch_size=16, delay_us=5000, d_in=D_IN, d_out=D_OUT))
    # A lone request waits 2.5 s in the queue for company: time to act on its region meanwhile.
    modelgen.mlp(os.path.join(root, "mlp_wait", "1", "model.onnx"), 11, D_IN, D_HIDDEN, D_OUT)
    modelgen.write_config(os.path.join(root, "mlp_wait"), modelgen.mlp_config(
        "mlp_wait", max_batch_size=16, d_in=D_IN, d_out=D_OUT, batching=False)
        + "dynamic_batching { max_queue_delay_microseconds: 2500000 preferred_batch_size: [ 16 ] }\n")
    return root


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return build(str(tmp_path_factory.mktemp("shm-repo")))


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    s = Server(repo, str(tmp_path_factory.mktemp("shm-logs") / "accel.log"),
               extra_args=["--model-control-mode", "none", "--allow-client-shm"])
    yield s
    s.stop()


def key() -> str:
    return f"/accel_test_{uuid.uuid4().hex[:12]}"


class Regions:
    """Regions created by a test, destroyed (and unlinked) at its end."""

    def __init__(self):
        self.handles = []

    def create(self, byte_size, name=None, k=None):
        name = name or f"r{uuid.uuid4().hex[:8]}"
        k = k or key()
        h = shm.create_shared_memory_region(name, k, byte_size)
        self.handles.append(h)
        return name, k, h

    def close(self):
        for h in self.handles:
            try:
                shm.destroy_shared_memory_region(h)
            except Exception:
                pass


@pytest.fixture()
def regions():
    r = Regions()
    yield r
    r.close()


def mlp_reference(client, x):
    r = client.infer("mlp", [infer_input("INPUT0", x)])
    return r.as_numpy("OUTPUT0")


def test_inputs_and_outputs_in_shared_memory_grpc(server, regions):
    c = server.client()
    c.unregister_system_shared_memory()
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 3, dtype=np.int32)
    in_name, in_key, in_h = regions.create(128)
    out_name, out_key, out_h = regions.create(128)
    shm.set_shared_memory_region(in_h, [a, b])
    c.register_system_shared_memory(in_name, in_key, 128)
    c.register_system_shared_memory(out_name, out_key, 128)
    status = c.get_system_shared_memory_status(as_json=True)["regions"]
    assert status[in_name]["key"] == in_key and int(status[in_name]["byte_size"]) == 128

    i0, i1 = grpcclient.InferInput("INPUT0", [1, 16], "INT32"), grpcclient.InferInput("INPUT1", [1, 16], "INT32")
    i0.set_shared_memory(in_name, 64)
    i1.set_shared_memory(in_name, 64, offset=64)
    o0, o1 = grpcclient.InferRequestedOutput("OUTPUT0"), grpcclient.InferRequestedOutput("OUTPUT1")
    o0.set_shared_memory(out_name, 64)
    o1.set_shared_memory(out_name, 64, offset=64)
    r = c.infer("simple", [i0, i1], outputs=[o0, o1])
    out = r.get_output("OUTPUT0")
    assert list(out.shape) == [1, 16] and out.datatype == "INT32"
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out_h, np.int32, [1, 16]), a + b)
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out_h, np.int32, [1, 16], offset=64), a - b)
    # No data crossed the socket for the outputs.
    assert all(len(raw) == 0 for raw in r.get_response().raw_output_contents)

    # The client changes its input in place; the next request reads the new bytes.
    shm.set_shared_memory_region(in_h, [a * 2])
    c.infer("simple", [i0, i1], outputs=[o0, o1])
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out_h, np.int32, [1, 16]), a * 2 + b)

    # Shared memory beside an ordinary input: raw_input_contents holds only the ordinary one.
    mixed = grpcclient.InferInput("INPUT1", [1, 16], "INT32")
    mixed.set_data_from_numpy(np.ones((1, 16), np.int32))
    r = c.infer("simple", [i0, mixed])
    np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), a * 2 + 1)

    c.unregister_system_shared_memory(in_name)
    assert in_name not in c.get_system_shared_memory_status(as_json=True).get("regions", {})
    c.unregister_system_shared_memory()
    assert not c.get_system_shared_memory_status(as_json=True).get("regions")
    c.close()


def test_concurrent_callers_are_batched_and_answered_right(server, regions):
    c = server.client()
    n = 16
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((1, D_IN)).astype(np.float32) for _ in range(n)]
    want = [mlp_reference(c, x) for x in xs]
    names = []
    for k, x in enumerate(xs):
        i_name, i_key, i_h = regions.create(x.nbytes)
        o_name, o_key, o_h = regions.create(D_OUT * 4)
        shm.set_shared_memory_region(i_h, [x])
        c.register_system_shared_memory(i_name, i_key, x.nbytes)
        c.register_system_shared_memory(o_name, o_key, D_OUT * 4)
        names.append((i_name, o_name, o_h))
    # Every caller also names one shared output region, as perf_analyzer does.
    s_name, s_key, _ = regions.create(D_OUT * 4)
    c.register_system_shared_memory(s_name, s_key, D_OUT * 4)
    before = c.get_inference_statistics("mlp", as_json=True)["model_stats"][0]
    barrier = threading.Barrier(n)

    def call(k):
        cl = server.client()
        i_name, o_name, o_h = names[k]
        inp = grpcclient.InferInput("INPUT0", [1, D_IN], "FP32")
        inp.set_shared_memory(i_name, D_IN * 4)
        out = grpcclient.InferRequestedOutput("OUTPUT0")
        out.set_shared_memory(o_name, D_OUT * 4)
        barrier.wait()
        cl.infer("mlp", [inp], outputs=[out])
        shared = grpcclient.InferRequestedOutput("OUTPUT0")
        shared.set_shared_memory(s_name, D_OUT * 4)
        for _ in range(5):
            cl.infer("mlp", [inp], outputs=[shared])
        cl.close()
        return shm.get_contents_as_numpy(o_h, np.float32, [1, D_OUT])

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        got = list(pool.map(call, range(n)))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    after = c.get_inference_statistics("mlp", as_json=True)["model_stats"][0]
    requests = int(after["inference_count"]) - int(before["inference_count"])
    executions = int(after["execution_count"]) - int(before["execution_count"])
    assert requests == n * 6
    assert executions < requests, (executions, requests)
    c.unregister_system_shared_memory()
    c.close()


def test_http_client_shared_memory(server, regions):
    c = httpclient.InferenceServerClient(server.http_url)
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 5, dtype=np.int32)
    in_name, in_key, in_h = regions.create(128)
    out_name, out_key, out_h = regions.create(64)
    shm.set_shared_memory_region(in_h, [a, b])
    c.register_system_shared_memory(in_name, in_key, 128)
    c.register_system_shared_memory(out_name, out_key, 64)
    status = c.get_system_shared_memory_status()
    assert {s["name"] for s in status} >= {in_name, out_name}
    assert c.get_system_shared_memory_status(in_name) == [{"name": in_name, "key": in_key, "offset": 0, "byte_size": 128}]
    i0, i1 = httpclient.InferInput("INPUT0", [1, 16], "INT32"), httpclient.InferInput("INPUT1", [1, 16], "INT32")
    i0.set_shared_memory(in_name, 64)
    i1.set_shared_memory(in_name, 64, offset=64)
    o0 = httpclient.InferRequestedOutput("OUTPUT0")
    o0.set_shared_memory(out_name, 64)
    o1 = httpclient.InferRequestedOutput("OUTPUT1", binary_data=True)
    r = c.infer("simple", [i0, i1], outputs=[o0, o1])
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out_h, np.int32, [1, 16]), a + b)
    np.testing.assert_array_equal(r.as_numpy("OUTPUT1"), a - b)
    assert "data" not in r.get_output("OUTPUT0")
    c.unregister_system_shared_memory()
    assert c.get_system_shared_memory_status() == []
    with pytest.raises(InferenceServerException) as e:
        c.get_system_shared_memory_status("nope")
    assert "Unable to find" in str(e.value)
    # CUDA: status and unregister answer as for an empty set (perf_analyzer unregisters both kinds).
    assert c.get_cuda_shared_memory_status() == []
    c.unregister_cuda_shared_memory()
    c.close()


def code(e):
    return e.value.status()


def test_every_error_case_has_tritons_code(server, regions):
    c = server.client()
    h = httpclient.InferenceServerClient(server.http_url)
    name, k, handle = regions.create(128)
    c.register_system_shared_memory(name, k, 128)
    cases = [
        (lambda: c.register_system_shared_memory(name, k, 128), "StatusCode.ALREADY_EXISTS", "already in manager"),
        (lambda: c.register_system_shared_memory("big", k, 129), "StatusCode.INVALID_ARGUMENT", "beyond the object"),
        (lambda: c.register_system_shared_memory("off", k, 64, offset=100), "StatusCode.INVALID_ARGUMENT", "beyond"),
        (lambda: c.get_system_shared_memory_status("unknown"), "StatusCode.NOT_FOUND", "Unable to find"),
    ]
    for call, want, needle in cases:
        with pytest.raises(InferenceServerException) as e:
            call()
        assert code(e) == want, (want, str(e.value))
        assert needle in str(e.value)
    c.unregister_system_shared_memory("never-registered")
    h.unregister_system_shared_memory("never-registered")

    def simple(i0_args, i1_args=None, out_args=None, data_in1=False):
        i0 = grpcclient.InferInput("INPUT0", [1, 16], "INT32")
        i0.set_shared_memory(*i0_args[:2], offset=i0_args[2] if len(i0_args) > 2 else 0)
        i1 = grpcclient.InferInput("INPUT1", [1, 16], "INT32")
        i1.set_data_from_numpy(np.zeros((1, 16), np.int32))
        outputs = None
        if out_args:
            o = grpcclient.InferRequestedOutput("OUTPUT0")
            o.set_shared_memory(*out_args)
            outputs = [o]
        return c.infer("simple", [i0, i1], outputs=outputs)

    small_name, small_key, _ = regions.create(32)
    c.register_system_shared_memory(small_name, small_key, 32)
    infer_cases = [
        ((("nope", 64),), "StatusCode.NOT_FOUND", "Unable to find shared memory region: 'nope'"),
        (((name, 64, 128),), "StatusCode.INVALID_ARGUMENT", "Invalid offset for"),
        (((name, 64, 100),), "StatusCode.INVALID_ARGUMENT", "Invalid offset + byte size"),
        (((name, 60),), "StatusCode.INVALID_ARGUMENT", "60 bytes"),
        (((name, 64), None, (small_name, 32)), "StatusCode.INTERNAL", "should be at least 64 bytes"),
    ]
    for args, want, needle in infer_cases:
        with pytest.raises(InferenceServerException) as e:
            simple(*args)
        assert code(e) == want, (args, str(e.value))
        assert needle in str(e.value), str(e.value)

    # Shared memory with classification on one output.
    i0 = grpcclient.InferInput("INPUT0", [1, 16], "INT32")
    i0.set_shared_memory(name, 64)
    i1 = grpcclient.InferInput("INPUT1", [1, 16], "INT32")
    i1.set_shared_memory(name, 64, offset=64)
    o = grpcclient.InferRequestedOutput("OUTPUT0", class_count=2)
    # tritonclient refuses this itself; other clients need not, so the server checks too.
    o._output.parameters["shared_memory_region"].string_param = name
    o._output.parameters["shared_memory_byte_size"].int64_param = 64
    with pytest.raises(InferenceServerException) as e:
        c.infer("simple", [i0, i1], outputs=[o])
    assert code(e) == "StatusCode.INVALID_ARGUMENT" and "classification" in str(e.value)

    # The same cases over HTTP, with Triton's HTTP statuses.
    with pytest.raises(InferenceServerException) as e:
        h.register_system_shared_memory(name, k, 128)
    assert e.value.status() == "400"
    hi0 = httpclient.InferInput("INPUT0", [1, 16], "INT32")
    hi0.set_shared_memory("nope", 64)
    hi1 = httpclient.InferInput("INPUT1", [1, 16], "INT32")
    hi1.set_data_from_numpy(np.zeros((1, 16), np.int32))
    with pytest.raises(InferenceServerException) as e:
        h.infer("simple", [hi0, hi1])
    assert e.value.status() == "404"
    hi0.set_shared_memory(name, 64)
    ho = httpclient.InferRequestedOutput("OUTPUT0")
    ho.set_shared_memory(small_name, 32)
    with pytest.raises(InferenceServerException) as e:
        h.infer("simple", [hi0, hi1], outputs=[ho])
    assert e.value.status() == "500"
    # The server is unharmed.
    x = np.ones((1, D_IN), np.float32)
    assert mlp_reference(c, x).shape == (1, D_OUT)
    c.unregister_system_shared_memory()
    c.close()
    h.close()


def test_hostile_keys_are_refused_and_the_server_stays_up(server, regions, tmp_path):
    c = server.client()
    name, k, handle = regions.create(64)
    target = "/dev/shm/" + k.lstrip("/")
    link = f"accel_link_{uuid.uuid4().hex[:8]}"
    os.symlink(target, "/dev/shm/" + link)
    outside = tmp_path / "outside"
    outside.write_bytes(b"\0" * 64)
    fifo = f"accel_fifo_{uuid.uuid4().hex[:8]}"
    os.mkfifo("/dev/shm/" + fifo)
    try:
        hostile = ["/a/b", "/../etc/passwd", "..", "/" + link, str(outside), "/", "/" + fifo,
                   "/triton_python_backend_shm_region_x", "/does-not-exist"]
        for bad in hostile:
            with pytest.raises(InferenceServerException) as e:
                c.register_system_shared_memory("hostile", bad, 64)
            assert code(e) == "StatusCode.INVALID_ARGUMENT", (bad, str(e.value))
        if os.geteuid() == 0:
            theirs = f"accel_theirs_{uuid.uuid4().hex[:8]}"
            with open("/dev/shm/" + theirs, "wb") as f:
                f.write(b"\0" * 64)
            os.chown("/dev/shm/" + theirs, 12345, 12345)
            try:
                with pytest.raises(InferenceServerException) as e:
                    c.register_system_shared_memory("theirs", "/" + theirs, 64)
                assert code(e) == "StatusCode.INVALID_ARGUMENT" and "owned by uid 12345" in str(e.value)
            finally:
                os.unlink("/dev/shm/" + theirs)
        assert not c.get_system_shared_memory_status(as_json=True).get("regions")
        assert c.is_server_live()
    finally:
        os.unlink("/dev/shm/" + link)
        os.unlink("/dev/shm/" + fifo)
        c.close()


def test_a_region_truncated_by_its_owner_fails_cleanly(server, regions):
    c = server.client()
    x = np.random.default_rng(1).standard_normal((1, D_IN)).astype(np.float32)
    want = mlp_reference(c, x)
    # Truncated before the request: refused before anything touches the pages.
    name, k, h = regions.create(x.nbytes)
    shm.set_shared_memory_region(h, [x])
    c.register_system_shared_memory(name, k, x.nbytes)
    os.truncate("/dev/shm/" + k.lstrip("/"), 16)
    inp = grpcclient.InferInput("INPUT0", [1, D_IN], "FP32")
    inp.set_shared_memory(name, x.nbytes)
    with pytest.raises(InferenceServerException) as e:
        c.infer("mlp", [inp])
    assert code(e) == "StatusCode.INVALID_ARGUMENT" and "truncated to 16 bytes" in str(e.value)

    # Truncated while the request waits in the queue: the batch reads the pages after the
    # truncation. Triton dies of SIGBUS here; Accel answers INTERNAL and keeps serving.
    name2, k2, h2 = regions.create(64 << 10)
    shm.set_shared_memory_region(h2, [x])
    c.register_system_shared_memory(name2, k2, 64 << 10)
    inp2 = grpcclient.InferInput("INPUT0", [1, D_IN], "FP32")
    inp2.set_shared_memory(name2, x.nbytes)
    results = []
    t = threading.Thread(target=lambda: results.append(_catch(lambda: c.infer("mlp_wait", [inp2]))))
    t.start()
    time.sleep(0.8)
    os.truncate("/dev/shm/" + k2.lstrip("/"), 0)
    t.join(timeout=30)
    assert results and isinstance(results[0], InferenceServerException), results
    assert results[0].status() == "StatusCode.INTERNAL", str(results[0])
    assert "truncated by its owner" in str(results[0])
    # Later uses of it are refused; everything else is unharmed.
    with pytest.raises(InferenceServerException):
        c.infer("mlp", [inp2])
    np.testing.assert_allclose(mlp_reference(c, x), want, rtol=1e-6)
    assert c.is_server_live()
    c.unregister_system_shared_memory()
    c.close()


def _catch(f):
    try:
        return f()
    except InferenceServerException as e:
        return e


def test_unregister_waits_for_the_requests_using_the_region(server, regions):
    c = server.client()
    x = np.ones((1, D_IN), np.float32)
    name, k, h = regions.create(x.nbytes)
    shm.set_shared_memory_region(h, [x])
    c.register_system_shared_memory(name, k, x.nbytes)
    inp = grpcclient.InferInput("INPUT0", [1, D_IN], "FP32")
    inp.set_shared_memory(name, x.nbytes)
    done = {}

    def run():
        done["result"] = _catch(lambda: server.client().infer("mlp_wait", [inp]))
        done["at"] = time.monotonic()

    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.8)
    c.unregister_system_shared_memory(name)
    unregistered = time.monotonic()
    t.join(timeout=30)
    assert not isinstance(done["result"], Exception), done["result"]
    # Without the wait unregister would answer about 2.2 s before the request (queued 2.5 s) ends;
    # the slack only absorbs the two answers' scheduling on a loaded machine.
    assert done["at"] <= unregistered + 0.5, "unregister answered before the request using the region finished"
    assert not c.get_system_shared_memory_status(as_json=True).get("regions")
    c.close()


def test_client_shared_memory_is_off_by_default(repo, tmp_path, regions):
    s = Server(repo, str(tmp_path / "accel.log"), extra_args=["--model-control-mode", "none"])
    try:
        c = s.client()
        name, k, _ = regions.create(64)
        with pytest.raises(InferenceServerException) as e:
            c.register_system_shared_memory(name, k, 64)
        assert code(e) == "StatusCode.UNIMPLEMENTED" and "--allow-client-shm" in str(e.value)
        assert not c.get_system_shared_memory_status(as_json=True).get("regions")
        inp = grpcclient.InferInput("INPUT0", [1, D_IN], "FP32")
        inp.set_shared_memory(name, 64)
        with pytest.raises(InferenceServerException) as e:
            c.infer("mlp", [inp])
        assert code(e) == "StatusCode.UNIMPLEMENTED"
        with pytest.raises(InferenceServerException) as e:
            c.register_cuda_shared_memory("cuda", b"\0" * 64, 0, 64)
        assert code(e) == "StatusCode.UNIMPLEMENTED"
        c.close()
    finally:
        s.stop()


def test_cuda_registration_names_why_it_is_unavailable(server, regions):
    c = server.client()
    with pytest.raises(InferenceServerException) as e:
        c.register_cuda_shared_memory("cuda", b"\0" * 64, 0, 64)
    assert code(e) == "StatusCode.UNIMPLEMENTED" and "without the `cuda` feature" in str(e.value)
    c.unregister_cuda_shared_memory()
    assert not c.get_cuda_shared_memory_status(as_json=True).get("regions")
    h = httpclient.InferenceServerClient(server.http_url)
    with pytest.raises(InferenceServerException) as e:
        h.register_cuda_shared_memory("cuda", "AAAA", 0, 64)
    assert e.value.status() == "501"
    # One namespace: a system region's name asked of CUDA status is NOT_FOUND, saying what it is.
    name, k, _ = regions.create(64)
    c.register_system_shared_memory(name, k, 64)
    with pytest.raises(InferenceServerException) as e:
        c.get_cuda_shared_memory_status(name)
    assert code(e) == "StatusCode.NOT_FOUND" and "registered as system shared memory" in str(e.value)
    with pytest.raises(InferenceServerException) as e:
        c.register_cuda_shared_memory(name, b"\0" * 64, 0, 64)
    assert code(e) == "StatusCode.UNIMPLEMENTED"
    c.unregister_cuda_shared_memory(name)  # the wrong kind: nothing to do
    assert c.get_system_shared_memory_status(name, as_json=True)["regions"][name]["name"] == name
    c.unregister_system_shared_memory()
    h.close()
    c.close()


def perf_analyzer():
    venv = os.environ.get("ACCEL_BENCH_VENV", os.path.join(ROOT, ".venv-bench"))
    binary = os.path.join(venv, "bin", "perf_analyzer")
    if not os.path.exists(binary):
        return None, None
    lib = subprocess.run([os.path.join(venv, "bin", "python"), "-c",
                          "import nvidia.cuda_runtime, os; print(os.path.join(nvidia.cuda_runtime.__path__[0], 'lib'))"],
                         capture_output=True, text=True).stdout.strip()
    return binary, dict(os.environ, LD_LIBRARY_PATH=lib)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_perf_analyzer_with_system_shared_memory(server, protocol, tmp_path):
    binary, env = perf_analyzer()
    if binary is None:
        pytest.skip("perf_analyzer is not installed (scripts/lib.sh ensure_perf_analyzer installs it)")
    url = server.url if protocol == "grpc" else server.http_url
    csv = tmp_path / "pa.csv"
    r = subprocess.run([binary, "-m", "mlp", "-i", protocol, "-u", url, "-b", "1", "--concurrency-range", "4",
                        "--shared-memory", "system", "--measurement-interval", "1000", "-f", str(csv)],
                       capture_output=True, text=True, timeout=180, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = csv.read_text().splitlines()
    throughput = float(rows[1].split(",")[1])
    assert throughput > 0, rows
    # perf_analyzer unregistered everything at its end.
    c = server.client()
    assert not c.get_system_shared_memory_status(as_json=True).get("regions")
    c.close()


def start_unix(repo, tmp_path, sock, extra=(), log_name="accel-uds.log"):
    log = open(tmp_path / log_name, "w")
    proc = subprocess.Popen([ACCEL_BIN, "serve", "--model-repository", repo, "--model-control-mode", "none",
                             "--grpc-address", f"unix:{sock}", "--http-port", str(free_port()),
                             "--metrics-port", str(free_port()), "--metrics-address", "127.0.0.1", *extra],
                            stdout=log, stderr=subprocess.STDOUT)
    return proc, log


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_ready(url, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"accel exited with {proc.returncode}"
        try:
            c = grpcclient.InferenceServerClient(url)
            if c.is_server_ready():
                return c
        except Exception:
            pass
        time.sleep(0.1)
    raise AssertionError("not ready over the Unix socket")


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost")
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def test_grpc_and_http_over_unix_domain_sockets(repo, tmp_path):
    sock = str(tmp_path / "grpc.sock")
    http_sock = str(tmp_path / "http.sock")
    # A stale socket file from an earlier run (bound, never unlinked) is replaced.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock)
    stale.close()
    proc, log = start_unix(repo, tmp_path, sock, ["--http-address", f"unix:{http_sock}", "--unix-socket-mode", "600"])
    try:
        c = wait_ready(f"unix://{sock}", proc)
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        assert stat.S_ISSOCK(os.stat(http_sock).st_mode)
        x = np.random.default_rng(2).standard_normal((1, D_IN)).astype(np.float32)
        r = c.infer("mlp", [infer_input("INPUT0", x)])
        assert r.as_numpy("OUTPUT0").shape == (1, D_OUT)
        # Streaming over the socket too.
        got = []
        c.start_stream(callback=lambda result, error: got.append(error or result))
        for _ in range(4):
            c.async_stream_infer("mlp", [infer_input("INPUT0", x)])
        c.stop_stream()
        assert len(got) == 4 and not any(isinstance(g, Exception) for g in got)
        np.testing.assert_allclose(got[0].as_numpy("OUTPUT0"), r.as_numpy("OUTPUT0"))
        c.close()
        h = UnixHTTPConnection(http_sock)
        h.request("GET", "/v2/health/ready")
        assert h.getresponse().status == 200
        h.close()
        # perf_analyzer (gRPC's C++ core, like grpcio) over the socket, unchanged.
        binary, env = perf_analyzer()
        if binary is not None:
            r = subprocess.run([binary, "-m", "mlp", "-i", "grpc", "-u", f"unix://{sock}", "-b", "1",
                                "--concurrency-range", "2", "--measurement-interval", "1000", "-s", "50"],
                               capture_output=True, text=True, timeout=180, env=env)
            assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
            assert "throughput" in r.stdout
        # A second server on the same live socket is refused, not stolen.
        second, log2 = start_unix(repo, tmp_path, sock, log_name="second.log")
        assert second.wait(timeout=60) != 0
        log2.close()
        assert "another server is listening" in open(tmp_path / "second.log").read()
    finally:
        stop(proc)
        log.close()
    assert not os.path.exists(sock), "the socket file is removed at exit"


def test_a_file_that_is_not_a_socket_is_never_replaced(repo, tmp_path):
    path = tmp_path / "precious"
    path.write_text("keep me")
    proc, log = start_unix(repo, tmp_path, str(path))
    assert proc.wait(timeout=60) != 0
    log.close()
    assert path.read_text() == "keep me"
    assert "not a socket" in open(tmp_path / "accel-uds.log").read()
