"""Shared fixtures: exports of the tiny variant of every zoo model (from the export store), engine builds from the
engine store, and automatic skips for gpu/trt tests."""

import importlib.util
import json
import os

import pytest

from tests.helpers import OFFICIAL_KEYS, REPO

# OpenVINO's compiled models (runtime/openvino.py's cache) go under build/, one folder per xdist worker (two
# processes compiling the same model would write the same blob), not into the user's ~/.cache.
os.environ.setdefault(
    "DETR_DEPLOY_CACHE", str(REPO / "build" / "test-cache" / os.environ.get("PYTEST_XDIST_WORKER", "main"))
)


@pytest.fixture(scope="session")
def official_keys() -> dict:
    if not OFFICIAL_KEYS.is_file():
        pytest.skip(f"{OFFICIAL_KEYS} is not there (it lives in shared/ beside the repository)")
    return json.loads(OFFICIAL_KEYS.read_text())["models"]


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _has_tensorrt() -> bool:
    return any(importlib.util.find_spec(name) for name in ("tensorrt", "tensorrt_rtx_bindings"))


def pytest_collection_modifyitems(config, items):
    skip_gpu = None if _has_cuda() else pytest.mark.skip(reason="needs a CUDA GPU; none is visible to torch")
    skip_trt = (
        None
        if _has_tensorrt()
        else pytest.mark.skip(
            reason="TensorRT is not installed: pip install tensorrt-rtx-cu13-bindings tensorrt-rtx-cu13-libs"
        )
    )
    for item in items:
        if skip_gpu and "gpu" in item.keywords:
            item.add_marker(skip_gpu)
        if skip_trt and "trt" in item.keywords:
            item.add_marker(skip_trt)


@pytest.fixture(scope="session")
def plugin_build(tmp_path_factory):
    """plugins/ built once: the CUDA kernel (for the visible GPU, else sm_80 and sm_90), and the TensorRT plugin when
    TENSORRT_ROOT or TENSORRT_INCLUDE_DIR points at TensorRT's headers. Skips before configuring when cmake or nvcc
    is missing (tests/plugins builds the CPU-only parts itself)."""
    import shutil

    from detr_deploy.plugins import build_plugins, find_nvcc

    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    if find_nvcc() is None:
        pytest.skip("nvcc is not installed: no CUDA kernel, no TensorRT plugin")
    architectures = "native" if _has_cuda() else "80;90"
    return build_plugins(tmp_path_factory.mktemp("plugins"), cuda_architectures=architectures)


@pytest.fixture(scope="session")
def export_store():
    """The on-disk export store (tests/export_store.py), shared by xdist workers and kept between runs."""
    from tests.export_store import store

    return store()


@pytest.fixture(scope="session", autouse=True)
def stored_torch_export(export_store):
    """Every in-process export (the CLI's ``export`` included, module fixtures too) takes its torch.onnx.export step
    from the export store: the rest of the export (checks, finalizing, metadata, writing) runs as it is. Tests
    marked ``real_export`` (one CLI export per family) export from scratch (``_real_export_when_marked``)."""
    from unittest import mock

    with mock.patch("exporters.onnx._torch_export", export_store.torch_export):
        yield


@pytest.fixture(autouse=True)
def _real_export_when_marked(request):
    if not request.node.get_closest_marker("real_export"):
        yield
        return
    from unittest import mock

    from tests.export_store import real_torch_export

    with mock.patch("exporters.onnx._torch_export", real_torch_export):
        yield


@pytest.fixture(scope="session", autouse=True)
def stored_engine_build():
    """Every ahead-of-time TensorRT-RTX build without a plugin library or timing cache (the CLI's ``build-engine``
    included) takes its worker step, the TensorRT parse and build, from the engine store (tests/engine_store.py):
    the rest of ``build_engine`` runs as it is. Tests marked ``real_build`` build for real
    (``_real_build_when_marked``)."""
    from unittest import mock

    from tests.engine_store import engine_store

    with mock.patch("exporters.engine_build._run_worker", engine_store().run_worker):
        yield


@pytest.fixture(autouse=True)
def _real_build_when_marked(request):
    if not request.node.get_closest_marker("real_build"):
        yield
        return
    from unittest import mock

    from tests.engine_store import real_run_worker

    with mock.patch("exporters.engine_build._run_worker", real_run_worker):
        yield


@pytest.fixture(scope="session")
def tiny_export(export_store):
    """tiny_export(zoo_name, msda="plugin") -> path (in the export store: copy before changing it) of the tiny
    variant's ONNX export (seed 0), as ``export --model tiny_<zoo_name> --msda <msda>`` writes it."""
    from tests.helpers import tiny_name

    def get(zoo_name: str, msda: str = "plugin"):
        return export_store.export(tiny_name(zoo_name), msda=msda).path

    return get


@pytest.fixture(scope="session")
def confident_export(export_store):
    """confident_export(zoo_name) -> ONNX export (with the padding_mask input; in the export store) of the tiny
    variant with a class head that favours one label (``confident_checkpoint``), so that detections and panoptic
    segments exist."""
    from tests.helpers import tiny_name

    def get(zoo_name: str):
        checkpoint = export_store.confident_checkpoint(tiny_name(zoo_name))
        return export_store.export(tiny_name(zoo_name), checkpoint=checkpoint, padding_mask=True).path

    return get


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile`` hands out the longest files first (tests/scheduling.py)."""
    if config.getoption("dist") != "loadfile":
        return None
    from tests.scheduling import LongestFileFirst

    return LongestFileFirst(config, log)


_DURATIONS = {}


def pytest_runtest_logreport(report):
    _DURATIONS[report.nodeid] = _DURATIONS.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session):
    """The controller (not an xdist worker) records what each test took, for the next run's order."""
    if hasattr(session.config, "workerinput") or not _DURATIONS:
        return
    from tests.scheduling import record_durations

    try:
        record_durations(_DURATIONS)
    except OSError:  # a hint for the next run only
        pass


def pytest_terminal_summary(terminalreporter):
    """Figures tests measured (``record_property("figure", text)``: load-test latencies, batch sizes), printed after
    the run, also from xdist workers."""
    figures = [
        value
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "call"  # setup and teardown reports carry the same properties
        for key, value in getattr(report, "user_properties", ())
        if key == "figure"
    ]
    if figures:
        from detr_deploy.cpu_features import cpu_features

        terminalreporter.write_sep("-", "figures measured by tests")
        # Reduced-precision figures depend on the CPU (int8 dot products, bf16 units): said with them.
        terminalreporter.write_line(f"cpu: {cpu_features().summary()}")
        for line in figures:
            terminalreporter.write_line(line)
