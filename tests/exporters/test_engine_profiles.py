"""Engine profile resolution (trtexec-style shapes, the export's default, the graph's static shapes), on small
graphs without building anything."""

import onnx
import pytest
from onnx import TensorProto, helper

from detr_deploy import contract
from detr_deploy.errors import DetrDeployError
from exporters.engine_build import parse_shapes, resolve_profile
from exporters.onnx import format_profile, set_metadata


def graph_with_images(dims=("batch", 3, "height", "width"), profile=None) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["images"], ["pred_logits"])],
        "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, list(dims))],
        [helper.make_tensor_value_info("pred_logits", TensorProto.FLOAT, list(dims))],
    )
    model = helper.make_model(graph)
    if profile is not None:
        set_metadata(model, {contract.META_FAMILY: "detr", contract.META_PROFILE: format_profile(profile)})
    return model


def test_trtexec_shape_strings_parse():
    assert parse_shapes("images:1x3x320x320") == {"images": [1, 3, 320, 320]}
    assert parse_shapes(None) == {}
    for text in ("images:1x3", "images:", "x", "images:0x3x64x64", "=images:1x3x64x64"):
        with pytest.raises(DetrDeployError):
            resolve_profile(graph_with_images(), min_shapes=text, opt_shapes="images:1x3x64x64")


def test_default_profile_comes_from_the_export_metadata():
    profile, _ = resolve_profile(graph_with_images(profile=contract.DEFAULT_PROFILE))
    images = profile["images"]
    assert (images.min, images.opt, images.max) == tuple(
        list(contract.DEFAULT_PROFILE[k]) for k in ("min", "opt", "max")
    )


def test_opt_alone_sets_all_three_and_bad_orders_or_channels_are_refused():
    profile, _ = resolve_profile(graph_with_images(), opt_shapes="images:2x3x480x640")
    assert profile["images"].min == profile["images"].opt == profile["images"].max == [2, 3, 480, 640]
    with pytest.raises(DetrDeployError):
        resolve_profile(graph_with_images(), "images:2x3x640x640", "images:1x3x320x320", "images:4x3x800x800")
    with pytest.raises(DetrDeployError):
        resolve_profile(graph_with_images(), opt_shapes="images:1x4x320x320")


def test_a_static_graph_builds_at_its_own_shape_with_a_warning():
    profile, warnings = resolve_profile(graph_with_images(dims=(1, 3, 224, 224)))
    assert profile["images"].min == [1, 3, 224, 224] and warnings
