"""The real CLI with RT-DETR and DINO: export, verify-parity and predict unchanged, RT-DETR's size rule (multiples
of 32) and its lack of a padding mask said in one line, DINO's padded batches through parity."""

import json

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

import tests.helpers  # noqa: F401  (registers the tiny_* models the commands below use)
from detr_deploy import contract
from detr_deploy.detector import Detector
from detr_deploy.models import build_model, get_model_spec
from detr_deploy.preprocessing import InputRecipe
from tests.helpers import assert_one_line_error
from tests.helpers import run_cli as run

TINY_RTDETR = "tiny_rtdetrv2_r50vd"
TINY_DINO = "tiny_dino_4scale_r50"


@pytest.fixture(scope="module")
def rtdetr_export(tmp_path_factory):
    path = tmp_path_factory.mktemp("rtdetr") / "rtdetr.onnx"
    result = run("export", "--model", TINY_RTDETR, "--output", path)
    assert result.exit_code == 0, result.output
    return path, result


def test_rtdetr_export_records_its_input_rules(rtdetr_export):
    path, result = rtdetr_export
    assert "2 MSDeformAttn nodes; 2 plugin" in result.output
    metadata = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert metadata[contract.META_SIZE_DIVISOR] == "32"
    assert metadata[contract.META_RESIZE] == "fixed=640x640"
    assert metadata[contract.META_MEAN] == "0.0,0.0,0.0" and metadata[contract.META_STD] == "1.0,1.0,1.0"
    assert json.loads(metadata[contract.META_MSDA_PATHS]) == {
        "decoder.decoder.layers.0.cross_attn": "plugin",
        "decoder.decoder.layers.1.cross_attn": "plugin",
    }


@pytest.mark.slow
def test_rtdetr_verify_parity_passes_at_its_default_sizes(rtdetr_export):
    path, _ = rtdetr_export
    result = run("verify-parity", "--onnx", path, "--batch-sizes", "1,2", "--score-threshold", "0.3")
    assert result.exit_code == 0, result.output
    # The default sizes, rounded to multiples of 32: 427x701 becomes 416x704.
    assert "batch 2 @ 416x704" in result.output
    assert "PASSED" in result.output.strip().splitlines()[-2:], result.output
    assert "0 missed, 0 extra" in result.output


def test_rtdetr_sides_that_are_not_multiples_of_32_are_one_line(rtdetr_export):
    path, _ = rtdetr_export
    result = run("verify-parity", "--onnx", path, "--sizes", "427x701")
    assert_one_line_error(result, "multiples of 32", "427x701")


def test_rtdetr_has_no_padding_mask(tmp_path):
    result = run("export", "--model", TINY_RTDETR, "--padding-mask", "--output", tmp_path / "r.onnx")
    assert_one_line_error(result, "no padding mask", "export without --padding-mask")
    assert not list(tmp_path.iterdir())


def test_rtdetr_predict_feeds_640x640_rgb_in_0_to_1(rtdetr_export, tmp_path):
    path, _ = rtdetr_export
    image = tmp_path / "street.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 500, 3), dtype=np.uint8)).save(image)
    detector = Detector.open(path)
    assert detector.recipe.fixed_size == (640, 640)
    _, _, network_input = detector._prepare(str(image))
    assert network_input.shape == (3, 640, 640) and 0 <= network_input.min() and network_input.max() <= 1
    (tmp_path / "out").mkdir()
    result = run("predict", path, image, "--output", tmp_path / "out", "--score-threshold", "0")
    assert result.exit_code == 0, result.output
    [image_result] = json.loads((tmp_path / "out" / "detections.json").read_text())["images"]
    detections = image_result["detections"]
    # The official RT-DETR post-processing: the top 300 (query, class) pairs; the tiny model has 10 x 5 of them.
    assert len(detections) == 10 * 5
    # Boxes in pixels of the original 500x300 image (centers inside it; extents are not clipped, as officially).
    assert all(
        0 <= (d["box"][0] + d["box"][2]) / 2 <= 500 and 0 <= (d["box"][1] + d["box"][3]) / 2 <= 300 for d in detections
    )


def test_rtdetr_aspect_keeping_resize_rounds_to_multiples_of_32():
    recipe = InputRecipe.for_config(get_model_spec(TINY_RTDETR).config, shorter_side=800, max_size=1333)
    assert recipe.network_size("x", 480, 640) == (800, 1056)  # 800x1066 rounded
    assert InputRecipe.for_config(get_model_spec(TINY_RTDETR).config).network_size("x", 480, 640) == (640, 640)


def test_dino_padded_batches_pass_parity(tmp_path):
    path = tmp_path / "dino.onnx"
    result = run("export", "--model", TINY_DINO, "--padding-mask", "--output", path)
    assert result.exit_code == 0, result.output
    parity = run(
        "verify-parity", "--onnx", path, "--sizes", "200x264,250x190", "--batch-sizes", "2", "--score-threshold", "0.2"
    )
    assert parity.exit_code == 0, parity.output
    assert "PASSED" in parity.output.strip().splitlines()[-2:], parity.output


@pytest.mark.parametrize("zoo_name, small, enough", [("dino_4scale_r50", 160, 201), ("rtdetr_r50vd", 96, 128)])
def test_query_selection_needs_as_many_tokens_as_queries(zoo_name, small, enough):
    """DINO selects 900 queries, RT-DETR 300, from the encoder's tokens: smaller inputs are refused in one line."""
    from torch import nn

    from detr_deploy.errors import DetrDeployError
    from detr_deploy.model_source import input_metadata
    from detr_deploy.models.registry import config_to_dict
    from detr_deploy.runtime.eager import EagerRunner

    config = get_model_spec(zoo_name).config
    # What the export records: the runner checks from these keys alone, without model code.
    metadata = {contract.META_MODEL: zoo_name, **input_metadata(config)}
    runner = EagerRunner(nn.Identity(), config.output_names, metadata)
    with pytest.raises(DetrDeployError, match=f"selects {config.num_queries} queries") as error:
        runner.check_inputs((1, 3, small, small))
    assert f"at least about {enough}x{enough}" in str(error.value)
    runner.check_inputs((1, 3, enough, enough))
    # An export older than the selection keys (its config recorded, the keys not) still opens, unchecked.
    older = {contract.META_MODEL: zoo_name, contract.META_CONFIG: json.dumps(config_to_dict(config))}
    EagerRunner(nn.Identity(), config.output_names, older).check_inputs((1, 3, small, small))


@pytest.mark.slow
def test_official_rtdetr_checkpoint_through_inspect_export_and_parity(tmp_path):
    """A file as lyuwenyu/RT-DETR's training writes it (EMA and model weights, the denoising embedding)."""
    config = get_model_spec(TINY_RTDETR).config
    state = build_model(config, seed=3).state_dict()
    parameters = dict(build_model(config).named_parameters())
    ema = {key: value + 0.01 if key in parameters else value for key, value in state.items()}
    training_only = {"decoder.denoising_class_embed.weight": torch.zeros(config.num_classes + 1, config.hidden_dim)}
    checkpoint = tmp_path / "rtdetrv2_last.pth"
    torch.save(
        {"ema": {"module": {**ema, **training_only}, "updates": 7}, "model": {**state, **training_only}}, checkpoint
    )

    inspected = run("inspect", checkpoint, "--model", TINY_RTDETR, "--json")
    assert inspected.exit_code == 0, inspected.output
    report = json.loads(inspected.output)
    assert report["architecture"].startswith("rtdetrv2_r") and report["format"] == "official"
    assert any("ema" in line for line in report["read_from"]), report["read_from"]

    exported = tmp_path / "custom.onnx"
    result = run("export", "--checkpoint", checkpoint, "--model", TINY_RTDETR, "--output", exported)
    assert result.exit_code == 0, result.output
    parity = run(
        "verify-parity",
        "--onnx",
        exported,
        "--checkpoint",
        checkpoint,
        "--model",
        TINY_RTDETR,
        "--sizes",
        "256x320",
        "--batch-sizes",
        "2",
        "--score-threshold",
        "0.3",
    )
    assert parity.exit_code == 0, parity.output
    # The EMA weights were exported, not the raw model's: eager from the raw weights differs.
    session_outputs = (
        __import__("onnxruntime")
        .InferenceSession(str(exported))
        .run(None, {"images": np.zeros((1, 3, 256, 320), np.float32)})
    )
    model = build_model(config)
    model.load_state_dict(ema)
    with torch.no_grad():
        expected = model(torch.zeros(1, 3, 256, 320))
    np.testing.assert_allclose(session_outputs[1], expected[contract.OUTPUT_BOXES].numpy(), atol=1e-5)
