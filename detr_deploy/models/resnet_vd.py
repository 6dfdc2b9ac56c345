"""ResNet-vd (PaddlePaddle's "D" variant, RT-DETR's PResNet): a three-convolution stem and average-pooled
shortcuts. Parameter names follow lyuwenyu/RT-DETR (``backbone.conv1.conv1_1.*``, ``backbone.res_layers.*``)."""

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from detr_deploy.models.backbone import FrozenBatchNorm2d


@dataclass(frozen=True)
class ResNetVdConfig:
    """R18/R34: ``basic`` blocks; R50/R101: ``bottleneck`` blocks (expansion 4)."""

    blocks_per_stage: tuple[int, int, int, int] = (3, 4, 6, 3)
    block: str = "bottleneck"
    # Stem: 3 -> stem_width/2 (stride 2) -> stem_width/2 -> stem_width, then a stride-2 max pool.
    stem_width: int = 64
    # Stage i has base_width * 2**i channels inside its blocks (times 4 at a bottleneck's output).
    base_width: int = 64
    # Which backbone config this is, recorded in exports beside the fields (RT-DETR takes ResNet-vd or HGNetv2).
    kind: str = "resnet_vd"

    @property
    def depth(self) -> int:
        """18, 34, 50, 101: two (basic) or three (bottleneck) layers per block, plus stem and classifier."""
        return (2 if self.block == "basic" else 3) * sum(self.blocks_per_stage) + 2

    def stage_channels(self) -> tuple[int, int, int, int]:
        expansion = 1 if self.block == "basic" else 4
        return tuple(expansion * self.base_width * 2**stage for stage in range(4))

    def out_channels(self) -> tuple[int, int, int]:
        """Channels of the returned feature maps (stages 2, 3, 4)."""
        return self.stage_channels()[1:]

    @property
    def label(self) -> str:
        """'ResNet-50-vd'."""
        return f"ResNet-{self.depth}-vd"

    def structure(self) -> str:
        """What a checkpoint reader compares and reports: block type and counts, stem and stage widths."""
        return (
            f"{self.block} blocks {list(self.blocks_per_stage)}, stem {self.stem_width}, "
            f"stages {list(self.stage_channels())}"
        )

    @property
    def architecture_token(self) -> str:
        """The backbone's part of a zoo name: 'r50vd'."""
        return f"r{self.depth}vd"

    def build(self) -> "ResNetVd":
        return ResNetVd(self)

    def tiny(self) -> "ResNetVdConfig":
        # One block per stage: R18 and R34 (basic blocks), R50 and R101 (bottlenecks) come out the same, and share
        # exports.
        return dataclasses.replace(self, blocks_per_stage=(1, 1, 1, 1), stem_width=16, base_width=8)


class ConvNormLayer(nn.Module):
    """Convolution (no bias), batch norm, optional activation: the official ``ConvNormLayer`` (``conv``, ``norm``).

    The backbone passes ``FrozenBatchNorm2d``; the hybrid encoder, whose norms train, a plain ``nn.BatchNorm2d``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        activation: nn.Module = None,
        norm_layer: type = FrozenBatchNorm2d,
        groups: int = 1,
    ):
        super().__init__()
        padding = (kernel_size - 1) // 2
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False)
        self.norm = norm_layer(out_channels)
        self.act = nn.Identity() if activation is None else activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """Variant d: a stride-2 shortcut average-pools before its 1x1 convolution instead of striding it."""
    if stride == 1:
        return ConvNormLayer(in_channels, out_channels, 1, 1)
    return nn.Sequential(
        OrderedDict(
            pool=nn.AvgPool2d(2, 2, 0, ceil_mode=True),
            conv=ConvNormLayer(in_channels, out_channels, 1, 1),
        )
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (R18, R34). Only the first block of a stage has a projection shortcut (``short``)."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int, projection: bool):
        super().__init__()
        self.short = _shortcut(in_channels, width, stride) if projection else nn.Identity()
        self.branch2a = ConvNormLayer(in_channels, width, 3, stride, nn.ReLU())
        self.branch2b = ConvNormLayer(width, width, 3, 1)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.branch2b(self.branch2a(x)) + self.short(x))


class BottleNeck(nn.Module):
    """1x1, 3x3 (strided, as in variants b..d), 1x1 x4 (R50, R101)."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int, projection: bool):
        super().__init__()
        self.branch2a = ConvNormLayer(in_channels, width, 1, 1, nn.ReLU())
        self.branch2b = ConvNormLayer(width, width, 3, stride, nn.ReLU())
        self.branch2c = ConvNormLayer(width, width * self.expansion, 1, 1)
        self.short = _shortcut(in_channels, width * self.expansion, stride) if projection else nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.branch2c(self.branch2b(self.branch2a(x))) + self.short(x))


class Blocks(nn.Module):
    """One stage: its first block changes width (and stride, except in the first stage)."""

    def __init__(self, block: type, in_channels: int, width: int, count: int, stride: int):
        super().__init__()
        self.blocks = nn.ModuleList(
            block(
                in_channels if index == 0 else width * block.expansion, width, stride if index == 0 else 1, index == 0
            )
            for index in range(count)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class ResNetVd(nn.Module):
    """The official ``PResNet`` (variant d, frozen norms) returning stages 2, 3, 4 (strides 8, 16, 32).

    The official R18/R34 configs train their backbone norms (``freeze_norm: False``): in eval mode that is the same
    computation, and ``FrozenBatchNorm2d`` loads their ``num_batches_tracked`` keys by ignoring them."""

    def __init__(self, config: ResNetVdConfig):
        super().__init__()
        stem = config.stem_width
        self.conv1 = nn.Sequential(
            OrderedDict(
                conv1_1=ConvNormLayer(3, stem // 2, 3, 2, nn.ReLU()),
                conv1_2=ConvNormLayer(stem // 2, stem // 2, 3, 1, nn.ReLU()),
                conv1_3=ConvNormLayer(stem // 2, stem, 3, 1, nn.ReLU()),
            )
        )
        block = BasicBlock if config.block == "basic" else BottleNeck
        in_channels = stem
        self.res_layers = nn.ModuleList()
        for stage, (count, out_channels) in enumerate(zip(config.blocks_per_stage, config.stage_channels())):
            width = config.base_width * 2**stage
            self.res_layers.append(Blocks(block, in_channels, width, count, stride=1 if stage == 0 else 2))
            in_channels = out_channels
        self.out_channels = config.stage_channels()[1:]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """[N, 3, H, W] -> [N, C_s, H / s, W / s] for strides s = 8, 16, 32."""
        x = F.max_pool2d(self.conv1(images), kernel_size=3, stride=2, padding=1)
        features = []
        for stage, layer in enumerate(self.res_layers):
            x = layer(x)
            if stage > 0:
                features.append(x)
        return features
