"""quantize and build-engine --precision int8 through the CLI: the engine description records the quantization, and
bad input (no or empty calibration folder, contradicting precisions) is one line, exit 2, nothing written."""

import json

import pytest

from tests.evaluation.generated_coco import write_images
from tests.helpers import assert_one_line_error, run_cli

ZOO = "deformable_detr_r50"
PROFILE = (
    "--min-shapes",
    "images:1x3x64x64",
    "--opt-shapes",
    "images:1x3x128x128",
    "--max-shapes",
    "images:2x3x256x256",
)


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("calibration") / "images", [(96, 128), (128, 96), (80, 120)])[0].parent


@pytest.mark.slow
@pytest.mark.trt
def test_build_engine_int8_quantizes_and_records_it(tiny_export, calibration, tmp_path):
    engine = tmp_path / "int8.engine"
    result = run_cli(
        "build-engine", tiny_export(ZOO), "--output", engine, "--precision", "int8", "--calibration-images",
        calibration, "--compute-capability", "89", *PROFILE,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "int8" in result.output and "calibrating" in result.output
    description = json.loads((tmp_path / "int8.engine.json").read_text())
    assert description["precision"] == "int8"
    quantization = description["quantization"]
    assert quantization["tool"] == "nvidia-modelopt" and quantization["calibration"]["images"] == 3
    assert set(quantization["kept_high_precision"]["groups"]) == {"attention", "box_head"}
    assert description["model"]["detr_deploy.precision"] == "int8"
    # An int8 file builds as it is; asking it for another precision is refused.
    int8 = tmp_path / "int8.onnx"
    assert run_cli("quantize", tiny_export(ZOO), "--calibration-images", calibration, "--output", int8).exit_code == 0
    result = run_cli(
        "build-engine", int8, "--output", tmp_path / "x.engine", "--precision", "fp16", "--compute-capability", "89"
    )
    assert_one_line_error(result, "computes in int8 already")
    assert not (tmp_path / "x.engine").exists()


def test_bad_int8_requests_are_one_line_errors(tiny_export, calibration, tmp_path):
    export = tiny_export(ZOO)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    output = tmp_path / "out.onnx"
    assert_one_line_error(run_cli("quantize", export, "--calibration-images", empty, "--output", output), "no")
    assert_one_line_error(
        run_cli("quantize", export, "--calibration-images", tmp_path / "absent", "--output", output), "does not exist"
    )
    assert_one_line_error(run_cli("quantize", export, "--output", output), "calibration images")
    assert_one_line_error(
        run_cli("quantize", export, "--precision", "fp16", "--calibration-images", calibration, "--output", output),
        "are for --precision int8",
    )
    assert not output.exists()
    engine = tmp_path / "e.engine"
    result = run_cli("build-engine", export, "--output", engine, "--precision", "int8", "--compute-capability", "89")
    assert_one_line_error(result, "--precision int8 needs --calibration-images")
    result = run_cli(
        "build-engine", export, "--output", engine, "--precision", "fp16", "--calibration-images", calibration,
        "--compute-capability", "89",
    )  # fmt: skip
    assert_one_line_error(result, "--calibration-images is for")
    assert not engine.exists()
