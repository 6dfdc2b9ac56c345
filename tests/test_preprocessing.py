"""The official resize rule and the refusal of images too thin for the model, on numbers alone."""

import numpy as np
import pytest

from detr_deploy.errors import DetrDeployError
from detr_deploy.preprocessing import MIN_SIDE, network_size, normalize, prepare, resized_size


@pytest.mark.parametrize(
    "size, expected",
    [
        ((480, 640), (800, 1066)),  # shorter side to 800
        ((640, 480), (1066, 800)),
        ((800, 1000), (800, 1000)),  # already there
        ((400, 1600), (333, 1332)),  # the longer side caps at 1333 (then truncated, as officially)
        ((1000, 100), (1330, 133)),
    ],
)
def test_resize_follows_the_official_rule(size, expected):
    assert resized_size(*size) == expected


def test_images_too_thin_for_the_model_are_refused_naming_them():
    assert min(network_size("ok", 200, 4000)) >= MIN_SIDE
    with pytest.raises(DetrDeployError, match=r"image thin.png is 4000x1: .* at least 64 pixels"):
        network_size("thin.png", 1, 4000)


def test_prepare_resizes_and_normalizes():
    rgb = np.full((60, 80, 3), 255, dtype=np.uint8)
    out = prepare("white", rgb)
    assert out.shape == (3, 800, 1066) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0, 0], normalize(rgb[:1, :1])[:, 0, 0], rtol=1e-6)
