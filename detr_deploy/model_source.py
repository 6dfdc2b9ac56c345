"""Where a model comes from: a zoo name with seeded random weights, a checkpoint (official code, transformers,
mmdetection), or the metadata of an export (to rebuild the eager model it was made from, for parity).

One place turns ``--model`` / ``--checkpoint`` into a built model, for export, verify-parity, predict and
benchmark alike, and one place says what an export records about it (``model_metadata``).
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from detr_deploy import contract
from detr_deploy.errors import DetrDeployError
from detr_deploy.models.registry import (
    ModelConfig,
    build_model,
    config_from_dict,
    config_to_dict,
    get_model_spec,
)

SOURCE_ZOO = "zoo"
# torch.manual_seed takes a 64-bit integer; seeds are 0..2**63 - 1.
MAX_SEED = 2**63 - 1
# Files and folders that are checkpoints, where a command also takes a zoo name or an export.
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


@dataclass(frozen=True)
class SourceModel:
    """A built model (eval mode) and what it is: ``name`` (zoo name, or the architecture's zoo-style name for a
    checkpoint read without ``--model``), its config, ``weights`` as exports record them, the checkpoint's class
    names (None: COCO's for COCO-sized heads, else class_<i>) and format (``zoo`` for random weights)."""

    name: str
    config: ModelConfig
    model: nn.Module
    weights: str
    class_names: tuple[str, ...] = None
    source: str = SOURCE_ZOO


def is_checkpoint_path(text) -> bool:
    """A path (file or transformers folder) that should be read as a checkpoint rather than as a zoo name."""
    path = Path(str(text))
    return path.is_dir() or path.suffix.lower() in CHECKPOINT_SUFFIXES or path.name == "config.json"


def load_model(model_name: str = None, checkpoint=None, *, seed: int = 0) -> SourceModel:
    """``--model`` and/or ``--checkpoint``: the checkpoint's own architecture (``model_name``, when given, settles
    what the file cannot tell and must agree with the rest), or the zoo model with seeded random weights."""
    if checkpoint is None:
        if not model_name:
            raise DetrDeployError("give --checkpoint FILE_OR_DIR (your model) or --model NAME (see list-models)")
        spec = get_model_spec(model_name)
        return SourceModel(spec.name, spec.config, build_model(spec.config, seed=seed), f"random(seed={seed})")
    from detr_deploy.checkpoints import build_checkpoint_model, read_checkpoint

    base = get_model_spec(model_name).config if model_name else None
    checkpoint = read_checkpoint(checkpoint, base)
    return SourceModel(
        model_name or checkpoint.model_name,
        checkpoint.config,
        build_checkpoint_model(checkpoint),
        checkpoint.weights_label,
        checkpoint.class_names,
        checkpoint.source,
    )


def recorded_config(metadata: dict) -> ModelConfig:
    """The config an export recorded (``detr_deploy.config``), else its zoo model's, else None."""
    if contract.META_CONFIG in metadata:
        return config_from_dict(json.loads(metadata[contract.META_CONFIG]))
    name = metadata.get(contract.META_MODEL)
    return get_model_spec(name).config if name else None


def model_of_export(metadata: dict, *, model_name: str = None, checkpoint=None) -> SourceModel:
    """Rebuild the eager model an export (its ONNX metadata, or an engine description's ``model``) was made from:
    the recorded architecture with ``checkpoint``'s weights, or the seeded random weights it records.

    ``model_name`` is for files that record no model; where one is recorded it must agree."""
    recorded_name = metadata.get(contract.META_MODEL)
    if model_name and recorded_name and model_name != recorded_name:
        raise DetrDeployError(
            f"--model {model_name} contradicts the model the file records ({recorded_name}); drop --model"
        )
    name = recorded_name or model_name
    if not name:
        raise DetrDeployError("the file carries no detr_deploy metadata; pass --model NAME or --checkpoint FILE_OR_DIR")
    config = recorded_config(metadata) if recorded_name else get_model_spec(name).config
    weights = metadata.get(contract.META_WEIGHTS, "")
    if checkpoint is not None:
        from detr_deploy.checkpoints import build_checkpoint_model, read_checkpoint

        read = read_checkpoint(checkpoint, config)
        if read.config != config:
            raise DetrDeployError(
                f"{Path(checkpoint).name} is a {read.description}, but the export was made from a "
                f"{config.describe()}; pass the checkpoint the export was made from"
            )
        recorded_digest = re.search(r"sha256:([0-9a-f]{64})", weights)
        if recorded_digest and recorded_digest[1] != read.sha256:
            raise DetrDeployError(
                f"the export was made from other weights ({weights}) than {Path(checkpoint).name} "
                f"(sha256:{read.sha256}); pass the checkpoint the export was made from"
            )
        return SourceModel(
            name, config, build_checkpoint_model(read), read.weights_label, read.class_names, read.source
        )
    seeded = re.fullmatch(r"random\(seed=(\d+)\)", weights)
    if not seeded or int(seeded[1]) > MAX_SEED:
        raise DetrDeployError(
            f"the export was made from weights '{weights or 'unknown'}'; pass the same file with --checkpoint"
        )
    return SourceModel(name, config, build_model(config, seed=int(seeded[1])), weights)


def model_metadata(source: SourceModel) -> dict[str, str]:
    """What an export (and an eager Detector) records about its model: name, architecture, classes, weights."""
    from detr_deploy.categories import class_metadata

    config = source.config
    return {
        contract.META_MODEL: source.name,
        contract.META_ARCHITECTURE: config.architecture_name,
        contract.META_CONFIG: json.dumps(config_to_dict(config), separators=(",", ":")),
        contract.META_FAMILY: config.family,
        contract.META_NUM_CLASSES: str(config.num_classes),
        contract.META_SCORE_ACTIVATION: config.score_activation,
        contract.META_WEIGHTS: source.weights,
        contract.META_CHECKPOINT_FORMAT: source.source,
        **class_metadata(config, source.class_names),
        **input_metadata(config),
    }


def input_metadata(config: ModelConfig) -> dict[str, str]:
    """What a runtime needs to feed, check and decode the model: normalization, resize rule, side divisor, query
    selection (strides and query count, so a runner refuses too small an input without model code), top-k."""
    metadata = {
        contract.META_MEAN: ",".join(map(str, config.normalize_mean)),
        contract.META_STD: ",".join(map(str, config.normalize_std)),
        contract.META_RESIZE: config.resize,
        contract.META_SIZE_DIVISOR: str(config.size_divisor),
    }
    if config.selection_strides:
        metadata[contract.META_SELECTION_STRIDES] = ",".join(map(str, config.selection_strides))
        metadata[contract.META_SELECTED_QUERIES] = str(config.num_queries)
    if config.num_top_detections is not None:
        metadata[contract.META_TOP_K] = str(config.num_top_detections)
    return metadata
