#!/usr/bin/env python3
"""CPU deployment of every family, in one run on this machine (issue 23): eager PyTorch against ONNX Runtime and
OpenVINO on our dynamic export, on the family's "official" export, and in bf16 and int8, at batch 1 and 4.

    python benchmarks/cpu_backends.py                                   # six families, 640x640, 2 threads
    python benchmarks/cpu_backends.py --models detr_r50 --batches 1 --precisions fp32 --runs 3
    python benchmarks/cpu_backends.py --chart cpu_backends.png --json cpu_backends.json

Backends per model (each one a row):
  - eager PyTorch (fp32), the reference of every ratio and every max |diff|;
  - ONNX Runtime / OpenVINO on our export (our runners, with the MSDeformAttn formulation each runtime runs fastest
    and a shape-specialized session/model for each benchmarked shape after SPECIALIZE_AFTER_RUNS runs of it);
  - ONNX Runtime / OpenVINO on the official export: what the family's own export gives a user, a plain
    ``torch.onnx.export`` of the same weights at the benchmark's size with a dynamic batch (RT-DETR's and D-FINE's
    ``export_onnx.py`` export that way: 640x640, batch "N"; DETR, Deformable DETR and DINO ship no exporter, so a
    user writes that same call), deformable attention in its official PyTorch formulation (grid_sample);
  - OpenVINO bf16 (its inference precision hint) on our export;
  - int8: our export quantized for each runtime by its own quantizer (``exporters.cpu_quantize``: ONNX Runtime's
    static QDQ quantization, NNCF for OpenVINO), calibrated on --calibration-count generated images.

Random weights (seed 0): speed does not depend on the values; max |diff| is against eager at batch 1. Warm-up is
excluded (three runs per shape, so the runners' shape-specialized models are in use). Within each round the backends
run in turn, rotating who goes first; each ratio is the median of the ratios taken within one round (this shared
VM's speed drifts by tens of percent from minute to minute).
"""

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detr_deploy.models import build_model, get_model_spec  # noqa: E402
from detr_deploy.runtime.eager import EagerRunner  # noqa: E402
from detr_deploy.runtime.shape_specialization import SPECIALIZE_AFTER_RUNS  # noqa: E402
from exporters.onnx import export_onnx  # noqa: E402

DEFAULT_MODELS = "detr_r50,deformable_detr_r50,rtdetr_r50vd,dino_4scale_r50,dfine_hgnetv2_s,rfdetr_nano"
EAGER = "eager PyTorch"


@dataclass
class Row:
    model: str
    backend: str
    runtime: str  # eager, onnxruntime, openvino
    export: str  # ours, official, -
    precision: str
    max_diff: dict = field(default_factory=dict)  # output name -> max |backend - eager| at batch 1
    ms: dict = field(default_factory=dict)  # batch -> median latency
    images_per_s: dict = field(default_factory=dict)  # batch -> throughput
    vs_eager: dict = field(default_factory=dict)  # batch -> paired speed ratio
    paired: dict = field(default_factory=dict)  # batch -> other backend -> paired speed ratio against it


def official_export(model: torch.nn.Module, output_names, images: torch.Tensor, path: Path) -> bool:
    """``torch.onnx.export`` of ``model`` at ``images``' size with a dynamic batch, the op our export keeps as one node
    replaced by the official PyTorch formulation it stands for (grid_sample); False when it does not export."""
    import onnx

    import detr_deploy.models.deformable_attention as deformable_attention
    import detr_deploy.models.rtdetr_decoder as rtdetr_decoder
    from detr_deploy.ops.ms_deform_attn import ms_deform_attn, ms_deform_attn_reference

    # Deformable DETR and DINO call it by name; RT-DETR, D-FINE and RF-DETR through rtdetr_decoder's table.
    deformable_attention.ms_deform_attn = ms_deform_attn_reference
    rtdetr_decoder._MSDA_FUNCTIONS["default"] = ms_deform_attn_reference
    batch = torch.export.Dim("batch", min=1, max=64)
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(
                    model,
                    (images.repeat(2, 1, 1, 1),),  # torch.export specializes a dimension whose example size is 1
                    str(path),
                    input_names=["images"],
                    output_names=list(output_names),
                    dynamic_shapes=({0: batch},),
                    dynamo=True,
                )
            except Exception:  # noqa: BLE001  (RF-DETR does not trace through torch.onnx.export: no official row)
                return False
    finally:
        deformable_attention.ms_deform_attn = ms_deform_attn
        rtdetr_decoder._MSDA_FUNCTIONS["default"] = ms_deform_attn
    saved = onnx.load(str(path))
    saved.ir_version = min(saved.ir_version, 10)
    onnx.save(saved, str(path))
    return True


def interleaved(runs: dict, warmup: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds per run of each backend, timed in turn within each round (rotating who goes first)."""
    for name, run in runs.items():
        for _ in range(warmup[name]):
            run()
    samples = {name: [] for name in runs}
    names = list(runs)
    for index in range(rounds):
        for name in names[index % len(names) :] + names[: index % len(names)]:
            start = time.perf_counter()
            runs[name]()
            samples[name].append(time.perf_counter() - start)
    return samples


def paired(samples: dict, baseline: str, backend: str) -> float:
    """Median over rounds of baseline seconds / backend seconds in the same round."""
    return statistics.median(base / other for base, other in zip(samples[baseline], samples[backend]))


def open_backends(name, model, config, directory: Path, size, precisions, calibration_count, threads, shapes):
    """[(Row, runner)] for one model: eager first, then every file in every runtime, each runner keeping a model
    specialized to each of the ``shapes`` input shapes the benchmark runs (a service running those sizes)."""
    from detr_deploy.runtime.onnxruntime import OnnxRuntimeRunner
    from detr_deploy.runtime.openvino import OpenVINORunner
    from exporters.cpu_quantize import quantize_for_cpu

    def open_runner(path, runtime, threads, precision=None):
        runner = OnnxRuntimeRunner if runtime == "onnxruntime" else OpenVINORunner
        return runner(path, threads=threads, precision=precision, shape_sessions=shapes)

    height, width = size
    ours, official = directory / f"{name}.onnx", directory / f"{name}-official.onnx"
    export_onnx(model, config, ours, model_name=name, weights="random(seed=0)")
    example = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, height, width), dtype=np.float32))
    exports = [("ours", ours)] + [("official", official)] * official_export(
        model, config.output_names, example, official
    )
    backends = [(Row(name, EAGER, "eager", "-", "fp32"), EagerRunner(model, config.output_names))]
    for runtime, label in (("onnxruntime", "ONNX Runtime"), ("openvino", "OpenVINO")):
        for export, path in exports:
            runner = open_runner(path, runtime=runtime, threads=threads)
            backends.append(
                (Row(name, f"{label}, {'our' if export == 'ours' else export} export", runtime, export, "fp32"), runner)
            )
    if "bf16" in precisions:
        runner = open_runner(ours, runtime="openvino", threads=threads, precision="bf16")
        backends.append((Row(name, "OpenVINO bf16, our export", "openvino", "ours", "bf16"), runner))
    if "int8" in precisions:
        generator = np.random.default_rng(1)
        calibration = [
            generator.standard_normal((1, 3, height, width), dtype=np.float32) for _ in range(calibration_count)
        ]
        for runtime, label in (("onnxruntime", "ONNX Runtime"), ("openvino", "OpenVINO")):
            quantized = directory / f"{name}-int8-{runtime}.onnx"
            quantize_for_cpu(
                ours, quantized, runtime=runtime, calibration_images=calibration, calibration_count=calibration_count
            )
            runner = open_runner(quantized, runtime=runtime, threads=threads)
            backends.append((Row(name, f"{label} int8, our export", runtime, "ours", "int8"), runner))
    return backends


def benchmark_model(name, size, batches, precisions, rounds, calibration_count, threads, directory) -> list[Row]:
    config = get_model_spec(name).config
    model = build_model(config, seed=0).eval()
    backends = open_backends(
        name, model, config, directory, size, precisions, calibration_count, threads, shapes=len(batches)
    )
    rows = [row for row, _ in backends]
    generator = np.random.default_rng(0)
    for batch in batches:
        images = generator.standard_normal((batch, 3, *size), dtype=np.float32)
        if batch == batches[0]:
            reference = backends[0][1].run(images[:1])
            for row, runner in backends[1:]:
                got = runner.run(images[:1])
                row.max_diff = {output: float(np.abs(got[output] - reference[output]).max()) for output in reference}
        runs = {row.backend: (lambda runner=runner, images=images: runner.run(images)) for row, runner in backends}
        warmup = {row.backend: SPECIALIZE_AFTER_RUNS if row.runtime != "eager" else 1 for row, _ in backends}
        samples = interleaved(runs, warmup, rounds)
        for row in rows:
            seconds = statistics.median(samples[row.backend])
            row.ms[batch] = seconds * 1e3
            row.images_per_s[batch] = batch / seconds
            row.vs_eager[batch] = paired(samples, EAGER, row.backend)
        # The ratios between backends that the summary reports, each taken within rounds.
        for row in rows:
            row.paired[batch] = {other.backend: paired(samples, other.backend, row.backend) for other in rows}
    for _, runner in backends:
        runner.close()
    return rows


def summary(rows: list[Row], batch: int) -> list[dict]:
    """Per model, the figures issue 23 asks for, at ``batch``."""
    lines = []
    for model in dict.fromkeys(row.model for row in rows):
        mine = {row.backend: row for row in rows if row.model == model}

        def ratio(faster: str, slower: str, mine=mine) -> float:
            return mine[faster].paired[batch][slower] if faster in mine and slower in mine else float("nan")

        fp32 = [row for row in mine.values() if row.precision == "fp32" and row.export == "ours"]
        fastest = max(fp32, key=lambda row: row.vs_eager[batch])
        lines.append(
            {
                "model": model,
                "fastest fp32": fastest.backend.split(",")[0],
                "fastest vs eager": fastest.vs_eager[batch],
                "ORT vs eager": mine["ONNX Runtime, our export"].vs_eager[batch],
                "OV vs eager": mine["OpenVINO, our export"].vs_eager[batch],
                "ORT ours/official": ratio("ONNX Runtime, our export", "ONNX Runtime, official export"),
                "OV ours/official": ratio("OpenVINO, our export", "OpenVINO, official export"),
                "OV bf16/fp32": ratio("OpenVINO bf16, our export", "OpenVINO, our export"),
                "ORT int8/fp32": ratio("ONNX Runtime int8, our export", "ONNX Runtime, our export"),
                "OV int8/fp32": ratio("OpenVINO int8, our export", "OpenVINO, our export"),
            }
        )
    return lines


def chart(rows: list[Row], batches, path: Path) -> None:
    """Speed against eager PyTorch per model and backend, one panel per batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(row.model for row in rows))
    backends = [backend for backend in dict.fromkeys(row.backend for row in rows) if backend != EAGER]
    figure, axes = plt.subplots(len(batches), 1, figsize=(12, 4.5 * len(batches)), squeeze=False)
    width = 0.8 / len(backends)
    for axis, batch in zip(axes[:, 0], batches):
        for index, backend in enumerate(backends):
            values = [
                next((r.vs_eager[batch] for r in rows if r.model == m and r.backend == backend), 0) for m in models
            ]
            axis.bar(np.arange(len(models)) + index * width, values, width, label=backend)
        axis.axhline(1.0, color="black", linewidth=0.8)
        axis.set_xticks(np.arange(len(models)) + 0.4 - width / 2, models)
        axis.set_ylabel("speed vs eager PyTorch (x)")
        axis.set_title(f"batch {batch}")
    axes[0, 0].legend(fontsize=7, ncol=3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--size", default="640x640", help="HEIGHTxWIDTH")
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--precisions", default="fp32,bf16,int8", help="fp32 always; bf16 and/or int8 besides")
    parser.add_argument("--runs", type=int, default=3, help="timed rounds per batch size")
    parser.add_argument("--calibration-count", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chart", type=Path, help="write a PNG chart of the speed ratios here")
    parser.add_argument("--json", type=Path, help="write every row as JSON here")
    args = parser.parse_args()
    size = tuple(int(side) for side in args.size.split("x"))
    batches = [int(batch) for batch in args.batches.split(",")]
    precisions = set(args.precisions.split(","))
    torch.set_num_threads(args.threads)
    rows = []
    print(
        f"{size[0]}x{size[1]}, batches {args.batches}, {args.threads} threads, median of {args.runs} interleaved rounds"
    )
    header = f"{'model':<20} {'backend':<34} " + " ".join(
        f"{f'b{b} ms':>9} {f'b{b} img/s':>9} {f'b{b} x':>7}" for b in batches
    )
    print(header + f" {'max|diff| logits':>17} {'boxes':>9}")
    with tempfile.TemporaryDirectory() as directory:
        for name in args.models.split(","):
            model_rows = benchmark_model(
                name, size, batches, precisions, args.runs, args.calibration_count, args.threads, Path(directory)
            )
            for row in model_rows:
                figures = " ".join(
                    f"{row.ms[b]:>9.0f} {row.images_per_s[b]:>9.2f} {row.vs_eager[b]:>6.2f}x" for b in batches
                )
                logits = row.max_diff.get("pred_logits", 0.0)
                boxes = row.max_diff.get("pred_boxes", 0.0)
                print(f"{name:<20} {row.backend:<34} {figures} {logits:>17.1e} {boxes:>9.1e}", flush=True)
            rows.extend(model_rows)
    for batch in batches:
        print(f"\nbatch {batch}: ratios of speeds, each paired within rounds")
        lines = summary(rows, batch)
        keys = list(lines[0])
        print(" ".join(f"{key:>17}" for key in keys))
        for line in lines:
            print(
                " ".join(f"{value:>17.2f}" if isinstance(value, float) else f"{value:>17}" for value in line.values())
            )
    if args.chart:
        chart(rows, batches, args.chart)
        print(f"wrote {args.chart}")
    if args.json:
        args.json.write_text(json.dumps([asdict(row) for row in rows], indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
