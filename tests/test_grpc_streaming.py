"""ModelStreamInfer: many requests on one stream, results in order and correct, errors in-band with the
stream staying open."""

import queue

import numpy as np

import modelgen
from conftest import MLP_DIMS, MLP_SEEDS, infer_input, relative_error


def test_stream_of_requests(server):
    c = server.client()
    results = queue.Queue()
    c.start_stream(callback=lambda result, error: results.put((result, error)))
    rng = np.random.default_rng(10)
    xs = [rng.standard_normal((1, MLP_DIMS[0])).astype(np.float32) for _ in range(40)]
    for k, x in enumerate(xs):
        c.async_stream_infer("mlp_b", [infer_input("INPUT0", x)], request_id=str(k))
    got = {}
    for _ in xs:
        result, error = results.get(timeout=30)
        assert error is None, error
        got[int(result.get_response().id)] = result.as_numpy("OUTPUT0")
    c.stop_stream()
    c.close()
    assert sorted(got) == list(range(len(xs)))
    for k, x in enumerate(xs):
        assert relative_error(got[k], modelgen.mlp_reference(x, MLP_SEEDS["mlp_b"], *MLP_DIMS)) < 1e-5


def test_stream_errors_are_in_band_and_the_stream_stays_open(server):
    c = server.client()
    results = queue.Queue()
    c.start_stream(callback=lambda result, error: results.put((result, error)))
    bad = np.zeros((1, MLP_DIMS[0] + 1), np.float32)
    good = np.ones((1, MLP_DIMS[0]), np.float32)
    c.async_stream_infer("mlp_b", [infer_input("INPUT0", bad)], request_id="bad")
    c.async_stream_infer("nope", [infer_input("INPUT0", good)], request_id="missing")
    c.async_stream_infer("mlp_b", [infer_input("INPUT0", good)], request_id="good")
    outcomes = [results.get(timeout=30) for _ in range(3)]
    c.stop_stream()
    c.close()
    errors = [e for _, e in outcomes if e is not None]
    assert len(errors) == 2
    assert any("INPUT0" in str(e) for e in errors)
    assert any("unknown model 'nope'" in str(e) for e in errors)
    ok = [r for r, e in outcomes if e is None]
    assert len(ok) == 1 and ok[0].get_response().id == "good"
    assert relative_error(ok[0].as_numpy("OUTPUT0"), modelgen.mlp_reference(good, MLP_SEEDS["mlp_b"], *MLP_DIMS)) < 1e-5
