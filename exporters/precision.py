"""Graph pass: run an fp32 ONNX model in fp16 or bf16, keeping chosen ops (normalizations, softmax) in fp32.

TensorRT 11 and TensorRT-RTX build strongly typed networks only: a tensor's type is what the ONNX graph says, and
there is no builder flag that lowers precision. So reduced precision is a property of the graph, made here:

- every node computes in the low type, except the ops in ``keep_fp32`` and ops that ONNX defines for fp32 only
  (``Range``; ``Resize``'s roi/scales inputs);
- a ``Cast`` inserted wherever a value crosses between the two (one per value and type, shared by its consumers);
- float initializers and ``Constant`` nodes are stored in the type their consumers compute in;
- the graph's inputs and outputs stay float32, so callers feed and read the same tensors as before;
- a model-local function called by a low-precision node (``MSDeformAttn``'s fallback body) gets its float
  constants converted, so the body computes in the low type too.
"""

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

LOW_PRECISIONS = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}
# Normalizations accumulate variances and softmax exponentiates: both lose too much below fp32 (and GroupNorm is
# exported as InstanceNormalization).
DEFAULT_KEEP_FP32 = ("LayerNormalization", "GroupNormalization", "InstanceNormalization", "Softmax")
# Ops whose float inputs ONNX defines for fp32 (or double) only.
_FP32_ONLY_OPS = {"Range"}
_FP32_ONLY_INPUTS = {"Resize": {1, 2}, "Upsample": {1}}
# Ops whose inputs are read for their shape or type only, or converted anyway: they take any precision as is.
_TYPE_AGNOSTIC_OPS = {"Shape", "Size", "Cast", "CastLike"}
_FLOAT = TensorProto.FLOAT
_NUMPY_TYPES = {TensorProto.FLOAT16: np.float16, TensorProto.BFLOAT16: ml_dtypes.bfloat16}


def _value_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.output, *graph.value_info]}
    types.update({init.name: init.data_type for init in graph.initializer})
    for node in graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    types[node.output[0]] = attribute.t.data_type
    return types


def _convert_tensor(tensor: TensorProto, data_type: int) -> TensorProto:
    # ml_dtypes (an onnx dependency) gives numpy a bfloat16, rounded to nearest even like float16.
    array = numpy_helper.to_array(tensor).astype(np.float32).astype(_NUMPY_TYPES[data_type])
    return numpy_helper.from_array(array, tensor.name)


def _convert_function_constants(function: onnx.FunctionProto, data_type: int) -> None:
    for node in function.node:
        for attribute in node.attribute:
            if node.op_type == "Constant" and attribute.name == "value" and attribute.t.data_type == _FLOAT:
                attribute.t.CopyFrom(_convert_tensor(attribute.t, data_type))
            elif node.op_type == "Cast" and attribute.name == "to" and attribute.i == _FLOAT:
                attribute.i = data_type


def convert_precision(
    model: onnx.ModelProto, precision: str, keep_fp32: tuple[str, ...] = DEFAULT_KEEP_FP32
) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Return a copy of ``model`` computing in ``precision`` ("fp16" or "bf16"), and how many nodes of each
    op type stayed in fp32. Graph inputs and outputs keep their float32 type and names."""
    if precision not in LOW_PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(LOW_PRECISIONS)}, not {precision!r}")
    low = LOW_PRECISIONS[precision]
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    is_float = {name for name, elem in _value_types(model).items() if elem == _FLOAT}
    node_precision, produced, wanted = _plan_precisions(graph, is_float, low, keep_fp32)
    _store_constants(graph, is_float, low, produced, wanted)
    # Graph outputs stay float32: a low-precision producer writes a renamed value, cast back under the old name.
    output_renames = {}
    for output in graph.output:
        if produced.get(output.name) == low:
            output_renames[output.name] = f"{output.name}__{precision}"
    kept = _kept_in_fp32(graph, node_precision)
    rewritten, functions_used_low = _with_casts(graph, is_float, precision, node_precision, produced, output_renames)
    del graph.node[:]
    graph.node.extend(rewritten)
    # Intermediate type annotations are stale now; TensorRT and onnxruntime infer them again.
    del graph.value_info[:]
    for function in model.functions:
        if (function.domain, function.name) in functions_used_low:
            _convert_function_constants(function, low)
    return model, kept


def _computes_in_fp32(node: onnx.NodeProto, keep_fp32: tuple[str, ...]) -> bool:
    if node.op_type in keep_fp32 or node.op_type in _FP32_ONLY_OPS:
        return True
    if node.op_type == "Cast":
        return helper.get_attribute_value(next(a for a in node.attribute if a.name == "to")) == _FLOAT
    return node.op_type == "ConstantOfShape"


def _plan_precisions(
    graph: onnx.GraphProto, is_float: set[str], low: int, keep_fp32: tuple[str, ...]
) -> tuple[dict[int, int], dict[str, int], dict[str, set[int]]]:
    """The type each node computes in (by index), each float value is produced in, and each float input is wanted
    in by its consumers."""
    produced = {value.name: _FLOAT for value in graph.input}
    wanted: dict[str, set[int]] = {}
    node_precision = {}
    for index, node in enumerate(graph.node):
        precision_here = _FLOAT if _computes_in_fp32(node, keep_fp32) else low
        node_precision[index] = precision_here
        for output in node.output:
            if output in is_float:
                produced[output] = precision_here
        if node.op_type in _TYPE_AGNOSTIC_OPS:
            continue
        fp32_positions = _FP32_ONLY_INPUTS.get(node.op_type, set())
        for position, name in enumerate(node.input):
            if name in is_float:
                wanted.setdefault(name, set()).add(_FLOAT if position in fp32_positions else precision_here)
    return node_precision, produced, wanted


def _store_constants(
    graph: onnx.GraphProto, is_float: set[str], low: int, produced: dict[str, int], wanted: dict[str, set[int]]
) -> None:
    """Initializers and Constant nodes: stored in the type their consumers want when they agree, else fp32
    (``produced`` records which)."""
    for initializer in graph.initializer:
        if initializer.data_type == _FLOAT and wanted.get(initializer.name) == {low}:
            initializer.CopyFrom(_convert_tensor(initializer, low))
            produced[initializer.name] = low
        elif initializer.data_type == _FLOAT:
            produced[initializer.name] = _FLOAT
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] in is_float:
            stored = low if wanted.get(node.output[0]) == {low} else _FLOAT
            if stored == low:
                attribute = next(a for a in node.attribute if a.name == "value")
                attribute.t.CopyFrom(_convert_tensor(attribute.t, low))
            produced[node.output[0]] = stored


def _kept_in_fp32(graph: onnx.GraphProto, node_precision: dict[int, int]) -> dict[str, int]:
    """Op type -> nodes computing in fp32 (Casts and ConstantOfShape left out: they compute nothing to keep)."""
    kept: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        if node_precision[index] == _FLOAT and node.op_type not in ("Cast", "ConstantOfShape"):
            kept[node.op_type] = kept.get(node.op_type, 0) + 1
    return kept


class _Casts:
    """Casts where a value crosses precisions, created once per (value, type) and shared by its consumers."""

    def __init__(self, precision: str):
        self.precision = precision
        self.names: dict[tuple[str, int], str] = {}
        self.pending: list[onnx.NodeProto] = []

    def of(self, name: str, data_type: int) -> str:
        """The value ``name`` in ``data_type``: a new Cast's output the first time (pending until ``take``)."""
        key = (name, data_type)
        if key not in self.names:
            suffix = "fp32" if data_type == _FLOAT else self.precision
            self.names[key] = f"{name}__{suffix}"
            self.pending.append(
                helper.make_node("Cast", [name], [self.names[key]], name=f"cast_{name}__{suffix}", to=data_type)
            )
        return self.names[key]

    def take(self) -> list[onnx.NodeProto]:
        pending, self.pending = self.pending, []
        return pending


def _with_casts(
    graph: onnx.GraphProto,
    is_float: set[str],
    precision: str,
    node_precision: dict[int, int],
    produced: dict[str, int],
    output_renames: dict[str, str],
) -> tuple[list[onnx.NodeProto], set[tuple[str, str]]]:
    """The graph's nodes with their float inputs in the type each computes in (each Cast just before its first
    consumer) and the graph outputs cast back to float32; and the (domain, op type) of every low-precision node."""
    casts = _Casts(precision)
    rewritten: list[onnx.NodeProto] = []
    functions_used_low = set()
    for index, node in enumerate(graph.node):
        for position, output in enumerate(node.output):
            if output in output_renames:
                node.output[position] = output_renames[output]
        if node.op_type not in _TYPE_AGNOSTIC_OPS:
            fp32_positions = _FP32_ONLY_INPUTS.get(node.op_type, set())
            for position, name in enumerate(node.input):
                if name not in is_float:
                    continue
                target = _FLOAT if position in fp32_positions else node_precision[index]
                source = output_renames.get(name, name)
                node.input[position] = casts.of(source, target) if produced.get(name) != target else source
        else:
            node.input[:] = [output_renames.get(name, name) for name in node.input]
        if node_precision[index] != _FLOAT:
            functions_used_low.add((node.domain, node.op_type))
        rewritten.extend(casts.take())
        rewritten.append(node)
    for original, renamed in output_renames.items():
        rewritten.append(helper.make_node("Cast", [renamed], [original], name=f"cast_{original}__fp32", to=_FLOAT))
    return rewritten, functions_used_low
