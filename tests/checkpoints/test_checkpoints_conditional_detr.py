"""Conditional DETR checkpoints in every format read into zoo models whose outputs are the peers' own: official
files (Atten4Vis/ConditionalDETR's layout, checked against a key-and-shape fixture of the releases built from that
repository's model definitions), transformers directories (the 4.x names 5.x's save_pretrained writes, 5.x module
names, transformers' ResNet or timm's) against ConditionalDetrForObjectDetection, and mmdetection 3.x files against
mmdetection's ConditionalDETR; batches 1 and 2 at sizes no export traced, within 1e-4. Files of other families
with the same tensors (DAB-DETR, plain DETR) are not taken for Conditional DETR, nor Conditional DETR for DETR."""

import json
from pathlib import Path

import onnx
import pytest
import torch

import tests.helpers  # noqa: F401  (registers the tiny_* models)
from detr_deploy import contract
from detr_deploy.checkpoints import (
    SOURCE_MMDET3,
    SOURCE_OFFICIAL,
    SOURCE_TRANSFORMERS,
    build_checkpoint_model,
    read_checkpoint,
)
from detr_deploy.checkpoints.candidate import Candidate
from detr_deploy.checkpoints.table import family_readers
from detr_deploy.errors import DetrDeployError
from detr_deploy.models import build_model, get_model_spec
from tests.checkpoints.test_checkpoints_huggingface import (
    four_x_timm_config,
    randomize,
    resnet_config,
    saved_config,
    timm_state,
    write_directory,
)
from tests.checkpoints.test_checkpoints_mmdetection import (  # noqa: F401  (mmdet is a fixture)
    build_mmdet,
    mmdet,
    mmdet_outputs,
    save_3x,
    shipped_config,
    shrink,
)
from tests.helpers import official_args
from tests.helpers import run_cli as run

transformers = pytest.importorskip("transformers", reason="transformers builds the reference models of these tests")

pytestmark = pytest.mark.filterwarnings("ignore:torch.meshgrid")

FIXTURE = Path(__file__).with_name("conditional_detr_official_keys.json")
LABELS = ("cat", "dog", "traffic light", "kite", "zebra")
# (batch, height, width): batches 1 and 2, sizes neither multiples of 32 nor square, both orientations.
CASES = ((1, 197, 263), (2, 230, 170))
TOLERANCE = dict(rtol=1e-4, atol=1e-4)
MMDET_CONFIG = "conditional_detr/conditional-detr_r50_8xb2-50e_coco.py"


def images(batch: int, height: int, width: int) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(batch * 1000 + height))


def sharpened(model: torch.nn.Module, factor: float) -> torch.nn.Module:
    """``model`` with every weight matrix and kernel scaled by ``factor``: as initialized, tiny random Conditional
    DETRs give outputs that differ by ~1e-3 from one image to another, too close to the tolerance for a comparison
    to show a wrong image path."""
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.mul_(factor)
    return model


def assert_matches(model, reference) -> None:
    """``model`` (ours) gives ``reference(pixels)`` -> (logits, boxes) at every case."""
    for batch, height, width in CASES:
        pixels = images(batch, height, width)
        with torch.no_grad():
            logits, boxes = reference(pixels)
        with torch.no_grad():
            ours = model(pixels)
        torch.testing.assert_close(ours[contract.OUTPUT_LOGITS], logits, **TOLERANCE)
        torch.testing.assert_close(ours[contract.OUTPUT_BOXES], boxes, **TOLERANCE)
        if batch > 1:
            # The outputs depend on the image, far above the tolerance: the comparison checks the image's path.
            assert float((logits[0] - logits[1]).abs().max()) > 1e-2, float((logits[0] - logits[1]).abs().max())
            assert float((boxes[0] - boxes[1]).abs().max()) > 1e-2, float((boxes[0] - boxes[1]).abs().max())


# --- official ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def official_shapes() -> dict:
    return json.loads(FIXTURE.read_text())["models"]


@pytest.mark.parametrize(
    "zoo_name, release",
    [
        ("conditional_detr_r50", "conditional_detr_r50"),
        ("conditional_detr_r50_dc5", "conditional_detr_r50"),
        ("conditional_detr_r101", "conditional_detr_r101"),
        ("conditional_detr_r101_dc5", "conditional_detr_r101"),
    ],
)
def test_zoo_model_has_exactly_the_official_keys_and_shapes(zoo_name, release, official_shapes):
    with torch.device("meta"):
        model = build_model(get_model_spec(zoo_name).config)
    assert {key: list(value.shape) for key, value in model.state_dict().items()} == official_shapes[release]


@pytest.mark.slow
@pytest.mark.parametrize("zoo_name", ["conditional_detr_r50_dc5", "conditional_detr_r101"])
def test_release_file_with_the_official_keys_reads_as_its_zoo_model(zoo_name, official_shapes, tmp_path):
    # The releases keep their training args: they say DC5 or not, and the heads.
    config = get_model_spec(zoo_name).config
    generator = torch.Generator().manual_seed(0)
    release = "conditional_detr_r101" if "r101" in zoo_name else "conditional_detr_r50"
    state = {key: torch.randn(shape, generator=generator) for key, shape in official_shapes[release].items()}
    torch.save({"model": state, "args": official_args(config)}, tmp_path / "release.pth")
    checkpoint = read_checkpoint(tmp_path / "release.pth")
    assert checkpoint.config == config and checkpoint.model_name == zoo_name and checkpoint.source == SOURCE_OFFICIAL
    loaded = build_checkpoint_model(checkpoint).state_dict()
    assert all(torch.equal(loaded[key], state[key]) for key in state)


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory):
    """An official main.py checkpoint of a tiny Conditional DETR on 5 classes, with and without its args."""
    config = get_model_spec("tiny_conditional_detr_r50").config.replace(num_classes=5, num_queries=20)
    folder = tmp_path_factory.mktemp("official")
    # As initialized, for the CLI's export and parity run: scaled weights compound through every layer, and float32
    # rounding then moved a logit by 6.5e-3 in one run (ONNX Runtime against eager, batch 2 at 230x170).
    plain = build_model(config, seed=3)
    torch.save({"model": plain.state_dict(), "args": official_args(config), "epoch": 49}, folder / "as_initialized.pth")
    model = sharpened(plain, 3.0)
    torch.save({"model": model.state_dict(), "args": official_args(config), "epoch": 49}, folder / "checkpoint.pth")
    torch.save({"model": model.state_dict()}, folder / "bare.pth")
    return config, model, folder


def test_official_file_reads_its_architecture_from_args_and_tensors(fine_tuned):
    config, model, folder = fine_tuned
    checkpoint = read_checkpoint(folder / "checkpoint.pth")
    assert checkpoint.config == config and checkpoint.source == SOURCE_OFFICIAL
    assert "format: official code (Atten4Vis/ConditionalDETR)" in checkpoint.read_from
    assert_matches(build_checkpoint_model(checkpoint), lambda pixels: tuple(model(pixels).values()))


def inspected(path) -> dict:
    result = run("inspect", path, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_official_file_through_cli_inspect(fine_tuned):
    report = inspected(fine_tuned[2] / "checkpoint.pth")
    assert report["format"] == "official" and report["family"] == "conditional_detr"
    assert (report["num_classes"], report["num_queries"]) == (5, 20)


def test_official_file_without_args_needs_the_model_for_dc5(fine_tuned):
    config, _, folder = fine_tuned
    with pytest.raises(DetrDeployError, match="say which with --model") as error:
        read_checkpoint(folder / "bare.pth")
    assert "\n" not in str(error.value)
    dc5 = config.replace(backbone=config.backbone.__class__(**{**vars(config.backbone), "dilate_last_stage": True}))
    assert read_checkpoint(folder / "bare.pth", dc5).config.backbone.dilate_last_stage


@pytest.mark.slow
def test_official_file_through_the_cli(fine_tuned, tmp_path):
    _, _, folder = fine_tuned
    checkpoint = folder / "as_initialized.pth"
    onnx_path = tmp_path / "conditional.onnx"
    result = run("export", "--checkpoint", checkpoint, "--output", onnx_path)
    assert result.exit_code == 0, result.output
    metadata = {p.key: p.value for p in onnx.load(onnx_path).metadata_props}
    assert (
        metadata[contract.META_FAMILY] == "conditional_detr" and metadata[contract.META_CHECKPOINT_FORMAT] == "official"
    )
    parity = tmp_path / "parity.json"
    result = run(
        "verify-parity", "--onnx", onnx_path, "--checkpoint", checkpoint,
        "--sizes", "197x263,230x170", "--batch-sizes", "1,2", "--report", parity,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(parity.read_text())["passed"]


# --- transformers ------------------------------------------------------------------------------------------------


def hf_model(depths=(1, 1, 1, 1), seed: int = 0):
    """A tiny transformers ConditionalDetrForObjectDetection with random weights, in eval mode."""
    config = transformers.ConditionalDetrConfig(
        backbone_config=resnet_config(["stage4"], depths),
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        num_queries=12,
        id2label=dict(enumerate(LABELS)),
        # transformers' 0.02 leaves the outputs almost independent of the image (1e-4 apart for two images).
        init_std=0.3,
    )
    torch.manual_seed(seed)
    return randomize(transformers.ConditionalDetrForObjectDetection(config), seed)


def hf_reference(hf):
    def reference(pixels):
        with torch.no_grad():
            outputs = hf(pixel_values=pixels)
        return outputs.logits, outputs.pred_boxes

    return reference


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """saved(depths) -> (transformers model, the directory its save_pretrained wrote)."""
    cache = {}

    def get(depths=(1, 1, 1, 1)):
        if depths not in cache:
            model = hf_model(depths)
            directory = tmp_path_factory.mktemp("conditional-save-pretrained")
            model.save_pretrained(directory)
            cache[depths] = model, directory
        return cache[depths]

    return get


def test_save_pretrained_directory_gives_transformers_outputs(saved):
    hf, directory = saved()
    checkpoint = read_checkpoint(directory)
    assert checkpoint.source == SOURCE_TRANSFORMERS and checkpoint.class_names == LABELS
    assert checkpoint.config.family == "conditional_detr" and checkpoint.config.num_classes == len(LABELS)
    assert "format: transformers 5.x directory (ConditionalDetrForObjectDetection)" in checkpoint.read_from
    # 5.x's save_pretrained reverses its conversion mapping: the file has the 4.x (official decoder) names.
    assert "keys: transformers 4.x names" in checkpoint.read_from
    assert "backbone: HF ResNet layout" in checkpoint.read_from
    assert_matches(build_checkpoint_model(checkpoint), hf_reference(hf))
    report = inspected(directory)
    assert report["format"] == "transformers" and report["family"] == "conditional_detr"


def test_5x_module_names_read(saved, tmp_path):
    hf, directory = saved()
    checkpoint = read_checkpoint(write_directory(tmp_path, saved_config(directory), hf.state_dict()))
    assert "keys: transformers 5.x names" in checkpoint.read_from
    assert_matches(build_checkpoint_model(checkpoint), hf_reference(hf))


def test_padding_mask_as_transformers_applies_it(saved):
    # A batch of a 197x263 image and a 150x200 one padded to it: the padded pixels are masked out of the encoder,
    # the cross-attention and the position encoding's normalization.
    hf, directory = saved()
    model = build_checkpoint_model(read_checkpoint(directory))
    pixels = images(2, 197, 263)
    pixel_mask = torch.ones(2, 197, 263, dtype=torch.long)
    pixel_mask[1, 150:, :] = pixel_mask[1, :, 200:] = 0
    pixels[1] *= pixel_mask[1]
    with torch.no_grad():
        expected = hf(pixel_values=pixels, pixel_mask=pixel_mask)
        ours = model(pixels, pixel_mask == 0)
        unmasked = model(pixels)
    torch.testing.assert_close(ours[contract.OUTPUT_LOGITS], expected.logits, **TOLERANCE)
    torch.testing.assert_close(ours[contract.OUTPUT_BOXES], expected.pred_boxes, **TOLERANCE)
    assert float((unmasked[contract.OUTPUT_LOGITS][1] - expected.logits[1]).abs().max()) > 1e-2


@pytest.mark.slow
def test_timm_backbone_with_4x_config(saved, tmp_path):
    """The hub's layout (microsoft/conditional-detr-resnet-50): a timm ResNet-50 with torchvision's names and a 4.x
    config.json."""
    hf, directory = saved((3, 4, 6, 3))
    with_timm = timm_state(transformers_file_state(directory))
    checkpoint = read_checkpoint(write_directory(tmp_path, four_x_timm_config(saved_config(directory), [4]), with_timm))
    assert "backbone: timm resnet50 layout (torchvision names)" in checkpoint.read_from
    assert checkpoint.model_name == "conditional_detr_r50"
    assert_matches(build_checkpoint_model(checkpoint), hf_reference(hf))


def transformers_file_state(directory) -> dict:
    from safetensors.torch import load_file

    return load_file(directory / "model.safetensors")


@pytest.mark.slow
def test_transformers_directory_through_the_cli(saved, tmp_path):
    _, directory = saved()
    onnx_path = tmp_path / "hf.onnx"
    result = run("export", "--checkpoint", directory, "--output", onnx_path)
    assert result.exit_code == 0, result.output
    result = run(
        "verify-parity", "--onnx", onnx_path, "--checkpoint", directory, "--sizes", "197x263", "--batch-sizes", "1,2"
    )
    assert result.exit_code == 0, result.output


def test_transformers_refusals(saved, tmp_path):
    hf, directory = saved()
    config = dict(saved_config(directory), architectures=["ConditionalDetrModel"])
    with pytest.raises(DetrDeployError, match="save a ConditionalDetrForObjectDetection"):
        read_checkpoint(write_directory(tmp_path / "bare", config, hf.state_dict()))
    config = dict(saved_config(directory), activation_function="gelu")
    with pytest.raises(DetrDeployError, match="activation_function 'gelu'"):
        read_checkpoint(write_directory(tmp_path / "gelu", config, hf.state_dict()))


# --- mmdetection -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mmdet_conditional(mmdet):  # noqa: F811
    """(mmdetection ConditionalDETR, its shrunk config), random weights; 256 wide, the only width mmdetection's
    decoder runs (its reference-point sine embedding has a fixed 128 features per coordinate, as officially)."""
    cfg = shrink(
        shipped_config(mmdet, MMDET_CONFIG), embed=256, heads=8, ffn=64, queries=12, enc_layers=1, dec_layers=2
    )
    return sharpened(build_mmdet(mmdet, cfg, seed=5), 1.5), cfg


def test_mmdetection_file_gives_mmdetections_outputs(mmdet_conditional, tmp_path):
    model, cfg = mmdet_conditional
    checkpoint = read_checkpoint(save_3x(tmp_path / "conditional.pth", model, cfg))
    assert checkpoint.source == SOURCE_MMDET3 and checkpoint.config.family == "conditional_detr"
    assert checkpoint.class_names == ("cat", "dog", "traffic cone", "kite", "zebra")
    assert "format: mmdetection 3.x (ConditionalDETR)" in checkpoint.read_from
    assert_matches(build_checkpoint_model(checkpoint), lambda pixels: mmdet_outputs(model, pixels))
    report = inspected(tmp_path / "conditional.pth")
    assert report["format"].startswith("mmdetection") and report["family"] == "conditional_detr"


def test_mmdetection_file_without_config_is_not_taken_for_detr(mmdet_conditional, tmp_path):
    model, _ = mmdet_conditional
    checkpoint = read_checkpoint(save_3x(tmp_path / "bare.pth", model))
    assert checkpoint.config.family == "conditional_detr"
    assert "heads: 8 (mmdetection's default; not in the tensors)" in checkpoint.read_from


@pytest.mark.slow
def test_mmdetection_file_through_the_cli_matches_mmdetection(mmdet_conditional, tmp_path):
    from detr_deploy.runtime.onnxruntime import OnnxRuntimeRunner

    model, cfg = mmdet_conditional
    path = save_3x(tmp_path / "conditional.pth", model, cfg)
    onnx_path = tmp_path / "mmdet.onnx"
    result = run("export", "--checkpoint", path, "--output", onnx_path)
    assert result.exit_code == 0, result.output
    runner = OnnxRuntimeRunner(onnx_path)
    for batch, height, width in CASES:
        pixels = images(batch, height, width)
        logits, boxes = mmdet_outputs(model, pixels)
        outputs = runner.run(pixels.numpy())
        torch.testing.assert_close(torch.from_numpy(outputs["pred_logits"]), logits, **TOLERANCE)
        torch.testing.assert_close(torch.from_numpy(outputs["pred_boxes"]), boxes, **TOLERANCE)


# --- recognition -------------------------------------------------------------------------------------------------


def _chosen(state) -> list[str]:
    candidate = Candidate(Path("model.pth"), content={"model": state}, state=state)
    return [reader.name for reader in family_readers() if reader.recognize(candidate).yes]


def test_dab_detr_shaped_decoder_is_not_taken_for_conditional_detr():
    # DAB-DETR's decoder has the same tensor names; its reference-point head reads a 2 * d_model sine embedding of
    # 4-D anchors, and its queries are those anchors.
    state = build_model(get_model_spec("tiny_conditional_detr_r50").config).state_dict()
    assert _chosen(state) == ["official Conditional DETR"]
    dab_head = dict(state, **{"transformer.decoder.ref_point_head.layers.0.weight": torch.zeros(32, 64)})
    assert _chosen(dab_head) == []
    dab_queries = dict(state, **{"query_embed.weight": torch.zeros(12, 4)})
    assert _chosen(dab_queries) == []
