"""The ``detr_deploy::MSDeformAttn`` ONNX node: its schema for export time and its model-local function.

The function body is the pure-ONNX decomposition (GridSample per level). ONNX Runtime executes the node through
it; TensorRT's parser inlines it when no plugin of that name is registered and binds the node to our plugin when
one is. The body is specialized to the model's number of levels (fixed per model); every size stays dynamic.
"""

import contextlib

import onnx
from onnx import FunctionProto, TensorProto, helper
from onnx.defs import OpSchema

from detr_deploy import contract


@contextlib.contextmanager
def msda_schema_registered():
    """Register the op's schema with onnx while exporting (the exporter needs one), and remove it afterwards
    so that checks of the saved model rely on its local function alone."""
    if onnx.defs.has(contract.MSDA_OP_TYPE, contract.MSDA_DOMAIN):
        yield
        return
    schema = OpSchema(
        contract.MSDA_OP_TYPE,
        contract.MSDA_DOMAIN,
        contract.MSDA_DOMAIN_VERSION,
        doc="Multi-scale deformable attention (Deformable DETR); see detr_deploy.ops.ms_deform_attn.",
        inputs=[
            OpSchema.FormalParameter(name, "I" if name in ("spatial_shapes", "level_start_index") else "T")
            for name in contract.MSDA_INPUTS
        ],
        outputs=[OpSchema.FormalParameter(name, "T") for name in contract.MSDA_OUTPUTS],
        type_constraints=[
            ("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "value and sampling types"),
            ("I", ["tensor(int64)", "tensor(int32)"], "index types"),
        ],
        attributes=[OpSchema.Attribute(name, OpSchema.AttrType.STRING, "") for name in contract.MSDA_ATTRIBUTES],
    )
    onnx.defs.register_schema(schema)
    try:
        yield
    finally:
        onnx.defs.deregister_schema(contract.MSDA_OP_TYPE, contract.MSDA_DOMAIN_VERSION, contract.MSDA_DOMAIN)


class _Body:
    """Collects the nodes of the function body with unique output names."""

    def __init__(self):
        self.nodes = []
        self._count = 0

    def __call__(self, op_type: str, *inputs: str, **attributes) -> str:
        self._count += 1
        output = f"{op_type.lower()}_{self._count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], **attributes))
        return output

    def const(self, values: list[int]) -> str:
        tensor = helper.make_tensor("value", TensorProto.INT64, [len(values)], values)
        return self("Constant", value=tensor)

    def scalar(self, value: float) -> str:
        return self("Constant", value=helper.make_tensor("value", TensorProto.FLOAT, [], [value]))


def build_msda_function(num_levels: int, opset: int) -> FunctionProto:
    """FunctionProto for ``detr_deploy::MSDeformAttn`` with ``num_levels`` levels, using the default domain at
    ``opset`` (>= 18, as the exporter writes). Computes the same as ``ms_deform_attn_reference``."""
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = contract.MSDA_INPUTS
    body = _Body()
    dim = {}
    value_shape = body("Shape", value)
    location_shape = body("Shape", sampling_locations)
    for name, shape, index in (
        ("N", value_shape, 0),
        ("M", value_shape, 2),
        ("D", value_shape, 3),
        ("Lq", location_shape, 1),
        ("P", location_shape, 4),
    ):
        dim[name] = body("Slice", shape, body.const([index]), body.const([index + 1]))
    batch_heads = body("Mul", dim["N"], dim["M"])

    # value [N, S, M, D] -> [N*M, D, S]
    value_by_head = body(
        "Reshape",
        body("Transpose", value, perm=[0, 2, 3, 1]),
        body("Concat", batch_heads, dim["D"], body.const([-1]), axis=0),
    )
    # locations [N, Lq, M, L, P, 2] in 0..1 -> grids [N, M, L, Lq, P, 2] in -1..1
    grids = body("Sub", body("Mul", sampling_locations, body.scalar(2.0)), body.scalar(1.0))
    grids = body("Transpose", grids, perm=[0, 2, 3, 1, 4, 5])
    grid_shape = body("Concat", batch_heads, dim["Lq"], dim["P"], body.const([2]), axis=0)
    mode = "linear" if opset >= 20 else "bilinear"

    # weights [N, Lq, M, L, P] -> [N*M, L, Lq, P]
    weights = body("Transpose", attention_weights, perm=[0, 2, 3, 1, 4])
    weights = body(
        "Reshape", weights, body("Concat", batch_heads, body.const([num_levels]), dim["Lq"], dim["P"], axis=0)
    )

    # Each level is sampled, weighted and summed over its points on its own: concatenating every level's samples
    # first (as the PyTorch reference does) builds a [N*M, D, Lq, L*P] tensor that costs more than the sampling.
    contributions = []
    for level in range(num_levels):
        start = body("Slice", level_start_index, body.const([level]), body.const([level + 1]))
        height = body("Slice", spatial_shapes, body.const([level, 0]), body.const([level + 1, 1]), body.const([0, 1]))
        width = body("Slice", spatial_shapes, body.const([level, 1]), body.const([level + 1, 2]), body.const([0, 1]))
        height, width = body("Reshape", height, body.const([1])), body("Reshape", width, body.const([1]))
        # The level's extent is H_l * W_l of its own row. Not Slice(ReduceProd(spatial_shapes, axis=1)): OpenVINO
        # (2026.4) folds that to 0 and every level's value slice comes out empty (issue 15).
        end = body("Add", start, body("Mul", height, width))
        level_shape = body("Concat", batch_heads, dim["D"], height, width, axis=0)
        value_level = body("Reshape", body("Slice", value_by_head, start, end, body.const([2])), level_shape)
        grid_level = body("Reshape", body("Gather", grids, body.const([level]), axis=2), grid_shape)
        # [N*M, D, Lq, P]
        sampled = body("GridSample", value_level, grid_level, mode=mode, padding_mode="zeros", align_corners=0)
        weights_level = body("Gather", weights, body.const([level]), axis=1)  # [N*M, 1, Lq, P]
        contributions.append(body("ReduceSum", body("Mul", sampled, weights_level), body.const([3]), keepdims=0))
    summed = body("Sum", *contributions) if num_levels > 1 else contributions[0]  # [N*M, D, Lq]
    per_head = body("Reshape", summed, body("Concat", dim["N"], dim["M"], dim["D"], dim["Lq"], axis=0))
    body.nodes.append(helper.make_node("Transpose", [per_head], [contract.MSDA_OUTPUTS[0]], perm=[0, 3, 1, 2]))

    return helper.make_function(
        contract.MSDA_DOMAIN,
        contract.MSDA_OP_TYPE,
        list(contract.MSDA_INPUTS),
        list(contract.MSDA_OUTPUTS),
        body.nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=list(contract.MSDA_ATTRIBUTES),
    )
