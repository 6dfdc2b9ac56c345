"""Deformable DETR (plain, iterative box refinement, two-stage), inference only, final decoder layer only."""

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from detr_deploy import contract
from detr_deploy.models.backbone import Backbone, BackboneConfig, BackboneWithPosition, downsample_mask
from detr_deploy.models.deformable_transformer import DeformableTransformer, inverse_sigmoid
from detr_deploy.models.detr import as_padding_mask
from detr_deploy.models.family import FamilyConfig
from detr_deploy.models.mlp import MLP
from detr_deploy.models.position_encoding import PositionEmbeddingSine


@dataclass(frozen=True)
class DeformableDETRConfig(FamilyConfig):
    """Defaults are those of the released checkpoints (``official_keys.json``)."""

    num_classes: int = 91
    num_queries: int = 300
    hidden_dim: int = 256
    num_heads: int = 8
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    dim_feedforward: int = 2048
    num_feature_levels: int = 4
    enc_n_points: int = 4
    dec_n_points: int = 4
    with_box_refine: bool = False
    two_stage: bool = False
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    # mmdetection's neck (ChannelMapper with GroupNorm) has no bias in its convolutions.
    input_proj_bias: bool = True

    family = "deformable_detr"
    label = "Deformable DETR"
    # Sigmoid per class (focal loss), no "no object" logit.
    score_activation = "sigmoid"
    output_names = (contract.OUTPUT_LOGITS, contract.OUTPUT_BOXES)
    size_divisor = 1
    normalize_mean = contract.IMAGENET_MEAN
    normalize_std = contract.IMAGENET_STD
    num_top_detections = 100
    supports_padding_mask = True

    @property
    def query_order_is_ranked(self) -> bool:
        """Two-stage queries are encoder proposals sorted by score, so their order is not part of the contract."""
        return self.two_stage

    @property
    def backbone_stages(self) -> tuple[int, ...]:
        """As officially: strides 8, 16, 32 feed the levels when there are several, else only stride 32."""
        return (2, 3, 4) if self.num_feature_levels > 1 else (4,)

    def build(self) -> nn.Module:
        return DeformableDETR(self)

    @property
    def architecture_name(self) -> str:
        variant = "_two_stage" if self.two_stage else "_refine" if self.with_box_refine else ""
        return f"deformable_detr_r{self.backbone.depth}" + ("_dc5" if self.backbone.dilate_last_stage else "") + variant

    @property
    def backbone_label(self) -> str:
        return self.backbone.label

    @property
    def variants(self) -> tuple[str, ...]:
        flags = ((self.with_box_refine, "box refinement"), (self.two_stage, "two-stage"))
        return tuple(label for on, label in flags if on)

    @property
    def attention_summary(self) -> str:
        return f"{self.num_feature_levels} levels, {self.enc_n_points}/{self.dec_n_points} points"

    @property
    def deformable_strides(self) -> tuple[int, ...]:
        return level_strides(self.backbone, self.backbone_stages, self.num_feature_levels)

    @property
    def selection_strides(self) -> tuple[int, ...]:
        # Two-stage: the proposals are the encoder's tokens over every level.
        return self.deformable_strides if self.two_stage else ()

    def tiny(self) -> "DeformableDETRConfig":
        return self.replace(
            num_classes=5,
            num_queries=12,
            hidden_dim=32,
            num_heads=4,
            num_encoder_layers=2,
            num_decoder_layers=2,
            dim_feedforward=64,
            enc_n_points=2,
            dec_n_points=2,
            backbone=self.backbone.tiny(),
        )


class DeformableDETR(nn.Module):
    def __init__(self, config: DeformableDETRConfig):
        super().__init__()
        self.config = config
        hidden_dim = config.hidden_dim
        backbone = Backbone(config.backbone, return_stages=config.backbone_stages)
        position = PositionEmbeddingSine(hidden_dim // 2, offset=-0.5)
        self.backbone = BackboneWithPosition(backbone, position)
        self.transformer = DeformableTransformer(
            d_model=hidden_dim,
            nhead=config.num_heads,
            num_encoder_layers=config.num_encoder_layers,
            num_decoder_layers=config.num_decoder_layers,
            dim_feedforward=config.dim_feedforward,
            num_feature_levels=config.num_feature_levels,
            enc_n_points=config.enc_n_points,
            dec_n_points=config.dec_n_points,
            two_stage=config.two_stage,
            two_stage_num_proposals=config.num_queries,
        )
        if not config.two_stage:
            self.query_embed = nn.Embedding(config.num_queries, hidden_dim * 2)
        self.input_proj = level_projections(
            backbone.num_channels, hidden_dim, config.num_feature_levels, config.input_proj_bias
        )

        class_embed = nn.Linear(hidden_dim, config.num_classes)
        bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        num_pred = config.num_decoder_layers + 1 if config.two_stage else config.num_decoder_layers
        if config.with_box_refine:
            self.class_embed = nn.ModuleList(copy.deepcopy(class_embed) for _ in range(num_pred))
            self.bbox_embed = nn.ModuleList(copy.deepcopy(bbox_embed) for _ in range(num_pred))
            self.transformer.decoder.bbox_embed = self.bbox_embed
        else:
            # One shared head listed once per decoder layer: the official state-dict layout.
            self.class_embed = nn.ModuleList(class_embed for _ in range(num_pred))
            self.bbox_embed = nn.ModuleList(bbox_embed for _ in range(num_pred))
        if config.two_stage:
            self.transformer.decoder.class_embed = self.class_embed

    def forward(self, images: torch.Tensor, padding_mask: torch.Tensor = None) -> dict[str, torch.Tensor]:
        """images [N, 3, H, W] ImageNet-normalized, padding_mask [N, H, W] (nonzero = padded pixel) or None
        -> pred_logits [N, Q, K], pred_boxes [N, Q, 4] (cxcywh in 0..1 of each image's unpadded extent)."""
        padding_mask = as_padding_mask(padding_mask)
        features, positions, masks = self.backbone(images, padding_mask)
        srcs = project_levels(self.input_proj, self.backbone[1], features, positions, masks, padding_mask)
        query_embed = None if self.config.two_stage else self.query_embed.weight
        hs, reference = self.transformer(srcs, positions, query_embed, None if padding_mask is None else masks)
        last = self.config.num_decoder_layers - 1
        delta = self.bbox_embed[last](hs)
        if reference.shape[-1] == 4:
            boxes = delta + inverse_sigmoid(reference)
        else:
            boxes = torch.cat([delta[..., :2] + inverse_sigmoid(reference), delta[..., 2:]], -1)
        return {contract.OUTPUT_LOGITS: self.class_embed[last](hs), contract.OUTPUT_BOXES: boxes.sigmoid()}


def level_strides(backbone: BackboneConfig, return_stages, num_levels: int) -> tuple[int, ...]:
    """Strides of the levels ``level_projections`` makes: the returned backbone stages', then one stride-2 level
    after another."""
    strides = [backbone.stage_strides()[stage - 1] for stage in return_stages][:num_levels]
    while len(strides) < num_levels:
        strides.append(2 * strides[-1])
    return tuple(strides)


def level_projections(backbone_channels, hidden_dim: int, num_levels: int, bias: bool = True) -> nn.ModuleList:
    """1x1 convolution + GroupNorm per backbone level, then stride-2 3x3 ones for the levels beyond the backbone's
    (official Deformable DETR and DINO ``input_proj``; mmdetection's neck has no bias)."""
    projections = [
        nn.Sequential(nn.Conv2d(channels, hidden_dim, kernel_size=1, bias=bias), nn.GroupNorm(32, hidden_dim))
        for channels in backbone_channels
    ]
    in_channels = backbone_channels[-1]
    for _ in range(num_levels - len(backbone_channels)):
        projections.append(
            nn.Sequential(
                nn.Conv2d(in_channels, hidden_dim, 3, stride=2, padding=1, bias=bias), nn.GroupNorm(32, hidden_dim)
            )
        )
        in_channels = hidden_dim
    return nn.ModuleList(projections)


def project_levels(input_proj, position, features, positions, masks, padding_mask) -> list:
    """Backbone features [N, C_l, H_l, W_l] -> projected levels [N, hidden, H_l, W_l], the extra levels computed from
    the last feature; ``positions`` and ``masks`` (lists, one per backbone level) get the extra levels' entries."""
    srcs = [projection(feature) for projection, feature in zip(input_proj, features)]
    for level in range(len(features), len(input_proj)):
        srcs.append(input_proj[level](features[-1] if level == len(features) else srcs[-1]))
        masks.append(downsample_mask(padding_mask, srcs[-1]))
        positions.append(position(srcs[-1], masks[-1]))
    return srcs
