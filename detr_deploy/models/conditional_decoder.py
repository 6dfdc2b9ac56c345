"""Conditional DETR's decoder layer (reused unchanged by DAB-DETR) and the sine embedding of reference points.

The layer keeps the official parameter names (``sa_*`` / ``ca_*`` projections, ``self_attn.out_proj``,
``cross_attn.out_proj``), so official checkpoints load without renaming. Unlike DETR's layer, queries and keys are
projected here, not inside the attention: the attention modules hold only their output projection. In
cross-attention each head's query is its content part followed by its sine-position part (and likewise each key is
content then position), so the per-head width doubles; values keep the model width.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from detr_deploy.models.mlp import MLP


def sine_embedding(coordinates: torch.Tensor, features_per_coordinate: int = 128, temperature: float = 10000.0):
    """Sine-cosine embedding of normalized coordinates, DETR's order: y first, then x, then any further ones.

    coordinates [..., K] in [0, 1] (K = 2: reference points x, y; K = 4: boxes cx, cy, w, h)
    -> [..., K * features_per_coordinate], laid out (y, x, w, h) with sin/cos interleaved inside each block.
    """
    dim_t = torch.arange(features_per_coordinate, dtype=torch.float32, device=coordinates.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / features_per_coordinate)
    blocks = []
    for coordinate in coordinates.unbind(-1):
        angles = coordinate[..., None] * (2 * math.pi) / dim_t
        blocks.append(torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2))
    if len(blocks) >= 2:
        blocks[0], blocks[1] = blocks[1], blocks[0]
    return torch.cat(blocks, dim=-1).to(coordinates.dtype)


def reference_point_sine_embedding(points: torch.Tensor, d_model: int) -> torch.Tensor:
    """Conditional DETR's p_s: points [N, Q, 2] (x, y in [0, 1]) -> [N, Q, d_model] (d_model / 2 per coordinate)."""
    return sine_embedding(points, d_model // 2)


def box_sine_embedding(boxes: torch.Tensor, d_model: int) -> torch.Tensor:
    """DAB-DETR's anchor embedding: boxes [N, Q, 4] (cx, cy, w, h in [0, 1]) -> [N, Q, 2 * d_model]."""
    return sine_embedding(boxes, d_model // 2)


class ProjectedAttention(nn.Module):
    """Scaled dot-product attention over already-projected queries, keys and values, then ``out_proj``.

    The official ``MultiheadAttention`` of Conditional DETR with its input projections removed: the only parameters
    are ``out_proj.weight`` [value_dim, value_dim] and ``out_proj.bias`` [value_dim]."""

    def __init__(self, value_dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.out_proj = nn.Linear(value_dim, value_dim)

    def forward(self, query, key, value, key_padding_mask=None):
        """query [N, Lq, Cqk], key [N, Lk, Cqk], value [N, Lk, Cv], key_padding_mask [N, Lk] bool (True = ignore)
        or None -> [N, Lq, Cv]. The scale is (Cqk / heads) ** -0.5: the concatenated head width."""
        batch, heads = query.shape[0], self.num_heads
        head_width = query.shape[-1] // heads
        q = query.reshape(batch, -1, heads, head_width).transpose(1, 2)
        k = key.reshape(batch, -1, heads, head_width).transpose(1, 2)
        v = value.reshape(batch, value.shape[1], heads, -1).transpose(1, 2)
        logits = (q * head_width**-0.5) @ k.transpose(-2, -1)
        if key_padding_mask is not None:
            logits = logits.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        out = (torch.softmax(logits, dim=-1) @ v).transpose(1, 2)
        return self.out_proj(out.reshape(batch, out.shape[1], -1))


def feedforward_activation(name: str):
    """The FFN activation by name: "relu" (Conditional DETR) or "prelu" (DAB-DETR: an ``nn.PReLU`` with one learned
    slope, its state key ``activation.weight``)."""
    if name == "relu":
        return F.relu
    if name == "prelu":
        return nn.PReLU()
    raise ValueError(f"activation must be 'relu' or 'prelu', not {name!r}")


class ConditionalDecoderLayer(nn.Module):
    """Post-norm decoder layer of Conditional DETR (and DAB-DETR).

    ``has_query_pos_proj``: whether the layer owns ``ca_qpos_proj`` (officially only the first layer does, unless
    ``keep_query_pos``). The object-query position enters cross-attention when ``is_first or keep_query_pos``.
    ``activation``: "relu" (Conditional DETR) or "prelu" (DAB-DETR: an ``nn.PReLU`` with one learned slope,
    state key ``activation.weight``)."""

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int,
        activation: str = "relu",
        keep_query_pos: bool = False,
        has_query_pos_proj: bool = True,
    ):
        super().__init__()
        if d_model % nhead:
            raise ValueError(f"d_model {d_model} is not divisible by nhead {nhead}")
        if keep_query_pos and not has_query_pos_proj:
            raise ValueError("keep_query_pos needs ca_qpos_proj (has_query_pos_proj=True)")
        self.nhead = nhead
        self.keep_query_pos = keep_query_pos
        self.sa_qcontent_proj = nn.Linear(d_model, d_model)
        self.sa_qpos_proj = nn.Linear(d_model, d_model)
        self.sa_kcontent_proj = nn.Linear(d_model, d_model)
        self.sa_kpos_proj = nn.Linear(d_model, d_model)
        self.sa_v_proj = nn.Linear(d_model, d_model)
        self.self_attn = ProjectedAttention(d_model, nhead)
        self.ca_qcontent_proj = nn.Linear(d_model, d_model)
        self.ca_qpos_proj = nn.Linear(d_model, d_model) if has_query_pos_proj else None
        self.ca_kcontent_proj = nn.Linear(d_model, d_model)
        self.ca_kpos_proj = nn.Linear(d_model, d_model)
        self.ca_v_proj = nn.Linear(d_model, d_model)
        self.ca_qpos_sine_proj = nn.Linear(d_model, d_model)
        self.cross_attn = ProjectedAttention(d_model, nhead)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.activation = feedforward_activation(activation)

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        pos: torch.Tensor,
        query_pos: torch.Tensor,
        query_sine_embed: torch.Tensor,
        is_first: bool = False,
        memory_padding_mask: torch.Tensor = None,
    ) -> torch.Tensor:
        """tgt [N, Q, C], memory [N, S, C], pos [N or 1, S, C] (image sine position), query_pos [N or 1, Q, C]
        (object-query position), query_sine_embed [N, Q, C] (the reference points' sine embedding, already scaled
        by the decoder), memory_padding_mask [N, S] bool (True = padded) or None -> [N, Q, C]."""
        batch, queries, width = tgt.shape
        heads = self.nhead

        q = self.sa_qcontent_proj(tgt) + self.sa_qpos_proj(query_pos)
        k = self.sa_kcontent_proj(tgt) + self.sa_kpos_proj(query_pos)
        tgt = self.norm1(tgt + self.self_attn(q, k, self.sa_v_proj(tgt)))

        q = self.ca_qcontent_proj(tgt)
        k = self.ca_kcontent_proj(memory)
        k_pos = self.ca_kpos_proj(pos).expand(batch, -1, -1)
        if is_first or self.keep_query_pos:
            q = q + self.ca_qpos_proj(query_pos)
            k = k + k_pos
        q_sine = self.ca_qpos_sine_proj(query_sine_embed)
        q = torch.cat([q.view(batch, queries, heads, -1), q_sine.view(batch, queries, heads, -1)], dim=3)
        k = torch.cat([k.view(batch, k.shape[1], heads, -1), k_pos.view(batch, k.shape[1], heads, -1)], dim=3)
        attended = self.cross_attn(
            q.view(batch, queries, 2 * width), k.flatten(2), self.ca_v_proj(memory), memory_padding_mask
        )
        tgt = self.norm2(tgt + attended)
        return self.norm3(tgt + self.linear2(self.activation(self.linear1(tgt))))


class ConditionalDecoder(nn.Module):
    """Conditional DETR's decoder: reference points from the object queries, each layer's sine embedding of them
    scaled by ``query_scale`` of the previous output (not in the first layer), the final LayerNorm.

    State keys: ``layers.{i}.*`` (``ca_qpos_proj`` in layer 0 only), ``norm.*``, ``query_scale.layers.{0,1}.*``,
    ``ref_point_head.layers.{0,1}.*``, as officially (``transformer.decoder.*``)."""

    def __init__(self, num_layers: int, d_model: int, nhead: int, dim_feedforward: int):
        super().__init__()
        self.d_model = d_model
        self.layers = nn.ModuleList(
            ConditionalDecoderLayer(d_model, nhead, dim_feedforward, has_query_pos_proj=index == 0)
            for index in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.query_scale = MLP(d_model, d_model, d_model, 2)
        self.ref_point_head = MLP(d_model, d_model, 2, 2)

    def forward(self, tgt, memory, pos, query_pos, memory_padding_mask=None):
        """tgt [N, Q, C], memory [N, S, C], pos [N or 1, S, C], query_pos [1, Q, C], memory_padding_mask [N, S]
        bool or None -> (the final layer's normalized output [N, Q, C], reference points [1, Q, 2] (x, y in 0..1))."""
        reference = self.ref_point_head(query_pos).sigmoid()
        point_embedding = reference_point_sine_embedding(reference, self.d_model)
        output = tgt
        for index, layer in enumerate(self.layers):
            if index == 0:
                query_sine_embed = point_embedding.expand(tgt.shape[0], -1, -1)
            else:
                query_sine_embed = point_embedding * self.query_scale(output)
            output = layer(output, memory, pos, query_pos, query_sine_embed, index == 0, memory_padding_mask)
        return self.norm(output), reference
