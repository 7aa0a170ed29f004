"""ONNX models for Accel's tests and example repository, written with onnx.helper.

Every model is deterministic (seeded weights), so a test can recompute its expected output with
numpy or onnxruntime.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _save(model: onnx.ModelProto, path: str) -> str:
    onnx.checker.check_model(model)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    onnx.save(model, path)
    return path


def make_model(nodes, inputs, outputs, initializers=(), opset=OPSET, name="g"):
    graph = helper.make_graph(list(nodes), name, list(inputs), list(outputs), initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def mlp_weights(seed: int, d_in: int, d_hidden: int, d_out: int, dtype=np.float32):
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((d_in, d_hidden)) / np.sqrt(d_in)).astype(dtype)
    b1 = (rng.standard_normal(d_hidden) * 0.1).astype(dtype)
    w2 = (rng.standard_normal((d_hidden, d_out)) / np.sqrt(d_hidden)).astype(dtype)
    b2 = (rng.standard_normal(d_out) * 0.1).astype(dtype)
    return w1, b1, w2, b2


def mlp_reference(x: np.ndarray, seed: int, d_in: int, d_hidden: int, d_out: int, dtype=np.float32) -> np.ndarray:
    w1, b1, w2, b2 = mlp_weights(seed, d_in, d_hidden, d_out, dtype)
    h = np.maximum(x @ w1 + b1, 0)
    return h @ w2 + b2


def mlp(path: str, seed: int, d_in=256, d_hidden=1024, d_out=256, dtype=np.float32,
        input_name="INPUT0", output_name="OUTPUT0") -> str:
    """MatMul+Add+Relu+MatMul+Add with a symbolic batch dimension."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    w1, b1, w2, b2 = mlp_weights(seed, d_in, d_hidden, d_out, dtype)
    nodes = [
        helper.make_node("MatMul", [input_name, "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["y0"]),
        helper.make_node("Add", ["y0", "b2"], [output_name]),
    ]
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info(input_name, elem, ["batch", d_in])],
        [helper.make_tensor_value_info(output_name, elem, ["batch", d_out])],
        inits,
    )
    return _save(model, path)


def add_sub(path: str, dtype=np.int32, dims=16, batch: bool = False) -> str:
    """Triton's "simple" model: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    shape = ["batch", dims] if batch else [1, dims]
    nodes = [
        helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
        helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info(n, elem, shape) for n in ("INPUT0", "INPUT1")],
        [helper.make_tensor_value_info(n, elem, shape) for n in ("OUTPUT0", "OUTPUT1")],
    )
    return _save(model, path)


def write_config(model_dir: str, text: str) -> None:
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "config.pbtxt"), "w") as f:
        f.write(text)


def mlp_config(name: str, max_batch_size=64, delay_us=200, d_in=256, d_out=256, dtype="TYPE_FP32",
               batching=True, extra="") -> str:
    dyn = f"dynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}\n" if batching else ""
    return f"""name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [ {{ name: "INPUT0" data_type: {dtype} dims: [ {d_in} ] }} ]
output [ {{ name: "OUTPUT0" data_type: {dtype} dims: [ {d_out} ] }} ]
{dyn}instance_group [ {{ count: 1 kind: KIND_CPU }} ]
{extra}"""
