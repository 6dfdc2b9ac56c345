"""HGNetv2 (PaddlePaddle's PP-HGNetV2), the backbone of D-FINE and DEIM and of RT-DETR-L/X.

Parameter names follow the official D-FINE code (Peterande/D-FINE ``src/nn/backbone/hgnetv2.py``), so an official
D-FINE/DEIM checkpoint loads once its ``backbone.`` prefix is stripped:

    stem.stem1.conv.weight, stem.stem1.bn.{weight,bias,running_mean,running_var}, stem.stem1.lab.{scale,bias}
    stages.1.downsample.conv.weight, stages.1.downsample.bn.*                        (no LAB on the downsample)
    stages.0.blocks.0.layers.0.conv.weight, ....layers.0.bn.*, ....layers.0.lab.*     (plain layers)
    stages.2.blocks.0.layers.0.conv1.{conv,bn}.*, ....layers.0.conv2.{conv,bn,lab}.*  (light layers)
    stages.0.blocks.0.aggregation.{0,1}.{conv,bn,lab}.*                               (squeeze, excitation)

``lab`` keys exist only where ``use_lab`` is set and the layer has an activation. transformers' ``HGNetV2Backbone``
names the same tensors differently (``embedder.``, ``encoder.stages.``, ``convolution``, ``normalization``):
``transformers_to_official_keys`` renames them.

Batch norm is ``FrozenBatchNorm2d`` (the official detectors freeze the backbone norms; in eval mode a trained
``nn.BatchNorm2d`` computes the same): it exports as a per-channel multiply-add that runtimes fold into the
convolution before it.
"""

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from detr_deploy.models.backbone import FrozenBatchNorm2d


@dataclass(frozen=True)
class HGNetV2StageConfig:
    """One stage, in the column order of the official ``stage_config`` rows.

    Every block of the stage concatenates its input with ``num_layers`` outputs of ``mid_channels`` each, then
    squeezes the concatenation to ``out_channels // 2`` and excites it back to ``out_channels`` (1x1 convolutions).
    The first block maps ``in_channels`` to ``out_channels``; the others keep ``out_channels`` and add their input.
    """

    in_channels: int
    mid_channels: int
    out_channels: int
    num_blocks: int
    # A stride-2 depthwise 3x3 convolution (with batch norm, without activation) before the blocks.
    downsample: bool
    # Light layers: a 1x1 convolution (no activation) then a depthwise kxk convolution, instead of one kxk convolution.
    light_block: bool
    kernel_size: int
    num_layers: int


# B4 and B5 stage rows, shared with RT-DETR-L and RT-DETR-X (see HGNETV2_VARIANTS).
_B4_ROWS = [
    [48, 48, 128, 1, False, False, 3, 6],
    [128, 96, 512, 1, True, False, 3, 6],
    [512, 192, 1024, 3, True, True, 5, 6],
    [1024, 384, 2048, 1, True, True, 5, 6],
]
_B5_ROWS = [
    [64, 64, 128, 1, False, False, 3, 6],
    [128, 128, 512, 2, True, False, 3, 6],
    [512, 256, 1024, 5, True, True, 5, 6],
    [1024, 512, 2048, 2, True, True, 5, 6],
]


@dataclass(frozen=True)
class HGNetV2Config:
    """The backbone as data. ``out_stages`` counts stages from 1 (transformers' ``stage1``..``stage4``); the official
    ``return_idx`` counts from 0: (2, 3, 4) here is D-FINE's ``return_idx: [1, 2, 3]`` (strides 8, 16, 32)."""

    name: str = "B4"
    # (image channels, stem width, stem output channels); the stem width must be even (stem2a halves it).
    stem_channels: tuple[int, int, int] = (3, 32, 48)
    # Default: B4, as transformers' HGNetV2Config defaults.
    stages: tuple[HGNetV2StageConfig, ...] = tuple(HGNetV2StageConfig(*row) for row in _B4_ROWS)
    # Learnable affine block: a scalar scale and bias after every activation (PP-HGNetV2 B0..B3).
    use_lab: bool = False
    out_stages: tuple[int, ...] = (2, 3, 4)
    # Which backbone config this is, recorded in exports beside the fields (RT-DETR takes ResNet-vd or HGNetv2).
    kind: str = "hgnetv2"

    def __post_init__(self):
        # Read back from an export's JSON, the stages are dicts.
        stages = tuple(HGNetV2StageConfig(**s) if isinstance(s, Mapping) else s for s in self.stages)
        object.__setattr__(self, "stages", stages)
        if not self.stages:
            raise ValueError("HGNetV2Config needs at least one stage")
        if self.stem_channels[1] % 2:
            raise ValueError(f"the stem width must be even, got {self.stem_channels[1]}")
        previous = self.stem_channels[2]
        for index, stage in enumerate(self.stages, start=1):
            if stage.in_channels != previous:
                raise ValueError(f"stage {index} takes {stage.in_channels} channels, the layer before gives {previous}")
            if stage.out_channels % 2 or stage.num_blocks < 1 or stage.num_layers < 1:
                raise ValueError(f"stage {index}: odd out_channels or no blocks/layers: {stage}")
            previous = stage.out_channels
        if sorted(set(self.out_stages)) != list(self.out_stages) or not all(
            1 <= stage <= len(self.stages) for stage in self.out_stages
        ):
            raise ValueError(f"out_stages must be increasing stage numbers in 1..{len(self.stages)}: {self.out_stages}")

    @property
    def label(self) -> str:
        """'HGNetv2-B4'."""
        return f"HGNetv2-{self.name}"

    def structure(self) -> str:
        """What a checkpoint reader compares and reports: stem widths, per stage (blocks, mid, out, layers, kernel),
        LAB."""
        rows = [(s.num_blocks, s.mid_channels, s.out_channels, s.num_layers, s.kernel_size) for s in self.stages]
        return f"stem {list(self.stem_channels)}, stages (blocks, mid, out, layers, kernel) {rows}, LAB {self.use_lab}"

    @property
    def architecture_token(self) -> str:
        """The backbone's part of a zoo name: 'hgnetv2_l' (a tiny variant keeps its parent's)."""
        return "hgnetv2_" + self.name.removesuffix("-tiny").lower()

    def build(self) -> "HGNetV2":
        return HGNetV2(self)

    def stage_strides(self) -> tuple[int, ...]:
        """The stem divides by 4, each downsampling stage by 2 more: (4, 8, 16, 32) for every named variant."""
        strides, stride = [], 4
        for stage in self.stages:
            stride *= 2 if stage.downsample else 1
            strides.append(stride)
        return tuple(strides)

    def out_channels(self) -> tuple[int, ...]:
        """Channels of the returned feature maps."""
        return tuple(self.stages[stage - 1].out_channels for stage in self.out_stages)

    def out_strides(self) -> tuple[int, ...]:
        """Strides of the returned feature maps."""
        return tuple(self.stage_strides()[stage - 1] for stage in self.out_stages)

    def tiny(self) -> "HGNetV2Config":
        """About 50k weights with the same structure: the stages keep their downsample, light-block and
        kernel choices and LAB, and a stage of several blocks keeps two (so the residual blocks are exercised)."""
        stem_out = 8
        stages, previous = [], stem_out
        for index, stage in enumerate(self.stages):
            out_channels = 16 * 2**index
            stages.append(
                dataclasses.replace(
                    stage,
                    in_channels=previous,
                    mid_channels=8 * (index + 1),
                    out_channels=out_channels,
                    num_blocks=min(stage.num_blocks, 2),
                    num_layers=2,
                )
            )
            previous = out_channels
        return dataclasses.replace(
            self, name=f"{self.name}-tiny", stem_channels=(self.stem_channels[0], 8, stem_out), stages=tuple(stages)
        )


def _variant(name: str, stem: tuple[int, int, int], rows: list[list], use_lab: bool) -> HGNetV2Config:
    return HGNetV2Config(name, stem, tuple(HGNetV2StageConfig(*row) for row in rows), use_lab)


# PP-HGNetV2 B0..B6: D-FINE's ``HGNetv2.arch_configs`` (the same tables as PaddleClas' pp_hgnet_v2.py). Rows:
# in, mid, out, blocks, downsample, light block, kernel, layers per block. ``use_lab`` as PaddleClas builds them (and
# as their ImageNet weights have it): on for B0..B3, off for B4..B6. D-FINE/DEIM configs set it per model, and use
# it exactly so: N/S (B0) and M (B2) with LAB, L (B4) and X (B5) without.
#
# RT-DETR-L / RT-DETR-X (PaddleDetection's PPHGNetV2 'L'/'X', which Ultralytics' rtdetr-l.yaml / rtdetr-x.yaml
# spell out as HGStem + HGBlock + DWConv layers) are the same network as B4 / B5 without LAB: the same stem, stage
# widths, block and layer counts, kernels, light blocks, squeeze-excitation aggregation and residuals. Only their
# parameter names differ (Ultralytics: a flat ``model.<i>`` list, ``m.<k>`` layers, ``sc``/``ec`` aggregation;
# transformers has no RT-DETR-HGNetv2 checkpoint layout of its own). They are listed under their own names.
HGNETV2_VARIANTS: dict[str, HGNetV2Config] = {
    "B0": _variant(
        "B0",
        (3, 16, 16),
        [
            [16, 16, 64, 1, False, False, 3, 3],
            [64, 32, 256, 1, True, False, 3, 3],
            [256, 64, 512, 2, True, True, 5, 3],
            [512, 128, 1024, 1, True, True, 5, 3],
        ],
        use_lab=True,
    ),
    "B1": _variant(
        "B1",
        (3, 24, 32),
        [
            [32, 32, 64, 1, False, False, 3, 3],
            [64, 48, 256, 1, True, False, 3, 3],
            [256, 96, 512, 2, True, True, 5, 3],
            [512, 192, 1024, 1, True, True, 5, 3],
        ],
        use_lab=True,
    ),
    "B2": _variant(
        "B2",
        (3, 24, 32),
        [
            [32, 32, 96, 1, False, False, 3, 4],
            [96, 64, 384, 1, True, False, 3, 4],
            [384, 128, 768, 3, True, True, 5, 4],
            [768, 256, 1536, 1, True, True, 5, 4],
        ],
        use_lab=True,
    ),
    "B3": _variant(
        "B3",
        (3, 24, 32),
        [
            [32, 32, 128, 1, False, False, 3, 5],
            [128, 64, 512, 1, True, False, 3, 5],
            [512, 128, 1024, 3, True, True, 5, 5],
            [1024, 256, 2048, 1, True, True, 5, 5],
        ],
        use_lab=True,
    ),
    "B4": _variant("B4", (3, 32, 48), _B4_ROWS, use_lab=False),
    "B5": _variant("B5", (3, 32, 64), _B5_ROWS, use_lab=False),
    "B6": _variant(
        "B6",
        (3, 48, 96),
        [
            [96, 96, 192, 2, False, False, 3, 6],
            [192, 192, 512, 3, True, False, 3, 6],
            [512, 384, 1024, 6, True, True, 5, 6],
            [1024, 768, 2048, 3, True, True, 5, 6],
        ],
        use_lab=False,
    ),
    "L": _variant("L", (3, 32, 48), _B4_ROWS, use_lab=False),
    "X": _variant("X", (3, 32, 64), _B5_ROWS, use_lab=False),
}


class LearnableAffineBlock(nn.Module):
    """``scale * x + bias`` with one scalar each (shape [1], as the official checkpoints store them)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.bias


class ConvBNAct(nn.Module):
    """Convolution without bias (``conv``), frozen batch norm (``bn``), then optionally ReLU and a LAB (``lab``).

    The LAB exists only after an activation, as in the official code. Padding is ``(k - 1) // 2``: "same" for odd
    kernels, none for the stem's 2x2 convolutions (the stem pads those itself)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        activation: bool = True,
        use_lab: bool = False,
    ):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False
        )
        self.bn = FrozenBatchNorm2d(out_channels)
        self.activation = activation
        self.lab = LearnableAffineBlock() if activation and use_lab else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C_in, H, W] -> [N, C_out, H', W'] (H' = H / stride for odd kernels)."""
        x = self.bn(self.conv(x))
        if self.activation:
            x = F.relu(x)
        if self.lab is not None:
            x = self.lab(x)
        return x


class LightConvBNAct(nn.Module):
    """A 1x1 convolution without activation (``conv1``), then a depthwise kxk convolution with one (``conv2``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, use_lab: bool):
        super().__init__()
        self.conv1 = ConvBNAct(in_channels, out_channels, 1, activation=False, use_lab=use_lab)
        self.conv2 = ConvBNAct(out_channels, out_channels, kernel_size, groups=out_channels, use_lab=use_lab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C_in, H, W] -> [N, C_out, H, W]."""
        return self.conv2(self.conv1(x))


class HGStem(nn.Module):
    """Stride 4: a stride-2 3x3 convolution, then two branches joined on channels (a 2x2 max pool, and two 2x2
    convolutions), a stride-2 3x3 convolution and a 1x1 convolution.

    The 2x2 convolutions and the pool see the map padded by one zero row and column at the bottom and right, so they
    keep its size: for any H, W the output is [N, C, ceil(ceil(H/2)/2), ceil(ceil(W/2)/2)] (H/4, W/4 for multiples
    of 4). The padding is a constant ``F.pad``, which traces to an ONNX ``Pad`` with fixed pads and no shape arithmetic.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, use_lab: bool):
        super().__init__()
        self.stem1 = ConvBNAct(in_channels, mid_channels, 3, stride=2, use_lab=use_lab)
        self.stem2a = ConvBNAct(mid_channels, mid_channels // 2, 2, use_lab=use_lab)
        self.stem2b = ConvBNAct(mid_channels // 2, mid_channels, 2, use_lab=use_lab)
        self.stem3 = ConvBNAct(2 * mid_channels, mid_channels, 3, stride=2, use_lab=use_lab)
        self.stem4 = ConvBNAct(mid_channels, out_channels, 1, use_lab=use_lab)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> [N, C_stem, H/4, W/4]."""
        x = F.pad(self.stem1(images), (0, 1, 0, 1))
        convolved = self.stem2b(F.pad(self.stem2a(x), (0, 1, 0, 1)))
        # A 2x2 window at stride 1 over the padded map: the same size whatever ceil_mode (the official sets it).
        pooled = F.max_pool2d(x, kernel_size=2, stride=1)
        return self.stem4(self.stem3(torch.cat([pooled, convolved], dim=1)))


class HGBlock(nn.Module):
    """``layers`` applied in sequence; their outputs and the block input concatenated, then ``aggregation``
    (1x1 squeeze to out/2, 1x1 excitation to out); plus the input for all but a stage's first block."""

    def __init__(
        self,
        in_channels: int,
        stage: HGNetV2StageConfig,
        residual: bool,
        use_lab: bool,
    ):
        super().__init__()
        self.residual = residual
        self.layers = nn.ModuleList()
        for index in range(stage.num_layers):
            layer_in = in_channels if index == 0 else stage.mid_channels
            if stage.light_block:
                layer = LightConvBNAct(layer_in, stage.mid_channels, stage.kernel_size, use_lab)
            else:
                layer = ConvBNAct(layer_in, stage.mid_channels, stage.kernel_size, use_lab=use_lab)
            self.layers.append(layer)
        total = in_channels + stage.num_layers * stage.mid_channels
        self.aggregation = nn.Sequential(
            ConvBNAct(total, stage.out_channels // 2, 1, use_lab=use_lab),
            ConvBNAct(stage.out_channels // 2, stage.out_channels, 1, use_lab=use_lab),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C_in, H, W] -> [N, C_out, H, W]."""
        outputs = [x]
        for layer in self.layers:
            outputs.append(layer(outputs[-1]))
        y = self.aggregation(torch.cat(outputs, dim=1))
        return y + x if self.residual else y


class HGStage(nn.Module):
    """Optional stride-2 depthwise ``downsample`` (batch norm, no activation, no LAB), then ``blocks``."""

    def __init__(self, stage: HGNetV2StageConfig, use_lab: bool):
        super().__init__()
        channels = stage.in_channels
        self.downsample = (
            ConvBNAct(channels, channels, 3, stride=2, groups=channels, activation=False) if stage.downsample else None
        )
        self.blocks = nn.Sequential(
            *(
                HGBlock(stage.in_channels if index == 0 else stage.out_channels, stage, index > 0, use_lab)
                for index in range(stage.num_blocks)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C_in, H, W] -> [N, C_out, H/2, W/2] (downsampling) or [N, C_out, H, W]."""
        if self.downsample is not None:
            x = self.downsample(x)
        return self.blocks(x)


class HGNetV2(nn.Module):
    """The official ``HGNetv2`` backbone (``stem``, ``stages``), returning the stages in ``config.out_stages``.

    All stages are built (so official checkpoints load strictly); the forward pass stops at the last returned one.
    Nothing depends on the input size beyond convolution arithmetic, so H and W stay dynamic under export."""

    def __init__(self, config: HGNetV2Config):
        super().__init__()
        self.config = config
        self.stem = HGStem(*config.stem_channels, use_lab=config.use_lab)
        self.stages = nn.ModuleList(HGStage(stage, config.use_lab) for stage in config.stages)
        self.out_channels = config.out_channels()
        self.strides = config.out_strides()
        # He initialisation (ReLU, fan-in) keeps the feature scale of random weights through the ~20 convolutions,
        # which have no residual path in most stages: with PyTorch's default the stride-32 features of a random model
        # are ~1e-5, and the encoder's normalisation turns float32 rounding into 5e-4 differences between backends.
        # Checkpoints overwrite all of it.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """[N, 3, H, W] -> one [N, C_i, H/s_i, W/s_i] tensor per returned stage (s_i = 8, 16, 32 for stages 2, 3, 4;
        H and W multiples of 32)."""
        x = self.stem(images)
        features = []
        for number, stage in enumerate(self.stages[: max(self.config.out_stages)], start=1):
            x = stage(x)
            if number in self.config.out_stages:
                features.append(x)
        return features


# transformers' HGNetV2Backbone -> the official names: regular expressions applied in order to each key.
TRANSFORMERS_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^embedder\.", "stem."),
    (r"^encoder\.stages\.", "stages."),
    (r"\.convolution\.", ".conv."),
    (r"\.normalization\.", ".bn."),
)


def transformers_to_official_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers ``HGNetV2Backbone`` state dict (keys relative to the backbone: ``embedder.*``,
    ``encoder.stages.*``; strip any outer prefix first) -> one with the official D-FINE names ``HGNetV2`` loads.

    Batch-norm ``num_batches_tracked`` counters are dropped. Any other key (a classifier head, another prefix)
    raises, so that a wrong prefix does not pass as a partial load."""
    renamed = {}
    unknown = []
    for key, tensor in state.items():
        if key.endswith(".num_batches_tracked"):
            continue
        if not key.startswith(("embedder.", "encoder.stages.")):
            unknown.append(key)
            continue
        for pattern, replacement in TRANSFORMERS_RENAMES:
            key = re.sub(pattern, replacement, key)
        renamed[key] = tensor
    if unknown:
        raise ValueError(f"not HGNetV2Backbone keys (strip the outer prefix first): {unknown[:5]}")
    return renamed
