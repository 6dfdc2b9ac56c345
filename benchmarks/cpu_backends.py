#!/usr/bin/env python3
"""CPU deployment, in one run on this machine: eager PyTorch vs ONNX Runtime vs OpenVINO on our dynamic export, and
ONNX Runtime on a static export of the same weights (plain ``torch.onnx.export`` at the benchmark's size).

    python benchmarks/cpu_backends.py                   # detr_r50, deformable_detr_r50; 800x1088, batch 1, 2 threads
    python benchmarks/cpu_backends.py --models detr_r50 --runs 5

Prints per model the median latency of each backend, then two ratios (issue 15's targets):
  - our export's ONNX Runtime speed / the static export's (target >= 1.0x), also without the runner's
    shape-specialized session (``shape_sessions=0``: the dynamic session alone) to show what that session buys
    (OpenVINO's rows show the same for its runner);
  - the fastest CPU backend's speed / eager PyTorch's (target >= 2.5x).

Random weights (seed 0): latency does not depend on the values. The static export of Deformable DETR runs the
official pure-PyTorch deformable attention (``grid_sample``), as an export of the official code does. Warm-up runs
are excluded (the runner opens its specialized session during them); the backends run in turn within each round, the
median of each is reported, and every ratio is the median of the ratios taken within one round (``paired_speedup``):
this shared VM's speed drifts by tens of percent from minute to minute.
"""

import argparse
import contextlib
import importlib.util
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detr_deploy.models import build_model, get_model_spec  # noqa: E402
from detr_deploy.runtime.eager import EagerRunner  # noqa: E402
from detr_deploy.runtime.onnxruntime import OnnxRuntimeRunner  # noqa: E402
from exporters.onnx import export_onnx  # noqa: E402


def static_export(model: torch.nn.Module, output_names, images: torch.Tensor, path: Path) -> None:
    """What a user gets from ``torch.onnx.export(model, images, path)`` at one size: no dynamic shapes, the op our
    export keeps as one node replaced by the official PyTorch formulation it stands for."""
    import onnx

    import detr_deploy.models.deformable_attention as deformable_attention
    from detr_deploy.ops.ms_deform_attn import ms_deform_attn, ms_deform_attn_reference

    deformable_attention.ms_deform_attn = ms_deform_attn_reference
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (images,), str(path), input_names=["images"], output_names=list(output_names), dynamo=True
            )
    finally:
        deformable_attention.ms_deform_attn = ms_deform_attn
    saved = onnx.load(str(path))
    saved.ir_version = min(saved.ir_version, 10)  # onnx 1.21's writer and the installed ONNX Runtime agree on 10
    onnx.save(saved, str(path))


def static_session(path: Path, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda images: session.run(None, {"images": images})


def interleaved_samples(runs_by_name: dict, images: np.ndarray, warmup: int, runs: int) -> dict[str, list[float]]:
    """Seconds of each run per backend, the backends timed in turn within each round (rotating who goes first)."""
    for _ in range(warmup):
        for run in runs_by_name.values():
            run(images)
    samples = {name: [] for name in runs_by_name}
    names = list(runs_by_name)
    for index in range(runs):
        for name in names[index % len(names) :] + names[: index % len(names)]:
            start = time.perf_counter()
            runs_by_name[name](images)
            samples[name].append(time.perf_counter() - start)
    return samples


def paired_speedup(samples: dict[str, list[float]], baseline: str, backend: str) -> float:
    """Median over rounds of baseline time / backend time in the same round: this shared VM's speed drifts by tens
    of percent within a minute, and a ratio taken within a round cancels most of that."""
    return statistics.median(base / other for base, other in zip(samples[baseline], samples[backend]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="detr_r50,deformable_detr_r50")
    parser.add_argument("--size", default="800x1088", help="HEIGHTxWIDTH")
    parser.add_argument("--msda", default="plugin", choices=["plugin", "grid-sample"])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    height, width = (int(side) for side in args.size.split("x"))
    torch.set_num_threads(args.threads)
    images = np.random.default_rng(0).standard_normal((1, 3, height, width), dtype=np.float32)
    OpenVINORunner = None
    if importlib.util.find_spec("openvino") is not None:
        from detr_deploy.runtime.openvino import OpenVINORunner

    print(
        f"batch 1, {height}x{width}, {args.threads} threads, median of {args.runs} interleaved rounds after "
        f"{args.warmup}; ratios: median of per-round ratios"
    )
    header = f"{'model':<22} {'backend':<34} {'ms':>8} {'vs eager':>9}"
    print(header)
    summary = []
    with tempfile.TemporaryDirectory() as directory:
        for name in args.models.split(","):
            config = get_model_spec(name).config
            model = build_model(config, seed=0).eval()
            ours, static = Path(directory) / f"{name}.onnx", Path(directory) / f"{name}-static.onnx"
            export_onnx(model, config, ours, model_name=name, msda=args.msda, weights="random(seed=0)")
            static_export(model, config.output_names, torch.from_numpy(images), static)
            backends = {
                "eager PyTorch": EagerRunner(model, config.output_names).run,
                "ONNX Runtime, our export": OnnxRuntimeRunner(ours, threads=args.threads).run,
                "ONNX Runtime, our export, dynamic": OnnxRuntimeRunner(
                    ours, threads=args.threads, shape_sessions=0
                ).run,
                "ONNX Runtime, static export": static_session(static, args.threads),
            }
            if OpenVINORunner is not None:
                backends["OpenVINO, our export"] = OpenVINORunner(ours, threads=args.threads).run
                dynamic = OpenVINORunner(ours, threads=args.threads, shape_sessions=0)
                backends["OpenVINO, our export, dynamic"] = dynamic.run
            samples = interleaved_samples(backends, images, args.warmup, args.runs)
            medians = {backend: statistics.median(values) for backend, values in samples.items()}
            for backend, seconds in medians.items():
                speedup = paired_speedup(samples, "eager PyTorch", backend)
                print(f"{name:<22} {backend:<34} {seconds * 1e3:>8.0f} {speedup:>8.2f}x", flush=True)
            static = "ONNX Runtime, static export"
            candidates = [b for b in medians if "static" not in b and b != "eager PyTorch"]
            fastest = max(candidates, key=lambda backend: paired_speedup(samples, "eager PyTorch", backend))
            summary.append(
                (
                    name,
                    paired_speedup(samples, static, "ONNX Runtime, our export"),
                    paired_speedup(samples, static, "ONNX Runtime, our export, dynamic"),
                    fastest,
                    paired_speedup(samples, "eager PyTorch", fastest),
                )
            )
            del backends
    print()
    print(f"{'model':<22} {'ours/static (ORT)':>18} {'dynamic/static':>15} {'fastest CPU backend':>30} {'vs eager':>9}")
    for name, ours_ratio, dynamic_ratio, fastest, speedup in summary:
        print(f"{name:<22} {ours_ratio:>17.2f}x {dynamic_ratio:>14.2f}x {fastest:>30} {speedup:>8.2f}x")
    if OpenVINORunner is None:
        print("OpenVINO is not installed (pip install openvino): its rows are missing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
