"""Loading official release checkpoints (``.pth`` with the state dict under ``model``) with strict key matching."""

import argparse
import functools
import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from detr_deploy.errors import DetrDeployError
from detr_deploy.models.registry import build_model, get_model_spec, list_models

# Counters of trainable batch norm that FrozenBatchNorm2d has no use for.
_IGNORED_SUFFIXES = ("num_batches_tracked",)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """Read the state dict of a release checkpoint (or a bare state dict) without running pickled code."""
    path = Path(path)
    if not path.exists():
        raise DetrDeployError(f"checkpoint {path} does not exist; check the path given to --checkpoint")
    if not path.is_file():
        raise DetrDeployError(f"checkpoint {path} is not a file; give the .pth file itself")
    try:
        # Release checkpoints of Deformable-DETR also pickle their argparse.Namespace of training arguments.
        with torch.serialization.safe_globals([argparse.Namespace]):
            content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a file that is not a checkpoint
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DetrDeployError(
            f"cannot read checkpoint {path}: {reason[:200]}; expected a PyTorch .pth from the DETR or Deformable-DETR"
            " releases"
        ) from None
    state = content.get("model", content) if isinstance(content, Mapping) else content
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DetrDeployError(
            f"checkpoint {path} holds no state dict (expected tensors, or a dict with the tensors under 'model')"
        )
    return {key: value for key, value in state.items() if not key.endswith(_IGNORED_SUFFIXES)}


@functools.lru_cache(maxsize=None)
def _zoo_signature(model_name: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = build_model(get_model_spec(model_name).config)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def closest_zoo_model(state: Mapping[str, torch.Tensor]) -> tuple[str, int, int]:
    """(zoo model name, matching entries, entries in that model) for the model whose keys and shapes fit best."""
    signature = {key: tuple(value.shape) for key, value in state.items()}
    scores = []
    for name in list_models():
        expected = _zoo_signature(name)
        matching = sum(1 for key, shape in signature.items() if expected.get(key) == shape)
        # Penalize size differences so that a subset of keys does not look like a perfect fit.
        scores.append((matching - abs(len(expected) - len(signature)), matching, len(expected), name))
    _, matching, total, name = max(scores)
    return name, matching, total


def _examples(keys: list[str], count: int = 3) -> str:
    shown = ", ".join(keys[:count])
    return shown + (", ..." if len(keys) > count else "")


def check_state_dict(model: nn.Module, model_name: str, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise one clear DetrDeployError when ``state`` does not fit ``model`` exactly."""
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mismatched = [key for key in expected if key in state and tuple(state[key].shape) != expected[key]]
    if not (missing or unexpected or mismatched):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_examples(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_examples(unexpected)})")
    if mismatched:
        key = mismatched[0]
        problems.append(
            f"{len(mismatched)} keys with other shapes "
            f"({key}: file {list(state[key].shape)}, model {list(expected[key])})"
        )
    name, matching, total = closest_zoo_model(state)
    if name != model_name and matching == total == len(state):
        hint = f"it is a checkpoint for '{name}': use --model {name}"
    elif name != model_name and matching > total // 2:
        hint = f"it looks like a checkpoint for '{name}' ({matching} of {total} entries match)"
    else:
        hint = "it matches no zoo model"
    raise DetrDeployError(f"checkpoint {source} does not fit model '{model_name}': {'; '.join(problems)}; {hint}")


def load_checkpoint(model: nn.Module, model_name: str, path) -> str:
    """Load a release checkpoint into ``model`` with strict key matching. Returns the file's sha256."""
    state = read_state_dict(path)
    check_state_dict(model, model_name, state, Path(path).name)
    model.load_state_dict(state, strict=True)
    return _sha256(Path(path))
