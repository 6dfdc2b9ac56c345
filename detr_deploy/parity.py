"""Parity of a backend (ONNX Runtime now, TensorRT later) against eager PyTorch, as data.

Three levels: tensors (max abs / rel error, numpy ``allclose`` semantics for the verdict), detections (kept
above a score threshold on each side, matched with the Hungarian algorithm on 1 - IoU plus a class-mismatch
cost), and, for panoptic models, per-query IoU of the binarized masks.
"""

import json
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from detr_deploy import contract
from detr_deploy.boxes import box_iou, cxcywh_to_xyxy, query_scores


@dataclass(frozen=True)
class Tolerance:
    """A tensor element passes when |backend - eager| <= atol + rtol * |eager|."""

    rtol: float
    atol: float
    min_box_iou: float
    max_score_drift: float
    min_mask_iou: float


TOLERANCES = {
    "fp32": Tolerance(rtol=1e-4, atol=1e-4, min_box_iou=0.99, max_score_drift=1e-3, min_mask_iou=0.99),
    "fp16": Tolerance(rtol=1e-2, atol=1e-2, min_box_iou=0.9, max_score_drift=0.05, min_mask_iou=0.9),
    "bf16": Tolerance(rtol=5e-2, atol=5e-2, min_box_iou=0.85, max_score_drift=0.1, min_mask_iou=0.85),
    # Explicit Q/DQ graphs (``quantize --precision int8``, attention and box head kept out of INT8): measured on
    # random-weight DETR / Deformable DETR R50 (benchmarks/int8_keep_precision.py), logits move up to 0.1, boxes by
    # 0.004, matched detections keep IoU >= 0.98 and scores within 0.025.
    "int8": Tolerance(rtol=1e-1, atol=0.15, min_box_iou=0.9, max_score_drift=0.05, min_mask_iou=0.8),
}


@dataclass
class TensorStats:
    name: str
    shape: list[int]
    max_abs_error: float
    # Relative error over the elements where rtol, not atol, decides (|eager| >= atol / rtol).
    max_rel_error: float
    mismatched: int
    passed: bool


@dataclass
class DetectionStats:
    eager: int
    backend: int
    matched: int
    missed: int
    extra: int
    mean_iou: float
    min_iou: float
    max_score_drift: float
    passed: bool


@dataclass
class MaskStats:
    queries: int
    mean_iou: float
    min_iou: float
    passed: bool


@dataclass
class ParityCase:
    name: str
    batch: int
    height: int
    width: int
    tensors: list[TensorStats]
    detections: DetectionStats
    masks: MaskStats = None
    # Backend queries moved to line up with eager ones (query-selection models only; see align_queries).
    reordered_queries: int = 0
    # Query-selection models: queries only one side selected (near-tied selection scores at the top-k boundary);
    # left out of the tensor comparison while few, still in the detection comparison.
    unpaired_queries: int = 0
    allowed_unpaired: int = 0

    @property
    def passed(self) -> bool:
        return (
            all(t.passed for t in self.tensors)
            and self.detections.passed
            and (self.masks is None or self.masks.passed)
            and self.unpaired_queries <= self.allowed_unpaired
        )


@dataclass
class ParityReport:
    model: str
    backend: str
    artifact: str
    precision: str
    tolerance: Tolerance
    score_threshold: float
    cases: list[ParityCase] = field(default_factory=list)
    # Images given with --images that could not be used (each message names its image).
    unusable_images: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.cases) and all(case.passed for case in self.cases)

    @property
    def detections_compared(self) -> bool:
        """False when no detection reached the threshold on either side in any case: nothing was matched."""
        return any(case.detections.eager or case.detections.backend for case in self.cases)

    def to_dict(self) -> dict:
        data = asdict(self)
        for case_data, case in zip(data["cases"], self.cases):
            case_data["passed"] = case.passed
        data["passed"] = self.passed
        data["detections_compared"] = self.detections_compared
        return data

    def to_json(self) -> str:
        """Strict JSON: non-finite numbers (a NaN output, an infinite error for a shape mismatch) become null."""
        return json.dumps(finite_or_none(self.to_dict()), indent=2, allow_nan=False) + "\n"

    def render(self) -> str:
        """A table for people, ending in a PASSED/FAILED verdict line."""
        lines = [
            f"parity of {self.backend} against eager PyTorch: model {self.model}, {self.artifact}",
            f"precision {self.precision}: rtol {self.tolerance.rtol:g}, atol {self.tolerance.atol:g}, "
            f"min box IoU {self.tolerance.min_box_iou:g}, max score drift {self.tolerance.max_score_drift:g}, "
            f"score threshold {self.score_threshold:g}",
            "",
            f"{'case':<28} {'output':<12} {'max abs':>10} {'max rel':>10}  {'detections':<46} {'result':>6}",
        ]
        for case in self.cases:
            det = case.detections
            detections = f"{det.matched}/{det.eager} matched, {det.missed} missed, {det.extra} extra" + (
                f", IoU>={det.min_iou:.4f}, drift {det.max_score_drift:.1e}" if det.matched else ""
            )
            for index, tensor in enumerate(case.tensors):
                lines.append(
                    f"{case.name if index == 0 else '':<28} {tensor.name:<12} {tensor.max_abs_error:>10.2e} "
                    f"{tensor.max_rel_error:>10.2e}  {detections if index == 0 else '':<46} "
                    f"{('ok' if tensor.passed else 'FAIL'):>6}"
                )
            if case.masks is not None:
                lines.append(
                    f"{'':<28} {'mask IoU':<12} {'':>10} {'':>10}  mean {case.masks.mean_iou:.4f}, "
                    f"min {case.masks.min_iou:.4f} over {case.masks.queries} queries{'':<8} "
                    f"{('ok' if case.masks.passed else 'FAIL'):>6}"
                )
            if case.reordered_queries:
                lines.append(
                    f"{'':<28} {case.reordered_queries} queries came in another order (ranked by score), aligned"
                )
            if case.unpaired_queries:
                lines.append(
                    f"{'':<28} {case.unpaired_queries} queries selected on one side only (near-tied selection "
                    f"scores; at most {case.allowed_unpaired} allowed), left out of the tensor comparison"
                    + ("" if case.unpaired_queries <= case.allowed_unpaired else f"{'FAIL':>6}")
                )
            if not det.passed:
                lines.append(f"{'':<28} {'detections':<12} {'':>10} {'':>10}  {'':<46} {'FAIL':>6}")
        for message in self.unusable_images:
            lines.append(f"not compared: {message}")
        verdict = "PASSED" if self.passed else "FAILED"
        if self.cases and not self.detections_compared:
            lines += [
                "",
                f"no detection scored {self.score_threshold:g} or more on either side in any case: detections were "
                "not compared, only tensors (lower --score-threshold to compare detections)",
            ]
            verdict += " (tensors only)" if self.passed else ""
        lines += ["", verdict]
        return "\n".join(lines)


def finite_or_none(value):
    """A JSON-ready structure with every NaN/Infinity float replaced by None (strict JSON has neither)."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    return value


def compare_tensor(name: str, eager: np.ndarray, backend: np.ndarray, tolerance: Tolerance) -> TensorStats:
    eager = np.asarray(eager, dtype=np.float64)
    backend = np.asarray(backend, dtype=np.float64)
    if eager.shape != backend.shape:
        return TensorStats(name, list(backend.shape), float("inf"), float("inf"), int(eager.size), False)
    with np.errstate(invalid="ignore"):
        difference = np.abs(backend - eager)
    # Equal infinities agree (inf - inf would be nan); a nan anywhere fails the comparison below.
    difference = np.where(~np.isfinite(eager) & (eager == backend), 0.0, difference)
    magnitude = np.abs(eager)
    bad = ~(difference <= tolerance.atol + tolerance.rtol * magnitude)
    # Where |eager| < atol / rtol the absolute term dominates the verdict, so relative error means little there.
    significant = magnitude >= (tolerance.atol / tolerance.rtol if tolerance.rtol > 0 else tolerance.atol)
    max_rel = float((difference[significant] / magnitude[significant]).max()) if significant.any() else 0.0
    max_abs = float(difference.max()) if difference.size else 0.0
    return TensorStats(name, list(eager.shape), max_abs, max_rel, int(bad.sum()), not bad.any())


@dataclass
class Detections:
    """Per-query detections of one image kept above a threshold: scores [K], labels [K], boxes [K, 4] xyxy."""

    scores: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray


def select_detections(logits: np.ndarray, boxes: np.ndarray, activation: str, threshold: float) -> Detections:
    """One image: logits [Q, C], boxes [Q, 4] cxcywh -> the queries scoring at least ``threshold``."""
    scores, labels = query_scores(logits, activation)
    keep = scores >= threshold
    return Detections(scores[keep], labels[keep], cxcywh_to_xyxy(boxes)[keep])


@dataclass
class ImageMatch:
    """One image's detections matched across two sides: pairs (eager index, backend index) with their IoU and
    score drift, and the unmatched detections at or above the threshold on each side."""

    eager_strong: int
    backend_strong: int
    pairs: np.ndarray  # [M, 2] int
    ious: np.ndarray  # [M]
    drifts: np.ndarray  # [M] |eager score - backend score|
    missed: int
    extra: int


def match_detections(
    eager: Detections, backend: Detections, score_threshold: float, class_mismatch_cost: float = 1.0
) -> ImageMatch:
    """Match one image's detections (Hungarian on 1 - IoU plus a class-mismatch cost; a pair needs IoU > 0.5 and the
    same label, and at least one side at or above ``score_threshold``)."""
    eager_strong = eager.scores >= score_threshold
    backend_strong = backend.scores >= score_threshold
    iou = box_iou(eager.boxes, backend.boxes)
    cost = (1.0 - iou) + class_mismatch_cost * (eager.labels[:, None] != backend.labels[None, :])
    rows, cols = linear_sum_assignment(cost) if cost.size else (np.empty(0, int), np.empty(0, int))
    good = (iou[rows, cols] > 0.5) & (eager.labels[rows] == backend.labels[cols])
    rows, cols = rows[good], cols[good]
    # Pairs where neither side reaches the threshold are below it on both: not a detection at all.
    strong_pair = eager_strong[rows] | backend_strong[cols]
    rows, cols = rows[strong_pair], cols[strong_pair]
    return ImageMatch(
        int(eager_strong.sum()),
        int(backend_strong.sum()),
        np.stack([rows, cols], -1).astype(int).reshape(-1, 2),
        iou[rows, cols].astype(np.float64),
        np.abs(eager.scores[rows].astype(np.float64) - backend.scores[cols]),
        int(np.count_nonzero(np.delete(eager_strong, rows))),
        int(np.count_nonzero(np.delete(backend_strong, cols))),
    )


def summarize_matches(matches: list[ImageMatch], tolerance: Tolerance) -> DetectionStats:
    """Counts, IoU and score drift over many images' matches, with the verdict of ``tolerance``."""
    ious = np.concatenate([m.ious for m in matches]) if matches else np.zeros(0)
    drifts = np.concatenate([m.drifts for m in matches]) if matches else np.zeros(0)
    missed, extra = sum(m.missed for m in matches), sum(m.extra for m in matches)
    mean_iou = float(ious.mean()) if ious.size else 1.0
    min_iou = float(ious.min()) if ious.size else 1.0
    max_drift = float(drifts.max()) if drifts.size else 0.0
    passed = missed == 0 and extra == 0 and min_iou >= tolerance.min_box_iou and max_drift <= tolerance.max_score_drift
    return DetectionStats(
        sum(m.eager_strong for m in matches),
        sum(m.backend_strong for m in matches),
        int(ious.size),
        missed,
        extra,
        mean_iou,
        min_iou,
        max_drift,
        passed,
    )


def compare_detections(
    eager: list[Detections],
    backend: list[Detections],
    score_threshold: float,
    tolerance: Tolerance,
    class_mismatch_cost: float = 1.0,
) -> DetectionStats:
    """Match detections image by image. Both sides come in with a threshold lowered by the allowed score drift,
    so a detection that sits right at the threshold on one side and just below it on the other still matches;
    only unmatched detections at or above ``score_threshold`` count as missed (eager) or extra (backend)."""
    matches = [
        match_detections(eager_image, backend_image, score_threshold, class_mismatch_cost)
        for eager_image, backend_image in zip(eager, backend)
    ]
    return summarize_matches(matches, tolerance)


def compare_masks(eager_masks: np.ndarray, backend_masks: np.ndarray, tolerance: Tolerance) -> MaskStats:
    """Mask logits [N, Q, H, W] on both sides -> IoU of (logit > 0) per query; two empty masks agree (IoU 1)."""
    eager_binary = np.asarray(eager_masks) > 0
    backend_binary = np.asarray(backend_masks) > 0
    if eager_binary.shape != backend_binary.shape:
        return MaskStats(0, 0.0, 0.0, False)
    eager_flat = eager_binary.reshape(-1, eager_binary.shape[-2] * eager_binary.shape[-1])
    backend_flat = backend_binary.reshape(eager_flat.shape)
    intersection = (eager_flat & backend_flat).sum(-1)
    union = (eager_flat | backend_flat).sum(-1)
    iou = np.where(union > 0, intersection / np.maximum(union, 1), 1.0)
    return MaskStats(int(iou.size), float(iou.mean()), float(iou.min()), bool(iou.min() >= tolerance.min_mask_iou))


def align_queries(
    eager: dict[str, np.ndarray], backend: dict[str, np.ndarray], tolerance: Tolerance = None
) -> tuple[dict[str, np.ndarray], int, np.ndarray]:
    """Reorder the backend's queries, image by image, to line up with eager's.

    For models whose queries are ranked by a score (two-stage Deformable DETR, RT-DETR, DINO), two near-equal scores
    can swap places between backends: the same detections, in another order. Matching rows by their logits and boxes
    (Hungarian, L-infinity distance) undoes that before tensors are compared. Near-equal scores at the top-k boundary
    can also select another encoder token on one side: such a pair stays unlike after matching (beyond
    ``tolerance``). Returns (aligned, queries moved, unpaired [N, Q] bool: pairs that differ beyond tolerance)."""
    logits, boxes = contract.OUTPUT_LOGITS, contract.OUTPUT_BOXES
    aligned = {name: np.array(value, copy=True) for name, value in backend.items()}
    moved = 0
    unpaired = np.zeros(eager[logits].shape[:2], dtype=bool)
    for image in range(eager[logits].shape[0]):
        eager_rows = np.concatenate([eager[logits][image], eager[boxes][image]], -1).astype(np.float64)
        backend_rows = np.concatenate([backend[logits][image], backend[boxes][image]], -1).astype(np.float64)
        with np.errstate(invalid="ignore"):
            cost = np.nan_to_num(np.abs(eager_rows[:, None] - backend_rows[None]).max(-1), nan=np.inf, posinf=1e30)
        _, order = linear_sum_assignment(cost)
        moved += int(np.count_nonzero(order != np.arange(order.size)))
        for name in aligned:
            if name in eager and aligned[name].ndim >= 2 and aligned[name].shape[1] == order.size:
                aligned[name][image] = np.asarray(backend[name])[image][order]
        if tolerance is not None:
            paired = backend_rows[order]
            with np.errstate(invalid="ignore"):
                close = np.abs(paired - eager_rows) <= tolerance.atol + tolerance.rtol * np.abs(eager_rows)
            unpaired[image] = ~close.all(-1)
    return aligned, moved, unpaired


# Query-selection models: at most this fraction of each image's queries (and at least one) may be selected on one
# side only before the case fails.
MAX_UNPAIRED_FRACTION = 0.05


def compare_outputs(
    name: str,
    image_size: tuple[int, int],
    eager: dict[str, np.ndarray],
    backend: dict[str, np.ndarray],
    *,
    activation: str,
    score_threshold: float,
    tolerance: Tolerance,
    ranked_queries: bool = False,
) -> ParityCase:
    """Compare one run (same inputs on both sides). Outputs are keyed by the contract's output names.
    ``ranked_queries``: the model orders its queries by score, so queries are aligned first (``align_queries``)."""
    missing = [output for output in eager if output not in backend]
    if missing:
        raise ValueError(f"backend returned no {', '.join(missing)}")
    reordered = unpaired_count = allowed = 0
    compared = backend
    if ranked_queries:
        backend, reordered, unpaired = align_queries(eager, backend, tolerance)
        unpaired_count = int(unpaired.sum())
        queries = unpaired.shape[1]
        allowed = unpaired.shape[0] * max(1, int(queries * MAX_UNPAIRED_FRACTION))
        compared = backend
        if 0 < unpaired_count <= allowed:
            # The tensors compare the queries both sides selected; the detections below still see every query.
            compared = {
                name: np.where(unpaired.reshape(unpaired.shape + (1,) * (value.ndim - 2)), eager[name], value)
                if name in eager and value.ndim >= 2 and value.shape[:2] == unpaired.shape
                else value
                for name, value in backend.items()
            }
    tensors = [compare_tensor(output, eager[output], compared[output], tolerance) for output in eager]
    logits_name, boxes_name = contract.OUTPUT_LOGITS, contract.OUTPUT_BOXES
    batch = eager[logits_name].shape[0]
    eager_detections, backend_detections = [], []
    relaxed = max(score_threshold - tolerance.max_score_drift, 0.0)
    for image in range(batch):
        eager_detections.append(
            select_detections(eager[logits_name][image], eager[boxes_name][image], activation, relaxed)
        )
        backend_detections.append(
            select_detections(backend[logits_name][image], backend[boxes_name][image], activation, relaxed)
        )
    detections = compare_detections(eager_detections, backend_detections, score_threshold, tolerance)
    masks = None
    if contract.OUTPUT_MASKS in eager:
        masks = compare_masks(eager[contract.OUTPUT_MASKS], backend[contract.OUTPUT_MASKS], tolerance)
    return ParityCase(
        name,
        int(batch),
        int(image_size[0]),
        int(image_size[1]),
        tensors,
        detections,
        masks,
        reordered,
        unpaired_count,
        allowed,
    )
