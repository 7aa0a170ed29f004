"""`--gpu N` on a machine where the GPU path cannot run: Accel says why in its log and serves on the
CPU, answering exactly as it does without the flag. On a machine with a GPU and a `cuda` build the
GPU path is checked by scripts/gpu-check.sh instead (this test then skips, saying so)."""

import os

import numpy as np
import pytest

import modelgen
from conftest import MLP_DIMS, MLP_SEEDS, Server, infer_input


def reference(name: str, x: np.ndarray) -> np.ndarray:
    return modelgen.mlp_reference(x, MLP_SEEDS[name], *MLP_DIMS)


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_gpu_without_a_usable_gpu_serves_on_the_cpu(main_repository, tmp_path, how):
    args, env = (["--gpu", "0"], None) if how == "flag" else ([], {"ACCEL_GPU": "0"})
    old = dict(os.environ)
    if env:
        os.environ.update(env)
    try:
        s = Server(main_repository, str(tmp_path / "gpu.log"), extra_args=args)
    finally:
        os.environ.clear()
        os.environ.update(old)
    try:
        log = s.log()
        if "models run on the GPU" in log:
            pytest.skip("this machine has a usable GPU and a cuda build: see scripts/gpu-check.sh")
        assert "no GPU present: serving on the CPU" in log, log
        # The reason names what is missing: the feature in a CPU build, the driver in a cuda build.
        assert "without the `cuda` feature" in log or "libcuda" in log or "GPU 0" in log, log
        assert "cpu (" in log  # the memory budget is the host's
        client = s.client()
        x = np.random.default_rng(5).standard_normal((3, MLP_DIMS[0])).astype(np.float32)
        for name in ("mlp_a", "mlp_b"):
            y = client.infer(name, [infer_input("INPUT0", x)]).as_numpy("OUTPUT0")
            np.testing.assert_allclose(y, reference(name, x), rtol=1e-4, atol=1e-4)
        client.close()
    finally:
        assert s.stop() == 0


def test_an_invalid_gpu_value_is_a_usage_error(main_repository, tmp_path):
    import subprocess

    from conftest import ACCEL_BIN

    r = subprocess.run([ACCEL_BIN, "serve", "--model-repository", main_repository, "--gpu", "first"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 64
    assert "--gpu" in r.stderr
