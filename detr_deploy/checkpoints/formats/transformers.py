"""Directories transformers' ``save_pretrained`` writes, whatever the model in them: ``config.json`` and the
weights (``model.safetensors``, ``pytorch_model.bin``, or shards listed in ``model.safetensors.index.json`` /
``pytorch_model.bin.index.json``). transformers itself is not imported.

Two key layouts exist for every model: transformers 4.x names (``self_attn.out_proj``, ``fc1``/``fc2``), which 4.x
wrote, the hub holds, and 5.x's ``save_pretrained`` writes too (it reverses its conversion mapping on save), and 5.x
module names (``o_proj``, ``mlp.fc1``) in files saved from ``model.state_dict()``. Two config styles exist too:
4.x's flat backbone fields (``use_timm_backbone``, ``backbone``) and 5.x's nested ``backbone_config``.
"""

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from detr_deploy.checkpoints.keymap import count_indices, rename_keys
from detr_deploy.errors import DetrDeployError
from detr_deploy.io import sha256_of

CONFIG_NAME = "config.json"
# The weight files save_pretrained writes, in the order transformers' from_pretrained prefers them.
WEIGHT_NAMES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)

# A state dict in a transformers layout (4.x or 5.x names, detection or segmentation model).
_TRANSFORMERS_KEY = re.compile(
    r"(?:detr\.)?(?:model\.(?:backbone\.(?:conv_encoder\.)?model\.|encoder\.layers\.\d+\.|decoder\.layers\.\d+\."
    r"|input_projection\.|query_position_embeddings\.)|class_labels_classifier\.|bbox_predictor\.)"
)
# Module names that only transformers 5.x has (its conversion mapping renames them from the 4.x names on load).
FIVE_X_DETR_STYLE_KEY = re.compile(
    r".*(?:\bmodel\.backbone\.model\.|\.o_proj\.|\.mlp\.fc[12]\.|mask_head\.fpn_stages\.)"
)

# transformers 5.x module names -> 4.x names (the reverse of transformers' conversion_mapping.py entries
# "DetrModel", "deformable_detr" and "DetrForSegmentation").
FIVE_TO_FOUR_DETR_STYLE = [
    (r"(.*\bmodel\.backbone\.)model\.(.*)", r"\1conv_encoder.model.\2"),
    (r"(.*\.layers\.\d+\.(?:self_attn|encoder_attn))\.o_proj\.(weight|bias)", r"\1.out_proj.\2"),
    (r"(.*\.layers\.\d+)\.mlp\.(fc[12])\.(weight|bias)", r"\1.\2.\3"),
    (r"bbox_attention\.([qk])_proj\.(weight|bias)", r"bbox_attention.\1_linear.\2"),
    (r"mask_head\.conv([12])\.conv\.(weight|bias)", r"mask_head.lay\1.\2"),
    (r"mask_head\.conv([12])\.norm\.(weight|bias)", r"mask_head.gn\1.\2"),
    (r"mask_head\.output_conv\.(weight|bias)", r"mask_head.out_lay.\1"),
] + [
    rule
    for stage in range(3)
    for rule in (
        (rf"mask_head\.fpn_stages\.{stage}\.fpn_adapter\.(weight|bias)", rf"mask_head.adapter{stage + 1}.\1"),
        (rf"mask_head\.fpn_stages\.{stage}\.refine\.conv\.(weight|bias)", rf"mask_head.lay{stage + 3}.\1"),
        (rf"mask_head\.fpn_stages\.{stage}\.refine\.norm\.(weight|bias)", rf"mask_head.gn{stage + 3}.\1"),
    )
]


def is_transformers_state(state: Mapping) -> bool:
    """A bare state dict in a transformers layout (4.x or 5.x names): ``model.backbone.*``, ``model.encoder.*``,
    ``class_labels_classifier.*`` and the like, also under DetrForSegmentation's ``detr.``."""
    return any(isinstance(key, str) and _TRANSFORMERS_KEY.match(key) for key in state)


def is_transformers_path(path: Path) -> bool:
    """Whether ``path`` names a transformers directory: the directory, its config.json, a .safetensors file, or a
    .bin/.json beside a config.json."""
    beside_config = path.is_file() and (path.parent / CONFIG_NAME).is_file() and path.suffix in (".bin", ".json")
    return path.is_dir() or path.name == CONFIG_NAME or path.suffix == ".safetensors" or beside_config


@dataclass(frozen=True)
class TransformersFolder:
    """A save_pretrained directory: ``config`` is its config.json; the weights are found and loaded on first use.
    ``given`` is what the user named (the directory, its config.json or a .safetensors file in it)."""

    directory: Path
    given: Path
    config: dict

    @classmethod
    def open(cls, given: Path) -> "TransformersFolder":
        """Read config.json of the directory ``given`` names; DetrDeployError when there is none or it is no JSON
        object."""
        given = Path(given)
        directory = given if given.is_dir() else given.parent
        config_path = directory / CONFIG_NAME
        if not config_path.is_file():
            if given.suffix == ".safetensors":
                raise DetrDeployError(
                    f"{given} has no config.json beside it: transformers weights need the config.json "
                    "save_pretrained wrote; put it in the same directory"
                )
            raise DetrDeployError(
                f"{directory} has no config.json: give a directory written by save_pretrained (config.json plus "
                "model.safetensors or pytorch_model.bin), or an official .pth checkpoint"
            )
        return cls(directory, given, _read_json(config_path))

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type"))

    @property
    def source(self) -> str:
        """How messages name the checkpoint."""
        return self.given.name if self.given.suffix == ".safetensors" else self.directory.name

    @property
    def checkpoint_path(self) -> Path:
        """``Checkpoint.path``: the .safetensors file given, else the directory."""
        return self.given if self.given.suffix == ".safetensors" else self.directory

    @cached_property
    def _files(self) -> tuple[list[Path], str]:
        return _weight_files(self.directory, self.given)

    @property
    def weights_label(self) -> str:
        """How ``read_from`` names the weight files."""
        return self._files[1]

    @cached_property
    def weights(self) -> dict[str, torch.Tensor]:
        """Every tensor of the weight files, in one dict, on the CPU."""
        return _load_weights(self._files[0])

    @cached_property
    def digest(self) -> str:
        files = self._files[0]
        return sha256_of(files[0]) if len(files) == 1 else _shards_digest(files)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        reason = " ".join(str(error).split())
        raise DetrDeployError(f"cannot read {path}: {reason}; expected the JSON file save_pretrained writes") from None
    if not isinstance(data, dict):
        raise DetrDeployError(f"{path} is not a transformers config (expected a JSON object)")
    return data


def _weight_files(directory: Path, given: Path) -> tuple[list[Path], str]:
    """(weight files, how to name them) of ``directory``; a .safetensors ``given`` is read alone unless it is a
    shard of the directory's index."""
    index = directory / "model.safetensors.index.json"
    if given.suffix == ".safetensors":
        if index.is_file() and given.name in _index_shards(index):
            return _shard_files(directory, index)
        return [given], given.name
    for name in WEIGHT_NAMES:
        candidate = directory / name
        if candidate.is_file():
            return _shard_files(directory, candidate) if name.endswith(".index.json") else ([candidate], name)
    others = sorted(path.name for path in directory.iterdir() if path.suffix in (".h5", ".msgpack", ".ckpt"))
    found = f" (found {', '.join(others)}: only PyTorch weights are read)" if others else ""
    raise DetrDeployError(
        f"{directory} has config.json but no weights{found}: expected model.safetensors, pytorch_model.bin or a "
        "sharded index (model.safetensors.index.json); copy the weight files save_pretrained wrote beside it"
    )


def _index_shards(index: Path) -> list[str]:
    """The shard file names an index lists, sorted."""
    weight_map = _read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise DetrDeployError(f"{index} has no weight_map: it is not a sharded-checkpoint index of save_pretrained")
    return sorted(set(map(str, weight_map.values())))


def _shard_files(directory: Path, index: Path) -> tuple[list[Path], str]:
    files = [directory / name for name in _index_shards(index)]
    missing = [path.name for path in files if not path.is_file()]
    if missing:
        raise DetrDeployError(
            f"{index} lists {len(files)} shards but {len(missing)} are missing ({', '.join(missing[:3])}); "
            "copy every shard save_pretrained wrote"
        )
    return files, f"{len(files)} shards ({index.name})"


def _shards_digest(files: list[Path]) -> str:
    """sha256 over the shards' sha256 hex digests, one per line, in file-name order: one identity for the set."""
    lines = "".join(f"{sha256_of(path)}\n" for path in sorted(files, key=lambda path: path.name))
    return hashlib.sha256(lines.encode("ascii")).hexdigest()


def _load_weights(files: list[Path]) -> dict[str, torch.Tensor]:
    """Every tensor of ``files`` (safetensors, or pickled .bin read without running code) in one dict, on the CPU."""
    state = {}
    for path in files:
        if path.suffix == ".safetensors":
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            try:
                part = load_file(path, device="cpu")
            except (SafetensorError, OSError, ValueError) as error:
                reason = " ".join(str(error).split()) or type(error).__name__
                raise DetrDeployError(
                    f"cannot read {path}: {reason}; is the file complete (not a git-lfs pointer)?"
                ) from None
        else:
            from detr_deploy.checkpoints.pickled import load_pickled

            part = load_pickled(path)
            if not isinstance(part, Mapping) or not all(isinstance(value, torch.Tensor) for value in part.values()):
                raise DetrDeployError(f"{path} is not a transformers state dict (expected a dict of tensors)")
        state.update(part)
    return state


def config_style(config: dict) -> str:
    """How config.json describes the backbone: 4.x's flat fields (4.x always writes ``use_timm_backbone``; configs
    older than that field have ``backbone`` alone) or 5.x's nested ``backbone_config`` (``timm_backbone`` or
    ``resnet``)."""
    nested = config.get("backbone_config")
    if "use_timm_backbone" in config or not isinstance(nested, dict):
        kind = "use_timm_backbone false" if config.get("use_timm_backbone") is False else "use_timm_backbone true"
        return f"config: transformers 4.x style (flat backbone fields, {kind})"
    return f"config: transformers 5.x style (nested backbone_config of model_type {nested.get('model_type')!r})"


def written_by(config: dict) -> str:
    """The major version (``5.x``, ``4.x``) of the transformers that wrote config.json, else guessed from its style."""
    version = str(config.get("transformers_version", ""))
    if version[:1].isdigit():
        return f"{version.split('.')[0]}.x"
    return "4.x" if "use_timm_backbone" in config or not isinstance(config.get("backbone_config"), dict) else "5.x"


def declared_architecture(config: dict, inferred: str) -> str:
    """The transformers class config.json's ``architectures`` names, else ``inferred`` (from the weights)."""
    return str((config.get("architectures") or [inferred])[0])


class ConfigValues:
    """config.json's fields with transformers' ``defaults`` for those it leaves out; ``model_label`` names the
    zoo model in refusals ("the zoo's DETR")."""

    def __init__(self, config: dict, defaults: dict, source: str, model_label: str):
        self.config, self.defaults, self.source, self.model_label = config, defaults, source, model_label

    def __getitem__(self, name: str):
        value = self.config.get(name)
        return self.defaults.get(name) if value is None else value

    def same(self, first: str, second: str):
        """The value of two fields the zoo modules keep as one (encoder/decoder heads, FFN widths)."""
        if self[first] != self[second]:
            raise self.unsupported(f"{first} {self[first]} differs from {second} {self[second]}")
        return self[first]

    def unsupported(self, what: str) -> DetrDeployError:
        return DetrDeployError(
            f"checkpoint {self.source}: config.json has {what}, which {self.model_label} cannot express (it has the "
            "official architecture); this checkpoint cannot be exported"
        )


def check_detr_style_config(values: ConfigValues) -> None:
    if values["position_embedding_type"] != "sine":
        raise values.unsupported(f"position_embedding_type {values['position_embedding_type']!r} (only 'sine')")
    if values["activation_function"] != "relu":
        raise values.unsupported(f"activation_function {values['activation_function']!r} (only 'relu')")
    if values["num_channels"] != 3:
        raise values.unsupported(f"num_channels {values['num_channels']} (only 3, RGB)")
    for name in ("normalize_before", "pre_norm"):
        if values.config.get(name):
            raise values.unsupported(f"{name} true (pre-norm layers; only the official post-norm)")


def same_setting(value, expected) -> bool:
    """Whether config.json's ``value`` is the setting ``expected`` (a JSON list equals a list or tuple; floats within
    1e-12)."""
    if isinstance(expected, (list, tuple)):
        return isinstance(value, (list, tuple)) and list(value) == list(expected)
    if isinstance(expected, float):
        return isinstance(value, (int, float)) and abs(value - expected) <= 1e-12
    return value == expected


def differing_setting(config: Mapping, fixed: Mapping[str, tuple], prefix: str = "") -> str | None:
    """The first setting of ``fixed`` (config.json name -> (the value our model has, what it is)) that ``config``
    gives another value, said for a refusal (``prefix`` names a nested config); None when none does."""
    for name, (expected, what) in fixed.items():
        value = config.get(name)
        if value is not None and not same_setting(value, expected):
            return f"{prefix}{name} {value!r} ({what}; ours has {expected!r})"
    return None


def check_size(source: str, what: str, config_value, tensor_value) -> None:
    if config_value != tensor_value:
        raise DetrDeployError(
            f"checkpoint {source}: config.json says {what} {config_value} but the weights have {tensor_value}; "
            "the directory mixes files of two models"
        )


def required_tensor(state: Mapping, key: str, source: str) -> torch.Tensor:
    if key not in state:
        raise DetrDeployError(f"checkpoint {source} has no {key} tensor (after renaming); is the file complete?")
    return state[key]


def counted_layers(state: Mapping, prefix: str, values: ConfigValues, field: str, source: str) -> int:
    """config.json's layer count ``field``, checked against the layers under ``prefix``."""
    check_size(source, field, values[field], count_indices(state, rf"{re.escape(prefix)}\.layers\.(\d+)\."))
    return values[field]


def id2label_class_names(config: dict, num_classes: int, source: str, read_from: list) -> tuple[str, ...]:
    """Names by label from ``id2label``, which must name exactly the class head's labels."""
    id2label = config.get("id2label")
    labels = config.get("num_labels", len(id2label) if isinstance(id2label, dict) else None)
    if labels is not None and labels != num_classes:
        raise DetrDeployError(
            f"checkpoint {source}: config.json has {labels} labels but the class head predicts {num_classes} "
            "classes; the directory mixes files of two models"
        )
    if not isinstance(id2label, dict):
        read_from.append("classes: none named (config.json has no id2label)")
        return None
    keys = {str(key) for key in id2label}
    if keys != {str(index) for index in range(num_classes)}:
        raise DetrDeployError(
            f"checkpoint {source}: config.json's id2label does not name labels 0..{num_classes - 1} "
            f"(it has {len(keys)} entries); fix id2label to list every label of the class head"
        )
    names = tuple(str(id2label[str(index)]) for index in range(num_classes))
    if names == tuple(f"LABEL_{index}" for index in range(num_classes)):
        # transformers' placeholders (a config made without id2label, e.g. the hub's DETR-panoptic): not names.
        read_from.append("classes: none named (id2label holds transformers' placeholders LABEL_<i>)")
        return None
    read_from.append(f"classes: id2label ({num_classes} names)")
    return names


# config.json defaults transformers' DetrConfig and DeformableDetrConfig share.
DETR_STYLE_DEFAULTS = {
    "activation_function": "relu",
    "position_embedding_type": "sine",
    "dilation": False,
    "num_channels": 3,
    "backbone": "resnet50",
    "use_timm_backbone": True,
}


def detr_style_state(folder: TransformersFolder) -> tuple[dict, str]:
    """(the weights in 4.x names without batch-norm counters, the ``read_from`` line saying which names the file
    had) of a DETR-style model (DETR, DETR-panoptic, Deformable DETR)."""
    raw = folder.weights
    five_x_keys = any(FIVE_X_DETR_STYLE_KEY.match(key) for key in raw)
    state = rename_keys(raw, FIVE_TO_FOUR_DETR_STYLE + [(r".*\.num_batches_tracked", "")])
    return state, f"keys: transformers {'5.x' if five_x_keys else '4.x'} names"


def refuse_bare_model(folder: TransformersFolder, architecture: str, bare: tuple, heads: str) -> None:
    """A transformers ``...Model`` (``bare``) holds no detection heads: say to save the ``heads`` class."""
    if architecture in bare:
        raise DetrDeployError(
            f"{folder.directory} holds a transformers {architecture} (backbone and transformer without detection "
            f"heads): save a {heads}"
        )


def detr_style_read_from(folder: TransformersFolder, architecture: str, keys_line: str) -> list[str]:
    """The first ``read_from`` lines of a DETR-style directory: format, weight files, key names, config style."""
    return [
        f"format: transformers {written_by(folder.config)} directory ({architecture})",
        f"weights: {folder.weights_label}",
        keys_line,
        config_style(folder.config),
    ]
