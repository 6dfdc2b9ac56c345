"""Model zoo: plain modules written for export, and a flat registry of named variants."""

from detr_deploy.models import zoo  # noqa: F401  (registers the official variants)
from detr_deploy.models.backbone import BackboneConfig
from detr_deploy.models.conditional_detr import ConditionalDETR, ConditionalDETRConfig
from detr_deploy.models.deformable_detr import DeformableDETR, DeformableDETRConfig
from detr_deploy.models.detr import DETR, DETRConfig
from detr_deploy.models.dino import DINO, DINOConfig
from detr_deploy.models.registry import ModelSpec, build_model, get_model_spec, list_models, register_model
from detr_deploy.models.resnet_vd import ResNetVdConfig
from detr_deploy.models.rtdetr import RTDETR, RTDETRConfig
from detr_deploy.models.segmentation import DETRPanoptic

__all__ = [
    "BackboneConfig",
    "ConditionalDETR",
    "ConditionalDETRConfig",
    "DETR",
    "DETRConfig",
    "DETRPanoptic",
    "DINO",
    "DINOConfig",
    "DeformableDETR",
    "DeformableDETRConfig",
    "ModelSpec",
    "RTDETR",
    "RTDETRConfig",
    "ResNetVdConfig",
    "build_model",
    "get_model_spec",
    "list_models",
    "register_model",
]
