"""HGNetv2: feature parity with transformers' HGNetV2Backbone through the key mapping, the named sizes against
transformers' model of the same arch, and export with dynamic H, W.

The named variants were read off Peterande/D-FINE ``src/nn/backbone/hgnetv2.py`` (``arch_configs``) and PaddleClas'
pp_hgnet_v2.py (``use_lab``); RT-DETR-L/X off Ultralytics' rtdetr-l.yaml / rtdetr-x.yaml.
"""

import dataclasses
import math

import pytest
import torch

from detr_deploy.models.hgnetv2 import (
    HGNETV2_VARIANTS,
    HGNetV2,
    HGNetV2Config,
    transformers_to_official_keys,
)

transformers = pytest.importorskip(
    "transformers", reason="transformers builds the reference models of these tests (pip install transformers)"
)
from transformers import HGNetV2Backbone  # noqa: E402
from transformers import HGNetV2Config as HFConfig  # noqa: E402

# (batch, height, width): portrait and landscape multiples of 32, batch 1 and 2, and one size that is not.
SIZES = [(1, 96, 160), (2, 160, 96), (1, 72, 100)]


def hf_config(config: HGNetV2Config) -> HFConfig:
    """transformers' description of the same network, returning the same stages."""
    stages = config.stages
    return HFConfig(
        stem_channels=list(config.stem_channels),
        stage_in_channels=[stage.in_channels for stage in stages],
        stage_mid_channels=[stage.mid_channels for stage in stages],
        stage_out_channels=[stage.out_channels for stage in stages],
        stage_num_blocks=[stage.num_blocks for stage in stages],
        stage_downsample=[stage.downsample for stage in stages],
        stage_light_block=[stage.light_block for stage in stages],
        stage_kernel_size=[stage.kernel_size for stage in stages],
        stage_numb_of_layers=[stage.num_layers for stage in stages],
        use_learnable_affine_block=config.use_lab,
        depths=[stage.num_blocks for stage in stages],
        hidden_sizes=[stage.out_channels for stage in stages],
        out_indices=list(config.out_stages),
    )


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Seeded weights at a scale that keeps activations O(1), and batch-norm statistics and LABs that are not the
    identity (a negative LAB bias also makes the stem's zero padding visible to its max pool)."""
    generator = torch.Generator().manual_seed(seed)

    def fill(tensor: torch.Tensor, low: float, high: float) -> None:
        tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)

    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if tensor.dim() == 4:  # convolution weights
                fan_in = tensor[0].numel()
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * math.sqrt(2.0 / fan_in))
            elif name.endswith("running_var") or name.endswith("scale") or name.endswith("weight"):
                fill(tensor, 0.5, 1.5)
            else:  # running_mean, bias (batch norm and LAB)
                fill(tensor, -0.2, 0.2)


def tiny(use_lab: bool, light_blocks: bool, out_stages=(1, 2, 3, 4)) -> HGNetV2Config:
    """The tiny B0 (light blocks in stages 3 and 4, as every named variant) or the same without light blocks."""
    config = HGNETV2_VARIANTS["B0"].tiny()
    stages = tuple(dataclasses.replace(row, light_block=row.light_block and light_blocks) for row in config.stages)
    return dataclasses.replace(config, stages=stages, use_lab=use_lab, out_stages=out_stages)


@pytest.mark.parametrize("light_blocks", [True, False], ids=["light", "plain"])
@pytest.mark.parametrize("use_lab", [True, False], ids=["lab", "nolab"])
def test_matches_transformers(use_lab: bool, light_blocks: bool):
    config = tiny(use_lab, light_blocks)
    torch.manual_seed(0)
    reference = HGNetV2Backbone(hf_config(config)).eval()
    randomize(reference, seed=1)
    model = HGNetV2(config).eval()
    result = model.load_state_dict(transformers_to_official_keys(reference.state_dict()), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert any(".lab." in key for key in model.state_dict()) == use_lab
    assert any(".conv1.conv." in key for key in model.state_dict()) == light_blocks

    generator = torch.Generator().manual_seed(2)
    for batch, height, width in SIZES:
        images = torch.randn(batch, 3, height, width, generator=generator)
        with torch.no_grad():
            expected = reference(images).feature_maps
            features = model(images)
        assert len(features) == len(expected) == 4
        for feature, peer in zip(features, expected):
            assert feature.shape == peer.shape
            scale = peer.abs().max().item()
            assert scale > 1e-2, "the reference features are degenerate"
            assert (feature - peer).abs().max().item() <= 1e-4 * scale


def test_shapes_and_returned_stages():
    config = HGNETV2_VARIANTS["B4"].tiny()
    assert config.label == "HGNetv2-B4-tiny" and HGNETV2_VARIANTS["B4"].label == "HGNetv2-B4"
    assert config.out_stages == (2, 3, 4) and config.out_strides() == (8, 16, 32)
    model = HGNetV2(config).eval()
    with torch.no_grad():
        features = model(torch.randn(2, 3, 128, 96))
    assert [tuple(feature.shape) for feature in features] == [
        (2, channels, 128 // stride, 96 // stride) for channels, stride in zip(model.out_channels, model.strides)
    ]
    # D-FINE-N returns only strides 16 and 32: fewer outputs, the same parameters.
    late = HGNetV2(dataclasses.replace(config, out_stages=(3, 4)))
    assert late.strides == (16, 32) and late.state_dict().keys() == model.state_dict().keys()


def test_official_key_layout():
    keys = HGNetV2(tiny(use_lab=True, light_blocks=True)).state_dict().keys()
    for key in [
        "stem.stem1.conv.weight",
        "stem.stem1.bn.running_var",
        "stem.stem2a.lab.scale",
        "stages.0.blocks.0.layers.0.conv.weight",
        "stages.0.blocks.0.layers.0.lab.bias",
        "stages.0.blocks.0.aggregation.0.conv.weight",
        "stages.0.blocks.0.aggregation.1.lab.scale",
        "stages.1.downsample.conv.weight",
        "stages.2.blocks.1.layers.1.conv1.bn.weight",
        "stages.2.blocks.1.layers.1.conv2.lab.bias",
    ]:
        assert key in keys
    # No LAB without an activation: the downsample and a light layer's 1x1 convolution.
    assert not any(key.startswith("stages.1.downsample.lab") or ".conv1.lab." in key for key in keys)
    assert "stages.0.downsample.conv.weight" not in keys


def test_mapping_rejects_foreign_keys():
    with pytest.raises(ValueError, match="strip the outer prefix"):
        transformers_to_official_keys({"model.backbone.embedder.stem1.convolution.weight": torch.zeros(1)})


@pytest.mark.parametrize("name", sorted(HGNETV2_VARIANTS))
def test_named_variant_matches_transformers_arch(name: str):
    """Built on the meta device: the same tensors, by name and shape, as transformers' model of the same arch."""
    config = HGNETV2_VARIANTS[name]
    with torch.device("meta"):
        ours = HGNetV2(config)
        theirs = HGNetV2Backbone(hf_config(config))
    mapped = transformers_to_official_keys(theirs.state_dict())
    assert {key: tuple(value.shape) for key, value in ours.state_dict().items()} == {
        key: tuple(value.shape) for key, value in mapped.items()
    }
    assert sum(p.numel() for p in ours.parameters()) + sum(b.numel() for b in ours.buffers()) == sum(
        value.numel() for value in mapped.values()
    )
    assert config.label == f"HGNetv2-{name}" and config.out_strides() == (8, 16, 32)


def test_b4_is_transformers_default_and_rtdetr_l_x_are_b4_b5():
    default, b4 = HFConfig(), hf_config(HGNETV2_VARIANTS["B4"])
    assert HGNetV2Config() == dataclasses.replace(HGNETV2_VARIANTS["B4"], use_lab=False)
    for field in (
        "stem_channels",
        "stage_in_channels",
        "stage_mid_channels",
        "stage_out_channels",
        "stage_num_blocks",
        "stage_downsample",
        "stage_light_block",
        "stage_kernel_size",
        "stage_numb_of_layers",
    ):
        assert list(getattr(b4, field)) == list(getattr(default, field)), field
    assert b4.use_learnable_affine_block == default.use_learnable_affine_block
    for name, same in (("L", "B4"), ("X", "B5")):
        assert dataclasses.replace(HGNETV2_VARIANTS[name], name=same) == HGNETV2_VARIANTS[same]
    assert [name for name, config in HGNETV2_VARIANTS.items() if config.use_lab] == ["B0", "B1", "B2", "B3"]


def test_config_validation():
    b0 = HGNETV2_VARIANTS["B0"]
    with pytest.raises(ValueError, match="stage 2 takes"):
        dataclasses.replace(b0, stages=(b0.stages[0], dataclasses.replace(b0.stages[1], in_channels=32)))
    with pytest.raises(ValueError, match="out_stages"):
        dataclasses.replace(b0, out_stages=(3, 2))


@pytest.mark.slow
def test_torch_export_dynamic_height_width():
    config = HGNETV2_VARIANTS["B0"].tiny()
    model = HGNetV2(config).eval()
    randomize(model, seed=3)
    height, width = torch.export.Dim("h32", min=1, max=64), torch.export.Dim("w32", min=1, max=64)
    exported = torch.export.export(
        model,
        (torch.randn(2, 3, 256, 320),),
        dynamic_shapes={"images": {2: 32 * height, 3: 32 * width}},
    )
    images = torch.randn(2, 3, 160, 416)
    with torch.no_grad():
        expected = model(images)
        features = exported.module()(images)
    for feature, reference in zip(features, expected):
        assert feature.shape == reference.shape
        torch.testing.assert_close(feature, reference, rtol=1e-5, atol=1e-5)
