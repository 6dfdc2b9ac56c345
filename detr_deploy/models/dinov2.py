"""RF-DETR's backbone: a DINOv2 ViT (rfdetr's ``dinov2_windowed_*``, no register tokens) whose blocks alternate
windowed and global self-attention, inference only. Parameter names are rfdetr's
(``WindowedDinov2WithRegistersBackbone``), which transformers' ``save_pretrained`` of ``rf_detr`` writes too.

The patch grid (H / patch x W / patch) is cut into ``num_windows`` x ``num_windows`` windows; each window is a
sequence of its own, led by a copy of the CLS token. Windowed blocks attend within a window; global blocks join the
windows of an image into one sequence (CLS copies included), attend, and split them again. The stages named in
``out_indices`` (hidden state k = output of block k - 1) are layer-normed, stripped of CLS, put back on the patch grid
and returned as [N, C, H / patch, W / patch] maps. Sides must be multiples of ``patch_size * num_windows``.

Position embeddings are a learned ``positional_grid`` x ``positional_grid`` grid (plus the CLS one), resized to the
patch grid of every input with PyTorch's antialiased bicubic interpolation, as both peers do. That resize is written
here as two interpolation matrices computed from the (symbolic) grid size, so the export bakes no size in and needs
no Resize node (``antialiased_bicubic_weights``).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# How a grid of patch tokens is cut into windows: "rows" (rfdetr: each window a block of whole rows and columns of
# patches) or "transformers" (transformers 5.x's ``RfDetrDinov2Embeddings.window_partition``, which views the grid as
# [windows, W / windows, windows, H / windows]: the same windows on square grids, other token groups on non-square
# ones). A checkpoint computes what its own library computes, so the reader records which one it came from.
WINDOW_ORDERS = ("rows", "transformers")


def legacy_window_blocks(out_indices: tuple[int, ...]) -> tuple[int, ...]:
    """The blocks rfdetr and transformers run windowed: every block index up to the last output stage number that is
    not itself an output stage number (both peers mix stage numbers and block indices this way)."""
    return tuple(sorted(set(range(out_indices[-1] + 1)) - set(out_indices)))


@dataclass(frozen=True)
class DINOv2Config:
    """Defaults are RF-DETR-N's DINOv2-S: 12 blocks of width 384, patch 16, 2 x 2 windows, a 24 x 24 position grid."""

    # The DINOv2 size (small, base): widths, depth and heads follow it in the zoo.
    name: str = "small"
    hidden_size: int = 384
    num_layers: int = 12
    num_heads: int = 6
    mlp_ratio: int = 4
    patch_size: int = 16
    num_windows: int = 2
    # Side of the learned position-embedding grid (rfdetr's positional_encoding_size).
    positional_grid: int = 24
    # Stage numbers (1-based: the output of block k - 1) the projector takes.
    out_indices: tuple[int, ...] = (3, 6, 9, 12)
    # Blocks that attend within windows; the others attend globally.
    window_blocks: tuple[int, ...] = (0, 1, 2, 4, 5, 7, 8, 10, 11)
    layer_norm_eps: float = 1e-6

    kind = "dinov2_windowed"

    @property
    def label(self) -> str:
        return f"DINOv2-{self.name} (patch {self.patch_size}, {self.num_windows}x{self.num_windows} windows)"

    @property
    def size_divisor(self) -> int:
        return self.patch_size * self.num_windows

    def structure(self) -> str:
        return (
            f"{self.num_layers} blocks of width {self.hidden_size}, {self.num_heads} heads, global blocks "
            f"{[index for index in range(self.num_layers) if index not in self.window_blocks]}, stages "
            f"{list(self.out_indices)}"
        )

    def tiny(self) -> "DINOv2Config":
        """Four blocks of width 32, stages 1..4 (block 0 windowed: both kinds of block run), a 4 x 4 position grid
        (so every test size interpolates it); patch and windows keep their product at 32 or below."""
        patch = {4: 8}.get(self.num_windows, 16)
        return DINOv2Config(
            name=self.name,
            hidden_size=32,
            num_layers=4,
            num_heads=2,
            mlp_ratio=self.mlp_ratio,
            patch_size=patch,
            num_windows=self.num_windows,
            positional_grid=4,
            out_indices=(1, 2, 3, 4),
            window_blocks=legacy_window_blocks((1, 2, 3, 4)),
            layer_norm_eps=self.layer_norm_eps,
        )


def _cubic_aa(x: torch.Tensor) -> torch.Tensor:
    """PyTorch's antialiasing bicubic filter (Keys, a = -0.5, as PIL): 0 from |x| = 2 on."""
    a = -0.5
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def antialiased_bicubic_weights(input_size: int, reference: torch.Tensor) -> torch.Tensor:
    """The [out, input_size] matrix of ``F.interpolate(mode="bicubic", antialias=True, align_corners=False)`` along
    one axis, out = reference.shape[0] (a symbolic size in the export; ``reference`` is any vector that long).

    As ATen's ``_upsample_bicubic2d_aa``: output i is centred at (i + 0.5) * s in input coordinates, s = input /
    out; input j weighs filter((j + 0.5 - centre) / max(s, 1)), normalized over the inputs. Inputs beyond the
    filter's support get weight 0, so weighing every input equals ATen's clipped window."""
    out_index = torch.arange(reference.shape[0], dtype=reference.dtype, device=reference.device)
    out_size = torch.ones_like(out_index).sum()
    scale = input_size / out_size
    centre = (out_index[:, None] + 0.5) * scale
    inputs = torch.arange(input_size, dtype=reference.dtype, device=reference.device)
    weights = _cubic_aa((inputs[None, :] + 0.5 - centre) / scale.clamp(min=1.0))
    return weights / weights.sum(-1, keepdim=True)


class PatchEmbeddings(nn.Module):
    def __init__(self, config: DINOv2Config):
        super().__init__()
        self.projection = nn.Conv2d(3, config.hidden_size, config.patch_size, stride=config.patch_size)


class Embeddings(nn.Module):
    """CLS token, position embeddings (a grid plus CLS), patch embedding."""

    def __init__(self, config: DINOv2Config):
        super().__init__()
        self.config = config
        self.cls_token = nn.Parameter(torch.randn(1, 1, config.hidden_size))
        self.position_embeddings = nn.Parameter(torch.randn(1, config.positional_grid**2 + 1, config.hidden_size))
        self.patch_embeddings = PatchEmbeddings(config)

    def patch_positions(self, grid_height: torch.Tensor, grid_width: torch.Tensor) -> torch.Tensor:
        """The position grid resized to grid_height x grid_width patches (vectors of those lengths) -> [h * w, C]."""
        side, width = self.config.positional_grid, self.config.hidden_size
        rows = antialiased_bicubic_weights(side, grid_height)  # [h, side]
        columns = antialiased_bicubic_weights(side, grid_width)  # [w, side]
        # Two 2-D products (OpenVINO's CPU plugin refuses MatMuls of inputs of different ranks).
        grid = self.position_embeddings[0, 1:].reshape(side, side * width)  # [side_y, (side_x, C)]
        along_rows = (rows @ grid).reshape(-1, side, width).transpose(1, 2).reshape(-1, side)  # [(h, C), side_x]
        resized = (along_rows @ columns.transpose(0, 1)).reshape(-1, width, grid_width.shape[0])  # [h, C, w]
        return resized.transpose(1, 2).reshape(-1, width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, H, W] -> patch tokens with positions [N, h * w, C] (h = H / patch, w = W / patch), and the
        CLS token with its position [1, 1, C]."""
        patches = self.patch_embeddings.projection(images)
        grid_height = patches[0, 0, :, 0]
        grid_width = patches[0, 0, 0, :]
        tokens = patches.flatten(2).transpose(1, 2) + self.patch_positions(grid_height, grid_width)
        cls = self.cls_token + self.position_embeddings[:, :1]
        return tokens, cls


class SelfAttention(nn.Module):
    def __init__(self, config: DINOv2Config):
        super().__init__()
        self.num_heads = config.num_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, T, C] -> [B, T, C] (before the output projection)."""
        batch, _, width = tokens.shape
        head_dim = width // self.num_heads

        def heads(projection):
            return projection(tokens).view(batch, -1, self.num_heads, head_dim).transpose(1, 2)

        query, key, value = heads(self.query), heads(self.key), heads(self.value)
        attention = torch.softmax((query * head_dim**-0.5) @ key.transpose(-2, -1), dim=-1)
        return (attention @ value).transpose(1, 2).reshape(batch, -1, width)


class AttentionOutput(nn.Module):
    def __init__(self, config: DINOv2Config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)


class Attention(nn.Module):
    def __init__(self, config: DINOv2Config):
        super().__init__()
        self.attention = SelfAttention(config)
        self.output = AttentionOutput(config)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.output.dense(self.attention(tokens))


class LayerScale(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.lambda1 = nn.Parameter(torch.ones(width))


class MLP(nn.Module):
    def __init__(self, config: DINOv2Config):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.hidden_size * config.mlp_ratio)
        self.fc2 = nn.Linear(config.hidden_size * config.mlp_ratio, config.hidden_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(tokens)))


class Block(nn.Module):
    """Pre-norm ViT block with layer scale; a global block joins an image's windows for its attention."""

    def __init__(self, config: DINOv2Config, index: int):
        super().__init__()
        self.windows = config.num_windows**2
        self.is_global = index not in config.window_blocks
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = Attention(config)
        self.layer_scale1 = LayerScale(config.hidden_size)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MLP(config)
        self.layer_scale2 = LayerScale(config.hidden_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """[N * windows, T, C] -> the same shape."""
        attended = self.norm1(tokens)
        if self.is_global and self.windows > 1:
            batch_windows, length, width = tokens.shape
            joined = attended.reshape(-1, self.windows * length, width)
            attended = self.attention(joined).reshape(batch_windows, length, width)
        else:
            attended = self.attention(attended)
        tokens = tokens + attended * self.layer_scale1.lambda1
        return tokens + self.mlp(self.norm2(tokens)) * self.layer_scale2.lambda1


class Encoder(nn.Module):
    def __init__(self, config: DINOv2Config):
        super().__init__()
        self.layer = nn.ModuleList(Block(config, index) for index in range(config.num_layers))


class WindowedDINOv2(nn.Module):
    """rfdetr's ``WindowedDinov2WithRegistersBackbone``: ``embeddings``, ``encoder.layer``, ``layernorm``."""

    def __init__(self, config: DINOv2Config, window_order: str = "rows"):
        super().__init__()
        if window_order not in WINDOW_ORDERS:
            raise ValueError(f"window_order {window_order!r} is not one of {WINDOW_ORDERS}")
        if max(config.out_indices) > config.num_layers or min(config.out_indices) < 1:
            raise ValueError(f"out_indices {config.out_indices} are not stages 1..{config.num_layers}")
        self.config = config
        self.window_order = window_order
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def _partition(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """[N, h * w, C] patch tokens -> [N * windows^2, (h / windows) * (w / windows), C]."""
        n = self.config.num_windows
        if self.window_order == "rows":
            grid = tokens.reshape(-1, height // n, n, width // n, tokens.shape[-1]).permute(0, 2, 1, 3, 4)
        else:
            grid = tokens.reshape(-1, n, width // n, n, height // n, tokens.shape[-1]).transpose(2, 3)
        return grid.reshape(-1, (height // n) * (width // n), tokens.shape[-1])

    def _unpartition(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """[N * windows^2, window tokens, C] -> [N, C, h, w] (the same in both peers)."""
        n = self.config.num_windows
        grid = tokens.reshape(-1, n, height // n, width // n, tokens.shape[-1]).permute(0, 2, 1, 3, 4)
        return grid.reshape(-1, height, width, tokens.shape[-1]).permute(0, 3, 1, 2)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images [N, 3, H, W] (sides multiples of patch x windows) -> one [N, C, H / patch, W / patch] map per
        output stage."""
        patch = self.config.patch_size
        height, width = images.shape[-2] // patch, images.shape[-1] // patch
        tokens, cls = self.embeddings(images)
        if self.config.num_windows > 1:
            tokens = self._partition(tokens, height, width)
        hidden = torch.cat([cls.expand(tokens.shape[0], -1, -1), tokens], 1)
        maps = []
        for index, block in enumerate(self.encoder.layer):
            hidden = block(hidden)
            if index + 1 in self.config.out_indices:
                maps.append(self._unpartition(self.layernorm(hidden)[:, 1:], height, width))
        return maps
