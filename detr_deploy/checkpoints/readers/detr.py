"""DETR (and DETR-panoptic) checkpoints: the official code (facebookresearch/detr ``main.py``), transformers
(``DetrForObjectDetection``, ``DetrForSegmentation``) and mmdetection 3.x / 2.x (``DETR``).

Official files keep the zoo's key layout; the architecture comes from the training ``args`` where the file has
them and from tensor shapes and key counts otherwise (DETR with and without a dilated C5 have identical tensors:
without args, ``--model`` says which). Class counts come from the class head (softmax over classes + no-object).
transformers names are renamed into the official layout (q/k/v fused into ``in_proj_*``); the architecture comes
from config.json, checked against the tensors. mmdetection's DETR holds the same tensors under its own names
(``reg_ffn`` + ``fc_reg`` is the official 3-layer box MLP; ``neck.convs.0`` or 2.x's ``bbox_head.input_proj`` the
input projection), its class head 80 + background.
"""

import re
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
from detr_deploy.models.detr import DETRConfig

# --- official ----------------------------------------------------------------------------------------------------


def _official_prefix(state: Mapping) -> str:
    """Where the DETR lives in an official state dict: "" (DETR) or "detr." (DETR-panoptic)."""
    return "detr." if any(str(key).startswith("detr.") for key in state) else ""


def recognize_official_detr(candidate: Candidate) -> Recognition:
    """The official layout (backbone under ``backbone.0.body.``, or ``detr.backbone.0.body.`` panoptic) with
    DETR's decoder cross-attention (``multihead_attn``; Conditional DETR and DAB-DETR name theirs ``cross_attn``)."""
    state = candidate.state
    if state is None or mm.mmdetection_file(candidate) is not None:
        return NO
    keys = [str(key) for key in state]
    prefix = _official_prefix(state)
    backbone = any(key.startswith(f"{prefix}backbone.0.body.") for key in keys)
    decoder = re.compile(rf"{re.escape(prefix)}transformer\.decoder\.layers\.\d+\.multihead_attn\.")
    deformable = f"{prefix}transformer.level_embed" in state
    return YES if backbone and not deformable and any(decoder.match(key) for key in keys) else NO


def read_official_detr(candidate: Candidate, model_config=None) -> Checkpoint:
    """Read an official DETR file. ``model_config`` (from ``--model``, or recorded in an export) settles what the
    file cannot tell without its training args: the dilation (DC5) and the number of heads."""
    path = candidate.path
    raw_state, args = split_official(candidate.content)
    state = {key: value for key, value in raw_state.items() if not key.endswith(BATCH_NORM_COUNTERS)}
    read_from = ["format: official code (facebookresearch/detr or fundamentalvision/Deformable-DETR)"]
    read_from.append("architecture: training args in the file" if args is not None else "architecture: tensor shapes")
    with missing_tensors(path.name, ", which every official checkpoint of its family has"):
        config = _official_detr_config(state, args, path.name, read_from, model_config)
    return Checkpoint(
        path, SOURCE_OFFICIAL, config, state, candidate.sha256, class_names=None, read_from=tuple(read_from)
    )


def _official_detr_config(state, args, source: str, read_from: list, model_config) -> DETRConfig:
    panoptic = any(key.startswith("detr.") for key in state)
    prefix = "detr." if panoptic else ""
    if arg(args, "pre_norm", False):
        raise DetrDeployError(
            f"checkpoint {source} was trained with --pre_norm; only the released post-norm DETR is supported"
        )
    if f"{prefix}transformer.encoder.layers.0.self_attn.in_proj_weight" not in state:
        raise DetrDeployError(f"checkpoint {source} has the official backbone but no DETR transformer")
    dilation = arg(args, "dilation")
    if dilation is None and model_config is not None:
        dilation = model_config.backbone.dilate_last_stage
        read_from.append("dilation (DC5): from --model")
    elif dilation is None:
        raise DetrDeployError(
            f"checkpoint {source} is an official DETR without its training args, and DETR with and without a "
            "dilated C5 (DC5) have identical tensors: say which with --model (e.g. detr_r50 or detr_r50_dc5)"
        )
    else:
        read_from.append("dilation (DC5): training args")
    backbone = backbone_config(state, f"{prefix}backbone.0.body.", bool(dilation), source)
    check_resnet_name(arg(args, "backbone"), backbone, source)
    hidden_dim = state[f"{prefix}query_embed.weight"].shape[1]
    config = DETRConfig(
        num_classes=state[f"{prefix}class_embed.weight"].shape[0] - 1,
        num_queries=state[f"{prefix}query_embed.weight"].shape[0],
        hidden_dim=hidden_dim,
        num_heads=official_heads(args, model_config, read_from),
        num_encoder_layers=count_indices(state, rf"{prefix}transformer\.encoder\.layers\.(\d+)\."),
        num_decoder_layers=count_indices(state, rf"{prefix}transformer\.decoder\.layers\.(\d+)\."),
        dim_feedforward=state[f"{prefix}transformer.encoder.layers.0.linear1.weight"].shape[0],
        backbone=backbone,
        panoptic=panoptic,
    )
    read_from.append("classes, queries, layers, widths: tensor shapes and key counts")
    return config


# --- transformers ------------------------------------------------------------------------------------------------

# transformers' DetrConfig defaults for fields a config.json may leave out.
_TRANSFORMERS_DETR_DEFAULTS = {
    "num_queries": 100,
    "d_model": 256,
    "encoder_layers": 6,
    "decoder_layers": 6,
    "encoder_ffn_dim": 2048,
    "decoder_ffn_dim": 2048,
    "encoder_attention_heads": 8,
    "decoder_attention_heads": 8,
}


def _transformers_detr_rules(prefix: str) -> list[tuple[str, str]]:
    """4.x names of DetrForObjectDetection (``prefix`` "") or of the DETR inside DetrForSegmentation ("detr.")
    -> the official layout. Post-norm layers: HF's self_attn_layer_norm, encoder_attn_layer_norm and
    final_layer_norm are the official norm1, norm2 and norm2/norm3 by position."""
    model, to = re.escape(prefix) + r"model\.", prefix
    encoder, decoder = f"{model}encoder\\.layers\\.(\\d+)\\.", f"{model}decoder\\.layers\\.(\\d+)\\."
    return [
        (rf"{model}backbone\.conv_encoder\.model\.(.*)", rf"{to}backbone.0.body.\1"),
        (rf"{model}input_projection\.(weight|bias)", rf"{to}input_proj.\1"),
        (rf"{model}query_position_embeddings\.weight", rf"{to}query_embed.weight"),
        (rf"{encoder}self_attn\.({SEPARATE_ATTENTION})", rf"{to}transformer.encoder.layers.\1.self_attn.\2"),
        (rf"{encoder}self_attn_layer_norm\.(weight|bias)", rf"{to}transformer.encoder.layers.\1.norm1.\2"),
        (rf"{encoder}fc([12])\.(weight|bias)", rf"{to}transformer.encoder.layers.\1.linear\2.\3"),
        (rf"{encoder}final_layer_norm\.(weight|bias)", rf"{to}transformer.encoder.layers.\1.norm2.\2"),
        (rf"{decoder}self_attn\.({SEPARATE_ATTENTION})", rf"{to}transformer.decoder.layers.\1.self_attn.\2"),
        (rf"{decoder}self_attn_layer_norm\.(weight|bias)", rf"{to}transformer.decoder.layers.\1.norm1.\2"),
        (rf"{decoder}encoder_attn\.({SEPARATE_ATTENTION})", rf"{to}transformer.decoder.layers.\1.multihead_attn.\2"),
        (rf"{decoder}encoder_attn_layer_norm\.(weight|bias)", rf"{to}transformer.decoder.layers.\1.norm2.\2"),
        (rf"{decoder}fc([12])\.(weight|bias)", rf"{to}transformer.decoder.layers.\1.linear\2.\3"),
        (rf"{decoder}final_layer_norm\.(weight|bias)", rf"{to}transformer.decoder.layers.\1.norm3.\2"),
        (rf"{model}decoder\.layernorm\.(weight|bias)", rf"{to}transformer.decoder.norm.\1"),
        (rf"{re.escape(prefix)}class_labels_classifier\.(weight|bias)", rf"{to}class_embed.\1"),
        (rf"{re.escape(prefix)}bbox_predictor\.layers\.(\d+)\.(weight|bias)", rf"{to}bbox_embed.layers.\1.\2"),
    ]


def recognize_transformers_detr(candidate: Candidate) -> Recognition:
    return YES if candidate.folder is not None and candidate.folder.model_type == "detr" else NO


def read_transformers_detr(candidate: Candidate, model_config=None) -> Checkpoint:
    """Read a transformers DETR directory (``model_config`` is not needed: config.json tells everything)."""
    folder = candidate.folder
    state, keys_line = detr_style_state(folder)
    panoptic = any(key.startswith(("detr.", "mask_head.", "bbox_attention.")) for key in state)
    architecture = declared_architecture(folder.config, "DetrForSegmentation" if panoptic else "DetrForObjectDetection")
    refuse_bare_model(folder, architecture, ("DetrModel",), "DetrForObjectDetection or DetrForSegmentation")
    source = folder.source
    values = ConfigValues(
        folder.config, {**DETR_STYLE_DEFAULTS, **_TRANSFORMERS_DETR_DEFAULTS}, source, "the zoo's DETR"
    )
    read_from = detr_style_read_from(folder, architecture, keys_line)
    backbone = transformers_backbone(folder.config, values)
    prefix = "detr." if panoptic else ""
    state = torchvision_named(
        rename_keys(state, _transformers_detr_rules(prefix)), backbone, f"{prefix}backbone.0.body.", source
    )
    config = _transformers_detr_config(state, values, backbone, panoptic, source)
    fuse_every_qkv(state)
    read_from.append(f"backbone: {backbone.description}")
    read_from.append(f"dilation (DC5): {'yes' if config.backbone.dilate_last_stage else 'no'} (config.json)")
    read_from.append("architecture: config.json (layers, widths, heads, queries), checked against tensor shapes")
    class_names = id2label_class_names(folder.config, config.num_classes, source, read_from)
    return Checkpoint(
        folder.checkpoint_path, SOURCE_TRANSFORMERS, config, state, folder.digest, class_names, tuple(read_from)
    )


def _transformers_detr_config(
    state: dict, values: ConfigValues, backbone: TransformersBackbone, panoptic: bool, source: str
) -> DETRConfig:
    check_detr_style_config(values)
    prefix = "detr." if panoptic else ""
    required = (1, 2, 3, 4) if panoptic else (4,)
    if backbone.out_stages is not None and tuple(backbone.out_stages[-len(required) :]) != required:
        raise values.unsupported(f"backbone outputs {list(backbone.out_stages)} (needs stages {list(required)})")
    hidden_dim = values["d_model"]
    heads = values.same("encoder_attention_heads", "decoder_attention_heads")
    if panoptic and hidden_dim < 128:
        # transformers shrinks the mask head's GroupNorm below 8 groups there; the official head always has 8.
        raise values.unsupported(f"a panoptic mask head with d_model {hidden_dim} (needs d_model >= 128)")
    classes = required_tensor(state, f"{prefix}class_embed.weight", source).shape[0] - 1
    queries = required_tensor(state, f"{prefix}query_embed.weight", source)
    check_size(source, "num_queries", values["num_queries"], queries.shape[0])
    check_size(source, "d_model", hidden_dim, queries.shape[1])
    return DETRConfig(
        num_classes=classes,
        num_queries=values["num_queries"],
        hidden_dim=hidden_dim,
        num_heads=heads,
        num_encoder_layers=counted_layers(state, f"{prefix}transformer.encoder", values, "encoder_layers", source),
        num_decoder_layers=counted_layers(state, f"{prefix}transformer.decoder", values, "decoder_layers", source),
        dim_feedforward=values.same("encoder_ffn_dim", "decoder_ffn_dim"),
        backbone=backbone_config(state, f"{prefix}backbone.0.body.", backbone.dilation, source),
        panoptic=panoptic,
    )


# --- mmdetection -------------------------------------------------------------------------------------------------

_MMDET_RULES = (
    *mm.RESNET_RULES,
    *mm.FFN_RULES,
    (rf"neck\.convs\.0\.conv\.{WB}", r"input_proj.\1"),
    (rf"(encoder|decoder)\.layers\.(\d+)\.self_attn\.attn\.{MHA}", r"transformer.\1.layers.\2.self_attn.\3"),
    (rf"decoder\.layers\.(\d+)\.cross_attn\.attn\.{MHA}", r"transformer.decoder.layers.\1.multihead_attn.\2"),
    # The decoder's norms follow self-attention, cross-attention and FFN, as officially.
    (rf"decoder\.layers\.(\d+)\.norms\.0\.{WB}", r"transformer.decoder.layers.\1.norm1.\2"),
    (rf"decoder\.layers\.(\d+)\.norms\.1\.{WB}", r"transformer.decoder.layers.\1.norm2.\2"),
    (rf"decoder\.layers\.(\d+)\.norms\.2\.{WB}", r"transformer.decoder.layers.\1.norm3.\2"),
    (rf"decoder\.post_norm\.{WB}", r"transformer.decoder.norm.\1"),
    (r"query_embedding\.weight", "query_embed.weight"),
    (rf"bbox_head\.fc_cls\.{WB}", r"class_embed.\1"),
    # reg_ffn (Linear, ReLU, Linear) + ReLU + fc_reg is the official 3-layer box MLP.
    (rf"bbox_head\.reg_ffn\.layers\.0\.0\.{WB}", r"bbox_embed.layers.0.\1"),
    (rf"bbox_head\.reg_ffn\.layers\.1\.{WB}", r"bbox_embed.layers.1.\1"),
    (rf"bbox_head\.fc_reg\.{WB}", r"bbox_embed.layers.2.\1"),
)
_MMDET_TYPE = "DETR"


def recognize_mmdetection_detr(candidate: Candidate) -> Recognition:
    """An mmdetection file whose config names DETR (or no type) with DETR's class head ``bbox_head.fc_cls`` and no
    reference-point head (Conditional DETR and DAB-DETR have the same class head, and ``decoder.ref_point_head``)."""
    file = mm.mmdetection_file(candidate)
    if file is None or not mm.model_type_allows(file, _MMDET_TYPE):
        return NO
    state = file.state_3x
    return YES if "bbox_head.fc_cls.weight" in state and "decoder.ref_point_head.layers.0.weight" not in state else NO


def read_mmdetection_detr(candidate: Candidate, model_config=None) -> Checkpoint:
    """Read an mmdetection 3.x or 2.x DETR (``model_config`` is not needed: tensors and config text tell all)."""
    file = mm.mmdetection_file(candidate)
    source, state = candidate.path.name, file.state_3x
    read_from = [f"format: mmdetection {file.version}.x (DETR)", file.architecture_origin()]
    check_mmdetection_resnet(state, file.model_cfg, source)
    mm.check_detr_style_settings(file, 0.0, source)
    backbone = backbone_config(state, "backbone.", False, source)
    read_from.append(mm.undilated_line(file, "DETR"))
    with missing_tensors(source, f" (in mmdetection {file.version}.x names), which every mmdetection DETR has"):
        config = _mmdetection_detr_config(file, backbone, source, read_from)
    class_names = _mmdetection_class_names(file, config.num_classes, source, read_from)
    renamed = mm.renamed_into_zoo(state, _MMDET_RULES, mm.OFFICIAL_LAYOUT_PREFIXES, "DETR", source)
    return Checkpoint(candidate.path, file.source, config, renamed, candidate.sha256, class_names, tuple(read_from))


def _mmdetection_detr_config(file, backbone, source: str, read_from: list) -> DETRConfig:
    state, model_cfg = file.state_3x, file.model_cfg
    if "neck.convs.0.conv.weight" not in state or "neck.convs.1.conv.weight" in state:
        raise DetrDeployError(
            f"checkpoint {source}: its DETR does not project one backbone stage with one convolution "
            f"({mm.first_keys(state, 'neck.')}); the zoo's DETR does"
        )
    if "neck.convs.0.conv.bias" not in state or any(key.startswith(("neck.convs.0.gn", "neck.extra")) for key in state):
        raise DetrDeployError(
            f"checkpoint {source}: its DETR input projection has a norm layer or no bias; the zoo's DETR has a "
            "plain convolution with bias"
        )
    if mm.config_value(model_cfg, "bbox_head.loss_cls.use_sigmoid") is True:
        raise DetrDeployError(
            f"checkpoint {source}: its DETR head scores with a sigmoid (loss_cls.use_sigmoid=True); the zoo's DETR "
            "scores with a softmax over classes + background"
        )
    hidden_dim = state["query_embedding.weight"].shape[1]
    config = DETRConfig(
        num_classes=state["bbox_head.fc_cls.weight"].shape[0] - 1,
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
    """The names in the file, checked against DETR's class head: one logit per class plus background (softmax)."""
    names, where = mm.class_names(file.meta)
    if names is not None and num_classes + 1 == len(names):
        raise DetrDeployError(
            f"checkpoint {source}: its DETR class head has {num_classes + 1} outputs for {len(names)} classes, so no "
            "background logit (a sigmoid-scored DETR); the zoo's DETR scores with a softmax over classes + background"
        )
    return mm.matched_class_names(names, where, num_classes + 1, len(names or ()) + 1, read_from)


READERS = (
    Reader(
        "official DETR",
        FORMAT_OFFICIAL,
        recognize_official_detr,
        read_official_detr,
        labels=("DETR", "DETR-panoptic"),
    ),
    Reader(
        "transformers DETR",
        FORMAT_TRANSFORMERS,
        recognize_transformers_detr,
        read_transformers_detr,
        labels=("DETR", "DETR-panoptic"),
        format_names=("detr",),
        classes=("DetrForObjectDetection", "DetrForSegmentation"),
    ),
    Reader(
        "mmdetection DETR",
        FORMAT_MMDETECTION,
        recognize_mmdetection_detr,
        read_mmdetection_detr,
        labels=("DETR",),
        format_names=(_MMDET_TYPE,),
    ),
)
