"""The Deformable DETR export builds into a TensorRT engine over a whole range of sizes (TensorRT-RTX, ahead of
time, no GPU needed). The official trace-based export fails exactly here: it bakes the traced size in."""

import json
import subprocess
import sys

import pytest

from exporters.onnx import export_zoo_model

# Runs in a subprocess: TensorRT aborts the whole process on some errors when no GPU is present.
BUILD_SCRIPT = r"""
import json, sys
import tensorrt_rtx_bindings as trt
path = sys.argv[1]
logger = trt.Logger(trt.Logger.ERROR)
builder = trt.Builder(logger)
network = builder.create_network(0)
parser = trt.OnnxParser(network, logger)
if not parser.parse_from_file(path):
    print(json.dumps({"errors": [str(parser.get_error(i)) for i in range(parser.num_errors)]}))
    sys.exit(1)
config = builder.create_builder_config()
config.num_compute_capabilities = 1
config.set_compute_capability(trt.ComputeCapability.SM89, 0)
profile = builder.create_optimization_profile()
profile.set_shape("images", (1, 3, 320, 320), (1, 3, 800, 1088), (2, 3, 1344, 1344))
config.add_optimization_profile(profile)
engine = builder.build_serialized_network(network, config)
inputs = [network.get_input(i) for i in range(network.num_inputs)]
outputs = [network.get_output(i) for i in range(network.num_outputs)]
print(json.dumps({
    "engine_bytes": engine.nbytes if engine is not None else 0,
    "inputs": {t.name: list(t.shape) for t in inputs},
    "outputs": {t.name: list(t.shape) for t in outputs},
    "plugin_layers": sum(network.get_layer(i).type == trt.LayerType.PLUGIN_V3 for i in range(network.num_layers)),
}))
"""


@pytest.mark.trt
@pytest.mark.slow
@pytest.mark.parametrize("msda", ["plugin", "grid-sample"])
def test_deformable_detr_export_builds_for_320_to_1344_and_batch_1_to_2(msda, tmp_path):
    pytest.importorskip(
        "tensorrt_rtx_bindings",
        reason="TensorRT-RTX is not installed: pip install tensorrt-rtx-cu13-bindings tensorrt-rtx-cu13-libs",
    )
    onnx_path = tmp_path / f"deformable_detr_r50-{msda}.onnx"
    export_zoo_model("deformable_detr_r50", onnx_path, msda=msda)
    completed = subprocess.run(
        [sys.executable, "-c", BUILD_SCRIPT, str(onnx_path)], capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr[-2000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["inputs"] == {"images": [-1, 3, -1, -1]}
    assert result["outputs"] == {"pred_logits": [-1, 300, 91], "pred_boxes": [-1, 300, 4]}
    # No plugin library is loaded here, so the parser must have inlined the MSDeformAttn function.
    assert result["plugin_layers"] == 0
    assert result["engine_bytes"] > 50_000_000
