"""Sine position encoding of DETR and Deformable DETR.

Officially, positions are cumulative sums over the pixels that are not padding, normalized by the valid extent. With
no padding mask those sums are simply 1..H and 1..W, so the encoding is built from ``arange`` over the (symbolic)
feature size and broadcast over the batch; with a mask each image gets its own.
"""

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """``offset`` is 0 for DETR and -0.5 for Deformable DETR, the only difference between the two."""

    def __init__(self, num_pos_feats: int, temperature: float = 10000.0, offset: float = 0.0, eps: float = 1e-6):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.offset = offset
        self.eps = eps
        self.scale = 2 * math.pi

    def forward(self, feature: torch.Tensor, padding_mask: torch.Tensor = None) -> torch.Tensor:
        """feature [N, C, H, W], padding_mask [N, H, W] bool (True = padded) or None
        -> [N or 1, 2 * num_pos_feats, H, W] (1 without a mask: it broadcasts over the batch)."""
        height, width = feature.shape[-2:]
        if padding_mask is None:
            y_embed = torch.arange(1, height + 1, dtype=torch.float32, device=feature.device).view(1, -1, 1)
            x_embed = torch.arange(1, width + 1, dtype=torch.float32, device=feature.device).view(1, 1, -1)
        else:
            not_padded = (~padding_mask).to(torch.float32)
            y_embed, x_embed = not_padded.cumsum(1), not_padded.cumsum(2)
        y_embed = (y_embed + self.offset) / (y_embed[:, -1:, :] + self.eps) * self.scale
        x_embed = (x_embed + self.offset) / (x_embed[:, :, -1:] + self.eps) * self.scale
        y_embed = y_embed.expand(-1, height, width)
        x_embed = x_embed.expand(-1, height, width)
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=feature.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2).to(feature.dtype)
