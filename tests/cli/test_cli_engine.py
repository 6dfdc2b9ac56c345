"""The real CLI: build-engine (ahead of time with TensorRT-RTX, no GPU needed) and verify-parity --engine, with their
one-line errors. Engines are run by the GPU tests in tests/runtime."""

import json
import shutil
import subprocess
import sys

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from detr_deploy import contract
from detr_deploy.io import sha256_of
from detr_deploy.plugins import find_plugin_library
from detr_deploy.sidecar import read_sidecar
from tests.helpers import REPO, assert_one_line_error
from tests.helpers import run_cli as run

pytestmark = pytest.mark.trt

# Full-size models, as issue 4 asks: (zoo name, msda mode, output shapes without the batch). DETR-panoptic holds all
# of DETR; without a GPU the plugin-mode Deformable DETR is built from its MSDeformAttn function, the same GridSample
# decomposition a grid-sample export inlines (tests/exporters/test_engine_build.py builds both modes of tiny models).
FULL_SIZE = [
    ("detr_r50_panoptic", "plugin", {"pred_logits": [100, 251], "pred_boxes": [100, 4], "pred_masks": [100, -1, -1]}),
    ("deformable_detr_r50", "plugin", {"pred_logits": [300, 91], "pred_boxes": [300, 4]}),
]


@pytest.fixture(autouse=True)
def _needs_tensorrt_rtx():
    pytest.importorskip("tensorrt_rtx_bindings", reason="the ahead-of-time builds need TensorRT-RTX")


def build(onnx_path, engine, *options):
    return run("build-engine", onnx_path, "--output", engine, "--compute-capability", "89", *options)


@pytest.mark.slow
@pytest.mark.parametrize("zoo_name, msda, outputs", FULL_SIZE, ids=[f"{m}-{s}" for m, s, _ in FULL_SIZE])
def test_fresh_full_size_exports_build_with_the_default_dynamic_profile(zoo_name, msda, outputs, tmp_path):
    import tensorrt_rtx_bindings

    onnx_path, engine = tmp_path / f"{zoo_name}.onnx", tmp_path / f"{zoo_name}.engine"
    assert run("export", "--model", zoo_name, "--msda", msda, "--output", onnx_path).exit_code == 0
    result = build(onnx_path, engine)
    assert result.exit_code == 0, result.output
    sidecar = read_sidecar(engine)
    assert json.loads((tmp_path / f"{zoo_name}.engine.json").read_text())["format"] == "detr_deploy.engine/1"
    assert sidecar.profile["images"].min == [1, 3, 320, 320]
    assert sidecar.profile["images"].opt == [1, 3, 800, 1088]
    assert sidecar.profile["images"].max == [4, 3, 1344, 1344]
    assert (sidecar.tensorrt_flavour, sidecar.tensorrt_version) == ("tensorrt-rtx", tensorrt_rtx_bindings.__version__)
    assert (sidecar.compute_capability, sidecar.ahead_of_time, sidecar.precision) == ("8.9", True, "fp32")
    assert [(t.name, t.dtype, t.shape) for t in sidecar.inputs] == [("images", "float32", [-1, 3, -1, -1])]
    assert {t.name: t.shape[1:] for t in sidecar.outputs} == outputs
    assert {t.dtype for t in sidecar.outputs} == {"float32"}
    metadata = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    assert sidecar.model == metadata and sidecar.model[contract.META_MODEL] == zoo_name
    assert sidecar.source_onnx == onnx_path.name and sidecar.source_onnx_sha256 == sha256_of(onnx_path)
    assert sidecar.engine_sha256 == sha256_of(engine) and sidecar.engine_bytes > 20_000_000
    if zoo_name.startswith("deformable") and msda == "plugin":
        uses_plugin = torch.cuda.is_available() and find_plugin_library() is not None
        assert sidecar.msda_path == ("plugin" if uses_plugin else "onnx-function")
        assert sidecar.msda_nodes == 12  # 6 encoder + 6 decoder layers
        assert "MSDeformAttn: 12 nodes" in result.output
    else:
        assert (sidecar.msda_path, sidecar.msda_nodes, sidecar.plugin) == ("none", 0, None)


# Issue 12: RT-DETR and DINO, full size, with the profile their users deploy (batch 1..4, sides 320..1024), every
# deformable attention an MSDeformAttn node (6 decoder layers; DINO 6 + 6). Issue 22: RT-DETR-L (HGNetv2) and D-FINE-S
# (3 decoder layers, 3/6/3 points per level padded to 6, no value/output projections).
SUCCESSORS = [
    ("rtdetr_r50vd", {"pred_logits": [300, 80], "pred_boxes": [300, 4]}, 6),
    ("rtdetr_hgnetv2_l", {"pred_logits": [300, 80], "pred_boxes": [300, 4]}, 6),
    ("dino_4scale_r50", {"pred_logits": [900, 91], "pred_boxes": [900, 4]}, 12),
    ("dfine_hgnetv2_s", {"pred_logits": [300, 80], "pred_boxes": [300, 4]}, 3),
]


@pytest.mark.slow
@pytest.mark.parametrize("zoo_name, outputs, msda_nodes", SUCCESSORS, ids=[name for name, _, _ in SUCCESSORS])
def test_query_selection_detrs_build_ahead_of_time_for_320_to_1024(zoo_name, outputs, msda_nodes, tmp_path):
    onnx_path, engine = tmp_path / f"{zoo_name}.onnx", tmp_path / f"{zoo_name}.engine"
    exported = run("export", "--model", zoo_name, "--output", onnx_path)
    assert exported.exit_code == 0, exported.output
    assert f"({msda_nodes} MSDeformAttn nodes; {msda_nodes} plugin)" in exported.output
    shapes = ("images:1x3x320x320", "images:1x3x640x640", "images:4x3x1024x1024")
    result = build(onnx_path, engine, *(f"--{k}-shapes={v}" for k, v in zip(("min", "opt", "max"), shapes)))
    assert result.exit_code == 0, result.output
    sidecar = read_sidecar(engine)
    profile = sidecar.profile["images"]
    assert (profile.min, profile.opt, profile.max) == ([1, 3, 320, 320], [1, 3, 640, 640], [4, 3, 1024, 1024])
    assert (sidecar.compute_capability, sidecar.ahead_of_time, sidecar.precision) == ("8.9", True, "fp32")
    assert [(t.name, t.shape) for t in sidecar.inputs] == [("images", [-1, 3, -1, -1])]
    assert {t.name: t.shape[1:] for t in sidecar.outputs} == outputs
    assert sidecar.msda_nodes == msda_nodes and sidecar.engine_bytes > 20_000_000
    uses_plugin = torch.cuda.is_available() and find_plugin_library() is not None
    assert sidecar.msda_path == ("plugin" if uses_plugin else "onnx-function")
    assert sidecar.model[contract.META_MODEL] == zoo_name


def test_sides_that_are_not_multiples_of_32_are_refused_for_rtdetr(tmp_path):
    """The size rule comes from the export's metadata (detr_deploy.size_divisor), before anything is built."""
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "height", "width"])
    boxes = helper.make_tensor_value_info("pred_boxes", TensorProto.FLOAT, ["batch", "height", "width"])
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["images"], ["pred_boxes"], axes=[1], keepdims=0)], "g", [images], [boxes]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    for key, value in ((contract.META_FAMILY, "rtdetr"), (contract.META_SIZE_DIVISOR, "32")):
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, tmp_path / "rtdetr.onnx")
    result = build(tmp_path / "rtdetr.onnx", tmp_path / "r.engine", "--max-shapes", "images:2x3x640x650")
    assert_one_line_error(result, "multiples of 32")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rtdetr.onnx"]


@pytest.fixture(scope="module")
def tiny_engines(tiny_export, tmp_path_factory):
    """Two tiny engines (DETR fp32, Deformable DETR fp16), each with its sidecar."""
    folder = tmp_path_factory.mktemp("engines")
    detr, deformable = folder / "detr.engine", folder / "deformable.engine"
    assert build(tiny_export("detr_r50"), detr, "--plugins", "none").exit_code == 0
    result = build(tiny_export("deformable_detr_r50"), deformable, "--precision", "fp16", "--plugins", "none")
    assert result.exit_code == 0, result.output
    assert "MSDeformAttn: 4 nodes built from their ONNX function" in result.output
    assert "fp16, tensorrt-rtx" in result.output
    assert "profile 1x3x320x320 / 1x3x800x1088 / 4x3x1344x1344" in result.output
    return detr, deformable


def copy_engine(engine, folder):
    shutil.copy(engine, folder / engine.name)
    shutil.copy(engine.with_name(engine.name + ".json"), folder / (engine.name + ".json"))
    return folder / engine.name


@pytest.mark.slow
def test_engine_and_sidecar_that_do_not_belong_together(tiny_engines, tmp_path):
    detr, deformable = tiny_engines
    engine = copy_engine(detr, tmp_path)
    shutil.copy(deformable, engine)
    assert_one_line_error(run("verify-parity", "--engine", engine), "does not match detr.engine.json")
    engine.with_name("detr.engine.json").unlink()
    assert_one_line_error(run("verify-parity", "--engine", engine), "detr.engine.json is missing")


@pytest.mark.slow
def test_engine_built_with_another_tensorrt_version(tiny_engines, tmp_path):
    engine = copy_engine(tiny_engines[0], tmp_path)
    sidecar_file = engine.with_name("detr.engine.json")
    data = json.loads(sidecar_file.read_text())
    data["tensorrt_version"] = "0.9.0"
    sidecar_file.write_text(json.dumps(data))
    assert_one_line_error(run("verify-parity", "--engine", engine), "built with tensorrt-rtx 0.9.0", "rebuild it with")


@pytest.mark.slow
def test_running_an_engine_without_a_gpu_is_one_line(tiny_engines):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible; tests/runtime runs the engines")
    assert_one_line_error(run("verify-parity", "--engine", tiny_engines[1]), "needs an NVIDIA GPU")


@pytest.mark.slow
def test_verify_parity_takes_exactly_one_artifact(tiny_engines, tiny_export):
    assert_one_line_error(run("verify-parity"), "exactly one of --onnx")
    assert_one_line_error(
        run("verify-parity", "--onnx", tiny_export("detr_r50"), "--engine", tiny_engines[0]), "exactly one of --onnx"
    )


@pytest.mark.parametrize(
    "options, expected",
    [
        (["--max-shapes", "images:4x3x9000x1344"], "outside what the model takes"),
        (["--min-shapes", "images:1x1x320x320"], "dimension 1 is fixed at 3"),
        (["--opt-shapes", "images:1x3x800"], "has 3 dimensions"),
        (["--plugins", "/no/such/libdetr_deploy_plugins.so"], "plugin library /no/such/libdetr_deploy_plugins.so"),
        (["--compute-capability", "90"], "not a TensorRT-RTX target"),
        (["--workspace", "0"], "positive number of MiB"),
    ],
)
def test_bad_build_options_are_one_line(options, expected, tiny_export, tmp_path):
    assert_one_line_error(build(tiny_export("detr_r50"), tmp_path / "x.engine", *options), expected)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_and_missing_onnx(tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07 this is not protobuf")
    assert_one_line_error(build(corrupt, tmp_path / "x.engine"), "not a readable ONNX file")
    assert_one_line_error(build(tmp_path / "none.onnx", tmp_path / "x.engine"), "does not exist")
    assert [p.name for p in tmp_path.iterdir()] == ["corrupt.onnx"]


def test_a_foreign_onnx_builds_with_a_warning(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["output"])],
        "foreign",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 3, 32, 32])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [2, 3, 32, 32])],
    )
    onnx_path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(onnx_path))
    completed = subprocess.run(
        [sys.executable, "cli.py", "build-engine", str(onnx_path), "--output", str(tmp_path / "foreign.engine")]
        + ["--compute-capability", "89"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 0, completed.stderr
    assert "WARNING: the ONNX file is not a detr_deploy export" in completed.stderr
    sidecar = read_sidecar(tmp_path / "foreign.engine")
    assert sidecar.profile["input"].min == sidecar.profile["input"].max == [2, 3, 32, 32]
    assert sidecar.model == {} and sidecar.msda_path == "none"
