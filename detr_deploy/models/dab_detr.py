"""DAB-DETR (IDEA-Research/DAB-DETR, ``models/DAB_DETR``), inference only, final decoder layer's predictions only.

Queries are learned anchor boxes (cx, cy, w, h before a sigmoid), refined after every decoder layer by the shared box
head; with patterns, each anchor is used once per learned pattern (content) embedding, so the model has anchors x
patterns queries, pattern-major. The decoder layer is Conditional DETR's (``conditional_decoder``) with a PReLU FFN;
DAB-DETR adds the anchors' 4-D sine embedding, its element-wise ``query_scale`` and the width/height modulation by
``ref_anchor_head``. The encoder scales its position encoding by a ``query_scale`` MLP of the tokens. Module names
are the official ones, so an official file loads with no renaming.
"""

from dataclasses import dataclass, field

import torch
from torch import nn

from detr_deploy import contract
from detr_deploy.models.backbone import Backbone, BackboneConfig, BackboneWithPosition
from detr_deploy.models.conditional_decoder import ConditionalDecoderLayer, box_sine_embedding, feedforward_activation
from detr_deploy.models.deformable_transformer import inverse_sigmoid
from detr_deploy.models.detr import as_padding_mask
from detr_deploy.models.family import FamilyConfig
from detr_deploy.models.mlp import MLP
from detr_deploy.models.position_encoding import PositionEmbeddingSine
from detr_deploy.models.transformer import TransformerEncoderLayer

# The official main.py's --pe_temperatureH / --pe_temperatureW (transformers' temperature_height / _width, mmdetection's
# positional_encoding.temperature): DAB-DETR's image position encoding is DETR's with temperature 20.
POSITION_TEMPERATURE = 20.0
# inverse_sigmoid's clamp as each source uses it: the official util.misc.inverse_sigmoid (1e-3) everywhere;
# transformers' modeling_dab_detr (1e-5) everywhere; mmdetection 1e-5 in the decoder's refinement
# (DABDetrTransformerDecoder) and 1e-3 in the head (DABDETRHead.forward).
OFFICIAL_EPS = 1e-3
TRANSFORMERS_EPS = 1e-5


@dataclass(frozen=True)
class DABDETRConfig(FamilyConfig):
    """Official defaults (main.py). ``num_queries`` is anchors x patterns (``num_patterns`` 0: one query per anchor);
    ``refine_eps`` / ``head_eps`` are the inverse-sigmoid clamps of the per-layer anchor update and of the final box."""

    num_classes: int = 91
    num_queries: int = 300
    num_patterns: int = 0
    hidden_dim: int = 256
    num_heads: int = 8
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    dim_feedforward: int = 2048
    activation: str = "prelu"
    refine_eps: float = OFFICIAL_EPS
    head_eps: float = OFFICIAL_EPS
    backbone: BackboneConfig = field(default_factory=BackboneConfig)

    family = "dab_detr"
    label = "DAB-DETR"
    memory_full_attention = True
    # Sigmoid focal loss: one logit per class, no "no object".
    score_activation = "sigmoid"
    output_names = (contract.OUTPUT_LOGITS, contract.OUTPUT_BOXES)
    # Learned anchors: a query's position in the output is fixed.
    query_order_is_ranked = False
    size_divisor = 1
    normalize_mean = contract.IMAGENET_MEAN
    normalize_std = contract.IMAGENET_STD
    # The official PostProcess (main.py --num_select 300) and mmdetection's test_cfg.max_per_img: top 300 over query x
    # class.
    num_top_detections = 300
    supports_padding_mask = True

    def __post_init__(self):
        if self.num_queries % max(1, self.num_patterns):
            raise ValueError(f"num_queries {self.num_queries} is not a multiple of num_patterns {self.num_patterns}")
        if self.activation not in ("relu", "prelu"):
            raise ValueError(f"activation must be 'relu' or 'prelu', not {self.activation!r}")

    @property
    def num_anchors(self) -> int:
        """Learned anchor boxes (``refpoint_embed`` rows); each serves every pattern."""
        return self.num_queries // max(1, self.num_patterns)

    def build(self) -> nn.Module:
        return DABDETR(self)

    @property
    def architecture_name(self) -> str:
        return (
            f"dab_detr_r{self.backbone.depth}"
            + ("_dc5" if self.backbone.dilate_last_stage else "")
            + (f"_{self.num_patterns}pat" if self.num_patterns else "")
        )

    @property
    def backbone_label(self) -> str:
        return self.backbone.label

    @property
    def variants(self) -> tuple[str, ...]:
        return (f"{self.num_patterns} patterns",) if self.num_patterns else ()

    def tiny(self) -> "DABDETRConfig":
        return self.replace(
            num_classes=5,
            num_queries=4 * max(1, self.num_patterns),
            hidden_dim=32,
            num_heads=4,
            num_encoder_layers=1,
            num_decoder_layers=2,
            dim_feedforward=64,
            backbone=self.backbone.tiny(),
        )


class DABTransformerEncoder(nn.Module):
    def __init__(self, config: DABDETRConfig):
        super().__init__()
        width = config.hidden_dim
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(
                width, config.num_heads, config.dim_feedforward, feedforward_activation(config.activation)
            )
            for _ in range(config.num_encoder_layers)
        )
        self.query_scale = MLP(width, width, width, 2)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, padding_mask: torch.Tensor = None) -> torch.Tensor:
        """src [N, S, C], pos [N or 1, S, C], padding_mask [N, S] bool or None -> [N, S, C]. Each layer's position
        encoding is scaled element-wise by an MLP of its input tokens."""
        for layer in self.layers:
            src = layer(src, pos * self.query_scale(src), padding_mask)
        return src


class DABTransformerDecoder(nn.Module):
    def __init__(self, config: DABDETRConfig):
        super().__init__()
        width = config.hidden_dim
        # Only the first layer adds the anchors' position to its cross-attention query (official keep_query_pos off).
        self.layers = nn.ModuleList(
            ConditionalDecoderLayer(
                width,
                config.num_heads,
                config.dim_feedforward,
                config.activation,
                has_query_pos_proj=index == 0,
            )
            for index in range(config.num_decoder_layers)
        )
        self.norm = nn.LayerNorm(width)
        self.query_scale = MLP(width, width, width, 2)
        self.ref_point_head = MLP(2 * width, width, width, 2)
        self.ref_anchor_head = MLP(width, width, 2, 2)
        self.refine_eps = config.refine_eps
        self.bbox_embed = None  # DABDETR's box head, shared (officially ``iter_update``)

    def forward(self, tgt, memory, pos, anchors, memory_padding_mask=None):
        """tgt [N, Q, C] (zeros, or the pattern embeddings), memory [N, S, C], pos [N or 1, S, C], anchors [1, Q, 4]
        (cx, cy, w, h before the sigmoid), memory_padding_mask [N, S] bool or None -> (the last layer's normalized
        output [N, Q, C], the boxes it was conditioned on [N, Q, 4] in 0..1)."""
        width = tgt.shape[-1]
        boxes = anchors.sigmoid()
        output = tgt
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            sine = box_sine_embedding(boxes, width)  # (y, x, w, h) blocks of width / 2
            query_pos = self.ref_point_head(sine)
            # The first layer's content is zeros (or the patterns): no transformation of the position part there.
            position = sine[..., :width] if index == 0 else sine[..., :width] * self.query_scale(output)
            # Width/height modulation: the y block by the predicted height over the anchor's, x by the widths.
            size = self.ref_anchor_head(output).sigmoid()
            half = width // 2
            position = torch.cat(
                (
                    position[..., :half] * (size[..., 1] / boxes[..., 3]).unsqueeze(-1),
                    position[..., half:] * (size[..., 0] / boxes[..., 2]).unsqueeze(-1),
                ),
                dim=-1,
            )
            output = layer(output, memory, pos, query_pos, position, index == 0, memory_padding_mask)
            if index < last:  # the last layer's update only feeds training's next stage
                boxes = (self.bbox_embed(output) + inverse_sigmoid(boxes, self.refine_eps)).sigmoid()
        return self.norm(output), boxes


class DABTransformer(nn.Module):
    def __init__(self, config: DABDETRConfig):
        super().__init__()
        self.encoder = DABTransformerEncoder(config)
        self.decoder = DABTransformerDecoder(config)
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)
        self.num_patterns = config.num_patterns
        if config.num_patterns:
            self.patterns = nn.Embedding(config.num_patterns, config.hidden_dim)

    def forward(self, src, anchors, pos, padding_mask=None):
        """src [N, C, H, W], anchors [A, 4] (before the sigmoid), pos [N or 1, C, H, W], padding_mask [N, H, W] bool
        or None -> (hs [N, Q, C], boxes [N, Q, 4]) with Q = A x patterns (pattern-major), or A without patterns."""
        batch, channels = src.shape[:2]
        src = src.flatten(2).transpose(1, 2)
        pos = pos.flatten(2).transpose(1, 2)
        if padding_mask is not None:
            padding_mask = padding_mask.flatten(1)
        memory = self.encoder(src, pos, padding_mask)
        num_anchors = anchors.shape[0]
        if self.num_patterns:
            content = self.patterns.weight[:, None, :].expand(-1, num_anchors, -1).flatten(0, 1)
            anchors = anchors.repeat(self.num_patterns, 1)
        else:
            content = anchors.new_zeros(num_anchors, channels)
        tgt = content.unsqueeze(0).expand(batch, -1, -1)
        return self.decoder(tgt, memory, pos, anchors.unsqueeze(0), padding_mask)


class DABDETR(nn.Module):
    def __init__(self, config: DABDETRConfig):
        super().__init__()
        self.config = config
        width = config.hidden_dim
        backbone = Backbone(config.backbone, (4,))
        self.backbone = BackboneWithPosition(backbone, PositionEmbeddingSine(width // 2, POSITION_TEMPERATURE))
        self.input_proj = nn.Conv2d(backbone.num_channels[-1], width, kernel_size=1)
        self.refpoint_embed = nn.Embedding(config.num_anchors, 4)
        self.transformer = DABTransformer(config)
        self.class_embed = nn.Linear(width, config.num_classes)
        self.bbox_embed = MLP(width, width, 4, 3)
        # One box head refines the anchors after every layer and predicts the final boxes; the official state dict
        # lists it under both names.
        self.transformer.decoder.bbox_embed = self.bbox_embed

    def forward(self, images: torch.Tensor, padding_mask: torch.Tensor = None) -> dict[str, torch.Tensor]:
        """images [N, 3, H, W] ImageNet-normalized, padding_mask [N, H, W] (nonzero = padded pixel) or None
        -> pred_logits [N, Q, K] (sigmoid scores), pred_boxes [N, Q, 4] (cxcywh in 0..1 of each unpadded image)."""
        features, positions, masks = self.backbone(images, as_padding_mask(padding_mask))
        src = self.input_proj(features[-1])
        hs, boxes = self.transformer(src, self.refpoint_embed.weight, positions[-1], masks[-1])
        pred_boxes = (self.bbox_embed(hs) + inverse_sigmoid(boxes, self.config.head_eps)).sigmoid()
        return {contract.OUTPUT_LOGITS: self.class_embed(hs), contract.OUTPUT_BOXES: pred_boxes}
