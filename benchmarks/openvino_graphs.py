#!/usr/bin/env python3
"""Our export against the official one in OpenVINO, kernel by kernel (issue 23: OpenVINO ran our export at
0.86-0.95x the official one for DETR, RT-DETR and D-FINE in benchmarks/cpu_backends.py).

    python benchmarks/openvino_graphs.py                       # detr_r50, rtdetr_r50vd, dfine_hgnetv2_s at 640x640
    python benchmarks/openvino_graphs.py --models detr_r50 --rounds 20 --json openvino_graphs.json

Both files are opened the way our OpenVINO runner opens them (local functions inlined, reshaped to the static input
size, fp32 inference precision, 2 threads) and run in turn, the order rotated every round (cpu_backends.interleaved);
the ratio is the median of the per-round ratios official seconds / our seconds (>= 1: ours is as fast). OpenVINO's
performance counters then give, per kernel type, how many kernels each compiled model runs and their time: the same
counts and times within noise mean the two files compile to the same work, and a gap in one run is the machine's drift.
"""

import argparse
import collections
import json
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_backends import interleaved, official_export, paired  # noqa: E402

from detr_deploy.models import build_model, get_model_spec  # noqa: E402
from exporters.onnx import export_onnx  # noqa: E402


@dataclass
class KernelType:
    kernel: str
    ours_count: int
    ours_ms: float
    official_count: int
    official_ms: float


@dataclass
class Comparison:
    model: str
    size: str
    ours_ms: float  # median of the rounds
    official_ms: float
    ours_vs_official: float  # median of the per-round speed ratios official s / ours s
    kernels: list[KernelType]


def compiled_request(path: Path, shape: list[int], threads: int):
    """An infer request of ``path`` as our runner compiles it for ``shape``, with performance counters on."""
    import onnx
    import openvino

    from detr_deploy.runtime.msda_formulation import OPENVINO_NODE_FORMULATIONS, with_node_formulations
    from detr_deploy.runtime.openvino import _openvino_input

    core = openvino.Core()
    model = onnx.load(str(path))
    with_node_formulations(model, OPENVINO_NODE_FORMULATIONS)  # as the runner does for fp32 (the official has none)
    source = _openvino_input(model, path)
    model = core.read_model(source) if isinstance(source, str) else core.read_model(source.getvalue(), b"")
    model.reshape({"images": shape})
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads, "PERF_COUNT": True}
    return core.compile_model(model, "CPU", config).create_infer_request()


def kernel_times(request) -> tuple[collections.Counter, collections.Counter]:
    """(ms, count) per kernel type of the last inference."""
    times, counts = collections.Counter(), collections.Counter()
    for info in request.profiling_info:
        times[info.node_type] += info.real_time.total_seconds() * 1e3
        counts[info.node_type] += 1
    return times, counts


def compare(name: str, height: int, width: int, rounds: int, threads: int, directory: Path) -> Comparison:
    config = get_model_spec(name).config
    model = build_model(config).eval()
    ours, official = directory / f"{name}.onnx", directory / f"{name}-official.onnx"
    export_onnx(model, config, ours, model_name=name, weights="random(seed=0)")
    example = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, height, width), dtype=np.float32))
    if not official_export(model, config.output_names, example, official):
        raise SystemExit(f"{name}: torch.onnx.export does not export it; nothing to compare")
    del model
    requests = {
        "ours": compiled_request(ours, [1, 3, height, width], threads),
        "official": compiled_request(official, [1, 3, height, width], threads),
    }
    feeds = {"images": example.numpy()}
    seconds = interleaved(
        {label: (lambda request=request: request.infer(feeds)) for label, request in requests.items()},
        warmup=dict.fromkeys(requests, 2),
        rounds=rounds,
    )
    (ours_ms, ours_count), (official_ms, official_count) = (kernel_times(requests[label]) for label in requests)
    kinds = sorted(set(ours_ms) | set(official_ms), key=lambda kind: -max(ours_ms[kind], official_ms[kind]))
    return Comparison(
        model=name,
        size=f"{height}x{width}",
        ours_ms=1e3 * statistics.median(seconds["ours"]),
        official_ms=1e3 * statistics.median(seconds["official"]),
        ours_vs_official=paired(seconds, "official", "ours"),
        kernels=[
            KernelType(kind, ours_count[kind], ours_ms[kind], official_count[kind], official_ms[kind]) for kind in kinds
        ],
    )


def table(comparison: Comparison, top: int) -> str:
    lines = [
        f"{comparison.model} {comparison.size}: ours {comparison.ours_ms:.0f} ms, official {comparison.official_ms:.0f}"
        f" ms, ours vs official {comparison.ours_vs_official:.3f}x (median of per-round ratios)",
        f"  {'kernel':24s} {'ours':>6s} {'ours ms':>9s} {'official':>9s} {'off ms':>9s}",
    ]
    for kernel in comparison.kernels[:top]:
        lines.append(
            f"  {kernel.kernel:24s} {kernel.ours_count:6d} {kernel.ours_ms:9.1f} {kernel.official_count:9d} "
            f"{kernel.official_ms:9.1f}"
        )
    total = (sum(k.ours_count for k in comparison.kernels), sum(k.official_count for k in comparison.kernels))
    lines.append(f"  {'all kernels':24s} {total[0]:6d} {'':9s} {total[1]:9d}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="detr_r50,rtdetr_r50vd,dfine_hgnetv2_s")
    parser.add_argument("--size", default="640x640", help="HEIGHTxWIDTH")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=12, help="kernel types shown per model")
    parser.add_argument("--json", type=Path, help="write every comparison as JSON here")
    args = parser.parse_args()
    height, width = (int(side) for side in args.size.split("x"))
    comparisons = []
    with tempfile.TemporaryDirectory() as directory:
        for name in args.models.split(","):
            comparisons.append(compare(name, height, width, args.rounds, args.threads, Path(directory)))
            print(table(comparisons[-1], args.top), flush=True)
    if args.json:
        args.json.write_text(json.dumps([asdict(comparison) for comparison in comparisons], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
