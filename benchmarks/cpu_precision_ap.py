#!/usr/bin/env python3
"""What bf16 and int8 cost in accuracy on the CPU runtimes, per family (issue 23): COCO AP of each precision and
runtime against eager PyTorch's on a generated dataset whose eager AP is 100 by construction
(tests/evaluation/generated_coco.py: the ground truth is the eager model's own confident detections).

    python benchmarks/cpu_precision_ap.py                       # the tiny variant of each family, 4 images
    python benchmarks/cpu_precision_ap.py --models detr_r50 --images 24

Rows per model: ONNX Runtime fp32 (our export), OpenVINO fp32 and bf16 (its precision hint), and the int8 files each
runtime's own quantizer makes (``quantize --target onnxruntime|openvino``), calibrated on the dataset's images.
Columns: AP and its delta against eager, the detections matched with eager's (IoU mean) and the largest score drift,
from ``evaluate`` (the same report ``cli.py evaluate`` writes). Random weights (seed 0): what is measured is how far
each precision moves a model's outputs, not a trained model's accuracy.
"""

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detr_deploy.detector import Detector  # noqa: E402
from detr_deploy.evaluation.evaluate import evaluate_files  # noqa: E402
from detr_deploy.model_source import load_model  # noqa: E402
from detr_deploy.models import get_model_spec, register_model  # noqa: E402
from exporters.cpu_quantize import quantize_for_cpu  # noqa: E402
from exporters.onnx import export_onnx  # noqa: E402
from tests.evaluation.generated_coco import ground_truth_from_detections, write_dataset, write_images  # noqa: E402

DEFAULT_MODELS = "detr_r50,deformable_detr_r50,rtdetr_r50vd,dino_4scale_r50,dfine_hgnetv2_s,rfdetr_nano"


def evaluate_precisions(zoo_name: str, folder: Path, image_count: int, threads: int) -> list:
    """[(row label, BackendEvaluation)] of one family's tiny model."""
    name = f"ap_{zoo_name}"
    config = get_model_spec(zoo_name).config.tiny()
    register_model(name, config, f"tiny {zoo_name} for cpu_precision_ap")
    source = load_model(name, None, seed=0)
    export = folder / f"{name}.onnx"
    export_onnx(source.model.eval(), config, export, model_name=name, weights="random(seed=0)")
    divisor = max(32, config.size_divisor)
    sizes = [(divisor * (4 + index % 2), divisor * (5 - index % 2)) for index in range(image_count)]
    paths = write_images(folder / "images", sizes)
    eager = Detector.open(name, max_batch=1)
    ground_truth, threshold = ground_truth_from_detections(eager.detect(paths, score_threshold=0.0), paths)
    annotations = write_dataset(folder, ground_truth)
    quantized = {}
    for runtime in ("onnxruntime", "openvino"):
        quantized[runtime] = folder / f"{name}-int8-{runtime}.onnx"
        quantize_for_cpu(export, quantized[runtime], runtime=runtime, calibration_images=folder / "images")
    common = dict(annotations=annotations, threads=threads, score_threshold=threshold, batch_size=1)
    fp32 = evaluate_files(
        folder / "images", onnx_paths=[export, quantized["onnxruntime"]],
        openvino_paths=[export, quantized["openvino"]], **common,
    )  # fmt: skip
    bf16 = evaluate_files(folder / "images", openvino_paths=[export], openvino_precision="bf16", **common)
    eager_run, ort, ort_int8, openvino, openvino_int8 = fp32.backends
    return [
        ("eager PyTorch", eager_run),
        ("ONNX Runtime fp32", ort),
        ("ONNX Runtime int8", ort_int8),
        ("OpenVINO fp32", openvino),
        ("OpenVINO bf16", bf16.backends[1]),
        ("OpenVINO int8", openvino_int8),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(f"{'model':<20} {'backend':<20} {'AP':>6} {'delta':>7} {'matched':>11} {'IoU mean':>9} {'score drift':>12}")
    with tempfile.TemporaryDirectory() as directory:
        for zoo_name in args.models.split(","):
            folder = Path(directory) / zoo_name
            folder.mkdir()
            for label, run in evaluate_precisions(zoo_name, folder, args.images, args.threads):
                ap = run.metrics["AP"]
                if run.delta is None:
                    print(f"{zoo_name:<20} {label:<20} {ap:>6.1f}")
                    continue
                stats = run.detections
                print(
                    f"{zoo_name:<20} {label:<20} {ap:>6.1f} {run.delta['AP']:>+7.1f} "
                    f"{stats.matched:>5}/{stats.eager:<5} {stats.mean_iou:>9.3f} {run.score_drift['max']:>12.1e}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
