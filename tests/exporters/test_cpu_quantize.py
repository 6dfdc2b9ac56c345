"""INT8 copies for the CPU runtimes (exporters.cpu_quantize): each keeps the export's I/O and metadata, marks the
runtime it is for, has Q/DQ on its Conv and MatMul inputs, runs in that runtime at a size calibration never saw, and
stays close to the fp32 export; bad requests are one line."""

import json

import numpy as np
import onnx
import pytest

from detr_deploy import contract
from detr_deploy.cpu_features import cpu_features, int8_weights_need_reduced_range, parse_cpuinfo
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
# 0.0024 (detr) / 0.0030 (deformable), openvino 0.0022 / 0.0031; logits correlate above 0.9995. On a CPU without
# VNNI (CI, stop 34) 8-bit weights saturated: boxes 0.062 off, logits correlating 0.970-0.979; 7-bit weights
# (reduce_range, what such a CPU gets by default) compute the same everywhere. The bounds fail a broken quantization
# (boxes ~0.3 off) and saturation.
MAX_BOX_DIFF = 0.02
MIN_LOGIT_CORRELATION = 0.99


@pytest.fixture(scope="module")
def images_folder(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("calibration"), IMAGE_SIZES)


@pytest.fixture(scope="module")
def quantized(tiny_export, images_folder, tmp_path_factory):
    """(runtime, model, reduce_range) -> (source path, QuantizeResult), made on first use; reduce_range None: this
    CPU's default (made once where that default is the other value asked for)."""
    made = {}

    def get(runtime, model, reduce_range=None):
        if runtime == "openvino":
            pytest.importorskip("nncf", reason="int8 for OpenVINO needs NNCF (.ci/install installs nncf==3.4.0)")
        key = runtime, model, int8_weights_need_reduced_range() if reduce_range is None else reduce_range
        if key not in made:
            source = tiny_export(model)
            metadata = read_metadata(onnx.load(str(source)))
            inputs = calibration_inputs(images_folder, metadata, shorter_side=160, max_size=220)
            path = tmp_path_factory.mktemp("int8") / f"{model}.{runtime}.onnx"
            made[key] = (
                source,
                quantize_for_cpu(source, path, runtime=runtime, calibration_images=inputs, reduce_range=reduce_range),
            )
        return made[key]

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
    reduced = int8_weights_need_reduced_range()
    assert record["weights"] == {
        "bits": 7 if reduced else 8,
        "reduce_range": reduced,
        "why": f"decided from the quantizing CPU ({cpu_features().summary()})",
    }
    assert weight_levels(int8) == (64 if reduced else 127)

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


def weight_levels(model: onnx.ModelProto) -> int:
    """The largest |quantized weight| of ``model``'s weight Q/DQ: int8 initializers into DequantizeLinear (ONNX
    Runtime) or float initializers into QuantizeLinear, at their scale (NNCF). 127: 8-bit weights; 64: 7-bit."""
    from onnx import numpy_helper

    initializers = {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    largest = 0
    for node in model.graph.node:
        if node.op_type not in ("DequantizeLinear", "QuantizeLinear"):
            continue
        values = initializers.get(node.input[0])
        if values is None:
            continue
        if node.op_type == "DequantizeLinear" and values.dtype == np.int8:
            levels = np.abs(values.astype(np.int32))
        elif node.op_type == "QuantizeLinear" and values.dtype == np.float32 and values.ndim > 1:
            scale = initializers[node.input[1]]
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            shape = [1] * values.ndim
            if scale.size > 1:
                shape[axis] = scale.size
            levels = np.abs(np.round(values / scale.reshape(shape)))
        else:
            continue
        largest = max(largest, int(levels.max()))
    return largest


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("reduce_range", [None, True], ids=["this-cpus-default", "7-bit-weights"])
def test_int8_for_cpu_runs_in_its_runtime_close_to_fp32(quantized, runtime, model, reduce_range, record_property):
    source, result = quantized(runtime, model, reduce_range)
    images = np.random.default_rng(1).standard_normal(CHECK_SHAPE).astype(np.float32)
    run = ort_outputs if runtime == "onnxruntime" else openvino_outputs
    reference, int8 = run(source, images), run(result.path, images)
    boxes = int8[contract.OUTPUT_BOXES]
    assert boxes.shape == reference[contract.OUTPUT_BOXES].shape and boxes.shape[0] == CHECK_SHAPE[0]
    box_diff = float(np.abs(boxes - reference[contract.OUTPUT_BOXES]).max())
    assert 0 < box_diff < MAX_BOX_DIFF  # 0 would mean nothing was quantized
    correlation = np.corrcoef(int8[contract.OUTPUT_LOGITS].ravel(), reference[contract.OUTPUT_LOGITS].ravel())[0, 1]
    bits = json.loads(read_metadata(onnx.load(str(result.path)))[contract.META_QUANTIZATION])["weights"]["bits"]
    record_property(
        "figure",
        f"cpu int8 {runtime} {model} ({bits}-bit weights): boxes max diff {box_diff:.4f}, "
        f"logit correlation {correlation:.5f}",
    )
    assert correlation > MIN_LOGIT_CORRELATION
    if reduce_range:
        assert weight_levels(onnx.load(str(result.path))) == 64


def test_7_bit_weights_are_for_x86_cpus_without_int8_dot_products():
    """The default weight width follows the quantizing CPU's flags (pure logic on /proc/cpuinfo texts)."""

    def cpu(flags, x86=True):
        return parse_cpuinfo(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n", x86=x86)

    assert int8_weights_need_reduced_range(cpu("sse4_2 avx2 fma"))  # Haswell, Zen 2: vpmaddubsw saturates
    assert int8_weights_need_reduced_range(cpu("avx2 avx512f avx512bw"))  # Skylake-SP: AVX-512 without VNNI
    assert not int8_weights_need_reduced_range(cpu("avx2 avx512f avx512_vnni"))  # Cascade Lake, Zen 4
    assert not int8_weights_need_reduced_range(cpu("avx2 avx_vnni"))  # Alder Lake
    assert not int8_weights_need_reduced_range(cpu("fp asimd asimddp", x86=False))  # Arm: int32 dot products
    unread = parse_cpuinfo("", x86=True)
    assert unread.int8_dot_product is None and int8_weights_need_reduced_range(unread)  # unknown: the safe width
    assert cpu("avx2 avx512_bf16").bf16 and not cpu("avx2 avx512_vnni").bf16 and unread.bf16 is None
    assert cpu("avx2").summary() == "Some CPU: int8 dot products (VNNI/AMX) no, bf16 units no"


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
    assert_one_line_error(run_cli(*base, "--reduce-range"), "--reduce-range is for --target onnxruntime or openvino")
    assert not output.exists()


def test_cli_quantizes_for_onnxruntime(tiny_export, images_folder, tmp_path):
    output = tmp_path / "int8.onnx"
    result = run_cli(
        "quantize", tiny_export("detr_r50"), "--output", output, "--calibration-images", images_folder,
        "--target", "onnxruntime", "--reduce-range",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "INT8 for onnxruntime" in result.output and "Conv" in result.output
    int8 = onnx.load(str(output))
    assert read_metadata(int8)[contract.META_QUANTIZED_FOR] == "onnxruntime"
    assert json.loads(read_metadata(int8)[contract.META_QUANTIZATION])["weights"]["why"] == "asked for"
    assert weight_levels(int8) == 64
