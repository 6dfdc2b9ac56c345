"""Parity comparisons: tensor tolerances, detection matching and mask IoU on constructed cases."""

import json

import numpy as np
import pytest

from detr_deploy import contract
from detr_deploy.boxes import box_iou, query_scores
from detr_deploy.parity import (
    TOLERANCES,
    Detections,
    ParityReport,
    compare_detections,
    compare_masks,
    compare_outputs,
    compare_tensor,
)

FP32 = TOLERANCES["fp32"]


def detections(*rows):
    """rows of (score, label, x0, y0, x1, y1)."""
    array = np.array(rows, dtype=np.float64).reshape(-1, 6)
    return Detections(array[:, 0], array[:, 1].astype(int), array[:, 2:])


def test_tensor_verdict_uses_allclose_and_reports_both_errors():
    eager = np.array([1.0, -2.0, 0.0, 1e-7])
    stats = compare_tensor("x", eager, eager + np.array([5e-5, -1e-4, 9e-5, 0.0]), FP32)
    assert stats.passed and stats.max_abs_error == pytest.approx(1e-4)
    assert stats.max_rel_error == pytest.approx(5e-5)  # 1e-4 / 2; the near-zero elements are judged by atol
    failing = compare_tensor("x", eager, eager + np.array([0.0, 0.0, 2e-4, 0.0]), FP32)
    assert not failing.passed and failing.mismatched == 1


def test_equal_infinities_agree_but_nan_and_shape_changes_fail():
    eager = np.array([np.inf, 1.0])
    assert compare_tensor("x", eager, eager.copy(), FP32).passed
    assert not compare_tensor("x", eager, np.array([np.inf, np.nan]), FP32).passed
    assert not compare_tensor("x", eager, np.zeros(3), FP32).passed


def test_softmax_scores_never_pick_the_no_object_class():
    scores, labels = query_scores(np.array([[0.0, 1.0, 5.0]]), "softmax")
    assert labels.tolist() == [1]
    assert scores[0] == pytest.approx(np.exp(1) / (1 + np.exp(1) + np.exp(5)))
    scores, labels = query_scores(np.array([[0.0, 2.0]]), "sigmoid")
    assert labels.tolist() == [1] and scores[0] == pytest.approx(1 / (1 + np.exp(-2)))


def test_box_iou():
    iou = box_iou(np.array([[0, 0, 2, 2.0]]), np.array([[1, 1, 3, 3.0], [0, 0, 2, 2.0], [5, 5, 6, 6.0]]))
    np.testing.assert_allclose(iou, [[1 / 7, 1.0, 0.0]])


def test_identical_detections_match_in_any_order():
    eager = detections((0.9, 1, 0, 0, 0.5, 0.5), (0.8, 2, 0.5, 0.5, 1, 1))
    backend = detections((0.8, 2, 0.5, 0.5, 1, 1), (0.9, 1, 0, 0, 0.5, 0.5))
    stats = compare_detections([eager], [backend], 0.5, FP32)
    assert (stats.matched, stats.missed, stats.extra, stats.min_iou, stats.passed) == (2, 0, 0, 1.0, True)


def test_moved_box_and_changed_class_count_as_missed_and_extra():
    eager = detections((0.9, 1, 0, 0, 0.2, 0.2), (0.8, 2, 0.5, 0.5, 1, 1))
    backend = detections((0.9, 1, 0.6, 0.6, 0.8, 0.8), (0.8, 3, 0.5, 0.5, 1, 1))
    stats = compare_detections([eager], [backend], 0.5, FP32)
    assert (stats.matched, stats.missed, stats.extra, stats.passed) == (0, 2, 2, False)


def test_slightly_shifted_box_matches_but_fails_the_iou_tolerance():
    eager = detections((0.9, 1, 0.0, 0.0, 0.5, 0.5))
    backend = detections((0.9, 1, 0.01, 0.0, 0.51, 0.5))
    stats = compare_detections([eager], [backend], 0.5, FP32)
    assert stats.matched == 1 and stats.min_iou < 0.99 and not stats.passed
    assert compare_detections([eager], [backend], 0.5, TOLERANCES["fp16"]).passed


def test_detection_straddling_the_threshold_within_the_allowed_drift_is_matched():
    eager = detections((0.5004, 1, 0, 0, 0.5, 0.5))
    backend = detections((0.4998, 1, 0, 0, 0.5, 0.5))
    stats = compare_detections([eager], [backend], 0.5, FP32)
    assert (stats.matched, stats.missed, stats.extra, stats.passed) == (1, 0, 0, True)
    assert stats.max_score_drift == pytest.approx(6e-4)


def test_mask_iou_per_query():
    eager = -np.ones((1, 3, 4, 4))
    eager[0, 0, :2] = 1  # 8 pixels
    eager[0, 1, :, :1] = 1  # 4 pixels; query 2 empty on both sides
    backend = eager.copy()
    backend[0, 0, 0, 0] = -1
    stats = compare_masks(eager, backend, FP32)
    assert stats.queries == 3
    assert stats.min_iou == pytest.approx(7 / 8) and stats.mean_iou == pytest.approx((7 / 8 + 2) / 3)
    assert not stats.passed


def test_case_report_serializes_with_verdicts():
    rng = np.random.default_rng(0)
    eager = {
        contract.OUTPUT_LOGITS: rng.normal(size=(2, 5, 4)) * 4,
        contract.OUTPUT_BOXES: rng.uniform(0.2, 0.4, size=(2, 5, 4)),
    }
    backend = {name: value + 1e-6 for name, value in eager.items()}
    case = compare_outputs("c", (64, 96), eager, backend, activation="sigmoid", score_threshold=0.5, tolerance=FP32)
    assert case.passed and case.detections.matched == case.detections.eager > 0
    from detr_deploy.parity import ParityReport

    report = ParityReport("m", "ONNX Runtime", "m.onnx", "fp32", FP32, 0.5, [case])
    data = json.loads(report.to_json())
    assert data["passed"] is True and data["cases"][0]["passed"] is True
    assert data["cases"][0]["tensors"][0]["name"] == contract.OUTPUT_LOGITS
    assert report.render().splitlines()[-1] == "PASSED"


def test_ranked_queries_are_aligned_before_tensors_are_compared():
    rng = np.random.default_rng(1)
    eager = {
        contract.OUTPUT_LOGITS: rng.normal(size=(2, 6, 3)),
        contract.OUTPUT_BOXES: rng.uniform(0.1, 0.9, size=(2, 6, 4)),
    }
    backend = {name: value.copy() for name, value in eager.items()}
    for value in backend.values():
        value[1, [2, 4]] = value[1, [4, 2]]  # two near-tied proposals swapped places in image 1
    common = dict(activation="sigmoid", score_threshold=0.5, tolerance=FP32)
    strict = compare_outputs("c", (64, 64), eager, backend, **common)
    assert not strict.passed and strict.reordered_queries == 0
    aligned = compare_outputs("c", (64, 64), eager, backend, ranked_queries=True, **common)
    assert aligned.passed and aligned.reordered_queries == 2
    assert all(t.max_abs_error == 0 for t in aligned.tensors)


def test_a_query_selected_on_one_side_only_is_left_out_of_the_tensors_while_rare():
    """RT-DETR/DINO select their queries by a top-k: a near-tie at the boundary picks another token on one side."""
    rng = np.random.default_rng(2)
    queries = 40  # 5% of 40: at most 2 unpaired queries per image
    eager = {
        contract.OUTPUT_LOGITS: rng.normal(-6, 0.5, size=(2, queries, 3)),  # scores ~0.0025: no detections
        contract.OUTPUT_BOXES: rng.uniform(0.1, 0.9, size=(2, queries, 4)),
    }
    backend = {name: value.copy() for name, value in eager.items()}
    backend[contract.OUTPUT_BOXES][0, 7] = [0.5, 0.5, 0.2, 0.2]  # another token selected in image 0
    backend[contract.OUTPUT_LOGITS][0, 7] -= 0.3
    common = dict(activation="sigmoid", score_threshold=0.5, tolerance=FP32, ranked_queries=True)
    case = compare_outputs("c", (64, 64), eager, backend, **common)
    assert case.unpaired_queries == 1 and case.allowed_unpaired == 4
    assert all(t.passed for t in case.tensors) and case.passed
    assert (
        "1 queries selected on one side only" in ParityReport("m", "b", "a", "fp32", FP32, 0.5, cases=[case]).render()
    )
    # Many unpaired queries are no near-tie: the case fails.
    backend[contract.OUTPUT_LOGITS][0, :10] += 1.0
    assert not compare_outputs("c", (64, 64), eager, backend, **common).passed
    # An unpaired query that is a detection on one side still counts as missed/extra.
    backend = {name: value.copy() for name, value in eager.items()}
    backend[contract.OUTPUT_LOGITS][1, 3] = [8.0, -8.0, -8.0]
    confident = compare_outputs("c", (64, 64), eager, backend, **common)
    assert confident.unpaired_queries >= 1 and confident.detections.extra == 1 and not confident.passed
