import pytest
import torch

from detr_deploy.errors import DetrDeployError
from detr_deploy.models import DETRConfig, build_model, get_model_spec, list_models, register_model

ZOO = [
    "detr_r50",
    "detr_r50_dc5",
    "detr_r101",
    "detr_r50_panoptic",
    "conditional_detr_r50",
    "conditional_detr_r50_dc5",
    "conditional_detr_r101",
    "conditional_detr_r101_dc5",
    "deformable_detr_r50",
    "deformable_detr_r50_refine",
    "deformable_detr_r50_two_stage",
]


def test_zoo_lists_every_official_model():
    assert set(ZOO) <= set(list_models())


def test_registering_a_taken_name_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_model("detr_r50", DETRConfig())


def test_unknown_model_error_lists_the_known_names():
    with pytest.raises(DetrDeployError) as error:
        get_model_spec("detr_r18")
    assert "detr_r18" in str(error.value)
    assert all(name in str(error.value) for name in ZOO)


def test_seeded_builds_are_reproducible_and_leave_the_global_rng_alone():
    config = get_model_spec("tiny_detr_r50").config
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = build_model(config, seed=7)
    assert torch.equal(torch.rand(1), expected_next)
    second = build_model(config, seed=7)
    other = build_model(config, seed=8)
    for (key, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), key
    assert any(not torch.equal(a, c) for a, c in zip(first.state_dict().values(), other.state_dict().values()))
