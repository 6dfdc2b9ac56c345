"""The real CLI with OpenVINO: verify-parity --openvino, benchmark's openvino backend, evaluate --openvino and
predict --runtime openvino run our export (a plugin-mode Deformable DETR: its MSDeformAttn function is inlined at
load time), with --threads reaching OpenVINO's INFERENCE_NUM_THREADS; mistakes are one error line and exit 2.

Skips where openvino is not installed (``pip install openvino``).
"""

import json

import numpy as np
import pytest

from detr_deploy.detector import Detector
from tests.evaluation.generated_coco import ground_truth_from_detections, write_dataset, write_images
from tests.helpers import NO_BF16_UNITS, assert_one_line_error, openvino_computes_bf16, tiny_name
from tests.helpers import run_cli as run

pytest.importorskip("openvino", reason="OpenVINO is not installed: pip install openvino")

from detr_deploy.runtime.openvino import OpenVINORunner  # noqa: E402

ZOO = "deformable_detr_r50"


@pytest.fixture
def opened(monkeypatch) -> list:
    """The OpenVINO runners the command opens (to read back the threads OpenVINO compiled with)."""
    runners = []
    original = OpenVINORunner.__init__

    def recording(self, *args, **kwargs):
        original(self, *args, **kwargs)
        runners.append(self)

    monkeypatch.setattr(OpenVINORunner, "__init__", recording)
    return runners


def test_verify_parity_openvino_passes(tiny_export, opened, tmp_path):
    report = tmp_path / "report.json"
    result = run(
        "verify-parity", "--openvino", tiny_export(ZOO), "--sizes", "200x264,250x190", "--batch-sizes", "1,3",
        "--threads", "1", "--report", report,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-2] == "PASSED"
    data = json.loads(report.read_text())
    assert data["backend"] == "OpenVINO" and data["model"] == tiny_name(ZOO) and len(data["cases"]) == 4
    assert [runner.threads for runner in opened] == [1]


@pytest.mark.slow
def test_benchmark_times_eager_onnxruntime_and_openvino(tiny_export, opened, tmp_path):
    report = tmp_path / "latency.json"
    result = run(
        "benchmark", "--onnx", tiny_export(ZOO), "--backends", "eager,onnxruntime,openvino", "--threads", "1",
        "--sizes", "160x224", "--warmup", "1", "--iterations", "3", "--json", report,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = [(r["backend"], r["batch"], r["height"], r["width"]) for r in json.loads(report.read_text())["results"]]
    assert rows == [("eager", 1, 160, 224), ("onnxruntime", 1, 160, 224), ("openvino", 1, 160, 224)]
    assert any(line.startswith("openvino") and "160x224" in line for line in result.output.splitlines())
    assert [runner.threads for runner in opened] == [1]


@pytest.mark.slow
def test_evaluate_openvino_keeps_eager_ap(tiny_export, opened, tmp_path):
    # Ground truth = the eager model's own confident detections: eager AP is 100 by construction
    # (tests/evaluation/generated_coco.py), and a backend at parity keeps it.
    paths = write_images(tmp_path / "images", [(120, 160), (160, 120), (120, 160)])
    results = Detector.open(tiny_name(ZOO), max_batch=1).detect(paths, score_threshold=0.0)
    ground_truth, threshold = ground_truth_from_detections(results, paths)
    annotations = write_dataset(tmp_path, ground_truth)
    report = tmp_path / "report.json"
    result = run(
        "evaluate", "--annotations", annotations, "--images", tmp_path / "images", "--onnx", tiny_export(ZOO),
        "--openvino", tiny_export(ZOO), "--threads", "1", "--score-threshold", threshold, "--report", report,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    eager, onnxruntime, openvino = json.loads(report.read_text())["backends"]
    assert (eager["name"], onnxruntime["name"], openvino["name"]) == ("eager PyTorch", "ONNX Runtime", "OpenVINO")
    assert eager["metrics"]["AP"] == pytest.approx(100.0, abs=1e-9)
    assert openvino["metrics"]["AP"] == pytest.approx(100.0, abs=0.1) and openvino["passed"]
    assert openvino["detections"]["missed"] == openvino["detections"]["extra"] == 0
    assert [runner.threads for runner in opened] == [1]


@pytest.mark.slow
def test_predict_with_openvino_finds_what_onnx_runtime_finds(tiny_export, opened, tmp_path):
    images = write_images(tmp_path / "images", [(120, 160), (160, 120)])
    found = {}
    for runtime in ("onnxruntime", "openvino"):
        output = tmp_path / runtime
        output.mkdir()
        result = run(
            "predict", tiny_export(ZOO), *images, "--output", output, "--runtime", runtime, "--threads", "1",
            "--score-threshold", "0.1",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert sorted(p.name for p in output.iterdir()) == ["detections.json", "image_000.png", "image_001.png"]
        found[runtime] = json.loads((output / "detections.json").read_text())["images"]
    assert [runner.threads for runner in opened] == [1]
    assert sum(len(image["detections"]) for image in found["openvino"]) > 0
    for reference, image in zip(found["onnxruntime"], found["openvino"]):
        assert len(image["detections"]) == len(reference["detections"])
        for detection in image["detections"]:
            # The same detection up to float rounding (scores are written to 5 decimals, boxes to 2).
            assert any(
                d["label"] == detection["label"]
                and abs(d["score"] - detection["score"]) <= 1e-3
                and np.abs(np.subtract(d["box"], detection["box"])).max() <= 0.1
                for d in reference["detections"]
            ), detection


def test_mistakes_are_one_error_line(tiny_export, tmp_path):
    export = tiny_export(ZOO)
    [image] = write_images(tmp_path / "images", [(120, 160)])
    (tmp_path / "out").mkdir()
    assert_one_line_error(run("verify-parity", "--openvino", tmp_path / "missing.onnx"), "does not exist")
    assert_one_line_error(run("verify-parity", "--openvino", tmp_path / "model.engine"), "--openvino takes an ONNX")
    assert_one_line_error(run("verify-parity", "--openvino", export, "--onnx", export), "exactly one of --onnx")
    assert_one_line_error(run("verify-parity", "--openvino", export, "--threads", "0"), "--threads must be from 1")
    assert_one_line_error(
        run("predict", tmp_path / "model.engine", image, "--output", tmp_path / "out", "--runtime", "openvino"),
        "is a TensorRT engine and runs in TensorRT only",
    )
    assert_one_line_error(
        run("predict", tiny_name(ZOO), image, "--output", tmp_path / "out", "--runtime", "openvino"),
        "--runtime openvino runs ONNX files",
    )
    assert_one_line_error(run("benchmark", "--engine", tmp_path / "m.engine", "--backends", "openvino"), "needs --onnx")
    assert list((tmp_path / "out").iterdir()) == []


def test_without_openvino_installed_the_error_says_how_to_install(tiny_export, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    result = run("verify-parity", "--openvino", tiny_export(ZOO))
    assert_one_line_error(result, "OpenVINO is not installed; run: pip install openvino")


def test_verify_parity_openvino_in_bf16(tiny_export, opened, tmp_path):
    """--precision bf16 with --openvino: OpenVINO's precision hint, judged at bf16 tolerances, said in the report; on
    a CPU without bf16 units, one line and no report."""
    report = tmp_path / "report.json"
    result = run(
        "verify-parity", "--openvino", tiny_export(ZOO), "--precision", "bf16", "--sizes", "200x264",
        "--batch-sizes", "1", "--threads", "1", "--report", report,
    )  # fmt: skip
    if openvino_computes_bf16():
        assert result.exit_code == 0, result.output
        assert [runner.precision for runner in opened] == ["bf16"]
        assert "bfloat16" in str(opened[0].compiled.get_property("INFERENCE_PRECISION_HINT"))
        assert json.loads(report.read_text())["precision"] == "bf16"
    else:
        assert_one_line_error(result, NO_BF16_UNITS)
        assert not report.exists()
    [image] = write_images(tmp_path / "images", [(120, 160)])
    (tmp_path / "out").mkdir()
    assert_one_line_error(
        run("predict", tiny_export(ZOO), image, "--output", tmp_path / "out", "--precision", "bf16"),
        "--precision is for --runtime openvino",
    )
    assert_one_line_error(
        run("benchmark", "--onnx", tiny_export(ZOO), "--precision", "bf16"), "--precision is for the openvino backend"
    )
    assert_one_line_error(
        run("verify-parity", "--openvino", tiny_export(ZOO), "--precision", "int8", "--sizes", "200x264"),
        "int8 needs a quantized file",
    )


@pytest.mark.slow
def test_bf16_reaches_evaluate_benchmark_and_predict(tiny_export, opened, tmp_path):
    if not openvino_computes_bf16():
        pytest.skip(
            "this CPU has no bf16 units (no AVX512-BF16/AMX): bf16 is refused (test_verify_parity_openvino_in_bf16)"
        )
    paths = write_images(tmp_path / "images", [(120, 160), (160, 120)])
    results = Detector.open(tiny_name(ZOO), max_batch=1).detect(paths, score_threshold=0.0)
    ground_truth, threshold = ground_truth_from_detections(results, paths)
    annotations = write_dataset(tmp_path, ground_truth)
    report = tmp_path / "report.json"
    result = run(
        "evaluate", "--annotations", annotations, "--images", tmp_path / "images", "--onnx", tiny_export(ZOO),
        "--openvino", tiny_export(ZOO), "--precision", "bf16", "--threads", "1", "--score-threshold", threshold,
        "--report", report,
    )  # fmt: skip
    assert result.exit_code in (0, 1), result.output
    eager, onnxruntime, openvino = json.loads(report.read_text())["backends"]
    assert (onnxruntime["precision"], openvino["precision"]) == ("fp32", "bf16")
    assert openvino["max_ap_drop"] == 1.0  # bf16's default guard (evaluate.DEFAULT_MAX_AP_DROP)
    latency = tmp_path / "latency.json"
    result = run(
        "benchmark", "--onnx", tiny_export(ZOO), "--backends", "openvino", "--precision", "bf16", "--threads", "1",
        "--sizes", "160x224", "--warmup", "1", "--iterations", "2", "--json", latency,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    output = tmp_path / "out"
    output.mkdir()
    result = run(
        "predict", tiny_export(ZOO), *paths, "--output", output, "--runtime", "openvino", "--precision", "bf16",
        "--threads", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [runner.precision for runner in opened[1:]] == ["bf16", "bf16"]
    assert opened[0].precision == "bf16"
