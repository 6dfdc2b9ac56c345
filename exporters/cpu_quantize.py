"""INT8 copies of an export for the CPU runtimes, each made by that runtime's own quantizer and calibrated on the
user's images as ``exporters.quantize`` calibrates TensorRT's (same reader, same image choice and recipe).

exporters.quantize's ModelOpt file is written for TensorRT: explicit Q/DQ around nearly every op, the rest in fp16.
ONNX Runtime's CPU provider runs that slower than fp32 (fp16 is emulated, and Q/DQ it cannot fuse are computed as
written). The files here are written for the kernels each CPU runtime fuses:

- ``runtime="onnxruntime"``: ``onnxruntime.quantization.quantize_static``, QDQ format, uint8 activations and
  per-channel int8 weights (U8S8, what the CPU provider's MLAS kernels take), Q/DQ only on Conv, MatMul and Gemm
  inputs: ONNX Runtime's QDQ transformer fuses those into QLinearConv / MatMulIntegerToFloat / QGemm, and drops the
  Q/DQ pairs around the data movement between them (Relu, MaxPool, Reshape, Transpose, ...). The MSDeformAttn nodes
  (and their model-local function) are left as they are: quantize_static only touches the op types it is given, so
  the deformable sampling stays float. ``quant_pre_process`` is not run: its symbolic shape inference stops at the
  custom op, and quantize_static's own ONNX shape inference gives it the weight shapes per-channel needs.
- ``runtime="openvino"``: NNCF's ONNX backend (``nncf.quantize``, ``ModelType.TRANSFORMER``, preset MIXED: symmetric
  weights, asymmetric activations), writing QuantizeLinear/DequantizeLinear that OpenVINO reads as FakeQuantize and
  runs in int8. NNCF does not read model-local functions, so MSDeformAttn's function is inlined first (OpenVINO
  inlines it too when it reads an export); NNCF does not quantize the GridSample sampling.

Weights: 8-bit, or 7-bit for x86 CPUs without VNNI/AMX (``reduce_range``; by default decided from the CPU that
quantizes, ``detr_deploy.cpu_features``): their u8 x s8 kernels add product pairs into int16 and saturate with
8-bit weights (measured in CI on such a CPU: DETR/Deformable boxes 0.06 off fp32 against 0.003 here, logits
correlating 0.97-0.98). ONNX Runtime's ``reduce_range`` and NNCF's ``OverflowFix.ENABLE`` give the 7 bits.

Both keep out of INT8 what exporters.quantize keeps out by default (DEFAULT_KEEP_HIGH_PRECISION: the attention
score/value MatMuls and the box head), found by the same graph walk.
"""

import contextlib
import io
import json
import logging
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import onnx
import onnx.inliner

from detr_deploy import __version__, contract
from detr_deploy.cpu_features import cpu_features, int8_weights_need_reduced_range
from detr_deploy.errors import DetrDeployError
from detr_deploy.io import check_output_path
from exporters.onnx import read_metadata, set_metadata
from exporters.quantize import (
    DEFAULT_KEEP_HIGH_PRECISION,
    KEEP_GROUPS,
    QuantizeResult,
    _calibration_reader,
    _calibration_record,
    _CalibrationReader,
    _counted_by_op,
    _io_signature,
    _load_source,
    _msda_nodes,
    _name_nodes,
    _save,
    fed_by_dequantize,
    keep_group_nodes,
    output_into,
)

logger = logging.getLogger(__name__)

CPU_RUNTIMES = ("onnxruntime", "openvino")
# Calibration methods per runtime beside None (the runtime's default: min/max for ONNX Runtime, NNCF's own statistics
# for OpenVINO). ONNX Runtime's entropy and percentile calibrators stack every image's activations into one array,
# which fails on calibration images of different sizes (aspect kept); min/max reduces each image on its own.
CALIBRATION_METHODS = {"onnxruntime": ("max",), "openvino": ("max",)}
# The op types whose QDQ ONNX Runtime's CPU provider fuses into int8 kernels, and that carry nearly all the work.
ORT_QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
_INSTALL = {"onnxruntime": "pip install onnxruntime", "openvino": "pip install nncf==3.4.0 openvino"}


def quantize_for_cpu(
    onnx_path,
    output,
    *,
    runtime: str,
    calibration_images=None,
    calibration_count: int = 200,
    calibration_method: str = None,
    reduce_range: bool = None,
) -> QuantizeResult:
    """Write an INT8 copy of the export ``onnx_path`` to ``output``, quantized for ``runtime`` ("onnxruntime" or
    "openvino") on ``calibration_images`` (a folder, of which ``calibration_count`` images are used, or [1, 3, h, w]
    float32 arrays from exporters.quantize.calibration_inputs).

    The copy takes ``images`` [batch, 3, height, width] float32 and returns the export's float32 outputs, every size
    dynamic, and keeps the export's metadata, adding contract.META_PRECISION "int8", contract.META_QUANTIZED_FOR
    ``runtime`` and contract.META_QUANTIZATION (tool, version, calibration). ``calibration_method``: None (the
    runtime's default: min/max in ONNX Runtime, NNCF's own statistics for OpenVINO) or "max". ``reduce_range``: 7-bit
    weights (for x86 CPUs without VNNI/AMX, whose kernels saturate on 8-bit ones); None: decided from this CPU."""
    start = time.perf_counter()
    onnx_path = Path(onnx_path)
    if runtime not in CPU_RUNTIMES:
        raise DetrDeployError(f"unknown CPU runtime {runtime!r}; choose one of: {', '.join(CPU_RUNTIMES)}")
    methods = CALIBRATION_METHODS[runtime]
    if calibration_method is not None and calibration_method not in methods:
        raise DetrDeployError(
            f"calibration method {calibration_method!r} is not one of {runtime}'s: {', '.join(methods)} "
            "(or leave it out for the default)"
        )
    if calibration_count < 1:
        raise DetrDeployError(f"the calibration image count must be at least 1, not {calibration_count}")
    output = check_output_path(output, inputs=[onnx_path])
    if calibration_images is None:
        raise DetrDeployError("int8 needs calibration images: give a folder of images like those the model sees")
    _check_installed(runtime)
    model = _load_source(onnx_path)
    metadata = read_metadata(model)
    skipped: list[str] = []
    reader, shapes = _calibration_reader(calibration_images, metadata, calibration_count, skipped)
    for message in skipped:
        logger.warning("skipped a calibration image: %s", message)
    _name_nodes(model)
    if runtime == "openvino":
        # NNCF reads no model-local functions; OpenVINO inlines them itself when it reads an export.
        model = onnx.inliner.inline_local_functions(model)
        _drop_msda_domain(model)
    excluded = list(
        dict.fromkeys(name for names in keep_group_nodes(model, DEFAULT_KEEP_HIGH_PRECISION).values() for name in names)
    )
    kept = _counted_by_op(model, excluded)
    method = calibration_method or ("max" if runtime == "onnxruntime" else None)
    weights = _weight_record(reduce_range, cpu_features())
    with _quiet():
        if runtime == "onnxruntime":
            quantized = _quantized_by_onnxruntime(model, reader, excluded, weights["reduce_range"])
        else:
            quantized = _quantized_by_nncf(model, reader, method, excluded, weights["reduce_range"])
    if _io_signature(quantized) != _io_signature(model):
        raise RuntimeError(f"the quantizer changed the graph's inputs or outputs: {_io_signature(quantized)}")
    quantized_nodes = fed_by_dequantize(quantized)
    calibration = _calibration_record(method or "nncf default", reader, skipped, shapes)
    description = {
        "tool": "onnxruntime.quantization" if runtime == "onnxruntime" else "nncf",
        "version": _version("onnxruntime" if runtime == "onnxruntime" else "nncf"),
        "runtime": runtime,
        "mode": (
            "QDQ, uint8 per-tensor activations, int8 per-channel weights, on " + ", ".join(ORT_QUANTIZED_OPS)
            if runtime == "onnxruntime"
            else "QDQ, NNCF ModelType.TRANSFORMER, preset MIXED (int8 symmetric weights, asymmetric activations)"
        ),
        "weights": weights,
        "calibration": calibration,
        "quantized_nodes": quantized_nodes,
        "kept_high_precision": {
            "groups": {group: KEEP_GROUPS[group] for group in DEFAULT_KEEP_HIGH_PRECISION},
            "op_types": kept,
            "nodes": excluded,
        },
        "msda": _msda_record(runtime, model),
        "detr_deploy_version": __version__,
    }
    # The export's metadata exactly, plus ours (the quantizers add keys of their own, e.g. onnx.infer).
    del quantized.metadata_props[:]
    set_metadata(
        quantized,
        {
            **metadata,
            contract.META_PRECISION: "int8",
            contract.META_QUANTIZED_FOR: runtime,
            contract.META_QUANTIZATION: json.dumps(description),
        },
    )
    quantized.producer_name, quantized.producer_version = model.producer_name, model.producer_version
    # The quantizers leave shapes they inferred at the calibration images' sizes in value_info (D-FINE-S: a batch of
    # 4 against the export's 1 failed the check); the graph is dynamic, so none of them is kept.
    del quantized.graph.value_info[:]
    _save(quantized, output)
    return QuantizeResult(
        output, "int8", quantized_nodes, kept, len(reader), time.perf_counter() - start, tuple(skipped)
    )


def _weight_record(reduce_range: bool, features) -> dict:
    """The weights' bit width and why (the quantization record's "weights"); reduce_range None: from ``features``."""
    if reduce_range is None:
        reduced = int8_weights_need_reduced_range(features)
        why = f"decided from the quantizing CPU ({features.summary()})"
    else:
        reduced, why = bool(reduce_range), "asked for"
    return {"bits": 7 if reduced else 8, "reduce_range": reduced, "why": why}


def _check_installed(runtime: str) -> None:
    module = "onnxruntime.quantization" if runtime == "onnxruntime" else "nncf"
    try:
        __import__(module)
    except ImportError:
        raise DetrDeployError(f"int8 for {runtime} needs {module.split('.')[0]}: {_INSTALL[runtime]}") from None


def _version(package: str) -> str:
    for name in (package, f"{package}-gpu") if package == "onnxruntime" else (package,):
        with contextlib.suppress(PackageNotFoundError):
            return version(name)
    return "unknown"


def _drop_msda_domain(model: onnx.ModelProto) -> None:
    """After inlining, no node is in the MSDeformAttn domain: drop its import (OpenVINO would look for the op)."""
    used = {node.domain for node in model.graph.node}
    kept = [opset for opset in model.opset_import if opset.domain != contract.MSDA_DOMAIN or opset.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(kept)


def _msda_record(runtime: str, model: onnx.ModelProto) -> str:
    if runtime == "onnxruntime":
        return "MSDeformAttn nodes float, unquantized" if _msda_nodes(model) else "none"
    return "inlined (float GridSample sampling)" if any(n.op_type == "GridSample" for n in model.graph.node) else "none"


@contextlib.contextmanager
def _quiet():
    """Hand what the quantizers say (ONNX Runtime's on the root logger, NNCF's own logger and progress bars,
    warnings) to our logger at debug level instead of the user's terminal."""
    captured = io.StringIO()

    def to_debug(record: logging.LogRecord) -> bool:
        captured.write(f"{record.levelname}: {record.getMessage()}\n")
        return False

    root = logging.getLogger()
    nncf_logger = logging.getLogger("nncf")
    saved_level = nncf_logger.level
    # A filter on the root logger itself sees only records logged on it (ONNX Runtime's quantizer uses
    # logging.warning); records of other loggers reach the handlers unchanged.
    root.addFilter(to_debug)
    nncf_logger.setLevel(logging.ERROR)
    try:
        with output_into(captured):
            yield
    finally:
        root.removeFilter(to_debug)
        nncf_logger.setLevel(saved_level)
        logger.debug("the quantizer said: %s", captured.getvalue())


def _quantized_by_onnxruntime(
    model: onnx.ModelProto, reader: _CalibrationReader, excluded: list[str], reduce_range: bool
) -> onnx.ModelProto:
    """ONNX Runtime's quantize_static in a fresh child process: NVIDIA ModelOpt (exporters/quantize.py, the TensorRT
    target) patches onnxruntime.quantization's classes in the process that ran it, and quantize_static there loses
    the input's ranges ("Quantization parameters are not specified for param images"; measured in the test suite).
    The calibration samples go to the child as .npy files, one at a time."""
    import multiprocessing

    import numpy as np

    with tempfile.TemporaryDirectory(prefix="detr_deploy_cpu_quantize_") as scratch:
        scratch = Path(scratch)
        onnx.save_model(model, scratch / "source.onnx")
        samples = []
        reader.rewind()
        while (feeds := reader.get_next()) is not None:
            path = scratch / f"sample_{len(samples):05d}.npz"
            np.savez(path, **feeds)
            samples.append(str(path))
        child = multiprocessing.get_context("spawn").Process(
            target=_quantize_static_child, args=(str(scratch), samples, list(excluded), reduce_range)
        )
        child.start()
        child.join()
        if child.exitcode != 0 or not (scratch / "quantized.onnx").is_file():
            message = (scratch / "error.txt").read_text() if (scratch / "error.txt").is_file() else "it crashed"
            raise RuntimeError(f"ONNX Runtime's quantize_static failed (exit {child.exitcode}): {message}")
        return onnx.load(str(scratch / "quantized.onnx"))


class _SampleFiles:
    """ONNX Runtime's CalibrationDataReader over the .npz files of the parent's samples."""

    def __init__(self, paths: list[str]):
        self._paths, self._next = paths, 0

    def get_next(self):
        import numpy as np

        if self._next >= len(self._paths):
            return None
        self._next += 1
        with np.load(self._paths[self._next - 1]) as arrays:
            return {name: arrays[name] for name in arrays.files}

    def rewind(self):
        self._next = 0


def _quantize_static_child(scratch: str, samples: list[str], excluded: list[str], reduce_range: bool) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    scratch = Path(scratch)
    try:
        with _quiet():
            quantize_static(
                str(scratch / "source.onnx"),
                str(scratch / "quantized.onnx"),
                _SampleFiles(samples),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                reduce_range=reduce_range,
                op_types_to_quantize=list(ORT_QUANTIZED_OPS),
                nodes_to_exclude=excluded,
                calibrate_method=CalibrationMethod.MinMax,
                calibration_providers=["CPUExecutionProvider"],
            )
    except Exception as error:  # noqa: BLE001  (reported to the parent, which raises)
        (scratch / "error.txt").write_text(" ".join(str(error).split()) or type(error).__name__)
        raise SystemExit(1) from None


def _quantized_by_nncf(
    model: onnx.ModelProto, reader: _CalibrationReader, method: str, excluded: list[str], reduce_range: bool
) -> onnx.ModelProto:
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    # OverflowFix.ENABLE: every weight in 7 bits; DISABLE: all in 8 (NNCF's default, FIRST_LAYER, is neither).
    advanced = AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE if reduce_range else OverflowFix.DISABLE)
    if method == "max":
        advanced.activations_range_estimator_params = RangeEstimatorParametersSet.MINMAX
    return nncf.quantize(
        model,
        nncf.Dataset(_Replayable(reader)),
        subset_size=len(reader),
        model_type=nncf.ModelType.TRANSFORMER,
        preset=nncf.QuantizationPreset.MIXED,
        ignored_scope=nncf.IgnoredScope(names=excluded, validate=False) if excluded else None,
        advanced_parameters=advanced,
    )


class _Replayable:
    """The calibration samples, read again on each pass over them (NNCF iterates its dataset more than once)."""

    def __init__(self, reader: _CalibrationReader):
        self._reader = reader

    def __iter__(self):
        self._reader.rewind()
        return iter(self._reader.get_next, None)

    def __len__(self):
        return len(self._reader)
