"""Official checkpoints load strictly; wrong or partial ones fail with one clear message."""

import argparse
import collections

import pytest
import torch

from detr_deploy.checkpoints import load_checkpoint, read_state_dict
from detr_deploy.errors import DetrDeployError
from detr_deploy.models import build_model, get_model_spec
from tests.helpers import ZOO_MODELS


def official_state_dict(shapes: dict, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {key: torch.randn(shape, generator=generator) for key, shape in shapes.items()}


@pytest.mark.parametrize("zoo_name", ZOO_MODELS)
def test_zoo_model_has_exactly_the_official_keys_and_shapes(zoo_name, official_keys):
    with torch.device("meta"):
        model = build_model(get_model_spec(zoo_name).config)
    assert {key: list(value.shape) for key, value in model.state_dict().items()} == official_keys[zoo_name]


@pytest.mark.slow
@pytest.mark.parametrize("zoo_name", ZOO_MODELS)
def test_release_file_with_the_official_keys_loads_strictly(zoo_name, official_keys, tmp_path):
    model = build_model(get_model_spec(zoo_name).config)
    state = official_state_dict(official_keys[zoo_name])
    # Releases repeat shared heads under several keys (class_embed.N, transformer.decoder.class_embed.N) with
    # identical tensors; the file we write does the same.
    aliases = collections.defaultdict(list)
    for key, tensor in model.state_dict().items():
        aliases[tensor.data_ptr()].append(key)
    for keys in aliases.values():
        for key in keys[1:]:
            state[key] = state[keys[0]]
    # Deformable-DETR releases pickle their training arguments too; DETR releases hold just the model.
    path = tmp_path / f"{zoo_name}.pth"
    torch.save({"model": state, "args": argparse.Namespace(lr=2e-4, two_stage=False)}, path)
    digest = load_checkpoint(model, zoo_name, path)
    assert len(digest) == 64
    loaded = model.state_dict()
    assert all(torch.equal(loaded[key], state[key]) for key in state)


def save_tiny(tmp_path, name: str, seed: int = 0, drop: int = 0):
    model = build_model(get_model_spec(name).config, seed=seed)
    state = model.state_dict()
    for key in list(state)[:drop]:
        del state[key]
    path = tmp_path / f"{name}-{seed}-{drop}.pth"
    torch.save({"model": state}, path)
    return path


def test_checkpoint_of_another_model_names_that_model(tmp_path):
    path = save_tiny(tmp_path, "tiny_deformable_detr_r50_refine")
    model = build_model(get_model_spec("tiny_deformable_detr_r50").config)
    with pytest.raises(DetrDeployError) as error:
        load_checkpoint(model, "tiny_deformable_detr_r50", path)
    message = str(error.value)
    assert "does not fit model 'tiny_deformable_detr_r50'" in message
    assert "unexpected keys (transformer.decoder.bbox_embed." in message
    assert "it is a checkpoint for 'tiny_deformable_detr_r50_refine'" in message
    assert "\n" not in message


def test_partial_checkpoint_reports_counts_and_first_missing_keys(tmp_path):
    path = save_tiny(tmp_path, "tiny_detr_r50", drop=5)
    model = build_model(get_model_spec("tiny_detr_r50").config)
    with pytest.raises(DetrDeployError, match=r"5 missing keys \(backbone\.0\.body\.conv1\.weight, .*, \.\.\.\)"):
        load_checkpoint(model, "tiny_detr_r50", path)


def test_shape_mismatch_is_reported_with_both_shapes(tmp_path):
    model = build_model(get_model_spec("tiny_detr_r50").config)
    state = model.state_dict()
    state["class_embed.weight"] = torch.zeros(3, state["class_embed.weight"].shape[1])
    state["class_embed.bias"] = torch.zeros(3)
    path = tmp_path / "classes.pth"
    torch.save(state, path)  # a bare state dict works as well as one under "model"
    with pytest.raises(DetrDeployError, match=r"class_embed.weight: file \[3, 32\], model \[8, 32\]"):
        load_checkpoint(model, "tiny_detr_r50", path)


def test_unreadable_and_missing_files(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(DetrDeployError, match="cannot read checkpoint"):
        read_state_dict(garbage)
    with pytest.raises(DetrDeployError, match="does not exist"):
        read_state_dict(tmp_path / "absent.pth")
    not_a_state_dict = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_a_state_dict)
    with pytest.raises(DetrDeployError, match="holds no state dict"):
        read_state_dict(not_a_state_dict)
