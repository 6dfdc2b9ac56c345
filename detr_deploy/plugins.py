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
# Registers PLUGIN_LIBRARY's creators when dlopen()ed (Triton's tensorrt backend, trtexec --plugins, DeepStream);
# it needs PLUGIN_LIBRARY beside it.
REGISTERING_LIBRARY = "libdetr_deploy_plugins_autoreg.so"
CPU_LIBRARY = "libdetr_msda_cpu.so"
CUDA_LIBRARY = "libdetr_msda_cuda.so"


@dataclass
class PluginBuild:
    build_dir: Path
    cpu_library: Path
    cuda_library: Path = None
    plugin_library: Path = None
    registering_library: Path = None  # REGISTERING_LIBRARY, built with plugin_library
    # Why a library was not built, as CMake said it ("nvcc not found", "TensorRT headers not found", ...).
    skipped: list[str] = field(default_factory=list)
    # What CMake and the compilers printed (configure, then build).
    log: str = ""


def find_nvcc() -> Path | None:
    """nvcc as CMake would find it: ``CUDACXX``, ``PATH``, ``CUDA_PATH``, ``/usr/local/cuda``; None without one."""
    candidates = [os.environ.get("CUDACXX"), shutil.which("nvcc")]
    candidates += [
        str(Path(root) / "bin" / "nvcc") for root in (os.environ.get("CUDA_PATH"), "/usr/local/cuda") if root
    ]
    return next((Path(c) for c in candidates if c and Path(c).is_file() and os.access(c, os.X_OK)), None)


def _header_folder(header: str, folders) -> Path | None:
    return next((Path(f) for f in folders if f and (Path(f) / header).is_file()), None)


def find_tensorrt_include() -> Path | None:
    """TensorRT's ``include/`` as plugins/CMakeLists.txt looks for it: ``TENSORRT_INCLUDE_DIR``,
    ``TENSORRT_ROOT``/include, then the usual system folders; None when NvInferRuntime.h is nowhere."""
    root = os.environ.get("TENSORRT_ROOT")
    return _header_folder(
        "NvInferRuntime.h",
        [
            os.environ.get("TENSORRT_INCLUDE_DIR"),
            root and str(Path(root) / "include"),
            "/usr/include/x86_64-linux-gnu",
            "/usr/local/TensorRT/include",
            "/usr/include",
            "/usr/local/include",
        ],
    )


def find_cuda_include() -> Path | None:
    """The CUDA toolkit's ``include/`` (cuda_runtime_api.h, which TensorRT's headers include), or None."""
    folders = [os.environ.get("CUDA_PATH") and str(Path(os.environ["CUDA_PATH"]) / "include")]
    nvcc = find_nvcc()
    if nvcc is not None:
        folders.append(str(nvcc.resolve().parents[1] / "include"))
    return _header_folder("cuda_runtime_api.h", folders + ["/usr/local/cuda/include"])


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


def cmake_build(source: Path, build_dir: Path, options: list[str]) -> str:
    """Configure ``source`` into ``build_dir`` with ``-D`` options, build it on every core; returns what CMake said."""
    if shutil.which("cmake") is None:
        raise DetrDeployError("cmake is not installed; install CMake 3.18 or newer")
    configured = _run(["cmake", "-S", str(source), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release", *options])
    return configured + _run(["cmake", "--build", str(build_dir), "-j", str(os.cpu_count() or 2)])


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
    build_dir = Path(build_dir or DEFAULT_BUILD_DIR)
    options = []
    include = Path(tensorrt_include) if tensorrt_include is not None else find_tensorrt_include()
    if include is not None:
        if not (include / "NvInferRuntime.h").is_file():
            raise DetrDeployError(f"{include} holds no NvInferRuntime.h; give TensorRT's include/ folder")
        options.append(f"-DTENSORRT_INCLUDE_DIR={include}")
    options.append(f"-DDETR_DEPLOY_CUDA={'ON' if cuda else 'OFF'}")
    nvcc = find_nvcc() if cuda else None
    if nvcc is not None:
        options.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
    if cuda_architectures:
        if not re.fullmatch(r"native|all|all-major|\d+[af]?(;\d+[af]?)*", cuda_architectures):
            raise DetrDeployError(f"malformed CUDA architectures {cuda_architectures!r}; write e.g. 80;90")
        options.append(f"-DCMAKE_CUDA_ARCHITECTURES={cuda_architectures}")
    log = cmake_build(PLUGIN_SOURCES, build_dir, options)
    skipped = re.findall(r"detr_deploy: skipping (.*)", log)
    built = {
        name: build_dir / name if (build_dir / name).is_file() else None
        for name in (CPU_LIBRARY, CUDA_LIBRARY, PLUGIN_LIBRARY, REGISTERING_LIBRARY)
    }
    return PluginBuild(
        build_dir=build_dir,
        cpu_library=build_dir / CPU_LIBRARY,
        cuda_library=built[CUDA_LIBRARY],
        plugin_library=built[PLUGIN_LIBRARY],
        registering_library=built[REGISTERING_LIBRARY],
        skipped=[reason.strip() for reason in skipped],
        log=log,
    )


def find_plugin_library(build_dir=None) -> Path:
    """The built ``libdetr_deploy_plugins.so`` (``DETR_DEPLOY_PLUGIN`` overrides), or None when there is none."""
    override = os.environ.get("DETR_DEPLOY_PLUGIN")
    if override:
        return Path(override) if Path(override).is_file() else None
    candidate = Path(build_dir or DEFAULT_BUILD_DIR) / PLUGIN_LIBRARY
    return candidate if candidate.is_file() else None


def find_registering_library(plugin_library) -> Path | None:
    """The auto-registering library that goes with ``plugin_library``: the one beside it, else the default build's;
    None when neither exists. Any build of it serves any build of the plugin library placed beside it: it only loads
    the ``libdetr_deploy_plugins.so`` in its own folder and registers that library's creators."""
    for folder in (Path(plugin_library).parent, DEFAULT_BUILD_DIR):
        candidate = folder / REGISTERING_LIBRARY
        if candidate.is_file():
            return candidate
    return None
