"""Checkpoints in, zoo models out: official code, transformers directories and mmdetection files.

``read_checkpoint(path)`` tells the format and the family (DETR, Deformable DETR, RT-DETR v1/v2, DINO) from the file,
reads the architecture from it (so ``--model`` is only needed where the file cannot tell), renames the weights into
the zoo modules' key layout and returns a ``Checkpoint``; ``build_checkpoint_model`` builds the model and loads it
strictly.
"""

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from detr_deploy.checkpoints.checkpoint import (
    SOURCE_MMDET2,
    SOURCE_MMDET3,
    SOURCE_OFFICIAL,
    SOURCE_TRANSFORMERS,
    Checkpoint,
    build_checkpoint_model,
    check_finite,
)
from detr_deploy.errors import DetrDeployError
from detr_deploy.io import sha256_of
from detr_deploy.models.registry import architecture_name

__all__ = [
    "SOURCE_MMDET2",
    "SOURCE_MMDET3",
    "SOURCE_OFFICIAL",
    "SOURCE_TRANSFORMERS",
    "Checkpoint",
    "build_checkpoint_model",
    "check_finite",
    "inspect_checkpoint",
    "read_checkpoint",
]

# Keys that betray DETR-family models this version does not read, for a message better than "unknown".
_FOREIGN_FAMILIES = (
    ("sa_qcontent_proj", "Conditional DETR"),
    ("ca_qpos_sine_proj", "Conditional DETR"),
    ("query_scale", "DAB-DETR or Conditional DETR"),
    ("refpoint_embed", "DAB-DETR"),
    ("label_enc", "DN-DETR"),
    ("patch_embed", "a ViT-based detector"),
)
# Architectures (config.json ``model_type``) transformers names for them.
_SUPPORTED_TRANSFORMERS = ("detr", "deformable_detr", "rt_detr", "rt_detr_v2")
_SUPPORTED = "DETR, DETR-panoptic, Deformable DETR, RT-DETR (v1, v2) and DINO"


def read_checkpoint(path, model_config=None) -> Checkpoint:
    """Read ``path``: a ``.pth``/``.bin`` file (official code, mmdetection 2.x/3.x) or a transformers directory
    (``config.json`` plus ``model.safetensors``, ``pytorch_model.bin`` or a sharded index).

    ``model_config`` (the config of ``--model``) settles what a file cannot tell and must agree with what it does
    tell. Raises DetrDeployError for anything unreadable, unsupported or contradictory, saying what was found.
    """
    path = Path(path)
    if not path.exists():
        raise DetrDeployError(f"checkpoint {path} does not exist; check the path given to --checkpoint")
    beside_config = path.is_file() and (path.parent / "config.json").is_file() and path.suffix in (".bin", ".json")
    if path.is_dir() or path.name == "config.json" or path.suffix == ".safetensors" or beside_config:
        from detr_deploy.checkpoints.huggingface import read_transformers

        checkpoint = read_transformers(path if path.is_dir() else path.parent, given=path)
    else:
        checkpoint = _read_pickled(path, model_config)
    if model_config is not None:
        agree_with_model(checkpoint, model_config)
    return checkpoint


def _read_pickled(path: Path, model_config) -> Checkpoint:
    from detr_deploy.checkpoints import dino, official, rtdetr
    from detr_deploy.checkpoints.pickled import load_pickled

    content = load_pickled(path)
    digest = sha256_of(path)
    if rtdetr.is_official_rtdetr(content):
        return rtdetr.read_official_rtdetr(path, content, digest, model_config)
    state, _ = official.split_official(content)
    if isinstance(content, Mapping) and isinstance(content.get("state_dict"), Mapping):
        state = content["state_dict"]  # mmdetection
    if isinstance(state, Mapping) and dino.is_official_dino(state):
        return dino.read_official_dino(path, content, digest, model_config)
    foreign = _foreign_family(state) if isinstance(state, Mapping) else None
    if foreign:
        raise DetrDeployError(f"checkpoint {path} {foreign}")
    if isinstance(state, Mapping) and official.is_official(state):
        return official.read_official(path, content, digest, model_config)
    from detr_deploy.checkpoints import mmdetection

    if mmdetection.is_mmdetection(content):
        return mmdetection.read_mmdetection(path, content, digest)
    if not isinstance(state, Mapping) or not state:
        raise DetrDeployError(
            f"checkpoint {path} holds no state dict (expected tensors, or a dict with them under 'model' or "
            "'state_dict')"
        )
    from detr_deploy.checkpoints import huggingface

    if huggingface.is_transformers_state(state):
        raise DetrDeployError(
            f"{path} holds transformers weights without their config.json: give the directory save_pretrained "
            "wrote (config.json beside the weights)"
        )
    raise DetrDeployError(f"checkpoint {path} {_what_it_is(state)}")


def _foreign_family(state: Mapping) -> str:
    """'looks like Conditional DETR ...' for a DETR-family model this version does not read, else None."""
    keys = [str(key) for key in state]
    for marker, family in _FOREIGN_FAMILIES:
        if any(marker in key for key in keys):
            return (
                f"looks like {family} (it has '{marker}' tensors), which is not supported: this version reads "
                f"{_SUPPORTED}"
            )
    return None


def _what_it_is(state: Mapping) -> str:
    keys = [str(key) for key in state]
    shown = ", ".join(keys[:3])
    return (
        f"is not a {_SUPPORTED.replace(' and ', ' or ')} checkpoint of the official code, transformers or "
        f"mmdetection (first keys: {shown})"
    )


def transformers_model_type_error(directory: Path, model_type: str) -> DetrDeployError:
    """The error for a transformers directory of an architecture we do not read."""
    return DetrDeployError(
        f"{directory} holds a transformers '{model_type}' model, which is not supported: this version reads "
        f"{', '.join(_SUPPORTED_TRANSFORMERS)} (DetrForObjectDetection, DetrForSegmentation, "
        "DeformableDetrForObjectDetection, RTDetrForObjectDetection, RTDetrV2ForObjectDetection)"
    )


# What --model must agree with: the architecture kind. Sizes (classes, queries, layers, widths) come from the file.
_KIND_FIELDS = ("panoptic", "with_box_refine", "two_stage")


def agree_with_model(checkpoint: Checkpoint, model_config) -> None:
    """Refuse a ``--model`` whose architecture kind (family, variant, backbone) differs from the file's."""
    file_config = checkpoint.config
    same = type(file_config) is type(model_config) and all(
        getattr(file_config, name, None) == getattr(model_config, name, None) for name in _KIND_FIELDS
    )
    same = same and dataclasses.replace(file_config.backbone, base_width=0) == dataclasses.replace(
        model_config.backbone, base_width=0
    )
    # The name carries the rest of the kind: RT-DETR version and sampling, DINO's scale count.
    same = same and architecture_name(file_config) == architecture_name(model_config)
    if not same:
        from detr_deploy.models.registry import describe_config, list_models

        instead = f" or use --model {checkpoint.model_name}" if checkpoint.model_name in list_models() else ""
        asked = ", ".join(describe_config(model_config).split(", ")[:2])
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
