"""The evaluation report: each backend's metrics beside eager PyTorch's, the difference, detection-level parity over
the whole dataset, a PASSED/FAILED verdict per backend; JSON for machines, a table for people, and a PNG of the
per-image AP differences and score drifts."""

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from detr_deploy.parity import DetectionStats, finite_or_none


def drift_summary(drifts) -> dict[str, float]:
    """Score drift of matched detections: median, 90th and 99th percentile, and maximum (all 0 with none)."""
    drifts = np.asarray(drifts, dtype=np.float64)
    if drifts.size == 0:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}
    p50, p90, p99 = np.percentile(drifts, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(drifts.max())}


@dataclass
class BackendEvaluation:
    name: str
    artifact: str  # the file evaluated ("" for eager PyTorch)
    precision: str
    metrics: dict  # metric -> value in points (0..100), None where COCO has none (no ground truth of that size)
    seconds: float = 0.0
    images_per_second: float = None
    # Detections whose label has no category in the dataset (left out of AP).
    unmapped_detections: int = 0
    # Backends only: value - eager's value, the allowed drop, and parity with eager over all images.
    delta: dict = None
    max_ap_drop: float = None
    detections: DetectionStats = None
    score_drift: dict = None
    # Kept for the plot, not written to JSON: image id -> AP (0..100), matched detections' score drifts.
    per_image_ap: dict = field(default_factory=dict, repr=False)
    drifts: list = field(default_factory=list, repr=False)

    def drop(self, metric: str) -> float:
        """Points lost against eager on ``metric`` (negative: gained); 0 when undefined on either side."""
        if self.delta is None or self.delta.get(metric) is None:
            return 0.0
        return -self.delta[metric]

    def passed(self, metric: str) -> bool:
        return self.delta is None or self.drop(metric) <= self.max_ap_drop + 1e-9


@dataclass
class EvaluationReport:
    model: str
    task: str  # "bbox" or "panoptic"
    primary_metric: str  # "AP" or "PQ": the metric --max-ap-drop applies to
    images: int
    category_rule: str  # how labels became category ids
    score_threshold: float  # for the detection-level parity
    backends: list[BackendEvaluation] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(backend.passed(self.primary_metric) for backend in self.backends)

    def to_dict(self) -> dict:
        data = asdict(self)
        for backend_data, backend in zip(data["backends"], self.backends):
            backend_data.pop("per_image_ap")
            backend_data.pop("drifts")
            backend_data["passed"] = backend.passed(self.primary_metric)
        data["passed"] = self.passed
        return data

    def to_json(self) -> str:
        return json.dumps(finite_or_none(self.to_dict()), indent=2, allow_nan=False) + "\n"

    def render(self) -> str:
        """A table for people: one row per backend, metrics with their difference to eager, then parity and the
        verdict."""
        metrics = list(self.backends[0].metrics) if self.backends else []
        lines = [
            f"{'COCO box AP' if self.task == 'bbox' else 'COCO panoptic quality'} of model {self.model} on "
            f"{self.images} images (labels to categories by {self.category_rule}; 0..100)",
            "",
            f"{'backend':<44} {'precision':<9} " + " ".join(f"{m:>13}" for m in metrics) + f" {'img/s':>7}",
        ]
        for backend in self.backends:
            cells = []
            for metric in metrics:
                value = backend.metrics.get(metric)
                text = "-" if value is None else f"{value:.2f}"
                if backend.delta is not None and backend.delta.get(metric) is not None:
                    text += f" ({backend.delta[metric]:+.2f})"
                cells.append(f"{text:>13}")
            label = backend.name + (f" {backend.artifact}" if backend.artifact else "")
            speed = "-" if backend.images_per_second is None else f"{backend.images_per_second:.2f}"
            lines.append(f"{label[:44]:<44} {backend.precision:<9} " + " ".join(cells) + f" {speed:>7}")
        compared = [backend for backend in self.backends if backend.detections is not None]
        if compared:
            lines += ["", f"detections against eager PyTorch (score >= {self.score_threshold:g}):"]
            for backend in compared:
                det, drift = backend.detections, backend.score_drift
                lines.append(
                    f"  {backend.name} {backend.artifact}: {det.matched}/{det.eager} matched, {det.missed} missed, "
                    f"{det.extra} extra"
                    + (
                        f"; IoU mean {det.mean_iou:.4f}, min {det.min_iou:.4f}; score drift median {drift['p50']:.1e}, "
                        f"p99 {drift['p99']:.1e}, max {drift['max']:.1e}"
                        if det.matched
                        else ""
                    )
                )
        unmapped = [backend for backend in self.backends if backend.unmapped_detections]
        for backend in unmapped[:1]:
            lines.append(
                f"{backend.unmapped_detections} detections of {backend.name} had labels with no dataset category and "
                "were left out"
            )
        if compared:
            lines.append("")
            for backend in compared:
                verdict = "PASSED" if backend.passed(self.primary_metric) else "FAILED"
                drop = backend.drop(self.primary_metric)
                change = f"loses {drop:.2f}" if drop > 0 else f"gains {-drop:.2f}" if drop < 0 else "keeps its"
                lines.append(
                    f"{verdict}: {backend.name} {backend.artifact} {change} {self.primary_metric} points "
                    f"(at most {backend.max_ap_drop:g} lost allowed for {backend.precision})"
                )
        lines += ["", "PASSED" if self.passed else "FAILED"]
        return "\n".join(lines)


def plot_report(report: EvaluationReport, path) -> None:
    """Write a PNG: per-image AP of each backend minus eager's (histogram), and the score drift of matched
    detections (histogram, log scale), one colour per backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from detr_deploy.io import atomic_output

    backends = [backend for backend in report.backends if backend.delta is not None]
    eager = report.backends[0]
    figure, (ap_axis, drift_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    for backend in backends:
        common = [image for image in backend.per_image_ap if backend.per_image_ap[image] is not None]
        differences = [
            backend.per_image_ap[image] - eager.per_image_ap[image]
            for image in common
            if eager.per_image_ap.get(image) is not None
        ]
        if differences:
            ap_axis.hist(differences, bins=40, alpha=0.6, label=f"{backend.name} {backend.artifact}")
        drifts = np.asarray(backend.drifts, dtype=np.float64)
        if drifts.size:
            floor = 1e-8
            bins = np.logspace(np.log10(floor), 0, 50)
            drift_axis.hist(
                np.clip(drifts, floor, 1.0), bins=bins, alpha=0.6, label=f"{backend.name} {backend.artifact}"
            )
    ap_axis.set_title(f"per-image {report.primary_metric if report.task == 'bbox' else 'AP'}: backend - eager")
    ap_axis.set_xlabel("AP points")
    ap_axis.set_ylabel("images")
    drift_axis.set_xscale("log")
    drift_axis.set_title(f"score drift of matched detections (score >= {report.score_threshold:g})")
    drift_axis.set_xlabel("|backend score - eager score| (1e-8 and below at the left edge)")
    drift_axis.set_ylabel("detections")
    for axis in (ap_axis, drift_axis):
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
        else:
            axis.text(0.5, 0.5, "nothing to show", ha="center", va="center", transform=axis.transAxes)
    figure.suptitle(f"{report.model}: {report.images} images")
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)
