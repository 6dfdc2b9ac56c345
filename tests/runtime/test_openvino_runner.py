"""OpenVINO's CPU plugin runs our ONNX exports: parity with eager PyTorch (fp32) at sizes the export never saw,
batch 1 and 3; plugin-mode exports open with their MSDeformAttn function inlined at load time; the runner's checks.

Skips where openvino is not installed (``pip install openvino``).
"""

import numpy as np
import pytest

from detr_deploy import contract
from detr_deploy.errors import DetrDeployError
from detr_deploy.model_source import load_model
from tests.helpers import tiny_name

pytest.importorskip("openvino", reason="OpenVINO is not installed: pip install openvino")

from detr_deploy.runtime.openvino import OpenVINORunner  # noqa: E402

# None of them is the export's example size (320x416); odd sides included.
SIZES = [(256, 352), (200, 300), (288, 224)]


def _eager(zoo_name: str):
    source = load_model(tiny_name(zoo_name), None, seed=0)  # the weights tiny_export exported (seed 0)
    return source.model.eval(), source.config.output_names


def _check_parity(runner: OpenVINORunner, zoo_name: str) -> None:
    import torch

    model, output_names = _eager(zoo_name)
    assert set(runner.output_names) == set(output_names)
    generator = np.random.default_rng(0)
    for batch, (height, width) in [(1, SIZES[0]), (3, SIZES[1]), (1, SIZES[2]), (3, SIZES[0])]:
        images = generator.standard_normal((batch, 3, height, width), dtype=np.float32)
        got = runner.run(images)
        with torch.inference_mode():
            expected = model(torch.from_numpy(images), None)
        for name in output_names:
            assert got[name].dtype == np.float32
            np.testing.assert_allclose(
                got[name], expected[name].numpy(), rtol=1e-4, atol=1e-4, err_msg=f"{name} at {batch}x{height}x{width}"
            )


def test_detr_matches_eager_at_untraced_sizes(tiny_export):
    runner = OpenVINORunner(tiny_export("detr_r50"), threads=1)
    assert runner.input_names == (contract.INPUT_IMAGES,)
    assert runner.metadata[contract.META_MODEL] == tiny_name("detr_r50")
    assert runner.precision == "fp32" and runner.threads == 1
    _check_parity(runner, "detr_r50")


@pytest.mark.xfail(
    strict=True,
    reason="OpenVINO 2026.4 folds the level size Slice(ReduceProd(spatial_shapes, axis=1)) in the MSDeformAttn "
    "function body to 0, so each level's value Slice is empty and its Reshape fails; fixed by computing the level "
    "size as height*width of the level (exporters/msda_function.py), see issue 15",
)
def test_deformable_detr_plugin_export_opens_inlined_and_matches_eager(tiny_export):
    path = tiny_export("deformable_detr_r50")  # --msda plugin: a detr_deploy::MSDeformAttn node with its function
    runner = OpenVINORunner(path, threads=1)
    assert runner.metadata[contract.META_MSDA] == "plugin"
    _check_parity(runner, "deformable_detr_r50")


def test_file_is_left_as_it_was(tiny_export):
    path = tiny_export("deformable_detr_r50")
    before = path.read_bytes()
    OpenVINORunner(path, threads=1).close()
    assert path.read_bytes() == before


def test_refuses_what_it_cannot_run(tiny_export, tmp_path):
    with pytest.raises(DetrDeployError, match="does not exist"):
        OpenVINORunner(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(DetrDeployError, match="not a readable ONNX file"):
        OpenVINORunner(tmp_path / "junk.onnx")
    runner = OpenVINORunner(tiny_export("detr_r50"), threads=1)
    with pytest.raises(DetrDeployError, match="padding_mask"):
        runner.run(np.zeros((2, 3, 128, 128), np.float32), np.ones((2, 128, 128), np.uint8))
