"""Padded batching across sequence lengths: a BERT-style encoder whose requests carry their own
lengths (INT64 input_ids / attention_mask of shape [1, n], as KServe's Hugging Face transformer sends
them), batched together padded to the batch's longest, each answer cut back to its own length and
compared with onnxruntime run on that request alone. Statistics and the padding metrics prove that
mixed lengths shared executions; the token budget bounds a single request."""

import os
import threading

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

import modelgen
from conftest import Server, infer_input, ort_library, relative_error, scrape, value

HIDDEN = 32
MAX_LEN = 128


@pytest.fixture(scope="module")
def padded_repository(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("padded"))
    for name, backend in (("bert_candle", "candle"), ("bert_ort", "onnxruntime")):
        modelgen.bert_encoder(os.path.join(root, name, "1", "model.onnx"), seed=5, hidden=HIDDEN,
                              max_positions=MAX_LEN, pooled=True)
        modelgen.write_config(os.path.join(root, name),
                              modelgen.padded_bert_config(name, hidden=HIDDEN, backend=backend))
    # Without padding: requests of different lengths never share a batch.
    modelgen.bert_encoder(os.path.join(root, "bert_plain", "1", "model.onnx"), seed=5, hidden=HIDDEN,
                          max_positions=MAX_LEN, pooled=True)
    return root


@pytest.fixture(scope="module")
def padded_server(padded_repository, tmp_path_factory):
    s = Server(padded_repository, str(tmp_path_factory.mktemp("logs") / "accel-padded.log"),
               extra_args=["--model-control-mode", "none", "--onnxruntime-library", ort_library()])
    yield s
    s.stop()


@pytest.fixture(scope="module")
def reference(padded_repository):
    return ort.InferenceSession(os.path.join(padded_repository, "bert_plain", "1", "model.onnx"),
                                providers=["CPUExecutionProvider"])


def tokens(rng, n: int):
    ids = rng.integers(1, 96, size=(1, n), dtype=np.int64)
    return ids, np.ones((1, n), dtype=np.int64)


def ask(client, model: str, ids, mask):
    result = client.infer(model, [infer_input("input_ids", ids), infer_input("attention_mask", mask)])
    return result.as_numpy("last_hidden_state"), result.as_numpy("pooled")


@pytest.mark.parametrize("model", ["bert_candle", "bert_ort"])
def test_mixed_lengths_share_batches_and_match_onnxruntime_alone(padded_server, reference, model):
    before = padded_server.client().get_inference_statistics(model).model_stats[0]
    errors, worst = [], [0.0]
    lock = threading.Lock()

    def worker(seed: int):
        rng = np.random.default_rng(seed)
        client = padded_server.client()
        try:
            for _ in range(6):
                n = int(rng.integers(1, MAX_LEN + 1))
                ids, mask = tokens(rng, n)
                hidden, pooled = ask(client, model, ids, mask)
                want_hidden, want_pooled = reference.run(None, {"input_ids": ids, "attention_mask": mask})
                assert hidden.shape == (1, n, HIDDEN), hidden.shape
                assert pooled.shape == (1, HIDDEN), pooled.shape
                err = max(relative_error(hidden, want_hidden), relative_error(pooled, want_pooled))
                with lock:
                    worst[0] = max(worst[0], err)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert worst[0] < 1e-4, worst[0]
    after = padded_server.client().get_inference_statistics(model).model_stats[0]
    inferences = after.inference_count - before.inference_count
    executions = after.execution_count - before.execution_count
    assert inferences == 96
    assert executions < inferences, (executions, inferences)
    # Mixed lengths shared executions: the batch computed padding, and the gauge is the ratio.
    samples = scrape(padded_server)
    real = value(samples, "accel_batch_tokens_total", model=model, version="1", kind="real")
    computed = value(samples, "accel_batch_tokens_total", model=model, version="1", kind="computed")
    assert 0 < real < computed, (real, computed)
    efficiency = value(samples, "accel_batch_padding_efficiency", model=model, version="1")
    assert efficiency == pytest.approx(real / computed, rel=1e-6)


def test_a_batch_of_rows_with_padding_inside_is_cut_per_request(padded_server, reference):
    # One request may itself carry several rows (with its own padding, masked): it is cut to its
    # own length, and its padded rows match onnxruntime on the same rows.
    rng = np.random.default_rng(3)
    ids = rng.integers(1, 96, size=(3, 20), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[1, 12:] = 0
    ids[1, 12:] = 0
    client = padded_server.client()
    hidden, pooled = ask(client, "bert_candle", ids, mask)
    want_hidden, want_pooled = reference.run(None, {"input_ids": ids, "attention_mask": mask})
    assert hidden.shape == (3, 20, HIDDEN)
    assert relative_error(hidden, want_hidden) < 1e-4
    assert relative_error(pooled, want_pooled) < 1e-4


def test_unpadded_model_keeps_lengths_apart(padded_server):
    client = padded_server.client()
    rng = np.random.default_rng(1)
    for n in (5, 9):
        hidden, _ = ask(client, "bert_plain", *tokens(rng, n))
        assert hidden.shape == (1, n, HIDDEN)


def test_token_budget_bounds_one_request(padded_server):
    client = padded_server.client()
    ids = np.ones((32, MAX_LEN + 1), dtype=np.int64)  # 4128 tokens > 4096
    with pytest.raises(InferenceServerException) as e:
        ask(client, "bert_candle", ids, ids)
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "accel.max_batch_tokens" in e.value.message()
    # The server is unharmed.
    hidden, _ = ask(client, "bert_candle", *tokens(np.random.default_rng(0), 7))
    assert hidden.shape == (1, 7, HIDDEN)


def test_kserve_transformer_request_shape_over_grpc_v2(padded_server, reference):
    # What KServe's Hugging Face server sends a v2 predictor (--predictor_protocol grpc-v2): INT64
    # input_ids and attention_mask of the request's own length, batch 1, every output requested.
    rng = np.random.default_rng(11)
    client = padded_server.client()
    for n in (3, 17, 64):
        ids, mask = tokens(rng, n)
        inputs = [grpcclient.InferInput("input_ids", [1, n], "INT64"),
                  grpcclient.InferInput("attention_mask", [1, n], "INT64")]
        inputs[0].set_data_from_numpy(ids)
        inputs[1].set_data_from_numpy(mask)
        result = client.infer("bert_candle", inputs, request_id=f"kserve-{n}")
        assert result.get_response().id == f"kserve-{n}"
        want = reference.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        assert relative_error(result.as_numpy("last_hidden_state"), want) < 1e-4


def test_padded_config_metadata_and_http(padded_server, reference):
    http = padded_server.http_client()
    import tritonclient.http as httpclient

    meta = http.get_model_metadata("bert_candle")
    assert [i["shape"] for i in meta["inputs"]] == [[-1, -1], [-1, -1]]
    config = http.get_model_config("bert_candle")
    assert config["parameters"]["accel.padded_inputs"]["string_value"] == "input_ids=0,attention_mask=0"
    ids, mask = tokens(np.random.default_rng(4), 9)
    inputs = [httpclient.InferInput("input_ids", [1, 9], "INT64"), httpclient.InferInput("attention_mask", [1, 9], "INT64")]
    inputs[0].set_data_from_numpy(ids, binary_data=False)
    inputs[1].set_data_from_numpy(mask, binary_data=True)
    result = http.infer("bert_candle", inputs)
    want = reference.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    assert relative_error(result.as_numpy("last_hidden_state"), want) < 1e-4


def test_streaming_requests_of_different_lengths(padded_server, reference):
    import queue

    results = queue.Queue()
    client = padded_server.client()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    rng = np.random.default_rng(8)
    sent = {}
    for k in range(12):
        ids, mask = tokens(rng, int(rng.integers(1, 60)))
        sent[str(k)] = ids
        client.async_stream_infer("bert_candle", [infer_input("input_ids", ids), infer_input("attention_mask", mask)],
                                  request_id=str(k))
    got = [results.get(timeout=60) for _ in sent]
    client.stop_stream()
    assert [r.get_response().id for r, _ in got] == [str(k) for k in range(12)], "responses in request order"
    for result, error in got:
        assert error is None, error
        ids = sent[result.get_response().id]
        want = reference.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
        assert relative_error(result.as_numpy("last_hidden_state"), want) < 1e-4


def test_repository_api_loads_a_padded_override(padded_server, reference):
    # A reload whose config override (Triton's JSON form) turns padding off and back on.
    import json

    client = padded_server.client()
    override = {
        "max_batch_size": 16,
        "backend": "candle",
        "input": [{"name": "input_ids", "data_type": "TYPE_INT64", "dims": [-1]},
                  {"name": "attention_mask", "data_type": "TYPE_INT64", "dims": [-1]}],
        "output": [{"name": "last_hidden_state", "data_type": "TYPE_FP32", "dims": [-1, HIDDEN]},
                   {"name": "pooled", "data_type": "TYPE_FP32", "dims": [HIDDEN]}],
        "dynamic_batching": {},
        "parameters": {"accel.padded_inputs": {"string_value": "input_ids=0,attention_mask=0"},
                       "accel.padded_outputs": {"string_value": "last_hidden_state"},
                       "accel.max_batch_tokens": {"string_value": "64"}},
    }
    try:
        client.load_model("bert_candle", config=json.dumps(override))
        with pytest.raises(InferenceServerException) as e:
            ask(client, "bert_candle", np.ones((1, 65), np.int64), np.ones((1, 65), np.int64))
        assert "accel.max_batch_tokens 64" in e.value.message()
        ids, mask = tokens(np.random.default_rng(2), 40)
        want = reference.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        assert relative_error(ask(client, "bert_candle", ids, mask)[0], want) < 1e-4
        bad = dict(override, parameters={"accel.padded_inputs": {"string_value": "input_ids=abc"}})
        with pytest.raises(InferenceServerException) as e:
            client.load_model("bert_candle", config=json.dumps(bad))
        assert "pad value" in e.value.message()
    finally:
        client.load_model("bert_candle")
