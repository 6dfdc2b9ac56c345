"""ONNX Runtime runner's shape-specialized sessions: a shape it keeps seeing gets a session with batch, height and
width fixed (what makes our dynamic export as fast as a static one, issue 15), its outputs still match eager PyTorch,
and the number of such sessions stays bounded."""

import numpy as np
import pytest
import torch

from detr_deploy import contract
from detr_deploy.model_source import load_model
from detr_deploy.runtime.onnxruntime import OnnxRuntimeRunner
from detr_deploy.runtime.shape_specialization import SPECIALIZE_AFTER_RUNS
from tests.helpers import tiny_name


def _eager_outputs(zoo_name: str, images: np.ndarray, padding_mask: np.ndarray = None) -> dict[str, np.ndarray]:
    source = load_model(tiny_name(zoo_name), None, seed=0)  # the weights tiny_export exported
    mask = None if padding_mask is None else torch.from_numpy(padding_mask)
    with torch.inference_mode():
        outputs = source.model.eval()(torch.from_numpy(images), mask)
    return {name: outputs[name].numpy() for name in source.config.output_names}


def _images(batch: int, height: int, width: int) -> np.ndarray:
    return np.random.default_rng(height * width + batch).standard_normal((batch, 3, height, width), dtype=np.float32)


@pytest.mark.parametrize("zoo_name", ["detr_r50", "deformable_detr_r50"])
def test_a_repeated_shape_gets_its_own_session_matching_eager(tiny_export, zoo_name):
    runner = OnnxRuntimeRunner(tiny_export(zoo_name), threads=1)
    images = _images(2, 224, 288)
    expected = _eager_outputs(zoo_name, images)
    for run in range(SPECIALIZE_AFTER_RUNS):
        assert images.shape not in runner.specialized, f"specialized after {run} runs"
        got = runner.run(images)
    assert list(runner.specialized) == [images.shape]
    session = runner.specialized[images.shape]
    assert session is not runner.session and runner.session_for(images.shape) is session
    again = runner.run(images)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-4, err_msg=f"{name}, last dynamic run")
        np.testing.assert_allclose(again[name], value, rtol=1e-4, atol=1e-4, err_msg=f"{name}, specialized")
    # The specialized session takes this shape only; other shapes still run, on the dynamic session.
    other = _images(1, 256, 192)
    assert runner.session_for(other.shape) is runner.session
    other_expected = _eager_outputs(zoo_name, other)
    for name, value in runner.run(other).items():
        np.testing.assert_allclose(value, other_expected[name], rtol=1e-4, atol=1e-4, err_msg=name)


def test_sessions_are_bounded_and_can_be_turned_off(tiny_export):
    path = tiny_export("detr_r50")
    runner = OnnxRuntimeRunner(path, threads=1, shape_sessions=1)
    first, second = _images(1, 128, 160), _images(1, 160, 128)
    for _ in range(SPECIALIZE_AFTER_RUNS + 1):
        runner.run(first)
        runner.run(second)
    assert list(runner.specialized) == [first.shape]  # the slot is taken for good: no churn between shapes
    assert runner.session_for(second.shape) is runner.session

    off = OnnxRuntimeRunner(path, threads=1, shape_sessions=0)
    for _ in range(SPECIALIZE_AFTER_RUNS + 1):
        off.run(first)
    assert off.specialized == {}


def test_padding_mask_input_is_fixed_with_the_images(confident_export):
    runner = OnnxRuntimeRunner(confident_export("detr_r50"), threads=1)
    assert runner.input_names == (contract.INPUT_IMAGES, contract.INPUT_PADDING_MASK)
    images = _images(2, 160, 192)
    mask = np.zeros((2, 160, 192), dtype=np.uint8)
    mask[1, 120:, :] = 1
    mask[1, :, 150:] = 1
    images[1, :, 120:, :] = 0
    images[1, :, :, 150:] = 0
    for _ in range(SPECIALIZE_AFTER_RUNS + 1):
        got = runner.run(images, mask)
    assert list(runner.specialized) == [images.shape]
    reference = OnnxRuntimeRunner(confident_export("detr_r50"), threads=1, shape_sessions=0).run(images, mask)
    for name, value in reference.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-5, err_msg=name)
