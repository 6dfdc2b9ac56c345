"""verify-parity: run eager PyTorch and a backend on the same inputs and compare them (see ``parity``)."""

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from detr_deploy.errors import DetrDeployError
from detr_deploy.model_source import model_of_export
from detr_deploy.options import check_fits_in_memory, check_probability, check_tolerance
from detr_deploy.parity import TOLERANCES, ParityCase, ParityReport, Tolerance, compare_outputs
from detr_deploy.preprocessing import InputRecipe
from detr_deploy.runtime.eager import EagerRunner

DEFAULT_SIZES = ((480, 640), (608, 512), (427, 701))
DEFAULT_BATCH_SIZES = (1, 2)


def verify_parity(
    backend,
    artifact,
    *,
    checkpoint=None,
    model_name: str = None,
    sizes=None,
    batch_sizes=DEFAULT_BATCH_SIZES,
    images=(),
    precision: str = "fp32",
    rtol: float = None,
    atol: float = None,
    score_threshold: float = 0.5,
    seed: int = 0,
    on_case: Callable[[ParityCase], None] = None,
    on_unusable: Callable[[str], None] = None,
) -> ParityReport:
    """Compare ``backend`` (a runner with ``metadata``: ONNX Runtime, OpenVINO or TensorRT) with eager PyTorch.

    Inputs: seeded random images [b, 3, h, w] for each size in ``sizes`` (default: DEFAULT_SIZES rounded to the
    model's size divisor) and batch in ``batch_sizes``, or the image files in ``images`` (the model's official resize
    and normalization, batch 1 each). ``on_case`` sees each case as it is done;
    an image that cannot be used is reported to ``on_unusable`` and in the report's ``unusable_images``, and the
    others are still compared.
    """
    tolerance = resolve_tolerance(precision, rtol, atol)
    check_probability(score_threshold, "--score-threshold")
    source = model_of_export(backend.metadata, model_name=model_name, checkpoint=checkpoint)
    eager = EagerRunner(source.model, source.config.output_names, backend.metadata)
    missing = [name for name in eager.output_names if name not in backend.output_names]
    if missing:
        raise DetrDeployError(f"{artifact} has no output {', '.join(missing)}; is it an export of {source.name}?")
    if images:
        cases, unusable = image_cases(images, on_unusable, InputRecipe.from_metadata(backend.metadata))
    else:
        sizes = default_sizes(backend.size_divisor) if sizes is None else sizes
        check_fits_in_memory(source.config, sizes, batch_sizes)
        cases, unusable = random_cases(sizes, batch_sizes, seed), []
    cases = [(name, inputs, example_padding(inputs) if backend.takes_padding_mask else None) for name, inputs in cases]
    # Refuse the whole run up front rather than after the first cases.
    for _, inputs, mask in cases:
        backend.check_inputs(inputs.shape, None if mask is None else mask.shape)
    report = ParityReport(
        model=source.name,
        backend=backend.name,
        artifact=str(artifact),
        precision=precision,
        tolerance=tolerance,
        score_threshold=score_threshold,
        unusable_images=unusable,
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


def resolve_tolerance(precision: str, rtol: float = None, atol: float = None) -> Tolerance:
    """The default tolerances of ``precision`` with ``rtol``/``atol`` overriding them (each finite, >= 0)."""
    check_tolerance(rtol, "--rtol")
    check_tolerance(atol, "--atol")
    if precision not in TOLERANCES:
        raise DetrDeployError(f"unknown precision {precision!r}; choose one of: {', '.join(TOLERANCES)}")
    tolerance = TOLERANCES[precision]
    return dataclasses.replace(
        tolerance, rtol=tolerance.rtol if rtol is None else rtol, atol=tolerance.atol if atol is None else atol
    )


def random_cases(sizes, batch_sizes, seed: int) -> list[tuple[str, np.ndarray]]:
    """(name, seeded normal images [b, 3, h, w] float32) for every size and batch size."""
    rng = np.random.default_rng(seed)
    return [
        (f"batch {batch} @ {height}x{width}", rng.standard_normal((batch, 3, height, width), dtype=np.float32))
        for height, width in sizes
        for batch in batch_sizes
    ]


def default_sizes(size_divisor: int = 1) -> list[tuple[int, int]]:
    """DEFAULT_SIZES, each side rounded to the nearest multiple of ``size_divisor``."""
    return [tuple(max(1, round(side / size_divisor)) * size_divisor for side in size) for size in DEFAULT_SIZES]


def image_cases(
    images, on_unusable: Callable[[str], None] = None, recipe: InputRecipe = None
) -> tuple[list[tuple[str, np.ndarray]], list[str]]:
    """(name, [1, 3, h, w] preprocessed by ``recipe``, default DETR's) per usable image file, and the messages of
    unusable ones."""
    recipe = recipe or InputRecipe()
    cases, unusable = [], []
    for path in images:
        try:
            cases.append((Path(path).name, recipe.load_image(path)[None]))
        except DetrDeployError as error:
            unusable.append(str(error))
            if on_unusable:
                on_unusable(str(error))
    return cases, unusable


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


def open_backend(
    *, onnx_path=None, openvino_path=None, engine_path=None, plugins="auto", threads: int = None, precision: str = None
):
    """The runner for an ONNX file in ONNX Runtime (``onnx_path``) or OpenVINO (``openvino_path``, computing in
    ``precision``: "bf16" runs an fp32 file in bf16), or an engine in TensorRT (``engine_path``), and the precision it
    computes in. ``threads``: the CPU runtimes' threads. ``precision`` only chooses tolerances elsewhere."""
    from detr_deploy.runtime.open import check_kind, open_runner

    given = [path for path in (onnx_path, openvino_path, engine_path) if path is not None]
    if len(given) != 1:
        raise DetrDeployError("give exactly one of --onnx FILE.onnx, --openvino FILE.onnx or --engine FILE.engine")
    if engine_path is not None:
        check_kind(engine_path, "engine", "--engine")
        runner = open_runner(engine_path, kind="engine", plugins=plugins)
    else:
        runtime, option = ("onnxruntime", "--onnx") if onnx_path is not None else ("openvino", "--openvino")
        check_kind(given[0], "onnx", option)
        asked = precision if runtime == "openvino" else None
        runner = open_runner(given[0], kind="onnx", runtime=runtime, threads=threads, precision=asked)
    return runner, runner.precision
