"""The GPU check's engine step, run as a child process by ``detr_deploy.gpu_check.steps``:

    python -m detr_deploy.gpu_check.engines --json engines.json --work-dir DIR [--plugin-library lib.so]

For the tiny variant (random weights, seed 0) of every family's first zoo model: export, build fp32 and fp16
engines with TensorRT (or TensorRT-RTX) for the visible GPU, and compare each with eager PyTorch on two sizes
(``verify_parity``). The JSON list of ``EngineParity`` rows is rewritten after every engine, so a step killed at its
timeout still reports the engines it finished. Needs a GPU, TensorRT and onnx."""

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

from detr_deploy.errors import DetrDeployError
from detr_deploy.gpu_check.report import EngineParity
from detr_deploy.io import atomic_output

PRECISIONS = ("fp32", "fp16")
# Sizes to compare at (rounded to each model's size divisor by verify_parity's caller here), batch 1.
PARITY_SIZES = ((320, 416), (384, 288))


def family_models() -> list[str]:
    """The first zoo model of each family, in the zoo's order."""
    from detr_deploy.models import get_model_spec, list_models

    first = {}
    for name in list_models():
        if not name.startswith("tiny_"):
            first.setdefault(get_model_spec(name).config.family, name)
    return list(first.values())


def _register_tiny(zoo_name: str) -> str:
    from detr_deploy.models import get_model_spec, list_models, register_model

    name = f"tiny_{zoo_name}"
    if name not in list_models():
        register_model(name, get_model_spec(zoo_name).config.tiny(), f"test variant of {zoo_name}")
    return name


def _rounded(size: tuple[int, int], divisor: int) -> tuple[int, int]:
    return tuple(max(1, round(side / divisor)) * divisor for side in size)


def _max_abs_error(report) -> float | None:
    errors = [tensor.max_abs_error for case in report.cases for tensor in case.tensors]
    finite = [error for error in errors if error is not None and math.isfinite(error)]
    return max(finite) if len(finite) == len(errors) and finite else (math.inf if errors else None)


def engine_parity(zoo_name: str, precision: str, work_dir: Path, plugin_library: Path | None) -> EngineParity:
    """Export (once per model), build and compare one engine of ``zoo_name``'s tiny variant."""
    from detr_deploy.models import get_model_spec
    from detr_deploy.verify import open_backend, verify_parity
    from exporters.engine_build import build_engine
    from exporters.onnx import export_model

    name = _register_tiny(zoo_name)
    onnx_path = work_dir / f"{name}.onnx"
    if not onnx_path.is_file():
        export_model(name, onnx_path, msda="plugin")
    engine = work_dir / f"{name}.{precision}.engine"
    started = time.monotonic()
    build_engine(onnx_path, engine, precision=precision, plugins=plugin_library or "none")
    build_s = time.monotonic() - started
    runner, _ = open_backend(engine_path=engine, plugins=plugin_library or "auto")
    divisor = get_model_spec(name).config.size_divisor
    sizes = [_rounded(size, divisor) for size in PARITY_SIZES]
    report = verify_parity(runner, engine, sizes=sizes, batch_sizes=[1], precision=precision)
    matched = sum(case.detections.matched for case in report.cases)
    detail = f"{len(report.cases)} cases, {matched} detections matched"
    return EngineParity(zoo_name, precision, report.passed, _max_abs_error(report), build_s, detail)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="engines of every family's tiny model against eager PyTorch")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--plugin-library", type=Path)
    args = parser.parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for zoo_name in family_models():
        for precision in PRECISIONS:
            try:
                rows.append(engine_parity(zoo_name, precision, args.work_dir, args.plugin_library))
            except DetrDeployError as error:  # this engine could not be made or run: the others still are
                rows.append(EngineParity(zoo_name, precision, False, None, 0.0, str(error)))
            with atomic_output(args.json) as temporary:
                Path(temporary).write_text(json.dumps([dataclasses.asdict(row) for row in rows], indent=2))
    return 0 if all(row.passed for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
