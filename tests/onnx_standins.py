"""ONNX stand-ins for the eye detector's two networks, built with onnx's helper API (no weights to download).

They have the real networks' signatures, so :class:`timemachine.detect.OnnxAnimalDetector` runs them through
its real pre- and post-processing:

* :func:`box_standin` - YOLOX's: input [1, 3, S, S], output [1, N, 85] with N the anchors of the stride-8/16/32
  grids.  The output is a constant that the test chooses anchor by anchor (plus 0 x the input, so the input
  is used), so the decoded boxes can be computed by hand.
* :func:`keypoint_standin` - RTMPose's: input [1, 3, H, W], outputs simcc_x [1, K, W r] and simcc_y [1, K, H r].
  Keypoint 0 (left eye) follows the red channel, 1 (right eye) the green, 2 (nose) the blue: simcc_x of a
  channel is its maximum over rows, simcc_y its maximum over columns, each bin repeated r times (nearest).
  A photo with a pure red, green and blue dot is therefore "detected" at the dots; other keypoints score 0.
* :func:`heavy_box_standin`, :func:`heavy_keypoint_standin` - the same signatures with a stack of 3x3
  convolutions of about the real networks' multiply-accumulates (YOLOX-Tiny at 416: 6.45 GFLOPs as YOLOX
  counts them, i.e. ~3.2 G multiply-adds; RTMPose-m at 256x256: ~2.6 G), for timing only.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
STRIDES = (8, 16, 32)


def anchors(size: int) -> int:
    return sum((size // s) ** 2 for s in STRIDES)


def anchor_index(size: int, stride: int, gx: int, gy: int) -> int:
    """Row of the output that belongs to cell (gx, gy) of the ``stride`` grid (levels in order, row-major)."""
    offset = 0
    for s in STRIDES:
        n = size // s
        if s == stride:
            return offset + gy * n + gx
        offset += n * n
    raise ValueError(stride)


def _model(nodes, inputs, outputs, initializers) -> bytes:
    graph = helper.make_graph(nodes, "standin", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def box_standin(size: int, rows: dict[int, np.ndarray]) -> bytes:
    """YOLOX-shaped model whose output rows are ``rows`` (anchor index -> 85 values) and zeros elsewhere."""
    table = np.zeros((1, anchors(size), 85), np.float32)
    for index, values in rows.items():
        table[0, index] = values
    nodes = [
        helper.make_node("ReduceSum", ["images"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["table", "nothing"], ["output"]),
    ]
    inits = [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.float32(0), "zero")]
    return _model(nodes, [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
                  [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, anchors(size), 85])], inits)


def yolox_row(dx: float, dy: float, w_cells: float, h_cells: float, objectness: float, class_id: int,
              probability: float) -> np.ndarray:
    """One raw YOLOX output row: offsets within the cell, size in cells (stored as log), sigmoid-ed scores."""
    row = np.zeros(85, np.float32)
    row[:5] = [dx, dy, np.log(w_cells), np.log(h_cells), objectness]
    row[5 + class_id] = probability
    return row


def keypoint_standin(height: int = 256, width: int = 256, keypoints: int = 17, split: int = 2) -> bytes:
    """RTMPose-shaped model that finds the red (left eye), green (right eye) and blue (nose) maxima."""
    pick = np.zeros((3, keypoints), np.float32)
    pick[0, 0] = pick[1, 1] = pick[2, 2] = 1
    scales = np.array([1, 1, split], np.float32)
    nodes = []
    for axis, reduce_over, name in (("x", 2, "simcc_x"), ("y", 3, "simcc_y")):
        nodes += [
            helper.make_node("ReduceMax", ["input"], [f"profile_{axis}"], axes=[reduce_over], keepdims=0),
            helper.make_node("Resize", [f"profile_{axis}", "", "scales"], [f"fine_{axis}"], mode="nearest",
                             coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
            helper.make_node("Transpose", [f"fine_{axis}"], [f"bins_{axis}"], perm=[0, 2, 1]),
            helper.make_node("MatMul", [f"bins_{axis}", "pick"], [f"picked_{axis}"]),
            helper.make_node("Transpose", [f"picked_{axis}"], [name], perm=[0, 2, 1]),
        ]
    inits = [numpy_helper.from_array(pick, "pick"), numpy_helper.from_array(scales, "scales")]
    return _model(nodes, [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, height, width])],
                  [helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, [1, keypoints, width * split]),
                   helper.make_tensor_value_info("simcc_y", TensorProto.FLOAT, [1, keypoints, height * split])],
                  inits)


def _conv_stack(x: str, channels: list[tuple[int, int, int]], prefix: str, rng) -> tuple[list, list, str, int]:
    """3x3 convolutions (in, out, stride) with ReLU; returns nodes, initialisers, output name, out channels."""
    nodes, inits = [], []
    for i, (cin, cout, stride) in enumerate(channels):
        w = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2 / (9 * cin))).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"{prefix}w{i}"))
        nodes += [helper.make_node("Conv", [x, f"{prefix}w{i}"], [f"{prefix}c{i}"], pads=[1, 1, 1, 1],
                                   strides=[stride, stride]),
                  helper.make_node("Relu", [f"{prefix}c{i}"], [f"{prefix}r{i}"])]
        x = f"{prefix}r{i}"
    return nodes, inits, x, channels[-1][1]


def heavy_box_standin(size: int = 416, seed: int = 0) -> bytes:
    """YOLOX-Tiny's signature at ``size`` and about its multiply-adds (~3.2 G at 416), random weights."""
    rng = np.random.default_rng(seed)
    layers = [(3, 32, 2), (32, 64, 2), (64, 96, 2)] + [(96, 96, 1)] * 12  # ends at stride 8
    nodes, inits, x, c = _conv_stack("images", layers, "b", rng)
    outs = []
    for level, stride in enumerate(STRIDES):
        head = f"head{level}"
        w = (rng.standard_normal((85, c, 1, 1)) * 0.01).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"{head}w"))
        step = stride // 8
        nodes += [helper.make_node("MaxPool", [x], [f"{head}p"], kernel_shape=[step, step], strides=[step, step])
                  if step > 1 else helper.make_node("Identity", [x], [f"{head}p"]),
                  helper.make_node("Conv", [f"{head}p", f"{head}w"], [f"{head}o"]),
                  helper.make_node("Reshape", [f"{head}o", "flat"], [f"{head}f"])]
        outs.append(f"{head}f")
    inits.append(numpy_helper.from_array(np.array([1, 85, -1], np.int64), "flat"))
    # The head's values x 0 - 4 before the sigmoid: every score is 0.018^2, so no box passes and the detector
    # searches the whole photo once (the cost of one animal), not keypoints for whatever random boxes pass.
    inits += [numpy_helper.from_array(np.float32(0.0), "mute"), numpy_helper.from_array(np.float32(-4.0), "shy")]
    nodes += [helper.make_node("Concat", outs, ["joined"], axis=2),
              helper.make_node("Mul", ["joined", "mute"], ["muted"]),
              helper.make_node("Add", ["muted", "shy"], ["biased"]),
              helper.make_node("Sigmoid", ["biased"], ["squashed"]),
              helper.make_node("Transpose", ["squashed"], ["output"], perm=[0, 2, 1])]
    return _model(nodes, [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
                  [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, anchors(size), 85])], inits)


def heavy_keypoint_standin(size: int = 256, keypoints: int = 17, split: int = 2, seed: int = 0) -> bytes:
    """RTMPose-m's signature at ``size`` x ``size`` and about its multiply-adds (~2.6 G), random weights."""
    rng = np.random.default_rng(seed)
    layers = [(3, 32, 2), (32, 64, 2), (64, 128, 2)] + [(128, 128, 1)] * 9 + [(128, 256, 2)] + [(256, 256, 1)] * 7
    nodes, inits, x, c = _conv_stack("input", layers, "k", rng)          # [1, 256, size/16, size/16]
    cells = (size // 16) ** 2
    for axis, name in (("x", "simcc_x"), ("y", "simcc_y")):
        w1 = (rng.standard_normal((keypoints, c, 1, 1)) * 0.01).astype(np.float32)
        w2 = (rng.standard_normal((cells, size * split)) * 0.01).astype(np.float32)
        inits += [numpy_helper.from_array(w1, f"{axis}w1"), numpy_helper.from_array(w2, f"{axis}w2")]
        nodes += [helper.make_node("Conv", [x, f"{axis}w1"], [f"{axis}k"]),
                  helper.make_node("Reshape", [f"{axis}k", "flatk"], [f"{axis}f"]),
                  helper.make_node("MatMul", [f"{axis}f", f"{axis}w2"], [name])]
    inits.append(numpy_helper.from_array(np.array([1, keypoints, -1], np.int64), "flatk"))
    return _model(nodes, [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
                  [helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, [1, keypoints, size * split]),
                   helper.make_tensor_value_info("simcc_y", TensorProto.FLOAT, [1, keypoints, size * split])],
                  inits)


def macs(model: bytes) -> float:
    """Multiply-adds of the Conv and MatMul nodes of a stand-in (shapes inferred by onnx)."""
    proto = onnx.shape_inference.infer_shapes(onnx.load_from_string(model))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(proto.graph.value_info) + list(proto.graph.output) + list(proto.graph.input)}
    weights = {i.name: numpy_helper.to_array(i).shape for i in proto.graph.initializer}
    total = 0.0
    for node in proto.graph.node:
        if node.op_type == "Conv":
            out = shapes[node.output[0]]
            w = weights[node.input[1]]
            total += np.prod(out) * np.prod(w[1:])
        elif node.op_type == "MatMul" and node.input[1] in weights:
            out = shapes[node.output[0]]
            total += np.prod(out) * weights[node.input[1]][0]
    return float(total)
