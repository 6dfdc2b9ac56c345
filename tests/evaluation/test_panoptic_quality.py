"""Panoptic quality: hand-computed PQ/SQ/RQ on small id maps, reading a COCO panoptic dataset written here, every
bad-input message, and torchmetrics' PanopticQuality as a peer where their semantics agree."""

import json

import numpy as np
import pytest
from PIL import Image

from detr_deploy.errors import DetrDeployError
from detr_deploy.evaluation.panoptic_quality import (
    PanopticQualityAccumulator,
    read_panoptic_annotations,
    read_segment_ids,
)

PERSON, CAR, SKY, GRASS = 1, 2, 3, 4
CATEGORIES = {
    PERSON: {"name": "person", "isthing": True},
    CAR: {"name": "car", "isthing": True},
    SKY: {"name": "sky", "isthing": False},
    GRASS: {"name": "grass", "isthing": False},
}


def segment(segment_id: int, category: int, iscrowd: int = 0) -> dict:
    return {"id": segment_id, "category_id": category, "iscrowd": iscrowd}


def evaluate(*images, categories=CATEGORIES):
    """images: (gt_ids, gt_segments, pred_ids, pred_segments) each."""
    accumulator = PanopticQualityAccumulator(categories)
    for image in images:
        accumulator.add(*image)
    return accumulator.result()


def block_on_sky(rows=slice(0, 4), columns=slice(0, 5), size=(10, 10)):
    """Ground truth: one person (id 1) on sky (id 2)."""
    ids = np.full(size, 2, dtype=np.int64)
    ids[rows, columns] = 1
    return ids, [segment(1, PERSON), segment(2, SKY)]


def test_perfect_prediction_scores_100():
    gt, gt_segments = block_on_sky()
    gt[6:9, 6:9] = 5
    gt[9, :] = 0  # void: the prediction has nothing there
    gt_segments.append(segment(5, CAR))
    pred = np.select([gt == 1, gt == 2, gt == 5], [0, 1, 2], -1)  # the Detector's numbering: 0..M-1, -1 for none
    result = evaluate((gt, gt_segments, pred, [segment(0, PERSON), segment(1, SKY), segment(2, CAR)]))
    assert result.all == {"pq": 100.0, "sq": 100.0, "rq": 100.0, "n": 3}
    assert result.things["n"] == 2 and result.stuff["n"] == 1
    assert result.per_category[PERSON] == {"pq": 100.0, "sq": 100.0, "rq": 100.0, "tp": 1, "fp": 0, "fn": 0}
    assert result.per_category[GRASS]["tp"] + result.per_category[GRASS]["fp"] + result.per_category[GRASS]["fn"] == 0


def test_shifted_segment_has_the_iou_of_the_overlap():
    gt, gt_segments = block_on_sky()  # person: rows 0-3, columns 0-4 (20 pixels)
    pred = np.full(gt.shape, 7)
    pred[0:4, 1:6] = 3  # one column to the right: 16 pixels shared, union 24
    result = evaluate((gt, gt_segments, pred, [segment(3, PERSON), segment(7, SKY)]))
    person, sky = result.per_category[PERSON], result.per_category[SKY]
    assert person["sq"] == pytest.approx(100 * 16 / 24) and person["pq"] == pytest.approx(100 * 16 / 24)
    assert person["rq"] == 100.0
    # Sky: 80 pixels each, 4 of the ground truth's under the predicted person.
    assert sky["pq"] == pytest.approx(100 * 76 / 84)
    assert result.all["pq"] == pytest.approx((100 * 16 / 24 + 100 * 76 / 84) / 2)


def test_predicted_pixels_on_void_are_left_out_of_the_union():
    gt = np.zeros((10, 10), dtype=np.int64)
    gt[0:4, 0:5] = 1
    pred = np.full(gt.shape, -1)
    pred[0:4, 2:7] = 0  # two columns to the right: 12 shared, 8 on void -> IoU 12 / (20 + 20 - 12 - 8) = 0.6
    result = evaluate((gt, [segment(1, PERSON)], pred, [segment(0, PERSON)]))
    # Counting the void pixels, the IoU would be 12 / 28 and there would be no match.
    assert result.per_category[PERSON]["tp"] == 1
    assert result.per_category[PERSON]["sq"] == pytest.approx(60.0)


def test_missed_segment_is_a_false_negative():
    gt, gt_segments = block_on_sky(rows=slice(0, 4), columns=slice(0, 4))
    gt[6:10, 6:10] = 3
    gt_segments.append(segment(3, PERSON))
    pred = np.where(gt == 1, 1, 2)
    pred[6:10, 6:10] = -1
    result = evaluate((gt, gt_segments, pred, [segment(1, PERSON), segment(2, SKY)]))
    assert result.per_category[PERSON] == pytest.approx(
        {"pq": 100 / 1.5, "sq": 100.0, "rq": 100 / 1.5, "tp": 1, "fp": 0, "fn": 1}
    )
    assert result.per_category[SKY]["pq"] == 100.0


def test_extra_segment_is_a_false_positive():
    gt, gt_segments = block_on_sky(columns=slice(0, 4))  # person 16 pixels, sky 84
    pred = np.where(gt == 1, 1, 2)
    pred[6:10, 6:10] = 3
    result = evaluate((gt, gt_segments, pred, [segment(1, PERSON), segment(2, SKY), segment(3, CAR)]))
    assert result.per_category[CAR] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 1, "fn": 0}
    assert result.per_category[SKY]["pq"] == pytest.approx(100 * 68 / 84)
    assert result.all["n"] == 3
    assert result.all["pq"] == pytest.approx((100 + 0 + 100 * 68 / 84) / 3)


def test_unmatched_prediction_mostly_on_void_is_no_false_positive():
    gt = np.ones((10, 10), dtype=np.int64)
    gt[0, :] = 0  # void row
    pred = np.full(gt.shape, 5)
    pred[0, 0:3], pred[1, 0] = 6, 6  # person: 3 of 4 pixels on void -> ignored
    pred[0:2, 5:7] = 7  # car: 2 of 4 on void, not more than half -> a false positive
    result = evaluate((gt, [segment(1, SKY)], pred, [segment(5, SKY), segment(6, PERSON), segment(7, CAR)]))
    person, car = result.per_category[PERSON], result.per_category[CAR]
    assert person["tp"] + person["fp"] + person["fn"] == 0
    assert car["fp"] == 1
    # Sky: 90 ground-truth pixels; the predicted sky has 92, 5 of them on void, 87 shared.
    assert result.per_category[SKY]["sq"] == pytest.approx(100 * 87 / 90)
    assert result.all["n"] == 2


def test_crowd_regions_neither_match_nor_miss_and_excuse_their_own_category():
    gt = np.full((10, 10), 3, dtype=np.int64)  # sky
    gt[0:5, 0:5] = 1  # a crowd of people
    gt[6:10, 6:10] = 2  # one person
    gt_segments = [segment(1, PERSON, iscrowd=1), segment(2, PERSON), segment(3, SKY)]
    pred = np.where(gt == 3, 13, 12)
    pred[0:5, 0:3] = 10  # a person inside the crowd: ignored
    pred[0:5, 3:5] = 11  # a car inside the people crowd: a false positive
    pred_segments = [segment(10, PERSON), segment(11, CAR), segment(12, PERSON), segment(13, SKY)]
    result = evaluate((gt, gt_segments, pred, pred_segments))
    assert result.per_category[PERSON] == {"pq": 100.0, "sq": 100.0, "rq": 100.0, "tp": 1, "fp": 0, "fn": 0}
    assert result.per_category[CAR]["fp"] == 1
    assert result.per_category[SKY]["tp"] == 1

    # A prediction covering the crowd exactly is no match either.
    pred = np.where(gt == 1, 10, pred)
    result = evaluate((gt, gt_segments, pred, [segment(10, PERSON), segment(12, PERSON), segment(13, SKY)]))
    assert result.per_category[PERSON]["tp"] == 1 and result.per_category[PERSON]["fp"] == 0


def test_void_and_crowd_pixels_count_together():
    gt = np.ones((4, 5), dtype=np.int64)  # sky
    gt[0, 0] = 9  # a one-pixel crowd of people
    gt[0, 1:3] = 0  # void
    pred = np.full(gt.shape, 5)
    pred[0, :] = 4  # 5 pixels: 1 crowd + 2 void + 2 sky
    for category, false_positives in ((PERSON, 0), (CAR, 1)):  # 3/5 on void or own crowd; 2/5 on void only
        result = evaluate((gt, [segment(1, SKY), segment(9, PERSON, 1)], pred, [segment(5, SKY), segment(4, category)]))
        assert result.per_category[category]["fp"] == false_positives


def test_things_and_stuff_average_over_the_categories_that_occur():
    gt, gt_segments = block_on_sky()
    gt[6:10, 6:10] = 5
    gt_segments.append(segment(5, CAR))
    pred = np.full(gt.shape, 2)
    pred[0:4, 0:5] = 1  # the car is missed: sky where it is
    result = evaluate((gt, gt_segments, pred, [segment(1, PERSON), segment(2, SKY)]))
    sky = 100 * 64 / 80  # 64 ground-truth sky pixels, 80 predicted
    assert result.things == {"pq": 50.0, "sq": 50.0, "rq": 50.0, "n": 2}  # the car's SQ counts as 0, as officially
    assert result.stuff == pytest.approx({"pq": sky, "sq": sky, "rq": 100.0, "n": 1})  # grass never occurs
    assert result.all == pytest.approx({"pq": (100 + 0 + sky) / 3, "sq": (100 + 0 + sky) / 3, "rq": 200 / 3, "n": 3})


def test_wrong_category_is_a_miss_and_a_false_positive():
    gt, gt_segments = block_on_sky()
    pred = np.where(gt == 1, 1, 2)
    result = evaluate((gt, gt_segments, pred, [segment(1, CAR), segment(2, SKY)]))
    assert (result.per_category[PERSON]["fn"], result.per_category[CAR]["fp"]) == (1, 1)
    assert result.per_category[PERSON]["pq"] == result.per_category[CAR]["pq"] == 0.0
    assert result.things["n"] == 2


def test_counts_add_up_over_images_before_the_ratio():
    gt, gt_segments = block_on_sky()
    hit = np.where(gt == 1, 1, 2)
    missed = np.where(gt == 1, -1, 2)
    segments = [segment(1, PERSON), segment(2, SKY)]
    result = evaluate((gt, gt_segments, hit, segments), (gt, gt_segments, missed, segments[1:]))
    person = result.per_category[PERSON]
    assert (person["tp"], person["fn"]) == (1, 1)
    assert person["pq"] == pytest.approx(100 / 1.5)  # not the mean of 100 and 0
    assert result.num_images == 2


@pytest.mark.parametrize("rows, matched", [(2, False), (3, True)])  # IoU 8/16 = 0.5 is no match; 12/16 is
def test_a_match_needs_iou_above_one_half(rows, matched):
    gt, gt_segments = block_on_sky(columns=slice(0, 4))
    pred = np.full(gt.shape, 2)
    pred[0:rows, 0:4] = 1
    result = evaluate((gt, gt_segments, pred, [segment(1, PERSON), segment(2, SKY)]))
    person = result.per_category[PERSON]
    assert (person["tp"], person["fp"], person["fn"]) == ((1, 0, 0) if matched else (0, 1, 1))


def test_ground_truth_area_comes_from_the_json():
    gt, gt_segments = block_on_sky()
    gt_segments[0]["area"] = 25  # 20 pixels in the PNG: panopticapi takes the JSON's figure
    pred = np.where(gt == 1, 1, 2)
    result = evaluate((gt, gt_segments, pred, [segment(1, PERSON), segment(2, SKY)]))
    assert result.per_category[PERSON]["sq"] == pytest.approx(80.0)


def test_zero_is_no_segment_unless_listed():
    gt, gt_segments = block_on_sky()
    pred = np.where(gt == 1, 0, 2)
    listed = evaluate((gt, gt_segments, pred, [segment(0, PERSON), segment(2, SKY)]))
    unlisted = evaluate((gt, gt_segments, pred, [segment(2, SKY)]))
    assert listed.per_category[PERSON]["tp"] == 1
    assert unlisted.per_category[PERSON]["fn"] == 1 and unlisted.per_category[PERSON]["fp"] == 0


def test_predicted_category_not_in_the_ground_truth_is_left_out():
    gt, gt_segments = block_on_sky()
    pred = np.where(gt == 1, 1, 2)
    pred[8:10, 8:10] = 3
    with_unknown = evaluate((gt, gt_segments, pred, [segment(1, PERSON), segment(2, SKY), segment(3, 99)]))
    without = evaluate((gt, gt_segments, np.where(pred == 3, -1, pred), [segment(1, PERSON), segment(2, SKY)]))
    assert with_unknown.unknown_category_segments == 1
    assert with_unknown.per_category == without.per_category


def test_no_images_give_zeros_and_n_0():
    result = evaluate()
    assert result.all == result.things == result.stuff == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}
    assert "All" in result.table() and "Stuff" in result.table()


def test_inconsistent_calls_are_bugs():
    gt, gt_segments = block_on_sky()
    accumulator = PanopticQualityAccumulator(CATEGORIES)
    with pytest.raises(ValueError, match="one shape"):
        accumulator.add(gt, gt_segments, gt[:, :5], [])
    with pytest.raises(ValueError, match=r"segment ids \[7\] not in pred_segments"):
        accumulator.add(gt, gt_segments, np.full(gt.shape, 7), [])
    with pytest.raises(ValueError, match="negative ids"):
        accumulator.add(-gt, gt_segments, gt, [])
    with pytest.raises(ValueError, match="not in the accumulator's categories"):
        accumulator.add(gt, [segment(1, 99), segment(2, SKY)], gt, [])


# Reading a COCO panoptic dataset.


def to_rgb(ids: np.ndarray) -> np.ndarray:
    """[H, W] ids -> [H, W, 3] uint8, id = R + 256 G + 256² B."""
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def write_dataset(folder, scenes, categories=CATEGORIES, name="panoptic_val"):
    """scenes: (image_id, ids [H, W], segments_info) -> folder/name.json and folder/name/<id>.png."""
    (folder / name).mkdir(parents=True, exist_ok=True)
    data = {
        "images": [{"id": image_id, "file_name": f"{image_id:012d}.jpg"} for image_id, _, _ in scenes],
        "annotations": [
            {"image_id": image_id, "file_name": f"{image_id:012d}.png", "segments_info": segments}
            for image_id, _, segments in scenes
        ],
        "categories": [
            {"id": key, "name": value["name"], "isthing": int(value["isthing"])} for key, value in categories.items()
        ],
    }
    for image_id, ids, _ in scenes:
        Image.fromarray(to_rgb(ids)).save(folder / name / f"{image_id:012d}.png")
    (folder / f"{name}.json").write_text(json.dumps(data))
    return folder / f"{name}.json"


def two_scenes():
    first = np.zeros((6, 8), dtype=np.int64)
    first[:, :4], first[:3, 4:] = 3226956, 256  # ids that use the blue and green channels
    second = np.full((5, 7), 1, dtype=np.int64)
    second[1:3, 1:3] = 70000
    return [
        (139, first, [segment(3226956, SKY) | {"area": 24}, segment(256, PERSON) | {"area": 12}]),
        (285, second, [segment(1, GRASS), segment(70000, CAR, iscrowd=1)]),
    ]


def test_reads_a_panoptic_dataset_and_scores_it(tmp_path):
    scenes = two_scenes()
    json_path = write_dataset(tmp_path / "annotations", scenes)
    ground_truth = read_panoptic_annotations(json_path)
    assert ground_truth.categories == CATEGORIES
    assert [image.image_id for image in ground_truth.images] == [139, 285]
    assert [image.file_name for image in ground_truth.images] == ["000000000139.jpg", "000000000285.jpg"]
    assert ground_truth.images[0].mask_path == tmp_path / "annotations" / "panoptic_val" / "000000000139.png"
    accumulator = PanopticQualityAccumulator(ground_truth.categories)
    for image, (_, ids, segments) in zip(ground_truth.images, scenes):
        assert image.segments == segments
        read = read_segment_ids(image.mask_path)
        assert read.dtype == np.int64 and np.array_equal(read, ids)
        accumulator.add(read, image.segments, read, image.segments)
    result = accumulator.result()
    assert result.all == {"pq": 100.0, "sq": 100.0, "rq": 100.0, "n": 3}  # the crowd car is neither hit nor missed


def test_masks_dir_can_be_given(tmp_path):
    json_path = write_dataset(tmp_path / "elsewhere", two_scenes())
    moved = tmp_path / "gt.json"
    moved.write_text(json_path.read_text())
    ground_truth = read_panoptic_annotations(moved, masks_dir=tmp_path / "elsewhere" / "panoptic_val")
    assert ground_truth.images[1].mask_path.is_file()


def rewrite(json_path, change):
    data = json.loads(json_path.read_text())
    change(data)
    json_path.write_text(json.dumps(data))


def instance_annotations(data):
    data["annotations"] = [{"image_id": 139, "bbox": [0, 0, 1, 1], "segmentation": [], "category_id": 1}]


def unknown_category(data):
    data["annotations"][1]["segments_info"][0]["category_id"] = 999


@pytest.mark.parametrize(
    "spoil, message",
    [
        (lambda path: path.unlink(), "no such file; pass the COCO panoptic annotation JSON"),
        (lambda path: path.write_text("{oops"), "is not JSON"),
        (lambda path: path.write_text("[]"), "not a COCO panoptic annotation file: its top level is a list"),
        (lambda path: rewrite(path, lambda data: data.pop("categories")), "no 'categories' list"),
        (lambda path: rewrite(path, instance_annotations), "no 'segments_info' (this looks like an instance"),
        (lambda path: rewrite(path, unknown_category), "segment 1 of image 285 has category_id 999, which is not in"),
        (lambda path: rewrite(path, lambda data: data["images"].pop()), "image_id 285 has no entry in 'images'"),
        (lambda path: (path.parent / "panoptic_val" / "000000000285.png").unlink(), "1 of 2 ground-truth PNGs are"),
        (
            lambda path: (path.parent / "panoptic_val").rename(path.parent / "pngs"),
            "ground-truth PNG folder",
        ),
    ],
    ids=["missing", "not-json", "list", "no-categories", "instances", "category", "no-image", "png", "folder"],
)
def test_bad_annotations_say_what_is_wrong_in_one_line(tmp_path, spoil, message):
    json_path = write_dataset(tmp_path, two_scenes())
    spoil(json_path)
    with pytest.raises(DetrDeployError) as error:
        read_panoptic_annotations(json_path)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_missing_pngs_are_counted_and_the_first_named(tmp_path):
    json_path = write_dataset(tmp_path, two_scenes())
    for png in (tmp_path / "panoptic_val").iterdir():
        png.unlink()
    with pytest.raises(DetrDeployError, match=r"2 of 2 ground-truth PNGs are missing .* \(first: 000000000139.png\)"):
        read_panoptic_annotations(json_path)


def test_unreadable_pngs_say_so(tmp_path):
    gray = tmp_path / "gray.png"
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(gray)
    with pytest.raises(DetrDeployError, match="is a L image, not an RGB panoptic PNG"):
        read_segment_ids(gray)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(DetrDeployError, match="is not a readable PNG"):
        read_segment_ids(broken)


# Peer: torchmetrics' PanopticQuality. It knows no crowd regions, and where the prediction has void pixels it also
# leaves them out of the ground truth's area and excuses mostly-void ground truth from being missed, which
# panopticapi does not; on ground truth with void but no crowd, and predictions that cover every pixel, the two agree.

RANDOM_CATEGORIES = {
    1: {"name": "a", "isthing": True},
    2: {"name": "b", "isthing": True},
    3: {"name": "c", "isthing": False},
    4: {"name": "d", "isthing": False},
    5: {"name": "e", "isthing": False},
}


def random_scene(rng, size=(24, 32), crowd=False, pred_void=False):
    """A random ground truth (two stuff bands, thing rectangles, a void rectangle, a crowd when asked) and a
    prediction that shifts, resizes, relabels, drops and adds segments -> (gt_ids, gt_segments, pred_ids,
    pred_segments). Ids are random in 1..2^24-1; the prediction's void is 0; every stuff category is one segment."""
    height, width = size
    things = [int(rng.integers(1, 3)) for _ in range(rng.integers(1, 5))]
    boxes = [
        (rng.integers(0, height - 3), rng.integers(0, width - 3), rng.integers(3, 10), rng.integers(3, 12))
        for _ in things
    ]
    stuff = [int(category) for category in rng.choice([3, 4, 5], size=2, replace=False)]
    split = int(rng.integers(6, height - 6))

    def paint(stuff, split, things, boxes, void_box):
        ids = np.zeros(size, dtype=np.int64)
        categories = {}
        for category, rows in zip(stuff, (slice(0, split), slice(split, height))):
            ids[rows] = new_id = int(rng.integers(1, 2**24))
            categories[new_id] = category
        for category, (top, left, box_height, box_width) in zip(things, boxes):
            ids[top : top + box_height, left : left + box_width] = new_id = int(rng.integers(1, 2**24))
            categories[new_id] = category
        if void_box is not None:
            top, left, box_height, box_width = void_box
            ids[top : top + box_height, left : left + box_width] = 0
        present = np.unique(ids)
        return ids, [segment(key, value) for key, value in categories.items() if key in present]

    def a_box():
        return tuple(
            int(value)
            for value in (rng.integers(0, height), rng.integers(0, width), rng.integers(2, 8), rng.integers(2, 8))
        )

    gt_ids, gt_segments = paint(stuff, split, things, boxes, a_box() if rng.random() < 0.7 else None)
    if crowd and len(gt_segments) > 2:
        gt_segments[2]["iscrowd"] = 1
    pred_stuff = [category if rng.random() < 0.8 else int(rng.integers(3, 6)) for category in stuff]
    if pred_stuff[0] == pred_stuff[1]:
        pred_stuff = stuff
    kept = [index for index in range(len(things)) if rng.random() < 0.85]
    pred_things = [things[index] if rng.random() < 0.85 else 3 - things[index] for index in kept]
    pred_boxes = [
        tuple(int(value + rng.integers(-2, 3)) for value in boxes[index][:2])
        + tuple(int(max(1, value + rng.integers(-1, 2))) for value in boxes[index][2:])
        for index in kept
    ]
    pred_boxes = [(max(top, 0), max(left, 0), box_height, box_width) for top, left, box_height, box_width in pred_boxes]
    if rng.random() < 0.3:
        pred_things.append(int(rng.integers(1, 3)))
        pred_boxes.append(a_box())
    pred_split = int(np.clip(split + rng.integers(-2, 3), 1, height - 1))
    pred_ids, pred_segments = paint(pred_stuff, pred_split, pred_things, pred_boxes, a_box() if pred_void else None)
    return gt_ids, gt_segments, pred_ids, pred_segments


def to_category_instance(ids, segments):
    """Id map -> [H, W, 2] (category, instance), torchmetrics' input; void and no segment get category 0."""
    category_of = {item["id"]: item["category_id"] for item in segments}
    categories = np.vectorize(lambda value: category_of.get(int(value), 0))(ids)
    return np.stack([categories, ids], axis=-1)


def test_agrees_with_torchmetrics_where_the_semantics_agree():
    pytest.importorskip(
        "torchmetrics", reason="torchmetrics is the peer: pip install -c .ci/constraints.txt torchmetrics"
    )
    import torch
    from torchmetrics.detection import PanopticQuality as TorchmetricsPanopticQuality

    rng = np.random.default_rng(0)
    things = {key for key, value in RANDOM_CATEGORIES.items() if value["isthing"]}
    peer = TorchmetricsPanopticQuality(
        things=things, stuffs=set(RANDOM_CATEGORIES) - things, return_sq_and_rq=True, return_per_class=True
    )
    accumulator = PanopticQualityAccumulator(RANDOM_CATEGORIES)
    for _ in range(30):
        gt_ids, gt_segments, pred_ids, pred_segments = random_scene(rng)
        accumulator.add(gt_ids, gt_segments, pred_ids, pred_segments)
        peer.update(
            torch.from_numpy(to_category_instance(pred_ids, pred_segments))[None],
            torch.from_numpy(to_category_instance(gt_ids, gt_segments))[None],
        )
    ours = accumulator.result()
    theirs = 100 * peer.compute().reshape(-1, 3).double().numpy()  # things, then stuff, each by category id
    order = sorted(things) + sorted(set(RANDOM_CATEGORIES) - things)
    counts = zip(peer.true_positives.tolist(), peer.false_positives.tolist(), peer.false_negatives.tolist())
    for row, count, category in zip(theirs, counts, order):
        figures = ours.per_category[category]
        assert (figures["tp"], figures["fp"], figures["fn"]) == count
        # torchmetrics divides in float32.
        assert [figures["pq"], figures["sq"], figures["rq"]] == pytest.approx(row.tolist(), rel=1e-6)
    assert ours.all["n"] == 5 and 0 < ours.all["pq"] < 100  # the random cases exercise every category
    assert sum(figures["fp"] for figures in ours.per_category.values()) > 0
    assert sum(figures["fn"] for figures in ours.per_category.values()) > 0
