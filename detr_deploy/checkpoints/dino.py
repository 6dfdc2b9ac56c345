"""DINO checkpoints: the official code (IDEA-Research/DINO ``main.py``) and mmdetection 3.x.

The official files are ``{'model': state_dict, 'args': argparse.Namespace, 'optimizer': ..., 'ema_model': ...}``
(or a bare state dict). The zoo's DINO uses the official key layout, so reading drops only what training uses
(``label_enc``, the denoising label embedding) and batch-norm counters. The architecture comes from the training
``args`` where the file has them and from tensor shapes and key counts otherwise; ``args`` also name the variants
the zoo does not build (other backbones, ``two_stage_type``, ``decoder_sa_type``, ...), which are refused.

mmdetection 3.x (``mmdet/models/detectors/dino.py``, ``layers/transformer/dino_layers.py``,
``dense_heads/dino_head.py``) holds the same tensors under Deformable DETR's 3.x names plus ``query_embedding``
(the content queries, ``tgt_embed``), ``decoder.ref_point_head``, ``decoder.norm`` and one more class/box branch
than decoder layers (the last scores encoder proposals: ``enc_out_class_embed`` / ``enc_out_bbox_embed``). Its
numbers differ from the official code in one place the config records: the head's inverse sigmoid uses eps 1e-5
(official 1e-3). Position-encoding settings come from the config text in ``meta`` (parsed, never run).
"""

import argparse
import math
from collections.abc import Mapping
from pathlib import Path

import torch

from detr_deploy.checkpoints import mmdetection as mm
from detr_deploy.checkpoints.checkpoint import (
    SOURCE_MMDET3,
    SOURCE_OFFICIAL,
    Checkpoint,
    check_state_dict,
    integer_ratio,
)
from detr_deploy.checkpoints.keymap import count_indices, rename_keys
from detr_deploy.checkpoints.official import backbone_config, split_official
from detr_deploy.errors import DetrDeployError
from detr_deploy.models.dino import BACKBONE_STAGES, DINO, DINOConfig

_DEFAULT_HEADS = 8
# The official position encoding (``pe_temperatureH/W`` of the released configs) and mmdetection's DINO configs.
_DINO_TEMPERATURE = 20
# mmdetection's SinePositionalEncoding defaults, for a config that names the encoding without these.
_MMDET_POSITION_DEFAULTS = dict(temperature=10000, offset=0.0)
_MMDET_BOX_EPS = 1e-5
_IGNORED_SUFFIXES = (".num_batches_tracked",)
# Training-only tensors of the official model: the denoising label embedding.
_OFFICIAL_TRAINING_ONLY = ("label_enc.",)
_OFFICIAL_RESNETS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}
_OTHER_BACKBONES = (
    ("backbone.0.patch_embed.", "Swin Transformer"),
    ("backbone.0.layers.", "Swin Transformer"),
    ("backbone.0.downsample_layers.", "ConvNeXt"),
    ("backbone.0.stages.", "ConvNeXt"),
)
# Official args the zoo's DINO is built with (their values in the released configs); another value is a variant the
# zoo does not build. An arg the file lacks counts as its released value.
_OFFICIAL_FIXED_ARGS = {
    "modelname": "dino",
    "two_stage_type": "standard",
    "decoder_sa_type": "sa",
    "decoder_module_seq": ["sa", "ca", "ffn"],
    "transformer_activation": "relu",
    "query_dim": 4,
    "num_patterns": 0,
    "two_stage_pat_embed": 0,
    "two_stage_add_query_num": 0,
    "two_stage_learn_wh": False,
    "embed_init_tgt": True,
    "dec_layer_number": None,
    "add_channel_attention": False,
    "use_deformable_box_attn": False,
    "pre_norm": False,
    "masks": False,
    "unic_layers": 0,
}


def _without_module_prefix(state: Mapping) -> dict:
    return {str(key).removeprefix("module."): value for key, value in state.items()}


def is_official_dino(state: Mapping) -> bool:
    """The official DINO layout: learned content queries and a standard two-stage encoder head under
    ``transformer.``, whatever the backbone (other backbones are recognized so that they can be refused by name)."""
    if not isinstance(state, Mapping):
        return False
    keys = {str(key).removeprefix("module.") for key in state}
    return "transformer.tgt_embed.weight" in keys and any(
        key.startswith("transformer.enc_out_class_embed.") for key in keys
    )


# --- official ----------------------------------------------------------------------------------------------------


def read_official_dino(path, content, sha256: str, model_config=None) -> Checkpoint:
    """Read a loaded official DINO file (``{'model': ..., 'args': ...}`` or a bare state dict). ``model_config``
    (from ``--model``, or recorded in an export) settles what the file cannot tell without its training args: the
    number of heads, the dilation. Raises DetrDeployError for variants the zoo does not build and for tensors that
    do not fit."""
    path = Path(path)
    source = path.name
    if not isinstance(model_config, DINOConfig):
        model_config = None  # another family's --model: read the file alone, the caller refuses the mismatch
    raw_state, args = split_official(content)
    if not isinstance(raw_state, Mapping):
        raise DetrDeployError(f"checkpoint {source} holds no DINO state dict under 'model'")
    state = {
        key: value
        for key, value in _without_module_prefix(raw_state).items()
        if not key.endswith(_IGNORED_SUFFIXES) and not key.startswith(_OFFICIAL_TRAINING_ONLY)
    }
    read_from = ["format: official code (IDEA-Research/DINO)"]
    read_from.append("architecture: training args in the file" if args is not None else "architecture: tensor shapes")
    _refuse_official_variants(state, args, source)
    try:
        config = _official_config(state, args, source, read_from, model_config)
    except KeyError as error:
        raise DetrDeployError(
            f"checkpoint {source} has no tensor {error.args[0]}, which every official DINO checkpoint has: is the "
            "file complete?"
        ) from None
    _check_fits(config, state, source)
    return Checkpoint(path, SOURCE_OFFICIAL, config, state, sha256, class_names=None, read_from=tuple(read_from))


def _arg(args, name: str, default=None):
    return getattr(args, name, default) if args is not None else default


def _refuse_official_variants(state: Mapping, args, source: str) -> None:
    for prefix, name in _OTHER_BACKBONES:
        if any(key.startswith(prefix) for key in state):
            raise DetrDeployError(
                f"checkpoint {source} is a DINO with a {name} backbone, which is not supported: the zoo's DINO has a "
                "ResNet-50/101 backbone"
            )
    name = _arg(args, "backbone")
    if name is not None and name not in _OFFICIAL_RESNETS:
        raise DetrDeployError(
            f"checkpoint {source} is a DINO with backbone {name!r}, which is not supported: the zoo's DINO has a "
            "ResNet-50/101 backbone"
        )
    if args is None:
        return
    for arg, expected in _OFFICIAL_FIXED_ARGS.items():
        value = getattr(args, arg, expected)
        if isinstance(value, tuple):
            value = list(value)
        if value != expected:
            raise DetrDeployError(
                f"checkpoint {source} was trained with {arg}={value!r}; the zoo's DINO is the released one "
                f"({arg}={expected!r})"
            )
    position = _arg(args, "position_embedding", "sine")
    if position not in ("sine", "v2"):
        raise DetrDeployError(
            f"checkpoint {source} was trained with position_embedding={position!r}; only the sine encoding is supported"
        )
    temperatures = (_arg(args, "pe_temperatureH", _DINO_TEMPERATURE), _arg(args, "pe_temperatureW", _DINO_TEMPERATURE))
    if temperatures[0] != temperatures[1]:
        raise DetrDeployError(
            f"checkpoint {source} was trained with pe_temperatureH={temperatures[0]} and pe_temperatureW="
            f"{temperatures[1]}; the zoo's position encoding has one temperature for both axes"
        )


def _official_config(state, args, source: str, read_from: list, model_config) -> DINOConfig:
    levels, hidden_dim = state["transformer.level_embed"].shape
    if levels not in BACKBONE_STAGES:
        raise DetrDeployError(
            f"checkpoint {source} is a DINO with {levels} feature levels; the zoo's DINO has 4 (C3-C5 + one) or 5 "
            "(C2-C5 + one)"
        )
    stages = BACKBONE_STAGES[levels]
    # Backbone stages are projected by 1x1 convolutions, the extra levels by strided 3x3 ones.
    num_projections = count_indices(state, r"input_proj\.(\d+)\.")
    mapped = sum(state[f"input_proj.{level}.0.weight"].shape[-1] == 1 for level in range(num_projections))
    interm = _arg(args, "return_interm_indices")
    expected_interm = [stage - 1 for stage in stages]
    if mapped != len(stages) or (interm is not None and list(interm) != expected_interm):
        found = f"return_interm_indices={list(interm)}" if interm is not None else f"{mapped} projected stages"
        raise DetrDeployError(
            f"checkpoint {source}: its {levels} levels come from {found}; the zoo's DINO with {levels} levels uses "
            f"return_interm_indices={expected_interm} plus one strided level"
        )

    if _arg(args, "nheads") is not None:
        heads = args.nheads
        read_from.append("heads: training args")
    elif model_config is not None:
        heads = model_config.num_heads
        read_from.append("heads: from --model")
    else:
        heads = _DEFAULT_HEADS
        read_from.append(f"heads: {heads} (the official default; not in the tensors)")
    if hidden_dim % heads:
        raise DetrDeployError(f"checkpoint {source}: width {hidden_dim} does not split into {heads} heads")

    if _arg(args, "dilation") is not None:
        dilation, origin = bool(args.dilation), "training args"
    elif model_config is not None:
        dilation, origin = model_config.backbone.dilate_last_stage, "from --model"
    else:
        dilation, origin = False, "none assumed (no DINO DC5 release)"
    read_from.append(f"dilation (DC5): {origin}")
    backbone = backbone_config(state, "backbone.0.body.", dilation, source)
    name = _arg(args, "backbone")
    if name is not None and _OFFICIAL_RESNETS[name] != backbone.blocks_per_stage:
        raise DetrDeployError(
            f"checkpoint {source}: its args name backbone {name!r} but its tensors are another ResNet"
        )

    if args is not None:
        temperature, origin = _arg(args, "pe_temperatureH", _DINO_TEMPERATURE), "training args"
    elif model_config is not None:
        temperature, origin = model_config.position_temperature, "from --model"
    else:
        temperature, origin = _DINO_TEMPERATURE, "the official default; not in the tensors"
    read_from.append(f"position temperature: {temperature} ({origin})")

    per_point = levels * heads
    config = DINOConfig(
        num_classes=state["class_embed.0.weight"].shape[0],
        num_queries=state["transformer.tgt_embed.weight"].shape[0],
        hidden_dim=hidden_dim,
        num_heads=heads,
        num_encoder_layers=count_indices(state, r"transformer\.encoder\.layers\.(\d+)\."),
        num_decoder_layers=count_indices(state, r"transformer\.decoder\.layers\.(\d+)\."),
        dim_feedforward=state["transformer.encoder.layers.0.linear1.weight"].shape[0],
        num_feature_levels=levels,
        enc_n_points=integer_ratio(
            state["transformer.encoder.layers.0.self_attn.attention_weights.weight"].shape[0],
            per_point,
            "points",
            source,
        ),
        dec_n_points=integer_ratio(
            state["transformer.decoder.layers.0.cross_attn.attention_weights.weight"].shape[0],
            per_point,
            "points",
            source,
        ),
        backbone=backbone,
        position_temperature=temperature,
    )
    read_from.append("classes, queries, layers, widths, levels, points: tensor shapes and key counts")
    _check_args_agree(config, args, source)
    return config


# Official args naming sizes the tensors also hold: they must agree (else the file was edited or mislabelled).
_ARGS_SIZES = {
    "num_classes": "num_classes",
    "num_queries": "num_queries",
    "hidden_dim": "hidden_dim",
    "enc_layers": "num_encoder_layers",
    "dec_layers": "num_decoder_layers",
    "dim_feedforward": "dim_feedforward",
    "num_feature_levels": "num_feature_levels",
    "enc_n_points": "enc_n_points",
    "dec_n_points": "dec_n_points",
}


def _check_args_agree(config: DINOConfig, args, source: str) -> None:
    if not isinstance(args, argparse.Namespace):
        return
    for arg, name in _ARGS_SIZES.items():
        value = getattr(args, arg, None)
        if isinstance(value, int) and value != getattr(config, name):
            raise DetrDeployError(
                f"checkpoint {source}: its args say {arg}={value} but its tensors hold {getattr(config, name)}; "
                "is the file edited?"
            )


def _check_fits(config: DINOConfig, state: Mapping, source: str) -> None:
    """Refuse, at read time, tensors that do not fit the model the config describes (missing, extra, reshaped)."""
    with torch.device("meta"):
        skeleton = DINO(config)
    check_state_dict(skeleton, state, source, "DINO")


# --- mmdetection 3.x ---------------------------------------------------------------------------------------------

_WB = r"(weight|bias)"


def _mmdet_rules(num_decoder_layers: int, num_convs: int, num_extra: int) -> list:
    """3.x DINO names -> the zoo's; DINO's own tensors first, then Deformable DETR's shared layout."""
    encoder_branch = num_decoder_layers
    rules = [
        (r"dn_query_generator\..+", ""),  # denoising queries: training only
        (r"query_embedding\.weight", "transformer.tgt_embed.weight"),
        (rf"decoder\.ref_point_head\.layers\.(\d+)\.{_WB}", r"transformer.decoder.ref_point_head.layers.\1.\2"),
        (rf"decoder\.norm\.{_WB}", r"transformer.decoder.norm.\1"),
        (rf"bbox_head\.cls_branches\.{encoder_branch}\.{_WB}", r"transformer.enc_out_class_embed.\1"),
        (rf"bbox_head\.reg_branches\.{encoder_branch}\.0\.{_WB}", r"transformer.enc_out_bbox_embed.layers.0.\1"),
        (rf"bbox_head\.reg_branches\.{encoder_branch}\.2\.{_WB}", r"transformer.enc_out_bbox_embed.layers.1.\1"),
        (rf"bbox_head\.reg_branches\.{encoder_branch}\.4\.{_WB}", r"transformer.enc_out_bbox_embed.layers.2.\1"),
        *mm._DEFORMABLE_RULES,
    ]
    for extra in range(num_extra):
        rules.append((rf"neck\.extra_convs\.{extra}\.conv\.{_WB}", rf"input_proj.{num_convs + extra}.0.\1"))
        rules.append((rf"neck\.extra_convs\.{extra}\.gn\.{_WB}", rf"input_proj.{num_convs + extra}.1.\1"))
    return rules


def read_mmdetection_dino(path, state: Mapping, meta: Mapping, sha256: str) -> Checkpoint:
    """Read the state dict (``module.`` and batch-norm counters already dropped) and ``meta`` of an mmdetection 3.x
    DINO file. Raises DetrDeployError for settings or tensors the zoo's DINO cannot express."""
    path = Path(path)
    source = path.name
    config_text, config_where = mm._config_text(meta)
    settings = mm._parse_config(config_text)
    model_cfg = settings.get("model") if isinstance(settings.get("model"), dict) else None
    read_from = ["format: mmdetection 3.x (DINO)"]
    if model_cfg is None:
        why = "no config text in the file" if config_text is None else f"no readable 'model' in {config_where}"
        read_from.append(f"architecture: tensor shapes and key counts ({why})")
    else:
        read_from.append(f"architecture: tensor shapes, key counts and the config text in {config_where}")
    mm._check_backbone(state, model_cfg, source)
    if model_cfg is not None:
        mm.check_input_normalization(settings, model_cfg, 3, source)
        mm.check_ffn_activation(model_cfg, source)
        head = mm._get(model_cfg, "bbox_head.type", "DINOHead")
        if head != "DINOHead":
            raise DetrDeployError(f"checkpoint {source}: its DINO has head {head!r}; only 'DINOHead' is supported")
        if mm._get(model_cfg, "bbox_head.loss_cls.use_sigmoid") is False:
            raise DetrDeployError(
                f"checkpoint {source}: its DINO head scores with a softmax (loss_cls.use_sigmoid=False); the zoo's "
                "scores each class with a sigmoid"
            )
    backbone = backbone_config(state, "backbone.", False, source)
    read_from.append(
        "dilation (DC5): none (the config text dilates no stage)"
        if model_cfg is not None
        else "dilation (DC5): none (not in the tensors; no mmdetection DINO config dilates its ResNet)"
    )
    try:
        config, rules = _mmdet_config(state, model_cfg, backbone, source, read_from)
    except KeyError as error:
        raise DetrDeployError(
            f"checkpoint {source} has no tensor {error.args[0]} (in mmdetection 3.x names), which every mmdetection "
            "DINO has: is the file complete?"
        ) from None
    renamed = rename_keys(state, rules)
    # The zoo's decoder lists the per-layer heads too, as the official layout does.
    for key in [key for key in renamed if key.startswith(("bbox_embed.", "class_embed."))]:
        renamed[f"transformer.decoder.{key}"] = renamed[key]
    _check_fits(config, renamed, source)
    class_names = _mmdet_class_names(meta, config.num_classes, read_from)
    return Checkpoint(path, SOURCE_MMDET3, config, renamed, sha256, class_names=class_names, read_from=tuple(read_from))


def _mmdet_config(state: Mapping, model_cfg, backbone, source: str, read_from: list) -> tuple:
    levels, hidden_dim = state["level_embed"].shape
    if levels not in BACKBONE_STAGES:
        raise DetrDeployError(
            f"checkpoint {source} is a DINO with {levels} feature levels; the zoo's DINO has 4 (C3-C5 + one) or 5 "
            "(C2-C5 + one)"
        )
    num_convs = count_indices(state, r"neck\.convs\.(\d+)\.")
    num_extra = count_indices(state, r"neck\.extra_convs\.(\d+)\.")
    expected_convs = len(BACKBONE_STAGES[levels])
    if num_convs != expected_convs or num_convs + num_extra != levels:
        raise DetrDeployError(
            f"checkpoint {source}: its neck maps {num_convs} backbone stages and adds {num_extra} levels for "
            f"{levels} feature levels; the zoo's DINO maps {expected_convs} and adds one"
        )
    if "neck.convs.0.gn.weight" not in state:
        raise DetrDeployError(
            f"checkpoint {source}: its neck has no GroupNorm; the zoo's DINO projects with convolution + GroupNorm"
        )
    num_groups = mm._get(model_cfg, "neck.norm_cfg.num_groups", 32)
    if num_groups != 32:
        raise DetrDeployError(f"checkpoint {source}: its neck GroupNorm has {num_groups} groups; the zoo uses 32")

    heads = mm._config_heads(model_cfg, 3, True)
    if len(heads) > 1:
        raise DetrDeployError(
            f"checkpoint {source}: its attentions have different head counts {sorted(heads)}; the zoo uses one"
        )
    if heads:
        num_heads = heads.pop()
        read_from.append(f"heads: {num_heads} (config text)")
    else:
        num_heads = _DEFAULT_HEADS
        read_from.append(f"heads: {num_heads} (mmdetection's default; not in the tensors)")
    if hidden_dim % num_heads:
        raise DetrDeployError(f"checkpoint {source}: width {hidden_dim} does not split into {num_heads} heads")

    temperature, offset = _mmdet_position(model_cfg, source, read_from)
    num_decoder_layers = count_indices(state, r"decoder\.layers\.(\d+)\.")
    num_branches = count_indices(state, r"bbox_head\.cls_branches\.(\d+)\.")
    if num_branches != num_decoder_layers + 1:
        raise DetrDeployError(
            f"checkpoint {source}: its DINO head has {num_branches} class branches for {num_decoder_layers} decoder "
            "layers; DINO has one per layer plus one for the encoder's proposals"
        )
    per_point = levels * num_heads
    config = DINOConfig(
        num_classes=state["bbox_head.cls_branches.0.weight"].shape[0],
        num_queries=state["query_embedding.weight"].shape[0],
        hidden_dim=hidden_dim,
        num_heads=num_heads,
        num_encoder_layers=count_indices(state, r"encoder\.layers\.(\d+)\."),
        num_decoder_layers=num_decoder_layers,
        dim_feedforward=state["encoder.layers.0.ffn.layers.0.0.weight"].shape[0],
        num_feature_levels=levels,
        enc_n_points=integer_ratio(
            state["encoder.layers.0.self_attn.attention_weights.weight"].shape[0], per_point, "points", source
        ),
        dec_n_points=integer_ratio(
            state["decoder.layers.0.cross_attn.attention_weights.weight"].shape[0], per_point, "points", source
        ),
        backbone=backbone,
        input_proj_bias="neck.convs.0.conv.bias" in state,
        position_temperature=temperature,
        position_offset=offset,
        box_inverse_sigmoid_eps=_MMDET_BOX_EPS,
    )
    read_from.append("classes, queries, layers, widths, levels, points, neck bias: tensor shapes and key counts")
    return config, _mmdet_rules(num_decoder_layers, num_convs, num_extra)


def _mmdet_position(model_cfg, source: str, read_from: list) -> tuple:
    """(temperature, offset) of the sine position encoding: the config's, else those of mmdetection's DINO configs."""
    position = mm._get(model_cfg, "positional_encoding")
    if not isinstance(position, dict):
        read_from.append(
            f"position encoding: temperature {_DINO_TEMPERATURE}, offset 0 (mmdetection's DINO configs; not in the "
            "tensors)"
        )
        return _DINO_TEMPERATURE, 0.0
    values = {**_MMDET_POSITION_DEFAULTS, **{k: v for k, v in position.items() if k in _MMDET_POSITION_DEFAULTS}}
    wrong = (
        position.get("normalize", False) is not True
        or not math.isclose(position.get("scale", 2 * math.pi), 2 * math.pi)
        or not all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in values.values())
    )
    if wrong:
        raise DetrDeployError(
            f"checkpoint {source}: its sine position encoding ({position}) is not normalized to 2*pi as DINO's is "
            "(normalize=True, scale=2*pi)"
        )
    read_from.append(f"position encoding: temperature {values['temperature']}, offset {values['offset']} (config text)")
    return values["temperature"], float(values["offset"])


def _mmdet_class_names(meta: Mapping, num_classes: int, read_from: list):
    names, where = mm._class_names(meta)
    if names is None:
        read_from.append("classes: no names in the file; count from the class head")
        return None
    if len(names) != num_classes:
        read_from.append(
            f"classes: {where} names {len(names)} but the class head has {num_classes} outputs; names not used"
        )
        return None
    read_from.append(f"classes: {where} ({len(names)} names)")
    return names


__all__ = ["is_official_dino", "read_mmdetection_dino", "read_official_dino"]
