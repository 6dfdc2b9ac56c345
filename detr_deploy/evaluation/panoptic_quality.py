"""COCO panoptic quality (PQ, SQ, RQ), with the semantics of the official panopticapi (``evaluation.py``).

Ground truth is COCO panoptic: a JSON (``images``, ``annotations`` with one ``segments_info`` list per image,
``categories`` with ``isthing``) and one PNG per image whose pixels encode a segment id as R + 256 G + 256² B,
0 meaning void (unlabelled).

Per image and category, a predicted and a ground-truth segment match when their IoU is above 0.5; the IoU leaves out
the predicted pixels that fall on void, and crowd ground-truth segments never match. Unmatched non-crowd ground-truth
segments are false negatives; unmatched predictions are false positives unless more than half of their pixels lie on
void or on the crowd region of their own category. Counts add up over the whole dataset, then per category
PQ = sum of matched IoUs / (TP + FP/2 + FN/2), SQ = sum of matched IoUs / TP, RQ = TP / (TP + FP/2 + FN/2); "All",
"Things" and "Stuff" average over the categories that have any TP, FP or FN. Figures are percentages (0..100), as
the official printout shows them.

As officially, a ground-truth segment's area is its ``area`` in the JSON (its pixel count where the JSON has none),
and a predicted segment's area is its pixel count. Where panopticapi raises on a prediction (a segment of a category
the ground truth does not have, a listed segment with no pixels), we leave that segment out and count the former in
``PanopticQuality.unknown_category_segments``: neither changes any other category's figures.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detr_deploy.errors import DetrDeployError

VOID = 0  # ground-truth PNG id of unlabelled pixels
MATCH_IOU = 0.5  # a match needs IoU strictly above this
IGNORED_FRACTION = 0.5  # an unmatched prediction is no false positive when more than this lies on void/crowd


@dataclass(frozen=True)
class PanopticImage:
    image_id: int
    file_name: str  # the image file, from the JSON's ``images`` (e.g. 000000000139.jpg)
    mask_path: Path  # the ground-truth PNG
    segments: list[dict]  # segments_info as in the JSON: id, category_id, iscrowd, area, bbox


@dataclass(frozen=True)
class PanopticGroundTruth:
    images: list[PanopticImage]
    categories: dict[int, dict]  # category id -> {"name": str, "isthing": bool}


def _not_panoptic(json_path: Path, what: str) -> DetrDeployError:
    return DetrDeployError(
        f"{json_path} is not a COCO panoptic annotation file: {what}; pass one like annotations/panoptic_val2017.json"
    )


def _parse_categories(data: dict, json_path: Path) -> dict[int, dict]:
    categories = {}
    for category in data["categories"]:
        if not isinstance(category, dict) or "id" not in category or "isthing" not in category:
            raise _not_panoptic(json_path, "a category has no 'id' or 'isthing'")
        categories[int(category["id"])] = {
            "name": str(category.get("name", category["id"])),
            "isthing": int(category["isthing"]) == 1,
        }
    return categories


def _check_annotation(annotation, json_path: Path) -> None:
    if not isinstance(annotation, dict):
        raise _not_panoptic(json_path, "an entry of 'annotations' is not an object")
    if "segments_info" not in annotation:
        hint = (
            " (this looks like an instance annotation file such as instances_val2017.json)"
            if ("bbox" in annotation or "segmentation" in annotation)
            else ""
        )
        raise _not_panoptic(json_path, f"its annotations have no 'segments_info'{hint}")
    for key in ("image_id", "file_name"):
        if key not in annotation:
            raise _not_panoptic(json_path, f"an annotation has no '{key}'")
    if not isinstance(annotation["segments_info"], list):
        raise _not_panoptic(json_path, f"image {annotation['image_id']}'s 'segments_info' is not a list")
    for segment in annotation["segments_info"]:
        if not isinstance(segment, dict) or "id" not in segment or "category_id" not in segment:
            raise _not_panoptic(json_path, f"a segment of image {annotation['image_id']} has no 'id' or 'category_id'")


def read_panoptic_annotations(json_path, masks_dir=None) -> PanopticGroundTruth:
    """Read and check a COCO panoptic annotation JSON; the PNGs are checked to exist but read later
    (``read_segment_ids``). ``masks_dir``: the folder of ground-truth PNGs, by default the folder beside the JSON
    named like it without ``.json`` (COCO ships panoptic_val2017.json beside panoptic_val2017/)."""
    json_path = Path(json_path)
    if not json_path.is_file():
        raise DetrDeployError(
            f"{json_path}: no such file; pass the COCO panoptic annotation JSON (annotations/panoptic_val2017.json)"
        )
    try:
        data = json.loads(json_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DetrDeployError(
            f"{json_path} is not JSON ({error}); pass the COCO panoptic annotation JSON (panoptic_val2017.json)"
        ) from None
    if not isinstance(data, dict):
        raise _not_panoptic(json_path, f"its top level is a {type(data).__name__}, not an object")
    missing = [key for key in ("images", "annotations", "categories") if not isinstance(data.get(key), list)]
    if missing:
        raise _not_panoptic(json_path, f"no {', '.join(repr(key) for key in missing)} list")
    for annotation in data["annotations"]:
        _check_annotation(annotation, json_path)
    categories = _parse_categories(data, json_path)
    file_names = {image.get("id"): image.get("file_name") for image in data["images"] if isinstance(image, dict)}

    masks_dir = json_path.with_suffix("") if masks_dir is None else Path(masks_dir)
    if not masks_dir.is_dir():
        raise DetrDeployError(
            f"ground-truth PNG folder {masks_dir} not found; unzip the panoptic PNGs there (COCO: "
            f"annotations/panoptic_val2017.zip beside panoptic_val2017.json) or give their folder"
        )
    images = []
    for annotation in data["annotations"]:
        image_id = annotation["image_id"]
        if file_names.get(image_id) is None:
            raise _not_panoptic(json_path, f"annotation of image_id {image_id} has no entry in 'images'")
        for segment in annotation["segments_info"]:
            if int(segment["category_id"]) not in categories:
                raise DetrDeployError(
                    f"{json_path}: segment {segment['id']} of image {image_id} has category_id "
                    f"{segment['category_id']}, which is not in 'categories'; fix the annotation file"
                )
        images.append(
            PanopticImage(
                int(image_id),
                str(file_names[image_id]),
                masks_dir / annotation["file_name"],
                annotation["segments_info"],
            )
        )
    absent = [image.mask_path.name for image in images if not image.mask_path.is_file()]
    if absent:
        raise DetrDeployError(
            f"{len(absent)} of {len(images)} ground-truth PNGs are missing from {masks_dir} (first: {absent[0]}); "
            f"unzip all of the dataset's panoptic PNGs there or give the right folder"
        )
    return PanopticGroundTruth(images, categories)


def read_segment_ids(png_path) -> np.ndarray:
    """A panoptic PNG -> [H, W] int64 segment ids (R + 256 G + 256² B; 0 is void)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(png_path) as image:
            if image.mode not in ("RGB", "RGBA"):
                raise DetrDeployError(
                    f"{png_path} is a {image.mode} image, not an RGB panoptic PNG (ids as R + 256 G + 256² B); "
                    f"use the dataset's panoptic PNGs"
                )
            rgb = np.asarray(image.convert("RGB"), dtype=np.int64)
    except (OSError, UnidentifiedImageError) as error:
        raise DetrDeployError(
            f"{png_path} is not a readable PNG ({error}); replace it with the dataset's file"
        ) from None
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


@dataclass
class PanopticQuality:
    """Panoptic quality in percent (0..100). ``all``/``things``/``stuff``: {"pq", "sq", "rq", "n"}, averages over
    the n categories with any TP, FP or FN (all 0 when n is 0). ``per_category``: category id ->
    {"pq", "sq", "rq", "tp", "fp", "fn"} for every category of the ground truth."""

    all: dict
    things: dict
    stuff: dict
    per_category: dict[int, dict]
    num_images: int = 0
    # Predicted segments whose category the ground truth does not have: not evaluated (panopticapi refuses them).
    unknown_category_segments: int = 0
    names: dict[int, str] = field(default_factory=dict)

    def table(self) -> str:
        """The official printout: one row each for All, Things and Stuff."""
        rows = [f"{'':10s}| {'PQ':>5s}  {'SQ':>5s}  {'RQ':>5s} {'N':>5s}", "-" * 38]
        for name, figures in (("All", self.all), ("Things", self.things), ("Stuff", self.stuff)):
            rows.append(
                f"{name:10s}| {figures['pq']:5.1f}  {figures['sq']:5.1f}  {figures['rq']:5.1f} {figures['n']:5d}"
            )
        return "\n".join(rows)


class PanopticQualityAccumulator:
    """Adds up TP/FP/FN and matched IoU per category over images; ``result`` turns them into PQ, SQ, RQ."""

    def __init__(self, categories: dict[int, dict]):
        """categories: category id -> {"name", "isthing"} (``PanopticGroundTruth.categories``)."""
        self.categories = {int(category): dict(info) for category, info in categories.items()}
        self._index = {category: index for index, category in enumerate(self.categories)}
        self._iou = np.zeros(len(self.categories), dtype=np.float64)
        self._tp = np.zeros(len(self.categories), dtype=np.int64)
        self._fp = np.zeros(len(self.categories), dtype=np.int64)
        self._fn = np.zeros(len(self.categories), dtype=np.int64)
        self._images = 0
        self._unknown_category_segments = 0

    def add(self, gt_ids: np.ndarray, gt_segments: list[dict], pred_ids: np.ndarray, pred_segments: list[dict]) -> None:
        """One image. gt_ids [H, W] int: ground-truth segment ids (``read_segment_ids``, 0 = void); gt_segments:
        its segments_info. pred_ids [H, W] int: predicted segment ids, negative where there is none (the Detector's
        -1), and 0 is none too unless pred_segments lists a segment 0; pred_segments: [{"id", "category_id"}]."""
        gt_ids, pred_ids = np.asarray(gt_ids), np.asarray(pred_ids)
        if gt_ids.ndim != 2 or gt_ids.shape != pred_ids.shape:
            raise ValueError(f"gt_ids {gt_ids.shape} and pred_ids {pred_ids.shape} must be [H, W] of one shape")
        unknown = [segment["category_id"] for segment in gt_segments if segment["category_id"] not in self._index]
        if unknown:
            raise ValueError(f"ground-truth category ids {unknown} are not in the accumulator's categories")
        num_gt, num_pred = len(gt_segments), len(pred_segments)

        # One combined id per pixel, as panopticapi does: ground-truth id * offset + predicted code (0 for no
        # segment, else id + 1); its unique values with their counts are every intersection. Only those few values
        # are then mapped to rows (ground-truth segments, then void, then ids segments_info does not list) and
        # columns (predicted segments, then none).
        if gt_ids.size and gt_ids.min() < 0:
            raise ValueError("gt_ids has negative ids; panoptic PNG ids are R + 256 G + 256² B >= 0")
        pred_listed = [int(segment["id"]) for segment in pred_segments]
        no_segment = (pred_ids < 0) | ((pred_ids == 0) & (0 not in pred_listed))
        pred_code = np.where(no_segment, 0, pred_ids.astype(np.int64, copy=False) + 1)
        offset = int(pred_code.max(initial=0)) + 1
        combined, pixels = np.unique(gt_ids.astype(np.int64, copy=False) * offset + pred_code, return_counts=True)
        gt_value, pred_value = combined // offset, combined % offset - 1
        gt_row = _lookup(gt_value, [segment["id"] for segment in gt_segments])
        gt_row = np.where(gt_row >= 0, gt_row, np.where(gt_value == VOID, num_gt, num_gt + 1))
        pred_column = _lookup(pred_value, pred_listed)
        stray = (pred_column < 0) & (pred_value >= 0)
        if stray.any():
            raise ValueError(
                f"pred_ids has segment ids {np.unique(pred_value[stray])[:10].tolist()} not in pred_segments"
            )
        pred_column = np.where(pred_value >= 0, pred_column, num_pred)
        counts = np.zeros((num_gt + 2, num_pred + 1), dtype=np.int64)
        np.add.at(counts, (gt_row, pred_column), pixels)

        gt_category = np.array([segment["category_id"] for segment in gt_segments], dtype=np.int64)
        gt_index = np.array([self._index[category] for category in gt_category.tolist()], dtype=np.int64)
        crowd = np.array([segment.get("iscrowd", 0) == 1 for segment in gt_segments], dtype=bool)
        gt_area = np.array(
            [segment.get("area", counted) for segment, counted in zip(gt_segments, counts[:num_gt].sum(1).tolist())],
            dtype=np.float64,
        )
        pred_category = np.array([segment["category_id"] for segment in pred_segments], dtype=np.int64)
        pred_index = np.array([self._index.get(category, -1) for category in pred_category.tolist()], dtype=np.int64)
        pred_area = counts[:, :num_pred].sum(0)
        on_void = counts[num_gt, :num_pred]
        known = pred_index >= 0
        evaluated = known & (pred_area > 0)
        self._unknown_category_segments += int((~known & (pred_area > 0)).sum())

        # Matches: same category, not crowd, IoU > 0.5 with the prediction's void pixels left out of the union.
        intersection = counts[:num_gt, :num_pred].astype(np.float64)
        union = gt_area[:, None] + (pred_area - on_void)[None, :] - intersection
        candidate = (gt_category[:, None] == pred_category[None, :]) & ~crowd[:, None] & evaluated[None, :]
        candidate &= (intersection > 0) & (union > 0)
        iou = np.divide(intersection, union, out=np.zeros_like(intersection), where=candidate)
        matched = candidate & (iou > MATCH_IOU)
        gt_matched, pred_matched = np.nonzero(matched)
        np.add.at(self._tp, gt_index[gt_matched], 1)
        np.add.at(self._iou, gt_index[gt_matched], iou[gt_matched, pred_matched])

        missed = ~matched.any(1) & ~crowd
        np.add.at(self._fn, gt_index[missed], 1)

        # An unmatched prediction mostly on void, or on the crowd region of its category, is no false positive.
        # As officially, a category's crowd region is its last crowd segment in segments_info.
        crowd_of = {int(gt_category[row]): row for row in np.flatnonzero(crowd)}
        crowd_row = np.array([crowd_of.get(category, -1) for category in pred_category.tolist()], dtype=np.int64)
        on_crowd = np.where(crowd_row >= 0, counts[crowd_row, np.arange(num_pred)], 0)
        ignored = on_void + on_crowd > IGNORED_FRACTION * pred_area
        false_positive = evaluated & ~matched.any(0) & ~ignored
        np.add.at(self._fp, pred_index[false_positive], 1)
        self._images += 1

    def result(self) -> PanopticQuality:
        per_category = {}
        for category, index in self._index.items():
            tp, fp, fn = int(self._tp[index]), int(self._fp[index]), int(self._fn[index])
            iou = float(self._iou[index])
            denominator = tp + 0.5 * fp + 0.5 * fn
            per_category[category] = {
                "pq": 100 * iou / denominator if denominator else 0.0,
                "sq": 100 * iou / tp if tp else 0.0,
                "rq": 100 * tp / denominator if denominator else 0.0,
                "tp": tp,
                "fp": fp,
                "fn": fn,
            }

        def average(isthing) -> dict:
            chosen = [
                figures
                for category, figures in per_category.items()
                if figures["tp"] + figures["fp"] + figures["fn"] > 0
                and (isthing is None or bool(self.categories[category]["isthing"]) == isthing)
            ]
            n = len(chosen)
            return {key: sum(figures[key] for figures in chosen) / n if n else 0.0 for key in ("pq", "sq", "rq")} | {
                "n": n
            }

        return PanopticQuality(
            all=average(None),
            things=average(True),
            stuff=average(False),
            per_category=per_category,
            num_images=self._images,
            unknown_category_segments=self._unknown_category_segments,
            names={category: str(info.get("name", category)) for category, info in self.categories.items()},
        )


def _lookup(values: np.ndarray, listed: list) -> np.ndarray:
    """Each value's position in ``listed`` (the first, if listed twice), -1 where it is not listed."""
    position = {}
    for index, value in enumerate(listed):
        position.setdefault(int(value), index)
    return np.array([position.get(value, -1) for value in values.tolist()], dtype=np.int64)
