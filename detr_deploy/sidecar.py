"""The engine's description: ``MODEL.engine.json`` beside ``MODEL.engine``.

A TensorRT engine is opaque and tied to one TensorRT version and one GPU architecture. The sidecar says what it is
(the ONNX metadata of the model, I/O, the shape profile, precision), what it was built with (TensorRT flavour and
version, target compute capability, the plugin library and its checksum) and the engine's own checksum, so that a
runner can refuse a mismatch with a clear message before TensorRT fails obscurely.
"""

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from detr_deploy.errors import DetrDeployError
from detr_deploy.io import sha256_of

SIDECAR_FORMAT = "detr_deploy.engine/1"
SIDECAR_SUFFIX = ".json"


def sidecar_path(engine_path) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + SIDECAR_SUFFIX)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: list[int]  # -1 for dynamic dimensions


@dataclass(frozen=True)
class ShapeProfile:
    """min / opt / max shapes of one input, as trtexec's --minShapes/--optShapes/--maxShapes."""

    min: list[int]
    opt: list[int]
    max: list[int]

    def contains(self, shape) -> bool:
        return len(shape) == len(self.min) and all(lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max))

    def describe(self) -> str:
        return " to ".join("x".join(map(str, dims)) for dims in (self.min, self.max))


@dataclass(frozen=True)
class PluginInfo:
    library: str  # file name; the runner finds it by name (or is given a path)
    sha256: str
    name: str
    namespace: str
    version: str


@dataclass(frozen=True)
class EngineSidecar:
    engine_file: str
    engine_sha256: str
    engine_bytes: int
    tensorrt_flavour: str  # "tensorrt" or "tensorrt-rtx"
    tensorrt_version: str
    compute_capability: str  # "8.9"
    ahead_of_time: bool
    precision: str  # fp32 / fp16 / bf16 / int8
    fp32_ops: dict[str, int]  # op type -> nodes kept in fp32 by the precision pass
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    profile: dict[str, ShapeProfile]  # input name -> shapes
    msda_path: str  # "plugin", "onnx-function" (the fallback body, inlined by the parser), or "none"
    msda_nodes: int
    plugin: PluginInfo = None
    model: dict[str, str] = field(default_factory=dict)  # the ONNX file's metadata_props
    source_onnx: str = ""
    source_onnx_sha256: str = ""
    workspace_mib: int = None
    build_seconds: float = 0.0
    detr_deploy_version: str = ""
    # INT8 engines: how the graph was quantized (contract.META_QUANTIZATION): tool, calibration, and the parts kept
    # in higher precision.
    quantization: dict = None
    format: str = SIDECAR_FORMAT

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> "EngineSidecar":
        data = dict(data)
        data["inputs"] = [TensorInfo(**item) for item in data["inputs"]]
        data["outputs"] = [TensorInfo(**item) for item in data["outputs"]]
        data["profile"] = {name: ShapeProfile(**shapes) for name, shapes in data["profile"].items()}
        data["plugin"] = PluginInfo(**data["plugin"]) if data.get("plugin") else None
        sidecar = cls(**data)
        _check_field_types(sidecar)
        return sidecar


def _is_int_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(item, int) and not isinstance(item, bool) for item in value)


# What each annotated field type must hold once read from JSON (bool is an int in Python: refused where int is meant).
_TYPE_CHECKS = {
    str: lambda value: isinstance(value, str),
    int: lambda value: isinstance(value, int) and not isinstance(value, bool),
    float: lambda value: isinstance(value, (int, float)) and not isinstance(value, bool),
    bool: lambda value: isinstance(value, bool),
    list[int]: _is_int_list,
    dict[str, int]: lambda value: isinstance(value, dict) and all(isinstance(v, int) for v in value.values()),
    dict[str, str]: lambda value: isinstance(value, dict) and all(isinstance(v, str) for v in value.values()),
}


def _check_field_types(record) -> None:
    """Raise TypeError naming the first field of ``record`` (and of the records inside it) whose JSON value has
    another type than its annotation says: a hand-edited or foreign file must fail here, not deep in the runner."""
    for item in dataclasses.fields(record):
        value = getattr(record, item.name)
        if dataclasses.is_dataclass(value):
            _check_field_types(value)
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            for element in value:
                _check_field_types(element)
        elif isinstance(value, dict) and value and dataclasses.is_dataclass(next(iter(value.values()))):
            for element in value.values():
                _check_field_types(element)
        elif value is None and item.default is not None:
            raise TypeError(f"field {item.name!r} is null")
        elif value is not None and item.type in _TYPE_CHECKS and not _TYPE_CHECKS[item.type](value):
            raise TypeError(f"field {item.name!r} holds {value!r}, not a {getattr(item.type, '__name__', item.type)}")


def read_sidecar(engine_path) -> EngineSidecar:
    """Read and validate ``<engine>.json``; the engine file must be the one it describes (size and sha256)."""
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        raise DetrDeployError(f"engine {engine_path} does not exist")
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise DetrDeployError(
            f"{path.name} is missing beside {engine_path}; engines built by 'cli.py build-engine' carry one: rebuild it"
        )
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DetrDeployError(
            f"{path} is not UTF-8 JSON ({error}); rebuild the engine to get its description"
        ) from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise DetrDeployError(f"{path} is not a detr_deploy engine description (format {found!r}); rebuild the engine")
    try:
        sidecar = EngineSidecar.from_dict(data)
    except (TypeError, KeyError, AttributeError, ValueError) as error:
        reason = f"missing field {error}" if isinstance(error, KeyError) else str(error)
        raise DetrDeployError(f"{path} is not a valid engine description ({reason}); rebuild the engine") from None
    size = engine_path.stat().st_size
    if size != sidecar.engine_bytes or sha256_of(engine_path) != sidecar.engine_sha256:
        raise DetrDeployError(
            f"{engine_path} does not match {path.name} (it describes {sidecar.engine_file}, sha256 "
            f"{sidecar.engine_sha256[:12]}..., {sidecar.engine_bytes} bytes); keep each engine with its own .json"
        )
    return sidecar
