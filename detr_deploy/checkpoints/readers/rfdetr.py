"""RF-DETR checkpoints: rfdetr's own files (roboflow/rf-detr) and transformers directories
(``RfDetrForObjectDetection``, ``model_type`` ``rf_detr``).

rfdetr saves ``{'model': state_dict, 'args': ...}``: the released weights and ``export_for_roboflow`` an
``argparse.Namespace`` of the training arguments, 1.x training checkpoints a dict (the TrainConfig) plus
``model_config`` (the architecture), ``model_name`` and PyTorch Lightning's keys. The file is read without running
rfdetr's code; the arguments settle what no tensor holds (window count, output stages, heads, points, queries,
resolution, class names) and name the variants ours does not build (segmentation and keypoint heads, batch-norm
projectors, other projector levels), which are refused. Widths, depths, patch size, position grid, classes and the
projector come from tensor shapes and key counts. Our RF-DETR keeps rfdetr's parameter names: reading keeps the first
query group (Group DETR trains 13) and drops DINOv2's mask token.

transformers' ``save_pretrained`` writes the same rfdetr names (its conversion mapping reversed); files saved from
``state_dict()`` have transformers' module names and are renamed first. config.json gives what the tensors do not.
transformers computes two things unlike rfdetr, and its checkpoints are read to compute what transformers computes:
the windows of a non-square patch grid (``window_order`` "transformers") and proposals outside (0.01, 0.99) scored
-inf (``rank_invalid_proposals`` False); its projector convolutions' LayerNorm epsilon is config.json's
``layer_norm_eps``.
"""

import argparse
import dataclasses
import math
import re
from collections.abc import Mapping

import torch

from detr_deploy.categories import coco_class_names, coco_contiguous_names
from detr_deploy.checkpoints.candidate import FORMAT_OFFICIAL, FORMAT_TRANSFORMERS, NO, YES, Candidate, Reader, refuse
from detr_deploy.checkpoints.checkpoint import (
    SOURCE_OFFICIAL,
    SOURCE_TRANSFORMERS,
    Checkpoint,
    fitted_state,
    integer_ratio,
)
from detr_deploy.checkpoints.formats.transformers import differing_setting, id2label_class_names, written_by
from detr_deploy.checkpoints.keymap import count_indices, fuse_every_qkv, rename_keys
from detr_deploy.checkpoints.pickled import Placeholder
from detr_deploy.errors import DetrDeployError
from detr_deploy.models.dinov2 import DINOv2Config, legacy_window_blocks
from detr_deploy.models.registry import get_model_spec, list_models
from detr_deploy.models.rfdetr import RFDETRConfig, inference_state

_VIT = "backbone.0.encoder.encoder."
_PROJECTOR = "backbone.0.projector."
# Tensors every RF-DETR state dict has; the first two every LW-DETR-style one (its two-stage heads and queries).
_LW_DETR_MARKS = ("transformer.enc_out_class_embed.0.weight", "refpoint_embed.weight")
_RF_DETR_MARKS = (f"{_VIT}embeddings.position_embeddings", f"{_PROJECTOR}stages.0.0.cv1.conv.weight")
# DINOv2 heads by width (64 channels per head in every DINOv2).
_DINOV2_SIZES = {384: ("small", 6), 768: ("base", 12), 1024: ("large", 16)}
# rfdetr's defaults (ModelConfig / ModelDefaults) for arguments a file may lack.
_DEFAULTS = {"num_queries": 300, "sa_nheads": 8, "ca_nheads": 16, "dec_n_points": 2}
# Arguments naming variants our RF-DETR does not build: (name, the value it builds, what it is).
_FIXED_ARGS = (
    ("two_stage", True, "two-stage query selection"),
    ("bbox_reparam", True, "reparameterized box deltas"),
    ("lite_refpoint_refine", True, "fixed reference boxes across decoder layers"),
    ("layer_norm", True, "LayerNorm in the projector (False: BatchNorm)"),
    ("rms_norm", False, "RMSNorm in the projector"),
    ("segmentation_head", False, "the segmentation head"),
    ("use_grouppose_keypoints", False, "the keypoint head"),
    ("dual_projector", False, "a second projector"),
    ("num_decoder_registers", 0, "decoder register tokens"),
    ("use_cls_token", False, "the CLS token as a feature"),
    ("decoder_norm", "LN", "the decoder's final norm"),
)


def _lw_detr_like(state) -> bool:
    return isinstance(state, Mapping) and all(key in state for key in _LW_DETR_MARKS)


def is_rfdetr_state(state) -> bool:
    """A state dict in rfdetr's layout (windowed DINOv2, projector, LW-DETR decoder)."""
    return _lw_detr_like(state) and all(key in state for key in _RF_DETR_MARKS)


def _model_state(content):
    """The ``model`` state dict of a loaded rfdetr file, else the content when it is one itself."""
    if isinstance(content, Mapping) and isinstance(content.get("model"), Mapping):
        return content["model"]
    return content if isinstance(content, Mapping) else None


class _Args:
    """rfdetr's arguments of a file: a Namespace or dict ``args`` with ``model_config`` (the architecture, in
    1.x training checkpoints) over it."""

    def __init__(self, content):
        self.values, self.origin = {}, []
        if not isinstance(content, Mapping):
            return
        args = content.get("args")
        if isinstance(args, argparse.Namespace):
            self.values.update(vars(args))
            self.origin.append("args (argparse.Namespace)")
        elif isinstance(args, Placeholder) and args.qualified_name == "types.SimpleNamespace":
            # rfdetr 1.x's args: a SimpleNamespace, read as the attribute dict it pickles (never constructed).
            self.values.update(args.state if isinstance(args.state, Mapping) else args.kwargs)
            self.origin.append("args (types.SimpleNamespace)")
        elif isinstance(args, Mapping):
            self.values.update(args)
            self.origin.append("args (dict)")
        if isinstance(content.get("model_config"), Mapping):
            self.values.update(content["model_config"])
            self.origin.append("model_config")
        self.model_name = content.get("model_name") if isinstance(content.get("model_name"), str) else None

    def get(self, name: str, default=None):
        value = self.values.get(name)
        return default if value is None else value


def _tensor(state: Mapping, key: str, source: str) -> torch.Tensor:
    if key not in state:
        raise DetrDeployError(
            f"checkpoint {source} has no tensor {key}, which every RF-DETR checkpoint has: is the file complete?"
        )
    return state[key]


def _backbone(state: Mapping, source: str, heads: int, windows: int, out_indices, window_blocks) -> DINOv2Config:
    """The windowed DINOv2 of ``state``: widths, depth, patch and grid from tensors, the rest given."""
    positions = _tensor(state, f"{_VIT}embeddings.position_embeddings", source)
    width = int(positions.shape[-1])
    grid = math.isqrt(int(positions.shape[1]) - 1)
    if grid * grid + 1 != positions.shape[1]:
        raise DetrDeployError(
            f"checkpoint {source}: its {positions.shape[1] - 1} position embeddings are not a square grid (plus CLS)"
        )
    layers = count_indices(state, rf"{re.escape(_VIT)}encoder\.layer\.(\d+)\.")
    if f"{_VIT}encoder.layer.0.mlp.weights_in.weight" in state or f"{_VIT}encoder.layer.0.mlp.w12.weight" in state:
        raise DetrDeployError(f"checkpoint {source}: its DINOv2 has SwiGLU FFNs, which our RF-DETR does not build")
    hidden = int(_tensor(state, f"{_VIT}encoder.layer.0.mlp.fc1.weight", source).shape[0])
    if f"{_VIT}embeddings.register_tokens" in state:
        raise DetrDeployError(
            f"checkpoint {source}: its DINOv2 has register tokens (rfdetr's dinov2_registers_* encoders), which our "
            "RF-DETR does not build (no rfdetr model of this kind could be built to compare with)"
        )
    name = _DINOV2_SIZES.get(width, (f"width-{width}", None))[0]
    return DINOv2Config(
        name=name,
        hidden_size=width,
        num_layers=layers,
        num_heads=heads,
        mlp_ratio=integer_ratio(hidden, width, "the DINOv2 MLP ratio", source),
        patch_size=int(_tensor(state, f"{_VIT}embeddings.patch_embeddings.projection.weight", source).shape[-1]),
        num_windows=windows,
        positional_grid=grid,
        out_indices=tuple(int(index) for index in out_indices),
        window_blocks=tuple(sorted(int(index) for index in window_blocks)),
    )


def _projector(state: Mapping, source: str, width: int, stages: int) -> tuple[int, float]:
    """(C2f blocks, branch expansion) of the P4-only projector; other levels and batch norms refused."""
    if any(key.startswith(f"{_PROJECTOR}stages_sampling.") and ".0." in key for key in state) or any(
        key.startswith(f"{_PROJECTOR}stages.1.") for key in state
    ):
        raise DetrDeployError(
            f"checkpoint {source}: its projector builds several levels (projector_scale P3/P5, the deprecated "
            "RF-DETR-L); our RF-DETR builds the single P4 level of the current models"
        )
    if f"{_PROJECTOR}stages.0.0.cv1.bn.running_mean" in state:
        raise DetrDeployError(
            f"checkpoint {source}: its projector uses BatchNorm (layer_norm False); our RF-DETR builds rfdetr's "
            "LayerNorm projector"
        )
    takes = int(_tensor(state, f"{_PROJECTOR}stages.0.0.cv1.conv.weight", source).shape[1])
    if takes != width * stages:
        raise DetrDeployError(
            f"checkpoint {source}: its projector takes {takes} channels, not {stages} stages of width {width}; the "
            "output stages (out_feature_indexes) do not fit the file"
        )
    blocks = count_indices(state, rf"{re.escape(_PROJECTOR)}stages\.0\.0\.m\.(\d+)\.")
    hidden = int(_tensor(state, f"{_PROJECTOR}stages.0.0.cv2.conv.weight", source).shape[0])
    branch = int(_tensor(state, f"{_PROJECTOR}stages.0.0.cv1.conv.weight", source).shape[0]) // 2
    return blocks, branch / hidden


def tensor_config(state: Mapping, source: str, settings: dict, read_from: list) -> RFDETRConfig:
    """The architecture of an rfdetr-layout ``state``: sizes from tensors, ``settings`` (heads, points, windows,
    output stages, window blocks, queries, resolution, conventions) from the file's arguments or config.json."""
    width = int(_tensor(state, f"{_VIT}embeddings.position_embeddings", source).shape[-1])
    out_indices = settings["out_indices"]
    heads = settings["vit_heads"] or _DINOV2_SIZES.get(width, (None, 0))[1]
    if not heads:
        raise DetrDeployError(
            f"checkpoint {source}: its DINOv2 of width {width} is none of rfdetr's (small, base), so its heads are "
            "not known; give --model with its architecture"
        )
    backbone = _backbone(
        state,
        source,
        heads,
        settings["windows"],
        out_indices,
        settings["window_blocks"] or legacy_window_blocks(tuple(out_indices)),
    )
    if backbone.num_layers < max(out_indices):
        raise DetrDeployError(
            f"checkpoint {source}: its DINOv2 has {backbone.num_layers} blocks but the projector takes stage "
            f"{max(out_indices)}; is the file complete?"
        )
    hidden = int(_tensor(state, "class_embed.weight", source).shape[1])
    blocks, expansion = _projector(state, source, width, len(out_indices))
    classes = int(_tensor(state, "class_embed.weight", source).shape[0])
    points, cross_heads = settings["points"], settings["cross_heads"]
    offsets = int(_tensor(state, "transformer.decoder.layers.0.cross_attn.sampling_offsets.weight", source).shape[0])
    if offsets != cross_heads * points * 2:
        raise DetrDeployError(
            f"checkpoint {source}: its deformable attention has {offsets} sampling offsets, not {cross_heads} heads x "
            f"{points} points x 2 (ca_nheads, dec_n_points); give the file's training arguments"
        )
    queries = settings["queries"]
    rows = int(_tensor(state, "refpoint_embed.weight", source).shape[0])
    if rows < queries or rows % queries:
        raise DetrDeployError(
            f"checkpoint {source} holds {rows} reference points, not a multiple of its {queries} queries (Group DETR)"
        )
    read_from.append(
        f"DINOv2: {backbone.label}, {backbone.structure()} (tensors; windows, stages and heads: {settings['origin']})"
    )
    read_from.append(f"queries: {queries} of {rows} (the first of {rows // queries} Group DETR groups)")
    config = RFDETRConfig(
        size="custom",
        num_classes=classes,
        num_queries=queries,
        backbone=backbone,
        resolution=settings["resolution"] or backbone.positional_grid * backbone.patch_size,
        projector_blocks=blocks,
        projector_expansion=expansion,
        projector_norm_eps=settings["projector_eps"],
        hidden_dim=hidden,
        num_heads=settings["self_heads"],
        cross_attention_heads=cross_heads,
        num_decoder_layers=count_indices(state, r"transformer\.decoder\.layers\.(\d+)\."),
        dim_feedforward=int(_tensor(state, "transformer.decoder.layers.0.linear1.weight", source).shape[0]),
        dec_n_points=points,
        window_order=settings["window_order"],
        rank_invalid_proposals=settings["rank_invalid"],
    )
    given = settings.get("given")
    if given is not None and dataclasses.replace(backbone, name=given.backbone.name) == given.backbone:
        config = dataclasses.replace(config, backbone=given.backbone)
    return named(config, given)


def named(config: RFDETRConfig, given: RFDETRConfig = None) -> RFDETRConfig:
    """``config`` under the size whose architecture it has (``given``'s, else a zoo size's), whatever its classes,
    queries, resolution and peer conventions; else "custom"."""
    free = dict(size="", num_classes=0, num_queries=0, resolution=0, window_order="", rank_invalid_proposals=True)
    free.update(projector_norm_eps=0.0)
    for size in ([given] if given is not None else []) + [get_model_spec(name).config for name in list_models()]:
        if isinstance(size, RFDETRConfig) and dataclasses.replace(size, **free) == dataclasses.replace(config, **free):
            return dataclasses.replace(config, size=size.size)
    return dataclasses.replace(config, size="custom")


def _held_state(state: Mapping, config: RFDETRConfig, source: str, read_from: list) -> dict:
    kept, dropped = inference_state(dict(state), config.num_queries)
    if dropped:
        read_from.append(f"dropped {len(dropped)} training-only tensors (query groups 1+, the DINOv2 mask token)")
    return fitted_state(config, kept, source)


# --- rfdetr's own files --------------------------------------------------------------------------------------------


def _official_settings(args: _Args, source: str, given: RFDETRConfig) -> dict:
    for name, builds, what in _FIXED_ARGS:
        value = args.get(name)
        if value is not None and value != builds and not (isinstance(builds, bool) and bool(value) == builds):
            raise DetrDeployError(
                f"checkpoint {source}: its arguments set {name} {value!r} ({what}); our RF-DETR builds {builds!r}, "
                "so this checkpoint cannot be exported"
            )
    scales = args.get("projector_scale")
    if scales is not None and list(scales) != ["P4"]:
        raise DetrDeployError(
            f"checkpoint {source}: its projector_scale is {list(scales)}; our RF-DETR builds the single P4 level"
        )

    def setting(name: str, from_given, default=None):
        value = args.get(name)
        if value is not None:
            return value
        if given is not None:
            return from_given(given)
        if default is None:
            raise DetrDeployError(
                f"checkpoint {source} does not say its {name} (no training arguments); give --model with its size "
                f"({', '.join(n for n in list_models() if n.startswith('rfdetr_'))})"
            )
        return default

    encoder = str(args.get("encoder", ""))
    vit_heads = None
    for size_name, heads in _DINOV2_SIZES.values():
        if encoder.endswith(f"_{size_name}"):
            vit_heads = heads
    return dict(
        vit_heads=vit_heads or (given.backbone.num_heads if given is not None else None),
        windows=int(setting("num_windows", lambda g: g.backbone.num_windows)),
        out_indices=tuple(setting("out_feature_indexes", lambda g: g.backbone.out_indices)),
        window_blocks=args.get("window_block_indexes") or (given.backbone.window_blocks if given else None),
        points=int(setting("dec_n_points", lambda g: g.dec_n_points, _DEFAULTS["dec_n_points"])),
        cross_heads=int(setting("ca_nheads", lambda g: g.cross_attention_heads, _DEFAULTS["ca_nheads"])),
        self_heads=int(setting("sa_nheads", lambda g: g.num_heads, _DEFAULTS["sa_nheads"])),
        queries=int(setting("num_queries", lambda g: g.num_queries, _DEFAULTS["num_queries"])),
        resolution=args.get("resolution") or (given.resolution if given is not None else None),
        projector_eps=1e-6,
        window_order="rows",
        rank_invalid=True,
        origin=" and ".join(args.origin) or ("--model" if given is not None else "rfdetr's defaults"),
        given=given,
    )


def official_class_names(args: _Args, num_classes: int, read_from: list):
    """Names by label: the file's ``class_names`` (fine-tuned: label i = class_names[i], one slot more than
    classes), COCO category names for the COCO releases (91 slots, label = category id)."""
    names = args.get("class_names")
    if names is not None and list(names) != coco_contiguous_names():
        names = [str(name) for name in names]
        if len(names) in (num_classes, num_classes - 1):
            read_from.append(f"classes: class_names of the training arguments ({len(names)} names)")
            return tuple(names + ["N/A"] * (num_classes - len(names)))
        read_from.append(f"classes: the file names {len(names)} classes for {num_classes} outputs; names not used")
        return None
    if num_classes == 91:
        read_from.append("classes: COCO category names (91 slots: label = COCO category id, as rfdetr's COCO models)")
        return tuple(coco_class_names(91, False))
    read_from.append("classes: none named (the file has no class_names)")
    return None


def read_official_rfdetr(path, content, sha256: str, model_config=None) -> Checkpoint:
    """Read a loaded rfdetr file. ``model_config`` (``--model``) settles what a file without arguments cannot tell.
    Raises DetrDeployError for a file our RF-DETR cannot represent."""
    from pathlib import Path

    path = Path(path)
    state = {str(key): value for key, value in _model_state(content).items() if isinstance(value, torch.Tensor)}
    args = _Args(content)
    given = model_config if isinstance(model_config, RFDETRConfig) else None
    read_from = ["format: rfdetr checkpoint (roboflow/rf-detr)", "weights: 'model'"]
    if args.model_name:
        read_from.append(f"rfdetr model class: {args.model_name}")
    config = tensor_config(state, path.name, _official_settings(args, path.name, given), read_from)
    state = _held_state(state, config, path.name, read_from)
    class_names = official_class_names(args, config.num_classes, read_from)
    return Checkpoint(path, SOURCE_OFFICIAL, config, state, sha256, class_names=class_names, read_from=tuple(read_from))


def _recognize_official(candidate: Candidate):
    if candidate.folder is not None:
        return NO
    state = _model_state(candidate.content)
    if is_rfdetr_state(state):
        return YES
    if _lw_detr_like(state):
        return refuse(
            f"checkpoint {candidate.path.name} is an LW-DETR-style model (two-stage heads and reference points) whose "
            "backbone is not rfdetr's windowed DINOv2 (LW-DETR's own ViT?); this version reads RF-DETR's"
        )
    return NO


def _read_official(candidate: Candidate, model_config=None) -> Checkpoint:
    return read_official_rfdetr(candidate.path, candidate.content, candidate.sha256, model_config)


# --- transformers ------------------------------------------------------------------------------------------------

_ARCHITECTURE = "RfDetrForObjectDetection"
# transformers' RfDetrConfig / RfDetrDinov2Config defaults of the fields read.
_TRANSFORMERS_DEFAULTS = {
    "d_model": 256,
    "decoder_layers": 3,
    "decoder_self_attention_heads": 8,
    "decoder_cross_attention_heads": 16,
    "decoder_n_points": 4,
    "decoder_ffn_dim": 2048,
    "num_queries": 300,
    "c2f_num_blocks": 3,
    "hidden_expansion": 0.5,
    "layer_norm_eps": 1e-5,
}
_TRANSFORMERS_FIXED = {
    "activation_function": ("silu", "the projector's activation"),
    "decoder_activation_function": ("relu", "the decoder FFN's activation"),
    "num_feature_levels": (1, "decoder levels"),
}
_BACKBONE_FIXED = {
    "use_swiglu_ffn": (False, "SwiGLU FFNs"),
    "hidden_act": ("gelu", "the ViT's activation"),
    "qkv_bias": (True, "q/k/v biases"),
    "apply_layernorm": (True, "the stage outputs' LayerNorm"),
    "num_channels": (3, "input channels"),
}
# transformers 5.x module names (state_dict() files) -> rfdetr's names, the reverse of its conversion mapping.
_HF_C2F = r"model\.backbone\.projector\.projector_layer\."
_HF_LAYER = r"model\.decoder\.layers\.(\d+)\."
_LAYER = r"transformer.decoder.layers.\1."
_FIVE_X = [
    (r"model\.backbone\.backbone\.(.*)\.attention\.([qkv])_proj\.(weight|bias)", None),
    (r"model\.backbone\.backbone\.(.*)\.attention\.o_proj\.(weight|bias)", rf"{_VIT}\1.attention.output.dense.\2"),
    (r"model\.backbone\.backbone\.(.*)", rf"{_VIT}\1"),
    (rf"{_HF_C2F}conv([12])\.conv\.weight", rf"{_PROJECTOR}stages.0.0.cv\1.conv.weight"),
    (rf"{_HF_C2F}conv([12])\.norm\.(weight|bias)", rf"{_PROJECTOR}stages.0.0.cv\1.bn.\2"),
    (rf"{_HF_C2F}bottlenecks\.(\d+)\.conv([12])\.conv\.weight", rf"{_PROJECTOR}stages.0.0.m.\1.cv\2.conv.weight"),
    (rf"{_HF_C2F}bottlenecks\.(\d+)\.conv([12])\.norm\.(weight|bias)", rf"{_PROJECTOR}stages.0.0.m.\1.cv\2.bn.\3"),
    (r"model\.backbone\.projector\.layer_norm\.(weight|bias)", rf"{_PROJECTOR}stages.0.1.\1"),
    (rf"{_HF_LAYER}self_attn\.([qkv])_proj\.(weight|bias)", rf"{_LAYER}self_attn.\2_proj.\3"),
    (rf"{_HF_LAYER}self_attn\.o_proj\.(weight|bias)", rf"{_LAYER}self_attn.out_proj.\2"),
    (rf"{_HF_LAYER}self_attn_layer_norm\.(weight|bias)", rf"{_LAYER}norm1.\2"),
    (rf"{_HF_LAYER}cross_attn_layer_norm\.(weight|bias)", rf"{_LAYER}norm2.\2"),
    (rf"{_HF_LAYER}mlp\.fc([12])\.(weight|bias)", rf"{_LAYER}linear\2.\3"),
    (rf"{_HF_LAYER}layer_norm\.(weight|bias)", rf"{_LAYER}norm3.\2"),
    (rf"{_HF_LAYER}cross_attn\.(.*)", rf"{_LAYER}cross_attn.\2"),
    (r"model\.decoder\.layernorm\.(weight|bias)", r"transformer.decoder.norm.\1"),
    (r"model\.decoder\.ref_point_head\.(.*)", r"transformer.decoder.ref_point_head.\1"),
    (r"model\.(enc_output|enc_output_norm|enc_out_class_embed|enc_out_bbox_embed)\.(.*)", r"transformer.\1.\2"),
    (r"model\.reference_point_embed\.weight", "refpoint_embed.weight"),
    (r"model\.query_feat\.weight", "query_feat.weight"),
]
_VIT_QKV = {"q": "query", "k": "key", "v": "value"}


def _from_five_x(raw: Mapping) -> dict:
    """A transformers 5.x ``state_dict()`` in rfdetr's names (the decoder's q/k/v fused into ``in_proj_*``)."""
    state = {}
    for key, tensor in raw.items():
        match = re.fullmatch(_FIVE_X[0][0], key)
        if match:
            state[f"{_VIT}{match[1]}.attention.attention.{_VIT_QKV[match[2]]}.{match[3]}"] = tensor
        else:
            state.update(rename_keys({key: tensor}, _FIVE_X[1:]))
    fuse_every_qkv(state)
    return state


def _unsupported(source: str, what: str) -> DetrDeployError:
    return DetrDeployError(
        f"checkpoint {source}: config.json has {what}, which our RF-DETR cannot express; this checkpoint cannot be "
        "exported"
    )


def read_transformers_rfdetr(folder, model_config=None) -> Checkpoint:
    """The Checkpoint of a transformers RF-DETR directory (``formats.transformers.TransformersFolder``)."""
    source, config = folder.source, folder.config
    architecture = str((config.get("architectures") or [_ARCHITECTURE])[0])
    if architecture != _ARCHITECTURE:
        raise DetrDeployError(
            f"{folder.directory} holds a transformers {architecture}, not a {_ARCHITECTURE} (no detection heads, or "
            "instance segmentation): save the RfDetrForObjectDetection"
        )

    def value(name: str):
        found = config.get(name)
        return _TRANSFORMERS_DEFAULTS.get(name) if found is None else found

    if differing := differing_setting(config, _TRANSFORMERS_FIXED):
        raise _unsupported(source, differing)
    backbone = config.get("backbone_config")
    if not isinstance(backbone, Mapping) or backbone.get("model_type") != "rf_detr_dinov2":
        kind = backbone.get("model_type") if isinstance(backbone, Mapping) else None
        raise _unsupported(source, f"backbone {kind!r} (only an rf_detr_dinov2 backbone_config is supported)")
    if differing := differing_setting(backbone, _BACKBONE_FIXED, prefix="backbone_config "):
        raise _unsupported(source, differing)
    raw = folder.weights
    five_x = any(key.startswith("model.") for key in raw)
    state = _from_five_x(raw) if five_x else dict(raw)
    read_from = [
        f"format: transformers {written_by(config)} directory ({architecture})",
        f"weights: {folder.weights_label}",
        f"keys: {'transformers 5.x module names' if five_x else 'rfdetr names (as save_pretrained writes them)'}",
    ]
    if not is_rfdetr_state(state):
        raise DetrDeployError(f"checkpoint {source}: its weights are not an RF-DETR's (no {_RF_DETR_MARKS[0]})")
    out_indices = tuple(backbone.get("out_indices") or ())
    if not out_indices:
        raise _unsupported(source, "no backbone_config out_indices")
    settings = dict(
        vit_heads=int(backbone.get("num_attention_heads", 12)),
        windows=int(backbone.get("num_windows", 4)),
        out_indices=out_indices,
        window_blocks=tuple(backbone.get("window_block_indexes") or legacy_window_blocks(out_indices)),
        points=int(value("decoder_n_points")),
        cross_heads=int(value("decoder_cross_attention_heads")),
        self_heads=int(value("decoder_self_attention_heads")),
        queries=int(value("num_queries")),
        resolution=None,
        projector_eps=float(value("layer_norm_eps")),
        window_order="transformers",
        rank_invalid=False,
        origin="config.json",
    )
    found = tensor_config(state, source, settings, read_from)
    if found.size != "custom":
        found = dataclasses.replace(found, resolution=get_model_spec(found.architecture_name).config.resolution)
        read_from.append(f"resolution: {found.resolution} (RF-DETR-{found.size}'s; config.json has none)")
    said = {
        "d_model": (value("d_model"), found.hidden_dim),
        "decoder_layers": (value("decoder_layers"), found.num_decoder_layers),
        "decoder_ffn_dim": (value("decoder_ffn_dim"), found.dim_feedforward),
        "c2f_num_blocks": (value("c2f_num_blocks"), found.projector_blocks),
        "hidden_expansion": (value("hidden_expansion"), found.projector_expansion),
        "backbone_config hidden_size": (
            backbone.get("hidden_size", found.backbone.hidden_size),
            found.backbone.hidden_size,
        ),
        "backbone_config num_hidden_layers": (
            backbone.get("num_hidden_layers", found.backbone.num_layers),
            found.backbone.num_layers,
        ),
        "backbone_config patch_size": (
            backbone.get("patch_size", found.backbone.patch_size),
            found.backbone.patch_size,
        ),
    }
    if config.get("num_labels") is not None:
        said["num_labels"] = (config["num_labels"], found.num_classes)
    for name, (declared, held) in said.items():
        if declared != held:
            raise DetrDeployError(
                f"checkpoint {source}: config.json says {name} {declared} but the weights have {held}; the directory "
                "mixes files of two models"
            )
    read_from.append(
        "conventions: transformers' (its windows of non-square grids; proposals outside (0.01, 0.99) scored -inf)"
    )
    state = _held_state(state, found, source, read_from)
    class_names = id2label_class_names(config, found.num_classes, source, read_from)
    return Checkpoint(
        folder.checkpoint_path, SOURCE_TRANSFORMERS, found, state, folder.digest, class_names, tuple(read_from)
    )


def _recognize_transformers(candidate: Candidate):
    return YES if candidate.folder is not None and candidate.folder.model_type == "rf_detr" else NO


def _read_transformers(candidate: Candidate, model_config=None) -> Checkpoint:
    return read_transformers_rfdetr(candidate.folder, model_config)


READERS = (
    Reader("official RF-DETR", FORMAT_OFFICIAL, _recognize_official, _read_official, labels=("RF-DETR",)),
    Reader(
        "transformers RF-DETR",
        FORMAT_TRANSFORMERS,
        _recognize_transformers,
        _read_transformers,
        labels=("RF-DETR",),
        format_names=("rf_detr",),
        classes=(_ARCHITECTURE,),
    ),
)
