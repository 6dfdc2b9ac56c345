"""The ``detr_deploy::MSDeformAttn`` function body ONNX Runtime runs on the CPU (``runtime/msda_formulation.py``):
bilinear sampling as Gathers instead of ``exporters.msda_function``'s GridSample per level. Not used by the exporter:
the file keeps its GridSample function; a runner swaps this one in, in memory."""

from onnx import FunctionProto, TensorProto, helper

from detr_deploy import contract
from exporters.msda_function import _Body


def _int64_scalar(body: _Body, value: int) -> str:
    return body("Constant", value=helper.make_tensor("value", TensorProto.INT64, [], [value]))


def build_msda_gather_function(num_levels: int, opset: int, per_level: bool = True) -> FunctionProto:
    """The same op as ``build_msda_function``, with bilinear sampling written as Gathers of every point's four
    neighbouring cells from the flattened value instead of a GridSample per level: ONNX Runtime's CPU GridSample is
    several times slower than PyTorch's (issue 23), while its Gather copies whole rows of D contiguous floats.

    Each point at (x, y) in 0..1 of level l reads the cells around (x * W_l - 0.5, y * H_l - 0.5) with bilinear
    weights; cells outside the level weigh 0 (GridSample's zeros padding, align_corners=0), and a MatMul sums the
    weighted cells. ``per_level``: one Gather per level, holding [N, Lq, M, P*4, D] at a time (4x the per-level
    GridSample path); else one for all levels (``num_levels`` unused), holding L times that.
    Shapes: value [N, S, M, D], locations [N, Lq, M, L, P, 2] -> output [N, Lq, M, D]. float32 only.
    """
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = contract.MSDA_INPUTS
    body = _Body()
    value_shape = body("Shape", value)
    dims = {
        name: body("Squeeze", body("Slice", value_shape, body.const([index]), body.const([index + 1])))
        for name, index in (("N", 0), ("S", 1), ("M", 2), ("D", 3))
    }
    zero, one = body.const([0]), body.const([1])
    shapes = body("Cast", spatial_shapes, to=TensorProto.INT64)
    starts = body("Cast", level_start_index, to=TensorProto.INT64)
    # Offsets of batch n and head m in value viewed as [N * S * M, D] rows, to broadcast against
    # [N, Lq, M, L, P, 4 corners]: row = ((n * S) + start_l + y * W_l + x) * M + m.
    batch_offset = body(
        "Reshape",
        body("Mul", body("Range", _int64_scalar(body, 0), dims["N"], _int64_scalar(body, 1)), dims["S"]),
        body.const([-1, 1, 1, 1, 1, 1]),
    )
    heads = body(
        "Reshape",
        body("Range", _int64_scalar(body, 0), dims["M"], _int64_scalar(body, 1)),
        body.const([1, 1, -1, 1, 1, 1]),
    )
    location_shape = body("Shape", sampling_locations)
    by_query = body("Concat", body("Slice", location_shape, zero, body.const([3])), body.const([-1]), axis=0)
    rows = body("Reshape", value, body("Concat", body.const([-1]), body("Unsqueeze", dims["D"], zero), axis=0))

    def floats(values):
        return body("Constant", value=helper.make_tensor("value", TensorProto.FLOAT, [4], values))

    def sample(locations, weights, level_shapes, level_starts):
        """locations [N, Lq, M, L', P, 2], weights [N, Lq, M, L', P], level_shapes [L', 2], level_starts [L']
        -> the weighted sum of those levels' samples, [N, Lq, M, 1, D]."""
        # Per level, shaped to broadcast against [N, Lq, M, L', P, 4]: [L', 1, 1].
        heights = body("Unsqueeze", body("Gather", level_shapes, zero, axis=1), body.const([2]))
        widths = body("Unsqueeze", body("Gather", level_shapes, one, axis=1), body.const([2]))
        level_starts = body("Reshape", level_starts, body.const([-1, 1, 1]))
        # Pixel coordinates: x * W_l - 0.5, y * H_l - 0.5; [N, Lq, M, L', P, 1] each.
        x = body("Gather", locations, zero, axis=5)
        y = body("Gather", locations, one, axis=5)
        x = body("Sub", body("Mul", x, body("Cast", widths, to=TensorProto.FLOAT)), body.scalar(0.5))
        y = body("Sub", body("Mul", y, body("Cast", heights, to=TensorProto.FLOAT)), body.scalar(0.5))
        x0, y0 = body("Floor", x), body("Floor", y)
        fx, fy = body("Sub", x, x0), body("Sub", y, y0)
        # The corners (x0, y0), (x0+1, y0), (x0, y0+1), (x0+1, y0+1) along a last axis of 4, with their weights
        # (1 - fx or fx) * (1 - fy or fy), written a + b * f.
        column = body("Cast", body("Add", x0, floats([0, 1, 0, 1])), to=TensorProto.INT64)
        row = body("Cast", body("Add", y0, floats([0, 0, 1, 1])), to=TensorProto.INT64)
        weight_x = body("Add", floats([1, 0, 1, 0]), body("Mul", floats([-1, 1, -1, 1]), fx))
        weight_y = body("Add", floats([1, 1, 0, 0]), body("Mul", floats([-1, -1, 1, 1]), fy))
        inside = body(
            "And",
            body("And", body("GreaterOrEqual", column, zero), body("Less", column, widths)),
            body("And", body("GreaterOrEqual", row, zero), body("Less", row, heights)),
        )
        corner_weights = body("Mul", body("Mul", weight_x, weight_y), body("Cast", inside, to=TensorProto.FLOAT))
        corner_weights = body("Mul", corner_weights, body("Unsqueeze", weights, body.const([5])))
        # Outside cells are clamped in (they weigh 0) so that every index is valid.
        column = body("Min", body("Max", column, zero), body("Sub", widths, one))
        row = body("Min", body("Max", row, zero), body("Sub", heights, one))
        cell = body("Add", level_starts, body("Add", body("Mul", row, widths), column))
        index = body("Add", body("Mul", body("Add", batch_offset, cell), dims["M"]), heads)
        index = body("Reshape", index, by_query)  # [N, Lq, M, K = L' * P * 4]
        corner_weights = body("Unsqueeze", body("Reshape", corner_weights, by_query), body.const([3]))  # [..., 1, K]
        sampled = body("Gather", rows, index, axis=0)  # [N, Lq, M, K, D]
        return body("MatMul", corner_weights, sampled)

    if per_level:
        summed = []
        for level in range(num_levels):
            begin, end = body.const([level]), body.const([level + 1])
            summed.append(
                sample(
                    body("Slice", sampling_locations, begin, end, body.const([3])),
                    body("Slice", attention_weights, begin, end, body.const([3])),
                    body("Slice", shapes, begin, end, zero),
                    body("Slice", starts, begin, end, zero),
                )
            )
        combined = body("Sum", *summed) if num_levels > 1 else summed[0]
    else:
        combined = sample(sampling_locations, attention_weights, shapes, starts)
    body.nodes.append(helper.make_node("Squeeze", [combined, body.const([3])], [contract.MSDA_OUTPUTS[0]]))

    return helper.make_function(
        contract.MSDA_DOMAIN,
        contract.MSDA_OP_TYPE,
        list(contract.MSDA_INPUTS),
        list(contract.MSDA_OUTPUTS),
        body.nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=list(contract.MSDA_ATTRIBUTES),
    )
