"""What every export must satisfy, whatever the family: the checks test_onnx_export.py runs for each family."""

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from detr_deploy import contract
from detr_deploy.models import build_model, get_model_spec
from exporters.onnx import EXAMPLE_SHAPE, read_metadata
from tests.helpers import ZOO_MODELS, tiny_name

# Non-square, not multiples of 32, none equal to the export's example size.
SIZES = [(224, 296), (250, 190), (301, 233)]
# The same for models whose sides must be multiples of 32 (RT-DETR).
SIZES_32 = [(224, 288), (256, 192), (288, 256)]
BATCHES = [1, 3]
# Grid-sample mode inlines one and the same MSDeformAttn body wherever the attention is called; it is exported for one
# model per way of calling it (Deformable DETR, DINO, RT-DETR v1, RT-DETRv2 with padded points) and not again for
# variants that only change the layers around it (refinement, two-stage, scale count, backbone depth or kind). (With
# the export store both modes share one torch export, but each grid-sample file still costs eager and ONNX Runtime
# runs.)
GRID_SAMPLE_SKIPPED = frozenset(
    {
        "deformable_detr_r50_refine",
        "deformable_detr_r50_two_stage",
        "dino_5scale_r50",
        "rtdetr_r50vd",
        "rtdetr_r101vd",
        "rtdetr_hgnetv2_l",
        "rtdetr_hgnetv2_x",
        "rtdetrv2_r18vd",
        "rtdetrv2_r50vd",
        "rtdetrv2_r101vd",
        # D-FINE's attention (no value/output projections, padded 3/6/3 points) is exported for D-FINE-S.
        "dfine_hgnetv2_n",
        "dfine_hgnetv2_m",
        "dfine_hgnetv2_l",
        "dfine_hgnetv2_x",
        # RF-DETR's attention (one level, two or four points) is exported for RF-DETR-2XL (the first in the zoo's
        # order); the other sizes change the layers around it.
        "rfdetr_nano",
        "rfdetr_small",
        "rfdetr_medium",
        "rfdetr_large",
        "rfdetr_xlarge",
        "rfdetr_base",
    }
)


def msda_cases(models) -> list[tuple[str, str]]:
    """(zoo name, msda mode) pairs: plugin mode for every model, grid-sample mode where not GRID_SAMPLE_SKIPPED."""
    return [
        (name, mode)
        for name in models
        for mode in contract.MSDA_MODES
        if mode == "plugin" or name not in GRID_SAMPLE_SKIPPED
    ]


def export_cache(store):
    """get(zoo_name, msda) -> (model, config, ExportResult) of the tiny variant (seed 0): the export from the export
    store (tests/export_store.py; RT-DETR R18 and R34, whose tiny variants are identical, share one torch export
    there), the eager model built once per config."""
    models = {}

    def get(zoo_name: str, msda: str):
        name = tiny_name(zoo_name)
        config = get_model_spec(name).config
        if config not in models:
            models[config] = build_model(config, seed=0)
        return models[config], config, store.export(name, msda=msda)

    return get


def _check_matches_eager(model, config, run, sizes, seed: int, atol: float) -> None:
    """run(images [N, 3, H, W] numpy) -> {output name: array} equals eager ``model`` at each of ``sizes`` (or their
    multiples-of-32 twins for RT-DETR) and batch in BATCHES, rtol 1e-4."""
    generator = torch.Generator().manual_seed(seed)
    for height, width in sizes[0] if config.size_divisor == 1 else sizes[1]:
        for batch in BATCHES:
            images = torch.randn(batch, 3, height, width, generator=generator)
            with torch.no_grad():
                expected = model(images)
            actual = run(images.numpy())
            for name in config.output_names:
                np.testing.assert_allclose(
                    actual[name],
                    expected[name].numpy(),
                    rtol=1e-4,
                    atol=atol,
                    err_msg=f"{name} at {batch}x{height}x{width}",
                )


def check_onnxruntime_matches_eager(exported, zoo_name, msda):
    model, config, result = exported(zoo_name, msda)
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == list(config.output_names)

    def run(images):
        return dict(zip(config.output_names, session.run(None, {contract.INPUT_IMAGES: images})))

    # atol: RT-DETR's bottleneck variants differ by up to 2e-5 on logits near 0 (summation order).
    # D-FINE: the edge distributions' softmax and the quality estimator add rounding on top (5.2e-5 measured on a
    # logit near 0 of tiny D-FINE-L, outputs of scale 1): the 1e-4 of the output scale.
    _check_matches_eager(model, config, run, (SIZES, SIZES_32), seed=1, atol=1e-4 if config.family == "dfine" else 5e-5)


# OpenVINO: small sizes keep eager PyTorch cheap (odd sides included; >= 126 tokens for the top-k models' 10-12
# queries); none is the export's example size.
OPENVINO_SIZES = [(96, 128), (77, 109), (130, 94)]
OPENVINO_SIZES_32 = [(96, 128), (64, 96), (128, 64)]


def openvino_cases(models) -> list[tuple[str, str]]:
    """(zoo name, msda mode): both modes for every model whose modes differ (issue 15: every export runs in OpenVINO
    in both); models without bilinear deformable attention (DETR, DAB-DETR, RT-DETRv2 discrete) write one graph for
    both."""

    def modes_differ(name: str) -> bool:
        config = get_model_spec(tiny_name(name)).config
        return bool(config.deformable_strides) and getattr(config, "sampling_method", "default") != "discrete"

    return [(name, mode) for name in models for mode in contract.MSDA_MODES if mode == "plugin" or modes_differ(name)]


def grid_sample_copy(plugin_path: Path, output: Path, config) -> Path:
    """Write to ``output`` the grid-sample export of the model whose plugin export is ``plugin_path``: the exporter's
    own grid-sample step (the MSDeformAttn function inlined) on the same torch export, so no second export is made
    for the GRID_SAMPLE_SKIPPED models. ``test_a_grid_sample_copy_is_the_grid_sample_export`` checks it is the file
    ``export --msda grid-sample`` writes."""
    from exporters.onnx import _finalize, set_metadata

    proto = onnx.load(plugin_path)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    del proto.functions[:]  # _finalize attaches the function again, then inlines it
    proto = _finalize(proto, config, "grid-sample", opset)
    metadata = {prop.key: prop.value for prop in proto.metadata_props}
    paths = {
        name: "grid-sample" if path == "plugin" else path
        for name, path in json.loads(metadata[contract.META_MSDA_PATHS]).items()
    }
    set_metadata(proto, {contract.META_MSDA: "grid-sample", contract.META_MSDA_PATHS: json.dumps(paths)})
    onnx.save(proto, output)
    return output


def check_openvino_matches_eager(exported, zoo_name, msda, tmp_path):
    """OpenVINO's CPU plugin (fp32) runs the export, plugin mode through the runner's load-time inlining, and
    matches eager PyTorch at three untraced sizes, batch 1 and 3."""
    pytest.importorskip("openvino", reason="OpenVINO is not installed: pip install openvino")
    from detr_deploy.runtime.openvino import OpenVINORunner

    if msda == "grid-sample" and zoo_name in GRID_SAMPLE_SKIPPED:
        model, config, result = exported(zoo_name, "plugin")
        path = grid_sample_copy(result.path, tmp_path / "grid-sample.onnx", config)
    else:
        model, config, result = exported(zoo_name, msda)
        path = result.path
    runner = OpenVINORunner(path, threads=1)
    assert runner.output_names == tuple(config.output_names)
    assert runner.metadata[contract.META_MSDA] == msda
    _check_matches_eager(model, config, runner.run, (OPENVINO_SIZES, OPENVINO_SIZES_32), seed=2, atol=1e-4)


def check_plugin_mode(exported, zoo_name):
    model, config, result = exported(zoo_name, "plugin")
    proto = onnx.load(str(result.path))
    nodes = [n for n in proto.graph.node if n.domain == contract.MSDA_DOMAIN]
    # Each attention module says its path; the export records them, and plugin ones are MSDeformAttn nodes.
    paths = {name: m.msda_path for name, m in model.named_modules() if hasattr(m, "msda_path")}
    assert paths and result.msda_paths == paths
    assert json.loads(read_metadata(proto)[contract.META_MSDA_PATHS]) == paths
    plugin_paths = list(paths.values()).count("plugin")
    assert len(nodes) == plugin_paths == result.msda_nodes
    # RT-DETR and D-FINE attend deformably in the decoder only (their encoders run full attention, AIFI).
    expected = {"rtdetr": config.num_decoder_layers, "dfine": config.num_decoder_layers}.get(config.family)
    expected = expected or config.num_encoder_layers + config.num_decoder_layers
    if getattr(config, "sampling_method", "default") == "default":
        assert plugin_paths == expected
    else:
        assert plugin_paths == 0 and set(paths.values()) == {"onnx-ops:discrete"} and len(paths) == expected
    for node in nodes:
        assert node.op_type == contract.MSDA_OP_TYPE
        assert list(node.input) and len(node.input) == len(contract.MSDA_INPUTS)
        attributes = {a.name: a.s.decode() for a in node.attribute}
        assert attributes == {"plugin_namespace": contract.PLUGIN_NAMESPACE, "plugin_version": contract.PLUGIN_VERSION}
    if plugin_paths:
        [function] = proto.functions
        assert (function.domain, function.name) == (contract.MSDA_DOMAIN, contract.MSDA_OP_TYPE)
        assert list(function.input) == list(contract.MSDA_INPUTS)
        assert [n.op_type for n in function.node].count("GridSample") == config.num_feature_levels
    else:
        assert not proto.functions
    if plugin_paths:
        assert {o.domain: o.version for o in proto.opset_import}[contract.MSDA_DOMAIN] == contract.MSDA_DOMAIN_VERSION
    # The schema registered for export is gone again: the check below relies on the local function alone.
    assert not onnx.defs.has(contract.MSDA_OP_TYPE, contract.MSDA_DOMAIN)
    onnx.checker.check_model(proto, full_check=True)


def check_grid_sample_mode(exported, zoo_name):
    model, config, result = exported(zoo_name, "grid-sample")
    proto = onnx.load(str(result.path))
    assert not proto.functions
    assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node)
    assert contract.MSDA_DOMAIN not in {o.domain for o in proto.opset_import}
    grid_samples = sum(n.op_type == "GridSample" for n in proto.graph.node)
    plugin_paths = [name for name, m in model.named_modules() if getattr(m, "msda_path", None) == "plugin"]
    assert grid_samples == len(plugin_paths) * config.num_feature_levels
    assert set(result.msda_paths.values()) <= {"grid-sample", "onnx-ops:discrete"}


def check_io_contract(exported, zoo_name):
    _, config, result = exported(zoo_name, "plugin")
    proto = onnx.load(str(result.path))
    onnx.checker.check_model(proto, full_check=True)
    [images] = proto.graph.input
    dims = [d.dim_param or d.dim_value for d in images.type.tensor_type.shape.dim]
    assert images.name == contract.INPUT_IMAGES and dims == ["batch", 3, "height", "width"]
    assert images.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    outputs = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in proto.graph.output}
    assert list(outputs) == list(config.output_names)
    assert outputs[contract.OUTPUT_BOXES] == ["batch", config.num_queries, 4]
    # onnxruntime 1.31 reads IR versions up to 13.
    assert proto.ir_version <= 10
    metadata = read_metadata(proto)
    assert metadata[contract.META_MODEL] in {
        tiny_name(n) for n in ZOO_MODELS if get_model_spec(tiny_name(n)).config == config
    }
    assert metadata[contract.META_NUM_CLASSES] == str(config.num_classes)
    assert metadata[contract.META_MSDA] == "plugin"
    assert metadata[contract.META_SCORE_ACTIVATION] == config.score_activation
    assert [float(v) for v in metadata[contract.META_MEAN].split(",")] == list(config.normalize_mean)
    assert [float(v) for v in metadata[contract.META_STD].split(",")] == list(config.normalize_std)
    assert metadata[contract.META_SIZE_DIVISOR] == str(config.size_divisor)
    assert metadata[contract.META_RESIZE] == ("fixed=640x640" if config.family == "rtdetr" else "shorter=800,max=1333")
    if config.family == "rtdetr":
        # RGB in 0..1 (no ImageNet normalization), sides in multiples of 32, the official top 300.
        assert config.normalize_mean == (0, 0, 0) and config.normalize_std == (1, 1, 1)
        assert metadata[contract.META_TOP_K] == "300"
    assert metadata[contract.META_WEIGHTS] == "random(seed=0)"
    # Nothing computed from the example input may survive as a constant: no initializer holds its batch and size.
    example = list(EXAMPLE_SHAPE)
    for initializer in proto.graph.initializer:
        if initializer.data_type == onnx.TensorProto.INT64 and len(initializer.dims) == 1:
            values = onnx.numpy_helper.to_array(initializer).tolist()
            assert values[:4] != example, initializer.name
