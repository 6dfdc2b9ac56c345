"""A small COCO-format dataset generated from a model's own detections, so that its AP is known by construction.

Ground truth = every detection of the eager model scoring above a threshold that sits in a gap of the score
distribution (no score within ``GAP`` of it). Every ground-truth box is then detected exactly (IoU 1) by a
detection that outranks every detection that is not ground truth, in every category and image: precision is 1 at
every recall, so eager PyTorch's COCO AP is exactly 100 at every IoU threshold.
"""

import json
from pathlib import Path

import numpy as np
from PIL import Image

# The threshold keeps at least this distance from every score, so a backend's tiny score drift cannot reorder
# ground truth and the rest.
GAP = 1e-4


def write_images(folder: Path, sizes, seed: int = 0) -> list[Path]:
    """PNG files of smooth random blobs, one per (height, width)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (height, width) in enumerate(sizes):
        low = rng.integers(0, 256, (max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
        image = Image.fromarray(low).resize((width, height), Image.BICUBIC)
        path = folder / f"image_{index:03d}.png"
        image.save(path)
        paths.append(path)
    return paths


def ground_truth_from_detections(results, paths, per_image: float = 4.0, category_name=lambda label: f"class_{label}"):
    """COCO ground truth (dict) from Detector results (score threshold 0) of the images at ``paths``: the detections
    above a gap threshold chosen so that about ``per_image`` per image are kept. Returns (ground truth, threshold)."""
    scores = np.sort(np.concatenate([[d.score for d in r.detections] for r in results]))[::-1]
    wanted = min(len(scores) - 1, int(per_image * len(results)))
    threshold = None
    for index in range(wanted, len(scores) - 1):
        if scores[index] - scores[index + 1] > 2 * GAP:
            threshold = (scores[index] + scores[index + 1]) / 2
            break
    assert threshold is not None, "no gap in the scores to put the threshold in"
    images, annotations, labels = [], [], set()
    for image_id, (result, path) in enumerate(zip(results, paths), start=1):
        images.append({"id": image_id, "file_name": Path(path).name, "width": result.width, "height": result.height})
        for detection in result.detections:
            if detection.score > threshold:
                x0, y0, x1, y1 = detection.box
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": detection.label,
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "area": (x1 - x0) * (y1 - y0),
                        "iscrowd": 0,
                    }
                )
                labels.add(detection.label)
    num_classes = max(labels) + 1
    categories = [{"id": label, "name": category_name(label)} for label in range(num_classes)]
    return {"images": images, "annotations": annotations, "categories": categories}, float(threshold)


def write_dataset(folder: Path, ground_truth: dict) -> Path:
    path = folder / "annotations.json"
    path.write_text(json.dumps(ground_truth))
    return path
