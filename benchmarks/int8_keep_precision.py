#!/usr/bin/env python3
"""Which parts of a DETR-family graph INT8 needs to leave in higher precision: quantize one export with several
keep-sets (exporters.quantize.KEEP_GROUPS) and compare each with the fp32 file on held-out images.

    python benchmarks/int8_keep_precision.py                       # deformable_detr_r50 and detr_r50, full size
    python benchmarks/int8_keep_precision.py --models detr_r50 --keep-sets none,box_head,attention+sampling
    python benchmarks/int8_keep_precision.py --high-precision fp32,fp16 --keep-sets attention+box_head
    python benchmarks/int8_keep_precision.py --models deformable_detr_r50 --checkpoint r50_deformable_detr.pth

Without --checkpoint, weights are seeded random with the class head's bias raised for one class (as
tests.helpers.confident_checkpoint), so that some queries score as detections. Calibration and evaluation images are
generated (smooth random shapes on smooth noise, written as PNGs), different images for each, both resized by the
export's recipe to a small scale (--size) so that a run stays short on a CPU. Each keep-set is quantized (and
calibrated) on its own, as `quantize_onnx` would be. Columns, over all evaluation images (ONNX Runtime CPU, batch 1,
Q/DQ computed as written: exporters.quantize.reference_session):

    logits / boxes max abs  largest |int8 - fp32| of pred_logits / pred_boxes
    box L1                  mean |int8 - fp32| of pred_boxes (normalized cxcywh), over every query
    top-k                   share of fp32's k best (query, class) scores that int8 also ranks in its k best (random
                            DETR weights score all queries alike: there even fp16 reorders them)
    match                   detections (score >= --score-threshold) matched / in fp32, with parity's fp16 rules
                            (detr_deploy.parity.compare_outputs): IoU > 0.5, same class; "miss"/"extra" unmatched
    min IoU, drift          smallest IoU of a matched pair and largest score change
    quantize s              quantize_onnx wall time (calibration included)

The figures quoted in exporters/quantize.py were measured with these defaults (8 calibration and 6 evaluation images
at about 320x480) on a shared 2-core CPU, where each quantization takes 40-70 s and the default run a few minutes
per model (plus 2-3 minutes for each export).
"""

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detr_deploy import contract  # noqa: E402
from detr_deploy.boxes import class_probabilities  # noqa: E402
from detr_deploy.model_source import load_model  # noqa: E402
from detr_deploy.models import build_model, get_model_spec  # noqa: E402
from detr_deploy.parity import TOLERANCES, compare_outputs  # noqa: E402
from exporters.onnx import export_onnx, read_metadata  # noqa: E402
from exporters.quantize import KEEP_GROUPS, calibration_inputs, quantize_onnx, reference_session  # noqa: E402

# The default run takes a few minutes per model on 2 cores; the full sweep quoted in exporters/quantize.py:
# --keep-sets none,attention,layernorm,sampling,box_head,class_head,attention+box_head,attention+sampling,all
DEFAULT_KEEP_SETS = "none,attention,attention+box_head,all"


def write_images(folder: Path, count: int, height: int, width: int, seed: int) -> None:
    """``count`` PNGs of smooth random shapes on smooth noise, half of them portrait (aspects differ as photos do)."""
    from PIL import Image, ImageDraw, ImageFilter

    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("image_*.png"):  # a --work-dir of an earlier run
        stale.unlink()
    rng = np.random.default_rng(seed)
    for index in range(count):
        h, w = (height, width) if index % 2 == 0 else (width, height)
        h, w = int(h * rng.uniform(0.9, 1.1)), int(w * rng.uniform(0.9, 1.1))
        coarse = rng.uniform(0, 255, size=(max(2, h // 48), max(2, w // 48), 3)).astype(np.uint8)
        image = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(3, 10))):
            x0, y0 = int(rng.integers(0, w - 16)), int(rng.integers(0, h - 16))
            x1, y1 = x0 + int(rng.integers(12, w // 2)), y0 + int(rng.integers(12, h // 2))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
        noisy = np.asarray(image.filter(ImageFilter.GaussianBlur(1.5)), np.float32) + rng.normal(0, 6, (h, w, 3))
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(folder / f"image_{index:03d}.png")


def confident_model(name: str, boost: float, seed: int = 0):
    """Seeded random weights whose class head favours label 2 (as tests.helpers.confident_checkpoint), sigmoid heads
    first given the official prior-probability bias (0.01): a few queries then score high, most low."""
    config = get_model_spec(name).config
    model = build_model(config, seed=seed).eval()
    heads = {id(m): m for n, m in model.named_modules() if "class_embed" in n.split(".") and hasattr(m, "bias")}
    with torch.no_grad():
        for head in heads.values():
            if config.score_activation == "sigmoid":
                head.bias.fill_(-math.log((1 - 0.01) / 0.01))
            head.bias[2] += boost
    return model, config


def run(path: Path, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Outputs per image, Q/DQ computed as written (exporters.quantize.reference_session: ONNX Runtime's CPU int8
    fusions and its fp16 QuantizeLinear are not what TensorRT computes)."""
    session = reference_session(path)
    names = [output.name for output in session.get_outputs()]
    return [dict(zip(names, session.run(None, {contract.INPUT_IMAGES: image}))) for image in images]


def top_k_overlap(reference: np.ndarray, other: np.ndarray, activation: str, k: int) -> float:
    """Share of the reference's k best (query, class) probabilities that ``other`` also has in its k best."""
    scores = [class_probabilities(x[0], activation) for x in (reference, other)]
    if activation == "softmax":
        scores = [s[..., :-1] for s in scores]
    best = [set(np.argsort(s.ravel())[::-1][:k].tolist()) for s in scores]
    return len(best[0] & best[1]) / k


def compare(reference, candidate, images, config, threshold: float, k: int) -> dict:
    logits, boxes = contract.OUTPUT_LOGITS, contract.OUTPUT_BOXES
    row = dict(logits=0.0, boxes=0.0, l1=[], topk=[], fp32=0, matched=0, missed=0, extra=0, min_iou=1.0, drift=0.0)
    for ref, out, image in zip(reference, candidate, images):
        row["logits"] = max(row["logits"], float(np.abs(ref[logits] - out[logits]).max()))
        row["boxes"] = max(row["boxes"], float(np.abs(ref[boxes] - out[boxes]).max()))
        row["l1"].append(float(np.abs(ref[boxes] - out[boxes]).mean()))
        row["topk"].append(top_k_overlap(ref[logits], out[logits], config.score_activation, k))
        case = compare_outputs(
            "int8",
            image.shape[2:],
            {logits: ref[logits], boxes: ref[boxes]},
            {logits: out[logits], boxes: out[boxes]},
            activation=config.score_activation,
            score_threshold=threshold,
            tolerance=TOLERANCES["fp16"],
            ranked_queries=config.query_order_is_ranked,
        )
        stats = case.detections
        row["fp32"] += stats.eager
        row["matched"] += stats.matched
        row["missed"] += stats.missed
        row["extra"] += stats.extra
        row["min_iou"] = min(row["min_iou"], stats.min_iou)
        row["drift"] = max(row["drift"], stats.max_score_drift)
    row["l1"], row["topk"] = float(np.mean(row["l1"])), float(np.mean(row["topk"]))
    return row


def report(name, label, rest, path, seconds, reference, images, config, args) -> None:
    row = compare(reference, run(path, images), images, config, args.score_threshold, args.top_k)
    print(
        f"{name:<20} {label:<30} {rest:>4} {row['logits']:>7.3f} {row['boxes']:>7.4f} {row['l1']:>7.4f} "
        f"{row['topk']:>6.2f} {row['matched']:>3}/{row['fp32']:<3} {row['missed']:>4} {row['extra']:>5} "
        f"{row['min_iou']:>7.3f} {row['drift']:>6.3f} {seconds:>10.1f}",
        flush=True,
    )


def keep_set(text: str) -> tuple[str, ...]:
    if text == "none":
        return ()
    if text == "all":
        return tuple(KEEP_GROUPS)
    return tuple(text.split("+"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="deformable_detr_r50,detr_r50")
    parser.add_argument("--keep-sets", default=DEFAULT_KEEP_SETS, help="comma list; groups joined by +, none, all")
    parser.add_argument("--high-precision", default="fp16", help="what the rest computes in: comma list of fp16, fp32")
    parser.add_argument("--calibration-images", type=int, default=8)
    parser.add_argument("--eval-images", type=int, default=6)
    parser.add_argument("--size", default="320x480", help="HEIGHTxWIDTH the images are generated and resized at")
    parser.add_argument("--method", default="entropy", choices=["entropy", "max"])
    parser.add_argument("--boost", type=float, default=5.0, help="raise of the class head's bias for one label")
    parser.add_argument("--score-threshold", type=float, default=0.5)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--checkpoint", help="your model's weights instead of random ones (one model in --models)")
    parser.add_argument("--work-dir", help="keep exports and images here (default: a temporary folder)")
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    torch.set_num_threads(max(1, torch.get_num_threads()))

    with tempfile.TemporaryDirectory(prefix="int8_keep_precision_") as temporary:
        work = Path(args.work_dir or temporary)
        work.mkdir(parents=True, exist_ok=True)
        write_images(work / "calibration", args.calibration_images, height, width, seed=1)
        write_images(work / "evaluation", args.eval_images, height, width, seed=2)
        header = (
            f"{'model':<20} {'keep in high precision':<30} {'rest':>4} {'logits':>7} {'boxes':>7} {'box L1':>7} "
            f"{'top-k':>6} {'match':>7} {'miss':>4} {'extra':>5} {'min IoU':>7} {'drift':>6} {'quantize s':>10}"
        )
        print(
            f"{args.calibration_images} calibration / {args.eval_images} evaluation images at about {args.size}, "
            f"{args.method} calibration, threshold {args.score_threshold}, top-{args.top_k}"
        )
        print(header)
        for name in args.models.split(","):
            if args.checkpoint:
                source = load_model(name, args.checkpoint)
                model, config, weights, fp32 = source.model, source.config, source.weights, work / f"{name}.onnx"
            else:
                model, config = confident_model(name, args.boost)
                weights, fp32 = "random(seed=0)+boost", work / f"{name}-boost{args.boost:g}.onnx"
            if not fp32.is_file():
                export_onnx(model, config, fp32, model_name=name, weights=weights)
            metadata = read_metadata(onnx.load(str(fp32), load_external_data=False))
            sides = dict(shorter_side=min(height, width), max_size=max(height, width))
            calibration = calibration_inputs(work / "calibration", metadata, **sides)
            evaluation = calibration_inputs(work / "evaluation", metadata, **sides)
            reference = run(fp32, evaluation)

            fp16 = work / f"{name}.fp16.onnx"
            result = quantize_onnx(fp32, fp16, precision="fp16")
            report(name, "(fp16 graph, no int8)", "fp16", fp16, result.seconds, reference, evaluation, config, args)
            for rest in args.high_precision.split(","):
                for text in args.keep_sets.split(","):
                    path = work / f"{name}.int8.{text}.{rest}.onnx"
                    started = time.perf_counter()
                    quantize_onnx(
                        fp32,
                        path,
                        calibration_images=calibration,
                        calibration_method=args.method,
                        keep_high_precision=keep_set(text),
                        high_precision_dtype=rest,
                    )
                    seconds = time.perf_counter() - started
                    report(name, text, rest, path, seconds, reference, evaluation, config, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
