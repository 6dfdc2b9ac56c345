"""The plugin glue's own checks (tests/plugins/cpp/test_msda_plugin_glue.cpp, built by tests/plugins/cpp/CMakeLists.txt
apart from the product): shape checks, format combinations, what enqueue hands the launcher, logging through
TensorRT's logger, the exception barrier of every method (error recorder or logger), the creator. Needs TensorRT's
headers (TENSORRT_INCLUDE_DIR) and CUDA's; no GPU, no nvcc and no TensorRT library."""

import subprocess


def test_plugin_glue_checks(glue_program):
    ran = subprocess.run([str(glue_program)], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout.strip() == "all checks passed"
