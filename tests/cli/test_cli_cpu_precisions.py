"""Issue 23: bf16 and int8 on the CPU runtimes, judged by accuracy, through the real CLI for every family: the int8
files each runtime's own quantizer makes (quantize --target onnxruntime|openvino) and OpenVINO's bf16 (--precision
bf16) are evaluated against eager PyTorch on a generated dataset whose eager AP is 100, and verify-parity reports
their drift. Figures per family: benchmarks/cpu_precision_ap.py."""

import json

import pytest

from detr_deploy.detector import Detector
from tests.evaluation.generated_coco import ground_truth_from_detections, write_dataset, write_images
from tests.helpers import NO_BF16_UNITS, assert_one_line_error, openvino_computes_bf16, run_cli, tiny_name

pytest.importorskip("openvino", reason="OpenVINO is not installed: pip install openvino")
pytest.importorskip("nncf", reason="NNCF is not installed: pip install nncf==3.4.0")

# One zoo model per family; the first is the quick run's.
FAMILIES = [
    "deformable_detr_r50",
    "detr_r50",
    "dab_detr_r50_3pat",
    "rtdetr_r50vd",
    "dino_4scale_r50",
    "dfine_hgnetv2_s",
    "rfdetr_nano",
    "conditional_detr_r50",
]
SIZES = [(128, 160), (160, 128), (128, 160), (160, 160)]


def families():
    return [pytest.param(name, marks=() if index == 0 else pytest.mark.slow) for index, name in enumerate(FAMILIES)]


@pytest.mark.parametrize("zoo_name", families())
def test_int8_and_bf16_are_evaluated_against_eager(zoo_name, tiny_export, tmp_path):
    export = tiny_export(zoo_name)
    paths = write_images(tmp_path / "images", SIZES)
    eager = Detector.open(tiny_name(zoo_name), max_batch=1)
    ground_truth, threshold = ground_truth_from_detections(eager.detect(paths, score_threshold=0.0), paths)
    annotations = write_dataset(tmp_path, ground_truth)
    quantized = {}
    for target in ("onnxruntime", "openvino"):
        quantized[target] = tmp_path / f"int8-{target}.onnx"
        result = run_cli(
            "quantize", export, "--target", target, "--calibration-images", tmp_path / "images",
            "--output", quantized[target],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert f"INT8 for {target}" in result.output
    report = tmp_path / "report.json"
    result = run_cli(
        "evaluate", "--annotations", annotations, "--images", tmp_path / "images", "--onnx", export,
        "--onnx", quantized["onnxruntime"], "--openvino", quantized["openvino"], "--score-threshold", threshold,
        "--threads", "1", "--report", report,
    )  # fmt: skip
    assert result.exit_code in (0, 1), result.output  # 1: an int8 file lost more than --max-ap-drop
    eager_run, fp32, int8_ort, int8_openvino = json.loads(report.read_text())["backends"]
    assert eager_run["metrics"]["AP"] == pytest.approx(100.0, abs=1e-9)
    assert fp32["metrics"]["AP"] == pytest.approx(100.0, abs=0.1) and fp32["passed"]
    assert [run["precision"] for run in (int8_ort, int8_openvino)] == ["int8", "int8"]
    for run in (int8_ort, int8_openvino):
        assert run["max_ap_drop"] == 1.0 and run["passed"] == (run["delta"]["AP"] >= -1.0)
        assert 0.0 <= run["metrics"]["AP"] <= 100.0 and run["detections"]["eager"] > 0
    bf16_report = tmp_path / "bf16.json"
    result = run_cli(
        "evaluate", "--annotations", annotations, "--images", tmp_path / "images", "--openvino", export,
        "--precision", "bf16", "--score-threshold", threshold, "--threads", "1", "--report", bf16_report,
    )  # fmt: skip
    if openvino_computes_bf16():
        assert result.exit_code in (0, 1), result.output
        _, bf16 = json.loads(bf16_report.read_text())["backends"]
        assert bf16["precision"] == "bf16" and bf16["max_ap_drop"] == 1.0
        assert bf16["detections"]["mean_iou"] > 0.9  # bf16 moves boxes by about 1e-3 (its 8-bit mantissa)
    else:  # OpenVINO would run it as fp32
        assert_one_line_error(result, NO_BF16_UNITS)
        assert not bf16_report.exists()
    parity = run_cli(
        "verify-parity", "--openvino", quantized["openvino"], "--sizes", "160x192", "--batch-sizes", "1,2",
        "--threads", "1",
    )  # fmt: skip
    verdict = {0: "PASSED", 1: "FAILED"}[parity.exit_code]  # int8 at int8 tolerances
    assert any(line.startswith(verdict) for line in parity.output.splitlines()), parity.output


def test_onnxruntime_runs_its_int8_file_fused(tiny_export, tmp_path):
    """A file quantized for ONNX Runtime opens with every graph optimization (its int8 kernels) and the Gather
    formulation of MSDeformAttn, not as a TensorRT-style file run as written."""
    import onnxruntime

    from detr_deploy.runtime.onnxruntime import OnnxRuntimeRunner

    export = tiny_export("deformable_detr_r50")
    write_images(tmp_path / "images", SIZES[:2])
    output = tmp_path / "int8.onnx"
    result = run_cli(
        "quantize", export, "--target", "onnxruntime", "--calibration-images", tmp_path / "images", "--output", output
    )
    assert result.exit_code == 0, result.output
    runner = OnnxRuntimeRunner(output, threads=1)
    assert runner.precision == "int8" and runner.msda_formulation == "gather"
    assert runner.session.get_session_options().graph_optimization_level == (
        onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    )
