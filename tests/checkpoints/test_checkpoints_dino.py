"""DINO checkpoints: mmdetection 3.x files read into zoo models whose outputs match mmdetection's own (peer: mmdet 3.3
building DINO itself, random weights), official IDEA-Research/DINO files with and without their training args, and
the variants the zoo does not build refused with one clear line.

mmdetection's DINO embeds reference boxes with 128 features per coordinate whatever the width (so does the official
code), so its fixtures are 256 wide; everything else about them is tiny.
"""

import argparse
import copy
import dataclasses
from pathlib import Path

import pytest
import torch

from detr_deploy.checkpoints.candidate import Candidate
from detr_deploy.checkpoints.checkpoint import SOURCE_MMDET3, SOURCE_OFFICIAL, build_checkpoint_model
from detr_deploy.checkpoints.formats.mmdetection import is_mmdetection
from detr_deploy.checkpoints.pickled import load_pickled
from detr_deploy.checkpoints.readers import dino as dino_reader
from detr_deploy.errors import DetrDeployError
from detr_deploy.models.backbone import BackboneConfig
from detr_deploy.models.dino import DINOConfig
from detr_deploy.models.registry import build_model
from tests.checkpoints import test_checkpoints_mmdetection as mmdet_tests
from tests.checkpoints.test_checkpoints_mmdetection import (
    CLASSES_5,
    build_mmdet,
    mmdet_outputs,
    save_3x,
    shipped_config,
    shrink,
)
from tests.marks import slow_after

# mmdetection imported on the CPU with a stand-in for its compiled ops (skips where it is not installed).
mmdet = mmdet_tests.mmdet

# mmdetection's encoder calls torch.meshgrid without indexing=.
pytestmark = pytest.mark.filterwarnings("ignore:torch.meshgrid")

TOLERANCE = dict(rtol=1e-4, atol=1e-4)
# (batch, height, width): not multiples of 32, not square, both orientations.
CASES = ((1, 133, 181), (2, 160, 115))


# --- mmdetection 3.x ------------------------------------------------------------------------------------------------


def _levels(cfg, levels: int):
    """5-scale: C2-C5 mapped (out_indices 0..3) plus one extra level, as mmdetection's 5-scale configs."""
    model = cfg.model
    model.num_feature_levels = levels
    model.backbone.out_indices = (0, 1, 2, 3)
    model.neck.in_channels = [32, 64, 128, 256]
    model.neck.num_outs = levels
    model.encoder.layer_cfg.self_attn_cfg.num_levels = levels
    model.decoder.layer_cfg.cross_attn_cfg.num_levels = levels
    return cfg


def dino_config(mmdet, kind: str):
    """The shipped DINO-4scale config shrunk (4 heads, read from its text), or mmdetection's "improved" DINO
    config (Deformable DETR's position encoding: offset -0.5, temperature 10000) made 5-scale with 8 heads."""
    name = "dino-4scale_r50_8xb2-12e_coco.py" if kind == "4scale" else "dino-4scale_r50_improved_8xb2-12e_coco.py"
    heads = 4 if kind == "4scale" else 8
    cfg = shrink(
        shipped_config(mmdet, f"dino/{name}"), embed=256, heads=heads, ffn=64, queries=30, enc_layers=1, dec_layers=2
    )
    cfg.model.encoder.layer_cfg.self_attn_cfg.num_points = 2
    cfg.model.decoder.layer_cfg.cross_attn_cfg.num_points = 2
    return cfg if kind == "4scale" else _levels(cfg, 5)


@pytest.fixture(scope="module")
def mmdet_dino(mmdet):
    """mmdet_dino(kind) -> (mmdetection model, config, [(images, (logits, boxes)) per case]), built once."""
    cache = {}

    def get(kind: str):
        if kind not in cache:
            cfg = dino_config(mmdet, kind)
            model = build_mmdet(mmdet, cfg, seed=11 + len(cache))
            generator = torch.Generator().manual_seed(7)
            references = []
            # The 5-scale variant at one size: its first level (stride 4) is the costly one.
            for batch, height, width in CASES if kind == "4scale" else CASES[1:]:
                images = torch.randn(batch, 3, height, width, generator=generator)
                references.append((images, mmdet_outputs(model, images)))
            cache[kind] = model, cfg, references
        return cache[kind]

    return get


def read_mmdet_file(path):
    candidate = Candidate.of_pickled(path, load_pickled(path))
    assert is_mmdetection(candidate.content) and dino_reader.recognize_mmdetection(candidate).yes
    return dino_reader.read_mmdetection(candidate)


@pytest.mark.parametrize("kind", slow_after(["4scale", "5scale_improved"]))
def test_mmdetection_file_reads_into_a_zoo_model_matching_mmdetection(kind, mmdet_dino, tmp_path):
    model, cfg, references = mmdet_dino(kind)
    checkpoint = read_mmdet_file(save_3x(tmp_path / f"{kind}.pth", model, cfg, message_hub=True))
    config = checkpoint.config
    assert checkpoint.source == SOURCE_MMDET3 and checkpoint.model_name == f"dino_{kind[0]}scale_r50"
    assert checkpoint.class_names == CLASSES_5 and config.num_classes == len(CLASSES_5)
    assert (config.hidden_dim, config.num_heads, config.dim_feedforward) == (256, 4 if kind == "4scale" else 8, 64)
    assert (config.num_encoder_layers, config.num_decoder_layers, config.num_queries) == (1, 2, 30)
    assert (config.num_feature_levels, config.enc_n_points, config.dec_n_points) == (int(kind[0]), 2, 2)
    assert config.backbone == BackboneConfig((3, 4, 6, 3), base_width=8)
    # ChannelMapper's convolutions before GroupNorm have no bias; the head's inverse sigmoid has eps 1e-5.
    assert config.input_proj_bias is False and config.box_inverse_sigmoid_eps == 1e-5
    expected_position = (20, 0.0) if kind == "4scale" else (10000, -0.5)
    assert (config.position_temperature, config.position_offset) == expected_position
    assert checkpoint.read_from[0] == "format: mmdetection 3.x (DINO)"
    assert "classes: meta.dataset_meta (5 names)" in checkpoint.read_from

    ours = build_checkpoint_model(checkpoint)
    for images, (logits, boxes) in references:
        assert logits.std() > 0.05 and boxes.std() > 0.01  # not degenerate
        with torch.no_grad():
            outputs = ours(images)
        # Compared query by query: both rank the same encoder proposals (no ties in these fixtures).
        torch.testing.assert_close(outputs["pred_logits"], logits, **TOLERANCE)
        torch.testing.assert_close(outputs["pred_boxes"], boxes, **TOLERANCE)


def test_padded_batch_matches_mmdetection_with_its_image_shapes(mmdet_dino, tmp_path):
    # mmdetection masks what lies beyond each sample's img_shape; the same batch with our padding mask must give the
    # same outputs (the masking, valid ratios and the query positions scaled by them, as officially).
    from mmdet.structures import DetDataSample

    model, cfg, _ = mmdet_dino("4scale")
    images = torch.randn(2, 3, 160, 115, generator=torch.Generator().manual_seed(8))
    shapes = [(121, 83), (160, 115)]
    samples = [DetDataSample(metainfo=dict(batch_input_shape=(160, 115), img_shape=shape)) for shape in shapes]
    with torch.no_grad():
        logits, boxes = (outputs[-1] for outputs in model._forward(images, samples))
    mask = torch.ones(2, 160, 115, dtype=torch.uint8)
    for index, (height, width) in enumerate(shapes):
        mask[index, :height, :width] = 0
    ours = build_checkpoint_model(read_mmdet_file(save_3x(tmp_path / "dino.pth", model, cfg)))
    with torch.no_grad():
        outputs = ours(images, mask)
    torch.testing.assert_close(outputs["pred_logits"], logits, **TOLERANCE)
    torch.testing.assert_close(outputs["pred_boxes"], boxes, **TOLERANCE)


def test_head_inverse_sigmoid_eps_is_mmdetections(mmdet_dino, tmp_path):
    # References saturated at 1 (the first layer's box branch pushes widths far out) make the eps of the head's
    # inverse sigmoid visible: mmdetection's 1e-5 gives its outputs, the official 1e-3 does not.
    model, cfg, references = mmdet_dino("4scale")
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.bbox_head.reg_branches[0][4].bias[2] += 40.0
        model.bbox_head.reg_branches[1][4].bias[2] -= 8.0
    images = references[0][0]
    logits, boxes = mmdet_outputs(model, images)
    checkpoint = read_mmdet_file(save_3x(tmp_path / "saturated.pth", model, cfg))
    with torch.no_grad():
        outputs = build_checkpoint_model(checkpoint)(images)
        official_eps = dataclasses.replace(
            checkpoint, config=dataclasses.replace(checkpoint.config, box_inverse_sigmoid_eps=1e-3)
        )
        official_outputs = build_checkpoint_model(official_eps)(images)
    torch.testing.assert_close(outputs["pred_logits"], logits, **TOLERANCE)
    torch.testing.assert_close(outputs["pred_boxes"], boxes, **TOLERANCE)
    assert (official_outputs["pred_boxes"][..., 2] - boxes[..., 2]).abs().max() > 0.1


def test_mmdetection_file_without_config_text_says_what_it_assumed(mmdet_dino, tmp_path):
    model, _, _ = mmdet_dino("4scale")
    path = tmp_path / "bare.pth"
    torch.save(model.state_dict(), path)
    checkpoint = read_mmdet_file(path)
    # The tensors cannot tell 4 heads from 8, nor the position encoding's settings.
    assert checkpoint.config.num_heads == 8 and checkpoint.class_names is None
    assert "heads: 8 (mmdetection's default; not in the tensors)" in checkpoint.read_from
    assert (
        "position encoding: temperature 20, offset 0 (mmdetection's DINO configs; not in the tensors)"
        in checkpoint.read_from
    )


def _unnormalized_positions(cfg):
    cfg.model.positional_encoding.normalize = False


def _bgr(cfg):
    cfg.model.data_preprocessor.bgr_to_rgb = False


def _gelu(cfg):
    cfg.model.encoder.layer_cfg.ffn_cfg.act_cfg = dict(type="GELU")


def _swin(state):
    # What a Swin backbone leaves in the file instead of a ResNet (mmdetection's SwinTransformer names).
    state = {key: value for key, value in state.items() if not key.startswith("backbone.")}
    state["backbone.patch_embed.projection.weight"] = torch.zeros(8, 3, 4, 4)
    state["backbone.stages.0.blocks.0.attn.w_msa.qkv.weight"] = torch.zeros(24, 8)
    return state


def _drop_decoder_norm(state):
    return {key: value for key, value in state.items() if not key.startswith("decoder.norm.")}


def _three_levels(state):
    state = dict(state)
    state["level_embed"] = state["level_embed"][:3]
    return state


@pytest.mark.parametrize(
    "edit_cfg, edit_state, message",
    [
        (_unnormalized_positions, None, "not normalized to 2\\*pi"),
        (_bgr, None, "trained on BGR inputs"),
        (_gelu, None, "FFN uses GELU"),
        (None, _swin, "its backbone is not a ResNet"),
        (None, _drop_decoder_norm, "2 missing tensors \\(transformer.decoder.norm.weight"),
        (None, _three_levels, "DINO with 3 feature levels"),
    ],
    ids=["positions", "bgr", "gelu", "swin", "missing", "levels"],
)
def test_mmdetection_dino_the_zoo_cannot_express_is_refused(edit_cfg, edit_state, message, mmdet_dino, tmp_path):
    model, cfg, _ = mmdet_dino("4scale")
    cfg = copy.deepcopy(cfg)
    state = dict(model.state_dict())
    if edit_cfg is not None:
        edit_cfg(cfg)
    if edit_state is not None:
        state = edit_state(state)
    path = tmp_path / "edited.pth"
    torch.save({"meta": {"dataset_meta": {"classes": CLASSES_5}, "cfg": cfg.pretty_text}, "state_dict": state}, path)
    with pytest.raises(DetrDeployError, match=message) as error:
        read_mmdet_file(path)
    assert "\n" not in str(error.value)


# --- official IDEA-Research/DINO ------------------------------------------------------------------------------------

TINY = DINOConfig(
    num_classes=5,
    num_queries=12,
    hidden_dim=32,
    num_heads=4,
    num_encoder_layers=2,
    num_decoder_layers=2,
    dim_feedforward=64,
    enc_n_points=2,
    dec_n_points=2,
    backbone=BackboneConfig(blocks_per_stage=(3, 4, 6, 3), base_width=8),
)


def official_args(config: DINOConfig, **changes) -> argparse.Namespace:
    """The training args main.py pickles: config/DINO/DINO_{4,5}scale.py with this model's sizes."""
    args = dict(
        modelname="dino",
        backbone="resnet50",
        dilation=False,
        position_embedding="sine",
        pe_temperatureH=20,
        pe_temperatureW=20,
        return_interm_indices=[1, 2, 3] if config.num_feature_levels == 4 else [0, 1, 2, 3],
        enc_layers=config.num_encoder_layers,
        dec_layers=config.num_decoder_layers,
        unic_layers=0,
        pre_norm=False,
        dim_feedforward=config.dim_feedforward,
        hidden_dim=config.hidden_dim,
        nheads=config.num_heads,
        num_queries=config.num_queries,
        query_dim=4,
        num_patterns=0,
        num_feature_levels=config.num_feature_levels,
        enc_n_points=config.enc_n_points,
        dec_n_points=config.dec_n_points,
        two_stage_type="standard",
        two_stage_pat_embed=0,
        two_stage_add_query_num=0,
        two_stage_bbox_embed_share=False,
        two_stage_class_embed_share=False,
        two_stage_learn_wh=False,
        transformer_activation="relu",
        masks=False,
        decoder_sa_type="sa",
        decoder_module_seq=["sa", "ca", "ffn"],
        dec_pred_bbox_embed_share=True,
        dec_pred_class_embed_share=True,
        use_dn=True,
        dn_labelbook_size=config.num_classes,
        embed_init_tgt=True,
        dec_layer_number=None,
        add_channel_attention=False,
        use_deformable_box_attn=False,
        num_classes=config.num_classes,
    )
    args.update(changes)
    return argparse.Namespace(**args)


def official_state(model) -> dict:
    """What the official DINO's state_dict holds for this model: our keys are its names; it shares one head across
    decoder layers (dec_pred_*_share) and keeps the denoising label embedding (``label_enc``), which we drop."""
    state = dict(model.state_dict())
    for key in list(state):
        for head in (
            "class_embed.",
            "bbox_embed.",
            "transformer.decoder.class_embed.",
            "transformer.decoder.bbox_embed.",
        ):
            if key.startswith(head):
                layer_zero = head + "0." + key[len(head) :].split(".", 1)[1]
                state[key] = state[layer_zero]
    state["label_enc.weight"] = torch.randn(model.config.num_classes + 1, model.config.hidden_dim)
    return state


@pytest.fixture(scope="module")
def official_model():
    """official_model(levels) -> (our model with the official file's weights, images, its outputs), built once."""
    cache = {}

    def get(levels: int):
        if levels not in cache:
            config = dataclasses.replace(TINY, num_feature_levels=levels)
            model = build_model(config, seed=levels)
            model.load_state_dict(
                {key: value for key, value in official_state(model).items() if key != "label_enc.weight"}
            )
            images = torch.randn(2, 3, 97, 131, generator=torch.Generator().manual_seed(9))
            with torch.no_grad():
                cache[levels] = model, images, model(images)
        return cache[levels]

    return get


def read_official_file(path, model_config=None):
    candidate = Candidate.of_pickled(path, load_pickled(path))
    assert dino_reader.recognize_official(candidate).yes
    return dino_reader.read_official(candidate, model_config)


def is_official_dino(state) -> bool:
    """Whether the DINO reader recognizes ``state`` as an official file's state dict."""
    return dino_reader.recognize_official(Candidate(Path("model.pth"), content={"model": state}, state=state)).yes


@pytest.mark.slow
@pytest.mark.parametrize("levels", [4, 5])
def test_official_file_with_args_reads_into_the_same_model(levels, official_model, tmp_path):
    model, images, expected = official_model(levels)
    path = tmp_path / "checkpoint0011.pth"
    state = official_state(model)
    assert is_official_dino(state)
    torch.save({"model": state, "args": official_args(model.config), "epoch": 11, "optimizer": {}}, path)
    checkpoint = read_official_file(path)
    assert checkpoint.source == SOURCE_OFFICIAL and checkpoint.config == model.config
    assert checkpoint.model_name == f"dino_{levels}scale_r50" and checkpoint.class_names is None
    assert "label_enc.weight" not in checkpoint.state_dict
    assert "architecture: training args in the file" in checkpoint.read_from
    assert "heads: training args" in checkpoint.read_from
    with torch.no_grad():
        outputs = build_checkpoint_model(checkpoint)(images)
    for name, value in expected.items():
        torch.testing.assert_close(outputs[name], value, rtol=0, atol=0)


def test_official_state_dict_without_args(official_model, tmp_path):
    model, images, expected = official_model(4)
    path = tmp_path / "bare.pth"
    torch.save(official_state(model), path)
    # The tensors cannot tell 4 heads from 8: without args the official default is assumed, and said.
    assumed = read_official_file(path)
    assert assumed.config == dataclasses.replace(model.config, num_heads=8, enc_n_points=1, dec_n_points=1)
    assert "heads: 8 (the official default; not in the tensors)" in assumed.read_from
    assert "position temperature: 20 (the official default; not in the tensors)" in assumed.read_from
    # --model settles it.
    checkpoint = read_official_file(path, model_config=model.config)
    assert checkpoint.config == model.config and "heads: from --model" in checkpoint.read_from
    with torch.no_grad():
        outputs = build_checkpoint_model(checkpoint)(images)
    for name, value in expected.items():
        torch.testing.assert_close(outputs[name], value, rtol=0, atol=0)


def test_official_dino_is_told_from_other_layouts(official_model):
    model, _, _ = official_model(4)
    state = official_state(model)
    assert is_official_dino(state) and is_official_dino({f"module.{key}": value for key, value in state.items()})
    # Deformable DETR two-stage (official) has encoder proposals but no content-query embedding.
    deformable = build_model(
        dataclasses.replace(
            _deformable_two_stage(), backbone=BackboneConfig(blocks_per_stage=(1, 1, 1, 1), base_width=8)
        )
    ).state_dict()
    assert not is_official_dino(deformable)
    assert not is_official_dino({"transformer.tgt_embed.weight": torch.zeros(1)})  # DAB-Deformable-DETR-like


def _deformable_two_stage():
    from detr_deploy.models.deformable_detr import DeformableDETRConfig

    return DeformableDETRConfig(
        num_classes=5, num_queries=12, hidden_dim=32, num_heads=4, num_encoder_layers=1, num_decoder_layers=2,
        dim_feedforward=64, with_box_refine=True, two_stage=True,
    )  # fmt: skip


def _swin_state(state):
    state = {key: value for key, value in state.items() if not key.startswith("backbone.0.body.")}
    state["backbone.0.patch_embed.proj.weight"] = torch.zeros(8, 3, 4, 4)
    return state


def _without(key):
    return lambda state: {name: value for name, value in state.items() if name != key}


def _reshaped(state):
    state = dict(state)
    state["class_embed.1.weight"] = torch.zeros(7, 32)
    return state


@pytest.mark.parametrize(
    "args_changes, edit_state, message",
    [
        (dict(two_stage_type="no"), None, "two_stage_type='no'"),
        (dict(decoder_sa_type="ca_label"), None, "decoder_sa_type='ca_label'"),
        (dict(backbone="swin_L_384_22k"), None, "backbone 'swin_L_384_22k', which is not supported"),
        (dict(pe_temperatureW=10000), None, "one temperature for both axes"),
        (dict(num_queries=900), None, "args say num_queries=900 but its tensors hold 12"),
        (dict(return_interm_indices=[0, 1, 2, 3]), None, "return_interm_indices=\\[1, 2, 3\\]"),
        (None, _swin_state, "DINO with a Swin Transformer backbone, which is not supported"),
        (None, _without("transformer.decoder.norm.weight"), "1 missing tensors \\(transformer.decoder.norm.weight"),
        (None, _without("transformer.level_embed"), "has no tensor transformer.level_embed"),
        (None, _reshaped, "class_embed.1.weight: file \\[7, 32\\], model \\[5, 32\\]"),
    ],
    ids=["one-stage", "ca-label", "swin-args", "temperatures", "queries", "stages", "swin", "missing", "level-embed",
         "reshaped"],
)  # fmt: skip
def test_official_files_the_zoo_cannot_express_are_refused(args_changes, edit_state, message, official_model, tmp_path):
    model, _, _ = official_model(4)
    state = official_state(model)
    if edit_state is not None:
        state = edit_state(state)
    content = {"model": state}
    if args_changes is not None:
        content["args"] = official_args(model.config, **args_changes)
    path = tmp_path / "edited.pth"
    torch.save(content, path)
    with pytest.raises(DetrDeployError, match=message) as error:
        read_official_file(path)
    assert "\n" not in str(error.value)


def test_onnx_export_of_an_mmdetection_file_gives_mmdetections_outputs(mmdet_dino, tmp_path):
    """The deployed file, not only our eager model: ONNX Runtime equals mmdetection's own DINO outputs."""
    import numpy as np

    from detr_deploy.runtime.onnxruntime import OnnxRuntimeRunner
    from tests.helpers import export_checkpoint

    model, cfg, references = mmdet_dino("4scale")
    checkpoint = read_mmdet_file(save_3x(tmp_path / "dino.pth", model, cfg))
    path = tmp_path / "dino.onnx"
    export_checkpoint(checkpoint, path)
    runner = OnnxRuntimeRunner(path)
    for images, (logits, boxes) in references:
        outputs = runner.run(images.numpy())
        np.testing.assert_allclose(outputs["pred_logits"], logits.numpy(), **TOLERANCE)
        np.testing.assert_allclose(outputs["pred_boxes"], boxes.numpy(), **TOLERANCE)
