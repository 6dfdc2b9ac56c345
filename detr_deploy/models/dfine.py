"""D-FINE (Peterande/D-FINE) and DEIM (ShihuaHuang95/DEIM, which trains the same network), inference only.

HGNetv2 backbone (B0..B5) -> D-FINE's hybrid encoder (AIFI on stride 32, GELAN fusion blocks, SCDown) -> RT-DETR's
query selection -> the FDR decoder (``dfine_decoder.py``). Sizes must be multiples of 32 (``size_divisor``).
Inputs and outputs are RT-DETR's: RGB in 0..1 resized to 640x640, sigmoid logits and cxcywh boxes, the official
post-processor keeping the top 300 (query, class) pairs.
"""

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from detr_deploy import contract
from detr_deploy.errors import DetrDeployError
from detr_deploy.models.dfine_decoder import DFINETransformer
from detr_deploy.models.family import FamilyConfig
from detr_deploy.models.hgnetv2 import HGNetV2Config
from detr_deploy.models.hybrid_encoder import HybridEncoder
from detr_deploy.models.rtdetr_decoder import MSDA_PATHS


@dataclass(frozen=True)
class DFineConfig(FamilyConfig):
    """Defaults are D-FINE-L (``dfine_hgnetv2_l_coco.yml``). Parameter names follow the official configs."""

    # The named size this is (N, S, M, L, X), or "custom": the zoo name of the architecture.
    size: str = "L"
    num_classes: int = 80
    num_queries: int = 300
    # HGNetv2-B4 (the default HGNetV2Config). The levels it returns are the hybrid encoder's inputs (stages 2-4;
    # D-FINE-N stages 3-4).
    backbone: HGNetV2Config = field(default_factory=HGNetV2Config)
    # Hybrid encoder (AIFI + GELAN fusion).
    encoder_hidden_dim: int = 256
    encoder_heads: int = 8
    encoder_ffn: int = 1024
    num_encoder_layers: int = 1
    encoder_expansion: float = 1.0
    depth_mult: float = 1.0
    # Decoder.
    hidden_dim: int = 256
    num_heads: int = 8
    num_decoder_layers: int = 6
    dim_feedforward: int = 1024
    # Sampling points per feature level of the decoder's deformable attention.
    dec_n_points: tuple[int, ...] = (3, 6, 3)
    # "default" (bilinear, our MSDeformAttn node) or "discrete" (nearest cell, plain ONNX ops).
    sampling_method: str = "default"
    # FDR: bins per edge minus one, and the weighting function's curvature and bound (checkpoints hold the last two).
    reg_max: int = 32
    reg_scale: float = 4.0
    up: float = 0.5

    family = "dfine"
    label = "D-FINE"
    # The official evaluation resizes to 640x640, aspect not kept.
    resize = "fixed=640x640"
    # AIFI attends over every stride-32 token.
    memory_full_attention = True
    score_activation = "sigmoid"
    output_names = (contract.OUTPUT_LOGITS, contract.OUTPUT_BOXES)
    # Queries are the top-scoring encoder tokens: their order follows scores.
    query_order_is_ranked = True
    # Stride-32 features are upsampled x2 and concatenated with stride-16 ones: sides must be multiples of 32.
    size_divisor = 32
    # Inputs are RGB in 0..1, not ImageNet-normalized (the official transforms stop at ConvertPILImage(scale=True)).
    normalize_mean = (0.0, 0.0, 0.0)
    normalize_std = (1.0, 1.0, 1.0)
    # The official post-processor keeps the top 300 (query, class) pairs.
    num_top_detections = 300
    supports_padding_mask = False

    @property
    def num_feature_levels(self) -> int:
        return len(self.dec_n_points)

    def build(self) -> nn.Module:
        return DFINE(self)

    @property
    def architecture_name(self) -> str:
        name = f"dfine_hgnetv2_{self.size.removesuffix('-tiny').lower()}"
        return name + ("_discrete" if self.sampling_method == "discrete" else "")

    @property
    def full_label(self) -> str:
        size = "" if self.size == "custom" else f"-{self.size.removesuffix('-tiny')}"
        return f"D-FINE{size}" + (" (discrete sampling)" if self.sampling_method == "discrete" else "")

    @property
    def backbone_label(self) -> str:
        return self.backbone.label

    @property
    def attention_summary(self) -> str:
        return f"{self.num_feature_levels} levels, {'/'.join(map(str, self.dec_n_points))} decoder points"

    @property
    def selection_strides(self) -> tuple[int, ...]:
        # The hybrid encoder's levels (strides 8, 16, 32; D-FINE-N 16, 32); queries are the top of their tokens.
        return self.backbone.out_strides()

    @property
    def deformable_strides(self) -> tuple[int, ...]:
        return self.selection_strides

    def tiny(self) -> "DFineConfig":
        return self.replace(
            size=f"{self.size.removesuffix('-tiny')}-tiny",
            num_classes=5,
            num_queries=10,
            backbone=self.backbone.tiny(),
            encoder_hidden_dim=32,
            encoder_heads=4,
            encoder_ffn=64,
            hidden_dim=32,
            num_heads=4,
            num_decoder_layers=2,
            dim_feedforward=64,
            dec_n_points=tuple(min(points, 3) for points in self.dec_n_points),
            reg_max=8,
        )


class DFINE(nn.Module):
    """Backbone, hybrid encoder and decoder under the official names ``backbone``, ``encoder``, ``decoder``."""

    def __init__(self, config: DFineConfig):
        super().__init__()
        if config.sampling_method not in MSDA_PATHS:
            raise DetrDeployError(
                f"sampling_method {config.sampling_method!r} is not one of {sorted(MSDA_PATHS)} (D-FINE's "
                "cross_attn_method)"
            )
        if len(config.backbone.out_stages) != config.num_feature_levels:
            raise DetrDeployError(
                f"D-FINE: the backbone returns {len(config.backbone.out_stages)} levels but the decoder samples "
                f"{config.num_feature_levels} (dec_n_points {list(config.dec_n_points)})"
            )
        if config.reg_max < 4 or config.reg_max % 2:
            raise DetrDeployError(f"D-FINE: reg_max must be an even number of at least 4, got {config.reg_max}")
        self.config = config
        self.backbone = config.backbone.build()
        self.encoder = HybridEncoder(
            in_channels=self.backbone.out_channels,
            hidden_dim=config.encoder_hidden_dim,
            nhead=config.encoder_heads,
            dim_feedforward=config.encoder_ffn,
            num_encoder_layers=config.num_encoder_layers,
            expansion=config.encoder_expansion,
            depth_mult=config.depth_mult,
            version=2,
            fusion="elan",
        )
        self.decoder = DFINETransformer(
            num_classes=config.num_classes,
            hidden_dim=config.hidden_dim,
            num_queries=config.num_queries,
            feat_channels=(config.encoder_hidden_dim,) * config.num_feature_levels,
            num_points=config.dec_n_points,
            nhead=config.num_heads,
            num_layers=config.num_decoder_layers,
            dim_feedforward=config.dim_feedforward,
            cross_attn_method=config.sampling_method,
            reg_max=config.reg_max,
            reg_scale=config.reg_scale,
            up=config.up,
        )

    @property
    def msda_paths(self) -> dict[str, str]:
        """Module name -> "plugin" or "onnx-ops:discrete", for each deformable attention module."""
        return {f"decoder.{name}": path for name, path in self.decoder.msda_paths.items()}

    def forward(self, images: torch.Tensor, padding_mask: torch.Tensor = None) -> dict[str, torch.Tensor]:
        """images [N, 3, H, W] RGB in 0..1, H and W multiples of 32 -> pred_logits [N, Q, K] (raw; sigmoid per
        class), pred_boxes [N, Q, 4] (cxcywh in 0..1)."""
        if padding_mask is not None:
            raise ValueError("D-FINE takes no padding mask (the official model has none): pass padding_mask=None")
        logits, boxes = self.decoder(self.encoder(self.backbone(images)))
        return {contract.OUTPUT_LOGITS: logits, contract.OUTPUT_BOXES: boxes}


# Official checkpoint tensors inference does not use: the denoising label embedding, the 640x640 anchor buffers
# (computed here from the input's shape), and the decoder's second names for ``up`` and ``reg_scale`` (the official
# TransformerDecoder keeps references to its parent's parameters, so they are saved twice).
_TRAINING_ONLY_KEYS = frozenset(
    {
        "decoder.denoising_class_embed.weight",
        "decoder.anchors",
        "decoder.valid_mask",
        "decoder.decoder.up",
        "decoder.decoder.reg_scale",
    }
)
_DECODER_LAYER_KEY = re.compile(
    r"^decoder\.(?:decoder\.layers|decoder\.lqe_layers|dec_score_head|dec_bbox_head)\.(\d+)\."
)


def training_only_keys(state_dict_keys, num_decoder_layers: int = None) -> list[str]:
    """The keys of an official D-FINE/DEIM state dict that ``DFINE`` does not hold, in their given order: drop them,
    then load with strict=True. With ``num_decoder_layers`` (the official ``eval_idx`` + 1), the decoder layers and
    their heads beyond it, which eval never runs (the official ``convert_to_deploy`` drops them too)."""
    dropped = []
    for key in state_dict_keys:
        layer = _DECODER_LAYER_KEY.match(key)
        beyond_eval = layer is not None and num_decoder_layers is not None and int(layer.group(1)) >= num_decoder_layers
        if key in _TRAINING_ONLY_KEYS or beyond_eval:
            dropped.append(key)
    return dropped
