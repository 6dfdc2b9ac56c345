"""RT-DETR checkpoints: transformers directories (RTDetrForObjectDetection, RTDetrV2ForObjectDetection) read into
our RT-DETR give transformers' own outputs; official-code files (v1 and v2, EMA and model weights, the tensors only
training uses) read back the architecture they were made from; what our RT-DETR cannot represent fails with one
DetrDeployError.

Every model is tiny with random weights (nothing is downloaded). The official code does not run here, so official
files are made from our own model's state dict (its parameter names are the official ones) plus the tensors the
official training checkpoints add.

transformers 5.x computes the AIFI position embedding at each token's (row, column); the official code (and ours)
enumerates a (width, height) grid instead, which is the same on square stride-32 maps only. At non-square sizes the
peer comparison runs transformers with the official embedding patched in (``official_position_embedding``); the
unpatched difference is asserted in its own test.
"""

import dataclasses
import json
import re
import shutil

import pytest
import torch
from safetensors.torch import save_file

from detr_deploy.checkpoints import SOURCE_OFFICIAL, SOURCE_TRANSFORMERS, build_checkpoint_model, read_checkpoint
from detr_deploy.checkpoints.readers.rtdetr import is_official_rtdetr, read_official_rtdetr
from detr_deploy.errors import DetrDeployError
from detr_deploy.models import build_model, get_model_spec
from tests.helpers import shrink_rtdetr, tiny_name
from tests.marks import slow_after

transformers = pytest.importorskip(
    "transformers", reason="transformers builds the reference models of these tests (pip install transformers)"
)
from transformers.models.rt_detr import modeling_rt_detr  # noqa: E402
from transformers.models.rt_detr_v2 import modeling_rt_detr_v2  # noqa: E402

LABELS = ("cat", "dog", "traffic light", "kite", "zebra")
TOLERANCE = dict(rtol=1e-4, atol=1e-4)
# (batch, height, width), multiples of 32: portrait and landscape, batch 1 and 2, and a square size.
NON_SQUARE = [(1, 128, 192), (2, 192, 128)]
SQUARE = (2, 160, 160)
# (version, ResNet block, decoder sampling method), as the official releases combine them.
HF_KINDS = [
    (1, "basic", "default"),
    (1, "bottleneck", "default"),
    (2, "basic", "default"),
    (2, "bottleneck", "default"),
    (2, "basic", "discrete"),
]


def hf_config(version: int, block: str, method: str = "default", **changes):
    """A tiny RT-DETR config: R18-like (basic blocks, CSP expansion 0.5) or R50-like (bottlenecks) proportions."""
    basic = block == "basic"
    sizes = [16, 32, 64, 128] if basic else [32, 64, 128, 256]
    backbone = transformers.RTDetrResNetConfig(
        depths=[1, 1, 2, 1],
        hidden_sizes=sizes,
        embedding_size=16,
        layer_type=block,
        out_indices=[2, 3, 4],
    )
    settings = dict(
        backbone_config=backbone,
        encoder_hidden_dim=32,
        encoder_in_channels=sizes[1:],
        decoder_in_channels=[32, 32, 32],
        encoder_ffn_dim=64,
        encoder_attention_heads=4,
        hidden_expansion=0.5 if basic else 1.0,
        d_model=32,
        decoder_ffn_dim=48,
        decoder_attention_heads=4,
        decoder_layers=2,
        decoder_n_points=2 if basic else 3,
        num_queries=12,
        id2label=dict(enumerate(LABELS)),
        # As the official R18/R34 configs, which train their backbone norms (num_batches_tracked in the file).
        freeze_backbone_batch_norms=not basic,
    )
    if version == 2:
        settings["decoder_method"] = method
    settings.update(changes)
    return (transformers.RTDetrV2Config if version == 2 else transformers.RTDetrConfig)(**settings)


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random values where transformers initializes constants (batch norm statistics, zero box-head layers, norms,
    zero attention weights), so that every tensor's renaming matters to the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point() or name.endswith("n_points_scale"):
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + noise.abs())
            elif tensor.dim() <= 1 or float(tensor.abs().max()) == 0.0:
                tensor.add_(0.1 * noise)
    return model.eval()


def hf_model(version: int, block: str, method: str = "default", seed: int = 0, **changes):
    torch.manual_seed(seed)
    config = hf_config(version, block, method, **changes)
    model_class = transformers.RTDetrV2ForObjectDetection if version == 2 else transformers.RTDetrForObjectDetection
    return randomize(model_class(config), seed)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """saved(version, block, method) -> (transformers model, its save_pretrained directory), made once each."""
    made = {}

    def make(version, block, method="default"):
        key = (version, block, method)
        if key not in made:
            model = hf_model(version, block, method, seed=len(made))
            directory = tmp_path_factory.mktemp(f"rtdetr_v{version}_{block}_{method}")
            model.save_pretrained(directory)
            made[key] = model, directory
        return made[key]

    return make


def official_embedding(width: int, height: int, embed_dim: int, temperature: float) -> torch.Tensor:
    """lyuwenyu/RT-DETR's ``build_2d_sincos_position_embedding(w, h)``: a (w, h) grid flattened w-major, [1, w*h, D]."""
    grid_w, grid_h = torch.meshgrid(
        torch.arange(width, dtype=torch.float32), torch.arange(height, dtype=torch.float32), indexing="ij"
    )
    pos_dim = embed_dim // 4
    omega = 1.0 / temperature ** (torch.arange(pos_dim, dtype=torch.float32) / pos_dim)
    out_w = grid_w.flatten()[:, None] * omega[None]
    out_h = grid_h.flatten()[:, None] * omega[None]
    return torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)[None]


@pytest.fixture
def official_position_embedding(monkeypatch):
    """transformers' AIFI position embedding replaced by the official one (see the module docstring)."""

    def forward(self, width, height, device, dtype):
        return official_embedding(int(width), int(height), self.embed_dim, self.temperature).to(device, dtype)

    for module in (modeling_rt_detr.RTDetrSinePositionEmbedding, modeling_rt_detr_v2.RTDetrV2SinePositionEmbedding):
        monkeypatch.setattr(module, "forward", forward)


def compare(checkpoint, reference, cases) -> None:
    """Our eager outputs against transformers' logits and pred_boxes, query by query, for each (batch, h, w)."""
    ours = build_checkpoint_model(checkpoint)
    generator = torch.Generator().manual_seed(1)
    for batch, height, width in cases:
        images = torch.rand(batch, 3, height, width, generator=generator)  # RT-DETR takes RGB in 0..1
        with torch.no_grad():
            expected = reference(pixel_values=images)
            got = ours(images)
        # Queries are a top-k of encoder scores: same order when the scores are computed alike (random weights
        # leave no near-ties at this tolerance).
        torch.testing.assert_close(got["pred_logits"], expected.logits, **TOLERANCE)
        torch.testing.assert_close(got["pred_boxes"], expected.pred_boxes, **TOLERANCE)


@pytest.mark.parametrize("version, block, method", slow_after(HF_KINDS))
def test_transformers_directory_gives_transformers_outputs(saved, official_position_embedding, version, block, method):
    reference, directory = saved(version, block, method)
    checkpoint = read_checkpoint(directory)
    config = checkpoint.config
    assert checkpoint.source == SOURCE_TRANSFORMERS
    assert checkpoint.class_names == LABELS
    assert (config.version, config.backbone.block, config.sampling_method) == (version, block, method)
    assert config.backbone.blocks_per_stage == (1, 1, 2, 1)
    assert (config.num_classes, config.num_queries, config.num_decoder_layers) == (len(LABELS), 12, 2)
    assert config.encoder_expansion == (0.5 if block == "basic" else 1.0)
    assert config.dec_n_points == ((2,) * 3 if block == "basic" else (3,) * 3)
    compare(checkpoint, reference, NON_SQUARE)


# A tiny HGNetv2 with every kind of stage: plain and light layers, kernels 3 and 5, residual blocks (stage 3).
TINY_HGNETV2 = dict(
    stem_channels=[3, 8, 8],
    stage_in_channels=[8, 16, 32, 48],
    stage_mid_channels=[8, 12, 16, 24],
    stage_out_channels=[16, 32, 48, 64],
    stage_num_blocks=[1, 1, 2, 1],
    stage_downsample=[False, True, True, True],
    stage_light_block=[False, False, True, True],
    stage_kernel_size=[3, 3, 5, 5],
    stage_numb_of_layers=[2, 2, 3, 2],
    out_features=["stage2", "stage3", "stage4"],
    # What transformers reports as the backbone's channels (the encoder's input projections are sized by these); the
    # hub's HGNetv2 configs keep them equal to stage_out_channels / the stem's output.
    hidden_sizes=[16, 32, 48, 64],
    embedding_size=8,
    depths=[1, 1, 2, 1],
)


@pytest.mark.parametrize("version, use_lab", [(1, False), (2, True)])
def test_transformers_rtdetr_with_hgnetv2_gives_transformers_outputs(
    official_position_embedding, tmp_path, version, use_lab
):
    """RT-DETR-L/X's backbone in transformers: an ``hgnet_v2`` backbone_config (LAB on in v2 to cover it)."""
    from detr_deploy.models.hgnetv2 import HGNetV2Config

    backbone = transformers.HGNetV2Config(**TINY_HGNETV2, use_learnable_affine_block=use_lab)
    torch.manual_seed(3)
    config = hf_config(version, "bottleneck", backbone_config=backbone, encoder_in_channels=[32, 48, 64])
    model_class = transformers.RTDetrV2ForObjectDetection if version == 2 else transformers.RTDetrForObjectDetection
    reference = randomize(model_class(config), seed=3)
    reference.save_pretrained(tmp_path)
    checkpoint = read_checkpoint(tmp_path)
    ours = checkpoint.config.backbone
    assert isinstance(ours, HGNetV2Config) and ours.name == "custom" and ours.use_lab == use_lab
    assert [stage.out_channels for stage in ours.stages] == TINY_HGNETV2["stage_out_channels"]
    assert [stage.num_layers for stage in ours.stages] == TINY_HGNETV2["stage_numb_of_layers"]
    assert checkpoint.config.version == version and checkpoint.class_names == LABELS
    assert any(line.startswith("backbone: HGNetv2-custom") for line in checkpoint.read_from)
    compare(checkpoint, reference, NON_SQUARE)


def test_transformers_rtdetr_l_backbone_is_named_l():
    """transformers' HGNetV2Config defaults are B4, which RT-DETR calls L: the reader names it so."""
    from detr_deploy.checkpoints import hgnetv2 as hgnetv2_checkpoints

    backbone = transformers.HGNetV2Config(out_features=["stage2", "stage3", "stage4"]).to_dict()
    read = hgnetv2_checkpoints.named(hgnetv2_checkpoints.from_transformers(backbone, "test"), ("L", "X"))
    assert read == get_model_spec("rtdetr_hgnetv2_l").config.backbone


@pytest.mark.slow
def test_transformers_square_size_needs_no_patch(saved):
    """On square inputs transformers' own position embedding is the official one: compared as it is."""
    reference, directory = saved(2, "bottleneck")
    compare(read_checkpoint(directory), reference, [SQUARE])


def test_transformers_position_embedding_is_official_only_on_square_maps():
    """Why the non-square comparisons patch transformers: its embedding differs from the official one there."""
    build = modeling_rt_detr.build_2d_sinusoidal_position_embedding
    for height, width in ((8, 8), (8, 10)):
        official = official_embedding(width, height, 32, 10000.0)[0]
        same = torch.allclose(build(height, width, 32, 10000.0), official, atol=1e-5)
        assert same == (height == width)


def test_transformers_five_x_key_names(saved, official_position_embedding, tmp_path):
    """A state dict saved with transformers 5.x module names (encoder.aifi, o_proj, mlp.fc1) reads the same."""
    reference, directory = saved(2, "bottleneck")
    state = {key: value.clone() for key, value in reference.state_dict().items()}  # tied heads: stored twice
    assert any(".aifi." in key for key in state) and any(".o_proj." in key for key in state)
    shutil.copy(directory / "config.json", tmp_path / "config.json")
    save_file(state, tmp_path / "model.safetensors")
    checkpoint = read_checkpoint(tmp_path)
    assert "keys: transformers 5.x names" in checkpoint.read_from
    compare(checkpoint, reference, NON_SQUARE[:1])


def test_transformers_per_level_points_list(saved, tmp_path):
    """decoder_n_points as a list (one count per level) reads; transformers 5.23 itself only takes one int."""
    _, directory = saved(2, "basic")
    shutil.copytree(directory, tmp_path / "model")
    edit_config(tmp_path / "model", decoder_n_points=[2, 2, 2])
    assert read_checkpoint(tmp_path / "model").config.dec_n_points == (2, 2, 2)
    from huggingface_hub.errors import StrictDataclassFieldValidationError

    with pytest.raises(StrictDataclassFieldValidationError, match="decoder_n_points"):
        transformers.RTDetrV2Config(decoder_n_points=[3, 1, 2])


def edit_config(directory, **changes) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    for name, value in changes.items():
        if name.startswith("backbone_config."):
            config["backbone_config"][name.split(".", 1)[1]] = value
        else:
            config[name] = value
    path.write_text(json.dumps(config))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"normalize_before": True}, "normalize_before"),
        ({"encoder_activation_function": "relu"}, "encoder_activation_function"),
        ({"num_feature_levels": 4}, "num_feature_levels 4"),
        ({"learn_initial_query": True}, "learn_initial_query"),
        ({"decoder_method": "bicubic"}, "decoder_method 'bicubic'"),
        ({"decoder_offset_scale": 1.0}, "decoder_offset_scale"),
        ({"backbone_config.model_type": "swin"}, "backbone_config model_type 'swin'"),
        ({"backbone_config.downsample_in_bottleneck": True}, "downsample_in_bottleneck"),
        ({"backbone_config.embedding_size": 32}, "embedding_size 32"),
        ({"backbone_config.out_indices": [1, 2, 3], "backbone_config.out_features": None}, r"outputs \[1, 2, 3\]"),
        ({"decoder_layers": 3}, "decoder_layers 3 but the weights have 2"),
        ({"encoder_ffn_dim": 128}, "encoder_ffn_dim 128 but the weights have 64"),
        ({"decoder_attention_heads": 8}, "4 decoder heads"),
        ({"architectures": ["RTDetrV2Model"]}, "RTDetrV2Model"),
        ({"model_type": "rt_detr"}, "model_type 'rt_detr' but architecture RTDetrV2ForObjectDetection"),
    ],
)
def test_transformers_unsupported_or_contradicted_config(saved, tmp_path, changes, message):
    _, directory = saved(2, "bottleneck")
    shutil.copytree(directory, tmp_path / "model")
    edit_config(tmp_path / "model", **changes)
    with pytest.raises(DetrDeployError, match=message):
        read_checkpoint(tmp_path / "model")


# Official files ----------------------------------------------------------------------------------------------------

# (zoo name, per-level points): v1 and v2, R18-like basic and R50-like bottleneck, discrete, mixed points.
OFFICIAL_KINDS = [
    ("rtdetr_r18vd", None),
    ("rtdetr_r50vd", None),
    ("rtdetrv2_r18vd", None),
    ("rtdetrv2_r101vd", None),
    ("rtdetrv2_r18vd_discrete", None),
    ("rtdetrv2_r18vd", (3, 1, 2)),
    ("rtdetr_hgnetv2_l", None),
    ("rtdetr_hgnetv2_x", None),
]


def official_state(config, seed: int) -> dict:
    """Our model's state dict with the tensors an official training checkpoint adds: the denoising label embedding,
    v2's 640x640 anchor buffers, and the batch norm counters of the R18/R34 backbones (trained, not frozen)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # build_model(seed=) also calibrates batch norms with forward passes: slower
        state = dict(build_model(config).state_dict())
    state["decoder.denoising_class_embed.weight"] = torch.randn(config.num_classes + 1, config.hidden_dim)
    if config.version == 2:
        state["decoder.anchors"] = torch.randn(1, 8400, 4)
        state["decoder.valid_mask"] = torch.ones(1, 8400, 1, dtype=torch.bool)
    if getattr(config.backbone, "block", None) == "basic":
        norms = [
            key.removesuffix(".running_mean")
            for key in state
            if key.startswith("backbone.") and key.endswith("running_mean")
        ]
        state.update({f"{norm}.num_batches_tracked": torch.tensor(7) for norm in norms})
    return state


def official_file(config, ema: bool = True) -> dict:
    """What the official solver saves: EMA and model weights (different here, to see which is read), and more."""
    content = {"model": official_state(config, seed=1), "last_epoch": 3, "optimizer": {"state": {}}}
    if ema:
        content["ema"] = {"module": official_state(config, seed=0), "updates": 10}
    return content


def tiny(name: str, points=None, **changes):
    return dataclasses.replace(shrink_rtdetr(get_model_spec(name).config, dec_n_points=points), **changes)


@pytest.mark.parametrize("name, points", OFFICIAL_KINDS)
def test_official_file_reads_back_its_architecture(name, points):
    config = tiny(name, points)
    content = official_file(config)
    assert is_official_rtdetr(content)
    checkpoint = read_official_rtdetr("model.pth", content, "0" * 64, model_config=config)
    assert checkpoint.config == config
    assert checkpoint.source == SOURCE_OFFICIAL and checkpoint.class_names is None
    assert any(line.startswith("weights: EMA") for line in checkpoint.read_from)
    ema = content["ema"]["module"]
    assert all(torch.equal(tensor, ema[key]) for key, tensor in checkpoint.state_dict.items() if key in ema)
    assert checkpoint.state_dict.keys() == build_checkpoint_model(checkpoint).state_dict().keys()


@pytest.mark.parametrize("name", ["rtdetr_r18vd", "rtdetrv2_r50vd", "rtdetrv2_r18vd_discrete"])
def test_official_file_without_model_reads_official_defaults(name):
    """Without --model, what no tensor holds takes the official configs' values: 8 heads (v2's decoder heads are
    in its tensors), 300 queries, "default" sampling; the model weights are read when there is no EMA."""
    config = tiny(name, encoder_heads=8, num_heads=8 if name.startswith("rtdetr_") else 4, num_queries=300)
    checkpoint = read_official_rtdetr("model.pth", official_file(config, ema=False), "0" * 64)
    assert checkpoint.config == dataclasses.replace(config, sampling_method="default")
    assert any(line.startswith("weights: 'model'") for line in checkpoint.read_from)
    assert any(line.startswith("queries: 300 (the official") for line in checkpoint.read_from)


def test_official_bare_state_dict_and_earlier_eval_layer():
    """A bare state dict reads; a --model with fewer decoder layers evaluates at its last (the official eval_idx),
    and the later layers and heads are dropped."""
    config = tiny("rtdetrv2_r50vd", num_decoder_layers=3)
    state = official_state(config, seed=0)
    evaluated = dataclasses.replace(config, num_decoder_layers=2)
    checkpoint = read_official_rtdetr("model.pth", state, "0" * 64, model_config=evaluated)
    assert checkpoint.config == evaluated
    assert not any(re.match(r"decoder\.(dec_\w+|decoder\.layers)\.2\.", key) for key in checkpoint.state_dict)
    assert any("eval_idx 1" in line for line in checkpoint.read_from)
    build_checkpoint_model(checkpoint)


def test_official_not_rtdetr_is_not_recognized():
    assert not is_official_rtdetr({"model": {"backbone.0.body.conv1.weight": torch.zeros(1)}})
    # D-FINE's decoder (the D-FINE reader's files) has RT-DETR's heads and the FDR constants.
    state = official_state(tiny("rtdetrv2_r18vd"), seed=0)
    assert is_official_rtdetr({"model": state})
    assert not is_official_rtdetr({"model": {**state, "decoder.reg_scale": torch.ones(1), "decoder.up": torch.ones(1)}})
    assert not is_official_rtdetr([1, 2])


def _edited(state: dict, remove=(), add=None, rename=None) -> dict:
    state = {key: value for key, value in state.items() if key not in remove}
    for old, new in (rename or {}).items():
        state = {key.replace(old, new): value for key, value in state.items()}
    state.update(add or {})
    return state


@pytest.mark.parametrize(
    "edit, message",
    [
        (dict(remove=["encoder.lateral_convs.0.conv.weight"]), "1 missing tensors"),
        (dict(add={"encoder.lateral_convs.0.conv.weight": torch.zeros(32, 32, 3, 3)}), "other shapes"),
        (dict(remove=["decoder.dec_score_head.0.weight"]), "has no tensor decoder.dec_score_head.0.weight"),
        (dict(rename={"backbone.conv1.conv1_": "backbone.patch_embed.proj"}), "neither a ResNet-vd nor an HGNetv2"),
        (dict(add={"decoder.tgt_embed.weight": torch.zeros(10, 32)}), "learned query content"),
        (dict(rename={"decoder.enc_output.proj.": "decoder.enc_output.0."}), "mixes RT-DETR v1 and v2"),
        (dict(add={"decoder.enc_score_head.weight": torch.zeros(1, 32)}), "class-agnostic"),
        (dict(add={"decoder.input_proj.3.conv.weight": torch.zeros(32, 32, 3, 3)}), "decoder 4 levels"),
        (dict(add={"decoder.decoder.layers.0.cross_attn.num_points_scale": torch.full((6,), 0.3)}), "num_points_scale"),
    ],
)
def test_official_refusals(edit, message):
    state = _edited(official_state(tiny("rtdetrv2_r18vd"), seed=0), **edit)
    with pytest.raises(DetrDeployError, match=message):
        read_official_rtdetr("model.pth", {"model": state}, "0" * 64)


def test_official_heads_contradicting_model_are_refused():
    config = tiny("rtdetrv2_r18vd")
    with pytest.raises(DetrDeployError, match="4 decoder heads"):
        read_official_rtdetr("model.pth", official_file(config), "0" * 64, dataclasses.replace(config, num_heads=8))


def test_official_file_through_read_checkpoint(tmp_path):
    """The .pth path: read_checkpoint recognizes the file and reads it with this reader."""
    torch.save(official_file(get_model_spec(tiny_name("rtdetr_r50vd")).config), tmp_path / "rtdetr.pth")
    checkpoint = read_checkpoint(tmp_path / "rtdetr.pth", get_model_spec(tiny_name("rtdetr_r50vd")).config)
    assert checkpoint.source == SOURCE_OFFICIAL
    assert checkpoint.config == get_model_spec(tiny_name("rtdetr_r50vd")).config


@pytest.mark.parametrize("version, backbone", slow_after([(2, "resnet_vd"), (1, "resnet_vd"), (2, "hgnetv2")]))
def test_onnx_export_of_a_transformers_directory_gives_transformers_outputs(
    official_position_embedding, version, backbone, tmp_path
):
    """The deployed file, not only our eager model: its ONNX Runtime outputs equal transformers' own, at sizes the
    export never saw (the export traces 320x416); with transformers' ResNet-vd or its HGNetv2 (RT-DETR-L/X)."""
    import numpy as np

    from detr_deploy.parity import TOLERANCES, align_queries
    from detr_deploy.runtime.onnxruntime import OnnxRuntimeRunner
    from tests.helpers import export_checkpoint

    # Random weights leave every encoder token with nearly the same selection score (-0.10684 +- 1e-6 here), and a
    # top-k over such near-ties is not reproducible across backends. Batch-norm statistics of random images, as
    # training gives them, spread the scores (the same calibration as our seeded zoo weights).
    changes = {}
    if backbone == "hgnetv2":
        changes = dict(backbone_config=transformers.HGNetV2Config(**TINY_HGNETV2), encoder_in_channels=[32, 48, 64])
    reference = hf_model(version, "bottleneck", seed=7, **changes)
    norms = [m for m in reference.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    reference.train()
    with torch.no_grad():
        for _ in range(2):
            reference(pixel_values=torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(3)))
    reference.eval()
    directory = tmp_path / f"rtdetr_v{version}"
    reference.save_pretrained(directory)
    checkpoint = read_checkpoint(directory)
    path = tmp_path / f"rtdetr_v{version}.onnx"
    export_checkpoint(checkpoint, path)
    runner = OnnxRuntimeRunner(path)
    assert json.loads(runner.metadata["detr_deploy.class_names"]) == list(LABELS)
    generator = torch.Generator().manual_seed(2)
    for batch, height, width in NON_SQUARE:
        images = torch.rand(batch, 3, height, width, generator=generator)
        with torch.no_grad():
            expected = reference(pixel_values=images)
        reference_outputs = {"pred_logits": expected.logits.numpy(), "pred_boxes": expected.pred_boxes.numpy()}
        # Queries are a top-k of encoder scores: near-equal scores may come out in another order in ONNX Runtime
        # (verify-parity aligns them the same way); no query may be selected on one side only.
        outputs, _, unpaired = align_queries(reference_outputs, runner.run(images.numpy()), TOLERANCES["fp32"])
        assert not unpaired.any()
        np.testing.assert_allclose(outputs["pred_logits"], reference_outputs["pred_logits"], **TOLERANCE)
        np.testing.assert_allclose(outputs["pred_boxes"], reference_outputs["pred_boxes"], **TOLERANCE)
