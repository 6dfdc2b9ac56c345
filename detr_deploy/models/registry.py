"""A flat registry of named model variants. Registering a name twice is refused."""

import dataclasses
from dataclasses import dataclass
from typing import Union

import torch
from torch import nn

from detr_deploy.errors import DetrDeployError
from detr_deploy.models.deformable_detr import DeformableDETR, DeformableDETRConfig
from detr_deploy.models.detr import DETR, DETRConfig
from detr_deploy.models.segmentation import DETRPanoptic

ModelConfig = Union[DETRConfig, DeformableDETRConfig]


def _build_detr(config: DETRConfig) -> nn.Module:
    """DETR, wrapped in the panoptic head when the config says so (the official DETRsegm layout, ``detr.*``)."""
    detr = DETR(config)
    return DETRPanoptic(detr) if config.panoptic else detr


_BUILDERS = {DETRConfig: _build_detr, DeformableDETRConfig: DeformableDETR}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    config: ModelConfig
    description: str = ""


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, config: ModelConfig, description: str = "") -> ModelSpec:
    """Add a named variant. A name that is already taken is a programming error (ValueError)."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    if type(config) not in _BUILDERS:
        raise TypeError(f"no builder for config type {type(config).__name__}")
    spec = ModelSpec(name, config, description)
    _REGISTRY[name] = spec
    return spec


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_model_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise DetrDeployError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


def build_model(config: ModelConfig, seed: int = None) -> nn.Module:
    """Build a model in eval mode. With ``seed``, its random weights are reproducible (export demo, parity)."""
    if seed is not None:
        # A private generator stream so building does not disturb the caller's global RNG state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _BUILDERS[type(config)](config)
    else:
        model = _BUILDERS[type(config)](config)
    return model.eval()


def backbone_depth(config: ModelConfig) -> int:
    """ResNet depth from blocks per stage (3 layers per bottleneck, plus stem and classifier): 50, 101, ..."""
    return 3 * sum(config.backbone.blocks_per_stage) + 2


def architecture_name(config: ModelConfig) -> str:
    """The zoo-style name of an architecture, whatever its sizes: ``detr_r50_dc5``, ``deformable_detr_r50_refine``.

    A fine-tuned model keeps the name of the architecture it was fine-tuned from; class and query counts, layers
    and widths are in the config (and in the export's ``detr_deploy.config``)."""
    name = f"{config.family}_r{backbone_depth(config)}"
    if config.backbone.dilate_last_stage:
        name += "_dc5"
    if getattr(config, "panoptic", False):
        name += "_panoptic"
    if getattr(config, "two_stage", False):
        name += "_two_stage"
    elif getattr(config, "with_box_refine", False):
        name += "_refine"
    return name


def describe_config(config: ModelConfig) -> str:
    """One line for people: 'Deformable DETR (box refinement), ResNet-50, 20 classes, 300 queries, ...'."""
    family = {"detr": "DETR", "deformable_detr": "Deformable DETR"}[config.family]
    variants = [
        label
        for flag, label in (
            ("panoptic", "panoptic"),
            ("with_box_refine", "box refinement"),
            ("two_stage", "two-stage"),
        )
        if getattr(config, flag, False)
    ]
    backbone = f"ResNet-{backbone_depth(config)}" + (" DC5" if config.backbone.dilate_last_stage else "")
    parts = [
        family + (f" ({', '.join(variants)})" if variants else ""),
        backbone,
        f"{config.num_classes} classes",
        f"{config.num_queries} queries",
        f"{config.num_encoder_layers}+{config.num_decoder_layers} layers",
        f"width {config.hidden_dim}",
        f"{config.num_heads} heads",
        f"FFN {config.dim_feedforward}",
    ]
    if config.family == "deformable_detr":
        parts.append(f"{config.num_feature_levels} levels, {config.enc_n_points}/{config.dec_n_points} points")
    return ", ".join(parts)


def config_to_dict(config: ModelConfig) -> dict:
    """A JSON-ready dict (``family`` plus every field) that ``config_from_dict`` reads back."""
    return {"family": config.family, **dataclasses.asdict(config)}


def config_from_dict(data: dict) -> ModelConfig:
    """Inverse of ``config_to_dict``; raises DetrDeployError for a family or field this version does not know."""
    from detr_deploy.models.backbone import BackboneConfig

    data = dict(data)
    family = data.pop("family", None)
    config_type = next((t for t in _BUILDERS if t.family == family), None)
    try:
        backbone = BackboneConfig(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in data.pop("backbone").items()}
        )
        return config_type(backbone=backbone, **data)
    except (TypeError, KeyError, AttributeError) as error:
        raise DetrDeployError(f"model config {family!r} is not one this version reads ({error})") from None
