"""build_engine: shape profiles (trtexec syntax, defaults from the export), precision, the sidecar, progress, the
timing cache and the errors. Builds run ahead of time with TensorRT-RTX (SM89), so no GPU is needed."""

import json

import onnx
import pytest
from onnx import TensorProto, helper

from detr_deploy import contract
from detr_deploy.errors import DetrDeployError
from detr_deploy.io import sha256_of
from detr_deploy.sidecar import ShapeProfile, read_sidecar, sidecar_path
from exporters.engine_build import build_engine, parse_shapes, resolve_profile

DEFAULT = ShapeProfile(**{key: list(value) for key, value in contract.DEFAULT_PROFILE.items()})


def relu_model(shape, metadata=None) -> onnx.ModelProto:
    """A model that is not a detr_deploy export: one Relu, input 'x' of ``shape`` (None = dynamic)."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    return model


def test_parse_shapes_takes_trtexec_syntax():
    assert parse_shapes("images:1x3x320x320") == {"images": [1, 3, 320, 320]}
    assert parse_shapes("a:2x4, b:7") == {"a": [2, 4], "b": [7]}
    assert parse_shapes(None) == {}
    for bad in ("images=1x3x320x320", "images:1x3x", "images:1,3"):
        with pytest.raises(DetrDeployError, match="malformed shape"):
            parse_shapes(bad)


def test_profile_defaults_come_from_the_export_metadata(tiny_export):
    model = onnx.load(str(tiny_export("detr_r50")))
    metadata = {p.key: p.value for p in model.metadata_props}
    assert metadata[contract.META_PROFILE] == "min=1x3x320x320;opt=1x3x800x1088;max=4x3x1344x1344"
    profile, warnings = resolve_profile(model)
    assert profile == {"images": DEFAULT} and warnings == []
    # A profile recorded in the file wins over the built-in default.
    recorded = next(p for p in model.metadata_props if p.key == contract.META_PROFILE)
    recorded.value = "min=2x3x64x64;opt=2x3x96x96;max=3x3x128x128"
    assert resolve_profile(model)[0]["images"] == ShapeProfile([2, 3, 64, 64], [2, 3, 96, 96], [3, 3, 128, 128])
    # trtexec: --optShapes alone sets min and max too.
    only_opt, _ = resolve_profile(model, opt_shapes="images:2x3x480x640")
    assert only_opt["images"] == ShapeProfile([2, 3, 480, 640], [2, 3, 480, 640], [2, 3, 480, 640])


@pytest.mark.parametrize(
    "shapes, expected",
    [
        ({"min_shapes": "boxes:1x3x320x320"}, "the model's inputs are: images"),
        ({"min_shapes": "images:1x3x320"}, "has 3 dimensions; images has 4"),
        ({"min_shapes": "images:1x4x320x320"}, "dimension 1 is fixed at 3"),
        ({"max_shapes": "images:4x3x9000x1344"}, "height and width 64..8192"),
        ({"min_shapes": "images:1x3x32x320"}, "height and width 64..8192"),
        ({"max_shapes": "images:2000x3x320x320"}, "batch 1..1024"),
        ({"min_shapes": "images:2x3x900x900"}, "need min <= opt <= max"),
        ({"min_shapes": "images:0x3x320x320"}, "must be at least 1"),
    ],
)
def test_shapes_outside_what_the_model_takes_are_refused(shapes, expected, tiny_export):
    with pytest.raises(DetrDeployError, match=expected):
        resolve_profile(onnx.load(str(tiny_export("detr_r50"))), **shapes)


def test_a_foreign_onnx_uses_its_static_shapes_with_a_warning_and_dynamic_ones_need_shapes():
    profile, warnings = resolve_profile(relu_model([2, 8]))
    assert profile == {"x": ShapeProfile([2, 8], [2, 8], [2, 8])}
    assert "not a detr_deploy export" in warnings[0]
    with pytest.raises(DetrDeployError, match=r"dynamic dimensions \[N, 8\]; give --min-shapes"):
        resolve_profile(relu_model(["N", 8]))
    profile, _ = resolve_profile(relu_model(["N", 8]), min_shapes="x:1x8", opt_shapes="x:4x8", max_shapes="x:16x8")
    assert profile["x"] == ShapeProfile([1, 8], [4, 8], [16, 8])


@pytest.mark.slow
@pytest.mark.trt
# fp32 builds for real each run (``real_build``): the one tiny ahead-of-time build of an export that would catch an
# engine store hiding a broken build path; fp16 and bf16 replay the builds recorded when their keys were cold.
@pytest.mark.parametrize("precision", [pytest.param("fp32", marks=pytest.mark.real_build), "fp16", "bf16"])
def test_builds_ahead_of_time_with_a_sidecar_describing_the_engine(precision, tiny_export, tmp_path):
    trt = pytest.importorskip("tensorrt_rtx_bindings", reason="the ahead-of-time build needs TensorRT-RTX")
    onnx_path = tiny_export("deformable_detr_r50")
    engine = tmp_path / "model.engine"
    events = []
    result = build_engine(
        onnx_path, engine, precision=precision, compute_capability=89, plugins="none", on_event=events.append
    )
    sidecar = read_sidecar(engine)  # also checks the engine's size and sha256
    assert result.sidecar == sidecar and result.sidecar_path == sidecar_path(engine)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.engine", "model.engine.json"]
    assert (sidecar.tensorrt_flavour, sidecar.tensorrt_version) == ("tensorrt-rtx", trt.__version__)
    assert (sidecar.compute_capability, sidecar.ahead_of_time, sidecar.precision) == ("8.9", True, precision)
    assert [(t.name, t.dtype, t.shape) for t in sidecar.inputs] == [("images", "float32", [-1, 3, -1, -1])]
    assert [(t.name, t.dtype, t.shape) for t in sidecar.outputs] == [
        ("pred_logits", "float32", [-1, 12, 5]),
        ("pred_boxes", "float32", [-1, 12, 4]),
    ]
    assert sidecar.profile == {"images": DEFAULT}
    assert (sidecar.msda_path, sidecar.msda_nodes, sidecar.plugin) == ("onnx-function", 4, None)
    assert sidecar.model == {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert sidecar.source_onnx_sha256 == sha256_of(onnx_path)
    if precision == "fp32":
        assert sidecar.fp32_ops == {}
    else:
        assert sidecar.fp32_ops["LayerNormalization"] == 10 and sidecar.fp32_ops["Softmax"] == 6
    stages = [e.phase for e in events if e.kind == "stage"]
    assert stages == ["parsing", "building"]
    top = [e for e in events if e.kind == "phase_start" and e.parent is None]
    assert top and top[0].steps > 0
    assert any(e.kind == "step" for e in events) and events[-1].kind == "phase_finish"


@pytest.mark.slow
@pytest.mark.trt
@pytest.mark.real_build
def test_timing_cache_is_written_then_reused(tiny_export, tmp_path):
    pytest.importorskip("tensorrt_rtx_bindings", reason="the ahead-of-time build needs TensorRT-RTX")
    cache = tmp_path / "timing.cache"
    options = dict(compute_capability=89, plugins="none", timing_cache=cache, workspace_mib=512)
    first = build_engine(tiny_export("detr_r50"), tmp_path / "a.engine", **options)
    assert cache.stat().st_size > 0 and first.sidecar.workspace_mib == 512
    second = build_engine(tiny_export("detr_r50"), tmp_path / "b.engine", **options)
    assert second.sidecar.engine_bytes > 0
    # A cache TensorRT cannot read is replaced (TensorRT starts from an empty one), as trtexec does.
    cache.write_bytes(b"garbage")
    build_engine(tiny_export("detr_r50"), tmp_path / "c.engine", **options)
    assert cache.read_bytes() != b"garbage" and cache.stat().st_size > 0


@pytest.mark.trt
def test_parser_errors_name_the_node_and_op_and_leave_no_files(tmp_path):
    pytest.importorskip("tensorrt_rtx_bindings", reason="the ahead-of-time build needs TensorRT-RTX")
    model = relu_model([1, 8])
    model.graph.node.append(helper.make_node("NoSuchOp", ["y"], ["z"], name="mystery", domain="example.ops"))
    model.graph.output[0].name = "z"
    model.opset_import.append(helper.make_opsetid("example.ops", 1))
    onnx_path = tmp_path / "foreign.onnx"
    onnx.save(model, str(onnx_path))
    with pytest.raises(DetrDeployError, match=r"cannot parse .*node mystery \(NoSuchOp\)"):
        build_engine(onnx_path, tmp_path / "foreign.engine", compute_capability=89)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign.onnx"]


@pytest.mark.slow
@pytest.mark.trt
@pytest.mark.real_build
def test_an_explicit_plugin_library_without_a_gpu_aborts_the_worker_not_the_caller(plugin_build, tiny_export, tmp_path):
    pytest.importorskip("tensorrt_rtx_bindings", reason="the ahead-of-time build needs TensorRT-RTX")
    import torch

    if torch.cuda.is_available():
        pytest.skip("TensorRT-RTX imports plugin nodes fine with a GPU; this is the no-GPU behaviour")
    if plugin_build.plugin_library is None:
        pytest.skip(f"plugin library not built: {'; '.join(plugin_build.skipped)}")
    with pytest.raises(DetrDeployError, match=r"aborted \(SIGABRT\) while parsing.*--plugins none"):
        build_engine(
            tiny_export("deformable_detr_r50"),
            tmp_path / "plugin.engine",
            compute_capability=89,
            plugins=plugin_build.plugin_library,
        )
    assert list(tmp_path.iterdir()) == []


def test_option_errors_come_before_any_work(tiny_export, tmp_path):
    onnx_path = tiny_export("detr_r50")
    with pytest.raises(DetrDeployError, match="unknown precision"):
        build_engine(onnx_path, tmp_path / "x.engine", precision="int4")
    with pytest.raises(DetrDeployError, match="not a TensorRT-RTX target"):
        build_engine(onnx_path, tmp_path / "x.engine", compute_capability=90)
    with pytest.raises(DetrDeployError, match="needs TensorRT-RTX"):
        build_engine(onnx_path, tmp_path / "x.engine", compute_capability=89, backend="tensorrt")
    with pytest.raises(DetrDeployError, match="output directory .* does not exist"):
        build_engine(onnx_path, tmp_path / "no" / "x.engine", compute_capability=89)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.trt
def test_missing_or_corrupt_inputs(tiny_export, tmp_path):
    pytest.importorskip("tensorrt_rtx_bindings", reason="the ahead-of-time build needs TensorRT-RTX")
    onnx_path = tiny_export("detr_r50")
    with pytest.raises(DetrDeployError, match="plugin library .* does not exist"):
        build_engine(onnx_path, tmp_path / "x.engine", compute_capability=89, plugins=tmp_path / "missing.so")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage")
    with pytest.raises(DetrDeployError, match="not a readable ONNX file"):
        build_engine(corrupt, tmp_path / "x.engine", compute_capability=89)
    with pytest.raises(DetrDeployError, match="does not exist"):
        build_engine(tmp_path / "missing.onnx", tmp_path / "x.engine", compute_capability=89)
    assert [p.name for p in tmp_path.iterdir()] == ["corrupt.onnx"]


def test_sidecar_round_trips_through_json(tmp_path):
    from detr_deploy.sidecar import EngineSidecar, PluginInfo, TensorInfo

    sidecar = EngineSidecar(
        engine_file="m.engine",
        engine_sha256="0" * 64,
        engine_bytes=3,
        tensorrt_flavour="tensorrt",
        tensorrt_version="10.13.0",
        compute_capability="9.0",
        ahead_of_time=False,
        precision="fp16",
        fp32_ops={"Softmax": 2},
        inputs=[TensorInfo("images", "float32", [-1, 3, -1, -1])],
        outputs=[TensorInfo("pred_boxes", "float32", [-1, 100, 4])],
        profile={"images": DEFAULT},
        msda_path="plugin",
        msda_nodes=12,
        plugin=PluginInfo("libdetr_deploy_plugins.so", "1" * 64, "MSDeformAttn", "detr_deploy", "1"),
    )
    assert EngineSidecar.from_dict(json.loads(sidecar.to_json())) == sidecar


@pytest.mark.slow
@pytest.mark.trt
def test_padding_mask_exports_build_with_a_profile_following_the_images(confident_export, tmp_path):
    pytest.importorskip("tensorrt_rtx_bindings", reason="the ahead-of-time build needs TensorRT-RTX")
    onnx_path = confident_export("deformable_detr_r50")
    # --max-shapes images:2x3x800x800 leaves opt (1x3x800x1088) above max: refused. A consistent one follows.
    with pytest.raises(DetrDeployError, match="need min <= opt <= max"):
        resolve_profile(onnx.load(str(onnx_path)), max_shapes="images:2x3x800x800")
    profile, _ = resolve_profile(onnx.load(str(onnx_path)), opt_shapes="images:2x3x608x800")
    assert profile["padding_mask"] == ShapeProfile([2, 608, 800], [2, 608, 800], [2, 608, 800])
    result = build_engine(onnx_path, tmp_path / "masked.engine", compute_capability=89, plugins="none")
    assert [(t.name, t.dtype, t.shape) for t in result.sidecar.inputs] == [
        ("images", "float32", [-1, 3, -1, -1]),
        ("padding_mask", "uint8", [-1, -1, -1]),
    ]
    assert result.sidecar.profile["padding_mask"] == ShapeProfile([1, 320, 320], [1, 800, 1088], [4, 1344, 1344])


@pytest.mark.slow
@pytest.mark.trt
def test_a_grid_sample_export_builds_with_no_msdeformattn_node(tiny_export, tmp_path):
    pytest.importorskip("tensorrt_rtx_bindings", reason="the ahead-of-time build needs TensorRT-RTX")
    engine = tmp_path / "plain.engine"
    build_engine(tiny_export("deformable_detr_r50", msda="grid-sample"), engine, compute_capability=89)
    sidecar = read_sidecar(engine)
    assert (sidecar.msda_path, sidecar.msda_nodes, sidecar.plugin) == ("none", 0, None)
    assert [(t.name, t.shape) for t in sidecar.outputs] == [("pred_logits", [-1, 12, 5]), ("pred_boxes", [-1, 12, 4])]
