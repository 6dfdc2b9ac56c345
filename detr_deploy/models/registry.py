"""A flat registry of named model variants. Registering a name twice is refused."""

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from detr_deploy.errors import DetrDeployError
from detr_deploy.models.family import FamilyConfig

# Any family's config: a frozen dataclass deriving from FamilyConfig (models/family.py says what it answers).
ModelConfig = FamilyConfig


@dataclass(frozen=True)
class ModelSpec:
    name: str
    config: ModelConfig
    description: str = ""


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, config: ModelConfig, description: str = "") -> ModelSpec:
    """Add a named variant. A name that is already taken is a programming error (ValueError)."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    if not (isinstance(config, FamilyConfig) and dataclasses.is_dataclass(config)):
        raise TypeError(f"{type(config).__name__} is not a family config (a FamilyConfig dataclass)")
    spec = ModelSpec(name, config, description)
    _REGISTRY[name] = spec
    return spec


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_model_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise DetrDeployError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


def build_model(config: ModelConfig, seed: int = None) -> nn.Module:
    """Build a model in eval mode. With ``seed``, its random weights are reproducible (export demo, parity)."""
    if seed is not None:
        # A private generator stream so building does not disturb the caller's global RNG state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = config.build()
            _calibrate_batch_norms(model, config)
    else:
        model = config.build()
    return model.eval()


def _calibrate_batch_norms(model: nn.Module, config: ModelConfig) -> None:
    """Give trainable BatchNorms (RT-DETR's encoder and decoder) the statistics of a few random images, as training
    would. With their initial statistics (mean 0, variance 1) random weights shrink the features through each layer
    until the encoder's selection scores of all tokens agree to ~1e-6, and a top-k over near-ties is not
    reproducible from one backend to another. Models without such layers are left as built."""
    norms = [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]
    if not norms:
        return
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the calibration batches
    model.train()
    side = 8 * config.size_divisor
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(2, 3, side, side))
    for norm in norms:
        norm.momentum = 0.1
    model.eval()


def selection_tokens(config: ModelConfig, height: int, width: int) -> int:
    """How many encoder tokens a ``height`` x ``width`` input gives a model that selects its queries from them (a
    top-k); None for models with learned queries."""
    return config.selection_tokens(height, width)


def architecture_name(config: ModelConfig) -> str:
    """The zoo-style name of an architecture, whatever its sizes: ``detr_r50_dc5``, ``deformable_detr_r50_refine``."""
    return config.architecture_name


def describe_config(config: ModelConfig) -> str:
    """One line for people: 'Deformable DETR (box refinement), ResNet-50, 20 classes, 300 queries, ...'."""
    return config.describe()


def config_to_dict(config: ModelConfig) -> dict:
    """A JSON-ready dict (``family`` plus every field) that ``config_from_dict`` reads back."""
    return {"family": config.family, **dataclasses.asdict(config)}


def config_from_dict(data: dict) -> ModelConfig:
    """Inverse of ``config_to_dict``; raises DetrDeployError for a family or field this version does not know."""
    data = dict(data)
    family = data.pop("family", None)
    # The families are those of the registered models (the zoo registers every family's configs).
    config_type = next((type(spec.config) for spec in _REGISTRY.values() if spec.config.family == family), None)
    if config_type is None:
        raise DetrDeployError(f"model config {family!r} is not one this version reads (unknown family)")
    try:
        return _dataclass_from_dict(config_type, data)
    except (TypeError, KeyError, AttributeError) as error:
        raise DetrDeployError(f"model config {family!r} is not one this version reads ({error})") from None


def _nested_type(config_type, name: str, default_type, value: dict):
    """The dataclass a nested config field holds: a config that takes several kinds (``<field>_types``, e.g. RT-DETR's
    ``backbone_types``) names the kind in the value; older exports without ``kind`` hold the default."""
    kind = value.get("kind")
    for candidate in getattr(config_type, f"{name}_types", (default_type,)):
        if (kind is None and candidate is default_type) or kind == getattr(candidate, "kind", None):
            return candidate
    raise KeyError(f"{name} kind {kind!r}")


def _dataclass_from_dict(config_type, data: dict):
    """A (possibly nested) config dataclass from its ``dataclasses.asdict``: nested configs are the fields whose
    default factory is a dataclass; JSON lists come back as the tuples the frozen configs hold."""
    nested = {
        item.name: item.default_factory
        for item in dataclasses.fields(config_type)
        if dataclasses.is_dataclass(item.default_factory)
    }
    values = {}
    for name, value in data.items():
        if name in nested and isinstance(value, dict):
            values[name] = _dataclass_from_dict(_nested_type(config_type, name, nested[name], value), value)
        else:
            values[name] = tuple(value) if isinstance(value, list) else value
    return config_type(**values)
