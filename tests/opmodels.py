"""Single-operator and small multi-operator ONNX graphs, each a case the candle executor must get
exactly right (they are the ways candle-onnx's own evaluator goes wrong), compared against
onnxruntime on the same inputs.

Each case is (name, model, inputs): `model` is an onnx.ModelProto with fixed input shapes (so the
server completes its config with max_batch_size 0) and `inputs` a dict of numpy arrays.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from modelgen import make_model

F = TensorProto.FLOAT
I64 = TensorProto.INT64
I32 = TensorProto.INT32


def _rng(seed):
    return np.random.default_rng(seed)


def vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def single(op, inputs, outputs, attrs=None, inits=(), opset=17, in_names=None, out_names=None):
    in_names = in_names or [i.name for i in inputs]
    out_names = out_names or [o.name for o in outputs]
    node = helper.make_node(op, in_names, out_names, **(attrs or {}))
    return make_model([node], inputs, outputs, inits, opset=opset)


def cases():
    r = _rng(0)
    out = []

    def add(name, model, inputs):
        out.append((name, model, inputs))

    x4 = r.standard_normal((2, 3, 7, 9)).astype(np.float32)

    # Unsqueeze with several axes: each axis indexes the output (BERT's attention mask).
    add("unsqueeze_axes_input_13",
        single("Unsqueeze", [vi("x", F, [2, 5])], [vi("y", F, [2, 1, 1, 5])], inits=[const("axes", np.array([2, 1], np.int64))],
               opset=13, in_names=["x", "axes"]),
        {"x": r.standard_normal((2, 5)).astype(np.float32)})
    add("unsqueeze_axes_attr_11",
        single("Unsqueeze", [vi("x", F, [3, 4])], [vi("y", F, [1, 3, 1, 4])], {"axes": [0, 2]}, opset=11),
        {"x": r.standard_normal((3, 4)).astype(np.float32)})
    add("unsqueeze_negative_axes_13",
        single("Unsqueeze", [vi("x", F, [3, 4])], [vi("y", F, [3, 4, 1, 1])], inits=[const("axes", np.array([-1, -2], np.int64))],
               opset=13, in_names=["x", "axes"]),
        {"x": r.standard_normal((3, 4)).astype(np.float32)})
    # Squeeze with its axes attribute (opset < 13): only the named axis goes.
    add("squeeze_axes_attr_11",
        single("Squeeze", [vi("x", F, [1, 3, 1, 4])], [vi("y", F, [3, 1, 4])], {"axes": [0]}, opset=11),
        {"x": r.standard_normal((1, 3, 1, 4)).astype(np.float32)})
    # ReduceMean with the opset-18 axes input.
    add("reducemean_axes_input_18",
        single("ReduceMean", [vi("x", F, [2, 3, 4])], [vi("y", F, [2, 1, 4])], {"keepdims": 1},
               inits=[const("axes", np.array([1], np.int64))], opset=18, in_names=["x", "axes"]),
        {"x": r.standard_normal((2, 3, 4)).astype(np.float32)})
    add("reducesum_noop_empty_axes",
        single("ReduceSum", [vi("x", F, [2, 3])], [vi("y", F, [2, 3])], {"keepdims": 0, "noop_with_empty_axes": 1}, opset=13),
        {"x": r.standard_normal((2, 3)).astype(np.float32)})
    add("reducemax_attr_axes",
        single("ReduceMax", [vi("x", F, [2, 3, 4])], [vi("y", F, [2, 4])], {"axes": [1], "keepdims": 0}, opset=13),
        {"x": r.standard_normal((2, 3, 4)).astype(np.float32)})
    # Conv: different strides per axis, asymmetric pads, dilations, groups.
    w = (r.standard_normal((4, 3, 3, 2)) * 0.3).astype(np.float32)
    add("conv_strides_per_axis",
        single("Conv", [vi("x", F, [2, 3, 7, 9])], [vi("y", F, None)],
               {"strides": [2, 1], "pads": [1, 0, 0, 1], "kernel_shape": [3, 2]},
               inits=[const("w", w), const("b", r.standard_normal(4).astype(np.float32))], in_names=["x", "w", "b"]),
        {"x": x4})
    add("conv_dilations_per_axis",
        single("Conv", [vi("x", F, [2, 3, 7, 9])], [vi("y", F, None)], {"dilations": [2, 1], "pads": [2, 1, 2, 1]},
               inits=[const("w", w)], in_names=["x", "w"]),
        {"x": x4})
    wd = (r.standard_normal((6, 1, 3, 3)) * 0.3).astype(np.float32)
    add("conv_depthwise_same_upper",
        single("Conv", [vi("x", F, [1, 6, 8, 8])], [vi("y", F, None)], {"group": 6, "auto_pad": "SAME_UPPER", "strides": [2, 2]},
               inits=[const("w", wd)], in_names=["x", "w"]),
        {"x": r.standard_normal((1, 6, 8, 8)).astype(np.float32)})
    # Depthwise with a channel multiplier of 2, bias, per-axis strides and dilations, asymmetric pads,
    # a batch of 3 (Accel's own depthwise kernel).
    wm = (r.standard_normal((8, 1, 3, 5)) * 0.3).astype(np.float32)
    add("conv_depthwise_multiplier",
        single("Conv", [vi("x", F, [3, 4, 11, 13])], [vi("y", F, None)],
               {"group": 4, "strides": [1, 2], "dilations": [2, 1], "pads": [2, 0, 1, 3]},
               inits=[const("w", wm), const("b", r.standard_normal(8).astype(np.float32))], in_names=["x", "w", "b"]),
        {"x": r.standard_normal((3, 4, 11, 13)).astype(np.float32)})
    # Conv followed by inference BatchNormalization, folded into one Conv at load: with a conv bias,
    # and without one on weights another Conv shares (the originals must survive for it).
    wf = (r.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)
    bn = lambda k: [const(f"s{k}", r.uniform(0.5, 1.5, 4).astype(np.float32)),  # noqa: E731
                    const(f"bb{k}", r.standard_normal(4).astype(np.float32)),
                    const(f"m{k}", r.standard_normal(4).astype(np.float32)),
                    const(f"v{k}", r.uniform(0.5, 2.0, 4).astype(np.float32))]
    add("conv_batchnorm_folded",
        make_model([helper.make_node("Conv", ["x", "wf", "cb"], ["c1"], pads=[1, 1, 1, 1]),
                    helper.make_node("BatchNormalization", ["c1", "s1", "bb1", "m1", "v1"], ["y1"], epsilon=1e-3),
                    helper.make_node("Conv", ["x", "wf"], ["c2"]),
                    helper.make_node("BatchNormalization", ["c2", "s2", "bb2", "m2", "v2"], ["y2"]),
                    helper.make_node("Conv", ["x", "wf"], ["y3"], strides=[2, 2])],
                   [vi("x", F, [2, 3, 7, 9])], [vi("y1", F, None), vi("y2", F, None), vi("y3", F, None)],
                   [const("wf", wf), const("cb", r.standard_normal(4).astype(np.float32))] + bn(1) + bn(2)),
        {"x": x4})
    # A 1-D convolution exported as 2-D over a width of 1 (Magika): kx1 kernel, stride, dilation and
    # top/bottom pads, with and without a bias.
    wc = (r.standard_normal((5, 3, 4, 1)) * 0.3).astype(np.float32)
    add("conv_width_one",
        make_model([helper.make_node("Conv", ["x", "wc", "bc"], ["y1"], pads=[2, 0, 1, 0], strides=[2, 1], dilations=[2, 1]),
                    helper.make_node("Conv", ["x", "wc"], ["y2"])],
                   [vi("x", F, [2, 3, 17, 1])], [vi("y1", F, None), vi("y2", F, None)],
                   [const("wc", wc), const("bc", r.standard_normal(5).astype(np.float32))]),
        {"x": r.standard_normal((2, 3, 17, 1)).astype(np.float32)})
    add("conv1d",
        single("Conv", [vi("x", F, [2, 3, 20])], [vi("y", F, None)], {"strides": [3], "pads": [2, 1]},
               inits=[const("w", (r.standard_normal((5, 3, 4)) * 0.3).astype(np.float32))], in_names=["x", "w"]),
        {"x": r.standard_normal((2, 3, 20)).astype(np.float32)})
    # ConvTranspose: grouped, per-axis strides, output_padding, pads.
    wt = (r.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)
    add("convtranspose_grouped_strided",
        single("ConvTranspose", [vi("x", F, [1, 4, 5, 6])], [vi("y", F, None)],
               {"group": 2, "strides": [2, 1], "output_padding": [1, 0], "pads": [1, 0, 0, 1]},
               inits=[const("w", wt), const("b", r.standard_normal(6).astype(np.float32))], in_names=["x", "w", "b"]),
        {"x": r.standard_normal((1, 4, 5, 6)).astype(np.float32)})
    add("convtranspose_stride2",
        single("ConvTranspose", [vi("x", F, [1, 4, 5, 6])], [vi("y", F, None)], {"strides": [2, 2], "kernel_shape": [2, 2]},
               inits=[const("w", (r.standard_normal((4, 3, 2, 2)) * 0.3).astype(np.float32))], in_names=["x", "w"]),
        {"x": r.standard_normal((1, 4, 5, 6)).astype(np.float32)})
    # Pools with pads, ceil_mode and count_include_pad.
    add("maxpool_pads",
        single("MaxPool", [vi("x", F, [2, 3, 7, 9])], [vi("y", F, None)], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2]}),
        {"x": x4})
    add("maxpool_ceil_mode",
        single("MaxPool", [vi("x", F, [2, 3, 7, 9])], [vi("y", F, None)], {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}),
        {"x": x4})
    add("maxpool_same_5x5",
        single("MaxPool", [vi("x", F, [2, 3, 7, 9])], [vi("y", F, None)], {"kernel_shape": [5, 5], "pads": [2, 2, 2, 2], "strides": [1, 1]}),
        {"x": x4})
    add("averagepool_exclude_pad",
        single("AveragePool", [vi("x", F, [2, 3, 7, 9])], [vi("y", F, None)], {"kernel_shape": [3, 2], "pads": [1, 0, 1, 1], "strides": [2, 2]}),
        {"x": x4})
    add("averagepool_include_pad_ceil",
        single("AveragePool", [vi("x", F, [2, 3, 7, 9])], [vi("y", F, None)],
               {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2], "count_include_pad": 1, "ceil_mode": 1}),
        {"x": x4})
    add("globalaveragepool", single("GlobalAveragePool", [vi("x", F, [2, 3, 7, 9])], [vi("y", F, [2, 3, 1, 1])]), {"x": x4})
    add("globalmaxpool", single("GlobalMaxPool", [vi("x", F, [2, 3, 7, 9])], [vi("y", F, [2, 3, 1, 1])]), {"x": x4})
    add("hardsigmoid_alpha_beta",
        single("HardSigmoid", [vi("x", F, [4, 5])], [vi("y", F, [4, 5])], {"alpha": 0.1666667, "beta": 0.5}),
        {"x": (r.standard_normal((4, 5)) * 4).astype(np.float32)})
    add("hardswish", single("HardSwish", [vi("x", F, [4, 5])], [vi("y", F, [4, 5])]), {"x": (r.standard_normal((4, 5)) * 4).astype(np.float32)})
    add("max_variadic",
        single("Max", [vi("a", F, [3, 4]), vi("b", F, [4]), vi("c", F, [3, 1])], [vi("y", F, [3, 4])]),
        {"a": r.standard_normal((3, 4)).astype(np.float32), "b": r.standard_normal(4).astype(np.float32), "c": r.standard_normal((3, 1)).astype(np.float32)})
    add("reciprocal", single("Reciprocal", [vi("x", F, [3, 4])], [vi("y", F, [3, 4])]), {"x": (r.random((3, 4)) + 0.5).astype(np.float32)})
    # int32 inputs and a 2-D int32 initializer (not flattened).
    add("int32_initializer_2d",
        single("Add", [vi("x", I32, [2, 3])], [vi("y", I32, [2, 3])], inits=[const("k", np.array([[1, -2, 3], [40000, 5, -6]], np.int32))],
               in_names=["x", "k"]),
        {"x": r.integers(-1000, 1000, (2, 3)).astype(np.int32)})
    add("int32_mul_sub",
        make_model([helper.make_node("Mul", ["a", "b"], ["m"]), helper.make_node("Sub", ["m", "a"], ["y"])],
                   [vi("a", I32, [8]), vi("b", I32, [8])], [vi("y", I32, [8])]),
        {"a": r.integers(-5000, 5000, 8).astype(np.int32), "b": r.integers(-5000, 5000, 8).astype(np.int32)})
    # Softmax: before opset 13 it normalises over every axis from `axis` on.
    x3 = r.standard_normal((2, 3, 4)).astype(np.float32)
    add("softmax_axis1_opset11", single("Softmax", [vi("x", F, [2, 3, 4])], [vi("y", F, [2, 3, 4])], {"axis": 1}, opset=11), {"x": x3})
    add("softmax_axis1_opset13", single("Softmax", [vi("x", F, [2, 3, 4])], [vi("y", F, [2, 3, 4])], {"axis": 1}, opset=13), {"x": x3})
    add("logsoftmax_last", single("LogSoftmax", [vi("x", F, [2, 3, 4])], [vi("y", F, [2, 3, 4])], {"axis": -1}), {"x": x3})
    # Recurrent layers in every direction.
    seq, batch, inp, hid = 5, 3, 4, 6
    xs = r.standard_normal((seq, batch, inp)).astype(np.float32)
    for direction, dirs in (("forward", 1), ("reverse", 1), ("bidirectional", 2)):
        w = (r.standard_normal((dirs, 4 * hid, inp)) * 0.4).astype(np.float32)
        rr = (r.standard_normal((dirs, 4 * hid, hid)) * 0.4).astype(np.float32)
        b = (r.standard_normal((dirs, 8 * hid)) * 0.1).astype(np.float32)
        add(f"lstm_{direction}",
            single("LSTM", [vi("x", F, [seq, batch, inp])], [vi("y", F, None), vi("yh", F, None), vi("yc", F, None)],
                   {"hidden_size": hid, "direction": direction}, inits=[const("w", w), const("r", rr), const("b", b)],
                   in_names=["x", "w", "r", "b"]),
            {"x": xs})
        for lbr in (0, 1):
            w = (r.standard_normal((dirs, 3 * hid, inp)) * 0.4).astype(np.float32)
            rr = (r.standard_normal((dirs, 3 * hid, hid)) * 0.4).astype(np.float32)
            b = (r.standard_normal((dirs, 6 * hid)) * 0.1).astype(np.float32)
            add(f"gru_{direction}_lbr{lbr}",
                single("GRU", [vi("x", F, [seq, batch, inp])], [vi("y", F, None), vi("yh", F, None)],
                       {"hidden_size": hid, "direction": direction, "linear_before_reset": lbr},
                       inits=[const("w", w), const("r", rr), const("b", b)], in_names=["x", "w", "r", "b"]),
                {"x": xs})
    w = (r.standard_normal((2, 4 * hid, inp)) * 0.4).astype(np.float32)
    rr = (r.standard_normal((2, 4 * hid, hid)) * 0.4).astype(np.float32)
    add("lstm_bidirectional_seq_lens_initial_state",
        single("LSTM", [vi("x", F, [seq, batch, inp]), vi("h0", F, [2, batch, hid]), vi("c0", F, [2, batch, hid])],
               [vi("y", F, None), vi("yh", F, None), vi("yc", F, None)], {"hidden_size": hid, "direction": "bidirectional"},
               inits=[const("w", w), const("r", rr), const("lens", np.array([5, 3, 1], np.int32))],
               in_names=["x", "w", "r", "", "lens", "h0", "c0"]),
        {"x": xs, "h0": r.standard_normal((2, batch, hid)).astype(np.float32), "c0": r.standard_normal((2, batch, hid)).astype(np.float32)})
    rw = (r.standard_normal((1, hid, inp)) * 0.4).astype(np.float32)
    rr1 = (r.standard_normal((1, hid, hid)) * 0.4).astype(np.float32)
    add("rnn_forward",
        single("RNN", [vi("x", F, [seq, batch, inp])], [vi("y", F, None), vi("yh", F, None)], {"hidden_size": hid},
               inits=[const("w", rw), const("r", rr1)], in_names=["x", "w", "r"]),
        {"x": xs})
    # Resize: the modes exports use.
    xi = r.standard_normal((1, 2, 3, 5)).astype(np.float32)
    for mode, ctm, nearest in (("nearest", "asymmetric", "floor"), ("nearest", "half_pixel", "round_prefer_floor"),
                               ("linear", "half_pixel", None), ("linear", "align_corners", None), ("linear", "pytorch_half_pixel", None)):
        attrs = {"mode": mode, "coordinate_transformation_mode": ctm}
        if nearest:
            attrs["nearest_mode"] = nearest
        add(f"resize_{mode}_{ctm}",
            single("Resize", [vi("x", F, [1, 2, 3, 5])], [vi("y", F, None)], attrs,
                   inits=[const("roi", np.array([], np.float32)), const("scales", np.array([1, 1, 2.0, 1.5], np.float32))],
                   in_names=["x", "roi", "scales"], opset=13),
            {"x": xi})
    # Nearest by sizes: downsampling one axis, upsampling the other (one pass over the last two axes),
    # and a resize that touches the channel axis too (the general path).
    add("resize_nearest_sizes_mixed",
        single("Resize", [vi("x", F, [1, 2, 3, 5])], [vi("y", F, None)], {"mode": "nearest"},
               inits=[const("sizes", np.array([1, 2, 7, 2], np.int64))], in_names=["x", "", "", "sizes"], opset=13),
        {"x": xi})
    add("resize_nearest_channels",
        single("Resize", [vi("x", F, [1, 2, 3, 5])], [vi("y", F, None)], {"mode": "nearest", "nearest_mode": "ceil"},
               inits=[const("roi", np.array([], np.float32)), const("scales", np.array([1, 2.0, 1, 2.0], np.float32))],
               in_names=["x", "roi", "scales"], opset=13),
        {"x": xi})
    add("resize_sizes_linear",
        single("Resize", [vi("x", F, [1, 2, 3, 5])], [vi("y", F, None)], {"mode": "linear"},
               inits=[const("sizes", np.array([1, 2, 7, 4], np.int64))], in_names=["x", "", "", "sizes"], opset=13),
        {"x": xi})
    # Shapes computed at run time, as exporters write them.
    add("shape_gather_concat_reshape",
        make_model([
            helper.make_node("Shape", ["x"], ["s"]),
            helper.make_node("Gather", ["s", "i0"], ["d0"], axis=0),
            helper.make_node("Unsqueeze", ["d0", "ax0"], ["d0u"]),
            helper.make_node("Concat", ["d0u", "minus1"], ["shape"], axis=0),
            helper.make_node("Reshape", ["x", "shape"], ["y"]),
        ], [vi("x", F, [3, 4, 5])], [vi("y", F, [3, 20])],
            [const("i0", np.array(0, np.int64)), const("ax0", np.array([0], np.int64)), const("minus1", np.array([-1], np.int64))], opset=13),
        {"x": r.standard_normal((3, 4, 5)).astype(np.float32)})
    add("gather_negative_indices",
        single("Gather", [vi("x", F, [5, 3])], [vi("y", F, [2, 2, 3])], {"axis": 0}, inits=[const("i", np.array([[-1, 0], [2, -5]], np.int64))],
               in_names=["x", "i"]),
        {"x": r.standard_normal((5, 3)).astype(np.float32)})
    add("gather_runtime_indices_axis1",
        single("Gather", [vi("x", F, [2, 6, 3]), vi("i", I64, [4])], [vi("y", F, [2, 4, 3])], {"axis": 1}),
        {"x": r.standard_normal((2, 6, 3)).astype(np.float32), "i": np.array([5, -1, 0, 2], np.int64)})
    add("slice_negative_steps",
        single("Slice", [vi("x", F, [6, 7])], [vi("y", F, None)],
               inits=[const("s", np.array([-1, 1], np.int64)), const("e", np.array([-100, 7], np.int64)),
                      const("a", np.array([0, 1], np.int64)), const("st", np.array([-2, 3], np.int64))],
               in_names=["x", "s", "e", "a", "st"]),
        {"x": r.standard_normal((6, 7)).astype(np.float32)})
    add("slice_attrs_opset9",
        single("Slice", [vi("x", F, [6, 7])], [vi("y", F, None)], {"starts": [1, -3], "ends": [1000, -1], "axes": [0, 1]}, opset=9),
        {"x": r.standard_normal((6, 7)).astype(np.float32)})
    add("split_input_sizes",
        single("Split", [vi("x", F, [2, 7])], [vi("a", F, None), vi("b", F, None)], {"axis": 1},
               inits=[const("sp", np.array([3, 4], np.int64))], in_names=["x", "sp"], opset=13),
        {"x": r.standard_normal((2, 7)).astype(np.float32)})
    add("split_attr_opset11",
        single("Split", [vi("x", F, [6, 2])], [vi("a", F, None), vi("b", F, None), vi("c", F, None)], {"axis": 0, "split": [1, 2, 3]}, opset=11),
        {"x": r.standard_normal((6, 2)).astype(np.float32)})
    add("pad_reflect",
        single("Pad", [vi("x", F, [2, 5])], [vi("y", F, None)], {"mode": "reflect"}, inits=[const("p", np.array([0, 2, 0, 3], np.int64))],
               in_names=["x", "p"]),
        {"x": r.standard_normal((2, 5)).astype(np.float32)})
    add("pad_constant_value",
        single("Pad", [vi("x", F, [2, 5])], [vi("y", F, None)], inits=[const("p", np.array([1, 0, 0, 2], np.int64)), const("v", np.array(1.5, np.float32))],
               in_names=["x", "p", "v"]),
        {"x": r.standard_normal((2, 5)).astype(np.float32)})
    add("pad_edge_opset2",
        single("Pad", [vi("x", F, [2, 5])], [vi("y", F, None)], {"mode": "edge", "pads": [1, 1, 1, 1]}, opset=10),
        {"x": r.standard_normal((2, 5)).astype(np.float32)})
    add("where_equal_cast",
        make_model([
            helper.make_node("Equal", ["a", "b"], ["eq"]),
            helper.make_node("Where", ["eq", "x", "zero"], ["w"]),
            helper.make_node("Cast", ["eq"], ["eqf"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["w", "eqf"], ["y"]),
        ], [vi("a", I64, [4, 3]), vi("b", I64, [3]), vi("x", F, [4, 3])], [vi("y", F, [4, 3])], [const("zero", np.array(0, np.float32))]),
        {"a": r.integers(0, 3, (4, 3)).astype(np.int64), "b": r.integers(0, 3, 3).astype(np.int64), "x": r.standard_normal((4, 3)).astype(np.float32)})
    add("cast_float_to_int_truncates",
        single("Cast", [vi("x", F, [6])], [vi("y", I32, [6])], {"to": TensorProto.INT32}),
        {"x": np.array([1.7, -1.7, 2.5, -2.5, 0.2, 100.9], np.float32)})
    add("erf_gelu",
        make_model([
            helper.make_node("Div", ["x", "sqrt2"], ["d"]),
            helper.make_node("Erf", ["d"], ["e"]),
            helper.make_node("Add", ["e", "one"], ["a"]),
            helper.make_node("Mul", ["x", "a"], ["m"]),
            helper.make_node("Mul", ["m", "half"], ["y"]),
        ], [vi("x", F, [3, 8])], [vi("y", F, [3, 8])],
            [const("sqrt2", np.array(np.sqrt(2), np.float32)), const("one", np.array(1, np.float32)), const("half", np.array(0.5, np.float32))]),
        {"x": r.standard_normal((3, 8)).astype(np.float32)})
    add("layernormalization",
        single("LayerNormalization", [vi("x", F, [2, 3, 8])], [vi("y", F, [2, 3, 8])], {"axis": -1, "epsilon": 1e-5},
               inits=[const("g", r.standard_normal(8).astype(np.float32)), const("b", r.standard_normal(8).astype(np.float32))],
               in_names=["x", "g", "b"]),
        {"x": r.standard_normal((2, 3, 8)).astype(np.float32)})
    add("batchnorm",
        single("BatchNormalization", [vi("x", F, [2, 3, 4, 4])], [vi("y", F, [2, 3, 4, 4])], {"epsilon": 1e-3},
               inits=[const("s", r.random(3).astype(np.float32) + 0.5), const("b", r.standard_normal(3).astype(np.float32)),
                      const("m", r.standard_normal(3).astype(np.float32)), const("v", r.random(3).astype(np.float32) + 0.5)],
               in_names=["x", "s", "b", "m", "v"]),
        {"x": r.standard_normal((2, 3, 4, 4)).astype(np.float32)})
    add("gemm_transb_alpha_beta",
        single("Gemm", [vi("a", F, [3, 5])], [vi("y", F, [3, 4])], {"transB": 1, "alpha": 0.5, "beta": 2.0},
               inits=[const("b", r.standard_normal((4, 5)).astype(np.float32)), const("c", r.standard_normal(4).astype(np.float32))],
               in_names=["a", "b", "c"]),
        {"a": r.standard_normal((3, 5)).astype(np.float32)})
    add("matmul_batched_broadcast",
        single("MatMul", [vi("a", F, [2, 1, 3, 4]), vi("b", F, [3, 4, 5])], [vi("y", F, [2, 3, 3, 5])]),
        {"a": r.standard_normal((2, 1, 3, 4)).astype(np.float32), "b": r.standard_normal((3, 4, 5)).astype(np.float32)})
    add("matmul_vector",
        single("MatMul", [vi("a", F, [4]), vi("b", F, [2, 4, 3])], [vi("y", F, [2, 3])]),
        {"a": r.standard_normal(4).astype(np.float32), "b": r.standard_normal((2, 4, 3)).astype(np.float32)})
    add("pow_negative_base",
        single("Pow", [vi("x", F, [6])], [vi("y", F, [6])], inits=[const("e", np.array(3.0, np.float32))], in_names=["x", "e"]),
        {"x": np.array([-2, -1.5, 0, 0.5, 1, 2], np.float32)})
    add("pow_runtime_exponent",
        single("Pow", [vi("x", F, [6]), vi("e", F, [6])], [vi("y", F, [6])]),
        {"x": np.array([-2, -1.5, 0.1, 0.5, 1, 2], np.float32), "e": np.array([2, 3, 0.5, -1, 4, 1.5], np.float32)})
    add("clip_inputs_and_round",
        make_model([helper.make_node("Clip", ["x", "lo", "hi"], ["c"]), helper.make_node("Round", ["c"], ["y"])],
                   [vi("x", F, [8])], [vi("y", F, [8])], [const("lo", np.array(-2.5, np.float32)), const("hi", np.array(2.5, np.float32))]),
        {"x": np.array([-3.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5], np.float32)})
    add("expand_tile_range",
        make_model([
            helper.make_node("Range", ["s", "l", "d"], ["rg"]),
            helper.make_node("Expand", ["rg", "shape"], ["ex"]),
            helper.make_node("Tile", ["x", "reps"], ["t"]),
            helper.make_node("Cast", ["ex"], ["exf"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["t", "exf"], ["y"]),
        ], [vi("x", F, [2, 2])], [vi("y", F, [4, 2])],
            [const("s", np.array(0, np.int64)), const("l", np.array(2, np.int64)), const("d", np.array(1, np.int64)),
             const("shape", np.array([4, 1], np.int64)), const("reps", np.array([2, 1], np.int64))]),
        {"x": r.standard_normal((2, 2)).astype(np.float32)})
    add("argmax_keepdims0",
        single("ArgMax", [vi("x", F, [3, 5])], [vi("y", I64, [3])], {"axis": 1, "keepdims": 0}),
        {"x": r.standard_normal((3, 5)).astype(np.float32)})
    add("transpose_flatten_concat",
        make_model([
            helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
            helper.make_node("Flatten", ["t"], ["f"], axis=1),
            helper.make_node("Concat", ["f", "f"], ["y"], axis=-1),
        ], [vi("x", F, [2, 3, 4])], [vi("y", F, [2, 24])]),
        {"x": r.standard_normal((2, 3, 4)).astype(np.float32)})
    add("constantofshape_sign_neg",
        make_model([
            helper.make_node("Shape", ["x"], ["s"]),
            helper.make_node("ConstantOfShape", ["s"], ["c"], value=helper.make_tensor("v", F, [1], [2.0])),
            helper.make_node("Sign", ["x"], ["sg"]),
            helper.make_node("Neg", ["sg"], ["n"]),
            helper.make_node("Mul", ["c", "n"], ["y"]),
        ], [vi("x", F, [3, 4])], [vi("y", F, [3, 4])]),
        {"x": r.standard_normal((3, 4)).astype(np.float32)})
    add("bool_logic",
        make_model([
            helper.make_node("Greater", ["a", "zero"], ["p"]),
            helper.make_node("Less", ["b", "zero"], ["q"]),
            helper.make_node("And", ["p", "q"], ["and"]),
            helper.make_node("Or", ["p", "q"], ["or"]),
            helper.make_node("Not", ["and"], ["y0"]),
            helper.make_node("Xor", ["or", "p"], ["y1"]),
        ], [vi("a", F, [6]), vi("b", F, [6])], [vi("y0", TensorProto.BOOL, [6]), vi("y1", TensorProto.BOOL, [6])],
            [const("zero", np.array(0, np.float32))]),
        {"a": r.standard_normal(6).astype(np.float32), "b": r.standard_normal(6).astype(np.float32)})
    out.extend(control_flow_cases(r))
    return out


def _if_model():
    """y = If(c) then x + a (a: an initializer of the main graph) else x * relu(x) (relu(x): a value
    computed by the main graph), and z = a nested If in the else branch choosing on Not(c)."""
    a = const("a", np.arange(6, dtype=np.float32).reshape(2, 3))
    then_g = helper.make_graph([helper.make_node("Add", ["x", "a"], ["t_out"]),
                                helper.make_node("Identity", ["x"], ["t_z"])],
                               "then", [], [vi("t_out", F, [2, 3]), vi("t_z", F, [2, 3])])
    inner_then = helper.make_graph([helper.make_node("Neg", ["x"], ["it"])], "inner_then", [], [vi("it", F, [2, 3])])
    inner_else = helper.make_graph([helper.make_node("Sub", ["x", "a"], ["ie"])], "inner_else", [], [vi("ie", F, [2, 3])])
    else_g = helper.make_graph([helper.make_node("Mul", ["x", "r"], ["e_out"]),
                                helper.make_node("Not", ["c"], ["nc"]),
                                helper.make_node("If", ["nc"], ["e_z"], then_branch=inner_then, else_branch=inner_else)],
                               "else", [], [vi("e_out", F, [2, 3]), vi("e_z", F, [2, 3])])
    return make_model([helper.make_node("Relu", ["x"], ["r"]),
                       helper.make_node("If", ["c"], ["y", "z"], then_branch=then_g, else_branch=else_g)],
                      [vi("x", F, [2, 3]), vi("c", TensorProto.BOOL, [1])],
                      [vi("y", F, [2, 3]), vi("z", F, [2, 3])], [a], opset=17)


def _loop_model():
    """Loop with a trip count and a condition: s += x each iteration (x read from the main graph),
    scan output s * i, stopping when sum(s) reaches 100 or after `m` iterations."""
    body = helper.make_graph(
        [helper.make_node("Add", ["s_in", "x"], ["s_out"]),
         helper.make_node("Cast", ["i"], ["i_f"], to=F),
         helper.make_node("Mul", ["s_out", "i_f"], ["scan"]),
         helper.make_node("ReduceSum", ["s_out"], ["total"], keepdims=0),
         helper.make_node("Less", ["total", "limit"], ["cond_out"])],
        "body",
        [vi("i", I64, []), vi("cond_in", TensorProto.BOOL, []), vi("s_in", F, [3])],
        [vi("cond_out", TensorProto.BOOL, []), vi("s_out", F, [3]), vi("scan", F, [3])],
        [const("limit", np.array(100, np.float32))])
    return make_model([helper.make_node("Loop", ["m", "keep", "s0"], ["s", "scans"], body=body)],
                      [vi("x", F, [3]), vi("m", I64, [1])], [vi("s", F, [3]), vi("scans", F, ["n", 3])],
                      [const("keep", np.array(True)), const("s0", np.zeros(3, np.float32))], opset=17)


def control_flow_cases(r):
    x = r.standard_normal((2, 3)).astype(np.float32)
    return [
        ("if_then", _if_model(), {"x": x, "c": np.array([True])}),
        ("if_else_nested", _if_model(), {"x": x, "c": np.array([False])}),
        # Small steps: the trip count ends it (5 iterations).
        ("loop_trip_count", _loop_model(), {"x": r.standard_normal(3).astype(np.float32), "m": np.array([5], np.int64)}),
        # Steps of 30: the condition ends it after the 4th of at most 10.
        ("loop_condition", _loop_model(), {"x": np.full(3, 10, np.float32), "m": np.array([10], np.int64)}),
        ("loop_zero_trips", _loop_model(), {"x": np.ones(3, np.float32), "m": np.array([0], np.int64)}),
    ]


def unsupported_model():
    """A graph with an operator the candle executor does not implement."""
    return single("Einsum", [vi("a", F, [2, 3]), vi("b", F, [3, 4])], [vi("y", F, [2, 4])], {"equation": "ij,jk->ik"}, opset=13)


def unsupported_in_branch_model():
    """An If whose else branch uses an operator the candle executor does not implement."""
    then_g = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["t"])], "then", [], [vi("t", F, [2, 4])])
    else_g = helper.make_graph([helper.make_node("Einsum", ["a", "b"], ["e"], equation="ij,jk->ik")], "else", [],
                               [vi("e", F, [2, 4])])
    return make_model([helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)],
                      [vi("a", F, [2, 3]), vi("b", F, [3, 4]), vi("c", TensorProto.BOOL, [1])], [vi("y", F, [2, 4])],
                      opset=17)
