"""mmdetection checkpoints (3.x as mmengine saves them, 2.x as mmcv's runner did): DETR and Deformable DETR (plain,
refine, refine + two-stage) read into zoo models whose outputs match mmdetection's own, eagerly and through ONNX;
detectors the zoo cannot express fail with one clear message.

The fixtures are tiny random-weight models built by mmdetection 3.3 itself from its shipped configs. mmdetection 2.x
cannot be installed beside 3.x, so 2.x files are written by renaming a 3.x model's tensors into the 2.x layout (the
two differ in names only; the names are those of mmdet 2.28 and mmcv 1.x, see detr_deploy/checkpoints/mmdetection.py).
"""

import copy
import importlib.machinery
import importlib.util
import os
import re
import sys
import types

import numpy as np
import pytest
import torch

from detr_deploy.checkpoints import SOURCE_MMDET2, SOURCE_MMDET3, build_checkpoint_model, read_checkpoint
from detr_deploy.checkpoints.formats.mmdetection import is_mmdetection
from detr_deploy.errors import DetrDeployError
from tests.marks import slow_after

# mmdetection's encoder calls torch.meshgrid without indexing=.
pytestmark = pytest.mark.filterwarnings("ignore:torch.meshgrid")

MMDET_MISSING = "mmdetection 3.x is not installed: pip install mmengine==0.10.7 mmcv-lite==2.1.0 mmdet==3.3.0"
CLASSES_5 = ("cat", "dog", "traffic cone", "kite", "zebra")
# (batch, height, width): sizes not multiples of 32, not square, both orientations.
CASES = ((1, 197, 263), (3, 230, 170))
TOLERANCE = dict(rtol=1e-4, atol=1e-4)


# --- mmdetection, built on the CPU without its compiled ops -------------------------------------------------------


def _stand_in_for_mmcv_ext() -> None:
    """mmcv-lite has no compiled ``mmcv._ext``, which ``mmcv.ops`` (imported by ``mmdet.models``) looks functions up
    in at import time. A module that answers every lookup with a function that refuses to run lets the import
    succeed; DETR never calls one and deformable attention takes its pure-PyTorch path on the CPU."""
    if "mmcv._ext" in sys.modules or importlib.util.find_spec("mmcv._ext") is not None:
        return

    def lookup(name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def compiled_op(*args, **kwargs):
            raise RuntimeError(f"mmcv's compiled op {name} is not available (mmcv-lite)")

        return compiled_op

    module = types.ModuleType("mmcv._ext")
    module.__spec__ = importlib.machinery.ModuleSpec("mmcv._ext", None)
    module.__getattr__ = lookup
    sys.modules["mmcv._ext"] = module


@pytest.fixture(scope="module")
def mmdet():
    """The mmdet namespace with its models registered; skips when mmdetection 3.x is not installed."""
    if importlib.util.find_spec("mmdet") is None or importlib.util.find_spec("mmcv") is None:
        pytest.skip(MMDET_MISSING)
    _stand_in_for_mmcv_ext()
    import mmdet
    import mmdet.models  # noqa: F401
    from mmdet.utils import register_all_modules

    if not mmdet.__version__.startswith("3."):
        pytest.skip(MMDET_MISSING)
    register_all_modules()
    return mmdet


def shipped_config(mmdet, name: str):
    from mmengine.config import Config

    return Config.fromfile(os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs", name))


def shrink(cfg, embed: int, heads: int, ffn: int, queries: int, enc_layers: int, dec_layers: int, points: int = 2):
    """The shipped config with a ResNet-50 8 channels wide, ``embed`` wide attention and few layers and queries."""
    model = cfg.model
    model.backbone.base_channels = 8
    model.backbone.init_cfg = None
    model.num_queries = queries
    stage_channels = [32 * 2**stage for stage in range(4)]
    model.neck.in_channels = [stage_channels[index] for index in model.backbone.out_indices]
    model.neck.out_channels = embed
    model.positional_encoding.num_feats = embed // 2
    model.bbox_head.num_classes = len(CLASSES_5)
    model.bbox_head.embed_dims = embed
    for coder, layers in (("encoder", enc_layers), ("decoder", dec_layers)):
        model[coder].num_layers = layers
        layer = model[coder].layer_cfg
        layer.ffn_cfg.embed_dims = embed
        layer.ffn_cfg.feedforward_channels = ffn
        for attention in ("self_attn_cfg", "cross_attn_cfg"):
            if attention in layer:
                layer[attention].embed_dims = embed
                layer[attention].num_heads = heads
                if model.type == "DeformableDETR" and (coder, attention) != ("decoder", "self_attn_cfg"):
                    layer[attention].num_points = points
    return cfg


def build_mmdet(mmdet, cfg, seed: int):
    """The mmdetection model of ``cfg``, initialized as mmdetection does, in eval mode, its weights then nudged away
    from their initial values (frozen batch-norm statistics, zero biases and box-head layers, refinement heads
    copied from one) so that nothing is trivial."""
    from mmdet.registry import MODELS

    torch.manual_seed(seed)
    model = MODELS.build(copy.deepcopy(cfg.model))
    # mmdetection leaves some parameters uninitialized until init_weights (level_embed is torch.Tensor(L, C)).
    model.init_weights()
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():  # shared parameters are listed (and nudged) once
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=generator))
    return model


def mmdet_outputs(model, images: torch.Tensor) -> tuple:
    """mmdetection's raw head outputs of the last decoder layer, as ``DetectionTransformer._forward`` computes them
    (backbone, neck, ``forward_transformer``, ``bbox_head.forward``) for unpadded images: (logits, boxes)."""
    from mmdet.structures import DetDataSample

    shape = tuple(images.shape[-2:])
    samples = [DetDataSample(metainfo=dict(batch_input_shape=shape, img_shape=shape)) for _ in images]
    with torch.no_grad():
        scores, boxes = model._forward(images, samples)
    return scores[-1], boxes[-1]


# --- the files --------------------------------------------------------------------------------------------------

# Set by Unpicklable.__setstate__: a reader that imported and ran the class would flip it.
UNPICKLED = []


class Unpicklable:
    """Stands for mmengine's HistoryBuffer in a message hub: a class a checkpoint reader must not import."""

    def __init__(self):
        self.values = [1.0, 2.0]

    def __setstate__(self, state):
        UNPICKLED.append(state)
        self.__dict__.update(state)


def save_3x(path, model, cfg=None, classes=CLASSES_5, message_hub=False):
    meta = {"dataset_meta": {"classes": classes, "palette": [(220, 20, 60)] * len(classes)}, "epoch": 50}
    if cfg is not None:
        meta["cfg"] = cfg.pretty_text
    content = {"meta": meta, "state_dict": model.state_dict()}
    if message_hub:
        content["message_hub"] = {"log_scalars": {"train/loss": Unpicklable()}, "runtime_info": {"epoch": 50}}
        content["optimizer"] = {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 2e-4}]}
    torch.save(content, path)
    return path


# 3.x -> 2.x (mmdet 2.28: everything transformer under bbox_head.transformer, BaseTransformerLayer's attentions.K,
# ffns.0 and norms.K). DETR files older than mmdet 2.12 ("v1") name attention and FFN modules as 3.x does but keep
# them under bbox_head.transformer and call the cross-attention multihead_attn and the post-norm decoder.norm.
_TO_2X = (
    (r"(encoder|decoder)\.layers\.(\d+)\.self_attn\.(.+)", r"bbox_head.transformer.\1.layers.\2.attentions.0.\3"),
    (r"decoder\.layers\.(\d+)\.cross_attn\.(.+)", r"bbox_head.transformer.decoder.layers.\1.attentions.1.\2"),
    (r"(encoder|decoder)\.layers\.(\d+)\.ffn\.(.+)", r"bbox_head.transformer.\1.layers.\2.ffns.0.\3"),
    (r"(encoder|decoder)\.layers\.(\d+)\.norms\.(.+)", r"bbox_head.transformer.\1.layers.\2.norms.\3"),
    (r"decoder\.post_norm\.(.+)", r"bbox_head.transformer.decoder.post_norm.\1"),
    (r"level_embed", "bbox_head.transformer.level_embeds"),
    (r"reference_points_fc\.(.+)", r"bbox_head.transformer.reference_points.\1"),
    (r"memory_trans_fc\.(.+)", r"bbox_head.transformer.enc_output.\1"),
    (r"memory_trans_norm\.(.+)", r"bbox_head.transformer.enc_output_norm.\1"),
    (r"pos_trans_fc\.(.+)", r"bbox_head.transformer.pos_trans.\1"),
    (r"pos_trans_norm\.(.+)", r"bbox_head.transformer.pos_trans_norm.\1"),
    (r"query_embedding\.(.+)", r"bbox_head.query_embedding.\1"),
)
_TO_2X_DETR_NECK = ((r"neck\.convs\.0\.conv\.(.+)", r"bbox_head.input_proj.\1"),)
_TO_V1 = (
    (r"(.+)\.attentions\.0\.(.+)", r"\1.self_attn.\2"),
    (r"(.+)\.attentions\.1\.(.+)", r"\1.multihead_attn.\2"),
    (r"(.+)\.ffns\.0\.(.+)", r"\1.ffn.\2"),
    (r"(.+)\.decoder\.post_norm\.(.+)", r"\1.decoder.norm.\2"),
)


def to_2x(state: dict, detr: bool, v1: bool = False) -> dict:
    renamed = {}
    rules = _TO_2X + (_TO_2X_DETR_NECK if detr else ())
    for key, tensor in state.items():
        key = next((re.sub(p, r, key) for p, r in rules if re.fullmatch(p, key)), key)
        if v1:
            key = next((re.sub(p, r, key) for p, r in _TO_V1 if re.fullmatch(p, key)), key)
        renamed[key] = tensor
    return renamed


def save_2x(path, model, detr: bool, config_text=None, classes=CLASSES_5, v1=False):
    meta = {"mmdet_version": "2.28.2", "CLASSES": classes, "epoch": 50}
    if config_text is not None:
        meta["config"] = config_text
    torch.save({"meta": meta, "state_dict": to_2x(model.state_dict(), detr, v1)}, path)
    return path


def config_text_2x(kind: str, heads: int, queries: int) -> str:
    """The parts of a 2.x config the reader looks at, as mmcv's ``Config.pretty_text`` writes them."""
    if kind == "detr":
        attention = f"dict(type='MultiheadAttention', embed_dims=32, num_heads={heads}, dropout=0.1)"
        return f"""img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
model = dict(
    type='DETR',
    backbone=dict(type='ResNet', depth=50, num_stages=4, out_indices=(3, ), style='pytorch'),
    bbox_head=dict(
        type='DETRHead', num_classes=5, in_channels=256,
        transformer=dict(
            type='Transformer',
            encoder=dict(type='DetrTransformerEncoder', num_layers=1, transformerlayers=dict(
                type='BaseTransformerLayer', attn_cfgs=[{attention}], feedforward_channels=64,
                operation_order=('self_attn', 'norm', 'ffn', 'norm'))),
            decoder=dict(type='DetrTransformerDecoder', return_intermediate=True, num_layers=2,
                transformerlayers=dict(type='DetrTransformerDecoderLayer', attn_cfgs={attention},
                    feedforward_channels=64,
                    operation_order=('self_attn', 'norm', 'cross_attn', 'norm', 'ffn', 'norm')))),
        positional_encoding=dict(type='SinePositionalEncoding', num_feats=16, normalize=True)))
"""
    return f"""model = dict(
    type='DeformableDETR',
    backbone=dict(type='ResNet', depth=50, out_indices=(1, 2, 3), style='pytorch'),
    neck=dict(type='ChannelMapper', in_channels=[64, 128, 256], kernel_size=1, out_channels=256,
        act_cfg=None, norm_cfg=dict(type='GN', num_groups=32), num_outs=4),
    bbox_head=dict(
        type='DeformableDETRHead', num_query=300, num_classes=5, in_channels=2048,
        with_box_refine=True, as_two_stage=True,
        transformer=dict(
            type='DeformableDetrTransformer', two_stage_num_proposals={queries},
            encoder=dict(type='DetrTransformerEncoder', num_layers=1, transformerlayers=dict(
                type='BaseTransformerLayer',
                attn_cfgs=dict(type='MultiScaleDeformableAttention', embed_dims=256, num_heads={heads}),
                feedforward_channels=64, operation_order=('self_attn', 'norm', 'ffn', 'norm'))),
            decoder=dict(type='DeformableDetrTransformerDecoder', num_layers=2, return_intermediate=True,
                transformerlayers=dict(type='DetrTransformerDecoderLayer', attn_cfgs=[
                    dict(type='MultiheadAttention', embed_dims=256, num_heads={heads}, dropout=0.1),
                    dict(type='MultiScaleDeformableAttention', embed_dims=256, num_heads={heads})],
                    feedforward_channels=64,
                    operation_order=('self_attn', 'norm', 'cross_attn', 'norm', 'ffn', 'norm')))),
        positional_encoding=dict(type='SinePositionalEncoding', num_feats=128, normalize=True, offset=-0.5)))
"""


# The four mmdetection models: (shipped config, sizes). DETR has 4 heads (read from the config text the files carry);
# the others mmdetection's default 8, which files without config text are read with. Two-stage needs width 256:
# mmdetection embeds proposals with 128 features per coordinate whatever the width.
KINDS = {
    "detr": (
        "detr/detr_r50_8xb2-150e_coco.py",
        dict(embed=32, heads=4, ffn=64, queries=10, enc_layers=1, dec_layers=2),
    ),
    "deformable": (
        "deformable_detr/deformable-detr_r50_16xb2-50e_coco.py",
        dict(embed=32, heads=8, ffn=64, queries=12, enc_layers=1, dec_layers=2),
    ),
    "refine": (
        "deformable_detr/deformable-detr-refine_r50_16xb2-50e_coco.py",
        dict(embed=32, heads=8, ffn=64, queries=12, enc_layers=1, dec_layers=3),
    ),
    "two_stage": (
        "deformable_detr/deformable-detr-refine-twostage_r50_16xb2-50e_coco.py",
        dict(embed=256, heads=8, ffn=64, queries=30, enc_layers=1, dec_layers=2),
    ),
}
EXPECTED_NAME = {
    "detr": "detr_r50",
    "deformable": "deformable_detr_r50",
    "refine": "deformable_detr_r50_refine",
    "two_stage": "deformable_detr_r50_two_stage",
}


@pytest.fixture(scope="module")
def mmdet_model(mmdet):
    """mmdet_model(kind) -> (mmdetection model, shrunk config, [(images, (logits, boxes)) per case]), built once."""
    cache = {}

    def get(kind: str):
        if kind not in cache:
            config_name, dims = KINDS[kind]
            cfg = shrink(shipped_config(mmdet, config_name), **dims)
            model = build_mmdet(mmdet, cfg, seed=len(cache))
            generator = torch.Generator().manual_seed(7)
            references = []
            for batch, height, width in CASES:
                images = torch.randn(batch, 3, height, width, generator=generator)
                references.append((images, mmdet_outputs(model, images)))
            cache[kind] = model, cfg, references
        return cache[kind]

    return get


def write_file(kind: str, version: str, model, cfg, folder):
    """The checkpoint file a user would have: 3.x with the config text for DETR and two-stage (where the
    architecture needs it) and a message hub for DETR; 2.x alike, DETR once more in the pre-2.12 names."""
    path = folder / f"{kind}-{version}.pth"
    if version == "3x":
        with_config = kind in ("detr", "two_stage")
        return save_3x(path, model, cfg if with_config else None, message_hub=kind == "detr")
    detr = kind == "detr"
    dims = KINDS[kind][1]
    text = config_text_2x(kind, dims["heads"], dims["queries"]) if kind in ("detr", "two_stage") else None
    return save_2x(path, model, detr, text, v1=version == "2x-v1")


def test_2x_fixture_layers_carry_the_names_of_mmcvs_base_transformer_layer(mmdet_model):
    # mmdet 2.x built every transformer layer as mmcv's BaseTransformerLayer (still in mmcv 2.x, unchanged): the
    # renamed fixtures must hold exactly its tensors.
    from mmcv.cnn.bricks.transformer import BaseTransformerLayer

    model, _, _ = mmdet_model("deformable")
    renamed = to_2x(model.state_dict(), detr=False)
    deformable = dict(type="MultiScaleDeformableAttention", embed_dims=32, num_heads=8, num_points=2)
    ffn = dict(type="FFN", embed_dims=32, feedforward_channels=64)
    layers = {
        "encoder": BaseTransformerLayer([deformable], ffn, ("self_attn", "norm", "ffn", "norm")),
        "decoder": BaseTransformerLayer(
            [dict(type="MultiheadAttention", embed_dims=32, num_heads=8), deformable],
            ffn,
            ("self_attn", "norm", "cross_attn", "norm", "ffn", "norm"),
        ),
    }
    for coder, layer in layers.items():
        prefix = f"bbox_head.transformer.{coder}.layers.0."
        expected = {prefix + key: tuple(value.shape) for key, value in layer.state_dict().items()}
        assert {key: tuple(value.shape) for key, value in renamed.items() if key.startswith(prefix)} == expected


FILES = [(kind, "3x") for kind in KINDS] + [(kind, "2x") for kind in KINDS] + [("detr", "2x-v1")]


@pytest.mark.parametrize(
    "kind, version", slow_after(FILES, keep=2, ids=[f"{kind}-{version}" for kind, version in FILES])
)
def test_file_reads_into_a_zoo_model_matching_mmdetection(kind, version, mmdet_model, tmp_path):
    model, cfg, references = mmdet_model(kind)
    path = write_file(kind, version, model, cfg, tmp_path)
    UNPICKLED.clear()
    checkpoint = read_checkpoint(path)
    assert not UNPICKLED, "the reader ran a class pickled in the file"
    dims = KINDS[kind][1]
    config = checkpoint.config
    assert checkpoint.source == (SOURCE_MMDET3 if version == "3x" else SOURCE_MMDET2)
    assert checkpoint.model_name == EXPECTED_NAME[kind]
    assert checkpoint.class_names == CLASSES_5 and config.num_classes == len(CLASSES_5)
    assert (config.hidden_dim, config.num_heads, config.dim_feedforward) == (dims["embed"], dims["heads"], dims["ffn"])
    assert (config.num_encoder_layers, config.num_decoder_layers) == (dims["enc_layers"], dims["dec_layers"])
    assert config.num_queries == dims["queries"]
    assert config.backbone.blocks_per_stage == (3, 4, 6, 3) and config.backbone.base_width == 8
    if kind != "detr":
        assert (config.enc_n_points, config.dec_n_points, config.num_feature_levels) == (2, 2, 4)
        assert config.input_proj_bias is False  # ChannelMapper's convolutions before GroupNorm have no bias
    label = {"detr": "DETR", "deformable": "DeformableDETR", "refine": "DeformableDETR, refine"}
    label["two_stage"] = "DeformableDETR, refine + two-stage"
    assert checkpoint.read_from[0] == f"format: mmdetection {version[0]}.x ({label[kind]})"
    where = "meta.dataset_meta" if version == "3x" else "meta.CLASSES"
    assert f"classes: {where} (5 names)" in checkpoint.read_from

    ours = build_checkpoint_model(checkpoint)
    for images, (logits, boxes) in references:
        # The fixture is not degenerate: queries and classes score differently, boxes differ.
        assert logits.std() > 0.05 and boxes.std() > 0.01
        with torch.no_grad():
            outputs = ours(images)
        torch.testing.assert_close(outputs["pred_logits"], logits, **TOLERANCE)
        torch.testing.assert_close(outputs["pred_boxes"], boxes, **TOLERANCE)


def test_two_stage_file_without_config_text_takes_mmdetections_default_query_count(mmdet_model, tmp_path):
    model, _, _ = mmdet_model("two_stage")
    checkpoint = read_checkpoint(save_3x(tmp_path / "two_stage.pth", model))
    assert checkpoint.config.num_queries == 300
    assert "queries: 300 (mmdetection's two-stage default; not in the tensors)" in checkpoint.read_from
    assert "heads: 8 (mmdetection's default; not in the tensors)" in checkpoint.read_from


def test_detr_file_without_config_text_reads_the_default_head_count(mmdet_model, tmp_path):
    model, _, _ = mmdet_model("detr")
    checkpoint = read_checkpoint(save_3x(tmp_path / "detr.pth", model))
    # The tensors cannot tell 4 heads from 8: without the config text the reader says what it assumed.
    assert checkpoint.config.num_heads == 8
    assert "heads: 8 (mmdetection's default; not in the tensors)" in checkpoint.read_from


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["detr", "refine"])
def test_onnx_export_of_the_file_matches_mmdetection(kind, mmdet_model, tmp_path):
    from detr_deploy.runtime.onnxruntime import OnnxRuntimeRunner
    from exporters.onnx import export_onnx

    model, cfg, references = mmdet_model(kind)
    checkpoint = read_checkpoint(write_file(kind, "2x" if kind == "refine" else "3x", model, cfg, tmp_path))
    onnx_path = tmp_path / f"{kind}.onnx"
    export_onnx(
        build_checkpoint_model(checkpoint),
        checkpoint.config,
        onnx_path,
        model_name=checkpoint.model_name,
        msda="plugin",
        weights=checkpoint.weights_label,
    )
    runner = OnnxRuntimeRunner(onnx_path)
    for images, (logits, boxes) in references:
        outputs = runner.run(images.numpy())
        torch.testing.assert_close(torch.from_numpy(outputs["pred_logits"]), logits, **TOLERANCE)
        torch.testing.assert_close(torch.from_numpy(outputs["pred_boxes"]), boxes, **TOLERANCE)


# --- what the zoo cannot express ----------------------------------------------------------------------------------


def test_detector_type_named_by_the_config_text_is_refused(mmdet, mmdet_model, tmp_path):
    # A DETR's tensors with the config text of a DINO: the config's model type settles it.
    model, cfg, _ = mmdet_model("detr")
    cfg = copy.deepcopy(cfg)
    cfg.model.type = "DINO"
    with pytest.raises(DetrDeployError, match=r"is an mmdetection 'DINO' model \(its config says so\)"):
        read_checkpoint(save_3x(tmp_path / "dino.pth", model, cfg))


def test_resnet18_backbone_is_refused(mmdet, tmp_path):
    cfg = shrink(shipped_config(mmdet, KINDS["detr"][0]), **KINDS["detr"][1])
    cfg.model.backbone.depth = 18
    cfg.model.neck.in_channels = [64]
    model = build_mmdet(mmdet, cfg, seed=3)
    with pytest.raises(DetrDeployError, match="ResNet-18/34 backbones are not supported"):
        read_checkpoint(save_3x(tmp_path / "r18.pth", model))


def _dilate(model):
    model.backbone.strides, model.backbone.dilations = (1, 2, 2, 1), (1, 1, 1, 2)


def _caffe(model):
    model.backbone.style = "caffe"


def _bgr(model):
    model.data_preprocessor.bgr_to_rgb = False


def _unnormalized_positions(model):
    model.positional_encoding.normalize = False


@pytest.mark.parametrize(
    "edit, message",
    [
        (_dilate, "its ResNet is dilated"),
        (_caffe, "style 'caffe'"),
        (_bgr, "trained on BGR inputs"),
        (_unnormalized_positions, "sine position encoding"),
    ],
    ids=["dilated", "caffe", "bgr", "positions"],
)
def test_config_settings_the_zoo_cannot_express_are_refused(edit, message, mmdet_model, tmp_path):
    # The tensors cannot show these; the config text in the file does, and the zoo would compute something else.
    model, cfg, _ = mmdet_model("detr")
    cfg = copy.deepcopy(cfg)
    edit(cfg.model)
    with pytest.raises(DetrDeployError, match=message):
        read_checkpoint(save_3x(tmp_path / "edited.pth", model, cfg))


def test_bare_state_dict_reads_without_class_names(mmdet_model, tmp_path):
    model, _, references = mmdet_model("deformable")
    path = tmp_path / "bare.pth"
    torch.save(model.state_dict(), path)
    checkpoint = read_checkpoint(path)
    assert checkpoint.class_names is None and checkpoint.config.num_classes == len(CLASSES_5)
    assert "classes: no names in the file; count from the class head" in checkpoint.read_from
    images, (logits, boxes) = references[0]
    with torch.no_grad():
        outputs = build_checkpoint_model(checkpoint)(images)
    torch.testing.assert_close(outputs["pred_logits"], logits, **TOLERANCE)
    torch.testing.assert_close(outputs["pred_boxes"], boxes, **TOLERANCE)


def test_detr_without_a_background_logit_is_refused(mmdet_model, tmp_path):
    model, _, _ = mmdet_model("detr")
    state = dict(model.state_dict())
    state["bbox_head.fc_cls.weight"] = state["bbox_head.fc_cls.weight"][:5]
    state["bbox_head.fc_cls.bias"] = state["bbox_head.fc_cls.bias"][:5]
    path = tmp_path / "sigmoid_detr.pth"
    torch.save({"meta": {"dataset_meta": {"classes": CLASSES_5}}, "state_dict": state}, path)
    with pytest.raises(DetrDeployError, match="no background logit"):
        read_checkpoint(path)


def test_two_stage_without_refinement_is_refused(mmdet, tmp_path):
    cfg = shrink(shipped_config(mmdet, KINDS["two_stage"][0]), **KINDS["two_stage"][1])
    cfg.model.with_box_refine = False
    model = build_mmdet(mmdet, cfg, seed=4)
    with pytest.raises(DetrDeployError, match="two-stage Deformable DETR without box refinement"):
        read_checkpoint(save_3x(tmp_path / "two_stage_shared.pth", model))


def test_unknown_tensors_are_refused_with_their_names(mmdet_model, tmp_path):
    model, _, _ = mmdet_model("deformable")
    state = dict(model.state_dict())
    state["encoder.layers.0.ffn.gamma2.weight"] = torch.ones(32)  # mmcv's FFN layer scale
    path = tmp_path / "layer_scale.pth"
    torch.save({"meta": {}, "state_dict": state}, path)
    with pytest.raises(DetrDeployError, match=r"1 tensor\(s\) .* \(encoder\.layers\.0\.ffn\.gamma2\.weight\)"):
        read_checkpoint(path)


def test_other_formats_are_not_taken_for_mmdetection():
    official = {"model": {"backbone.0.body.conv1.weight": torch.zeros(1), "class_embed.weight": torch.zeros(1)}}
    assert not is_mmdetection(official)
    assert not is_mmdetection({"backbone.0.body.conv1.weight": torch.zeros(1)})
    assert is_mmdetection({"meta": {}, "state_dict": {"bbox_head.fc_cls.weight": torch.zeros(1)}})
    assert is_mmdetection({"bbox_head.transformer.level_embeds": torch.zeros(1)})
    assert not is_mmdetection(np.zeros(3))
