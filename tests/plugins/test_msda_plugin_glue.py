"""The plugin glue's own checks (tests/plugins/cpp/test_msda_plugin_glue.cpp, built by plugins/CMakeLists.txt
beside the plugin): shape checks, format combinations, logging through TensorRT's logger, the creator. Needs
TensorRT's headers (TENSORRT_INCLUDE_DIR), no GPU and no TensorRT library."""

import subprocess

import pytest


def test_plugin_glue_checks(plugin_build):
    if plugin_build.plugin_library is None:
        pytest.skip(f"plugin library not built: {'; '.join(plugin_build.skipped)}")
    program = plugin_build.build_dir / "test_msda_plugin_glue"
    assert program.is_file()
    ran = subprocess.run([str(program)], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout.strip() == "all checks passed"
