"""OpenVINO's CPU plugin runs our ONNX exports: parity with eager PyTorch (fp32) at sizes the export never saw,
batch 1 and 3; plugin-mode exports open with their MSDeformAttn function inlined at load time; the runner's checks.

Skips where openvino is not installed (``pip install openvino``).
"""

import numpy as np
import pytest

from detr_deploy import contract
from detr_deploy.errors import DetrDeployError
from detr_deploy.model_source import load_model
from tests.helpers import NO_BF16_UNITS, openvino_computes_bf16, tiny_name

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


def test_deformable_detr_plugin_export_opens_inlined_and_matches_eager(tiny_export):
    path = tiny_export("deformable_detr_r50")  # --msda plugin: a detr_deploy::MSDeformAttn node with its function
    runner = OpenVINORunner(path, threads=1)
    assert runner.metadata[contract.META_MSDA] == "plugin"
    # The decoder's nodes (a fixed query count) run the Gather body, the encoder's GridSample (msda_formulation).
    assert runner.msda_formulations == {"grid-sample": 2, "gather": 2}
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


def test_open_runner_picks_the_runtime_and_passes_threads(tiny_export, tmp_path):
    from detr_deploy.detector import Detector
    from detr_deploy.runtime import open_runner
    from detr_deploy.runtime.onnxruntime import OnnxRuntimeRunner

    path = tiny_export("detr_r50")
    openvino = open_runner(path, runtime="openvino", threads=2)
    assert isinstance(openvino, OpenVINORunner) and openvino.threads == 2  # read back from the compiled model
    onnxruntime = open_runner(path, threads=2)
    assert isinstance(onnxruntime, OnnxRuntimeRunner)
    assert onnxruntime.session.get_session_options().intra_op_num_threads == 2
    detector = Detector.open(path, runtime="openvino", threads=1)
    assert isinstance(detector.runner, OpenVINORunner) and detector.runner.threads == 1

    with pytest.raises(DetrDeployError, match="runs in TensorRT only"):
        open_runner(tmp_path / "model.engine", runtime="openvino")
    with pytest.raises(DetrDeployError, match=r"neither an ONNX file \(.onnx\) nor a TensorRT engine"):
        open_runner(tmp_path / "model.bin")
    with pytest.raises(DetrDeployError, match="unknown runtime 'tflite'; choose from: onnxruntime, openvino"):
        open_runner(path, runtime="tflite")
    with pytest.raises(DetrDeployError, match="--threads must be from 1"):
        open_runner(path, runtime="openvino", threads=0)
    with pytest.raises(DetrDeployError, match="--runtime openvino runs ONNX files"):
        Detector.open(tiny_name("detr_r50"), runtime="openvino")


@pytest.mark.slow
def test_a_repeated_shape_gets_a_model_compiled_for_it(tiny_export, confident_export):
    """shape_specialization: after SPECIALIZE_AFTER_RUNS runs of one shape, a model reshaped to it runs that shape
    (images and padding mask fixed together), with eager PyTorch's outputs; other shapes keep the dynamic one."""
    import torch

    from detr_deploy.runtime.shape_specialization import SPECIALIZE_AFTER_RUNS

    runner = OpenVINORunner(tiny_export("deformable_detr_r50"), threads=1)
    images = np.random.default_rng(3).standard_normal((2, 3, 160, 224), dtype=np.float32)
    for _ in range(SPECIALIZE_AFTER_RUNS):
        assert images.shape not in runner.specialized
        runner.run(images)
    assert list(runner.specialized) == [images.shape]
    model, output_names = _eager("deformable_detr_r50")
    with torch.inference_mode():
        expected = model(torch.from_numpy(images), None)
    got = runner.run(images)
    for name in output_names:
        np.testing.assert_allclose(got[name], expected[name].numpy(), rtol=1e-4, atol=1e-4, err_msg=name)
    runner.run(images[:1])  # another shape: the dynamic model, and no second slot
    assert list(runner.specialized) == [images.shape]

    masked = OpenVINORunner(confident_export("detr_r50"), threads=1)
    mask = np.zeros((2, 160, 224), dtype=np.uint8)
    mask[1, 100:, :] = 1
    reference = masked.run(images, mask)
    for _ in range(SPECIALIZE_AFTER_RUNS):
        got = masked.run(images, mask)
    assert list(masked.specialized) == [images.shape]
    for name, value in reference.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-5, err_msg=name)


def test_bf16_is_the_cpu_plugins_precision_hint_and_costs_little(tiny_export):
    """--precision bf16: the CPU plugin's inference precision hint (an fp32 export otherwise runs in f32, even on
    CPUs where the plugin's own default is bf16). The outputs stay near fp32's at bf16 tolerances."""
    if not openvino_computes_bf16():
        pytest.skip("this CPU has no bf16 units (no AVX512-BF16/AMX): OpenVINO computes no bf16 here")
    path = tiny_export("detr_r50")
    fp32 = OpenVINORunner(path, threads=1)
    bf16 = OpenVINORunner(path, threads=1, precision="bf16")
    assert (
        fp32.precision == "fp32" and str(fp32.compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
    )
    assert bf16.precision == "bf16" and "bfloat16" in str(bf16.compiled.get_property("INFERENCE_PRECISION_HINT"))
    images = np.random.default_rng(0).standard_normal((1, 3, 256, 352), dtype=np.float32)
    exact, reduced = fp32.run(images), bf16.run(images)
    assert bf16.msda_formulations == {}  # the Gather body's index arithmetic stays out of bf16
    np.testing.assert_allclose(reduced[contract.OUTPUT_BOXES], exact[contract.OUTPUT_BOXES], atol=5e-2)
    assert not np.array_equal(reduced[contract.OUTPUT_BOXES], exact[contract.OUTPUT_BOXES])  # bf16 was computed


def test_precisions_a_cpu_or_file_cannot_give_are_refused(tiny_export, monkeypatch):
    """bf16 on a CPU without bf16 units (here, or made so), int8 from an fp32 file, fp16: one line each, before any
    compilation (OpenVINO would otherwise run bf16 as f32 under bf16's name)."""
    import detr_deploy.runtime.openvino as openvino_runner

    path = tiny_export("detr_r50")
    if openvino_computes_bf16():
        monkeypatch.setattr(openvino_runner, "cpu_has_bf16", lambda core=None: False)
    with pytest.raises(DetrDeployError, match=f"{NO_BF16_UNITS} .*leave out --precision bf16") as refused:
        OpenVINORunner(path, threads=1, precision="bf16")
    assert "\n" not in str(refused.value) and "FP32" in str(refused.value)
    assert OpenVINORunner(path, threads=1).precision == "fp32"
    with pytest.raises(DetrDeployError, match="int8 needs a quantized file: python cli.py quantize"):
        OpenVINORunner(path, precision="int8")
    with pytest.raises(DetrDeployError, match="can run an fp32 file in bf16 .* but not in fp16"):
        OpenVINORunner(path, precision="fp16")


def test_onnxruntime_refuses_a_precision_the_file_does_not_hold(tiny_export):
    from detr_deploy.runtime import open_runner

    path = tiny_export("detr_r50")
    assert open_runner(path, precision="fp32").precision == "fp32"
    with pytest.raises(DetrDeployError, match="computes in fp32, and ONNX Runtime runs it as it is: for bf16"):
        open_runner(path, precision="bf16")
    if openvino_computes_bf16():
        assert open_runner(path, runtime="openvino", precision="bf16").precision == "bf16"


def test_compiled_models_are_cached_by_file_content(tiny_export, tmp_path):
    """The compiled model is kept under a name hashed from the file's bytes: a second open imports it, a changed file
    (other weights at the same path) gets its own, and either way the outputs are the file's."""
    import shutil

    cache = tmp_path / "cache"
    path = tmp_path / "model.onnx"
    shutil.copyfile(tiny_export("detr_r50"), path)
    images = np.random.default_rng(0).standard_normal((1, 3, 256, 352), dtype=np.float32)
    first = OpenVINORunner(path, threads=1, cache_dir=cache)
    assert first.cache_dir == cache and first.cached_file.parent == cache
    blobs = sorted(cache.glob("*.blob"))
    assert blobs, "OpenVINO wrote no compiled blob"
    again = OpenVINORunner(path, threads=1, cache_dir=cache)
    assert again.cached_file == first.cached_file and sorted(cache.glob("*.blob")) == blobs
    np.testing.assert_array_equal(again.run(images)[contract.OUTPUT_LOGITS], first.run(images)[contract.OUTPUT_LOGITS])

    shutil.copyfile(tiny_export("deformable_detr_r50"), path)  # another model at the same path
    changed = OpenVINORunner(path, threads=1, cache_dir=cache)
    assert changed.cached_file != first.cached_file
    uncached = OpenVINORunner(path, threads=1, cache_dir=None)
    assert uncached.cache_dir is None
    np.testing.assert_allclose(
        changed.run(images)[contract.OUTPUT_BOXES], uncached.run(images)[contract.OUTPUT_BOXES], atol=1e-6
    )
    # A cached runner still compiles a repeated shape for itself (the model is read from the cached file then).
    specializing = OpenVINORunner(path, threads=1, cache_dir=cache, shape_sessions=1)
    for _ in range(3):
        specializing.run(images)
    assert list(specializing.specialized) == [images.shape]
