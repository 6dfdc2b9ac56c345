"""Official-code checkpoints (facebookresearch/detr, fundamentalvision/Deformable-DETR): releases load strictly,
fine-tuned files (own classes, queries, FFN size; with or without training args) tell their architecture, and
files that cannot be used fail with one clear message."""

import collections
import dataclasses

import numpy as np
import pytest
import torch

from detr_deploy.checkpoints import SOURCE_OFFICIAL, build_checkpoint_model, read_checkpoint
from detr_deploy.errors import DetrDeployError
from detr_deploy.models import build_model, get_model_spec
from tests.helpers import ZOO_MODELS, official_args

# The releases official_keys.json lists (DETR, Deformable DETR); RT-DETR's and DINO's official layouts are checked in
# tests/models/test_rtdetr.py and tests/checkpoints/test_checkpoints_{rtdetr,dino}.py.
RELEASED = [name for name in ZOO_MODELS if name.startswith(("detr_", "deformable_detr_"))]


def official_state_dict(shapes: dict, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {key: torch.randn(shape, generator=generator) for key, shape in shapes.items()}


@pytest.mark.parametrize("zoo_name", RELEASED)
def test_zoo_model_has_exactly_the_official_keys_and_shapes(zoo_name, official_keys):
    with torch.device("meta"):
        model = build_model(get_model_spec(zoo_name).config)
    assert {key: list(value.shape) for key, value in model.state_dict().items()} == official_keys[zoo_name]


@pytest.mark.slow
@pytest.mark.parametrize("zoo_name", RELEASED)
def test_release_file_with_the_official_keys_reads_as_its_zoo_model(zoo_name, official_keys, tmp_path):
    config = get_model_spec(zoo_name).config
    with torch.device("meta"):
        skeleton = build_model(config)
    state = official_state_dict(official_keys[zoo_name])
    # Releases repeat shared heads under several keys (class_embed.N, transformer.decoder.class_embed.N) with
    # identical tensors; the file we write does the same.
    aliases = collections.defaultdict(list)
    for key, tensor in build_model(config).state_dict().items():
        aliases[tensor.data_ptr()].append(key)
    for keys in aliases.values():
        for key in keys[1:]:
            state[key] = state[keys[0]]
    assert set(state) == set(skeleton.state_dict())
    # Deformable-DETR releases pickle their full training arguments; DETR releases hold just the model, so DETR
    # needs --model (R50 and DC5 share every tensor), Deformable DETR does not.
    path = tmp_path / f"{zoo_name}.pth"
    content = {"model": state}
    if config.family == "deformable_detr":
        content["args"] = official_args(config)
    torch.save(content, path)
    checkpoint = read_checkpoint(path, None if config.family == "deformable_detr" else config)
    assert checkpoint.config == config and checkpoint.model_name == zoo_name
    assert len(checkpoint.sha256) == 64 and checkpoint.source == SOURCE_OFFICIAL
    loaded = build_checkpoint_model(checkpoint).state_dict()
    assert all(torch.equal(loaded[key], state[key]) for key in state)


def fine_tuned(base: str, seed: int = 1, **changes):
    """A model like users fine-tune: zoo architecture ``base`` (a tiny variant) with other sizes."""
    config = dataclasses.replace(get_model_spec(base).config, **changes)
    return config, build_model(config, seed=seed)


def save(path, model, args=None, **extra):
    """An official main.py checkpoint: model, args, optimizer state, epoch (release files drop all but model)."""
    content = {"model": model.state_dict(), **extra}
    if args is not None:
        content["args"] = args
        content["optimizer"] = {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-4}]}
        content["epoch"] = 49
    torch.save(content, path)
    return path


FINE_TUNED = {
    # The example: DETR on a 20-class dataset with 50 queries; and FFN 1024, as Deformable-DETR's main.py.
    "detr": ("tiny_detr_r50", dict(num_classes=20, num_queries=50, dim_feedforward=1024)),
    "detr_dc5": ("tiny_detr_r50_dc5", dict(num_classes=3, num_queries=7)),
    "panoptic": ("tiny_detr_r50_panoptic", dict(num_classes=30, num_queries=6)),
    "deformable": ("tiny_deformable_detr_r50", dict(num_classes=5, num_queries=20, dim_feedforward=1024)),
    "deformable_refine": ("tiny_deformable_detr_r50_refine", dict(num_classes=2, num_feature_levels=1)),
    "deformable_two_stage": ("tiny_deformable_detr_r50_two_stage", dict(num_classes=9, num_queries=16)),
}


@pytest.mark.parametrize("case", FINE_TUNED)
def test_fine_tuned_file_with_args_tells_its_whole_architecture(case, tmp_path):
    base, changes = FINE_TUNED[case]
    config, model = fine_tuned(base, **changes)
    path = save(tmp_path / "checkpoint.pth", model, official_args(config))
    checkpoint = read_checkpoint(path)
    assert checkpoint.config == config
    assert checkpoint.class_names is None  # official files name no classes
    assert any("training args" in line for line in checkpoint.read_from)
    images = torch.randn(2, 3, 150, 190)
    rebuilt = build_checkpoint_model(checkpoint)
    with torch.no_grad():
        expected, actual = model(images), rebuilt(images)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0)


def test_deformable_without_args_reads_classes_queries_ffn_levels_and_points_from_shapes(tmp_path):
    config, model = fine_tuned("tiny_deformable_detr_r50", num_classes=5, num_queries=20, dim_feedforward=1024)
    config = dataclasses.replace(config, num_heads=8, enc_n_points=3, dec_n_points=2)
    model = build_model(config, seed=3)
    torch.save(model.state_dict(), tmp_path / "bare.pth")  # a bare state dict, as some training scripts save
    checkpoint = read_checkpoint(tmp_path / "bare.pth")
    assert checkpoint.config == config
    assert any(line.startswith("heads: 8 (the official default") for line in checkpoint.read_from)


def test_detr_without_args_asks_for_model_and_takes_dilation_and_heads_from_it(tmp_path):
    config, model = fine_tuned("tiny_detr_r50_dc5", num_classes=20, num_queries=50)
    path = save(tmp_path / "no_args.pth", model)
    with pytest.raises(DetrDeployError, match=r"without its training args.*say which with --model"):
        read_checkpoint(path)
    checkpoint = read_checkpoint(path, get_model_spec("tiny_detr_r50_dc5").config)
    assert checkpoint.config == config and checkpoint.config.backbone.dilate_last_stage


def test_model_that_contradicts_the_file_is_refused_naming_what_the_file_is(tmp_path):
    config, model = fine_tuned("tiny_deformable_detr_r50_refine", num_classes=4)
    path = save(tmp_path / "refine.pth", model, official_args(config))
    with pytest.raises(DetrDeployError) as error:
        read_checkpoint(path, get_model_spec("tiny_deformable_detr_r50").config)
    message = str(error.value)
    assert "Deformable DETR (box refinement)" in message and "drop --model" in message and "\n" not in message


def test_truncated_state_dict_names_the_missing_tensors(tmp_path):
    config, model = fine_tuned("tiny_detr_r50", num_classes=4)
    state = model.state_dict()
    del state["transformer.decoder.layers.1.norm3.weight"], state["bbox_embed.layers.2.bias"]
    torch.save({"model": state, "args": official_args(config)}, tmp_path / "cut.pth")
    checkpoint = read_checkpoint(tmp_path / "cut.pth")
    with pytest.raises(DetrDeployError, match=r"2 missing tensors \(transformer\.decoder\.layers\.1\.norm3\.weight"):
        build_checkpoint_model(checkpoint)


def test_a_file_missing_what_the_architecture_is_read_from_says_so(tmp_path):
    config, model = fine_tuned("tiny_deformable_detr_r50", num_classes=4)
    state = model.state_dict()
    del state["query_embed.weight"]
    torch.save({"model": state}, tmp_path / "cut.pth")
    with pytest.raises(DetrDeployError, match=r"has no tensor query_embed\.weight.*is the file complete"):
        read_checkpoint(tmp_path / "cut.pth")


def test_nan_weights_are_refused_naming_the_first_bad_tensor(tmp_path):
    config, model = fine_tuned("tiny_detr_r50", num_classes=4)
    state = model.state_dict()
    state["transformer.encoder.layers.0.linear2.bias"][3] = float("nan")
    torch.save({"model": state, "args": official_args(config)}, tmp_path / "nan.pth")
    with pytest.raises(DetrDeployError, match=r"NaN in transformer\.encoder\.layers\.0\.linear2\.bias"):
        build_checkpoint_model(read_checkpoint(tmp_path / "nan.pth"))


class _RunsCodeWhenUnpickled:
    """A pickle that would call os.system if its classes were imported and run."""

    def __reduce__(self):
        import os

        return os.system, ("touch ran-pickled-code",)


def test_pickled_code_in_a_training_checkpoint_is_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config, model = fine_tuned("tiny_detr_r50", num_classes=4)
    save(tmp_path / "hook.pth", model, official_args(config), hooks=_RunsCodeWhenUnpickled())
    assert read_checkpoint(tmp_path / "hook.pth").config == config
    assert not (tmp_path / "ran-pickled-code").exists()


def test_other_detr_families_are_named_and_refused(tmp_path):
    state = {
        "backbone.0.body.conv1.weight": torch.zeros(8, 3, 7, 7),
        "transformer.language_model.embeddings.word_embeddings.weight": torch.zeros(4, 4),
    }
    torch.save({"model": state}, tmp_path / "c.pth")
    with pytest.raises(DetrDeployError, match="looks like Grounding DINO"):
        read_checkpoint(tmp_path / "c.pth")


def test_unreadable_missing_and_empty_files(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(DetrDeployError, match="cannot read checkpoint"):
        read_checkpoint(garbage)
    with pytest.raises(DetrDeployError, match="does not exist"):
        read_checkpoint(tmp_path / "absent.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(DetrDeployError, match="holds no state dict"):
        read_checkpoint(tmp_path / "list.pth")
    config, model = fine_tuned("tiny_detr_r50", num_classes=4)
    whole = save(tmp_path / "whole.pth", model, official_args(config)).read_bytes()
    (tmp_path / "truncated.pth").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DetrDeployError, match="cannot read checkpoint"):
        read_checkpoint(tmp_path / "truncated.pth")


def test_export_of_a_fine_tuned_checkpoint_matches_eager_at_untraced_sizes(tmp_path):
    from detr_deploy.runtime.onnxruntime import OnnxRuntimeRunner
    from exporters.onnx import export_model

    config, model = fine_tuned("tiny_deformable_detr_r50_refine", num_classes=5, num_queries=20, dim_feedforward=96)
    path = save(tmp_path / "refine.pth", model, official_args(config))
    result = export_model(None, tmp_path / "refine.onnx", checkpoint=path)
    runner = OnnxRuntimeRunner(result.path)
    assert runner.metadata["detr_deploy.model"] == "deformable_detr_r14_refine"
    rng = np.random.default_rng(0)
    for batch, height, width in ((1, 197, 263), (3, 230, 170)):
        images = rng.standard_normal((batch, 3, height, width), dtype=np.float32)
        with torch.no_grad():
            expected = model(torch.from_numpy(images))
        actual = runner.run(images)
        for name, value in expected.items():
            np.testing.assert_allclose(actual[name], value.numpy(), rtol=1e-4, atol=1e-4)
