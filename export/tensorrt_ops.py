"""Which ONNX operators TensorRT's ONNX parser accepts: the check every TensorRT-bound graph must pass.

Source: onnx/onnx-tensorrt, docs/operators.md, release 10.1-GA (commit 96e7811): "TensorRT 10.0
supports operators in the inclusive range of opset 9 to opset 20". The names below are the rows
marked supported there. JetPack 6 ships TensorRT 10.3, whose parser is a superset of 10.1's; we
check against 10.1 as the conservative table. Restrictions that matter to our graphs are listed
in TENSORRT_RESTRICTIONS and checked where they can be from the graph alone.
"""

from __future__ import annotations

TENSORRT_TABLE_SOURCE = "onnx/onnx-tensorrt docs/operators.md @ 10.1-GA (96e7811)"
TENSORRT_MAX_OPSET = 20
TENSORRT_MIN_OPSET = 9

TENSORRT_SUPPORTED_OPS = frozenset({
    "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh", "AveragePool",
    "BatchNormalization", "Cast", "CastLike", "Ceil", "Celu", "Clip", "Concat", "Constant", "ConstantOfShape",
    "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum", "DeformConv", "DepthToSpace", "DequantizeLinear", "Div",
    "Dropout", "Einsum", "Elu", "Equal", "Erf", "Exp", "Expand", "EyeLike", "Flatten", "Floor", "Gather",
    "GatherElements", "GatherND", "Gelu", "Gemm", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool",
    "Greater", "GreaterOrEqual", "GridSample", "GroupNormalization", "GRU", "HardSigmoid", "HardSwish",
    "Hardmax", "Identity", "If", "ImageScaler", "InstanceNormalization", "IsInf", "IsNaN",
    "LayerNormalization", "LeakyRelu", "Less", "LessOrEqual", "Log", "LogSoftmax", "Loop", "LRN", "LSTM",
    "LpNormalization", "LpPool", "MatMul", "Max", "MaxPool", "Mean", "MeanVarianceNormalization", "Min",
    "Mish", "Mod", "Mul", "Neg", "NonMaxSuppression", "NonZero", "Not", "OneHot", "Or", "Pad",
    "ParametricSoftplus", "Pow", "PRelu", "QuantizeLinear", "RandomNormal", "RandomNormalLike",
    "RandomUniform", "RandomUniformLike", "Range", "Reciprocal", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare",
    "Relu", "Reshape", "Resize", "ReverseSequence", "RNN", "RoiAlign", "Round", "ScaledTanh", "Scan",
    "Scatter", "ScatterElements", "ScatterND", "Selu", "Shape", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh",
    "Size", "Slice", "Softmax", "Softplus", "Softsign", "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub",
    "Sum", "Tan", "Tanh", "ThresholdedRelu", "Tile", "TopK", "Transpose", "Trilu", "Unsqueeze", "Upsample",
    "Where", "Xor",
})

# op -> what the parser requires beyond the op itself (the subset relevant to rlivs graphs)
TENSORRT_RESTRICTIONS = {
    "Resize": "modes nearest/linear; no antialiasing",
    "ReduceMean": "axes must be an initializer (or attribute)",
    "Slice": "axes must be an initializer",
    "Squeeze": "axes must be an initializer",
    "Unsqueeze": "axes must be a constant tensor",
    "LayerNormalization": "only the first output Y",
}


def check_tensorrt_graph(path) -> list[str]:
    """Problems that would stop TensorRT 10's ONNX parser: ops outside the table, custom domains
    (e.g. onnxruntime contrib ops), an opset outside 9..20. Empty list = passes."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    problems = []
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx") and not TENSORRT_MIN_OPSET <= o.version <= TENSORRT_MAX_OPSET:
            problems.append(f"opset {o.version} outside TensorRT's {TENSORRT_MIN_OPSET}..{TENSORRT_MAX_OPSET}: "
                            f"export with --target tensorrt")
        elif o.domain not in ("", "ai.onnx"):
            problems.append(f"custom operator domain {o.domain!r} (not parsed by TensorRT)")
    seen = set()
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"node {node.name}: {node.domain}::{node.op_type} is not a standard ONNX op")
        elif node.op_type not in TENSORRT_SUPPORTED_OPS and node.op_type not in seen:
            seen.add(node.op_type)
            problems.append(f"{node.op_type} is not supported by TensorRT's ONNX parser ({TENSORRT_TABLE_SOURCE})")
        if node.op_type == "Resize":
            mode = next((a.s.decode() for a in node.attribute if a.name == "mode"), "nearest")
            aa = next((a.i for a in node.attribute if a.name == "antialias"), 0)
            if mode not in ("nearest", "linear") or aa:
                problems.append(f"node {node.name}: Resize mode {mode!r} antialias={aa} unsupported by TensorRT")
    return problems


def attention_patterns(path) -> dict:
    """Count the Softmax nodes by role. `fusable`: MatMul/Mul -> Add(mask) -> Softmax -> MatMul only,
    the multi-head attention pattern TensorRT's builder fuses; `probe`: Softmax rows that feed the probe
    output (their probabilities leave the graph, so they stay unfused); `other`: anything else."""
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    counts = {"fusable": 0, "probe": 0, "other": 0}
    for n in g.node:
        if n.op_type != "Softmax":
            continue
        src = producer.get(n.input[0])
        uses = consumers.get(n.output[0], [])
        if src is not None and src.op_type == "Add" and uses and all(u.op_type == "MatMul" for u in uses):
            counts["fusable"] += 1
        elif uses and any(u.op_type == "ReduceMean" for u in uses):
            counts["probe"] += 1
        else:
            counts["other"] += 1
    return counts
