"""INT8 copies for the CPU runtimes (exporters.cpu_quantize): each keeps the export's I/O and metadata, marks the
runtime it is for, has Q/DQ on its Conv and MatMul inputs, runs in that runtime at a size calibration never saw, and
stays close to the fp32 export; bad requests are one line."""

import json

import numpy as np
import onnx
import pytest

from detr_deploy import contract
from detr_deploy.errors import DetrDeployError
from exporters.cpu_quantize import quantize_for_cpu
from exporters.onnx import read_metadata
from exporters.quantize import calibration_inputs, fed_by_dequantize
from tests.exporters.test_quantize import IMAGE_SIZES, write_images
from tests.helpers import assert_one_line_error, run_cli

MODELS = ("detr_r50", "deformable_detr_r50")
# Calibration is at shorter side 160 (four aspect ratios); the checks run at batch 2 and another size.
CHECK_SHAPE = (2, 3, 192, 256)
# Measured on the tiny random-weight models (seed 0) at CHECK_SHAPE, max |int8 - fp32| of pred_boxes: onnxruntime
# 0.0024 (detr) / 0.0030 (deformable), openvino 0.0022 / 0.0031; logits correlate above 0.9995. The bounds leave
# room for other CPUs' kernels (VNNI or not) while still failing a broken quantization (boxes ~0.3 off).
MAX_BOX_DIFF = 0.02
MIN_LOGIT_CORRELATION = 0.99


@pytest.fixture(scope="module")
def images_folder(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("calibration"), IMAGE_SIZES)


@pytest.fixture(scope="module")
def quantized(tiny_export, images_folder, tmp_path_factory):
    """(runtime, model) -> (source path, QuantizeResult), made on first use."""
    made = {}

    def get(runtime, model):
        if runtime == "openvino":
            pytest.importorskip("nncf", reason="int8 for OpenVINO needs NNCF (.ci/install installs nncf==3.4.0)")
        if (runtime, model) not in made:
            source = tiny_export(model)
            metadata = read_metadata(onnx.load(str(source)))
            inputs = calibration_inputs(images_folder, metadata, shorter_side=160, max_size=220)
            path = tmp_path_factory.mktemp("int8") / f"{model}.{runtime}.onnx"
            made[runtime, model] = source, quantize_for_cpu(source, path, runtime=runtime, calibration_images=inputs)
        return made[runtime, model]

    return get


def ort_outputs(path, images):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {contract.INPUT_IMAGES: images})))


def openvino_outputs(path, images):
    import onnx.inliner
    import openvino

    core = openvino.Core()
    # OpenVINO reads no model-local functions (an export's MSDeformAttn): inlined, as its runner does.
    model = onnx.inliner.inline_local_functions(onnx.load(str(path)))
    compiled = core.compile_model(
        core.read_model(model.SerializeToString(), b""), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    result = compiled({contract.INPUT_IMAGES: images})
    return {name: result[name] for name in (contract.OUTPUT_LOGITS, contract.OUTPUT_BOXES)}


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("model", MODELS)
def test_int8_for_cpu_keeps_io_and_metadata_and_quantizes_conv_and_matmul(quantized, runtime, model):
    source_path, result = quantized(runtime, model)
    source, int8 = onnx.load(str(source_path)), onnx.load(str(result.path))
    onnx.checker.check_model(int8, full_check=True)
    assert [i.name for i in int8.graph.input] == [i.name for i in source.graph.input]
    assert [o.name for o in int8.graph.output] == [o.name for o in source.graph.output]

    metadata = read_metadata(int8)
    assert {k: v for k, v in metadata.items() if k in read_metadata(source)} == read_metadata(source)
    assert set(metadata) - set(read_metadata(source)) == {
        contract.META_PRECISION,
        contract.META_QUANTIZED_FOR,
        contract.META_QUANTIZATION,
    }
    assert metadata[contract.META_PRECISION] == "int8" and metadata[contract.META_QUANTIZED_FOR] == runtime
    record = json.loads(metadata[contract.META_QUANTIZATION])
    assert record["tool"] == ("onnxruntime.quantization" if runtime == "onnxruntime" else "nncf")
    assert record["calibration"]["images"] == result.calibration_images == len(IMAGE_SIZES)
    assert record["calibration"]["shapes"]["distinct"] == 3  # 160x213, 213x160, 160x160

    assert result.quantized_nodes == fed_by_dequantize(int8) == record["quantized_nodes"]
    assert result.quantized_nodes["Conv"] >= 10 and result.quantized_nodes["MatMul"] >= 10
    # Attention's score/value MatMuls and the box head stay float (exporters.quantize's default).
    assert result.kept_high_precision.get("MatMul", 0) >= 4

    msda = [n for n in int8.graph.node if n.op_type == contract.MSDA_OP_TYPE]
    if model == "deformable_detr_r50" and runtime == "onnxruntime":
        # The MSDeformAttn nodes and their function stay as exported, fed by float values.
        assert len(msda) == 4 and [f.name for f in int8.functions] == [contract.MSDA_OP_TYPE]
        dequantized = {o for n in int8.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        assert not any(dequantized.intersection(n.input) for n in msda)
    else:
        # OpenVINO's copy is inlined (NNCF reads no local functions); its sampling is GridSample, unquantized.
        assert not msda and not int8.functions
        assert contract.MSDA_DOMAIN not in {o.domain for o in int8.opset_import}


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("model", MODELS)
def test_int8_for_cpu_runs_in_its_runtime_close_to_fp32(quantized, runtime, model):
    source, result = quantized(runtime, model)
    images = np.random.default_rng(1).standard_normal(CHECK_SHAPE).astype(np.float32)
    run = ort_outputs if runtime == "onnxruntime" else openvino_outputs
    reference, int8 = run(source, images), run(result.path, images)
    boxes = int8[contract.OUTPUT_BOXES]
    assert boxes.shape == reference[contract.OUTPUT_BOXES].shape and boxes.shape[0] == CHECK_SHAPE[0]
    box_diff = float(np.abs(boxes - reference[contract.OUTPUT_BOXES]).max())
    assert 0 < box_diff < MAX_BOX_DIFF  # 0 would mean nothing was quantized
    correlation = np.corrcoef(int8[contract.OUTPUT_LOGITS].ravel(), reference[contract.OUTPUT_LOGITS].ravel())[0, 1]
    assert correlation > MIN_LOGIT_CORRELATION


def test_bad_requests_are_one_line_errors(tiny_export, quantized, images_folder, tmp_path, monkeypatch):
    source = tiny_export("detr_r50")
    output = tmp_path / "int8.onnx"
    with pytest.raises(DetrDeployError, match="unknown CPU runtime 'tflite'"):
        quantize_for_cpu(source, output, runtime="tflite", calibration_images=images_folder)
    with pytest.raises(DetrDeployError, match="int8 needs calibration images"):
        quantize_for_cpu(source, output, runtime="onnxruntime")
    with pytest.raises(DetrDeployError, match="'entropy' is not one of openvino's"):
        quantize_for_cpu(
            source, output, runtime="openvino", calibration_images=images_folder, calibration_method="entropy"
        )
    _, done = quantized("onnxruntime", "detr_r50")
    with pytest.raises(DetrDeployError, match="already converted"):
        quantize_for_cpu(done.path, output, runtime="openvino", calibration_images=images_folder)
    # A missing quantizer names the pip command.
    import builtins

    real_import = builtins.__import__

    def no_nncf(name, *args, **kwargs):
        if name == "nncf" or name.startswith("nncf."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_nncf)
    with pytest.raises(DetrDeployError, match="pip install nncf") as missing:
        quantize_for_cpu(source, output, runtime="openvino", calibration_images=images_folder)
    assert "\n" not in str(missing.value)
    assert not output.exists() and not list(tmp_path.glob(".int8.onnx.*"))


def test_cli_target_refusals(tiny_export, images_folder, tmp_path):
    source, output = tiny_export("detr_r50"), tmp_path / "int8.onnx"
    base = ("quantize", source, "--output", output, "--calibration-images", images_folder)
    assert_one_line_error(
        run_cli(*base, "--target", "onnxruntime", "--keep-high-precision", "attention"), "--target tensorrt"
    )
    assert_one_line_error(run_cli(*base, "--target", "openvino", "--high-precision", "fp32"), "--target tensorrt")
    assert_one_line_error(run_cli(*base, "--target", "openvino", "--calibration-method", "entropy"), "openvino's")
    assert_one_line_error(
        run_cli("quantize", source, "--output", output, "--precision", "fp16", "--target", "openvino"),
        "--precision int8",
    )
    assert_one_line_error(run_cli("quantize", source, "--output", output, "--target", "onnxruntime"), "calibration")
    assert not output.exists()


def test_cli_quantizes_for_onnxruntime(tiny_export, images_folder, tmp_path):
    output = tmp_path / "int8.onnx"
    result = run_cli(
        "quantize", tiny_export("detr_r50"), "--output", output, "--calibration-images", images_folder,
        "--target", "onnxruntime",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "INT8 for onnxruntime" in result.output and "Conv" in result.output
    assert read_metadata(onnx.load(str(output)))[contract.META_QUANTIZED_FOR] == "onnxruntime"
