"""DAB-DETR checkpoints: the official code (IDEA-Research/DAB-DETR ``main.py -m dab_detr``), transformers
(``DabDetrForObjectDetection``, model_type ``dab-detr``) and mmdetection 3.x (``DABDETR``).

Our module names are the official ones (``models.dab_detr``): ``backbone.0.body.*`` (torchvision ResNet),
``input_proj``, ``refpoint_embed`` (the anchors), ``transformer.encoder.layers.N.*`` (DETR's encoder layer plus
``activation`` for PReLU) and ``transformer.encoder.query_scale``, ``transformer.decoder.layers.N.*`` (Conditional
DETR's layer: ``sa_*`` / ``ca_*`` projections, ``self_attn.out_proj``, ``cross_attn.out_proj``, ``linear1/2``,
``norm1..3``, ``activation``), ``transformer.decoder.{norm, query_scale, ref_point_head, ref_anchor_head,
bbox_embed}``, ``transformer.patterns``, ``class_embed``, ``bbox_embed`` (the same box head as
``transformer.decoder.bbox_embed``). transformers names the same modules its own way (one name set in 4.x and 5.x:
its conversion mapping has no DAB-DETR entry) and keeps the anchor count as ``num_queries``; mmdetection's DAB-DETR
numbers its norms in execution order and calls the anchors ``query_embedding``. The three sources clamp the inverse
sigmoid differently (``models.dab_detr``): the config records which.

DN-DETR's DAB-DETR (IDEA-Research/DN-DETR) adds a denoising label embedding (``label_enc``) whose last row is also
the content of the inference queries, so it is not a DAB-DETR: refused by name.
"""

import math
import re

from detr_deploy.checkpoints.candidate import (
    FORMAT_MMDETECTION,
    FORMAT_OFFICIAL,
    FORMAT_TRANSFORMERS,
    NO,
    YES,
    Candidate,
    Reader,
    Recognition,
    refuse,
)
from detr_deploy.checkpoints.checkpoint import SOURCE_OFFICIAL, SOURCE_TRANSFORMERS, Checkpoint, missing_tensors
from detr_deploy.checkpoints.formats import mmdetection as mm
from detr_deploy.checkpoints.formats.official import arg, official_dilation, official_heads, split_official
from detr_deploy.checkpoints.formats.transformers import (
    ConfigValues,
    check_size,
    config_style,
    declared_architecture,
    id2label_class_names,
    refuse_bare_model,
    required_tensor,
    written_by,
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
    backbone_config,
    check_mmdetection_resnet,
    check_resnet_name,
    torchvision_named,
    transformers_backbone,
)
from detr_deploy.errors import DetrDeployError
from detr_deploy.models.dab_detr import OFFICIAL_EPS, POSITION_TEMPERATURE, TRANSFORMERS_EPS, DABDETRConfig

_DN_DETR = "label_enc.weight"
_ZOO_PREFIXES = (
    "backbone.0.body.",
    "input_proj.",
    "refpoint_embed.",
    "transformer.",
    "class_embed.",
    "bbox_embed.",
)


def _refuse_dn_detr(source: str) -> Recognition:
    return refuse(
        f"checkpoint {source} looks like DN-DETR (it has the denoising label embedding {_DN_DETR!r}), which is not "
        "supported: its inference queries start from that embedding, not from DAB-DETR's zeros or patterns"
    )


def _with_box_head_aliases(state: dict) -> dict:
    """The box head under both names the zoo's state dict lists it (a file may hold it once: tied weights)."""
    for key in list(state):
        if key.startswith("bbox_embed."):
            state.setdefault(f"transformer.decoder.{key}", state[key])
        elif key.startswith("transformer.decoder.bbox_embed."):
            state.setdefault(key.removeprefix("transformer.decoder."), state[key])
    return state


def _check_decoder_variant(state: dict, num_decoder_layers: int, source: str) -> None:
    """The zoo's decoder: box queries (4-D anchors), element-wise ``query_scale``, modulated width/height attention,
    the anchors' position in the first layer's cross-attention only (officially ``keep_query_pos`` off)."""
    anchors = state["refpoint_embed.weight"]
    if anchors.shape[-1] != 4:
        raise DetrDeployError(
            f"checkpoint {source}: its anchors are {anchors.shape[-1]}-D points (query_dim {anchors.shape[-1]}); the "
            "zoo's DAB-DETR learns 4-D boxes"
        )
    scale = "transformer.decoder.query_scale"
    if f"{scale}.layers.1.weight" not in state or f"{scale}.weight" in state:
        raise DetrDeployError(
            f"checkpoint {source}: its decoder's query_scale is not the element-wise MLP (query_scale_type "
            "'cond_elewise'), the zoo's DAB-DETR's"
        )
    if state["transformer.decoder.query_scale.layers.1.weight"].shape[0] != state["class_embed.weight"].shape[1]:
        raise DetrDeployError(
            f"checkpoint {source}: its decoder's query_scale predicts one scalar per query (query_scale_type "
            "'cond_scalar'); the zoo's DAB-DETR scales element-wise"
        )
    if "transformer.decoder.ref_anchor_head.layers.0.weight" not in state:
        raise DetrDeployError(
            f"checkpoint {source}: its decoder has no ref_anchor_head (modulate_hw_attn off); the zoo's DAB-DETR "
            "modulates cross-attention by the predicted width and height"
        )
    kept = [
        index
        for index in range(1, num_decoder_layers)
        if f"transformer.decoder.layers.{index}.ca_qpos_proj.weight" in state
    ]
    if kept:
        raise DetrDeployError(
            f"checkpoint {source}: decoder layer {kept[0]} adds the anchors' position to its cross-attention query "
            "(keep_query_pos); the zoo's DAB-DETR does so in the first layer only"
        )
    if any(re.match(r"bbox_embed\.\d+\.", key) for key in state):
        raise DetrDeployError(
            f"checkpoint {source}: it has one box head per decoder layer (bbox_embed_diff_each_layer); the zoo's "
            "DAB-DETR shares one"
        )


def _config_from_tensors(state: dict, source: str, **settings) -> DABDETRConfig:
    """The architecture the (zoo-named) tensors hold; ``settings`` add what no tensor holds (heads, eps, backbone)."""
    num_decoder_layers = count_indices(state, r"transformer\.decoder\.layers\.(\d+)\.")
    _check_decoder_variant(state, num_decoder_layers, source)
    patterns = state["transformer.patterns.weight"].shape[0] if "transformer.patterns.weight" in state else 0
    encoder_prelu = "transformer.encoder.layers.0.activation.weight" in state
    decoder_prelu = "transformer.decoder.layers.0.activation.weight" in state
    if encoder_prelu != decoder_prelu:
        raise DetrDeployError(
            f"checkpoint {source}: its encoder and decoder FFNs use different activations; the zoo's DAB-DETR uses "
            "one (PReLU or ReLU) in both"
        )
    return DABDETRConfig(
        num_classes=state["class_embed.weight"].shape[0],
        num_queries=state["refpoint_embed.weight"].shape[0] * max(1, patterns),
        num_patterns=patterns,
        hidden_dim=state["class_embed.weight"].shape[1],
        num_encoder_layers=count_indices(state, r"transformer\.encoder\.layers\.(\d+)\."),
        num_decoder_layers=num_decoder_layers,
        dim_feedforward=state["transformer.encoder.layers.0.linear1.weight"].shape[0],
        activation="prelu" if encoder_prelu else "relu",
        **settings,
    )


# --- official ----------------------------------------------------------------------------------------------------


def recognize_official(candidate: Candidate) -> Recognition:
    """The official layout (``backbone.0.body.``) with DAB-DETR's anchors and ``ref_anchor_head``, single-scale (DAB's
    Deformable DETR has ``transformer.level_embed``); DN-DETR's variant is refused by name."""
    state = candidate.state
    if state is None or mm.mmdetection_file(candidate) is not None:
        return NO
    keys = [str(key) for key in state]
    anchors = "refpoint_embed.weight" in state
    dab = anchors and any(key.startswith("transformer.decoder.ref_anchor_head.") for key in keys)
    if not dab or "transformer.level_embed" in state or not any(key.startswith("backbone.0.body.") for key in keys):
        return NO
    return _refuse_dn_detr(candidate.path.name) if _DN_DETR in state else YES


def read_official(candidate: Candidate, model_config=None) -> Checkpoint:
    """Read an official DAB-DETR file; ``model_config`` (``--model``) settles the dilation when the file has no
    training args (DC5 has the same tensors)."""
    path = candidate.path
    raw_state, args = split_official(candidate.content)
    state = {str(key): value for key, value in raw_state.items() if not str(key).endswith(BATCH_NORM_COUNTERS)}
    read_from = ["format: official code (IDEA-Research/DAB-DETR)"]
    read_from.append("architecture: training args in the file" if args is not None else "architecture: tensor shapes")
    with missing_tensors(path.name, ", which every official DAB-DETR checkpoint has"):
        config = _official_config(state, args, path.name, read_from, model_config)
    return Checkpoint(path, SOURCE_OFFICIAL, config, state, candidate.sha256, None, tuple(read_from))


def _official_config(state: dict, args, source: str, read_from: list, model_config) -> DABDETRConfig:
    if arg(args, "pre_norm", False):
        raise DetrDeployError(
            f"checkpoint {source} was trained with --pre_norm; only the released post-norm DAB-DETR is supported"
        )
    if arg(args, "position_embedding", "sine") not in ("sine", "v2"):
        raise DetrDeployError(
            f"checkpoint {source} was trained with --position_embedding {args.position_embedding}; only 'sine' is "
            "supported"
        )
    temperatures = tuple(arg(args, f"pe_temperature{side}", POSITION_TEMPERATURE) for side in "HW")
    if any(temperature != POSITION_TEMPERATURE for temperature in temperatures):
        raise DetrDeployError(
            f"checkpoint {source} was trained with position temperatures {temperatures}; the zoo's DAB-DETR uses the "
            f"official {POSITION_TEMPERATURE:g} for both"
        )
    if arg(args, "dilation") is None and model_config is None:
        raise DetrDeployError(
            f"checkpoint {source} is an official DAB-DETR without its training args, and DAB-DETR with and without a "
            "dilated C5 (DC5) have identical tensors: say which with --model (e.g. dab_detr_r50 or dab_detr_r50_dc5)"
        )
    dilation = official_dilation(args, model_config, "", read_from)
    backbone = backbone_config(state, "backbone.0.body.", dilation, source)
    check_resnet_name(arg(args, "backbone"), backbone, source)
    config = _config_from_tensors(
        _with_box_head_aliases(state),
        source,
        num_heads=official_heads(args, model_config, read_from),
        refine_eps=OFFICIAL_EPS,
        head_eps=OFFICIAL_EPS,
        backbone=backbone,
    )
    activation = arg(args, "transformer_activation")
    if activation is not None and activation != config.activation:
        raise DetrDeployError(
            f"checkpoint {source} was trained with --transformer_activation {activation}; the zoo's DAB-DETR has "
            "PReLU or ReLU FFNs (the tensors say which)"
        )
    read_from.append("classes, anchors, patterns, layers, widths, activation: tensor shapes and key counts")
    read_from.append(f"inverse-sigmoid clamp: {OFFICIAL_EPS:g} (the official util.misc.inverse_sigmoid)")
    return config


# --- transformers ------------------------------------------------------------------------------------------------

# transformers' DabDetrConfig defaults for fields a config.json may leave out.
_TRANSFORMERS_DEFAULTS = {
    "num_queries": 300,
    "hidden_size": 256,
    "encoder_layers": 6,
    "decoder_layers": 6,
    "encoder_ffn_dim": 2048,
    "decoder_ffn_dim": 2048,
    "encoder_attention_heads": 8,
    "decoder_attention_heads": 8,
    "activation_function": "prelu",
    "num_patterns": 0,
    "temperature_height": 20,
    "temperature_width": 20,
    "query_dim": 4,
    "keep_query_pos": False,
    "normalize_before": False,
    "num_channels": 3,
    "dilation": False,
    "backbone": "resnet50",
    "use_timm_backbone": True,
}
_ENCODER, _DECODER = r"model\.encoder\.layers\.(\d+)\.", r"model\.decoder\.layers\.(\d+)\."
_TO_ENCODER, _TO_DECODER = r"transformer.encoder.layers.\1.", r"transformer.decoder.layers.\1."
_TRANSFORMERS_RULES = [
    # A timm backbone sits under TimmBackbone's ``_backbone`` (the hub's IDEA-Research/dab-detr-resnet-50 layout).
    (r"model\.backbone\.conv_encoder\.model\._backbone\.(.*)", r"backbone.0.body.\1"),
    (r"model\.backbone\.conv_encoder\.model\.(.*)", r"backbone.0.body.\1"),
    (rf"model\.input_projection\.{WB}", r"input_proj.\1"),
    (r"model\.query_refpoint_embeddings\.weight", "refpoint_embed.weight"),
    (r"model\.patterns\.weight", "transformer.patterns.weight"),
    (rf"model\.(encoder|decoder)\.query_scale\.layers\.(\d+)\.{WB}", r"transformer.\1.query_scale.layers.\2.\3"),
    (rf"{_ENCODER}self_attn\.({SEPARATE_ATTENTION})", rf"{_TO_ENCODER}self_attn.\2"),
    (rf"{_ENCODER}self_attn_layer_norm\.{WB}", rf"{_TO_ENCODER}norm1.\2"),
    (rf"{_ENCODER}fc([12])\.{WB}", rf"{_TO_ENCODER}linear\2.\3"),
    (rf"{_ENCODER}final_layer_norm\.{WB}", rf"{_TO_ENCODER}norm2.\2"),
    (rf"{_ENCODER}activation_fn\.weight", rf"{_TO_ENCODER}activation.weight"),
    *(
        (rf"{_DECODER}self_attn\.self_attn_{theirs}_proj\.{WB}", rf"{_TO_DECODER}sa_{ours}_proj.\2")
        for theirs, ours in (
            ("query_content", "qcontent"),
            ("query_pos", "qpos"),
            ("key_content", "kcontent"),
            ("key_pos", "kpos"),
            ("value", "v"),
        )
    ),
    (rf"{_DECODER}self_attn\.self_attn\.output_proj\.{WB}", rf"{_TO_DECODER}self_attn.out_proj.\2"),
    (rf"{_DECODER}self_attn\.self_attn_layer_norm\.{WB}", rf"{_TO_DECODER}norm1.\2"),
    *(
        (rf"{_DECODER}cross_attn\.cross_attn_{theirs}_proj\.{WB}", rf"{_TO_DECODER}ca_{ours}_proj.\2")
        for theirs, ours in (
            ("query_content", "qcontent"),
            ("query_pos", "qpos"),
            ("key_content", "kcontent"),
            ("key_pos", "kpos"),
            ("value", "v"),
            ("query_pos_sine", "qpos_sine"),
        )
    ),
    (rf"{_DECODER}cross_attn\.cross_attn\.output_proj\.{WB}", rf"{_TO_DECODER}cross_attn.out_proj.\2"),
    (rf"{_DECODER}cross_attn\.cross_attn_layer_norm\.{WB}", rf"{_TO_DECODER}norm2.\2"),
    (rf"{_DECODER}mlp\.fc([12])\.{WB}", rf"{_TO_DECODER}linear\2.\3"),
    (rf"{_DECODER}mlp\.final_layer_norm\.{WB}", rf"{_TO_DECODER}norm3.\2"),
    (rf"{_DECODER}mlp\.activation_fn\.weight", rf"{_TO_DECODER}activation.weight"),
    (rf"model\.decoder\.layernorm\.{WB}", r"transformer.decoder.norm.\1"),
    (
        rf"model\.decoder\.(ref_point_head|ref_anchor_head|bbox_embed)\.layers\.(\d+)\.{WB}",
        r"transformer.decoder.\1.layers.\2.\3",
    ),
    (rf"class_embed\.{WB}", r"class_embed.\1"),
    (rf"bbox_predictor\.layers\.(\d+)\.{WB}", r"bbox_embed.layers.\1.\2"),
    (r".*\.num_batches_tracked", ""),
]


def recognize_transformers(candidate: Candidate) -> Recognition:
    return YES if candidate.folder is not None and candidate.folder.model_type == "dab-detr" else NO


def read_transformers(candidate: Candidate, model_config=None) -> Checkpoint:
    """Read a transformers DAB-DETR directory (config.json tells everything)."""
    folder = candidate.folder
    source = folder.source
    architecture = declared_architecture(folder.config, "DabDetrForObjectDetection")
    refuse_bare_model(folder, architecture, ("DabDetrModel",), "DabDetrForObjectDetection")
    values = ConfigValues(folder.config, _TRANSFORMERS_DEFAULTS, source, "the zoo's DAB-DETR")
    read_from = [
        f"format: transformers {written_by(folder.config)} directory ({architecture})",
        f"weights: {folder.weights_label}",
        "keys: transformers names (the same in 4.x and 5.x)",
        config_style(folder.config),
    ]
    _check_transformers_settings(values)
    backbone = transformers_backbone(folder.config, values)
    if backbone.out_stages is not None and backbone.out_stages[-1] != 4:
        raise values.unsupported(f"backbone outputs {list(backbone.out_stages)} (needs stage 4)")
    state = torchvision_named(rename_keys(folder.weights, _TRANSFORMERS_RULES), backbone, "backbone.0.body.", source)
    fuse_every_qkv(state)
    _with_box_head_aliases(state)
    with missing_tensors(source, " (in transformers names), which every DabDetrForObjectDetection has"):
        config = _config_from_tensors(
            state,
            source,
            num_heads=values.same("encoder_attention_heads", "decoder_attention_heads"),
            refine_eps=TRANSFORMERS_EPS,
            head_eps=TRANSFORMERS_EPS,
            backbone=backbone_config(state, "backbone.0.body.", backbone.dilation, source),
        )
    anchors = required_tensor(state, "refpoint_embed.weight", source).shape[0]
    check_size(source, "num_queries (anchors)", values["num_queries"], anchors)
    check_size(source, "num_patterns", values["num_patterns"], config.num_patterns)
    check_size(source, "hidden_size", values["hidden_size"], config.hidden_dim)
    check_size(source, "encoder_layers", values["encoder_layers"], config.num_encoder_layers)
    check_size(source, "decoder_layers", values["decoder_layers"], config.num_decoder_layers)
    check_size(source, "encoder_ffn_dim", values.same("encoder_ffn_dim", "decoder_ffn_dim"), config.dim_feedforward)
    check_size(source, "activation_function", values["activation_function"], config.activation)
    read_from.append(f"backbone: {backbone.description}")
    read_from.append(f"dilation (DC5): {'yes' if config.backbone.dilate_last_stage else 'no'} (config.json)")
    read_from.append("architecture: config.json (layers, widths, heads, anchors, patterns), checked against tensors")
    read_from.append(f"inverse-sigmoid clamp: {TRANSFORMERS_EPS:g} (transformers' modeling_dab_detr)")
    class_names = id2label_class_names(folder.config, config.num_classes, source, read_from)
    return Checkpoint(
        folder.checkpoint_path, SOURCE_TRANSFORMERS, config, state, folder.digest, class_names, tuple(read_from)
    )


def _check_transformers_settings(values: ConfigValues) -> None:
    if values["activation_function"] not in ("prelu", "relu"):
        raise values.unsupported(f"activation_function {values['activation_function']!r} (only 'prelu' or 'relu')")
    for name in ("temperature_height", "temperature_width"):
        if values[name] != POSITION_TEMPERATURE:
            raise values.unsupported(f"{name} {values[name]} (only the official {POSITION_TEMPERATURE:g})")
    scale = values.config.get("sine_position_embedding_scale")
    if scale is not None and not math.isclose(scale, 2 * math.pi):
        raise values.unsupported(f"sine_position_embedding_scale {scale} (only 2*pi)")
    if values["query_dim"] != 4:
        raise values.unsupported(f"query_dim {values['query_dim']} (only 4: anchor boxes)")
    if values["keep_query_pos"]:
        raise values.unsupported("keep_query_pos true (the anchors' position in every layer's cross-attention)")
    if values["normalize_before"]:
        raise values.unsupported("normalize_before true (pre-norm layers; only the official post-norm)")
    if values["num_channels"] != 3:
        raise values.unsupported(f"num_channels {values['num_channels']} (only 3, RGB)")


# --- mmdetection -------------------------------------------------------------------------------------------------

_MMDET_TYPE = "DABDETR"
_MM_DECODER = r"decoder\.layers\.(\d+)\."
_MMDET_RULES = (
    *mm.RESNET_RULES,
    *mm.FFN_RULES,
    (rf"neck\.convs\.0\.conv\.{WB}", r"input_proj.\1"),
    (rf"encoder\.layers\.(\d+)\.self_attn\.attn\.{MHA}", r"transformer.encoder.layers.\1.self_attn.\2"),
    (r"(encoder|decoder)\.layers\.(\d+)\.ffn\.layers\.0\.1\.weight", r"transformer.\1.layers.\2.activation.weight"),
    *(
        (rf"{_MM_DECODER}{theirs}\.{part}_proj\.{WB}", rf"{_TO_DECODER}{ours}_{part}_proj.\2")
        for theirs, ours in (("self_attn", "sa"), ("cross_attn", "ca"))
        for part in ("qcontent", "qpos", "kcontent", "kpos", "v", "qpos_sine")
    ),
    (rf"{_MM_DECODER}(self_attn|cross_attn)\.out_proj\.{WB}", rf"{_TO_DECODER}\2.out_proj.\3"),
    # Norms in execution order: after self-attention, cross-attention and the FFN, as the official norm1..3.
    *((rf"{_MM_DECODER}norms\.{index}\.{WB}", rf"{_TO_DECODER}norm{index + 1}.\2") for index in range(3)),
    (rf"decoder\.post_norm\.{WB}", r"transformer.decoder.norm.\1"),
    (
        rf"(encoder|decoder)\.(query_scale|ref_point_head|ref_anchor_head)\.layers\.(\d+)\.{WB}",
        r"transformer.\1.\2.layers.\3.\4",
    ),
    (r"query_embedding\.weight", "refpoint_embed.weight"),
    (r"patterns\.weight", "transformer.patterns.weight"),
    (rf"bbox_head\.fc_cls\.{WB}", r"class_embed.\1"),
    (rf"bbox_head\.fc_reg\.layers\.(\d+)\.{WB}", r"bbox_embed.layers.\1.\2"),
)
# mmdetection's DABDetrTransformerDecoder refines with its inverse_sigmoid default; DABDETRHead clamps at 1e-3.
_MMDET_REFINE_EPS, _MMDET_HEAD_EPS = 1e-5, 1e-3


def recognize_mmdetection(candidate: Candidate) -> Recognition:
    """An mmdetection file whose config names DABDETR (or no type) with DAB-DETR's anchors and ref_anchor_head."""
    file = mm.mmdetection_file(candidate)
    if file is None or not mm.model_type_allows(file, _MMDET_TYPE):
        return NO
    state = file.state_3x
    return YES if "decoder.ref_anchor_head.layers.0.weight" in state and "query_embedding.weight" in state else NO


def read_mmdetection(candidate: Candidate, model_config=None) -> Checkpoint:
    """Read an mmdetection 3.x DAB-DETR (tensors and config text tell all)."""
    file = mm.mmdetection_file(candidate)
    source, state = candidate.path.name, file.state_3x
    read_from = [f"format: mmdetection {file.version}.x (DABDETR)", file.architecture_origin()]
    check_mmdetection_resnet(state, file.model_cfg, source)
    _check_mmdetection_settings(file, source)
    read_from.append(mm.undilated_line(file, "DAB-DETR"))
    other_neck = any(key.startswith(("neck.convs.0.gn", "neck.convs.1.")) for key in state)
    if "neck.convs.0.conv.bias" not in state or other_neck:
        raise DetrDeployError(
            f"checkpoint {source}: its DAB-DETR does not project one backbone stage with one plain convolution "
            f"({mm.first_keys(state, 'neck.')}); the zoo's DAB-DETR does"
        )
    renamed = _with_box_head_aliases(mm.renamed_into_zoo(state, _MMDET_RULES, _ZOO_PREFIXES, "DAB-DETR", source))
    every = f" (in mmdetection {file.version}.x names), which every mmdetection DABDETR has"
    with missing_tensors(source, every):
        hidden_dim = renamed["class_embed.weight"].shape[1]
        config = _config_from_tensors(
            renamed,
            source,
            num_heads=mm.mmdet_heads(file.model_cfg, file.version, False, hidden_dim, source, read_from),
            refine_eps=_MMDET_REFINE_EPS,
            head_eps=_MMDET_HEAD_EPS,
            backbone=backbone_config(state, "backbone.", False, source),
        )
    _check_mmdetection_activation(file, config, source)
    read_from.append("classes, anchors, patterns, layers, widths, activation: tensor shapes and key counts")
    read_from.append(
        f"inverse-sigmoid clamp: {_MMDET_REFINE_EPS:g} refining, {_MMDET_HEAD_EPS:g} in the head (mmdetection's)"
    )
    names, where = mm.class_names(file.meta)
    class_names = mm.matched_class_names(names, where, config.num_classes, len(names or ()), read_from)
    return Checkpoint(candidate.path, file.source, config, renamed, candidate.sha256, class_names, tuple(read_from))


def _check_mmdetection_settings(file, source: str) -> None:
    """Configured settings the zoo's fixed computation would get wrong: normalization, position encoding, decoder."""
    model_cfg = file.model_cfg
    if model_cfg is None:
        return
    mm.check_input_normalization(file.settings, model_cfg, file.version, source)
    position = mm.config_value(model_cfg, "positional_encoding", {})
    if isinstance(position, dict) and position:
        wrong = (
            position.get("normalize", False) is not True
            or position.get("offset", 0.0) != 0.0
            or position.get("temperature", 10000) != POSITION_TEMPERATURE
            or not math.isclose(position.get("scale", 2 * math.pi), 2 * math.pi)
        )
        if wrong:
            raise DetrDeployError(
                f"checkpoint {source}: its sine position encoding ({position}) is not DAB-DETR's (normalize=True, "
                f"offset=0, temperature={POSITION_TEMPERATURE:g}, scale=2*pi)"
            )
    fixed = {
        "decoder.query_dim": 4,
        "decoder.query_scale_type": "cond_elewise",
        "decoder.with_modulated_hw_attn": True,
        "decoder.layer_cfg.cross_attn_cfg.keep_query_pos": False,
        "bbox_head.loss_cls.use_sigmoid": True,
    }
    for name, expected in fixed.items():
        value = mm.config_value(model_cfg, name)
        if value is not None and value != expected:
            raise DetrDeployError(
                f"checkpoint {source}: its config sets {name}={value!r}; the zoo's DAB-DETR has {expected!r}"
            )


def _check_mmdetection_activation(file, config: DABDETRConfig, source: str) -> None:
    """The FFNs' act_cfg (PReLU shipped; ReLU has no tensor) agrees with the tensors."""
    for coder in ("encoder", "decoder"):
        act = mm.config_value(file.model_cfg, f"{coder}.layer_cfg.ffn_cfg.act_cfg.type") if file.model_cfg else None
        if act is not None and act.lower() != config.activation:
            raise DetrDeployError(
                f"checkpoint {source}: its {coder} FFN uses {act}; the zoo's DAB-DETR supports PReLU or ReLU as the "
                "tensors hold them"
            )


_LABELS = ("DAB-DETR",)
READERS = (
    Reader("official DAB-DETR", FORMAT_OFFICIAL, recognize_official, read_official, labels=_LABELS),
    Reader(
        "transformers DAB-DETR",
        FORMAT_TRANSFORMERS,
        recognize_transformers,
        read_transformers,
        labels=_LABELS,
        format_names=("dab-detr",),
        classes=("DabDetrForObjectDetection",),
    ),
    Reader(
        "mmdetection DAB-DETR",
        FORMAT_MMDETECTION,
        recognize_mmdetection,
        read_mmdetection,
        labels=_LABELS,
        format_names=(_MMDET_TYPE,),
    ),
)
