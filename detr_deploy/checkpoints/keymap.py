"""Renaming a foreign state dict into the zoo modules' key layout (that of the official releases)."""

import re
from collections.abc import Iterable, Mapping

import torch

# Regex fragments of key names the readers' renaming rules share.
WB = r"(weight|bias)"
BN = r"(?:weight|bias|running_mean|running_var)"
# nn.MultiheadAttention's parameters (one group).
MHA = r"(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)"
# Multi-scale deformable attention's parameters (one group).
MSDA = r"((?:sampling_offsets|attention_weights|value_proj|output_proj)\.(?:weight|bias))"
# Separate q/k/v/out projections, as transformers names them (no group).
SEPARATE_ATTENTION = r"(?:[qkv]|out)_proj\.(?:weight|bias)"
# Counters of trainable batch norm that FrozenBatchNorm2d has no use for.
BATCH_NORM_COUNTERS = (".num_batches_tracked",)


def without_module_prefix(state: Mapping) -> dict:
    """``state`` with DataParallel's ``module.`` prefix dropped (keys as strings)."""
    return {str(key).removeprefix("module."): value for key, value in state.items()}


def without_batch_norm_counters(state: Mapping) -> dict:
    return {key: value for key, value in state.items() if not str(key).endswith(BATCH_NORM_COUNTERS)}


def rename_keys(state: Mapping[str, torch.Tensor], rules: Iterable[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Apply the first rule (``re.fullmatch`` pattern, ``re`` replacement) that matches each key; keys no rule
    matches keep their name (strict loading reports them later). A replacement of ``""`` drops the key."""
    compiled = [(re.compile(pattern), replacement) for pattern, replacement in rules]
    renamed = {}
    for key, tensor in state.items():
        for pattern, replacement in compiled:
            match = pattern.fullmatch(key)
            if match:
                key = match.expand(replacement) if replacement else None
                break
        if key is not None:
            renamed[key] = tensor
    return renamed


def count_indices(keys: Iterable[str], pattern: str) -> int:
    """Number of distinct integers captured by ``pattern``'s first group, e.g. encoder layers from
    ``r"transformer\\.encoder\\.layers\\.(\\d+)\\."`` (matched at the start of each key)."""
    compiled = re.compile(pattern)
    return len({int(match[1]) for key in keys if (match := compiled.match(key))})


def fuse_qkv(state: dict[str, torch.Tensor], source_prefix: str, target_prefix: str) -> None:
    """In place: ``{source_prefix}{q,k,v}_proj.{weight,bias}`` (separate projections, as transformers stores them)
    -> ``{target_prefix}in_proj_{weight,bias}`` (nn.MultiheadAttention's layout: q, k, v stacked on dim 0)."""
    for kind in ("weight", "bias"):
        names = [f"{source_prefix}{part}_proj.{kind}" for part in "qkv"]
        if all(name in state for name in names):
            state[f"{target_prefix}in_proj_{kind}"] = torch.cat([state.pop(name) for name in names], 0)


def fuse_every_qkv(state: dict, ending: str = ".q_proj.weight") -> None:
    """In place: every separate q/k/v projection whose q weight key ends with ``ending`` -> ``in_proj_*``."""
    for key in [key for key in state if key.endswith(ending)]:
        prefix = key.removesuffix("q_proj.weight")
        fuse_qkv(state, prefix, prefix)
