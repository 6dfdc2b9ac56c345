"""Deformable DETR's transformer (fundamentalvision/Deformable-DETR), written for export.

Level sizes come from each feature's shape (symbolic at export), never from values read back out of the
``spatial_shapes`` tensor: that read-back is data-dependent and breaks torch.export in the official code.
With a padding mask (``padding_mask`` [N, H, W], True = padded) reference points, proposals and attention honour
each image's valid extent as the official code does; without one every valid ratio is exactly 1 and the official
multiplications by them are skipped.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from detr_deploy.models.attention import MultiheadAttention
from detr_deploy.models.deformable_attention import MultiScaleDeformableAttention


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def level_cell_centers(height, width, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-center coordinates of one level normalized to 0..1: (x [1, H*W], y [1, H*W])."""
    ys = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height
    xs = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width
    return xs.view(1, -1).expand(height, width).reshape(1, -1), ys.view(-1, 1).expand(height, width).reshape(1, -1)


class DeformableTransformerEncoderLayer(nn.Module):
    def __init__(self, d_model: int, d_ffn: int, n_levels: int, n_heads: int, n_points: int):
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src, pos, reference_points, spatial_shapes, level_start_index, padding_mask=None):
        """src [N, S, C], pos [N or 1, S, C], reference_points [N or 1, S, L or 1, 2], padding_mask [N, S] or None
        -> [N, S, C]."""
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index, padding_mask)
        src = self.norm1(src + attended)
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class DeformableTransformerDecoderLayer(nn.Module):
    def __init__(self, d_model: int, d_ffn: int, n_levels: int, n_heads: int, n_points: int):
        super().__init__()
        self.cross_attn = MultiScaleDeformableAttention(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = MultiheadAttention(d_model, n_heads)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, tgt, query_pos, reference_points, memory, spatial_shapes, level_start_index, padding_mask=None):
        """tgt and query_pos [N, Q, C], reference_points [N, Q, L or 1, 2 or 4], memory [N, S, C], padding_mask
        [N, S] or None -> [N, Q, C]."""
        query_key = tgt + query_pos
        tgt = self.norm2(tgt + self.self_attn(query_key, query_key, tgt))
        attended = self.cross_attn(
            tgt + query_pos, reference_points, memory, spatial_shapes, level_start_index, padding_mask
        )
        tgt = self.norm1(tgt + attended)
        return self.norm3(tgt + self.linear2(F.relu(self.linear1(tgt))))


class DeformableTransformerEncoder(nn.Module):
    def __init__(self, num_layers: int, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList(DeformableTransformerEncoderLayer(**layer_kwargs) for _ in range(num_layers))

    def forward(self, src, pos, level_shapes, spatial_shapes, level_start_index, valid_ratios=None, padding_mask=None):
        """valid_ratios [N, L, 2] (w, h) and padding_mask [N, S], or both None."""
        centers = [torch.stack(level_cell_centers(h, w, src.device), -1) for h, w in level_shapes]
        if valid_ratios is None:
            reference_points = torch.cat(centers, 1)[:, :, None]  # [1, S, 1, 2]
        else:
            # Cell centers in units of each image's valid extent, then seen from every level.
            centers = [center / valid_ratios[:, None, level] for level, center in enumerate(centers)]
            reference_points = torch.cat(centers, 1)[:, :, None] * valid_ratios[:, None]  # [N, S, L, 2]
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes, level_start_index, padding_mask)
        return src


class DeformableTransformerDecoder(nn.Module):
    def __init__(self, num_layers: int, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList(DeformableTransformerDecoderLayer(**layer_kwargs) for _ in range(num_layers))
        # Set by DeformableDETR for iterative box refinement / two-stage, as in the official code.
        self.bbox_embed = None
        self.class_embed = None

    def forward(
        self, tgt, reference_points, memory, spatial_shapes, level_start_index, query_pos, valid_ratios, padding_mask
    ):
        """Returns (last layer output [N, Q, C], reference points that layer used [N, Q, 2 or 4])."""
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            if valid_ratios is None:
                reference_input = reference_points[:, :, None]
            elif reference_points.shape[-1] == 4:
                reference_input = reference_points[:, :, None] * torch.cat([valid_ratios, valid_ratios], -1)[:, None]
            else:
                reference_input = reference_points[:, :, None] * valid_ratios[:, None]
            tgt = layer(tgt, query_pos, reference_input, memory, spatial_shapes, level_start_index, padding_mask)
            if self.bbox_embed is not None and index < last:
                delta = self.bbox_embed[index](tgt)
                if reference_points.shape[-1] == 4:
                    reference_points = (delta + inverse_sigmoid(reference_points)).sigmoid()
                else:
                    reference_points = torch.cat(
                        [delta[..., :2] + inverse_sigmoid(reference_points), delta[..., 2:]], -1
                    ).sigmoid()
        return tgt, reference_points


class DeformableTransformer(nn.Module):
    def __init__(
        self,
        d_model: int,
        nhead: int,
        num_encoder_layers: int,
        num_decoder_layers: int,
        dim_feedforward: int,
        num_feature_levels: int,
        enc_n_points: int,
        dec_n_points: int,
        two_stage: bool,
        two_stage_num_proposals: int,
    ):
        super().__init__()
        self.d_model = d_model
        self.two_stage = two_stage
        self.two_stage_num_proposals = two_stage_num_proposals
        common = dict(d_model=d_model, d_ffn=dim_feedforward, n_levels=num_feature_levels, n_heads=nhead)
        self.encoder = DeformableTransformerEncoder(num_encoder_layers, n_points=enc_n_points, **common)
        self.decoder = DeformableTransformerDecoder(num_decoder_layers, n_points=dec_n_points, **common)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        nn.init.normal_(self.level_embed)
        if two_stage:
            self.enc_output = nn.Linear(d_model, d_model)
            self.enc_output_norm = nn.LayerNorm(d_model)
            self.pos_trans = nn.Linear(d_model * 2, d_model * 2)
            self.pos_trans_norm = nn.LayerNorm(d_model * 2)
        else:
            self.reference_points = nn.Linear(d_model, 2)

    def encoder_proposals(
        self, memory: torch.Tensor, level_shapes, masks=None, padding_mask=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """memory [N, S, C] -> (projected memory [N, S, C], proposals in logit space [N or 1, S, 4])."""
        memory, proposals = encoder_proposals(memory, level_shapes, masks, padding_mask)
        return self.enc_output_norm(self.enc_output(memory)), proposals

    def proposal_pos_embed(self, proposals: torch.Tensor) -> torch.Tensor:
        """proposals [N, K, 4] in logit space -> sine embedding [N, K, 2 * d_model]."""
        num_pos_feats = self.d_model // 2
        dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=proposals.device)
        dim_t = 10000 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
        pos = (proposals.sigmoid() * 2 * math.pi)[:, :, :, None] / dim_t
        return torch.stack((pos[:, :, :, 0::2].sin(), pos[:, :, :, 1::2].cos()), dim=4).flatten(2)

    def forward(
        self,
        srcs: list[torch.Tensor],
        pos_embeds: list[torch.Tensor],
        query_embed: torch.Tensor = None,
        masks: list[torch.Tensor] = None,
    ):
        """srcs [N, C, H_l, W_l] and pos_embeds [N or 1, C, H_l, W_l] per level; query_embed [Q, 2C] (None in
        two-stage); masks [N, H_l, W_l] bool per level (True = padded) or None.

        Returns (hs [N, Q, C], reference points of the last decoder layer [N, Q, 2 or 4]).
        """
        batch, channels = srcs[0].shape[:2]
        levels = flatten_levels(srcs, pos_embeds, self.level_embed, masks)
        level_shapes, spatial_shapes, level_start_index = levels.shapes, levels.spatial_shapes, levels.start_index
        valid_ratios, padding_mask = levels.valid_ratios, levels.padding_mask
        memory = self.encoder(
            levels.src, levels.pos, level_shapes, spatial_shapes, level_start_index, valid_ratios, padding_mask
        )

        if self.two_stage:
            output_memory, proposals = self.encoder_proposals(memory, level_shapes, masks, padding_mask)
            num_layers = len(self.decoder.layers)
            class_logits = self.decoder.class_embed[num_layers](output_memory)
            coords_unact = self.decoder.bbox_embed[num_layers](output_memory) + proposals
            # The query order follows these scores, so near-equal scores may come out in another order on another
            # backend; parity aligns queries for two-stage models (see parity.align_queries).
            topk_index = torch.topk(class_logits[..., 0], self.two_stage_num_proposals, dim=1)[1]
            topk_coords_unact = torch.gather(coords_unact, 1, topk_index.unsqueeze(-1).expand(-1, -1, 4))
            reference_points = topk_coords_unact.sigmoid()
            pos_trans_out = self.pos_trans_norm(self.pos_trans(self.proposal_pos_embed(topk_coords_unact)))
            query_pos, tgt = torch.split(pos_trans_out, channels, dim=2)
        else:
            query_pos, tgt = torch.split(query_embed, channels, dim=1)
            reference_points = self.reference_points(query_pos).sigmoid().unsqueeze(0).expand(batch, -1, -1)
            query_pos = query_pos.unsqueeze(0).expand(batch, -1, -1)
            tgt = tgt.unsqueeze(0).expand(batch, -1, -1)
        return self.decoder(
            tgt, reference_points, memory, spatial_shapes, level_start_index, query_pos, valid_ratios, padding_mask
        )


def valid_ratio(mask: torch.Tensor) -> torch.Tensor:
    """mask [N, H, W] bool (True = padded) -> [N, 2]: the unpadded fraction of the width and of the height."""
    height, width = mask.shape[-2:]
    valid_height = (~mask[:, :, 0]).sum(1, dtype=torch.float32)
    valid_width = (~mask[:, 0, :]).sum(1, dtype=torch.float32)
    return torch.stack([valid_width / width, valid_height / height], -1)


@dataclass
class FlatLevels:
    """Feature levels flattened into one token sequence, with what the deformable attention needs to find them."""

    src: torch.Tensor  # [N, S, C]
    pos: torch.Tensor  # [N or 1, S, C], level embedding added
    shapes: list  # (H_l, W_l) per level, symbolic at export
    spatial_shapes: torch.Tensor  # [L, 2] int64
    start_index: torch.Tensor  # [L] int64
    valid_ratios: torch.Tensor = None  # [N, L, 2] (with masks)
    padding_mask: torch.Tensor = None  # [N, S] bool (with masks)


def flatten_levels(srcs, pos_embeds, level_embed: torch.Tensor, masks=None) -> FlatLevels:
    """srcs [N, C, H_l, W_l] and pos_embeds [N or 1, C, H_l, W_l] per level, level_embed [L, C], masks [N, H_l, W_l]
    bool per level (True = padded) or None -> FlatLevels."""
    batch, channels = srcs[0].shape[:2]
    shapes = [tuple(src.shape[-2:]) for src in srcs]
    src = torch.cat([level.view(batch, channels, -1).transpose(1, 2) for level in srcs], 1)
    pos = torch.cat(
        [
            level_pos.view(level_pos.shape[0], channels, -1).transpose(1, 2) + level_embed[level].view(1, 1, -1)
            for level, level_pos in enumerate(pos_embeds)
        ],
        1,
    )
    valid_ratios = padding_mask = None
    if masks is not None:
        padding_mask = torch.cat([mask.flatten(1) for mask in masks], 1)
        valid_ratios = torch.stack([valid_ratio(mask) for mask in masks], 1)
    spatial_shapes = torch.tensor(shapes, dtype=torch.long, device=src.device)
    # Offsets summed from the symbolic sizes (not a CumSum over the tensor), so TensorRT sees shape arithmetic.
    starts = [0]
    for height, width in shapes[:-1]:
        starts.append(starts[-1] + height * width)
    start_index = torch.tensor(starts, dtype=torch.long, device=src.device)
    return FlatLevels(src, pos, shapes, spatial_shapes, start_index, valid_ratios, padding_mask)


def encoder_proposals(memory: torch.Tensor, level_shapes, masks=None, padding_mask=None):
    """Two-stage proposals, one per token (its cell, 0.05 * 2**level wide), as Deformable DETR and DINO make them.

    memory [N, S, C], per-level masks [N, H_l, W_l] and padding_mask [N, S] (or Nones) -> (memory with padded and
    border tokens zeroed [N, S, C], proposals in logit space [N or 1, S, 4], +inf for those tokens)."""
    proposals = []
    for level, (height, width) in enumerate(level_shapes):
        xs, ys = level_cell_centers(height, width, memory.device)
        if masks is not None:
            # Centers in units of each image's valid extent at this level.
            valid_height = (~masks[level][:, :, 0]).sum(1, dtype=torch.float32)[:, None]
            valid_width = (~masks[level][:, 0, :]).sum(1, dtype=torch.float32)[:, None]
            xs, ys = xs * width / valid_width, ys * height / valid_height
        size = torch.full_like(xs, 0.05 * 2.0**level)
        proposals.append(torch.stack([xs, ys, size, size], -1))
    proposals = torch.cat(proposals, 1)
    valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
    proposals = torch.log(proposals / (1 - proposals))
    if padding_mask is not None:
        proposals = proposals.masked_fill(padding_mask[..., None], float("inf"))
        memory = memory.masked_fill(padding_mask[..., None], 0.0)
    proposals = proposals.masked_fill(~valid, float("inf"))
    return memory.masked_fill(~valid, 0.0), proposals
