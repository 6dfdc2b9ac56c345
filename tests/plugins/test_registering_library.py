"""libdetr_deploy_plugins_autoreg.so, the library that registers our creator when it is dlopened (Triton's tensorrt
backend, trtexec --plugins, DeepStream): its exports and dependencies, its registry layouts against TensorRT's
headers, and, in TensorRT-RTX, that loading it registers MSDeformAttn / detr_deploy / 1 once, whichever of the two
libraries loads first. Each load runs in a child process: TensorRT may abort a process on plugin errors."""

import subprocess
import sys

import pytest

from tests.plugins.test_msda_cuda_build import exported_symbols, needed_libraries

# argv: plugin library, registering library, then the steps in order: "register" (ctypes-load the registering
# library), "load" (IPluginRegistry::loadLibrary of the plugin library). Prints what each step did, then our creators.
LOAD_SCRIPT = r"""
import ctypes
import sys

import tensorrt_rtx_bindings as trt

plugin, registering = sys.argv[1:3]
registry = trt.get_plugin_registry()
for step in sys.argv[3:]:
    if step == "register":
        library = ctypes.CDLL(registering)
        library.detr_deploy_plugin_registration.restype = ctypes.c_char_p
        print("register:", library.detr_deploy_plugin_registration().decode())
    else:
        print("load:", "loaded" if registry.load_library(plugin) is not None else "refused")
ours = [c for c in registry.all_creators if getattr(c, "name", None) == "MSDeformAttn"]
print("creators:", [(c.name, c.plugin_namespace, c.plugin_version) for c in ours])
found = registry.get_creator("MSDeformAttn", "1", "detr_deploy")
print("get_creator:", found.name if found is not None else None)
"""


@pytest.fixture
def libraries(request):
    build = request.getfixturevalue("tensorrt_plugin_build")
    assert build.registering_library is not None, build.skipped
    return build.plugin_library, build.registering_library


def run_steps(libraries, *steps) -> list[str]:
    pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX is not installed")
    completed = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, *map(str, libraries), *steps], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return completed.stdout.splitlines()


ONE_CREATOR = ["creators: [('MSDeformAttn', 'detr_deploy', '1')]", "get_creator: MSDeformAttn"]


def test_registering_library_exports_one_function_and_links_no_tensorrt(libraries):
    plugin_library, registering = libraries
    assert exported_symbols(registering) == {"detr_deploy_plugin_registration"}
    needed = needed_libraries(registering)
    assert plugin_library.name in needed
    assert not [name for name in needed if "nvinfer" in name or "tensorrt" in name or "cudart" in name]
    dynamic = subprocess.run(["readelf", "-d", str(registering)], capture_output=True, text=True).stdout
    assert "[$ORIGIN]" in dynamic and "NODELETE" in dynamic


def test_registry_layouts_match_the_tensorrt_headers(registry_abi_program):
    ran = subprocess.run([str(registry_abi_program)], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "MISMATCH" not in ran.stdout and ran.stdout.count("ok ") >= 9


@pytest.mark.trt
def test_loading_registers_the_creator_in_tensorrt_rtx(libraries):
    assert run_steps(libraries, "register") == ["register: registered in libtensorrt_rtx.so.1", *ONE_CREATOR]


@pytest.mark.trt
def test_after_load_library_it_leaves_the_creator_as_it_is(libraries):
    assert run_steps(libraries, "load", "register") == [
        "load: loaded",
        "register: already registered in libtensorrt_rtx.so.1: left as it was",
        *ONE_CREATOR,
    ]


@pytest.mark.trt
def test_load_library_after_it_is_refused_and_one_creator_stays(libraries):
    # TensorRT-RTX refuses a library whose creator is registered already: a process loads one of the two.
    assert run_steps(libraries, "register", "load") == [
        "register: registered in libtensorrt_rtx.so.1",
        "load: refused",
        *ONE_CREATOR,
    ]


def test_without_tensorrt_it_registers_nothing_and_says_why(libraries):
    script = (
        "import ctypes, sys\n"
        "library = ctypes.CDLL(sys.argv[1])\n"
        "library.detr_deploy_plugin_registration.restype = ctypes.c_char_p\n"
        "print(library.detr_deploy_plugin_registration().decode())\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script, str(libraries[1])], capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.startswith("no TensorRT library (libnvinfer.so.10, libnvinfer.so.11, libtensorrt_rtx")
    assert "libdetr_deploy_plugins_autoreg.so: no TensorRT library" in completed.stderr
