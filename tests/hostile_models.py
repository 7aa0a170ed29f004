"""Model repositories an attacker could write or point Accel at: files that lead out of the
repository, models whose memory comes from the request, Loops that never end, configs that nest
without end. Each generator writes real files (ONNX via onnx.helper, config.pbtxt as text) under
`root` and returns nothing; `test_hostile.py` starts the real binary on them.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, external_data_helper, helper, numpy_helper

import modelgen
from modelgen import make_model


def save(model: onnx.ModelProto, path: str, check: bool = True) -> None:
    if check:
        onnx.checker.check_model(model)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    onnx.save(model, path)


def column_with_its_transpose(path: str, op: str) -> None:
    """X[n,1] op Xᵀ: `MatMul` (an outer product) or a broadcasting `Add` asks for n² floats from n."""
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0]),
        helper.make_node(op, ["x", "xt"], ["y"]),
    ]
    save(make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1])],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "n"])]), path)


def two_fills(path: str) -> None:
    """Two ConstantOfShape outputs from one 16-byte shape: each alone may fit, together they may not."""
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["a"]),
        helper.make_node("ConstantOfShape", ["shape"], ["b"]),
    ]
    save(make_model(nodes, [helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
                    [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["p", "q"]),
                     helper.make_tensor_value_info("b", TensorProto.FLOAT, ["p", "q"])]), path)


def gather_rows(path: str) -> None:
    """Rows of a 1000×256 table picked by the request's indices: each index costs 1 KiB of output."""
    table = np.random.default_rng(1).standard_normal((1000, 256)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", "idx"], ["y"], axis=0)]
    save(make_model(nodes, [helper.make_tensor_value_info("idx", TensorProto.INT64, ["k"])],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["k", 256])],
                    [numpy_helper.from_array(table, "table")]), path)


def wide_pool(path: str) -> None:
    """A MaxPool whose window is 1024×1024, padded by 511 on each side: little memory for any image,
    but a 1024² image takes 10^12 window positions."""
    nodes = [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[1024, 1024], pads=[511] * 4)]
    save(make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, "h", "w"])],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, "p", "q"])]), path)


def constant_square(path: str, n: int = 3072) -> None:
    """y = x + max(C·C) for a constant n×n C (ConstantOfShape): 3·10^10 multiply-accumulates to fold."""
    shape = numpy_helper.from_array(np.array([n, n], np.int64), "shape")
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["c"],
                         value=numpy_helper.from_array(np.array([0.001], np.float32), "v")),
        helper.make_node("MatMul", ["c", "c"], ["cc"]),
        helper.make_node("ReduceMax", ["cc"], ["m"], keepdims=0),
        helper.make_node("Add", ["x", "m"], ["y"]),
    ]
    save(make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [shape]), path)


def loop_body(width: int = 64):
    """s' = tanh(s W), one small matrix product per iteration."""
    w = (np.random.default_rng(2).standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    return helper.make_graph(
        [helper.make_node("Identity", ["cond"], ["cond_out"]),
         helper.make_node("MatMul", ["s", "w"], ["sm"]),
         helper.make_node("Tanh", ["sm"], ["s_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [1, width])],
        [numpy_helper.from_array(w, "w")],
    )


def request_loop(path: str, width: int = 64) -> None:
    """A Loop whose trip count is the request's input `m` (INT64 [1])."""
    s0 = np.full((1, width), 0.5, np.float32)
    nodes = [
        helper.make_node("Squeeze", ["m"], ["m0"]),
        helper.make_node("Loop", ["m0", "keep", "s0"], ["s"], body=loop_body(width)),
    ]
    model = make_model(nodes, [helper.make_tensor_value_info("m", TensorProto.INT64, [1])],
                       [helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, width])],
                       [numpy_helper.from_array(np.array(True), "keep"), numpy_helper.from_array(s0, "s0")])
    save(model, path)


def constant_loop(path: str, trips: int, width: int = 64) -> None:
    """A Loop whose every input is a constant: folded at load, so its iterations run at load."""
    s0 = np.full((1, width), 0.5, np.float32)
    nodes = [
        helper.make_node("Loop", ["m", "keep", "s0"], ["s"], body=loop_body(width)),
        helper.make_node("Add", ["s", "x"], ["y"]),
    ]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])],
                       [numpy_helper.from_array(np.array(trips, np.int64), "m"),
                        numpy_helper.from_array(np.array(True), "keep"), numpy_helper.from_array(s0, "s0")])
    save(model, path)


def huge_initializer(path: str) -> None:
    """An initializer declaring 2^32 × 2^32 elements and carrying none (the count wraps to 0)."""
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1 << 32, 1 << 32])
    nodes = [helper.make_node("Add", ["x", "w"], ["y"])]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [t])
    save(model, path, check=False)


def external_identity(model_path: str, location: str, n: int = 4) -> None:
    """y = w (+ 0 x): `w` is external data at `location`, so its bytes come back as the output."""
    w = np.arange(n, dtype=np.float32)
    t = numpy_helper.from_array(w, "w")
    external_data_helper.set_external_data(t, location=location, offset=0, length=4 * n)
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    nodes = [helper.make_node("Mul", ["x", "zero"], ["x0"]), helper.make_node("Add", ["x0", "w"], ["y"])]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n])],
                       [t, numpy_helper.from_array(np.array(0, np.float32), "zero")])
    save(model, model_path, check=False)


def deep_config(model_dir: str, depth: int = 200_000) -> None:
    modelgen.mlp(os.path.join(model_dir, "1", "model.onnx"), 1, 8, 8, 8)
    modelgen.write_config(model_dir, "optimization " + "{ a " * depth + "}" * depth + "\n")


def declared_shape_lies(path: str) -> None:
    """An ONNX file whose declared output shape ([1, 4]) is not what it produces ([3, 1, 5])."""
    nodes = [helper.make_node("Expand", ["x", "shape"], ["y"])]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                       [numpy_helper.from_array(np.array([3, 1, 5], np.int64), "shape")])
    save(model, path, check=False)


def scalar_model(path: str) -> None:
    """Triton's scalar model: rank-0 input and output (config dims [1], max_batch_size 0)."""
    nodes = [helper.make_node("Mul", ["x", "two"], ["y"])]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
                       [numpy_helper.from_array(np.array(2, np.float32), "two")])
    save(model, path)
