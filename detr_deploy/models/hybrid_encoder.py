"""RT-DETR's hybrid encoder (lyuwenyu/RT-DETR ``HybridEncoder``): AIFI, one transformer encoder layer over the
stride-32 level, then CCFM, a top-down and bottom-up fusion of the levels with CSP blocks of RepVGG blocks.

D-FINE and DEIM (Peterande/D-FINE ``HybridEncoder``) keep AIFI and the fusion order but fuse with GELAN blocks
(``RepNCSPELAN4``: a split, two CSP-RepVGG branches each followed by a 3x3, all concatenated), downsample with
``SCDown`` (a 1x1 then a depthwise strided 3x3) and leave the lateral 1x1 convolutions without activation: the
``fusion`` argument, "csp" or "elan", is that choice (data of the family's config, read once at construction).

Parameter names follow the official code. RT-DETR v1 and v2 differ only in the input projections' sub-module names
(``input_proj.i.0`` / ``.1`` in v1, ``input_proj.i.conv`` / ``.norm`` in v2, and in D-FINE).
"""

import copy
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from detr_deploy.models.resnet_vd import ConvNormLayer
from detr_deploy.models.transformer import TransformerEncoderLayer


def conv_norm_names(version: int) -> tuple[str, str]:
    """Sub-module names of an official conv + batch-norm ``nn.Sequential``: v1 indexes it, v2 names it."""
    return ("0", "1") if version == 1 else ("conv", "norm")


def conv_norm(in_channels: int, out_channels: int, version: int) -> nn.Sequential:
    """A 1x1 convolution (no bias) and a batch norm, keyed as the official ``version`` keys them."""
    conv_name, norm_name = conv_norm_names(version)
    return nn.Sequential(
        OrderedDict(
            [
                (conv_name, nn.Conv2d(in_channels, out_channels, 1, bias=False)),
                (norm_name, nn.BatchNorm2d(out_channels)),
            ]
        )
    )


def _conv_norm(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, activation: bool = True, groups: int = 1
):
    """The encoder's ConvNormLayer: a trained (not frozen) batch norm and SiLU."""
    return ConvNormLayer(
        in_channels,
        out_channels,
        kernel_size,
        stride,
        nn.SiLU() if activation else None,
        norm_layer=nn.BatchNorm2d,
        groups=groups,
    )


class RepVggBlock(nn.Module):
    """3x3 and 1x1 conv-norm branches summed, then SiLU (the training-time form; checkpoints hold both)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = _conv_norm(channels, channels, 3, activation=False)
        self.conv2 = _conv_norm(channels, channels, 1, activation=False)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv1(x) + self.conv2(x))


class CSPRepLayer(nn.Module):
    """Two 1x1 branches, one through ``num_blocks`` RepVGG blocks, summed; a 1x1 back to ``out_channels`` when the
    hidden width (``out_channels * expansion``) differs."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, expansion: float):
        super().__init__()
        hidden = int(out_channels * expansion)
        self.conv1 = _conv_norm(in_channels, hidden, 1)
        self.conv2 = _conv_norm(in_channels, hidden, 1)
        self.bottlenecks = nn.Sequential(*(RepVggBlock(hidden) for _ in range(num_blocks)))
        self.conv3 = _conv_norm(hidden, out_channels, 1) if hidden != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C_in, H, W] -> [N, C_out, H, W]."""
        return self.conv3(self.bottlenecks(self.conv1(x)) + self.conv2(x))


class RepNCSPELAN4(nn.Module):
    """D-FINE's GELAN fusion block: a 1x1 to ``2 * hidden`` split in halves; the second half goes through a
    CSP-RepVGG layer and a 3x3 (``cv2``), that through another pair (``cv3``); the two halves and both branch outputs
    are concatenated and squeezed to ``out_channels`` by a 1x1 (``cv4``)."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int, branch: int, num_blocks: int):
        super().__init__()
        self.half = hidden // 2
        self.cv1 = _conv_norm(in_channels, hidden, 1)
        self.cv2 = nn.Sequential(CSPRepLayer(self.half, branch, num_blocks, 1.0), _conv_norm(branch, branch, 3))
        self.cv3 = nn.Sequential(CSPRepLayer(branch, branch, num_blocks, 1.0), _conv_norm(branch, branch, 3))
        self.cv4 = _conv_norm(hidden + 2 * branch, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C_in, H, W] -> [N, C_out, H, W]."""
        first, second = self.cv1(x).split((self.half, self.half), 1)
        branch2 = self.cv2(second)
        branch3 = self.cv3(branch2)
        return self.cv4(torch.cat([first, second, branch2, branch3], 1))


class SCDown(nn.Module):
    """D-FINE's downsampling: a 1x1 convolution, then a depthwise ``kernel_size`` convolution of ``stride``; batch
    norm after each, no activation."""

    def __init__(self, channels: int, kernel_size: int = 3, stride: int = 2):
        super().__init__()
        self.cv1 = _conv_norm(channels, channels, 1, activation=False)
        self.cv2 = _conv_norm(channels, channels, kernel_size, stride, activation=False, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv2(self.cv1(x))


def _fusion_block(fusion: str, hidden_dim: int, num_blocks: int, expansion: float) -> nn.Module:
    """One CCFM fusion block taking two concatenated ``hidden_dim`` maps: RT-DETR's CSP layer or D-FINE's GELAN."""
    if fusion == "csp":
        return CSPRepLayer(2 * hidden_dim, hidden_dim, num_blocks, expansion)
    # The official RepNCSPELAN4(c1=2h, c2=h, c3=2h, c4=round(expansion * h // 2), n).
    return RepNCSPELAN4(2 * hidden_dim, hidden_dim, 2 * hidden_dim, round(expansion * hidden_dim // 2), num_blocks)


def _downsample(fusion: str, hidden_dim: int) -> nn.Module:
    """RT-DETR: a strided 3x3 with SiLU. D-FINE: ``SCDown`` inside a one-module Sequential (official names
    ``downsample_convs.i.0.cv1``)."""
    if fusion == "csp":
        return _conv_norm(hidden_dim, hidden_dim, 3, 2)
    return nn.Sequential(SCDown(hidden_dim, 3, 2))


FUSIONS = ("csp", "elan")


class TransformerEncoder(nn.Module):
    def __init__(self, layer: TransformerEncoderLayer, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))

    def forward(self, src: torch.Tensor, pos_embed: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            src = layer(src, pos_embed)
        return src


# How the AIFI position embedding numbers the stride-32 tokens (``HybridEncoder(positions=...)``).
POSITIONS = ("official", "row_major")


def sincos_position_embedding(
    height, width, embed_dim: int, temperature: float, device, positions: str = "official"
) -> torch.Tensor:
    """The official ``build_2d_sincos_position_embedding(w, h)`` computed from the (symbolic) feature size:
    [1, H*W, embed_dim] = [sin(a), cos(a), sin(b), cos(b)], each embed_dim/4 wide.

    ``positions="official"`` is faithful to the official flattening: it enumerates a (w, h) grid, so token k (row
    k // W, column k % W of the feature) gets a = k // H and b = k % H. For square features a is the row and b the
    column; for others the official embedding is not the token's (x, y), and the released weights were trained with
    it as it is. ``positions="row_major"`` gives each token its own row and column (a = k // W, b = k % W), as
    Ultralytics' AIFI computes it (8.4.190): the same numbers on square features, others on non-square ones.
    """
    if embed_dim % 4:
        raise ValueError(f"embed_dim {embed_dim} must be divisible by 4 for the 2D sin-cos position embedding")
    if positions not in POSITIONS:
        raise ValueError(f"positions {positions!r} is not one of {POSITIONS}")
    pos_dim = embed_dim // 4
    omega = 1.0 / temperature ** (torch.arange(pos_dim, dtype=torch.float32, device=device) / pos_dim)
    # The grid enumerated (outer, inner): token k is (k // inner, k % inner).
    outer, inner = (width, height) if positions == "official" else (height, width)
    first = torch.arange(outer, dtype=torch.float32, device=device).view(-1, 1).expand(outer, inner).reshape(-1)
    second = torch.arange(inner, dtype=torch.float32, device=device).view(1, -1).expand(outer, inner).reshape(-1)
    out_first, out_second = first[:, None] * omega[None], second[:, None] * omega[None]
    return torch.cat([out_first.sin(), out_first.cos(), out_second.sin(), out_second.cos()], dim=1)[None]


class HybridEncoder(nn.Module):
    """Input projections, AIFI on the last (stride-32) level, CCFM fusion: as many levels of ``hidden_dim`` out as
    come in (three; D-FINE-N two)."""

    def __init__(
        self,
        in_channels: tuple[int, ...],
        hidden_dim: int,
        nhead: int,
        dim_feedforward: int,
        num_encoder_layers: int,
        expansion: float,
        depth_mult: float,
        version: int,
        pe_temperature: float = 10000.0,
        fusion: str = "csp",
        positions: str = "official",
    ):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion {fusion!r} is not one of {FUSIONS}")
        if positions not in POSITIONS:
            raise ValueError(f"positions {positions!r} is not one of {POSITIONS}")
        self.hidden_dim = hidden_dim
        self.pe_temperature = pe_temperature
        self.positions = positions
        self.input_proj = nn.ModuleList(conv_norm(channels, hidden_dim, version) for channels in in_channels)
        # One encoder per level in the official ``use_encoder_idx`` ([2], the stride-32 level, in every config).
        # Post-norm with GELU (``normalize_before=False`` in every official config).
        layer = TransformerEncoderLayer(hidden_dim, nhead, dim_feedforward, activation=F.gelu)
        self.encoder = nn.ModuleList([TransformerEncoder(layer, num_encoder_layers)])
        num_blocks = round(3 * depth_mult)
        num_fusions = len(in_channels) - 1
        # D-FINE's lateral convolutions have no activation (``ConvNormLayer_fuse(h, h, 1, 1)``).
        lateral_activation = fusion == "csp"
        self.lateral_convs = nn.ModuleList(
            _conv_norm(hidden_dim, hidden_dim, 1, activation=lateral_activation) for _ in range(num_fusions)
        )
        self.fpn_blocks = nn.ModuleList(
            _fusion_block(fusion, hidden_dim, num_blocks, expansion) for _ in range(num_fusions)
        )
        self.downsample_convs = nn.ModuleList(_downsample(fusion, hidden_dim) for _ in range(num_fusions))
        self.pan_blocks = nn.ModuleList(
            _fusion_block(fusion, hidden_dim, num_blocks, expansion) for _ in range(num_fusions)
        )

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Backbone features [N, C_l, H_l, W_l] at strides 8, 16, 32 -> [N, hidden_dim, H_l, W_l] at the same."""
        projected = [projection(feature) for projection, feature in zip(self.input_proj, features)]
        last = projected[-1]
        batch, _, height, width = last.shape
        pos_embed = sincos_position_embedding(
            height, width, self.hidden_dim, self.pe_temperature, last.device, self.positions
        )
        memory = self.encoder[0](last.flatten(2).permute(0, 2, 1), pos_embed)
        projected[-1] = memory.permute(0, 2, 1).reshape(batch, self.hidden_dim, height, width)

        # Top-down: the coarser map, laterally convolved (and kept so), upsampled x2 and fused with the finer one.
        inner_outs = [projected[-1]]
        for step, fpn_block in enumerate(self.fpn_blocks):
            high = self.lateral_convs[step](inner_outs[0])
            inner_outs[0] = high
            upsampled = F.interpolate(high, scale_factor=2.0, mode="nearest")
            inner_outs.insert(0, fpn_block(torch.cat([upsampled, projected[-2 - step]], dim=1)))
        # Bottom-up: downsample x2 with a strided 3x3 and fuse with the next coarser top-down output.
        outs = [inner_outs[0]]
        for step, pan_block in enumerate(self.pan_blocks):
            downsampled = self.downsample_convs[step](outs[-1])
            outs.append(pan_block(torch.cat([downsampled, inner_outs[step + 1]], dim=1)))
        return outs
