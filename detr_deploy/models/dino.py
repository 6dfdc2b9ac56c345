"""DINO (IDEA-Research/DINO, mmdetection's DINO), inference path only: no denoising queries.

ResNet -> deformable encoder over 4 or 5 levels -> mixed query selection (positions from the top-scoring encoder
proposals, learned content queries) -> deformable decoder with iterative box refinement.

Parameter names are the official ones (``models/dino/dino.py`` and ``deformable_transformer.py``) minus what only
training uses (``label_enc``, the denoising label embedding). As officially, the decoder lists the per-layer heads
too (``transformer.decoder.bbox_embed``, ``transformer.decoder.class_embed``). The heads are separate modules per
layer: the official release shares one head across layers (its file lists the same tensors once per layer),
mmdetection's are per layer; separate modules load both.
"""

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from detr_deploy import contract
from detr_deploy.models.backbone import Backbone, BackboneConfig, BackboneWithPosition
from detr_deploy.models.deformable_detr import level_projections, level_strides, project_levels
from detr_deploy.models.deformable_transformer import (
    DeformableTransformerDecoderLayer,
    DeformableTransformerEncoder,
    encoder_proposals,
    flatten_levels,
    inverse_sigmoid,
)
from detr_deploy.models.detr import as_padding_mask
from detr_deploy.models.family import FamilyConfig
from detr_deploy.models.mlp import MLP
from detr_deploy.models.position_encoding import PositionEmbeddingSine

# Backbone stages feeding the levels (before the one extra stride-2 level): 4-scale C3-C5, 5-scale C2-C5.
BACKBONE_STAGES = {4: (2, 3, 4), 5: (1, 2, 3, 4)}
# Both sources refine references between decoder layers with this inverse-sigmoid eps.
REFINE_EPS = 1e-3


@dataclass(frozen=True)
class DINOConfig(FamilyConfig):
    """Defaults are the official DINO-4scale R50 (COCO, 91 class slots)."""

    num_classes: int = 91
    num_queries: int = 900
    hidden_dim: int = 256
    num_heads: int = 8
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    dim_feedforward: int = 2048
    num_feature_levels: int = 4
    enc_n_points: int = 4
    dec_n_points: int = 4
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    # mmdetection's neck (ChannelMapper with GroupNorm) has no bias in its convolutions.
    input_proj_bias: bool = True
    # Sine position encoding temperature (DINO: 20 for both axes).
    position_temperature: int = 20
    # Added to the cumulative positions before normalizing: 0 in DINO (officially and in mmdetection's DINO
    # configs), -0.5 in mmdetection's "improved" DINO config (Deformable DETR's setting).
    position_offset: float = 0.0
    # eps of the inverse sigmoid of the last layer's reference for the output boxes: 1e-3 officially, 1e-5 in
    # mmdetection's head. It matters for references that saturate at 0 or 1 (e.g. selected invalid proposals).
    box_inverse_sigmoid_eps: float = 1e-3

    family = "dino"
    label = "DINO"
    score_activation = "sigmoid"
    output_names = (contract.OUTPUT_LOGITS, contract.OUTPUT_BOXES)
    query_order_is_ranked = True
    size_divisor = 1
    normalize_mean = contract.IMAGENET_MEAN
    normalize_std = contract.IMAGENET_STD
    num_top_detections = 300
    supports_padding_mask = True

    def build(self) -> nn.Module:
        return DINO(self)

    @property
    def architecture_name(self) -> str:
        return f"dino_{self.num_feature_levels}scale_r{self.backbone.depth}"

    @property
    def backbone_label(self) -> str:
        return self.backbone.label

    @property
    def attention_summary(self) -> str:
        return f"{self.num_feature_levels} levels, {self.enc_n_points}/{self.dec_n_points} points"

    @property
    def deformable_strides(self) -> tuple[int, ...]:
        stages = BACKBONE_STAGES.get(self.num_feature_levels, BACKBONE_STAGES[4])
        return level_strides(self.backbone, stages, self.num_feature_levels)

    @property
    def selection_strides(self) -> tuple[int, ...]:
        # Mixed query selection ranks the encoder's tokens over every level.
        return self.deformable_strides

    def tiny(self) -> "DINOConfig":
        return self.replace(
            num_classes=5,
            num_queries=12,
            hidden_dim=32,
            num_heads=4,
            num_encoder_layers=1,
            num_decoder_layers=2,
            dim_feedforward=64,
            enc_n_points=2,
            dec_n_points=2,
            backbone=self.backbone.tiny(),
        )


def box_sine_embedding(boxes: torch.Tensor, num_pos_feats: int, temperature: float = 10000.0) -> torch.Tensor:
    """boxes [N, Q, 4] (cx, cy, w, h) in 0..1 -> [N, Q, 4 * num_pos_feats], ordered (y, x, w, h) as DINO's
    ``gen_sineembed_for_position``. Both sources fix 128 features per coordinate (so only width 256 runs there);
    ``hidden_dim // 2`` is the same at 256 and keeps other widths consistent with ``ref_point_head``."""
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=boxes.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
    pos = (boxes * (2 * math.pi))[..., None] / dim_t  # [N, Q, 4, F]
    pos = torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)
    return torch.cat([pos[:, :, 1], pos[:, :, 0], pos[:, :, 2], pos[:, :, 3]], -1)


class DINOTransformerDecoder(nn.Module):
    """Deformable decoder layers with query positions from each layer's reference boxes, a final LayerNorm, and box
    refinement between layers from the un-normed output (as officially)."""

    def __init__(self, num_layers: int, d_model: int, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList(
            DeformableTransformerDecoderLayer(d_model=d_model, **layer_kwargs) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.ref_point_head = MLP(2 * d_model, d_model, d_model, 2)
        self.num_pos_feats = d_model // 2
        # Set by DINO, as in the official code: the per-layer heads.
        self.bbox_embed = None
        self.class_embed = None

    def forward(self, tgt, reference, memory, spatial_shapes, level_start_index, valid_ratios, padding_mask):
        """tgt [N, Q, C], reference [N, Q, 4] boxes in 0..1, memory [N, S, C], valid_ratios [N, L, 2] and
        padding_mask [N, S] (or both None) -> (normed output of the last layer [N, Q, C], the reference that layer
        used [N, Q, 4])."""
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            if valid_ratios is None:
                reference_input = reference[:, :, None]
            else:
                reference_input = reference[:, :, None] * torch.cat([valid_ratios, valid_ratios], -1)[:, None]
            # Officially the position comes from the reference as seen by the first level.
            query_pos = self.ref_point_head(box_sine_embedding(reference_input[:, :, 0], self.num_pos_feats))
            tgt = layer(tgt, query_pos, reference_input, memory, spatial_shapes, level_start_index, padding_mask)
            if index < last:
                reference = (self.bbox_embed[index](tgt) + inverse_sigmoid(reference, REFINE_EPS)).sigmoid()
        return self.norm(tgt), reference


class DINOTransformer(nn.Module):
    def __init__(self, config: DINOConfig):
        super().__init__()
        d_model = config.hidden_dim
        self.num_queries = config.num_queries
        common = dict(
            d_model=d_model, d_ffn=config.dim_feedforward, n_levels=config.num_feature_levels, n_heads=config.num_heads
        )
        self.encoder = DeformableTransformerEncoder(config.num_encoder_layers, n_points=config.enc_n_points, **common)
        self.decoder = DINOTransformerDecoder(config.num_decoder_layers, n_points=config.dec_n_points, **common)
        self.level_embed = nn.Parameter(torch.empty(config.num_feature_levels, d_model))
        nn.init.normal_(self.level_embed)
        # Content queries (``embed_init_tgt``); their positions come from the encoder's top proposals.
        self.tgt_embed = nn.Embedding(config.num_queries, d_model)
        self.enc_output = nn.Linear(d_model, d_model)
        self.enc_output_norm = nn.LayerNorm(d_model)
        self.enc_out_class_embed = nn.Linear(d_model, config.num_classes)
        self.enc_out_bbox_embed = MLP(d_model, d_model, 4, 3)

    def forward(self, srcs: list[torch.Tensor], pos_embeds: list[torch.Tensor], masks: list[torch.Tensor] = None):
        """srcs [N, C, H_l, W_l] and pos_embeds [N or 1, C, H_l, W_l] per level; masks [N, H_l, W_l] bool per level
        (True = padded) or None -> (hs [N, Q, C] normed, reference boxes the last decoder layer used [N, Q, 4])."""
        batch = srcs[0].shape[0]
        levels = flatten_levels(srcs, pos_embeds, self.level_embed, masks)
        memory = self.encoder(
            levels.src,
            levels.pos,
            levels.shapes,
            levels.spatial_shapes,
            levels.start_index,
            levels.valid_ratios,
            levels.padding_mask,
        )

        # Mixed query selection: positions from the proposals scoring highest on any class.
        output_memory, proposals = encoder_proposals(memory, levels.shapes, masks, levels.padding_mask)
        output_memory = self.enc_output_norm(self.enc_output(output_memory))
        class_logits = self.enc_out_class_embed(output_memory)
        coords_unact = self.enc_out_bbox_embed(output_memory) + proposals
        # Near-equal scores may come out in another order on another backend (parity aligns ranked queries).
        topk_index = torch.topk(class_logits.amax(-1), self.num_queries, dim=1)[1]
        reference = torch.gather(coords_unact, 1, topk_index.unsqueeze(-1).expand(-1, -1, 4)).sigmoid()
        tgt = self.tgt_embed.weight.unsqueeze(0).expand(batch, -1, -1)
        return self.decoder(
            tgt,
            reference,
            memory,
            levels.spatial_shapes,
            levels.start_index,
            levels.valid_ratios,
            levels.padding_mask,
        )


class DINO(nn.Module):
    def __init__(self, config: DINOConfig):
        super().__init__()
        if config.num_feature_levels not in BACKBONE_STAGES:
            raise ValueError(f"DINO has 4 or 5 feature levels, not {config.num_feature_levels}")
        self.config = config
        hidden_dim = config.hidden_dim
        backbone = Backbone(config.backbone, return_stages=BACKBONE_STAGES[config.num_feature_levels])
        position = PositionEmbeddingSine(
            hidden_dim // 2, temperature=config.position_temperature, offset=config.position_offset
        )
        self.backbone = BackboneWithPosition(backbone, position)
        self.transformer = DINOTransformer(config)
        self.input_proj = level_projections(
            backbone.num_channels, hidden_dim, config.num_feature_levels, config.input_proj_bias
        )

        class_embed = nn.Linear(hidden_dim, config.num_classes)
        bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.class_embed = nn.ModuleList(copy.deepcopy(class_embed) for _ in range(config.num_decoder_layers))
        self.bbox_embed = nn.ModuleList(copy.deepcopy(bbox_embed) for _ in range(config.num_decoder_layers))
        self.transformer.decoder.bbox_embed = self.bbox_embed
        self.transformer.decoder.class_embed = self.class_embed

    def forward(self, images: torch.Tensor, padding_mask: torch.Tensor = None) -> dict[str, torch.Tensor]:
        """images [N, 3, H, W] ImageNet-normalized, padding_mask [N, H, W] (nonzero = padded pixel) or None
        -> pred_logits [N, Q, K], pred_boxes [N, Q, 4] (cxcywh in 0..1 of each image's unpadded extent)."""
        padding_mask = as_padding_mask(padding_mask)
        features, positions, masks = self.backbone(images, padding_mask)
        srcs = project_levels(self.input_proj, self.backbone[1], features, positions, masks, padding_mask)
        hs, reference = self.transformer(srcs, positions, None if padding_mask is None else masks)
        last = self.config.num_decoder_layers - 1
        boxes = self.bbox_embed[last](hs) + inverse_sigmoid(reference, self.config.box_inverse_sigmoid_eps)
        return {contract.OUTPUT_LOGITS: self.class_embed[last](hs), contract.OUTPUT_BOXES: boxes.sigmoid()}
