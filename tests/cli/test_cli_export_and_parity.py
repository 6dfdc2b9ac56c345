"""The real CLI: export and verify-parity, their success paths and their one-line errors (exit 2)."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import cli
import tests.helpers  # noqa: F401  (registers the tiny_* models the commands below use)
from detr_deploy import contract
from detr_deploy.models import build_model, get_model_spec
from tests.helpers import REPO, assert_one_line_error
from tests.helpers import run_cli as run

TINY_DETR = "tiny_detr_r50"
TINY_DEFORMABLE = "tiny_deformable_detr_r50_two_stage"


@pytest.fixture(scope="module")
def deformable_export(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "deformable.onnx"
    result = run("export", "--model", TINY_DEFORMABLE, "--output", path)
    assert result.exit_code == 0, result.output
    return path, result


def test_export_writes_a_checked_onnx_and_says_so(deformable_export):
    path, result = deformable_export
    assert f"wrote {path}" in result.output and "4 MSDeformAttn nodes" in result.output
    proto = onnx.load(str(path))
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert metadata[contract.META_MODEL] == TINY_DEFORMABLE
    assert metadata[contract.META_WEIGHTS] == "random(seed=0)"
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_verify_parity_passes_and_writes_a_json_report(deformable_export, tmp_path):
    path, _ = deformable_export
    report = tmp_path / "report.json"
    result = run(
        "verify-parity",
        "--onnx",
        path,
        "--sizes",
        "200x264,250x190",
        "--batch-sizes",
        "1,3",
        "--score-threshold",
        "0.3",
        "--report",
        report,
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-2] == "PASSED"
    assert "[1/4] batch 1 @ 200x264: ok" in result.output and "[4/4] batch 3 @ 250x190: ok" in result.output
    data = json.loads(report.read_text())
    assert data["passed"] is True and data["model"] == TINY_DEFORMABLE and data["backend"] == "ONNX Runtime"
    assert [(c["batch"], c["height"], c["width"]) for c in data["cases"]] == [
        (1, 200, 264),
        (3, 200, 264),
        (1, 250, 190),
        (3, 250, 190),
    ]
    assert sum(c["detections"]["matched"] for c in data["cases"]) > 0
    for case in data["cases"]:
        assert {t["name"] for t in case["tensors"]} == {contract.OUTPUT_LOGITS, contract.OUTPUT_BOXES}
        assert all(t["max_abs_error"] < 1e-4 for t in case["tensors"])


def test_verify_parity_fails_with_exit_1_against_other_weights(deformable_export, tmp_path):
    path, _ = deformable_export
    other = build_model(get_model_spec(TINY_DEFORMABLE).config, seed=1)
    checkpoint = tmp_path / "other.pth"
    torch.save({"model": other.state_dict()}, checkpoint)
    report = tmp_path / "report.json"
    result = run(
        "verify-parity",
        "--onnx",
        path,
        "--checkpoint",
        checkpoint,
        "--sizes",
        "200x264",
        "--batch-sizes",
        "1",
        "--report",
        report,
    )
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-2] == "FAILED"
    assert json.loads(report.read_text())["passed"] is False


def test_verify_parity_on_image_files(tmp_path):
    onnx_path = tmp_path / "detr.onnx"
    assert run("export", "--model", TINY_DETR, "--output", onnx_path).exit_code == 0
    rng = np.random.default_rng(0)
    images = []
    for index, (height, width) in enumerate([(120, 200), (300, 150)]):
        images.append(tmp_path / f"image{index}.png")
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(images[-1])
    report = tmp_path / "report.json"
    result = run(
        "verify-parity",
        "--onnx",
        onnx_path,
        "--images",
        images[0],
        "--images",
        images[1],
        "--score-threshold",
        "0.05",
        "--report",
        report,
    )
    assert result.exit_code == 0, result.output
    cases = json.loads(report.read_text())["cases"]
    # Official resize: shorter side 800, longer side at most 1333.
    assert [(c["name"], c["height"], c["width"]) for c in cases] == [
        ("image0.png", 800, 1333),
        ("image1.png", 1332, 666),
    ]


def test_unknown_model_lists_the_names(tmp_path):
    result = run("export", "--model", "detr_r18", "--output", tmp_path / "x.onnx")
    assert_one_line_error(result, "unknown model 'detr_r18'", "detr_r50", "deformable_detr_r50_two_stage")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("problem", ["missing", "unreadable", "other model"])
def test_checkpoint_problems(problem, tmp_path):
    checkpoint = tmp_path / "weights.pth"
    if problem == "unreadable":
        checkpoint.write_bytes(b"\x00garbage")
    elif problem == "other model":
        torch.save({"model": build_model(get_model_spec(TINY_DEFORMABLE).config).state_dict()}, checkpoint)
    output = tmp_path / "model.onnx"
    result = run("export", "--model", TINY_DETR, "--checkpoint", checkpoint, "--output", output)
    expected = {
        "missing": "does not exist",
        "unreadable": "cannot read checkpoint",
        "other model": "--model asks for a DETR, ResNet-14 but weights.pth is a Deformable DETR (box refinement",
    }[problem]
    assert_one_line_error(result, expected)
    assert not output.exists()


def test_output_directory_missing_or_unwritable(tmp_path):
    assert_one_line_error(run("export", "--model", TINY_DETR, "--output", tmp_path / "no" / "x.onnx"), "does not exist")
    # Permission bits do not stop root, so use a file system that refuses new files for everyone.
    assert_one_line_error(run("export", "--model", TINY_DETR, "--output", "/proc/x.onnx"), "not writable")
    assert_one_line_error(run("export", "--model", TINY_DETR, "--output", tmp_path), "is a directory")


def test_failure_while_writing_leaves_no_partial_file(tmp_path, monkeypatch):
    def write_half_then_fail(proto, path):
        with open(path, "wb") as handle:
            handle.write(proto.SerializeToString()[:1000])
        raise DiskFull("No space left on device")

    class DiskFull(Exception):
        pass

    monkeypatch.setattr("exporters.onnx.onnx.save_model", write_half_then_fail)
    output = tmp_path / "model.onnx"
    with pytest.raises(DiskFull):
        CliRunner().invoke(cli.main, ["export", "--model", TINY_DETR, "--output", str(output)], catch_exceptions=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "option, value, expected",
    [
        ("--sizes", "480x", "malformed size '480x'"),
        ("--sizes", "32x32", "each from 64 to 8192"),
        ("--batch-sizes", "0,2", "malformed batch sizes"),
    ],
)
def test_malformed_sizes(option, value, expected, tmp_path):
    onnx_path = tmp_path / "any.onnx"
    onnx_path.write_bytes(b"")
    assert_one_line_error(run("verify-parity", "--onnx", onnx_path, option, value), expected)


def test_corrupt_onnx_is_one_line(tmp_path):
    onnx_path = tmp_path / "corrupt.onnx"
    onnx_path.write_bytes(b"not a protobuf at all")
    assert_one_line_error(run("verify-parity", "--onnx", onnx_path), "ONNX Runtime cannot load")


def test_import_and_help_work_without_onnxruntime_or_tensorrt():
    blocked = ("onnxruntime", "tensorrt", "tensorrt_rtx_bindings")
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "import detr_deploy, detr_deploy.models, detr_deploy.parity, detr_deploy.verify, exporters.onnx\n"
        "import exporters.engine_build, detr_deploy.runtime.tensorrt, detr_deploy.sidecar\n"
        "sys.argv = ['cli.py', '--help']\n"
        "import runpy; runpy.run_path('cli.py', run_name='__main__')\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    for command in ("export", "build-engine", "verify-parity", "list-models"):
        assert command in completed.stdout


def test_build_plugin_cpu_only_and_its_errors(tmp_path):
    result = run("build-plugin", "--build-dir", tmp_path / "build", "--no-cuda")
    assert result.exit_code == 0, result.output
    assert f"CPU reference:   {tmp_path / 'build' / 'libdetr_msda_cpu.so'}" in result.output
    assert "TensorRT plugin: not built" in result.output and "skipped the CUDA kernel" in result.output
    assert "registering at load (Triton, trtexec --plugins): not built" in result.output
    assert_one_line_error(run("build-plugin", "--tensorrt-include", tmp_path), "holds no NvInferRuntime.h")
    assert_one_line_error(run("build-plugin", "--cuda-architectures", "sm80"), "malformed CUDA architectures")


def test_export_from_a_checkpoint_verifies_with_the_same_checkpoint(tmp_path):
    weights = build_model(get_model_spec(TINY_DETR).config, seed=3)
    checkpoint = tmp_path / "release.pth"
    torch.save({"model": weights.state_dict()}, checkpoint)
    onnx_path = tmp_path / "from-checkpoint.onnx"
    result = run("export", "--model", TINY_DETR, "--checkpoint", checkpoint, "--output", onnx_path)
    assert result.exit_code == 0 and "random weights" not in result.output, result.output
    metadata = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert metadata[contract.META_WEIGHTS].startswith("checkpoint release.pth sha256:")
    # Without the checkpoint the weights cannot be rebuilt: say so instead of comparing against other weights.
    assert_one_line_error(run("verify-parity", "--onnx", onnx_path), "pass the same file with --checkpoint")
    result = run(
        "verify-parity",
        "--onnx",
        onnx_path,
        "--checkpoint",
        checkpoint,
        "--sizes",
        "160x224",
        "--batch-sizes",
        "2",
        "--score-threshold",
        "0.05",
    )
    assert result.exit_code == 0, result.output


def test_onnx_without_our_metadata_asks_for_the_model(deformable_export, tmp_path):
    path, _ = deformable_export
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    stripped = tmp_path / "stripped.onnx"
    onnx.save(proto, str(stripped))
    assert_one_line_error(run("verify-parity", "--onnx", stripped), "pass --model NAME")


def test_padding_mask_export_verifies_with_padded_batches(tmp_path):
    onnx_path = tmp_path / "masked.onnx"
    result = run("export", "--model", TINY_DEFORMABLE, "--output", onnx_path, "--padding-mask")
    assert result.exit_code == 0 and "inputs images, padding_mask" in result.output, result.output
    inputs = {i.name: i.type.tensor_type for i in onnx.load(str(onnx_path)).graph.input}
    assert inputs["padding_mask"].elem_type == onnx.TensorProto.UINT8
    assert [d.dim_param for d in inputs["padding_mask"].shape.dim] == ["batch", "height", "width"]
    # In batches of 3 the second and third images are padded (verify.example_padding): eager and ONNX Runtime
    # must agree with the mask honoured.
    report = tmp_path / "report.json"
    result = run(
        "verify-parity",
        "--onnx",
        onnx_path,
        "--sizes",
        "256x320",
        "--batch-sizes",
        "3",
        "--report",
        report,
        "--score-threshold",
        "0.3",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["passed"] is True
