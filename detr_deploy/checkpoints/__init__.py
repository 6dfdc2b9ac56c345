"""Checkpoints in, zoo models out: official code, transformers directories, mmdetection and Ultralytics files.

``read_checkpoint(path)`` opens the file (a ``Candidate``), lets the one reader that recognizes it
(``checkpoints.readers``, one module per family) read the architecture from it (so ``--model`` is only needed
where the file cannot tell) and rename the weights into the zoo modules' key layout, and returns a ``Checkpoint``;
``build_checkpoint_model`` builds the model and loads it strictly.
"""

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from detr_deploy.checkpoints.candidate import Candidate
from detr_deploy.checkpoints.checkpoint import (
    SOURCE_MMDET2,
    SOURCE_MMDET3,
    SOURCE_OFFICIAL,
    SOURCE_TRANSFORMERS,
    Checkpoint,
    build_checkpoint_model,
    check_finite,
)
from detr_deploy.checkpoints.formats.mmdetection import first_keys, mmdetection_file
from detr_deploy.checkpoints.formats.transformers import TransformersFolder, is_transformers_path, is_transformers_state
from detr_deploy.checkpoints.pickled import load_pickled
from detr_deploy.checkpoints.table import (
    choose_reader,
    supported_families,
    supported_mmdetection,
    transformers_model_type_error,
)
from detr_deploy.errors import DetrDeployError

__all__ = [
    "SOURCE_MMDET2",
    "SOURCE_MMDET3",
    "SOURCE_OFFICIAL",
    "SOURCE_TRANSFORMERS",
    "Checkpoint",
    "agree_with_model",
    "build_checkpoint_model",
    "check_finite",
    "inspect_checkpoint",
    "read_checkpoint",
]


def read_checkpoint(path, model_config=None) -> Checkpoint:
    """Read ``path``: a ``.pth``/``.bin``/``.pt`` file (official code, mmdetection 2.x/3.x, Ultralytics) or a
    transformers directory (``config.json`` plus ``model.safetensors``, ``pytorch_model.bin`` or a sharded index).

    ``model_config`` (the config of ``--model``) settles what a file cannot tell and must agree with what it does
    tell. Raises DetrDeployError for anything unreadable, unsupported or contradictory, saying what was found.
    """
    path = Path(path)
    if not path.exists():
        raise DetrDeployError(f"checkpoint {path} does not exist; check the path given to --checkpoint")
    if is_transformers_path(path):
        candidate = Candidate(path, folder=TransformersFolder.open(path))
    else:
        candidate = Candidate.of_pickled(path, load_pickled(path))
    reader = choose_reader(candidate)
    if reader is None:
        raise _unrecognized(candidate)
    checkpoint = reader.read(candidate, model_config)
    if model_config is not None:
        agree_with_model(checkpoint, model_config)
    return checkpoint


def _unrecognized(candidate: Candidate) -> DetrDeployError:
    """The error for a file no reader recognizes (nor refuses)."""
    if candidate.folder is not None:
        return transformers_model_type_error(candidate.folder.directory, candidate.folder.model_type)
    path, state = candidate.path, candidate.state
    if not isinstance(state, Mapping) or not state:
        return DetrDeployError(
            f"checkpoint {path} holds no state dict (expected tensors, or a dict with them under 'model' or "
            "'state_dict')"
        )
    mmdetection = mmdetection_file(candidate)
    if mmdetection is not None and isinstance(mmdetection.model_type, str):
        return DetrDeployError(
            f"checkpoint {path.name} is an mmdetection '{mmdetection.model_type}' model (its config says so), which "
            f"is not supported: this version reads {supported_mmdetection()}"
        )
    if mmdetection is not None:
        return DetrDeployError(
            f"checkpoint {path.name} is an mmdetection file without a head this version reads "
            f"({first_keys(mmdetection.state_3x, 'bbox_head.')}); this version reads {supported_mmdetection()}"
        )
    if is_transformers_state(state):
        return DetrDeployError(
            f"{path} holds transformers weights without their config.json: give the directory save_pretrained "
            "wrote (config.json beside the weights)"
        )
    shown = ", ".join(str(key) for key in list(state)[:3])
    return DetrDeployError(
        f"checkpoint {path} is not a {supported_families('or')} checkpoint of the official code, transformers or "
        f"mmdetection (first keys: {shown})"
    )


def _backbone_kind(backbone):
    """A backbone config without its base width (a ResNet's width is a size the file tells), else as it is."""
    if "base_width" in {item.name for item in dataclasses.fields(backbone)}:
        return dataclasses.replace(backbone, base_width=0)
    return backbone


def agree_with_model(checkpoint: Checkpoint, model_config) -> None:
    """Refuse a ``--model`` whose architecture kind (family, variant, backbone) differs from the file's. Sizes
    (classes, queries, layers, widths) come from the file; the architecture name carries the family's variants."""
    file_config = checkpoint.config
    same = type(file_config) is type(model_config) and file_config.architecture_name == model_config.architecture_name
    same = same and _backbone_kind(file_config.backbone) == _backbone_kind(model_config.backbone)
    if not same:
        from detr_deploy.models.registry import list_models

        instead = f" or use --model {checkpoint.model_name}" if checkpoint.model_name in list_models() else ""
        asked = ", ".join(model_config.describe().split(", ")[:2])
        raise DetrDeployError(
            f"--model asks for a {asked} but {checkpoint.path.name} is a {checkpoint.description} "
            f"({checkpoint.source}); drop --model (the file tells what it is){instead}"
        )


def inspect_checkpoint(path, model_name: str = None):
    """``read_checkpoint`` as a ``CheckpointReport`` (for ``inspect``), with the export command to run."""
    from detr_deploy.checkpoints.report import checkpoint_report
    from detr_deploy.models.registry import get_model_spec

    checkpoint = read_checkpoint(path, get_model_spec(model_name).config if model_name else None)
    return checkpoint_report(checkpoint, model_name)
