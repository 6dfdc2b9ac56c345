"""Issues 22 and 25: everything downstream of export takes the families added after the first ones, unchanged: evaluate
(fp32, fp16 and INT8 files against eager PyTorch on a generated dataset whose eager AP is 100), quantize, predict,
benchmark (eager, ONNX Runtime, OpenVINO), export-triton, verify-parity --openvino and an fp16 ahead-of-time
TensorRT-RTX build, through the real CLI on each family's tiny model."""

import json
from pathlib import Path

import pytest

from detr_deploy import contract
from detr_deploy.detector import Detector
from detr_deploy.models import get_model_spec
from detr_deploy.sidecar import read_sidecar
from tests.evaluation.generated_coco import ground_truth_from_detections, write_dataset, write_images
from tests.helpers import run_cli, tiny_name

# One zoo model per family issues 22 and 25 added (their tiny variants); the first is the quick run's.
FAMILIES = ["dfine_hgnetv2_s", "rtdetr_hgnetv2_l", "rfdetr_nano", "conditional_detr_r50", "dab_detr_r50"]
SIZES = [(128, 160), (160, 128), (128, 160)]


def families(quick: int = 1):
    return [pytest.param(name, marks=() if index < quick else pytest.mark.slow) for index, name in enumerate(FAMILIES)]


@pytest.fixture(scope="module")
def generated(tiny_export, tmp_path_factory):
    """generated(zoo_name) -> (export, annotation file, image folder, score threshold): ground truth from the eager
    model's own detections (tests/evaluation/generated_coco.py)."""
    made = {}

    def get(zoo_name):
        if zoo_name not in made:
            folder = tmp_path_factory.mktemp(zoo_name)
            paths = write_images(folder / "images", SIZES)
            eager = Detector.open(tiny_name(zoo_name), max_batch=1)  # the export's weights (seed 0)
            ground_truth, threshold = ground_truth_from_detections(eager.detect(paths, score_threshold=0.0), paths)
            made[zoo_name] = tiny_export(zoo_name), write_dataset(folder, ground_truth), folder / "images", threshold
        return made[zoo_name]

    return get


@pytest.mark.parametrize("zoo_name", families())
def test_predict_writes_detections_for_each_image(zoo_name, generated, tmp_path):
    export, annotations, images, threshold = generated(zoo_name)
    output = tmp_path / "out"
    output.mkdir()
    paths = sorted(images.iterdir())
    result = run_cli("predict", export, *paths, "--output", output, "--score-threshold", threshold)
    assert result.exit_code == 0, result.output
    data = json.loads((output / "detections.json").read_text())
    assert [entry["source"] for entry in data["images"]] == [str(path) for path in paths]
    # The threshold keeps the ground truth's boxes: every image that has some gets detections.
    annotated = {
        image["file_name"]
        for image in json.loads(annotations.read_text())["images"]
        if any(a["image_id"] == image["id"] for a in json.loads(annotations.read_text())["annotations"])
    }
    assert annotated and all(entry["detections"] for entry in data["images"] if Path(entry["source"]).name in annotated)
    assert sorted(p.name for p in output.iterdir()) == sorted(["detections.json"] + [f"{p.stem}.png" for p in paths])


@pytest.mark.slow
@pytest.mark.parametrize("zoo_name", FAMILIES)
def test_evaluate_keeps_the_eager_ap_in_fp32_fp16_and_int8(zoo_name, generated, tmp_path):
    export, annotations, images, threshold = generated(zoo_name)
    fp16, int8, report_path = tmp_path / "fp16.onnx", tmp_path / "int8.onnx", tmp_path / "report.json"
    assert run_cli("quantize", export, "--precision", "fp16", "--output", fp16).exit_code == 0
    quantized = run_cli("quantize", export, "--calibration-images", images, "--output", int8)
    assert quantized.exit_code == 0, quantized.output
    result = run_cli(
        "evaluate", "--annotations", annotations, "--images", images, "--onnx", export, "--onnx", fp16,
        "--onnx", int8, "--score-threshold", threshold, "--report", report_path,
    )  # fmt: skip
    assert result.exit_code in (0, 1), result.output  # 1: a backend lost more AP than its precision's bound
    report = json.loads(report_path.read_text())
    eager, fp32_backend, fp16_backend, int8_backend = report["backends"]
    assert eager["metrics"]["AP"] == pytest.approx(100.0, abs=1e-9)
    assert fp32_backend["metrics"]["AP"] == pytest.approx(100.0, abs=0.1) and fp32_backend["passed"]
    assert fp32_backend["score_drift"]["max"] < 1e-4
    assert [b["precision"] for b in (fp32_backend, fp16_backend, int8_backend)] == ["fp32", "fp16", "int8"]
    # fp16 keeps the boxes and scores (measured: IoU mean 0.983 / 0.995, score drift max 1.6e-3 / 7e-4 for D-FINE-S /
    # RT-DETR-L). Its AP on these 13-14 boxes can still drop by one box at the threshold (D-FINE-S: 93.7), and the
    # whole-graph INT8 of these random HGNetv2 models loses most of it (measured AP 31 / 23: the query selection picks
    # other queries), which is what issue 23's per-family INT8 recipe is for: only the figures are checked here.
    assert fp16_backend["score_drift"]["max"] < 1e-2 and fp16_backend["detections"]["mean_iou"] > 0.95
    assert 0.0 <= int8_backend["metrics"]["AP"] <= 100.0 and int8_backend["detections"]["eager"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("zoo_name", FAMILIES)
def test_benchmark_verify_parity_openvino_and_export_triton(zoo_name, tiny_export, tmp_path):
    export = tiny_export(zoo_name)
    report = tmp_path / "latency.json"
    result = run_cli(
        "benchmark", "--onnx", export, "--backends", "eager,onnxruntime,openvino", "--sizes", "160x192",
        "--batch-sizes", "2", "--warmup", "1", "--iterations", "2", "--json", report,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = [(r["backend"], r["batch"], r["height"], r["width"]) for r in json.loads(report.read_text())["results"]]
    assert rows == [("eager", 2, 160, 192), ("onnxruntime", 2, 160, 192), ("openvino", 2, 160, 192)]
    parity = run_cli("verify-parity", "--openvino", export, "--sizes", "192x160", "--batch-sizes", "1,2")
    assert parity.exit_code == 0 and "PASSED" in parity.output, parity.output
    repository = tmp_path / "repo"
    served = run_cli("export-triton", "--onnx", export, "--output", repository, "--flavours", "python")
    assert served.exit_code == 0, served.output
    configs = sorted(path.parent.name for path in repository.glob("*/config.pbtxt"))
    assert configs and all(name.startswith("detr") for name in configs), configs


@pytest.mark.slow
@pytest.mark.trt
@pytest.mark.parametrize("zoo_name", FAMILIES)
def test_an_fp16_engine_builds_ahead_of_time(zoo_name, tiny_export, tmp_path):
    pytest.importorskip("tensorrt_rtx_bindings", reason="the ahead-of-time build needs TensorRT-RTX")
    engine = tmp_path / "model.engine"
    result = run_cli(
        "build-engine", tiny_export(zoo_name), "--output", engine, "--precision", "fp16", "--compute-capability",
        "89", "--min-shapes", "images:1x3x128x128", "--opt-shapes", "images:1x3x160x160", "--max-shapes",
        "images:2x3x256x256",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    sidecar = read_sidecar(engine)
    assert (sidecar.precision, sidecar.ahead_of_time, sidecar.compute_capability) == ("fp16", True, "8.9")
    deformable = bool(get_model_spec(tiny_name(zoo_name)).config.deformable_strides)
    assert sidecar.model[contract.META_MODEL] == tiny_name(zoo_name) and (sidecar.msda_nodes > 0) == deformable
    assert {t.name for t in sidecar.outputs} == {"pred_logits", "pred_boxes"}
