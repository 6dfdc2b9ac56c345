"""Engines run on a GPU: parity of fp32 and fp16 engines with eager PyTorch for every zoo model (three sizes,
batch 2, our plugin loaded for the deformable attention), and the runner's checks.

Needs a CUDA GPU, TensorRT (``pip install tensorrt``, or TensorRT-RTX on an RTX GPU) and our plugin library, which
needs TensorRT's headers to build (``TENSORRT_INCLUDE_DIR``): each missing piece skips with its reason.
"""

import numpy as np
import pytest

from detr_deploy.errors import DetrDeployError
from detr_deploy.verify import verify_parity
from exporters.engine_build import build_engine
from exporters.onnx import export_model
from tests.helpers import ZOO_MODELS

pytestmark = [pytest.mark.gpu, pytest.mark.trt]

SIZES = [(480, 640), (608, 512), (427, 701)]


@pytest.fixture(scope="session")
def plugin_library(plugin_build):
    if plugin_build.plugin_library is None:
        pytest.skip(f"plugin library not built: {'; '.join(plugin_build.skipped)}")
    return plugin_build.plugin_library


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """zoo name -> (ONNX export, its checkpoint). The weights are seeded random ones with a class head favouring one
    label: random heads spread scores thin, so low thresholds would be needed to see detections, and there fp16 flips
    the best class among near-equal ones (measured on the CPU with the fp16 graph: 2 of 600 detections)."""
    from tests.helpers import confident_checkpoint

    cache = {}

    def get(zoo_name):
        if zoo_name not in cache:
            folder = tmp_path_factory.mktemp("exports")
            # +8 on one label: above 0.9 even against the 250 other labels of the panoptic head.
            checkpoint = confident_checkpoint(zoo_name, folder / "weights.pth", boost=8.0)
            export_model(zoo_name, folder / f"{zoo_name}.onnx", msda="plugin", checkpoint=checkpoint)
            cache[zoo_name] = folder / f"{zoo_name}.onnx", checkpoint
        return cache[zoo_name]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("zoo_name", ZOO_MODELS)
def test_engine_matches_eager_pytorch(zoo_name, precision, exports, plugin_library, tmp_path):
    from detr_deploy.runtime.tensorrt import TensorRTRunner

    onnx_path, checkpoint = exports(zoo_name)
    engine = tmp_path / f"{zoo_name}.{precision}.engine"
    build = build_engine(onnx_path, engine, precision=precision, plugins=plugin_library)
    if zoo_name.startswith("deformable"):
        assert build.sidecar.msda_path == "plugin" and build.sidecar.plugin.library == plugin_library.name
    runner = TensorRTRunner(engine, plugins=plugin_library)
    report = verify_parity(
        runner, engine, checkpoint=checkpoint, sizes=SIZES, batch_sizes=[2], precision=precision, score_threshold=0.5
    )
    assert report.passed, report.render()
    assert len(report.cases) == 3 and all(case.batch == 2 for case in report.cases)
    assert sum(case.detections.matched for case in report.cases) > 0  # not vacuous


def test_runner_checks_shapes_against_the_profile_and_needs_the_plugin(exports, plugin_library, tmp_path):
    from detr_deploy.runtime.tensorrt import TensorRTRunner

    engine = tmp_path / "deformable.engine"
    build_engine(
        exports("deformable_detr_r50")[0],
        engine,
        plugins=plugin_library,
        min_shapes="images:1x3x320x320",
        opt_shapes="images:1x3x480x640",
        max_shapes="images:2x3x640x640",
    )
    runner = TensorRTRunner(engine, plugins=plugin_library)
    outputs = runner.run(np.zeros((2, 3, 400, 512), dtype=np.float32))
    assert outputs["pred_logits"].shape == (2, 300, 91) and np.isfinite(outputs["pred_boxes"]).all()
    with pytest.raises(DetrDeployError, match=r"outside the engine's profile \(1x3x320x320 to 2x3x640x640\)"):
        runner.run(np.zeros((3, 3, 400, 512), dtype=np.float32))
    with pytest.raises(DetrDeployError, match="needs the plugin library libdetr_deploy_plugins.so"):
        TensorRTRunner(engine, plugins=tmp_path / "missing.so")
