"""The real CLI with users' own checkpoints: export without --model, inspect, verify-parity/predict/benchmark with
the same file, and one-line errors (exit 2, nothing written) for files that cannot be used."""

import dataclasses
import json

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

import tests.helpers  # noqa: F401  (registers the tiny_* models)
from detr_deploy import contract
from detr_deploy.models import build_model, get_model_spec
from tests.helpers import assert_one_line_error, official_args
from tests.helpers import run_cli as run


@pytest.fixture(scope="module")
def fine_tuned_detr(tmp_path_factory):
    """An official-code training checkpoint of DETR on a custom 20-class dataset with 50 queries and FFN 1024
    (the issue's example), with a class head confident in label 3, and its export made without --model."""
    folder = tmp_path_factory.mktemp("fine_tuned")
    config = dataclasses.replace(
        get_model_spec("tiny_detr_r50").config, num_classes=20, num_queries=50, dim_feedforward=1024
    )
    model = build_model(config, seed=4)
    with torch.no_grad():
        model.class_embed.bias[3] += 6.0
    checkpoint = folder / "checkpoint0049.pth"
    torch.save({"model": model.state_dict(), "args": official_args(config), "epoch": 49}, checkpoint)
    onnx_path = folder / "custom.onnx"
    result = run("export", "--checkpoint", checkpoint, "--output", onnx_path)
    assert result.exit_code == 0, result.output
    return config, checkpoint, onnx_path


def test_export_without_model_records_the_files_architecture(fine_tuned_detr):
    config, _, onnx_path = fine_tuned_detr
    metadata = {p.key: p.value for p in onnx.load(onnx_path).metadata_props}
    recorded = json.loads(metadata[contract.META_CONFIG])
    assert (recorded["num_classes"], recorded["num_queries"], recorded["dim_feedforward"]) == (20, 50, 1024)
    assert metadata[contract.META_NUM_CLASSES] == "20" and metadata[contract.META_CHECKPOINT_FORMAT] == "official"
    assert metadata[contract.META_WEIGHTS].startswith("checkpoint checkpoint0049.pth sha256:")
    assert json.loads(metadata[contract.META_CLASS_NAMES]) == [f"class_{label}" for label in range(20)]


def test_verify_parity_with_the_same_checkpoint_passes_at_untraced_sizes(fine_tuned_detr, tmp_path):
    _, checkpoint, onnx_path = fine_tuned_detr
    report = tmp_path / "parity.json"
    result = run(
        "verify-parity", "--onnx", onnx_path, "--checkpoint", checkpoint,
        "--sizes", "197x263,230x170", "--batch-sizes", "1,3", "--report", report,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["passed"] and len(data["cases"]) == 4
    assert sum(case["detections"]["matched"] for case in data["cases"]) > 0


def test_verify_parity_refuses_another_checkpoint_than_the_exports(fine_tuned_detr, tmp_path):
    config, _, onnx_path = fine_tuned_detr
    other = tmp_path / "other.pth"
    torch.save({"model": build_model(config, seed=9).state_dict(), "args": official_args(config)}, other)
    assert_one_line_error(
        run("verify-parity", "--onnx", onnx_path, "--checkpoint", other),
        "the export was made from other weights",
        "pass the checkpoint the export was made from",
    )


def test_verify_parity_refuses_a_model_that_contradicts_the_file(fine_tuned_detr):
    _, checkpoint, onnx_path = fine_tuned_detr
    assert_one_line_error(
        run("verify-parity", "--onnx", onnx_path, "--checkpoint", checkpoint, "--model", "tiny_deformable_detr_r50"),
        "--model tiny_deformable_detr_r50 contradicts the model the file records",
    )


def test_predict_takes_the_checkpoint_itself_as_model(fine_tuned_detr, tmp_path):
    _, checkpoint, _ = fine_tuned_detr
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "out").mkdir()
    result = run("predict", checkpoint, tmp_path / "a.png", "--output", tmp_path / "out", "--score-threshold", "0.3")
    assert result.exit_code == 0, result.output
    detections = json.loads((tmp_path / "out" / "detections.json").read_text())
    labels = {d["label"] for image in detections["images"] for d in image["detections"]}
    assert labels == {3}


def test_inspect_says_what_the_file_is_and_how_to_export_it(fine_tuned_detr):
    _, checkpoint, _ = fine_tuned_detr
    table = run("inspect", checkpoint)
    assert table.exit_code == 0, table.output
    assert "classes" in table.output and "20 (softmax" in table.output and "50" in table.output
    assert f"python cli.py export --checkpoint {checkpoint} --output checkpoint0049.onnx" in table.output
    report = json.loads(run("inspect", checkpoint, "--json").output)
    assert report["format"] == "official" and report["family"] == "detr" and not report["panoptic"]
    assert (report["num_classes"], report["num_queries"], report["dim_feedforward"]) == (20, 50, 1024)
    assert (report["encoder_layers"], report["decoder_layers"], report["heads"]) == (1, 2, 4)


@pytest.mark.slow
def test_export_of_a_detr_without_args_asks_for_model_and_works_with_it(tmp_path):
    config = dataclasses.replace(get_model_spec("tiny_detr_r50").config, num_classes=4)
    checkpoint = tmp_path / "bare.pth"
    torch.save(build_model(config).state_dict(), checkpoint)
    output = tmp_path / "bare.onnx"
    assert_one_line_error(run("export", "--checkpoint", checkpoint, "--output", output), "say which with --model")
    assert not output.exists()
    assert run("export", "--checkpoint", checkpoint, "--model", "tiny_detr_r50", "--output", output).exit_code == 0
    metadata = {p.key: p.value for p in onnx.load(output).metadata_props}
    assert metadata[contract.META_MODEL] == "tiny_detr_r50" and metadata[contract.META_NUM_CLASSES] == "4"


@pytest.mark.parametrize("problem", ["conflicting model", "other family", "truncated", "no model nor checkpoint"])
def test_unusable_checkpoints_fail_with_one_line_and_leave_nothing(problem, tmp_path):
    config = get_model_spec("tiny_deformable_detr_r50_refine").config
    checkpoint = tmp_path / "weights.pth"
    state = build_model(config).state_dict()
    args = ["export", "--checkpoint", checkpoint, "--output", tmp_path / "out.onnx"]
    expected = {
        "conflicting model": "drop --model (the file tells what it is)",
        "other family": "looks like Grounding DINO",
        "truncated": "2 missing tensors",
        "no model nor checkpoint": "give --checkpoint FILE_OR_DIR (your model) or --model NAME",
    }[problem]
    if problem == "conflicting model":
        args += ["--model", "tiny_detr_r50"]
    elif problem == "other family":
        state["transformer.language_model.embeddings.word_embeddings.weight"] = torch.zeros(32, 32)
    elif problem == "truncated":
        del state["transformer.decoder.layers.1.norm3.weight"], state["transformer.reference_points.bias"]
    elif problem == "no model nor checkpoint":
        args = ["export", "--output", tmp_path / "out.onnx"]
    torch.save({"model": state, "args": official_args(config)}, checkpoint)
    assert_one_line_error(run(*args), expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.pth"]
