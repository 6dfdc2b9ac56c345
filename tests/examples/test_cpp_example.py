"""examples/cpp: without TensorRT's headers its build says why it is skipped and succeeds; with them it compiles
warning-free (and links, when a TensorRT library is found too)."""

import os
import shutil
import subprocess

import pytest

from tests.helpers import REPO

EXAMPLE = REPO / "examples" / "cpp"


def cmake(*args, env):
    return subprocess.run(["cmake", *map(str, args)], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(autouse=True)
def _needs_cmake():
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")


def test_build_without_tensorrt_headers_is_skipped_with_the_reason(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TENSORRT_ROOT", "TENSORRT_INCLUDE_DIR")}
    configured = cmake("-S", EXAMPLE, "-B", tmp_path, env=env)
    assert configured.returncode == 0, configured.stderr
    assert "detr_deploy example: skipping: TensorRT headers not found" in configured.stdout
    built = cmake("--build", tmp_path, env=env)
    assert built.returncode == 0, built.stderr
    assert not list(tmp_path.rglob("*.o")) and not (tmp_path / "detr_detect").exists()


def test_compiles_with_tensorrt_headers(tmp_path):
    if not (os.environ.get("TENSORRT_INCLUDE_DIR") or os.environ.get("TENSORRT_ROOT")):
        pytest.skip("TensorRT headers not given: set TENSORRT_INCLUDE_DIR (or TENSORRT_ROOT) to compile the example")
    configured = cmake("-S", EXAMPLE, "-B", tmp_path, env=dict(os.environ))
    assert configured.returncode == 0, configured.stdout + configured.stderr
    if "skipping" in configured.stdout:
        pytest.skip(configured.stdout.split("detr_deploy example: skipping: ")[1].splitlines()[0])
    built = cmake("--build", tmp_path, env=dict(os.environ))
    assert built.returncode == 0, built.stdout + built.stderr
    assert "warning" not in built.stdout.lower() + built.stderr.lower()
    objects = {path.name for path in tmp_path.rglob("*.o")}
    assert {"detr_detect.cpp.o", "image.cpp.o"} <= objects
