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

import torch

from detr_deploy.checkpoints.candidate import (
    FORMAT_MMDETECTION,
    FORMAT_OFFICIAL,
    NO,
    YES,
    Candidate,
    Reader,
    Recognition,
    refuse,
)
from detr_deploy.checkpoints.checkpoint import (
    SOURCE_OFFICIAL,
    Checkpoint,
    check_state_dict,
    integer_ratio,
    missing_tensors,
)
from detr_deploy.checkpoints.formats import mmdetection as mm
from detr_deploy.checkpoints.formats.official import arg, official_heads, split_official
from detr_deploy.checkpoints.keymap import BATCH_NORM_COUNTERS, WB, count_indices, rename_keys, without_module_prefix
from detr_deploy.checkpoints.resnet import backbone_config, check_mmdetection_resnet
from detr_deploy.errors import DetrDeployError
from detr_deploy.models.dino import BACKBONE_STAGES, DINO, DINOConfig

# The official position encoding (``pe_temperatureH/W`` of the released configs) and mmdetection's DINO configs.
_DINO_TEMPERATURE = 20
# mmdetection's SinePositionalEncoding defaults, for a config that names the encoding without these.
_MMDET_POSITION_DEFAULTS = dict(temperature=10000, offset=0.0)
_MMDET_BOX_EPS = 1e-5
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


def recognize_official(candidate: Candidate) -> Recognition:
    """The official DINO layout: learned content queries and a standard two-stage encoder head under
    ``transformer.``, whatever the backbone (other backbones are recognized so that they can be refused by name)."""
    state = candidate.state
    if state is None or mm.mmdetection_file(candidate) is not None:
        return NO
    keys = {str(key).removeprefix("module.") for key in state}
    own = "transformer.tgt_embed.weight" in keys and any(
        key.startswith("transformer.enc_out_class_embed.") for key in keys
    )
    return YES if own else NO


# --- official ----------------------------------------------------------------------------------------------------


def read_official(candidate: Candidate, model_config=None) -> Checkpoint:
    """Read an official DINO file (``{'model': ..., 'args': ...}`` or a bare state dict). ``model_config`` (from
    ``--model``, or recorded in an export) settles what the file cannot tell without its training args: the number
    of heads, the dilation. Raises DetrDeployError for variants the zoo does not build and for tensors that do not
    fit."""
    source = candidate.path.name
    if not isinstance(model_config, DINOConfig):
        model_config = None  # another family's --model: read the file alone, agree_with_model refuses the mismatch
    raw_state, args = split_official(candidate.content)
    state = {
        key: value
        for key, value in without_module_prefix(raw_state).items()
        if not key.endswith(BATCH_NORM_COUNTERS) and not key.startswith(_OFFICIAL_TRAINING_ONLY)
    }
    read_from = ["format: official code (IDEA-Research/DINO)"]
    read_from.append("architecture: training args in the file" if args is not None else "architecture: tensor shapes")
    _refuse_official_variants(state, args, source)
    with missing_tensors(source, ", which every official DINO checkpoint has"):
        config = _official_config(state, args, source, read_from, model_config)
    _check_fits(config, state, source)
    return Checkpoint(
        candidate.path, SOURCE_OFFICIAL, config, state, candidate.sha256, class_names=None, read_from=tuple(read_from)
    )


def _refuse_official_variants(state: Mapping, args, source: str) -> None:
    for prefix, name in _OTHER_BACKBONES:
        if any(key.startswith(prefix) for key in state):
            raise DetrDeployError(
                f"checkpoint {source} is a DINO with a {name} backbone, which is not supported: the zoo's DINO has a "
                "ResNet-50/101 backbone"
            )
    name = arg(args, "backbone")
    if name is not None and name not in _OFFICIAL_RESNETS:
        raise DetrDeployError(
            f"checkpoint {source} is a DINO with backbone {name!r}, which is not supported: the zoo's DINO has a "
            "ResNet-50/101 backbone"
        )
    if args is None:
        return
    for name, expected in _OFFICIAL_FIXED_ARGS.items():
        value = getattr(args, name, expected)
        if isinstance(value, tuple):
            value = list(value)
        if value != expected:
            raise DetrDeployError(
                f"checkpoint {source} was trained with {name}={value!r}; the zoo's DINO is the released one "
                f"({name}={expected!r})"
            )
    position = arg(args, "position_embedding", "sine")
    if position not in ("sine", "v2"):
        raise DetrDeployError(
            f"checkpoint {source} was trained with position_embedding={position!r}; only the sine encoding is supported"
        )
    temperatures = (arg(args, "pe_temperatureH", _DINO_TEMPERATURE), arg(args, "pe_temperatureW", _DINO_TEMPERATURE))
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
    interm = arg(args, "return_interm_indices")
    expected_interm = [stage - 1 for stage in stages]
    if mapped != len(stages) or (interm is not None and list(interm) != expected_interm):
        found = f"return_interm_indices={list(interm)}" if interm is not None else f"{mapped} projected stages"
        raise DetrDeployError(
            f"checkpoint {source}: its {levels} levels come from {found}; the zoo's DINO with {levels} levels uses "
            f"return_interm_indices={expected_interm} plus one strided level"
        )

    heads = official_heads(args, model_config, read_from)
    if hidden_dim % heads:
        raise DetrDeployError(f"checkpoint {source}: width {hidden_dim} does not split into {heads} heads")

    if arg(args, "dilation") is not None:
        dilation, origin = bool(args.dilation), "training args"
    elif model_config is not None:
        dilation, origin = model_config.backbone.dilate_last_stage, "from --model"
    else:
        dilation, origin = False, "none assumed (no DINO DC5 release)"
    read_from.append(f"dilation (DC5): {origin}")
    backbone = backbone_config(state, "backbone.0.body.", dilation, source)
    name = arg(args, "backbone")
    if name is not None and _OFFICIAL_RESNETS[name] != backbone.blocks_per_stage:
        raise DetrDeployError(
            f"checkpoint {source}: its args name backbone {name!r} but its tensors are another ResNet"
        )

    if args is not None:
        temperature, origin = arg(args, "pe_temperatureH", _DINO_TEMPERATURE), "training args"
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
    for arg_name, name in _ARGS_SIZES.items():
        value = getattr(args, arg_name, None)
        if isinstance(value, int) and value != getattr(config, name):
            raise DetrDeployError(
                f"checkpoint {source}: its args say {arg_name}={value} but its tensors hold {getattr(config, name)}; "
                "is the file edited?"
            )


def _check_fits(config: DINOConfig, state: Mapping, source: str) -> None:
    """Refuse, at read time, tensors that do not fit the model the config describes (missing, extra, reshaped)."""
    with torch.device("meta"):
        skeleton = DINO(config)
    check_state_dict(skeleton, state, source, "DINO")


# --- mmdetection 3.x ---------------------------------------------------------------------------------------------


def _mmdet_rules(num_decoder_layers: int, num_convs: int, num_extra: int) -> list:
    """3.x DINO names -> the zoo's; DINO's own tensors first, then Deformable DETR's shared layout."""
    encoder_branch = num_decoder_layers
    rules = [
        (r"dn_query_generator\..+", ""),  # denoising queries: training only
        (r"query_embedding\.weight", "transformer.tgt_embed.weight"),
        (rf"decoder\.ref_point_head\.layers\.(\d+)\.{WB}", r"transformer.decoder.ref_point_head.layers.\1.\2"),
        (rf"decoder\.norm\.{WB}", r"transformer.decoder.norm.\1"),
        (rf"bbox_head\.cls_branches\.{encoder_branch}\.{WB}", r"transformer.enc_out_class_embed.\1"),
        (rf"bbox_head\.reg_branches\.{encoder_branch}\.0\.{WB}", r"transformer.enc_out_bbox_embed.layers.0.\1"),
        (rf"bbox_head\.reg_branches\.{encoder_branch}\.2\.{WB}", r"transformer.enc_out_bbox_embed.layers.1.\1"),
        (rf"bbox_head\.reg_branches\.{encoder_branch}\.4\.{WB}", r"transformer.enc_out_bbox_embed.layers.2.\1"),
        *mm.DEFORMABLE_STYLE_RULES,
    ]
    rules += mm.extra_level_rules(num_convs, num_extra)
    return rules


def read_mmdetection(candidate: Candidate, model_config=None) -> Checkpoint:
    """Read an mmdetection 3.x DINO file. Raises DetrDeployError for settings or tensors the zoo's DINO cannot
    express."""
    file = mm.mmdetection_file(candidate)
    source, state, model_cfg = candidate.path.name, file.state, file.model_cfg
    read_from = ["format: mmdetection 3.x (DINO)", file.architecture_origin()]
    check_mmdetection_resnet(state, model_cfg, source)
    if model_cfg is not None:
        mm.check_input_normalization(file.settings, model_cfg, 3, source)
        mm.check_ffn_activation(model_cfg, source)
        head = mm.config_value(model_cfg, "bbox_head.type", "DINOHead")
        if head != "DINOHead":
            raise DetrDeployError(f"checkpoint {source}: its DINO has head {head!r}; only 'DINOHead' is supported")
        if mm.config_value(model_cfg, "bbox_head.loss_cls.use_sigmoid") is False:
            raise DetrDeployError(
                f"checkpoint {source}: its DINO head scores with a softmax (loss_cls.use_sigmoid=False); the zoo's "
                "scores each class with a sigmoid"
            )
    backbone = backbone_config(state, "backbone.", False, source)
    read_from.append(mm.undilated_line(file, "DINO"))
    with missing_tensors(source, " (in mmdetection 3.x names), which every mmdetection DINO has"):
        config, rules = _mmdet_config(state, model_cfg, backbone, source, read_from)
    renamed = rename_keys(state, rules)
    # The zoo's decoder lists the per-layer heads too, as the official layout does.
    for key in [key for key in renamed if key.startswith(("bbox_embed.", "class_embed."))]:
        renamed[f"transformer.decoder.{key}"] = renamed[key]
    _check_fits(config, renamed, source)
    names, where = mm.class_names(file.meta)
    class_names = mm.matched_class_names(names, where, config.num_classes, len(names or ()), read_from)
    return Checkpoint(candidate.path, file.source, config, renamed, candidate.sha256, class_names, tuple(read_from))


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
    num_groups = mm.config_value(model_cfg, "neck.norm_cfg.num_groups", 32)
    if num_groups != 32:
        raise DetrDeployError(f"checkpoint {source}: its neck GroupNorm has {num_groups} groups; the zoo uses 32")

    num_heads = mm.mmdet_heads(model_cfg, 3, True, hidden_dim, source, read_from)

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
    position = mm.config_value(model_cfg, "positional_encoding")
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


# --- the readers -------------------------------------------------------------------------------------------------

_MMDET_TYPE = "DINO"


def recognize_mmdetection(candidate: Candidate) -> Recognition:
    """An mmdetection 3.x file whose config names DINO (or no type) with DINO's denoising label embedding, or the
    decoder's ``ref_point_head`` beside two-stage proposals; a config naming DINO over other tensors is refused."""
    file = mm.mmdetection_file(candidate)
    if file is None or not mm.model_type_allows(file, _MMDET_TYPE):
        return NO
    state = file.state
    own = file.version == 3 and (
        "dn_query_generator.label_embedding.weight" in state
        or ("decoder.ref_point_head.layers.0.weight" in state and "memory_trans_fc.weight" in state)
    )
    if own:
        return YES
    if file.model_type == _MMDET_TYPE:
        return refuse(
            f"checkpoint {candidate.path.name} is an mmdetection 'DINO' model (its config says so) but holds no DINO "
            f"tensors ({mm.first_keys(state, 'decoder.')}); is the file edited?"
        )
    return NO


_LABELS = ("DINO",)
READERS = (
    Reader("official DINO", FORMAT_OFFICIAL, recognize_official, read_official, labels=_LABELS),
    Reader(
        "mmdetection DINO",
        FORMAT_MMDETECTION,
        recognize_mmdetection,
        read_mmdetection,
        labels=_LABELS,
        format_names=(_MMDET_TYPE,),
    ),
)
