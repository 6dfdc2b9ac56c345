"""HGNetv2 (the backbone of RT-DETR-L/X, D-FINE and DEIM) as checkpoints hold it: the official names (D-FINE's
``backbone.stem.*``, ``backbone.stages.*``), read from tensor shapes, and transformers' ``hgnet_v2``
``backbone_config`` with its tensors under ``embedder``/``encoder.stages`` (renamed here)."""

import dataclasses
from collections.abc import Mapping

import torch

from detr_deploy.checkpoints.keymap import count_indices
from detr_deploy.errors import DetrDeployError
from detr_deploy.models.hgnetv2 import (
    HGNETV2_VARIANTS,
    HGNetV2Config,
    HGNetV2StageConfig,
    transformers_to_official_keys,
)

STEM_KEY = "stem.stem1.conv.weight"


def is_hgnetv2(state: Mapping, prefix: str = "backbone.") -> bool:
    return f"{prefix}{STEM_KEY}" in state


def named(config: HGNetV2Config, preferred: tuple[str, ...]) -> HGNetV2Config:
    """``config`` under the name of the variant it is structurally (``preferred`` names first: RT-DETR calls B4
    "L"), or named "custom"."""
    names = [*preferred, *(name for name in HGNETV2_VARIANTS if name not in preferred)]
    for name in names:
        if dataclasses.replace(HGNETV2_VARIANTS[name], out_stages=config.out_stages) == dataclasses.replace(
            config, name=name
        ):
            return dataclasses.replace(config, name=name)
    return dataclasses.replace(config, name="custom")


def from_tensors(state: Mapping[str, torch.Tensor], prefix: str, source: str, out_stages=(2, 3, 4)) -> HGNetV2Config:
    """The HGNetv2 under ``prefix`` (official names): stem widths, and per stage its block and layer counts,
    widths, kernel, downsample and light layers, read from shapes and key counts."""

    def tensor(key: str) -> torch.Tensor:
        if f"{prefix}{key}" not in state:
            raise DetrDeployError(f"checkpoint {source} has no tensor {prefix}{key}: is the file complete?")
        return state[f"{prefix}{key}"]

    stem1 = tensor(STEM_KEY)
    stem_channels = (int(stem1.shape[1]), int(stem1.shape[0]), int(tensor("stem.stem4.conv.weight").shape[0]))
    stages = []
    for index in range(count_indices(state, rf"{prefix}stages\.(\d+)\.")):
        stage = f"stages.{index}."
        light = f"{prefix}{stage}blocks.0.layers.0.conv1.conv.weight" in state
        first = tensor(f"{stage}blocks.0.layers.0.{'conv2.conv' if light else 'conv'}.weight")
        excitation = tensor(f"{stage}blocks.0.aggregation.1.conv.weight")
        squeeze = tensor(f"{stage}blocks.0.aggregation.0.conv.weight")
        num_layers = count_indices(state, rf"{prefix}{stage}blocks\.0\.layers\.(\d+)\.")
        stages.append(
            HGNetV2StageConfig(
                in_channels=int(squeeze.shape[1]) - num_layers * int(first.shape[0]),
                mid_channels=int(first.shape[0]),
                out_channels=int(excitation.shape[0]),
                num_blocks=count_indices(state, rf"{prefix}{stage}blocks\.(\d+)\."),
                downsample=f"{prefix}{stage}downsample.conv.weight" in state,
                light_block=light,
                kernel_size=int(first.shape[-1]),
                num_layers=num_layers,
            )
        )
    use_lab = any(key.startswith(prefix) and ".lab." in key for key in state)
    try:
        return HGNetV2Config("custom", stem_channels, tuple(stages), use_lab, tuple(out_stages))
    except ValueError as error:
        raise DetrDeployError(f"checkpoint {source}: its HGNetv2 backbone is not one ours builds ({error})") from None


def from_transformers(backbone_config: Mapping, source: str) -> HGNetV2Config:
    """An ``hgnet_v2`` ``backbone_config`` (transformers' HGNetV2Config fields, its defaults where absent) as ours;
    settings ours cannot compute are refused."""
    from transformers import HGNetV2Config as TransformersHGNetV2Config  # only for its defaults

    defaults = TransformersHGNetV2Config().to_dict()

    def value(name: str):
        given = backbone_config.get(name)
        return defaults[name] if given is None else given

    for name, expected in (("hidden_act", "relu"), ("stem_strides", [2, 1, 1, 2, 1])):
        given = value(name)
        if (list(given) if isinstance(expected, list) else given) != expected:
            raise DetrDeployError(
                f"checkpoint {source}: backbone_config {name} {given!r} is not the official HGNetv2's "
                f"({expected!r}); this checkpoint cannot be exported"
            )
    if any(stride != 2 for stride in value("stage_downsample_strides")):
        raise DetrDeployError(
            f"checkpoint {source}: backbone_config stage_downsample_strides {value('stage_downsample_strides')} "
            "(the official HGNetv2 downsamples by 2)"
        )
    columns = zip(
        value("stage_in_channels"),
        value("stage_mid_channels"),
        value("stage_out_channels"),
        value("stage_num_blocks"),
        value("stage_downsample"),
        value("stage_light_block"),
        value("stage_kernel_size"),
        value("stage_numb_of_layers"),
        strict=True,
    )
    out_features = value("out_features")
    out_stages = tuple(int(name.removeprefix("stage")) for name in out_features)
    try:
        return HGNetV2Config(
            "custom",
            tuple(value("stem_channels")),
            tuple(HGNetV2StageConfig(*row) for row in columns),
            bool(value("use_learnable_affine_block")),
            out_stages,
        )
    except (ValueError, TypeError) as error:
        raise DetrDeployError(f"checkpoint {source}: backbone_config is not an HGNetv2 ours builds ({error})") from None


def transformers_state(state: Mapping[str, torch.Tensor], prefix: str, new_prefix: str) -> dict[str, torch.Tensor]:
    """``state`` with transformers' HGNetV2Backbone tensors under ``prefix`` renamed to the official names under
    ``new_prefix``; other tensors kept as they are."""
    inner = {key.removeprefix(prefix): tensor for key, tensor in state.items() if key.startswith(prefix)}
    renamed = {key: tensor for key, tensor in state.items() if not key.startswith(prefix)}
    renamed.update({new_prefix + key: tensor for key, tensor in transformers_to_official_keys(inner).items()})
    return renamed
