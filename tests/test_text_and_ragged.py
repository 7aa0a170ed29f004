"""String (BYTES) tensors end to end, Triton's classification extension and ragged batching.

BYTES: string graphs run on the ONNX Runtime engine (candle refuses them at load, with the reason).
Every element must survive both protocols byte for byte (empty strings, bytes that are not UTF-8,
10k-element tensors; gRPC raw_input_contents and typed bytes_contents; HTTP JSON and binary), the
batcher must batch string requests and hand each caller its own strings, and a malformed 4-byte
length prefix must be refused naming the input without harming the server.

Classification: an output asked for with class_count=k comes back as BYTES [batch, min(k, classes)]
of "value:index[:label]" (the value printed as C++'s std::to_string prints it, six decimals), in
descending order, with the labels of the output's label_filename; unsupported types and bad
parameters get Triton's messages.

Ragged batching: requests of different lengths are batched into one 1-D concatenation, with
BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO / BATCH_ELEMENT_COUNT batch inputs the model uses to cut it
up again, and BATCH_SCATTER_WITH_INPUT_SHAPE outputs cut back to each request's shape; on both engines.
"""

import json
import os
import struct
import threading
import urllib.error
import urllib.request

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor, np_to_triton_dtype

import modelgen
from conftest import Server, infer_input, ort_library

CLASSES, D_IN, CLS_SEED = 10, 8, 41
LABELS = [f"label {i} of {CLASSES}" for i in range(CLASSES)]
ENGINES = {"candle": "candle", "ort": "onnxruntime"}

IDENTITY_CONFIG = """backend: "{backend}"
max_batch_size: 8
input [ {{ name: "TEXT" data_type: TYPE_STRING dims: [ -1 ] }} ]
output [ {{ name: "OUT" data_type: TYPE_STRING dims: [ -1 ] }} ]
dynamic_batching {{ max_queue_delay_microseconds: 2000 }}
"""

RAGGED_SUM_CONFIG = """backend: "{backend}"
max_batch_size: 16
input [ {{ name: "INPUT" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true }} ]
batch_input [
  {{ kind: BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO target_name: "OFFSETS" data_type: TYPE_INT32 source_input: "INPUT" }},
  {{ kind: BATCH_ELEMENT_COUNT target_name: "COUNTS" data_type: TYPE_INT32 source_input: "INPUT" }}
]
output [
  {{ name: "SUM" data_type: TYPE_FP32 dims: [ 1 ] }},
  {{ name: "COUNT" data_type: TYPE_FP32 dims: [ 1 ] }}
]
dynamic_batching {{ max_queue_delay_microseconds: 20000 }}
"""

RAGGED_DOUBLE_CONFIG = """backend: "{backend}"
max_batch_size: 16
input [ {{ name: "INPUT" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true }} ]
output [ {{ name: "DOUBLE" data_type: TYPE_FP32 dims: [ -1 ] }} ]
batch_output [ {{ target_name: "DOUBLE" kind: BATCH_SCATTER_WITH_INPUT_SHAPE source_input: "INPUT" }} ]
dynamic_batching {{ max_queue_delay_microseconds: 20000 }}
"""


def repository(root: str) -> str:
    j = os.path.join
    # Strings: identity on ONNX Runtime, the same file on candle (refused), StringNormalizer unbatched.
    for name, backend in (("text_identity", "onnxruntime"), ("text_candle", "candle")):
        modelgen.string_identity(j(root, name, "1", "model.onnx"))
        modelgen.write_config(j(root, name), IDENTITY_CONFIG.format(backend=backend))
    modelgen.string_upper(j(root, "text_upper", "1", "model.onnx"))
    modelgen.write_config(j(root, "text_upper"), """backend: "onnxruntime"
max_batch_size: 0
input [ { name: "TEXT" data_type: TYPE_STRING dims: [ -1 ] } ]
output [ { name: "OUT" data_type: TYPE_STRING dims: [ -1 ] } ]
""")
    # Classification: labels.txt beside config.pbtxt (the model directory, not the version's).
    modelgen.classifier(j(root, "classifier", "1", "model.onnx"), CLS_SEED, D_IN, CLASSES)
    with open(j(root, "classifier", "labels.txt"), "w") as f:
        f.write("\n".join(LABELS) + "\n")
    modelgen.write_config(j(root, "classifier"), f"""backend: "candle"
max_batch_size: 8
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ {D_IN} ] }} ]
output [
  {{ name: "OUT" data_type: TYPE_FP32 dims: [ {CLASSES} ] label_filename: "labels.txt" }},
  {{ name: "RAW" data_type: TYPE_FP32 dims: [ {CLASSES} ] }}
]
dynamic_batching {{ max_queue_delay_microseconds: 5000 }}
""")
    # Without a batch dimension, classification ranks the whole tensor (result [k]).
    modelgen.classifier(j(root, "classifier_flat", "1", "model.onnx"), CLS_SEED, D_IN, CLASSES)
    modelgen.write_config(j(root, "classifier_flat"), f"""backend: "candle"
max_batch_size: 0
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ -1, {D_IN} ] }} ]
output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ -1, {CLASSES} ] }}, {{ name: "RAW" data_type: TYPE_FP32 dims: [ -1, {CLASSES} ] }} ]
""")
    # Outputs classification cannot rank.
    for name, elem in (("cls_fp16", 10), ("cls_bool", 9)):
        modelgen.double_model(j(root, name, "1", "model.onnx"), elem)
        modelgen.write_config(j(root, name), 'backend: "candle"\n')
    # Ragged batching on each engine.
    for engine, backend in ENGINES.items():
        modelgen.ragged_sum(j(root, f"ragged_sum_{engine}", "1", "model.onnx"))
        modelgen.write_config(j(root, f"ragged_sum_{engine}"), RAGGED_SUM_CONFIG.format(backend=backend))
        modelgen.ragged_double(j(root, f"ragged_double_{engine}", "1", "model.onnx"))
        modelgen.write_config(j(root, f"ragged_double_{engine}"), RAGGED_DOUBLE_CONFIG.format(backend=backend))
    return root


@pytest.fixture(scope="module")
def text_repository(tmp_path_factory) -> str:
    return repository(str(tmp_path_factory.mktemp("text")))


@pytest.fixture(scope="module")
def srv(text_repository, tmp_path_factory):
    s = Server(text_repository, str(tmp_path_factory.mktemp("logs") / "accel-text.log"),
               extra_args=["--model-control-mode", "none", "--onnxruntime-library", ort_library()])
    yield s
    s.stop()


@pytest.fixture()
def grpc(srv):
    c = srv.client()
    yield c
    c.close()


@pytest.fixture()
def http(srv):
    c = srv.http_client()
    yield c
    c.close()


# ---------------------------------------------------------------------------------------------------
# Helpers


def texts(*items) -> np.ndarray:
    """A [1, n] BYTES tensor."""
    return np.array([list(items)], dtype=np.object_)


def as_bytes(a: np.ndarray) -> list:
    """Elements as bytes, whichever way the client decoded them (JSON gives str)."""
    return [x.encode() if isinstance(x, str) else bytes(x) for x in a.flatten()]


def http_input(name, array, binary=True):
    i = httpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    i.set_data_from_numpy(array, binary_data=binary)
    return i


def serialize(items) -> bytes:
    return b"".join(struct.pack("<I", len(x)) + x for x in items)


def expect(call, status, *needles):
    with pytest.raises(InferenceServerException) as e:
        call()
    assert e.value.status() == status, e.value
    for n in needles:
        assert n in e.value.message(), e.value.message()
    return e.value


def stub(client, req):
    """The raw ModelInfer RPC, its errors as tritonclient's exception."""
    from tritonclient.grpc._utils import get_error_grpc

    def call():
        try:
            return client._client_stub.ModelInfer(req)
        except Exception as e:  # grpc.RpcError
            raise get_error_grpc(e) from None

    return call


def raw_http(srv, model, header: dict, binary: bytes = b""):
    """POST /v2/models/<model>/infer with the binary tensor extension's framing."""
    head = json.dumps(header).encode()
    req = urllib.request.Request(f"http://{srv.http_url}/v2/models/{model}/infer", data=head + binary, method="POST",
                                 headers={"Content-Type": "application/octet-stream",
                                          "Inference-Header-Content-Length": str(len(head))})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def counts(client, model):
    s = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return int(s.get("inference_count", 0)), int(s.get("execution_count", 0))


def concurrently(srv, n, fn):
    """fn(k, grpc_client, http_client) on n threads released together; their results in order."""
    got, errors = [None] * n, []
    barrier = threading.Barrier(n)

    def run(k):
        g, h = srv.client(), srv.http_client()
        try:
            barrier.wait()
            got[k] = fn(k, g, h)
        except Exception as e:  # noqa: BLE001  reported below
            errors.append((k, e))
        finally:
            g.close()
            h.close()

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return got


def assert_batched(srv, model, before, n):
    after = counts(srv.client(), model)
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == n, (inferences, executions)
    assert executions < n, f"{executions} executions for {n} requests: nothing was batched"


def big_strings(n=10_000, utf8_only=False) -> np.ndarray:
    rng = np.random.default_rng(5)
    items = []
    for i in range(n):
        k = int(rng.integers(0, 24))
        s = f"{i}:" + "é" * (k % 3) + "x" * k
        b = s.encode()
        if not utf8_only and i % 7 == 0:
            b += bytes(rng.integers(128, 256, 3, dtype=np.uint8)) + b"\x00"
        items.append(b"" if i % 11 == 0 else b)
    return np.array([items], dtype=np.object_)


ODD = b"\xff\xfe\x00x"
CASES = {
    "plain": texts(b"hello", b"world", b"!"),
    "empty": texts(b"", b"", b"a", b""),
    "all_empty": texts(b""),
    "not_utf8": texts(ODD, b"\x00", b"\x80\x81", b"ok"),
    "10k": big_strings(),
}


# ---------------------------------------------------------------------------------------------------
# A. BYTES end to end


@pytest.mark.parametrize("case", CASES)
def test_identity_strings_over_grpc(grpc, case):
    x = CASES[case]
    y = grpc.infer("text_identity", [infer_input("TEXT", x)]).as_numpy("OUT")
    assert y.shape == x.shape
    assert as_bytes(y) == as_bytes(x)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("binary_out", [True, False])
def test_identity_strings_over_http_binary(http, case, binary_out):
    x = CASES[case]
    if not binary_out and case in ("not_utf8", "10k"):
        pytest.skip("JSON output carries UTF-8 strings only")
    r = http.infer("text_identity", [http_input("TEXT", x, binary=True)],
                   outputs=[httpclient.InferRequestedOutput("OUT", binary_data=binary_out)])
    y = r.as_numpy("OUT")
    assert y.shape == x.shape
    assert as_bytes(y) == as_bytes(x)
    assert r.get_output("OUT")["datatype"] == "BYTES"


@pytest.mark.parametrize("binary_out", [True, False])
def test_identity_strings_over_http_json(http, binary_out):
    rows = [["", "Grüße", "日本語", "a b", '"quoted"\\', "\n"], ["x"] * 6]
    x = np.array([[s.encode() for s in row] for row in rows], dtype=np.object_)
    r = http.infer("text_identity", [http_input("TEXT", x, binary=False)],
                   outputs=[httpclient.InferRequestedOutput("OUT", binary_data=binary_out)])
    assert r.as_numpy("OUT").shape == (2, 6)
    assert as_bytes(r.as_numpy("OUT")) == as_bytes(x)
    big = big_strings(utf8_only=True)
    r = http.infer("text_identity", [http_input("TEXT", big, binary=False)],
                   outputs=[httpclient.InferRequestedOutput("OUT", binary_data=binary_out)])
    assert as_bytes(r.as_numpy("OUT")) == as_bytes(big)


def test_typed_bytes_contents_over_grpc(grpc):
    items = [b"typed", b"", ODD, "Grüße".encode(), b"z" * 1000]
    req = service_pb2.ModelInferRequest(model_name="text_identity")
    t = req.inputs.add(name="TEXT", datatype="BYTES", shape=[1, len(items)])
    t.contents.bytes_contents.extend(items)
    resp = stub(grpc, req)()
    (out,) = resp.outputs
    assert (out.name, out.datatype, list(out.shape)) == ("OUT", "BYTES", [1, len(items)])
    assert list(deserialize_bytes_tensor(resp.raw_output_contents[0])) == items
    # Typed contents into the unbatched StringNormalizer too.
    req = service_pb2.ModelInferRequest(model_name="text_upper")
    t = req.inputs.add(name="TEXT", datatype="BYTES", shape=[3])
    t.contents.bytes_contents.extend([b"abc", b"", b"MiXeD"])
    resp = stub(grpc, req)()
    assert list(deserialize_bytes_tensor(resp.raw_output_contents[0])) == [b"ABC", b"", b"MIXED"]


def upper_reference(text_repository, items: list) -> list:
    session = ort.InferenceSession(os.path.join(text_repository, "text_upper", "1", "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    # onnxruntime's Python binding takes str objects (bytes it would str() into "b'...'").
    (want,) = session.run(None, {"TEXT": np.array([b.decode() for b in items], dtype=np.object_)})
    return [s.encode() for s in want]


@pytest.mark.parametrize("via", ["grpc", "http_binary", "http_json"])
@pytest.mark.parametrize("size", ["small", "10k"])
def test_string_normalizer_matches_onnxruntime(srv, text_repository, grpc, http, via, size):
    if size == "small":
        items = [b"hello", b"", "Grüße".encode(), b"MiXeD cAsE 123", b"", b"tab\there"]
    else:
        items = list(big_strings(utf8_only=True)[0])
    want = upper_reference(text_repository, items)
    x = np.array(items, dtype=np.object_)
    if via == "grpc":
        y = grpc.infer("text_upper", [infer_input("TEXT", x)]).as_numpy("OUT")
    else:
        y = http.infer("text_upper", [http_input("TEXT", x, binary=via == "http_binary")],
                       outputs=[httpclient.InferRequestedOutput("OUT", binary_data=via == "http_binary")]).as_numpy("OUT")
    assert y.shape == (len(want),)
    assert as_bytes(y) == want


def test_string_requests_are_batched_and_answered_each_its_own(srv):
    before = counts(srv.client(), "text_identity")

    def call(k, g, _h):
        x = texts(f"caller {k}".encode(), b"", bytes([200 + k % 50]) * k, str(k * k).encode())
        y = g.infer("text_identity", [infer_input("TEXT", x)]).as_numpy("OUT")
        return as_bytes(x), as_bytes(y)

    for k, (sent, got) in enumerate(concurrently(srv, 16, call)):
        assert got == sent, k
    assert_batched(srv, "text_identity", before, 16)


GOOD = texts(b"still", b"fine")
MALFORMED = {
    # (shape, raw bytes)
    "prefix_past_end": ([1, 2], struct.pack("<I", 1) + b"a" + struct.pack("<I", 10) + b"abc"),
    "huge_prefix": ([1, 1], struct.pack("<I", 0xFFFFFFFF) + b"abc"),
    "trailing_1": ([1, 2], serialize([b"a", b"b"]) + b"\x01"),
    "trailing_2": ([1, 2], serialize([b"a", b"b"]) + b"\x01\x00"),
    "trailing_3": ([1, 2], serialize([b"a", b"b"]) + b"\x01\x00\x00"),
    "fewer_than_shape": ([1, 3], serialize([b"a", b"b"])),
    "more_than_shape": ([1, 1], serialize([b"a", b"b"])),
    "short_prefix_only": ([1, 1], b"\x01\x00"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_length_prefixes_over_grpc(grpc, case):
    shape, raw = MALFORMED[case]
    req = service_pb2.ModelInferRequest(model_name="text_identity")
    req.inputs.add(name="TEXT", datatype="BYTES", shape=shape)
    req.raw_input_contents.append(raw)
    expect(stub(grpc, req), "StatusCode.INVALID_ARGUMENT", "TEXT")
    # The server is unharmed.
    assert as_bytes(grpc.infer("text_identity", [infer_input("TEXT", GOOD)]).as_numpy("OUT")) == as_bytes(GOOD)


def test_typed_bytes_contents_count_must_match_shape(grpc):
    req = service_pb2.ModelInferRequest(model_name="text_identity")
    t = req.inputs.add(name="TEXT", datatype="BYTES", shape=[1, 3])
    t.contents.bytes_contents.extend([b"a", b"b"])
    expect(stub(grpc, req), "StatusCode.INVALID_ARGUMENT", "TEXT")
    assert as_bytes(grpc.infer("text_identity", [infer_input("TEXT", GOOD)]).as_numpy("OUT")) == as_bytes(GOOD)


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_length_prefixes_over_http(srv, http, case):
    shape, raw = MALFORMED[case]
    header = {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": shape,
                          "parameters": {"binary_data_size": len(raw)}}]}
    status, body = raw_http(srv, "text_identity", header, raw)
    assert status == 400, (status, body)
    assert "TEXT" in json.loads(body)["error"], body
    # A well-framed request through the same path, then through the client.
    good = serialize([b"ok", ODD])
    status, body = raw_http(srv, "text_identity", {
        "inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1, 2], "parameters": {"binary_data_size": len(good)}}],
        "outputs": [{"name": "OUT", "parameters": {"binary_data": True}}]}, good)
    assert status == 200, (status, body)
    y = http.infer("text_identity", [http_input("TEXT", GOOD)]).as_numpy("OUT")
    assert as_bytes(y) == as_bytes(GOOD)


def test_candle_refuses_string_graphs_at_load(grpc):
    index = {m["name"]: m for m in grpc.get_model_repository_index(as_json=True)["models"]}
    assert index["text_candle"]["state"] == "UNAVAILABLE", index["text_candle"]
    reason = index["text_candle"]["reason"]
    assert "candle engine does not run" in reason and "onnxruntime" in reason, reason
    assert not grpc.is_model_ready("text_candle")
    assert index["text_identity"]["state"] == "READY" and index["text_upper"]["state"] == "READY"
    e = expect(lambda: grpc.infer("text_candle", [infer_input("TEXT", GOOD)]), "StatusCode.UNAVAILABLE")
    assert "candle engine does not run" in e.message() or "onnxruntime" in e.message(), e.message()


# ---------------------------------------------------------------------------------------------------
# B. Classification


def logits(x: np.ndarray) -> np.ndarray:
    return x @ modelgen.classifier_weights(CLS_SEED, D_IN, CLASSES)


def check_classes(result: np.ndarray, raw: np.ndarray, k: int, labels=True):
    """result: the BYTES classification [batch, min(k, CLASSES)]; raw: the server's own logits."""
    kk = min(k, CLASSES)
    assert result.shape == (raw.shape[0], kk), result.shape
    for row, (got_row, ref) in enumerate(zip(result, raw)):
        order = np.argsort(-ref.astype(np.float64), kind="stable")[:kk]
        for j, element in enumerate(got_row):
            s = element.decode() if isinstance(element, bytes) else element
            parts = s.split(":")
            assert len(parts) == (3 if labels else 2), s
            value, index = parts[0], int(parts[1])
            assert index == order[j], (row, j, s, order)
            # std::to_string(float): printf's %f of the value.
            assert value == "%f" % float(ref[index]), (s, float(ref[index]))
            if labels:
                assert parts[2] == LABELS[index], s


@pytest.mark.parametrize("k", [1, 2, 3, 5, 9, 10, 11, 100])
def test_classification_over_grpc(grpc, k):
    x = np.random.default_rng(k).standard_normal((3, D_IN)).astype(np.float32)
    r = grpc.infer("classifier", [infer_input("x", x)],
                   outputs=[grpcclient.InferRequestedOutput("OUT", class_count=k), grpcclient.InferRequestedOutput("RAW")])
    raw = r.as_numpy("RAW")
    np.testing.assert_allclose(raw, logits(x), rtol=1e-5, atol=1e-5)
    out = r.get_output("OUT")
    assert out.datatype == "BYTES" and list(out.shape) == [3, min(k, CLASSES)]
    check_classes(r.as_numpy("OUT"), raw, k)
    # Against numpy's reference directly too (order, and values within 1e-5).
    ref = logits(x)
    for row, got_row in enumerate(r.as_numpy("OUT")):
        parts = [e.decode().split(":") for e in got_row]
        assert [int(p[1]) for p in parts] == list(np.argsort(-ref[row])[:min(k, CLASSES)])
        assert all(abs(float(p[0]) - ref[row, int(p[1])]) < 1e-5 for p in parts)


def test_classification_without_labels(grpc):
    x = np.random.default_rng(77).standard_normal((2, D_IN)).astype(np.float32)
    r = grpc.infer("classifier", [infer_input("x", x)],
                   outputs=[grpcclient.InferRequestedOutput("RAW", class_count=4), grpcclient.InferRequestedOutput("OUT")])
    # OUT asked for plainly is the FP32 logits; RAW classified has no labels.
    raw = r.as_numpy("OUT")
    assert raw.dtype == np.float32
    check_classes(r.as_numpy("RAW"), raw, 4, labels=False)


def test_classification_without_batch_dimension_ranks_the_whole_tensor(grpc):
    x = np.random.default_rng(78).standard_normal((2, D_IN)).astype(np.float32)
    r = grpc.infer("classifier_flat", [infer_input("x", x)],
                   outputs=[grpcclient.InferRequestedOutput("OUT", class_count=5), grpcclient.InferRequestedOutput("RAW")])
    raw = r.as_numpy("RAW").reshape(-1)
    got = r.as_numpy("OUT")
    assert got.shape == (5,), got.shape
    check_classes(got.reshape(1, 5), raw.reshape(1, -1), 5, labels=False)


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("k", [1, 4, 10, 12])
def test_classification_over_http(http, binary, k):
    x = np.random.default_rng(50 + k).standard_normal((2, D_IN)).astype(np.float32)
    r = http.infer("classifier", [http_input("x", x, binary=binary)],
                   outputs=[httpclient.InferRequestedOutput("OUT", binary_data=binary, class_count=k),
                            httpclient.InferRequestedOutput("RAW", binary_data=True)])
    assert r.get_output("OUT")["datatype"] == "BYTES"
    assert r.get_output("OUT")["shape"] == [2, min(k, CLASSES)]
    raw = r.as_numpy("RAW")
    np.testing.assert_allclose(raw, logits(x), rtol=1e-5, atol=1e-5)
    check_classes(r.as_numpy("OUT"), raw, k)


def test_classification_is_batched_and_per_request(srv):
    xs = [np.random.default_rng(300 + k).standard_normal((1, D_IN)).astype(np.float32) for k in range(16)]
    before = counts(srv.client(), "classifier")

    def call(k, g, h):
        if k % 2:
            r = h.infer("classifier", [http_input("x", xs[k])],
                        outputs=[httpclient.InferRequestedOutput("OUT", class_count=3)])
        else:
            r = g.infer("classifier", [infer_input("x", xs[k])],
                        outputs=[grpcclient.InferRequestedOutput("OUT", class_count=3)])
        return r.as_numpy("OUT")

    for k, got in enumerate(concurrently(srv, 16, call)):
        ref = logits(xs[k])
        assert got.shape == (1, 3), (k, got.shape)
        parts = [e.decode().split(":") for e in got[0]]
        assert [int(p[1]) for p in parts] == list(np.argsort(-ref[0])[:3]), (k, got)
        assert all(abs(float(p[0]) - ref[0, int(p[1])]) < 1e-5 for p in parts), (k, got)
        assert [p[2] for p in parts] == [LABELS[int(p[1])] for p in parts]
    assert_batched(srv, "classifier", before, 16)


UNSUPPORTED = "class result not available for output due to unsupported type"


@pytest.mark.parametrize("model,input_name,output,x", [
    ("text_identity", "TEXT", "OUT", GOOD),
    ("cls_fp16", "x", "y", np.ones((1, 8), np.float16)),
    ("cls_bool", "x", "y", np.ones((1, 8), np.bool_)),
])
def test_classification_of_unsupported_types_is_refused(grpc, http, model, input_name, output, x):
    expect(lambda: grpc.infer(model, [infer_input(input_name, x)],
                              outputs=[grpcclient.InferRequestedOutput(output, class_count=2)]),
           "StatusCode.INVALID_ARGUMENT", UNSUPPORTED, output)
    expect(lambda: http.infer(model, [http_input(input_name, x)],
                              outputs=[httpclient.InferRequestedOutput(output, class_count=2)]),
           "400", UNSUPPORTED, output)
    # The same request without classification serves.
    assert grpc.infer(model, [infer_input(input_name, x)]).as_numpy(output).shape == x.shape


def classification_request(set_param):
    x = np.zeros((1, D_IN), np.float32)
    req = service_pb2.ModelInferRequest(model_name="classifier")
    req.inputs.add(name="x", datatype="FP32", shape=[1, D_IN])
    req.raw_input_contents.append(x.tobytes())
    o = req.outputs.add(name="OUT")
    set_param(o.parameters["classification"])
    return req


def test_classification_parameter_errors_over_grpc(grpc):
    expect(stub(grpc, classification_request(lambda p: setattr(p, "int64_param", -1))),
           "StatusCode.INVALID_ARGUMENT", "expected >= 0")
    expect(stub(grpc, classification_request(lambda p: setattr(p, "string_param", "3"))),
           "StatusCode.INVALID_ARGUMENT", "expected int64_param")
    # Zero asks for no classification: the FP32 logits.
    resp = stub(grpc, classification_request(lambda p: setattr(p, "int64_param", 0)))()
    assert resp.outputs[0].datatype == "FP32"


@pytest.mark.parametrize("param,needle", [(-1, "expected >= 0"), ("3", "expected int64_param")])
def test_classification_parameter_errors_over_http(srv, param, needle):
    header = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, D_IN], "data": [0.0] * D_IN}],
              "outputs": [{"name": "OUT", "parameters": {"classification": param}}]}
    status, body = raw_http(srv, "classifier", header)
    assert status == 400, (status, body)
    assert needle in json.loads(body)["error"], body


# ---------------------------------------------------------------------------------------------------
# C. Ragged batching


def ragged_inputs(seed):
    rng = np.random.default_rng(seed)
    # Lengths 1..50, all different across the 16 callers; positive, so that sums do not cancel.
    lengths = rng.permutation(np.arange(1, 51))[:16]
    return [rng.uniform(0.5, 1.5, (1, int(n))).astype(np.float32) for n in lengths]


@pytest.mark.parametrize("engine", ENGINES)
def test_ragged_batch_with_accumulated_counts(srv, engine):
    model = f"ragged_sum_{engine}"
    xs = ragged_inputs(11)
    before = counts(srv.client(), model)

    def call(k, g, h):
        if k % 2:
            r = h.infer(model, [http_input("INPUT", xs[k])])
        else:
            r = g.infer(model, [infer_input("INPUT", xs[k])])
        return r.as_numpy("SUM"), r.as_numpy("COUNT")

    for k, (s, c) in enumerate(concurrently(srv, 16, call)):
        assert s.shape == (1, 1) and c.shape == (1, 1), (k, s.shape, c.shape)
        np.testing.assert_allclose(s[0, 0], xs[k].sum(dtype=np.float64), rtol=1e-4, err_msg=f"request {k}")
        assert c[0, 0] == xs[k].size, (k, c, xs[k].size)
    assert_batched(srv, model, before, 16)


@pytest.mark.parametrize("engine", ENGINES)
def test_ragged_batch_output_scattered_by_input_shape(srv, engine):
    model = f"ragged_double_{engine}"
    xs = ragged_inputs(12)
    before = counts(srv.client(), model)

    def call(k, g, _h):
        return g.infer(model, [infer_input("INPUT", xs[k])]).as_numpy("DOUBLE")

    for k, y in enumerate(concurrently(srv, 16, call)):
        assert y.shape == xs[k].shape, (k, y.shape, xs[k].shape)
        np.testing.assert_array_equal(y, xs[k] * 2, err_msg=f"request {k}")
    assert_batched(srv, model, before, 16)


def test_ragged_single_request(grpc):
    """Alone in its batch: offsets [0, n], count [n]."""
    x = np.arange(1, 8, dtype=np.float32).reshape(1, 7)
    for engine in ENGINES:
        r = grpc.infer(f"ragged_sum_{engine}", [infer_input("INPUT", x)])
        assert r.as_numpy("SUM").tolist() == [[28.0]] and r.as_numpy("COUNT").tolist() == [[7.0]], engine
        y = grpc.infer(f"ragged_double_{engine}", [infer_input("INPUT", x)]).as_numpy("DOUBLE")
        np.testing.assert_array_equal(y, x * 2)


def test_label_files_stay_inside_the_model_directory(tmp_path):
    # label_filename is untrusted like every file a config names: a path out of the model's
    # directory, or a link leading out, fails that model's load (naming no host path); a good
    # labels file beside them serves.
    root = tmp_path / "repo"
    secret = tmp_path / "secret.txt"
    secret.write_text("not a label\n")
    cases = {"dotdot": "../../secret.txt", "absolute": str(secret), "linked": "labels.txt", "good": "labels.txt"}
    for name, labels in cases.items():
        modelgen.classifier(str(root / name / "1" / "model.onnx"), CLS_SEED)
        modelgen.write_config(str(root / name), f"""backend: "candle"
max_batch_size: 8
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ {D_IN} ] }} ]
output [
  {{ name: "OUT" data_type: TYPE_FP32 dims: [ {CLASSES} ] label_filename: {json.dumps(labels)} }},
  {{ name: "RAW" data_type: TYPE_FP32 dims: [ {CLASSES} ] }}
]
""")
    os.symlink(secret, root / "linked" / "labels.txt")
    (root / "good" / "labels.txt").write_text("\n".join(LABELS) + "\n")
    s = Server(str(root), str(tmp_path / "accel.log"), extra_args=["--model-control-mode", "none"])
    try:
        c = s.client()
        index = {m.name: m for m in c.get_model_repository_index().models}
        for name in ("dotdot", "absolute", "linked"):
            assert index[name].state == "UNAVAILABLE", (name, index[name])
            assert "label_filename" in index[name].reason, index[name].reason
            assert str(tmp_path) not in index[name].reason, index[name].reason
        x = np.ones((1, D_IN), np.float32)
        out = grpcclient.InferRequestedOutput("OUT", class_count=1)
        top = c.infer("good", [infer_input("x", x)], outputs=[out]).as_numpy("OUT")
        assert top[0, 0].decode().split(":", 2)[2] in LABELS
    finally:
        s.stop()
