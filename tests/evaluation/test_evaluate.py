"""evaluate, end to end on a generated dataset whose eager AP is known (100: its ground truth is the eager model's own
confident detections), for ONNX Runtime fp32 and fp16 files and a file whose box head was tampered with; and the
label -> category mapping rules."""

import json

import numpy as np
import onnx
import pytest
from PIL import Image

from detr_deploy import contract
from detr_deploy.categories import COCO_THINGS, coco_class_names, coco_contiguous_names
from detr_deploy.detector import Detector
from detr_deploy.errors import DetrDeployError
from detr_deploy.evaluation.box_metrics import BOX_METRICS
from detr_deploy.evaluation.coco_dataset import map_categories
from tests.evaluation.generated_coco import ground_truth_from_detections, write_dataset, write_images
from tests.helpers import run_cli, tiny_name

# Two sizes share a network size (they batch together), the others do not.
SIZES = [(120, 160), (120, 160), (160, 120), (100, 150), (120, 160)]
ZOO = "deformable_detr_r50"


@pytest.fixture(scope="module")
def generated(tiny_export, tmp_path_factory):
    """(export, annotation file, image folder, threshold): ground truth from the eager model's own detections."""
    folder = tmp_path_factory.mktemp("generated_coco")
    paths = write_images(folder / "images", SIZES)
    eager = Detector.open(tiny_name(ZOO), max_batch=1)  # the same weights the export has (seed 0)
    results = eager.detect(paths, score_threshold=0.0)
    ground_truth, threshold = ground_truth_from_detections(results, paths)
    return tiny_export(ZOO), write_dataset(folder, ground_truth), folder / "images", threshold


def _tampered(export, folder):
    """A copy of ``export`` whose box head's last bias is shifted: the same model by its metadata, worse boxes."""
    model = onnx.load(export)
    biases = [init for init in model.graph.initializer if "bbox_embed" in init.name and init.name.endswith("bias")]
    last = biases[-1]
    values = onnx.numpy_helper.to_array(last) + np.float32(0.8)
    last.CopyFrom(onnx.numpy_helper.from_array(values, last.name))
    path = folder / "tampered.onnx"
    onnx.save(model, path)
    return path


@pytest.mark.slow
def test_eager_ap_is_100_and_onnx_runtime_fp32_fp16_int8_keep_it(generated, tmp_path):
    export, annotations, images, threshold = generated
    fp16, int8 = tmp_path / "fp16.onnx", tmp_path / "int8.onnx"
    assert run_cli("quantize", export, "--precision", "fp16", "--output", fp16).exit_code == 0
    # Calibrated on the dataset's own images here; on real data, calibrate on training images.
    quantized = run_cli("quantize", export, "--calibration-images", images, "--output", int8)
    assert quantized.exit_code == 0 and "calibrated on 5 images" in quantized.output, quantized.output
    report_path, plot_path = tmp_path / "report.json", tmp_path / "plot.png"
    result = run_cli(
        "evaluate", "--annotations", annotations, "--images", images, "--onnx", export, "--onnx", fp16,
        "--onnx", int8, "--score-threshold", threshold, "--report", report_path, "--plot", plot_path,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    eager, fp32_backend, fp16_backend, int8_backend = report["backends"]
    # INT8 (measured here: AP 100, all 21 detections matched, score drift up to 0.02); the bound leaves room for
    # other CPUs' int8 kernels.
    assert int8_backend["precision"] == "int8" and int8_backend["max_ap_drop"] == 1.0
    assert int8_backend["metrics"]["AP"] >= 95.0 and int8_backend["detections"]["matched"] >= 0.9 * len(
        json.loads(annotations.read_text())["annotations"]
    )
    assert eager["name"] == "eager PyTorch" and report["images"] == len(SIZES)
    assert report["category_rule"] == "label = category id"
    # By construction (tests/evaluation/generated_coco.py): every metric with ground truth in its range is 100
    # (pycocotools divides by tp + fp + eps: a category with a single box gives 100 - 2e-14).
    for metric in ("AP", "AP50", "AP75"):
        assert eager["metrics"][metric] == pytest.approx(100.0, abs=1e-9)
    assert set(eager["metrics"]) == set(BOX_METRICS)
    assert fp32_backend["precision"] == "fp32" and fp16_backend["precision"] == "fp16"
    assert fp32_backend["metrics"]["AP"] == pytest.approx(100.0, abs=0.1) and fp32_backend["passed"]
    assert fp16_backend["metrics"]["AP"] >= 99.5 and fp16_backend["passed"]
    assert fp16_backend["max_ap_drop"] == 0.5 and fp32_backend["max_ap_drop"] == 0.1
    for backend in (fp32_backend, fp16_backend):
        assert backend["delta"]["AP"] == pytest.approx(backend["metrics"]["AP"] - 100.0, abs=1e-3)
        detections = backend["detections"]
        # The detection-level parity sees the ground-truth detections (score above the threshold) on both sides.
        assert detections["eager"] == len(json.loads(annotations.read_text())["annotations"]) > 0
        assert detections["matched"] == detections["eager"] and detections["missed"] == detections["extra"] == 0
    assert fp32_backend["score_drift"]["max"] < 1e-4 < fp16_backend["score_drift"]["max"] < 0.05
    assert report["passed"] and "PASSED" in result.output
    with Image.open(plot_path) as plot:
        assert plot.format == "PNG" and plot.width > 600


@pytest.mark.slow
def test_a_backend_that_loses_ap_fails_with_exit_1(generated, tmp_path):
    export, annotations, images, threshold = generated
    result = run_cli(
        "evaluate", "--annotations", annotations, "--images", images, "--onnx", _tampered(export, tmp_path),
        "--score-threshold", threshold, "--report", tmp_path / "report.json", "--max-images", 3,
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    eager, backend = report["backends"]
    assert report["images"] == 3 and eager["metrics"]["AP"] == pytest.approx(100.0, abs=1e-9)
    assert backend["metrics"]["AP"] < 99.9 and not backend["passed"] and not report["passed"]
    assert f"loses {-backend['delta']['AP']:.2f} AP points" in result.output and "FAILED" in result.output


@pytest.mark.slow
def test_eager_alone_from_a_zoo_name(generated, tmp_path):
    _, annotations, images, _ = generated
    result = run_cli("evaluate", "--annotations", annotations, "--images", images, "--model", tiny_name(ZOO))
    assert result.exit_code == 0, result.output
    assert "eager PyTorch" in result.output and "100.00" in result.output


def test_coco_names_map_to_coco_ids():
    categories = {category: name for category, name in COCO_THINGS.items()}
    # DETR's 91 labels are COCO ids; "N/A" labels map to nothing.
    detr = map_categories(coco_class_names(91, panoptic=False), categories, {1, 90})
    assert (
        detr.rule == "class names" and detr.category(1) == 1 and detr.category(90) == 90 and detr.category(12) is None
    )
    # 80-class heads (RT-DETR, mmdetection): label i is the i-th COCO thing.
    contiguous = map_categories(coco_contiguous_names(), categories, {1, 90})
    assert contiguous.category(0) == 1 and contiguous.category(11) == 13 and contiguous.category(79) == 90


def test_custom_names_map_by_name_and_unnamed_heads_by_id():
    categories = {7: "Forklift", 9: "pallet "}
    named = map_categories(["pallet", "forklift", "person"], categories, {7, 9})
    assert named.label_to_category == {1: 7, 0: 9}
    unnamed = map_categories([f"class_{label}" for label in range(10)], categories, {7, 9})
    assert unnamed.rule == "label = category id" and unnamed.category(7) == 7 and unnamed.category(3) is None


@pytest.mark.parametrize(
    "class_names, fragment",
    [
        (["pallet", "person"], "category 'Forklift' (id 7) is one the model cannot produce"),
        ([f"class_{label}" for label in range(5)], "only labels 0..4"),
    ],
)
def test_a_category_the_model_cannot_produce_is_refused(class_names, fragment):
    with pytest.raises(DetrDeployError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        map_categories(class_names, {7: "Forklift", 9: "pallet"}, {7, 9})


@pytest.mark.slow
def test_metadata_precision_reaches_the_runner(generated, tmp_path):
    from detr_deploy.runtime.onnxruntime import OnnxRuntimeRunner

    export, *_ = generated
    model = onnx.load(export)
    onnx.helper.set_model_props(
        model, {**{p.key: p.value for p in model.metadata_props}, contract.META_PRECISION: "fp16"}
    )
    onnx.save(model, tmp_path / "marked.onnx")
    assert OnnxRuntimeRunner(export).precision == "fp32"
    assert OnnxRuntimeRunner(tmp_path / "marked.onnx").precision == "fp16"
