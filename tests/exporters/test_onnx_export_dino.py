"""DINO 4- and 5-scale (tiny variants): both msda modes, ONNX Runtime equal to eager at untraced sizes and batches."""

import pytest

from tests.exporters.export_checks import (
    GRID_SAMPLE_SKIPPED,
    check_grid_sample_mode,
    check_io_contract,
    check_onnxruntime_matches_eager,
    check_openvino_matches_eager,
    check_plugin_mode,
    export_cache,
    msda_cases,
    openvino_cases,
)
from tests.helpers import ZOO_MODELS

MODELS = [name for name in ZOO_MODELS if name.startswith("dino_")]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return export_cache(tmp_path_factory)


@pytest.mark.parametrize("zoo_name, msda", msda_cases(MODELS))
def test_onnxruntime_matches_eager_at_new_sizes_and_batches(exported, zoo_name, msda):
    check_onnxruntime_matches_eager(exported, zoo_name, msda)


@pytest.mark.parametrize("zoo_name, msda", openvino_cases(MODELS))
def test_openvino_matches_eager_at_new_sizes_and_batches(exported, zoo_name, msda, tmp_path):
    check_openvino_matches_eager(exported, zoo_name, msda, tmp_path)


@pytest.mark.parametrize("zoo_name", MODELS)
def test_plugin_mode_has_one_node_per_attention_backed_by_a_local_function(exported, zoo_name):
    check_plugin_mode(exported, zoo_name)


@pytest.mark.parametrize("zoo_name", [name for name in MODELS if name not in GRID_SAMPLE_SKIPPED])
def test_grid_sample_mode_is_plain_onnx(exported, zoo_name):
    check_grid_sample_mode(exported, zoo_name)


def test_io_contract_metadata_and_symbolic_axes(exported):
    check_io_contract(exported, "dino_4scale_r50")
