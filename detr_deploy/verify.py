"""verify-parity: run eager PyTorch and a backend on the same inputs and compare them (see ``parity``)."""

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from detr_deploy import contract
from detr_deploy.errors import DetrDeployError
from detr_deploy.model_source import model_of_export
from detr_deploy.parity import TOLERANCES, ParityCase, ParityReport, compare_outputs
from detr_deploy.runtime.eager import EagerRunner

DEFAULT_SIZES = ((480, 640), (608, 512), (427, 701))
DEFAULT_BATCH_SIZES = (1, 2)


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """'480x640,600x800' -> [(480, 640), (600, 800)] as (height, width)."""
    sizes = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        match = re.fullmatch(r"(\d+)x(\d+)", item)
        if not match or min(int(match[1]), int(match[2])) < 64:
            raise DetrDeployError(
                f"malformed size {item!r} in {text!r}; write HEIGHTxWIDTH, each at least 64, e.g. 480x640,800x1088"
            )
        sizes.append((int(match[1]), int(match[2])))
    if not sizes:
        raise DetrDeployError(f"no sizes in {text!r}; write HEIGHTxWIDTH[,HEIGHTxWIDTH...], e.g. 480x640")
    return sizes


def parse_batch_sizes(text: str) -> list[int]:
    """'1,3' -> [1, 3]."""
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items or not all(re.fullmatch(r"[1-9]\d*", item) for item in items):
        raise DetrDeployError(f"malformed batch sizes {text!r}; write positive integers separated by commas, e.g. 1,3")
    return [int(item) for item in items]


def verify_parity(
    backend,
    artifact,
    *,
    checkpoint=None,
    model_name: str = None,
    sizes=DEFAULT_SIZES,
    batch_sizes=DEFAULT_BATCH_SIZES,
    images=(),
    precision: str = "fp32",
    rtol: float = None,
    atol: float = None,
    score_threshold: float = 0.5,
    seed: int = 0,
    on_case: Callable[[ParityCase], None] = None,
) -> ParityReport:
    """Compare ``backend`` (a runner with ``metadata``: ONNX Runtime or TensorRT) with eager PyTorch.

    Inputs: seeded random images [b, 3, h, w] for each size in ``sizes`` and batch in ``batch_sizes``, or the image
    files in ``images`` (official resize and normalization, batch 1 each). ``on_case`` sees each case as it is done.
    """
    if precision not in TOLERANCES:
        raise DetrDeployError(f"unknown precision {precision!r}; choose one of: {', '.join(TOLERANCES)}")
    tolerance = TOLERANCES[precision]
    tolerance = dataclasses.replace(
        tolerance, rtol=tolerance.rtol if rtol is None else rtol, atol=tolerance.atol if atol is None else atol
    )
    source = model_of_export(backend.metadata, model_name=model_name, checkpoint=checkpoint)
    eager = EagerRunner(source.model, source.config.output_names)
    missing = [name for name in eager.output_names if name not in backend.output_names]
    if missing:
        raise DetrDeployError(f"{artifact} has no output {', '.join(missing)}; is it an export of {source.name}?")

    from detr_deploy.preprocessing import load_image

    if images:
        cases = [(Path(path).name, load_image(path)[None]) for path in images]
    else:
        rng = np.random.default_rng(seed)
        cases = [
            (f"batch {batch} @ {height}x{width}", rng.standard_normal((batch, 3, height, width), dtype=np.float32))
            for height, width in sizes
            for batch in batch_sizes
        ]
    takes_mask = contract.INPUT_PADDING_MASK in getattr(backend, "input_names", ())
    cases = [(name, inputs, example_padding(inputs) if takes_mask else None) for name, inputs in cases]
    check_shape = getattr(backend, "check_shape", None)
    if check_shape is not None:
        # Refuse the whole run up front rather than after the first cases.
        for _, inputs, mask in cases:
            check_shape(contract.INPUT_IMAGES, inputs.shape)
            if mask is not None:
                check_shape(contract.INPUT_PADDING_MASK, mask.shape)
    report = ParityReport(
        model=source.name,
        backend=backend.name,
        artifact=str(artifact),
        precision=precision,
        tolerance=tolerance,
        score_threshold=score_threshold,
    )
    for name, inputs, mask in cases:
        case = compare_outputs(
            name,
            inputs.shape[-2:],
            eager.run(inputs, mask),
            backend.run(inputs, mask),
            activation=source.config.score_activation,
            score_threshold=score_threshold,
            tolerance=tolerance,
            ranked_queries=source.config.query_order_is_ranked,
        )
        report.cases.append(case)
        if on_case:
            on_case(case)
    return report


def example_padding(images: np.ndarray) -> np.ndarray:
    """For a model with a padding_mask input: pad image i > 0 of the batch at the bottom and right (zeroing its
    padded pixels in place, as a real padded batch has them), so the mask's handling is exercised.
    Returns padding_mask [N, H, W] uint8."""
    batch, _, height, width = images.shape
    mask = np.zeros((batch, height, width), dtype=np.uint8)
    for index in range(1, batch):
        valid_height, valid_width = max(64, height - 40 * index), max(64, width - 56 * index)
        mask[index, valid_height:, :] = 1
        mask[index, :, valid_width:] = 1
        images[index, :, valid_height:, :] = 0
        images[index, :, :, valid_width:] = 0
    return mask


def open_backend(*, onnx_path=None, engine_path=None, plugins="auto"):
    """The runner for an ONNX file (ONNX Runtime) or an engine (TensorRT), and the precision it computes in."""
    if (onnx_path is None) == (engine_path is None):
        raise DetrDeployError("give exactly one of --onnx FILE.onnx or --engine FILE.engine")
    if onnx_path is not None:
        from detr_deploy.runtime.onnxruntime import OnnxRuntimeRunner

        return OnnxRuntimeRunner(onnx_path), "fp32"
    from detr_deploy.runtime.tensorrt import TensorRTRunner

    runner = TensorRTRunner(engine_path, plugins=plugins)
    return runner, runner.sidecar.precision


def verify_onnx_parity(onnx_path, **options) -> ParityReport:
    """ONNX Runtime on ``onnx_path`` against eager PyTorch (options as ``verify_parity``)."""
    backend, _ = open_backend(onnx_path=onnx_path)
    return verify_parity(backend, onnx_path, **options)
