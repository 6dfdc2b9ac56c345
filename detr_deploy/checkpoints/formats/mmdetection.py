"""Files of mmdetection 3.x (mmengine) and 2.x (mmcv's runner), whatever the detector in them.

mmengine saves ``{'meta': {'dataset_meta': {'classes': ...}, 'cfg': config text, ...}, 'state_dict': ...,
'message_hub': ..., 'optimizer': ..., 'param_schedulers': ...}``; mmcv's runner ``{'meta': {'CLASSES': ...,
'config': config text, 'mmdet_version': ...}, 'state_dict': ..., 'optimizer': ...}``. Only ``state_dict`` and
``meta`` are read; the rest may hold objects of classes we never import (``pickled.load_pickled`` stands
placeholders in for them). The config text is Python: it is parsed as literals, never run.

2.x nests a DETR-style transformer under ``bbox_head.transformer.`` with ``attentions.0`` (self), ``attentions.1``
(cross), ``ffns.0`` and ``norms.K`` in its layers; 3.x keeps it at the top level (``self_attn``, ``cross_attn``,
``ffn``); DETR files written before mmdet 2.12 say ``self_attn``, ``multihead_attn``, ``ffn`` and ``decoder.norm``
(mmdet converts them on load, and so does ``RULES_2X_TO_3X``).
"""

import ast
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import torch

from detr_deploy.checkpoints.checkpoint import SOURCE_MMDET2, SOURCE_MMDET3
from detr_deploy.checkpoints.keymap import (
    BN,
    MHA,
    MSDA,
    WB,
    rename_keys,
    without_batch_norm_counters,
    without_module_prefix,
)
from detr_deploy.errors import DetrDeployError

# mmcv's attentions' default head count.
MMDET_DEFAULT_HEADS = 8
# mmdetection's input normalization that equals the ONNX contract's (RGB, ImageNet mean/std on 0..255).
_MMDET_MEAN = (123.675, 116.28, 103.53)
_MMDET_STD = (58.395, 57.12, 57.375)

_TRANSFORMER_2X = r"bbox_head\.transformer\."
# 2.x (and pre-2.12 DETR) names -> 3.x names.
RULES_2X_TO_3X = (
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


@dataclass(frozen=True)
class MmdetFile:
    """An mmdetection file opened: ``state`` without ``module.`` prefixes and batch-norm counters, ``meta``, the
    version (2 or 3, from the tensor names), the config text and where it was, and its literal settings."""

    state: dict
    meta: Mapping
    version: int
    config_text: str
    config_where: str
    settings: dict

    @property
    def model_cfg(self):
        """The config's ``model`` dict, or None where there is no readable one."""
        model = self.settings.get("model")
        return model if isinstance(model, dict) else None

    @property
    def model_type(self):
        """The detector type the config names (``DETR``, ``DINO``, ...), or None."""
        return config_value(self.model_cfg, "type")

    @property
    def source(self) -> str:
        return SOURCE_MMDET3 if self.version == 3 else SOURCE_MMDET2

    @cached_property
    def state_3x(self) -> dict:
        """``state`` in 3.x names (2.x DETR-style transformers renamed)."""
        return rename_keys(self.state, RULES_2X_TO_3X) if self.version == 2 else self.state

    def architecture_origin(self) -> str:
        """The ``read_from`` line saying where the architecture comes from."""
        if self.config_text is None:
            return "architecture: tensor shapes and key counts (no config text in the file)"
        if self.model_cfg is None:
            return (
                "architecture: tensor shapes and key counts (the config text in "
                f"{self.config_where} has no readable 'model')"
            )
        return f"architecture: tensor shapes, key counts and the config text in {self.config_where}"


def open_mmdetection(content) -> MmdetFile:
    """The ``MmdetFile`` of a loaded file ``is_mmdetection`` accepts; None where it holds no state dict."""
    raw_state, meta = _split(content)
    if raw_state is None:
        return None
    state = without_batch_norm_counters(without_module_prefix(raw_state))
    version = 2 if any(key.startswith("bbox_head.transformer.") for key in state) else 3
    text, where = _config_text(meta)
    return MmdetFile(state, meta, version, text, where, parse_config(text))


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


def first_keys(state: Mapping, prefix: str = "") -> str:
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


def parse_config(text) -> dict:
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


def config_value(config, dotted: str, default=None):
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


def config_heads(model_cfg, version: int, deformable: bool) -> set:
    """Head counts every attention of the config asks for (mmcv's deformable attention defaults to 8)."""
    if model_cfg is None:
        return set()
    if version == 3:
        attentions = [
            config_value(model_cfg, "encoder.layer_cfg.self_attn_cfg"),
            config_value(model_cfg, "decoder.layer_cfg.self_attn_cfg"),
            config_value(model_cfg, "decoder.layer_cfg.cross_attn_cfg"),
        ]
        attentions = [attention for attention in attentions if isinstance(attention, dict)]
    else:
        transformer = config_value(model_cfg, "bbox_head.transformer", {})
        attentions = [
            *_as_list(config_value(transformer, "encoder.transformerlayers.attn_cfgs")),
            *_as_list(config_value(transformer, "decoder.transformerlayers.attn_cfgs")),
        ]
    heads = set()
    for attention in attentions:
        count = attention.get("num_heads", MMDET_DEFAULT_HEADS if deformable else None)
        if isinstance(count, int):
            heads.add(count)
    return heads


def check_input_normalization(settings: dict, model_cfg, version: int, source: str) -> None:
    """Input normalization: the ONNX contract takes RGB scaled by ImageNet's mean and std."""
    if version == 3:
        mean, std = config_value(model_cfg, "data_preprocessor.mean"), config_value(model_cfg, "data_preprocessor.std")
        to_rgb = config_value(model_cfg, "data_preprocessor.bgr_to_rgb", False)
    else:
        norm = settings.get("img_norm_cfg") if isinstance(settings.get("img_norm_cfg"), dict) else {}
        mean, std, to_rgb = config_value(norm, "mean"), config_value(norm, "std"), config_value(norm, "to_rgb", True)
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
        act = config_value(model_cfg, f"{coder}.layer_cfg.ffn_cfg.act_cfg.type", "ReLU")
        if act != "ReLU":
            raise DetrDeployError(f"checkpoint {source}: its {coder} FFN uses {act}; only ReLU is supported")


def class_names(meta: Mapping) -> tuple:
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


def matched_class_names(names, where, num_outputs: int, expected: int, read_from: list):
    """``names`` (from ``class_names``) when the class head's ``num_outputs`` are the ``expected`` count for them,
    else None; ``read_from`` says which."""
    if names is None:
        read_from.append("classes: no names in the file; count from the class head")
        return None
    if num_outputs != expected:
        read_from.append(
            f"classes: {where} names {len(names)} but the class head has {num_outputs} outputs; names not used"
        )
        return None
    read_from.append(f"classes: {where} ({len(names)} names)")
    return names


def mmdet_heads(model_cfg, version: int, deformable: bool, hidden_dim: int, source: str, read_from: list) -> int:
    heads = config_heads(model_cfg, version, deformable)
    if len(heads) > 1:
        raise DetrDeployError(
            f"checkpoint {source}: its attentions have different head counts {sorted(heads)}; the zoo uses one"
        )
    if heads:
        count = heads.pop()
        read_from.append(f"heads: {count} (config text)")
    else:
        count = MMDET_DEFAULT_HEADS
        read_from.append(f"heads: {count} (mmdetection's default; not in the tensors)")
    if hidden_dim % count:
        raise DetrDeployError(f"checkpoint {source}: width {hidden_dim} does not split into {count} heads")
    return count


def check_config_flag(value, found: bool, what: str, source: str) -> None:
    if isinstance(value, bool) and value != found:
        raise DetrDeployError(
            f"checkpoint {source}: its config says {what}={value} but its tensors say {found}; is the file edited?"
        )


def check_sine_position(position, expected_offset: float, source: str) -> None:
    """A configured sine position encoding (``positional_encoding``) must be the official one."""
    if not isinstance(position, dict) or not position:
        return
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


def check_post_norm_order(model_cfg, source: str) -> None:
    """2.x DETR-style layers: the zoo's run post-norm (attention, norm, ..., FFN, norm)."""
    expected = {
        "encoder": ["self_attn", "norm", "ffn", "norm"],
        "decoder": ["self_attn", "norm", "cross_attn", "norm", "ffn", "norm"],
    }
    for coder, order in expected.items():
        found = config_value(model_cfg, f"bbox_head.transformer.{coder}.transformerlayers.operation_order")
        if isinstance(found, list) and found != order:
            raise DetrDeployError(
                f"checkpoint {source}: its {coder} layers run {tuple(found)}; only the post-norm order "
                f"{tuple(order)} is supported"
            )


def renamed_into_zoo(state: Mapping, rules, zoo_prefixes: tuple, architecture: str, source: str) -> dict:
    """``state`` renamed by ``rules``; a renamed key outside ``zoo_prefixes`` (where the zoo model's keys live) is
    a tensor no rule knew, and refused."""
    renamed = rename_keys(state, rules)
    unknown = [key for key in renamed if not key.startswith(zoo_prefixes)]
    if unknown:
        shown = ", ".join(unknown[:3]) + (", ..." if len(unknown) > 3 else "")
        raise DetrDeployError(
            f"checkpoint {source} is an mmdetection {architecture} with {len(unknown)} tensor(s) the zoo's "
            f"{architecture} has no place for ({shown}): a variant this version does not read"
        )
    return renamed


# --- renaming into the official (zoo) layout ----------------------------------------------------------------------

# mmdetection's ResNet uses torchvision's names; anything else under backbone. (plugins, DCN) stays unknown.
RESNET_RULES = (
    (rf"backbone\.(conv1\.weight|bn1\.{BN})", r"backbone.0.body.\1"),
    (
        rf"backbone\.(layer\d+\.\d+\.(?:conv[123]\.weight|bn[123]\.{BN}|downsample\.0\.weight|downsample\.1\.{BN}))",
        r"backbone.0.body.\1",
    ),
)
# 3.x FFNs (Linear + activation, Linear) and encoder norms -> the official layers' names.
FFN_RULES = (
    (rf"(encoder|decoder)\.layers\.(\d+)\.ffn\.layers\.0\.0\.{WB}", r"transformer.\1.layers.\2.linear1.\3"),
    (rf"(encoder|decoder)\.layers\.(\d+)\.ffn\.layers\.1\.{WB}", r"transformer.\1.layers.\2.linear2.\3"),
    (rf"encoder\.layers\.(\d+)\.norms\.0\.{WB}", r"transformer.encoder.layers.\1.norm1.\2"),
    (rf"encoder\.layers\.(\d+)\.norms\.1\.{WB}", r"transformer.encoder.layers.\1.norm2.\2"),
)
# mmdetection's DeformableDETR transformer (which its DINO extends) -> the official Deformable-DETR names.
DEFORMABLE_STYLE_RULES = (
    *RESNET_RULES,
    *FFN_RULES,
    (rf"neck\.convs\.(\d+)\.conv\.{WB}", r"input_proj.\1.0.\2"),
    (rf"neck\.convs\.(\d+)\.gn\.{WB}", r"input_proj.\1.1.\2"),
    (rf"encoder\.layers\.(\d+)\.self_attn\.{MSDA}", r"transformer.encoder.layers.\1.self_attn.\2"),
    (rf"decoder\.layers\.(\d+)\.self_attn\.attn\.{MHA}", r"transformer.decoder.layers.\1.self_attn.\2"),
    (rf"decoder\.layers\.(\d+)\.cross_attn\.{MSDA}", r"transformer.decoder.layers.\1.cross_attn.\2"),
    # mmdetection numbers the decoder's norms in execution order (self-attention, cross-attention, FFN); the
    # official layer, and so ours, calls them norm2, norm1, norm3.
    (rf"decoder\.layers\.(\d+)\.norms\.0\.{WB}", r"transformer.decoder.layers.\1.norm2.\2"),
    (rf"decoder\.layers\.(\d+)\.norms\.1\.{WB}", r"transformer.decoder.layers.\1.norm1.\2"),
    (rf"decoder\.layers\.(\d+)\.norms\.2\.{WB}", r"transformer.decoder.layers.\1.norm3.\2"),
    (r"level_embed", "transformer.level_embed"),
    (rf"reference_points_fc\.{WB}", r"transformer.reference_points.\1"),
    (rf"memory_trans_fc\.{WB}", r"transformer.enc_output.\1"),
    (rf"memory_trans_norm\.{WB}", r"transformer.enc_output_norm.\1"),
    (rf"pos_trans_fc\.{WB}", r"transformer.pos_trans.\1"),
    (rf"pos_trans_norm\.{WB}", r"transformer.pos_trans_norm.\1"),
    (r"query_embedding\.weight", "query_embed.weight"),
    (rf"bbox_head\.cls_branches\.(\d+)\.{WB}", r"class_embed.\1.\2"),
    # reg_branches are Sequential(Linear, ReLU, Linear, ReLU, Linear).
    (rf"bbox_head\.reg_branches\.(\d+)\.0\.{WB}", r"bbox_embed.\1.layers.0.\2"),
    (rf"bbox_head\.reg_branches\.(\d+)\.2\.{WB}", r"bbox_embed.\1.layers.1.\2"),
    (rf"bbox_head\.reg_branches\.(\d+)\.4\.{WB}", r"bbox_embed.\1.layers.2.\2"),
)
# Where the official layout's keys live; a renamed key outside these is a tensor no rule knew.
OFFICIAL_LAYOUT_PREFIXES = (
    "backbone.0.body.",
    "input_proj",
    "transformer.",
    "query_embed.",
    "class_embed",
    "bbox_embed",
)


def extra_level_rules(num_convs: int, num_extra: int) -> list:
    """The neck's strided extra levels -> ``input_proj.N`` (numbered after the ``num_convs`` mapped stages)."""
    rules = []
    for extra in range(num_extra):
        rules.append((rf"neck\.extra_convs\.{extra}\.conv\.{WB}", rf"input_proj.{num_convs + extra}.0.\1"))
        rules.append((rf"neck\.extra_convs\.{extra}\.gn\.{WB}", rf"input_proj.{num_convs + extra}.1.\1"))
    return rules


def mmdetection_file(candidate) -> MmdetFile:
    """The candidate's ``MmdetFile`` (opened once, whichever reader asks first); None when it is no mmdetection
    file."""
    if candidate.folder is not None:
        return None
    return candidate.memo(
        "mmdetection", lambda: open_mmdetection(candidate.content) if is_mmdetection(candidate.content) else None
    )


def model_type_allows(file: MmdetFile, model_type: str) -> bool:
    """Whether the config names ``model_type`` or no type at all (then the tensors decide)."""
    named = file.model_type
    return not isinstance(named, str) or named == model_type


def undilated_line(file: MmdetFile, architecture: str) -> str:
    """The ``read_from`` line of the dilation: mmdetection's DETR-family configs dilate no stage."""
    if file.model_cfg is not None:
        return "dilation (DC5): none (the config text dilates no stage)"
    return f"dilation (DC5): none (not in the tensors; no mmdetection {architecture} config dilates its ResNet)"


def check_detr_style_settings(file: MmdetFile, position_offset: float, source: str) -> None:
    """Refuse configured settings of a DETR or Deformable DETR that the zoo's fixed computation would get wrong:
    input normalization, the sine position encoding (``position_offset`` is the official one), FFN activation
    (3.x) or layer order (2.x)."""
    model_cfg = file.model_cfg
    if model_cfg is None:
        return
    check_input_normalization(file.settings, model_cfg, file.version, source)
    where = "positional_encoding" if file.version == 3 else "bbox_head.positional_encoding"
    check_sine_position(config_value(model_cfg, where, {}), position_offset, source)
    if file.version == 3:
        check_ffn_activation(model_cfg, source)
    else:
        check_post_norm_order(model_cfg, source)
