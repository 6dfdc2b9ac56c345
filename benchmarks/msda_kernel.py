#!/usr/bin/env python3
"""Our CUDA MSDA kernel vs the PyTorch grid_sample reference and vs TensorRT OSS's kernel schedule, on the GPU.

    python benchmarks/msda_kernel.py [--kernel-library libdetr_msda_cuda.so] [--oss-library libmsda_oss.so]
                                     [--runs 50] [--json kernel.json]

Shapes of Deformable DETR at 800x1066: encoder (N=1, Lq=S=17821, M=8, L=4, P=4, D=32) and decoder (Lq=300); value
in fp32, fp16 and bf16. Per row: parity of our kernel with the fp32 reference on the same (rounded) inputs, within
the tolerances of tests/plugins/test_msda_cuda_kernel.py; the median times of the reference, our kernel and the OSS
schedule (benchmarks/msda_oss_schedule.cu: fp32 and fp16 only, as TensorRT OSS has it); our kernel's achieved
bytes/s over the bytes it must move at least (value read once, sampling inputs read, output written), against the
GPU's physical memory bandwidth. Without --kernel-library it builds the kernel (cmake, nvcc) for this GPU, and
without --oss-library it compiles the OSS schedule with nvcc when there is one. Exits 1 without a GPU or when a
parity row is over its tolerance.
"""

import argparse
import ctypes
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detr_deploy.gpu_check.plan import physical_bandwidth  # noqa: E402
from detr_deploy.gpu_check.report import KernelBenchmark, KernelTiming, format_timing  # noqa: E402
from detr_deploy.gpu_check.steps import oss_schedule_command  # noqa: E402
from detr_deploy.io import atomic_output  # noqa: E402
from detr_deploy.ops import ms_deform_attn_reference  # noqa: E402
from detr_deploy.ops.msda_native import MsdaCudaKernel  # noqa: E402
from detr_deploy.plugins import build_plugins, find_nvcc  # noqa: E402

LEVELS = [(100, 134), (50, 67), (25, 34), (13, 17)]
HEADS, HEAD_DIM, POINTS = 8, 32, 4
# (name, value type, the sampling inputs' type our kernel gets, max abs error against the fp32 reference): the
# modes and tolerances of tests/plugins/test_msda_cuda_kernel.py (bf16 keeps its sampling inputs in fp32).
PRECISIONS = [
    ("fp32", torch.float32, torch.float32, 1e-5),
    ("fp16", torch.float16, torch.float16, 5e-3),
    ("bf16", torch.bfloat16, torch.float32, 3e-2),
]
# The OSS schedule's type codes (as TensorRT's DataType); it has no bf16.
OSS_TYPE_CODES = {torch.float32: 0, torch.float16: 1}
SHAPES = (("encoder", sum(h * w for h, w in LEVELS)), ("decoder", 300))


class OssSchedule:
    """TensorRT OSS's schedule (benchmarks/msda_oss_schedule.cu) on torch CUDA tensors: fp32 or fp16, the sampling
    inputs in the value's type."""

    def __init__(self, library: Path):
        pointer, i32, i64 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64
        self._function = ctypes.CDLL(str(library)).msda_oss_schedule_forward
        self._function.argtypes = [pointer, ctypes.c_int] + [pointer] * 5 + [i64, i64, i32, i32, i64, i32, i32, pointer]
        self._function.restype = ctypes.c_int

    def __call__(self, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        """Shapes as ``ms_deform_attn``; returns [N, Lq, M, D] in the value's type."""
        batch, num_values, heads, head_dim = value.shape
        _, num_queries, _, levels, points, _ = sampling_locations.shape
        output = torch.empty((batch, num_queries, heads, head_dim), dtype=value.dtype, device=value.device)
        tensors = [
            value.contiguous(),
            spatial_shapes.int().contiguous(),
            level_start_index.int().contiguous(),
            sampling_locations.to(value.dtype).contiguous(),
            attention_weights.to(value.dtype).contiguous(),
        ]
        status = self._function(
            tensors[0].data_ptr(),
            OSS_TYPE_CODES[value.dtype],
            *(t.data_ptr() for t in tensors[1:]),
            output.data_ptr(),
            batch,
            num_values,
            heads,
            head_dim,
            num_queries,
            levels,
            points,
            torch.cuda.current_stream().cuda_stream,
        )
        if status != 0:
            raise RuntimeError(f"the OSS schedule refused its arguments (status {status})")
        return output


def inputs(num_queries: int):
    """fp32 inputs on the GPU: value [1, S, M, D], shapes [L, 2], starts [L], locations [1, Lq, M, L, P, 2] reaching
    a little past the maps (zero padding is exercised), weights [1, Lq, M, L, P] summing to 1 per head."""
    generator = torch.Generator(device="cuda").manual_seed(0)
    shapes = torch.tensor(LEVELS, device="cuda")
    starts = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
    total = int(shapes.prod(1).sum())
    value = torch.randn(1, total, HEADS, HEAD_DIM, device="cuda", generator=generator)
    locations = torch.rand(1, num_queries, HEADS, len(LEVELS), POINTS, 2, device="cuda", generator=generator)
    locations = locations * 1.2 - 0.1
    weights = torch.rand(1, num_queries, HEADS, len(LEVELS), POINTS, device="cuda", generator=generator)
    weights = weights / weights.sum((-1, -2), keepdim=True)
    return value, shapes, starts, locations, weights


def median_ms(function, args, runs: int) -> float:
    for _ in range(3):
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


def max_error(output: torch.Tensor, expected: torch.Tensor) -> float:
    return (output.float() - expected).abs().max().item()


def benchmark(kernel: MsdaCudaKernel, oss: OssSchedule | None, runs: int) -> KernelBenchmark:
    properties = torch.cuda.get_device_properties(torch.cuda.current_device())
    peak = physical_bandwidth(properties, torch.cuda.current_device())
    result = KernelBenchmark(properties.name, runs, peak.bytes_per_s, peak.source)
    for shape, num_queries in SHAPES:
        value, shapes, starts, locations, weights = inputs(num_queries)
        for name, dtype, sampling_dtype, tolerance in PRECISIONS:
            ours_args = (value.to(dtype), shapes, starts, locations.to(sampling_dtype), weights.to(sampling_dtype))
            # The reference runs wholly in the value's type (grid_sample wants the grid in the input's type).
            reference_args = (ours_args[0], shapes, starts, locations.to(dtype), weights.to(dtype))
            # Parity on the very inputs each implementation gets: the kernel's error, not the inputs' rounding.
            expected = ms_deform_attn_reference(*(t.float() if t.is_floating_point() else t for t in ours_args))
            kernel_error = max_error(kernel(*ours_args), expected)
            oss_ms = oss_error = None
            if oss is not None and dtype in OSS_TYPE_CODES:
                oss_expected = ms_deform_attn_reference(
                    *(t.float() if t.is_floating_point() else t for t in reference_args)
                )
                oss_error = max_error(oss(*reference_args), oss_expected)
                oss_ms = median_ms(oss, reference_args, runs)
            kernel_ms = median_ms(kernel, ours_args, runs)
            moved = sum(t.numel() * t.element_size() for t in ours_args if t.is_floating_point())
            moved += num_queries * HEADS * HEAD_DIM * ours_args[0].element_size()
            result.timings.append(
                KernelTiming(
                    shape=shape,
                    precision=name,
                    sampling_precision=str(sampling_dtype).removeprefix("torch."),
                    kernel_max_error=kernel_error,
                    tolerance=tolerance,
                    reference_ms=median_ms(ms_deform_attn_reference, reference_args, runs),
                    kernel_ms=kernel_ms,
                    oss_schedule_ms=oss_ms,
                    oss_schedule_max_error=oss_error,
                    bytes_moved=moved,
                    kernel_bytes_per_s=moved / (kernel_ms / 1e3),
                )
            )
    return result


def _oss_schedule(directory: Path, architecture: str) -> OssSchedule | None:
    nvcc = find_nvcc()
    if nvcc is None:
        return None
    library = directory / "libmsda_oss_schedule.so"
    subprocess.run(oss_schedule_command(nvcc, architecture, library), check=True, capture_output=True)
    return OssSchedule(library)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernel-library", type=Path, help="a built libdetr_msda_cuda.so (default: build one)")
    parser.add_argument("--oss-library", type=Path, help="benchmarks/msda_oss_schedule.cu built (default: nvcc)")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per median (default 50)")
    parser.add_argument("--json", type=Path, help="also write the results here (KernelBenchmark as JSON)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU: this benchmark needs one")
        return 1
    major, minor = torch.cuda.get_device_capability()
    with tempfile.TemporaryDirectory() as directory:
        library = args.kernel_library
        if library is None:
            library = build_plugins(directory, cuda_architectures=f"{major}{minor}").cuda_library
        oss = OssSchedule(args.oss_library) if args.oss_library else _oss_schedule(Path(directory), f"{major}{minor}")
        result = benchmark(MsdaCudaKernel(library), oss, args.runs)
    peak = "unknown" if result.peak_bytes_per_s is None else f"{result.peak_bytes_per_s / 1e12:.2f} TB/s"
    print(f"{result.device}, median of {result.runs} runs; physical bandwidth {peak} ({result.peak_source})")
    for timing in result.timings:
        print(format_timing(timing, result.peak_bytes_per_s))
    if args.json:
        with atomic_output(args.json) as temporary:
            Path(temporary).write_text(json.dumps(dataclasses.asdict(result), indent=2))
    return 0 if all(timing.passed for timing in result.timings) else 1


if __name__ == "__main__":
    sys.exit(main())
