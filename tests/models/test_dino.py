"""DINO (tiny random weights): output contract for 4 and 5 levels, batch independence, the padding mask as the
official code applies it, and torch.export with dynamic batch, height and width."""

import dataclasses
import functools

import pytest
import torch

from detr_deploy import contract
from detr_deploy.models import dino as dino_module
from detr_deploy.models.backbone import BackboneConfig
from detr_deploy.models.deformable_transformer import inverse_sigmoid
from detr_deploy.models.dino import DINOConfig
from detr_deploy.models.registry import build_model

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
    backbone=BackboneConfig(blocks_per_stage=(1, 1, 1, 1), base_width=8),
)
# Level sizes of an image alone at strides 4..64, and of the same image padded (valid ratios differ per level).
ALONE_LEVELS = [(24, 40), (12, 20), (6, 10), (3, 5), (2, 3)]
PADDED_LEVELS = [(30, 47), (15, 24), (8, 12), (4, 6), (2, 3)]


@functools.cache
def tiny_model(levels: int, seed: int = 0):
    """Built once per test session (tests only read it)."""
    return build_model(dataclasses.replace(TINY, num_feature_levels=levels), seed=seed).eval()


@pytest.mark.parametrize("levels, strides", [(4, [8, 16, 32]), (5, [4, 8, 16, 32])], ids=["4scale", "5scale"])
@pytest.mark.parametrize("batch, height, width", [(1, 97, 131), (3, 131, 89)])
def test_outputs_follow_the_contract_and_images_do_not_mix(levels, strides, batch, height, width):
    model = tiny_model(levels)
    # 4-scale feeds C3-C5, 5-scale C2-C5; both add one stride-2 level on top.
    assert model.backbone[0].strides == strides and len(model.input_proj) == levels
    images = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        outputs = model(images)
        last_alone = model(images[-1:])
    assert tuple(outputs) == TINY.output_names
    assert outputs[contract.OUTPUT_LOGITS].shape == (batch, TINY.num_queries, TINY.num_classes)
    boxes = outputs[contract.OUTPUT_BOXES]
    assert boxes.shape == (batch, TINY.num_queries, 4) and bool(((boxes >= 0) & (boxes <= 1)).all())
    assert outputs[contract.OUTPUT_LOGITS].std() > 0.05 and boxes.std() > 0.01  # not degenerate
    for name in TINY.output_names:
        torch.testing.assert_close(outputs[name][-1:], last_alone[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("levels", [4, 5])
def test_mask_leaves_unpadded_images_as_they_are(levels):
    model = tiny_model(levels)
    generator = torch.Generator().manual_seed(2)
    images = torch.randn(2, 3, 97, 131, generator=generator)
    mask = torch.zeros(2, 97, 131, dtype=torch.uint8)
    mask[0, 70:] = 1
    mask[0, :, 100:] = 1
    with torch.no_grad():
        unmasked = model(images)
        all_zero = model(images, torch.zeros_like(mask))
        padded_batch = model(images, mask)
        second_alone = model(images[1:])
    for name in TINY.output_names:
        # An all-zero mask takes the masked path (valid ratios of 1) and must give the unmasked result.
        torch.testing.assert_close(all_zero[name], unmasked[name], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(padded_batch[name][1:], second_alone[name], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(padded_batch[contract.OUTPUT_LOGITS][:1], unmasked[contract.OUTPUT_LOGITS][:1])


def _features(model, levels: int, generator):
    """The same per-level features alone and padded with noise (plus masks), and positions for both."""
    alone, padded, masks = [], [], []
    for (height, width), (padded_height, padded_width) in zip(ALONE_LEVELS[:levels], PADDED_LEVELS[:levels]):
        feature = torch.randn(1, TINY.hidden_dim, height, width, generator=generator)
        canvas = 3 * torch.randn(1, TINY.hidden_dim, padded_height, padded_width, generator=generator)
        canvas[:, :, :height, :width] = feature
        mask = torch.ones(1, padded_height, padded_width, dtype=torch.bool)
        mask[:, :height, :width] = False
        alone.append(feature)
        padded.append(canvas)
        masks.append(mask)
    position = model.backbone[1]
    return (
        (alone, [position(feature) for feature in alone]),
        (padded, [position(feature, mask) for feature, mask in zip(padded, masks)], masks),
    )


def _heads(model, hs, reference):
    boxes = model.bbox_embed[-1](hs) + inverse_sigmoid(reference, model.config.box_inverse_sigmoid_eps)
    return model.class_embed[-1](hs), boxes.sigmoid()


@pytest.mark.parametrize("levels", [4, 5])
def test_padded_features_give_the_outputs_of_the_image_alone_within_the_official_tolerance(levels):
    # Below the input projections (whose GroupNorm officially normalizes over the padded map as well, so padded images
    # drift there whatever the mask): the transformer given padded features and their masks. The official code is
    # not exact here either: encoder reference points seen from levels with other valid ratios, and the decoder's
    # query positions (see the next test), shift a little. The same features unmasked are far off.
    model = tiny_model(levels)
    (alone, alone_positions), (padded, padded_positions, masks) = _features(
        model, levels, torch.Generator().manual_seed(3)
    )
    with torch.no_grad():
        logits, boxes = _heads(model, *model.transformer(alone, alone_positions))
        padded_logits, padded_boxes = _heads(model, *model.transformer(padded, padded_positions, masks))
        _, unmasked_boxes = _heads(model, *model.transformer(padded, [model.backbone[1](f) for f in padded]))
    torch.testing.assert_close(padded_logits, logits, rtol=0, atol=0.03)
    torch.testing.assert_close(padded_boxes, boxes, rtol=0, atol=2e-3)
    assert (unmasked_boxes - boxes).abs().max() > 0.1


@pytest.mark.parametrize("levels", [4, 5])
def test_padding_is_exact_but_for_the_official_query_positions(levels, monkeypatch):
    # Officially (and in mmdetection) the decoder embeds each reference box as the first level sees it, i.e. scaled
    # by that level's valid ratio, so a padded image's query positions differ from the image alone. With every level
    # padded to twice its size (valid ratio 0.5 throughout) and that scaling undone, padding must change nothing:
    # masked values, proposals, reference points and sampling all honour the valid extent.
    model = tiny_model(levels)
    generator = torch.Generator().manual_seed(4)
    alone = [torch.randn(1, TINY.hidden_dim, h, w, generator=generator) for h, w in ALONE_LEVELS[:levels]]
    padded, masks = [], []
    for feature in alone:
        height, width = feature.shape[-2:]
        canvas = 3 * torch.randn(1, TINY.hidden_dim, 2 * height, 2 * width, generator=generator)
        canvas[:, :, :height, :width] = feature
        mask = torch.ones(1, 2 * height, 2 * width, dtype=torch.bool)
        mask[:, :height, :width] = False
        padded.append(canvas)
        masks.append(mask)
    position = model.backbone[1]
    with torch.no_grad():
        hs, reference = model.transformer(alone, [position(feature) for feature in alone])
        embed = dino_module.box_sine_embedding
        monkeypatch.setattr(dino_module, "box_sine_embedding", lambda boxes, feats: embed(boxes / 0.5, feats))
        padded_positions = [position(feature, mask) for feature, mask in zip(padded, masks)]
        padded_hs, padded_reference = model.transformer(padded, padded_positions, masks)
    torch.testing.assert_close(padded_hs, hs, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(padded_reference, reference, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_torch_export_with_dynamic_batch_height_width_matches_eager_at_another_size():
    model = tiny_model(5)
    batch = torch.export.Dim("batch", min=contract.BATCH_RANGE[0], max=contract.BATCH_RANGE[1])
    # A side of 64 leaves the stride-64 level 1x1, where torch.export guards on contiguity (Deformable DETR alike).
    height = torch.export.Dim("height", min=65, max=contract.SIDE_RANGE[1])
    width = torch.export.Dim("width", min=65, max=contract.SIDE_RANGE[1])
    example_mask = torch.zeros(2, 160, 224, dtype=torch.uint8)
    example_mask[1, 120:] = 1
    example_mask[1, :, 150:] = 1
    program = torch.export.export(
        model,
        (torch.randn(2, 3, 160, 224), example_mask),
        dynamic_shapes={"images": {0: batch, 2: height, 3: width}, "padding_mask": {0: batch, 1: height, 2: width}},
    )
    images = torch.randn(3, 3, 203, 141, generator=torch.Generator().manual_seed(5))
    mask = torch.zeros(3, 203, 141, dtype=torch.uint8)
    mask[0, 150:] = 1
    mask[2, :, 100:] = 1
    with torch.no_grad():
        exported = program.module()(images, mask)
        eager = model(images, mask)
    for name in TINY.output_names:
        torch.testing.assert_close(exported[name], eager[name], rtol=1e-4, atol=1e-5)
