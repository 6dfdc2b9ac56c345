"""D-FINE checkpoints (and DEIM's D-FINE models, the same network): the official code (Peterande/D-FINE,
ShihuaHuang95/DEIM) and transformers (``DFineForObjectDetection``, ``model_type`` ``d_fine``).

Official files are saved by RT-DETR's solver layout (``formats.official.split_solver_file``: ``ema.module``, else
``model``, else a bare state dict). Our D-FINE keeps the official parameter names, so nothing is renamed: the reader
drops what only training uses (``models.dfine.training_only_keys``) and reads the architecture from tensor shapes
and key counts: the HGNetv2 (B0..B6 by structure), the encoder (levels, width, FFN, GELAN branch width and depth),
the decoder (width, FFN, layers, points per level from ``num_points_scale``, bins from the box heads) and the FDR
constants ``up`` and ``reg_scale`` (one-element tensors). What no tensor holds comes from ``--model`` when given,
else the official configs' defaults: attention heads (8 in the encoder; the decoder's follow from its points),
queries (300) and the sampling method ("default"). A file of a named size (N, S, M, L, X) is named so.

transformers directories: transformers ports the official modules one to one, so its tensors rename into the
official names (q/k/v fused into ``in_proj_*``; the GELAN blocks' ``conv1``/``csp_rep1``/``conv2``/... back to
``cv1``/``cv2.0``/``cv2.1``/...). save_pretrained writes 4.x names (``encoder.encoder.N``, ``fc1``, ``out_proj``);
``state_dict()`` files have 5.x module names (``aifi``, ``o_proj``, ``mlp.layers.N``), renamed first. The
architecture is read from the renamed tensors, with heads, queries and the sampling method from config.json, and
config.json's sizes are checked against it; settings ours does not compute are refused. Class names come from
``id2label``.
"""

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from detr_deploy.checkpoints import hgnetv2 as hgnetv2_checkpoints
from detr_deploy.checkpoints.candidate import FORMAT_OFFICIAL, FORMAT_TRANSFORMERS, NO, YES, Candidate, Reader
from detr_deploy.checkpoints.checkpoint import (
    SOURCE_OFFICIAL,
    SOURCE_TRANSFORMERS,
    Checkpoint,
    fitted_state,
    given_or_default,
    integer_ratio,
    points_from_scale,
)
from detr_deploy.checkpoints.formats.official import split_solver_file
from detr_deploy.checkpoints.formats.transformers import differing_setting, id2label_class_names, written_by
from detr_deploy.checkpoints.keymap import count_indices, fuse_every_qkv, rename_keys
from detr_deploy.errors import DetrDeployError
from detr_deploy.models.dfine import DFineConfig, training_only_keys
from detr_deploy.models.hgnetv2 import HGNETV2_VARIANTS, HGNetV2Config
from detr_deploy.models.registry import get_model_spec, list_models

# Tensors of every D-FINE/DEIM decoder (fine-grained distribution refinement), whatever the sizes.
_MARKERS = ("decoder.up", "decoder.reg_scale")
_DEFAULT_HEADS = 8
_DEFAULT_QUERIES = 300
# The LQE every official decoder builds: MLP(4 * (4 + 1), 64, 1, 2).
_LQE_SHAPE = (64, 20)
# The official expansion values, preferred when they give the branch width found (any value of the same rounding
# builds the same network).
_EXPANSIONS = (1.0, 0.5, 0.34)
_DEPTH_MULTS = (1.0, 0.67, 0.5, 0.34)
# What the official convert_to_deploy() leaves: fused conv + norm (``conv_bn_fused``), fused RepVGG branches.
_FUSED = re.compile(r".*(?:\.conv_bn_fused|\.bottlenecks\.\d+\.conv)\.(?:weight|bias)")


def is_official_dfine(content) -> bool:
    """A loaded file holding an official D-FINE/DEIM state dict."""
    state, _ = split_solver_file(content)
    return state is not None and all(key in state for key in _MARKERS)


def read_official_dfine(path, content, sha256: str, model_config: DFineConfig = None) -> Checkpoint:
    """Read a loaded official D-FINE/DEIM file. ``model_config`` (from ``--model``, or recorded in an export)
    settles what the tensors cannot tell: heads, queries, the sampling method, the evaluated decoder layer.
    Raises DetrDeployError for a file our D-FINE cannot represent, saying what was found."""
    path = Path(path)
    state, origin = split_solver_file(content)
    if state is None:
        raise DetrDeployError(f"checkpoint {path.name} holds no D-FINE state dict (expected 'ema', 'model' or tensors)")
    state = {str(key): value for key, value in state.items() if isinstance(value, torch.Tensor)}
    read_from = ["format: official D-FINE / DEIM code (Peterande/D-FINE)", f"weights: {origin}"]
    if not isinstance(model_config, DFineConfig):
        model_config = None  # none, or another family's: agree_with_model reports that disagreement
    config = tensor_config(state, path.name, model_config, "--model", read_from)
    if model_config is not None and 0 < model_config.num_decoder_layers < config.num_decoder_layers:
        layers = model_config.num_decoder_layers
        read_from.append(
            f"decoder layers: {layers} of the file's {config.num_decoder_layers} (--model evaluates layer {layers}, "
            f"as the official eval_idx {layers - 1} does; the later layers never run in evaluation and are dropped)"
        )
        config = named(dataclasses.replace(config, num_decoder_layers=layers), model_config)
    else:
        read_from.append(f"decoder layers: {config.num_decoder_layers} (key count; the last one evaluated)")
    state = inference_state(state, config, path.name, read_from)
    read_from.append("classes: none named (official checkpoints carry no names; the COCO releases predict 80)")
    return Checkpoint(path, SOURCE_OFFICIAL, config, state, sha256, class_names=None, read_from=tuple(read_from))


def _tensor(state: Mapping, key: str, source: str) -> torch.Tensor:
    if key not in state:
        raise DetrDeployError(
            f"checkpoint {source} has no tensor {key}, which every D-FINE checkpoint has: is the file complete?"
        )
    return state[key]


def _official_value(candidates, given_value, builds) -> float:
    """The first of (``given_value``, the official values) for which ``builds(value)`` holds; None if none does."""
    for value in ([given_value] if given_value is not None else []) + list(candidates):
        if builds(value):
            return value
    return None


def _backbone(state: Mapping, levels: int, source: str, given: DFineConfig) -> HGNetV2Config:
    """The HGNetv2 under ``backbone.``, returning its last ``levels`` stages, named B0..B6 when it is one."""
    if not hgnetv2_checkpoints.is_hgnetv2(state):
        first = next((key for key in state if key.startswith("backbone.")), "none")
        raise DetrDeployError(
            f"checkpoint {source} is a D-FINE whose backbone is not an HGNetv2 (first backbone tensor: {first}); "
            "only the HGNetv2 D-FINE/DEIM models are supported"
        )
    stages = count_indices(state, r"backbone\.stages\.(\d+)\.")
    found = hgnetv2_checkpoints.from_tensors(
        state, "backbone.", source, out_stages=tuple(range(stages - levels + 1, stages + 1))
    )
    if given is not None and dataclasses.replace(found, name=given.backbone.name) == given.backbone:
        return given.backbone
    return hgnetv2_checkpoints.named(found, tuple(name for name in HGNETV2_VARIANTS if name.startswith("B")))


def tensor_config(state: Mapping, source: str, given: DFineConfig, given_by: str, read_from: list) -> DFineConfig:
    """The architecture a D-FINE state dict in the official layout holds, read from tensor shapes and key counts;
    heads, queries and the sampling method from ``given`` (said to come from ``given_by``), else the official
    defaults. Every decoder layer in the file is counted."""
    levels = count_indices(state, r"encoder\.input_proj\.(\d+)\.")
    aifi = count_indices(state, r"encoder\.encoder\.(\d+)\.")
    if levels < 2 or aifi > 1:
        raise DetrDeployError(
            f"checkpoint {source}: its hybrid encoder has {levels} input levels and {aifi} AIFI encoders; ours takes "
            "2 or more levels with AIFI on the last one (the official use_encoder_idx)"
        )
    backbone = _backbone(state, levels, source, given)
    read_from.append(f"backbone: {backbone.label} ({backbone.structure()}, tensor shapes)")
    width = int(_tensor(state, "encoder.input_proj.0.conv.weight", source).shape[0])
    takes = [int(_tensor(state, f"encoder.input_proj.{level}.conv.weight", source).shape[1]) for level in range(levels)]
    if takes != list(backbone.out_channels()):
        raise DetrDeployError(
            f"checkpoint {source}: its encoder takes {takes} channels but its {backbone.label} gives "
            f"{list(backbone.out_channels())}; is the file complete and unmodified?"
        )
    # GELAN: a 1x1 to 2 * width, branches round(expansion * width // 2) wide of round(3 * depth_mult) RepVGG blocks.
    branch = int(_tensor(state, "encoder.fpn_blocks.0.cv2.0.conv1.conv.weight", source).shape[0])
    blocks = count_indices(state, r"encoder\.fpn_blocks\.0\.cv2\.0\.bottlenecks\.(\d+)\.")
    expansion = _official_value(
        (*_EXPANSIONS, 2 * branch / width), given and given.encoder_expansion, lambda e: round(e * width // 2) == branch
    )
    depth_mult = _official_value(
        (*_DEPTH_MULTS, blocks / 3), given and given.depth_mult, lambda d: round(3 * d) == blocks
    )
    if expansion is None or depth_mult is None or not blocks:
        raise DetrDeployError(
            f"checkpoint {source}: cannot read the GELAN blocks' expansion and depth ({branch} branch channels for "
            f"width {width}, {blocks} RepVGG blocks)"
        )
    encoder_layers = count_indices(state, r"encoder\.encoder\.0\.layers\.(\d+)\.")
    encoder_ffn = (
        int(_tensor(state, "encoder.encoder.0.layers.0.linear1.weight", source).shape[0])
        if encoder_layers
        else (given.encoder_ffn if given is not None else DFineConfig.encoder_ffn)
    )
    hidden = int(_tensor(state, "decoder.enc_output.proj.weight", source).shape[0])
    projected = count_indices(state, r"decoder\.input_proj\.(\d+)\.")
    if (width == hidden) != (projected == 0) or projected not in (0, levels):
        raise DetrDeployError(
            f"checkpoint {source}: its decoder has {projected} input projections for {levels} levels of width {width} "
            f"into width {hidden}; the official decoder projects every level exactly when the widths differ (extra "
            "decoder levels beyond the encoder's are not supported)"
        )
    classes = int(_tensor(state, "decoder.dec_score_head.0.weight", source).shape[0])
    if int(_tensor(state, "decoder.enc_score_head.weight", source).shape[0]) != classes:
        raise DetrDeployError(
            f"checkpoint {source}: its encoder score head has {state['decoder.enc_score_head.weight'].shape[0]} "
            f"outputs, its decoder's {classes}: class-agnostic query selection (query_select_method 'agnostic') "
            "is not supported"
        )
    layers = count_indices(state, r"decoder\.decoder\.layers\.(\d+)\.")
    last = layers - 1
    box_rows = int(_tensor(state, f"decoder.dec_bbox_head.{last}.layers.2.weight", source).shape[0])
    if tuple(_tensor(state, f"decoder.dec_bbox_head.{last}.layers.0.weight", source).shape) != (hidden, hidden):
        raise DetrDeployError(
            f"checkpoint {source}: its last decoder layers are wider than the first (layer_scale with eval_idx before "
            "the last layer): give --model with the evaluated number of decoder layers"
        )
    lqe = tuple(_tensor(state, f"decoder.decoder.lqe_layers.{last}.reg_conf.layers.0.weight", source).shape)
    if lqe != _LQE_SHAPE:
        raise DetrDeployError(f"checkpoint {source}: its quality estimator is {lqe}, not the official {_LQE_SHAPE}")
    reg_max = integer_ratio(box_rows, 4, "distribution bins (4 edges)", source) - 1
    points = points_from_scale(
        _tensor(state, "decoder.decoder.layers.0.cross_attn.num_points_scale", source), levels, source
    )
    rows = int(_tensor(state, "decoder.decoder.layers.0.cross_attn.attention_weights.weight", source).shape[0])
    heads = integer_ratio(rows, sum(points), "decoder heads", source)
    if given is not None and given.num_heads != heads:
        raise DetrDeployError(
            f"checkpoint {source} has {heads} decoder heads ({rows} attention weights for {sum(points)} points) but "
            f"{given_by} says {given.num_heads}"
        )
    read_from.append(f"decoder points: {list(points)} per level (num_points_scale); decoder heads: {heads}")
    encoder_heads = given_or_default(given, given_by, "encoder_heads", _DEFAULT_HEADS, "encoder heads", read_from)
    queries = given_or_default(given, given_by, "num_queries", _DEFAULT_QUERIES, "queries", read_from)
    sampling = given_or_default(given, given_by, "sampling_method", "default", "sampling method", read_from)
    reg_scale = float(_tensor(state, "decoder.reg_scale", source).flatten()[0])
    up = float(_tensor(state, "decoder.up", source).flatten()[0])
    read_from.append(f"FDR: {reg_max + 1} bins per edge, reg_scale {reg_scale:g}, up {up:g} (tensors)")
    read_from.append("classes, widths, FFNs, GELAN width and depth, layers: tensor shapes and key counts")
    found = DFineConfig(
        size="custom",
        num_classes=classes,
        num_queries=queries,
        backbone=backbone,
        encoder_hidden_dim=width,
        encoder_heads=encoder_heads,
        encoder_ffn=encoder_ffn,
        num_encoder_layers=encoder_layers,
        encoder_expansion=expansion,
        depth_mult=depth_mult,
        hidden_dim=hidden,
        num_heads=heads,
        num_decoder_layers=layers,
        dim_feedforward=int(_tensor(state, "decoder.decoder.layers.0.linear1.weight", source).shape[0]),
        dec_n_points=points,
        sampling_method=sampling,
        reg_max=reg_max,
        reg_scale=reg_scale,
        up=up,
    )
    return named(found, given)


def _gelan(config: DFineConfig) -> tuple[int, int]:
    """(branch width, RepVGG blocks) of the GELAN blocks: what expansion and depth_mult build."""
    return round(config.encoder_expansion * config.encoder_hidden_dim // 2), round(3 * config.depth_mult)


def named(config: DFineConfig, given: DFineConfig = None) -> DFineConfig:
    """``config`` under the size whose architecture it has (``given``'s, else a zoo size: N, S, M, L, X), whatever
    its classes, queries and FDR constants, with that size's expansion and depth values; else named "custom"."""
    free = {"size": "", "num_classes": 0, "num_queries": 0, "reg_scale": 0.0, "up": 0.0, "sampling_method": ""}
    free.update(encoder_expansion=0.0, depth_mult=0.0)
    sizes = [given] if given is not None else []
    sizes += [get_model_spec(name).config for name in list_models()]
    for size in sizes:
        if isinstance(size, DFineConfig) and _gelan(size) == _gelan(config):
            if dataclasses.replace(size, **free) == dataclasses.replace(config, **free):
                return dataclasses.replace(
                    config, size=size.size, encoder_expansion=size.encoder_expansion, depth_mult=size.depth_mult
                )
    return dataclasses.replace(config, size="custom")


def inference_state(state: Mapping, config: DFineConfig, source: str, read_from: list) -> dict:
    """``state`` as ``DFINE(config)`` holds it, checked to fit it exactly: training-only tensors dropped, batch norm
    counters matched, the fused convolutions of a deployed encoder refused."""
    if any(_FUSED.fullmatch(key) for key in state):
        raise DetrDeployError(
            f"checkpoint {source} holds the fused convolutions of convert_to_deploy(); export the training "
            "checkpoint (its batch norms and RepVGG branches are what ours builds)"
        )
    dropped = set(training_only_keys(list(state), config.num_decoder_layers))
    if dropped:
        read_from.append(f"dropped {len(dropped)} tensors inference does not use (denoising embedding, anchors, ...)")
    return fitted_state(config, {key: value for key, value in state.items() if key not in dropped}, source)


# --- transformers ------------------------------------------------------------------------------------------------

_ARCHITECTURE = "DFineForObjectDetection"
# transformers' DFineConfig defaults for the fields the reader asks.
_TRANSFORMERS_DEFAULTS = {
    "encoder_attention_heads": 8,
    "decoder_attention_heads": 8,
    "num_queries": 300,
    "decoder_method": "default",
    "encoder_hidden_dim": 256,
    "encoder_ffn_dim": 1024,
    "encoder_layers": 1,
    "d_model": 256,
    "decoder_ffn_dim": 1024,
    "decoder_layers": 6,
    "max_num_bins": 32,
}
# Settings with a single value in our D-FINE (the official one, and transformers' default): (value, what it is).
_FIXED = {
    "encoder_activation_function": ("gelu", "the AIFI layer's activation"),
    "activation_function": ("silu", "the encoder convolutions' activation"),
    "decoder_activation_function": ("relu", "the decoder FFN's activation"),
    "normalize_before": (False, "pre-norm encoder layers"),
    "positional_encoding_temperature": (10000, "the position embedding's temperature"),
    "layer_norm_eps": (1e-5, "layer norm epsilon"),
    "batch_norm_eps": (1e-5, "batch norm epsilon"),
    "learn_initial_query": (False, "learned query content"),
    "decoder_offset_scale": (0.5, "the sampling offsets' scale"),
    "top_prob_values": (4, "the quality estimator's top-k"),
    "lqe_hidden_dim": (64, "the quality estimator's width"),
    "lqe_layers": (2, "the quality estimator's depth"),
    "layer_scale": (1, "wider decoder layers after eval_idx"),
}
_SAMPLING_METHODS = ("default", "discrete")
# transformers 5.x module names -> the 4.x names save_pretrained writes.
_FIVE_TO_FOUR = [
    (r"(.*\bencoder)\.aifi\.(\d+\.layers\..*)", r"\1.encoder.\2"),
    (r"(.*\.self_attn)\.o_proj\.(weight|bias)", r"\1.out_proj.\2"),
    (r"(.*\.layers\.\d+)\.mlp\.layers\.0\.(weight|bias)", r"\1.fc1.\2"),
    (r"(.*\.layers\.\d+)\.mlp\.layers\.1\.(weight|bias)", r"\1.fc2.\2"),
]
_AIFI = r"model\.encoder\.encoder\.(\d+)\.layers\.(\d+)\."
_LAYER = r"model\.decoder\.layers\.(\d+)\."
_GELAN = r"model\.encoder\.(fpn|pan)_blocks\.(\d+)\."
# transformers 4.x names -> the official names.
_RULES = [
    (r"model\.encoder_input_proj\.(\d+)\.0\.weight", r"encoder.input_proj.\1.conv.weight"),
    (r"model\.encoder_input_proj\.(\d+)\.1\.(\w+)", r"encoder.input_proj.\1.norm.\2"),
    (rf"{_AIFI}self_attn\.([qkv]|out)_proj\.(weight|bias)", r"encoder.encoder.\1.layers.\2.self_attn.\3_proj.\4"),
    (rf"{_AIFI}self_attn_layer_norm\.(weight|bias)", r"encoder.encoder.\1.layers.\2.norm1.\3"),
    (rf"{_AIFI}fc([12])\.(weight|bias)", r"encoder.encoder.\1.layers.\2.linear\3.\4"),
    (rf"{_AIFI}final_layer_norm\.(weight|bias)", r"encoder.encoder.\1.layers.\2.norm2.\3"),
    (r"model\.encoder\.lateral_convs\.(.*)", r"encoder.lateral_convs.\1"),
    (rf"{_GELAN}conv1\.(.*)", r"encoder.\1_blocks.\2.cv1.\3"),
    (rf"{_GELAN}csp_rep1\.(.*)", r"encoder.\1_blocks.\2.cv2.0.\3"),
    (rf"{_GELAN}conv2\.(.*)", r"encoder.\1_blocks.\2.cv2.1.\3"),
    (rf"{_GELAN}csp_rep2\.(.*)", r"encoder.\1_blocks.\2.cv3.0.\3"),
    (rf"{_GELAN}conv3\.(.*)", r"encoder.\1_blocks.\2.cv3.1.\3"),
    (rf"{_GELAN}conv4\.(.*)", r"encoder.\1_blocks.\2.cv4.\3"),
    (r"model\.encoder\.downsample_convs\.(\d+)\.conv([12])\.(.*)", r"encoder.downsample_convs.\1.0.cv\2.\3"),
    (r"model\.decoder_input_proj\.(\d+)\.0\.weight", r"decoder.input_proj.\1.conv.weight"),
    (r"model\.decoder_input_proj\.(\d+)\.1\.(\w+)", r"decoder.input_proj.\1.norm.\2"),
    (rf"{_LAYER}self_attn\.([qkv]|out)_proj\.(weight|bias)", r"decoder.decoder.layers.\1.self_attn.\2_proj.\3"),
    (rf"{_LAYER}self_attn_layer_norm\.(weight|bias)", r"decoder.decoder.layers.\1.norm1.\2"),
    (
        rf"{_LAYER}encoder_attn\.(sampling_offsets|attention_weights)\.(weight|bias)",
        r"decoder.decoder.layers.\1.cross_attn.\2.\3",
    ),
    (rf"{_LAYER}encoder_attn\.num_points_scale", r"decoder.decoder.layers.\1.cross_attn.num_points_scale"),
    (rf"{_LAYER}gateway\.(gate|norm)\.(weight|bias)", r"decoder.decoder.layers.\1.gateway.\2.\3"),
    (rf"{_LAYER}fc([12])\.(weight|bias)", r"decoder.decoder.layers.\1.linear\2.\3"),
    (rf"{_LAYER}final_layer_norm\.(weight|bias)", r"decoder.decoder.layers.\1.norm3.\2"),
    (r"model\.decoder\.lqe_layers\.(.*)", r"decoder.decoder.lqe_layers.\1"),
    (r"model\.decoder\.(query_pos_head|pre_bbox_head)\.(.*)", r"decoder.\1.\2"),
    (r"model\.decoder\.(up|reg_scale|anchors|valid_mask)", r"decoder.\1"),
    (r"model\.enc_output\.0\.(weight|bias)", r"decoder.enc_output.proj.\1"),
    (r"model\.enc_output\.1\.(weight|bias)", r"decoder.enc_output.norm.\1"),
    (r"model\.(enc_score_head|enc_bbox_head|denoising_class_embed)\.(.*)", r"decoder.\1.\2"),
    (r"model\.weight_embedding\.weight", "decoder.tgt_embed.weight"),
    # The per-layer heads live in the decoder; untied files also hold top-level copies (the same tensors).
    (r"(?:model\.decoder\.)?class_embed\.(\d+)\.(weight|bias)", r"decoder.dec_score_head.\1.\2"),
    (r"(?:model\.decoder\.)?bbox_embed\.(\d+)\.(.*)", r"decoder.dec_bbox_head.\1.\2"),
]


def _unsupported(source: str, what: str) -> DetrDeployError:
    return DetrDeployError(
        f"checkpoint {source}: config.json has {what}, which our D-FINE cannot express (it has the official "
        "architecture); this checkpoint cannot be exported"
    )


def read_transformers_dfine(
    directory: Path, given: Path, config: dict, raw: Mapping, digest: str, weights_label: str
) -> Checkpoint:
    """The Checkpoint of a transformers D-FINE directory: ``config`` is its config.json, ``raw`` its tensors,
    ``digest`` their sha256. Raises DetrDeployError for a model our D-FINE cannot represent or a config.json the
    tensors contradict."""
    source = given.name if given.suffix == ".safetensors" else directory.name
    architecture = str((config.get("architectures") or [_ARCHITECTURE])[0])
    if architecture != _ARCHITECTURE:
        raise DetrDeployError(
            f"{directory} holds a transformers {architecture}, not a {_ARCHITECTURE} (no detection heads, or another "
            "model): save the DFineForObjectDetection"
        )

    def value(name: str):
        found = config.get(name)
        return _TRANSFORMERS_DEFAULTS.get(name) if found is None else found

    if differing := differing_setting(config, _FIXED):
        raise _unsupported(source, differing)
    backbone_config = config.get("backbone_config")
    if not isinstance(backbone_config, dict) or backbone_config.get("model_type") != "hgnet_v2":
        kind = backbone_config.get("model_type") if isinstance(backbone_config, dict) else config.get("backbone")
        raise _unsupported(source, f"backbone {kind!r} (only an hgnet_v2 backbone_config is supported)")
    if value("decoder_method") not in _SAMPLING_METHODS:
        raise _unsupported(
            source, f"decoder_method {value('decoder_method')!r} (only {' and '.join(_SAMPLING_METHODS)})"
        )
    five_x = any(".aifi." in key or ".o_proj." in key or ".mlp.layers." in key for key in raw)
    read_from = [
        f"format: transformers {written_by(config)} directory ({architecture})",
        f"weights: {weights_label}",
        f"keys: transformers {'5.x' if five_x else '4.x'} names",
    ]
    state = hgnetv2_checkpoints.transformers_state(dict(raw), "model.backbone.model.", "backbone.")
    for rule in _FIVE_TO_FOUR:  # one pass each: a key may carry several 5.x names
        state = rename_keys(state, [rule])
    state = rename_keys(state, _RULES)
    fuse_every_qkv(state)
    declared_backbone = hgnetv2_checkpoints.named(
        hgnetv2_checkpoints.from_transformers(backbone_config, source), tuple(HGNETV2_VARIANTS)
    )
    hints = DFineConfig(
        backbone=declared_backbone,
        num_queries=value("num_queries"),
        encoder_heads=value("encoder_attention_heads"),
        num_heads=value("decoder_attention_heads"),
        sampling_method=value("decoder_method"),
    )
    found = tensor_config(state, source, hints, "config.json", read_from)
    said = {
        "backbone": (declared_backbone.structure(), found.backbone.structure()),
        "encoder_hidden_dim": (value("encoder_hidden_dim"), found.encoder_hidden_dim),
        "encoder_ffn_dim": (value("encoder_ffn_dim"), found.encoder_ffn),
        "encoder_layers": (value("encoder_layers"), found.num_encoder_layers),
        "d_model": (value("d_model"), found.hidden_dim),
        "decoder_ffn_dim": (value("decoder_ffn_dim"), found.dim_feedforward),
        "decoder_layers": (value("decoder_layers"), found.num_decoder_layers),
        "max_num_bins": (value("max_num_bins"), found.reg_max),
    }
    if config.get("num_labels") is not None:
        said["num_labels"] = (config["num_labels"], found.num_classes)
    for name, (declared, held) in said.items():
        if declared != held:
            raise DetrDeployError(
                f"checkpoint {source}: config.json says {name} {declared} but the weights have {held}; the directory "
                "mixes files of two models"
            )
    read_from.append("architecture: the tensors, checked against config.json")
    state = inference_state(state, found, source, read_from)
    class_names = id2label_class_names(config, found.num_classes, source, read_from)
    path = given if given.suffix == ".safetensors" else directory
    return Checkpoint(
        path, SOURCE_TRANSFORMERS, found, state, digest, class_names=class_names, read_from=tuple(read_from)
    )


# --- the readers -------------------------------------------------------------------------------------------------


def _recognize_official(candidate: Candidate):
    return YES if candidate.folder is None and is_official_dfine(candidate.content) else NO


def _read_official(candidate: Candidate, model_config=None) -> Checkpoint:
    return read_official_dfine(candidate.path, candidate.content, candidate.sha256, model_config)


def _recognize_transformers(candidate: Candidate):
    return YES if candidate.folder is not None and candidate.folder.model_type == "d_fine" else NO


def _read_transformers(candidate: Candidate, model_config=None) -> Checkpoint:
    folder = candidate.folder
    return read_transformers_dfine(
        folder.directory, folder.given, folder.config, folder.weights, folder.digest, folder.weights_label
    )


READERS = (
    Reader("official D-FINE", FORMAT_OFFICIAL, _recognize_official, _read_official, labels=("D-FINE / DEIM",)),
    Reader(
        "transformers D-FINE",
        FORMAT_TRANSFORMERS,
        _recognize_transformers,
        _read_transformers,
        labels=("D-FINE / DEIM",),
        format_names=("d_fine",),
        classes=(_ARCHITECTURE,),
    ),
)
