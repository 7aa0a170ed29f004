"""Writes the seed corpus of the fuzz targets into fuzz/seeds/<target>/ (committed; rerun after
changing what the targets read). Run with the test environment: `.venv/bin/python fuzz/seeds.py`.

Seeds are real inputs of each kind: Triton configs, REST bodies in every form, gRPC requests as
tritonclient builds them, and small ONNX graphs of every operator family (tests/opmodels.py), control
flow and external data included.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import hostile_models  # noqa: E402
import modelgen  # noqa: E402
import opmodels  # noqa: E402


def write(target: str, data: bytes) -> None:
    d = os.path.join(HERE, "seeds", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()[:16]), "wb") as f:
        f.write(data)


def configs() -> None:
    texts = [
        modelgen.mlp_config("mlp", 64, 100, 256, 256),
        modelgen.mlp_config("m", 8, 0, 4, 4, batching=False, extra='parameters { key: "accel.pinned" value: { string_value: "true" } }\n'),
        """name: "m" platform: "onnxruntime_onnx" max_batch_size: 16
version_policy { all { } }
input [ { name: "INPUT0" data_type: TYPE_FP16 dims: [ 4, -1 ] optional: true reshape { shape: [ -1 ] } } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP16 dims: [ -1 ] } ]
dynamic_batching { preferred_batch_size: 4 priority_levels: 3 default_priority_level: 1
  priority_queue_policy [ { key: 3 value: { timeout_action: REJECT default_timeout_microseconds: 10 } } ] }
instance_group [ { count: 2 kind: KIND_GPU gpus: [ 0 ] } ]
""",
        """name: "t"  # Triton fields Accel ignores
backend: "onnxruntime"
optimization { execution_accelerators { gpu_execution_accelerator : [ { name : "tensorrt" parameters { key: "precision_mode" value: "FP16" } } ] } }
model_warmup [{ name: "w" batch_size: 1 inputs { key: "x" value: { data_type: TYPE_FP32 dims: 4 zero_data: true } } }]
sequence_batching { max_sequence_idle_microseconds: 5000000 }
input < name: 'x' data_type: TYPE_INT64 dims: [ -1, 4 ] >
output [ { name: "y", data_type: TYPE_BYTES, dims: [ 1 ], label_filename: "labels.txt" } ];
version_policy: { specific: { versions: [1, 3] } }
default_model_filename: "model.onnx"
""",
        "max_batch_size: -1\ninstance_group [ { count: 2147483647 } ]\n",
        modelgen.padded_bert_config("bert", extra='parameters { key: "accel.min_padding_efficiency" value: { string_value: "0.5" } }\n'),
        """max_batch_size: 16
input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true } ]
batch_input [ { kind: BATCH_ITEM_SHAPE_FLATTEN target_name: "S" data_type: TYPE_INT32 source_input: "INPUT" } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ -1 ] } ]
batch_output [ { target_name: "OUT" kind: BATCH_SCATTER_WITH_INPUT_SHAPE source_input: "INPUT" } ]
dynamic_batching { }
""",
        "input [ { name: \"x\" dims: [ -2 ] } ]",
        modelgen.mlp_config("slo", extra='parameters [ { key: "accel.slo_ms" value: { string_value: "2.5" } }, '
                            '{ key: "accel.slo_percentile" value: { string_value: "99.9" } }, '
                            '{ key: "accel.slo_action" value: { string_value: "shed" } }, '
                            '{ key: "accel.version_weights" value: { string_value: "1:90, 2:10,3:0" } } ]\n'),
    ]
    for t in texts:
        write("config_pbtxt", t.encode())


def rest_bodies() -> None:
    def json_body(inputs, outputs=None, parameters=None):
        body = {"id": "7", "inputs": inputs}
        if outputs is not None:
            body["outputs"] = outputs
        if parameters is not None:
            body["parameters"] = parameters
        return json.dumps(body).encode()

    a = {"name": "a", "shape": [2, 3], "datatype": "FP32", "data": [[1, 2, 3], [4.5, -5, 6e3]]}
    c = {"name": "c", "shape": [2, 2, 2], "datatype": "INT64", "data": [1, 2, 3, 4, 5, 6, 7, 8]}
    b = {"name": "b", "shape": [2, 1], "datatype": "BYTES", "data": ["hello", ""]}
    # mode 0: no Inference-Header-Content-Length.
    write("rest_body", b"\x00" + json_body([a, c]))
    write("rest_body", b"\x00" + json_body([a, b, c], [{"name": "y", "parameters": {"binary_data": True}}],
                                           {"binary_data_output": False, "priority": 1, "timeout": 100}))
    write("rest_body", b"\x00" + json_body([{"name": "a", "shape": [1, 3], "datatype": "FP16", "data": [1, 2, 3]}]))
    # mode 1 + 3k: the header length leaves k binary bytes.
    binary = np.arange(6, dtype=np.float32).tobytes()
    header = json_body([{"name": "a", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": 24}}, c])
    write("rest_body", bytes([1 + 3 * len(binary)]) + header + binary)
    strings = b"".join(struct.pack("<I", len(s)) + s for s in (b"ab", b"xyz"))
    header = json_body([a, c, {"name": "b", "shape": [2, 1], "datatype": "BYTES",
                               "parameters": {"binary_data_size": len(strings)}}])
    write("rest_body", bytes([1 + 3 * len(strings)]) + header + strings)
    # mode 2: the raw binary body of a one-input model (here refused: the spec has three).
    write("rest_body", b"\x02" + binary)
    write("rest_body", b"\x00" + json_body([a, c], parameters={"accel.routing_key": "user-7", "accel.slo_ms": 2.5}))
    write("rest_body", b"\x00" + b'{"inputs":[{"name":"a","shape":[1,3],"datatype":"FP32","data":[[[[1]]],2,3]}]}')


def grpc_requests() -> None:
    from tritonclient.grpc import service_pb2

    def request(inputs, raw=(), outputs=(), **params):
        r = service_pb2.ModelInferRequest(model_name="m", id="1")
        for name, datatype, shape, contents in inputs:
            t = r.inputs.add(name=name, datatype=datatype, shape=shape)
            if contents is not None:
                getattr(t.contents, contents[0]).extend(contents[1])
        r.raw_input_contents.extend(raw)
        for o in outputs:
            name, count = o if isinstance(o, tuple) else (o, None)
            out = r.outputs.add(name=name)
            if count is not None:
                out.parameters["classification"].int64_param = count
        for k, v in params.items():
            if isinstance(v, bool):
                r.parameters[k].bool_param = v
            elif isinstance(v, int):
                r.parameters[k].int64_param = v
            else:
                r.parameters[k].string_param = v
        return r.SerializeToString()

    f32 = np.arange(6, dtype=np.float32).tobytes()
    i64 = np.arange(8, dtype=np.int64).tobytes()
    strings = b"".join(struct.pack("<I", len(s)) + s for s in (b"ab", b"xyz"))
    write("grpc_request", request([("a", "FP32", [2, 3], None), ("c", "INT64", [2, 2, 2], None)], [f32, i64]))
    write("grpc_request", request([("a", "FP32", [2, 3], None), ("b", "BYTES", [2, 1], None),
                                   ("c", "INT64", [2, 2, 2], None)], [f32, strings, i64], ["y"], priority=1, timeout=5))
    write("grpc_request", request([("a", "FP32", [1, 3], ("fp32_contents", [1.0, 2.0, 3.0])),
                                   ("c", "INT64", [1, 2, 2], ("int64_contents", [1, 2, 3, 4])),
                                   ("b", "BYTES", [1, 1], ("bytes_contents", [b"hi"]))]))
    write("grpc_request", request([("a", "FP32", [9, 3], None)], [np.zeros(27, np.float32).tobytes()], ["y", "y"]))
    # For the padded model (INT64 "a" [-1], FP32 "c" [-1, 2]) and the ragged one (FP32 "a" [-1]):
    # lengths, classification, strings.
    write("grpc_request", request([("a", "INT64", [2, 5], None), ("c", "FP32", [2, 3, 2], None)],
                                  [np.arange(10, dtype=np.int64).tobytes(), np.ones(12, np.float32).tobytes()],
                                  [("y", 2), ("z", 1)]))
    write("grpc_request", request([("a", "INT64", [1, 3], ("int64_contents", [1, 2, 3])),
                                   ("b", "BYTES", [1, 2], ("bytes_contents", [b"", b"\xff"]))], [], ["y"]))
    write("grpc_request", request([("a", "FP32", [1, 7], None)], [np.ones(7, np.float32).tobytes()], [("z", 3), "y"]))


def onnx_models() -> None:
    import onnx

    for _, model, _ in opmodels.cases():
        write("onnx_model", model.SerializeToString())
    tmp = os.path.join(HERE, "work", "seed-models")
    os.makedirs(tmp, exist_ok=True)
    for make, args in [(hostile_models.request_loop, ()), (hostile_models.constant_loop, (10,)),
                       (hostile_models.column_with_its_transpose, ("MatMul",)), (hostile_models.two_fills, ()),
                       (hostile_models.huge_initializer, ()), (hostile_models.scalar_model, ()),
                       (hostile_models.external_identity, ("weights.bin",)),
                       (hostile_models.external_identity, ("../../outside.bin",))]:
        path = os.path.join(tmp, "m.onnx")
        make(path, *args)
        write("onnx_model", onnx.load(path, load_external_data=False).SerializeToString())
    path = os.path.join(tmp, "bert.onnx")
    modelgen.bert_encoder(path, hidden=8, heads=2, layers=1, ffn=16, max_positions=8, vocab=16)
    write("onnx_model", open(path, "rb").read())


if __name__ == "__main__":
    configs()
    rest_bodies()
    grpc_requests()
    onnx_models()
    for t in sorted(os.listdir(os.path.join(HERE, "seeds"))):
        print(t, len(os.listdir(os.path.join(HERE, "seeds", t))))
