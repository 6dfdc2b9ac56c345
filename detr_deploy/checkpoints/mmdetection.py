"""Checkpoints of mmdetection 3.x and 2.x: DETR and Deformable DETR (plain, box refinement, refinement + two-stage);
mmdetection 3.x DINO files are recognized here and read by ``checkpoints.dino``.

mmengine (3.x) saves ``{'meta': {'dataset_meta': {'classes': ...}, 'cfg': config text, ...}, 'state_dict': ...,
'message_hub': ..., 'optimizer': ..., 'param_schedulers': ...}``; mmcv's runner (2.x) saves ``{'meta': {'CLASSES':
..., 'config': config text, 'mmdet_version': ...}, 'state_dict': ..., 'optimizer': ...}``. Only ``state_dict`` and
``meta`` are read; the rest may hold objects of classes we never import (``pickled.load_pickled`` stands
placeholders in for them).

The two versions hold the same tensors under different names (established by building the models with mmdet 3.3 and
from mmdet 2.28's ``models/utils/transformer.py``, ``dense_heads/detr_head.py``, ``deformable_detr_head.py`` and
mmcv 1.x's ``BaseTransformerLayer``):

- 3.x keeps the transformer at the top level: ``encoder.layers.N.{self_attn,ffn,norms.K}``,
  ``decoder.layers.N.{self_attn,cross_attn,ffn,norms.K}``, ``decoder.post_norm`` (DETR), ``query_embedding``,
  ``level_embed``, ``reference_points_fc``, ``memory_trans_fc/norm`` and ``pos_trans_fc/norm`` (two-stage); the
  input projection is the neck (``neck.convs.N.conv``, ``neck.convs.N.gn``, ``neck.extra_convs.N``).
- 2.x nests it under ``bbox_head.transformer.``: layers hold ``attentions.0`` (self), ``attentions.1`` (cross),
  ``ffns.0`` and ``norms.K``; ``level_embeds``, ``reference_points``, ``enc_output(_norm)``, ``pos_trans(_norm)``;
  ``bbox_head.query_embedding``; DETR's projection is ``bbox_head.input_proj`` (no neck). DETR files written before
  mmdet 2.12 say ``self_attn``, ``multihead_attn``, ``ffn`` and ``decoder.norm`` instead (mmdet converts them on
  load, and so do we).

Reading renames 2.x into 3.x names, then 3.x into the zoo's (official) layout. The architecture comes from tensor
shapes and key counts, and from the config text in ``meta`` where there is one (parsed as literals, never run):
attention heads, the two-stage query count, and the settings the zoo cannot express (another detector type,
backbone style or dilation, input normalization, position encoding) are only there.
"""

import ast
import math
from collections.abc import Mapping
from pathlib import Path

import torch

from detr_deploy.checkpoints.checkpoint import SOURCE_MMDET2, SOURCE_MMDET3, Checkpoint, integer_ratio
from detr_deploy.checkpoints.keymap import count_indices, rename_keys
from detr_deploy.checkpoints.official import backbone_config
from detr_deploy.errors import DetrDeployError
from detr_deploy.models.deformable_detr import DeformableDETRConfig
from detr_deploy.models.detr import DETRConfig

_DEFAULT_HEADS = 8
# The query count of mmdetection's shipped two-stage configs (3.x ``num_queries``, 2.x ``two_stage_num_proposals``).
_DEFAULT_TWO_STAGE_QUERIES = 300
# 3.x ``DetectionTransformer`` builds this many queries when a config does not say.
_MMDET3_DEFAULT_QUERIES = 100
_IGNORED_SUFFIXES = (".num_batches_tracked",)
_SUPPORTED_TYPES = ("DETR", "DeformableDETR")
_SUPPORTED_TEXT = "mmdetection's DETR, DeformableDETR and (3.x) DINO"
# mmdetection's input normalization that equals the ONNX contract's (RGB, ImageNet mean/std on 0..255).
_MMDET_MEAN = (123.675, 116.28, 103.53)
_MMDET_STD = (58.395, 57.12, 57.375)

# Keys of mmdetection detectors this version does not read, for a message better than "unknown tensors".
# (DINO itself is recognized before these are looked at.)
_FOREIGN_MARKERS = (
    ("language_model", "Grounding DINO"),
    ("ref_anchor_head", "DAB-DETR"),
    ("qpos_sine_proj", "Conditional DETR"),
    ("qcontent_proj", "Conditional DETR"),
    ("ref_point_head", "DAB-DETR or Conditional DETR"),
    ("query_scale", "Conditional DETR or DAB-DETR"),
    ("rpn_head.", "an R-CNN detector"),
    ("roi_head.", "an R-CNN detector"),
)

_TRANSFORMER_2X = r"bbox_head\.transformer\."
# 2.x (and pre-2.12 DETR) names -> 3.x names.
_RULES_2X_TO_3X = (
    (
        _TRANSFORMER_2X + r"(encoder|decoder)\.layers\.(\d+)\.(?:attentions\.0|self_attn)\.(.+)",
        r"\1.layers.\2.self_attn.\3",
    ),
    (
        _TRANSFORMER_2X + r"decoder\.layers\.(\d+)\.(?:attentions\.1|multihead_attn)\.(.+)",
        r"decoder.layers.\1.cross_attn.\2",
    ),
    (_TRANSFORMER_2X + r"(encoder|decoder)\.layers\.(\d+)\.(?:ffns\.0|ffn)\.(.+)", r"\1.layers.\2.ffn.\3"),
    (_TRANSFORMER_2X + r"(encoder|decoder)\.layers\.(\d+)\.norms\.(\d+)\.(.+)", r"\1.layers.\2.norms.\3.\4"),
    (_TRANSFORMER_2X + r"decoder\.(?:post_norm|norm)\.(.+)", r"decoder.post_norm.\1"),
    (_TRANSFORMER_2X + r"level_embeds", "level_embed"),
    (_TRANSFORMER_2X + r"reference_points\.(.+)", r"reference_points_fc.\1"),
    (_TRANSFORMER_2X + r"enc_output\.(.+)", r"memory_trans_fc.\1"),
    (_TRANSFORMER_2X + r"enc_output_norm\.(.+)", r"memory_trans_norm.\1"),
    (_TRANSFORMER_2X + r"pos_trans\.(.+)", r"pos_trans_fc.\1"),
    (_TRANSFORMER_2X + r"pos_trans_norm\.(.+)", r"pos_trans_norm.\1"),
    (r"bbox_head\.query_embedding\.(.+)", r"query_embedding.\1"),
    (r"bbox_head\.input_proj\.(.+)", r"neck.convs.0.conv.\1"),
)

_BN = r"(?:weight|bias|running_mean|running_var)"
_WB = r"(weight|bias)"
# mmdetection's ResNet uses torchvision's names; anything else under backbone. (plugins, DCN) stays unknown.
_BACKBONE_RULES = (
    (rf"backbone\.(conv1\.weight|bn1\.{_BN})", r"backbone.0.body.\1"),
    (
        rf"backbone\.(layer\d+\.\d+\.(?:conv[123]\.weight|bn[123]\.{_BN}|downsample\.0\.weight|downsample\.1\.{_BN}))",
        r"backbone.0.body.\1",
    ),
)
_FFN_RULES = (
    (rf"(encoder|decoder)\.layers\.(\d+)\.ffn\.layers\.0\.0\.{_WB}", r"transformer.\1.layers.\2.linear1.\3"),
    (rf"(encoder|decoder)\.layers\.(\d+)\.ffn\.layers\.1\.{_WB}", r"transformer.\1.layers.\2.linear2.\3"),
    (rf"encoder\.layers\.(\d+)\.norms\.0\.{_WB}", r"transformer.encoder.layers.\1.norm1.\2"),
    (rf"encoder\.layers\.(\d+)\.norms\.1\.{_WB}", r"transformer.encoder.layers.\1.norm2.\2"),
)
_MHA = r"(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)"
_MSDA = r"((?:sampling_offsets|attention_weights|value_proj|output_proj)\.(?:weight|bias))"
_DETR_RULES = (
    *_BACKBONE_RULES,
    *_FFN_RULES,
    (rf"neck\.convs\.0\.conv\.{_WB}", r"input_proj.\1"),
    (rf"(encoder|decoder)\.layers\.(\d+)\.self_attn\.attn\.{_MHA}", r"transformer.\1.layers.\2.self_attn.\3"),
    (rf"decoder\.layers\.(\d+)\.cross_attn\.attn\.{_MHA}", r"transformer.decoder.layers.\1.multihead_attn.\2"),
    # The decoder's norms follow self-attention, cross-attention and FFN, as officially.
    (rf"decoder\.layers\.(\d+)\.norms\.0\.{_WB}", r"transformer.decoder.layers.\1.norm1.\2"),
    (rf"decoder\.layers\.(\d+)\.norms\.1\.{_WB}", r"transformer.decoder.layers.\1.norm2.\2"),
    (rf"decoder\.layers\.(\d+)\.norms\.2\.{_WB}", r"transformer.decoder.layers.\1.norm3.\2"),
    (rf"decoder\.post_norm\.{_WB}", r"transformer.decoder.norm.\1"),
    (r"query_embedding\.weight", "query_embed.weight"),
    (rf"bbox_head\.fc_cls\.{_WB}", r"class_embed.\1"),
    # reg_ffn (Linear, ReLU, Linear) + ReLU + fc_reg is the official 3-layer box MLP.
    (rf"bbox_head\.reg_ffn\.layers\.0\.0\.{_WB}", r"bbox_embed.layers.0.\1"),
    (rf"bbox_head\.reg_ffn\.layers\.1\.{_WB}", r"bbox_embed.layers.1.\1"),
    (rf"bbox_head\.fc_reg\.{_WB}", r"bbox_embed.layers.2.\1"),
)
_DEFORMABLE_RULES = (
    *_BACKBONE_RULES,
    *_FFN_RULES,
    (rf"neck\.convs\.(\d+)\.conv\.{_WB}", r"input_proj.\1.0.\2"),
    (rf"neck\.convs\.(\d+)\.gn\.{_WB}", r"input_proj.\1.1.\2"),
    (rf"encoder\.layers\.(\d+)\.self_attn\.{_MSDA}", r"transformer.encoder.layers.\1.self_attn.\2"),
    (rf"decoder\.layers\.(\d+)\.self_attn\.attn\.{_MHA}", r"transformer.decoder.layers.\1.self_attn.\2"),
    (rf"decoder\.layers\.(\d+)\.cross_attn\.{_MSDA}", r"transformer.decoder.layers.\1.cross_attn.\2"),
    # mmdetection numbers the decoder's norms in execution order (self-attention, cross-attention, FFN); the
    # official layer, and so ours, calls them norm2, norm1, norm3.
    (rf"decoder\.layers\.(\d+)\.norms\.0\.{_WB}", r"transformer.decoder.layers.\1.norm2.\2"),
    (rf"decoder\.layers\.(\d+)\.norms\.1\.{_WB}", r"transformer.decoder.layers.\1.norm1.\2"),
    (rf"decoder\.layers\.(\d+)\.norms\.2\.{_WB}", r"transformer.decoder.layers.\1.norm3.\2"),
    (r"level_embed", "transformer.level_embed"),
    (rf"reference_points_fc\.{_WB}", r"transformer.reference_points.\1"),
    (rf"memory_trans_fc\.{_WB}", r"transformer.enc_output.\1"),
    (rf"memory_trans_norm\.{_WB}", r"transformer.enc_output_norm.\1"),
    (rf"pos_trans_fc\.{_WB}", r"transformer.pos_trans.\1"),
    (rf"pos_trans_norm\.{_WB}", r"transformer.pos_trans_norm.\1"),
    (r"query_embedding\.weight", "query_embed.weight"),
    (rf"bbox_head\.cls_branches\.(\d+)\.{_WB}", r"class_embed.\1.\2"),
    # reg_branches are Sequential(Linear, ReLU, Linear, ReLU, Linear).
    (rf"bbox_head\.reg_branches\.(\d+)\.0\.{_WB}", r"bbox_embed.\1.layers.0.\2"),
    (rf"bbox_head\.reg_branches\.(\d+)\.2\.{_WB}", r"bbox_embed.\1.layers.1.\2"),
    (rf"bbox_head\.reg_branches\.(\d+)\.4\.{_WB}", r"bbox_embed.\1.layers.2.\2"),
)
# Where the zoo's keys live; a renamed key outside these is a tensor no rule knew.
_ZOO_PREFIXES = ("backbone.0.body.", "input_proj", "transformer.", "query_embed.", "class_embed", "bbox_embed")


def is_mmdetection(content) -> bool:
    """A loaded file of mmdetection: a state dict with ``bbox_head.`` tensors (every mmdetection detector with a
    transformer head has them), or mmdetection's ``meta`` beside one that is not in the official layout."""
    state, meta = _split(content)
    if state is None:
        return False
    keys = [str(key).removeprefix("module.") for key in state]
    if any(key.startswith("bbox_head.") for key in keys):
        return True
    has_meta = any(name in meta for name in ("dataset_meta", "CLASSES", "mmdet_version"))
    return has_meta and not any(key.startswith("backbone.0.body.") for key in keys)


def read_mmdetection(path: Path, content, sha256: str) -> Checkpoint:
    """Read a loaded mmdetection 3.x or 2.x file of DETR or Deformable DETR.

    Raises DetrDeployError, saying what was found, for another detector, a backbone or setting the zoo cannot
    express, or tensors it does not know."""
    path = Path(path)
    source = path.name
    raw_state, meta = _split(content)
    if raw_state is None:
        raise DetrDeployError(f"checkpoint {source} has mmdetection metadata but no state dict under 'state_dict'")
    state = {
        str(key).removeprefix("module."): value
        for key, value in raw_state.items()
        if not str(key).endswith(_IGNORED_SUFFIXES)
    }
    version = 2 if any(key.startswith("bbox_head.transformer.") for key in state) else 3
    config_text, config_where = _config_text(meta)
    settings = _parse_config(config_text)
    model_cfg = settings.get("model") if isinstance(settings.get("model"), dict) else None
    if version == 3 and _is_dino(state, model_cfg):
        from detr_deploy.checkpoints.dino import read_mmdetection_dino

        return read_mmdetection_dino(path, state, meta, sha256)
    _refuse_foreign(state, model_cfg, source)
    if version == 2:
        state = rename_keys(state, _RULES_2X_TO_3X)

    read_from = []
    if config_text is None:
        read_from.append("architecture: tensor shapes and key counts (no config text in the file)")
    elif model_cfg is None:
        read_from.append(
            f"architecture: tensor shapes and key counts (the config text in {config_where} has no readable 'model')"
        )
    else:
        read_from.append(f"architecture: tensor shapes, key counts and the config text in {config_where}")
    deformable = "bbox_head.cls_branches.0.weight" in state
    if not deformable and "bbox_head.fc_cls.weight" not in state:
        raise DetrDeployError(
            f"checkpoint {source} is an mmdetection file without a DETR or Deformable DETR head "
            f"({_first_keys(state, 'bbox_head.')}); this version reads DETR and Deformable DETR"
        )
    architecture = "DeformableDETR" if deformable else "DETR"
    _check_backbone(state, model_cfg, source)
    _check_settings(settings, model_cfg, version, deformable, source)
    backbone = backbone_config(state, "backbone.", False, source)
    read_from.append(
        "dilation (DC5): none (the config text dilates no stage)"
        if model_cfg is not None
        else "dilation (DC5): none (not in the tensors; no mmdetection DETR config dilates its ResNet)"
    )
    names, names_where = _class_names(meta)

    try:
        if deformable:
            config, rules = _deformable_config(state, model_cfg, version, backbone, source, read_from)
            num_outputs = state["bbox_head.cls_branches.0.weight"].shape[0]
        else:
            config, rules = _detr_config(state, model_cfg, version, backbone, source, read_from)
            num_outputs = state["bbox_head.fc_cls.weight"].shape[0]
    except KeyError as error:
        raise DetrDeployError(
            f"checkpoint {source} has no tensor {error.args[0]} (in mmdetection {version}.x names), which every "
            f"mmdetection {architecture} has: is the file complete?"
        ) from None
    class_names = _check_class_names(names, names_where, num_outputs, architecture, source, read_from)

    renamed = rename_keys(state, rules)
    unknown = [key for key in renamed if not key.startswith(_ZOO_PREFIXES)]
    if unknown:
        shown = ", ".join(unknown[:3]) + (", ..." if len(unknown) > 3 else "")
        raise DetrDeployError(
            f"checkpoint {source} is an mmdetection {architecture} with {len(unknown)} tensor(s) the zoo's "
            f"{architecture} has no place for ({shown}): a variant this version does not read"
        )
    if isinstance(config, DeformableDETRConfig):
        _add_decoder_aliases(renamed, config)

    variants = []
    if getattr(config, "with_box_refine", False):
        variants.append("refine")
    if getattr(config, "two_stage", False):
        variants.append("two-stage")
    label = f"{architecture}, {' + '.join(variants)}" if variants else architecture
    read_from.insert(0, f"format: mmdetection {version}.x ({label})")
    return Checkpoint(
        path,
        SOURCE_MMDET3 if version == 3 else SOURCE_MMDET2,
        config,
        renamed,
        sha256,
        class_names=class_names,
        read_from=tuple(read_from),
    )


def _split(content) -> tuple:
    """(state dict, meta dict) of a loaded file; (None, None) when it holds no state dict."""
    if not isinstance(content, Mapping):
        return None, None
    meta = content.get("meta")
    meta = meta if isinstance(meta, Mapping) else {}
    state = content.get("state_dict")
    if isinstance(state, Mapping):
        return state, meta
    # A bare state dict (what mmdetection's publish script leaves once meta and optimizer are dropped).
    if content and all(isinstance(value, torch.Tensor) for value in content.values()):
        return content, {}
    return None, None


def _first_keys(state: Mapping, prefix: str = "") -> str:
    keys = [key for key in state if key.startswith(prefix)] or list(state)
    return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")


# --- config text -----------------------------------------------------------------------------------------------

_UNKNOWN = object()


def _config_text(meta: Mapping) -> tuple:
    """(config text, where it was) from meta: ``cfg`` (mmengine, 3.x) or ``config`` (mmcv runner, 2.x)."""
    for name in ("cfg", "config"):
        if isinstance(meta.get(name), str) and meta[name].strip():
            return meta[name], f"meta.{name}"
    return None, None


def _parse_config(text) -> dict:
    """Top-level assignments of a config's text whose values are literals (``dict(...)``, lists, numbers, strings).

    The text is Python; it is parsed, never run: anything other than a literal reads as unknown."""
    if text is None:
        return {}
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return {}
    settings = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    settings[target.id] = _literal(node.value)
    return settings


def _literal(node):
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(element) for element in node.elts]
    if isinstance(node, ast.Dict):
        if not all(isinstance(key, ast.Constant) and isinstance(key.value, str) for key in node.keys):
            return _UNKNOWN
        return {key.value: _literal(value) for key, value in zip(node.keys, node.values)}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        return {keyword.arg: _literal(keyword.value) for keyword in node.keywords if keyword.arg}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
    return _UNKNOWN


def _get(config, dotted: str, default=None):
    """``config['a']['b']`` for ``'a.b'``; ``default`` where a level is missing or not a literal."""
    value = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value or value[part] is _UNKNOWN:
            return default
        value = value[part]
    return value


def _as_list(value) -> list:
    if isinstance(value, dict):
        return [value]
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _config_heads(model_cfg, version: int, deformable: bool) -> set:
    """Head counts every attention of the config asks for (mmcv's deformable attention defaults to 8)."""
    if model_cfg is None:
        return set()
    if version == 3:
        attentions = [
            _get(model_cfg, "encoder.layer_cfg.self_attn_cfg"),
            _get(model_cfg, "decoder.layer_cfg.self_attn_cfg"),
            _get(model_cfg, "decoder.layer_cfg.cross_attn_cfg"),
        ]
        attentions = [attention for attention in attentions if isinstance(attention, dict)]
    else:
        transformer = _get(model_cfg, "bbox_head.transformer", {})
        attentions = [
            *_as_list(_get(transformer, "encoder.transformerlayers.attn_cfgs")),
            *_as_list(_get(transformer, "decoder.transformerlayers.attn_cfgs")),
        ]
    heads = set()
    for attention in attentions:
        count = attention.get("num_heads", _DEFAULT_HEADS if deformable else None)
        if isinstance(count, int):
            heads.add(count)
    return heads


# --- refusals ----------------------------------------------------------------------------------------------------


def _is_dino(state: Mapping, model_cfg) -> bool:
    """An mmdetection 3.x DINO: its denoising label embedding, or the decoder's ``ref_point_head`` beside two-stage
    proposals, in a file whose config (if any) names DINO and whose tensors are no other detector's."""
    model_type = _get(model_cfg, "type")
    if isinstance(model_type, str) and model_type != "DINO":
        return False
    if any(marker in key for key in state for marker, _ in _FOREIGN_MARKERS if marker != "ref_point_head"):
        return False
    return "dn_query_generator.label_embedding.weight" in state or (
        "decoder.ref_point_head.layers.0.weight" in state and "memory_trans_fc.weight" in state
    )


def _refuse_foreign(state: Mapping, model_cfg, source: str) -> None:
    model_type = _get(model_cfg, "type")
    if model_type == "DINO":
        raise DetrDeployError(
            f"checkpoint {source} is an mmdetection 'DINO' model (its config says so) but holds no DINO tensors "
            f"({_first_keys(state, 'decoder.')}); is the file edited?"
        )
    if isinstance(model_type, str) and model_type not in _SUPPORTED_TYPES:
        raise DetrDeployError(
            f"checkpoint {source} is an mmdetection '{model_type}' model (its config says so), which is not "
            f"supported: this version reads {_SUPPORTED_TEXT}"
        )
    for marker, family in _FOREIGN_MARKERS:
        found = next((key for key in state if marker in key), None)
        if found is not None:
            raise DetrDeployError(
                f"checkpoint {source} looks like an mmdetection {family} model (it has '{found}'), which is not "
                f"supported: this version reads {_SUPPORTED_TEXT}"
            )


def _check_backbone(state: Mapping, model_cfg, source: str) -> None:
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
    cfg = _get(model_cfg, "backbone", {})
    if not cfg:
        return
    if _get(cfg, "type", "ResNet") != "ResNet":
        raise DetrDeployError(
            f"checkpoint {source}: its backbone is mmdetection's {_get(cfg, 'type')!r}; only 'ResNet' is supported"
        )
    if _get(cfg, "style", "pytorch") != "pytorch":
        raise DetrDeployError(
            f"checkpoint {source}: its ResNet has style {_get(cfg, 'style')!r} (stride on the 1x1 convolution); "
            "only style 'pytorch' (torchvision's) is supported"
        )
    dilations = _get(cfg, "dilations")
    if isinstance(dilations, list) and any(value != 1 for value in dilations):
        # mmdetection dilates every block of a dilated stage, torchvision (and so the zoo's DC5) all but its first.
        raise DetrDeployError(
            f"checkpoint {source}: its ResNet is dilated (dilations={tuple(dilations)}); mmdetection dilates every "
            "block of that stage where torchvision's DC5 (the zoo's) leaves the first one undilated: not supported"
        )
    strides = _get(cfg, "strides")
    if isinstance(strides, list) and list(strides) != [1, 2, 2, 2]:
        raise DetrDeployError(
            f"checkpoint {source}: its ResNet has strides {tuple(strides)}; only (1, 2, 2, 2) is supported"
        )


def _check_settings(settings: dict, model_cfg, version: int, deformable: bool, source: str) -> None:
    """Refuse configured settings that the zoo's fixed computation would silently get wrong."""
    if model_cfg is None:
        return
    check_input_normalization(settings, model_cfg, version, source)
    position = _get(model_cfg, "positional_encoding" if version == 3 else "bbox_head.positional_encoding", {})
    if isinstance(position, dict) and position:
        expected_offset = -0.5 if deformable else 0.0
        wrong = (
            position.get("normalize", False) is not True
            or position.get("offset", 0.0) != expected_offset
            or position.get("temperature", 10000) != 10000
            or not math.isclose(position.get("scale", 2 * math.pi), 2 * math.pi)
        )
        if wrong:
            raise DetrDeployError(
                f"checkpoint {source}: its sine position encoding ({position}) is not the official one "
                f"(normalize=True, offset={expected_offset}, temperature=10000, scale=2*pi)"
            )
    if version == 3:
        check_ffn_activation(model_cfg, source)
    else:
        expected = {
            "encoder": ["self_attn", "norm", "ffn", "norm"],
            "decoder": ["self_attn", "norm", "cross_attn", "norm", "ffn", "norm"],
        }
        for coder, order in expected.items():
            found = _get(model_cfg, f"bbox_head.transformer.{coder}.transformerlayers.operation_order")
            if isinstance(found, list) and found != order:
                raise DetrDeployError(
                    f"checkpoint {source}: its {coder} layers run {tuple(found)}; only the post-norm order "
                    f"{tuple(order)} is supported"
                )


def check_input_normalization(settings: dict, model_cfg, version: int, source: str) -> None:
    """Input normalization: the ONNX contract takes RGB scaled by ImageNet's mean and std."""
    if version == 3:
        mean, std = _get(model_cfg, "data_preprocessor.mean"), _get(model_cfg, "data_preprocessor.std")
        to_rgb = _get(model_cfg, "data_preprocessor.bgr_to_rgb", False)
    else:
        norm = settings.get("img_norm_cfg") if isinstance(settings.get("img_norm_cfg"), dict) else {}
        mean, std, to_rgb = _get(norm, "mean"), _get(norm, "std"), _get(norm, "to_rgb", True)
    if isinstance(mean, list) and isinstance(std, list):
        same = (
            len(mean) == len(std) == 3
            and all(isinstance(v, (int, float)) for v in mean + std)
            and all(math.isclose(a, b, abs_tol=1e-3) for a, b in zip(mean + std, _MMDET_MEAN + _MMDET_STD))
        )
        if not same or to_rgb is not True:
            raise DetrDeployError(
                f"checkpoint {source} was trained on {'RGB' if to_rgb is True else 'BGR'} inputs normalized with "
                f"mean {mean}, std {std}; the ONNX contract feeds RGB normalized with ImageNet's mean and std"
            )


def check_ffn_activation(model_cfg, source: str) -> None:
    """3.x layers: the zoo's FFNs use ReLU."""
    for coder in ("encoder", "decoder"):
        act = _get(model_cfg, f"{coder}.layer_cfg.ffn_cfg.act_cfg.type", "ReLU")
        if act != "ReLU":
            raise DetrDeployError(f"checkpoint {source}: its {coder} FFN uses {act}; only ReLU is supported")


def _check_class_names(names, where, num_outputs: int, architecture: str, source: str, read_from: list):
    """The class names, checked against the class head: DETR's has a trailing background logit (softmax), Deformable
    DETR's none (sigmoid per class)."""
    if names is None:
        read_from.append("classes: no names in the file; count from the class head")
        return None
    count = len(names)
    if architecture == "DETR" and num_outputs == count:
        raise DetrDeployError(
            f"checkpoint {source}: its DETR class head has {num_outputs} outputs for {count} classes, so no "
            "background logit (a sigmoid-scored DETR); the zoo's DETR scores with a softmax over classes + background"
        )
    if architecture == "DeformableDETR" and num_outputs == count + 1:
        raise DetrDeployError(
            f"checkpoint {source}: its Deformable DETR class head has {num_outputs} outputs for {count} classes "
            "(softmax with a background logit); the zoo's Deformable DETR scores each class with a sigmoid"
        )
    expected = count + 1 if architecture == "DETR" else count
    if num_outputs != expected:
        read_from.append(f"classes: {where} names {count} but the class head has {num_outputs} outputs; names not used")
        return None
    read_from.append(f"classes: {where} ({count} names)")
    return names


def _class_names(meta: Mapping) -> tuple:
    """(names, where) from ``meta.dataset_meta.classes`` (3.x) or ``meta.CLASSES`` (2.x); (None, None) if none."""
    dataset_meta = meta.get("dataset_meta")
    candidates = (
        (dataset_meta.get("classes") if isinstance(dataset_meta, Mapping) else None, "meta.dataset_meta"),
        (meta.get("CLASSES"), "meta.CLASSES"),
    )
    for names, where in candidates:
        if isinstance(names, str):
            names = (names,)
        if isinstance(names, (list, tuple)) and names and all(isinstance(name, str) for name in names):
            return tuple(names), where
    return None, None


# --- architectures -----------------------------------------------------------------------------------------------


def _heads(model_cfg, version: int, deformable: bool, hidden_dim: int, source: str, read_from: list) -> int:
    heads = _config_heads(model_cfg, version, deformable)
    if len(heads) > 1:
        raise DetrDeployError(
            f"checkpoint {source}: its attentions have different head counts {sorted(heads)}; the zoo uses one"
        )
    if heads:
        count = heads.pop()
        read_from.append(f"heads: {count} (config text)")
    else:
        count = _DEFAULT_HEADS
        read_from.append(f"heads: {count} (mmdetection's default; not in the tensors)")
    if hidden_dim % count:
        raise DetrDeployError(f"checkpoint {source}: width {hidden_dim} does not split into {count} heads")
    return count


def _check_config_flag(value, found: bool, what: str, source: str) -> None:
    if isinstance(value, bool) and value != found:
        raise DetrDeployError(
            f"checkpoint {source}: its config says {what}={value} but its tensors say {found}; is the file edited?"
        )


def _detr_config(state, model_cfg, version: int, backbone, source: str, read_from: list) -> tuple:
    if "neck.convs.0.conv.weight" not in state or "neck.convs.1.conv.weight" in state:
        raise DetrDeployError(
            f"checkpoint {source}: its DETR does not project one backbone stage with one convolution "
            f"({_first_keys(state, 'neck.')}); the zoo's DETR does"
        )
    if "neck.convs.0.conv.bias" not in state or any(key.startswith(("neck.convs.0.gn", "neck.extra")) for key in state):
        raise DetrDeployError(
            f"checkpoint {source}: its DETR input projection has a norm layer or no bias; the zoo's DETR has a "
            "plain convolution with bias"
        )
    if _get(model_cfg, "bbox_head.loss_cls.use_sigmoid") is True:
        raise DetrDeployError(
            f"checkpoint {source}: its DETR head scores with a sigmoid (loss_cls.use_sigmoid=True); the zoo's DETR "
            "scores with a softmax over classes + background"
        )
    hidden_dim = state["query_embedding.weight"].shape[1]
    heads = _heads(model_cfg, version, False, hidden_dim, source, read_from)
    config = DETRConfig(
        num_classes=state["bbox_head.fc_cls.weight"].shape[0] - 1,
        num_queries=state["query_embedding.weight"].shape[0],
        hidden_dim=hidden_dim,
        num_heads=heads,
        num_encoder_layers=count_indices(state, r"encoder\.layers\.(\d+)\."),
        num_decoder_layers=count_indices(state, r"decoder\.layers\.(\d+)\."),
        dim_feedforward=state["encoder.layers.0.ffn.layers.0.0.weight"].shape[0],
        backbone=backbone,
    )
    read_from.append("classes, queries, layers, widths: tensor shapes and key counts")
    return config, _DETR_RULES


def _deformable_config(state, model_cfg, version: int, backbone, source: str, read_from: list) -> tuple:
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
    num_groups = _get(model_cfg, "neck.norm_cfg.num_groups", 32)
    if num_groups != 32:
        raise DetrDeployError(f"checkpoint {source}: its neck GroupNorm has {num_groups} groups; the zoo uses 32")
    if _get(model_cfg, "bbox_head.loss_cls.use_sigmoid") is False:
        raise DetrDeployError(
            f"checkpoint {source}: its Deformable DETR head scores with a softmax (loss_cls.use_sigmoid=False); "
            "the zoo's scores each class with a sigmoid"
        )
    num_decoder_layers = count_indices(state, r"decoder\.layers\.(\d+)\.")
    two_stage = "memory_trans_fc.weight" in state
    refine = _heads_differ(state, num_decoder_layers)
    flag_prefix = "" if version == 3 else "bbox_head."
    _check_config_flag(_get(model_cfg, flag_prefix + "as_two_stage"), two_stage, "as_two_stage", source)
    refine_cfg = _get(model_cfg, flag_prefix + "with_box_refine")
    if isinstance(refine_cfg, bool):
        # Equal per-layer heads fit both (a refinement run saved before training changed them); different ones not.
        if refine:
            _check_config_flag(refine_cfg, refine, "with_box_refine", source)
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
    heads = _heads(model_cfg, version, True, hidden_dim, source, read_from)
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
    rules = list(_DEFORMABLE_RULES)
    # Extra levels continue the numbering after the mapped stages.
    for extra in range(num_extra):
        rules.append((rf"neck\.extra_convs\.{extra}\.conv\.{_WB}", rf"input_proj.{num_convs + extra}.0.\1"))
        rules.append((rf"neck\.extra_convs\.{extra}\.gn\.{_WB}", rf"input_proj.{num_convs + extra}.1.\1"))
    return config, rules


def _two_stage_queries(model_cfg, version: int, read_from: list) -> int:
    """Two-stage queries are the top encoder proposals; their count is in the config, not in any tensor."""
    if model_cfg is not None:
        if version == 3:
            queries = _get(model_cfg, "num_queries", _MMDET3_DEFAULT_QUERIES)
        else:
            # 2.x takes the top two_stage_num_proposals (not the head's num_query).
            queries = _get(model_cfg, "bbox_head.transformer.two_stage_num_proposals", _DEFAULT_TWO_STAGE_QUERIES)
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
