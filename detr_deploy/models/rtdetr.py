"""RT-DETR v1 (lyuwenyu/RT-DETR rtdetr_pytorch) and v2 (rtdetrv2_pytorch), inference only.

ResNet-vd or HGNetv2 backbone (RT-DETR-L/X) -> hybrid encoder (AIFI on stride 32, CCFM fusion) -> query selection
from anchors computed from the feature shapes at run time -> deformable decoder. Sizes must be multiples of 32
(``size_divisor``).
"""

import re
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from detr_deploy import contract
from detr_deploy.errors import DetrDeployError
from detr_deploy.models.family import FamilyConfig
from detr_deploy.models.hgnetv2 import HGNetV2Config
from detr_deploy.models.hybrid_encoder import HybridEncoder
from detr_deploy.models.resnet_vd import ResNetVdConfig
from detr_deploy.models.rtdetr_decoder import MSDA_PATHS, RTDETRTransformer


@dataclass(frozen=True)
class RTDETRConfig(FamilyConfig):
    """Defaults are RT-DETR-R50 (v1). Parameter names follow the official code."""

    version: int = 1
    num_classes: int = 80
    num_queries: int = 300
    # ResNet-vd (the official PyTorch releases) or HGNetv2 (RT-DETR-L/X: PaddleDetection, Ultralytics).
    backbone: ResNetVdConfig | HGNetV2Config = field(default_factory=ResNetVdConfig)
    # Hybrid encoder (AIFI + CCFM).
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
    # Sampling points per feature level in the decoder's deformable attention (v2 may differ per level).
    dec_n_points: tuple[int, ...] = (4, 4, 4)
    # v2: "default" (bilinear, our MSDeformAttn node) or "discrete" (nearest cell, plain ONNX ops).
    sampling_method: str = "default"
    # How AIFI's position embedding numbers the stride-32 tokens: "official" (lyuwenyu/RT-DETR's, transformers',
    # PaddleDetection's) or "row_major" (each token's own row and column, as Ultralytics 8.4.190 computes it). The two
    # agree on square inputs; a file of Ultralytics' runs as Ultralytics runs it (hybrid_encoder.py).
    aifi_positions: str = "official"

    family = "rtdetr"
    label = "RT-DETR"
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
    # Inputs are RGB in 0..1, not ImageNet-normalized (the official transforms stop at ConvertDtype).
    normalize_mean = (0.0, 0.0, 0.0)
    normalize_std = (1.0, 1.0, 1.0)
    # The official post-processor keeps the top 300 (query, class) pairs.
    num_top_detections = 300
    supports_padding_mask = False
    # The backbone configs this family takes, told apart in exports by their ``kind`` field.
    backbone_types: ClassVar[tuple[type, ...]] = (ResNetVdConfig, HGNetV2Config)

    @property
    def num_feature_levels(self) -> int:
        return len(self.dec_n_points)

    def build(self) -> nn.Module:
        return RTDETR(self)

    @property
    def architecture_name(self) -> str:
        name = f"rtdetr{'v2' if self.version == 2 else ''}_{self.backbone.architecture_token}"
        return name + ("_discrete" if self.sampling_method == "discrete" else "")

    @property
    def full_label(self) -> str:
        return f"RT-DETR v{self.version}" + (" (discrete sampling)" if self.sampling_method == "discrete" else "")

    @property
    def backbone_label(self) -> str:
        return self.backbone.label

    @property
    def attention_summary(self) -> str:
        return f"{self.num_feature_levels} levels, {'/'.join(map(str, self.dec_n_points))} decoder points"

    @property
    def selection_strides(self) -> tuple[int, ...]:
        # The hybrid encoder's three levels, strides 8, 16, 32; queries are the top-scoring of their tokens.
        return (8, 16, 32)

    @property
    def deformable_strides(self) -> tuple[int, ...]:
        return self.selection_strides

    def tiny(self, dec_n_points: tuple[int, ...] = None) -> "RTDETRConfig":
        return self.replace(
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
            dec_n_points=dec_n_points or (2,) * self.num_feature_levels,
        )


class RTDETR(nn.Module):
    """Backbone, hybrid encoder and decoder under the official names ``backbone``, ``encoder``, ``decoder``."""

    def __init__(self, config: RTDETRConfig):
        super().__init__()
        if config.version not in (1, 2):
            raise DetrDeployError(f"RT-DETR version {config.version} is not 1 or 2")
        if config.sampling_method not in MSDA_PATHS:
            raise DetrDeployError(
                f"sampling_method {config.sampling_method!r} is not one of {sorted(MSDA_PATHS)} (RT-DETRv2's "
                "cross_attn_method)"
            )
        if config.version == 1 and (config.sampling_method != "default" or len(set(config.dec_n_points)) != 1):
            raise DetrDeployError(
                "RT-DETR v1 has one point count for all levels and bilinear sampling: use version=2 for "
                "per-level points or discrete sampling"
            )
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
            version=config.version,
            positions=config.aifi_positions,
        )
        self.decoder = RTDETRTransformer(
            num_classes=config.num_classes,
            hidden_dim=config.hidden_dim,
            num_queries=config.num_queries,
            feat_channels=(config.encoder_hidden_dim,) * config.num_feature_levels,
            num_points=config.dec_n_points,
            nhead=config.num_heads,
            num_layers=config.num_decoder_layers,
            dim_feedforward=config.dim_feedforward,
            version=config.version,
            cross_attn_method=config.sampling_method,
        )

    @property
    def msda_paths(self) -> dict[str, str]:
        """Module name -> "plugin" or "onnx-ops:discrete", for each deformable attention module."""
        return {f"decoder.{name}": path for name, path in self.decoder.msda_paths.items()}

    def forward(self, images: torch.Tensor, padding_mask: torch.Tensor = None) -> dict[str, torch.Tensor]:
        """images [N, 3, H, W] RGB in 0..1, H and W multiples of 32 -> pred_logits [N, Q, K] (raw; sigmoid per
        class), pred_boxes [N, Q, 4] (cxcywh in 0..1)."""
        if padding_mask is not None:
            raise ValueError("RT-DETR takes no padding mask (the official model has none): pass padding_mask=None")
        logits, boxes = self.decoder(self.encoder(self.backbone(images)))
        return {contract.OUTPUT_LOGITS: logits, contract.OUTPUT_BOXES: boxes}


# Official checkpoint tensors that inference does not use: the denoising label embedding (v1 and v2), and v2's
# anchors and valid mask, buffers precomputed for the 640x640 eval size (computed here from the input's shape).
_TRAINING_ONLY_KEYS = frozenset({"decoder.denoising_class_embed.weight", "decoder.anchors", "decoder.valid_mask"})
# Per-layer parts of the decoder: layer i, and the class and box heads that read its output.
_DECODER_LAYER_KEY = re.compile(r"^decoder\.(?:decoder\.layers|dec_score_head|dec_bbox_head)\.(\d+)\.")


def training_only_keys(state_dict_keys, num_decoder_layers: int = None) -> list[str]:
    """The keys of an official RT-DETR state dict (``backbone.*``, ``encoder.*``, ``decoder.*``; the model or the
    EMA ``module``) that ``RTDETR`` does not hold, in their given order: drop them, then load with strict=True.

    - ``decoder.denoising_class_embed.weight``: the denoising-training label embedding;
    - ``decoder.anchors``, ``decoder.valid_mask``: v2's 640x640 anchor buffers (we compute anchors at run time);
    - with ``num_decoder_layers`` (the eval layer's index + 1, e.g. 3 for the official ``eval_idx: 2`` of
      r50vd_m), the decoder layers and their ``dec_score_head`` / ``dec_bbox_head`` beyond it, which eval never runs.

    Backbone ``*.num_batches_tracked`` keys (R18/R34 train their backbone norms) are not listed: our frozen batch
    norm takes and ignores them while loading.
    """
    dropped = []
    for key in state_dict_keys:
        layer = _DECODER_LAYER_KEY.match(key)
        beyond_eval = layer is not None and num_decoder_layers is not None and int(layer.group(1)) >= num_decoder_layers
        if key in _TRAINING_ONLY_KEYS or beyond_eval:
            dropped.append(key)
    return dropped
