"""The repository's config.pbtxt files checked as text against the engine description and the ONNX file (no
tensorrt or onnxruntime backend runs here), the plugin library's placement and the exact server flags."""

import dataclasses
import re

import onnx
import pytest

from detr_deploy.errors import DetrDeployError
from detr_deploy.io import sha256_of
from detr_deploy.sidecar import EngineSidecar, PluginInfo, ShapeProfile, TensorInfo, sidecar_path
from detr_deploy.triton.repository import TritonOptions, write_repository


def fake_engine(folder, profile_max_batch=4):
    """An engine file (bytes that only need to match their description), its description, a plugin library and the
    library that registers it when dlopened."""
    engine = folder / "model.engine"
    engine.write_bytes(b"engine bytes")
    library = folder / "libdetr_deploy_plugins.so"
    library.write_bytes(b"plugin bytes")
    (folder / "libdetr_deploy_plugins_autoreg.so").write_bytes(b"registering bytes")
    sidecar = EngineSidecar(
        engine_file=engine.name,
        engine_sha256=sha256_of(engine),
        engine_bytes=engine.stat().st_size,
        tensorrt_flavour="tensorrt",
        tensorrt_version="10.3.0",
        compute_capability="8.9",
        ahead_of_time=True,
        precision="fp16",
        fp32_ops={},
        inputs=[
            TensorInfo("images", "float32", [-1, 3, -1, -1]),
            TensorInfo("padding_mask", "uint8", [-1, -1, -1]),
        ],
        outputs=[TensorInfo("pred_logits", "float32", [-1, 12, 5]), TensorInfo("pred_boxes", "float32", [-1, 12, 4])],
        profile={
            "images": ShapeProfile([1, 3, 320, 320], [2, 3, 800, 800], [profile_max_batch, 3, 1344, 1344]),
            "padding_mask": ShapeProfile([1, 320, 320], [2, 800, 800], [profile_max_batch, 1344, 1344]),
        },
        msda_path="plugin",
        msda_nodes=2,
        plugin=PluginInfo(library.name, sha256_of(library), "MSDeformAttn", "detr_deploy", "1"),
        model={"detr_deploy.model": "tiny", "detr_deploy.num_classes": "5"},
    )
    sidecar_path(engine).write_text(sidecar.to_json())
    return engine, sidecar


def config_fields(text: str) -> dict:
    """name, platform/backend, max_batch_size, tensors {name: (data_type, dims)}, instance kinds and counts."""
    tensors = {
        name: (dtype, [int(d) for d in dims.split(",")])
        for name, dtype, dims in re.findall(r'name: "(\w+)"\s+data_type: (\w+)\s+dims: \[ ([-\d, ]+) \]', text)
    }
    return {
        "name": re.search(r'^name: "(\w+)"', text, re.M).group(1),
        "platform": re.search(r'^(?:platform|backend): "(\w+)"', text, re.M).group(1),
        "max_batch_size": int(re.search(r"^max_batch_size: (\d+)", text, re.M).group(1)),
        "tensors": tensors,
        "instances": re.findall(r"count: (\d+)\s+kind: (\w+)", text),
        "dynamic_batching": "dynamic_batching {" in text,
    }


def test_tensorrt_config_follows_the_engine_description(tmp_path):
    engine, sidecar = fake_engine(tmp_path, profile_max_batch=4)
    written = write_repository(
        tmp_path / "repo", engine=engine, flavours=["tensorrt"], options=TritonOptions(instances=2)
    )
    config = config_fields((written.path / "detr_tensorrt_network" / "config.pbtxt").read_text())
    assert config["platform"] == "tensorrt_plan" and config["name"] == "detr_tensorrt_network"
    assert config["max_batch_size"] == sidecar.profile["images"].max[0] == 4
    # dims without the batch dimension, -1 where dynamic; types from the description
    assert config["tensors"] == {
        "images": ("TYPE_FP32", [3, -1, -1]),
        "padding_mask": ("TYPE_UINT8", [-1, -1]),
        "pred_logits": ("TYPE_FP32", [12, 5]),
        "pred_boxes": ("TYPE_FP32", [12, 4]),
    }
    assert config["dynamic_batching"] and config["instances"] == [("2", "KIND_GPU")]
    assert (written.path / "detr_tensorrt_network" / "1" / "model.plan").read_bytes() == engine.read_bytes()
    # The plugin library and the one that registers it when the backend dlopens it, side by side in the repository;
    # the exact flags name the registering one (the backend only dlopens what plugins= names).
    placed = written.path / "plugins" / "libdetr_deploy_plugins.so"
    assert placed.read_bytes() == b"plugin bytes" and written.plugin_library == placed
    registering = written.path / "plugins" / "libdetr_deploy_plugins_autoreg.so"
    assert registering.read_bytes() == b"registering bytes" and written.registering_library == registering
    flags = (written.path / "server_flags.txt").read_text()
    line = next(text for text in flags.splitlines() if text.startswith("tensorrt: "))
    assert f"--backend-config=tensorrt,plugins={registering.resolve()}" in line.split()
    assert "plugins/libdetr_deploy_plugins_autoreg.so" in (written.path / "README.txt").read_text()
    assert "--model-control-mode=explicit" in line.split()
    assert {"--load-model=detr_tensorrt", "--load-model=detr_tensorrt_network"} <= set(line.split())
    assert "--http-address=127.0.0.1" in line.split()
    # The detector in front: its network, the description's I/O and profile for Detector's checks.
    detector = (written.path / "detr_tensorrt" / "config.pbtxt").read_text()
    assert 'string_value: "detr_tensorrt_network"' in detector
    assert "allow_ragged_batch: true" in detector
    assert "tensorrt 10.3.0" in (written.path / "README.txt").read_text()


def test_plugin_library_must_be_the_engines_own(tmp_path):
    engine, _ = fake_engine(tmp_path)
    (tmp_path / "libdetr_deploy_plugins.so").write_bytes(b"another build")
    with pytest.raises(DetrDeployError, match="not the plugin library the engine was built with"):
        write_repository(tmp_path / "repo", engine=engine, flavours=["tensorrt"])


def test_the_tensorrt_flavour_needs_the_registering_library(tmp_path, monkeypatch):
    import detr_deploy.plugins

    engine, _ = fake_engine(tmp_path)
    (tmp_path / "libdetr_deploy_plugins_autoreg.so").unlink()
    monkeypatch.setattr(detr_deploy.plugins, "DEFAULT_BUILD_DIR", tmp_path / "no-build")
    with pytest.raises(DetrDeployError, match="libdetr_deploy_plugins_autoreg.so not found.*cli.py build-plugin"):
        write_repository(tmp_path / "repo", engine=engine, flavours=["tensorrt"])
    assert not (tmp_path / "repo").exists()
    # The python flavour loads the plugin library itself (loadLibrary): no registering library, no plugins= flag.
    written = write_repository(tmp_path / "python", engine=engine, flavours=["python"])
    assert sorted(p.name for p in (written.path / "plugins").iterdir()) == ["libdetr_deploy_plugins.so"]
    assert written.registering_library is None
    assert "plugins=" not in (written.path / "server_flags.txt").read_text()
    network = (written.path / "detr_python_network" / "config.pbtxt").read_text()
    assert 'string_value: "plugins/libdetr_deploy_plugins.so"' in network


REGISTER_IN_TENSORRT_RTX = r"""
import ctypes, sys
import tensorrt_rtx_bindings as trt
library = ctypes.CDLL(sys.argv[1])
library.detr_deploy_plugin_registration.restype = ctypes.c_char_p
print(library.detr_deploy_plugin_registration().decode())
print(trt.get_plugin_registry().get_creator("MSDeformAttn", "1", "detr_deploy").name)
"""


@pytest.mark.trt
def test_the_repositorys_plugin_flag_registers_the_creator_when_dlopened(plugin_build, tmp_path):
    """What the tensorrt backend does with plugins=: dlopen the named library, here in TensorRT-RTX (a child
    process: TensorRT may abort one on plugin errors). The copies in plugins/ find each other there."""
    import shutil
    import subprocess
    import sys

    pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX is not installed")
    if plugin_build.registering_library is None:
        pytest.skip(f"plugin libraries not built: {'; '.join(plugin_build.skipped)}")
    engine, sidecar = fake_engine(tmp_path)
    for library in (plugin_build.plugin_library, plugin_build.registering_library):
        shutil.copy2(library, tmp_path / library.name)
    plugin = dataclasses.replace(sidecar.plugin, sha256=sha256_of(tmp_path / sidecar.plugin.library))
    sidecar_path(engine).write_text(dataclasses.replace(sidecar, plugin=plugin).to_json())
    written = write_repository(tmp_path / "repo", engine=engine, flavours=["tensorrt"])
    flags = (written.path / "server_flags.txt").read_text()
    named = re.search(r"--backend-config=tensorrt,plugins=(\S+)", flags).group(1)
    completed = subprocess.run(
        [sys.executable, "-c", REGISTER_IN_TENSORRT_RTX, named], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.split("\n")[:2] == ["registered in libtensorrt_rtx.so.1", "MSDeformAttn"]


def test_onnx_configs_follow_the_onnx_file(tmp_path, tiny_export):
    path = tiny_export("rtdetr_r18vd")
    model = onnx.load(str(path), load_external_data=False)
    written = write_repository(tmp_path / "repo", onnx=path, options=TritonOptions(name="tiny", max_batch=6))
    assert set(written.models) == {"onnxruntime", "python"}
    network = config_fields((written.path / "tiny_onnxruntime_network" / "config.pbtxt").read_text())
    assert network["platform"] == "onnxruntime_onnx" and network["max_batch_size"] == 6
    for value in list(model.graph.input) + list(model.graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim][1:]
        expected_type = {1: "TYPE_FP32", 2: "TYPE_UINT8"}[value.type.tensor_type.elem_type]
        assert network["tensors"][value.name] == (expected_type, dims)
    python = config_fields((written.path / "tiny_python_network" / "config.pbtxt").read_text())
    assert python["platform"] == "python" and python["tensors"] == network["tensors"]
    assert python["instances"] == [("1", "KIND_CPU")]
    detector = config_fields((written.path / "tiny_python" / "config.pbtxt").read_text())
    assert detector["tensors"]["image"] == ("TYPE_UINT8", [-1])
    assert detector["tensors"]["boxes"] == ("TYPE_FP32", [-1, 4]) and "segment_map" not in detector["tensors"]
    assert (written.path / "tiny_python_network" / "1" / "model.onnx").read_bytes() == path.read_bytes()


def test_refusals(tmp_path, tiny_export):
    path = tiny_export("rtdetr_r18vd")
    with pytest.raises(DetrDeployError, match="needs an engine"):
        write_repository(tmp_path / "a", onnx=path, flavours=["tensorrt"])
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("")
    with pytest.raises(DetrDeployError, match="not an empty folder"):
        write_repository(tmp_path / "b", onnx=path)
    engine, sidecar = fake_engine(tmp_path)
    rtx = dataclasses.replace(sidecar, tensorrt_flavour="tensorrt-rtx")
    sidecar_path(engine).write_text(rtx.to_json())
    written = write_repository(tmp_path / "c", engine=engine, flavours=["tensorrt"])
    assert "links TensorRT, not TensorRT-RTX" in (written.path / "README.txt").read_text()


def test_export_triton_command(tmp_path, tiny_export):
    from tests.helpers import assert_one_line_error, run_cli

    path = tiny_export("rtdetr_r18vd")
    result = run_cli("export-triton", "--onnx", path, "--output", tmp_path / "repo", "--flavours", "python")
    assert result.exit_code == 0, result.output
    assert "python: detr_python -> detr_python_network" in result.output
    flags = (tmp_path / "repo" / "server_flags.txt").read_text()
    assert "--load-model=detr_python --load-model=detr_python_network" in flags and "127.0.0.1" in flags
    assert_one_line_error(
        run_cli("export-triton", "--onnx", path, "--output", tmp_path / "repo"), "not an empty folder"
    )
    assert_one_line_error(
        run_cli("export-triton", "--onnx", path, "--output", tmp_path / "x", "--flavours", "tensorrt"),
        "needs an engine",
    )
    assert_one_line_error(run_cli("export-triton", "--output", tmp_path / "y"), "give an ONNX export, an engine")


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    engine, _ = fake_engine(tmp_path)
    (tmp_path / "libdetr_deploy_plugins.so").write_bytes(b"another build")
    with pytest.raises(DetrDeployError):
        write_repository(tmp_path / "repo", engine=engine, flavours=["tensorrt"])
    assert not (tmp_path / "repo").exists()
    assert not [item for item in tmp_path.iterdir() if item.name.endswith(".partial")]
