"""DETRsegm: DETR plus the box-attention map and the small FPN-style mask head of the official panoptic model."""

import torch
import torch.nn.functional as F
from torch import nn

from detr_deploy import contract
from detr_deploy.models.detr import DETR


class MHAttentionMap(nn.Module):
    """Attention of each query over the encoder memory, softmax over heads and pixels jointly (as official)."""

    def __init__(self, query_dim: int, hidden_dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.q_linear = nn.Linear(query_dim, hidden_dim)
        self.k_linear = nn.Linear(query_dim, hidden_dim)
        self.normalize_fact = float(hidden_dim / num_heads) ** -0.5

    def forward(self, queries: torch.Tensor, memory: torch.Tensor, padding_mask: torch.Tensor = None) -> torch.Tensor:
        """queries [N, Q, C], memory [N, C, H, W], padding_mask [N, H, W] bool or None
        -> weights [N, Q, heads, H, W]."""
        batch, num_queries = queries.shape[:2]
        height, width = memory.shape[-2:]
        head_dim = self.hidden_dim // self.num_heads
        q = self.q_linear(queries) * self.normalize_fact
        k = F.conv2d(memory, self.k_linear.weight[:, :, None, None], self.k_linear.bias)
        # [N, heads, Q, hd] @ [N, heads, hd, H*W]: the official einsum "bqnc,bnchw->bqnhw" as one MatMul.
        q = q.view(batch, num_queries, self.num_heads, head_dim).transpose(1, 2)
        k = k.view(batch, self.num_heads, head_dim, -1)
        weights = (q @ k).transpose(1, 2)  # [N, Q, heads, H*W]
        if padding_mask is not None:
            weights = weights.masked_fill(padding_mask.view(batch, 1, 1, -1), float("-inf"))
        weights = torch.softmax(weights.reshape(batch, num_queries, -1), dim=-1)
        return weights.view(batch, num_queries, self.num_heads, height, width)


def _repeat_per_query(tensor: torch.Tensor, num_queries: int) -> torch.Tensor:
    """[N, C, H, W] -> [N * Q, C, H, W], each image repeated once per query."""
    batch, channels, height, width = tensor.shape
    return tensor.unsqueeze(1).expand(batch, num_queries, channels, height, width).reshape(-1, channels, height, width)


class MaskHeadSmallConv(nn.Module):
    def __init__(self, dim: int, fpn_dims: list[int], context_dim: int):
        super().__init__()
        inter_dims = [dim, context_dim // 2, context_dim // 4, context_dim // 8, context_dim // 16]
        self.lay1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.gn1 = nn.GroupNorm(8, dim)
        self.lay2 = nn.Conv2d(dim, inter_dims[1], 3, padding=1)
        self.gn2 = nn.GroupNorm(8, inter_dims[1])
        self.lay3 = nn.Conv2d(inter_dims[1], inter_dims[2], 3, padding=1)
        self.gn3 = nn.GroupNorm(8, inter_dims[2])
        self.lay4 = nn.Conv2d(inter_dims[2], inter_dims[3], 3, padding=1)
        self.gn4 = nn.GroupNorm(8, inter_dims[3])
        self.lay5 = nn.Conv2d(inter_dims[3], inter_dims[4], 3, padding=1)
        self.gn5 = nn.GroupNorm(8, inter_dims[4])
        self.out_lay = nn.Conv2d(inter_dims[4], 1, 3, padding=1)
        self.adapter1 = nn.Conv2d(fpn_dims[0], inter_dims[1], 1)
        self.adapter2 = nn.Conv2d(fpn_dims[1], inter_dims[2], 1)
        self.adapter3 = nn.Conv2d(fpn_dims[2], inter_dims[3], 1)

    def forward(self, src: torch.Tensor, bbox_mask: torch.Tensor, fpns: list[torch.Tensor]) -> torch.Tensor:
        """src [N, C, H, W], bbox_mask [N, Q, heads, H, W], fpns (stride 16, 8, 4) -> mask logits [N*Q, 1, H*8, W*8]."""
        num_queries = bbox_mask.shape[1]
        x = torch.cat([_repeat_per_query(src, num_queries), bbox_mask.flatten(0, 1)], 1)
        x = F.relu(self.gn1(self.lay1(x)))
        x = F.relu(self.gn2(self.lay2(x)))
        for adapter, conv, norm, fpn in (
            (self.adapter1, self.lay3, self.gn3, fpns[0]),
            (self.adapter2, self.lay4, self.gn4, fpns[1]),
            (self.adapter3, self.lay5, self.gn5, fpns[2]),
        ):
            lateral = _repeat_per_query(adapter(fpn), num_queries)
            x = lateral + F.interpolate(x, size=lateral.shape[-2:], mode="nearest")
            x = F.relu(norm(conv(x)))
        return self.out_lay(x)


class DETRPanoptic(nn.Module):
    def __init__(self, detr: DETR):
        """``detr``: a DETR built with ``panoptic=True`` (its backbone returns every stage for the mask head)."""
        super().__init__()
        config = detr.config
        self.config = config
        self.detr = detr
        hidden_dim, num_heads = config.hidden_dim, config.num_heads
        self.bbox_attention = MHAttentionMap(hidden_dim, hidden_dim, num_heads)
        fpn_dims = list(reversed(self.detr.backbone[0].num_channels[:3]))
        self.mask_head = MaskHeadSmallConv(hidden_dim + num_heads, fpn_dims, hidden_dim)

    def forward(self, images: torch.Tensor, padding_mask: torch.Tensor = None) -> dict[str, torch.Tensor]:
        """images [N, 3, H, W], padding_mask [N, H, W] or None -> pred_logits [N, Q, K + 1], pred_boxes [N, Q, 4],
        pred_masks [N, Q, H/4, W/4].

        The masks are logits (sigmoid > 0.5 is inside).
        """
        outputs, features, src, hs, memory, feature_mask = self.detr.forward_features(images, padding_mask)
        batch, channels, height, width = src.shape
        memory = memory.transpose(1, 2).view(batch, channels, height, width)
        bbox_mask = self.bbox_attention(hs, memory, feature_mask)
        masks = self.mask_head(src, bbox_mask, [features[2], features[1], features[0]])
        outputs[contract.OUTPUT_MASKS] = masks.view(batch, self.config.num_queries, masks.shape[-2], masks.shape[-1])
        return outputs
