"""The ONNX Runtime backend: the libonnxruntime.so.1.x of PyPI's onnxruntime wheel loaded at run time
(--onnxruntime-library), chosen per model the way Triton chooses (backend / platform) with a server
default, and compared with onnxruntime's own Python output. A missing library or an operator one
engine lacks makes only the models concerned UNAVAILABLE, with the reason."""

import os
import threading

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tritonclient.utils import InferenceServerException

import modelgen
import opmodels
from conftest import DATATYPE_MODELS, Server, infer_input, ort_library, relative_error, scrape, value

D_IN, D_HIDDEN, D_OUT = 64, 128, 32


def repository(root: str) -> str:
    # The same weights on each engine, chosen by the config's backend field.
    for name, backend in (("mlp_ort", "onnxruntime"), ("mlp_candle", "candle")):
        modelgen.mlp(os.path.join(root, name, "1", "model.onnx"), 7, D_IN, D_HIDDEN, D_OUT)
        modelgen.write_config(os.path.join(root, name), modelgen.mlp_config(
            name, max_batch_size=16, delay_us=3000, d_in=D_IN, d_out=D_OUT, extra=f'backend: "{backend}"\n'))
    # No config at all: the server default picks the engine, metadata comes from ONNX Runtime's view.
    modelgen.mlp(os.path.join(root, "mlp_default", "1", "model.onnx"), 8, D_IN, D_HIDDEN, D_OUT)
    # Every datatype through ONNX Runtime.
    for wire, elem in DATATYPE_MODELS.items():
        path = os.path.join(root, f"double_{wire.lower()}", "1", "model.onnx")
        modelgen.double_model(path, elem)
        modelgen.write_config(os.path.dirname(os.path.dirname(path)), 'backend: "onnxruntime"\n')
    # An operator candle lacks and ONNX Runtime has: one file, two engines.
    for name, backend in (("einsum_ort", "onnxruntime"), ("einsum_candle", "candle")):
        os.makedirs(os.path.join(root, name, "1"))
        onnx.save(opmodels.unsupported_model(), os.path.join(root, name, "1", "model.onnx"))
        modelgen.write_config(os.path.join(root, name), f'backend: "{backend}"\n')
    return root


@pytest.fixture(scope="module")
def ort_repository(tmp_path_factory) -> str:
    return repository(str(tmp_path_factory.mktemp("ort")))


@pytest.fixture(scope="module")
def ort_server(ort_repository, tmp_path_factory):
    s = Server(ort_repository, str(tmp_path_factory.mktemp("logs") / "accel-ort.log"),
               extra_args=["--model-control-mode", "none", "--onnxruntime-library", ort_library()])
    yield s
    s.stop()


def python_ort(path: str, inputs: dict) -> list:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, inputs)


def test_both_engines_match_onnxruntime_python(ort_server, ort_repository):
    x = np.random.default_rng(1).standard_normal((3, D_IN)).astype(np.float32)
    (want,) = python_ort(os.path.join(ort_repository, "mlp_ort", "1", "model.onnx"), {"INPUT0": x})
    c = ort_server.client()
    try:
        got_ort = c.infer("mlp_ort", [infer_input("INPUT0", x)]).as_numpy("OUTPUT0")
        got_candle = c.infer("mlp_candle", [infer_input("INPUT0", x)]).as_numpy("OUTPUT0")
    finally:
        c.close()
    # Same library, same graph optimisations: ONNX Runtime in Accel is bit for bit Python's.
    np.testing.assert_array_equal(got_ort, want)
    assert relative_error(got_candle, want) < 1e-5
    assert relative_error(want, modelgen.mlp_reference(x, 7, D_IN, D_HIDDEN, D_OUT)) < 1e-5


def test_server_default_runs_unconfigured_models_on_onnxruntime(ort_server, ort_repository):
    c = ort_server.client()
    try:
        config = c.get_model_config("mlp_default", as_json=True)["config"]
        assert config.get("backend") == "onnxruntime", config
        meta = c.get_model_metadata("mlp_default", as_json=True)
        # Completed from the graph: a batch dimension first, then the feature sizes.
        assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [("INPUT0", "FP32", ["-1", str(D_IN)])]
        assert [(t["name"], t["datatype"], t["shape"]) for t in meta["outputs"]] == [("OUTPUT0", "FP32", ["-1", str(D_OUT)])]
        x = np.random.default_rng(2).standard_normal((5, D_IN)).astype(np.float32)
        y = c.infer("mlp_default", [infer_input("INPUT0", x)]).as_numpy("OUTPUT0")
    finally:
        c.close()
    (want,) = python_ort(os.path.join(ort_repository, "mlp_default", "1", "model.onnx"), {"INPUT0": x})
    np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("wire", [w for w in DATATYPE_MODELS if w != "BF16"])
def test_every_datatype_through_onnxruntime(ort_server, ort_repository, wire):
    from tritonclient.utils import triton_to_np_dtype

    rng = np.random.default_rng(3)
    if wire == "BOOL":
        x = rng.random((2, 8)) > 0.5
    elif wire == "FP16":
        x = rng.standard_normal((2, 8)).astype(np.float16)
    else:
        info = np.iinfo if wire.startswith(("INT", "UINT")) else np.finfo
        dtype = triton_to_np_dtype(wire)
        lim = info(dtype)
        # Halved so that x + x stays in range.
        x = rng.uniform(max(lim.min, -1e6) / 2, min(lim.max, 1e6) / 2, (2, 8)).astype(dtype)
    name = f"double_{wire.lower()}"
    (want,) = python_ort(os.path.join(ort_repository, name, "1", "model.onnx"), {"x": x})
    c = ort_server.client()
    try:
        y = c.infer(name, [infer_input("x", x)]).as_numpy("y")
    finally:
        c.close()
    assert y.dtype == want.dtype
    np.testing.assert_array_equal(y, want)


def test_what_onnxruntime_cannot_run_is_unavailable_with_its_reason(ort_server):
    c = ort_server.client()
    try:
        index = {m["name"]: m for m in c.get_model_repository_index(as_json=True)["models"]}
        # ONNX Runtime's CPU kernels have no BF16 Add: its own error, naming the node's operator.
        assert index["double_bf16"]["state"] == "UNAVAILABLE", index["double_bf16"]
        assert "Add" in index["double_bf16"]["reason"] and "ONNX Runtime" in index["double_bf16"]["reason"]
        # Candle has no Einsum: the model that asks for candle says so; the same file on ONNX Runtime serves.
        assert index["einsum_candle"]["state"] == "UNAVAILABLE" and "Einsum" in index["einsum_candle"]["reason"]
        a = np.arange(6, dtype=np.float32).reshape(2, 3)
        b = np.arange(12, dtype=np.float32).reshape(3, 4)
        y = c.infer("einsum_ort", [infer_input("a", a), infer_input("b", b)]).as_numpy("y")
        np.testing.assert_allclose(y, a @ b, rtol=1e-6)
        with pytest.raises(InferenceServerException) as e:
            c.infer("einsum_candle", [infer_input("a", a), infer_input("b", b)])
        assert "UNAVAILABLE" in e.value.status() and "Einsum" in e.value.message()
    finally:
        c.close()


def test_onnxruntime_models_batch_across_callers(ort_server, ort_repository):
    """Sixteen callers at once: every answer is its own, and the batcher formed batches for ONNX Runtime."""
    xs = [np.random.default_rng(100 + k).standard_normal((1, D_IN)).astype(np.float32) for k in range(16)]
    session = ort.InferenceSession(os.path.join(ort_repository, "mlp_ort", "1", "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    before = ort_server.client().get_inference_statistics("mlp_ort", as_json=True)["model_stats"][0]
    got, errors = [None] * len(xs), []
    barrier = threading.Barrier(len(xs))

    def call(k):
        c = ort_server.client()
        try:
            barrier.wait()
            got[k] = c.infer("mlp_ort", [infer_input("INPUT0", xs[k])]).as_numpy("OUTPUT0")
        except Exception as e:  # noqa: BLE001  reported below
            errors.append(e)
        finally:
            c.close()

    threads = [threading.Thread(target=call, args=(k,)) for k in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for k, x in enumerate(xs):
        assert relative_error(got[k], session.run(None, {"INPUT0": x})[0]) < 1e-6, k
    after = ort_server.client().get_inference_statistics("mlp_ort", as_json=True)["model_stats"][0]
    inferences = int(after.get("inference_count", 0)) - int(before.get("inference_count", 0))
    executions = int(after.get("execution_count", 0)) - int(before.get("execution_count", 0))
    assert inferences == 16
    assert executions < 16, f"{executions} executions for 16 requests: nothing was batched"
    samples = scrape(ort_server)
    assert value(samples, "nv_inference_count_total", model="mlp_ort", version="1") >= 16


@pytest.mark.parametrize("library", ["missing", "not_onnxruntime", "none"])
def test_without_onnxruntime_only_its_models_are_unavailable(tmp_path, library):
    root = str(tmp_path / "repo")
    modelgen.mlp(os.path.join(root, "on_ort", "1", "model.onnx"), 7, D_IN, D_HIDDEN, D_OUT)
    modelgen.write_config(os.path.join(root, "on_ort"), 'backend: "onnxruntime"\n')
    modelgen.mlp(os.path.join(root, "on_default", "1", "model.onnx"), 7, D_IN, D_HIDDEN, D_OUT)
    args = ["--model-control-mode", "none"]
    if library == "missing":
        args += ["--onnxruntime-library", str(tmp_path / "nowhere" / "libonnxruntime.so.1")]
    elif library == "not_onnxruntime":
        # A real shared library that is not ONNX Runtime.
        libc = next(p for p in ("/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6",
                                "/lib64/libc.so.6", "/lib/aarch64-linux-gnu/libc.so.6") if os.path.exists(p))
        args += ["--onnxruntime-library", libc]
    s = Server(root, str(tmp_path / "accel.log"), extra_args=args)
    try:
        c = s.client()
        index = {m["name"]: m for m in c.get_model_repository_index(as_json=True)["models"]}
        reason = index["on_ort"]["reason"]
        assert index["on_ort"]["state"] == "UNAVAILABLE"
        expected = {"missing": "nowhere", "not_onnxruntime": "OrtGetApiBase", "none": "--onnxruntime-library"}[library]
        assert expected in reason, reason
        with pytest.raises(InferenceServerException) as e:
            c.infer("on_ort", [infer_input("INPUT0", np.zeros((1, D_IN), np.float32))])
        assert "UNAVAILABLE" in e.value.status()
        # The model without a backend falls back to candle and serves.
        x = np.ones((2, D_IN), np.float32)
        y = c.infer("on_default", [infer_input("INPUT0", x)]).as_numpy("OUTPUT0")
        assert relative_error(y, modelgen.mlp_reference(x, 7, D_IN, D_HIDDEN, D_OUT)) < 1e-5
        assert index["on_default"]["state"] == "READY"
        c.close()
    finally:
        assert s.stop() == 0
