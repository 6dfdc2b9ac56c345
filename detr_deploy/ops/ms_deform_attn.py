"""Multi-scale deformable attention as one op boundary.

The op is a ``torch.library`` custom op so that export sees one node (``detr_deploy::ms_deform_attn``), which the
ONNX exporter turns into an ``MSDeformAttn`` node bound to our TensorRT plugin. Eager execution runs the pure
PyTorch reference below, which is also what every other implementation is tested against.

I/O follows TensorRT OSS ``MultiscaleDeformableAttnPlugin_TRT``:
    value               [N, S, M, D]   S = sum over levels of H_l * W_l
    spatial_shapes      [L, 2]         (H_l, W_l), int64
    level_start_index   [L]            offset of level l in S, int64
    sampling_locations  [N, Lq, M, L, P, 2]   (x, y) normalized to [0, 1]
    attention_weights   [N, Lq, M, L, P]
    -> output           [N, Lq, M, D]
"""

import torch
import torch.nn.functional as F


def ms_deform_attn_reference(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Reference implementation with ``grid_sample`` (bilinear, zero padding, align_corners=False).

    Shapes as in the module docstring; returns [N, Lq, M, D].
    """
    batch, _, num_heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    # grid_sample works in [-1, 1]; the official code maps [0, 1] locations the same way.
    sampling_grids = 2 * sampling_locations - 1
    sampled_per_level = []
    for level, ((height, width), start) in enumerate(zip(spatial_shapes.tolist(), level_start_index.tolist())):
        # [N, H*W, M, D] -> [N*M, D, H, W]
        value_level = value[:, start : start + height * width]
        value_level = value_level.permute(0, 2, 3, 1).reshape(batch * num_heads, head_dim, height, width)
        # [N, Lq, M, P, 2] -> [N*M, Lq, P, 2]
        grid_level = (
            sampling_grids[:, :, :, level].transpose(1, 2).reshape(batch * num_heads, num_queries, num_points, 2)
        )
        sampled_per_level.append(
            F.grid_sample(value_level, grid_level, mode="bilinear", padding_mode="zeros", align_corners=False)
        )
    # [N*M, D, Lq, L*P]
    sampled = torch.stack(sampled_per_level, dim=-2).flatten(-2)
    weights = attention_weights.transpose(1, 2).reshape(batch * num_heads, 1, num_queries, num_levels * num_points)
    output = (sampled * weights).sum(-1)  # [N*M, D, Lq]
    return output.view(batch, num_heads, head_dim, num_queries).permute(0, 3, 1, 2).contiguous()


@torch.library.custom_op("detr_deploy::ms_deform_attn", mutates_args=())
def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention; see the module docstring for shapes. Returns [N, Lq, M, D]."""
    return ms_deform_attn_reference(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)


@ms_deform_attn.register_fake
def _ms_deform_attn_fake(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    batch, _, num_heads, head_dim = value.shape
    return value.new_empty(batch, sampling_locations.shape[1], num_heads, head_dim)
