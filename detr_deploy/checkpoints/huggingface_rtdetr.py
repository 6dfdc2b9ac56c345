"""Checkpoints of transformers' RT-DETR: the directory ``save_pretrained`` writes for ``RTDetrForObjectDetection``
(config.json ``model_type`` "rt_detr") and ``RTDetrV2ForObjectDetection`` ("rt_detr_v2").

``huggingface.read_transformers`` finds config.json and the weight files and hands them here. transformers ports
lyuwenyu/RT-DETR module for module, so its tensors rename one to one into the official names our RT-DETR keeps
(q/k/v projections fused into ``in_proj_*``; v1 and v2 differ in a few names, as the official code does). Two key
layouts exist, as for DETR: 4.x names (``encoder.encoder.N``, ``out_proj``, ``fc1``), which every save_pretrained
writes, and 5.x module names (``encoder.aifi.N``, ``o_proj``, ``mlp.fc1``) in files saved from ``state_dict()``.

The architecture comes from config.json (``backbone_config`` describes the ResNet-vd) and is checked against what
the tensors hold, read as an official file is (``rtdetr.tensor_config``). Settings our RT-DETR does not compute
(other activations, pre-norm, more feature levels, learned query content, another backbone, ...) are refused.
Class names come from ``id2label``.
"""

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from detr_deploy.checkpoints.checkpoint import SOURCE_TRANSFORMERS, Checkpoint
from detr_deploy.checkpoints.keymap import fuse_qkv, rename_keys
from detr_deploy.checkpoints.rtdetr import inference_state, resnet_vd_config, tensor_config
from detr_deploy.errors import DetrDeployError
from detr_deploy.models.resnet_vd import ResNetVdConfig
from detr_deploy.models.rtdetr import RTDETRConfig

_ARCHITECTURES = {"rt_detr": "RTDetrForObjectDetection", "rt_detr_v2": "RTDetrV2ForObjectDetection"}

# transformers' defaults (RTDetrConfig / RTDetrV2Config, RTDetrResNetConfig) for fields a config.json may leave out.
_DEFAULTS = {
    "encoder_hidden_dim": 256,
    "encoder_layers": 1,
    "encoder_ffn_dim": 1024,
    "encoder_attention_heads": 8,
    "hidden_expansion": 1.0,
    "d_model": 256,
    "num_queries": 300,
    "decoder_ffn_dim": 1024,
    "decoder_layers": 6,
    "decoder_attention_heads": 8,
    "decoder_n_points": 4,
    "decoder_method": "default",
}
_BACKBONE_DEFAULTS = {
    "embedding_size": 64,
    "hidden_sizes": [256, 512, 1024, 2048],
    "depths": [3, 4, 6, 3],
    "layer_type": "bottleneck",
}
# Settings with a single value in our RT-DETR (the official one, and transformers' default): (value, what it is).
_FIXED = {
    "encoder_activation_function": ("gelu", "the AIFI layer's activation"),
    "activation_function": ("silu", "the CCFM convolutions' activation"),
    "decoder_activation_function": ("relu", "the decoder FFN's activation"),
    "normalize_before": (False, "pre-norm encoder layers"),
    "feat_strides": ([8, 16, 32], "feature strides"),
    "encode_proj_layers": ([2], "the levels AIFI runs on"),
    "positional_encoding_temperature": (10000, "the position embedding's temperature"),
    "layer_norm_eps": (1e-5, "layer norm epsilon"),
    "batch_norm_eps": (1e-5, "batch norm epsilon"),
    "num_feature_levels": (3, "feature levels"),
    "learn_initial_query": (False, "learned query content"),
    "use_timm_backbone": (False, "a timm backbone"),
    "decoder_n_levels": (3, "the decoder's feature levels"),
    "decoder_offset_scale": (0.5, "the sampling offsets' scale"),
}
_FIXED_BACKBONE = {
    "model_type": ("rt_detr_resnet", "backbone"),
    "hidden_act": ("relu", "ResNet activation"),
    "num_channels": (3, "input channels"),
    "downsample_in_first_stage": (False, "ResNet downsample_in_first_stage"),
    "downsample_in_bottleneck": (False, "ResNet downsample_in_bottleneck (the official strides the 3x3)"),
}
_SAMPLING_METHODS = ("default", "discrete")

# transformers 5.x module names -> the 4.x names save_pretrained writes (the reverse of its "rt_detr" conversion).
_FIVE_TO_FOUR = [
    (r"(.*\bencoder)\.aifi\.(\d+\.layers\..*)", r"\1.encoder.\2"),
    (r"(.*\.self_attn)\.o_proj\.(weight|bias)", r"\1.out_proj.\2"),
    (r"(.*\.layers\.\d+)\.mlp\.(fc[12])\.(weight|bias)", r"\1.\2.\3"),
]
_BODY = r"model\.backbone\.model\."
_STAGE = _BODY + r"encoder\.stages\.(\d+)\.layers\.(\d+)\."
_AIFI = r"model\.encoder\.encoder\.(\d+)\.layers\.(\d+)\."
_LAYER = r"model\.decoder\.layers\.(\d+)\."
_MSDA = r"(sampling_offsets|attention_weights|value_proj|output_proj)\.(weight|bias)"


def _rules(version: int) -> list[tuple[str, str]]:
    """transformers 4.x names -> the official names of ``version`` (v1 indexes the encoder's input projections and
    ``enc_output`` where v2 names them; the decoder's input projections are named in both)."""
    conv, norm = ("0", "1") if version == 1 else ("conv", "norm")
    linear, layer_norm = ("0", "1") if version == 1 else ("proj", "norm")
    return [
        *(
            rule
            for index in range(3)
            for rule in (
                (
                    rf"{_BODY}embedder\.embedder\.{index}\.convolution\.weight",
                    rf"backbone.conv1.conv1_{index + 1}.conv.weight",
                ),
                (
                    rf"{_BODY}embedder\.embedder\.{index}\.normalization\.(\w+)",
                    rf"backbone.conv1.conv1_{index + 1}.norm.\1",
                ),
                (
                    rf"{_STAGE}layer\.{index}\.convolution\.weight",
                    rf"backbone.res_layers.\1.blocks.\2.branch2{'abc'[index]}.conv.weight",
                ),
                (
                    rf"{_STAGE}layer\.{index}\.normalization\.(\w+)",
                    rf"backbone.res_layers.\1.blocks.\2.branch2{'abc'[index]}.norm.\3",
                ),
            )
        ),
        # A shortcut after an average pool is the second module of a Sequential (variant d's ``short.conv``).
        (rf"{_STAGE}shortcut\.1\.convolution\.weight", r"backbone.res_layers.\1.blocks.\2.short.conv.conv.weight"),
        (rf"{_STAGE}shortcut\.1\.normalization\.(\w+)", r"backbone.res_layers.\1.blocks.\2.short.conv.norm.\3"),
        (rf"{_STAGE}shortcut\.convolution\.weight", r"backbone.res_layers.\1.blocks.\2.short.conv.weight"),
        (rf"{_STAGE}shortcut\.normalization\.(\w+)", r"backbone.res_layers.\1.blocks.\2.short.norm.\3"),
        (r"model\.encoder_input_proj\.(\d+)\.0\.weight", rf"encoder.input_proj.\1.{conv}.weight"),
        (r"model\.encoder_input_proj\.(\d+)\.1\.(\w+)", rf"encoder.input_proj.\1.{norm}.\2"),
        (rf"{_AIFI}self_attn\.([qkv]|out)_proj\.(weight|bias)", r"encoder.encoder.\1.layers.\2.self_attn.\3_proj.\4"),
        (rf"{_AIFI}self_attn_layer_norm\.(weight|bias)", r"encoder.encoder.\1.layers.\2.norm1.\3"),
        (rf"{_AIFI}fc([12])\.(weight|bias)", r"encoder.encoder.\1.layers.\2.linear\3.\4"),
        (rf"{_AIFI}final_layer_norm\.(weight|bias)", r"encoder.encoder.\1.layers.\2.norm2.\3"),
        (r"model\.encoder\.((?:lateral_convs|fpn_blocks|downsample_convs|pan_blocks)\..*)", r"encoder.\1"),
        (r"model\.decoder_input_proj\.(\d+)\.0\.weight", r"decoder.input_proj.\1.conv.weight"),
        (r"model\.decoder_input_proj\.(\d+)\.1\.(\w+)", r"decoder.input_proj.\1.norm.\2"),
        (rf"{_LAYER}self_attn\.([qkv]|out)_proj\.(weight|bias)", r"decoder.decoder.layers.\1.self_attn.\2_proj.\3"),
        (rf"{_LAYER}self_attn_layer_norm\.(weight|bias)", r"decoder.decoder.layers.\1.norm1.\2"),
        (rf"{_LAYER}encoder_attn\.{_MSDA}", r"decoder.decoder.layers.\1.cross_attn.\2.\3"),
        (rf"{_LAYER}encoder_attn\.n_points_scale", r"decoder.decoder.layers.\1.cross_attn.num_points_scale"),
        (rf"{_LAYER}encoder_attn_layer_norm\.(weight|bias)", r"decoder.decoder.layers.\1.norm2.\2"),
        (rf"{_LAYER}fc([12])\.(weight|bias)", r"decoder.decoder.layers.\1.linear\2.\3"),
        (rf"{_LAYER}final_layer_norm\.(weight|bias)", r"decoder.decoder.layers.\1.norm3.\2"),
        (r"model\.decoder\.query_pos_head\.(.*)", r"decoder.query_pos_head.\1"),
        (r"model\.enc_output\.0\.(weight|bias)", rf"decoder.enc_output.{linear}.\1"),
        (r"model\.enc_output\.1\.(weight|bias)", rf"decoder.enc_output.{layer_norm}.\1"),
        (r"model\.(enc_score_head|enc_bbox_head|denoising_class_embed)\.(.*)", r"decoder.\1.\2"),
        (r"model\.weight_embedding\.weight", "decoder.tgt_embed.weight"),
        # The per-layer heads live in the decoder; v2 also ties top-level copies (same tensors).
        (r"(?:model\.decoder\.)?class_embed\.(\d+)\.(weight|bias)", r"decoder.dec_score_head.\1.\2"),
        (r"(?:model\.decoder\.)?bbox_embed\.(\d+)\.(.*)", r"decoder.dec_bbox_head.\1.\2"),
    ]


class _Values:
    """config.json's fields (and its ``backbone_config``'s) with transformers' defaults for those it leaves out."""

    def __init__(self, config: dict, model_type: str, source: str):
        self.config, self.model_type, self.source = config, model_type, source
        backbone = config.get("backbone_config")
        self.backbone = backbone if isinstance(backbone, dict) else None

    def __getitem__(self, name: str):
        value = self.config.get(name)
        return _DEFAULTS.get(name) if value is None else value

    def backbone_value(self, name: str):
        value = self.backbone.get(name)
        return _BACKBONE_DEFAULTS.get(name) if value is None else value

    def unsupported(self, what: str) -> DetrDeployError:
        return DetrDeployError(
            f"checkpoint {self.source}: config.json has {what}, which our RT-DETR cannot express (it has the "
            "official architecture); this checkpoint cannot be exported"
        )


def read_transformers_rtdetr(
    directory: Path, given: Path, config: dict, raw: Mapping, digest: str, weights_label: str
) -> Checkpoint:
    """The Checkpoint of a transformers RT-DETR directory: ``config`` is its config.json, ``raw`` its tensors
    (every weight file), ``digest`` their sha256. Raises DetrDeployError for a model our RT-DETR cannot represent
    or a config.json the tensors contradict."""
    from detr_deploy.checkpoints.huggingface import _class_names, _written_by

    model_type = config.get("model_type")
    version = 2 if model_type == "rt_detr_v2" else 1
    source = given.name if given.suffix == ".safetensors" else directory.name
    values = _Values(config, model_type, source)
    architecture = str((config.get("architectures") or [_ARCHITECTURES[model_type]])[0])
    if architecture in ("RTDetrModel", "RTDetrV2Model"):
        raise DetrDeployError(
            f"{directory} holds a transformers {architecture} (no detection heads): save a {_ARCHITECTURES[model_type]}"
        )
    if architecture != _ARCHITECTURES[model_type]:
        raise DetrDeployError(
            f"{directory}: config.json has model_type {model_type!r} but architecture {architecture} (expected "
            f"{_ARCHITECTURES[model_type]}); the config.json is not the one save_pretrained wrote for these weights"
        )
    five_x = any(".aifi." in key or ".o_proj." in key or ".mlp.fc" in key for key in raw)
    read_from = [
        f"format: transformers {_written_by(config)} directory ({architecture})",
        f"weights: {weights_label}",
        f"keys: transformers {'5.x' if five_x else '4.x'} names",
    ]
    declared = _declared_config(values, version, read_from)
    state = dict(raw)
    for rule in _FIVE_TO_FOUR:  # one pass each: a key may carry several 5.x names
        state = rename_keys(state, [rule])
    state = rename_keys(state, _rules(version))
    for key in [key for key in state if key.endswith(".self_attn.q_proj.weight")]:
        prefix = key.removesuffix("q_proj.weight")
        fuse_qkv(state, prefix, prefix)
    _check_against_tensors(state, declared, values, source)
    read_from.append("architecture: config.json, checked against the tensor shapes")
    state = inference_state(state, declared, source, read_from)
    class_names = _class_names(config, declared.num_classes, source, read_from)
    path = given if given.suffix == ".safetensors" else directory
    return Checkpoint(
        path, SOURCE_TRANSFORMERS, declared, state, digest, class_names=class_names, read_from=tuple(read_from)
    )


def _same(value, expected) -> bool:
    if isinstance(expected, list):
        return isinstance(value, (list, tuple)) and list(value) == expected
    if isinstance(expected, float):
        return isinstance(value, (int, float)) and abs(value - expected) <= 1e-12
    return value == expected


def _check_fixed(values: _Values) -> None:
    for name, (expected, what) in _FIXED.items():
        value = values.config.get(name)
        if value is not None and not _same(value, expected):
            raise values.unsupported(f"{name} {value!r} ({what}; ours has {expected!r})")
    if values.backbone is None:
        raise values.unsupported(
            f"no backbone_config (backbone {values.config.get('backbone')!r}); only transformers' RT-DETR ResNet-vd "
            "(backbone_config of model_type rt_detr_resnet) is supported"
        )
    for name, (expected, what) in _FIXED_BACKBONE.items():
        value = values.backbone.get(name)
        if value is not None and value != expected:
            raise values.unsupported(f"backbone_config {name} {value!r} ({what}; only {expected!r} is supported)")


def _resnet_vd(values: _Values) -> ResNetVdConfig:
    """The ResNet-vd ``backbone_config`` describes, when the official PResNet has its shape."""
    depths = tuple(values.backbone_value("depths"))
    sizes = list(values.backbone_value("hidden_sizes"))
    stem = values.backbone_value("embedding_size")
    block = values.backbone_value("layer_type")
    if block not in ("basic", "bottleneck"):
        raise values.unsupported(f"backbone_config layer_type {block!r} (only 'basic' and 'bottleneck')")
    expansion = 4 if block == "bottleneck" else 1
    base = sizes[0] // expansion if sizes else 0
    if len(depths) != 4 or len(sizes) != 4 or sizes != [expansion * base * 2**stage for stage in range(4)]:
        raise values.unsupported(
            f"a ResNet with depths {list(depths)} and hidden_sizes {sizes} (the official PResNet has four stages "
            f"doubling in width{', the first 4x its bottleneck width' if expansion == 4 else ''})"
        )
    # The official first block always has a 1x1 projection shortcut, transformers' only where the width changes
    # (bottleneck), and its basic block average-pools that shortcut whenever the width changes, even at stride 1.
    if (block == "basic") != (stem == sizes[0]):
        relation = "equal" if block == "basic" else "different"
        raise values.unsupported(
            f"a {block}-block ResNet with embedding_size {stem} and hidden_sizes[0] {sizes[0]} (they must be "
            f"{relation} for the official ResNet-vd's first shortcut)"
        )
    out = values.backbone.get("out_features")
    stages = [int(name.removeprefix("stage")) for name in out] if out else values.backbone.get("out_indices")
    if stages is not None and list(stages) != [2, 3, 4]:
        raise values.unsupported(f"backbone outputs {list(stages)} (RT-DETR takes stages [2, 3, 4])")
    return ResNetVdConfig(depths, block, stem_width=stem, base_width=base)


def _declared_config(values: _Values, version: int, read_from: list) -> RTDETRConfig:
    """The RT-DETR config.json describes; settings ours cannot compute are refused."""
    _check_fixed(values)
    backbone = _resnet_vd(values)
    levels = 3
    points = values["decoder_n_points"]
    points = tuple(points) if isinstance(points, (list, tuple)) else (points,) * levels
    if len(points) != levels or not all(isinstance(count, int) and count > 0 for count in points):
        raise values.unsupported(f"decoder_n_points {values['decoder_n_points']!r} (one count, or one per level)")
    if version == 1 and len(set(points)) != 1:
        raise values.unsupported(f"per-level decoder_n_points {list(points)} in an RT-DETR v1 (only v2 varies them)")
    sampling = values["decoder_method"] if version == 2 else "default"
    if sampling not in _SAMPLING_METHODS:
        raise values.unsupported(f"decoder_method {sampling!r} (only {' and '.join(_SAMPLING_METHODS)})")
    if values.config.get("eval_size") is not None:
        # transformers then runs AIFI without position embedding in eval mode; the official model always adds it.
        read_from.append(
            f"eval_size {values.config['eval_size']} ignored: the position embedding is computed from each input's "
            "feature size, as the official model does"
        )
    eval_idx, layers = values.config.get("eval_idx"), values["decoder_layers"]
    if eval_idx is not None and eval_idx not in (-1, layers - 1):
        read_from.append(f"eval_idx {eval_idx} ignored, as transformers ignores it (it evaluates the last layer)")
    if values.config.get("anchor_image_size") is not None:
        read_from.append(
            f"anchor_image_size {values.config['anchor_image_size']} ignored: anchors are computed from each "
            "input's feature sizes (the same values at that size)"
        )
    read_from.append(
        f"backbone: ResNet-{backbone.depth}-vd ({backbone.block} blocks {list(backbone.blocks_per_stage)}, "
        "backbone_config)"
    )
    if version == 2:
        read_from.append(f"sampling method: {sampling} (decoder_method)")
    width = values["encoder_hidden_dim"]
    expansion = float(values["hidden_expansion"])
    if int(width * expansion) <= 0:
        raise values.unsupported(f"hidden_expansion {expansion}")
    return RTDETRConfig(
        version=version,
        num_classes=int(values.config.get("num_labels") or len(values.config.get("id2label") or {}) or 0),
        num_queries=values["num_queries"],
        backbone=backbone,
        encoder_hidden_dim=width,
        encoder_heads=values["encoder_attention_heads"],
        encoder_ffn=values["encoder_ffn_dim"],
        num_encoder_layers=values["encoder_layers"],
        encoder_expansion=expansion,
        depth_mult=1.0,  # transformers' CSP layers always hold 3 RepVGG blocks
        hidden_dim=values["d_model"],
        num_heads=values["decoder_attention_heads"],
        num_decoder_layers=values["decoder_layers"],
        dim_feedforward=values["decoder_ffn_dim"],
        dec_n_points=points,
        sampling_method=sampling,
    )


# Fields config.json and the tensors both tell, as config.json names them (those the tensors cannot tell are heads,
# queries and the sampling method, which tensor_config takes from config.json).
_CHECKED_FIELDS = {
    "backbone": "backbone_config (depths, hidden_sizes, embedding_size, layer_type)",
    "encoder_hidden_dim": "encoder_hidden_dim",
    "encoder_ffn": "encoder_ffn_dim",
    "num_encoder_layers": "encoder_layers",
    "encoder_expansion": "hidden_expansion",
    "depth_mult": "3 RepVGG blocks per CSP layer",
    "hidden_dim": "d_model",
    "num_decoder_layers": "decoder_layers",
    "dim_feedforward": "decoder_ffn_dim",
    "dec_n_points": "decoder_n_points",
    "num_classes": "num_labels",
    "num_heads": "decoder_attention_heads",
}


def _check_against_tensors(state: Mapping, declared: RTDETRConfig, values: _Values, source: str) -> None:
    """Refuse a config.json the tensors (renamed to the official names) contradict: transformers would not load
    them into the model it describes."""
    if "backbone.conv1.conv1_1.conv.weight" not in state:
        raise DetrDeployError(
            f"checkpoint {source} has no RT-DETR ResNet-vd stem (model.backbone.model.embedder tensors); is the file "
            "complete?"
        )
    if declared.num_classes == 0:  # config.json without num_labels or id2label: the head tells
        head = state.get("decoder.dec_score_head.0.weight")
        declared = declared if head is None else dataclasses.replace(declared, num_classes=head.shape[0])
    found = tensor_config(state, source, declared, "config.json", [])
    for name, field in _CHECKED_FIELDS.items():
        said, held = getattr(declared, name), getattr(found, name)
        if name == "backbone":
            said, held = _describe_backbone(said), _describe_backbone(held)
        if said != held:
            raise DetrDeployError(
                f"checkpoint {source}: config.json says {field} {said} but the weights have {held}; the directory "
                "mixes files of two models"
            )
    if found.version != declared.version:
        raise DetrDeployError(
            f"checkpoint {source}: config.json is an RT-DETR v{declared.version} ({values.model_type}) but the "
            f"weights are v{found.version}'s"
        )
    resnet_vd_config(state, source)


def _describe_backbone(backbone: ResNetVdConfig) -> str:
    return (
        f"{backbone.block} blocks {list(backbone.blocks_per_stage)}, stem {backbone.stem_width}, "
        f"stages {list(backbone.stage_channels())}"
    )
