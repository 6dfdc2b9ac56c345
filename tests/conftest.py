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
    """plugins/ built once: CPU reference always, CUDA kernel for sm_80 and sm_90 when nvcc is there, the
    TensorRT plugin when TENSORRT_ROOT or TENSORRT_INCLUDE_DIR points at TensorRT's headers."""
    import shutil

    from detr_deploy.plugins import build_plugins

    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    return build_plugins(tmp_path_factory.mktemp("plugins"), cuda_architectures="80;90")
