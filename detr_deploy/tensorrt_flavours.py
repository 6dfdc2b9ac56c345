"""Which TensorRT: the full TensorRT (``pip install tensorrt``, builds on the GPU it runs on) or TensorRT-RTX
(``pip install tensorrt-rtx-cu13-bindings tensorrt-rtx-cu13-libs``, also builds ahead of time for a chosen compute
capability on a machine with no GPU). Both have the same Python API for what we use; only imports differ.
"""

import importlib
import importlib.util

from detr_deploy.errors import DetrDeployError

TENSORRT = "tensorrt"
TENSORRT_RTX = "tensorrt-rtx"
FLAVOURS = (TENSORRT, TENSORRT_RTX)
BACKEND_CHOICES = ("auto", *FLAVOURS)
_MODULES = {TENSORRT: "tensorrt", TENSORRT_RTX: "tensorrt_rtx_bindings"}
_INSTALL = {
    TENSORRT: "pip install tensorrt",
    TENSORRT_RTX: "pip install tensorrt-rtx-cu13-bindings tensorrt-rtx-cu13-libs",
}


def is_installed(flavour: str) -> bool:
    return importlib.util.find_spec(_MODULES[flavour]) is not None


def resolve_flavour(backend: str, *, ahead_of_time: bool = False) -> str:
    """``auto`` -> TensorRT when installed, else TensorRT-RTX; ahead-of-time builds need TensorRT-RTX."""
    if backend not in BACKEND_CHOICES:
        raise DetrDeployError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKEND_CHOICES)}")
    if ahead_of_time:
        if backend == TENSORRT:
            raise DetrDeployError(
                "--compute-capability (ahead-of-time builds) needs TensorRT-RTX; use --backend tensorrt-rtx"
            )
        backend = TENSORRT_RTX
    if backend == "auto":
        backend = next((flavour for flavour in FLAVOURS if is_installed(flavour)), TENSORRT)
        if not is_installed(backend):
            raise DetrDeployError(
                f"neither TensorRT nor TensorRT-RTX is installed; run: {_INSTALL[TENSORRT]} "
                f"(or {_INSTALL[TENSORRT_RTX]})"
            )
    if not is_installed(backend):
        raise DetrDeployError(f"{backend} is not installed; run: {_INSTALL[backend]}")
    return backend


def import_flavour(flavour: str):
    """The TensorRT Python module of ``flavour``."""
    if flavour not in FLAVOURS:
        raise DetrDeployError(f"unknown TensorRT flavour {flavour!r}; expected one of: {', '.join(FLAVOURS)}")
    try:
        return importlib.import_module(_MODULES[flavour])
    except ImportError:
        raise DetrDeployError(f"{flavour} is not installed; run: {_INSTALL[flavour]}") from None


def numpy_dtype_name(data_type) -> str:
    """TensorRT DataType -> the numpy-style name the sidecar records."""
    names = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT32": "int32", "INT64": "int64"}
    names.update({"INT8": "int8", "UINT8": "uint8", "BOOL": "bool"})
    return names.get(data_type.name, data_type.name.lower())
