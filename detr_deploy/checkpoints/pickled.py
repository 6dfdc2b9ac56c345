"""Reading pickled checkpoints (``.pth``, ``.bin``) without running the code a pickle names.

Training checkpoints carry more than weights: the official code pickles its ``argparse.Namespace``, mmengine its
message hub (``HistoryBuffer`` objects, numpy arrays), optimizers their state. PyTorch's ``weights_only`` loader
reads tensors, containers and the Namespace. Anything else it refuses; for those files a second unpickler stands a
``Placeholder`` in for every class outside an allow-list, so the weights and plain metadata are read and nothing a
pickle names is imported or called.
"""

import _compat_pickle
import argparse
import pickle
from pathlib import Path

import torch

from detr_deploy.errors import DetrDeployError

# Globals a checkpoint may name that are safe and needed: containers, the Namespace, and torch's own rebuilders.
_ALLOWED_MODULE_PREFIXES = (
    "torch._utils",
    "torch._tensor",
    "torch.nn.parameter",
    "torch.storage",
    "torch.serialization",
)
_ALLOWED = {
    ("collections", "OrderedDict"),
    ("collections", "defaultdict"),
    ("argparse", "Namespace"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "tuple"),
    ("builtins", "list"),
    ("builtins", "dict"),
    ("builtins", "slice"),
    ("torch", "Size"),
    ("torch", "device"),
    ("torch", "dtype"),
}


class Placeholder:
    """Stands in for an object of a class we do not import (``module.name``); keeps what the pickle gave it."""

    qualified_name = "?"

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state):
        self.state = state

    def __call__(self, *args, **kwargs):
        return type(self)(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<{self.qualified_name} (not loaded)>"


def _placeholder_class(module: str, name: str) -> type:
    return type(f"Placeholder[{module}.{name}]", (Placeholder,), {"qualified_name": f"{module}.{name}"})


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        # Protocol 2 pickles (torch.save's default) name builtins the Python 2 way (``__builtin__.set``): the names
        # pickle itself maps before the allow-list applies.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        allowed = (module, name) in _ALLOWED or module.startswith(_ALLOWED_MODULE_PREFIXES)
        # torch's storage and dtype classes (torch.FloatStorage, torch.float32) live directly in ``torch``.
        if module == "torch" and (name.endswith("Storage") or isinstance(getattr(torch, name, None), torch.dtype)):
            allowed = True
        if allowed:
            return super().find_class(module, name)
        return _placeholder_class(module, name)


class _RestrictedPickleModule:
    """What ``torch.load(pickle_module=...)`` needs: an Unpickler class and ``load``."""

    Unpickler = _RestrictedUnpickler
    __name__ = "detr_deploy_restricted_pickle"

    @staticmethod
    def load(file, **kwargs):
        return _RestrictedUnpickler(file, **kwargs).load()


def load_pickled(path: Path):
    """The object pickled in ``path`` (a torch .pth/.bin), tensors on the CPU; unknown classes become Placeholders.

    Raises DetrDeployError for a file torch cannot read (truncated, not a checkpoint)."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # a global outside the weights-only allow-list: read again with placeholders
    except Exception as error:  # torch raises many types for a file that is not a checkpoint
        raise _unreadable(path, error) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RestrictedPickleModule)
    except Exception as error:
        raise _unreadable(path, error) from None


def _unreadable(path: Path, error: Exception) -> DetrDeployError:
    reason = " ".join(str(error).split()) or type(error).__name__
    return DetrDeployError(
        f"cannot read checkpoint {path}: {reason}; expected a PyTorch checkpoint (.pth/.bin) of the official code,"
        " mmdetection or transformers, an Ultralytics .pt, or a transformers directory"
    )
