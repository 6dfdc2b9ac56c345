"""PyTorch -> ONNX with dynamic batch, height and width, and the MSDeformAttn node for TensorRT.

We use the exporter PyTorch recommends (``torch.onnx.export(..., dynamo=True)``, i.e. torch.export): sizes stay
symbolic because the models compute them from ``tensor.shape``, and the example batch is 2 because torch.export
specializes any dimension whose example size is 1.
"""

import contextlib
import io
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from detr_deploy import __version__, contract
from detr_deploy.errors import DetrDeployError
from detr_deploy.io import atomic_output, check_output_path
from detr_deploy.model_source import SOURCE_ZOO, SourceModel, load_model, model_metadata
from detr_deploy.models.registry import ModelConfig, architecture_name
from exporters.msda_function import build_msda_function, msda_schema_registered

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 18
SUPPORTED_OPSETS = range(18, 23)
# Any size works; this one is typical, non-square, and large enough for Deformable DETR's stride-64 level and
# the 300 two-stage proposals.
EXAMPLE_SHAPE = (2, 3, 320, 416)


@dataclass(frozen=True)
class ExportResult:
    path: Path
    model_name: str
    msda: str
    opset: int
    msda_nodes: int
    outputs: tuple[str, ...]
    inputs: tuple[str, ...] = (contract.INPUT_IMAGES,)
    # Deformable attention module -> "plugin", "grid-sample" or "onnx-ops:discrete" (contract.META_MSDA_PATHS).
    msda_paths: dict = None


def _translate_ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    from onnxscript import values

    opset = values.Opset(contract.MSDA_DOMAIN, contract.MSDA_DOMAIN_VERSION)
    return getattr(opset, contract.MSDA_OP_TYPE)(
        value,
        spatial_shapes,
        level_start_index,
        sampling_locations,
        attention_weights,
        plugin_namespace=contract.PLUGIN_NAMESPACE,
        plugin_version=contract.PLUGIN_VERSION,
    )


def _check_options(msda: str, opset: int) -> None:
    if msda not in contract.MSDA_MODES:
        raise DetrDeployError(f"unknown --msda mode {msda!r}; choose one of: {', '.join(contract.MSDA_MODES)}")
    if opset not in SUPPORTED_OPSETS:
        raise DetrDeployError(
            f"opset {opset} is not supported; choose {SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1}"
        )


def _check_padding_mask(config: ModelConfig, padding_mask: bool) -> None:
    if padding_mask and not config.supports_padding_mask:
        raise DetrDeployError(
            f"{architecture_name(config)} has no padding mask in its official code (images of a batch share one "
            "size); export without --padding-mask"
        )


def _example_padding_mask() -> torch.Tensor:
    """[2, H, W] uint8: the first image unpadded, the second padded at the bottom and right (as a batch would be)."""
    batch, _, height, width = EXAMPLE_SHAPE
    mask = torch.zeros(batch, height, width, dtype=torch.uint8)
    mask[1, height * 3 // 4 :, :] = 1
    mask[1, :, width * 2 // 3 :] = 1
    return mask


def example_shape(size_divisor: int = 1) -> tuple[int, int, int, int]:
    """EXAMPLE_SHAPE with each side rounded up to a multiple of ``size_divisor`` (RF-DETR-B's 56, say): the traced
    example must be a size the model takes."""
    batch, channels, height, width = EXAMPLE_SHAPE
    return batch, channels, *(-(-side // size_divisor) * size_divisor for side in (height, width))


def _torch_export(model: torch.nn.Module, config: ModelConfig, opset: int, padding_mask: bool) -> onnx.ModelProto:
    images = torch.randn(*example_shape(config.size_divisor))
    batch = torch.export.Dim(contract.DYNAMIC_AXES[0], min=contract.BATCH_RANGE[0], max=contract.BATCH_RANGE[1])
    height, width = (_side_dim(name, config.size_divisor) for name in contract.DYNAMIC_AXES[1:])
    inputs, input_names = (images,), [contract.INPUT_IMAGES]
    dynamic_shapes = {"images": {0: batch, 2: height, 3: width}}
    if padding_mask:
        inputs, input_names = (images, _example_padding_mask()), input_names + [contract.INPUT_PADDING_MASK]
        dynamic_shapes["padding_mask"] = {0: batch, 1: height, 2: width}
    # The exporter reports progress on stdout and through warnings; a library stays quiet and logs instead.
    captured = io.StringIO()
    with (
        msda_schema_registered(),
        contextlib.redirect_stdout(captured),
        _quiet_loggers(),
        warnings.catch_warnings(),
        torch.no_grad(),
    ):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            inputs,
            dynamo=True,
            input_names=input_names,
            output_names=list(config.output_names),
            dynamic_shapes=dynamic_shapes,
            custom_translation_table={torch.ops.detr_deploy.ms_deform_attn.default: _translate_ms_deform_attn},
            opset_version=opset,
            external_data=False,
            optimize=True,
        )
    logger.debug("torch.onnx.export: %s", captured.getvalue())
    proto = program.model_proto
    _rename_side_dims(proto, config.size_divisor)
    return proto


def _side_dim(name: str, divisor: int):
    """A symbolic side in SIDE_RANGE; for models that need multiples of ``divisor``, ``divisor`` x an integer Dim
    (torch.export then proves the model's shape arithmetic for every such size, and only for those)."""
    low, high = contract.SIDE_RANGE
    if divisor == 1:
        return torch.export.Dim(name, min=low, max=high)
    return divisor * torch.export.Dim(f"{name}{_BLOCKS_SUFFIX}", min=-(-low // divisor), max=high // divisor)


# torch.export names a derived side "32*height_blocks"; the saved graph calls it "height" again (the contract's
# axis name) and records the divisor in its metadata.
_BLOCKS_SUFFIX = "_blocks"


def _rename_side_dims(model: onnx.ModelProto, divisor: int) -> None:
    if divisor == 1:
        return
    names = {f"{divisor}*{name}{_BLOCKS_SUFFIX}": name for name in contract.DYNAMIC_AXES[1:]}
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in names:
                dim.dim_param = names[dim.dim_param]


def msda_paths(model: torch.nn.Module, msda: str) -> dict[str, str]:
    """Each deformable attention module's path in the export: "plugin" (an MSDeformAttn node), "grid-sample" (that
    node inlined) or what the module says it takes instead (``onnx-ops:discrete``)."""
    paths = {}
    for name, module in model.named_modules():
        path = getattr(module, "msda_path", None)
        if isinstance(path, str):
            paths[name] = "grid-sample" if path == "plugin" and msda == "grid-sample" else path
    return paths


@contextlib.contextmanager
def _quiet_loggers(names=("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._export")):
    """Keep the exporter's info chatter out of the user's terminal (our own logger says what matters)."""
    saved = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _msda_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.domain == contract.MSDA_DOMAIN and n.op_type == contract.MSDA_OP_TYPE]


def _finalize(model: onnx.ModelProto, config: ModelConfig, msda: str, opset: int) -> onnx.ModelProto:
    """Attach (or, for ``grid-sample``, inline) the MSDeformAttn function, then onnx-ir passes: drop opsets no node
    uses (the custom domain once inlined) and the exporter's per-node debug metadata and doc strings."""
    import onnx_ir
    from onnx_ir.passes.common import ClearMetadataAndDocStringPass, InlinePass, RemoveUnusedOpsetsPass

    if _msda_nodes(model):
        model.functions.append(build_msda_function(config.num_feature_levels, opset))
        imports = {o.domain for o in model.opset_import}
        if contract.MSDA_DOMAIN not in imports:
            model.opset_import.append(onnx.helper.make_opsetid(contract.MSDA_DOMAIN, contract.MSDA_DOMAIN_VERSION))
    passes = ([InlinePass()] if msda == "grid-sample" else []) + [
        RemoveUnusedOpsetsPass(),
        ClearMetadataAndDocStringPass(),
    ]
    ir_model = onnx_ir.from_proto(model)
    for graph_pass in passes:
        ir_model = graph_pass(ir_model).model
    return onnx_ir.to_proto(ir_model)


def format_profile(profile: dict) -> str:
    """{"min": (1, 3, 320, 320), ...} -> "min=1x3x320x320;opt=...;max=..." (parsed by exporters.engine_build)."""
    return ";".join(f"{key}={'x'.join(map(str, profile[key]))}" for key in ("min", "opt", "max"))


def set_metadata(model: onnx.ModelProto, entries: dict[str, str]) -> None:
    existing = {prop.key: prop for prop in model.metadata_props}
    for key, value in entries.items():
        if key in existing:
            existing[key].value = value
        else:
            model.metadata_props.add(key=key, value=value)


def read_metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {prop.key: prop.value for prop in model.metadata_props}


def export_onnx(
    model: torch.nn.Module,
    config: ModelConfig,
    output,
    *,
    model_name: str,
    msda: str = "plugin",
    opset: int = DEFAULT_OPSET,
    weights: str = "unspecified",
    padding_mask: bool = False,
    class_names: tuple[str, ...] = None,
    checkpoint_format: str = SOURCE_ZOO,
) -> ExportResult:
    """Export ``model`` (built from ``config``) to ``output``.

    The file takes ``images`` [batch, 3, height, width] float32 (ImageNet-normalized) and returns ``pred_logits``
    [batch, Q, K], ``pred_boxes`` [batch, Q, 4] (normalized cxcywh) and, for panoptic models, ``pred_masks``
    [batch, Q, height/4, width/4]. ``msda="plugin"`` keeps each deformable attention as one
    ``detr_deploy::MSDeformAttn`` node backed by a local function; ``"grid-sample"`` inlines the decomposition.
    ``padding_mask=True`` adds the input ``padding_mask`` [batch, height, width] uint8 (1 = padded pixel) for
    batches of images of different sizes. ``class_names`` (indexed by label) and ``checkpoint_format`` land in the
    metadata.
    """
    _check_options(msda, opset)
    _check_padding_mask(config, padding_mask)
    output = check_output_path(output)
    proto = _finalize(_torch_export(model.eval(), config, opset, padding_mask), config, msda, opset)
    source = SourceModel(model_name, config, model, weights, class_names, checkpoint_format)
    paths = msda_paths(model, msda)
    set_metadata(
        proto,
        {
            **model_metadata(source),
            contract.META_MSDA: msda,
            contract.META_VERSION: __version__,
            contract.META_PROFILE: format_profile(contract.DEFAULT_PROFILE),
            **({contract.META_MSDA_PATHS: json.dumps(paths)} if paths else {}),
        },
    )
    proto.producer_name = "detr_deploy"
    proto.producer_version = __version__
    onnx.checker.check_model(proto, full_check=True)
    with atomic_output(output) as temporary:
        onnx.save_model(proto, temporary)
    inputs = tuple(value.name for value in proto.graph.input)
    return ExportResult(
        output, model_name, msda, opset, len(_msda_nodes(proto)), tuple(config.output_names), inputs, paths
    )


def export_model(
    model_name: str,
    output,
    *,
    checkpoint=None,
    msda: str = "plugin",
    opset: int = DEFAULT_OPSET,
    seed: int = 0,
    padding_mask: bool = False,
) -> ExportResult:
    """Export the model of ``checkpoint`` (official, transformers or mmdetection; its architecture read from the
    file, ``model_name`` settling what the file cannot tell), or the zoo model ``model_name`` with seeded random
    weights."""
    check_output_path(output, inputs=[checkpoint])
    _check_options(msda, opset)
    source = load_model(model_name, checkpoint, seed=seed)
    if checkpoint is None:
        logger.warning(
            "no --checkpoint given: exporting %s with random weights (seed %d), for trying the tools only",
            source.name,
            seed,
        )
    return export_onnx(
        source.model,
        source.config,
        output,
        model_name=source.name,
        msda=msda,
        opset=opset,
        weights=source.weights,
        padding_mask=padding_mask,
        class_names=source.class_names,
        checkpoint_format=source.source,
    )
