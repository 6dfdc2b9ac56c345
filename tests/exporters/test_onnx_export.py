"""Every family's tiny variants (DETR, Deformable DETR, DINO, RT-DETR, RT-DETRv2 with 3/1/2 points per level)
export in both msda modes, and ONNX Runtime and OpenVINO match eager PyTorch at sizes and batch sizes the export
never saw (multiples of 32 for RT-DETR); plugin / padded points / discrete paths, the I/O contract, metadata and
options of the exports. The checks are export_checks.py's; the exports come from the export store."""

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from detr_deploy import contract
from detr_deploy.errors import DetrDeployError
from detr_deploy.models import build_model, get_model_spec
from exporters.onnx import export_onnx
from tests.exporters.export_checks import (
    GRID_SAMPLE_SKIPPED,
    check_grid_sample_mode,
    check_io_contract,
    check_onnxruntime_matches_eager,
    check_openvino_matches_eager,
    check_plugin_mode,
    export_cache,
    grid_sample_copy,
    msda_cases,
    openvino_cases,
)
from tests.helpers import MIXED_POINTS, ZOO_MODELS, tiny_name
from tests.marks import ARCHITECTURES, quick_first_of, quick_one_per_family

FAMILIES = (
    "detr_",
    "conditional_detr_",
    "deformable_detr_",
    "dab_detr_",
    "dino_",
    "rtdetr_",
    "rtdetrv2_",
    "dfine_",
    "rfdetr_",
)
MODELS = [name for name in ZOO_MODELS if name.startswith(FAMILIES)] + [MIXED_POINTS]
# Every model with deformable attention (DETR, Conditional DETR and DAB-DETR have none: their plugin and grid-sample
# graphs are the same).
DEFORMABLE = [name for name in MODELS if get_model_spec(tiny_name(name)).config.deformable_strides]
# The quick run checks OpenVINO on the two ways deformable attention is called (Deformable DETR: one level index per
# head; RT-DETR: flat sampling points); ONNX Runtime on one model of every family.
OPENVINO_QUICK = ("deformable_detr_", "rtdetr_")


@pytest.fixture(scope="module")
def exported(export_store):
    return export_cache(export_store)


@pytest.mark.parametrize("zoo_name, msda", quick_one_per_family(msda_cases(MODELS), FAMILIES, "plugin"))
def test_onnxruntime_matches_eager_at_new_sizes_and_batches(exported, zoo_name, msda):
    check_onnxruntime_matches_eager(exported, zoo_name, msda)


@pytest.mark.parametrize("zoo_name, msda", quick_one_per_family(openvino_cases(MODELS), OPENVINO_QUICK, "grid-sample"))
def test_openvino_matches_eager_at_new_sizes_and_batches(exported, zoo_name, msda, tmp_path):
    check_openvino_matches_eager(exported, zoo_name, msda, tmp_path)


@pytest.mark.parametrize("zoo_name", quick_first_of(DEFORMABLE, ARCHITECTURES))
def test_plugin_mode_has_one_node_per_attention_backed_by_a_local_function(exported, zoo_name):
    check_plugin_mode(exported, zoo_name)


@pytest.mark.parametrize("zoo_name", [name for name in DEFORMABLE if name not in GRID_SAMPLE_SKIPPED])
def test_grid_sample_mode_is_plain_onnx(exported, zoo_name):
    check_grid_sample_mode(exported, zoo_name)


@pytest.mark.parametrize(
    "zoo_name",
    [
        "detr_r50",
        "detr_r50_panoptic",
        # The quick run's ONNX Runtime case of the family (the first zoo name): one torch export for both.
        "conditional_detr_r101",
        "deformable_detr_r50_two_stage",
        "dino_4scale_r50",
        "rtdetr_r50vd",
    ],
)
def test_io_contract_metadata_and_symbolic_axes(exported, zoo_name):
    check_io_contract(exported, zoo_name)


@pytest.mark.parametrize("opset", [20])
def test_newer_opsets_use_the_renamed_grid_sample_mode(tmp_path, opset):
    name = tiny_name("deformable_detr_r50")
    config = get_model_spec(name).config
    model = build_model(config, seed=0)
    result = export_onnx(model, config, tmp_path / "newer.onnx", model_name=name, msda="grid-sample", opset=opset)
    proto = onnx.load(str(result.path))
    modes = {
        a.s.decode() for n in proto.graph.node if n.op_type == "GridSample" for a in n.attribute if a.name == "mode"
    }
    assert modes == {"linear"}
    images = torch.randn(2, 3, 200, 250)
    with torch.no_grad():
        expected = model(images)[contract.OUTPUT_BOXES].numpy()
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run([contract.OUTPUT_BOXES], {"images": images.numpy()})[0], expected, atol=1e-5)


def test_bad_options_are_refused_before_exporting(tmp_path):
    name = tiny_name("detr_r50")
    config = get_model_spec(name).config
    model = build_model(config)
    with pytest.raises(DetrDeployError, match="opset 12 is not supported"):
        export_onnx(model, config, tmp_path / "a.onnx", model_name=name, opset=12)
    with pytest.raises(DetrDeployError, match="unknown --msda mode"):
        export_onnx(model, config, tmp_path / "a.onnx", model_name=name, msda="cuda")
    assert not list(tmp_path.iterdir())


def test_a_grid_sample_copy_is_the_grid_sample_export(exported, tmp_path):
    """The OpenVINO checks' shortcut for GRID_SAMPLE_SKIPPED models, checked once: the plugin export finished in
    grid-sample mode is, node for node and weight for weight, the file ``export --msda grid-sample`` writes."""
    _, config, plugin = exported("deformable_detr_r50", "plugin")
    _, _, grid_sample = exported("deformable_detr_r50", "grid-sample")
    made = onnx.load(grid_sample_copy(plugin.path, tmp_path / "copy.onnx", config))
    written = onnx.load(grid_sample.path)
    assert made.graph.SerializeToString() == written.graph.SerializeToString()
    assert list(made.opset_import) == list(written.opset_import) and not made.functions
    assert {p.key: p.value for p in made.metadata_props} == {p.key: p.value for p in written.metadata_props}
