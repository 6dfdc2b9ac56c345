"""DETR (facebookresearch/detr), inference only, final decoder layer only."""

from dataclasses import dataclass, field

import torch
from torch import nn

from detr_deploy import contract
from detr_deploy.models.backbone import Backbone, BackboneConfig, BackboneWithPosition
from detr_deploy.models.family import FamilyConfig
from detr_deploy.models.mlp import MLP
from detr_deploy.models.position_encoding import PositionEmbeddingSine
from detr_deploy.models.transformer import Transformer


@dataclass(frozen=True)
class DETRConfig(FamilyConfig):
    """Official defaults; ``panoptic`` adds the DETRsegm mask head (the checkpoint nests DETR under ``detr.``)."""

    num_classes: int = 91
    num_queries: int = 100
    hidden_dim: int = 256
    num_heads: int = 8
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    dim_feedforward: int = 2048
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    panoptic: bool = False

    family = "detr"
    label = "DETR"
    # The encoder attends over every stride-32 token.
    memory_full_attention = True
    # Softmax over num_classes + 1 logits; the last one is "no object".
    score_activation = "softmax"

    # Each query is a learned embedding: its position in the output is fixed.
    query_order_is_ranked = False
    size_divisor = 1
    normalize_mean = contract.IMAGENET_MEAN
    normalize_std = contract.IMAGENET_STD
    num_top_detections = None  # every query, its best class
    supports_padding_mask = True

    @property
    def output_names(self) -> tuple[str, ...]:
        outputs = (contract.OUTPUT_LOGITS, contract.OUTPUT_BOXES)
        return outputs + (contract.OUTPUT_MASKS,) if self.panoptic else outputs

    def build(self) -> nn.Module:
        """DETR, wrapped in the panoptic head when ``panoptic`` (the official DETRsegm layout, ``detr.*``)."""
        from detr_deploy.models.segmentation import DETRPanoptic

        return DETRPanoptic(DETR(self)) if self.panoptic else DETR(self)

    @property
    def architecture_name(self) -> str:
        return (
            f"detr_r{self.backbone.depth}"
            + ("_dc5" if self.backbone.dilate_last_stage else "")
            + ("_panoptic" if self.panoptic else "")
        )

    @property
    def backbone_label(self) -> str:
        return self.backbone.label

    @property
    def variants(self) -> tuple[str, ...]:
        return ("panoptic",) if self.panoptic else ()

    def tiny(self) -> "DETRConfig":
        # The panoptic mask head's group norms need hidden_dim >= 128 (channels hidden/16 in 8 groups).
        return self.replace(
            num_classes=7,
            num_queries=10,
            hidden_dim=128 if self.panoptic else 32,
            num_heads=8 if self.panoptic else 4,
            num_encoder_layers=1,
            num_decoder_layers=2,
            dim_feedforward=64,
            backbone=self.backbone.tiny(),
        )


class DETR(nn.Module):
    def __init__(self, config: DETRConfig):
        super().__init__()
        self.config = config
        # The panoptic head reads layer1..layer3 too.
        return_stages = (1, 2, 3, 4) if config.panoptic else (4,)
        backbone = Backbone(config.backbone, return_stages)
        self.backbone = BackboneWithPosition(backbone, PositionEmbeddingSine(config.hidden_dim // 2))
        self.input_proj = nn.Conv2d(backbone.num_channels[-1], config.hidden_dim, kernel_size=1)
        self.query_embed = nn.Embedding(config.num_queries, config.hidden_dim)
        self.transformer = Transformer(
            config.hidden_dim,
            config.num_heads,
            config.num_encoder_layers,
            config.num_decoder_layers,
            config.dim_feedforward,
        )
        self.class_embed = nn.Linear(config.hidden_dim, config.num_classes + 1)
        self.bbox_embed = MLP(config.hidden_dim, config.hidden_dim, 4, 3)

    def forward_features(self, images: torch.Tensor, padding_mask: torch.Tensor = None):
        """images [N, 3, H, W], padding_mask [N, H, W] or None -> (outputs, backbone features, projected src,
        hs [N, Q, C], memory [N, S, C], the last feature's padding mask [N, H_s, W_s] or None)."""
        features, positions, masks = self.backbone(images, as_padding_mask(padding_mask))
        src = self.input_proj(features[-1])
        hs, memory = self.transformer(src, self.query_embed.weight, positions[-1], masks[-1])
        outputs = {contract.OUTPUT_LOGITS: self.class_embed(hs), contract.OUTPUT_BOXES: self.bbox_embed(hs).sigmoid()}
        return outputs, features, src, hs, memory, masks[-1]

    def forward(self, images: torch.Tensor, padding_mask: torch.Tensor = None) -> dict[str, torch.Tensor]:
        """images [N, 3, H, W] ImageNet-normalized, padding_mask [N, H, W] (nonzero = padded pixel) or None
        -> pred_logits [N, Q, K + 1], pred_boxes [N, Q, 4] (cxcywh in 0..1 of each image's unpadded extent)."""
        return self.forward_features(images, padding_mask)[0]


def as_padding_mask(padding_mask: torch.Tensor) -> torch.Tensor:
    """uint8 or bool [N, H, W] (nonzero = padded, the official NestedTensor mask) -> bool, or None."""
    return None if padding_mask is None else padding_mask.to(torch.bool)
