"""ResNet backbone with frozen batch norm and torchvision's parameter names (torchvision itself is not needed).

The official DETR and Deformable-DETR checkpoints store the backbone under ``backbone.0.body.*`` with
torchvision's names; ``backbone.1`` is the (parameter-free) position encoding.
"""

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class BackboneConfig:
    """ResNet shape: blocks per stage, stem width, and whether the last stage is dilated (DC5)."""

    blocks_per_stage: tuple[int, int, int, int] = (3, 4, 6, 3)
    base_width: int = 64
    dilate_last_stage: bool = False

    def stage_channels(self) -> tuple[int, int, int, int]:
        """Output channels of layer1..layer4 (Bottleneck expansion 4)."""
        return tuple(4 * self.base_width * 2**stage for stage in range(4))

    def stage_strides(self) -> tuple[int, int, int, int]:
        return (4, 8, 16, 16 if self.dilate_last_stage else 32)

    @property
    def depth(self) -> int:
        """18, 50, 101: three layers per bottleneck, plus stem and classifier."""
        return 3 * sum(self.blocks_per_stage) + 2

    @property
    def label(self) -> str:
        """'ResNet-50', 'ResNet-101 DC5'."""
        return f"ResNet-{self.depth}" + (" DC5" if self.dilate_last_stage else "")

    def tiny(self) -> "BackboneConfig":
        """One block per stage and width 8, keeping ResNet-101's deeper third stage recognizably deeper."""
        return dataclasses.replace(
            self, base_width=8, blocks_per_stage=(1, 1, 2 if self.blocks_per_stage[2] > 6 else 1, 1)
        )


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine parameters, stored as buffers like the official code."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # torchvision's BatchNorm2d checkpoints carry a counter this module has no use for.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> [N, C, H, W]."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck (stride on the 3x3 convolution)."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1, dilation: int = 1, downsample: nn.Module = None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = FrozenBatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = FrozenBatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * self.expansion, 1, bias=False)
        self.bn3 = FrozenBatchNorm2d(width * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetBody(nn.Module):
    """ResNet without the classifier; returns the outputs of the stages named in ``return_stages`` (1..4)."""

    def __init__(self, config: BackboneConfig, return_stages: tuple[int, ...]):
        super().__init__()
        self.return_stages = tuple(return_stages)
        width = config.base_width
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = FrozenBatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels, dilation = width, 1
        for stage, num_blocks in enumerate(config.blocks_per_stage):
            stage_width = width * 2**stage
            stride = 1 if stage == 0 else 2
            previous_dilation = dilation
            if stage == 3 and config.dilate_last_stage:
                # DC5: trade the last stride for dilation, as torchvision's replace_stride_with_dilation does.
                dilation, stride = dilation * stride, 1
            downsample = None
            if stride != 1 or in_channels != stage_width * Bottleneck.expansion:
                downsample = nn.Sequential(
                    nn.Conv2d(in_channels, stage_width * Bottleneck.expansion, 1, stride=stride, bias=False),
                    FrozenBatchNorm2d(stage_width * Bottleneck.expansion),
                )
            blocks = [Bottleneck(in_channels, stage_width, stride, previous_dilation, downsample)]
            in_channels = stage_width * Bottleneck.expansion
            blocks += [Bottleneck(in_channels, stage_width, dilation=dilation) for _ in range(1, num_blocks)]
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """[N, 3, H, W] -> one [N, C_s, H / stride_s, W / stride_s] tensor per returned stage."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        features = []
        for stage in range(1, max(self.return_stages) + 1):
            x = getattr(self, f"layer{stage}")(x)
            if stage in self.return_stages:
                features.append(x)
        return features


class Backbone(nn.Module):
    """Holds the ResNet under ``body`` so checkpoint keys read ``backbone.0.body.*``."""

    def __init__(self, config: BackboneConfig, return_stages: tuple[int, ...]):
        super().__init__()
        self.body = ResNetBody(config, return_stages)
        self.num_channels = [config.stage_channels()[stage - 1] for stage in return_stages]
        self.strides = [config.stage_strides()[stage - 1] for stage in return_stages]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.body(images)


class BackboneWithPosition(nn.Sequential):
    """``[0]`` the backbone, ``[1]`` the position encoding: the official ``Joiner`` layout."""

    def __init__(self, backbone: Backbone, position_encoding: nn.Module):
        super().__init__(backbone, position_encoding)

    def forward(
        self, images: torch.Tensor, padding_mask: torch.Tensor = None
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """images [N, 3, H, W], padding_mask [N, H, W] bool or None -> (features [N, C_s, H_s, W_s] per stage,
        position encodings [N or 1, D, H_s, W_s], padding masks [N, H_s, W_s] per stage or Nones)."""
        features = self[0](images)
        masks = [downsample_mask(padding_mask, feature) for feature in features]
        return features, [self[1](feature, mask) for feature, mask in zip(features, masks)], masks


def downsample_mask(padding_mask: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
    """padding_mask [N, H, W] bool -> [N, H_s, W_s] at ``feature``'s size; None stays None.

    Nearest neighbour as the official ``F.interpolate`` (source index floor(i * H / H_s)), but in integer arithmetic:
    the exported Resize computes the same index in floating point from the inverse scale and lands one row off at
    exact boundaries (measured: 336 -> 6 rows), which moved whole rows of a padded image in or out of its mask.
    """
    if padding_mask is None:
        return None
    height, width = padding_mask.shape[-2:]
    out_height, out_width = feature.shape[-2:]
    rows = torch.arange(out_height, device=padding_mask.device) * height // out_height
    columns = torch.arange(out_width, device=padding_mask.device) * width // out_width
    return padding_mask[:, rows][:, :, columns]
