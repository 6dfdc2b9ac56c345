"""RF-DETR (roboflow/rf-detr; transformers' ``rf_detr``, built on LW-DETR), inference only.

A windowed DINOv2 (``dinov2.py``) gives four stage maps at the patch stride; the projector concatenates them and
fuses them with a C2f block into one decoder-width level ("P4"; the deprecated large model's "P3"/"P5" levels are
not built). Two-stage query selection as LW-DETR: every token is a proposal box (its cell, 0.05 wide), the encoder
heads of group 0 score and refine the proposals, the top ``num_queries`` become the reference boxes that the learned
reference deltas (``refpoint_embed``) adjust; the learned ``query_feat`` are the decoder's queries. The decoder is
shallow (2-6 layers): self-attention, deformable cross-attention through our MSDeformAttn node, FFN, post-norm; the
reference boxes stay those of the selection ("lite" refinement), and the last layer's boxes are its deltas applied to
them (``bbox_reparam``: centre + delta * size, size * exp(delta)).

Inputs are ImageNet-normalized RGB resized to the model's square resolution; outputs sigmoid logits (the class head
has one slot more than the classes trained) and cxcywh boxes; the official post-processor keeps the top 300
(query, class) pairs. Sides must be multiples of patch size x windows. Parameter names are rfdetr's.

Training-only tensors are not held: the query groups beyond the first (Group DETR trains 13 copies of the queries
and encoder heads), DINOv2's mask token. ``training_only_parameters`` counts them, for the official sizes.
"""

import math
import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from detr_deploy import contract
from detr_deploy.errors import DetrDeployError
from detr_deploy.models.attention import MultiheadAttention
from detr_deploy.models.deformable_attention import MultiScaleDeformableAttention
from detr_deploy.models.dinov2 import WINDOW_ORDERS, DINOv2Config, WindowedDINOv2
from detr_deploy.models.family import FamilyConfig
from detr_deploy.models.mlp import MLP
from detr_deploy.models.rtdetr_decoder import flatten_levels

# Zoo names of the named sizes.
SIZE_NAMES = {
    "N": "nano",
    "S": "small",
    "M": "medium",
    "L": "large",
    "XL": "xlarge",
    "2XL": "2xlarge",
    "B": "base",
}


@dataclass(frozen=True)
class RFDETRConfig(FamilyConfig):
    """Defaults are RF-DETR-N (rfdetr's ``RFDETRNanoConfig``). Field names follow rfdetr's config where it has one."""

    # The named size (N, S, M, L, XL, 2XL, B) or "custom".
    size: str = "N"
    # Class head outputs: rfdetr's num_classes + 1 (the COCO releases: 91, label = COCO category id).
    num_classes: int = 91
    num_queries: int = 300
    backbone: DINOv2Config = field(default_factory=DINOv2Config)
    # The official square input side (rfdetr's resolution).
    resolution: int = 384
    # Projector: C2f blocks and branch expansion, the LayerNorm epsilon of its conv layers (rfdetr 1e-6;
    # transformers takes config.json's layer_norm_eps).
    projector_blocks: int = 3
    projector_expansion: float = 0.5
    projector_norm_eps: float = 1e-6
    # Decoder.
    hidden_dim: int = 256
    num_heads: int = 8
    cross_attention_heads: int = 16
    num_decoder_layers: int = 2
    dim_feedforward: int = 2048
    dec_n_points: int = 2
    # The peer conventions a checkpoint was made in (see dinov2.WINDOW_ORDERS): rfdetr ranks proposals outside
    # (0.01, 0.99) like any other (their memory and box zeroed); transformers scores them -inf.
    window_order: str = "rows"
    rank_invalid_proposals: bool = True

    family = "rfdetr"
    label = "RF-DETR"
    score_activation = "sigmoid"
    output_names = (contract.OUTPUT_LOGITS, contract.OUTPUT_BOXES)
    query_order_is_ranked = True
    # Global ViT blocks attend over every patch token.
    memory_full_attention = True
    normalize_mean = contract.IMAGENET_MEAN
    normalize_std = contract.IMAGENET_STD
    # rfdetr's PostProcess keeps the top num_select = 300 (query, class) pairs.
    num_top_detections = 300
    supports_padding_mask = False
    # Boxes are the selected proposals moved by unbounded deltas (no sigmoid, as rfdetr computes them): a centre or
    # size may leave 0..1, and rfdetr's post-processor scales them as they are.
    boxes_in_unit_range = False

    @property
    def resize(self) -> str:
        # rfdetr resizes every image to resolution x resolution, aspect not kept.
        return f"fixed={self.resolution}x{self.resolution}"

    @property
    def size_divisor(self) -> int:
        return self.backbone.size_divisor

    @property
    def num_encoder_layers(self) -> int:
        # No transformer encoder: the ViT and the projector feed the decoder directly.
        return 0

    @property
    def num_feature_levels(self) -> int:
        return 1

    def build(self) -> nn.Module:
        return RFDETR(self)

    @property
    def architecture_name(self) -> str:
        return f"rfdetr_{SIZE_NAMES.get(self.size.removesuffix('-tiny'), 'custom')}"

    @property
    def full_label(self) -> str:
        size = self.size.removesuffix("-tiny")
        return "RF-DETR" + ("" if size == "custom" else f"-{size}")

    @property
    def backbone_label(self) -> str:
        return self.backbone.label

    @property
    def attention_summary(self) -> str:
        return f"1 level, {self.dec_n_points} decoder points, {self.cross_attention_heads} cross-attention heads"

    @property
    def selection_strides(self) -> tuple[int, ...]:
        return (self.backbone.patch_size,)

    @property
    def deformable_strides(self) -> tuple[int, ...]:
        return self.selection_strides

    def selection_tokens(self, height: int, width: int) -> int:
        # The patch embedding is an unpadded strided convolution: whole patches only.
        patch = self.backbone.patch_size
        return (height // patch) * (width // patch)

    def estimated_peak_bytes(self, batch: int, height: int, width: int) -> int:
        """The ViT's global blocks hold [heads, T, T] logits and softmax over all T patch tokens, the other
        activations ~20 floats per token and channel; the decoder is small beside them."""
        tokens = math.ceil(height / self.backbone.patch_size) * math.ceil(width / self.backbone.patch_size)
        tokens += self.backbone.num_windows**2  # a CLS copy per window
        attention = 2 * self.backbone.num_heads * tokens**2 * 4
        return batch * (300 * height * width + attention + 20 * tokens * self.backbone.hidden_size * 4)

    def tiny(self) -> "RFDETRConfig":
        return self.replace(
            size=f"{self.size.removesuffix('-tiny')}-tiny",
            num_classes=6,
            num_queries=10,
            backbone=self.backbone.tiny(),
            resolution=128,
            projector_blocks=1,
            hidden_dim=32,
            num_heads=2,
            cross_attention_heads=4,
            num_decoder_layers=2,
            dim_feedforward=64,
        )


def training_only_parameters(config: RFDETRConfig, groups: int = 13) -> int:
    """Parameters an rfdetr model of ``config`` holds that inference does not use: the query features, reference
    deltas and encoder heads of the Group DETR groups beyond the first, and DINOv2's mask token."""
    width = config.hidden_dim
    # enc_output (Linear), enc_output_norm, enc_out_class_embed, enc_out_bbox_embed (3-layer MLP).
    encoder_heads = (width * width + width) + 2 * width + (width * config.num_classes + config.num_classes)
    encoder_heads += 2 * (width * width + width) + 4 * width + 4
    per_group = config.num_queries * (width + 4) + encoder_heads
    return (groups - 1) * per_group + config.backbone.hidden_size


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of [N, C, H, W] (rfdetr's projector ``LayerNorm``)."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return super().forward(features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvX(nn.Module):
    """Convolution without bias, channel LayerNorm (rfdetr's ``layer_norm=True``; the attribute keeps its ``bn``
    name), SiLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, eps: float):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False)
        self.bn = ChannelLayerNorm(out_channels, eps=eps)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.silu(self.bn(self.conv(features)))


class Bottleneck(nn.Module):
    """Two 3x3 ConvX, no shortcut (C2f's default)."""

    def __init__(self, channels: int, eps: float):
        super().__init__()
        self.cv1 = ConvX(channels, channels, 3, eps)
        self.cv2 = ConvX(channels, channels, 3, eps)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.cv2(self.cv1(features))


class C2f(nn.Module):
    """1x1 to two branches, ``blocks`` bottlenecks chained on the second, all outputs concatenated, 1x1 out."""

    def __init__(self, in_channels: int, out_channels: int, blocks: int, expansion: float, eps: float):
        super().__init__()
        self.branch = int(out_channels * expansion)
        self.cv1 = ConvX(in_channels, 2 * self.branch, 1, eps)
        self.cv2 = ConvX((2 + blocks) * self.branch, out_channels, 1, eps)
        self.m = nn.ModuleList(Bottleneck(self.branch, eps) for _ in range(blocks))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        outputs = list(self.cv1(features).split((self.branch, self.branch), 1))
        for bottleneck in self.m:
            outputs.append(bottleneck(outputs[-1]))
        return self.cv2(torch.cat(outputs, 1))


class Projector(nn.Module):
    """rfdetr's ``MultiScaleProjector`` with the P4 level only: ``stages.0`` = (C2f, channel LayerNorm)."""

    def __init__(self, config: RFDETRConfig):
        super().__init__()
        in_channels = config.backbone.hidden_size * len(config.backbone.out_indices)
        c2f = C2f(
            in_channels,
            config.hidden_dim,
            config.projector_blocks,
            config.projector_expansion,
            config.projector_norm_eps,
        )
        self.stages = nn.ModuleList([nn.Sequential(c2f, ChannelLayerNorm(config.hidden_dim, eps=1e-6))])

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """Stage maps [N, C_vit, h, w] -> the decoder's level [N, hidden, h, w]."""
        return self.stages[0](torch.cat(maps, 1))


class DinoV2(nn.Module):
    """rfdetr's wrapper (``backbone.0.encoder``) around the windowed ViT (``.encoder``)."""

    def __init__(self, config: RFDETRConfig):
        super().__init__()
        self.encoder = WindowedDINOv2(config.backbone, config.window_order)


class Backbone(nn.Module):
    def __init__(self, config: RFDETRConfig):
        super().__init__()
        self.encoder = DinoV2(config)
        self.projector = Projector(config)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder.encoder(images))


class DecoderLayer(nn.Module):
    """Self-attention, deformable cross-attention, ReLU FFN; post-norm."""

    def __init__(self, config: RFDETRConfig):
        super().__init__()
        width = config.hidden_dim
        self.self_attn = MultiheadAttention(width, config.num_heads)
        self.norm1 = nn.LayerNorm(width)
        self.cross_attn = MultiScaleDeformableAttention(
            width, config.num_feature_levels, config.cross_attention_heads, config.dec_n_points
        )
        self.norm2 = nn.LayerNorm(width)
        self.linear1 = nn.Linear(width, config.dim_feedforward)
        self.linear2 = nn.Linear(config.dim_feedforward, width)
        self.norm3 = nn.LayerNorm(width)

    def forward(self, target, query_pos, reference, memory, spatial_shapes, level_start_index):
        """target, query_pos [N, Q, C]; reference [N, Q, 1, 4] cxcywh; memory [N, S, C] -> [N, Q, C]."""
        query_key = target + query_pos
        target = self.norm1(target + self.self_attn(query_key, query_key, target))
        attended = self.cross_attn(target + query_pos, reference, memory, spatial_shapes, level_start_index)
        target = self.norm2(target + attended)
        return self.norm3(target + self.linear2(F.relu(self.linear1(target))))


def sine_embedding(boxes: torch.Tensor, features_per_coordinate: int) -> torch.Tensor:
    """boxes [N, Q, 4] (cx, cy, w, h) -> [N, Q, 4 * features] sin/cos embeddings in the order y, x, w, h (rfdetr's
    ``gen_sineembed_for_position``)."""
    dim_t = torch.arange(features_per_coordinate, dtype=boxes.dtype, device=boxes.device)
    dim_t = 10000 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / features_per_coordinate)
    parts = []
    for coordinate in (1, 0, 2, 3):
        angles = boxes[..., coordinate, None] * (2 * math.pi) / dim_t
        parts.append(torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), -1).flatten(-2))
    return torch.cat(parts, -1)


class TransformerDecoder(nn.Module):
    def __init__(self, config: RFDETRConfig):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_decoder_layers))
        self.norm = nn.LayerNorm(config.hidden_dim)
        self.ref_point_head = MLP(2 * config.hidden_dim, config.hidden_dim, config.hidden_dim, 2)


class Transformer(nn.Module):
    """The two-stage selection's heads of group 0 (``enc_*.0``) and the decoder, under rfdetr's ``transformer``."""

    def __init__(self, config: RFDETRConfig):
        super().__init__()
        width = config.hidden_dim
        self.decoder = TransformerDecoder(config)
        self.enc_output = nn.ModuleList([nn.Linear(width, width)])
        self.enc_output_norm = nn.ModuleList([nn.LayerNorm(width)])
        self.enc_out_class_embed = nn.ModuleList([nn.Linear(width, config.num_classes)])
        self.enc_out_bbox_embed = nn.ModuleList([MLP(width, width, 4, 3)])


def apply_box_deltas(boxes: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """rfdetr's ``bbox_reparam``: boxes [..., 4] cxcywh moved by deltas [..., 4] -> centre + delta * size,
    size * exp(delta)."""
    centre = deltas[..., :2] * boxes[..., 2:] + boxes[..., :2]
    size = deltas[..., 2:].exp() * boxes[..., 2:]
    return torch.cat([centre, size], -1)


class RFDETR(nn.Module):
    """Backbone (``backbone.0``), transformer, heads and learned queries under rfdetr's names."""

    def __init__(self, config: RFDETRConfig):
        super().__init__()
        if config.window_order not in WINDOW_ORDERS:
            raise DetrDeployError(f"RF-DETR: window_order {config.window_order!r} is not one of {WINDOW_ORDERS}")
        if config.hidden_dim % config.cross_attention_heads or config.hidden_dim % config.num_heads:
            raise DetrDeployError(
                f"RF-DETR: width {config.hidden_dim} is not divisible by {config.num_heads} self-attention and "
                f"{config.cross_attention_heads} cross-attention heads"
            )
        self.config = config
        self.backbone = nn.ModuleList([Backbone(config)])
        self.transformer = Transformer(config)
        self.class_embed = nn.Linear(config.hidden_dim, config.num_classes)
        self.bbox_embed = MLP(config.hidden_dim, config.hidden_dim, 4, 3)
        self.refpoint_embed = nn.Embedding(config.num_queries, 4)
        self.query_feat = nn.Embedding(config.num_queries, config.hidden_dim)

    def _check_size(self, images: torch.Tensor) -> None:
        if torch.compiler.is_compiling():
            return  # the export's symbolic sides are multiples by construction (exporters.onnx._side_dim)
        backbone, divisor = self.config.backbone, self.config.size_divisor
        height, width = images.shape[-2:]
        if height % divisor or width % divisor:
            raise DetrDeployError(
                f"RF-DETR takes heights and widths that are multiples of {divisor} (patch {backbone.patch_size} x "
                f"{backbone.num_windows} windows), not {height}x{width}; resize or pad the images"
            )

    def _select(self, memory: torch.Tensor, height, width) -> torch.Tensor:
        """The two-stage selection: memory [N, S, C] of an h x w level -> reference boxes [N, Q, 4] cxcywh."""
        xs = (torch.arange(width, dtype=memory.dtype, device=memory.device) + 0.5) / width
        ys = (torch.arange(height, dtype=memory.dtype, device=memory.device) + 0.5) / height
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        centres = torch.stack([grid_x, grid_y], -1).reshape(1, -1, 2)
        proposals = torch.cat([centres, torch.full_like(centres, 0.05)], -1)  # [1, S, 4], level 0
        valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
        proposals = proposals.masked_fill(~valid, 0.0)
        heads = self.transformer
        selected = heads.enc_output_norm[0](heads.enc_output[0](memory.masked_fill(~valid, 0.0)))
        scores = heads.enc_out_class_embed[0](selected).max(-1).values
        if not self.config.rank_invalid_proposals:
            scores = scores.masked_fill(~valid[..., 0], float("-inf"))
        # Near-equal scores may rank in another order on another backend (parity aligns queries for ranked models).
        index = torch.topk(scores, self.config.num_queries, dim=1).indices
        width_ = selected.shape[-1]
        chosen = torch.gather(selected, 1, index[..., None].expand(-1, -1, width_))
        chosen_proposals = torch.gather(
            proposals.expand(memory.shape[0], -1, -1), 1, index[..., None].expand(-1, -1, 4)
        )
        return apply_box_deltas(chosen_proposals, heads.enc_out_bbox_embed[0](chosen))

    def forward(self, images: torch.Tensor, padding_mask: torch.Tensor = None) -> dict[str, torch.Tensor]:
        """images [N, 3, H, W] ImageNet-normalized RGB, sides multiples of ``size_divisor`` -> pred_logits [N, Q, K]
        (raw; sigmoid per class), pred_boxes [N, Q, 4] (cxcywh, relative to the image)."""
        if padding_mask is not None:
            raise ValueError("RF-DETR takes no padding mask (its export has none): pass padding_mask=None")
        self._check_size(images)
        level = self.backbone[0](images)
        memory, level_shapes, spatial_shapes, level_start_index = flatten_levels([level])
        height, width = level_shapes[0]
        selected = self._select(memory, height, width)
        # The learned reference deltas move the selected boxes; the decoder keeps these boxes throughout.
        reference = apply_box_deltas(selected, self.refpoint_embed.weight[None])
        decoder = self.transformer.decoder
        query_pos = decoder.ref_point_head(sine_embedding(reference, self.config.hidden_dim // 2))
        target = self.query_feat.weight[None].expand(images.shape[0], -1, -1)
        for layer in decoder.layers:
            target = layer(target, query_pos, reference[:, :, None], memory, spatial_shapes, level_start_index)
        target = decoder.norm(target)
        logits = self.class_embed(target)
        boxes = apply_box_deltas(reference, self.bbox_embed(target))
        return {contract.OUTPUT_LOGITS: logits, contract.OUTPUT_BOXES: boxes}


# rfdetr checkpoint tensors inference does not use (besides the query groups beyond the first).
_TRAINING_ONLY = re.compile(
    r"^(?:_kp_active_mask|backbone\.0\.encoder\.encoder\.embeddings\.mask_token"
    r"|transformer\.(?:enc_output|enc_output_norm|enc_out_class_embed|enc_out_bbox_embed)\.(?:[1-9]\d*)\..*)$"
)


def inference_state(state: dict, num_queries: int) -> tuple[dict, list[str]]:
    """An rfdetr state dict as ``RFDETR`` holds it: the first ``num_queries`` rows of the query tables (group 0),
    group 0's encoder heads; (state, the keys dropped)."""
    dropped = [key for key in state if _TRAINING_ONLY.match(key)]
    kept = {key: value for key, value in state.items() if key not in set(dropped)}
    for key in ("refpoint_embed.weight", "query_feat.weight"):
        if key in kept and kept[key].shape[0] > num_queries:
            kept[key] = kept[key][:num_queries]
    return kept, dropped
