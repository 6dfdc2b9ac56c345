"""box_metrics against pycocotools' COCOeval run directly in the test, on constructed and random predictions: the
six AP values must be equal (not close), and each image's AP must equal a COCOeval restricted to that image."""

import contextlib
import copy
import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detr_deploy.errors import DetrDeployError
from detr_deploy.evaluation.box_metrics import BOX_METRICS, box_metrics

# Sparse ids, as in COCO.
CATEGORY_IDS = (1, 3, 7)
SMALL, MEDIUM, LARGE = 20.0, 50.0, 150.0  # box sides: areas below 32^2, between 32^2 and 96^2, above 96^2


def ground_truth(boxes: dict[int, list[tuple]]) -> dict:
    """image id -> [(category, x, y, w, h) or (category, x, y, w, h, iscrowd)]; area w * h."""
    annotations = []
    for image_id, image_boxes in boxes.items():
        for category, x, y, w, h, *crowd in image_boxes:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": crowd[0] if crowd else 0,
                }
            )
    return {
        "images": [{"id": i, "width": 640, "height": 480, "file_name": f"{i}.jpg"} for i in boxes],
        "annotations": annotations,
        "categories": [{"id": i, "name": f"class_{i}"} for i in CATEGORY_IDS],
    }


def detection(image_id: int, category: int, box, score: float) -> dict:
    return {"image_id": image_id, "category_id": category, "bbox": [float(v) for v in box], "score": score}


def perfect_detections(gt: dict, score: float = 0.9) -> list[dict]:
    return [detection(a["image_id"], a["category_id"], a["bbox"], score) for a in gt["annotations"] if not a["iscrowd"]]


def pycocotools_stats(gt: dict, detections: list[dict], image_ids: list[int] | None = None) -> np.ndarray:
    """COCOeval's 12 stats, run the documented way on copies of the inputs."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        if detections:
            coco_dt = coco_gt.loadRes(copy.deepcopy(detections))
        else:  # loadRes cannot take an empty list: an empty result set
            coco_dt = COCO()
            coco_dt.dataset = {"images": gt["images"], "categories": gt["categories"], "annotations": []}
            coco_dt.createIndex()
        evaluation = COCOeval(coco_gt, coco_dt, "bbox")
        if image_ids is not None:
            evaluation.params.imgIds = image_ids
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation.stats


def assert_same_as_pycocotools(gt: dict, detections: list[dict], image_ids: list[int] | None = None):
    metrics = box_metrics(gt, detections, image_ids)
    stats = pycocotools_stats(gt, detections, image_ids)
    assert metrics.values == {name: None if stats[i] == -1 else stats[i] * 100 for i, name in enumerate(BOX_METRICS)}
    evaluated = sorted(set(image_ids) if image_ids is not None else [image["id"] for image in gt["images"]])
    assert sorted(metrics.per_image_ap) == evaluated
    for image_id in evaluated:
        alone = pycocotools_stats(gt, detections, [image_id])[0]
        assert metrics.per_image_ap[image_id] == (None if alone == -1 else alone * 100), image_id
    return metrics


def test_perfect_detections_score_100_in_every_area_range():
    gt = ground_truth(
        {
            1: [(1, 10, 10, SMALL, SMALL), (3, 100, 100, MEDIUM, MEDIUM), (7, 200, 100, LARGE, LARGE)],
            2: [(1, 0, 0, LARGE, LARGE), (1, 300, 300, SMALL, SMALL)],
        }
    )
    metrics = assert_same_as_pycocotools(gt, perfect_detections(gt))
    # Not 100.0 to the bit: COCOeval divides by tp + fp + eps.
    assert metrics.values == pytest.approx(dict.fromkeys(BOX_METRICS, 100.0))
    assert metrics.per_image_ap == pytest.approx({1: 100.0, 2: 100.0})


# A 100x100 box and the same box moved right by `shift`: IoU (100 - shift) / (100 + shift), so it matches at the
# IoU thresholds 0.5, 0.55, ... up to that IoU.
@pytest.mark.parametrize(
    "shift, matched_thresholds", [(0, 10), (5, 9), (20, 4), (30, 1), (50, 0)]
)  # IoU 1, 0.905, 0.667, 0.538, 0.333
def test_shifted_box_scores_the_share_of_iou_thresholds_it_passes(shift, matched_thresholds):
    gt = ground_truth({1: [(3, 100, 100, 100.0, 100.0)]})
    metrics = assert_same_as_pycocotools(gt, [detection(1, 3, [100 + shift, 100, 100, 100], 0.8)])
    assert metrics.values["AP"] == pytest.approx(10 * matched_thresholds)
    assert metrics.values["AP50"] == pytest.approx(100 if matched_thresholds >= 1 else 0)
    assert metrics.values["AP75"] == pytest.approx(100 if matched_thresholds >= 6 else 0)
    assert metrics.per_image_ap[1] == metrics.values["AP"]


def test_duplicates_are_false_positives():
    gt = ground_truth({1: [(1, 0, 0, 60.0, 60.0), (1, 200, 200, 60.0, 60.0)]})
    first, second = gt["annotations"][0]["bbox"], gt["annotations"][1]["bbox"]
    # The duplicate of the first box outranks the second box: precision 2/3 at full recall.
    ranked_above = [detection(1, 1, first, 0.9), detection(1, 1, first, 0.8), detection(1, 1, second, 0.7)]
    metrics = assert_same_as_pycocotools(gt, ranked_above)
    assert metrics.values["AP"] == pytest.approx((51 + 50 * 2 / 3) / 101 * 100)
    # Ranked below every true positive, a duplicate costs nothing.
    ranked_below = [detection(1, 1, first, 0.9), detection(1, 1, second, 0.8), detection(1, 1, first, 0.7)]
    assert assert_same_as_pycocotools(gt, ranked_below).values["AP"] == pytest.approx(100)


def test_wrong_category_does_not_match():
    gt = ground_truth({1: [(1, 10, 10, 80.0, 80.0)], 2: [(3, 10, 10, 80.0, 80.0)]})
    detections = [detection(1, 3, [10, 10, 80, 80], 0.9), detection(2, 3, [10, 10, 80, 80], 0.9)]
    metrics = assert_same_as_pycocotools(gt, detections)
    assert metrics.per_image_ap == pytest.approx({1: 0.0, 2: 100.0})
    # A category the ground truth does not define is ignored, as by pycocotools.
    assert_same_as_pycocotools(gt, detections + [detection(1, 99, [10, 10, 80, 80], 0.95)])


def test_crowd_ground_truth_is_neither_missed_nor_a_false_positive():
    gt = ground_truth(
        {
            1: [(1, 0, 0, 200.0, 200.0, 1), (1, 300, 300, 60.0, 60.0)],
            2: [(7, 0, 0, 300.0, 300.0, 1)],  # only a crowd box: no AP of its own
        }
    )
    detections = [
        detection(1, 1, [20, 20, 50, 50], 0.95),  # inside the crowd region
        detection(1, 1, [300, 300, 60, 60], 0.9),
        detection(2, 7, [10, 10, 100, 100], 0.9),
    ]
    metrics = assert_same_as_pycocotools(gt, detections)
    assert metrics.values["AP"] == pytest.approx(100)
    assert metrics.per_image_ap[1] == pytest.approx(100)
    assert metrics.per_image_ap[2] is None


def test_area_ranges_without_ground_truth_are_none():
    gt = ground_truth({1: [(1, 0, 0, SMALL, SMALL), (3, 100, 100, MEDIUM, MEDIUM)], 2: [(1, 50, 50, MEDIUM, MEDIUM)]})
    # The small box is missed, a large false positive is found.
    detections = [
        detection(1, 3, [100, 100, MEDIUM, MEDIUM], 0.9),
        detection(2, 1, [50, 50, MEDIUM, MEDIUM], 0.8),
        detection(2, 1, [200, 200, LARGE, LARGE], 0.95),
    ]
    metrics = assert_same_as_pycocotools(gt, detections)
    assert metrics.values["APs"] == 0.0
    # The large false positive is outside the medium range: ignored there.
    assert metrics.values["APm"] == pytest.approx(100)
    assert metrics.values["APl"] is None


def test_images_without_detections_or_without_ground_truth():
    gt = ground_truth({1: [(1, 0, 0, 80.0, 80.0)], 2: [(3, 10, 10, 80.0, 80.0)], 3: []})
    detections = [detection(1, 1, [0, 0, 80, 80], 0.9), detection(3, 3, [0, 0, 50, 50], 0.99)]
    metrics = assert_same_as_pycocotools(gt, detections)
    assert (metrics.per_image_ap[1], metrics.per_image_ap[2], metrics.per_image_ap[3]) == (pytest.approx(100), 0, None)


def test_empty_detection_list_scores_zero():
    gt = ground_truth({1: [(1, 0, 0, SMALL, SMALL), (3, 100, 100, LARGE, LARGE)], 2: []})
    metrics = assert_same_as_pycocotools(gt, [])
    assert metrics.values == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "APs": 0.0, "APm": None, "APl": 0.0}
    assert metrics.per_image_ap == {1: 0.0, 2: None}


def test_image_ids_restrict_the_evaluation():
    gt = ground_truth({1: [(1, 0, 0, 80.0, 80.0)], 2: [(3, 10, 10, 80.0, 80.0)], 5: [(7, 10, 10, 80.0, 80.0)]})
    detections = perfect_detections(gt)[:2] + [detection(5, 7, [300, 300, 80, 80], 0.9)]
    metrics = assert_same_as_pycocotools(gt, detections, image_ids=[5, 1])
    assert metrics.per_image_ap == pytest.approx({1: 100.0, 5: 0.0})
    assert metrics.values["AP"] == pytest.approx(50)


def test_inputs_stay_unchanged_and_nothing_is_printed(capsys):
    gt = ground_truth({1: [(1, 0, 0, 80.0, 80.0), (3, 0, 0, 200.0, 200.0, 1)]})
    detections = perfect_detections(gt) + [detection(1, 3, [5, 5, 30, 30], 0.5)]
    gt_before, detections_before = copy.deepcopy(gt), copy.deepcopy(detections)
    box_metrics(gt, detections)
    box_metrics(gt, [])
    assert gt == gt_before and detections == detections_before
    assert capsys.readouterr().out == ""


def test_annotation_ids_need_not_start_at_one():
    # pycocotools takes annotation id 0 for "unmatched": ids are renumbered before evaluation.
    gt = ground_truth({1: [(1, 0, 0, 80.0, 80.0)], 2: [(1, 0, 0, 80.0, 80.0)]})
    for annotation in gt["annotations"]:
        annotation["id"] -= 1
    assert box_metrics(gt, perfect_detections(gt)).values["AP"] == pytest.approx(100)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda gt, dt: dt.append(detection(9, 1, [0, 0, 5, 5], 0.5)), "image 9"),
        (lambda gt, dt: dt.append({"image_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}), "detection #1"),
        (lambda gt, dt: dt.append(detection(1, 1, [0, 0, 5], 0.5)), "bbox"),
        (lambda gt, dt: dt.append(detection(1, 1, [0, 0, 5, 5], float("nan"))), "finite"),
        (lambda gt, dt: gt.pop("images"), "images"),
        (lambda gt, dt: gt["annotations"][0].pop("bbox"), "annotation #1"),
    ],
)
def test_malformed_input_is_a_user_error(change, message):
    gt = ground_truth({1: [(1, 0, 0, 80.0, 80.0)]})
    detections = perfect_detections(gt)
    change(gt, detections)
    with pytest.raises(DetrDeployError, match=message):
        box_metrics(gt, detections)


def test_unknown_or_no_image_ids_are_user_errors():
    gt = ground_truth({1: [(1, 0, 0, 80.0, 80.0)]})
    with pytest.raises(DetrDeployError, match="image ids 4"):
        box_metrics(gt, [], image_ids=[1, 4])
    with pytest.raises(DetrDeployError, match="no images"):
        box_metrics(gt, [], image_ids=[])


coordinates = st.floats(0, 300, allow_nan=False).map(lambda v: round(v, 1))
sides = st.floats(1, 160, allow_nan=False).map(lambda v: round(v, 1))
# Few distinct scores, so that ties (broken by pycocotools' stable sort) occur.
scores = st.sampled_from([0.1, 0.3, 0.5, 0.5, 0.7, 0.9])


@st.composite
def random_evaluation(draw):
    num_images = draw(st.integers(1, 4))
    boxes = {
        image_id: draw(
            st.lists(
                st.tuples(
                    st.sampled_from(CATEGORY_IDS),
                    coordinates,
                    coordinates,
                    sides,
                    sides,
                    st.sampled_from([0, 0, 0, 0, 1]),  # iscrowd
                ),
                max_size=5,
            )
        )
        for image_id in range(1, num_images + 1)
    }
    gt = ground_truth(boxes)
    detections = []
    for annotation in gt["annotations"]:  # near copies of the ground truth, sometimes mislabelled or repeated
        for _ in range(draw(st.integers(0, 2))):
            x, y, w, h = annotation["bbox"]
            dx, dy, dw, dh = draw(st.lists(st.floats(-0.3, 0.3), min_size=4, max_size=4))
            category = draw(st.sampled_from([annotation["category_id"]] * 3 + list(CATEGORY_IDS)))
            box = [x + dx * w, y + dy * h, max(w * (1 + dw), 0.5), max(h * (1 + dh), 0.5)]
            detections.append(detection(annotation["image_id"], category, box, draw(scores)))
    for _ in range(draw(st.integers(0, 6))):  # false positives anywhere
        image_id = draw(st.integers(1, num_images))
        box = [draw(coordinates), draw(coordinates), draw(sides), draw(sides)]
        detections.append(detection(image_id, draw(st.sampled_from(CATEGORY_IDS)), box, draw(scores)))
    order = draw(st.permutations(range(len(detections))))
    image_ids = draw(st.none() | st.lists(st.integers(1, num_images), min_size=1, max_size=3))
    return gt, [detections[i] for i in order], image_ids


@settings(max_examples=40, deadline=None)
@given(random_evaluation())
def test_random_predictions_equal_pycocotools(evaluation):
    gt, detections, image_ids = evaluation
    assert_same_as_pycocotools(gt, detections, image_ids)
