"""The fp16/bf16 graph pass: low-precision compute, fp32 where kept, float32 I/O, and results within fp16 tolerance
of eager PyTorch (ONNX Runtime runs the fp16 graph on the CPU)."""

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto

from detr_deploy.models import build_model, get_model_spec
from detr_deploy.parity import TOLERANCES, compare_outputs
from exporters.precision import DEFAULT_KEEP_FP32, convert_precision
from tests.helpers import tiny_name
from tests.marks import slow_after

MODELS = [
    "detr_r50",
    "detr_r50_panoptic",
    "deformable_detr_r50",
    "deformable_detr_r50_two_stage",
    "conditional_detr_r50",
]


def value_types(model: onnx.ModelProto) -> dict[str, int]:
    graph = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.output, *graph.value_info]}
    types.update({init.name: init.data_type for init in graph.initializer})
    return types


@pytest.mark.parametrize("zoo_name", slow_after(MODELS))
def test_fp16_graph_keeps_io_and_chosen_ops_in_fp32_and_matches_eager(zoo_name, tiny_export):
    source = onnx.load(str(tiny_export(zoo_name)))
    converted, kept = convert_precision(source, "fp16")
    onnx.checker.check_model(converted, full_check=True)
    assert [(v.name, v.type.tensor_type.elem_type) for v in converted.graph.input] == [("images", TensorProto.FLOAT)]
    assert [v.name for v in converted.graph.output] == [v.name for v in source.graph.output]
    assert {v.type.tensor_type.elem_type for v in converted.graph.output} == {TensorProto.FLOAT}
    types = value_types(converted)
    nodes = list(converted.graph.node)
    assert kept["LayerNormalization"] == sum(n.op_type == "LayerNormalization" for n in nodes) > 0
    assert kept["Softmax"] == sum(n.op_type == "Softmax" for n in nodes) > 0
    for node in nodes:
        if node.op_type in DEFAULT_KEEP_FP32:
            assert types[node.input[0]] == TensorProto.FLOAT and types[node.output[0]] == TensorProto.FLOAT, node.name
        if node.op_type in ("Conv", "MatMul"):
            assert types[node.input[0]] == TensorProto.FLOAT16, node.name
    low_weights = [init for init in converted.graph.initializer if init.data_type == TensorProto.FLOAT16]
    assert len(low_weights) > 0.8 * sum(init.data_type == TensorProto.FLOAT for init in source.graph.initializer)

    session = onnxruntime.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(1).standard_normal((2, 3, 256, 320), dtype=np.float32)
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"images": images})))
    config = get_model_spec(tiny_name(zoo_name)).config
    with torch.no_grad():
        eager = build_model(config, seed=0).eval()(torch.from_numpy(images))
    eager = {name: eager[name].numpy() for name in config.output_names}
    case = compare_outputs(
        "fp16",
        (256, 320),
        eager,
        outputs,
        activation=config.score_activation,
        score_threshold=0.3,
        tolerance=TOLERANCES["fp16"],
        ranked_queries=config.query_order_is_ranked,
    )
    assert case.passed, case
    # Not a vacuous comparison: fp16 really computes differently from fp32.
    assert max(stats.max_abs_error for stats in case.tensors) > 1e-5


def test_nothing_kept_means_softmax_runs_in_fp16(tiny_export):
    converted, kept = convert_precision(onnx.load(str(tiny_export("detr_r50"))), "fp16", keep_fp32=())
    types = value_types(converted)
    softmax = [n for n in converted.graph.node if n.op_type == "Softmax"]
    assert softmax and all(types[n.input[0]] == TensorProto.FLOAT16 for n in softmax)
    assert set(kept) == {"Range"}  # ONNX defines Range for fp32 only: it always stays


def test_bf16_stores_weights_in_bf16_and_converts_the_msda_function_body(tiny_export):
    converted, _ = convert_precision(onnx.load(str(tiny_export("deformable_detr_r50"))), "bf16")
    assert any(init.data_type == TensorProto.BFLOAT16 for init in converted.graph.initializer)
    (function,) = converted.functions
    constants = [a.t for n in function.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
    assert {t.data_type for t in constants} == {TensorProto.INT64, TensorProto.BFLOAT16}


def test_unknown_precision_is_refused(tiny_export):
    with pytest.raises(ValueError, match="precision must be one of"):
        convert_precision(onnx.load(str(tiny_export("detr_r50"))), "int8")
