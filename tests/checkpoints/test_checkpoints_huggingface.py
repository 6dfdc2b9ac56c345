"""transformers checkpoints (the directory save_pretrained writes): DETR, DETR-panoptic and Deformable DETR (plain,
box refinement, two-stage) read into the zoo modules give transformers' own outputs, whatever the key names (4.x or
5.x), the config style (4.x flat fields or 5.x nested backbone_config), the backbone layout (transformers' ResNet or
timm's, i.e. torchvision's names) and the weight files (safetensors, pytorch_model.bin, shards); files that cannot be
used fail with one clear message.

Every model is tiny with random weights, built here with transformers (nothing is downloaded). timm does not run
here, so a timm-layout checkpoint is made by renaming the tensors of a transformers-ResNet model, whose outputs are
the reference.
"""

import copy
import hashlib
import inspect
import json
import re

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from detr_deploy.checkpoints import SOURCE_TRANSFORMERS, build_checkpoint_model, read_checkpoint
from detr_deploy.checkpoints.formats.transformers import is_transformers_state
from detr_deploy.errors import DetrDeployError
from detr_deploy.io import sha256_of
from tests.marks import slow_after

transformers = pytest.importorskip(
    "transformers", reason="transformers builds the reference models of these tests (pip install transformers)"
)

# Our own label names, so that class names visibly come from id2label.
LABELS = ("cat", "dog", "traffic light", "kite", "zebra")
# (batch, height, width): batch 1 and 3, sizes neither multiples of 32 nor square (portrait and landscape).
CASES = [(1, 197, 263), (3, 230, 170)]
TOLERANCE = dict(rtol=1e-4, atol=1e-4)
KINDS = ("detr", "panoptic", "deformable", "refine", "two_stage")
ARCHITECTURES = {
    "detr": "DetrForObjectDetection",
    "panoptic": "DetrForSegmentation",
    "deformable": "DeformableDetrForObjectDetection",
    "refine": "DeformableDetrForObjectDetection",
    "two_stage": "DeformableDetrForObjectDetection",
}


def resnet_config(out_features, depths=(1, 1, 1, 1)):
    """A bottleneck ResNet with torchvision's proportions (stem = a quarter of stage 1, widths doubling), tiny."""
    return transformers.ResNetConfig(
        depths=list(depths),
        hidden_sizes=[32, 64, 128, 256],
        embedding_size=8,
        layer_type="bottleneck",
        out_features=out_features,
    )


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random values where transformers initializes constants (frozen batch norm statistics, zero box-head layers,
    norms), so every tensor's renaming matters to the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + noise.abs())
            elif tensor.dim() <= 1 or float(tensor.abs().max()) == 0.0:
                tensor.add_(0.1 * noise)
    return model.eval()


def hf_model(kind: str, depths=(1, 1, 1, 1), seed: int = 0):
    """A tiny transformers model of ``kind`` with random weights, in eval mode."""
    labels = {index: name for index, name in enumerate(LABELS)}
    torch.manual_seed(seed)
    if kind in ("detr", "panoptic"):
        panoptic = kind == "panoptic"
        # The panoptic mask head needs d_model >= 128 with 8 heads (its GroupNorms have 8 groups).
        config = transformers.DetrConfig(
            backbone_config=resnet_config(["stage1", "stage2", "stage3", "stage4"] if panoptic else ["stage4"], depths),
            d_model=128 if panoptic else 32,
            encoder_layers=1,
            decoder_layers=2,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            encoder_attention_heads=8 if panoptic else 4,
            decoder_attention_heads=8 if panoptic else 4,
            # The mask head runs once per query: few of them keep the test quick.
            num_queries=5 if panoptic else 10,
            id2label=labels,
        )
        model_class = transformers.DetrForSegmentation if panoptic else transformers.DetrForObjectDetection
    else:
        config = transformers.DeformableDetrConfig(
            backbone_config=resnet_config(["stage2", "stage3", "stage4"], depths),
            d_model=32,
            encoder_layers=2,
            decoder_layers=2,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            num_queries=12,
            encoder_n_points=2,
            decoder_n_points=2,
            with_box_refine=kind in ("refine", "two_stage"),
            two_stage=kind == "two_stage",
            two_stage_num_proposals=12,
            id2label=labels,
        )
        model_class = transformers.DeformableDetrForObjectDetection
    return randomize(model_class(config), seed)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """saved(kind, depths) -> (transformers model, the directory its save_pretrained wrote), made once each."""
    cache = {}

    def get(kind: str, depths=(1, 1, 1, 1)):
        if (kind, depths) not in cache:
            model = hf_model(kind, depths)
            directory = tmp_path_factory.mktemp(f"{kind}-save-pretrained")
            model.save_pretrained(directory)
            cache[kind, depths] = model, directory
        return cache[kind, depths]

    return get


def images(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed + 1000 * batch + height)
    return torch.randn(batch, 3, height, width, generator=generator)


def reference_outputs(hf, pixels: torch.Tensor) -> dict:
    with torch.no_grad():
        outputs = hf(pixel_values=pixels)
    reference = {"pred_logits": outputs.logits, "pred_boxes": outputs.pred_boxes}
    if getattr(outputs, "pred_masks", None) is not None:
        reference["pred_masks"] = outputs.pred_masks
    return reference


def assert_matches_transformers(model, hf, cases=CASES) -> None:
    for batch, height, width in cases:
        pixels = images(batch, height, width)
        expected = reference_outputs(hf, pixels)
        with torch.no_grad():
            ours = model(pixels)
        assert set(ours) == set(expected)
        for name, tensor in expected.items():
            torch.testing.assert_close(ours[name], tensor, **TOLERANCE, msg=f"{name} at {batch}x{height}x{width}")


def write_directory(directory, config: dict, state: dict, name: str = "model.safetensors"):
    """config.json plus the tensors of ``state`` (cloned: safetensors refuses shared storage) under ``name``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    tensors = {key: value.detach().clone().contiguous() for key, value in state.items()}
    if name.endswith(".safetensors"):
        save_file(tensors, directory / name, metadata={"format": "pt"})
    else:
        torch.save(tensors, directory / name)
    return directory


def saved_config(directory) -> dict:
    return json.loads((directory / "config.json").read_text())


# transformers 4.x's module names (modeling_detr.py / modeling_deformable_detr.py of 4.x: DetrConvModel.conv_encoder,
# DetrAttention.out_proj, fc1/fc2 in each layer, the official mask-head and box-attention names), from 5.x's.
FOUR_X_NAMES = [
    ("model.backbone.model.", "model.backbone.conv_encoder.model."),
    (".o_proj.", ".out_proj."),
    (".mlp.fc1.", ".fc1."),
    (".mlp.fc2.", ".fc2."),
    ("bbox_attention.q_proj.", "bbox_attention.q_linear."),
    ("bbox_attention.k_proj.", "bbox_attention.k_linear."),
    ("mask_head.conv1.conv.", "mask_head.lay1."),
    ("mask_head.conv1.norm.", "mask_head.gn1."),
    ("mask_head.conv2.conv.", "mask_head.lay2."),
    ("mask_head.conv2.norm.", "mask_head.gn2."),
    ("mask_head.output_conv.", "mask_head.out_lay."),
] + [
    pair
    for stage in range(3)
    for pair in (
        (f"mask_head.fpn_stages.{stage}.fpn_adapter.", f"mask_head.adapter{stage + 1}."),
        (f"mask_head.fpn_stages.{stage}.refine.conv.", f"mask_head.lay{stage + 3}."),
        (f"mask_head.fpn_stages.{stage}.refine.norm.", f"mask_head.gn{stage + 3}."),
    )
]


def four_x_state(hf) -> dict:
    """The model's state dict (5.x module names) under transformers 4.x names, tied duplicates included (as 4.x's
    pytorch_model.bin files have them)."""
    renamed = {}
    for key, tensor in hf.state_dict().items():
        for old, new in FOUR_X_NAMES:
            key = key.replace(old, new)
        renamed[key] = tensor
    return renamed


def _timm_name(match: re.Match) -> str:
    """``encoder.stages.S.layers.B.(layer.K|shortcut).…`` -> ``layer{S+1}.B.(conv|bn){K+1}|downsample.{0,1}.…``."""
    stage, block, part = int(match[1]) + 1, match[2], match[3]
    kind, rest = re.fullmatch(r"(layer\.\d|shortcut)\.(convolution\.weight|normalization\.\w+)", part).groups()
    if kind == "shortcut":
        module = "downsample.0" if rest.startswith("convolution") else "downsample.1"
    else:
        index = int(kind[-1]) + 1
        module = f"conv{index}" if rest.startswith("convolution") else f"bn{index}"
    return f"layer{stage}.{block}.{module}.{rest.split('.', 1)[1]}"


def timm_state(state: dict) -> dict:
    """transformers' ResNet tensors renamed to timm's (= torchvision's) ResNet names, as in hub checkpoints like
    facebook/detr-resnet-50."""
    renamed = {}
    for key, tensor in state.items():
        head, sep, tail = key.partition("backbone.conv_encoder.model.")
        if sep:
            tail = re.sub(r"^embedder\.embedder\.convolution\.", "conv1.", tail)
            tail = re.sub(r"^embedder\.embedder\.normalization\.", "bn1.", tail)
            tail = re.sub(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.(.*)$", _timm_name, tail)
            key = head + sep + tail
        renamed[key] = tensor
    return renamed


def four_x_timm_config(config: dict, out_indices) -> dict:
    """A transformers 4.x config.json of a timm backbone: flat fields, no backbone_config."""
    config = copy.deepcopy(config)
    config.pop("backbone_config")
    config.update(
        transformers_version="4.46.3",
        use_timm_backbone=True,
        backbone="resnet50",
        use_pretrained_backbone=False,
        backbone_config=None,
        backbone_kwargs={"out_indices": out_indices, "in_chans": 3},
        dilation=False,
    )
    return config


# --- save_pretrained directories of transformers 5.x ---------------------------------------------------------------


@pytest.mark.parametrize("kind", slow_after(KINDS))
def test_save_pretrained_directory_gives_transformers_outputs(kind, saved):
    hf, directory = saved(kind)
    checkpoint = read_checkpoint(directory)
    assert checkpoint.source == SOURCE_TRANSFORMERS
    assert checkpoint.class_names == LABELS
    assert checkpoint.sha256 == sha256_of(directory / "model.safetensors")
    assert checkpoint.config.num_classes == len(LABELS)
    assert getattr(checkpoint.config, "panoptic", False) == (kind == "panoptic")
    assert getattr(checkpoint.config, "with_box_refine", False) == (kind in ("refine", "two_stage"))
    assert getattr(checkpoint.config, "two_stage", False) == (kind == "two_stage")
    assert f"format: transformers 5.x directory ({ARCHITECTURES[kind]})" in checkpoint.read_from
    # transformers 5.x's save_pretrained reverses its conversion mapping: the file has 4.x names.
    assert "keys: transformers 4.x names" in checkpoint.read_from
    assert "backbone: HF ResNet layout" in checkpoint.read_from
    assert f"classes: id2label ({len(LABELS)} names)" in checkpoint.read_from
    assert_matches_transformers(build_checkpoint_model(checkpoint), hf)


def test_save_pretrained_writes_the_4x_names(saved):
    """What 5.x's save_pretrained writes is the 4.x layout this file's renaming produces, less tied copies."""
    for kind in ("panoptic", "two_stage"):
        hf, directory = saved(kind)
        with safe_open(directory / "model.safetensors", "pt") as handle:
            written = set(handle.keys())
        four_x = set(four_x_state(hf))
        assert written <= four_x
        assert all(re.match(r"(model\.decoder\.)?(class_embed|bbox_embed)\.", key) for key in four_x - written)


def test_config_json_and_safetensors_paths_read_like_the_directory(saved):
    _, directory = saved("detr")
    by_directory = read_checkpoint(directory)
    for given in (directory / "config.json", directory / "model.safetensors"):
        checkpoint = read_checkpoint(given)
        assert checkpoint.config == by_directory.config
        assert checkpoint.sha256 == by_directory.sha256
        assert checkpoint.class_names == LABELS


# --- key layouts, config styles, backbone layouts, weight files ----------------------------------------------------


@pytest.mark.parametrize("kind", ["detr", "panoptic", "two_stage"])
def test_5x_module_names_read(kind, saved, tmp_path):
    """A state dict saved from the 5.x modules themselves (model.state_dict(): o_proj, mlp.fc1, backbone.model)."""
    hf, directory = saved(kind)
    write_directory(tmp_path, saved_config(directory), hf.state_dict())
    checkpoint = read_checkpoint(tmp_path)
    assert "keys: transformers 5.x names" in checkpoint.read_from
    assert_matches_transformers(build_checkpoint_model(checkpoint), hf, CASES)


RESNET50 = (3, 4, 6, 3)


@pytest.mark.parametrize("kind", ["detr", "deformable"])
def test_timm_backbone_with_4x_names_and_4x_config(kind, saved, tmp_path):
    """The hub's layout (facebook/detr-resnet-50, SenseTime/deformable-detr): a timm ResNet-50 with torchvision's
    names, transformers 4.x names, a 4.x config.json (use_timm_backbone, backbone, dilation)."""
    hf, directory = saved(kind, depths=RESNET50)
    config = four_x_timm_config(saved_config(directory), [1, 2, 3, 4] if kind == "detr" else [2, 3, 4])
    checkpoint = read_checkpoint(write_directory(tmp_path, config, timm_state(four_x_state(hf))))
    assert "format: transformers 4.x directory" in checkpoint.read_from[0]
    assert "keys: transformers 4.x names" in checkpoint.read_from
    assert "config: transformers 4.x style (flat backbone fields, use_timm_backbone true)" in checkpoint.read_from
    assert "backbone: timm resnet50 layout (torchvision names)" in checkpoint.read_from
    assert checkpoint.config.backbone.blocks_per_stage == RESNET50
    assert checkpoint.model_name == ("detr_r50" if kind == "detr" else "deformable_detr_r50")
    assert checkpoint.class_names == LABELS
    assert_matches_transformers(build_checkpoint_model(checkpoint), hf, CASES if kind == "detr" else CASES[:1])


def test_dilation_of_timm_backbones_is_dc5(saved, tmp_path):
    """4.x's dilation and 5.x's timm output_stride 16 are DC5; transformers' own ResNet ignores dilation (it runs
    undilated); a timm name must agree with the blocks in the tensors."""
    hf, directory = saved("detr", depths=RESNET50)
    state = timm_state(four_x_state(hf))
    four_x = dict(four_x_timm_config(saved_config(directory), [1, 2, 3, 4]), dilation=True)
    five_x = dict(
        saved_config(directory),
        backbone_config={"model_type": "timm_backbone", "backbone": "resnet50", "out_indices": [1, 2, 3, 4]},
    )
    five_x["backbone_config"]["output_stride"] = 16
    for name, config in (("four", four_x), ("five", five_x)):
        checkpoint = read_checkpoint(write_directory(tmp_path / name, config, state))
        assert checkpoint.model_name == "detr_r50_dc5"
        assert "dilation (DC5): yes (config.json)" in checkpoint.read_from
        build_checkpoint_model(checkpoint)
    hf_resnet = dict(saved_config(directory), dilation=True)
    checkpoint = read_checkpoint(write_directory(tmp_path / "hf", hf_resnet, hf.state_dict()))
    assert checkpoint.model_name == "detr_r50"
    assert_matches_transformers(build_checkpoint_model(checkpoint), hf, CASES[:1])
    four_x["backbone"] = "resnet101"
    with pytest.raises(DetrDeployError, match=r"blocks per ResNet stage \[3, 4, 23, 3\] .* \[3, 4, 6, 3\]"):
        read_checkpoint(write_directory(tmp_path / "resnet101", four_x, state))


def test_pytorch_model_bin_with_tied_copies(saved, tmp_path):
    """4.x's pytorch_model.bin keeps every tied copy (bbox_embed.N and model.decoder.bbox_embed.N)."""
    hf, directory = saved("refine")
    state = four_x_state(hf)
    assert any(key.startswith("model.decoder.bbox_embed.") for key in state)
    write_directory(tmp_path, saved_config(directory), state, name="pytorch_model.bin")
    checkpoint = read_checkpoint(tmp_path)
    assert "weights: pytorch_model.bin" in checkpoint.read_from
    assert checkpoint.sha256 == sha256_of(tmp_path / "pytorch_model.bin")
    assert_matches_transformers(build_checkpoint_model(checkpoint), hf, CASES)


def test_sharded_safetensors_and_bin(saved, tmp_path):
    hf, _ = saved("deformable")
    directory = tmp_path / "safetensors"
    hf.save_pretrained(directory, max_shard_size="100KB")
    shards = sorted(directory.glob("model-*.safetensors"))
    assert len(shards) > 1
    checkpoint = read_checkpoint(directory)
    digests = "".join(f"{sha256_of(path)}\n" for path in shards)
    assert checkpoint.sha256 == hashlib.sha256(digests.encode()).hexdigest()
    assert f"weights: {len(shards)} shards (model.safetensors.index.json)" in checkpoint.read_from
    assert read_checkpoint(shards[-1]).sha256 == checkpoint.sha256  # a shard named: the whole set is read
    assert_matches_transformers(build_checkpoint_model(checkpoint), hf, CASES)

    # 4.x's sharded pytorch_model.bin: shards listed in pytorch_model.bin.index.json.
    state, bins = four_x_state(hf), tmp_path / "bin"
    weight_map = {key: f"pytorch_model-0000{1 + index % 2}-of-00002.bin" for index, key in enumerate(state)}
    bins.mkdir()
    (bins / "config.json").write_text((directory / "config.json").read_text())
    for name in set(weight_map.values()):
        torch.save({key: state[key].clone() for key, shard in weight_map.items() if shard == name}, bins / name)
    (bins / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    from_bins = read_checkpoint(bins)
    assert "weights: 2 shards (pytorch_model.bin.index.json)" in from_bins.read_from
    assert from_bins.config == checkpoint.config
    assert_matches_transformers(build_checkpoint_model(from_bins), hf, CASES[:1])


def test_class_names_follow_id2label(saved, tmp_path):
    hf, directory = saved("detr")
    config = saved_config(directory)
    config["id2label"] = {str(index): f"part {index}" for index in range(len(LABELS))}
    checkpoint = read_checkpoint(write_directory(tmp_path / "renamed", config, hf.state_dict()))
    assert checkpoint.class_names == tuple(f"part {index}" for index in range(len(LABELS)))
    config["id2label"] = {str(index): f"LABEL_{index}" for index in range(len(LABELS))}
    checkpoint = read_checkpoint(write_directory(tmp_path / "placeholders", config, hf.state_dict()))
    assert checkpoint.class_names is None
    config.pop("id2label")
    config.pop("label2id", None)
    checkpoint = read_checkpoint(write_directory(tmp_path / "unnamed", config, hf.state_dict()))
    assert checkpoint.class_names is None
    assert "classes: none named (config.json has no id2label)" in checkpoint.read_from


# --- ONNX ---------------------------------------------------------------------------------------------------------


def export_kwargs(checkpoint) -> dict:
    """What this version's export_onnx takes of the checkpoint (class names and format came later)."""
    from exporters.onnx import export_onnx

    taken = inspect.signature(export_onnx).parameters
    offered = {
        "model_name": checkpoint.model_name,
        "msda": "plugin",
        "weights": checkpoint.weights_label,
        "class_names": checkpoint.class_names,
        "checkpoint_format": checkpoint.source,
    }
    return {name: value for name, value in offered.items() if name in taken}


# Exporting a Deformable DETR takes over 20 s of CPU (the MSDeformAttn function and the graph checks), DETR about 12.
@pytest.mark.parametrize("kind", ["detr", pytest.param("two_stage", marks=pytest.mark.slow)])
def test_onnx_export_gives_transformers_outputs(kind, saved, tmp_path):
    pytest.importorskip("onnxruntime")
    from detr_deploy.runtime.onnxruntime import OnnxRuntimeRunner
    from exporters.onnx import export_onnx

    hf, directory = saved(kind)
    checkpoint = read_checkpoint(directory)
    path = tmp_path / f"{kind}.onnx"
    export_onnx(build_checkpoint_model(checkpoint), checkpoint.config, path, **export_kwargs(checkpoint))
    runner = OnnxRuntimeRunner(path)
    if "class_names" in export_kwargs(checkpoint):
        assert json.loads(runner.metadata["detr_deploy.class_names"]) == list(LABELS)
    for batch, height, width in CASES:
        pixels = images(batch, height, width)
        outputs = runner.run(pixels.numpy())
        for name, tensor in reference_outputs(hf, pixels).items():
            np.testing.assert_allclose(outputs[name], tensor.numpy(), **TOLERANCE, err_msg=f"{name} {batch}x{height}")


# --- what the reader refuses ----------------------------------------------------------------------------------------


def one_line_error(path, match: str) -> DetrDeployError:
    with pytest.raises(DetrDeployError, match=match) as caught:
        build_checkpoint_model(read_checkpoint(path))
    assert "\n" not in str(caught.value)
    return caught.value


def test_directory_without_config_json(saved, tmp_path):
    hf, _ = saved("detr")
    save_file({k: v.clone().contiguous() for k, v in hf.state_dict().items()}, tmp_path / "model.safetensors")
    one_line_error(tmp_path / "model.safetensors", r"has no config\.json beside it")
    (tmp_path / "model.safetensors").unlink()
    one_line_error(tmp_path, r"has no config\.json")


def test_config_json_without_weights(saved, tmp_path):
    _, directory = saved("detr")
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    one_line_error(tmp_path, r"config\.json but no weights: expected model\.safetensors")
    (tmp_path / "tf_model.h5").write_bytes(b"")
    one_line_error(tmp_path, r"found tf_model\.h5: only PyTorch weights are read")


@pytest.mark.parametrize("model_type", ["lw_detr", "grounding-dino"])
def test_other_architectures(model_type, saved, tmp_path):
    hf, directory = saved("detr")
    config = dict(saved_config(directory), model_type=model_type)
    one_line_error(write_directory(tmp_path, config, hf.state_dict()), rf"'{model_type}' model, which is not supported")


@pytest.mark.parametrize(
    "kind, change, match",
    [
        ("detr", {"position_embedding_type": "learned"}, r"position_embedding_type 'learned' \(only 'sine'\)"),
        ("detr", {"activation_function": "gelu"}, r"activation_function 'gelu'"),
        ("detr", {"decoder_ffn_dim": 128}, r"encoder_ffn_dim 64 differs from decoder_ffn_dim 128"),
        ("detr", {"decoder_attention_heads": 8}, r"encoder_attention_heads 4 differs from decoder_attention_heads 8"),
        ("detr", {"normalize_before": True}, r"pre-norm"),
        ("detr", {"backbone_config": {"model_type": "swin"}}, r"backbone 'swin' \(only ResNet"),
        ("detr", {"backbone_config": {"model_type": "timm_backbone", "backbone": "resnet50d"}}, r"'resnet50d'"),
        ("detr", {"backbone_config": {"model_type": "resnet", "layer_type": "basic"}}, r"layer_type 'basic'"),
        ("refine", {"two_stage": True, "with_box_refine": False}, r"two_stage without with_box_refine"),
        ("deformable", {"num_feature_levels": 2}, r"num_feature_levels 2"),
    ],
)
def test_settings_the_zoo_cannot_express(kind, change, match, saved, tmp_path):
    hf, directory = saved(kind)
    config = saved_config(directory)
    config.update(change)
    error = one_line_error(write_directory(tmp_path, config, hf.state_dict()), match)
    assert "cannot express" in str(error)


def test_weights_that_do_not_fit_the_config(saved, tmp_path):
    hf, directory = saved("deformable")
    state = dict(hf.state_dict())
    state.pop("model.encoder.layers.1.self_attn.value_proj.weight")
    one_line_error(write_directory(tmp_path / "missing", saved_config(directory), state), r"1 missing tensors")
    config = dict(saved_config(directory), encoder_layers=3)
    one_line_error(write_directory(tmp_path / "layers", config, hf.state_dict()), r"encoder_layers 3 .* have 2")
    config = dict(saved_config(directory), id2label={"0": "one", "1": "two"})
    one_line_error(write_directory(tmp_path / "labels", config, hf.state_dict()), r"2 labels but the class head .* 5")


def test_bare_state_dict_is_recognized_as_transformers(saved, tmp_path):
    for kind in ("detr", "panoptic", "deformable"):
        hf, _ = saved(kind)
        assert is_transformers_state(hf.state_dict())  # 5.x names
        assert is_transformers_state(four_x_state(hf))  # 4.x names
    assert not is_transformers_state({"backbone.0.body.conv1.weight": torch.zeros(1), "class_embed.weight": None})
    torch.save(four_x_state(saved("detr")[0]), tmp_path / "pytorch_model.bin")
    one_line_error(tmp_path / "pytorch_model.bin", r"transformers weights without their config\.json")
