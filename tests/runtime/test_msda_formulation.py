"""The MSDeformAttn body each CPU runtime runs (runtime/msda_formulation.py): the Gather formulation computes what
the PyTorch reference computes (points outside a level included, int32 and int64 index inputs, one or several
levels), and ONNX Runtime's runner swaps it in for fp32 plugin-mode exports, leaving the file as it was."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from detr_deploy import contract
from detr_deploy.ops.ms_deform_attn import ms_deform_attn_reference
from detr_deploy.runtime.msda_formulation import GATHER, GRID_SAMPLE, formulation_of, with_formulation
from exporters.msda_function import build_msda_function
from exporters.msda_gather_function import build_msda_gather_function

onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: pip install onnxruntime")


def _one_node_model(function: onnx.FunctionProto, num_levels: int, index_type=TensorProto.INT64) -> bytes:
    """A graph of one MSDeformAttn node (symbolic batch, tokens, heads, queries, points) backed by ``function``."""
    node = helper.make_node(contract.MSDA_OP_TYPE, list(contract.MSDA_INPUTS), ["out"], domain=contract.MSDA_DOMAIN)
    inputs = [
        helper.make_tensor_value_info("value", TensorProto.FLOAT, ["N", "S", "M", "D"]),
        helper.make_tensor_value_info("spatial_shapes", index_type, [num_levels, 2]),
        helper.make_tensor_value_info("level_start_index", index_type, [num_levels]),
        helper.make_tensor_value_info("sampling_locations", TensorProto.FLOAT, ["N", "Q", "M", num_levels, "P", 2]),
        helper.make_tensor_value_info("attention_weights", TensorProto.FLOAT, ["N", "Q", "M", num_levels, "P"]),
    ]
    graph = helper.make_graph([node], "msda", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid(contract.MSDA_DOMAIN, contract.MSDA_DOMAIN_VERSION)]
    model = helper.make_model(graph, opset_imports=opsets, functions=[function])
    model.ir_version = 10
    return model.SerializeToString()


def _inputs(levels, batch, queries, heads, head_dim, points, index_dtype, seed=0):
    generator = np.random.default_rng(seed)
    shapes = np.array(levels, dtype=index_dtype)
    starts = np.concatenate([[0], np.cumsum(shapes.prod(1))[:-1]]).astype(index_dtype)
    tokens = int(shapes.prod(1).sum())
    return {
        "value": generator.standard_normal((batch, tokens, heads, head_dim), dtype=np.float32),
        "spatial_shapes": shapes,
        "level_start_index": starts,
        # Some points fall outside their level (GridSample's zeros padding) or on its border.
        "sampling_locations": generator.uniform(-0.2, 1.2, (batch, queries, heads, len(levels), points, 2)).astype(
            np.float32
        ),
        "attention_weights": generator.uniform(0, 1, (batch, queries, heads, len(levels), points)).astype(np.float32),
    }


@pytest.mark.parametrize("per_level", [True, False], ids=["per-level", "all-levels"])
@pytest.mark.parametrize(
    "levels, batch, index_dtype",
    [([(7, 9), (4, 5), (2, 3)], 2, np.int64), ([(6, 4)], 1, np.int32), ([(5, 8), (3, 4), (2, 2), (1, 1)], 3, np.int64)],
    ids=["3-levels-batch-2", "1-level-int32", "4-levels-batch-3"],
)
def test_gather_body_equals_the_reference(levels, batch, index_dtype, per_level):
    index_type = TensorProto.INT64 if index_dtype == np.int64 else TensorProto.INT32
    function = build_msda_gather_function(len(levels), 18, per_level=per_level)
    session = onnxruntime.InferenceSession(
        _one_node_model(function, len(levels), index_type), providers=["CPUExecutionProvider"]
    )
    feeds = _inputs(levels, batch, queries=11, heads=3, head_dim=5, points=4, index_dtype=index_dtype)
    (got,) = session.run(None, feeds)
    tensors = {
        name: torch.from_numpy(array.astype(np.int64) if array.dtype == np.int32 else array)
        for name, array in feeds.items()
    }
    expected = ms_deform_attn_reference(*(tensors[name] for name in contract.MSDA_INPUTS)).numpy()
    assert got.shape == (batch, 11, 3, 5)
    np.testing.assert_allclose(got.reshape(expected.shape), expected, rtol=1e-5, atol=1e-5)


def test_with_formulation_swaps_the_body_and_says_which():
    model = onnx.ModelProto.FromString(_one_node_model(build_msda_function(3, 18), 3))
    assert formulation_of(model) == GRID_SAMPLE
    assert with_formulation(model, GRID_SAMPLE) and formulation_of(model) == GRID_SAMPLE
    assert with_formulation(model, GATHER) and formulation_of(model) == GATHER
    assert not any(node.op_type == "GridSample" for node in model.functions[0].node)
    plain = onnx.ModelProto.FromString(_one_node_model(build_msda_function(3, 18), 3))
    del plain.functions[:]
    assert not with_formulation(plain, GATHER) and formulation_of(plain) is None
    with pytest.raises(ValueError, match="unknown MSDeformAttn formulation"):
        with_formulation(model, "nearest")


def test_onnxruntime_runner_runs_the_gather_body_of_a_plugin_export(tiny_export):
    """The file keeps its GridSample function (TensorRT's path); the runner's session runs the Gather one, with the
    outputs of a session of the file as it is."""
    from detr_deploy.runtime.onnxruntime import OnnxRuntimeRunner

    path = tiny_export("deformable_detr_r50")
    before = path.read_bytes()
    runner = OnnxRuntimeRunner(path, threads=1, shape_sessions=0)
    assert runner.msda_formulation == GATHER
    assert path.read_bytes() == before and formulation_of(onnx.load(str(path))) == GRID_SAMPLE
    as_exported = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(1).standard_normal((2, 3, 256, 352), dtype=np.float32)
    got = runner.run(images)
    for name, value in zip(runner.output_names, as_exported.run(None, {contract.INPUT_IMAGES: images})):
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-5, err_msg=name)
    # Models without the node open as they are.
    assert OnnxRuntimeRunner(tiny_export("detr_r50"), threads=1).msda_formulation is None


def test_decoder_nodes_get_their_own_body_and_compute_the_same(tiny_export):
    """with_node_formulations: the nodes whose query count the export's value_info fixes (Deformable DETR's decoder)
    call a copy of the function with the Gather body, the encoder's keep GridSample; the model computes what the
    file computes (ONNX Runtime runs either body)."""
    from detr_deploy.runtime.msda_formulation import FIXED_QUERIES, TOKEN_QUERIES, with_node_formulations

    path = tiny_export("deformable_detr_r50")
    model = onnx.load(str(path))
    counts = with_node_formulations(model, {FIXED_QUERIES: GATHER, TOKEN_QUERIES: GRID_SAMPLE})
    assert counts == {GRID_SAMPLE: 2, GATHER: 2}  # 2 encoder and 2 decoder layers in the tiny model
    calls = [node.op_type for node in model.graph.node if node.domain == contract.MSDA_DOMAIN]
    assert calls == [contract.MSDA_OP_TYPE] * 2 + [f"{contract.MSDA_OP_TYPE}_fixed_queries"] * 2
    bodies = {function.name: {node.op_type for node in function.node} for function in model.functions}
    assert "GridSample" in bodies[contract.MSDA_OP_TYPE]
    assert "GridSample" not in bodies[f"{contract.MSDA_OP_TYPE}_fixed_queries"]
    onnx.checker.check_model(model)
    images = np.random.default_rng(2).standard_normal((2, 3, 224, 288), dtype=np.float32)
    as_exported = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rewritten = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for got, expected in zip(rewritten.run(None, {"images": images}), as_exported.run(None, {"images": images})):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # One body for both kinds: nothing is copied; a model without the node is left alone.
    same = onnx.load(str(path))
    assert with_node_formulations(same, {FIXED_QUERIES: GRID_SAMPLE, TOKEN_QUERIES: GRID_SAMPLE}) == {GRID_SAMPLE: 4}
    assert len(same.functions) == 1
    assert with_node_formulations(onnx.load(str(tiny_export("detr_r50"))), {FIXED_QUERIES: GATHER}) == {}
