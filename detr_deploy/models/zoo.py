"""The named models of the official DETR and Deformable-DETR releases."""

from detr_deploy.models.backbone import BackboneConfig
from detr_deploy.models.deformable_detr import DeformableDETRConfig
from detr_deploy.models.detr import DETRConfig
from detr_deploy.models.registry import register_model

ZOO = {
    "detr_r50": (DETRConfig(), "DETR, ResNet-50"),
    "detr_r50_dc5": (DETRConfig(backbone=BackboneConfig(dilate_last_stage=True)), "DETR, ResNet-50 with dilated C5"),
    "detr_r101": (DETRConfig(backbone=BackboneConfig(blocks_per_stage=(3, 4, 23, 3))), "DETR, ResNet-101"),
    "detr_r50_panoptic": (
        DETRConfig(num_classes=250, panoptic=True),
        "DETRsegm panoptic (box attention + mask head), ResNet-50, 250 classes",
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
}

for _name, (_config, _description) in ZOO.items():
    register_model(_name, _config, _description)
