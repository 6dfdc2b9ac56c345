"""One source of truth for names shared by the exporter, the runtimes and the TensorRT plugin.

The C++ plugin has a header with the same values; a test checks that both agree.
"""

# Graph I/O of every export.
INPUT_IMAGES = "images"
# Optional (export --padding-mask): [batch, height, width] uint8, 1 = padded pixel (the official NestedTensor mask).
INPUT_PADDING_MASK = "padding_mask"
OUTPUT_LOGITS = "pred_logits"
OUTPUT_BOXES = "pred_boxes"
OUTPUT_MASKS = "pred_masks"
DYNAMIC_AXES = ("batch", "height", "width")
# The ranges the export keeps symbolic (torch.export Dims); engines may be built for any profile inside them.
BATCH_RANGE = (1, 1024)
SIDE_RANGE = (64, 8192)
# The engine profile build-engine uses unless told otherwise, for an images input [batch, 3, height, width].
DEFAULT_PROFILE = {"min": (1, 3, 320, 320), "opt": (1, 3, 800, 1088), "max": (4, 3, 1344, 1344)}

# Multi-scale deformable attention: the ONNX node and the TensorRT plugin it binds to.
MSDA_OP_TYPE = "MSDeformAttn"
MSDA_DOMAIN = "detr_deploy"
MSDA_DOMAIN_VERSION = 1
PLUGIN_NAME = MSDA_OP_TYPE
PLUGIN_NAMESPACE = "detr_deploy"
PLUGIN_VERSION = "1"
# Inputs in order, as TensorRT OSS MultiscaleDeformableAttnPlugin_TRT takes them.
MSDA_INPUTS = ("value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights")
MSDA_OUTPUTS = ("output",)
MSDA_ATTRIBUTES = ("plugin_namespace", "plugin_version")
MSDA_MODES = ("plugin", "grid-sample")

# ONNX metadata_props keys written by the exporter.
META_MODEL = "detr_deploy.model"
# The zoo-style architecture name and the full model config (JSON of the family's config dataclass): a fine-tuned
# model keeps its zoo architecture's name but may have other class/query counts, layers or widths.
META_ARCHITECTURE = "detr_deploy.architecture"
META_CONFIG = "detr_deploy.config"
# Where the weights came from: zoo (seeded random), official, transformers, mmdetection-3.x, mmdetection-2.x.
META_CHECKPOINT_FORMAT = "detr_deploy.checkpoint_format"
META_FAMILY = "detr_deploy.family"
META_NUM_CLASSES = "detr_deploy.num_classes"
META_SCORE_ACTIVATION = "detr_deploy.score_activation"
META_MEAN = "detr_deploy.normalize_mean"
META_STD = "detr_deploy.normalize_std"
META_MSDA = "detr_deploy.msda"
META_WEIGHTS = "detr_deploy.weights"
META_VERSION = "detr_deploy.version"
# JSON list of names indexed by label (COCO names for COCO-sized heads), and (panoptic) the labels that are stuff.
META_CLASS_NAMES = "detr_deploy.class_names"
META_STUFF_LABELS = "detr_deploy.stuff_labels"
# "min=1x3x320x320;opt=1x3x800x1088;max=4x3x1344x1344": the default engine profile for this model.
META_PROFILE = "detr_deploy.engine_profile"
# Height and width must be multiples of this (RT-DETR: 32; its feature pyramid concatenates x2 upsampled levels).
# Absent or 1: any side in SIDE_RANGE.
META_SIZE_DIVISOR = "detr_deploy.size_divisor"
# How images are resized for the model: "shorter=800,max=1333" (keep aspect; DETR, Deformable DETR, DINO) or
# "fixed=640x640" (RT-DETR's official evaluation).
META_RESIZE = "detr_deploy.resize"
RESIZE_KEEP_ASPECT = "shorter=800,max=1333"
# Models that select their queries by a top-k over encoder tokens (two-stage Deformable DETR, RT-DETR, DINO): the
# strides of the levels whose tokens are ranked ("8,16,32") and how many queries are selected. A runner refuses an
# input with fewer tokens than queries (tokens_at_strides) without importing model code. Absent: no selection (or
# an export older than these keys, which opens without the check).
META_SELECTION_STRIDES = "detr_deploy.selection_strides"
META_SELECTED_QUERIES = "detr_deploy.selected_queries"
# JSON object: each deformable attention module -> the path it took in the graph: "plugin" (an MSDeformAttn node, our
# TensorRT plugin or its ONNX function) or "onnx-ops:discrete" (RT-DETRv2 discrete sampling, plain ONNX ops).
META_MSDA_PATHS = "detr_deploy.msda_paths"
# Sigmoid models: how many (query, class) pairs the official post-processing keeps (Deformable DETR 100, RT-DETR and
# DINO 300).
META_TOP_K = "detr_deploy.num_top_detections"
# What the graph computes in, written by `quantize` (absent: fp32): "fp16", "bf16" or "int8" (explicit Q/DQ).
META_PRECISION = "detr_deploy.precision"
# JSON object describing an INT8 Q/DQ graph: the tool and its version, calibration (method, image count, shape),
# and what was kept in higher precision (op types, node name patterns) and in which type.
META_QUANTIZATION = "detr_deploy.quantization"
# Which runtime an int8 file was quantized for (absent: "tensorrt", ModelOpt's explicit Q/DQ run as written):
# "onnxruntime" (its static quantizer, for its fused int8 CPU kernels) or "openvino" (NNCF).
META_QUANTIZED_FOR = "detr_deploy.quantized_for"
QUANTIZATION_TARGETS = ("tensorrt", "onnxruntime", "openvino")

# ImageNet normalization, as the official models take their input.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def tokens_at_strides(strides, height: int, width: int) -> int:
    """Tokens of a ``height`` x ``width`` input over feature levels at ``strides`` (each side rounded up, as a
    stride-2 convolution with padding does)."""
    return sum(-(-height // stride) * -(-width // stride) for stride in strides)
