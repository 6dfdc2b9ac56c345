#!/usr/bin/env python3
"""pycocotools vs faster-coco-eval on the same synthetic COCO-style box evaluation: time and agreement.

    python benchmarks/coco_eval_speed.py                          # 500 images x3 runs, 5000 images x1 run
    python benchmarks/coco_eval_speed.py --images 500,5000 --runs 3,2 --detections 100

The ground truth has COCO's 80 category ids (1..90 with COCO's gaps), 1..8 boxes per image of mixed areas (small,
medium and large by COCO's thresholds) and about 2% crowd boxes. Each image gets --detections detections: every
ground-truth box two or three times with jittered corners (sometimes with another category), then random boxes of
random categories, with random scores (uniform in [0.2, 1] for the jittered boxes, in [0, 0.6] for the random
ones, so that AP lands in the tens). Each timed run is load (ground truth from the dict in memory, then the
detections) + evaluate + accumulate + summarize, on fresh copies of the inputs, since both libraries write into the
annotation dicts they are given. The libraries run in turn within each round, and the median per library is reported,
with the largest absolute difference between their 12 summary statistics and how many cells of their precision
tables (T x R x K x A x M = 10 x 101 x 80 x 4 x 3) differ, and by how much at most.
"""

import argparse
import contextlib
import copy
import io
import platform
import statistics
import time
from importlib import metadata

import numpy as np

# COCO's 80 category ids: 1..90 without the ten ids the 2014 paper listed but the data set never used.
COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}]


def synthetic_coco(num_images: int, detections_per_image: int, seed: int = 0) -> tuple[dict, list[dict]]:
    """A COCO annotation dict and COCO-results-format detections for it (numbers as plain Python floats, as when
    loaded from JSON)."""
    rng = np.random.default_rng(seed)
    width, height = 640, 480
    images, annotations, detections = [], [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "width": width, "height": height, "file_name": f"{image_id:012d}.jpg"})
        boxes = []
        for _ in range(rng.integers(1, 9)):
            # Log-uniform side lengths from 4 to 400 px: about a third each small, medium and large.
            w, h = np.exp(rng.uniform(np.log(4), np.log(400), size=2)).clip(1, [width, height])
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            category = int(rng.choice(COCO_CATEGORY_IDS))
            crowd = int(rng.random() < 0.02)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [float(x), float(y), float(w), float(h)],
                    # COCO's area is the mask's, a little smaller than the box.
                    "area": float(w * h * rng.uniform(0.6, 1.0)),
                    "iscrowd": crowd,
                }
            )
            boxes.append((x, y, w, h, category))
        image_detections = []
        for x, y, w, h, category in boxes:
            for _ in range(rng.integers(2, 4)):
                jitter = rng.normal(0, 0.1, size=4) * [w, h, w, h]
                x0, y0 = x + jitter[0], y + jitter[1]
                x1, y1 = x + w + jitter[2], y + h + jitter[3]
                label = category if rng.random() < 0.8 else int(rng.choice(COCO_CATEGORY_IDS))
                score = rng.uniform(0.2, 1.0)  # random, but mostly above the random boxes': AP in the tens
                image_detections.append((x0, y0, max(x1 - x0, 0.5), max(y1 - y0, 0.5), label, score))
        while len(image_detections) < detections_per_image:
            w, h = np.exp(rng.uniform(np.log(4), np.log(400), size=2)).clip(1, [width, height])
            image_detections.append(
                (
                    rng.uniform(0, width - w),
                    rng.uniform(0, height - h),
                    w,
                    h,
                    int(rng.choice(COCO_CATEGORY_IDS)),
                    rng.uniform(0.0, 0.6),
                )
            )
        for x, y, w, h, label, score in image_detections[:detections_per_image]:
            detections.append(
                {
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": [float(x), float(y), float(w), float(h)],
                    "score": float(score),
                }
            )
    categories = [{"id": i, "name": f"class_{i}", "supercategory": "thing"} for i in COCO_CATEGORY_IDS]
    return {"images": images, "annotations": annotations, "categories": categories}, detections


def run_pycocotools(ground_truth: dict, detections: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """The 12 summary stats and the (T, R, K, A, M) precision table."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    coco_gt = COCO()
    coco_gt.dataset = ground_truth
    coco_gt.createIndex()
    coco_dt = coco_gt.loadRes(detections)
    evaluation = COCOeval(coco_gt, coco_dt, "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    return np.asarray(evaluation.stats), np.asarray(evaluation.eval["precision"])


def run_faster_coco_eval(ground_truth: dict, detections: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    from faster_coco_eval import COCO, COCOeval_faster

    coco_gt = COCO(ground_truth)
    coco_dt = coco_gt.loadRes(detections)
    evaluation = COCOeval_faster(coco_gt, coco_dt, "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    return np.asarray(evaluation.stats), np.asarray(evaluation.eval["precision"])


LIBRARIES = {"pycocotools": run_pycocotools, "faster-coco-eval": run_faster_coco_eval}


def time_libraries(ground_truth: dict, detections: list[dict], runs: int) -> tuple[dict, dict]:
    """Median seconds and the (stats, precision) of each library; the libraries alternate within every round."""
    seconds = {name: [] for name in LIBRARIES}
    results = {}
    for _ in range(runs):
        for name, run in LIBRARIES.items():
            gt, dt = copy.deepcopy(ground_truth), copy.deepcopy(detections)
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                results[name] = run(gt, dt)
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(samples) for name, samples in seconds.items()}, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default="500,5000", help="comma-separated image counts")
    parser.add_argument("--runs", default="3,1", help="timed runs per image count (one number, or one per count)")
    parser.add_argument("--detections", type=int, default=100, help="detections per image")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    args = parser.parse_args()
    sizes = [int(n) for n in args.images.split(",")]
    runs = [int(n) for n in args.runs.split(",")]
    runs = runs * len(sizes) if len(runs) == 1 else runs

    versions = ", ".join(f"{name} {metadata.version(name)}" for name in ("numpy", *LIBRARIES))
    print(f"python {platform.python_version()}, {versions}; {args.detections} detections per image")
    rows = []
    for num_images, num_runs in zip(sizes, runs):
        ground_truth, detections = synthetic_coco(num_images, args.detections, args.seed)
        medians, results = time_libraries(ground_truth, detections, num_runs)
        (stats, precision), (fast_stats, fast_precision) = results["pycocotools"], results["faster-coco-eval"]
        stats_difference = np.abs(stats - fast_stats)
        differing_cells = np.count_nonzero(precision != fast_precision)
        precision_difference = np.abs(precision - fast_precision).max()
        rows.append(
            (
                num_images,
                len(detections),
                num_runs,
                medians,
                stats_difference.max(),
                differing_cells,
                precision_difference,
            )
        )
        print(f"  {num_images} images, {len(ground_truth['annotations'])} boxes: AP {stats[0]:.4f}", flush=True)
        for i in np.flatnonzero(stats_difference):
            print(f"    stats[{i}] differs: pycocotools {float(stats[i])!r}, faster-coco-eval {float(fast_stats[i])!r}")

    print(
        f"{'images':>7} {'detections':>11} {'runs':>5} {'pycocotools s':>14} {'faster-coco-eval s':>19} "
        f"{'speed-up':>9} {'max |stats diff|':>17} {'precision cells differing':>26} {'max |precision diff|':>21}"
    )
    for num_images, num_dt, num_runs, medians, stats_difference, differing_cells, precision_difference in rows:
        slow, fast = medians["pycocotools"], medians["faster-coco-eval"]
        print(
            f"{num_images:>7} {num_dt:>11} {num_runs:>5} {slow:>14.2f} {fast:>19.2f} {slow / fast:>8.1f}x "
            f"{stats_difference:>17.3g} {differing_cells:>26} {precision_difference:>21.3g}"
        )


if __name__ == "__main__":
    main()
