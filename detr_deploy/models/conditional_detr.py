"""Conditional DETR (Atten4Vis/ConditionalDETR), inference only, final decoder layer only.

DETR's backbone, position encoding and encoder; a conditional decoder (models/conditional_decoder.py) whose
cross-attention queries carry the sine embedding of a reference point per query; sigmoid class scores (focal loss,
no "no object" logit) and boxes predicted as offsets from the reference point (in logit space).
"""

from dataclasses import dataclass, field

import torch
from torch import nn

from detr_deploy import contract
from detr_deploy.models.backbone import Backbone, BackboneConfig, BackboneWithPosition
from detr_deploy.models.conditional_decoder import ConditionalDecoder
from detr_deploy.models.deformable_transformer import inverse_sigmoid
from detr_deploy.models.detr import as_padding_mask
from detr_deploy.models.family import FamilyConfig
from detr_deploy.models.mlp import MLP
from detr_deploy.models.position_encoding import PositionEmbeddingSine
from detr_deploy.models.transformer import TransformerEncoder


@dataclass(frozen=True)
class ConditionalDETRConfig(FamilyConfig):
    """The official defaults (main.py of Atten4Vis/ConditionalDETR, 91 COCO category ids)."""

    num_classes: int = 91
    num_queries: int = 300
    hidden_dim: int = 256
    num_heads: int = 8
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    dim_feedforward: int = 2048
    backbone: BackboneConfig = field(default_factory=BackboneConfig)

    family = "conditional_detr"
    label = "Conditional DETR"
    # The encoder is DETR's: full attention over every stride-32 token.
    memory_full_attention = True
    # Sigmoid per class (focal loss), no "no object" logit.
    score_activation = "sigmoid"
    output_names = (contract.OUTPUT_LOGITS, contract.OUTPUT_BOXES)
    # Learned queries: each keeps its place in the output.
    query_order_is_ranked = False
    size_divisor = 1
    normalize_mean = contract.IMAGENET_MEAN
    normalize_std = contract.IMAGENET_STD
    # The official PostProcess: top-100 over query x class.
    num_top_detections = 100
    supports_padding_mask = True

    def build(self) -> nn.Module:
        return ConditionalDETR(self)

    @property
    def architecture_name(self) -> str:
        return f"conditional_detr_r{self.backbone.depth}" + ("_dc5" if self.backbone.dilate_last_stage else "")

    @property
    def backbone_label(self) -> str:
        return self.backbone.label

    def tiny(self) -> "ConditionalDETRConfig":
        return self.replace(
            num_classes=5,
            num_queries=12,
            hidden_dim=32,
            num_heads=4,
            num_encoder_layers=1,
            num_decoder_layers=2,
            dim_feedforward=64,
            backbone=self.backbone.tiny(),
        )


class ConditionalTransformer(nn.Module):
    """DETR's encoder and the conditional decoder, batch-first (``transformer.encoder.*``, ``transformer.decoder.*``
    officially)."""

    def __init__(self, config: ConditionalDETRConfig):
        super().__init__()
        width, heads, ffn = config.hidden_dim, config.num_heads, config.dim_feedforward
        self.encoder = TransformerEncoder(config.num_encoder_layers, width, heads, ffn)
        self.decoder = ConditionalDecoder(config.num_decoder_layers, width, heads, ffn)
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)

    def forward(self, src: torch.Tensor, query_embed: torch.Tensor, pos: torch.Tensor, padding_mask=None):
        """src [N, C, H, W], query_embed [Q, C], pos [N or 1, C, H, W], padding_mask [N, H, W] bool or None
        -> (hs [N, Q, C], reference points [1, Q, 2])."""
        batch, channels = src.shape[:2]
        src = src.view(batch, channels, -1).transpose(1, 2)
        pos = pos.view(pos.shape[0], channels, -1).transpose(1, 2)
        if padding_mask is not None:
            padding_mask = padding_mask.view(batch, -1)
        query_pos = query_embed.unsqueeze(0)
        memory = self.encoder(src, pos, padding_mask)
        tgt = torch.zeros_like(query_pos).expand(batch, -1, -1)
        return self.decoder(tgt, memory, pos, query_pos, padding_mask)


class ConditionalDETR(nn.Module):
    def __init__(self, config: ConditionalDETRConfig):
        super().__init__()
        self.config = config
        backbone = Backbone(config.backbone, (4,))
        self.backbone = BackboneWithPosition(backbone, PositionEmbeddingSine(config.hidden_dim // 2))
        self.input_proj = nn.Conv2d(backbone.num_channels[-1], config.hidden_dim, kernel_size=1)
        self.query_embed = nn.Embedding(config.num_queries, config.hidden_dim)
        self.transformer = ConditionalTransformer(config)
        self.class_embed = nn.Linear(config.hidden_dim, config.num_classes)
        self.bbox_embed = MLP(config.hidden_dim, config.hidden_dim, 4, 3)

    def forward(self, images: torch.Tensor, padding_mask: torch.Tensor = None) -> dict[str, torch.Tensor]:
        """images [N, 3, H, W] ImageNet-normalized, padding_mask [N, H, W] (nonzero = padded pixel) or None
        -> pred_logits [N, Q, K], pred_boxes [N, Q, 4] (cxcywh in 0..1 of each image's unpadded extent)."""
        features, positions, masks = self.backbone(images, as_padding_mask(padding_mask))
        hs, reference = self.transformer(
            self.input_proj(features[-1]), self.query_embed.weight, positions[-1], masks[-1]
        )
        delta = self.bbox_embed(hs)
        boxes = torch.cat([delta[..., :2] + inverse_sigmoid(reference), delta[..., 2:]], dim=-1)
        return {contract.OUTPUT_LOGITS: self.class_embed(hs), contract.OUTPUT_BOXES: boxes.sigmoid()}
