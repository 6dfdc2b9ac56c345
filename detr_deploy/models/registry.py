"""A flat registry of named model variants. Registering a name twice is refused."""

import dataclasses
from dataclasses import dataclass
from typing import Union

import torch
from torch import nn

from detr_deploy.errors import DetrDeployError
from detr_deploy.models.deformable_detr import DeformableDETR, DeformableDETRConfig
from detr_deploy.models.detr import DETR, DETRConfig
from detr_deploy.models.dino import DINO, DINOConfig
from detr_deploy.models.rtdetr import RTDETR, RTDETRConfig
from detr_deploy.models.segmentation import DETRPanoptic

ModelConfig = Union[DETRConfig, DeformableDETRConfig, RTDETRConfig, DINOConfig]


def _build_detr(config: DETRConfig) -> nn.Module:
    """DETR, wrapped in the panoptic head when the config says so (the official DETRsegm layout, ``detr.*``)."""
    detr = DETR(config)
    return DETRPanoptic(detr) if config.panoptic else detr


_BUILDERS = {DETRConfig: _build_detr, DeformableDETRConfig: DeformableDETR, RTDETRConfig: RTDETR, DINOConfig: DINO}


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
            _calibrate_batch_norms(model, config)
    else:
        model = _BUILDERS[type(config)](config)
    return model.eval()


def _calibrate_batch_norms(model: nn.Module, config: ModelConfig) -> None:
    """Give trainable BatchNorms (RT-DETR's encoder and decoder) the statistics of a few random images, as training
    would. With their initial statistics (mean 0, variance 1) random weights shrink the features through each layer
    until the encoder's selection scores of all tokens agree to ~1e-6, and a top-k over near-ties is not
    reproducible from one backend to another. Models without such layers are left as built."""
    norms = [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]
    if not norms:
        return
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the calibration batches
    model.train()
    side = 8 * config.size_divisor
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(2, 3, side, side))
    for norm in norms:
        norm.momentum = 0.1
    model.eval()


def backbone_depth(config: ModelConfig) -> int:
    """ResNet depth from blocks per stage (3 layers per bottleneck, plus stem and classifier): 18, 50, 101, ..."""
    depth = getattr(config.backbone, "depth", None)
    return depth if depth is not None else 3 * sum(config.backbone.blocks_per_stage) + 2


def selection_tokens(config: ModelConfig, height: int, width: int) -> int:
    """How many encoder tokens a ``height`` x ``width`` input gives a model that selects its queries from them (a
    top-k: two-stage Deformable DETR, RT-DETR, DINO); None for models with learned queries."""
    if not config.query_order_is_ranked:
        return None
    if config.family == "rtdetr":
        strides = (8, 16, 32)
    else:  # Deformable DETR and DINO: strides 8.. (DINO-5scale 4..), one level per stride doubling
        first = 4 if config.num_feature_levels == 5 else 8
        strides = tuple(first * 2**level for level in range(config.num_feature_levels))
    return sum(-(-height // stride) * -(-width // stride) for stride in strides)


_FAMILY_LABELS = {"detr": "DETR", "deformable_detr": "Deformable DETR", "rtdetr": "RT-DETR", "dino": "DINO"}


def architecture_name(config: ModelConfig) -> str:
    """The zoo-style name of an architecture, whatever its sizes: ``detr_r50_dc5``, ``deformable_detr_r50_refine``.

    A fine-tuned model keeps the name of the architecture it was fine-tuned from; class and query counts, layers
    and widths are in the config (and in the export's ``detr_deploy.config``)."""
    if config.family == "rtdetr":
        name = f"rtdetr{'v2' if config.version == 2 else ''}_r{backbone_depth(config)}vd"
        return name + ("_discrete" if config.sampling_method == "discrete" else "")
    if config.family == "dino":
        return f"dino_{config.num_feature_levels}scale_r{backbone_depth(config)}"
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
    family = _FAMILY_LABELS[config.family]
    if config.family == "rtdetr":
        family = f"RT-DETR v{config.version}" + (" (discrete sampling)" if config.sampling_method == "discrete" else "")
    variants = [
        label
        for flag, label in (
            ("panoptic", "panoptic"),
            ("with_box_refine", "box refinement"),
            ("two_stage", "two-stage"),
        )
        if getattr(config, flag, False)
    ]
    backbone = f"ResNet-{backbone_depth(config)}" + (
        " DC5" if getattr(config.backbone, "dilate_last_stage", False) else ""
    )
    if config.family == "rtdetr":
        backbone += "-vd"
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
    if config.family in ("deformable_detr", "dino"):
        parts.append(f"{config.num_feature_levels} levels, {config.enc_n_points}/{config.dec_n_points} points")
    elif config.family == "rtdetr":
        points = "/".join(map(str, config.dec_n_points))
        parts.append(f"{config.num_feature_levels} levels, {points} decoder points")
    return ", ".join(parts)


def config_to_dict(config: ModelConfig) -> dict:
    """A JSON-ready dict (``family`` plus every field) that ``config_from_dict`` reads back."""
    return {"family": config.family, **dataclasses.asdict(config)}


def config_from_dict(data: dict) -> ModelConfig:
    """Inverse of ``config_to_dict``; raises DetrDeployError for a family or field this version does not know."""
    data = dict(data)
    family = data.pop("family", None)
    config_type = next((t for t in _BUILDERS if t.family == family), None)
    try:
        backbone_type = next(f for f in dataclasses.fields(config_type) if f.name == "backbone").default_factory
        backbone = backbone_type(**{k: _tuples(v) for k, v in data.pop("backbone").items()})
        return config_type(backbone=backbone, **{k: _tuples(v) for k, v in data.items()})
    except (TypeError, KeyError, AttributeError) as error:
        raise DetrDeployError(f"model config {family!r} is not one this version reads ({error})") from None


def _tuples(value):
    """JSON lists back to the tuples the frozen configs hold."""
    return tuple(value) if isinstance(value, list) else value
