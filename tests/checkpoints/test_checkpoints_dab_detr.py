"""DAB-DETR checkpoints: official IDEA-Research/DAB-DETR files (the releases' exact keys, fine-tuned files with and
without their training args), transformers' DabDetrForObjectDetection directories (transformers' ResNet and timm's
layout) and mmdetection 3.x DABDETR files read into zoo models whose outputs match the peers' own, eagerly at untraced
sizes with batches 1 and 2 and through the real CLI (inspect, export, verify-parity); what the zoo does not build is
refused in one line.

Peers build their own tiny random-weight models here (nothing is downloaded). The release keys are
dab_detr_official_keys.json, written from the official model definition (models/DAB_DETR, main.py defaults).
"""

import argparse
import copy
import dataclasses
import importlib
import importlib.util
import json
import os
import sys
import types
from pathlib import Path

import pytest
import torch

import tests.helpers  # noqa: F401  (registers the tiny_* models)
from detr_deploy.checkpoints import (
    SOURCE_MMDET3,
    SOURCE_OFFICIAL,
    SOURCE_TRANSFORMERS,
    build_checkpoint_model,
    read_checkpoint,
)
from detr_deploy.errors import DetrDeployError
from detr_deploy.models import build_model, get_model_spec
from tests.checkpoints import test_checkpoints_mmdetection as mmdet_tests
from tests.checkpoints.test_checkpoints_mmdetection import build_mmdet, mmdet_outputs, save_3x, shipped_config, shrink
from tests.helpers import run_cli
from tests.marks import slow_after

# mmdetection imported on the CPU with a stand-in for its compiled ops (skips where it is not installed).
mmdet = mmdet_tests.mmdet
pytestmark = pytest.mark.filterwarnings("ignore:torch.meshgrid")

RELEASES = json.loads((Path(__file__).parent / "dab_detr_official_keys.json").read_text())["models"]
LABELS = ("cat", "dog", "traffic light", "kite", "zebra")
# (batch, height, width): sizes no export traced, not multiples of 32, both orientations; batches 1 and 2.
CASES = ((1, 197, 263), (2, 230, 170))
TOLERANCE = dict(rtol=1e-4, atol=1e-4)


def images(batch: int, height: int, width: int) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(batch * 1000 + height))


def assert_matches(model, reference, cases=CASES) -> None:
    """``model`` (ours) gives ``reference(images) -> (logits, boxes)`` within 1e-4 of the outputs' scale."""
    for batch, height, width in cases:
        pixels = images(batch, height, width)
        with torch.no_grad():
            ours = model(pixels)
            logits, boxes = reference(pixels)
        for name, expected in (("pred_logits", logits), ("pred_boxes", boxes)):
            scale = float(expected.abs().max())
            torch.testing.assert_close(
                ours[name], expected, rtol=1e-4, atol=1e-4 * scale, msg=f"{name} at {batch}x{height}x{width}"
            )


def official_dab_args(config, **changes) -> argparse.Namespace:
    """The args IDEA-Research/DAB-DETR's main.py pickles into its checkpoints, for a zoo config."""
    resnets = {(3, 4, 6, 3): "resnet50", (3, 4, 23, 3): "resnet101"}
    values = dict(
        modelname="dab_detr",
        backbone=resnets.get(config.backbone.blocks_per_stage),  # tiny test backbones have no torchvision name
        dilation=config.backbone.dilate_last_stage,
        position_embedding="sine",
        pe_temperatureH=20,
        pe_temperatureW=20,
        enc_layers=config.num_encoder_layers,
        dec_layers=config.num_decoder_layers,
        dim_feedforward=config.dim_feedforward,
        hidden_dim=config.hidden_dim,
        nheads=config.num_heads,
        num_queries=config.num_anchors,
        num_patterns=config.num_patterns,
        transformer_activation="prelu",
        pre_norm=False,
        num_select=300,
        random_refpoints_xy=False,
    )
    return argparse.Namespace(**{**values, **changes})


def nudged(model, seed: int = 1):
    """``model`` with every tensor moved off its initial value (zero box-head layers, unit PReLU slopes...)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            noise = torch.randn(tensor.shape, generator=generator)
            tensor.copy_(0.5 + noise.abs() if name.endswith("running_var") else tensor + 0.1 * noise)
    return model.eval()


# --- official -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("zoo_name", list(RELEASES))
def test_zoo_model_has_exactly_the_official_keys_and_shapes(zoo_name):
    with torch.device("meta"):
        model = build_model(get_model_spec(zoo_name).config)
    assert {key: list(value.shape) for key, value in model.state_dict().items()} == RELEASES[zoo_name]


@pytest.mark.parametrize("zoo_name", slow_after(list(RELEASES)))
def test_release_file_with_exactly_the_official_keys_reads_as_its_zoo_model(zoo_name, tmp_path):
    config = get_model_spec(zoo_name).config
    generator = torch.Generator().manual_seed(0)
    state = {key: torch.randn(shape, generator=generator) for key, shape in RELEASES[zoo_name].items()}
    # The official model shares its box head with the decoder (iter_update): one tensor under both names.
    for key in [key for key in state if key.startswith("bbox_embed.")]:
        state[f"transformer.decoder.{key}"] = state[key]
    path = tmp_path / f"{zoo_name}.pth"
    torch.save({"model": state, "args": official_dab_args(config), "epoch": 49}, path)
    checkpoint = read_checkpoint(path)
    assert checkpoint.config == config and checkpoint.model_name == zoo_name
    assert checkpoint.source == SOURCE_OFFICIAL
    loaded = build_checkpoint_model(checkpoint).state_dict()
    assert set(loaded) == set(state) and all(torch.equal(loaded[key], state[key]) for key in state)


def fine_tuned(base: str = "tiny_dab_detr_r50_3pat", seed: int = 2, **changes):
    config = dataclasses.replace(get_model_spec(base).config, **changes)
    return config, nudged(build_model(config, seed=seed), seed)


def test_fine_tuned_file_with_args_tells_its_architecture_and_runs_as_saved(tmp_path):
    config, model = fine_tuned(num_classes=3, num_queries=6 * 3, dim_feedforward=48)
    path = tmp_path / "checkpoint0049.pth"
    torch.save({"model": model.state_dict(), "args": official_dab_args(config)}, path)
    checkpoint = read_checkpoint(path)
    assert checkpoint.config == config and checkpoint.config.num_anchors == 6
    assert (checkpoint.config.refine_eps, checkpoint.config.head_eps) == (1e-3, 1e-3)
    assert_matches(build_checkpoint_model(checkpoint), lambda x: tuple(model(x).values()), CASES[:1])


def test_file_without_args_asks_for_the_dilation_and_takes_it_from_model(tmp_path):
    config, model = fine_tuned("tiny_dab_detr_r50_dc5")
    path = tmp_path / "bare.pth"
    torch.save(model.state_dict(), path)
    with pytest.raises(DetrDeployError, match="identical tensors: say which with --model"):
        read_checkpoint(path)
    checkpoint = read_checkpoint(path, config)
    assert checkpoint.config == config and checkpoint.config.backbone.dilate_last_stage


def _keep_query_pos(state):
    state["transformer.decoder.layers.1.ca_qpos_proj.weight"] = state[
        "transformer.decoder.layers.0.ca_qpos_proj.weight"
    ]
    state["transformer.decoder.layers.1.ca_qpos_proj.bias"] = state["transformer.decoder.layers.0.ca_qpos_proj.bias"]


def _per_layer_heads(state):
    for key in [key for key in state if key.startswith("bbox_embed.")]:
        state[key.replace("bbox_embed.", "bbox_embed.0.", 1)] = state.pop(key)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda state: state.update({"label_enc.weight": torch.zeros(6, 31)}), "looks like DN-DETR"),
        (_keep_query_pos, "decoder layer 1 adds the anchors' position"),
        (_per_layer_heads, "one box head per decoder layer"),
        (lambda state: state.pop("transformer.decoder.ref_anchor_head.layers.0.weight"), None),
    ],
    ids=["dn_detr", "keep_query_pos", "per_layer_heads", "no_ref_anchor_head"],
)
def test_official_files_the_zoo_does_not_build_are_refused_in_one_line(edit, message, tmp_path):
    config, model = fine_tuned()
    state = dict(model.state_dict())
    edit(state)
    path = tmp_path / "other.pth"
    torch.save({"model": state, "args": official_dab_args(config)}, path)
    with pytest.raises(DetrDeployError) as error:
        read_checkpoint(path)
    assert "\n" not in str(error.value)
    assert message is None or message in str(error.value)


# --- transformers -------------------------------------------------------------------------------------------------


def hf_dab(patterns: int = 0, seed: int = 0, depths=(1, 1, 1, 1)):
    """A tiny transformers DabDetrForObjectDetection (transformers' own ResNet), random weights, eval mode."""
    transformers = pytest.importorskip("transformers")
    from tests.checkpoints.test_checkpoints_huggingface import randomize, resnet_config

    config = transformers.DabDetrConfig(
        backbone_config=resnet_config(["stage4"], depths),
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone=None,
        hidden_size=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        num_queries=6,
        num_patterns=patterns,
        id2label=dict(enumerate(LABELS)),
    )
    torch.manual_seed(seed)
    return randomize(transformers.DabDetrForObjectDetection(config), seed)


def hf_reference(hf):
    def run(pixels):
        outputs = hf(pixel_values=pixels)
        return outputs.logits, outputs.pred_boxes

    return run


@pytest.fixture(scope="module")
def saved_hf(tmp_path_factory):
    cache = {}

    def get(patterns: int):
        if patterns not in cache:
            hf = hf_dab(patterns)
            directory = tmp_path_factory.mktemp(f"dab-{patterns}-save-pretrained")
            hf.save_pretrained(directory)
            cache[patterns] = hf, directory
        return cache[patterns]

    return get


@pytest.mark.parametrize("patterns", slow_after([3, 0]))
def test_save_pretrained_directory_gives_transformers_outputs(patterns, saved_hf):
    hf, directory = saved_hf(patterns)
    checkpoint = read_checkpoint(directory)
    assert checkpoint.source == SOURCE_TRANSFORMERS and checkpoint.class_names == LABELS
    config = checkpoint.config
    assert (config.num_patterns, config.num_anchors, config.num_queries) == (patterns, 6, 6 * max(1, patterns))
    assert (config.refine_eps, config.head_eps, config.activation) == (1e-5, 1e-5, "prelu")
    assert_matches(build_checkpoint_model(checkpoint), hf_reference(hf))


# Two images of a padded batch: the first padded right and below, the second not.
PADDED_BATCH, PADDED_SHAPES = (2, 230, 170), ((171, 119), (230, 170))


def padding_mask() -> torch.Tensor:
    """[2, 230, 170] uint8, 1 = padded pixel (the official NestedTensor mask)."""
    mask = torch.ones(PADDED_BATCH, dtype=torch.uint8)
    for index, (height, width) in enumerate(PADDED_SHAPES):
        mask[index, :height, :width] = 0
    return mask


@pytest.mark.slow
def test_padded_batch_matches_transformers_with_its_pixel_mask(saved_hf):
    hf, directory = saved_hf(3)
    model = build_checkpoint_model(read_checkpoint(directory))
    pixels, mask = images(*PADDED_BATCH), padding_mask()
    with torch.no_grad():
        expected = hf(pixel_values=pixels, pixel_mask=(1 - mask).long())
        ours = model(pixels, mask)
    torch.testing.assert_close(ours["pred_logits"], expected.logits, **TOLERANCE)
    torch.testing.assert_close(ours["pred_boxes"], expected.pred_boxes, **TOLERANCE)


@pytest.mark.slow
def test_timm_backbone_layout_gives_the_same_outputs(tmp_path):
    from tests.checkpoints.test_checkpoints_huggingface import (
        four_x_timm_config,
        saved_config,
        timm_state,
        write_directory,
    )

    # The hub's layout (IDEA-Research/dab-detr-resnet-50): a timm ResNet-50 (torchvision's names) under transformers'
    # TimmBackbone (``_backbone``), named in a 4.x-style config.json.
    hf = hf_dab(3, depths=(3, 4, 6, 3))
    hf.save_pretrained(tmp_path / "hf")
    config = four_x_timm_config(saved_config(tmp_path / "hf"), [4])
    timm = timm_state(hf.state_dict())
    prefix = "model.backbone.conv_encoder.model."
    hub = {key.replace(prefix, prefix + "_backbone.", 1): tensor for key, tensor in timm.items()}
    assert any(key.startswith(prefix + "_backbone.conv1.") for key in hub)
    write_directory(tmp_path / "timm", config, hub)
    checkpoint = read_checkpoint(tmp_path / "timm")
    assert any("timm resnet50 layout" in line for line in checkpoint.read_from)
    assert_matches(build_checkpoint_model(checkpoint), hf_reference(hf), CASES[1:])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"keep_query_pos": True}, "keep_query_pos true"),
        ({"temperature_height": 10000}, "temperature_height 10000"),
        ({"activation_function": "gelu"}, "activation_function 'gelu'"),
    ],
)
def test_transformers_settings_the_zoo_cannot_express_are_refused(change, message, saved_hf, tmp_path):
    from tests.checkpoints.test_checkpoints_huggingface import saved_config, write_directory

    hf, directory = saved_hf(3)
    write_directory(tmp_path / "edited", {**saved_config(directory), **change}, hf.state_dict())
    with pytest.raises(DetrDeployError, match=message):
        read_checkpoint(tmp_path / "edited")


# --- mmdetection 3.x ----------------------------------------------------------------------------------------------

MMDET_CONFIG = "dab_detr/dab-detr_r50_8xb2-50e_coco.py"


@pytest.fixture(scope="module")
def mmdet_dab(mmdet):
    """mmdet_dab(patterns) -> (mmdetection's own tiny DAB-DETR, its config), built once each."""
    cache = {}

    def get(patterns: int):
        if patterns not in cache:
            cfg = shrink(shipped_config(mmdet, MMDET_CONFIG), embed=32, heads=4, ffn=64, queries=6, enc_layers=1,
                         dec_layers=2)  # fmt: skip
            cfg.model.num_patterns = patterns
            cache[patterns] = build_mmdet(mmdet, cfg, seed=3), cfg
        return cache[patterns]

    return get


@pytest.mark.parametrize("patterns", slow_after([3, 0]))
def test_mmdetection_file_reads_into_a_zoo_model_matching_mmdetection(patterns, mmdet_dab, tmp_path):
    model, cfg = mmdet_dab(patterns)
    checkpoint = read_checkpoint(save_3x(tmp_path / "dab.pth", model, cfg))
    assert checkpoint.source == SOURCE_MMDET3 and checkpoint.class_names == mmdet_tests.CLASSES_5
    config = checkpoint.config
    assert (config.num_patterns, config.num_queries, config.num_heads) == (patterns, 6 * max(1, patterns), 4)
    assert (config.refine_eps, config.head_eps) == (1e-5, 1e-3)
    assert_matches(build_checkpoint_model(checkpoint), lambda pixels: mmdet_outputs(model, pixels))


@pytest.mark.slow
def test_padded_batch_matches_mmdetection_with_its_image_shapes(mmdet_dab, tmp_path):
    from mmdet.structures import DetDataSample

    model, cfg = mmdet_dab(3)
    pixels = images(*PADDED_BATCH)
    samples = [
        DetDataSample(metainfo=dict(batch_input_shape=PADDED_BATCH[1:], img_shape=shape)) for shape in PADDED_SHAPES
    ]
    with torch.no_grad():
        logits, boxes = (outputs[-1] for outputs in model._forward(pixels, samples))
        ours = build_checkpoint_model(read_checkpoint(save_3x(tmp_path / "dab.pth", model, cfg)))(
            pixels, padding_mask()
        )
    torch.testing.assert_close(ours["pred_logits"], logits, **TOLERANCE)
    torch.testing.assert_close(ours["pred_boxes"], boxes, **TOLERANCE)


@pytest.mark.parametrize("source", slow_after(["mmdetection", "transformers"]))
def test_inverse_sigmoid_clamps_are_the_sources_own(source, request, tmp_path):
    # Anchors at +-8 before the sigmoid (3.4e-4 from 0 or 1): between the clamps of 1e-5 and 1e-3, so only the
    # source's own clamps, where it refines and in its head, give its boxes.
    if source == "mmdetection":
        model, cfg = request.getfixturevalue("mmdet_dab")(3)
        model, anchors = copy.deepcopy(model), "query_embedding.weight"
        reference = lambda pixels: mmdet_outputs(model, pixels)  # noqa: E731
    else:
        hf, _ = request.getfixturevalue("saved_hf")(3)
        model, anchors = copy.deepcopy(hf), "model.query_refpoint_embeddings.weight"
        reference = hf_reference(model)
    with torch.no_grad():
        weight = model.state_dict()[anchors]
        weight.copy_(8.0 * weight.sign())
    if source == "mmdetection":
        path = save_3x(tmp_path / "dab.pth", model, cfg)
    else:
        model.save_pretrained(tmp_path / "hf")
        path = tmp_path / "hf"
    checkpoint = read_checkpoint(path)
    assert_matches(build_checkpoint_model(checkpoint), reference, CASES[:1])
    swapped = dataclasses.replace(
        checkpoint,
        config=checkpoint.config.replace(refine_eps=1e-3, head_eps=1e-5 if source == "mmdetection" else 1e-3),
    )
    with pytest.raises(AssertionError):
        assert_matches(build_checkpoint_model(swapped), reference, CASES[:1])


def test_mmdetection_settings_the_zoo_cannot_express_are_refused(mmdet_dab, tmp_path):
    model, cfg = mmdet_dab(3)
    edited = copy.deepcopy(cfg)
    edited.model.positional_encoding.temperature = 10000
    with pytest.raises(DetrDeployError, match="is not DAB-DETR's"):
        read_checkpoint(save_3x(tmp_path / "dab.pth", model, edited))


# --- the real CLI -------------------------------------------------------------------------------------------------


def official_file(folder: Path) -> Path:
    config, model = fine_tuned()
    path = folder / "dab_official.pth"
    torch.save({"model": model.state_dict(), "args": official_dab_args(config)}, path)
    return path


def transformers_directory(folder: Path, saved_hf) -> Path:
    return saved_hf(3)[1]


def mmdetection_file(folder: Path, mmdet_dab) -> Path:
    model, cfg = mmdet_dab(3)
    return save_3x(folder / "dab_mmdet.pth", model, cfg)


@pytest.mark.parametrize("source", slow_after(["official", "transformers", "mmdetection"]))
def test_cli_inspect_export_and_verify_parity(source, request, tmp_path):
    if source == "official":
        path = official_file(tmp_path)
    elif source == "transformers":
        path = transformers_directory(tmp_path, request.getfixturevalue("saved_hf"))
    else:
        path = mmdetection_file(tmp_path, request.getfixturevalue("mmdet_dab"))
    result = run_cli("inspect", path)
    assert result.exit_code == 0 and "dab_detr" in result.output and "_3pat" in result.output, result.output
    assert "3 patterns" in result.output and "inverse-sigmoid clamp" in result.output
    onnx_path = tmp_path / "dab.onnx"
    result = run_cli("export", "--checkpoint", path, "--output", onnx_path)
    assert result.exit_code == 0, result.output
    report = tmp_path / "parity.json"
    result = run_cli(
        "verify-parity", "--onnx", onnx_path, "--checkpoint", path,
        "--sizes", "197x263,230x170", "--batch-sizes", "1,2", "--report", report,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["passed"] and len(data["cases"]) == 4


# --- the official code's own forward ------------------------------------------------------------------------------

# A checkout (or `git archive`) of IDEA-Research/DAB-DETR; the check runs where one is given.
OFFICIAL_TREE = os.environ.get("DAB_DETR_OFFICIAL")


# Whether the packages the official code imports are installed (asked before any stand-in is made).
INSTALLED = {name: importlib.util.find_spec(name) is not None for name in ("torchvision", "timm")}


def _stand_in(monkeypatch, name: str, **attributes) -> None:
    """A module ``name`` holding ``attributes``, where the real package is not installed: the official DAB-DETR imports
    torchvision (box_area, IntermediateLayerGetter, a version check) and timm (its Swin backbone) at import time,
    and uses neither for a ResNet DAB-DETR built without its own backbone."""
    if INSTALLED[name.split(".")[0]]:
        return
    module = types.ModuleType(name)
    module.__path__ = []
    module.__dict__.update(attributes)
    monkeypatch.setitem(sys.modules, name, module)


def official_dab_modules(monkeypatch):
    """The official DABDETR class, its build_transformer, PositionEmbeddingSineHW, Joiner and NestedTensor, imported
    from OFFICIAL_TREE without its package __init__ (which imports DAB's Deformable DETR and its compiled ops)."""
    tree = Path(OFFICIAL_TREE)
    _stand_in(monkeypatch, "torchvision", __version__="0.15.0", _is_tracing=lambda: False)
    _stand_in(monkeypatch, "torchvision.ops")
    _stand_in(monkeypatch, "torchvision.ops.boxes", box_area=None)
    _stand_in(monkeypatch, "torchvision.ops.misc")
    _stand_in(monkeypatch, "torchvision.models")
    _stand_in(monkeypatch, "torchvision.models._utils", IntermediateLayerGetter=None)
    _stand_in(monkeypatch, "timm")
    _stand_in(monkeypatch, "timm.models")
    _stand_in(monkeypatch, "timm.models.layers", DropPath=None, to_2tuple=None, trunc_normal_=None)
    monkeypatch.syspath_prepend(str(tree))
    package = types.ModuleType("models")
    package.__path__ = [str(tree / "models")]
    monkeypatch.setitem(sys.modules, "models", package)
    for name in [name for name in sys.modules if name.startswith(("models.", "util"))]:
        monkeypatch.delitem(sys.modules, name)
    dabdetr = importlib.import_module("models.DAB_DETR.DABDETR")
    transformer = importlib.import_module("models.DAB_DETR.transformer")
    position = importlib.import_module("models.DAB_DETR.position_encoding")
    backbone = importlib.import_module("models.DAB_DETR.backbone")
    misc = importlib.import_module("util.misc")
    return dabdetr.DABDETR, transformer.build_transformer, position.PositionEmbeddingSineHW, backbone.Joiner, misc


@pytest.mark.skipif(not OFFICIAL_TREE, reason="set DAB_DETR_OFFICIAL to a checkout of IDEA-Research/DAB-DETR")
@pytest.mark.parametrize("patterns", [0, 3])
def test_outputs_match_the_official_forward_with_and_without_padding(patterns, monkeypatch):
    import torch.nn.functional as F

    from detr_deploy.models.backbone import Backbone

    DABDETR, build_transformer, PositionEmbeddingSineHW, Joiner, misc = official_dab_modules(monkeypatch)

    class OfficialStyleBackbone(torch.nn.Module):
        """Our ResNet (torchvision's names under body.) answering as the official Backbone: {"0": NestedTensor}."""

        def __init__(self, config):
            super().__init__()
            ours = Backbone(config, (4,))
            self.body, self.resnet, self.num_channels = ours.body, [ours], ours.num_channels[-1]

        def forward(self, samples):
            feature = self.resnet[0](samples.tensors)[-1]
            mask = F.interpolate(samples.mask[None].float(), size=feature.shape[-2:]).to(torch.bool)[0]
            return {"0": misc.NestedTensor(feature, mask)}

    # The official encoder's query_scale is 256 wide whatever the width (TransformerEncoder's d_model default).
    config = dataclasses.replace(
        get_model_spec("tiny_dab_detr_r50").config,
        num_classes=7,
        num_queries=6 * max(1, patterns),
        num_patterns=patterns,
        hidden_dim=256,
        num_heads=8,
        num_encoder_layers=2,
        num_decoder_layers=3,
    )
    ours = nudged(build_model(config, seed=0))
    args = official_dab_args(config, dropout=0.0)
    joiner = Joiner(OfficialStyleBackbone(config.backbone), PositionEmbeddingSineHW(128, 20, 20, normalize=True))
    joiner.num_channels = joiner[0].num_channels
    official = DABDETR(joiner, build_transformer(args), 7, 6, 3, iter_update=True, query_dim=4).eval()
    result = official.load_state_dict(ours.state_dict(), strict=False)
    assert not result.unexpected_keys and not result.missing_keys
    for batch, height, width in CASES:
        pixels = images(batch, height, width)
        mask = torch.zeros(batch, height, width, dtype=torch.bool)
        for padded in (False, True):
            if padded:
                mask[-1, :, width * 2 // 3 :] = True
                mask[-1, height * 3 // 4 :, :] = True
            with torch.no_grad():
                expected = official(misc.NestedTensor(pixels, mask))
                got = ours(pixels, mask if padded else None)
            for name in ("pred_logits", "pred_boxes"):
                scale = float(expected[name].abs().max())
                torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-4 * scale)
