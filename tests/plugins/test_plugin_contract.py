"""The C++ header and the Python contract name the plugin, its inputs and its attributes the same way."""

import re

import pytest

from detr_deploy import contract
from detr_deploy.plugins import PLUGIN_SOURCES

HEADER = (PLUGIN_SOURCES / "msda" / "msdaContract.h").read_text()


def string_constant(name: str) -> str:
    return re.search(rf'{name}\s*=\s*"([^"]*)"', HEADER)[1]


def string_array(name: str) -> tuple[str, ...]:
    body = re.search(rf"{name}\[[^\]]*\]\s*=\s*\{{([^}}]*)\}}", HEADER)[1]
    return tuple(re.findall(r'"([^"]*)"', body))


def test_plugin_identity_agrees():
    assert string_constant("kPLUGIN_NAME") == contract.PLUGIN_NAME == contract.MSDA_OP_TYPE
    assert string_constant("kPLUGIN_NAMESPACE") == contract.PLUGIN_NAMESPACE
    assert string_constant("kPLUGIN_VERSION") == contract.PLUGIN_VERSION


def test_inputs_outputs_and_attributes_agree():
    assert string_array("kINPUT_NAMES") == contract.MSDA_INPUTS
    assert (string_constant("kOUTPUT_NAME"),) == contract.MSDA_OUTPUTS
    assert string_array("kATTRIBUTE_NAMES") == contract.MSDA_ATTRIBUTES


def test_launcher_type_codes_are_tensorrt_data_types():
    trt = pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX is not installed")
    codes = {name: int(value) for name, value in re.findall(r"DETR_MSDA_(\w+) = (\d+)", HEADER)}
    assert codes == {"FLOAT": int(trt.DataType.FLOAT), "HALF": int(trt.DataType.HALF), "BF16": int(trt.DataType.BF16)}
