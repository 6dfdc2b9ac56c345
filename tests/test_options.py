"""Command-line values checked before any work: sizes, batch sizes, lists, tolerances, thresholds, counts, memory."""

import math

import pytest

from detr_deploy.errors import DetrDeployError
from detr_deploy.models import get_model_spec
from detr_deploy.options import (
    check_count,
    check_fits_in_memory,
    check_probability,
    check_tolerance,
    parse_batch_sizes,
    parse_names,
    parse_sizes,
)


def test_sizes_and_batches_parse_and_refuse_what_the_exports_cannot_take():
    assert parse_sizes(" 480x640, 64x8192 ,") == [(480, 640), (64, 8192)]
    for text in ("", ",", "480", "63x640", "640x8193", "480x640x3", "-480x640", "axb"):
        with pytest.raises(DetrDeployError):
            parse_sizes(text)
    assert parse_batch_sizes("1, 3,1024") == [1, 3, 1024]
    for text in ("", ",", "0", "-1", "1025", "1.5", "01"):
        with pytest.raises(DetrDeployError):
            parse_batch_sizes(text)


def test_name_lists_drop_duplicates_and_refuse_empty_or_unknown():
    assert parse_names("eager, onnxruntime,eager", "--backends", ("eager", "onnxruntime")) == ["eager", "onnxruntime"]
    with pytest.raises(DetrDeployError, match="names nothing"):
        parse_names(" , ", "--backends", ("eager",))
    with pytest.raises(DetrDeployError, match="unknown --backends value 'gpu'"):
        parse_names("eager,gpu", "--backends", ("eager",))


@pytest.mark.parametrize("value", [math.nan, -1e-9, math.inf, -math.inf])
def test_tolerances_must_be_finite_and_not_negative(value):
    with pytest.raises(DetrDeployError, match="--rtol must be a finite number >= 0"):
        check_tolerance(value, "--rtol")


def test_thresholds_are_probabilities_and_counts_have_bounds():
    assert check_tolerance(None, "--atol") is None and check_tolerance(0.0, "--atol") == 0.0
    assert check_probability(0.0, "-t") == 0.0 and check_probability(1.0, "-t") == 1.0
    for value in (math.nan, -0.01, 1.01):
        with pytest.raises(DetrDeployError, match="between 0 and 1"):
            check_probability(value, "--score-threshold")
    assert check_count(None, "--threads") is None and check_count(0, "--warmup", minimum=0) == 0
    with pytest.raises(DetrDeployError, match="--threads must be from 1 to 8"):
        check_count(9, "--threads", maximum=8)


def test_memory_estimate_grows_with_the_input_and_refuses_what_cannot_fit():
    detr, deformable = get_model_spec("detr_r50").config, get_model_spec("deformable_detr_r50").config
    small = detr.estimated_peak_bytes(1, 480, 640)
    assert 0 < small < detr.estimated_peak_bytes(2, 480, 640) < detr.estimated_peak_bytes(2, 960, 1280)
    # DETR's encoder attention is quadratic in the token count (side**4), Deformable DETR's sampling linear (side**2).
    assert detr.estimated_peak_bytes(1, 8000, 8000) > 8 * detr.estimated_peak_bytes(1, 4000, 4000)
    assert deformable.estimated_peak_bytes(1, 8000, 8000) < 5 * deformable.estimated_peak_bytes(1, 4000, 4000)
    check_fits_in_memory(detr, [(800, 1088)], [1])
    with pytest.raises(DetrDeployError, match=r"batch 64 at 8000x8000 needs about \d+ GiB"):
        check_fits_in_memory(deformable, [(8000, 8000)], [64])


def test_memory_estimates_count_each_family_s_own_levels():
    """RT-DETR adds full attention (AIFI) to deformable sampling over strides 8-32; DINO-5scale samples stride 4 too,
    so it needs more than DINO-4scale; the width scales the transformer's part."""
    rtdetr, deformable = get_model_spec("rtdetr_r50vd").config, get_model_spec("deformable_detr_r50").config
    dino_4, dino_5 = get_model_spec("dino_4scale_r50").config, get_model_spec("dino_5scale_r50").config
    assert dino_5.estimated_peak_bytes(1, 800, 1088) > dino_4.estimated_peak_bytes(1, 800, 1088)
    assert dino_4.estimated_peak_bytes(1, 800, 1088) == deformable.estimated_peak_bytes(1, 800, 1088)
    backbone_only = 300 * 2000 * 2000
    assert rtdetr.estimated_peak_bytes(1, 2000, 2000) - backbone_only > 0
    wide = deformable.replace(hidden_dim=512)
    assert wide.estimated_peak_bytes(1, 800, 1088) - 300 * 800 * 1088 == pytest.approx(
        2 * (deformable.estimated_peak_bytes(1, 800, 1088) - 300 * 800 * 1088)
    )
