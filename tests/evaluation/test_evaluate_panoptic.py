"""evaluate on a COCO panoptic dataset generated from the eager panoptic model's own segments: eager PQ/SQ/RQ are 100
by construction, and ONNX Runtime keeps them."""

import json

import numpy as np
import pytest
from PIL import Image

from detr_deploy.detector import Detector
from tests.evaluation.generated_coco import write_images
from tests.helpers import assert_one_line_error, run_cli, tiny_name

SIZES = [(120, 160), (160, 120), (100, 150)]
ZOO = "detr_r50_panoptic"
THRESHOLD = 0.5  # the confident test weights score their boosted label around 0.6-0.9


def write_panoptic_ground_truth(folder, paths, results):
    """COCO panoptic JSON + PNGs (id = R + 256 G + 256^2 B, 0 = void) from Detector results' segment maps."""
    masks = folder / "panoptic"
    masks.mkdir()
    images, annotations, categories = [], [], {}
    for image_id, (path, result) in enumerate(zip(paths, results), start=1):
        ids = np.where(result.segment_map >= 0, result.segment_map + 1, 0).astype(np.uint32)
        rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
        png = f"{path.stem}.png"
        Image.fromarray(rgb).save(masks / png)
        segments = [
            {"id": s.id + 1, "category_id": s.label, "iscrowd": 0, "area": s.area, "bbox": [0, 0, 1, 1]}
            for s in result.segments
        ]
        for s in result.segments:
            categories[s.label] = {"id": s.label, "name": s.name, "isthing": int(s.isthing)}
        images.append({"id": image_id, "file_name": path.name, "width": result.width, "height": result.height})
        annotations.append({"image_id": image_id, "file_name": png, "segments_info": segments})
    annotation_path = folder / "panoptic.json"
    annotation_path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": list(categories.values())})
    )
    return annotation_path


@pytest.fixture(scope="module")
def panoptic_dataset(confident_export, export_store, tmp_path_factory):
    folder = tmp_path_factory.mktemp("generated_panoptic")
    paths = write_images(folder / "images", SIZES, seed=3)
    checkpoint = export_store.confident_checkpoint(tiny_name(ZOO))  # the weights confident_export exported
    eager = Detector.open(tiny_name(ZOO), checkpoint=checkpoint, max_batch=1, panoptic_threshold=THRESHOLD)
    results = eager.detect(paths, score_threshold=0.0)
    assert all(result.segments for result in results), "the confident weights should give segments"
    return confident_export(ZOO), write_panoptic_ground_truth(folder, paths, results), folder / "images", checkpoint


@pytest.mark.slow
def test_eager_pq_is_100_and_onnx_runtime_keeps_it(panoptic_dataset, tmp_path):
    export, annotations, images, checkpoint = panoptic_dataset
    result = run_cli(
        "evaluate", "--panoptic-annotations", annotations, "--images", images, "--onnx", export,
        "--checkpoint", checkpoint, "--panoptic-threshold", THRESHOLD, "--batch-size", 1,
        "--report", tmp_path / "report.json", "--max-ap-drop", 1,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["task"] == "panoptic" and report["primary_metric"] == "PQ"
    eager, backend = report["backends"]
    assert eager["metrics"]["PQ"] == eager["metrics"]["SQ"] == eager["metrics"]["RQ"] == 100.0
    assert eager["metrics"]["PQ_stuff"] is None  # the tiny model's classes are all things
    # Random mask heads leave near-ties between queries' masks (tests.helpers.confident_checkpoint sharpens them):
    # every segment is still matched (RQ 100), a few pixels change hands (measured: PQ 99.5).
    assert backend["metrics"]["RQ"] == 100.0 and backend["metrics"]["PQ"] >= 99.0 and backend["passed"]
    assert "COCO panoptic quality" in result.output


@pytest.mark.slow
def test_a_detection_file_given_as_panoptic_and_back_is_refused(panoptic_dataset, tmp_path):
    export, annotations, images, checkpoint = panoptic_dataset
    result = run_cli("evaluate", "--annotations", annotations, "--images", images, "--onnx", export)
    assert_one_line_error(result, "is COCO panoptic", "--panoptic-annotations")
    detection = tmp_path / "instances.json"
    detection.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    result = run_cli("evaluate", "--panoptic-annotations", detection, "--images", images, "--onnx", export)
    assert result.exit_code == 2 and len([line for line in result.output.splitlines() if "error:" in line]) == 1
