"""Conditional DETR checkpoints: the official code (Atten4Vis/ConditionalDETR ``main.py``), transformers
(``ConditionalDetrForObjectDetection``) and mmdetection 3.x (``ConditionalDETR``).

Official files keep the zoo's key layout (DETR's, with the conditional decoder's ``sa_*`` / ``ca_*`` projections,
``query_scale`` and ``ref_point_head``); as with DETR, a dilated C5 (DC5) shows in no tensor: the training args
say it, else ``--model``. transformers files are renamed into that layout: the names 5.x's save_pretrained writes
(the 4.x ones, which are already the official decoder names) and 5.x's module names (``q_content_proj``, ``o_proj``,
``mlp.fc1``); the architecture comes from config.json, checked against the tensors. mmdetection's ConditionalDETR
holds the same tensors under its own names (``self_attn.qcontent_proj``, ``cross_attn.qpos_sine_proj``, ``reg_ffn``
+ ``fc_reg``). Every format scores classes with a sigmoid: the class head has one logit per class, no background.

What tells a Conditional DETR from DAB-DETR (built on it): the reference-point head maps the d_model-wide query
position to 2 coordinates (DAB-DETR's maps a 2 * d_model sine embedding of its 4-D anchors), and the queries are
d_model wide (DAB-DETR's learned anchors are 4-D).
"""

from collections.abc import Mapping

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
from detr_deploy.checkpoints.checkpoint import SOURCE_OFFICIAL, SOURCE_TRANSFORMERS, Checkpoint, missing_tensors
from detr_deploy.checkpoints.formats import mmdetection as mm
from detr_deploy.checkpoints.formats.official import arg, official_heads, split_official
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
    MHA,
    SEPARATE_ATTENTION,
    WB,
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
from detr_deploy.models.conditional_detr import ConditionalDETRConfig

_LABEL = "Conditional DETR"
# The decoder's projections, by the official names (sa_ = self-attention, ca_ = cross-attention).
_SELF_PROJECTIONS = ("qcontent", "qpos", "kcontent", "kpos", "v")
_CROSS_PROJECTIONS = (*_SELF_PROJECTIONS, "qpos_sine")


def is_conditional_state(state: Mapping, prefix: str) -> bool:
    """Whether ``state`` (its decoder under ``prefix``) holds Conditional DETR's decoder: a reference-point head
    from the d_model-wide query position to 2 coordinates (DAB-DETR's takes 2 * d_model inputs)."""
    first, last = (
        state.get(f"{prefix}ref_point_head.layers.0.weight"),
        state.get(f"{prefix}ref_point_head.layers.1.weight"),
    )
    if first is None or last is None or first.dim() != 2 or last.dim() != 2:
        return False
    return first.shape[0] == first.shape[1] and last.shape[0] == 2


# --- official ----------------------------------------------------------------------------------------------------


def recognize_official(candidate: Candidate) -> Recognition:
    """The official layout (backbone under ``backbone.0.body.``) with Conditional DETR's decoder and learned
    d_model-wide queries."""
    state = candidate.state
    if state is None or mm.mmdetection_file(candidate) is not None:
        return NO
    backbone = any(str(key).startswith("backbone.0.body.") for key in state)
    queries = state.get("query_embed.weight")
    own = (
        is_conditional_state(state, "transformer.decoder.")
        and "transformer.decoder.layers.0.ca_qpos_sine_proj.weight" in state
    )
    return YES if backbone and own and queries is not None and queries.dim() == 2 and queries.shape[1] > 4 else NO


def read_official(candidate: Candidate, model_config=None) -> Checkpoint:
    """Read an official Conditional DETR file. ``model_config`` (from ``--model``, or recorded in an export)
    settles what the file cannot tell without its training args: the dilation (DC5) and the number of heads."""
    raw_state, args = split_official(candidate.content)
    state = {key: value for key, value in raw_state.items() if not key.endswith(BATCH_NORM_COUNTERS)}
    source = candidate.path.name
    read_from = ["format: official code (Atten4Vis/ConditionalDETR)"]
    read_from.append("architecture: training args in the file" if args is not None else "architecture: tensor shapes")
    with missing_tensors(source, ", which every official Conditional DETR checkpoint has"):
        config = _official_config(state, args, source, read_from, model_config)
    return Checkpoint(
        candidate.path, SOURCE_OFFICIAL, config, state, candidate.sha256, class_names=None, read_from=tuple(read_from)
    )


def _official_config(state, args, source: str, read_from: list, model_config) -> ConditionalDETRConfig:
    if arg(args, "masks", False):
        raise DetrDeployError(f"checkpoint {source}: Conditional DETR with --masks (segmentation) is not supported")
    if arg(args, "pre_norm", False):
        raise DetrDeployError(
            f"checkpoint {source} was trained with --pre_norm; only the released post-norm Conditional DETR is "
            "supported"
        )
    dilation = arg(args, "dilation")
    if dilation is None and model_config is not None:
        dilation = model_config.backbone.dilate_last_stage
        read_from.append("dilation (DC5): from --model")
    elif dilation is None:
        raise DetrDeployError(
            f"checkpoint {source} is an official Conditional DETR without its training args, and it has identical "
            "tensors with and without a dilated C5 (DC5): say which with --model (e.g. conditional_detr_r50 or "
            "conditional_detr_r50_dc5)"
        )
    else:
        read_from.append("dilation (DC5): training args")
    backbone = backbone_config(state, "backbone.0.body.", bool(dilation), source)
    check_resnet_name(arg(args, "backbone"), backbone, source)
    queries = state["query_embed.weight"]
    config = ConditionalDETRConfig(
        num_classes=state["class_embed.weight"].shape[0],
        num_queries=queries.shape[0],
        hidden_dim=queries.shape[1],
        num_heads=official_heads(args, model_config, read_from),
        num_encoder_layers=count_indices(state, r"transformer\.encoder\.layers\.(\d+)\."),
        num_decoder_layers=count_indices(state, r"transformer\.decoder\.layers\.(\d+)\."),
        dim_feedforward=state["transformer.encoder.layers.0.linear1.weight"].shape[0],
        backbone=backbone,
    )
    read_from.append("classes, queries, layers, widths: tensor shapes and key counts")
    return config


# --- transformers ------------------------------------------------------------------------------------------------

# transformers' ConditionalDetrConfig defaults for fields a config.json may leave out.
_TRANSFORMERS_DEFAULTS = {
    "num_queries": 300,
    "d_model": 256,
    "encoder_layers": 6,
    "decoder_layers": 6,
    "encoder_ffn_dim": 2048,
    "decoder_ffn_dim": 2048,
    "encoder_attention_heads": 8,
    "decoder_attention_heads": 8,
}
# 5.x's decoder module names (q_content_proj, ...) -> the official ones; the 4.x names (what 5.x's save_pretrained
# writes) are already the official sa_* / ca_*.
_FIVE_X_PROJECTION = {
    "qcontent": "q_content",
    "qpos": "q_pos",
    "kcontent": "k_content",
    "kpos": "k_pos",
    "v": "v",
    "qpos_sine": "q_pos_sine",
}


def _transformers_rules() -> list[tuple[str, str]]:
    """transformers names (after ``detr_style_state``: 4.x names, 5.x's decoder projections as they are) -> the
    official layout. Post-norm layers: self_attn_layer_norm, encoder_attn_layer_norm and final_layer_norm are the
    official norm1, norm2 and norm2 (encoder) / norm3 (decoder) by position."""
    encoder, decoder = r"model\.encoder\.layers\.(\d+)\.", r"model\.decoder\.layers\.(\d+)\."
    to_encoder, to_decoder = r"transformer.encoder.layers.\1.", r"transformer.decoder.layers.\1."
    five_x = [
        (rf"{decoder}{attention}\.{_FIVE_X_PROJECTION[name]}_proj\.{WB}", rf"{to_decoder}{short}_{name}_proj.\2")
        for attention, short, names in (
            ("self_attn", "sa", _SELF_PROJECTIONS),
            ("encoder_attn", "ca", _CROSS_PROJECTIONS),
        )
        for name in names
    ]
    return [
        (r"model\.backbone\.conv_encoder\.model\.(.*)", r"backbone.0.body.\1"),
        (rf"model\.input_projection\.{WB}", r"input_proj.\1"),
        (r"model\.query_position_embeddings\.weight", "query_embed.weight"),
        (rf"{encoder}self_attn\.({SEPARATE_ATTENTION})", rf"{to_encoder}self_attn.\2"),
        (rf"{encoder}self_attn_layer_norm\.{WB}", rf"{to_encoder}norm1.\2"),
        (rf"{encoder}fc([12])\.{WB}", rf"{to_encoder}linear\2.\3"),
        (rf"{encoder}final_layer_norm\.{WB}", rf"{to_encoder}norm2.\2"),
        (rf"{decoder}((?:sa|ca)_\w+_proj)\.{WB}", rf"{to_decoder}\2.\3"),
        *five_x,
        (rf"{decoder}self_attn\.out_proj\.{WB}", rf"{to_decoder}self_attn.out_proj.\2"),
        (rf"{decoder}encoder_attn\.out_proj\.{WB}", rf"{to_decoder}cross_attn.out_proj.\2"),
        (rf"{decoder}self_attn_layer_norm\.{WB}", rf"{to_decoder}norm1.\2"),
        (rf"{decoder}encoder_attn_layer_norm\.{WB}", rf"{to_decoder}norm2.\2"),
        (rf"{decoder}fc([12])\.{WB}", rf"{to_decoder}linear\2.\3"),
        (rf"{decoder}final_layer_norm\.{WB}", rf"{to_decoder}norm3.\2"),
        (rf"model\.decoder\.layernorm\.{WB}", r"transformer.decoder.norm.\1"),
        (
            r"model\.decoder\.(query_scale|ref_point_head)\.layers\.(\d+)\.(weight|bias)",
            r"transformer.decoder.\1.layers.\2.\3",
        ),
        (rf"class_labels_classifier\.{WB}", r"class_embed.\1"),
        (r"bbox_predictor\.layers\.(\d+)\.(weight|bias)", r"bbox_embed.layers.\1.\2"),
    ]


def recognize_transformers(candidate: Candidate) -> Recognition:
    return YES if candidate.folder is not None and candidate.folder.model_type == "conditional_detr" else NO


def read_transformers(candidate: Candidate, model_config=None) -> Checkpoint:
    """Read a transformers Conditional DETR directory (config.json tells everything ``model_config`` could)."""
    folder = candidate.folder
    state, keys_line = detr_style_state(folder)
    architecture = declared_architecture(folder.config, "ConditionalDetrForObjectDetection")
    refuse_bare_model(folder, architecture, ("ConditionalDetrModel",), "ConditionalDetrForObjectDetection")
    source = folder.source
    if architecture == "ConditionalDetrForSegmentation" or any(key.startswith("conditional_detr.") for key in state):
        raise DetrDeployError(
            f"checkpoint {source} is a transformers ConditionalDetrForSegmentation; only the detection model "
            "(ConditionalDetrForObjectDetection) is supported"
        )
    values = ConfigValues(
        folder.config, {**DETR_STYLE_DEFAULTS, **_TRANSFORMERS_DEFAULTS}, source, "the zoo's Conditional DETR"
    )
    read_from = detr_style_read_from(folder, architecture, keys_line)
    backbone = transformers_backbone(folder.config, values)
    state = torchvision_named(rename_keys(state, _transformers_rules()), backbone, "backbone.0.body.", source)
    config = _transformers_config(state, values, backbone, source)
    fuse_every_qkv(state)
    read_from.append(f"backbone: {backbone.description}")
    read_from.append(f"dilation (DC5): {'yes' if config.backbone.dilate_last_stage else 'no'} (config.json)")
    read_from.append("architecture: config.json (layers, widths, heads, queries), checked against tensor shapes")
    class_names = id2label_class_names(folder.config, config.num_classes, source, read_from)
    return Checkpoint(
        folder.checkpoint_path, SOURCE_TRANSFORMERS, config, state, folder.digest, class_names, tuple(read_from)
    )


def _transformers_config(
    state: dict, values: ConfigValues, backbone: TransformersBackbone, source: str
) -> ConditionalDETRConfig:
    check_detr_style_config(values)
    if backbone.out_stages is not None and tuple(backbone.out_stages[-1:]) != (4,):
        raise values.unsupported(f"backbone outputs {list(backbone.out_stages)} (needs stage 4)")
    hidden_dim = values["d_model"]
    queries = required_tensor(state, "query_embed.weight", source)
    check_size(source, "num_queries", values["num_queries"], queries.shape[0])
    check_size(source, "d_model", hidden_dim, queries.shape[1])
    return ConditionalDETRConfig(
        num_classes=required_tensor(state, "class_embed.weight", source).shape[0],
        num_queries=values["num_queries"],
        hidden_dim=hidden_dim,
        num_heads=values.same("encoder_attention_heads", "decoder_attention_heads"),
        num_encoder_layers=counted_layers(state, "transformer.encoder", values, "encoder_layers", source),
        num_decoder_layers=counted_layers(state, "transformer.decoder", values, "decoder_layers", source),
        dim_feedforward=values.same("encoder_ffn_dim", "decoder_ffn_dim"),
        backbone=backbone_config(state, "backbone.0.body.", backbone.dilation, source),
    )


# --- mmdetection -------------------------------------------------------------------------------------------------

_MMDET_TYPE = "ConditionalDETR"
_MMDET_DECODER = r"decoder\.layers\.(\d+)\."
_MMDET_RULES = (
    *mm.RESNET_RULES,
    *mm.FFN_RULES,
    (rf"neck\.convs\.0\.conv\.{WB}", r"input_proj.\1"),
    (rf"encoder\.layers\.(\d+)\.self_attn\.attn\.{MHA}", r"transformer.encoder.layers.\1.self_attn.\2"),
    *(
        (rf"{_MMDET_DECODER}self_attn\.{name}_proj\.{WB}", rf"transformer.decoder.layers.\1.sa_{name}_proj.\2")
        for name in _SELF_PROJECTIONS
    ),
    *(
        (rf"{_MMDET_DECODER}cross_attn\.{name}_proj\.{WB}", rf"transformer.decoder.layers.\1.ca_{name}_proj.\2")
        for name in _CROSS_PROJECTIONS
    ),
    (rf"{_MMDET_DECODER}(self_attn|cross_attn)\.out_proj\.{WB}", r"transformer.decoder.layers.\1.\2.out_proj.\3"),
    # The decoder's norms follow self-attention, cross-attention and FFN, as officially.
    (rf"{_MMDET_DECODER}norms\.0\.{WB}", r"transformer.decoder.layers.\1.norm1.\2"),
    (rf"{_MMDET_DECODER}norms\.1\.{WB}", r"transformer.decoder.layers.\1.norm2.\2"),
    (rf"{_MMDET_DECODER}norms\.2\.{WB}", r"transformer.decoder.layers.\1.norm3.\2"),
    (rf"decoder\.post_norm\.{WB}", r"transformer.decoder.norm.\1"),
    (r"decoder\.(query_scale|ref_point_head)\.layers\.(\d+)\.(weight|bias)", r"transformer.decoder.\1.layers.\2.\3"),
    (r"query_embedding\.weight", "query_embed.weight"),
    (rf"bbox_head\.fc_cls\.{WB}", r"class_embed.\1"),
    # reg_ffn (Linear, ReLU, Linear) + ReLU + fc_reg is the official 3-layer box MLP.
    (rf"bbox_head\.reg_ffn\.layers\.0\.0\.{WB}", r"bbox_embed.layers.0.\1"),
    (rf"bbox_head\.reg_ffn\.layers\.1\.{WB}", r"bbox_embed.layers.1.\1"),
    (rf"bbox_head\.fc_reg\.{WB}", r"bbox_embed.layers.2.\1"),
)


def recognize_mmdetection(candidate: Candidate) -> Recognition:
    """An mmdetection file whose config names ConditionalDETR (or no type) with Conditional DETR's decoder."""
    file = mm.mmdetection_file(candidate)
    if file is None or not mm.model_type_allows(file, _MMDET_TYPE):
        return NO
    state = file.state_3x
    return YES if "bbox_head.fc_cls.weight" in state and is_conditional_state(state, "decoder.") else NO


def read_mmdetection(candidate: Candidate, model_config=None) -> Checkpoint:
    """Read an mmdetection 3.x ConditionalDETR (tensors and config text tell all)."""
    file = mm.mmdetection_file(candidate)
    source, state = candidate.path.name, file.state_3x
    read_from = [f"format: mmdetection {file.version}.x (ConditionalDETR)", file.architecture_origin()]
    check_mmdetection_resnet(state, file.model_cfg, source)
    mm.check_detr_style_settings(file, 0.0, source)
    backbone = backbone_config(state, "backbone.", False, source)
    read_from.append(mm.undilated_line(file, "ConditionalDETR"))
    with missing_tensors(source, " (in mmdetection 3.x names), which every mmdetection ConditionalDETR has"):
        config = _mmdetection_config(file, backbone, source, read_from)
    class_names = _mmdetection_class_names(file, config.num_classes, source, read_from)
    renamed = mm.renamed_into_zoo(state, _MMDET_RULES, mm.OFFICIAL_LAYOUT_PREFIXES, "ConditionalDETR", source)
    return Checkpoint(candidate.path, file.source, config, renamed, candidate.sha256, class_names, tuple(read_from))


def _mmdetection_config(file, backbone, source: str, read_from: list) -> ConditionalDETRConfig:
    state, model_cfg = file.state_3x, file.model_cfg
    if "neck.convs.0.conv.bias" not in state or "neck.convs.1.conv.weight" in state:
        raise DetrDeployError(
            f"checkpoint {source}: its ConditionalDETR does not project one backbone stage with one convolution with "
            f"bias ({mm.first_keys(state, 'neck.')}); the zoo's Conditional DETR does"
        )
    if any(key.startswith(("neck.convs.0.gn", "neck.extra")) for key in state):
        raise DetrDeployError(
            f"checkpoint {source}: its ConditionalDETR input projection has a norm layer; the zoo's Conditional DETR "
            "has a plain convolution"
        )
    if mm.config_value(model_cfg, "bbox_head.loss_cls.use_sigmoid") is False:
        raise DetrDeployError(
            f"checkpoint {source}: its ConditionalDETR head scores with a softmax (loss_cls.use_sigmoid=False); the "
            "zoo's Conditional DETR scores each class with a sigmoid"
        )
    hidden_dim = state["query_embedding.weight"].shape[1]
    config = ConditionalDETRConfig(
        num_classes=state["bbox_head.fc_cls.weight"].shape[0],
        num_queries=state["query_embedding.weight"].shape[0],
        hidden_dim=hidden_dim,
        num_heads=mm.mmdet_heads(model_cfg, file.version, False, hidden_dim, source, read_from),
        num_encoder_layers=count_indices(state, r"encoder\.layers\.(\d+)\."),
        num_decoder_layers=count_indices(state, r"decoder\.layers\.(\d+)\."),
        dim_feedforward=state["encoder.layers.0.ffn.layers.0.0.weight"].shape[0],
        backbone=backbone,
    )
    read_from.append("classes, queries, layers, widths: tensor shapes and key counts")
    return config


def _mmdetection_class_names(file, num_classes: int, source: str, read_from: list):
    """The names in the file, checked against the class head: one sigmoid-scored logit per class, no background."""
    names, where = mm.class_names(file.meta)
    if names is not None and num_classes == len(names) + 1:
        raise DetrDeployError(
            f"checkpoint {source}: its ConditionalDETR class head has {num_classes} outputs for {len(names)} classes "
            "(softmax with a background logit); the zoo's Conditional DETR scores each class with a sigmoid"
        )
    return mm.matched_class_names(names, where, num_classes, len(names or ()), read_from)


READERS = (
    Reader(f"official {_LABEL}", FORMAT_OFFICIAL, recognize_official, read_official, labels=(_LABEL,)),
    Reader(
        f"transformers {_LABEL}",
        FORMAT_TRANSFORMERS,
        recognize_transformers,
        read_transformers,
        labels=(_LABEL,),
        format_names=("conditional_detr",),
        classes=("ConditionalDetrForObjectDetection",),
    ),
    Reader(
        f"mmdetection {_LABEL}",
        FORMAT_MMDETECTION,
        recognize_mmdetection,
        read_mmdetection,
        labels=(_LABEL,),
        format_names=(_MMDET_TYPE,),
    ),
)
