"""Deformable DETR checkpoints (plain, box refinement, two-stage): the official code
(fundamentalvision/Deformable-DETR ``main.py``), transformers (``DeformableDetrForObjectDetection``) and
mmdetection 3.x / 2.x (``DeformableDETR``).

Official files keep the zoo's key layout; the architecture comes from the training ``args`` and the tensors (levels
from ``input_proj``, points from the attention-weight rows, refinement and two-stage from the heads they add); the
two-stage query count (top encoder proposals) is in no tensor. transformers names are renamed into the official
layout (heads it ties are stored once and untied here). mmdetection numbers the decoder norms in execution order and
lists one shared head per layer without refinement; its class head scores each class with a sigmoid, as ours.
"""

import re
from collections.abc import Mapping

import torch

from detr_deploy.checkpoints.candidate import (
    FORMAT_MMDETECTION,
    FORMAT_OFFICIAL,
    FORMAT_TRANSFORMERS,
    NO,
    YES,
    Candidate,
    Reader,
    Recognition,
)
from detr_deploy.checkpoints.checkpoint import (
    SOURCE_OFFICIAL,
    SOURCE_TRANSFORMERS,
    Checkpoint,
    integer_ratio,
    missing_tensors,
)
from detr_deploy.checkpoints.formats import mmdetection as mm
from detr_deploy.checkpoints.formats.official import arg, official_dilation, official_heads, split_official
from detr_deploy.checkpoints.formats.transformers import (
    DETR_STYLE_DEFAULTS,
    ConfigValues,
    check_detr_style_config,
    check_size,
    counted_layers,
    declared_architecture,
    detr_style_read_from,
    detr_style_state,
    id2label_class_names,
    refuse_bare_model,
    required_tensor,
)
from detr_deploy.checkpoints.keymap import (
    BATCH_NORM_COUNTERS,
    MSDA,
    SEPARATE_ATTENTION,
    count_indices,
    fuse_every_qkv,
    rename_keys,
)
from detr_deploy.checkpoints.resnet import (
    TransformersBackbone,
    backbone_config,
    check_mmdetection_resnet,
    check_resnet_name,
    torchvision_named,
    transformers_backbone,
)
from detr_deploy.errors import DetrDeployError
from detr_deploy.models.deformable_detr import DeformableDETRConfig

# The official default two-stage query count (``--num_queries``), which no tensor holds.
_OFFICIAL_TWO_STAGE_QUERIES = 300
# The query count of mmdetection's shipped two-stage configs (3.x ``num_queries``, 2.x ``two_stage_num_proposals``).
_DEFAULT_TWO_STAGE_QUERIES = 300
# 3.x ``DetectionTransformer`` builds this many queries when a config does not say.
_MMDET3_DEFAULT_QUERIES = 100
_MMDET_TYPE = "DeformableDETR"

# --- official ----------------------------------------------------------------------------------------------------


def recognize_official(candidate: Candidate) -> Recognition:
    """The official layout (backbone under ``backbone.0.body.``) with Deformable DETR's ``transformer.level_embed``
    and its reference points (one-stage) or proposal position projection (two-stage)."""
    state = candidate.state
    if state is None or mm.mmdetection_file(candidate) is not None or "transformer.level_embed" not in state:
        return NO
    backbone = any(str(key).startswith("backbone.0.body.") for key in state)
    own = "transformer.reference_points.weight" in state or "transformer.pos_trans.weight" in state
    return YES if backbone and own else NO


def read_official(candidate: Candidate, model_config=None) -> Checkpoint:
    """Read an official Deformable DETR file. ``model_config`` (from ``--model``, or recorded in an export) settles
    what the file cannot tell without its training args: the number of heads, two-stage's query count, DC5."""
    raw_state, args = split_official(candidate.content)
    state = {key: value for key, value in raw_state.items() if not key.endswith(BATCH_NORM_COUNTERS)}
    source = candidate.path.name
    read_from = ["format: official code (facebookresearch/detr or fundamentalvision/Deformable-DETR)"]
    read_from.append("architecture: training args in the file" if args is not None else "architecture: tensor shapes")
    with missing_tensors(source, ", which every official checkpoint of its family has"):
        config = _official_config(state, args, source, read_from, model_config)
    return Checkpoint(
        candidate.path, SOURCE_OFFICIAL, config, state, candidate.sha256, class_names=None, read_from=tuple(read_from)
    )


def _official_config(state, args, source: str, read_from: list, model_config) -> DeformableDETRConfig:
    if arg(args, "masks", False):
        raise DetrDeployError(f"checkpoint {source}: Deformable DETR with --masks (segmentation) is not supported")
    two_stage = "transformer.enc_output.weight" in state
    refine = "transformer.decoder.bbox_embed.0.layers.0.weight" in state
    levels = count_indices(state, r"input_proj\.(\d+)\.")
    heads = official_heads(args, model_config, read_from)
    per_point = levels * heads
    enc_points = integer_ratio(
        state["transformer.encoder.layers.0.self_attn.attention_weights.weight"].shape[0],
        per_point,
        "points",
        source,
    )
    dec_points = integer_ratio(
        state["transformer.decoder.layers.0.cross_attn.attention_weights.weight"].shape[0],
        per_point,
        "points",
        source,
    )
    if two_stage:
        # Two-stage queries are the top encoder proposals: their count is in the args, not in any tensor.
        if arg(args, "num_queries") is not None:
            queries, origin = args.num_queries, "training args"
        elif model_config is not None:
            queries, origin = model_config.num_queries, "from --model"
        else:
            queries, origin = _OFFICIAL_TWO_STAGE_QUERIES, "the official default; not in the tensors"
        read_from.append(f"queries: {queries} ({origin})")
    else:
        queries = state["query_embed.weight"].shape[0]
    dilation = official_dilation(args, model_config, "none assumed (no Deformable DC5 release)", read_from)
    backbone = backbone_config(state, "backbone.0.body.", dilation, source)
    check_resnet_name(arg(args, "backbone"), backbone, source)
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


# --- transformers ------------------------------------------------------------------------------------------------

# transformers' DeformableDetrConfig defaults for fields a config.json may leave out.
_TRANSFORMERS_DEFAULTS = {
    "num_queries": 300,
    "d_model": 256,
    "encoder_layers": 6,
    "decoder_layers": 6,
    "encoder_ffn_dim": 1024,
    "decoder_ffn_dim": 1024,
    "encoder_attention_heads": 8,
    "decoder_attention_heads": 8,
    "num_feature_levels": 4,
    "encoder_n_points": 4,
    "decoder_n_points": 4,
    "two_stage": False,
    "two_stage_num_proposals": 300,
    "with_box_refine": False,
}
_ENCODER, _DECODER = r"model\.encoder\.layers\.(\d+)\.", r"model\.decoder\.layers\.(\d+)\."
_TRANSFORMERS_RULES = [
    (r"model\.backbone\.conv_encoder\.model\.(.*)", r"backbone.0.body.\1"),
    (r"model\.input_proj\.(\d+)\.([01])\.(weight|bias)", r"input_proj.\1.\2.\3"),
    (r"model\.query_position_embeddings\.weight", "query_embed.weight"),
    (r"model\.level_embed", "transformer.level_embed"),
    (
        r"model\.(reference_points|enc_output|enc_output_norm|pos_trans|pos_trans_norm)\.(weight|bias)",
        r"transformer.\1.\2",
    ),
    (rf"{_ENCODER}self_attn\.{MSDA}", r"transformer.encoder.layers.\1.self_attn.\2"),
    (rf"{_ENCODER}self_attn_layer_norm\.(weight|bias)", r"transformer.encoder.layers.\1.norm1.\2"),
    (rf"{_ENCODER}fc([12])\.(weight|bias)", r"transformer.encoder.layers.\1.linear\2.\3"),
    (rf"{_ENCODER}final_layer_norm\.(weight|bias)", r"transformer.encoder.layers.\1.norm2.\2"),
    (rf"{_DECODER}self_attn\.({SEPARATE_ATTENTION})", r"transformer.decoder.layers.\1.self_attn.\2"),
    (rf"{_DECODER}self_attn_layer_norm\.(weight|bias)", r"transformer.decoder.layers.\1.norm2.\2"),
    (rf"{_DECODER}encoder_attn\.{MSDA}", r"transformer.decoder.layers.\1.cross_attn.\2"),
    (rf"{_DECODER}encoder_attn_layer_norm\.(weight|bias)", r"transformer.decoder.layers.\1.norm1.\2"),
    (rf"{_DECODER}fc([12])\.(weight|bias)", r"transformer.decoder.layers.\1.linear\2.\3"),
    (rf"{_DECODER}final_layer_norm\.(weight|bias)", r"transformer.decoder.layers.\1.norm3.\2"),
    (r"model\.decoder\.(class_embed|bbox_embed)\.(.*)", r"transformer.decoder.\1.\2"),
]


def recognize_transformers(candidate: Candidate) -> Recognition:
    return YES if candidate.folder is not None and candidate.folder.model_type == "deformable_detr" else NO


def read_transformers(candidate: Candidate, model_config=None) -> Checkpoint:
    """Read a transformers Deformable DETR directory (config.json tells everything)."""
    folder = candidate.folder
    state, keys_line = detr_style_state(folder)
    architecture = declared_architecture(folder.config, "DeformableDetrForObjectDetection")
    refuse_bare_model(folder, architecture, ("DeformableDetrModel",), "DeformableDetrForObjectDetection")
    source = folder.source
    defaults = {**DETR_STYLE_DEFAULTS, **_TRANSFORMERS_DEFAULTS}
    values = ConfigValues(folder.config, defaults, source, "the zoo's Deformable DETR")
    read_from = detr_style_read_from(folder, architecture, keys_line)
    backbone = transformers_backbone(folder.config, values)
    state = torchvision_named(rename_keys(state, _TRANSFORMERS_RULES), backbone, "backbone.0.body.", source)
    config = _transformers_config(state, values, backbone, source, read_from)
    fuse_every_qkv(state)
    read_from.append(f"backbone: {backbone.description}")
    read_from.append(f"dilation (DC5): {'yes' if config.backbone.dilate_last_stage else 'no'} (config.json)")
    read_from.append(
        "architecture: config.json (layers, widths, heads, queries, levels, points), checked against tensor shapes"
    )
    class_names = id2label_class_names(folder.config, config.num_classes, source, read_from)
    state = _untie_heads(state, config, read_from)
    return Checkpoint(
        folder.checkpoint_path, SOURCE_TRANSFORMERS, config, state, folder.digest, class_names, tuple(read_from)
    )


def _transformers_config(
    state: dict, values: ConfigValues, backbone: TransformersBackbone, source: str, read_from: list
) -> DeformableDETRConfig:
    check_detr_style_config(values)
    levels = values["num_feature_levels"]
    if levels == 2:
        raise values.unsupported("num_feature_levels 2 (the official model has 1, or 3 and more)")
    required = (2, 3, 4) if levels > 1 else (4,)
    if backbone.out_stages is not None and tuple(backbone.out_stages) != required:
        raise values.unsupported(f"backbone outputs {list(backbone.out_stages)} (needs stages {list(required)})")
    two_stage, refine = bool(values["two_stage"]), bool(values["with_box_refine"])
    if two_stage and not refine:
        raise values.unsupported("two_stage without with_box_refine (two-stage needs the per-layer box heads)")
    heads = values.same("encoder_attention_heads", "decoder_attention_heads")
    hidden_dim = values["d_model"]
    check_size(source, "d_model", hidden_dim, required_tensor(state, "transformer.level_embed", source).shape[1])
    check_size(source, "num_feature_levels", levels, count_indices(state, r"input_proj\.(\d+)\."))
    for field, key in (
        ("encoder_n_points", "transformer.encoder.layers.0.self_attn.attention_weights.weight"),
        ("decoder_n_points", "transformer.decoder.layers.0.cross_attn.attention_weights.weight"),
    ):
        rows = required_tensor(state, key, source).shape[0]
        check_size(source, f"{field} x heads x levels", values[field] * heads * levels, rows)
    class_head = next(
        (key for key in ("class_embed.0.weight", "transformer.decoder.class_embed.0.weight") if key in state), None
    )
    classes = required_tensor(state, class_head or "class_embed.0.weight", source).shape[0]
    if two_stage:
        # The decoder's queries are the top encoder proposals: two_stage_num_proposals of them (num_queries unused).
        queries = values["two_stage_num_proposals"]
        read_from.append("queries: two_stage_num_proposals (two-stage)")
    else:
        queries = values["num_queries"]
        check_size(source, "num_queries", queries, required_tensor(state, "query_embed.weight", source).shape[0])
    return DeformableDETRConfig(
        num_classes=classes,
        num_queries=queries,
        hidden_dim=hidden_dim,
        num_heads=heads,
        num_encoder_layers=counted_layers(state, "transformer.encoder", values, "encoder_layers", source),
        num_decoder_layers=counted_layers(state, "transformer.decoder", values, "decoder_layers", source),
        dim_feedforward=values.same("encoder_ffn_dim", "decoder_ffn_dim"),
        num_feature_levels=levels,
        enc_n_points=values["encoder_n_points"],
        dec_n_points=values["decoder_n_points"],
        with_box_refine=refine,
        two_stage=two_stage,
        backbone=backbone_config(state, "backbone.0.body.", backbone.dilation, source),
    )


_HEAD = re.compile(r"(transformer\.decoder\.)?(class_embed|bbox_embed)\.(\d+)\.(.*)")


def _untie_heads(state: dict, config: DeformableDETRConfig, read_from: list) -> dict:
    """Every per-layer head key the zoo model has, from the copies the file stores.

    transformers ties heads and safetensors stores each tied tensor once: ``class_embed.0`` alone when the heads are
    shared (transformers 5.x also shares the class heads with box refinement), ``model.decoder.bbox_embed.N``
    instead of ``bbox_embed.N`` (box refinement) and ``model.decoder.class_embed.N`` instead of ``class_embed.N``
    (two-stage). A key the file lacks takes its tied twin (with or without ``transformer.decoder.``), else head 0
    when the file stores a single head of that kind, which is what transformers' tying does when loading.
    """
    with torch.device("meta"):
        expected = list(config.build().state_dict())
    stored = {}
    for key in state:
        match = _HEAD.fullmatch(key)
        if match:
            stored.setdefault(match[2], set()).add(int(match[3]))
    for key in expected:
        match = _HEAD.fullmatch(key)
        if key in state or not match:
            continue
        kind, index, rest = match[2], int(match[3]), match[4]
        candidates = [f"{kind}.{index}.{rest}", f"transformer.decoder.{kind}.{index}.{rest}"]
        if stored.get(kind) == {0}:
            candidates += [f"{kind}.0.{rest}", f"transformer.decoder.{kind}.0.{rest}"]
        twin = next((candidate for candidate in candidates if candidate in state), None)
        if twin is not None:
            state[key] = state[twin]
    # Tied copies the zoo model does not have (e.g. the decoder's heads without refinement) are left for the strict
    # check to report; the official layout has exactly the keys above.
    for kind, label in (("class_embed", "class"), ("bbox_embed", "box")):
        if stored.get(kind) == {0} and config.num_decoder_layers > 1:
            read_from.append(f"{label} heads: one stored, shared by every decoder layer (tied in transformers)")
    return state


# --- mmdetection -------------------------------------------------------------------------------------------------


def recognize_mmdetection(candidate: Candidate) -> Recognition:
    """An mmdetection file whose config names DeformableDETR (or no type) with per-layer class heads and Deformable
    DETR's reference points (one-stage) or proposal position projection (two-stage)."""
    file = mm.mmdetection_file(candidate)
    if file is None or not mm.model_type_allows(file, _MMDET_TYPE):
        return NO
    state = file.state_3x
    own = "reference_points_fc.weight" in state or "pos_trans_fc.weight" in state
    return YES if "bbox_head.cls_branches.0.weight" in state and own else NO


def read_mmdetection(candidate: Candidate, model_config=None) -> Checkpoint:
    """Read an mmdetection 3.x or 2.x Deformable DETR (tensors and config text tell all)."""
    file = mm.mmdetection_file(candidate)
    source, state = candidate.path.name, file.state_3x
    read_from = [file.architecture_origin()]
    check_mmdetection_resnet(state, file.model_cfg, source)
    mm.check_detr_style_settings(file, -0.5, source)
    backbone = backbone_config(state, "backbone.", False, source)
    read_from.append(mm.undilated_line(file, "DETR"))
    every = f" (in mmdetection {file.version}.x names), which every mmdetection DeformableDETR has"
    with missing_tensors(source, every):
        config, rules = _mmdetection_config(file, backbone, source, read_from)
    class_names = _mmdetection_class_names(file, config.num_classes, source, read_from)
    renamed = mm.renamed_into_zoo(state, rules, mm.OFFICIAL_LAYOUT_PREFIXES, "DeformableDETR", source)
    _add_decoder_aliases(renamed, config)
    label = " + ".join(name for name, on in (("refine", config.with_box_refine), ("two-stage", config.two_stage)) if on)
    read_from.insert(0, f"format: mmdetection {file.version}.x (DeformableDETR{', ' + label if label else ''})")
    return Checkpoint(candidate.path, file.source, config, renamed, candidate.sha256, class_names, tuple(read_from))


def _mmdetection_config(file, backbone, source: str, read_from: list) -> tuple:
    state, model_cfg, version = file.state_3x, file.model_cfg, file.version
    levels, hidden_dim = state["level_embed"].shape
    num_convs = count_indices(state, r"neck\.convs\.(\d+)\.")
    num_extra = count_indices(state, r"neck\.extra_convs\.(\d+)\.")
    # The zoo's (official) levels: C3-C5 (or C5 alone for one level), then strided convolutions on top.
    expected_convs = 3 if levels > 1 else 1
    if num_convs != expected_convs or num_convs + num_extra != levels:
        raise DetrDeployError(
            f"checkpoint {source}: its neck maps {num_convs} backbone stages and adds {num_extra} levels for "
            f"{levels} feature levels; the zoo's Deformable DETR maps {expected_convs} (C3-C5) and adds the rest"
        )
    if "neck.convs.0.gn.weight" not in state:
        raise DetrDeployError(
            f"checkpoint {source}: its neck has no GroupNorm; the zoo's Deformable DETR projects with convolution "
            "+ GroupNorm"
        )
    num_groups = mm.config_value(model_cfg, "neck.norm_cfg.num_groups", 32)
    if num_groups != 32:
        raise DetrDeployError(f"checkpoint {source}: its neck GroupNorm has {num_groups} groups; the zoo uses 32")
    if mm.config_value(model_cfg, "bbox_head.loss_cls.use_sigmoid") is False:
        raise DetrDeployError(
            f"checkpoint {source}: its Deformable DETR head scores with a softmax (loss_cls.use_sigmoid=False); "
            "the zoo's scores each class with a sigmoid"
        )
    num_decoder_layers = count_indices(state, r"decoder\.layers\.(\d+)\.")
    two_stage = "memory_trans_fc.weight" in state
    refine = _heads_differ(state, num_decoder_layers)
    flag_prefix = "" if version == 3 else "bbox_head."
    mm.check_config_flag(mm.config_value(model_cfg, flag_prefix + "as_two_stage"), two_stage, "as_two_stage", source)
    refine_cfg = mm.config_value(model_cfg, flag_prefix + "with_box_refine")
    if isinstance(refine_cfg, bool):
        # Equal per-layer heads fit both (a refinement run saved before training changed them); different ones not.
        if refine:
            mm.check_config_flag(refine_cfg, refine, "with_box_refine", source)
        refine = refine_cfg
        read_from.append("box refinement: config text")
    else:
        read_from.append(
            "box refinement: per-layer heads differ" if refine else "box refinement: none (one shared head)"
        )
    if two_stage and not refine:
        raise DetrDeployError(
            f"checkpoint {source} is a two-stage Deformable DETR without box refinement; the zoo (like the official "
            "code) builds two-stage only with refinement"
        )
    heads = mm.mmdet_heads(model_cfg, version, True, hidden_dim, source, read_from)
    per_point = levels * heads
    enc_points = integer_ratio(
        state["encoder.layers.0.self_attn.attention_weights.weight"].shape[0], per_point, "points", source
    )
    dec_points = integer_ratio(
        state["decoder.layers.0.cross_attn.attention_weights.weight"].shape[0], per_point, "points", source
    )
    if two_stage:
        queries = _two_stage_queries(model_cfg, version, read_from)
    else:
        queries = state["query_embedding.weight"].shape[0]
    config = DeformableDETRConfig(
        num_classes=state["bbox_head.cls_branches.0.weight"].shape[0],
        num_queries=queries,
        hidden_dim=hidden_dim,
        num_heads=heads,
        num_encoder_layers=count_indices(state, r"encoder\.layers\.(\d+)\."),
        num_decoder_layers=num_decoder_layers,
        dim_feedforward=state["encoder.layers.0.ffn.layers.0.0.weight"].shape[0],
        num_feature_levels=levels,
        enc_n_points=enc_points,
        dec_n_points=dec_points,
        with_box_refine=refine,
        two_stage=two_stage,
        backbone=backbone,
        input_proj_bias="neck.convs.0.conv.bias" in state,
    )
    read_from.append("classes, layers, widths, levels, points, neck bias: tensor shapes and key counts")
    return config, [*mm.DEFORMABLE_STYLE_RULES, *mm.extra_level_rules(num_convs, num_extra)]


def _two_stage_queries(model_cfg, version: int, read_from: list) -> int:
    """Two-stage queries are the top encoder proposals; their count is in the config, not in any tensor."""
    if model_cfg is not None:
        if version == 3:
            queries = mm.config_value(model_cfg, "num_queries", _MMDET3_DEFAULT_QUERIES)
        else:
            # 2.x takes the top two_stage_num_proposals (not the head's num_query).
            queries = mm.config_value(
                model_cfg, "bbox_head.transformer.two_stage_num_proposals", _DEFAULT_TWO_STAGE_QUERIES
            )
        if isinstance(queries, int) and queries > 0:
            read_from.append(f"queries: {queries} (config text)")
            return queries
    read_from.append(f"queries: {_DEFAULT_TWO_STAGE_QUERIES} (mmdetection's two-stage default; not in the tensors)")
    return _DEFAULT_TWO_STAGE_QUERIES


def _heads_differ(state: Mapping, num_decoder_layers: int) -> bool:
    """Whether the per-layer class and box heads hold different weights (box refinement). Without refinement
    mmdetection lists one shared head per layer, so every layer's tensors are equal."""
    for prefix in ("bbox_head.cls_branches.", "bbox_head.reg_branches."):
        first = {key[len(prefix) + 2 :]: value for key, value in state.items() if key.startswith(prefix + "0.")}
        for layer in range(1, num_decoder_layers):
            for name, value in first.items():
                other = state.get(f"{prefix}{layer}.{name}")
                if other is None or other.shape != value.shape or not torch.equal(other, value):
                    return True
    return False


def _add_decoder_aliases(state: dict, config: DeformableDETRConfig) -> None:
    """In place: the zoo's decoder holds the per-layer heads too (``transformer.decoder.bbox_embed`` with
    refinement, ``transformer.decoder.class_embed`` in two-stage), as the official state-dict layout lists them."""
    aliases = []
    if config.with_box_refine:
        aliases.append("bbox_embed.")
    if config.two_stage:
        aliases.append("class_embed.")
    for key in [key for key in state if key.startswith(tuple(aliases))]:
        state[f"transformer.decoder.{key}"] = state[key]


def _mmdetection_class_names(file, num_classes: int, source: str, read_from: list):
    """The names in the file, checked against the class head: one sigmoid-scored logit per class, no background."""
    names, where = mm.class_names(file.meta)
    if names is not None and num_classes == len(names) + 1:
        raise DetrDeployError(
            f"checkpoint {source}: its Deformable DETR class head has {num_classes} outputs for {len(names)} classes "
            "(softmax with a background logit); the zoo's Deformable DETR scores each class with a sigmoid"
        )
    return mm.matched_class_names(names, where, num_classes, len(names or ()), read_from)


_LABELS = ("Deformable DETR",)
READERS = (
    Reader("official Deformable DETR", FORMAT_OFFICIAL, recognize_official, read_official, labels=_LABELS),
    Reader(
        "transformers Deformable DETR",
        FORMAT_TRANSFORMERS,
        recognize_transformers,
        read_transformers,
        labels=_LABELS,
        format_names=("deformable_detr",),
        classes=("DeformableDetrForObjectDetection",),
    ),
    Reader(
        "mmdetection Deformable DETR",
        FORMAT_MMDETECTION,
        recognize_mmdetection,
        read_mmdetection,
        labels=_LABELS,
        format_names=(_MMDET_TYPE,),
    ),
)
