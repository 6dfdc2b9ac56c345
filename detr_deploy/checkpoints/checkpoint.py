"""What a checkpoint is, once read: the architecture it describes, its weights in the zoo modules' key layout, and
its class names. Every reader (official code, transformers, mmdetection) produces one of these."""

import dataclasses
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from detr_deploy.errors import DetrDeployError
from detr_deploy.models.registry import ModelConfig, build_model

# The formats a checkpoint can come in (``Checkpoint.source``).
SOURCE_OFFICIAL = "official"
SOURCE_TRANSFORMERS = "transformers"
SOURCE_MMDET3 = "mmdetection-3.x"
SOURCE_MMDET2 = "mmdetection-2.x"


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read into our terms.

    ``state_dict`` has exactly the keys and shapes of ``build_model(config).state_dict()``; ``class_names`` is
    indexed by label (None when the file names no classes); ``read_from`` says, per fact, where it was read
    (for ``inspect``); ``sha256`` identifies the weights file(s).
    """

    path: Path
    source: str
    config: ModelConfig
    state_dict: Mapping[str, torch.Tensor] = field(repr=False)
    sha256: str
    class_names: tuple[str, ...] = None
    read_from: tuple[str, ...] = ()

    @property
    def model_name(self) -> str:
        """The architecture's name in the zoo's terms (``deformable_detr_r50_refine``), also for fine-tuned ones."""
        return self.config.architecture_name

    @property
    def description(self) -> str:
        return self.config.describe()

    @property
    def weights_label(self) -> str:
        """What the export records as its weights (``detr_deploy.weights``)."""
        return f"checkpoint {self.path.name} sha256:{self.sha256}"


def build_checkpoint_model(checkpoint: Checkpoint) -> nn.Module:
    """The zoo model of ``checkpoint.config`` with the checkpoint's weights, strictly loaded, in eval mode."""
    with torch.device("meta"):
        skeleton = build_model(checkpoint.config)
    check_state_dict(skeleton, checkpoint.state_dict, checkpoint.path.name, checkpoint.description)
    check_finite(checkpoint.state_dict, checkpoint.path.name)
    model = build_model(checkpoint.config)
    model.load_state_dict(dict(checkpoint.state_dict), strict=True)
    return model


def _examples(keys: list[str], count: int = 3) -> str:
    shown = ", ".join(keys[:count])
    return shown + (", ..." if len(keys) > count else "")


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str, description: str) -> None:
    """Raise one clear DetrDeployError when ``state`` does not fit ``model`` exactly (missing, unexpected or
    reshaped tensors: a truncated or edited file, or a variant the readers do not know)."""
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mismatched = [key for key in expected if key in state and tuple(state[key].shape) != expected[key]]
    if not (missing or unexpected or mismatched):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensors ({_examples(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors ({_examples(unexpected)})")
    if mismatched:
        key = mismatched[0]
        problems.append(
            f"{len(mismatched)} tensors with other shapes "
            f"({key}: file {list(state[key].shape)}, model {list(expected[key])})"
        )
    raise DetrDeployError(
        f"checkpoint {source} reads as a {description} but does not fit it: {'; '.join(problems)}; "
        "is the file complete and unmodified?"
    )


def check_finite(state: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse weights holding NaN or Inf (a diverged training run): exports and parity reports of them mean nothing."""
    for key, tensor in state.items():
        if not tensor.is_floating_point():
            continue
        # As the model holds it: a float64 1e300 is finite in the file and Inf once loaded into float32.
        values = tensor.to(torch.float32)
        if not bool(torch.isfinite(values).all()):
            bad = values[~torch.isfinite(values)]
            what = "NaN" if bool(torch.isnan(bad).any()) else "Inf"
            overflow = " (once cast to float32)" if bool(torch.isfinite(tensor).all()) else ""
            raise DetrDeployError(
                f"checkpoint {source} holds {what} in {key}{overflow} ({bad.numel()} of {tensor.numel()} values); "
                "the training run diverged: export an earlier checkpoint"
            )


@contextmanager
def missing_tensors(source: str, every: str):
    """Inside: a KeyError (a tensor a reader looked up) becomes "checkpoint SOURCE has no tensor KEY{every}: is the
    file complete?" (``every`` says who has it: ", which every official DINO checkpoint has")."""
    try:
        yield
    except KeyError as error:
        message = f"checkpoint {source} has no tensor {error.args[0]}{every}: is the file complete?"
        raise DetrDeployError(message) from None


def integer_ratio(numerator: int, denominator: int, what: str, source: str) -> int:
    """``numerator / denominator`` when it divides exactly, else a DetrDeployError naming ``what``."""
    if denominator <= 0 or numerator % denominator:
        raise DetrDeployError(
            f"checkpoint {source}: cannot infer {what} ({numerator} is not a multiple of {denominator}); "
            "give the training arguments with the file"
        )
    return numerator // denominator


def given_or_default(given, given_by: str, name: str, default, what: str, read_from: list):
    """A value no tensor holds: ``given.<name>`` (--model, config.json; said to come from ``given_by``) when there is
    a ``given``, else the official configs' ``default``; ``read_from`` records which as "<what>: <value> (...)"."""
    if given is not None:
        read_from.append(f"{what}: {getattr(given, name)} ({given_by})")
        return getattr(given, name)
    read_from.append(f"{what}: {default} (the official configs'; not in the tensors)")
    return default


def points_from_scale(scale: torch.Tensor, levels: int, source: str) -> tuple[int, ...]:
    """A deformable attention's ``num_points_scale`` buffer (RT-DETRv2, D-FINE: ``[1/P_0] * P_0 + [1/P_1] * P_1 +
    ...``) -> the points per level (P_0, P_1, ...)."""
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


def match_batch_norm_counters(state: Mapping, counters: set) -> dict:
    """``num_batches_tracked`` where our model has them (``counters``): frozen backbone norms have none (a file that
    trained them stores them), trainable norms one each (0 where the file has none: evaluation never reads it)."""
    state = {key: value for key, value in state.items() if not key.endswith(".num_batches_tracked") or key in counters}
    for key in counters:
        state.setdefault(key, torch.tensor(0, dtype=torch.long))
    return state


def fitted_state(config: ModelConfig, state: Mapping, source: str) -> dict:
    """``state`` with batch norm counters matched to ``config``'s model, checked to fit it exactly (strict keys and
    shapes; DetrDeployError otherwise)."""
    with torch.device("meta"):
        skeleton = config.build()
    counters = {key for key in skeleton.state_dict() if key.endswith(".num_batches_tracked")}
    state = match_batch_norm_counters(state, counters)
    check_state_dict(skeleton, state, source, config.describe())
    return state


def replace_config(config: ModelConfig, **changes) -> ModelConfig:
    """``dataclasses.replace`` that ignores unchanged (None) values."""
    return dataclasses.replace(config, **{key: value for key, value in changes.items() if value is not None})


__all__ = [
    "Checkpoint",
    "SOURCE_MMDET2",
    "SOURCE_MMDET3",
    "SOURCE_OFFICIAL",
    "SOURCE_TRANSFORMERS",
    "build_checkpoint_model",
    "check_finite",
    "check_state_dict",
    "fitted_state",
    "given_or_default",
    "integer_ratio",
    "match_batch_norm_counters",
    "points_from_scale",
    "missing_tensors",
    "replace_config",
]
