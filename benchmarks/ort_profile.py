#!/usr/bin/env python3
"""Where ONNX Runtime spends its time on our dynamic export vs a static export of the same weights, from ONNX
Runtime's own profiler (issue 15).

    python benchmarks/ort_profile.py                         # detr_r50, 800x1088, batch 1, 2 threads
    python benchmarks/ort_profile.py --model deformable_detr_r50 --size 480x640

Three sessions: our export as it is (symbolic batch/height/width), our export with those dimensions fixed at load
(what ``OnnxRuntimeRunner`` does for a shape it keeps seeing), and the static export. Prints the kernel time per op
type (median over the profiled runs), the residual convolutions apart (NCHWc Conv with a fourth, Sum input: they
accumulate into the residual's buffer in place only when the planner can prove equal sizes), and the node count of
each optimized graph.
"""

import argparse
import collections
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_backends import static_export  # noqa: E402

from detr_deploy.models import build_model, get_model_spec  # noqa: E402
from exporters.onnx import export_onnx  # noqa: E402


def profile(path: Path, images: np.ndarray, threads: int, runs: int, fixed: dict[str, int], prefix: Path):
    """-> ({op type: median ms per run}, median ms of a whole run, node count of the optimized graph)."""
    import onnx
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    options.enable_profiling = True
    options.profile_file_prefix = str(prefix)
    options.optimized_model_filepath = str(prefix) + "-optimized.onnx"
    for name, size in fixed.items():
        options.add_free_dimension_override_by_name(name, size)
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    residual_nodes = {
        node.name
        for node in onnx.load(options.optimized_model_filepath).graph.node
        if node.op_type == "Conv" and len(node.input) == 4
    }
    session.run(None, {"images": images})  # warm-up: allocations, the arena's growth
    for _ in range(runs):
        session.run(None, {"images": images})
    events = json.loads(Path(session.end_profiling()).read_text())
    per_run = [collections.Counter() for _ in range(runs + 1)]
    run_ms, index = [], -1
    for event in events:
        if event.get("name") == "model_run":
            run_ms.append(event["dur"] / 1e3)
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        if event["args"]["op_name"] == "Conv" and event["name"].removesuffix("_kernel_time") in residual_nodes:
            op = "Conv (+residual)"
        else:
            op = event["args"]["op_name"]
        index = min(len(run_ms), runs)  # events of run k come before its model_run event
        per_run[index][op] += event["dur"] / 1e3
    timed = per_run[1:]
    ops = {op for counter in timed for op in counter}
    medians = {op: statistics.median(counter[op] for counter in timed) for op in ops}
    nodes = len(onnx.load(options.optimized_model_filepath).graph.node)
    return medians, statistics.median(run_ms[1:]), nodes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="detr_r50")
    parser.add_argument("--size", default="800x1088", help="HEIGHTxWIDTH")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    height, width = (int(side) for side in args.size.split("x"))
    torch.set_num_threads(args.threads)
    images = np.random.default_rng(0).standard_normal((1, 3, height, width), dtype=np.float32)
    config = get_model_spec(args.model).config
    model = build_model(config, seed=0).eval()
    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory)
        ours, static = folder / "ours.onnx", folder / "static.onnx"
        export_onnx(model, config, ours, model_name=args.model, msda="plugin", weights="random(seed=0)")
        static_export(model, config.output_names, torch.from_numpy(images), static)
        fixed = {"batch": 1, "height": height, "width": width}
        sessions = {
            "ours, dynamic": (ours, {}),
            "ours, dims fixed at load": (ours, fixed),
            "static export": (static, {}),
        }
        results = {
            label: profile(path, images, args.threads, args.runs, dims, folder / label.replace(" ", "_"))
            for label, (path, dims) in sessions.items()
        }
    labels = list(results)
    print(f"{args.model}, batch 1, {height}x{width}, {args.threads} threads; ms per run (median of {args.runs})")
    print(f"{'op type':<24}" + "".join(f"{label:>26}" for label in labels))
    ops = sorted(
        {op for medians, _, _ in results.values() for op in medians},
        key=lambda op: -max(results[label][0].get(op, 0.0) for label in labels),
    )
    for op in ops[:15]:
        print(f"{op:<24}" + "".join(f"{results[label][0].get(op, 0.0):>26.1f}" for label in labels))
    print(f"{'whole run':<24}" + "".join(f"{results[label][1]:>26.1f}" for label in labels))
    print(f"{'optimized graph nodes':<24}" + "".join(f"{results[label][2]:>26d}" for label in labels))
    return 0


if __name__ == "__main__":
    sys.exit(main())
