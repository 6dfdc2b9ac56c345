"""Checkpoints of the official RT-DETR code: lyuwenyu/RT-DETR ``rtdetr_pytorch`` (v1) and ``rtdetrv2_pytorch`` (v2).

Their solvers save ``{'model': state, 'ema': {'module': state, 'updates': n}, 'optimizer': ..., 'last_epoch': ...}``
(release files keep the weights only); the official export loads ``ema.module`` when the file has it, else
``model``, and so do we. A bare state dict is read too. Our RT-DETR keeps the official parameter names, so nothing
is renamed: the reader picks the weights, drops what only training uses (``training_only_keys``) and reads the
architecture from tensor shapes and key counts:

- v1 or v2: v2 names its input projections and ``enc_output`` (``conv``/``norm``, ``proj``/``norm``) where v1
  indexes them, and stores ``cross_attn.num_points_scale`` (1 / points of each point's level), which gives v2's
  per-level point counts;
- the ResNet-vd (blocks per stage, basic or bottleneck blocks, stem and stage widths), the encoder (width, FFN, CSP
  expansion and depth, AIFI layers), the decoder (width, FFN, layers, levels, points) and the class count.

What no tensor holds comes from ``model_config`` (the ``--model`` the user names) when given, else from the official
configs' defaults, and ``read_from`` says which: attention heads (8; v2's decoder heads are in its tensors, points
per level being known), queries (300), v2's sampling method ("default"; the ``discrete`` dsp checkpoints have the
same tensors) and the evaluated decoder layer (the last; the official ``eval_idx`` of the r50vd_m configs evaluates
an earlier one, and with a --model of that many layers the later ones are dropped). Official checkpoints name no
classes (the releases predict COCO's 80).
"""

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from detr_deploy.checkpoints.checkpoint import SOURCE_OFFICIAL, Checkpoint, check_state_dict, integer_ratio
from detr_deploy.checkpoints.keymap import count_indices
from detr_deploy.errors import DetrDeployError
from detr_deploy.models.registry import build_model, describe_config
from detr_deploy.models.resnet_vd import ResNetVdConfig
from detr_deploy.models.rtdetr import RTDETRConfig, training_only_keys

# Keys of the official RT-DETR decoder, whatever the backbone (ResNet-vd, HGNetv2, ...).
_RTDETR_MARKERS = ("decoder.dec_score_head.", "decoder.enc_score_head.")
# Keys of models built on RT-DETR's layout that ours is not, with their names.
_DERIVED_FAMILIES = (
    ("decoder.up", "D-FINE or DEIM"),
    ("decoder.reg_scale", "D-FINE or DEIM"),
    ("lqe_layers", "D-FINE or DEIM"),
    ("decoder.tgt_embed.", "RT-DETR with learned query content (learn_query_content), which ours lacks"),
)
_STEM = "backbone.conv1.conv1_"
# The single convolution RepVggBlock.convert_to_deploy() adds beside the two branches it fuses.
_FUSED_REPVGG = re.compile(r"encoder\.(?:fpn|pan)_blocks\.\d+\.bottlenecks\.\d+\.conv\.(?:weight|bias)")
_DEFAULT_HEADS = 8
_DEFAULT_QUERIES = 300


def split_official_rtdetr(content) -> tuple[Mapping, str]:
    """(state dict, where in the file it was) of a loaded official file; (None, "") when there is none."""
    if not isinstance(content, Mapping):
        return None, ""
    ema = content.get("ema")
    if isinstance(ema, Mapping) and isinstance(ema.get("module"), Mapping):
        return ema["module"], "EMA weights (ema.module), as the official export loads them"
    if isinstance(content.get("model"), Mapping):
        return content["model"], "'model' (the file has no EMA weights)"
    if content and all(isinstance(value, torch.Tensor) for value in content.values()):
        return content, "a bare state dict"
    return None, ""


def is_official_rtdetr(content) -> bool:
    """A loaded file holding an official RT-DETR state dict (any backbone; the reader refuses what it cannot
    build)."""
    state, _ = split_official_rtdetr(content)
    return state is not None and any(str(key).startswith(_RTDETR_MARKERS) for key in state)


def read_official_rtdetr(path, content, sha256: str, model_config: RTDETRConfig = None) -> Checkpoint:
    """Read a loaded official RT-DETR file. ``model_config`` (from ``--model``, or recorded in an export) settles
    what the tensors cannot tell: heads, queries, v2's sampling method, the evaluated decoder layer. Raises
    DetrDeployError for a file our RT-DETR cannot represent, saying what was found."""
    path = Path(path)
    state, origin = split_official_rtdetr(content)
    if state is None:
        raise DetrDeployError(
            f"checkpoint {path.name} holds no RT-DETR state dict (expected 'ema', 'model' or tensors)"
        )
    state = {str(key): value for key, value in state.items() if isinstance(value, torch.Tensor)}
    read_from = ["format: official RT-DETR code (lyuwenyu/RT-DETR)", f"weights: {origin}"]
    if not isinstance(model_config, RTDETRConfig):
        model_config = None  # none, or another family's: agree_with_model reports that disagreement
    config = tensor_config(state, path.name, model_config, "--model", read_from)
    if model_config is not None and 0 < model_config.num_decoder_layers < config.num_decoder_layers:
        # The official eval_idx may evaluate an earlier layer (r50vd_m: eval_idx 2 of 6); the later ones never run.
        layers = model_config.num_decoder_layers
        read_from.append(
            f"decoder layers: {layers} of the file's {config.num_decoder_layers} (--model evaluates layer {layers}, "
            f"as the official eval_idx {layers - 1} does; the later layers never run in evaluation and are dropped)"
        )
        config = dataclasses.replace(config, num_decoder_layers=layers)
    else:
        read_from.append(f"decoder layers: {config.num_decoder_layers} (key count; the last one evaluated)")
    state = inference_state(state, config, path.name, read_from)
    read_from.append("classes: none named (official checkpoints carry no names; the releases predict COCO's 80)")
    return Checkpoint(path, SOURCE_OFFICIAL, config, state, sha256, class_names=None, read_from=tuple(read_from))


def _tensor(state: Mapping, key: str, source: str) -> torch.Tensor:
    if key not in state:
        raise DetrDeployError(
            f"checkpoint {source} has no tensor {key}, which every RT-DETR checkpoint has: is the file complete?"
        )
    return state[key]


def _refuse_foreign(state: Mapping, source: str) -> None:
    """One clear message for RT-DETR-shaped files of models ours is not."""
    keys = list(state)
    for marker, family in _DERIVED_FAMILIES:
        if any(marker in key for key in keys):
            raise DetrDeployError(
                f"checkpoint {source} looks like {family} (it has '{marker}' tensors), which is not supported: "
                "this version reads RT-DETR v1/v2 with a ResNet-vd backbone"
            )
    if f"{_STEM}1.conv.weight" not in state:
        backbone = next((key for key in keys if key.startswith("backbone.")), "none")
        raise DetrDeployError(
            f"checkpoint {source} is an RT-DETR whose backbone is not a ResNet-vd (first backbone tensor: "
            f"{backbone}); only the ResNet-vd (R18/R34/R50/R101) RT-DETRs are supported"
        )
    if f"{_STEM}2.conv.weight" not in state or state[f"{_STEM}1.conv.weight"].shape[-1] != 3:
        raise DetrDeployError(
            f"checkpoint {source} has a PResNet with a single 7x7 stem convolution (variant a/b); only variant d "
            "(ResNet-vd, three 3x3 stem convolutions) is supported"
        )


def _version(state: Mapping, source: str, read_from: list) -> int:
    """2 when the decoder and encoder use v2's names (and buffers), 1 when v1's; a mix is refused."""
    v2_decoder = "decoder.enc_output.proj.weight" in state or any(key.endswith(".num_points_scale") for key in state)
    v1_decoder = "decoder.enc_output.0.weight" in state
    v2_encoder = "encoder.input_proj.0.conv.weight" in state
    v1_encoder = "encoder.input_proj.0.0.weight" in state
    if v2_decoder != v1_decoder and v2_encoder != v1_encoder and v2_decoder == v2_encoder:
        version = 2 if v2_decoder else 1
        clue = "enc_output.proj, num_points_scale" if version == 2 else "enc_output.0, input_proj.N.0"
        read_from.append(f"version: v{version} ({clue} tensors)")
        return version
    if not (v2_decoder or v1_decoder) or not (v2_encoder or v1_encoder):
        raise DetrDeployError(
            f"checkpoint {source} has RT-DETR heads but no decoder.enc_output or encoder.input_proj tensors: is the "
            "file complete?"
        )
    raise DetrDeployError(
        f"checkpoint {source} mixes RT-DETR v1 and v2 layouts (encoder {'v2' if v2_encoder else 'v1'} names, decoder "
        f"{'v2' if v2_decoder else 'v1'} names); our RT-DETR builds one version: the file was edited or comes from "
        "a modified model"
    )


def resnet_vd_config(state: Mapping, source: str) -> ResNetVdConfig:
    """The ResNet-vd under ``backbone.`` (official names): blocks counted, block type and widths from shapes."""
    blocks = tuple(count_indices(state, rf"backbone\.res_layers\.{stage}\.blocks\.(\d+)\.") for stage in range(4))
    stages = count_indices(state, r"backbone\.res_layers\.(\d+)\.")
    if stages != 4 or not all(blocks):
        raise DetrDeployError(
            f"checkpoint {source}: its ResNet-vd has {stages} stages (blocks {list(blocks)}); the official PResNet "
            "has 4"
        )
    bottleneck = "backbone.res_layers.0.blocks.0.branch2c.conv.weight" in state
    stem = _tensor(state, f"{_STEM}3.conv.weight", source).shape[0]
    width = _tensor(state, "backbone.res_layers.0.blocks.0.branch2a.conv.weight", source).shape[0]
    config = ResNetVdConfig(blocks, "bottleneck" if bottleneck else "basic", stem_width=stem, base_width=width)
    for stage, channels in enumerate(config.stage_channels()):
        last = f"backbone.res_layers.{stage}.blocks.{blocks[stage] - 1}.branch2{'c' if bottleneck else 'b'}.conv.weight"
        found = _tensor(state, last, source).shape[0]
        if found != channels:
            raise DetrDeployError(
                f"checkpoint {source}: ResNet-vd stage {stage + 1} outputs {found} channels, not {channels}: its "
                "stages do not double in width as the official PResNet's do"
            )
    return config


def _given(given: RTDETRConfig, given_by: str, name: str, default, what: str, read_from: list):
    """A value no tensor holds: from ``given`` (--model, config.json) when there is one, else the official
    configs' default."""
    if given is not None:
        read_from.append(f"{what}: {getattr(given, name)} ({given_by})")
        return getattr(given, name)
    read_from.append(f"{what}: {default} (the official configs'; not in the tensors)")
    return default


def _points_from_scale(scale: torch.Tensor, levels: int, source: str) -> tuple[int, ...]:
    """v2's ``num_points_scale`` ([1/P_0] * P_0 + [1/P_1] * P_1 + ...) -> (P_0, P_1, ...)."""
    values, points, index = scale.flatten().tolist(), [], 0
    while index < len(values):
        count = round(1 / values[index]) if values[index] > 0 else 0
        group = values[index : index + count]
        if count < 1 or len(group) != count or any(abs(value * count - 1) > 1e-4 for value in group):
            points = None
            break
        points.append(count)
        index += count
    if points is None or len(points) != levels:
        raise DetrDeployError(
            f"checkpoint {source}: its num_points_scale buffer {[round(v, 4) for v in values[:12]]} is not 1/P "
            f"repeated P times for each of {levels} levels; is the file complete and unmodified?"
        )
    return tuple(points)


def tensor_config(state: Mapping, source: str, given: RTDETRConfig, given_by: str, read_from: list) -> RTDETRConfig:
    """The architecture an RT-DETR state dict in the official layout holds, read from tensor shapes and key
    counts; what they cannot tell (heads, queries, v2's sampling method) from ``given``, said to come from
    ``given_by``, else the official defaults. Every decoder layer in the file is counted."""
    _refuse_foreign(state, source)
    version = _version(state, source, read_from)
    backbone = resnet_vd_config(state, source)
    read_from.append(
        f"backbone: ResNet-{backbone.depth}-vd ({backbone.block} blocks {list(backbone.blocks_per_stage)}, tensor "
        "shapes)"
    )
    conv = "conv" if version == 2 else "0"
    proj = [f"encoder.input_proj.{level}.{conv}.weight" for level in range(3)]
    input_levels = count_indices(state, r"encoder\.input_proj\.(\d+)\.")
    aifi = count_indices(state, r"encoder\.encoder\.(\d+)\.")
    levels = count_indices(state, r"decoder\.input_proj\.(\d+)\.")
    if input_levels != 3 or aifi > 1 or levels != 3:
        raise DetrDeployError(
            f"checkpoint {source}: its hybrid encoder has {input_levels} input levels and {aifi} AIFI encoders, its "
            f"decoder {levels} levels; ours has 3 levels throughout and AIFI on the last one (the official "
            "use_encoder_idx [2], num_levels 3)"
        )
    encoder_width = _tensor(state, proj[0], source).shape[0]
    found = [int(_tensor(state, key, source).shape[1]) for key in proj]
    if found != list(backbone.stage_channels()[1:]):
        raise DetrDeployError(
            f"checkpoint {source}: its encoder takes {found} channels but its ResNet-vd gives "
            f"{list(backbone.stage_channels()[1:])}; is the file complete and unmodified?"
        )
    # CSP blocks: hidden width int(width * expansion), round(3 * depth_mult) RepVGG blocks.
    csp_width = _tensor(state, "encoder.fpn_blocks.0.conv1.conv.weight", source).shape[0]
    expansion = csp_width / encoder_width
    csp_blocks = count_indices(state, r"encoder\.fpn_blocks\.0\.bottlenecks\.(\d+)\.")
    if int(encoder_width * expansion) != csp_width or not csp_blocks:
        raise DetrDeployError(
            f"checkpoint {source}: cannot read the CSP blocks' expansion and depth ({csp_width} hidden channels for "
            f"width {encoder_width}, {csp_blocks} RepVGG blocks)"
        )
    encoder_layers = count_indices(state, r"encoder\.encoder\.0\.layers\.(\d+)\.")
    if encoder_layers:
        encoder_ffn = _tensor(state, "encoder.encoder.0.layers.0.linear1.weight", source).shape[0]
    else:
        encoder_ffn = given.encoder_ffn if given is not None else RTDETRConfig.encoder_ffn
    hidden_dim = _tensor(state, "decoder.input_proj.0.conv.weight", source).shape[0]
    classes = _tensor(state, "decoder.dec_score_head.0.weight", source).shape[0]
    if _tensor(state, "decoder.enc_score_head.weight", source).shape[0] != classes:
        raise DetrDeployError(
            f"checkpoint {source}: its encoder score head has {state['decoder.enc_score_head.weight'].shape[0]} "
            f"outputs, its decoder's {classes}: class-agnostic query selection (query_select_method 'agnostic') "
            "is not supported"
        )
    encoder_heads = _given(given, given_by, "encoder_heads", _DEFAULT_HEADS, "encoder heads", read_from)
    queries = _given(given, given_by, "num_queries", _DEFAULT_QUERIES, "queries", read_from)
    rows = _tensor(state, "decoder.decoder.layers.0.cross_attn.attention_weights.weight", source).shape[0]
    scale_key = "decoder.decoder.layers.0.cross_attn.num_points_scale"
    if version == 2 and scale_key in state:
        # v2 stores the points per level, so its attention weights (heads x points) tell the heads too.
        points = _points_from_scale(state[scale_key], levels, source)
        heads = integer_ratio(rows, sum(points), "decoder heads", source)
        if given is not None and given.num_heads != heads:
            raise DetrDeployError(
                f"checkpoint {source} has {heads} decoder heads ({rows} attention weights for {sum(points)} points) "
                f"but {given_by} says {given.num_heads}"
            )
        read_from.append(f"decoder points: {list(points)} per level (num_points_scale); decoder heads: {heads}")
    else:
        heads = _given(given, given_by, "num_heads", _DEFAULT_HEADS, "decoder heads", read_from)
        points = (integer_ratio(rows, heads * levels, "decoder points (heads x levels x points)", source),) * levels
        read_from.append(f"decoder points: {points[0]} per level (attention weights / heads / levels)")
    sampling = "default"
    if version == 2:
        sampling = _given(given, given_by, "sampling_method", "default", "sampling method", read_from)
    read_from.append("classes, widths, FFNs, CSP expansion and depth, layers: tensor shapes and key counts")
    return RTDETRConfig(
        version=version,
        num_classes=classes,
        num_queries=queries,
        backbone=backbone,
        encoder_hidden_dim=encoder_width,
        encoder_heads=encoder_heads,
        encoder_ffn=encoder_ffn,
        num_encoder_layers=encoder_layers,
        encoder_expansion=expansion,
        depth_mult=csp_blocks / 3,
        hidden_dim=hidden_dim,
        num_heads=heads,
        num_decoder_layers=count_indices(state, r"decoder\.decoder\.layers\.(\d+)\."),
        dim_feedforward=_tensor(state, "decoder.decoder.layers.0.linear1.weight", source).shape[0],
        dec_n_points=points,
        sampling_method=sampling,
    )


def inference_state(state: Mapping, config: RTDETRConfig, source: str, read_from: list) -> dict:
    """``state`` as ``RTDETR(config)`` holds it, checked to fit it exactly: training-only tensors dropped, batch
    norm counters matched."""
    with torch.device("meta"):
        skeleton = build_model(config)
    counters = {key for key in skeleton.state_dict() if key.endswith(".num_batches_tracked")}
    state = _match_batch_norm_counters(drop_training_only(state, config, read_from), counters)
    check_state_dict(skeleton, state, source, describe_config(config))
    return state


def drop_training_only(state: Mapping, config: RTDETRConfig, read_from: list) -> dict:
    """``state`` without what inference does not use: the denoising embedding, v2's 640x640 anchor buffers,
    decoder layers past the evaluated one; also the fused ``conv`` a deployed RepVGG block adds to its branches."""
    dropped = set(training_only_keys(list(state), config.num_decoder_layers))
    fused = [key for key in state if _FUSED_REPVGG.fullmatch(key)]
    kept = {key: value for key, value in state.items() if key not in dropped and key not in fused}
    if dropped:
        read_from.append(f"dropped {len(dropped)} tensors inference does not use (denoising embedding, anchors, ...)")
    if fused:
        read_from.append(f"dropped {len(fused)} fused RepVGG convolutions (deploy form; their branches are kept)")
    return kept


def _match_batch_norm_counters(state: Mapping, counters: set) -> dict:
    """``num_batches_tracked`` where our model has them (``counters``): the backbone's frozen norms have none (the
    official R18/R34 train theirs and store them), the encoder's and decoder's norms one each (0 where the file has
    none: evaluation never reads it)."""
    state = {key: value for key, value in state.items() if not key.endswith(".num_batches_tracked") or key in counters}
    for key in counters:
        state.setdefault(key, torch.tensor(0, dtype=torch.long))
    return state
