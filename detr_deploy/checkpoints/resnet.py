"""The torchvision-layout ResNet (bottleneck ResNet-50/101/152, FrozenBatchNorm) that DETR, Deformable DETR and
DINO share, as every format holds it: the official code's ``backbone.0.body.`` (torchvision's names), mmdetection's
``backbone.`` (the same names, with its own config to check), and transformers' timm ResNet (torchvision's names) or
its own ResNet (``embedder``/``encoder.stages``, renamed here), described by config.json."""

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from detr_deploy.checkpoints.formats.mmdetection import config_value
from detr_deploy.checkpoints.formats.transformers import check_size
from detr_deploy.checkpoints.keymap import count_indices, rename_keys
from detr_deploy.errors import DetrDeployError
from detr_deploy.models.backbone import BackboneConfig

# torchvision's bottleneck ResNets by name (the official code's ``args.backbone``) and their blocks per stage.
TORCHVISION_RESNETS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3), "resnet152": (3, 8, 36, 3)}
# timm ResNets with torchvision's layout (7x7 stem, stride on the 3x3 convolution).
_TIMM_RESNET_NAME = re.compile(r"(?:timm/)?(?:tv_)?resnet(\d+)(?:\.[\w-]+)?")


def backbone_config(state: Mapping[str, torch.Tensor], prefix: str, dilation: bool, source: str) -> BackboneConfig:
    """The ResNet of a torchvision-named backbone under ``prefix`` (blocks counted, stem width read)."""
    blocks = tuple(count_indices(state, rf"{prefix}layer{stage}\.(\d+)\.") for stage in range(1, 5))
    if f"{prefix}layer1.0.conv3.weight" not in state or not all(blocks):
        raise DetrDeployError(
            f"checkpoint {source}: its backbone is not a bottleneck ResNet (ResNet-50/101/152); "
            "ResNet-18/34 backbones are not supported"
        )
    return BackboneConfig(
        blocks_per_stage=blocks, base_width=state[f"{prefix}conv1.weight"].shape[0], dilate_last_stage=dilation
    )


def check_resnet_name(name, backbone: BackboneConfig, source: str, known: Mapping = TORCHVISION_RESNETS) -> None:
    """The backbone the training args name (None: not named) is one of ``known`` and the one the tensors hold."""
    if name is not None and known.get(name) not in (None, backbone.blocks_per_stage):
        raise DetrDeployError(
            f"checkpoint {source}: its args name backbone {name!r} but its tensors are another ResNet"
        )
    if name is not None and name not in known:
        raise DetrDeployError(f"checkpoint {source}: backbone {name!r} is not supported (ResNet-50/101/152 are)")


# --- mmdetection -------------------------------------------------------------------------------------------------


def check_mmdetection_resnet(state: Mapping, model_cfg, source: str) -> None:
    """Refuse ResNet variants whose computation differs from torchvision's (the zoo's) ResNet."""
    backbone_keys = [key for key in state if key.startswith("backbone.")]
    if "backbone.conv1.weight" not in state or not any(key.startswith("backbone.layer1.") for key in state):
        found = f" (it has {', '.join(backbone_keys[:2])})" if backbone_keys else ""
        raise DetrDeployError(
            f"checkpoint {source}: its backbone is not a ResNet{found}; only ResNet-50/101/152 backbones are supported"
        )
    for marker, what in (
        ("backbone.stem.", "a deep stem (ResNetV1c/V1d)"),
        (".downsample.2.", "average-pool downsampling (ResNetV1d, avg_down)"),
        (".conv_offset.", "deformable convolutions (DCN)"),
    ):
        if any(marker in key for key in backbone_keys):
            raise DetrDeployError(
                f"checkpoint {source}: its ResNet has {what}; only torchvision-style ResNets are supported"
            )
    if "backbone.layer1.0.conv1.weight" in state:
        stem, stage = state["backbone.conv1.weight"].shape[0], state["backbone.layer1.0.conv1.weight"].shape[0]
        if stem != stage:
            raise DetrDeployError(
                f"checkpoint {source}: its ResNet stem is {stem} wide but its first stage {stage} (stem_channels "
                "differs from base_channels); the zoo's ResNet has one width for both"
            )
    cfg = config_value(model_cfg, "backbone", {})
    if not cfg:
        return
    kind, style = config_value(cfg, "type", "ResNet"), config_value(cfg, "style", "pytorch")
    if kind != "ResNet":
        raise DetrDeployError(
            f"checkpoint {source}: its backbone is mmdetection's {kind!r}; only 'ResNet' is supported"
        )
    if style != "pytorch":
        raise DetrDeployError(
            f"checkpoint {source}: its ResNet has style {style!r} (stride on the 1x1 convolution); "
            "only style 'pytorch' (torchvision's) is supported"
        )
    dilations = config_value(cfg, "dilations")
    if isinstance(dilations, list) and any(value != 1 for value in dilations):
        # mmdetection dilates every block of a dilated stage, torchvision (and so the zoo's DC5) all but its first.
        raise DetrDeployError(
            f"checkpoint {source}: its ResNet is dilated (dilations={tuple(dilations)}); mmdetection dilates every "
            "block of that stage where torchvision's DC5 (the zoo's) leaves the first one undilated: not supported"
        )
    strides = config_value(cfg, "strides")
    if isinstance(strides, list) and list(strides) != [1, 2, 2, 2]:
        raise DetrDeployError(
            f"checkpoint {source}: its ResNet has strides {tuple(strides)}; only (1, 2, 2, 2) is supported"
        )


# --- transformers ------------------------------------------------------------------------------------------------

# transformers' own ResNet (under backbone.0.body. once renamed) -> torchvision's names.
_BODY = r"((?:detr\.)?backbone\.0\.body\.)"
HF_RESNET_RULES = [
    (rf"{_BODY}embedder\.embedder\.convolution\.weight", r"\1conv1.weight"),
    (rf"{_BODY}embedder\.embedder\.normalization\.(\w+)", r"\1bn1.\2"),
] + [
    rule
    for stage in range(4)
    for rule in (
        (
            rf"{_BODY}encoder\.stages\.{stage}\.layers\.(\d+)\.shortcut\.convolution\.weight",
            rf"\g<1>layer{stage + 1}.\2.downsample.0.weight",
        ),
        (
            rf"{_BODY}encoder\.stages\.{stage}\.layers\.(\d+)\.shortcut\.normalization\.(\w+)",
            rf"\g<1>layer{stage + 1}.\2.downsample.1.\3",
        ),
        *(
            (
                rf"{_BODY}encoder\.stages\.{stage}\.layers\.(\d+)\.layer\.{conv}\.convolution\.weight",
                rf"\g<1>layer{stage + 1}.\2.conv{conv + 1}.weight",
            )
            for conv in range(3)
        ),
        *(
            (
                rf"{_BODY}encoder\.stages\.{stage}\.layers\.(\d+)\.layer\.{conv}\.normalization\.(\w+)",
                rf"\g<1>layer{stage + 1}.\2.bn{conv + 1}.\3",
            )
            for conv in range(3)
        ),
    )
]


@dataclass(frozen=True)
class TransformersBackbone:
    """What config.json says of the backbone: ``layout`` "timm" or "hf", the ResNet's blocks per stage where the
    config tells them, dilation (DC5), and the stages (1..4) it returns, where the config tells them."""

    layout: str
    description: str
    blocks: tuple[int, ...] = None
    dilation: bool = False
    out_stages: tuple[int, ...] = None


def transformers_backbone(config: dict, values) -> TransformersBackbone:
    """The backbone config.json describes: 5.x's ``backbone_config`` (``timm_backbone`` or ``resnet``) or 4.x's
    flat ``use_timm_backbone`` / ``backbone`` / ``dilation`` / ``backbone_kwargs``."""
    nested = config.get("backbone_config")
    kwargs = config.get("backbone_kwargs") or {}
    if isinstance(nested, dict) and nested.get("model_type") == "timm_backbone":
        return _timm_backbone(
            nested.get("backbone") or "resnet50", nested.get("out_indices"), nested.get("output_stride"), values
        )
    if isinstance(nested, dict):
        return _hf_backbone(nested, values)
    if nested is not None:
        raise values.unsupported(f"a backbone_config of type {type(nested).__name__}")
    if values["use_timm_backbone"]:
        stride = kwargs.get("output_stride", 16 if values["dilation"] else None)
        return _timm_backbone(str(values["backbone"]), kwargs.get("out_indices"), stride, values)
    # use_timm_backbone false with a backbone name: transformers' AutoBackbone of that name; the tensors tell more.
    name = str(values["backbone"])
    if "resnet" not in name.lower():
        raise values.unsupported(f"backbone {name!r} (only ResNet-50/101/152)")
    return TransformersBackbone("hf", f"HF ResNet layout ({name})", out_stages=_stages(kwargs.get("out_indices")))


def _stages(out_indices) -> tuple[int, ...]:
    return None if out_indices is None else tuple(int(index) for index in out_indices)


def _timm_backbone(name: str, out_indices, output_stride, values) -> TransformersBackbone:
    match = _TIMM_RESNET_NAME.fullmatch(name)
    if not match or f"resnet{match[1]}" not in TORCHVISION_RESNETS:
        raise values.unsupported(f"timm backbone {name!r} (only resnet50, resnet101 and resnet152)")
    if output_stride not in (None, 16, 32):
        raise values.unsupported(f"a timm backbone with output_stride {output_stride} (only 32, or 16 for DC5)")
    return TransformersBackbone(
        "timm",
        f"timm {name} layout (torchvision names)",
        blocks=TORCHVISION_RESNETS[f"resnet{match[1]}"],
        dilation=output_stride == 16,
        out_stages=_stages(out_indices),
    )


def _hf_backbone(nested: dict, values) -> TransformersBackbone:
    """transformers' ResNet (``backbone_config.model_type`` "resnet"): torchvision-shaped only when it is a v1.5
    bottleneck ResNet whose stem is a quarter of the first stage's output and whose stages double in width."""
    kind = nested.get("model_type")
    if kind != "resnet":
        raise values.unsupported(f"backbone {kind!r} (only ResNet-50/101/152 backbones)")
    if nested.get("layer_type", "bottleneck") != "bottleneck":
        raise values.unsupported(f"a ResNet with layer_type {nested.get('layer_type')!r} (only 'bottleneck')")
    if nested.get("hidden_act", "relu") != "relu":
        raise values.unsupported(f"a ResNet with hidden_act {nested.get('hidden_act')!r} (only 'relu')")
    for flag in ("downsample_in_first_stage", "downsample_in_bottleneck"):
        if nested.get(flag):
            raise values.unsupported(f"a ResNet with {flag} true (only torchvision's ResNet v1.5)")
    sizes = list(nested.get("hidden_sizes") or [256, 512, 1024, 2048])
    stem = nested.get("embedding_size", 64)
    if len(sizes) != 4 or sizes != [sizes[0] * 2**stage for stage in range(4)] or stem * 4 != sizes[0]:
        raise values.unsupported(
            f"a ResNet with embedding_size {stem} and hidden_sizes {sizes} (torchvision's shape needs four stages "
            "doubling in width and embedding_size = hidden_sizes[0] / 4)"
        )
    out = nested.get("out_features")
    stages = tuple(int(name.removeprefix("stage")) for name in out) if out else _stages(nested.get("out_indices"))
    depths = tuple(nested.get("depths") or (3, 4, 6, 3))
    # transformers dilates only timm backbones (its ResNet has no dilation): a "dilation" flag here changes nothing.
    ignored = (
        " (config.json's dilation is ignored: transformers dilates timm backbones only)" if values["dilation"] else ""
    )
    return TransformersBackbone("hf", f"HF ResNet layout{ignored}", blocks=depths, dilation=False, out_stages=stages)


def check_transformers_backbone_layout(
    state: Mapping, backbone: TransformersBackbone, prefix: str, source: str
) -> None:
    """The weights under ``prefix`` (before the HF ResNet renaming) are the backbone config.json describes:
    transformers would not load them otherwise."""
    if f"{prefix}embedder.embedder.convolution.weight" in state:
        found = "hf"
    elif f"{prefix}conv1.weight" in state:
        found = "timm"
    else:
        raise DetrDeployError(
            f"checkpoint {source} has no ResNet stem (model.backbone...conv1 or ...embedder tensors); is the file "
            "complete, and is its backbone a ResNet?"
        )
    if found != backbone.layout:
        names = {"hf": "transformers' own ResNet", "timm": "a timm ResNet"}
        raise DetrDeployError(
            f"checkpoint {source}: config.json describes {names[backbone.layout]} backbone but the weights hold "
            f"{names[found]}; the directory mixes files of two models"
        )
    if backbone.blocks is not None:
        counted = rename_keys({key: None for key in state if key.startswith(prefix)}, HF_RESNET_RULES)
        blocks = tuple(count_indices(counted, rf"{re.escape(prefix)}layer{stage}\.(\d+)\.") for stage in range(1, 5))
        check_size(source, "blocks per ResNet stage", list(backbone.blocks), list(blocks))


def torchvision_named(state: dict, backbone: TransformersBackbone, prefix: str, source: str) -> dict:
    """``state`` (its backbone under ``prefix``, as transformers named it) with the ResNet in torchvision's names,
    once checked to be the backbone config.json describes."""
    check_transformers_backbone_layout(state, backbone, prefix, source)
    return rename_keys(state, HF_RESNET_RULES)
