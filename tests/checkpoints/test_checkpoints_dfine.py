"""D-FINE / DEIM checkpoints: transformers directories (DFineForObjectDetection) read into our D-FINE give
transformers' own outputs (eager and ONNX Runtime, at sizes the export never saw, batch 1 and 2); official-code
files (EMA and model weights, the tensors only training uses) read back the architecture they were made from and
the named sizes; what our D-FINE cannot represent fails with one DetrDeployError.

Models are tiny with random weights. transformers initializes its linear layers with std 0.01 and zeroes the box
heads, which leaves every query with the same box size; the peer models get fan-in scaled weights instead (as
trained ones have), so that widths, heights and edge distributions differ from query to query. The official code
does not run here (its package imports torchvision's compiled ops); official files are made from our model's state
dict (its names are the official ones) plus the tensors the official solver adds. transformers' AIFI position
embedding differs from the official one on non-square maps (see test_checkpoints_rtdetr.py): at non-square sizes
transformers runs with the official embedding patched in.
"""

import dataclasses
import json
import re

import numpy as np
import pytest
import torch

from detr_deploy.checkpoints import SOURCE_OFFICIAL, SOURCE_TRANSFORMERS, build_checkpoint_model, read_checkpoint
from detr_deploy.checkpoints.readers.dfine import is_official_dfine, read_official_dfine
from detr_deploy.checkpoints.readers.rtdetr import is_official_rtdetr
from detr_deploy.errors import DetrDeployError
from detr_deploy.models import build_model, get_model_spec
from detr_deploy.models.dfine_decoder import distance_to_box, weighting_function
from tests.checkpoints.test_checkpoints_rtdetr import TINY_HGNETV2, official_embedding
from tests.marks import slow_after

transformers = pytest.importorskip(
    "transformers", reason="transformers builds the reference models of these tests (pip install transformers)"
)
from transformers.models.d_fine import modeling_d_fine  # noqa: E402

LABELS = ("cat", "dog", "traffic light", "kite", "zebra")
TOLERANCE = dict(rtol=1e-4, atol=1e-4)
NON_SQUARE = [(1, 128, 192), (2, 192, 128)]


@pytest.fixture
def official_position_embedding(monkeypatch):
    def forward(self, width, height, device, dtype):
        return official_embedding(int(width), int(height), self.embed_dim, self.temperature).to(device, dtype)

    monkeypatch.setattr(modeling_d_fine.DFineSinePositionEmbedding, "forward", forward)


def hf_dfine(seed: int = 0, **changes):
    """A tiny transformers D-FINE with LAB, GELAN expansion 0.5, 3/6/3 points and 17 bins, trained-like weights."""
    settings = dict(
        backbone_config=transformers.HGNetV2Config(**TINY_HGNETV2, use_learnable_affine_block=True),
        encoder_in_channels=[32, 48, 64],
        encoder_hidden_dim=32,
        encoder_ffn_dim=64,
        encoder_attention_heads=4,
        d_model=32,
        decoder_in_channels=[32, 32, 32],
        decoder_ffn_dim=48,
        decoder_layers=2,
        decoder_attention_heads=4,
        num_queries=12,
        id2label=dict(enumerate(LABELS)),
        decoder_n_points=[3, 6, 3],
        hidden_expansion=0.5,
        depth_mult=0.34,
        max_num_bins=16,
    )
    settings.update(changes)
    torch.manual_seed(seed)
    model = transformers.DFineForObjectDetection(transformers.DFineConfig(**settings))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point() or name.endswith("num_points_scale"):
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + noise.abs())
            elif tensor.dim() >= 2:
                tensor.copy_(
                    noise * (2.0 / tensor[0].numel()) ** 0.5 if tensor.dim() == 4 else noise / tensor.shape[1] ** 0.5
                )
            else:
                tensor.add_(0.1 * noise)
    return model.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    reference = hf_dfine()
    directory = tmp_path_factory.mktemp("dfine")
    reference.save_pretrained(directory)
    return reference, directory


def test_weighting_function_and_box_decoding_are_transformers_own():
    up, reg_scale = torch.tensor([0.6]), torch.tensor([3.7])
    torch.testing.assert_close(
        weighting_function(32, up, reg_scale), modeling_d_fine.weighting_function(32, up, reg_scale)
    )
    initial, distance = torch.rand(2, 5, 4), torch.randn(2, 5, 4)
    torch.testing.assert_close(
        distance_to_box(initial, distance, reg_scale), modeling_d_fine.distance2bbox(initial, distance, reg_scale)
    )


def test_transformers_directory_gives_transformers_outputs(saved, official_position_embedding):
    reference, directory = saved
    checkpoint = read_checkpoint(directory)
    config = checkpoint.config
    assert checkpoint.source == SOURCE_TRANSFORMERS and checkpoint.class_names == LABELS
    assert (config.num_classes, config.num_queries, config.num_decoder_layers) == (5, 12, 2)
    assert (config.dec_n_points, config.reg_max, config.backbone.use_lab) == ((3, 6, 3), 16, True)
    assert config.encoder_expansion == 0.5 and config.size == "custom"
    ours = build_checkpoint_model(checkpoint)
    generator = torch.Generator().manual_seed(1)
    for batch, height, width in NON_SQUARE + [(2, 160, 160)]:
        images = torch.rand(batch, 3, height, width, generator=generator)
        with torch.no_grad():
            expected, got = reference(pixel_values=images), ours(images)
        assert float(expected.pred_boxes[0, :, 2:].std(0).min()) > 1e-3  # box sizes differ from query to query
        torch.testing.assert_close(got["pred_logits"], expected.logits, **TOLERANCE)
        torch.testing.assert_close(got["pred_boxes"], expected.pred_boxes, **TOLERANCE)


def test_transformers_five_x_state_dict_names(saved, official_position_embedding, tmp_path):
    from safetensors.torch import save_file

    reference, directory = saved
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    # state_dict() names; the top-level copies of the tied heads left out (safetensors refuses shared memory).
    state = {key: value.clone() for key, value in reference.state_dict().items() if key.startswith("model.")}
    save_file(state, tmp_path / "model.safetensors")
    checkpoint = read_checkpoint(tmp_path)
    assert "keys: transformers 5.x names" in checkpoint.read_from
    images = torch.rand(1, 3, 128, 192, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(
            build_checkpoint_model(checkpoint)(images)["pred_logits"],
            reference(pixel_values=images).logits,
            **TOLERANCE,
        )


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"decoder_activation_function": "gelu"}, "decoder_activation_function 'gelu'"),
        ({"decoder_layers": 3}, "decoder_layers 3 but the weights have 2"),
        ({"architectures": ["DFineModel"]}, "not a DFineForObjectDetection"),
        ({"decoder_method": "bicubic"}, "decoder_method 'bicubic'"),
    ],
)
def test_transformers_unsupported_or_contradicted_config(saved, tmp_path, changes, message):
    import shutil

    _, directory = saved
    shutil.copytree(directory, tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    config.update(changes)
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    with pytest.raises(DetrDeployError, match=re.escape(message)):
        read_checkpoint(tmp_path / "model")


@pytest.mark.parametrize("seed", slow_after([7]))
def test_onnx_export_of_a_transformers_directory_gives_transformers_outputs(
    official_position_embedding, seed, tmp_path
):
    """The deployed file: ONNX Runtime outputs of the export (traced at another size) equal transformers' own."""
    from detr_deploy.parity import TOLERANCES, align_queries
    from detr_deploy.runtime.onnxruntime import OnnxRuntimeRunner
    from tests.helpers import export_checkpoint

    reference = hf_dfine(seed)
    reference.save_pretrained(tmp_path / "dfine")
    checkpoint = read_checkpoint(tmp_path / "dfine")
    export_checkpoint(checkpoint, tmp_path / "dfine.onnx")
    runner = OnnxRuntimeRunner(tmp_path / "dfine.onnx")
    generator = torch.Generator().manual_seed(2)
    for batch, height, width in NON_SQUARE:
        images = torch.rand(batch, 3, height, width, generator=generator)
        with torch.no_grad():
            expected = reference(pixel_values=images)
        reference_outputs = {"pred_logits": expected.logits.numpy(), "pred_boxes": expected.pred_boxes.numpy()}
        outputs, _, unpaired = align_queries(reference_outputs, runner.run(images.numpy()), TOLERANCES["fp32"])
        assert not unpaired.any()
        np.testing.assert_allclose(outputs["pred_logits"], reference_outputs["pred_logits"], **TOLERANCE)
        np.testing.assert_allclose(outputs["pred_boxes"], reference_outputs["pred_boxes"], **TOLERANCE)


# Official files ----------------------------------------------------------------------------------------------------


def official_state(config, seed: int) -> dict:
    """Our model's state dict plus what the official solver's checkpoints add: the denoising embedding, the
    640x640 anchors, the decoder's second names of up / reg_scale, counters of the trained backbone norms."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        state = dict(build_model(config).state_dict())
    state["decoder.denoising_class_embed.weight"] = torch.randn(config.num_classes + 1, config.hidden_dim)
    state["decoder.anchors"] = torch.randn(1, 8400, 4)
    state["decoder.valid_mask"] = torch.ones(1, 8400, 1, dtype=torch.bool)
    state["decoder.decoder.up"] = state["decoder.up"]
    state["decoder.decoder.reg_scale"] = state["decoder.reg_scale"]
    norms = [
        key.removesuffix(".running_mean") for key in state if key.startswith("backbone.") and "running_mean" in key
    ]
    state.update({f"{norm}.num_batches_tracked": torch.tensor(7) for norm in norms})
    return state


def official_file(config) -> dict:
    return {
        "model": official_state(config, seed=1),
        "ema": {"module": official_state(config, seed=0), "updates": 10},
        "last_epoch": 3,
    }


@pytest.mark.parametrize("name", ["dfine_hgnetv2_n", "dfine_hgnetv2_s", "dfine_hgnetv2_x"])
def test_official_file_reads_back_its_architecture(name):
    config = get_model_spec(name).config.tiny()
    content = official_file(config)
    assert is_official_dfine(content) and not is_official_rtdetr(content)
    checkpoint = read_official_dfine("model.pth", content, "0" * 64, model_config=config)
    assert checkpoint.config == config
    assert checkpoint.source == SOURCE_OFFICIAL and checkpoint.class_names is None
    ema = content["ema"]["module"]
    assert all(torch.equal(tensor, ema[key]) for key, tensor in checkpoint.state_dict.items() if key in ema)


@pytest.mark.parametrize("name, size", slow_after([("dfine_hgnetv2_n", "N"), ("dfine_hgnetv2_s", "S")]))
def test_official_release_sizes_are_named(name, size):
    """A full-size file without --model: the size named, official defaults for heads and queries."""
    config = get_model_spec(name).config
    checkpoint = read_official_dfine("model.pth", {"model": official_state(config, seed=0)}, "0" * 64)
    assert checkpoint.config.size == size and checkpoint.config.architecture_name == name
    assert dataclasses.replace(checkpoint.config, reg_scale=config.reg_scale, up=config.up) == config


def test_official_earlier_eval_layer_through_read_checkpoint(tmp_path):
    config = get_model_spec("dfine_hgnetv2_s").config.tiny()
    torch.save(official_file(dataclasses.replace(config, num_decoder_layers=3)), tmp_path / "dfine.pth")
    checkpoint = read_checkpoint(tmp_path / "dfine.pth", config)
    assert checkpoint.config == config
    assert not any(re.search(r"\.2\.", key) and "decoder.decoder.layers" in key for key in checkpoint.state_dict)


@pytest.mark.parametrize(
    "edit, message",
    [
        (dict(add={"decoder.enc_score_head.weight": torch.zeros(1, 32)}), "class-agnostic"),
        (dict(add={"encoder.fpn_blocks.0.cv1.conv_bn_fused.weight": torch.zeros(1)}), "convert_to_deploy"),
        (dict(remove=["decoder.dec_score_head.0.weight"]), "has no tensor decoder.dec_score_head.0.weight"),
        (dict(rename={"backbone.stem.": "backbone.conv1."}), "not an HGNetv2"),
        (dict(add={"decoder.decoder.layers.0.cross_attn.num_points_scale": torch.full((6,), 0.3)}), "num_points_scale"),
    ],
)
def test_official_refusals(edit, message):
    state = official_state(get_model_spec("dfine_hgnetv2_s").config.tiny(), seed=0)
    state = {key: value for key, value in state.items() if key not in edit.get("remove", ())}
    for old, new in edit.get("rename", {}).items():
        state = {key.replace(old, new): value for key, value in state.items()}
    state.update(edit.get("add", {}))
    with pytest.raises(DetrDeployError, match=message):
        read_official_dfine("model.pth", {"model": state}, "0" * 64)
