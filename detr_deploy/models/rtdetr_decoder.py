"""RT-DETR's decoder (lyuwenyu/RT-DETR ``RTDETRTransformer`` v1, ``RTDETRTransformerv2``), inference only.

Query selection: every encoder token gets class logits and a box relative to an anchor (a cell-centred box
``0.05 * 2**level`` wide, computed from the feature shapes at run time); the ``num_queries`` tokens with the highest
class logit become the queries and their boxes the first reference boxes. Each decoder layer refines the boxes
(iterative box refinement); only the last layer's logits and boxes are returned, as the official eval does.

Parameter names follow the official code for the ``version`` given; training-only parts (denoising embedding, the
heads of auxiliary layers that eval never runs) are not built.
"""

import copy

import torch
import torch.nn.functional as F
from torch import nn

from detr_deploy.models.attention import MultiheadAttention
from detr_deploy.models.deformable_transformer import inverse_sigmoid, level_cell_centers
from detr_deploy.models.hybrid_encoder import conv_norm
from detr_deploy.models.mlp import MLP
from detr_deploy.ops.ms_deform_attn import ms_deform_attn
from detr_deploy.ops.ms_deform_attn_discrete import ms_deform_attn_discrete

# What each sampling method runs on: our MSDeformAttn node (TensorRT plugin), or standard ONNX ops.
MSDA_PATHS = {"default": "plugin", "discrete": "onnx-ops:discrete"}
_MSDA_FUNCTIONS = {"default": ms_deform_attn, "discrete": ms_deform_attn_discrete}


class MSDeformableAttention(nn.Module):
    """RT-DETR's deformable cross-attention: offsets relative to each query's reference box.

    ``num_points`` lists the sampling points per level (v2 may vary them; v1 has one count for all). The op takes an
    [L, P] grid of points, so with unequal counts every level is padded to the largest: a padded point repeats a
    real point's location (finite) with attention weight exactly 0, after the softmax over the real points.
    v2 stores the per-point offset scale ``1 / P_l`` as a buffer in its checkpoints (``num_points_scale``); v1
    divides by its single P, the same value as a non-persistent buffer (bit-equal for the official P = 4).
    D-FINE's attention (``projections=False``) samples the memory as it is and returns the heads' concatenation: no
    value or output projection.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        num_points: tuple[int, ...],
        method: str = "default",
        version: int = 2,
        offset_scale: float = 0.5,
        projections: bool = True,
    ):
        super().__init__()
        if method not in _MSDA_FUNCTIONS:
            raise ValueError(f"sampling method {method!r} is not one of {sorted(_MSDA_FUNCTIONS)}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_levels = len(num_points)
        self.num_points_list = tuple(num_points)
        self.method = method
        self.offset_scale = offset_scale
        total_points = num_heads * sum(num_points)
        self.sampling_offsets = nn.Linear(embed_dim, total_points * 2)
        self.attention_weights = nn.Linear(embed_dim, total_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim) if projections else nn.Identity()
        self.output_proj = nn.Linear(embed_dim, embed_dim) if projections else nn.Identity()

        max_points = max(num_points)
        scale = [1 / count for count in num_points for _ in range(count)]
        self.register_buffer("num_points_scale", torch.tensor(scale, dtype=torch.float32), persistent=version == 2)
        if len(set(num_points)) == 1:
            self.point_index = self.point_valid = None
        else:
            # Position in the official level-major point list of each (level, padded point); padding repeats the
            # level's last point.
            starts = [sum(num_points[:level]) for level in range(self.num_levels)]
            index = [
                start + min(point, count - 1) for start, count in zip(starts, num_points) for point in range(max_points)
            ]
            valid = [float(point < count) for count in num_points for point in range(max_points)]
            self.register_buffer("point_index", torch.tensor(index, dtype=torch.long), persistent=False)
            self.register_buffer("point_valid", torch.tensor(valid, dtype=torch.float32), persistent=False)
        self.max_points = max_points

    @property
    def msda_path(self) -> str:
        """Where this attention runs: "plugin" (our MSDeformAttn node) or "onnx-ops:discrete" (standard ONNX ops)."""
        return MSDA_PATHS[self.method]

    def forward(
        self,
        query: torch.Tensor,
        reference_boxes: torch.Tensor,
        value: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
    ) -> torch.Tensor:
        """query [N, Lq, C]; reference_boxes [N, Lq, 4] (cx, cy, w, h) in 0..1; value [N, S, C]; spatial_shapes
        [L, 2] and level_start_index [L] int64 -> [N, Lq, C]."""
        batch, num_queries, _ = query.shape
        total = sum(self.num_points_list)
        value = self.value_proj(value).view(batch, value.shape[1], self.num_heads, self.embed_dim // self.num_heads)
        offsets = self.sampling_offsets(query).view(batch, num_queries, self.num_heads, total, 2)
        weights = self.attention_weights(query).view(batch, num_queries, self.num_heads, total).softmax(-1)
        scale = self.num_points_scale
        if self.point_index is not None:
            offsets = offsets.index_select(3, self.point_index)
            weights = weights.index_select(3, self.point_index) * self.point_valid
            scale = scale.index_select(0, self.point_index)
        offsets = offsets.view(batch, num_queries, self.num_heads, self.num_levels, self.max_points, 2)
        weights = weights.view(batch, num_queries, self.num_heads, self.num_levels, self.max_points)
        scale = scale.view(self.num_levels, self.max_points, 1)
        boxes = reference_boxes[:, :, None, None, None]
        # Offsets are in units of the reference box size, spread over the level's points.
        locations = boxes[..., :2] + offsets * scale * boxes[..., 2:] * self.offset_scale
        output = _MSDA_FUNCTIONS[self.method](value, spatial_shapes, level_start_index, locations, weights)
        return self.output_proj(output.reshape(batch, num_queries, self.embed_dim))


class ClampToFloat16Range(nn.Module):
    """Clamp into float16's finite range: v1 does this before its last norm (official #464: NaNs in half)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=-65504, max=65504)


class TransformerDecoderLayer(nn.Module):
    """Self-attention, deformable cross-attention, ReLU FFN; post-norm."""

    def __init__(
        self,
        d_model: int,
        n_head: int,
        dim_feedforward: int,
        num_points: tuple[int, ...],
        method: str,
        version: int,
    ):
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, n_head)
        self.norm1 = nn.LayerNorm(d_model)
        self.cross_attn = MSDeformableAttention(d_model, n_head, num_points, method, version)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.clamp_fp16 = ClampToFloat16Range() if version == 1 else nn.Identity()
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, target, reference_boxes, memory, spatial_shapes, level_start_index, query_pos_embed):
        """target and query_pos_embed [N, Q, C], reference_boxes [N, Q, 4], memory [N, S, C] -> [N, Q, C]."""
        query_key = target + query_pos_embed
        target = self.norm1(target + self.self_attn(query_key, query_key, target))
        attended = self.cross_attn(target + query_pos_embed, reference_boxes, memory, spatial_shapes, level_start_index)
        target = self.norm2(target + attended)
        target = target + self.linear2(F.relu(self.linear1(target)))
        return self.norm3(self.clamp_fp16(target))


class TransformerDecoder(nn.Module):
    def __init__(self, layer: TransformerDecoderLayer, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))

    def forward(
        self,
        target,
        reference_unact,
        memory,
        spatial_shapes,
        level_start_index,
        bbox_head: nn.ModuleList,
        score_head: nn.ModuleList,
        query_pos_head: nn.Module,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """target [N, Q, C], reference_unact [N, Q, 4] (logit space) -> (logits [N, Q, K], boxes [N, Q, 4]) of the
        last layer. Each layer's refined boxes are the next layer's reference boxes."""
        reference = reference_unact.sigmoid()
        for index, layer in enumerate(self.layers):
            output = layer(target, reference, memory, spatial_shapes, level_start_index, query_pos_head(reference))
            reference = (bbox_head[index](output) + inverse_sigmoid(reference)).sigmoid()
            target = output
        return score_head[len(self.layers) - 1](target), reference


def flatten_levels(projected: list[torch.Tensor]):
    """Decoder-width levels [N, C, H_l, W_l] -> (memory [N, S, C], level sizes [(H_l, W_l)], spatial_shapes [L, 2]
    and level_start_index [L] int64). Level sizes come from the (symbolic) shapes, never read back from a tensor:
    see deformable_transformer.py."""
    level_shapes = [tuple(feature.shape[-2:]) for feature in projected]
    memory = torch.cat([feature.flatten(2).permute(0, 2, 1) for feature in projected], 1)
    spatial_shapes = torch.tensor(level_shapes, dtype=torch.long, device=memory.device)
    starts = [0]
    for height, width in level_shapes[:-1]:
        starts.append(starts[-1] + height * width)
    level_start_index = torch.tensor(starts, dtype=torch.long, device=memory.device)
    return memory, level_shapes, spatial_shapes, level_start_index


def generate_anchors(level_shapes, device, grid_size: float = 0.05, eps: float = 0.01):
    """The official ``_generate_anchors`` from the level sizes: (anchors [1, S, 4] in logit space, +inf where
    invalid; valid mask [1, S, 1] bool). A level-l anchor is its cell's centre with width and height
    ``grid_size * 2**l``; it is valid when all four numbers lie strictly inside (eps, 1 - eps)."""
    anchors = []
    for level, (height, width) in enumerate(level_shapes):
        xs, ys = level_cell_centers(height, width, device)
        size = torch.full_like(xs, grid_size * 2.0**level)
        anchors.append(torch.stack([xs, ys, size, size], -1))
    anchors = torch.cat(anchors, 1)
    valid = ((anchors > eps) & (anchors < 1 - eps)).all(-1, keepdim=True)
    anchors = torch.log(anchors / (1 - anchors))
    return torch.where(valid, anchors, torch.inf), valid


class RTDETRTransformer(nn.Module):
    """Input projections, query selection, decoder and heads; the official ``decoder`` (v1 ``RTDETRTransformer``,
    v2 ``RTDETRTransformerv2``)."""

    def __init__(
        self,
        num_classes: int,
        hidden_dim: int,
        num_queries: int,
        feat_channels: tuple[int, ...],
        num_points: tuple[int, ...],
        nhead: int,
        num_layers: int,
        dim_feedforward: int,
        version: int,
        cross_attn_method: str = "default",
    ):
        super().__init__()
        if len(feat_channels) != len(num_points):
            raise ValueError(f"{len(feat_channels)} feature levels but {len(num_points)} point counts")
        self.hidden_dim = hidden_dim
        self.num_queries = num_queries
        # The official code names these the v2 way in both versions.
        self.input_proj = nn.ModuleList(conv_norm(channels, hidden_dim, version=2) for channels in feat_channels)
        layer = TransformerDecoderLayer(hidden_dim, nhead, dim_feedforward, num_points, cross_attn_method, version)
        self.decoder = TransformerDecoder(layer, num_layers)
        self.query_pos_head = MLP(4, 2 * hidden_dim, hidden_dim, 2)
        linear_name, norm_name = ("0", "1") if version == 1 else ("proj", "norm")
        self.enc_output = nn.Sequential()
        self.enc_output.add_module(linear_name, nn.Linear(hidden_dim, hidden_dim))
        self.enc_output.add_module(norm_name, nn.LayerNorm(hidden_dim))
        self.enc_score_head = nn.Linear(hidden_dim, num_classes)
        self.enc_bbox_head = MLP(hidden_dim, hidden_dim, 4, 3)
        self.dec_score_head = nn.ModuleList(nn.Linear(hidden_dim, num_classes) for _ in range(num_layers))
        self.dec_bbox_head = nn.ModuleList(MLP(hidden_dim, hidden_dim, 4, 3) for _ in range(num_layers))

    @property
    def msda_paths(self) -> dict[str, str]:
        """Module name -> "plugin" or "onnx-ops:discrete", for each deformable attention module."""
        return {name: module.msda_path for name, module in self.named_modules() if hasattr(module, "msda_path")}

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder outputs [N, C_l, H_l, W_l] -> (logits [N, Q, K], boxes [N, Q, 4] cxcywh in 0..1)."""
        projected = [projection(feature) for projection, feature in zip(self.input_proj, features)]
        memory, level_shapes, spatial_shapes, level_start_index = flatten_levels(projected)

        anchors, valid = generate_anchors(level_shapes, memory.device)
        # Invalid tokens are zeroed for query selection only; the decoder attends to the unmasked memory.
        output_memory = self.enc_output(valid.to(memory.dtype) * memory)
        enc_logits = self.enc_score_head(output_memory)
        enc_coords_unact = self.enc_bbox_head(output_memory) + anchors
        # Queries are the tokens with the highest class logit (any class); near-equal scores may rank in another
        # order on another backend (parity aligns queries for ranked models).
        topk_index = torch.topk(enc_logits.max(-1).values, self.num_queries, dim=1)[1]
        reference_unact = torch.gather(enc_coords_unact, 1, topk_index[..., None].expand(-1, -1, 4))
        target = torch.gather(output_memory, 1, topk_index[..., None].expand(-1, -1, self.hidden_dim))
        return self.decoder(
            target,
            reference_unact,
            memory,
            spatial_shapes,
            level_start_index,
            self.dec_bbox_head,
            self.dec_score_head,
            self.query_pos_head,
        )
