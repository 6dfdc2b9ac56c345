"""The named models of the official DETR, Conditional DETR, Deformable-DETR, DAB-DETR, RT-DETR (v1, v2), DINO,
D-FINE and RF-DETR releases."""

import dataclasses

from detr_deploy.models.backbone import BackboneConfig
from detr_deploy.models.conditional_detr import ConditionalDETRConfig
from detr_deploy.models.dab_detr import DABDETRConfig
from detr_deploy.models.deformable_detr import DeformableDETRConfig
from detr_deploy.models.detr import DETRConfig
from detr_deploy.models.dfine import DFineConfig
from detr_deploy.models.dino import DINOConfig
from detr_deploy.models.dinov2 import DINOv2Config, legacy_window_blocks
from detr_deploy.models.hgnetv2 import HGNETV2_VARIANTS
from detr_deploy.models.registry import register_model
from detr_deploy.models.resnet_vd import ResNetVdConfig
from detr_deploy.models.rfdetr import RFDETRConfig
from detr_deploy.models.rtdetr import RTDETRConfig

# RT-DETR sizes as the official configs (rtdetr_r{18,34,50,101}vd_*.yml) set them: backbone, encoder width and
# FFN, CSP expansion, decoder layers.
_RTDETR_SIZES = {
    18: (ResNetVdConfig((2, 2, 2, 2), block="basic"), 256, 1024, 0.5, 3),
    34: (ResNetVdConfig((3, 4, 6, 3), block="basic"), 256, 1024, 0.5, 4),
    50: (ResNetVdConfig((3, 4, 6, 3)), 256, 1024, 1.0, 6),
    101: (ResNetVdConfig((3, 4, 23, 3)), 384, 2048, 1.0, 6),
    # RT-DETR-L / RT-DETR-X (PaddleDetection's rtdetr_hgnetv2_{l,x}_6x_coco.yml, Ultralytics' rtdetr-{l,x}.yaml).
    "L": (HGNETV2_VARIANTS["L"], 256, 1024, 1.0, 6),
    "X": (HGNETV2_VARIANTS["X"], 384, 2048, 1.0, 6),
}


def _rtdetr(depth: int | str, version: int, sampling_method: str = "default") -> RTDETRConfig:
    backbone, width, ffn, expansion, decoder_layers = _RTDETR_SIZES[depth]
    return RTDETRConfig(
        version=version,
        backbone=backbone,
        encoder_hidden_dim=width,
        encoder_ffn=ffn,
        encoder_expansion=expansion,
        num_decoder_layers=decoder_layers,
        sampling_method=sampling_method,
    )


# D-FINE sizes as the official configs (configs/dfine/dfine_hgnetv2_{n,s,m,l,x}_coco.yml) set them; DEIM's D-FINE
# models are the same networks.
_DFINE = DFineConfig()
_DFINE_SIZES = {
    "N": _DFINE.replace(
        size="N",
        backbone=dataclasses.replace(HGNETV2_VARIANTS["B0"], out_stages=(3, 4)),
        encoder_hidden_dim=128,
        encoder_ffn=512,
        encoder_expansion=0.34,
        depth_mult=0.5,
        hidden_dim=128,
        dim_feedforward=512,
        num_decoder_layers=3,
        dec_n_points=(6, 6),
    ),
    "S": _DFINE.replace(
        size="S", backbone=HGNETV2_VARIANTS["B0"], encoder_expansion=0.5, depth_mult=0.34, num_decoder_layers=3
    ),
    "M": _DFINE.replace(size="M", backbone=HGNETV2_VARIANTS["B2"], depth_mult=0.67, num_decoder_layers=4),
    "L": _DFINE.replace(size="L", backbone=HGNETV2_VARIANTS["B4"]),
    "X": _DFINE.replace(
        size="X", backbone=HGNETV2_VARIANTS["B5"], encoder_hidden_dim=384, encoder_ffn=2048, reg_scale=8.0
    ),
}

# RF-DETR sizes as rfdetr 1.11's configs (RFDETR{Nano,Small,Medium,Large,Base}Config; XL and 2XL from rfdetr_plus's
# RFDETR{XLarge,2XLarge}Config) set them, with the official parameter counts (rfdetr's README, M; they include the 13
# Group DETR query groups that only training uses: models.rfdetr.training_only_parameters). All predict the 91 COCO
# category ids (rfdetr's num_classes 90 + 1).
_DINOV2_SMALL = DINOv2Config()
_DINOV2_BASE = DINOv2Config(name="base", hidden_size=768, num_heads=12)


def _rfdetr(size: str, resolution: int, layers: int, backbone: DINOv2Config = _DINOV2_SMALL, grid=None, **changes):
    """An RF-DETR size; its position grid is resolution / patch unless ``grid`` says otherwise."""
    backbone = dataclasses.replace(
        backbone,
        positional_grid=grid or resolution // backbone.patch_size,
        window_blocks=legacy_window_blocks(backbone.out_indices),
    )
    return RFDETRConfig(size=size, backbone=backbone, resolution=resolution, num_decoder_layers=layers, **changes)


_RFDETR_BASE_BACKBONE = dataclasses.replace(_DINOV2_SMALL, patch_size=14, num_windows=4, out_indices=(2, 5, 8, 11))
_RFDETR_XL_BACKBONE = dataclasses.replace(_DINOV2_BASE, patch_size=20, num_windows=1)
_RFDETR_XL = dict(hidden_dim=512, num_heads=16, cross_attention_heads=32, dec_n_points=4)
_RFDETR_SIZES = {
    "N": (_rfdetr("N", 384, 2), 30.5),
    "S": (_rfdetr("S", 512, 3), 32.1),
    "M": (_rfdetr("M", 576, 4), 33.7),
    "L": (_rfdetr("L", 704, 4), 33.9),
    "XL": (_rfdetr("XL", 700, 5, _RFDETR_XL_BACKBONE, **_RFDETR_XL), 126.4),
    "2XL": (_rfdetr("2XL", 880, 5, dataclasses.replace(_RFDETR_XL_BACKBONE, num_windows=2), **_RFDETR_XL), 126.9),
    # RF-DETR-B (rf-detr-base.pth, transformers' Roboflow/rf-detr-base): a 37 x 37 position grid at 560; rfdetr
    # 1.11's table no longer lists it (None: no official count).
    "B": (_rfdetr("B", 560, 3, _RFDETR_BASE_BACKBONE, grid=37), None),
}
# The official parameter count of each RF-DETR zoo name, in millions.
RFDETR_OFFICIAL_PARAMETERS = {config.architecture_name: count for config, count in _RFDETR_SIZES.values()}

_DAB_DC5 = DABDETRConfig(backbone=BackboneConfig(dilate_last_stage=True))

ZOO = {
    "detr_r50": (DETRConfig(), "DETR, ResNet-50"),
    "detr_r50_dc5": (DETRConfig(backbone=BackboneConfig(dilate_last_stage=True)), "DETR, ResNet-50 with dilated C5"),
    "detr_r101": (DETRConfig(backbone=BackboneConfig(blocks_per_stage=(3, 4, 23, 3))), "DETR, ResNet-101"),
    "detr_r50_panoptic": (
        DETRConfig(num_classes=250, panoptic=True),
        "DETRsegm panoptic (box attention + mask head), ResNet-50, 250 classes",
    ),
    "conditional_detr_r50": (ConditionalDETRConfig(), "Conditional DETR, ResNet-50, 300 queries"),
    "conditional_detr_r50_dc5": (
        ConditionalDETRConfig(backbone=BackboneConfig(dilate_last_stage=True)),
        "Conditional DETR, ResNet-50 with dilated C5, 300 queries",
    ),
    "conditional_detr_r101": (
        ConditionalDETRConfig(backbone=BackboneConfig(blocks_per_stage=(3, 4, 23, 3))),
        "Conditional DETR, ResNet-101, 300 queries",
    ),
    "conditional_detr_r101_dc5": (
        ConditionalDETRConfig(backbone=BackboneConfig(blocks_per_stage=(3, 4, 23, 3), dilate_last_stage=True)),
        "Conditional DETR, ResNet-101 with dilated C5, 300 queries",
    ),
    "deformable_detr_r50": (DeformableDETRConfig(), "Deformable DETR, ResNet-50"),
    "deformable_detr_r50_refine": (
        DeformableDETRConfig(with_box_refine=True),
        "Deformable DETR, ResNet-50, iterative box refinement",
    ),
    "deformable_detr_r50_two_stage": (
        DeformableDETRConfig(with_box_refine=True, two_stage=True),
        "Deformable DETR, ResNet-50, iterative box refinement + two-stage",
    ),
    # DAB-DETR releases (IDEA-Research/DAB-DETR's README): 300 anchors; the 3-pattern models use each with 3 pattern
    # embeddings (900 queries).
    "dab_detr_r50": (DABDETRConfig(), "DAB-DETR, ResNet-50, 300 anchors"),
    "dab_detr_r50_3pat": (
        DABDETRConfig(num_queries=900, num_patterns=3),
        "DAB-DETR, ResNet-50, 300 anchors x 3 patterns (900 queries)",
    ),
    "dab_detr_r50_dc5": (_DAB_DC5, "DAB-DETR, ResNet-50 with dilated C5, 300 anchors"),
    "dab_detr_r50_dc5_3pat": (
        _DAB_DC5.replace(num_queries=900, num_patterns=3),
        "DAB-DETR, ResNet-50 with dilated C5, 300 anchors x 3 patterns (900 queries)",
    ),
    "rtdetr_r18vd": (_rtdetr(18, 1), "RT-DETR, ResNet-18-vd, 80 COCO classes"),
    "rtdetr_r34vd": (_rtdetr(34, 1), "RT-DETR, ResNet-34-vd, 80 COCO classes"),
    "rtdetr_r50vd": (_rtdetr(50, 1), "RT-DETR, ResNet-50-vd, 80 COCO classes"),
    "rtdetr_r101vd": (_rtdetr(101, 1), "RT-DETR, ResNet-101-vd, 80 COCO classes"),
    "rtdetrv2_r18vd": (_rtdetr(18, 2), "RT-DETRv2, ResNet-18-vd, 80 COCO classes"),
    "rtdetrv2_r34vd": (_rtdetr(34, 2), "RT-DETRv2, ResNet-34-vd, 80 COCO classes"),
    "rtdetrv2_r50vd": (_rtdetr(50, 2), "RT-DETRv2, ResNet-50-vd, 80 COCO classes"),
    "rtdetrv2_r101vd": (_rtdetr(101, 2), "RT-DETRv2, ResNet-101-vd, 80 COCO classes"),
    "rtdetrv2_r18vd_discrete": (
        _rtdetr(18, 2, "discrete"),
        "RT-DETRv2, ResNet-18-vd, discrete sampling (the dsp checkpoints)",
    ),
    "rtdetr_hgnetv2_l": (_rtdetr("L", 1), "RT-DETR-L, HGNetv2-L, 80 COCO classes"),
    "rtdetr_hgnetv2_x": (_rtdetr("X", 1), "RT-DETR-X, HGNetv2-X, 80 COCO classes"),
    "dino_4scale_r50": (DINOConfig(), "DINO-4scale, ResNet-50, 900 queries"),
    "dino_5scale_r50": (DINOConfig(num_feature_levels=5), "DINO-5scale, ResNet-50 (strides 4..64), 900 queries"),
    **{
        f"dfine_hgnetv2_{size.lower()}": (config, f"D-FINE-{size}, HGNetv2-{config.backbone.name}, 80 COCO classes")
        for size, config in _DFINE_SIZES.items()
    },
    **{
        config.architecture_name: (
            config,
            f"RF-DETR-{size}, {config.backbone.label}, {config.resolution}x{config.resolution}, 91 COCO labels"
            + (f" ({count}M parameters with its training query groups)" if count else ""),
        )
        for size, (config, count) in _RFDETR_SIZES.items()
    },
}

for _name, (_config, _description) in ZOO.items():
    register_model(_name, _config, _description)
