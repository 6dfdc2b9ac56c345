"""The CUDA kernel compiles (no GPU needed) and the TensorRT plugin library builds from TensorRT's public
headers, loads into TensorRT-RTX's registry and links against no TensorRT library."""

import subprocess
import sys

import pytest

from detr_deploy.plugins import find_nvcc


def exported_symbols(library) -> set[str]:
    listing = subprocess.run(["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True).stdout
    return {line.split()[-1] for line in listing.splitlines() if line.split()[1:2] == ["T"]}


def needed_libraries(library) -> list[str]:
    listing = subprocess.run(["readelf", "-d", str(library)], capture_output=True, text=True).stdout
    return [line.split("[")[1].rstrip("]") for line in listing.splitlines() if "(NEEDED)" in line]


@pytest.mark.slow
@pytest.mark.skipif(find_nvcc() is None, reason="nvcc is not installed")
def test_cuda_kernel_compiles_for_sm80_and_sm90_without_warnings(plugin_build):
    assert plugin_build.cuda_library is not None, plugin_build.skipped
    assert "warning:" not in plugin_build.log.lower()
    assert "detr_msda_forward_cuda" in exported_symbols(plugin_build.cuda_library)
    binary = plugin_build.cuda_library.read_bytes()
    assert b"sm_80" in binary and b"sm_90" in binary


@pytest.fixture
def plugin_library(tensorrt_plugin_build):
    return tensorrt_plugin_build.plugin_library


def test_plugin_library_exports_the_loader_entry_points_and_needs_no_tensorrt(tensorrt_plugin_build):
    plugin_library = tensorrt_plugin_build.plugin_library
    assert "warning:" not in tensorrt_plugin_build.log.lower()
    assert exported_symbols(plugin_library) == {"getCreators", "setLoggerFinder"}
    assert not [name for name in needed_libraries(plugin_library) if "nvinfer" in name or "cudart" in name]


LOAD_SCRIPT = r"""
import sys
import tensorrt_rtx_bindings as trt
registry = trt.get_plugin_registry()
registry.load_library(sys.argv[1])
creator = registry.get_creator("MSDeformAttn", "1", "detr_deploy")
print(creator.name, creator.plugin_namespace, creator.plugin_version, creator.interface_info.kind)
"""


@pytest.mark.trt
def test_tensorrt_rtx_registry_shows_the_creator(plugin_library):
    pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX is not installed")
    # In a subprocess: TensorRT may abort the whole process on plugin errors.
    completed = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(plugin_library)], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.split() == ["MSDeformAttn", "detr_deploy", "1", "PLUGIN", "CREATOR_V3ONE"]
