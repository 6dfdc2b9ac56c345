"""The real CLI with Conditional DETR (tiny, random weights): export under the ONNX contract (symbolic batch, height
and width), inspect of the export, verify-parity at sizes and batches the export never saw with ONNX Runtime and
OpenVINO."""

import json

import onnx
import pytest

import tests.helpers  # noqa: F401  (registers the tiny_* models the commands below use)
from detr_deploy import contract
from tests.helpers import run_cli as run

# The family's first zoo model, as in the quick run of tests/exporters/test_onnx_export.py: one torch export for both.
TINY = "tiny_conditional_detr_r101"


@pytest.fixture(scope="module")
def conditional_export(tmp_path_factory):
    path = tmp_path_factory.mktemp("conditional") / "conditional.onnx"
    result = run("export", "--model", TINY, "--output", path)
    assert result.exit_code == 0, result.output
    return path


def test_export_follows_the_contract(conditional_export):
    proto = onnx.load(str(conditional_export))
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert metadata[contract.META_MODEL] == TINY and metadata[contract.META_FAMILY] == "conditional_detr"
    # Sigmoid scores, and the official post-processing's top-100 over query x class.
    assert metadata[contract.META_SCORE_ACTIVATION] == "sigmoid" and metadata[contract.META_TOP_K] == "100"
    recorded = json.loads(metadata[contract.META_CONFIG])
    assert (recorded["num_queries"], recorded["num_classes"]) == (12, 5)
    image = proto.graph.input[0].type.tensor_type.shape.dim
    assert all(dim.dim_param for dim in (image[0], image[2], image[3]))  # batch, height, width stay symbolic
    assert [output.name for output in proto.graph.output] == [contract.OUTPUT_LOGITS, contract.OUTPUT_BOXES]


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_verify_parity_at_untraced_sizes_and_batches(conditional_export, backend, tmp_path):
    if backend == "openvino":
        pytest.importorskip("openvino", reason="OpenVINO is not installed: pip install openvino")
    report = tmp_path / "report.json"
    result = run(
        "verify-parity", f"--{backend}", conditional_export,
        "--sizes", "197x263,230x170", "--batch-sizes", "1,2", "--report", report,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["passed"] and data["model"] == TINY and len(data["cases"]) == 4
    assert sum(case["detections"]["matched"] for case in data["cases"]) > 0
