"""RT-DETR in Ultralytics ``.pt`` files (``RTDETRDetectionModel``: rtdetr-l.yaml, rtdetr-x.yaml and YAMLs of their
layout), read from the pickled modules (``formats.ultralytics``) into our RT-DETR v1.

Ultralytics builds RT-DETR-L/X from a flat list of layers (``model.<i>``) that is PaddleDetection's network
module for module (Ultralytics 8.4.190's ``nn/modules``):

- backbone (HGNetv2): ``HGStem`` (stem1..stem4, a max pool), per stage an optional ``DWConv`` (depthwise 3x3,
  stride 2, no activation: the stage's downsample) and ``HGBlock``s (``m.<k>``: ``Conv`` or ``LightConv`` =
  1x1 then depthwise kxk; ``sc``/``ec``: squeeze and excitation; ``add``: the residual, on all but a stage's first
  block), ReLU throughout; these are our ``HGNetV2`` (official D-FINE names) without LAB.
- hybrid encoder: three ``Conv`` 1x1 without activation (``input_proj``), ``AIFI`` (one post-norm GELU encoder
  layer over the stride-32 tokens: ``ma``, ``fc1``/``fc2``, ``norm1``/``norm2``), ``Conv`` 1x1 SiLU laterals,
  nearest x2 ``Upsample``, ``Concat``, ``RepC3`` (``cv1``, ``cv2``, ``RepConv`` blocks ``m``, ``cv3``: the
  official ``CSPRepLayer``), ``Conv`` 3x3 stride-2 SiLU downsampling, wired as the official CCFM (the reader checks
  each layer's inputs ``f``).
- ``RTDETRDecoder``: the official v1 decoder under the same names (``input_proj.<l>`` a Conv2d and a BatchNorm2d,
  ``decoder.layers``, ``enc_output``, the heads); ``eval_idx`` picks the evaluated layer.

What the names do not say, the modules do: convolution strides, kernels and padding, activations, the decoder's
heads, queries and points, ``learnt_init_query``. Where they differ from ours the reader converts or refuses:

- batch norm eps: Ultralytics' ``initialize_weights`` sets 1e-3 on every ``BatchNorm2d`` (ours 1e-5): each norm's
  eps is folded into its ``running_var`` (var + eps - 1e-5), which computes the same normalization.
- fused files (``Model.save`` after predict ran ``fuse()``): a convolution with a bias and no batch norm becomes the
  convolution and an identity batch norm carrying the bias; a merged ``RepConv`` (one 3x3 with bias) becomes the
  3x3 branch, its 1x1 branch zero. Both compute what the fused model computes.
- AIFI's position embedding: Ultralytics 8.4.190 gives each token its own (row, column) where the official code
  enumerates a (w, h) grid; the two agree on square inputs (Ultralytics predicts at 640x640) and differ on others.
  The config records ``aifi_positions="row_major"`` so that the model runs as Ultralytics runs it.
- the decoder has no float16 clamp before its last norm (our v1 layer's, a no-op for values within float16's range).

Refused, in one line each: YOLO and other non-RT-DETR Ultralytics files; the ResNet YAMLs (rtdetr-resnet50/101:
``ResNetLayer``, a torchvision-style ResNet with a 7x7 stem, strided 1x1 shortcuts and SiLU, which our ResNet-vd
RT-DETR is not); other layouts, activations or settings our RT-DETR does not compute. Class names come from the
file (``names``); its ``train_args``, optimizer and metrics are not needed.
"""

import dataclasses
from pathlib import Path

import torch

from detr_deploy.checkpoints.candidate import NO, YES, Candidate, Reader, refuse
from detr_deploy.checkpoints.checkpoint import Checkpoint, missing_tensors
from detr_deploy.checkpoints.formats.ultralytics import (
    FORMAT_ULTRALYTICS,
    SOURCE_ULTRALYTICS,
    PickledModule,
    UltralyticsFile,
    ultralytics_file,
)
from detr_deploy.checkpoints.readers.rtdetr import inference_state, tensor_config
from detr_deploy.errors import DetrDeployError
from detr_deploy.models.rtdetr import RTDETRConfig

# Our batch norms' eps (nn.BatchNorm2d's and FrozenBatchNorm2d's default).
_OUR_BATCH_NORM_EPS = 1e-5
_OUR_LAYER_NORM_EPS = 1e-5
_BACKBONE_LAYERS = ("HGStem", "HGBlock", "DWConv")
# The hybrid encoder and decoder after the backbone: (layer type, its inputs as offsets from the head's first layer
# h, None for the layer before; "b2"/"b3" for the ends of backbone stages 2 and 3).
_HEAD = (
    ("Conv", None),  # h: input_proj.2 of the last stage
    ("AIFI", None),
    ("Conv", None),  # h+2: lateral_convs.0 (Y5)
    ("Upsample", None),
    ("Conv", "b3"),  # h+4: input_proj.1
    ("Concat", (3, 4)),
    ("RepC3", None),  # h+6: fpn_blocks.0
    ("Conv", None),  # h+7: lateral_convs.1 (Y4)
    ("Upsample", None),
    ("Conv", "b2"),  # h+9: input_proj.0
    ("Concat", (8, 9)),
    ("RepC3", None),  # h+11: fpn_blocks.1
    ("Conv", None),  # h+12: downsample_convs.0
    ("Concat", (12, 7)),
    ("RepC3", None),  # h+14: pan_blocks.0
    ("Conv", None),  # h+15: downsample_convs.1
    ("Concat", (15, 2)),
    ("RepC3", None),  # h+17: pan_blocks.1
    ("RTDETRDecoder", (11, 14, 17)),
)
_ENCODER_INPUTS = {0: 9, 1: 4, 2: 0}  # input_proj level -> head offset
_LATERALS, _DOWNSAMPLES = (2, 7), (12, 15)
_FPN_BLOCKS, _PAN_BLOCKS = (6, 11), (14, 17)


def _refuse(source: str, reason: str) -> DetrDeployError:
    return DetrDeployError(f"checkpoint {source} is an Ultralytics RT-DETR {reason}")


def _is_rtdetr(file: UltralyticsFile) -> bool:
    layers = file.layers
    return file.model.name == "RTDETRDetectionModel" or bool(layers and layers[-1].name == "RTDETRDecoder")


def _describe_other(file: UltralyticsFile, source: str) -> str:
    """The one-line refusal of an Ultralytics file that is not an RT-DETR (a YOLO detector, classifier, ...)."""
    layers = file.layers
    head = layers[-1].name if layers else "no layers"
    task = file.model.get("task") or file.yaml.get("task")
    what = f"{file.model.name}{f' ({task})' if task else ''}"
    yolo = " (a YOLO model)" if head in ("Detect", "Segment", "Pose", "OBB", "Classify") or "YOLO" in head else ""
    return (
        f"checkpoint {source} is an Ultralytics {what} with a {head} head{yolo}, not an RT-DETR: of Ultralytics' "
        "files this version reads RT-DETR (RTDETRDetectionModel, the rtdetr-l/x.yaml layouts)"
    )


# --- reading modules ---------------------------------------------------------------------------------------------


def _activation(module: PickledModule, absent: str = "Identity") -> str:
    """The class name of ``module.act`` ('ReLU', 'SiLU', 'Identity', ...); ``absent`` where the module has none
    (older Ultralytics MLPs keep no ``act`` and apply ReLU, as Ultralytics' own forward still assumes)."""
    act = module.child("act")
    return act.name if act is not None else absent


class _Renamer:
    """Collects the file's tensors under our (the official RT-DETR) names, checking what names cannot tell."""

    def __init__(self, source: str):
        self.source = source
        self.state: dict[str, torch.Tensor] = {}
        self.eps_seen: set[float] = set()
        self.fused = 0

    def fail(self, where: str, what: str) -> DetrDeployError:
        return _refuse(self.source, f"whose {where} {what}, which our RT-DETR does not compute")

    def put(self, key: str, tensor: torch.Tensor) -> None:
        self.state[key] = tensor.detach().to(torch.float32) if tensor.is_floating_point() else tensor

    def norm(self, key: str, norm: PickledModule, where: str) -> None:
        """A BatchNorm2d under ``key`` with its eps folded into ``running_var``."""
        if norm.name != "BatchNorm2d" or not norm.get("affine", True) or not norm.get("track_running_stats", True):
            raise self.fail(where, f"normalizes with {norm.name} (affine {norm.get('affine')})")
        tensors = norm.tensors()
        eps = float(norm.get("eps", _OUR_BATCH_NORM_EPS))
        self.eps_seen.add(eps)
        for name in ("weight", "bias", "running_mean"):
            self.put(f"{key}.{name}", tensors[name])
        variance = tensors["running_var"].to(torch.float64) + (eps - _OUR_BATCH_NORM_EPS)
        self.put(f"{key}.running_var", variance)

    def identity_norm(self, key: str, bias: torch.Tensor) -> None:
        """A batch norm that adds ``bias`` and changes nothing else (for a convolution ``fuse()`` folded)."""
        self.put(f"{key}.weight", torch.ones_like(bias, dtype=torch.float32))
        self.put(f"{key}.bias", bias)
        self.put(f"{key}.running_mean", torch.zeros_like(bias, dtype=torch.float32))
        self.put(f"{key}.running_var", torch.full_like(bias, 1 - _OUR_BATCH_NORM_EPS, dtype=torch.float32))

    def check_conv(self, conv: PickledModule, where: str, kernel: int, stride: int) -> None:
        if conv.name != "Conv2d":
            raise self.fail(where, f"is a {conv.name}")
        padding = (kernel - 1) // 2
        found = (tuple(conv.get("kernel_size")), tuple(conv.get("stride")), tuple(conv.get("padding")))
        expected = ((kernel, kernel), (stride, stride), (padding, padding))
        if found != expected or tuple(conv.get("dilation")) != (1, 1) or conv.get("padding_mode") != "zeros":
            raise self.fail(
                where,
                f"convolves with kernel, stride, padding {[list(value) for value in found]} (ours "
                f"{[list(value) for value in expected]})",
            )

    def conv(
        self, conv_key: str, norm_key: str, module: PickledModule, where: str, kernel: int, stride: int, act: str
    ) -> None:
        """An Ultralytics ``Conv``/``DWConv`` (``conv``, ``bn``, ``act``; fused: ``conv`` with a bias)."""
        if _activation(module) != act:
            raise self.fail(where, f"activates with {_activation(module)} (ours {act})")
        self.conv_norm(conv_key, norm_key, module.child("conv"), module.child("bn"), where, kernel, stride)

    def conv_norm(
        self,
        conv_key: str,
        norm_key: str,
        conv: PickledModule,
        norm: PickledModule,
        where: str,
        kernel: int,
        stride: int = 1,
    ) -> None:
        if conv is None:
            raise self.fail(where, "has no convolution")
        self.check_conv(conv, where, kernel, stride)
        tensors = conv.tensors()
        self.put(f"{conv_key}.weight", tensors["weight"])
        if norm is not None:
            if "bias" in tensors:
                raise self.fail(where, "has a convolution bias before its batch norm")
            self.norm(norm_key, norm, where)
        elif "bias" in tensors:
            self.fused += 1
            self.identity_norm(norm_key, tensors["bias"])
        else:
            raise self.fail(where, "has neither a batch norm nor a fused bias")

    def layer_norms(self, module: PickledModule, where: str) -> None:
        """Refuse layer norms of another eps than ours (nn.LayerNorm's default in every Ultralytics RT-DETR)."""
        for name, child in module.children.items():
            if child.name == "LayerNorm" and float(child.get("eps", 1e-5)) != _OUR_LAYER_NORM_EPS:
                raise self.fail(f"{where} {name}", f"has layer norm eps {child.get('eps')} (ours 1e-5)")
            self.layer_norms(child, f"{where} {name}")

    def copy(self, prefix: str, module: PickledModule) -> None:
        for key, tensor in module.state_dict().items():
            self.put(f"{prefix}{key}", tensor)


# --- the layout ----------------------------------------------------------------------------------------------------


def _inputs(layer: PickledModule, index: int):
    """The absolute indices of a layer's inputs (``f``: -1 the previous layer, negatives relative)."""
    given = layer.get("f", -1)
    values = given if isinstance(given, (list, tuple)) else [given]
    absolute = [value if value >= 0 else index + value for value in values]
    return tuple(absolute) if isinstance(given, (list, tuple)) else absolute[0]


def _split_backbone(layers: list[PickledModule], source: str):
    """(stages: [(downsample DWConv or None, [HGBlock, ...])], index of the head's first layer)."""
    if not layers or layers[0].name != "HGStem":
        first = layers[0].name if layers else "none"
        if first == "ResNetLayer":
            raise _refuse(
                source,
                "with a ResNetLayer backbone (rtdetr-resnet50/101.yaml: a 7x7 stem convolution and max pool, strided "
                "1x1 shortcuts, SiLU activations), which our ResNet-vd RT-DETR (rtdetr_r50vd/r101vd: three 3x3 stem "
                "convolutions, average-pooled shortcuts, ReLU) is not; only the HGNetv2 layouts (rtdetr-l/x.yaml) are "
                "supported",
            )
        raise _refuse(
            source,
            f"whose backbone starts with {first}, not rtdetr-l/x.yaml's HGStem; only those layouts are supported",
        )
    stages, index = [[None, []]], 1
    while index < len(layers) and layers[index].name in _BACKBONE_LAYERS:
        layer = layers[index]
        if layer.name == "HGStem":
            break
        if _inputs(layer, index) != index - 1:
            raise _refuse(source, f"whose backbone layer {index} ({layer.name}) does not take the layer before it")
        if layer.name == "DWConv":
            stages.append([layer, []])
        else:
            stages[-1][1].append(layer)
        index += 1
    if len(stages) != 4 or not all(blocks for _, blocks in stages):
        shape = [len(blocks) for _, blocks in stages]
        raise _refuse(
            source, f"whose HGNetv2 has {len(stages)} stages of {shape} HGBlocks; ours has 4 (rtdetr-l/x.yaml's)"
        )
    return stages, index


def _check_head(layers: list[PickledModule], head: int, stage_ends: dict, source: str) -> None:
    """The head's layers, their order and inputs, are the official hybrid encoder and decoder's."""
    found = [(layer.name, _inputs(layer, head + offset)) for offset, layer in enumerate(layers[head:])]
    expected = []
    for offset, (name, inputs) in enumerate(_HEAD):
        if inputs is None:
            wired = head + offset - 1
        elif isinstance(inputs, str):
            wired = stage_ends[inputs]
        else:
            wired = tuple(head + value for value in inputs)
        expected.append((name, wired))
    if found != expected:
        longest = max(len(found), len(expected))
        padded_found = found + [("nothing", None)] * (longest - len(found))
        padded_expected = expected + [("nothing", None)] * (longest - len(expected))
        first = next(index for index in range(longest) if padded_found[index] != padded_expected[index])
        got, want = padded_found[first], padded_expected[first]
        raise _refuse(
            source,
            f"whose layer {head + first} is {got[0]} taking {got[1]} where rtdetr-l/x.yaml's layout has {want[0]} "
            f"taking {want[1]}; only that layout (hybrid encoder with AIFI on the last level, CCFM fusion, "
            "RTDETRDecoder) is supported",
        )
    for offset, (name, _) in enumerate(_HEAD):
        layer = layers[head + offset]
        if name == "Upsample" and (layer.get("scale_factor") != 2.0 or layer.get("mode") != "nearest"):
            raise _refuse(
                source, f"whose layer {head + offset} upsamples {layer.get('mode')} x{layer.get('scale_factor')}"
            )
        if name == "Concat" and layer.get("d", 1) != 1:
            raise _refuse(source, f"whose layer {head + offset} concatenates along dimension {layer.get('d')}")


def _backbone(renamer: _Renamer, layers: list[PickledModule], stages) -> None:
    """HGStem, DWConv and HGBlock layers -> ``backbone.stem.*``, ``backbone.stages.<s>.*`` (official D-FINE names)."""
    stem = layers[0]
    for name, kernel, stride in (("stem1", 3, 2), ("stem2a", 2, 1), ("stem2b", 2, 1), ("stem3", 3, 2), ("stem4", 1, 1)):
        prefix = f"backbone.stem.{name}"
        renamer.conv(
            f"{prefix}.conv", f"{prefix}.bn", stem.child(name), f"layer 0 (HGStem) {name}", kernel, stride, "ReLU"
        )
    pool = stem.child("pool")
    if pool is None or (pool.get("kernel_size"), pool.get("stride"), pool.get("padding")) != (2, 1, 0):
        raise renamer.fail("layer 0 (HGStem)", "pools other than 2x2 at stride 1")
    for stage_index, (downsample, blocks) in enumerate(stages):
        stage = f"backbone.stages.{stage_index}"
        if downsample is not None:
            where = f"layer {downsample.get('i')} (DWConv)"
            renamer.conv(f"{stage}.downsample.conv", f"{stage}.downsample.bn", downsample, where, 3, 2, "Identity")
            conv = downsample.child("conv")
            if conv.get("groups") != conv.get("in_channels") or conv.get("in_channels") != conv.get("out_channels"):
                raise renamer.fail(where, "is not depthwise (in, out, groups differ)")
        for block_index, block in enumerate(blocks):
            _hgblock(renamer, block, f"{stage}.blocks.{block_index}", residual=block_index > 0)


def _hgblock(renamer: _Renamer, block: PickledModule, prefix: str, residual: bool) -> None:
    where = f"layer {block.get('i')} (HGBlock)"
    if bool(block.get("add")) != residual:
        raise renamer.fail(
            where,
            f"{'adds' if block.get('add') else 'does not add'} its input; ours adds it in every block but a stage's "
            "first",
        )
    layers = block.child("m").children if block.has("m") else {}
    for index, layer in layers.items():
        key = f"{prefix}.layers.{index}"
        convolution = layer.child("conv2").child("conv") if layer.name == "LightConv" else layer.child("conv")
        kernel = int(convolution.get("kernel_size")[0]) if convolution is not None else 0
        if layer.name == "LightConv":
            renamer.conv(
                f"{key}.conv1.conv", f"{key}.conv1.bn", layer.child("conv1"), f"{where} m.{index}", 1, 1, "Identity"
            )
            renamer.conv(
                f"{key}.conv2.conv", f"{key}.conv2.bn", layer.child("conv2"), f"{where} m.{index}", kernel, 1, "ReLU"
            )
        elif layer.name == "Conv":
            renamer.conv(f"{key}.conv", f"{key}.bn", layer, f"{where} m.{index}", kernel, 1, "ReLU")
        else:
            raise renamer.fail(where, f"has a {layer.name} layer (ours: Conv or LightConv)")
    for name, target in (("sc", 0), ("ec", 1)):
        key = f"{prefix}.aggregation.{target}"
        renamer.conv(f"{key}.conv", f"{key}.bn", block.child(name), f"{where} {name}", 1, 1, "ReLU")


def _repc3(renamer: _Renamer, block: PickledModule, prefix: str) -> None:
    """RepC3 -> CSPRepLayer (conv1, conv2, bottlenecks.<k>.conv1/conv2, conv3): SiLU, RepConv without identity."""
    where = f"layer {block.get('i')} (RepC3)"
    for name, target in (("cv1", "conv1"), ("cv2", "conv2")):
        renamer.conv(
            f"{prefix}.{target}.conv", f"{prefix}.{target}.norm", block.child(name), f"{where} {name}", 1, 1, "SiLU"
        )
    if block.child("cv3") is not None and block.child("cv3").name != "Identity":
        renamer.conv(f"{prefix}.conv3.conv", f"{prefix}.conv3.norm", block.child("cv3"), f"{where} cv3", 1, 1, "SiLU")
    for index, rep in (block.child("m").children if block.has("m") else {}).items():
        key, rep_where = f"{prefix}.bottlenecks.{index}", f"{where} m.{index}"
        if rep.name != "RepConv" or _activation(rep) != "SiLU" or rep.child("bn") is not None:
            raise renamer.fail(rep_where, f"is a {rep.name} ({_activation(rep)}, identity branch {rep.has('bn')})")
        if rep.has("conv1"):
            renamer.conv(f"{key}.conv1.conv", f"{key}.conv1.norm", rep.child("conv1"), rep_where, 3, 1, "Identity")
            renamer.conv(f"{key}.conv2.conv", f"{key}.conv2.norm", rep.child("conv2"), rep_where, 1, 1, "Identity")
        else:  # fused: one 3x3 with bias = the 3x3 branch; the 1x1 branch adds nothing
            renamer.conv_norm(f"{key}.conv1.conv", f"{key}.conv1.norm", rep.child("conv"), None, rep_where, 3)
            weight = renamer.state[f"{key}.conv1.conv.weight"]
            renamer.put(f"{key}.conv2.conv.weight", torch.zeros(weight.shape[0], weight.shape[1], 1, 1))
            renamer.identity_norm(f"{key}.conv2.norm", torch.zeros(weight.shape[0]))


def _aifi(renamer: _Renamer, aifi: PickledModule) -> int:
    """AIFI -> ``encoder.encoder.0.layers.0`` (self_attn, linear1/2, norm1/2); returns its heads."""
    where = f"layer {aifi.get('i')} (AIFI)"
    act = aifi.child("act")
    if aifi.get("normalize_before") or act is None or act.name != "GELU" or act.get("approximate", "none") != "none":
        raise renamer.fail(where, f"is pre-norm ({aifi.get('normalize_before')}) or activates with {act and act.name}")
    attention = aifi.child("ma")
    if attention is None or "in_proj_weight" not in attention.tensors() or attention.get("bias_k") is not None:
        raise renamer.fail(where, "has no packed q/k/v projection (nn.MultiheadAttention with kdim = vdim = width)")
    renamer.layer_norms(aifi, where)
    prefix = "encoder.encoder.0.layers.0"
    renamer.copy(f"{prefix}.self_attn.", attention)
    for name, target in (("fc1", "linear1"), ("fc2", "linear2"), ("norm1", "norm1"), ("norm2", "norm2")):
        renamer.copy(f"{prefix}.{target}.", aifi.child(name))
    return int(attention.get("num_heads"))


def _decoder(renamer: _Renamer, decoder: PickledModule) -> dict:
    """RTDETRDecoder -> ``decoder.*`` (official v1 names); returns what its attributes say (heads, queries, ...)."""
    where = f"layer {decoder.get('i')} (RTDETRDecoder)"
    if decoder.get("learnt_init_query") or decoder.has("tgt_embed"):
        raise renamer.fail(where, "learns its query content (learnt_init_query)")
    renamer.layer_norms(decoder, where)
    for level, projection in decoder.child("input_proj").children.items():
        key = f"decoder.input_proj.{level}"
        renamer.conv_norm(f"{key}.conv", f"{key}.norm", projection.child("0"), projection.child("1"), where, 1)
    layers = decoder.child("decoder").child("layers").children
    points = set()
    for index, layer in layers.items():
        cross = layer.child("cross_attn")
        points.add((int(cross.get("n_levels")), int(cross.get("n_heads")), int(cross.get("n_points"))))
        if _activation(layer) != "ReLU" or "in_proj_weight" not in layer.child("self_attn").tensors():
            raise renamer.fail(f"{where} decoder layer {index}", f"activates with {_activation(layer)}")
        renamer.copy(f"decoder.decoder.layers.{index}.", layer)
    for name, child in decoder.children.items():
        if name in ("input_proj", "decoder"):
            continue
        for mlp in [child, *child.children.values()]:
            if mlp.name == "MLP" and (
                _activation(mlp, absent="ReLU") != "ReLU"
                or mlp.get("sigmoid")
                or mlp.get("residual")
                or (mlp.child("out_norm") is not None and mlp.child("out_norm").name != "Identity")
            ):
                raise renamer.fail(f"{where} {name}", "is an MLP with another activation, sigmoid, residual or norm")
        renamer.copy(f"decoder.{name}.", child)
    if len(points) != 1:
        raise renamer.fail(where, f"varies its deformable attention across layers {sorted(points)}")
    levels, heads, point_count = points.pop()
    return {
        "levels": levels,
        "heads": heads,
        "points": point_count,
        "queries": int(decoder.get("num_queries")),
        "eval_idx": int(decoder.child("decoder").get("eval_idx", len(layers) - 1)),
        "layers": len(layers),
    }


# --- the reader ----------------------------------------------------------------------------------------------------


def read_ultralytics_rtdetr(path, file: UltralyticsFile, sha256: str, model_config=None) -> Checkpoint:
    """The Checkpoint of an Ultralytics RT-DETR file (``file``, loaded). Raises DetrDeployError for a layout or
    setting our RT-DETR cannot compute, saying which."""
    path = Path(path)
    source = path.name
    layers = file.layers
    stages, head = _split_backbone(layers, source)
    # The last layer of stage 2 (stride 8) and of stage 3 (stride 16): before the DWConv that starts the next stage.
    starts = [int(downsample.get("i")) for downsample, _ in stages[1:]]
    stage_ends = {"b2": starts[1] - 1, "b3": starts[2] - 1}
    _check_head(layers, head, stage_ends, source)
    renamer = _Renamer(source)
    with missing_tensors(source, ", which every Ultralytics RT-DETR layer of its kind has"):
        _backbone(renamer, layers, stages)
        for level, offset in _ENCODER_INPUTS.items():
            key = f"encoder.input_proj.{level}"
            where = f"layer {head + offset} (input_proj)"
            renamer.conv(f"{key}.0", f"{key}.1", layers[head + offset], where, 1, 1, "Identity")
        encoder_heads = _aifi(renamer, layers[head + 1])
        for index, offset in enumerate(_LATERALS):
            key = f"encoder.lateral_convs.{index}"
            renamer.conv(f"{key}.conv", f"{key}.norm", layers[head + offset], f"layer {head + offset}", 1, 1, "SiLU")
        for index, offset in enumerate(_DOWNSAMPLES):
            key = f"encoder.downsample_convs.{index}"
            renamer.conv(f"{key}.conv", f"{key}.norm", layers[head + offset], f"layer {head + offset}", 3, 2, "SiLU")
        for blocks, name in ((_FPN_BLOCKS, "fpn_blocks"), (_PAN_BLOCKS, "pan_blocks")):
            for index, offset in enumerate(blocks):
                _repc3(renamer, layers[head + offset], f"encoder.{name}.{index}")
        decoder = _decoder(renamer, layers[head + len(_HEAD) - 1])
    state = renamer.state

    read_from = [
        f"format: Ultralytics {file.version} .pt, {file.kind}",
        f"weights: {file.weights_from}, {_dtypes(file)} -> float32",
        f"layout: {file.yaml_name or 'the file’s YAML'} ({len(layers)} layers: HGNetv2 backbone, hybrid encoder, "
        "RTDETRDecoder), each layer's inputs checked",
    ]
    eps = ", ".join(f"{value:g}" for value in sorted(renamer.eps_seen))
    if renamer.eps_seen and renamer.eps_seen != {_OUR_BATCH_NORM_EPS}:
        read_from.append(f"batch norm eps {eps} (Ultralytics' initialize_weights) folded into running_var (ours 1e-5)")
    if renamer.fused:
        read_from.append(
            f"{renamer.fused} fused convolutions (saved after fuse()): each read as its convolution and an identity "
            "batch norm carrying its bias"
        )
    given = RTDETRConfig(
        version=1, num_queries=decoder["queries"], encoder_heads=encoder_heads, num_heads=decoder["heads"]
    )
    config = tensor_config(state, source, given, "the file's modules", read_from)
    if config.dec_n_points != (decoder["points"],) * decoder["levels"]:
        raise _refuse(
            source,
            f"whose decoder samples {decoder['points']} points on {decoder['levels']} levels but its tensors hold "
            f"{list(config.dec_n_points)}: is the file complete and unmodified?",
        )
    evaluated = decoder["eval_idx"] + 1
    if evaluated < config.num_decoder_layers:
        read_from.append(
            f"decoder layers: {evaluated} of {config.num_decoder_layers} (eval_idx {decoder['eval_idx']}: the later "
            "ones never run in evaluation and are dropped)"
        )
        config = dataclasses.replace(config, num_decoder_layers=evaluated)
    config = dataclasses.replace(config, aifi_positions="row_major")
    read_from.append(
        "AIFI position embedding: each token's own row and column, as Ultralytics 8.4.190 computes it (the official "
        "numbering on square inputs, such as Ultralytics' 640x640)"
    )
    state = inference_state(state, config, source, read_from)
    if file.image_size is not None:
        read_from.append(
            f"training size: imgsz {file.image_size} (Ultralytics predicts RT-DETR stretched to that square; the "
            "export takes any multiple of 32)"
        )
    class_names = file.names(config.num_classes)
    read_from.append(
        f"classes: {config.num_classes}, names from the file ('names')"
        if class_names
        else f"classes: {config.num_classes} (the file's 'names' do not name each)"
    )
    return Checkpoint(
        path, SOURCE_ULTRALYTICS, config, state, sha256, class_names=class_names, read_from=tuple(read_from)
    )


def _dtypes(file: UltralyticsFile) -> str:
    tensors = file.model.state_dict().values()
    dtypes = sorted({str(tensor.dtype).removeprefix("torch.") for tensor in tensors if tensor.is_floating_point()})
    return "/".join(dtypes)


def _recognize(candidate: Candidate):
    if candidate.folder is not None:
        return NO
    file = ultralytics_file(candidate.content)
    if file is None:
        return NO
    if not _is_rtdetr(file):
        return refuse(_describe_other(file, candidate.path.name))
    return YES


def _read(candidate: Candidate, model_config=None) -> Checkpoint:
    file = ultralytics_file(candidate.content)
    return read_ultralytics_rtdetr(candidate.path, file, candidate.sha256, model_config)


READERS = (
    Reader(
        "Ultralytics RT-DETR",
        FORMAT_ULTRALYTICS,
        _recognize,
        _read,
        labels=("RT-DETR (v1, v2)",),
        format_names=("RTDETRDetectionModel",),
    ),
)
