#!/usr/bin/env python3
"""INT8 for the CPU runtimes against fp32, in the runtime each file is made for (exporters.cpu_quantize):

    python cli.py export --model deformable_detr_r50 --output build/bench/deformable_detr_r50.onnx
    python benchmarks/cpu_int8.py build/bench/deformable_detr_r50.onnx --size 640 --rounds 5 --threads 2

Quantizes the export for ONNX Runtime and for OpenVINO on --calibration generated images (recipe-resized, aspect
kept), then times, at one --size x --size, batch 1, --threads threads: fp32 vs int8-for-ONNX-Runtime in ONNX Runtime
(plain InferenceSession, ORT_ENABLE_ALL) and fp32 vs int8-for-OpenVINO in OpenVINO (INFERENCE_PRECISION_HINT f32
for both, so bf16 is not picked on CPUs that have it). The machine may be shared: each round runs fp32 and int8
once each, interleaved, and the median per file is reported with the median of the per-round ratios. Accuracy: max
|int8 - fp32| of pred_boxes and pred_logits, and the logits' correlation, on the timed (random normal) input and on
two generated held-out images.

Measured with the commands above (deformable_detr_r50, seeded random weights, 8 calibration images at about
800x1100; shared 2-core CPU with AVX-512 VNNI; onnxruntime 1.24.4, openvino 2026.4.1, nncf 3.4.0; about 8 minutes):

    ONNX Runtime  fp32 4809 ms, int8 4322 ms: 1.19x; boxes max |diff| 0.0064, logits 0.108, logits corr 0.9992
    OpenVINO      fp32 2389 ms, int8 1700 ms: 1.40x; boxes max |diff| 0.0015, logits 0.045, logits corr 0.9998
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from int8_keep_precision import write_images  # noqa: E402

from detr_deploy import contract  # noqa: E402
from exporters.cpu_quantize import quantize_for_cpu  # noqa: E402
from exporters.onnx import read_metadata  # noqa: E402
from exporters.quantize import calibration_inputs  # noqa: E402


def ort_runner(path: Path, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return lambda images: dict(zip(names, session.run(None, {contract.INPUT_IMAGES: images})))


def openvino_runner(path: Path, threads: int):
    import onnx.inliner
    import openvino

    core = openvino.Core()
    model = onnx.inliner.inline_local_functions(onnx.load(str(path)))
    compiled = core.compile_model(
        core.read_model(model.SerializeToString(), b""),
        "CPU",
        {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"},
    )
    request = compiled.create_infer_request()

    def run(images):
        result = request.infer({contract.INPUT_IMAGES: images})
        return {name: np.array(result[name]) for name in (contract.OUTPUT_LOGITS, contract.OUTPUT_BOXES)}

    return run


def timed(run, images) -> float:
    start = time.perf_counter()
    run(images)
    return time.perf_counter() - start


def compare(reference, candidate) -> str:
    boxes = np.abs(reference[contract.OUTPUT_BOXES] - candidate[contract.OUTPUT_BOXES]).max()
    logits = np.abs(reference[contract.OUTPUT_LOGITS] - candidate[contract.OUTPUT_LOGITS]).max()
    correlation = np.corrcoef(reference[contract.OUTPUT_LOGITS].ravel(), candidate[contract.OUTPUT_LOGITS].ravel())
    return f"boxes max |diff| {boxes:.4f}, logits max |diff| {logits:.3f}, logits corr {correlation[0, 1]:.4f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("onnx", type=Path, help="an fp32 export (python cli.py export)")
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calibration", type=int, default=8, help="generated calibration images")
    parser.add_argument("--runtimes", default="onnxruntime,openvino")
    args = parser.parse_args()

    metadata = read_metadata(onnx.load(str(args.onnx)))
    with tempfile.TemporaryDirectory(prefix="cpu_int8_") as scratch:
        scratch = Path(scratch)
        write_images(scratch / "calibration", args.calibration, 480, 640, seed=0)
        write_images(scratch / "held_out", 2, 480, 640, seed=1)
        calibration = calibration_inputs(scratch / "calibration", metadata)
        held_out = calibration_inputs(scratch / "held_out", metadata)
        timed_input = np.random.default_rng(0).standard_normal((1, 3, args.size, args.size)).astype(np.float32)
        for runtime in args.runtimes.split(","):
            int8_path = scratch / f"int8.{runtime}.onnx"
            result = quantize_for_cpu(args.onnx, int8_path, runtime=runtime, calibration_images=calibration)
            print(f"{runtime}: quantized in {result.seconds:.1f} s on {result.calibration_images} images")
            make = ort_runner if runtime == "onnxruntime" else openvino_runner
            fp32, int8 = make(args.onnx, args.threads), make(int8_path, args.threads)
            for run in (fp32, int8):  # warm-up: first-run allocations, OpenVINO's shape-specific compile
                run(timed_input)
            times = {"fp32": [], "int8": []}
            for _ in range(args.rounds):
                times["fp32"].append(timed(fp32, timed_input))
                times["int8"].append(timed(int8, timed_input))
            ratio = statistics.median(a / b for a, b in zip(times["fp32"], times["int8"]))
            print(
                f"{runtime} {args.size}x{args.size}, {args.threads} threads, {args.rounds} rounds: fp32 "
                f"{statistics.median(times['fp32']) * 1e3:.0f} ms, int8 {statistics.median(times['int8']) * 1e3:.0f} "
                f"ms (median); fp32/int8 per round, median: {ratio:.2f}x"
            )
            print(f"  timed input: {compare(fp32(timed_input), int8(timed_input))}")
            for index, image in enumerate(held_out):
                print(f"  held-out image {index} {list(image.shape[2:])}: {compare(fp32(image), int8(image))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
