"""The Detector: padded batches give the detections each image gives alone, every input kind, post-processing,
and per-image errors that leave the other images processed."""

import json

import numpy as np
import pytest
from PIL import Image

from detr_deploy import contract
from detr_deploy.detector import Detector
from detr_deploy.errors import DetrDeployError
from detr_deploy.parity import Detections, Tolerance, compare_detections
from detr_deploy.postprocess import decode_boxes, panoptic_segments
from detr_deploy.runtime import Runner
from detr_deploy.sidecar import ShapeProfile

# Sizes chosen so that the three images resize to three different network input sizes.
SIZES = [(240, 320), (300, 200), (180, 260)]
RESIZE = dict(shorter_side=224, max_size=400)
# DETR honours the mask almost exactly (what differs: the backbone's convolutions see padding beyond the image's
# edge, and level masks are rounded). Deformable DETR, as officially written, also normalizes its input projections
# (GroupNorm) over the padded map, so a padded image drifts more.
CLOSE = Tolerance(rtol=0, atol=0, min_box_iou=0.99, max_score_drift=2e-3, min_mask_iou=0.99)
OFFICIAL_PADDING_DRIFT = Tolerance(rtol=0, atol=0, min_box_iou=0.85, max_score_drift=0.1, min_mask_iou=0.85)


def noise_images(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for height, width in SIZES]


def as_detections(result) -> Detections:
    return Detections(
        np.array([d.score for d in result.detections]),
        np.array([d.label for d in result.detections]),
        np.array([d.box for d in result.detections]).reshape(-1, 4),
    )


@pytest.mark.parametrize(
    "zoo_name, tolerance",
    [("detr_r50", CLOSE), ("detr_r50_panoptic", CLOSE), ("deformable_detr_r50", OFFICIAL_PADDING_DRIFT)],
)
def test_padded_batch_gives_the_detections_of_each_image_alone(zoo_name, tolerance, confident_export):
    detector = Detector.open(confident_export(zoo_name), score_threshold=0.5, panoptic_threshold=0.5, **RESIZE)
    assert detector.padded_batches and detector.max_batch == 8
    images = noise_images()
    batched = detector.detect(images)
    alone = [detector.detect(image) for image in images]
    # Detections must be compared with the threshold lowered by the allowed drift, as verify-parity does.
    lowered = detector.detect(images, score_threshold=0.5 - tolerance.max_score_drift)
    alone_lowered = [detector.detect(image, score_threshold=0.5 - tolerance.max_score_drift) for image in images]
    stats = compare_detections(
        [as_detections(r) for r in alone_lowered], [as_detections(r) for r in lowered], 0.5, tolerance
    )
    assert stats.passed, stats
    assert stats.matched >= stats.eager == sum(len(r.detections) for r in alone) > 0  # not vacuous
    for one, many in zip(alone, batched):
        assert (one.width, one.height) == (many.width, many.height)
    if zoo_name == "detr_r50_panoptic":
        # The same segments; their pixels are not compared: the official mask head group-normalizes over the
        # padded map, so mask logits in a padded batch differ from the image alone (measured: up to 1.6 here).
        for one, many in zip(alone, batched):
            assert len(one.segments) == len(many.segments) > 0
            assert [s.label for s in one.segments] == [s.label for s in many.segments]


def test_without_a_padding_mask_only_same_sized_images_share_a_batch(tiny_export):
    detector = Detector.open(tiny_export("deformable_detr_r50"), score_threshold=0.1, **RESIZE)
    assert not detector.padded_batches and detector.max_batch == 8
    first, second, third = noise_images(1)
    images = [first, noise_images(2)[0], second, third]  # the first two have the same size
    runs = []
    run = detector.runner.run
    detector.runner.run = lambda batch, mask=None: runs.append((batch.shape[0], mask)) or run(batch, mask)
    try:
        batched = detector.detect(images)
    finally:
        detector.runner.run = run
    # Consecutive images of one network size share a run (no mask); another size starts a new run.
    assert [size for size, _ in runs] == [2, 1, 1] and all(mask is None for _, mask in runs)
    for one, many in zip([detector.detect(image) for image in images], batched):
        stats = compare_detections([as_detections(one)], [as_detections(many)], 0.1, CLOSE)
        assert stats.passed and stats.matched == len(one.detections) > 0, stats


def test_paths_pil_images_and_arrays_are_the_same_image(confident_export, tmp_path):
    detector = Detector.open(confident_export("deformable_detr_r50"), score_threshold=0.3, **RESIZE)
    array = noise_images(2)[0]
    path = tmp_path / "image.png"
    Image.fromarray(array).save(path)
    from_path, from_pil, from_array = detector.detect([path, Image.fromarray(array), array])
    assert from_path.source == str(path) and from_path.detections
    assert from_path.detections == from_pil.detections == from_array.detections
    assert (from_path.width, from_path.height) == (320, 240)
    # Boxes are in pixels of the original 320x240 image (not clipped to it, as in the official post-processing).
    assert all(d.box[0] <= d.box[2] and d.box[1] <= d.box[3] for d in from_path.detections)
    assert 100 < np.mean([(d.box[0] + d.box[2]) / 2 for d in from_path.detections]) < 220
    assert {d.name for d in from_path.detections} <= {f"class_{label}" for label in range(5)}


def test_bad_images_are_reported_and_the_others_still_processed(confident_export, tmp_path):
    detector = Detector.open(confident_export("detr_r50"), **RESIZE)
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    good = noise_images()[0]
    results = detector.detect([text, good, tmp_path / "missing.png", np.zeros((4, 4), np.uint8)])
    assert [r.error is None for r in results] == [False, True, False, False]
    assert "cannot read image" in results[0].error and "does not exist" in results[2].error
    assert "uint8 [H, W, 3]" in results[3].error
    assert results[1].detections == detector.detect(good).detections
    with pytest.raises(DetrDeployError, match="no images given"):
        detector.detect([])
    with pytest.raises(DetrDeployError, match="cannot read image"):
        detector.detect(text)


class ProfiledRunner(Runner):
    """An engine runner (a profile, as its sidecar gives) around an ONNX Runtime session, to check the Detector's
    profile handling without a GPU."""

    def __init__(self, onnx_path, profile: ShapeProfile):
        from detr_deploy.runtime.onnxruntime import OnnxRuntimeRunner

        self.inner = OnnxRuntimeRunner(onnx_path)
        self.input_names, self.output_names = self.inner.input_names, self.inner.output_names
        self.metadata = self.inner.metadata
        self.profiles = {contract.INPUT_IMAGES: profile}
        self.batches = []

    def run(self, images, padding_mask=None):
        self.batches.append(images.shape)
        return self.inner.run(images, padding_mask)


def test_images_outside_the_engine_profile_fail_alone_and_batches_respect_its_max(confident_export):
    profile = ShapeProfile([1, 3, 200, 200], [2, 3, 224, 300], [2, 3, 400, 400])
    runner = ProfiledRunner(confident_export("detr_r50"), profile)
    detector = Detector(runner, runner.inner.metadata, shorter_side=224, max_size=1333)
    wide = np.zeros((100, 600, 3), np.uint8)  # resizes to 224x1344: wider than the profile
    results = detector.detect([*noise_images(), wide])
    assert [r.error is None for r in results] == [True, True, True, False]
    assert "outside the engine's profile (200x200 to 400x400)" in results[3].error
    assert max(shape[0] for shape in runner.batches) == 2 and sum(shape[0] for shape in runner.batches) == 3


def test_decode_boxes_follows_the_official_post_processing():
    # DETR: softmax, best real class (never "no object"), boxes scaled to the original image.
    logits = np.array([[0.0, 5.0, 0.0, 9.0], [4.0, 0.0, 0.0, 0.0]])  # query 0 is "no object" mostly
    boxes = np.array([[0.5, 0.5, 0.2, 0.4], [0.25, 0.5, 0.5, 1.0]])
    found = decode_boxes(logits, boxes, "softmax", (100, 200), 0.0)
    assert found.labels.tolist() == [0, 1] and found.scores[0] > found.scores[1]
    np.testing.assert_allclose(found.boxes[0], [0, 0, 100, 100], atol=1e-4)
    np.testing.assert_allclose(found.boxes[1], [80, 30, 120, 70], atol=1e-4)
    # Deformable DETR: sigmoid per (query, class), one query may give several detections.
    logits = np.array([[3.0, 2.0], [-5.0, -5.0]])
    found = decode_boxes(logits, boxes, "sigmoid", (100, 200), 0.5)
    assert found.labels.tolist() == [0, 1] and np.allclose(found.boxes[0], found.boxes[1])


def test_panoptic_segments_merge_stuff_and_drop_tiny_segments():
    # Queries: 0 thing (label 1), 1 and 2 stuff (label 3, merged), 3 a thing owning 4 pixels only, 4 no object.
    logits = np.full((5, 5), -10.0)
    logits[[0, 1, 2, 3], [1, 3, 3, 2]] = 10.0
    logits[4, 4] = 10.0
    masks = np.full((5, 16, 16), -5.0)
    masks[0, :8, :] = 5.0
    masks[1, 8:, :8] = 5.0
    masks[2, 8:, 8:] = 5.0
    masks[3, :2, :2] = 9.0  # wins 4 pixels: too small to be a segment
    result = panoptic_segments(logits, masks, (16, 16), (16, 16), (16, 16), stuff_labels=[3], threshold=0.85)
    assert result.labels.tolist() == [1, 3]
    assert result.areas.tolist() == [128, 128] and set(np.unique(result.segment_map)) == {0, 1}
    empty = panoptic_segments(logits[4:], masks[4:], (16, 16), (16, 16), (8, 8))
    assert empty.labels.size == 0 and (empty.segment_map == -1).all()


def test_coco_names_reach_the_detector_through_the_export_metadata(tiny_export):
    import onnx

    from detr_deploy.categories import class_metadata
    from detr_deploy.models import get_model_spec

    names = json.loads(class_metadata(get_model_spec("detr_r50").config)[contract.META_CLASS_NAMES])
    assert names[1] == "person" and names[90] == "toothbrush" and names[12] == "N/A" and len(names) == 91
    panoptic = class_metadata(get_model_spec("detr_r50_panoptic").config)
    assert json.loads(panoptic[contract.META_CLASS_NAMES])[200] == "rug-merged"
    assert len(json.loads(panoptic[contract.META_STUFF_LABELS])) == 53
    metadata = {p.key: p.value for p in onnx.load(str(tiny_export("detr_r50"))).metadata_props}
    assert json.loads(metadata[contract.META_CLASS_NAMES]) == [f"class_{label}" for label in range(7)]


def test_a_zoo_model_with_its_checkpoint_detects_what_its_export_does(confident_export, export_store):
    onnx_path = confident_export("deformable_detr_r50")
    exported = Detector.open(onnx_path, score_threshold=0.4, **RESIZE)
    checkpoint = export_store.confident_checkpoint("tiny_deformable_detr_r50")  # the weights of the export
    eager = Detector.open("tiny_deformable_detr_r50", checkpoint=checkpoint, score_threshold=0.4, **RESIZE)
    assert eager.padded_batches and eager.class_names == exported.class_names
    images = noise_images(4)
    stats = compare_detections(
        [as_detections(r) for r in eager.detect(images)],
        [as_detections(r) for r in exported.detect(images)],
        0.4,
        CLOSE,
    )
    assert stats.passed and stats.matched > 0, stats
