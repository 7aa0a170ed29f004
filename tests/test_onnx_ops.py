"""The candle executor against onnxruntime, operator by operator, through the server: each case is a
model in the repository, completed from its graph, fed the same inputs as onnxruntime."""

import numpy as np
import onnxruntime as ort
import pytest

import opmodels
from conftest import infer_input, relative_error

CASES = [name for name, _, _ in opmodels.cases()]


@pytest.mark.parametrize("name", CASES)
def test_operator_matches_onnxruntime(op_server, op_cases, name):
    model, inputs = op_cases[name]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs)))
    c = op_server.client()
    try:
        result = c.infer(name, [infer_input(k, v) for k, v in inputs.items()])
    finally:
        c.close()
    for out_name, expected in want.items():
        got = result.as_numpy(out_name)
        assert got is not None, out_name
        assert got.shape == expected.shape, (out_name, got.shape, expected.shape)
        assert got.dtype == expected.dtype, (out_name, got.dtype, expected.dtype)
        if expected.dtype.kind in "iub":
            assert np.array_equal(got, expected), (out_name, got, expected)
        else:
            assert relative_error(got, expected) < 1e-4, (out_name, relative_error(got, expected))
