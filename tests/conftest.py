"""Shared fixtures: a tiny random-weight variant of every zoo model, and automatic skips for gpu/trt tests."""

import importlib.util
import json

import pytest

from tests.helpers import OFFICIAL_KEYS


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
def tiny_export(tmp_path_factory):
    """tiny_export(zoo_name, msda="plugin") -> path of the tiny variant's ONNX export (seed 0), made once."""
    import tests.helpers  # noqa: F401  (registers the tiny_* models)
    from exporters.onnx import export_model
    from tests.helpers import tiny_name

    cache = {}

    def get(zoo_name: str, msda: str = "plugin"):
        if (zoo_name, msda) not in cache:
            path = tmp_path_factory.mktemp("tiny_exports") / f"{tiny_name(zoo_name)}-{msda}.onnx"
            export_model(tiny_name(zoo_name), path, msda=msda)
            cache[zoo_name, msda] = path
        return cache[zoo_name, msda]

    return get


@pytest.fixture(scope="session")
def confident_export(tmp_path_factory):
    """confident_export(zoo_name) -> ONNX export (with the padding_mask input) of the tiny variant with a class head
    that favours one label, so that detections and panoptic segments exist; made once."""
    from exporters.onnx import export_model
    from tests.helpers import confident_checkpoint, tiny_name

    cache = {}

    def get(zoo_name: str):
        if zoo_name not in cache:
            folder = tmp_path_factory.mktemp("confident")
            checkpoint = confident_checkpoint(tiny_name(zoo_name), folder / "weights.pth")
            cache[zoo_name] = folder / f"{tiny_name(zoo_name)}.onnx"
            export_model(tiny_name(zoo_name), cache[zoo_name], checkpoint=checkpoint, padding_mask=True)
        return cache[zoo_name]

    return get


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
        terminalreporter.write_sep("-", "figures measured by tests")
        for line in figures:
            terminalreporter.write_line(line)
