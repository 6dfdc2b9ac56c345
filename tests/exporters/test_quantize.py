"""INT8 Q/DQ (NVIDIA ModelOpt) and fp16 copies of an export: the graph keeps the export's I/O, metadata and MSDeformAttn
nodes, runs at sizes and batches calibration never saw, stays close to the fp32 file, and builds with TensorRT-RTX."""

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from detr_deploy import contract
from detr_deploy.errors import DetrDeployError
from exporters.onnx import read_metadata
from exporters.quantize import (
    DEFAULT_KEEP_HIGH_PRECISION,
    calibration_inputs,
    fed_by_dequantize,
    keep_group_nodes,
    quantize_onnx,
    reference_session,
)

# Calibration images come in these sizes (resized to shorter side 160); the checks run at others, and at batch 2.
IMAGE_SIZES = [(120, 160), (160, 120), (150, 200), (140, 140)]
CHECK_SHAPES = [(2, 3, 192, 256), (1, 3, 224, 176)]
# The defaults, and the deformable sampling Linears too (the one group the defaults leave out that this model has).
KEEP = (*DEFAULT_KEEP_HIGH_PRECISION, "sampling")


def write_images(folder, sizes, seed=0):
    """Smooth random pictures (blurred coloured rectangles on a gradient): activations spread as photos' do."""
    from PIL import Image, ImageDraw, ImageFilter

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index, (height, width) in enumerate(sizes):
        gradient = np.linspace(0, 255, width, dtype=np.float32)[None, :, None] * rng.uniform(0.2, 1, (1, 1, 3))
        image = Image.fromarray(np.broadcast_to(gradient, (height, width, 3)).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            x, y = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            draw.rectangle(
                [x, y, x + int(rng.integers(10, width // 2)), y + int(rng.integers(10, height // 2))], colour
            )
        image.filter(ImageFilter.GaussianBlur(1)).save(folder / f"image_{index}.png")
    return folder


def integer_constants(model: onnx.ModelProto) -> set:
    values = {tuple(numpy_helper.to_array(i).ravel().tolist()) for i in model.graph.initializer if i.data_type == 7}
    for node in model.graph.node:
        for attribute in node.attribute:
            if node.op_type == "Constant" and attribute.name == "value" and attribute.t.data_type == 7:
                values.add(tuple(numpy_helper.to_array(attribute.t).ravel().tolist()))
    return values


@pytest.fixture(scope="module")
def source(tiny_export):
    return tiny_export("deformable_detr_r50")


@pytest.fixture(scope="module")
def images_folder(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("calibration"), IMAGE_SIZES)


@pytest.fixture(scope="module")
def int8(source, images_folder, tmp_path_factory):
    metadata = read_metadata(onnx.load(str(source)))
    inputs = calibration_inputs(images_folder, metadata, shorter_side=160, max_size=220)
    path = tmp_path_factory.mktemp("int8") / "model.int8.onnx"
    return quantize_onnx(source, path, calibration_images=inputs, keep_high_precision=KEEP), inputs


def test_calibration_inputs_follow_the_recipe_and_sample_with_a_seed(source, images_folder):
    metadata = read_metadata(onnx.load(str(source)))
    inputs = calibration_inputs(images_folder, metadata, shorter_side=160, max_size=220)
    # Shorter side 160, aspect kept, longer side at most 220; one tensor per image, in file order.
    assert [x.shape for x in inputs] == [(1, 3, 160, 213), (1, 3, 213, 160), (1, 3, 160, 213), (1, 3, 160, 160)]
    assert all(x.dtype == np.float32 for x in inputs)
    chosen = calibration_inputs(images_folder, metadata, count=2, seed=3, shorter_side=160, max_size=220)
    again = calibration_inputs(images_folder, metadata, count=2, seed=3, shorter_side=160, max_size=220)
    assert len(chosen) == 2 and all(np.array_equal(a, b) for a, b in zip(chosen, again))


def test_unreadable_calibration_files_are_skipped_and_reported(source, tmp_path):
    folder = write_images(tmp_path / "mixed", IMAGE_SIZES[:2])
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.txt").write_text("not an image, not counted")
    skipped = []
    inputs = calibration_inputs(folder, read_metadata(onnx.load(str(source))), on_skip=skipped.append)
    assert len(inputs) == 2
    assert len(skipped) == 1 and "broken.jpg" in skipped[0]


def test_missing_or_empty_calibration_folder_is_a_one_line_error(source, tmp_path):
    metadata = read_metadata(onnx.load(str(source)))
    with pytest.raises(DetrDeployError, match="does not exist") as missing:
        calibration_inputs(tmp_path / "nowhere", metadata)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "broken.png").write_bytes(b"\x89PNG truncated")
    with pytest.raises(DetrDeployError, match="empty calibration folder") as empty:
        calibration_inputs(tmp_path / "empty", metadata, on_skip=lambda message: None)
    for error in (missing, empty):
        assert "\n" not in str(error.value)
    # Through quantize_onnx: the same error, and no output file.
    output = tmp_path / "model.int8.onnx"
    with pytest.raises(DetrDeployError, match="empty calibration folder"):
        quantize_onnx(source, output, calibration_images=tmp_path / "empty")
    assert not output.exists() and not list(tmp_path.glob(".model.int8.onnx.*"))


def test_options_are_checked_before_work(source, tmp_path):
    with pytest.raises(DetrDeployError, match="int8 needs calibration images"):
        quantize_onnx(source, tmp_path / "a.onnx")
    with pytest.raises(DetrDeployError, match="unknown part to keep"):
        quantize_onnx(source, tmp_path / "a.onnx", calibration_images=tmp_path, keep_high_precision=["softmax"])
    with pytest.raises(DetrDeployError, match="'layer_norm'"):  # the CLI's comma-separated form
        quantize_onnx(
            source, tmp_path / "a.onnx", calibration_images=tmp_path, keep_high_precision="box_head,layer_norm"
        )
    with pytest.raises(DetrDeployError, match="unknown precision"):
        quantize_onnx(source, tmp_path / "a.onnx", precision="int4")
    assert not (tmp_path / "a.onnx").exists()


@pytest.mark.slow
def test_int8_graph_has_qdq_keeps_io_msda_nodes_and_metadata(source, int8):
    result, inputs = int8
    original, model = onnx.load(str(source)), onnx.load(str(result.path))
    onnx.checker.check_model(model, full_check=True)
    assert result.precision == "int8" and result.calibration_images == len(inputs) == len(IMAGE_SIZES)

    # Q/DQ present, and the result counts what the file holds.
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("QuantizeLinear") > 20 and ops.count("DequantizeLinear") >= ops.count("QuantizeLinear")
    assert result.quantized_nodes == fed_by_dequantize(model)
    assert result.quantized_nodes["Conv"] > 5 and result.quantized_nodes["MatMul"] > 5

    # Parts kept in high precision: no DequantizeLinear feeds any of their nodes.
    groups = keep_group_nodes(original, KEEP)
    kept = {name for names in groups.values() for name in names}
    assert kept and sum(result.kept_high_precision.values()) > 0
    producer = {output: node for node in model.graph.node for output in node.output}
    by_name = {node.name: node for node in model.graph.node}
    for name in kept:
        fed = [i for i in by_name[name].input if i in producer and producer[i].op_type == "DequantizeLinear"]
        assert not fed, f"{name} ({by_name[name].op_type}) is fed by DequantizeLinear"
    for group in KEEP:  # each group found its Linears: box head MLP, sampling offsets/weights, attention products
        assert sum(by_name[n].op_type == "MatMul" for n in groups[group]) >= 2, group

    # MSDeformAttn: every node kept with its attributes, float inputs (no DQ), its function and domain import.
    msda = [n for n in model.graph.node if n.op_type == contract.MSDA_OP_TYPE]
    assert [(n.name, n.attribute) for n in msda] == [
        (n.name, n.attribute) for n in original.graph.node if n.op_type == contract.MSDA_OP_TYPE
    ]
    assert not any(producer[i].op_type == "DequantizeLinear" for n in msda for i in n.input if i in producer)
    [function] = model.functions
    assert (function.domain, function.name) == (contract.MSDA_DOMAIN, contract.MSDA_OP_TYPE)
    opsets = {o.domain: o.version for o in model.opset_import}
    assert opsets[""] >= 19 and opsets[contract.MSDA_DOMAIN] == contract.MSDA_DOMAIN_VERSION
    assert {o.domain: o.version for o in function.opset_import}[""] == opsets[""]

    # I/O as exported (names, float32, dynamic batch/height/width), and no calibration shape baked into a constant.
    def signature(m):
        return [
            (v.name, v.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
            for v in [*m.graph.input, *m.graph.output]
        ]

    assert signature(model) == signature(original)
    assert signature(model)[0] == ("images", onnx.TensorProto.FLOAT, ["batch", 3, "height", "width"])
    assert integer_constants(model) <= integer_constants(original)

    # Metadata: the export's, plus precision and a description of the quantization.
    metadata, exported = read_metadata(model), read_metadata(original)
    assert {k: metadata[k] for k in exported} == exported
    assert metadata[contract.META_PRECISION] == "int8"
    description = json.loads(metadata[contract.META_QUANTIZATION])
    assert description["tool"] == "nvidia-modelopt" and description["version"]
    assert description["calibration"]["method"] == "entropy"
    assert description["calibration"]["images"] == len(IMAGE_SIZES)
    assert description["calibration"]["shapes"]["distinct"] == 3
    assert set(description["kept_high_precision"]["groups"]) == set(KEEP)
    assert set(description["kept_high_precision"]["nodes"]) == kept
    # The rest in fp16 (the default), Q/DQ scales with it: DequantizeLinear then yields fp16 for the int8 kernels.
    assert description["high_precision_dtype"] == "fp16"
    initializers = {init.name: init.data_type for init in model.graph.initializer}
    scales = {initializers.get(n.input[1]) for n in model.graph.node if n.op_type == "DequantizeLinear"}
    assert scales == {onnx.TensorProto.FLOAT16}


@pytest.mark.slow
def test_int8_runs_at_new_sizes_and_batch_close_to_fp32(source, int8):
    result, _ = int8
    reference, quantized = reference_session(source), reference_session(result.path)
    rng = np.random.default_rng(7)
    largest = {}
    for shape in CHECK_SHAPES:
        images = rng.standard_normal(shape, dtype=np.float32)
        expected = reference.run(None, {"images": images})
        actual = quantized.run(None, {"images": images})
        for output, want, got in zip(reference.get_outputs(), expected, actual):
            assert got.shape == want.shape and np.isfinite(got).all()
            spread = float(want.max() - want.min())
            error = float(np.abs(got - want).max())
            # INT8 steps are 1/127 of each tensor's calibrated range; a dozen quantized layers in a row compound
            # them to a few percent of an output's spread (measured here: logits 1-4%, boxes under 1%). A wrong
            # scale or a broken graph misses by far more than 10%.
            assert error <= 0.1 * spread, f"{output.name} {shape}: {error} > 10% of {spread}"
            largest[output.name] = max(largest.get(output.name, 0.0), error)
    # Not a vacuous comparison: INT8 really computes differently.
    assert largest[contract.OUTPUT_LOGITS] > 1e-4


@pytest.mark.slow
def test_int8_from_a_folder_uses_the_exports_recipe_and_a_seeded_choice(source, images_folder, tmp_path):
    result = quantize_onnx(source, tmp_path / "model.int8.onnx", calibration_images=images_folder, calibration_count=2)
    assert result.calibration_images == 2 and result.skipped_images == ()
    description = json.loads(read_metadata(onnx.load(str(result.path)))[contract.META_QUANTIZATION])
    # The official resize (shorter side 800) of two of the four pictures.
    shapes = description["calibration"]["shapes"]
    assert description["calibration"]["images"] == 2 and 800 in shapes["min"] and 800 in shapes["max"]


def test_fp16_and_bf16_copies_record_precision_and_keep_metadata(source, tmp_path):
    result = quantize_onnx(source, tmp_path / "model.fp16.onnx", precision="fp16")
    model = onnx.load(str(result.path))
    metadata, exported = read_metadata(model), read_metadata(onnx.load(str(source)))
    assert metadata[contract.META_PRECISION] == "fp16" and contract.META_QUANTIZATION not in metadata
    assert {k: metadata[k] for k in exported} == exported
    assert result.calibration_images == 0 and result.quantized_nodes == {}
    assert result.kept_high_precision["LayerNormalization"] > 0
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer)
    # A converted file is not converted again.
    with pytest.raises(DetrDeployError, match="already converted"):
        quantize_onnx(result.path, tmp_path / "again.onnx", precision="fp16")
    bf16 = onnx.load(str(quantize_onnx(source, tmp_path / "model.bf16.onnx", precision="bf16").path))
    assert read_metadata(bf16)[contract.META_PRECISION] == "bf16"
    assert any(init.data_type == onnx.TensorProto.BFLOAT16 for init in bf16.graph.initializer)


@pytest.mark.slow
@pytest.mark.trt
def test_int8_file_builds_with_tensorrt_rtx_ahead_of_time(int8, tmp_path):
    from detr_deploy.tensorrt_flavours import TENSORRT_RTX, is_installed
    from exporters.engine_build import build_engine

    if not is_installed(TENSORRT_RTX):
        pytest.skip("TensorRT-RTX is not installed: pip install tensorrt-rtx-cu13-bindings tensorrt-rtx-cu13-libs")

    result, _ = int8
    build = build_engine(
        result.path,
        tmp_path / "model.int8.engine",
        compute_capability=89,
        min_shapes="images:1x3x160x160",
        opt_shapes="images:1x3x192x256",
        max_shapes="images:2x3x256x256",
    )
    assert build.path.stat().st_size > 0 and build.sidecar_path.is_file()
    assert build.sidecar.model[contract.META_PRECISION] == "int8"
