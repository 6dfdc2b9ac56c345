"""The MSDeformAttn module of Deformable DETR: projections around the ``ms_deform_attn`` op boundary."""

import torch
from torch import nn

from detr_deploy.ops.ms_deform_attn import ms_deform_attn


class MultiScaleDeformableAttention(nn.Module):
    # Always through our op: one MSDeformAttn node in the export (exporters.onnx.msda_paths reports it).
    msda_path = "plugin"

    def __init__(self, d_model: int, n_levels: int, n_heads: int, n_points: int):
        super().__init__()
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        input_flatten: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        input_padding_mask: torch.Tensor = None,
    ) -> torch.Tensor:
        """query [N, Lq, C]; reference_points [N or 1, Lq, L or 1, 2 (x, y) or 4 (cx, cy, w, h)] in 0..1;
        input_flatten [N, S, C]; spatial_shapes [L, 2]; level_start_index [L]; input_padding_mask [N, S] bool (True
        = padded, its values are zeroed) or None -> [N, Lq, C]."""
        batch, num_queries, _ = query.shape
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(batch, -1, self.n_heads, self.d_model // self.n_heads)
        offsets = self.sampling_offsets(query).view(batch, num_queries, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(batch, num_queries, self.n_heads, self.n_levels * self.n_points)
        weights = weights.softmax(-1).view(batch, num_queries, self.n_heads, self.n_levels, self.n_points)
        if reference_points.shape[-1] == 2:
            # Offsets are in pixels of each level: normalize by (W_l, H_l).
            normalizer = torch.stack([spatial_shapes[:, 1], spatial_shapes[:, 0]], -1).to(offsets.dtype)
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        else:
            # Offsets are relative to the reference box size.
            locations = (
                reference_points[:, :, None, :, None, :2]
                + offsets / self.n_points * reference_points[:, :, None, :, None, 2:] * 0.5
            )
        output = ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights)
        return self.output_proj(output.view(batch, num_queries, self.d_model))
