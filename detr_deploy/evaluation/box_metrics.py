"""COCO box AP of a set of detections, computed by pycocotools, plus the AP of every image on its own.

pycocotools rather than faster-coco-eval, though that is 5-11x faster (``benchmarks/coco_eval_speed.py``):
faster-coco-eval divides by tp + fp where pycocotools divides by tp + fp + eps, so about one precision cell in seven
differs in the last bit and the summary stats now and then by 1e-16; it cannot reproduce the reference exactly. It
also keeps no per-image results (``evalImgs``) to read per-image AP from.

The per-image AP reuses the one ``evaluate()`` run: for each image, the precision of each of its categories at the
101 recall thresholds is computed from that image's ``evalImgs`` entries (area "all", 100 detections) by the same
arithmetic as ``COCOeval.accumulate``, so it equals, to the bit, the AP of a ``COCOeval`` restricted to that image.
"""

import contextlib
import io
import math
from dataclasses import dataclass

import numpy as np

from detr_deploy.errors import DetrDeployError

BOX_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@dataclass(frozen=True)
class BoxMetrics:
    """COCO box AP in points (0..100).

    values: BOX_METRICS -> COCO's ``stats[0:6] * 100``; None where COCO says -1 (no ground truth in that area range).
    per_image_ap: image id -> AP@[.5:.95] of that image alone; None where the image has no (non-crowd) ground truth.
    """

    values: dict[str, float | None]
    per_image_ap: dict[int, float | None]


def box_metrics(ground_truth: dict, detections: list[dict], image_ids: list[int] | None = None) -> BoxMetrics:
    """COCO box AP of ``detections`` against ``ground_truth``, on ``image_ids`` (default: every image).

    ground_truth: a COCO annotation dict (``images``, ``annotations``, ``categories``) as loaded from JSON. An
        annotation without ``iscrowd`` counts as not crowd, one without ``area`` gets its box's area.
    detections: COCO results, ``{"image_id", "category_id", "bbox": [x, y, w, h] in pixels, "score"}``; an empty
        list scores 0. Detections of categories the ground truth does not define are ignored, as by pycocotools.

    Neither argument is modified. Raises DetrDeployError for malformed input and for image ids the ground truth
    does not have.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    coco_gt = _ground_truth_coco(ground_truth)
    known = set(coco_gt.imgs)
    if image_ids is None:
        chosen = sorted(known)
    else:
        unknown = sorted({i for i in image_ids if i not in known}, key=str)
        if unknown:
            raise DetrDeployError(
                f"image ids {_few(unknown)} are not in the ground truth's images: evaluate on ids it lists"
            )
        chosen = sorted(set(image_ids))
    if not chosen:
        raise DetrDeployError("there are no images to evaluate: give a ground truth with images (or image ids)")

    # The detections as pycocotools' loadRes makes them for boxes (area w * h, ids from 1, not crowd), built here
    # because loadRes fails on an empty list and prints.
    coco_dt = COCO()
    coco_dt.dataset = {
        "images": ground_truth["images"],
        "categories": ground_truth["categories"],
        "annotations": _result_annotations(detections, known, set(chosen)),
    }
    evaluation = COCOeval(coco_gt, coco_dt, "bbox")
    evaluation.params.imgIds = chosen
    with _stdout_captured():
        coco_dt.createIndex()
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    values = {name: _points(evaluation.stats[i]) for i, name in enumerate(BOX_METRICS)}
    return BoxMetrics(values=values, per_image_ap=_per_image_ap(evaluation))


def _ground_truth_coco(ground_truth: dict):
    """A pycocotools COCO index over a copy of the annotations (COCOeval writes flags into them), with ids
    renumbered 1..N in order: pycocotools takes an annotation id of 0 for "unmatched" and assumes ids unique."""
    from pycocotools.coco import COCO

    if not isinstance(ground_truth, dict) or not all(
        isinstance(ground_truth.get(key), list) for key in ("images", "annotations", "categories")
    ):
        raise DetrDeployError(
            "the ground truth is not a COCO annotation dict: it needs lists 'images', 'annotations' and 'categories'"
        )
    annotations = []
    for number, annotation in enumerate(ground_truth["annotations"], start=1):
        missing = [key for key in ("image_id", "category_id", "bbox") if key not in annotation]
        if missing:
            raise DetrDeployError(f"ground-truth annotation #{number} lacks {missing}: give COCO annotations")
        x, y, w, h = _box(annotation["bbox"], f"ground-truth annotation #{number}")
        annotation = dict(annotation, id=number, bbox=[x, y, w, h])
        annotation.setdefault("iscrowd", 0)
        annotation.setdefault("area", w * h)
        annotations.append(annotation)
    coco = COCO()
    coco.dataset = {
        "images": ground_truth["images"],
        "categories": ground_truth["categories"],
        "annotations": annotations,
    }
    with _stdout_captured():
        coco.createIndex()
    return coco


def _result_annotations(detections: list[dict], known: set, chosen: set) -> list[dict]:
    """The detections on the chosen images, copied, with loadRes's fields for boxes."""
    results = []
    for number, detection in enumerate(detections):
        where = f"detection #{number}"
        try:
            image_id, category_id, bbox, score = (detection[k] for k in ("image_id", "category_id", "bbox", "score"))
        except (KeyError, TypeError):
            raise DetrDeployError(
                f"{where} is not a COCO result: it needs 'image_id', 'category_id', 'bbox' and 'score'"
            ) from None
        if image_id not in known:
            raise DetrDeployError(
                f"{where} is on image {image_id!r}, which the ground truth does not have: "
                "detections must use the ground truth's image ids"
            )
        if image_id not in chosen:
            continue
        box = _box(bbox, where)
        score = _finite(score, f"{where}'s score")
        results.append(
            {
                "id": len(results) + 1,
                "image_id": image_id,
                "category_id": category_id,
                "bbox": box,
                "score": score,
                "area": box[2] * box[3],
                "iscrowd": 0,
            }
        )
    return results


def _per_image_ap(evaluation) -> dict[int, float | None]:
    """image id -> AP@[.5:.95] (points) of the image alone, from one full run's ``evalImgs``.

    evalImgs is laid out [category][area range][image]; an entry is None where the image has neither ground truth
    nor detections of that category. As in a COCOeval restricted to the image, a category of the image without
    non-ignored ground truth stays at -1 and leaves the mean."""
    params = evaluation.params
    num_thresholds, num_recalls, num_categories = len(params.iouThrs), len(params.recThrs), len(params.catIds)
    num_images, num_areas = len(params.imgIds), len(params.areaRng)
    area_all = params.areaRngLbl.index("all")
    max_detections = params.maxDets[-1]  # 100, the AP setting; evalImgs entries hold at most that many

    per_image = {}
    for i, image_id in enumerate(params.imgIds):
        precision = -np.ones((num_thresholds, num_recalls, num_categories))
        for k in range(num_categories):
            entry = evaluation.evalImgs[(k * num_areas + area_all) * num_images + i]
            if entry is not None:
                curve = _precision_curve(entry, max_detections, params.recThrs)
                if curve is not None:
                    precision[:, :, k] = curve
        present = precision[precision > -1]
        per_image[int(image_id)] = float(np.mean(present) * 100) if present.size else None
    return per_image


def _precision_curve(entry: dict, max_detections: int, recall_thresholds: np.ndarray) -> np.ndarray | None:
    """(T, R) interpolated precision of one image and category at each IoU threshold and recall threshold, by
    COCOeval.accumulate's arithmetic for a single evalImgs entry; None without non-ignored ground truth."""
    num_positives = np.count_nonzero(entry["gtIgnore"] == 0)
    if num_positives == 0:
        return None
    scores = np.asarray(entry["dtScores"][:max_detections], dtype=float)
    order = np.argsort(-scores, kind="mergesort")
    matched = entry["dtMatches"][:, :max_detections][:, order]
    ignored = entry["dtIgnore"][:, :max_detections][:, order]
    true_positives = np.cumsum(np.logical_and(matched, np.logical_not(ignored)), axis=1).astype(float)
    false_positives = np.cumsum(np.logical_and(np.logical_not(matched), np.logical_not(ignored)), axis=1).astype(float)
    recall = true_positives / num_positives
    precision = true_positives / (false_positives + true_positives + np.spacing(1))
    # Interpolation: precision at a rank is the best precision at that rank or any later one.
    precision = np.flip(np.maximum.accumulate(np.flip(precision, axis=1), axis=1), axis=1)
    curve = np.zeros((len(precision), len(recall_thresholds)))
    for t in range(len(precision)):
        ranks = np.searchsorted(recall[t], recall_thresholds, side="left")
        reached = ranks < len(recall[t])  # recall thresholds never reached keep precision 0
        curve[t, reached] = precision[t, ranks[reached]]
    return curve


def _box(bbox, where: str) -> list[float]:
    if isinstance(bbox, (str, bytes)) or not hasattr(bbox, "__len__") or len(bbox) != 4:
        raise DetrDeployError(f"{where}'s bbox is not [x, y, width, height]: got {bbox!r}")
    return [_finite(value, f"{where}'s bbox") for value in bbox]


def _finite(value, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DetrDeployError(f"{where} holds {value!r}, not a number") from None
    if not math.isfinite(number):
        raise DetrDeployError(f"{where} holds {value!r}: boxes and scores must be finite numbers")
    return number


def _points(stat: float) -> float | None:
    return None if stat == -1 else float(stat * 100)


def _few(items: list, shown: int = 5) -> str:
    return ", ".join(map(repr, items[:shown])) + (f" and {len(items) - shown} more" if len(items) > shown else "")


@contextlib.contextmanager
def _stdout_captured():
    """Keep pycocotools' progress lines off stdout; if it fails, what it printed travels with the exception."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            yield
    except Exception as error:
        if captured.getvalue() and hasattr(error, "add_note"):
            error.add_note("pycocotools printed:\n" + captured.getvalue().rstrip())
        raise
