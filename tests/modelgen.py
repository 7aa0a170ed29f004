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


def mlp_config(name: str, max_batch_size=64, delay_us=0, d_in=256, d_out=256, dtype="TYPE_FP32",
               batching=True, extra="") -> str:
    dyn = f"dynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}\n" if batching else ""
    return f"""name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [ {{ name: "INPUT0" data_type: {dtype} dims: [ {d_in} ] }} ]
output [ {{ name: "OUTPUT0" data_type: {dtype} dims: [ {d_out} ] }} ]
{dyn}instance_group [ {{ count: 1 kind: KIND_CPU }} ]
{extra}"""


def bert_encoder(path: str, seed: int = 0, vocab: int = 96, hidden: int = 32, heads: int = 4, layers: int = 2,
                 ffn: int = 64, max_positions: int = 64, pooled: bool = False) -> str:
    """A BERT-style encoder written the way PyTorch exports it (opset 13): Gather embeddings, position
    ids from Shape/Range, an attention mask Unsqueezed with axes [1, 2], head reshapes from run-time
    shapes, decomposed LayerNorm, Erf GELU. Inputs input_ids/attention_mask INT64 [batch, seq].
    With `pooled`, a second output "pooled" [batch, hidden]: the mask-weighted mean of the tokens
    (sentence-transformers' mean pooling)."""
    rng = np.random.default_rng(seed)
    dh = hidden // heads
    nodes, inits = [], []

    def w(name, *shape, scale=0.2):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    def c(name, value, dtype=np.int64):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def n(op, ins, outs, **attrs):
        nodes.append(helper.make_node(op, ins, outs, **attrs))
        return outs[0]

    c("ax0", [0])
    c("ax12", [1, 2])
    c("i0", 0)
    c("i1", 1)
    c("one_i", 1)
    c("zero_i", 0)
    c("one_f", 1.0, np.float32)
    c("neg_big", -10000.0, np.float32)
    c("two_f", 2.0, np.float32)
    c("eps", 1e-12, np.float32)
    c("sqrt2", np.sqrt(2.0), np.float32)
    c("half", 0.5, np.float32)
    c("scale", 1.0 / np.sqrt(dh), np.float32)
    c("heads_dh", [heads, dh])
    c("minus1", [-1])

    def layer_norm(x, prefix):
        mean = n("ReduceMean", [x], [f"{prefix}_mean"], axes=[-1])
        d = n("Sub", [x, mean], [f"{prefix}_d"])
        sq = n("Pow", [d, "two_f"], [f"{prefix}_sq"])
        var = n("ReduceMean", [sq], [f"{prefix}_var"], axes=[-1])
        ve = n("Add", [var, "eps"], [f"{prefix}_ve"])
        sd = n("Sqrt", [ve], [f"{prefix}_sd"])
        nm = n("Div", [d, sd], [f"{prefix}_nm"])
        g = w(f"{prefix}_g", hidden, scale=0.1)
        inits[-1] = numpy_helper.from_array((1 + rng.standard_normal(hidden) * 0.1).astype(np.float32), g)
        sc = n("Mul", [nm, g], [f"{prefix}_sc"])
        return n("Add", [sc, w(f"{prefix}_b", hidden, scale=0.1)], [f"{prefix}_out"])

    def linear(x, d_in, d_out, prefix):
        m = n("MatMul", [x, w(f"{prefix}_w", d_in, d_out)], [f"{prefix}_m"])
        return n("Add", [m, w(f"{prefix}_bias", d_out, scale=0.05)], [f"{prefix}_y"])

    # Embeddings.
    word = n("Gather", [w("word_emb", vocab, hidden, scale=0.5), "input_ids"], ["word"], axis=0)
    shape_ids = n("Shape", ["input_ids"], ["shape_ids"])
    seq = n("Gather", [shape_ids, "i1"], ["seq"], axis=0)
    pos = n("Range", ["zero_i", seq, "one_i"], ["pos"])
    pos2 = n("Unsqueeze", [pos, "ax0"], ["pos2"])
    pemb = n("Gather", [w("pos_emb", max_positions, hidden, scale=0.5), pos2], ["pemb"], axis=0)
    x = layer_norm(n("Add", [word, pemb], ["emb"]), "ln_emb")
    # Extended attention mask: (1 - mask) * -10000 as [batch, 1, 1, seq].
    m4 = n("Unsqueeze", ["attention_mask", "ax12"], ["mask4"])
    mf = n("Cast", [m4], ["maskf"], to=TensorProto.FLOAT)
    inv = n("Sub", ["one_f", mf], ["mask_inv"])
    ext = n("Mul", [inv, "neg_big"], ["mask_ext"])
    # Run-time shapes for the head reshapes.
    sx = n("Shape", [x], ["sx"])
    b_ = n("Unsqueeze", [n("Gather", [sx, "i0"], ["b0"], axis=0), "ax0"], ["b1"])
    s_ = n("Unsqueeze", [n("Gather", [sx, "i1"], ["s0"], axis=0), "ax0"], ["s1"])
    split_shape = n("Concat", [b_, s_, "heads_dh"], ["split_shape"], axis=0)
    merge_shape = n("Concat", [b_, s_, "minus1"], ["merge_shape"], axis=0)
    for li in range(layers):
        p = f"l{li}"
        q = n("Transpose", [n("Reshape", [linear(x, hidden, hidden, p + "_q"), split_shape], [p + "_qr"])], [p + "_qt"], perm=[0, 2, 1, 3])
        k = n("Transpose", [n("Reshape", [linear(x, hidden, hidden, p + "_k"), split_shape], [p + "_kr"])], [p + "_kt"], perm=[0, 2, 3, 1])
        v = n("Transpose", [n("Reshape", [linear(x, hidden, hidden, p + "_v"), split_shape], [p + "_vr"])], [p + "_vt"], perm=[0, 2, 1, 3])
        scores = n("Mul", [n("MatMul", [q, k], [p + "_qk"]), "scale"], [p + "_scores"])
        probs = n("Softmax", [n("Add", [scores, ext], [p + "_masked"])], [p + "_probs"], axis=-1)
        ctx = n("Transpose", [n("MatMul", [probs, v], [p + "_ctx"])], [p + "_ctxt"], perm=[0, 2, 1, 3])
        merged = n("Reshape", [ctx, merge_shape], [p + "_merged"])
        attn = linear(merged, hidden, hidden, p + "_o")
        x = layer_norm(n("Add", [attn, x], [p + "_res1"]), p + "_ln1")
        h = linear(x, hidden, ffn, p + "_ff1")
        gelu = n("Mul", [n("Mul", [h, n("Add", [n("Erf", [n("Div", [h, "sqrt2"], [p + "_hd"])], [p + "_erf"]), "one_f"], [p + "_e1"])], [p + "_hm"]), "half"], [p + "_gelu"])
        ff = linear(gelu, ffn, hidden, p + "_ff2")
        x = layer_norm(n("Add", [ff, x], [p + "_res2"]), p + "_ln2")
    nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"]))
    outputs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", hidden])]
    if pooled:
        c("ax_last", [-1])
        c("ax1", [1])
        m3 = n("Cast", [n("Unsqueeze", ["attention_mask", "ax_last"], ["mask3"])], ["mask3f"], to=TensorProto.FLOAT)
        summed = n("ReduceSum", [n("Mul", [x, m3], ["masked_x"]), "ax1"], ["summed"], keepdims=0)
        count = n("ReduceSum", [m3, "ax1"], ["count"], keepdims=0)
        n("Div", [summed, count], ["pooled"])
        outputs.append(helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", hidden]))
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        outputs,
        inits, opset=13,
    )
    return _save(model, path)


def scale_model(path: str, factor: float = 2.0) -> str:
    """y = x * factor over a 1-D tensor of any length (for large-message tests)."""
    model = make_model(
        [helper.make_node("Mul", ["x", "k"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
        [numpy_helper.from_array(np.array(factor, np.float32), "k")],
    )
    return _save(model, path)


def slow_model(path: str, width: int = 1024, repeats: int = 16, seed: int = 3) -> str:
    """A batchable model that takes milliseconds per execution (chained square MatMuls), so that
    concurrent requests queue up behind it. y = tanh(...tanh(x W) W...)."""
    rng = np.random.default_rng(seed)
    wmat = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    nodes, prev = [], "x"
    for i in range(repeats):
        nodes.append(helper.make_node("MatMul", [prev, "w"], [f"m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"t{i}"]))
        prev = f"t{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        [numpy_helper.from_array(wmat, "w")],
    )
    return _save(model, path)


def double_model(path: str, elem: int, dims: int = 8) -> str:
    """y = x + x (y = Not(x) for BOOL) with a batch dimension, for datatype round trips."""
    op = helper.make_node("Not", ["x"], ["y"]) if elem == TensorProto.BOOL else helper.make_node("Add", ["x", "x"], ["y"])
    model = make_model(
        [op],
        [helper.make_tensor_value_info("x", elem, ["batch", dims])],
        [helper.make_tensor_value_info("y", elem, ["batch", dims])],
    )
    return _save(model, path)


def padded_bert_config(name: str, max_batch_size: int = 32, delay_us: int = 5000, tokens: int = 4096,
                       hidden: int = 32, backend: str = "", extra: str = "") -> str:
    """config.pbtxt of a `bert_encoder(pooled=True)` with padded batching across lengths."""
    backend_line = f'backend: "{backend}"\n' if backend else ""
    return f"""name: "{name}"
{backend_line}max_batch_size: {max_batch_size}
input [ {{ name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] }},
        {{ name: "attention_mask" data_type: TYPE_INT64 dims: [ -1 ] }} ]
output [ {{ name: "last_hidden_state" data_type: TYPE_FP32 dims: [ -1, {hidden} ] }},
         {{ name: "pooled" data_type: TYPE_FP32 dims: [ {hidden} ] }} ]
dynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}
parameters [
  {{ key: "accel.padded_inputs" value: {{ string_value: "input_ids=0,attention_mask=0" }} }},
  {{ key: "accel.padded_outputs" value: {{ string_value: "last_hidden_state" }} }},
  {{ key: "accel.max_batch_tokens" value: {{ string_value: "{tokens}" }} }}
]
{extra}"""


def string_identity(path: str) -> str:
    """OUT = Identity(TEXT) over a STRING (BYTES) tensor [batch, n]: every byte must come back."""
    model = make_model(
        [helper.make_node("Identity", ["TEXT"], ["OUT"])],
        [helper.make_tensor_value_info("TEXT", TensorProto.STRING, ["batch", "n"])],
        [helper.make_tensor_value_info("OUT", TensorProto.STRING, ["batch", "n"])],
    )
    return _save(model, path)


def string_upper(path: str) -> str:
    """OUT = StringNormalizer(TEXT, UPPER) over a 1-D STRING tensor (the operator takes [C] or [1, C]).
    The "C" locale, which every libc has (ONNX Runtime's default, en_US.UTF-8, often is not installed)."""
    model = make_model(
        [helper.make_node("StringNormalizer", ["TEXT"], ["OUT"], case_change_action="UPPER", locale="C")],
        [helper.make_tensor_value_info("TEXT", TensorProto.STRING, ["n"])],
        [helper.make_tensor_value_info("OUT", TensorProto.STRING, ["m"])],
    )
    return _save(model, path)


def classifier_weights(seed: int, d_in: int = 8, classes: int = 10) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((d_in, classes)).astype(np.float32)


def classifier(path: str, seed: int, d_in: int = 8, classes: int = 10) -> str:
    """Logits OUT = x W (FP32 [batch, classes]) and the same logits again as RAW, for classification
    (OUT carries the labels in the config; RAW is asked for plainly, to compare the printed values)."""
    model = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["OUT"]), helper.make_node("Identity", ["OUT"], ["RAW"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", d_in])],
        [helper.make_tensor_value_info("OUT", TensorProto.FLOAT, ["batch", classes]),
         helper.make_tensor_value_info("RAW", TensorProto.FLOAT, ["batch", classes])],
        [numpy_helper.from_array(classifier_weights(seed, d_in, classes), "w")],
    )
    return _save(model, path)


def ragged_sum(path: str) -> str:
    """Per-request sums of a ragged batch, as Triton's ragged batching feeds it: INPUT is every
    request's elements concatenated (1-D), OFFSETS the BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO batch
    input (N+1 INT32), COUNTS the BATCH_ELEMENT_COUNT one (N INT32). Request i owns the positions p
    with OFFSETS[i] <= p < OFFSETS[i+1], so SUM = mask · INPUT as [N, 1] (a MatMul rather than
    CumSum, which candle lacks); COUNT = COUNTS as FP32 [N, 1]."""
    c = lambda name, v: numpy_helper.from_array(np.asarray(v, dtype=np.int64), name)  # noqa: E731
    nodes = [
        helper.make_node("Shape", ["INPUT"], ["len1"]),
        helper.make_node("Squeeze", ["len1", "zero"], ["len"]),
        helper.make_node("Range", ["zero_s", "len", "one_s"], ["pos"]),
        helper.make_node("Unsqueeze", ["pos", "zero"], ["pos_row"]),  # [1, E]
        helper.make_node("Cast", ["OFFSETS"], ["off"], to=TensorProto.INT64),
        helper.make_node("Slice", ["off", "one", "big"], ["hi"]),
        helper.make_node("Slice", ["off", "zero", "minus1"], ["lo"]),
        helper.make_node("Unsqueeze", ["hi", "one"], ["hi_col"]),  # [N, 1]
        helper.make_node("Unsqueeze", ["lo", "one"], ["lo_col"]),
        helper.make_node("GreaterOrEqual", ["pos_row", "lo_col"], ["ge"]),  # [N, E]
        helper.make_node("Less", ["pos_row", "hi_col"], ["lt"]),
        helper.make_node("And", ["ge", "lt"], ["own"]),
        helper.make_node("Cast", ["own"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["INPUT", "one"], ["input_col"]),  # [E, 1]
        helper.make_node("MatMul", ["mask", "input_col"], ["SUM"]),
        helper.make_node("Cast", ["COUNTS"], ["counts_f"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["counts_f", "column"], ["COUNT"]),
    ]
    inits = [
        c("zero", [0]), c("one", [1]), c("minus1", [-1]), c("big", [2**62]), c("column", [-1, 1]),
        c("zero_s", 0), c("one_s", 1),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, ["elements"]),
         helper.make_tensor_value_info("OFFSETS", TensorProto.INT32, ["n_plus_1"]),
         helper.make_tensor_value_info("COUNTS", TensorProto.INT32, ["n"])],
        [helper.make_tensor_value_info("SUM", TensorProto.FLOAT, ["n", 1]),
         helper.make_tensor_value_info("COUNT", TensorProto.FLOAT, ["n", 1])],
        inits,
    )
    return _save(model, path)


def ragged_double(path: str) -> str:
    """DOUBLE = INPUT * 2 over a ragged input's concatenation (1-D), for BATCH_SCATTER_WITH_INPUT_SHAPE."""
    model = make_model(
        [helper.make_node("Mul", ["INPUT", "two"], ["DOUBLE"])],
        [helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, ["elements"])],
        [helper.make_tensor_value_info("DOUBLE", TensorProto.FLOAT, ["elements"])],
        [numpy_helper.from_array(np.array(2.0, np.float32), "two")],
    )
    return _save(model, path)
