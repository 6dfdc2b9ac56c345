#!/usr/bin/env python3
"""Eager PyTorch vs ONNX Runtime (CPU) latency on the same machine, in one run, as a ratio.

    python benchmarks/latency.py                      # detr_r50 and deformable_detr_r50, 1x3x800x1088
    python benchmarks/latency.py --models detr_r50 --sizes 800x1088 --runs 10
    python benchmarks/latency.py --models rtdetr_r50vd,dino_4scale_r50 --sizes 640x640,800x1088

Random weights are fine here: latency does not depend on the values. Warm-up runs are excluded; eager and ONNX Runtime
runs alternate, and the median of each is reported.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detr_deploy.models import build_model, get_model_spec  # noqa: E402
from detr_deploy.runtime.eager import EagerRunner  # noqa: E402
from detr_deploy.runtime.onnxruntime import OnnxRuntimeRunner  # noqa: E402
from exporters.onnx import export_onnx  # noqa: E402


def interleaved_medians(runners, images, warmup: int, runs: int) -> list[float]:
    """Median seconds per runner, timing the runners in turn so that both see the same machine conditions
    (on a shared 2-core machine, back-to-back blocks of runs drift apart)."""
    for _ in range(warmup):
        for run in runners:
            run(images)
    timings = [[] for _ in runners]
    for _ in range(runs):
        for run, samples in zip(runners, timings):
            start = time.perf_counter()
            run(images)
            samples.append(time.perf_counter() - start)
    return [statistics.median(samples) for samples in timings]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="detr_r50,deformable_detr_r50")
    parser.add_argument("--sizes", "--size", default="800x1088", help="HEIGHTxWIDTH list")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--msda", default="plugin", choices=["plugin", "grid-sample"])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes.split(",")]
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)

    print(f"batch {args.batch}, {args.threads} threads, median of {args.runs} runs after {args.warmup}")
    print(f"{'model':<28} {'size':>10} {'eager ms':>10} {'ORT ms':>10} {'speed-up':>9}")
    with tempfile.TemporaryDirectory() as directory:
        for name in args.models.split(","):
            config = get_model_spec(name).config
            model = build_model(config, seed=0)
            path = Path(directory) / f"{name}.onnx"
            export_onnx(model, config, path, model_name=name, msda=args.msda, weights="random(seed=0)")
            eager = EagerRunner(model, config.output_names)
            ort = OnnxRuntimeRunner(path, threads=args.threads)
            for height, width in sizes:
                images = rng.standard_normal((args.batch, 3, height, width), dtype=np.float32)
                eager_s, ort_s = interleaved_medians([eager.run, ort.run], images, args.warmup, args.runs)
                print(
                    f"{name:<28} {height:>5}x{width:<4} {eager_s * 1e3:>10.0f} {ort_s * 1e3:>10.0f} "
                    f"{eager_s / ort_s:>8.2f}x",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
