#!/usr/bin/env python3
"""Our CUDA MSDA kernel vs the PyTorch grid_sample reference on the GPU (needs a CUDA GPU and nvcc).

    python benchmarks/msda_kernel.py

Shapes of Deformable DETR at 800x1066: encoder (N=1, Lq=S~17821, M=8, L=4, P=4, D=32) and decoder (Lq=300).
Prints the median time of each, their ratio, and the kernel's achieved bytes/s over the bytes it must move at
least (value read once, sampling inputs read, output written).
"""

import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detr_deploy.ops import ms_deform_attn_reference  # noqa: E402
from detr_deploy.ops.msda_native import MsdaCudaKernel  # noqa: E402
from detr_deploy.plugins import build_plugins  # noqa: E402

LEVELS = [(100, 134), (50, 67), (25, 34), (13, 17)]


def inputs(num_queries: int, dtype: torch.dtype):
    generator = torch.Generator(device="cuda").manual_seed(0)
    shapes = torch.tensor(LEVELS, device="cuda")
    starts = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
    total = int(shapes.prod(1).sum())
    value = torch.randn(1, total, 8, 32, device="cuda", generator=generator).to(dtype)
    locations = torch.rand(1, num_queries, 8, 4, 4, 2, device="cuda", generator=generator).to(dtype)
    weights = torch.rand(1, num_queries, 8, 4, 4, device="cuda", generator=generator).softmax(-1).to(dtype)
    return value, shapes, starts, locations, weights


def median_ms(function, args, runs: int = 50) -> float:
    for _ in range(5):
        function(*args)
    timings = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        function(*args)
        end.record()
        torch.cuda.synchronize()
        timings.append(start.elapsed_time(end))
    return statistics.median(timings)


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA GPU: this benchmark needs one")
        return 1
    major, minor = torch.cuda.get_device_capability()
    with tempfile.TemporaryDirectory() as directory:
        kernel = MsdaCudaKernel(build_plugins(directory, cuda_architectures=f"{major}{minor}").cuda_library)
        print(f"{torch.cuda.get_device_name()}, median of 50 runs")
        print(f"{'shape':<10} {'type':<8} {'reference ms':>13} {'kernel ms':>10} {'speed-up':>9} {'kernel GB/s':>12}")
        for name, num_queries in (("encoder", sum(h * w for h, w in LEVELS)), ("decoder", 300)):
            for dtype in (torch.float32, torch.float16):
                args = inputs(num_queries, dtype)
                reference = median_ms(ms_deform_attn_reference, args)
                ours = median_ms(kernel, args)
                moved = sum(t.numel() * t.element_size() for t in args) + num_queries * 8 * 32 * args[0].element_size()
                print(
                    f"{name:<10} {str(dtype).split('.')[-1]:<8} {reference:>13.3f} {ours:>10.3f} "
                    f"{reference / ours:>8.1f}x {moved / ours / 1e6:>12.1f}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
