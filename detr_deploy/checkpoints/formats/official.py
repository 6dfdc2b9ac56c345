"""Files of the official training code (facebookresearch/detr, fundamentalvision/Deformable-DETR,
IDEA-Research/DINO ``main.py``): ``{'model': state_dict, 'args': argparse.Namespace, 'optimizer': ...,
'epoch': ...}`` (releases drop all but ``model``, some also ``args``), or a bare state dict. The training ``args``
are what ``main.py`` built the model from, so they settle what no tensor holds.

RT-DETR's solver, and the D-FINE and DEIM solvers derived from it, save another layout (``split_solver_file``)."""

import argparse
from collections.abc import Mapping

import torch

# main.py's default ``--nheads``.
OFFICIAL_DEFAULT_HEADS = 8


def split_official(content) -> tuple[Mapping[str, torch.Tensor], argparse.Namespace]:
    """(state dict, training args or None) of a loaded official file."""
    if isinstance(content, Mapping) and isinstance(content.get("model"), Mapping):
        args = content.get("args")
        return content["model"], args if isinstance(args, argparse.Namespace) else None
    return content, None


def split_solver_file(content) -> tuple[Mapping, str]:
    """(state dict, where in the file it was) of a file saved by RT-DETR's solver and those derived from it
    (lyuwenyu/RT-DETR, Peterande/D-FINE, DEIM): ``{'model': state, 'ema': {'module': state, 'updates': n},
    'optimizer': ..., 'last_epoch': ...}``, release files keeping the weights only. The official export loads
    ``ema.module`` when the file has it, else ``model``, and so do we; a bare state dict is read too. (None, "")
    when there is none."""
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


def arg(args, name: str, default=None):
    """``args.name``, or ``default`` where the file has no args or they lack it."""
    return getattr(args, name, default) if args is not None else default


def official_heads(args, model_config, read_from: list) -> int:
    """Attention heads: no tensor shape holds them (q/k/v are [C, C] whatever the split)."""
    if arg(args, "nheads") is not None:
        read_from.append("heads: training args")
        return args.nheads
    if model_config is not None:
        read_from.append("heads: from --model")
        return model_config.num_heads
    read_from.append(f"heads: {OFFICIAL_DEFAULT_HEADS} (the official default; not in the tensors)")
    return OFFICIAL_DEFAULT_HEADS


def official_dilation(args, model_config, assumed: str, read_from: list) -> bool:
    """Whether the last ResNet stage is dilated (DC5): the args, else ``--model``, else none (``assumed`` says
    why that is safe)."""
    if arg(args, "dilation") is not None:
        dilation, origin = bool(args.dilation), "training args"
    elif model_config is not None:
        dilation, origin = model_config.backbone.dilate_last_stage, "from --model"
    else:
        dilation, origin = False, assumed
    read_from.append(f"dilation (DC5): {origin}")
    return dilation
