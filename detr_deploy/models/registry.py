"""A flat registry of named model variants. Registering a name twice is refused."""

from dataclasses import dataclass
from typing import Union

import torch
from torch import nn

from detr_deploy.errors import DetrDeployError
from detr_deploy.models.deformable_detr import DeformableDETRConfig, build_deformable_detr
from detr_deploy.models.detr import DETRConfig, build_detr

ModelConfig = Union[DETRConfig, DeformableDETRConfig]

_BUILDERS = {DETRConfig: build_detr, DeformableDETRConfig: build_deformable_detr}


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
    if type(config) not in _BUILDERS:
        raise TypeError(f"no builder for config type {type(config).__name__}")
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
            model = _BUILDERS[type(config)](config)
    else:
        model = _BUILDERS[type(config)](config)
    return model.eval()
