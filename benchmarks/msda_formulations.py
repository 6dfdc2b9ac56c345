#!/usr/bin/env python3
"""One MSDeformAttn node in each formulation of its ONNX body, in each CPU runtime, against PyTorch's reference: what
``detr_deploy/runtime/msda_formulation.py`` chooses by (issue 23).

    python benchmarks/msda_formulations.py                  # Deformable DETR-R50's encoder at 800x1088, 2 threads
    python benchmarks/msda_formulations.py --levels 80x80,40x40,20x20 --queries 300   # an RT-DETR decoder layer

Formulations: the export's own (a GridSample per level, ``exporters.msda_function.build_msda_function``) and Gathers
of the four neighbours of every point (``build_msda_gather_function``, per level and for all levels at once). The
runtimes run in turn within each round; medians are printed with each one's max |diff| from the reference.
"""

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detr_deploy import contract  # noqa: E402
from detr_deploy.ops.ms_deform_attn import ms_deform_attn_reference  # noqa: E402
from exporters.msda_function import build_msda_function  # noqa: E402
from exporters.msda_gather_function import build_msda_gather_function  # noqa: E402


def one_node_model(function, num_levels: int) -> bytes:
    """A graph of one MSDeformAttn node backed by ``function``; every size but the level count symbolic."""
    from onnx import TensorProto, helper

    node = helper.make_node(contract.MSDA_OP_TYPE, list(contract.MSDA_INPUTS), ["out"], domain=contract.MSDA_DOMAIN)
    inputs = [
        helper.make_tensor_value_info("value", TensorProto.FLOAT, ["N", "S", "M", "D"]),
        helper.make_tensor_value_info("spatial_shapes", TensorProto.INT64, [num_levels, 2]),
        helper.make_tensor_value_info("level_start_index", TensorProto.INT64, [num_levels]),
        helper.make_tensor_value_info("sampling_locations", TensorProto.FLOAT, ["N", "Q", "M", num_levels, "P", 2]),
        helper.make_tensor_value_info("attention_weights", TensorProto.FLOAT, ["N", "Q", "M", num_levels, "P"]),
    ]
    graph = helper.make_graph([node], "msda", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid(contract.MSDA_DOMAIN, contract.MSDA_DOMAIN_VERSION)]
    model = helper.make_model(graph, opset_imports=opsets, functions=[function])
    model.ir_version = 10
    return model.SerializeToString()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="100x136,50x68,25x34,13x17", help="HxW per level")
    parser.add_argument("--queries", type=int, help="[every token: an encoder layer]")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--points", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import onnx
    import onnx.inliner
    import onnxruntime
    import openvino

    levels = [tuple(int(side) for side in level.split("x")) for level in args.levels.split(",")]
    shapes = np.array(levels, dtype=np.int64)
    tokens = int(shapes.prod(1).sum())
    queries = args.queries or tokens
    generator = np.random.default_rng(0)
    feeds = {
        "value": generator.standard_normal((args.batch, tokens, args.heads, args.head_dim), dtype=np.float32),
        "spatial_shapes": shapes,
        "level_start_index": np.concatenate([[0], np.cumsum(shapes.prod(1))[:-1]]).astype(np.int64),
        "sampling_locations": generator.uniform(
            -0.1, 1.1, (args.batch, queries, args.heads, len(levels), args.points, 2)
        ).astype(np.float32),
        "attention_weights": generator.uniform(
            0, 1, (args.batch, queries, args.heads, len(levels), args.points)
        ).astype(np.float32),
    }
    torch.set_num_threads(args.threads)
    tensors = [torch.from_numpy(feeds[name]) for name in contract.MSDA_INPUTS]
    reference = ms_deform_attn_reference(*tensors).numpy()
    bodies = {
        "GridSample per level": build_msda_function(len(levels), 18),
        "Gather per level": build_msda_gather_function(len(levels), 18),
        "Gather, all levels": build_msda_gather_function(len(levels), 18, per_level=False),
    }
    runs = {"PyTorch reference (grid_sample)": lambda: ms_deform_attn_reference(*tensors).numpy()}
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.log_severity_level = args.threads, 3
    core = openvino.Core()
    for label, function in bodies.items():
        model = one_node_model(function, len(levels))
        session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        runs[f"ONNX Runtime, {label}"] = lambda session=session: session.run(None, feeds)[0]
        inlined = onnx.inliner.inline_local_functions(onnx.ModelProto.FromString(model)).SerializeToString()
        compiled = core.compile_model(
            core.read_model(io.BytesIO(inlined)),
            "CPU",
            {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": args.threads},
        )
        request = compiled.create_infer_request()
        runs[f"OpenVINO, {label}"] = lambda request=request: request.infer(feeds)[0]
    differences = {name: float(np.abs(run().reshape(reference.shape) - reference).max()) for name, run in runs.items()}
    samples = {name: [] for name in runs}
    for _ in range(args.runs):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - start)
    print(
        f"MSDeformAttn: {len(levels)} levels {args.levels}, {queries} queries, {args.heads} heads of {args.head_dim}, "
        f"{args.points} points, batch {args.batch}, {args.threads} threads, median of {args.runs}"
    )
    print(f"{'formulation':<42} {'ms':>9} {'max |diff|':>11}")
    for name, values in samples.items():
        print(f"{name:<42} {statistics.median(values) * 1e3:>9.1f} {differences[name]:>11.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
