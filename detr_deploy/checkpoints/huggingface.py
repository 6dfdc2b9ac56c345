"""Checkpoints of Hugging Face transformers: the directory ``save_pretrained`` writes for ``DetrForObjectDetection``,
``DetrForSegmentation`` and ``DeformableDetrForObjectDetection``.

A directory holds ``config.json`` and the weights: ``model.safetensors``, ``pytorch_model.bin``, or shards listed in
``model.safetensors.index.json`` / ``pytorch_model.bin.index.json``. transformers itself is not imported.

Two key layouts exist. transformers 4.x names (``model.backbone.conv_encoder.model.``, ``self_attn.out_proj``,
``fc1``/``fc2`` in each layer, ``mask_head.lay1``) are what 4.x wrote, what the hub holds, and also what 5.x's
``save_pretrained`` writes (it reverses its conversion mapping on save). transformers 5.x's module names
(``model.backbone.model.``, ``o_proj``, ``mlp.fc1``, ``mask_head.conv1.conv``) appear in files saved from
``model.state_dict()``. Both are renamed into the official layout of the zoo modules (q/k/v fused into
``in_proj_*``). Two backbone layouts exist too: timm's ResNet (torchvision's names: the hub's facebook/detr-resnet-50
and SenseTime/deformable-detr) and transformers' own ResNet (``embedder.embedder.convolution``,
``encoder.stages.N.layers.M``); both become torchvision names under ``backbone.0.body.``.

RT-DETR directories (``RTDetrForObjectDetection``, ``RTDetrV2ForObjectDetection``) are found here and read by
``huggingface_rtdetr``.

Two config styles exist: 4.x's flat fields (``use_timm_backbone``, ``backbone``, ``dilation``, ``backbone_kwargs``)
and 5.x's nested ``backbone_config`` (``model_type`` ``timm_backbone`` or ``resnet``). The architecture comes from
config.json (as it is what transformers built the model from) and is checked against the tensor shapes.
"""

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from detr_deploy.checkpoints.checkpoint import SOURCE_TRANSFORMERS, Checkpoint
from detr_deploy.checkpoints.keymap import count_indices, fuse_qkv, rename_keys
from detr_deploy.errors import DetrDeployError
from detr_deploy.io import sha256_of
from detr_deploy.models.deformable_detr import DeformableDETRConfig
from detr_deploy.models.detr import DETRConfig

CONFIG_NAME = "config.json"
# RT-DETR v1 and v2 (RTDetrForObjectDetection, RTDetrV2ForObjectDetection): read by huggingface_rtdetr.py.
RTDETR_MODEL_TYPES = ("rt_detr", "rt_detr_v2")
# The weight files save_pretrained writes, in the order transformers' from_pretrained prefers them.
WEIGHT_NAMES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)

# transformers' defaults (DetrConfig, DeformableDetrConfig) for fields a config.json may leave out.
_DEFAULTS = {
    "detr": {
        "num_queries": 100,
        "d_model": 256,
        "encoder_layers": 6,
        "decoder_layers": 6,
        "encoder_ffn_dim": 2048,
        "decoder_ffn_dim": 2048,
        "encoder_attention_heads": 8,
        "decoder_attention_heads": 8,
    },
    "deformable_detr": {
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
    },
}
_COMMON_DEFAULTS = {
    "activation_function": "relu",
    "position_embedding_type": "sine",
    "dilation": False,
    "num_channels": 3,
    "backbone": "resnet50",
    "use_timm_backbone": True,
}
# timm ResNets with torchvision's layout (7x7 stem, stride on the 3x3 convolution) and their blocks per stage.
_TIMM_RESNETS = {"50": (3, 4, 6, 3), "101": (3, 4, 23, 3), "152": (3, 8, 36, 3)}
_TIMM_RESNET_NAME = re.compile(r"(?:timm/)?(?:tv_)?resnet(\d+)(?:\.[\w-]+)?")

# A state dict in a transformers layout (4.x or 5.x names, detection or segmentation model).
_TRANSFORMERS_KEY = re.compile(
    r"(?:detr\.)?(?:model\.(?:backbone\.(?:conv_encoder\.)?model\.|encoder\.layers\.\d+\.|decoder\.layers\.\d+\."
    r"|input_projection\.|query_position_embeddings\.)|class_labels_classifier\.|bbox_predictor\.)"
)
# Module names that only transformers 5.x has (its conversion mapping renames them from the 4.x names on load).
_FIVE_X_KEY = re.compile(r".*(?:\bmodel\.backbone\.model\.|\.o_proj\.|\.mlp\.fc[12]\.|mask_head\.fpn_stages\.)")

# transformers 5.x module names -> 4.x names (the reverse of transformers' conversion_mapping.py entries
# "DetrModel", "deformable_detr" and "DetrForSegmentation").
_FIVE_TO_FOUR = [
    (r"(.*\bmodel\.backbone\.)model\.(.*)", r"\1conv_encoder.model.\2"),
    (r"(.*\.layers\.\d+\.(?:self_attn|encoder_attn))\.o_proj\.(weight|bias)", r"\1.out_proj.\2"),
    (r"(.*\.layers\.\d+)\.mlp\.(fc[12])\.(weight|bias)", r"\1.\2.\3"),
    (r"bbox_attention\.([qk])_proj\.(weight|bias)", r"bbox_attention.\1_linear.\2"),
    (r"mask_head\.conv([12])\.conv\.(weight|bias)", r"mask_head.lay\1.\2"),
    (r"mask_head\.conv([12])\.norm\.(weight|bias)", r"mask_head.gn\1.\2"),
    (r"mask_head\.output_conv\.(weight|bias)", r"mask_head.out_lay.\1"),
] + [
    rule
    for stage in range(3)
    for rule in (
        (rf"mask_head\.fpn_stages\.{stage}\.fpn_adapter\.(weight|bias)", rf"mask_head.adapter{stage + 1}.\1"),
        (rf"mask_head\.fpn_stages\.{stage}\.refine\.conv\.(weight|bias)", rf"mask_head.lay{stage + 3}.\1"),
        (rf"mask_head\.fpn_stages\.{stage}\.refine\.norm\.(weight|bias)", rf"mask_head.gn{stage + 3}.\1"),
    )
]

# transformers' own ResNet (under backbone.0.body. once renamed) -> torchvision's names.
_BODY = r"((?:detr\.)?backbone\.0\.body\.)"
_HF_RESNET_RULES = [
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
_ATTENTION = r"(?:[qkv]|out)_proj\.(?:weight|bias)"


def _detr_rules(prefix: str) -> list[tuple[str, str]]:
    """4.x names of DetrForObjectDetection (``prefix`` "") or of the DETR inside DetrForSegmentation ("detr.")
    -> the official layout. Post-norm layers: HF's self_attn_layer_norm, encoder_attn_layer_norm and
    final_layer_norm are the official norm1, norm2 and norm2/norm3 by position."""
    model, to = re.escape(prefix) + r"model\.", prefix
    encoder, decoder = f"{model}encoder\\.layers\\.(\\d+)\\.", f"{model}decoder\\.layers\\.(\\d+)\\."
    return [
        (rf"{model}backbone\.conv_encoder\.model\.(.*)", rf"{to}backbone.0.body.\1"),
        (rf"{model}input_projection\.(weight|bias)", rf"{to}input_proj.\1"),
        (rf"{model}query_position_embeddings\.weight", rf"{to}query_embed.weight"),
        (rf"{encoder}self_attn\.({_ATTENTION})", rf"{to}transformer.encoder.layers.\1.self_attn.\2"),
        (rf"{encoder}self_attn_layer_norm\.(weight|bias)", rf"{to}transformer.encoder.layers.\1.norm1.\2"),
        (rf"{encoder}fc([12])\.(weight|bias)", rf"{to}transformer.encoder.layers.\1.linear\2.\3"),
        (rf"{encoder}final_layer_norm\.(weight|bias)", rf"{to}transformer.encoder.layers.\1.norm2.\2"),
        (rf"{decoder}self_attn\.({_ATTENTION})", rf"{to}transformer.decoder.layers.\1.self_attn.\2"),
        (rf"{decoder}self_attn_layer_norm\.(weight|bias)", rf"{to}transformer.decoder.layers.\1.norm1.\2"),
        (rf"{decoder}encoder_attn\.({_ATTENTION})", rf"{to}transformer.decoder.layers.\1.multihead_attn.\2"),
        (rf"{decoder}encoder_attn_layer_norm\.(weight|bias)", rf"{to}transformer.decoder.layers.\1.norm2.\2"),
        (rf"{decoder}fc([12])\.(weight|bias)", rf"{to}transformer.decoder.layers.\1.linear\2.\3"),
        (rf"{decoder}final_layer_norm\.(weight|bias)", rf"{to}transformer.decoder.layers.\1.norm3.\2"),
        (rf"{model}decoder\.layernorm\.(weight|bias)", rf"{to}transformer.decoder.norm.\1"),
        (rf"{re.escape(prefix)}class_labels_classifier\.(weight|bias)", rf"{to}class_embed.\1"),
        (rf"{re.escape(prefix)}bbox_predictor\.layers\.(\d+)\.(weight|bias)", rf"{to}bbox_embed.layers.\1.\2"),
    ]


_MSDA = r"((?:sampling_offsets|attention_weights|value_proj|output_proj)\.(?:weight|bias))"
_ENCODER, _DECODER = r"model\.encoder\.layers\.(\d+)\.", r"model\.decoder\.layers\.(\d+)\."
# 4.x names of DeformableDetrForObjectDetection -> the official layout. Both decoder layers run self-attention, then
# cross-attention, then the FFN; the official one names their norms norm2, norm1, norm3 (its modules' order).
_DEFORMABLE_RULES = [
    (r"model\.backbone\.conv_encoder\.model\.(.*)", r"backbone.0.body.\1"),
    (r"model\.input_proj\.(\d+)\.([01])\.(weight|bias)", r"input_proj.\1.\2.\3"),
    (r"model\.query_position_embeddings\.weight", "query_embed.weight"),
    (r"model\.level_embed", "transformer.level_embed"),
    (
        r"model\.(reference_points|enc_output|enc_output_norm|pos_trans|pos_trans_norm)\.(weight|bias)",
        r"transformer.\1.\2",
    ),
    (rf"{_ENCODER}self_attn\.{_MSDA}", r"transformer.encoder.layers.\1.self_attn.\2"),
    (rf"{_ENCODER}self_attn_layer_norm\.(weight|bias)", r"transformer.encoder.layers.\1.norm1.\2"),
    (rf"{_ENCODER}fc([12])\.(weight|bias)", r"transformer.encoder.layers.\1.linear\2.\3"),
    (rf"{_ENCODER}final_layer_norm\.(weight|bias)", r"transformer.encoder.layers.\1.norm2.\2"),
    (rf"{_DECODER}self_attn\.({_ATTENTION})", r"transformer.decoder.layers.\1.self_attn.\2"),
    (rf"{_DECODER}self_attn_layer_norm\.(weight|bias)", r"transformer.decoder.layers.\1.norm2.\2"),
    (rf"{_DECODER}encoder_attn\.{_MSDA}", r"transformer.decoder.layers.\1.cross_attn.\2"),
    (rf"{_DECODER}encoder_attn_layer_norm\.(weight|bias)", r"transformer.decoder.layers.\1.norm1.\2"),
    (rf"{_DECODER}fc([12])\.(weight|bias)", r"transformer.decoder.layers.\1.linear\2.\3"),
    (rf"{_DECODER}final_layer_norm\.(weight|bias)", r"transformer.decoder.layers.\1.norm3.\2"),
    (r"model\.decoder\.(class_embed|bbox_embed)\.(.*)", r"transformer.decoder.\1.\2"),
]


def is_transformers_state(state: Mapping) -> bool:
    """A bare state dict in a transformers layout (4.x or 5.x names): ``model.backbone.*``, ``model.encoder.*``,
    ``class_labels_classifier.*`` and the like, also under DetrForSegmentation's ``detr.``."""
    return any(isinstance(key, str) and _TRANSFORMERS_KEY.match(key) for key in state)


@dataclass(frozen=True)
class _Backbone:
    """What config.json says of the backbone: ``layout`` "timm" or "hf", the ResNet's blocks per stage where the
    config tells them, dilation (DC5), and the stages (1..4) it returns, where the config tells them."""

    layout: str
    description: str
    blocks: tuple[int, ...] = None
    dilation: bool = False
    out_stages: tuple[int, ...] = None


def read_transformers(directory: Path, given: Path) -> Checkpoint:
    """Read the transformers directory ``directory`` (``given`` is what the user named: the directory, its
    config.json or a .safetensors file in it). Raises DetrDeployError for a missing config.json or weights, an
    architecture other than DETR, DETR-panoptic or Deformable DETR, or settings the zoo modules cannot express."""
    directory, given = Path(directory), Path(given)
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        if given.suffix == ".safetensors":
            raise DetrDeployError(
                f"{given} has no config.json beside it: transformers weights need the config.json save_pretrained "
                "wrote; put it in the same directory"
            )
        raise DetrDeployError(
            f"{directory} has no config.json: give a directory written by save_pretrained (config.json plus "
            "model.safetensors or pytorch_model.bin), or an official .pth checkpoint"
        )
    config = _read_json(config_path)
    model_type = config.get("model_type")
    if model_type not in _DEFAULTS and model_type not in RTDETR_MODEL_TYPES:
        from detr_deploy.checkpoints import transformers_model_type_error

        raise transformers_model_type_error(directory, str(model_type))
    files, weights_label = _weight_files(directory, given)
    raw = _load_weights(files)
    digest = sha256_of(files[0]) if len(files) == 1 else _shards_digest(files)
    if model_type in RTDETR_MODEL_TYPES:
        from detr_deploy.checkpoints.huggingface_rtdetr import read_transformers_rtdetr

        return read_transformers_rtdetr(directory, given, config, raw, digest, weights_label)

    five_x_keys = any(_FIVE_X_KEY.match(key) for key in raw)
    state = rename_keys(raw, _FIVE_TO_FOUR + [(r".*\.num_batches_tracked", "")])
    panoptic = any(key.startswith(("detr.", "mask_head.", "bbox_attention.")) for key in state)
    architecture = _architecture(config, model_type, panoptic, directory)
    source = given.name if given.suffix == ".safetensors" else directory.name
    values = _Values(config, model_type, source)
    read_from = [
        f"format: transformers {_written_by(config)} directory ({architecture})",
        f"weights: {weights_label}",
        f"keys: transformers {'5.x' if five_x_keys else '4.x'} names",
        _config_style(config),
    ]
    backbone = _backbone_spec(config, values)
    body = "detr.backbone.0.body." if panoptic else "backbone.0.body."
    state = rename_keys(state, _detr_rules("detr." if panoptic else "") if model_type == "detr" else _DEFORMABLE_RULES)
    _check_backbone_layout(state, backbone, body, source)
    state = rename_keys(state, _HF_RESNET_RULES)
    if model_type == "detr":
        model_config = _detr_config(state, values, backbone, panoptic, source)
    else:
        model_config = _deformable_config(state, values, backbone, source, read_from)
    _fuse_attention(state)
    read_from.append(f"backbone: {backbone.description}")
    read_from.append(f"dilation (DC5): {'yes' if model_config.backbone.dilate_last_stage else 'no'} (config.json)")
    sizes = "layers, widths, heads, queries" + (", levels, points" if model_type == "deformable_detr" else "")
    read_from.append(f"architecture: config.json ({sizes}), checked against tensor shapes")
    class_names = _class_names(config, model_config.num_classes, source, read_from)
    if model_type == "deformable_detr":
        state = _untie_heads(state, model_config, read_from)
    path = given if given.suffix == ".safetensors" else directory
    return Checkpoint(
        path, SOURCE_TRANSFORMERS, model_config, state, digest, class_names=class_names, read_from=tuple(read_from)
    )


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        reason = " ".join(str(error).split())
        raise DetrDeployError(f"cannot read {path}: {reason}; expected the JSON file save_pretrained writes") from None
    if not isinstance(data, dict):
        raise DetrDeployError(f"{path} is not a transformers config (expected a JSON object)")
    return data


def _weight_files(directory: Path, given: Path) -> tuple[list[Path], str]:
    """(weight files, how to name them) of ``directory``; a .safetensors ``given`` is read alone unless it is a
    shard of the directory's index."""
    index = directory / "model.safetensors.index.json"
    if given.suffix == ".safetensors":
        if index.is_file() and given.name in _index_shards(index):
            return _shard_files(directory, index)
        return [given], given.name
    for name in WEIGHT_NAMES:
        candidate = directory / name
        if candidate.is_file():
            return _shard_files(directory, candidate) if name.endswith(".index.json") else ([candidate], name)
    others = sorted(path.name for path in directory.iterdir() if path.suffix in (".h5", ".msgpack", ".ckpt"))
    found = f" (found {', '.join(others)}: only PyTorch weights are read)" if others else ""
    raise DetrDeployError(
        f"{directory} has config.json but no weights{found}: expected model.safetensors, pytorch_model.bin or a "
        "sharded index (model.safetensors.index.json); copy the weight files save_pretrained wrote beside it"
    )


def _index_shards(index: Path) -> list[str]:
    """The shard file names an index lists, sorted."""
    weight_map = _read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise DetrDeployError(f"{index} has no weight_map: it is not a sharded-checkpoint index of save_pretrained")
    return sorted(set(map(str, weight_map.values())))


def _shard_files(directory: Path, index: Path) -> tuple[list[Path], str]:
    files = [directory / name for name in _index_shards(index)]
    missing = [path.name for path in files if not path.is_file()]
    if missing:
        raise DetrDeployError(
            f"{index} lists {len(files)} shards but {len(missing)} are missing ({', '.join(missing[:3])}); "
            "copy every shard save_pretrained wrote"
        )
    return files, f"{len(files)} shards ({index.name})"


def _shards_digest(files: list[Path]) -> str:
    """sha256 over the shards' sha256 hex digests, one per line, in file-name order: one identity for the set."""
    lines = "".join(f"{sha256_of(path)}\n" for path in sorted(files, key=lambda path: path.name))
    return hashlib.sha256(lines.encode("ascii")).hexdigest()


def _load_weights(files: list[Path]) -> dict[str, torch.Tensor]:
    """Every tensor of ``files`` (safetensors, or pickled .bin read without running code) in one dict, on the CPU."""
    state = {}
    for path in files:
        if path.suffix == ".safetensors":
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            try:
                part = load_file(path, device="cpu")
            except (SafetensorError, OSError, ValueError) as error:
                reason = " ".join(str(error).split()) or type(error).__name__
                raise DetrDeployError(
                    f"cannot read {path}: {reason}; is the file complete (not a git-lfs pointer)?"
                ) from None
        else:
            from detr_deploy.checkpoints.pickled import load_pickled

            part = load_pickled(path)
            if not isinstance(part, Mapping) or not all(isinstance(value, torch.Tensor) for value in part.values()):
                raise DetrDeployError(f"{path} is not a transformers state dict (expected a dict of tensors)")
        state.update(part)
    return state


def _config_style(config: dict) -> str:
    """How config.json describes the backbone: 4.x's flat fields (4.x always writes ``use_timm_backbone``; configs
    older than that field have ``backbone`` alone) or 5.x's nested ``backbone_config`` (``timm_backbone`` or
    ``resnet``)."""
    nested = config.get("backbone_config")
    if "use_timm_backbone" in config or not isinstance(nested, dict):
        kind = "use_timm_backbone false" if config.get("use_timm_backbone") is False else "use_timm_backbone true"
        return f"config: transformers 4.x style (flat backbone fields, {kind})"
    return f"config: transformers 5.x style (nested backbone_config of model_type {nested.get('model_type')!r})"


def _written_by(config: dict) -> str:
    """The major version (``5.x``, ``4.x``) of the transformers that wrote config.json, else guessed from its style."""
    version = str(config.get("transformers_version", ""))
    if version[:1].isdigit():
        return f"{version.split('.')[0]}.x"
    return "4.x" if "use_timm_backbone" in config or not isinstance(config.get("backbone_config"), dict) else "5.x"


def _architecture(config: dict, model_type: str, panoptic: bool, directory: Path) -> str:
    """The transformers class the weights are of (config.json's ``architectures``, else the weights' layout)."""
    inferred = {"detr": "DetrForSegmentation" if panoptic else "DetrForObjectDetection"}.get(
        model_type, "DeformableDetrForObjectDetection"
    )
    named = config.get("architectures") or [inferred]
    name = str(named[0])
    if name in ("DetrModel", "DeformableDetrModel"):
        raise DetrDeployError(
            f"{directory} holds a transformers {name} (backbone and transformer without detection heads): save "
            "a DetrForObjectDetection, DetrForSegmentation or DeformableDetrForObjectDetection"
        )
    return name


class _Values:
    """config.json's fields with transformers' defaults for those it leaves out."""

    def __init__(self, config: dict, model_type: str, source: str):
        self.config, self.model_type, self.source = config, model_type, source
        self.defaults = {**_COMMON_DEFAULTS, **_DEFAULTS[model_type]}

    def __getitem__(self, name: str):
        value = self.config.get(name)
        return self.defaults.get(name) if value is None else value

    def same(self, first: str, second: str):
        """The value of two fields the zoo modules keep as one (encoder/decoder heads, FFN widths)."""
        if self[first] != self[second]:
            raise self.unsupported(f"{first} {self[first]} differs from {second} {self[second]}")
        return self[first]

    def unsupported(self, what: str) -> DetrDeployError:
        return DetrDeployError(
            f"checkpoint {self.source}: config.json has {what}, which the zoo's "
            f"{'DETR' if self.model_type == 'detr' else 'Deformable DETR'} cannot express (it has the official "
            "architecture); this checkpoint cannot be exported"
        )


def _check_common(values: _Values) -> None:
    if values["position_embedding_type"] != "sine":
        raise values.unsupported(f"position_embedding_type {values['position_embedding_type']!r} (only 'sine')")
    if values["activation_function"] != "relu":
        raise values.unsupported(f"activation_function {values['activation_function']!r} (only 'relu')")
    if values["num_channels"] != 3:
        raise values.unsupported(f"num_channels {values['num_channels']} (only 3, RGB)")
    for name in ("normalize_before", "pre_norm"):
        if values.config.get(name):
            raise values.unsupported(f"{name} true (pre-norm layers; only the official post-norm)")


def _backbone_spec(config: dict, values: _Values) -> _Backbone:
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
    return _Backbone("hf", f"HF ResNet layout ({name})", out_stages=_stages(kwargs.get("out_indices")))


def _stages(out_indices) -> tuple[int, ...]:
    return None if out_indices is None else tuple(int(index) for index in out_indices)


def _timm_backbone(name: str, out_indices, output_stride, values: _Values) -> _Backbone:
    match = _TIMM_RESNET_NAME.fullmatch(name)
    if not match or match[1] not in _TIMM_RESNETS:
        raise values.unsupported(f"timm backbone {name!r} (only resnet50, resnet101 and resnet152)")
    if output_stride not in (None, 16, 32):
        raise values.unsupported(f"a timm backbone with output_stride {output_stride} (only 32, or 16 for DC5)")
    return _Backbone(
        "timm",
        f"timm {name} layout (torchvision names)",
        blocks=_TIMM_RESNETS[match[1]],
        dilation=output_stride == 16,
        out_stages=_stages(out_indices),
    )


def _hf_backbone(nested: dict, values: _Values) -> _Backbone:
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
    return _Backbone("hf", f"HF ResNet layout{ignored}", blocks=depths, dilation=False, out_stages=stages)


def _check_backbone_layout(state: Mapping, backbone: _Backbone, prefix: str, source: str) -> None:
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
        counted = rename_keys({key: None for key in state if key.startswith(prefix)}, _HF_RESNET_RULES)
        blocks = tuple(count_indices(counted, rf"{re.escape(prefix)}layer{stage}\.(\d+)\.") for stage in range(1, 5))
        _check_size(source, "blocks per ResNet stage", list(backbone.blocks), list(blocks))


def _check_size(source: str, what: str, config_value, tensor_value) -> None:
    if config_value != tensor_value:
        raise DetrDeployError(
            f"checkpoint {source}: config.json says {what} {config_value} but the weights have {tensor_value}; "
            "the directory mixes files of two models"
        )


def _tensor(state: Mapping, key: str, source: str) -> torch.Tensor:
    if key not in state:
        raise DetrDeployError(f"checkpoint {source} has no {key} tensor (after renaming); is the file complete?")
    return state[key]


def _detr_config(state: dict, values: _Values, backbone: _Backbone, panoptic: bool, source: str) -> DETRConfig:
    _check_common(values)
    prefix = "detr." if panoptic else ""
    required = (1, 2, 3, 4) if panoptic else (4,)
    if backbone.out_stages is not None and tuple(backbone.out_stages[-len(required) :]) != required:
        raise values.unsupported(f"backbone outputs {list(backbone.out_stages)} (needs stages {list(required)})")
    hidden_dim = values["d_model"]
    heads = values.same("encoder_attention_heads", "decoder_attention_heads")
    if panoptic and hidden_dim < 128:
        # transformers shrinks the mask head's GroupNorm below 8 groups there; the official head always has 8.
        raise values.unsupported(f"a panoptic mask head with d_model {hidden_dim} (needs d_model >= 128)")
    classes = _tensor(state, f"{prefix}class_embed.weight", source).shape[0] - 1
    queries = _tensor(state, f"{prefix}query_embed.weight", source)
    _check_size(source, "num_queries", values["num_queries"], queries.shape[0])
    _check_size(source, "d_model", hidden_dim, queries.shape[1])
    return DETRConfig(
        num_classes=classes,
        num_queries=values["num_queries"],
        hidden_dim=hidden_dim,
        num_heads=heads,
        num_encoder_layers=_layers(state, f"{prefix}transformer.encoder", values, "encoder_layers", source),
        num_decoder_layers=_layers(state, f"{prefix}transformer.decoder", values, "decoder_layers", source),
        dim_feedforward=values.same("encoder_ffn_dim", "decoder_ffn_dim"),
        backbone=_zoo_backbone(state, f"{prefix}backbone.0.body.", backbone, source),
        panoptic=panoptic,
    )


def _layers(state: Mapping, prefix: str, values: _Values, field: str, source: str) -> int:
    _check_size(source, field, values[field], count_indices(state, rf"{re.escape(prefix)}\.layers\.(\d+)\."))
    return values[field]


def _zoo_backbone(state: Mapping, prefix: str, backbone: _Backbone, source: str):
    from detr_deploy.checkpoints.official import backbone_config

    return backbone_config(state, prefix, backbone.dilation, source)


def _deformable_config(
    state: dict, values: _Values, backbone: _Backbone, source: str, read_from: list
) -> DeformableDETRConfig:
    _check_common(values)
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
    _check_size(source, "d_model", hidden_dim, _tensor(state, "transformer.level_embed", source).shape[1])
    _check_size(source, "num_feature_levels", levels, count_indices(state, r"input_proj\.(\d+)\."))
    for field, key in (
        ("encoder_n_points", "transformer.encoder.layers.0.self_attn.attention_weights.weight"),
        ("decoder_n_points", "transformer.decoder.layers.0.cross_attn.attention_weights.weight"),
    ):
        rows = _tensor(state, key, source).shape[0]
        _check_size(source, f"{field} x heads x levels", values[field] * heads * levels, rows)
    class_head = next(
        (key for key in ("class_embed.0.weight", "transformer.decoder.class_embed.0.weight") if key in state), None
    )
    classes = _tensor(state, class_head or "class_embed.0.weight", source).shape[0]
    if two_stage:
        # The decoder's queries are the top encoder proposals: two_stage_num_proposals of them (num_queries unused).
        queries = values["two_stage_num_proposals"]
        read_from.append("queries: two_stage_num_proposals (two-stage)")
    else:
        queries = values["num_queries"]
        _check_size(source, "num_queries", queries, _tensor(state, "query_embed.weight", source).shape[0])
    return DeformableDETRConfig(
        num_classes=classes,
        num_queries=queries,
        hidden_dim=hidden_dim,
        num_heads=heads,
        num_encoder_layers=_layers(state, "transformer.encoder", values, "encoder_layers", source),
        num_decoder_layers=_layers(state, "transformer.decoder", values, "decoder_layers", source),
        dim_feedforward=values.same("encoder_ffn_dim", "decoder_ffn_dim"),
        num_feature_levels=levels,
        enc_n_points=values["encoder_n_points"],
        dec_n_points=values["decoder_n_points"],
        with_box_refine=refine,
        two_stage=two_stage,
        backbone=_zoo_backbone(state, "backbone.0.body.", backbone, source),
    )


def _fuse_attention(state: dict) -> None:
    """transformers' separate q/k/v projections -> nn.MultiheadAttention's stacked ``in_proj_*``, in place."""
    for key in [key for key in state if key.endswith(".q_proj.weight")]:
        prefix = key[: -len("q_proj.weight")]
        fuse_qkv(state, prefix, prefix)


_HEAD = re.compile(r"(transformer\.decoder\.)?(class_embed|bbox_embed)\.(\d+)\.(.*)")


def _untie_heads(state: dict, config: DeformableDETRConfig, read_from: list) -> dict:
    """Every per-layer head key the zoo model has, from the copies the file stores.

    transformers ties heads and safetensors stores each tied tensor once: ``class_embed.0`` alone when the heads are
    shared (transformers 5.x also shares the class heads with box refinement), ``model.decoder.bbox_embed.N``
    instead of ``bbox_embed.N`` (box refinement) and ``model.decoder.class_embed.N`` instead of ``class_embed.N``
    (two-stage). A key the file lacks takes its tied twin (with or without ``transformer.decoder.``), else head 0
    when the file stores a single head of that kind, which is what transformers' tying does when loading.
    """
    from detr_deploy.models.registry import build_model

    with torch.device("meta"):
        expected = list(build_model(config).state_dict())
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


def _class_names(config: dict, num_classes: int, source: str, read_from: list) -> tuple[str, ...]:
    """Names by label from ``id2label``, which must name exactly the class head's labels."""
    id2label = config.get("id2label")
    labels = config.get("num_labels", len(id2label) if isinstance(id2label, dict) else None)
    if labels is not None and labels != num_classes:
        raise DetrDeployError(
            f"checkpoint {source}: config.json has {labels} labels but the class head predicts {num_classes} "
            "classes; the directory mixes files of two models"
        )
    if not isinstance(id2label, dict):
        read_from.append("classes: none named (config.json has no id2label)")
        return None
    keys = {str(key) for key in id2label}
    if keys != {str(index) for index in range(num_classes)}:
        raise DetrDeployError(
            f"checkpoint {source}: config.json's id2label does not name labels 0..{num_classes - 1} "
            f"(it has {len(keys)} entries); fix id2label to list every label of the class head"
        )
    names = tuple(str(id2label[str(index)]) for index in range(num_classes))
    if names == tuple(f"LABEL_{index}" for index in range(num_classes)):
        # transformers' placeholders (a config made without id2label, e.g. the hub's DETR-panoptic): not names.
        read_from.append("classes: none named (id2label holds transformers' placeholders LABEL_<i>)")
        return None
    read_from.append(f"classes: id2label ({num_classes} names)")
    return names
