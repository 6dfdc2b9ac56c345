"""One real CLI export per family: ``export`` runs torch.onnx.export itself (no export store, ``real_export``), and
``verify-parity`` runs the file in ONNX Runtime against eager PyTorch at a new size and two batch sizes. Every other
test takes the torch-export step from the store (tests/export_store.py); this is the test that would catch a store
that hides a broken export path."""

import json

import onnx
import pytest

import tests.helpers  # noqa: F401  (registers the tiny_* models the commands below use)
from detr_deploy import contract
from detr_deploy.models import get_model_spec
from tests.helpers import input_size, tiny_name
from tests.helpers import run_cli as run

# One zoo model per family (and the panoptic DETR, whose export adds the mask head's outputs).
ONE_PER_FAMILY = [
    "detr_r50",
    "detr_r50_panoptic",
    "conditional_detr_r50",
    "deformable_detr_r50_two_stage",
    "dab_detr_r50_3pat",
    "dino_4scale_r50",
    "rtdetr_r18vd",
    "rtdetrv2_r18vd",
    "dfine_hgnetv2_s",
    "rfdetr_nano",
]


@pytest.mark.slow
@pytest.mark.real_export
@pytest.mark.parametrize("zoo_name", ONE_PER_FAMILY)
def test_a_real_cli_export_per_family_passes_parity(zoo_name, tmp_path):
    model = tiny_name(zoo_name)
    config = get_model_spec(model).config
    path = tmp_path / f"{model}.onnx"
    result = run("export", "--model", model, "--output", path)
    assert result.exit_code == 0, result.output
    assert f"wrote {path}" in result.output

    proto = onnx.load(str(path))
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert metadata[contract.META_MODEL] == model
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value"), "batch must stay symbolic"

    # One size the export never saw, both batch sizes: the other sizes are the store-backed tests' (test_onnx_export).
    size = "x".join(map(str, input_size(config, 96, 128)))
    report = tmp_path / "report.json"
    result = run("verify-parity", "--onnx", path, "--sizes", size, "--batch-sizes", "1,2", "--report", report)
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-2].startswith("PASSED")
    assert json.loads(report.read_text())["passed"] is True
