"""RT-DETRv2's "discrete" multi-scale deformable attention, in plain PyTorch ops that export to standard ONNX.

Instead of bilinear interpolation, each sampling point reads the single cell it falls in: the official
``deformable_attention_core_func_v2(..., method='discrete')`` rounds ``location * (W_l, H_l) + 0.5`` down to an
integer cell, clamps it into the level and gathers. The bilinear ``MSDeformAttn`` node cannot express that, so this
is a Gather over the flattened value instead; every shape in it follows the inputs' (symbolic) shapes.

Inputs and output are the ``ms_deform_attn`` op's (see ``detr_deploy.ops.ms_deform_attn``):
    value               [N, S, M, D]   S = sum over levels of H_l * W_l
    spatial_shapes      [L, 2]         (H_l, W_l), int64
    level_start_index   [L]            offset of level l in S, int64
    sampling_locations  [N, Lq, M, L, P, 2]   (x, y), 0..1 inside the level
    attention_weights   [N, Lq, M, L, P]
    -> output           [N, Lq, M, D]
"""

import torch


def discrete_cells(sampling_locations: torch.Tensor, spatial_shapes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The cell each point reads: (column, row), each [N, Lq, M, L, P] int64, inside its level.

    The official code truncates ``location * size + 0.5`` toward zero (``.to(torch.int64)``) and clamps both
    coordinates into ``[0, H_l - 1]`` (a "FIX ME? for rectangle input": it only works for square levels). Here the
    floor is explicit (equal to truncation once negatives are clamped to 0, and unambiguous in ONNX, whose Cast
    leaves float-to-int rounding to the runtime) and x is clamped into ``[0, W_l - 1]``, y into ``[0, H_l - 1]``:
    identical to the official on square levels, and on others the only in-range reading.
    """
    # [L, 2] (W_l, H_l), broadcast against [..., L, P, 2].
    sizes = spatial_shapes.flip(-1)
    cells = torch.floor(sampling_locations * sizes[:, None].to(sampling_locations.dtype) + 0.5).to(torch.int64)
    cells = torch.minimum(cells.clamp(min=0), sizes[:, None] - 1)
    return cells[..., 0], cells[..., 1]


def ms_deform_attn_discrete(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Nearest-cell deformable attention; shapes in the module docstring. Returns [N, Lq, M, D].

    Points whose attention weight is 0 (the padding of per-level point counts) read a valid cell and add nothing.
    """
    batch, _, num_heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    columns, rows = discrete_cells(sampling_locations, spatial_shapes)
    # Index of each point's cell in the flattened value: [N, Lq, M, L, P] -> [N, M, Lq * L * P].
    flat = level_start_index[:, None] + rows * spatial_shapes[:, 1:2] + columns
    flat = flat.permute(0, 2, 1, 3, 4).reshape(batch, num_heads, num_queries * num_levels * num_points)
    # value [N, S, M, D] -> [N, M, S, D]; gather along S.
    per_head = value.permute(0, 2, 1, 3)
    sampled = torch.gather(per_head, 2, flat[..., None].expand(-1, -1, -1, head_dim))
    sampled = sampled.view(batch, num_heads, num_queries, num_levels * num_points, head_dim)
    weights = attention_weights.permute(0, 2, 1, 3, 4).reshape(batch, num_heads, num_queries, -1, 1)
    return (sampled * weights).sum(3).permute(0, 2, 1, 3)
