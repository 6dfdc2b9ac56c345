"""Building and finding our TensorRT plugin library (sources and CMake project in ``plugins/``)."""

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from detr_deploy.errors import DetrDeployError

PLUGIN_SOURCES = Path(__file__).resolve().parents[1] / "plugins"
DEFAULT_BUILD_DIR = PLUGIN_SOURCES / "build"
PLUGIN_LIBRARY = "libdetr_deploy_plugins.so"
CPU_LIBRARY = "libdetr_msda_cpu.so"
CUDA_LIBRARY = "libdetr_msda_cuda.so"


@dataclass
class PluginBuild:
    build_dir: Path
    cpu_library: Path
    cuda_library: Path = None
    plugin_library: Path = None
    # Why a library was not built, as CMake said it ("nvcc not found", "TensorRT headers not found", ...).
    skipped: list[str] = field(default_factory=list)
    # What CMake and the compilers printed (configure, then build).
    log: str = ""


def _run(command: list[str]) -> str:
    try:
        completed = subprocess.run(command, capture_output=True, text=True)
    except FileNotFoundError:
        raise DetrDeployError(
            f"{command[0]} is not installed; install CMake 3.18 or newer and a C++ compiler"
        ) from None
    output = completed.stdout + completed.stderr
    if completed.returncode != 0:
        tail = " | ".join(line.strip() for line in output.strip().splitlines()[-3:])
        raise DetrDeployError(f"'{' '.join(command[:3])} ...' failed: {tail}")
    return output


def build_plugins(
    build_dir=None,
    *,
    tensorrt_include=None,
    cuda: bool = True,
    cuda_architectures: str = None,
) -> PluginBuild:
    """Configure and build ``plugins/`` with CMake. What cannot be built here (no nvcc, no TensorRT headers) is
    skipped, and ``PluginBuild.skipped`` says why. ``tensorrt_include``: TensorRT's ``include/`` folder (else
    ``TENSORRT_ROOT`` / ``TENSORRT_INCLUDE_DIR`` from the environment are used)."""
    if not (PLUGIN_SOURCES / "CMakeLists.txt").is_file():
        raise DetrDeployError(f"plugin sources not found in {PLUGIN_SOURCES}; build from a checkout of detr-deploy")
    if shutil.which("cmake") is None:
        raise DetrDeployError("cmake is not installed; install CMake 3.18 or newer")
    build_dir = Path(build_dir or DEFAULT_BUILD_DIR)
    configure = ["cmake", "-S", str(PLUGIN_SOURCES), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release"]
    if tensorrt_include is not None:
        include = Path(tensorrt_include)
        if not (include / "NvInferRuntime.h").is_file():
            raise DetrDeployError(f"{include} holds no NvInferRuntime.h; give TensorRT's include/ folder")
        configure.append(f"-DTENSORRT_INCLUDE_DIR={include}")
    configure.append(f"-DDETR_DEPLOY_CUDA={'ON' if cuda else 'OFF'}")
    if cuda_architectures:
        if not re.fullmatch(r"native|all|all-major|\d+[af]?(;\d+[af]?)*", cuda_architectures):
            raise DetrDeployError(f"malformed CUDA architectures {cuda_architectures!r}; write e.g. 80;90")
        configure.append(f"-DCMAKE_CUDA_ARCHITECTURES={cuda_architectures}")
    configured = _run(configure)
    built_log = _run(["cmake", "--build", str(build_dir), "-j", str(os.cpu_count() or 2)])
    skipped = re.findall(r"detr_deploy: skipping (.*)", configured)
    built = {name: build_dir / name for name in (CPU_LIBRARY, CUDA_LIBRARY, PLUGIN_LIBRARY)}
    return PluginBuild(
        build_dir=build_dir,
        cpu_library=built[CPU_LIBRARY],
        cuda_library=built[CUDA_LIBRARY] if built[CUDA_LIBRARY].is_file() else None,
        plugin_library=built[PLUGIN_LIBRARY] if built[PLUGIN_LIBRARY].is_file() else None,
        skipped=[reason.strip() for reason in skipped],
        log=configured + built_log,
    )


def find_plugin_library(build_dir=None) -> Path:
    """The built ``libdetr_deploy_plugins.so`` (``DETR_DEPLOY_PLUGIN`` overrides), or None when there is none."""
    override = os.environ.get("DETR_DEPLOY_PLUGIN")
    if override:
        return Path(override) if Path(override).is_file() else None
    candidate = Path(build_dir or DEFAULT_BUILD_DIR) / PLUGIN_LIBRARY
    return candidate if candidate.is_file() else None
