"""Eager forward of every zoo architecture (tiny variants): output contract and batch independence."""

import pytest
import torch

from detr_deploy import contract
from detr_deploy.models import build_model, get_model_spec
from tests.helpers import ZOO_MODELS, input_size, tiny_name
from tests.marks import ARCHITECTURES, quick_first_of


@pytest.mark.parametrize("zoo_name", quick_first_of(ZOO_MODELS, ARCHITECTURES))
def test_outputs_follow_the_contract_and_images_do_not_mix_within_a_batch(zoo_name):
    config = get_model_spec(tiny_name(zoo_name)).config
    model = build_model(config, seed=0)
    # Not a multiple of 32 where the model allows it; seeded, so a near-tie cannot make the test flaky.
    images = torch.randn(2, 3, *input_size(config, 203, 271), generator=torch.Generator().manual_seed(0))
    # In float64: float32 summation order differs between batch sizes, and a random tiny backbone whose features are
    # near zero lets the encoder's normalization blow that up (2e-4 seen); in float64 a real mix of images would still
    # show, rounding does not.
    model, images = model.double(), images.double()
    with torch.no_grad():
        batched, single = model(images), model(images[1:])
    assert tuple(batched) == config.output_names
    num_logits = config.num_classes + (1 if config.score_activation == "softmax" else 0)
    assert batched[contract.OUTPUT_LOGITS].shape == (2, config.num_queries, num_logits)
    boxes = batched[contract.OUTPUT_BOXES]
    assert boxes.shape == (2, config.num_queries, 4)
    if getattr(config, "boxes_in_unit_range", True):  # RF-DETR's are not squashed (rfdetr's bbox_reparam)
        assert torch.all((boxes >= 0) & (boxes <= 1))
    else:
        assert torch.all(boxes[..., 2:] >= 0)
    if config.output_names[-1] == contract.OUTPUT_MASKS:
        # The mask head works at stride 4 (ceil of each stride-2 step).
        assert batched[contract.OUTPUT_MASKS].shape == (2, config.num_queries, 51, 68)
    for name in config.output_names:
        torch.testing.assert_close(batched[name][1:], single[name], rtol=1e-9, atol=1e-9)


def test_dc5_keeps_stride_16_and_r101_is_deeper():
    r50 = build_model(get_model_spec("tiny_detr_r50").config)
    dc5 = build_model(get_model_spec("tiny_detr_r50_dc5").config)
    r101 = build_model(get_model_spec("tiny_detr_r101").config)
    images = torch.randn(1, 3, 256, 320)
    with torch.no_grad():
        assert r50.backbone[0](images)[-1].shape[-2:] == (8, 10)
        assert dc5.backbone[0](images)[-1].shape[-2:] == (16, 20)
    assert len(r101.backbone[0].body.layer3) > len(r50.backbone[0].body.layer3)
