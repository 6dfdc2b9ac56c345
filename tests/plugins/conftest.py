"""Builds for tests/plugins. Each skips before CMake runs when something it needs is missing:

- ``msda_cpu_library``: the product's CPU reference (plugins/, CUDA off); needs cmake.
- ``plugin_test_build``: the test programs (tests/plugins/cpp, a CMake project of its own); needs cmake. It always
  builds the host-run kernel library; the glue program too when TensorRT's and CUDA's headers are found.
- ``glue_program``: the glue program; skips at once without TensorRT's or CUDA's headers.
- ``registry_abi_program``: the registry-layout check of the auto-registering library; the same needs.

The CUDA kernel and the plugin libraries come from tests/conftest.py's ``plugin_build`` (cmake and nvcc);
``tensorrt_plugin_build`` is that build, skipping at once without TensorRT's headers."""

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from detr_deploy.plugins import PLUGIN_SOURCES, build_plugins, cmake_build, find_cuda_include, find_tensorrt_include

TEST_SOURCES = Path(__file__).parent / "cpp"


def _require_cmake():
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")


def _require_tensorrt_and_cuda_headers():
    """Skip (before any build) unless TensorRT's and CUDA's headers are there."""
    if find_tensorrt_include() is None:
        pytest.skip("TensorRT headers not found (set TENSORRT_INCLUDE_DIR or TENSORRT_ROOT)")
    if find_cuda_include() is None:
        pytest.skip("CUDA headers not found (TensorRT's headers include cuda_runtime_api.h)")


@pytest.fixture(scope="session")
def msda_cpu_library(tmp_path_factory) -> Path:
    _require_cmake()
    return build_plugins(tmp_path_factory.mktemp("plugins-cpu"), cuda=False).cpu_library


@dataclass
class PluginTestBuild:
    host_kernel: Path
    glue_program: Path | None
    registry_abi_program: Path | None
    log: str


@pytest.fixture(scope="session")
def plugin_test_build(tmp_path_factory) -> PluginTestBuild:
    _require_cmake()
    build_dir = tmp_path_factory.mktemp("plugin-tests")
    options = [f"-DDETR_DEPLOY_PLUGINS_DIR={PLUGIN_SOURCES}"]
    tensorrt, cuda = find_tensorrt_include(), find_cuda_include()
    if tensorrt is not None and cuda is not None:
        options += [f"-DTENSORRT_INCLUDE_DIR={tensorrt}", f"-DCUDA_INCLUDE_DIR={cuda}"]
    log = cmake_build(TEST_SOURCES, build_dir, options)
    glue, abi = build_dir / "test_msda_plugin_glue", build_dir / "test_registry_abi"
    return PluginTestBuild(
        build_dir / "libmsda_host_kernel.so",
        glue if glue.is_file() else None,
        abi if abi.is_file() else None,
        log,
    )


@pytest.fixture
def glue_program(request) -> Path:
    _require_tensorrt_and_cuda_headers()
    build = request.getfixturevalue("plugin_test_build")
    assert build.glue_program is not None, build.log[-3000:]
    return build.glue_program


@pytest.fixture
def registry_abi_program(request) -> Path:
    _require_tensorrt_and_cuda_headers()
    build = request.getfixturevalue("plugin_test_build")
    assert build.registry_abi_program is not None, build.log[-3000:]
    return build.registry_abi_program


@pytest.fixture
def tensorrt_plugin_build(request):
    # Without TensorRT's headers there is no plugin library to test: skip before building the CUDA kernel.
    if find_tensorrt_include() is None:
        pytest.skip("TensorRT headers not found (set TENSORRT_INCLUDE_DIR or TENSORRT_ROOT)")
    build = request.getfixturevalue("plugin_build")
    assert build.plugin_library is not None, build.skipped
    return build
