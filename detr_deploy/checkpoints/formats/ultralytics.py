"""Ultralytics ``.pt`` files (YOLO, RT-DETR): a pickled model, read without importing Ultralytics.

Ultralytics saves the whole model object, not a state dict. Its trainer writes ``{'epoch', 'best_fitness', 'model':
None, 'ema': <model in fp16>, 'updates', 'optimizer', 'train_args', 'train_metrics', 'date', 'version', ...}``
(``last.pt``, and ``best.pt`` mid-training); at the end ``strip_optimizer`` moves the EMA to ``model`` and drops
the optimizer and the EMA; ``Model.save`` writes ``{'model': <model in fp16>, 'ema': None, 'date', 'version',
'license', 'docs'}``, as held in memory (folded by ``fuse()`` when predict ran first). The model (an
``ultralytics.nn.tasks`` class) holds its YAML as a dict (``yaml``), its class names (``names``) and its layers as a
``torch.nn.Sequential`` (``model``), each layer tagged with its index (``i``) and inputs (``f``).

The restricted unpickler (``checkpoints.pickled``) stands an inert ``Placeholder`` in for every class, torch's
modules included, so nothing of Ultralytics is imported or run: a module arrives as its class name and its
``__dict__`` (``_parameters``, ``_buffers``, ``_modules`` and plain attributes such as a convolution's stride or a
batch norm's eps). ``PickledModule`` reads that; the weights are the tensors of ``_parameters`` and the persistent
``_buffers``, as ``state_dict()`` would list them.
"""

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from detr_deploy.checkpoints.pickled import Placeholder

# ``Checkpoint.source`` and ``Reader.format`` of these files.
SOURCE_ULTRALYTICS = "ultralytics"
FORMAT_ULTRALYTICS = "ultralytics"


@dataclass(frozen=True)
class PickledModule:
    """A torch module as unpickled into a ``Placeholder``: its class (``type_name``, e.g.
    ``ultralytics.nn.modules.conv.Conv``) and its ``__dict__`` (``attributes``)."""

    type_name: str
    attributes: Mapping

    @property
    def name(self) -> str:
        """The class name without its module: 'Conv', 'Conv2d', 'RTDETRDecoder'."""
        return self.type_name.rsplit(".", 1)[-1]

    def get(self, attribute: str, default=None):
        return self.attributes.get(attribute, default)

    @property
    def children(self) -> dict[str, "PickledModule"]:
        """The sub-modules, in registration order (deleted ones, e.g. a batch norm ``fuse()`` removed, are absent)."""
        found = {}
        for name, child in (self.attributes.get("_modules") or {}).items():
            module = pickled_module(child)
            if module is not None:
                found[name] = module
        return found

    def child(self, name: str) -> "PickledModule":
        return self.children.get(name)

    def has(self, name: str) -> bool:
        return name in self.children

    def tensors(self) -> dict[str, torch.Tensor]:
        """This module's own parameters and persistent buffers (not its children's), as ``state_dict`` names them."""
        skipped = set(self.attributes.get("_non_persistent_buffers_set") or ())
        own = {}
        for group in ("_parameters", "_buffers"):
            for name, tensor in (self.attributes.get(group) or {}).items():
                if isinstance(tensor, torch.Tensor) and name not in skipped:
                    own[name] = tensor
        return own

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Every tensor of this module and its children, keyed as ``module.state_dict()`` keys them."""
        state = {f"{prefix}{name}": tensor for name, tensor in self.tensors().items()}
        for name, child in self.children.items():
            state.update(child.state_dict(f"{prefix}{name}."))
        return state


def pickled_module(value) -> PickledModule:
    """``value`` as a ``PickledModule`` when it is an unpickled torch module (a Placeholder holding a module's
    ``__dict__``), else None."""
    if not isinstance(value, Placeholder) or not isinstance(value.state, Mapping) or "_modules" not in value.state:
        return None
    return PickledModule(value.qualified_name, value.state)


@dataclass(frozen=True)
class UltralyticsFile:
    """A loaded Ultralytics ``.pt``: the model whose weights count (``model``), where in the file it was
    (``weights_from``) and the file's metadata."""

    model: PickledModule
    weights_from: str
    content: Mapping

    @property
    def layers(self) -> list[PickledModule]:
        """The model's layers in order (``model.model``, an ``nn.Sequential``)."""
        sequence = self.model.child("model")
        return list(sequence.children.values()) if sequence is not None else []

    @property
    def yaml(self) -> dict:
        value = self.model.get("yaml")
        return value if isinstance(value, Mapping) else {}

    @property
    def yaml_name(self) -> str:
        """The YAML's file name ('rtdetr-l.yaml'), or '' when the file does not record it."""
        path = str(self.yaml.get("yaml_file") or "")
        return path.replace("\\", "/").rsplit("/", 1)[-1]

    @property
    def version(self) -> str:
        return str(self.content.get("version") or "unknown")

    @property
    def kind(self) -> str:
        """What wrote the file, as its keys show."""
        if pickled_module(self.content.get("ema")) is not None:
            return "a trainer checkpoint (last.pt, or best.pt while training)"
        if "epoch" in self.content:
            return (
                "a finished training's best.pt/last.pt (strip_optimizer: the EMA moved to 'model'), or a model saved "
                "from one"
            )
        return "a Model.save file"

    @property
    def image_size(self):
        """The training ``imgsz`` (``train_args``, else the model's ``args``), None when the file has neither."""
        for args in (self.content.get("train_args"), self.model.get("args")):
            if isinstance(args, Mapping) and args.get("imgsz") is not None:
                return args["imgsz"]
        return None

    def names(self, count: int) -> tuple[str, ...]:
        """The class names the model holds (``names``: a dict by label, or a list), None when it has none for each
        of ``count`` labels."""
        names = self.model.get("names")
        if isinstance(names, Mapping):
            try:
                names = [names[index] for index in range(count)]
            except KeyError:
                return None
        if not isinstance(names, (list, tuple)) or len(names) != count:
            return None
        return tuple(str(name) for name in names)


def ultralytics_file(content) -> UltralyticsFile:
    """The ``UltralyticsFile`` of a loaded ``.pt``, None when it is not one: its ``ema`` (what the trainer's
    checkpoints hold, as Ultralytics itself resumes and strips them) when it has one, else its ``model``, an
    ``ultralytics.*`` module either way."""
    if not isinstance(content, Mapping):
        return None
    for key, origin in (
        ("ema", "EMA ('ema', the weights Ultralytics validates and keeps)"),
        ("model", "'model' (the file has no EMA)"),
    ):
        module = pickled_module(content.get(key))
        if module is not None and module.type_name.startswith("ultralytics."):
            return UltralyticsFile(module, origin, content)
    return None
