"""Reduced-precision copies of an export: INT8 explicit quantization (Q/DQ nodes) through NVIDIA ModelOpt, or the
fp16/bf16 graph of ``exporters.precision``, with the export's inputs, outputs and metadata kept.

TensorRT 11 and TensorRT-RTX build strongly typed networks, so INT8 is a property of the graph as fp16 is: ModelOpt
calibrates activation ranges on images (ONNX Runtime, CPU) and writes QuantizeLinear/DequantizeLinear pairs that
TensorRT fuses into INT8 kernels. Three things about ModelOpt 0.47 shape the code here:

- It decides that a node is a custom op in two places. ``quantize`` parses the graph with the ``tensorrt`` Python
  package and counts plugin layers (none here: without ``tensorrt`` nothing is custom, and with it TensorRT inlines
  ``MSDeformAttn``'s local function, as no plugin of that name is registered in ModelOpt's check). Its fp16/bf16
  "AutoCast" step calls every op without an ONNX schema custom and asks TensorRT for its types, which fails without
  TensorRT. So ModelOpt runs with ``high_precision_dtype="fp32"`` (no AutoCast), ONNX Runtime calibrates through the
  MSDeformAttn function on the CPU, and an fp16 remainder comes from our own pass (``convert_precision``), which
  knows the function. The MSDeformAttn nodes stay as they are (TensorRT still binds them to our plugin), with no
  Q/DQ on their inputs: the deformable sampling stays float.
- INT8 Q/DQ needs opset 19. ModelOpt's opset upgrade (``onnx.version_converter``) drops model-local functions, so an
  opset-18 export is moved to 19 here first (see ``_at_least_opset_19``).
- It logs to stdout through its own handler, and ONNX Runtime's calibrator prints progress bars; both are captured
  and passed to our logger at debug level.

Calibration feeds one image at a time at the size the export's recipe gives it (aspect kept, so sizes differ):
ModelOpt's calibrator collects each sample on its own, and nothing of those sizes ends up in the graph (its inputs
keep their dynamic batch, height and width). The file is meant for TensorRT; to check it with ONNX Runtime on the
CPU, use ``reference_session``, which sidesteps two ONNX Runtime CPU kernels that compute Q/DQ graphs otherwise.
"""

import contextlib
import functools
import io
import json
import logging
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from detr_deploy import __version__, contract
from detr_deploy.errors import DetrDeployError
from detr_deploy.io import atomic_output, check_output_path
from detr_deploy.preprocessing import InputRecipe
from exporters.onnx import read_metadata, set_metadata
from exporters.precision import DEFAULT_KEEP_FP32, convert_precision

logger = logging.getLogger(__name__)

PRECISIONS = ("int8", "fp16", "bf16")
CALIBRATION_METHODS = ("entropy", "max")
HIGH_PRECISION_DTYPES = ("fp32", "fp16")
QDQ_MIN_OPSET = 19

# Parts of a DETR-family graph that can be kept out of INT8 (found by graph structure, so they are found in any
# export, whatever its node names). benchmarks/int8_keep_precision.py measures what each is worth.
KEEP_GROUPS = {
    "attention": "the two activation x activation MatMuls around each attention softmax (Q.K^T and softmax.V)",
    "layernorm": "each LayerNormalization and the residual Add feeding it",
    "sampling": "the Linear layers computing deformable attention's sampling offsets and attention weights",
    "box_head": "the box head: the MLP between the decoder's last LayerNormalization and pred_boxes' sigmoid",
    "class_head": "the class head: the Linear between the decoder's last LayerNormalization and pred_logits",
}
# Measured with benchmarks/int8_keep_precision.py (full-size detr_r50 and deformable_detr_r50, seeded random weights,
# 8 calibration / 6 held-out generated images at about 320x480; max |int8 - fp32| of logits / boxes):
#                     detr_r50          deformable_detr_r50
#   nothing kept      0.360 / 0.0062    0.311 / 0.0090
#   attention         0.065 / 0.0025    0.098 / 0.0036
#   + box_head        0.065 / 0.0023    0.098 / 0.0034
#   all five groups   0.055 / 0.0017    0.102 / 0.0032
# Attention is the one large effect (its softmax probabilities in int8 lose every small weight); the box head adds a
# small, consistent gain at no cost (a few Linears over 100-300 queries). LayerNorm inputs, the class head and the
# sampling Linears changed nothing measurable on these weights (re-run the benchmark with --checkpoint for yours).
DEFAULT_KEEP_HIGH_PRECISION = ("attention", "box_head")
# Measured as well: the float remainder in fp16 matches fp32's error (deformable_detr_r50, attention + box_head:
# see the benchmark's --high-precision), and TensorRT-RTX is built for 16-bit floats.
DEFAULT_HIGH_PRECISION_DTYPE = "fp16"

# The op types ModelOpt's INT8 mode places Q/DQ on: what keeping a node out of INT8 can change.
_QUANTIZABLE_OPS = {
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Clip",
    "Conv",
    "ConvTranspose",
    "Gemm",
    "GlobalAveragePool",
    "MatMul",
    "MaxPool",
    "Mul",
}
_LINEAR_OPS = {"MatMul", "Gemm"}
# A backward walk does not cross these: normalizations end a head, shape and index computations are no data path.
_WALK_BARRIERS = {
    "LayerNormalization",
    "Shape",
    "Size",
    "TopK",
    "ArgMax",
    "NonZero",
    "GridSample",
    contract.MSDA_OP_TYPE,
}
# Ops between an attention softmax and its MatMuls that only move, scale or mask values.
_PASS_THROUGH = {"Reshape", "Transpose", "Cast", "Identity", "Squeeze", "Unsqueeze", "Mul", "Div", "Add", "Where"}


@dataclass(frozen=True)
class QuantizeResult:
    path: Path
    precision: str
    # op type -> nodes with an input from a DequantizeLinear (int8; empty otherwise)
    quantized_nodes: dict[str, int]
    # op type -> nodes kept out of INT8 on purpose (int8) / kept in fp32 (fp16, bf16)
    kept_high_precision: dict[str, int]
    calibration_images: int
    seconds: float
    # Calibration image files that could not be read (each message names its file).
    skipped_images: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------------------------
# Calibration images


@functools.cache
def _image_suffixes() -> frozenset[str]:
    """File suffixes of the image formats PIL can open."""
    from PIL import Image

    return frozenset(suffix for suffix, name in Image.registered_extensions().items() if name in Image.OPEN)


def _calibration_files(images_dir) -> list[Path]:
    folder = Path(images_dir)
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise DetrDeployError(f"calibration folder {folder} {what}; give a folder of images like those the model sees")
    suffixes = _image_suffixes()
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


def _read_calibration_images(
    images_dir, recipe: InputRecipe, count: int, seed: int, on_skip: Callable[[str], None], keep: bool = True
) -> list[tuple[Path, tuple[int, ...], np.ndarray]]:
    """(file, [1, 3, h, w] shape, the tensor or None unless ``keep``) for up to ``count`` readable images of the
    folder, in file-name order: all of them when there are at most ``count``, else a seeded random choice (files
    that cannot be read are replaced by others and reported to ``on_skip``)."""
    if count < 1:
        raise DetrDeployError(f"the calibration image count must be at least 1, not {count}")
    files = _calibration_files(images_dir)
    order = np.random.default_rng(seed).permutation(len(files)) if len(files) > count else range(len(files))
    chosen = []
    for index in order:
        if len(chosen) == count:
            break
        try:
            image = recipe.load_image(files[index])[None]
        except DetrDeployError as error:
            on_skip(str(error))
            continue
        chosen.append((int(index), image.shape, image if keep else None))
    if not chosen:
        raise DetrDeployError(
            f"empty calibration folder {images_dir}: no readable image "
            f"({len(files)} image file(s) there); put a few hundred images like those the model sees in it"
        )
    return [(files[index], shape, image) for index, shape, image in sorted(chosen, key=lambda item: item[0])]


def calibration_inputs(
    images_dir,
    metadata: dict[str, str],
    count: int = 500,
    seed: int = 0,
    *,
    on_skip: Callable[[str], None] = None,
    shorter_side: int = None,
    max_size: int = None,
) -> list[np.ndarray]:
    """The images of ``images_dir`` (sorted by name; a seeded choice of ``count`` when there are more) as the export
    described by ``metadata`` takes them: each [1, 3, h, w] float32, resized and normalized by its recipe
    (``shorter_side``/``max_size`` switch to another aspect-keeping size). Files that cannot be read are skipped
    and named to ``on_skip``; a missing folder, or one without a readable image, raises DetrDeployError."""
    recipe = InputRecipe.from_metadata(metadata, shorter_side, max_size)
    skip = on_skip or (lambda message: logger.warning("skipping a calibration image: %s", message))
    return [image for _, _, image in _read_calibration_images(images_dir, recipe, count, seed, skip)]


class _CalibrationReader:
    """ONNX Runtime's CalibrationDataReader protocol (get_next until None, rewind) plus ModelOpt's get_first, over
    samples loaded one at a time (500 full-size images would take gigabytes as float32 tensors)."""

    def __init__(self, loaders: Sequence[Callable[[], np.ndarray]]):
        self._loaders = list(loaders)
        self._position = 0

    def get_next(self):
        if self._position >= len(self._loaders):
            return None
        self._position += 1
        return {contract.INPUT_IMAGES: self._loaders[self._position - 1]()}

    def get_first(self):
        return {contract.INPUT_IMAGES: self._loaders[0]()}

    def rewind(self):
        self._position = 0

    def __len__(self):
        return len(self._loaders)


def _calibration_reader(
    calibration_images, metadata: dict, count: int, skipped: list[str]
) -> tuple[_CalibrationReader, list[tuple[int, ...]]]:
    """A reader over a folder (images read again when ModelOpt asks: memory stays flat) or over given arrays
    [1, 3, h, w] / [3, h, w]; and the shape of each sample."""
    if isinstance(calibration_images, (str, Path)):
        recipe = InputRecipe.from_metadata(metadata)
        chosen = _read_calibration_images(calibration_images, recipe, count, 0, skipped.append, keep=False)
        loaders = [lambda path=path: recipe.load_image(path)[None] for path, _, _ in chosen]
        return _CalibrationReader(loaders), [shape for _, shape, _ in chosen]
    arrays = []
    for array in list(calibration_images)[:count]:
        array = np.asarray(array, dtype=np.float32)
        array = array[None] if array.ndim == 3 else array
        if array.ndim != 4 or array.shape[1] != 3:
            raise DetrDeployError(f"a calibration input must be [1, 3, height, width] float32, not {list(array.shape)}")
        arrays.append(np.ascontiguousarray(array))
    if not arrays:
        raise DetrDeployError("no calibration inputs given; give a folder of images like those the model sees")
    return _CalibrationReader([lambda array=array: array for array in arrays]), [a.shape for a in arrays]


# ---------------------------------------------------------------------------------------------------------------
# Which nodes to keep out of INT8


class _Graph:
    """Producers, consumers and constant-ness of the values of an ONNX graph."""

    def __init__(self, graph: onnx.GraphProto):
        self.nodes = list(graph.node)
        self.producer = {output: node for node in self.nodes for output in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.constant = {init.name for init in graph.initializer}
        for node in self.nodes:  # exporters write nodes in topological order
            if node.op_type == "Constant" or (node.input and all(i in self.constant for i in node.input if i)):
                self.constant.update(node.output)

    def upstream(self, values, stop_after=frozenset()) -> list[onnx.NodeProto]:
        """Nodes that ``values`` are computed from, walking back until a barrier op (not included) or an op in
        ``stop_after`` (included, not crossed); constants are not followed."""
        seen, found, stack = set(), [], [v for v in values if v]
        while stack:
            node = self.producer.get(stack.pop())
            if node is None or node.name in seen or node.op_type in _WALK_BARRIERS:
                continue
            seen.add(node.name)
            if node.output[0] in self.constant:
                continue
            found.append(node)
            if node.op_type not in stop_after:
                stack.extend(i for i in node.input if i and i not in self.constant)
        return found

    def nearest(self, start: str, forward: bool) -> list[onnx.NodeProto]:
        """The first MatMul nodes reached from value ``start`` through pass-through ops only."""
        found, stack, seen = [], [start], set()
        while stack:
            value = stack.pop()
            if value in seen:
                continue
            seen.add(value)
            nodes = (
                self.consumers.get(value, []) if forward else [self.producer[value]] if value in self.producer else []
            )
            for node in nodes:
                if node.op_type == "MatMul":
                    found.append(node)
                elif node.op_type in _PASS_THROUGH:
                    stack.extend(node.output if forward else [i for i in node.input if i and i not in self.constant])
        return found


def keep_group_nodes(model: onnx.ModelProto, groups: Sequence[str]) -> dict[str, list[str]]:
    """Group name -> names of the nodes in it (see KEEP_GROUPS)."""
    graph = _Graph(model.graph)
    outputs = {value.name for value in model.graph.output}
    found: dict[str, list[onnx.NodeProto]] = {}
    for group in groups:
        if group == "box_head" and contract.OUTPUT_BOXES in outputs:
            found[group] = graph.upstream([contract.OUTPUT_BOXES])
        elif group == "class_head" and contract.OUTPUT_LOGITS in outputs:
            found[group] = graph.upstream([contract.OUTPUT_LOGITS])
        elif group == "sampling":
            # MSDeformAttn inputs 3 and 4 (plugin exports); GridSample grids and the weights multiplied into their
            # samples (grid-sample exports).
            starts = []
            for node in graph.nodes:
                if node.op_type == contract.MSDA_OP_TYPE:
                    starts += node.input[3:5]
                elif node.op_type == "GridSample":
                    weights = [c for c in graph.consumers.get(node.output[0], []) if c.op_type == "Mul"]
                    starts += [node.input[1], *(i for c in weights for i in c.input if i != node.output[0])]
            found[group] = graph.upstream(starts, stop_after=_LINEAR_OPS)
        elif group == "attention":
            nodes = []
            for node in graph.nodes:
                if node.op_type == "Softmax":
                    near = graph.nearest(node.input[0], forward=False) + graph.nearest(node.output[0], forward=True)
                    matmuls = [m for m in near if not any(i in graph.constant for i in m.input)]
                    nodes += [node, *matmuls] if matmuls else []
            found[group] = nodes
        elif group == "layernorm":
            nodes = []
            for node in graph.nodes:
                if node.op_type == "LayerNormalization":
                    producer = graph.producer.get(node.input[0])
                    nodes += [node] + ([producer] if producer is not None and producer.op_type == "Add" else [])
            found[group] = nodes
        else:
            found.setdefault(group, [])
    return {group: list(dict.fromkeys(n.name for n in nodes)) for group, nodes in found.items()}


def _counted_by_op(model: onnx.ModelProto, names: list[str]) -> dict[str, int]:
    """Op type -> how many of the nodes ``names`` could carry Q/DQ (float ops of the types ModelOpt quantizes; index
    arithmetic on int64 is left out)."""
    inferred = onnx.shape_inference.infer_shapes(model).graph
    float_values = {v.name for v in [*inferred.value_info, *inferred.output] if v.type.tensor_type.elem_type == 1}
    wanted, counts = set(names), {}
    for node in model.graph.node:
        if node.name in wanted and node.op_type in _QUANTIZABLE_OPS and node.output[0] in float_values:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def _check_keep_groups(groups) -> tuple[str, ...]:
    """``groups``: names of KEEP_GROUPS, as a sequence or one comma-separated string ("" keeps nothing)."""
    groups = tuple(filter(None, groups.split(","))) if isinstance(groups, str) else tuple(groups)
    unknown = [group for group in groups if group not in KEEP_GROUPS]
    if unknown:
        raise DetrDeployError(
            f"unknown part to keep in high precision {unknown[0]!r}; choose from: {', '.join(KEEP_GROUPS)}"
        )
    return groups


# ---------------------------------------------------------------------------------------------------------------
# Graph preparation and checks


def _name_nodes(model: onnx.ModelProto) -> None:
    """Give unnamed nodes unique names: ModelOpt selects nodes by name (and names them itself otherwise)."""
    names = {node.name for node in model.graph.node}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{index}"
            while node.name in names:
                node.name += "_"
            names.add(node.name)


def _at_least_opset_19(model: onnx.ModelProto) -> None:
    """Move an opset-18 graph (our default export) to opset 19 in place, its local functions with it.

    The ops that got a new version at 19 (AveragePool, Cast, CastLike, Constant, DequantizeLinear, Equal, Identity,
    If, Loop, Pad, QuantizeLinear, Reshape, Scan, Shape, Size) gained types or attributes whose defaults keep the
    opset-18 behaviour, so the import's version is all that changes. ``onnx.version_converter`` would drop the
    functions."""
    for opsets in [model.opset_import, *(function.opset_import for function in model.functions)]:
        for opset in opsets:
            if opset.domain in ("", "ai.onnx") and opset.version < QDQ_MIN_OPSET:
                opset.version = QDQ_MIN_OPSET


def _io_signature(model: onnx.ModelProto) -> list:
    def describe(value):
        tensor = value.type.tensor_type
        return value.name, tensor.elem_type, [d.dim_param or d.dim_value for d in tensor.shape.dim]

    return [[describe(v) for v in model.graph.input], [describe(v) for v in model.graph.output]]


def _msda_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.domain == contract.MSDA_DOMAIN and n.op_type == contract.MSDA_OP_TYPE]


def _restore_msda(result: onnx.ModelProto, source: onnx.ModelProto) -> None:
    """Keep the MSDeformAttn nodes' function and domain import as the (opset-19) source has them."""
    if not _msda_nodes(source):
        return
    if [(f.domain, f.name) for f in result.functions] != [(f.domain, f.name) for f in source.functions]:
        del result.functions[:]
        result.functions.extend(source.functions)
    if contract.MSDA_DOMAIN not in {o.domain for o in result.opset_import}:
        result.opset_import.append(onnx.helper.make_opsetid(contract.MSDA_DOMAIN, contract.MSDA_DOMAIN_VERSION))


def fed_by_dequantize(model: onnx.ModelProto) -> dict[str, int]:
    """Op type -> nodes (other than Q/DQ) with at least one input produced by a DequantizeLinear."""
    dequantized = {out for node in model.graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") and dequantized.intersection(node.input):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def reference_session(model):
    """An ONNX Runtime CPU session computing a Q/DQ graph (path or ModelProto) as written: quantize, round to nearest
    even, dequantize, in float. Graph optimizations stay at "basic": the extended ones fuse Q/DQ into int8 CPU kernels
    (MatMulIntegerToFloat on u8 x s8 products) that saturate on CPUs without VNNI, which moved Deformable DETR's
    logits by more than 5 in our measurements; TensorRT's int8 kernels do not.
    See also detr_deploy.runtime.onnxruntime.qdq_as_written."""
    import onnxruntime

    from detr_deploy.runtime.onnxruntime import qdq_as_written

    model = onnx.load(str(model)) if isinstance(model, (str, Path)) else model
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    serialized = qdq_as_written(model).SerializeToString()
    return onnxruntime.InferenceSession(serialized, options, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------------------------------------------------------
# ModelOpt, quietly


@contextlib.contextmanager
def output_into(captured: io.StringIO):
    """Send stdout, stderr and warnings raised inside the block into ``captured`` (the quantizers print and warn)."""
    with (
        contextlib.redirect_stdout(captured),
        contextlib.redirect_stderr(captured),
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for warning in caught:
                captured.write(f"warning: {warning.message}\n")


@contextlib.contextmanager
def _captured_output():
    """Capture what ModelOpt and ONNX Runtime's calibrator write (logging to stdout, progress bars, warnings) and
    hand it to our logger at debug level; restore ModelOpt's loggers afterwards."""
    modelopt_logger, parent = logging.getLogger("modelopt.onnx"), logging.getLogger("modelopt")
    children = [name for name in list(logging.root.manager.loggerDict) if name.startswith("modelopt.onnx.")]
    saved_levels = {name: logging.getLogger(name).level for name in children}
    saved = (list(modelopt_logger.handlers), modelopt_logger.level, modelopt_logger.propagate, parent.propagate)
    captured = io.StringIO()
    # ModelOpt makes its logger propagate; its parent stops the records before the user's root handlers.
    parent.propagate = False
    try:
        with output_into(captured):
            yield
    finally:
        modelopt_logger.handlers[:] = saved[0]
        modelopt_logger.setLevel(saved[1])
        modelopt_logger.propagate, parent.propagate = saved[2], saved[3]
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)
        logger.debug("ModelOpt said: %s", captured.getvalue())


def _modelopt_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nvidia-modelopt")
    except PackageNotFoundError:
        return "unknown"


def _run_modelopt(
    source: Path, output: Path, reader: _CalibrationReader, method: str, nodes_to_exclude: list[str], log_level: str
) -> None:
    try:
        from modelopt.onnx.quantization import quantize
    except ImportError:
        raise DetrDeployError("INT8 quantization needs NVIDIA ModelOpt: pip install 'nvidia-modelopt[onnx]'") from None
    quantize(
        str(source),
        quantize_mode="int8",
        calibration_data_reader=reader,
        calibration_method=method,
        calibration_eps=["cpu"],
        nodes_to_exclude=[f"^{re.escape(name)}$" for name in nodes_to_exclude],
        output_path=str(output),
        # fp32 here, fp16 by our own pass afterwards (ModelOpt's needs TensorRT for the MSDeformAttn node).
        high_precision_dtype="fp32",
        log_level=log_level,
    )


# ---------------------------------------------------------------------------------------------------------------
# The entry point


def _load_source(onnx_path: Path) -> onnx.ModelProto:
    if not onnx_path.is_file():
        raise DetrDeployError(f"ONNX file {onnx_path} does not exist")
    try:
        model = onnx.load(str(onnx_path))
    except Exception as error:  # protobuf raises DecodeError (and others) for files that are not ONNX
        raise DetrDeployError(
            f"{onnx_path} is not a readable ONNX file ({type(error).__name__}); re-export it"
        ) from None
    metadata = read_metadata(model)
    if contract.META_PRECISION in metadata or any(n.op_type == "QuantizeLinear" for n in model.graph.node):
        raise DetrDeployError(
            f"{onnx_path} is already converted ({metadata.get(contract.META_PRECISION, 'Q/DQ nodes')}); "
            "quantize the fp32 export"
        )
    return model


def _check_options(precision, calibration_method, high_precision_dtype, calibration_count) -> None:
    if precision not in PRECISIONS:
        raise DetrDeployError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if calibration_method not in CALIBRATION_METHODS:
        raise DetrDeployError(
            f"unknown calibration method {calibration_method!r}; choose one of: {', '.join(CALIBRATION_METHODS)}"
        )
    if high_precision_dtype not in HIGH_PRECISION_DTYPES:
        raise DetrDeployError(
            f"unknown high-precision type {high_precision_dtype!r}; choose one of: {', '.join(HIGH_PRECISION_DTYPES)}"
        )
    if calibration_count < 1:
        raise DetrDeployError(f"the calibration image count must be at least 1, not {calibration_count}")


def _shape_summary(shapes: list[tuple[int, ...]]) -> dict:
    sides = [shape[2:] for shape in shapes]
    return {
        "batch": 1,
        "distinct": len(set(sides)),
        "min": list(min(sides, key=lambda s: s[0] * s[1])),
        "max": list(max(sides, key=lambda s: s[0] * s[1])),
    }


def quantize_onnx(
    onnx_path,
    output,
    *,
    precision: str = "int8",
    calibration_images=None,
    calibration_count: int = 200,
    calibration_method: str = "entropy",
    keep_high_precision: Sequence[str] = DEFAULT_KEEP_HIGH_PRECISION,
    high_precision_dtype: str = DEFAULT_HIGH_PRECISION_DTYPE,
) -> QuantizeResult:
    """Write a reduced-precision copy of the export ``onnx_path`` to ``output``.

    The copy takes and returns what the export does (``images`` [batch, 3, height, width] float32 in, float32
    outputs, every size dynamic) and keeps its metadata, adding contract.META_PRECISION and, for int8,
    contract.META_QUANTIZATION. ``precision="int8"``: Q/DQ nodes calibrated on ``calibration_images`` (a folder,
    of which ``calibration_count`` images are used, or [1, 3, h, w] arrays from ``calibration_inputs``) with
    ``calibration_method`` ("entropy" or "max"); the parts named in ``keep_high_precision`` (KEEP_GROUPS) stay out
    of INT8, and everything not in INT8 computes in ``high_precision_dtype`` (fp16 keeps normalizations and softmax
    in fp32, as exporters.precision does). ``"fp16"``/``"bf16"``: exporters.precision's graph.
    """
    start = time.perf_counter()
    onnx_path = Path(onnx_path)
    _check_options(precision, calibration_method, high_precision_dtype, calibration_count)
    keep_high_precision = _check_keep_groups(keep_high_precision)
    output = check_output_path(output, inputs=[onnx_path])
    if precision == "int8" and calibration_images is None:
        raise DetrDeployError("int8 needs calibration images: give a folder of images like those the model sees")
    model = _load_source(onnx_path)
    if precision != "int8":
        converted, kept = convert_precision(model, precision)
        set_metadata(converted, {**read_metadata(model), contract.META_PRECISION: precision})
        _save(converted, output, full_check=precision != "bf16")
        return QuantizeResult(output, precision, {}, dict(kept), 0, time.perf_counter() - start)
    return _quantize_int8(
        model,
        output,
        start,
        calibration_images=calibration_images,
        calibration_count=calibration_count,
        calibration_method=calibration_method,
        keep_high_precision=keep_high_precision,
        high_precision_dtype=high_precision_dtype,
    )


def _quantize_int8(
    model: onnx.ModelProto,
    output: Path,
    start: float,
    *,
    calibration_images,
    calibration_count: int,
    calibration_method: str,
    keep_high_precision: tuple[str, ...],
    high_precision_dtype: str,
) -> QuantizeResult:
    """``quantize_onnx``'s int8 path: calibrate, quantize with ModelOpt, then the float remainder in fp16."""
    metadata = read_metadata(model)
    skipped: list[str] = []
    reader, shapes = _calibration_reader(calibration_images, metadata, calibration_count, skipped)
    for message in skipped:
        logger.warning("skipped a calibration image: %s", message)
    _name_nodes(model)
    _at_least_opset_19(model)
    groups = keep_group_nodes(model, keep_high_precision)
    excluded = list(dict.fromkeys(name for names in groups.values() for name in names))
    kept = _counted_by_op(model, excluded)
    quantized = _quantized_by_modelopt(model, reader, calibration_method, excluded)
    fp32_ops = {}
    if high_precision_dtype == "fp16":
        quantized, fp32_ops = convert_precision(quantized, "fp16", DEFAULT_KEEP_FP32)
    quantized_nodes = fed_by_dequantize(quantized)
    kept_record = {
        "groups": {group: KEEP_GROUPS[group] for group in keep_high_precision},
        "op_types": kept,
        "nodes": excluded,
    }
    calibration = _calibration_record(calibration_method, reader, skipped, shapes)
    description = _int8_description(
        quantized, calibration, quantized_nodes, kept_record, high_precision_dtype, fp32_ops
    )
    set_metadata(
        quantized,
        {**metadata, contract.META_PRECISION: "int8", contract.META_QUANTIZATION: json.dumps(description)},
    )
    quantized.producer_name, quantized.producer_version = model.producer_name, model.producer_version
    _save(quantized, output)
    return QuantizeResult(
        output, "int8", quantized_nodes, kept, len(reader), time.perf_counter() - start, tuple(skipped)
    )


def _quantized_by_modelopt(
    model: onnx.ModelProto, reader: _CalibrationReader, calibration_method: str, excluded: list[str]
) -> onnx.ModelProto:
    """ModelOpt's INT8 Q/DQ graph of ``model`` (nodes ``excluded`` left out), its MSDeformAttn nodes restored."""
    with tempfile.TemporaryDirectory(prefix="detr_deploy_quantize_") as scratch:
        # ModelOpt writes shape-inferred copies beside its input: work on a copy, never on the user's file.
        scratch = Path(scratch)
        onnx.save_model(model, scratch / "source.onnx")
        debug = logger.isEnabledFor(logging.DEBUG)
        with _captured_output():
            _run_modelopt(
                scratch / "source.onnx",
                scratch / "quantized.onnx",
                reader,
                calibration_method,
                excluded,
                "INFO" if debug else "WARNING",
            )
        quantized = onnx.load(str(scratch / "quantized.onnx"))
    _restore_msda(quantized, model)
    if _io_signature(quantized) != _io_signature(model):
        raise RuntimeError(f"ModelOpt changed the graph's inputs or outputs: {_io_signature(quantized)}")
    return quantized


def _calibration_record(method: str, reader: _CalibrationReader, skipped: list[str], shapes: list) -> dict:
    """What the INT8 graph was calibrated on, for its quantization record."""
    return {
        "method": method,
        "images": len(reader),
        "skipped_images": len(skipped),
        "execution_provider": "onnxruntime CPU",
        "shapes": _shape_summary(shapes),
    }


def _int8_description(
    quantized: onnx.ModelProto,
    calibration: dict,
    quantized_nodes: dict[str, int],
    kept_high_precision: dict,
    high_precision_dtype: str,
    fp32_ops: dict[str, int],
) -> dict:
    """contract.META_QUANTIZATION's record (JSON) of how the INT8 graph was made."""
    return {
        "tool": "nvidia-modelopt",
        "version": _modelopt_version(),
        "mode": "int8 per-channel weights, per-tensor activations (Q/DQ)",
        "calibration": calibration,
        "quantized_nodes": quantized_nodes,
        "kept_high_precision": kept_high_precision,
        "high_precision_dtype": high_precision_dtype,
        # fp16 remainder: these op types stay fp32 (exporters.precision).
        "fp32_ops": dict(fp32_ops),
        "msda": "float, unquantized" if _msda_nodes(quantized) else "none",
        "detr_deploy_version": __version__,
    }


def _save(model: onnx.ModelProto, output: Path, full_check: bool = True) -> None:
    # bf16 graphs fail ONNX's type check below opset 22 (Conv and others gained bf16 there); TensorRT takes them.
    onnx.checker.check_model(model, full_check=full_check)
    with atomic_output(output) as temporary:
        onnx.save_model(model, temporary)
