"""D-FINE's decoder (Peterande/D-FINE ``DFINETransformer``), inference only; DEIM trains the same module.

Query selection is RT-DETR's (the ``num_queries`` encoder tokens with the highest class logit, their anchors the
first reference boxes). The decoder layers differ in two places: the deformable cross-attention samples the memory
without value or output projections, and a gate (``gateway``) mixes its output into the residual where RT-DETR adds
and normalizes. Boxes come from fine-grained distribution refinement (FDR):

- after layer 0, ``pre_bbox_head`` refines the selected anchors once: the *initial* boxes;
- each layer's ``dec_bbox_head`` predicts, for each of the four edges, logits over ``reg_max + 1`` bins; the bins'
  offsets are the non-uniform weighting function W(n) (``weighting_function``), the edge distance is the
  softmax-weighted sum of W (``Integral``), and the layer's box is the initial box widened or narrowed by those
  distances (``distance_to_box``). Layer i adds its logits to layer i-1's (residual distributions), and reads
  ``output_i + output_{i-1}``;
- the class logits of the evaluated layer get a quality term from the sharpness of its edge distributions: the top
  four probabilities of each edge and their mean, through a two-layer MLP (``LQE``), added to every class.

Only the last layer's logits and boxes are returned, as the official eval does. Parameter names follow the official
code; the denoising embedding, the 640x640 anchor buffers and the decoder's second reference to ``up`` and
``reg_scale`` are not held (the checkpoint reader drops them).
"""

import copy

import torch
import torch.nn.functional as F
from torch import nn

from detr_deploy.models.attention import MultiheadAttention
from detr_deploy.models.deformable_transformer import inverse_sigmoid
from detr_deploy.models.hybrid_encoder import conv_norm
from detr_deploy.models.mlp import MLP
from detr_deploy.models.rtdetr_decoder import (
    ClampToFloat16Range,
    MSDeformableAttention,
    flatten_levels,
    generate_anchors,
)


def weighting_function(reg_max: int, up: torch.Tensor, reg_scale: torch.Tensor) -> torch.Tensor:
    """W(n) for n = 0..reg_max: [reg_max + 1] edge offsets (in units of the box size / reg_scale), the official
    ``weighting_function``. From ``-2 * up * reg_scale`` to ``+2 * up * reg_scale``, 0 in the middle, the inner bins
    spaced geometrically: ``+-(step**i - 1)`` with ``step = (up * reg_scale + 1) ** (2 / (reg_max - 2))``.
    ``up`` and ``reg_scale`` are the checkpoint's one-element tensors."""
    bound = up.abs() * reg_scale.abs()
    step = (bound + 1) ** (2 / (reg_max - 2))
    half = reg_max // 2
    exponents = torch.arange(1, half, dtype=up.dtype, device=up.device)
    right = step**exponents - 1
    left = -(step ** exponents.flip(0)) + 1
    zero = torch.zeros_like(bound)
    return torch.cat([-2 * bound, left, zero, right, 2 * bound])


def integral(corner_logits: torch.Tensor, project: torch.Tensor) -> torch.Tensor:
    """The official ``Integral``: corner_logits [N, Q, 4 * (reg_max + 1)], project [reg_max + 1] (W) -> the expected
    edge distances [N, Q, 4] (softmax over each edge's bins, weighted by W)."""
    batch, queries, _ = corner_logits.shape
    probabilities = corner_logits.reshape(batch, queries, 4, project.shape[0]).softmax(-1)
    return probabilities @ project


def distance_to_box(initial: torch.Tensor, distance: torch.Tensor, reg_scale: torch.Tensor) -> torch.Tensor:
    """The official ``distance2bbox``: initial boxes [N, Q, 4] (cx, cy, w, h) and edge distances [N, Q, 4] (left,
    top, right, bottom) -> boxes [N, Q, 4] (cx, cy, w, h). Each edge sits at ``(0.5 * reg_scale + d) * size /
    reg_scale`` from the centre: d = 0 keeps the initial box."""
    reg_scale = reg_scale.abs()
    half_extent = 0.5 * reg_scale + distance
    cx, cy, width, height = initial.unbind(-1)
    x1 = cx - half_extent[..., 0] * width / reg_scale
    y1 = cy - half_extent[..., 1] * height / reg_scale
    x2 = cx + half_extent[..., 2] * width / reg_scale
    y2 = cy + half_extent[..., 3] * height / reg_scale
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], -1)


class Gate(nn.Module):
    """The official ``Gate``: sigmoid gates from both inputs weigh the residual and the attention output, then a
    layer norm."""

    def __init__(self, d_model: int):
        super().__init__()
        self.gate = nn.Linear(2 * d_model, 2 * d_model)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, residual: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """[N, Q, C] twice -> [N, Q, C]."""
        gate_residual, gate_attended = torch.sigmoid(self.gate(torch.cat([residual, attended], -1))).chunk(2, -1)
        return self.norm(gate_residual * residual + gate_attended * attended)


class LQE(nn.Module):
    """Location quality estimator: class logits [N, Q, K] + MLP(top-k probabilities of each edge's distribution and
    their mean) [N, Q, 1]."""

    def __init__(self, top_k: int, hidden_dim: int, num_layers: int, reg_max: int):
        super().__init__()
        self.top_k = top_k
        self.reg_max = reg_max
        self.reg_conf = MLP(4 * (top_k + 1), hidden_dim, 1, num_layers)

    def forward(self, logits: torch.Tensor, corner_logits: torch.Tensor) -> torch.Tensor:
        batch, queries, _ = corner_logits.shape
        probabilities = corner_logits.reshape(batch, queries, 4, self.reg_max + 1).softmax(-1)
        top = probabilities.topk(self.top_k, dim=-1).values
        statistics = torch.cat([top, top.mean(-1, keepdim=True)], -1).reshape(batch, queries, -1)
        return logits + self.reg_conf(statistics)


class TransformerDecoderLayer(nn.Module):
    """Self-attention, deformable cross-attention gated into the residual, ReLU FFN; post-norm."""

    def __init__(self, d_model: int, n_head: int, dim_feedforward: int, num_points: tuple[int, ...], method: str):
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, n_head)
        self.norm1 = nn.LayerNorm(d_model)
        self.cross_attn = MSDeformableAttention(d_model, n_head, num_points, method, version=2, projections=False)
        self.gateway = Gate(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.clamp_fp16 = ClampToFloat16Range()
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, target, reference_boxes, memory, spatial_shapes, level_start_index, query_pos_embed):
        """target and query_pos_embed [N, Q, C], reference_boxes [N, Q, 4], memory [N, S, C] -> [N, Q, C]."""
        query_key = target + query_pos_embed
        target = self.norm1(target + self.self_attn(query_key, query_key, target))
        attended = self.cross_attn(target + query_pos_embed, reference_boxes, memory, spatial_shapes, level_start_index)
        target = self.gateway(target, attended)
        target = target + self.linear2(F.relu(self.linear1(target)))
        return self.norm3(self.clamp_fp16(target))


class TransformerDecoder(nn.Module):
    """The layers and their quality estimators (every layer has one; eval reads the last)."""

    def __init__(self, layer: TransformerDecoderLayer, num_layers: int, reg_max: int, lqe_hidden_dim: int = 64):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.lqe_layers = nn.ModuleList(LQE(4, lqe_hidden_dim, 2, reg_max) for _ in range(num_layers))


class DFINETransformer(nn.Module):
    """Input projections, query selection, FDR decoder and heads: the official ``decoder``."""

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
        cross_attn_method: str = "default",
        reg_max: int = 32,
        reg_scale: float = 4.0,
        up: float = 0.5,
    ):
        super().__init__()
        if len(feat_channels) != len(num_points):
            raise ValueError(f"{len(feat_channels)} feature levels but {len(num_points)} point counts")
        self.hidden_dim = hidden_dim
        self.num_queries = num_queries
        self.reg_max = reg_max
        # A level as wide as the decoder enters as it is (the official code builds nn.Identity, holding no tensor).
        self.input_proj = nn.ModuleList(
            nn.Identity() if channels == hidden_dim else conv_norm(channels, hidden_dim, version=2)
            for channels in feat_channels
        )
        # One-element tensors in the checkpoints; they shape W(n) and the box decoding.
        self.up = nn.Parameter(torch.tensor([up]), requires_grad=False)
        self.reg_scale = nn.Parameter(torch.tensor([reg_scale]), requires_grad=False)
        layer = TransformerDecoderLayer(hidden_dim, nhead, dim_feedforward, num_points, cross_attn_method)
        self.decoder = TransformerDecoder(layer, num_layers, reg_max)
        self.query_pos_head = MLP(4, 2 * hidden_dim, hidden_dim, 2)
        self.enc_output = nn.Sequential()
        self.enc_output.add_module("proj", nn.Linear(hidden_dim, hidden_dim))
        self.enc_output.add_module("norm", nn.LayerNorm(hidden_dim))
        self.enc_score_head = nn.Linear(hidden_dim, num_classes)
        self.enc_bbox_head = MLP(hidden_dim, hidden_dim, 4, 3)
        self.dec_score_head = nn.ModuleList(nn.Linear(hidden_dim, num_classes) for _ in range(num_layers))
        self.pre_bbox_head = MLP(hidden_dim, hidden_dim, 4, 3)
        self.dec_bbox_head = nn.ModuleList(MLP(hidden_dim, hidden_dim, 4 * (reg_max + 1), 3) for _ in range(num_layers))

    @property
    def msda_paths(self) -> dict[str, str]:
        """Module name -> "plugin" or "onnx-ops:discrete", for each deformable attention module."""
        return {name: module.msda_path for name, module in self.named_modules() if hasattr(module, "msda_path")}

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder outputs [N, C_l, H_l, W_l] -> (logits [N, Q, K], boxes [N, Q, 4] cxcywh in 0..1)."""
        projected = [projection(feature) for projection, feature in zip(self.input_proj, features)]
        memory, level_shapes, spatial_shapes, level_start_index = flatten_levels(projected)

        anchors, valid = generate_anchors(level_shapes, memory.device)
        output_memory = self.enc_output(valid.to(memory.dtype) * memory)
        enc_logits = self.enc_score_head(output_memory)
        # Near-equal scores may rank in another order on another backend (parity aligns queries for ranked models).
        topk_index = torch.topk(enc_logits.max(-1).values, self.num_queries, dim=1)[1]
        target = torch.gather(output_memory, 1, topk_index[..., None].expand(-1, -1, self.hidden_dim))
        topk_anchors = torch.gather(anchors.expand(memory.shape[0], -1, -1), 1, topk_index[..., None].expand(-1, -1, 4))
        # The box head runs on the selected tokens only (per token, so the same as selecting after it).
        reference = (self.enc_bbox_head(target) + topk_anchors).sigmoid()
        return self._decode(target, reference, memory, spatial_shapes, level_start_index)

    def _decode(self, target, reference, memory, spatial_shapes, level_start_index):
        """target [N, Q, C], reference [N, Q, 4] in 0..1 -> (logits [N, Q, K], boxes [N, Q, 4]) of the last layer."""
        project = weighting_function(self.reg_max, self.up, self.reg_scale)
        layers = self.decoder.layers
        previous_output = previous_corners = initial = None
        for index, layer in enumerate(layers):
            query_pos_embed = self.query_pos_head(reference).clamp(min=-10, max=10)
            output = layer(target, reference, memory, spatial_shapes, level_start_index, query_pos_embed)
            if index == 0:
                initial = (self.pre_bbox_head(output) + inverse_sigmoid(reference)).sigmoid()
                corners = self.dec_bbox_head[0](output)
            else:
                corners = self.dec_bbox_head[index](output + previous_output) + previous_corners
            reference = distance_to_box(initial, integral(corners, project), self.reg_scale)
            previous_output, previous_corners, target = output, corners, output
        last = len(layers) - 1
        logits = self.decoder.lqe_layers[last](self.dec_score_head[last](target), previous_corners)
        return logits, reference
