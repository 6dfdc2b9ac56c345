"""RF-DETR checkpoints: transformers directories (RfDetrForObjectDetection) read into our RF-DETR give transformers'
own outputs (eager, ONNX Runtime and OpenVINO, at sizes the export never saw, batch 1 and 2); rfdetr's own files
(weights and training arguments) read back the architecture they were made from and the named sizes; what our
RF-DETR cannot represent fails with one DetrDeployError. The zoo's sizes have the official parameter counts. The
peer test against the rfdetr package itself is test_checkpoints_rfdetr_package.py.

Models are tiny with random weights. transformers zeroes the box heads and the reference deltas at init, which gives
every query the same box size; the peer models get fan-in scaled weights (embeddings, norms and biases noised)
instead, so that boxes differ from query to query. One test size gives a 52-token-wide map, whose edge proposals
lie outside (0.01, 0.99): transformers scores them -inf, rfdetr ranks them (``rank_invalid_proposals``).
"""

import argparse
import dataclasses
import json
import re
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from detr_deploy.checkpoints import SOURCE_OFFICIAL, SOURCE_TRANSFORMERS, build_checkpoint_model, read_checkpoint
from detr_deploy.checkpoints.readers.rfdetr import is_rfdetr_state, read_official_rfdetr
from detr_deploy.errors import DetrDeployError
from detr_deploy.models import build_model, get_model_spec
from detr_deploy.models.dinov2 import antialiased_bicubic_weights
from detr_deploy.models.rfdetr import training_only_parameters
from detr_deploy.models.zoo import RFDETR_OFFICIAL_PARAMETERS
from tests.marks import slow_after

transformers = pytest.importorskip(
    "transformers", reason="transformers builds the reference models of these tests (pip install transformers)"
)

LABELS = ("cat", "dog", "traffic light", "kite", "zebra", "bus")
TOLERANCE = dict(rtol=1e-4, atol=1e-4)
# Non-square (transformers' windows of non-square grids differ from rfdetr's), and one 52 patches wide.
SIZES = [(1, 128, 192), (2, 192, 128), (1, 64, 832)]


def hf_rfdetr(seed: int = 0, **changes):
    """A tiny transformers RF-DETR: a 4-block DINOv2 of width 32, patch 16, 2 x 2 windows (block 0 windowed), a
    4 x 4 position grid, 2 decoder layers, 10 queries in 2 Group DETR groups, trained-like weights."""
    backbone = dict(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        patch_size=16,
        image_size=64,
        num_windows=2,
        out_indices=[1, 2, 3, 4],
    )
    backbone.update(changes.pop("backbone", {}))
    settings = dict(
        backbone_config=transformers.RfDetrDinov2Config(**backbone),
        d_model=32,
        decoder_ffn_dim=64,
        decoder_layers=2,
        decoder_self_attention_heads=2,
        decoder_cross_attention_heads=4,
        decoder_n_points=2,
        num_queries=10,
        group_detr=2,
        c2f_num_blocks=1,
        id2label=dict(enumerate(LABELS)),
    )
    settings.update(changes)
    torch.manual_seed(seed)
    model = transformers.RfDetrForObjectDetection(transformers.RfDetrConfig(**settings))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if tensor.dim() >= 2 and "embed" not in name.split(".")[-2]:
                tensor.copy_(
                    noise * (2.0 / tensor[0].numel()) ** 0.5 if tensor.dim() == 4 else noise / tensor.shape[-1] ** 0.5
                )
            else:
                tensor.add_(0.2 * noise)
    return model.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    reference = hf_rfdetr()
    directory = tmp_path_factory.mktemp("rfdetr")
    reference.save_pretrained(directory)
    return reference, directory


def test_position_resize_is_pytorchs_antialiased_bicubic():
    grid = torch.randn(1, 8, 6, 6)
    for height, width in [(6, 6), (9, 4), (3, 13), (24, 37)]:
        expected = F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
        rows = antialiased_bicubic_weights(6, torch.zeros(height))
        columns = antialiased_bicubic_weights(6, torch.zeros(width))
        torch.testing.assert_close(rows @ grid[0] @ columns.T, expected[0], rtol=1e-5, atol=1e-5)


def test_transformers_directory_gives_transformers_outputs(saved):
    reference, directory = saved
    checkpoint = read_checkpoint(directory)
    config = checkpoint.config
    assert checkpoint.source == SOURCE_TRANSFORMERS and checkpoint.class_names == LABELS
    assert (config.num_classes, config.num_queries, config.num_decoder_layers) == (6, 10, 2)
    assert (config.window_order, config.rank_invalid_proposals, config.projector_norm_eps) == (
        "transformers",
        False,
        1e-5,
    )
    assert config.backbone.window_blocks == (0,) and config.size == "custom"
    ours = build_checkpoint_model(checkpoint)
    generator = torch.Generator().manual_seed(1)
    for batch, height, width in SIZES:
        images = torch.randn(batch, 3, height, width, generator=generator)
        with torch.no_grad():
            expected, got = reference(pixel_values=images), ours(images)
        assert float(expected.pred_boxes[0, :, 2:].std(0).min()) > 1e-3  # box sizes differ from query to query
        torch.testing.assert_close(got["pred_logits"], expected.logits, **TOLERANCE)
        torch.testing.assert_close(got["pred_boxes"], expected.pred_boxes, **TOLERANCE)


def test_rfdetr_conventions_differ_from_transformers_where_they_should(saved):
    """With rfdetr's windows and ranking the same weights give transformers' outputs on a square grid of valid
    proposals only: the two conventions are real differences, each read from the file's own library."""
    reference, directory = saved
    checkpoint = read_checkpoint(directory)
    rows = dataclasses.replace(checkpoint, config=dataclasses.replace(checkpoint.config, window_order="rows"))
    ours = build_checkpoint_model(rows)
    generator = torch.Generator().manual_seed(3)
    square, non_square = (
        torch.randn(2, 3, 128, 128, generator=generator),
        torch.randn(1, 3, 128, 192, generator=generator),
    )
    with torch.no_grad():
        torch.testing.assert_close(ours(square)["pred_logits"], reference(pixel_values=square).logits, **TOLERANCE)
        assert not torch.allclose(ours(non_square)["pred_logits"], reference(pixel_values=non_square).logits, atol=1e-2)


def test_transformers_five_x_state_dict_names(saved, tmp_path):
    from safetensors.torch import save_file

    reference, directory = saved
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    save_file({key: value.clone() for key, value in reference.state_dict().items()}, tmp_path / "model.safetensors")
    checkpoint = read_checkpoint(tmp_path)
    assert "keys: transformers 5.x module names" in checkpoint.read_from
    images = torch.randn(1, 3, 128, 192, generator=torch.Generator().manual_seed(4))
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
        ({"architectures": ["RfDetrModel"]}, "not a RfDetrForObjectDetection"),
        ({"backbone_config": {"model_type": "rf_detr_dinov2", "use_swiglu_ffn": True}}, "use_swiglu_ffn True"),
    ],
)
def test_transformers_unsupported_or_contradicted_config(saved, tmp_path, changes, message):
    _, directory = saved
    shutil.copytree(directory, tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    if "backbone_config" in changes:
        config["backbone_config"].update(changes.pop("backbone_config"))
    config.update(changes)
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    with pytest.raises(DetrDeployError, match=re.escape(message)):
        read_checkpoint(tmp_path / "model")


@pytest.mark.parametrize("seed", slow_after([7, 8]))
def test_exports_of_a_transformers_directory_give_transformers_outputs(seed, tmp_path):
    """The deployed file: ONNX Runtime (and OpenVINO, where installed) outputs of the export, traced at another
    size, equal transformers' own at batch 1 and 2."""
    from detr_deploy.parity import TOLERANCES, align_queries
    from detr_deploy.runtime.onnxruntime import OnnxRuntimeRunner
    from tests.helpers import export_checkpoint

    reference = hf_rfdetr(seed)
    reference.save_pretrained(tmp_path / "rfdetr")
    checkpoint = read_checkpoint(tmp_path / "rfdetr")
    result = export_checkpoint(checkpoint, tmp_path / "rfdetr.onnx")
    assert set(result.msda_paths.values()) == {"plugin"} and result.msda_nodes == 2
    runners = [OnnxRuntimeRunner(tmp_path / "rfdetr.onnx")]
    try:
        from detr_deploy.runtime.openvino import OpenVINORunner

        runners.append(OpenVINORunner(tmp_path / "rfdetr.onnx", threads=1))
    except ImportError:
        pass  # OpenVINO is optional; test_onnx_export checks the zoo exports in it where installed
    generator = torch.Generator().manual_seed(2)
    for batch, height, width in SIZES[:2]:
        images = torch.randn(batch, 3, height, width, generator=generator)
        with torch.no_grad():
            expected = reference(pixel_values=images)
        reference_outputs = {"pred_logits": expected.logits.numpy(), "pred_boxes": expected.pred_boxes.numpy()}
        for runner in runners:
            outputs, _, unpaired = align_queries(reference_outputs, runner.run(images.numpy()), TOLERANCES["fp32"])
            assert not unpaired.any()
            np.testing.assert_allclose(outputs["pred_logits"], reference_outputs["pred_logits"], **TOLERANCE)
            np.testing.assert_allclose(outputs["pred_boxes"], reference_outputs["pred_boxes"], **TOLERANCE)


# rfdetr's own files -------------------------------------------------------------------------------------------------


def rfdetr_state(config, seed: int, groups: int = 3) -> dict:
    """Our model's state dict (rfdetr's names) plus what rfdetr's model also holds: the queries and encoder heads of
    ``groups`` Group DETR groups, DINOv2's mask token, the keypoint mask buffer."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        state = dict(build_model(config).state_dict())
        for key in ("refpoint_embed.weight", "query_feat.weight"):
            state[key] = torch.cat([state[key], torch.randn(state[key].shape[0] * (groups - 1), state[key].shape[1])])
        for key in [key for key in state if re.match(r"transformer\.enc_out.*\.0\.|transformer\.enc_output", key)]:
            for group in range(1, groups):
                state[key.replace(".0.", f".{group}.", 1)] = torch.randn_like(state[key])
    state["backbone.0.encoder.encoder.embeddings.mask_token"] = torch.zeros(1, config.backbone.hidden_size)
    state["_kp_active_mask"] = torch.zeros(0, 0, dtype=torch.bool)
    return state


def rfdetr_args(config, **changes) -> argparse.Namespace:
    """The training arguments rfdetr pickles with its weights (the fields the reader asks)."""
    # rfdetr's encoders are DINOv2-S and -B; the tiny test models' (width 32) take their heads from --model.
    encoder = {384: "dinov2_windowed_small", 768: "dinov2_windowed_base"}.get(config.backbone.hidden_size, "tiny")
    values = dict(
        encoder=encoder,
        out_feature_indexes=list(config.backbone.out_indices),
        window_block_indexes=None,
        num_windows=config.backbone.num_windows,
        patch_size=config.backbone.patch_size,
        positional_encoding_size=config.backbone.positional_grid,
        projector_scale=["P4"],
        dec_layers=config.num_decoder_layers,
        hidden_dim=config.hidden_dim,
        sa_nheads=config.num_heads,
        ca_nheads=config.cross_attention_heads,
        dec_n_points=config.dec_n_points,
        num_queries=config.num_queries,
        num_classes=config.num_classes - 1,
        resolution=config.resolution,
        two_stage=True,
        bbox_reparam=True,
        lite_refpoint_refine=True,
        layer_norm=True,
        segmentation_head=False,
        group_detr=3,
    )
    values.update(changes)
    return argparse.Namespace(**values)


def test_official_file_reads_back_its_architecture(tmp_path):
    config = get_model_spec("rfdetr_small").config.tiny()
    names = ["a", "b", "c", "d", "e"]
    content = {"model": rfdetr_state(config, seed=0), "args": rfdetr_args(config, class_names=names)}
    assert is_rfdetr_state(content["model"])
    torch.save(content, tmp_path / "checkpoint_best_total.pth")
    checkpoint = read_checkpoint(tmp_path / "checkpoint_best_total.pth", config)
    assert checkpoint.config == config
    assert checkpoint.source == SOURCE_OFFICIAL and checkpoint.class_names == (*names, "N/A")
    assert checkpoint.state_dict["query_feat.weight"].shape[0] == config.num_queries
    assert torch.equal(checkpoint.state_dict["query_feat.weight"], content["model"]["query_feat.weight"][:10])


def test_training_checkpoint_with_dict_args_and_model_config():
    """rfdetr 1.x training checkpoints: args a dict (TrainConfig), the architecture in model_config."""
    config = get_model_spec("rfdetr_nano").config.tiny()
    args = vars(rfdetr_args(config))
    architecture = {name: args.pop(name) for name in ("num_windows", "out_feature_indexes", "dec_n_points")}
    content = {"model": rfdetr_state(config, 1), "args": args, "model_config": architecture, "model_name": "RFDETRNano"}
    checkpoint = read_official_rfdetr("last.pth", content, "0" * 64, config)
    assert checkpoint.config == config
    assert "rfdetr model class: RFDETRNano" in checkpoint.read_from


@pytest.mark.parametrize(
    "name, size", slow_after([("rfdetr_nano", "N"), ("rfdetr_base", "B"), ("rfdetr_2xlarge", "2XL")])
)
def test_official_release_sizes_are_named(name, size):
    config = get_model_spec(name).config
    with torch.device("meta"):
        state = rfdetr_state(config, seed=0, groups=1)
    state = {key: torch.zeros(value.shape, dtype=value.dtype) for key, value in state.items()}
    checkpoint = read_official_rfdetr("rf-detr.pth", {"model": state, "args": rfdetr_args(config)}, "0" * 64)
    assert (
        checkpoint.config == config and checkpoint.config.architecture_name == name and checkpoint.config.size == size
    )
    assert checkpoint.class_names[1] == "person" and len(checkpoint.class_names) == 91


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(segmentation_head=True), "segmentation_head True"),
        (dict(projector_scale=["P3", "P5"]), "projector_scale is ['P3', 'P5']"),
        (dict(layer_norm=False), "layer_norm False"),
        (dict(dec_n_points=3), "not 4 heads x 3 points"),
    ],
)
def test_official_refusals(changes, message):
    config = get_model_spec("rfdetr_nano").config.tiny()
    content = {"model": rfdetr_state(config, 0), "args": rfdetr_args(config, **changes)}
    with pytest.raises(DetrDeployError, match=re.escape(message)):
        read_official_rfdetr("model.pth", content, "0" * 64, config)


def test_a_file_without_arguments_needs_model(tmp_path):
    config = get_model_spec("rfdetr_nano").config.tiny()
    torch.save({"model": rfdetr_state(config, 0)}, tmp_path / "weights.pth")
    with pytest.raises(DetrDeployError, match="does not say its num_windows .*give --model") as error:
        read_checkpoint(tmp_path / "weights.pth")
    assert "\n" not in str(error.value)


def test_lw_detr_like_files_are_refused_as_such_not_as_dab_detr(tmp_path):
    state = {
        "backbone.0.encoder.blocks.0.attn.qkv.weight": torch.zeros(3, 1),
        "transformer.enc_out_class_embed.0.weight": torch.zeros(2, 1),
        "refpoint_embed.weight": torch.zeros(2, 4),
    }
    torch.save({"model": state}, tmp_path / "lwdetr.pth")
    with pytest.raises(DetrDeployError, match="LW-DETR-style model") as error:
        read_checkpoint(tmp_path / "lwdetr.pth")
    assert "DAB-DETR" not in str(error.value)
    # The DAB-DETR families no reader reads (DAB-Deformable-DETR, DN-DETR) are still named by DAB-DETR's anchors.
    torch.save({"model": {"refpoint_embed.weight": torch.zeros(2, 4)}}, tmp_path / "dab.pth")
    with pytest.raises(DetrDeployError, match="looks like DAB-Deformable-DETR"):
        read_checkpoint(tmp_path / "dab.pth")


def test_zoo_sizes_have_the_official_parameter_counts():
    """rfdetr's table counts the 13 Group DETR query groups training uses; ours holds the first."""
    for name, official in RFDETR_OFFICIAL_PARAMETERS.items():
        if official is None:
            continue
        config = get_model_spec(name).config
        with torch.device("meta"):
            held = sum(parameter.numel() for parameter in config.build().parameters())
        assert abs((held + training_only_parameters(config)) / 1e6 - official) < 0.06, name


@pytest.mark.parametrize("source", slow_after(["transformers", "rfdetr"], keep=0))
def test_cli_inspect_export_and_verify_parity_of_each_format(source, saved, tmp_path):
    """The user's path from either file format: inspect says what it is, export records RF-DETR's preprocessing and
    post-processing and each attention's path, verify-parity passes at untraced sizes, batch 1 and 2."""
    from detr_deploy import contract
    from exporters.onnx import read_metadata
    from tests.helpers import run_cli as run

    if source == "transformers":
        path, model = saved[1], []
    else:
        config = get_model_spec("tiny_rfdetr_nano").config
        path, model = tmp_path / "weights.pt", ["--model", "tiny_rfdetr_nano"]
        torch.save({"model": rfdetr_state(config, 5), "args": rfdetr_args(config)}, path)
    inspected = run("inspect", path, *model)
    assert inspected.exit_code == 0, inspected.output
    assert "rfdetr" in inspected.output and "windows" in inspected.output
    onnx_path = tmp_path / "rfdetr.onnx"
    exported = run("export", "--checkpoint", path, *model, "--output", onnx_path)
    assert exported.exit_code == 0, exported.output
    import onnx

    metadata = read_metadata(onnx.load(str(onnx_path)))
    assert metadata[contract.META_FAMILY] == "rfdetr" and metadata[contract.META_SIZE_DIVISOR] == "32"
    assert metadata[contract.META_RESIZE].startswith("fixed=") and metadata[contract.META_TOP_K] == "300"
    assert metadata[contract.META_MEAN] == ",".join(str(v) for v in contract.IMAGENET_MEAN)
    assert set(json.loads(metadata[contract.META_MSDA_PATHS]).values()) == {"plugin"}
    report = tmp_path / "parity.json"
    parity = run(
        "verify-parity", "--onnx", onnx_path, "--checkpoint", path, "--sizes", "128x192,192x96",
        "--batch-sizes", "1,2", "--report", report,
    )  # fmt: skip
    assert parity.exit_code == 0, parity.output
    assert json.loads(report.read_text())["passed"]
    refused = run("verify-parity", "--onnx", onnx_path, "--checkpoint", path, "--sizes", "100x128")
    assert refused.exit_code == 2 and "multiples of 32" in refused.output


def test_register_tokens_are_refused():
    config = get_model_spec("rfdetr_nano").config.tiny()
    state = rfdetr_state(config, 0)
    state["backbone.0.encoder.encoder.embeddings.register_tokens"] = torch.zeros(1, 4, config.backbone.hidden_size)
    with pytest.raises(DetrDeployError, match="register tokens"):
        read_official_rfdetr("model.pth", {"model": state, "args": rfdetr_args(config)}, "0" * 64, config)
