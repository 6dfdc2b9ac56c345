from detr_deploy.ops.ms_deform_attn import ms_deform_attn, ms_deform_attn_reference

__all__ = ["ms_deform_attn", "ms_deform_attn_reference"]
