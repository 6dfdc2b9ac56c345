"""Checkpoints of the official code: facebookresearch/detr and fundamentalvision/Deformable-DETR ``main.py``.

Their files are ``{'model': state_dict, 'args': argparse.Namespace, 'optimizer': ..., 'epoch': ...}`` (releases
drop all but ``model``, DETR's also ``args``), or a bare state dict. Our zoo modules use the official key layout,
so nothing is renamed; the architecture comes from the training ``args`` where the file has them (they are what
``main.py`` built the model from) and from tensor shapes and key counts otherwise. Class counts always come from
the class head's shape: ``main.py`` derives them from ``dataset_file`` (91 for coco, 250 for coco_panoptic, 20
otherwise), and users edit that line for their own data.
"""

import argparse
from collections.abc import Mapping
from pathlib import Path

import torch

from detr_deploy.checkpoints.checkpoint import SOURCE_OFFICIAL, Checkpoint, integer_ratio
from detr_deploy.checkpoints.keymap import count_indices
from detr_deploy.errors import DetrDeployError
from detr_deploy.models.backbone import BackboneConfig
from detr_deploy.models.deformable_detr import DeformableDETRConfig
from detr_deploy.models.detr import DETRConfig

# Counters of trainable batch norm that FrozenBatchNorm2d has no use for.
_IGNORED_SUFFIXES = (".num_batches_tracked",)
# ResNets the official code builds with a bottleneck (``args.backbone``) and their blocks per stage.
_RESNETS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3), "resnet152": (3, 8, 36, 3)}
_DEFAULT_HEADS = 8


def is_official(state: Mapping[str, torch.Tensor]) -> bool:
    """The official layout: the backbone under ``backbone.0.body.`` (DETR, Deformable DETR) or ``detr.backbone.0``
    (DETR-panoptic)."""
    return any(key.startswith(("backbone.0.body.", "detr.backbone.0.body.")) for key in state)


def split_official(content) -> tuple[Mapping[str, torch.Tensor], argparse.Namespace]:
    """(state dict, training args or None) of a loaded official file."""
    if isinstance(content, Mapping) and isinstance(content.get("model"), Mapping):
        args = content.get("args")
        return content["model"], args if isinstance(args, argparse.Namespace) else None
    return content, None


def read_official(path: Path, content, sha256: str, model_config=None) -> Checkpoint:
    """Read a loaded official file. ``model_config`` (from ``--model``, or recorded in an export) settles what the
    file cannot tell without its training args: DETR's dilation (DC5), the number of heads, two-stage's query count.
    Raises DetrDeployError when the architecture cannot be known."""
    raw_state, args = split_official(content)
    state = {key: value for key, value in raw_state.items() if not key.endswith(_IGNORED_SUFFIXES)}
    read_from = ["format: official code (facebookresearch/detr or fundamentalvision/Deformable-DETR)"]
    read_from.append("architecture: training args in the file" if args is not None else "architecture: tensor shapes")
    try:
        if "transformer.level_embed" in state:
            config = _deformable_config(state, args, path, read_from, model_config)
        else:
            config = _detr_config(state, args, path, read_from, model_config)
    except KeyError as error:
        raise DetrDeployError(
            f"checkpoint {path.name} has no tensor {error.args[0]}, which every official checkpoint of its family "
            "has: is the file complete?"
        ) from None
    return Checkpoint(path, SOURCE_OFFICIAL, config, state, sha256, class_names=None, read_from=tuple(read_from))


def _arg(args, name: str, default=None):
    return getattr(args, name, default) if args is not None else default


def _heads(args, model_config, read_from: list) -> int:
    """Attention heads: no tensor shape holds them (q/k/v are [C, C] whatever the split)."""
    if _arg(args, "nheads") is not None:
        read_from.append("heads: training args")
        return args.nheads
    if model_config is not None:
        read_from.append("heads: from --model")
        return model_config.num_heads
    read_from.append(f"heads: {_DEFAULT_HEADS} (the official default; not in the tensors)")
    return _DEFAULT_HEADS


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


def _check_backbone_arg(args, backbone: BackboneConfig, source: str) -> None:
    name = _arg(args, "backbone")
    if name is not None and _RESNETS.get(name) not in (None, backbone.blocks_per_stage):
        raise DetrDeployError(
            f"checkpoint {source}: its args name backbone {name!r} but its tensors are another ResNet"
        )
    if name is not None and name not in _RESNETS:
        raise DetrDeployError(f"checkpoint {source}: backbone {name!r} is not supported (ResNet-50/101/152 are)")


def _detr_config(state, args, path: Path, read_from: list, model_config) -> DETRConfig:
    panoptic = any(key.startswith("detr.") for key in state)
    prefix = "detr." if panoptic else ""
    if _arg(args, "pre_norm", False):
        raise DetrDeployError(
            f"checkpoint {path.name} was trained with --pre_norm; only the released post-norm DETR is supported"
        )
    if f"{prefix}transformer.encoder.layers.0.self_attn.in_proj_weight" not in state:
        raise DetrDeployError(f"checkpoint {path.name} has the official backbone but no DETR transformer")
    dilation = _arg(args, "dilation")
    if dilation is None and model_config is not None:
        dilation = model_config.backbone.dilate_last_stage
        read_from.append("dilation (DC5): from --model")
    elif dilation is None:
        raise DetrDeployError(
            f"checkpoint {path.name} is an official DETR without its training args, and DETR with and without a "
            "dilated C5 (DC5) have identical tensors: say which with --model (e.g. detr_r50 or detr_r50_dc5)"
        )
    else:
        read_from.append("dilation (DC5): training args")
    backbone = backbone_config(state, f"{prefix}backbone.0.body.", bool(dilation), path.name)
    _check_backbone_arg(args, backbone, path.name)
    hidden_dim = state[f"{prefix}query_embed.weight"].shape[1]
    config = DETRConfig(
        num_classes=state[f"{prefix}class_embed.weight"].shape[0] - 1,
        num_queries=state[f"{prefix}query_embed.weight"].shape[0],
        hidden_dim=hidden_dim,
        num_heads=_heads(args, model_config, read_from),
        num_encoder_layers=count_indices(state, rf"{prefix}transformer\.encoder\.layers\.(\d+)\."),
        num_decoder_layers=count_indices(state, rf"{prefix}transformer\.decoder\.layers\.(\d+)\."),
        dim_feedforward=state[f"{prefix}transformer.encoder.layers.0.linear1.weight"].shape[0],
        backbone=backbone,
        panoptic=panoptic,
    )
    read_from.append("classes, queries, layers, widths: tensor shapes and key counts")
    return config


def _deformable_config(state, args, path: Path, read_from: list, model_config) -> DeformableDETRConfig:
    if _arg(args, "masks", False):
        raise DetrDeployError(f"checkpoint {path.name}: Deformable DETR with --masks (segmentation) is not supported")
    two_stage = "transformer.enc_output.weight" in state
    refine = "transformer.decoder.bbox_embed.0.layers.0.weight" in state
    levels = count_indices(state, r"input_proj\.(\d+)\.")
    heads = _heads(args, model_config, read_from)
    per_point = levels * heads
    enc_points = integer_ratio(
        state["transformer.encoder.layers.0.self_attn.attention_weights.weight"].shape[0],
        per_point,
        "points",
        path.name,
    )
    dec_points = integer_ratio(
        state["transformer.decoder.layers.0.cross_attn.attention_weights.weight"].shape[0],
        per_point,
        "points",
        path.name,
    )
    if two_stage:
        # Two-stage queries are the top encoder proposals: their count is in the args, not in any tensor.
        if _arg(args, "num_queries") is not None:
            queries, origin = args.num_queries, "training args"
        elif model_config is not None:
            queries, origin = model_config.num_queries, "from --model"
        else:
            queries, origin = 300, "the official default; not in the tensors"
        read_from.append(f"queries: {queries} ({origin})")
    else:
        queries = state["query_embed.weight"].shape[0]
    if _arg(args, "dilation") is not None:
        dilation, origin = bool(args.dilation), "training args"
    elif model_config is not None:
        dilation, origin = model_config.backbone.dilate_last_stage, "from --model"
    else:
        dilation, origin = False, "none assumed (no Deformable DC5 release)"
    read_from.append(f"dilation (DC5): {origin}")
    backbone = backbone_config(state, "backbone.0.body.", dilation, path.name)
    _check_backbone_arg(args, backbone, path.name)
    config = DeformableDETRConfig(
        num_classes=state["class_embed.0.weight"].shape[0],
        num_queries=queries,
        hidden_dim=state["transformer.level_embed"].shape[1],
        num_heads=heads,
        num_encoder_layers=count_indices(state, r"transformer\.encoder\.layers\.(\d+)\."),
        num_decoder_layers=count_indices(state, r"transformer\.decoder\.layers\.(\d+)\."),
        dim_feedforward=state["transformer.encoder.layers.0.linear1.weight"].shape[0],
        num_feature_levels=levels,
        enc_n_points=enc_points,
        dec_n_points=dec_points,
        with_box_refine=refine,
        two_stage=two_stage,
        backbone=backbone,
    )
    read_from.append("classes, layers, widths, levels, points: tensor shapes and key counts")
    return config
