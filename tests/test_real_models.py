"""Real exported models from PyPI wheels (a CNN, two detectors, an RNN, a transformer-based
recogniser, an INT32-input classifier) served by Accel and compared with onnxruntime's own output."""

import os
import shutil

import numpy as np
import onnxruntime as ort
import pytest

import fetch_models
from conftest import Server, infer_input, ort_library, relative_error


def inputs_for(name, rng):
    f = lambda *s: rng.random(s, dtype=np.float32)  # noqa: E731  image-like values in [0, 1)
    return {
        "ppocr_cls": {"x": f(2, 3, 48, 192)},
        "ppocr_det": {"x": f(1, 3, 96, 128)},
        "ppocr_rec": {"x": f(1, 3, 48, 160)},
        "nudenet": {"images": f(1, 3, 320, 320)},
        "silero_vad": {"input": (rng.standard_normal((3, 576)) * 0.1).astype(np.float32),
                       "h": np.zeros((1, 1, 128), np.float32), "c": np.zeros((1, 1, 128), np.float32)},
        "magika": {"bytes": rng.integers(0, 257, (2, 2048)).astype(np.int32)},
    }[name]


@pytest.fixture(scope="module", params=["candle", "onnxruntime"])
def real_server(request, real_models, tmp_path_factory):
    """Accel with both engines; the server default picks the one under test (the configs name none)."""
    root = tmp_path_factory.mktemp("real")
    for name, path in real_models.items():
        os.makedirs(root / name / "1")
        # A link out of the repository would be refused (model files are confined to their model's
        # directory): a hard link, or a copy across filesystems.
        try:
            os.link(path, root / name / "1" / "model.onnx")
        except OSError:
            shutil.copy(path, root / name / "1" / "model.onnx")
    s = Server(str(root), str(tmp_path_factory.mktemp("logs") / f"accel-real-{request.param}.log"),
               extra_args=["--onnxruntime-library", ort_library(), "--default-backend", request.param])
    s.backend = request.param
    yield s
    s.stop()


@pytest.mark.parametrize("name", sorted(fetch_models.MODELS))
def test_real_model_matches_onnxruntime(real_server, real_models, name):
    rng = np.random.default_rng(0)
    inputs = inputs_for(name, rng)
    session = ort.InferenceSession(real_models[name], providers=["CPUExecutionProvider"])
    want = dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs)))
    c = real_server.client()
    try:
        assert c.is_model_ready(name), real_server.log()[-3000:]
        result = c.infer(name, [infer_input(k, v) for k, v in inputs.items()], client_timeout=300)
    finally:
        c.close()
    for out_name, expected in want.items():
        got = result.as_numpy(out_name)
        assert got is not None and got.shape == expected.shape, (out_name, None if got is None else got.shape, expected.shape)
        err = relative_error(got, expected)
        assert err < 1e-3, f"{name}/{out_name}: relative error {err}"


def test_input_too_small_for_the_convolutions_fails_cleanly(real_server, real_models):
    """Variable image dims let a client send a 1x1 image. Candle refuses it with INVALID_ARGUMENT naming
    the problem (ONNX Runtime pads its way to an answer, which must then be Python's); either way the
    server lives and serves the next request."""
    from tritonclient.utils import InferenceServerException

    tiny = np.zeros((1, 3, 1, 1), np.float32)
    out = "save_infer_model/scale_0.tmp_1"
    c = real_server.client()
    try:
        if real_server.backend == "candle":
            with pytest.raises(InferenceServerException) as e:
                c.infer("ppocr_cls", [infer_input("x", tiny)])
            assert "INVALID_ARGUMENT" in e.value.status(), (e.value.status(), e.value.message())
            assert "is smaller than the" in e.value.message()
            assert "\n" not in e.value.message(), "no backtrace in client-facing messages"
        else:
            session = ort.InferenceSession(real_models["ppocr_cls"], providers=["CPUExecutionProvider"])
            got = c.infer("ppocr_cls", [infer_input("x", tiny)]).as_numpy(out)
            np.testing.assert_array_equal(got, session.run(None, {"x": tiny})[0])
        y = c.infer("ppocr_cls", [infer_input("x", np.zeros((1, 3, 48, 192), np.float32))]).as_numpy(out)
        assert y.shape == (1, 2)
    finally:
        c.close()
