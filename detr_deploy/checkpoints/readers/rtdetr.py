"""RT-DETR checkpoints (v1 and v2, ResNet-vd backbones): the official code (lyuwenyu/RT-DETR ``rtdetr_pytorch``
and ``rtdetrv2_pytorch``) and transformers (``RTDetrForObjectDetection``, ``RTDetrV2ForObjectDetection``).

Official files: the solvers save ``{'model': state, 'ema': {'module': state, 'updates': n}, 'optimizer': ...,
'last_epoch': ...}`` (release files keep the weights only); the official export loads ``ema.module`` when the file
has it, else ``model``, and so do we. A bare state dict is read too. Our RT-DETR keeps the official parameter names,
so nothing is renamed: the reader picks the weights, drops what only training uses (``training_only_keys``) and
reads the architecture from tensor shapes and key counts:

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

transformers directories: transformers ports lyuwenyu/RT-DETR module for module, so its tensors rename one to one
into the official names (q/k/v projections fused into ``in_proj_*``; v1 and v2 differ in a few names, as the
official code does). Two key layouts exist, as for DETR: 4.x names (``encoder.encoder.N``, ``out_proj``, ``fc1``),
which every save_pretrained writes, and 5.x module names (``encoder.aifi.N``, ``o_proj``, ``mlp.fc1``) in files
saved from ``state_dict()``. The architecture comes from config.json (``backbone_config`` describes the ResNet-vd)
and is checked against what the tensors hold, read as an official file is (``tensor_config``). Settings our RT-DETR
does not compute (other activations, pre-norm, more feature levels, learned query content, another backbone, ...)
are refused. Class names come from ``id2label``.
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
from detr_deploy.checkpoints.keymap import count_indices, fuse_qkv, rename_keys
from detr_deploy.errors import DetrDeployError
from detr_deploy.models.hgnetv2 import HGNetV2Config
from detr_deploy.models.resnet_vd import ResNetVdConfig
from detr_deploy.models.rtdetr import RTDETRConfig, training_only_keys

# Keys of the official RT-DETR decoder, whatever the backbone (ResNet-vd, HGNetv2, ...).
_RTDETR_MARKERS = ("decoder.dec_score_head.", "decoder.enc_score_head.")
# Keys of models built on RT-DETR's layout that ours is not, with their names.
_DERIVED_FAMILIES = (
    ("decoder.tgt_embed.", "RT-DETR with learned query content (learn_query_content), which ours lacks"),
)
# D-FINE's and DEIM's decoders (fine-grained distribution refinement) hold these: such files are D-FINE's reader's.
_FDR_KEYS = ("decoder.up", "decoder.reg_scale")
_STEM = "backbone.conv1.conv1_"
# The single convolution RepVggBlock.convert_to_deploy() adds beside the two branches it fuses.
_FUSED_REPVGG = re.compile(r"encoder\.(?:fpn|pan)_blocks\.\d+\.bottlenecks\.\d+\.conv\.(?:weight|bias)")
_DEFAULT_HEADS = 8
_DEFAULT_QUERIES = 300


def split_official_rtdetr(content) -> tuple[Mapping, str]:
    """(state dict, where in the file it was) of a loaded official file; (None, "") when there is none."""
    return split_solver_file(content)


def is_official_rtdetr(content) -> bool:
    """A loaded file holding an official RT-DETR state dict (any backbone; the reader refuses what it cannot
    build)."""
    state, _ = split_official_rtdetr(content)
    if state is None or any(key in state for key in _FDR_KEYS):
        return False
    return any(str(key).startswith(_RTDETR_MARKERS) for key in state)


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
                "this version reads RT-DETR v1/v2 with a ResNet-vd or HGNetv2 backbone"
            )
    if hgnetv2_checkpoints.is_hgnetv2(state):
        return
    if f"{_STEM}1.conv.weight" not in state:
        backbone = next((key for key in keys if key.startswith("backbone.")), "none")
        raise DetrDeployError(
            f"checkpoint {source} is an RT-DETR whose backbone is neither a ResNet-vd nor an HGNetv2 (first backbone "
            f"tensor: {backbone}); only the ResNet-vd (R18/R34/R50/R101) and HGNetv2 (L/X) RT-DETRs are supported"
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


def backbone_config(state: Mapping, source: str, given: RTDETRConfig = None) -> ResNetVdConfig | HGNetV2Config:
    """The backbone under ``backbone.`` (official names): an HGNetv2 (RT-DETR-L/X) when its stem is there, named as
    ``given``'s when it is that one, else as the variant it is; else a ResNet-vd."""
    if not hgnetv2_checkpoints.is_hgnetv2(state):
        return resnet_vd_config(state, source)
    found = hgnetv2_checkpoints.from_tensors(state, "backbone.", source)
    if given is not None and isinstance(given.backbone, HGNetV2Config):
        if dataclasses.replace(found, name=given.backbone.name) == given.backbone:
            return given.backbone
    return hgnetv2_checkpoints.named(found, ("L", "X"))


def tensor_config(state: Mapping, source: str, given: RTDETRConfig, given_by: str, read_from: list) -> RTDETRConfig:
    """The architecture an RT-DETR state dict in the official layout holds, read from tensor shapes and key
    counts; what they cannot tell (heads, queries, v2's sampling method) from ``given``, said to come from
    ``given_by``, else the official defaults. Every decoder layer in the file is counted."""
    _refuse_foreign(state, source)
    version = _version(state, source, read_from)
    backbone = backbone_config(state, source, given)
    read_from.append(f"backbone: {backbone.label} ({backbone.structure()}, tensor shapes)")
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
    if found != list(backbone.out_channels()):
        raise DetrDeployError(
            f"checkpoint {source}: its encoder takes {found} channels but its {backbone.label} gives "
            f"{list(backbone.out_channels())}; is the file complete and unmodified?"
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
    encoder_heads = given_or_default(given, given_by, "encoder_heads", _DEFAULT_HEADS, "encoder heads", read_from)
    queries = given_or_default(given, given_by, "num_queries", _DEFAULT_QUERIES, "queries", read_from)
    rows = _tensor(state, "decoder.decoder.layers.0.cross_attn.attention_weights.weight", source).shape[0]
    scale_key = "decoder.decoder.layers.0.cross_attn.num_points_scale"
    if version == 2 and scale_key in state:
        # v2 stores the points per level, so its attention weights (heads x points) tell the heads too.
        points = points_from_scale(state[scale_key], levels, source)
        heads = integer_ratio(rows, sum(points), "decoder heads", source)
        if given is not None and given.num_heads != heads:
            raise DetrDeployError(
                f"checkpoint {source} has {heads} decoder heads ({rows} attention weights for {sum(points)} points) "
                f"but {given_by} says {given.num_heads}"
            )
        read_from.append(f"decoder points: {list(points)} per level (num_points_scale); decoder heads: {heads}")
    else:
        heads = given_or_default(given, given_by, "num_heads", _DEFAULT_HEADS, "decoder heads", read_from)
        points = (integer_ratio(rows, heads * levels, "decoder points (heads x levels x points)", source),) * levels
        read_from.append(f"decoder points: {points[0]} per level (attention weights / heads / levels)")
    sampling = "default"
    if version == 2:
        sampling = given_or_default(given, given_by, "sampling_method", "default", "sampling method", read_from)
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
    return fitted_state(config, drop_training_only(state, config, read_from), source)


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


_ARCHITECTURES = {"rt_detr": "RTDetrForObjectDetection", "rt_detr_v2": "RTDetrV2ForObjectDetection"}

# transformers' defaults (RTDetrConfig / RTDetrV2Config, RTDetrResNetConfig) for fields a config.json may leave out.
_TRANSFORMERS_DEFAULTS = {
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
_BACKBONE_TRANSFORMERS_DEFAULTS = {
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
_BACKBONE_MODEL_TYPES = ("rt_detr_resnet", "hgnet_v2")
_FIXED_BACKBONE = {
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


class _TransformersValues:
    """config.json's fields (and its ``backbone_config``'s) with transformers' defaults for those it leaves out."""

    def __init__(self, config: dict, model_type: str, source: str):
        self.config, self.model_type, self.source = config, model_type, source
        backbone = config.get("backbone_config")
        self.backbone = backbone if isinstance(backbone, dict) else None

    def __getitem__(self, name: str):
        value = self.config.get(name)
        return _TRANSFORMERS_DEFAULTS.get(name) if value is None else value

    def backbone_value(self, name: str):
        value = self.backbone.get(name)
        return _BACKBONE_TRANSFORMERS_DEFAULTS.get(name) if value is None else value

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
    model_type = config.get("model_type")
    version = 2 if model_type == "rt_detr_v2" else 1
    source = given.name if given.suffix == ".safetensors" else directory.name
    values = _TransformersValues(config, model_type, source)
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
        f"format: transformers {written_by(config)} directory ({architecture})",
        f"weights: {weights_label}",
        f"keys: transformers {'5.x' if five_x else '4.x'} names",
    ]
    declared = _declared_config(values, version, read_from)
    state = dict(raw)
    if isinstance(declared.backbone, HGNetV2Config):
        # transformers' HGNetV2Backbone names (embedder, encoder.stages) -> the official ones (stem, stages).
        state = hgnetv2_checkpoints.transformers_state(state, "model.backbone.model.", "backbone.")
    for rule in _FIVE_TO_FOUR:  # one pass each: a key may carry several 5.x names
        state = rename_keys(state, [rule])
    state = rename_keys(state, _rules(version))
    for key in [key for key in state if key.endswith(".self_attn.q_proj.weight")]:
        prefix = key.removesuffix("q_proj.weight")
        fuse_qkv(state, prefix, prefix)
    _check_against_tensors(state, declared, values, source)
    read_from.append("architecture: config.json, checked against the tensor shapes")
    state = inference_state(state, declared, source, read_from)
    class_names = id2label_class_names(config, declared.num_classes, source, read_from)
    path = given if given.suffix == ".safetensors" else directory
    return Checkpoint(
        path, SOURCE_TRANSFORMERS, declared, state, digest, class_names=class_names, read_from=tuple(read_from)
    )


def _check_fixed(values: _TransformersValues) -> None:
    if differing := differing_setting(values.config, _FIXED):
        raise values.unsupported(differing)
    if values.backbone is None:
        raise values.unsupported(
            f"no backbone_config (backbone {values.config.get('backbone')!r}); only transformers' RT-DETR ResNet-vd "
            "(backbone_config of model_type rt_detr_resnet) and HGNetv2 (hgnet_v2) are supported"
        )
    backbone_type = values.backbone.get("model_type")
    if backbone_type not in _BACKBONE_MODEL_TYPES:
        raise values.unsupported(
            f"backbone_config model_type {backbone_type!r} (only {' and '.join(map(repr, _BACKBONE_MODEL_TYPES))} "
            "are supported)"
        )
    if backbone_type == "hgnet_v2":
        return
    for name, (expected, what) in _FIXED_BACKBONE.items():
        value = values.backbone.get(name)
        if value is not None and value != expected:
            raise values.unsupported(f"backbone_config {name} {value!r} ({what}; only {expected!r} is supported)")


def _resnet_vd(values: _TransformersValues) -> ResNetVdConfig:
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


def _declared_config(values: _TransformersValues, version: int, read_from: list) -> RTDETRConfig:
    """The RT-DETR config.json describes; settings ours cannot compute are refused."""
    _check_fixed(values)
    if values.backbone.get("model_type") == "hgnet_v2":
        backbone = hgnetv2_checkpoints.from_transformers(values.backbone, values.source)
        if backbone.out_stages != (2, 3, 4):
            raise values.unsupported(f"backbone outputs {list(backbone.out_stages)} (RT-DETR takes stages [2, 3, 4])")
        backbone = hgnetv2_checkpoints.named(backbone, ("L", "X"))
    else:
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
    read_from.append(f"backbone: {backbone.label} ({backbone.structure()}, backbone_config)")
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


def _check_against_tensors(state: Mapping, declared: RTDETRConfig, values: _TransformersValues, source: str) -> None:
    """Refuse a config.json the tensors (renamed to the official names) contradict: transformers would not load
    them into the model it describes."""
    if "backbone.conv1.conv1_1.conv.weight" not in state and not hgnetv2_checkpoints.is_hgnetv2(state):
        raise DetrDeployError(
            f"checkpoint {source} has no RT-DETR ResNet-vd or HGNetv2 stem (model.backbone.model.embedder tensors); "
            "is the file complete?"
        )
    if declared.num_classes == 0:  # config.json without num_labels or id2label: the head tells
        head = state.get("decoder.dec_score_head.0.weight")
        declared = declared if head is None else dataclasses.replace(declared, num_classes=head.shape[0])
    found = tensor_config(state, source, declared, "config.json", [])
    for name, field in _CHECKED_FIELDS.items():
        said, held = getattr(declared, name), getattr(found, name)
        if name == "backbone":
            said, held = said.structure(), held.structure()
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
    backbone_config(state, source)


# --- the readers -------------------------------------------------------------------------------------------------

_TRANSFORMERS_MODEL_TYPES = tuple(_ARCHITECTURES)


def _recognize_official(candidate: Candidate):
    return YES if candidate.folder is None and is_official_rtdetr(candidate.content) else NO


def _read_official(candidate: Candidate, model_config=None) -> Checkpoint:
    return read_official_rtdetr(candidate.path, candidate.content, candidate.sha256, model_config)


def _recognize_transformers(candidate: Candidate):
    return YES if candidate.folder is not None and candidate.folder.model_type in _TRANSFORMERS_MODEL_TYPES else NO


def _read_transformers(candidate: Candidate, model_config=None) -> Checkpoint:
    folder = candidate.folder
    return read_transformers_rtdetr(
        folder.directory, folder.given, folder.config, folder.weights, folder.digest, folder.weights_label
    )


READERS = (
    Reader(
        "official RT-DETR",
        FORMAT_OFFICIAL,
        _recognize_official,
        _read_official,
        labels=("RT-DETR (v1, v2)",),
    ),
    Reader(
        "transformers RT-DETR",
        FORMAT_TRANSFORMERS,
        _recognize_transformers,
        _read_transformers,
        labels=("RT-DETR (v1, v2)",),
        format_names=_TRANSFORMERS_MODEL_TYPES,
        classes=tuple(_ARCHITECTURES.values()),
    ),
)
