"""evaluate: eager PyTorch and each deployed backend over a COCO-format dataset, scored with COCO box AP (or panoptic
quality), side by side, with the detection-level parity of each backend against eager over the whole set.

Every backend sees the same images with the model's official preprocessing (the export's recorded recipe) and
keeps every detection the official post-processing keeps (no score threshold: AP ranks them all). Images of one
network size share a batch; exports with a padding mask pad mixed sizes into one batch, and eager PyTorch batches
the way the backend it is compared with does, so that both sides see the same tensors.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from detr_deploy import contract
from detr_deploy.detector import Detector
from detr_deploy.errors import DetrDeployError
from detr_deploy.evaluation.box_metrics import BOX_METRICS, box_metrics
from detr_deploy.evaluation.coco_dataset import CategoryMapping, CocoDataset, map_categories
from detr_deploy.evaluation.report import BackendEvaluation, EvaluationReport, drift_summary
from detr_deploy.model_source import model_metadata
from detr_deploy.parity import TOLERANCES, Detections, match_detections, summarize_matches
from detr_deploy.runtime.eager import EagerRunner

PANOPTIC_METRICS = ("PQ", "SQ", "RQ", "PQ_things", "PQ_stuff")
# The AP (PQ) points a backend may lose against eager PyTorch before evaluate fails, by the precision it computes in.
DEFAULT_MAX_AP_DROP = {"fp32": 0.1, "fp16": 0.5, "bf16": 1.0, "int8": 1.0}
EAGER = "eager PyTorch"


@dataclass
class BackendRun:
    """What one backend produced over the dataset: per image (in dataset order) its detections, and for panoptic
    models its segment map and segments."""

    name: str
    artifact: str
    precision: str
    results: list = field(default_factory=list)  # detector.ImageResult per image
    seconds: float = 0.0


def _network_size_order(dataset_images, recipe) -> list[int]:
    """Indices of the images sorted by network input size, so that equal sizes are adjacent and batch together."""
    sizes = [recipe.network_size(image.file_name, image.height, image.width) for image in dataset_images]
    return sorted(range(len(sizes)), key=lambda index: (sizes[index], index))


def run_backend(
    detector: Detector,
    image_paths: list,
    order: list[int],
    batch_size: int,
    on_progress: Callable[[int], None] = None,
) -> tuple[list, float]:
    """Detections of every image (no score threshold) in dataset order, and the seconds it took. Images go in
    ``order`` in chunks of ``batch_size`` (the detector batches consecutive equal sizes). An image that cannot be
    read stops the run with its DetrDeployError."""
    results = [None] * len(image_paths)
    started = time.perf_counter()
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        for index, result in zip(chunk, detector.detect([image_paths[index] for index in chunk], score_threshold=0.0)):
            if result.error is not None:
                raise DetrDeployError(result.error)
            results[index] = result
        if on_progress:
            on_progress(len(chunk))
    return results, time.perf_counter() - started


def coco_detections(results, image_ids, mapping: CategoryMapping) -> tuple[list[dict], int]:
    """Detector results -> COCO results (bbox [x, y, w, h]), and how many detections had no dataset category."""
    detections, unmapped = [], 0
    for image_id, result in zip(image_ids, results):
        for detection in result.detections:
            category = mapping.category(detection.label)
            if category is None:
                unmapped += 1
                continue
            x0, y0, x1, y1 = detection.box
            detections.append(
                {
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": detection.score,
                }
            )
    return detections, unmapped


def _as_detections(result, threshold: float) -> Detections:
    kept = [d for d in result.detections if d.score >= threshold]
    return Detections(
        np.array([d.score for d in kept], dtype=np.float64),
        np.array([d.label for d in kept], dtype=np.int64),
        np.array([d.box for d in kept], dtype=np.float64).reshape(-1, 4),
    )


def _check_same_model(backends) -> None:
    """Every backend must be an export of one model and weights: they are all compared with one eager model."""
    keys = (contract.META_CONFIG, contract.META_WEIGHTS, contract.META_MODEL)
    first_name, first = backends[0]
    for name, runner in backends[1:]:
        for key in keys:
            if runner.metadata.get(key) != first.metadata.get(key):
                raise DetrDeployError(
                    f"{name} and {first_name} are exports of different models or weights ({key} differs); "
                    "evaluate backends of one model together"
                )


def evaluate(
    backends,
    *,
    dataset: CocoDataset = None,
    panoptic=None,
    images_dir=None,
    eager_source=None,
    batch_size: int = 8,
    score_threshold: float = 0.5,
    panoptic_threshold: float = 0.85,
    max_ap_drop: float = None,
    on_start: Callable[[str, int], None] = None,
    on_progress: Callable[[int], None] = None,
) -> EvaluationReport:
    """Evaluate eager PyTorch and each of ``backends`` ([(artifact name, runner)]: ONNX Runtime, OpenVINO, TensorRT)
    on a COCO detection ``dataset`` (``read_coco_dataset``) or a COCO ``panoptic`` ground truth
    (``read_panoptic_annotations``, with ``images_dir`` holding its images).

    ``eager_source``: the model (``model_source.SourceModel``) of the exports, or of eager alone when no backend is
    given. ``score_threshold``: detections compared for parity (matched / missed / extra); ``panoptic_threshold``:
    the score a query needs to become a panoptic segment (official: 0.85). ``max_ap_drop``: AP (PQ) points a backend
    may lose (default per precision, DEFAULT_MAX_AP_DROP). ``on_start(name, images)`` and ``on_progress(images
    done)`` follow each backend's run."""
    if (dataset is None) == (panoptic is None):
        raise ValueError("give exactly one of dataset or panoptic")
    if backends:
        _check_same_model(backends)
    metadata = backends[0][1].metadata if backends else model_metadata(eager_source)
    runs = _detectors(backends, eager_source, metadata, batch_size, panoptic_threshold)
    detector = runs[0][3]
    entries, categories, required = _dataset_entries(dataset, panoptic, images_dir)
    mapping = map_categories(detector.class_names, categories, required)
    image_ids = [image_id for image_id, _ in entries]
    paths = [path for _, path in entries]
    if dataset is not None:
        order = _network_size_order(dataset.images, detector.recipe)
    else:
        order = list(range(len(paths)))
    finished = _run_all(runs, paths, order, batch_size, on_start, on_progress)
    return _report(
        finished,
        metadata,
        mapping,
        image_ids,
        dataset=dataset,
        panoptic=panoptic,
        score_threshold=score_threshold,
        max_ap_drop=max_ap_drop,
    )


def _report(
    finished: list[BackendRun],
    metadata: dict,
    mapping: CategoryMapping,
    image_ids,
    *,
    dataset,
    panoptic,
    score_threshold: float,
    max_ap_drop: float,
) -> EvaluationReport:
    """Score every run; each backend's (all but eager's, the first) compared with eager's."""
    report = EvaluationReport(
        model=metadata.get(contract.META_MODEL, "?"),
        task="panoptic" if panoptic is not None else "bbox",
        primary_metric="PQ" if panoptic is not None else "AP",
        images=len(image_ids),
        category_rule=mapping.rule,
        score_threshold=score_threshold,
    )
    eager_run, eager_metrics = finished[0], None
    for run in finished:
        evaluation = _score(run, dataset, panoptic, mapping, image_ids)
        if run is not eager_run:
            _compare_with_eager(evaluation, run, eager_run, eager_metrics, score_threshold, max_ap_drop)
        else:
            eager_metrics = evaluation.metrics
        report.backends.append(evaluation)
    return report


def _detectors(backends, eager_source, metadata: dict, batch_size: int, panoptic_threshold: float) -> list[tuple]:
    """(name, artifact, precision, Detector) of eager PyTorch, then of each backend."""
    # Eager batches as the backends do: a padded batch is not bit-for-bit the image alone.
    pad = bool(backends) and all(contract.INPUT_PADDING_MASK in runner.input_names for _, runner in backends)
    eager_runner = EagerRunner(eager_source.model, eager_source.config.output_names, metadata)
    options = dict(max_batch=batch_size, panoptic_threshold=panoptic_threshold)
    runs = [(EAGER, "", "fp32", Detector(eager_runner, metadata, pad_batches=pad, **options))]
    for artifact, runner in backends:
        runs.append((runner.name, artifact, runner.precision, Detector(runner, metadata, **options)))
    return runs


def _dataset_entries(dataset: CocoDataset, panoptic, images_dir) -> tuple[list[tuple], dict, set]:
    """The images as (image id, path), the dataset's categories (id -> name) and those its ground truth uses;
    every image must exist."""
    if panoptic is not None:
        entries = [(image.image_id, images_dir / image.file_name) for image in panoptic.images]
        categories = {category: info["name"] for category, info in panoptic.categories.items()}
        required = {segment["category_id"] for image in panoptic.images for segment in image.segments}
    else:
        entries = [(image.image_id, image.path) for image in dataset.images]
        categories, required = dataset.categories, dataset.annotated_categories
    missing = [path for _, path in entries if not path.is_file()]
    if missing:
        raise DetrDeployError(
            f"{len(missing)} of the {len(entries)} images are not in {missing[0].parent} (first: {missing[0].name}); "
            "give the folder the annotation file's file_name entries are relative to"
        )
    return entries, categories, required


def _run_all(runs, paths: list, order: list[int], batch_size: int, on_start, on_progress) -> list[BackendRun]:
    """Every detector of ``runs`` over every image, one after the other."""
    finished: list[BackendRun] = []
    for name, artifact, precision, run_detector in runs:
        if on_start:
            on_start(name if not artifact else f"{name} ({artifact})", len(paths))
        results, seconds = run_backend(run_detector, paths, order, batch_size, on_progress)
        finished.append(BackendRun(name, artifact, precision, results, seconds))
    return finished


def _score(run: BackendRun, dataset: CocoDataset, panoptic, mapping: CategoryMapping, image_ids) -> BackendEvaluation:
    """One run's metrics against the ground truth: box AP (and per image) or panoptic quality."""
    if panoptic is not None:
        metrics, per_image, unmapped = _panoptic_metrics(run, panoptic, mapping), {}, 0
    else:
        detections, unmapped = coco_detections(run.results, image_ids, mapping)
        scored = box_metrics(dataset.ground_truth, detections, image_ids)
        metrics, per_image = dict(scored.values), dict(scored.per_image_ap)
    return BackendEvaluation(
        name=run.name,
        artifact=run.artifact,
        precision=run.precision,
        metrics=metrics,
        seconds=round(run.seconds, 3),
        images_per_second=round(len(image_ids) / run.seconds, 3) if run.seconds > 0 else None,
        unmapped_detections=unmapped,
        per_image_ap=per_image,
    )


def _compare_with_eager(
    evaluation: BackendEvaluation,
    run: BackendRun,
    eager_run: BackendRun,
    eager_metrics: dict,
    score_threshold: float,
    max_ap_drop: float,
) -> None:
    """Add to a backend's ``evaluation`` its parity with eager PyTorch, image by image, and its metric deltas."""
    tolerance = TOLERANCES.get(run.precision, TOLERANCES["fp32"])
    relaxed = max(score_threshold - tolerance.max_score_drift, 0.0)
    matches = [
        match_detections(_as_detections(eager, relaxed), _as_detections(backend, relaxed), score_threshold)
        for eager, backend in zip(eager_run.results, run.results)
    ]
    drifts = np.concatenate([m.drifts for m in matches]) if matches else np.zeros(0)
    evaluation.detections = summarize_matches(matches, tolerance)
    evaluation.score_drift = drift_summary(drifts)
    evaluation.drifts = drifts.tolist()
    evaluation.delta = {
        key: None if value is None or eager_metrics.get(key) is None else round(value - eager_metrics[key], 4)
        for key, value in evaluation.metrics.items()
    }
    evaluation.max_ap_drop = max_ap_drop if max_ap_drop is not None else DEFAULT_MAX_AP_DROP[run.precision]


def _panoptic_metrics(run: BackendRun, panoptic, mapping: CategoryMapping) -> dict:
    """PQ, SQ, RQ over all categories, and PQ of things and of stuff (0..100)."""
    from detr_deploy.evaluation.panoptic_quality import PanopticQualityAccumulator, read_segment_ids

    accumulator = PanopticQualityAccumulator(panoptic.categories)
    for image, result in zip(panoptic.images, run.results):
        if result.segment_map is None:
            raise DetrDeployError(f"{run.name} gives no segments: panoptic evaluation needs a panoptic model")
        predicted_ids = np.array(result.segment_map, copy=True)
        segments = []
        for segment in result.segments:
            category = mapping.category(segment.label)
            if category is None:
                predicted_ids[predicted_ids == segment.id] = -1  # a class the dataset has not: unlabelled, as void
            else:
                segments.append({"id": segment.id, "category_id": category})
        accumulator.add(read_segment_ids(image.mask_path), image.segments, predicted_ids, segments)
    quality = accumulator.result()

    def value(group: dict, key: str):
        return group[key] if group["n"] else None  # no category of that kind in the dataset: undefined, not 0

    return {
        "PQ": value(quality.all, "pq"),
        "SQ": value(quality.all, "sq"),
        "RQ": value(quality.all, "rq"),
        "PQ_things": value(quality.things, "pq"),
        "PQ_stuff": value(quality.stuff, "pq"),
    }


__all__ = ["BOX_METRICS", "DEFAULT_MAX_AP_DROP", "PANOPTIC_METRICS", "evaluate", "run_backend"]


def evaluate_files(
    images_dir,
    *,
    annotations=None,
    panoptic_annotations=None,
    panoptic_masks=None,
    onnx_paths=(),
    openvino_paths=(),
    engine_paths=(),
    plugins="auto",
    threads: int = None,
    openvino_precision: str = None,
    model_name: str = None,
    checkpoint=None,
    max_images: int = None,
    **options,
) -> EvaluationReport:
    """``evaluate`` from files: the dataset (``annotations``, or ``panoptic_annotations`` with its PNG folder
    ``panoptic_masks``) and images folder, the backends (ONNX files through ONNX Runtime, ``openvino_paths``
    through OpenVINO in ``openvino_precision`` (None: the file's; "bf16"), both with ``threads`` CPU threads; engines
    through TensorRT),
    and the eager model (the exports' own, with ``checkpoint``'s weights when the export was made from one; with no
    backend, ``model_name`` and/or ``checkpoint`` as ``predict`` takes them). ``options`` go to ``evaluate``."""
    from pathlib import Path

    if (annotations is None) == (panoptic_annotations is None):
        raise DetrDeployError(
            "give one of --annotations FILE.json (COCO detection) or --panoptic-annotations FILE.json"
        )
    images_dir = Path(images_dir)
    dataset, panoptic = _read_ground_truth(images_dir, annotations, panoptic_annotations, panoptic_masks, max_images)
    backends = _open_backends(onnx_paths, openvino_paths, engine_paths, plugins, threads, openvino_precision)
    source = _eager_source(backends, model_name, checkpoint)
    return evaluate(backends, dataset=dataset, panoptic=panoptic, images_dir=images_dir, eager_source=source, **options)


def _read_ground_truth(images_dir, annotations, panoptic_annotations, panoptic_masks, max_images) -> tuple:
    """(CocoDataset, None) from ``annotations``, or (None, the panoptic ground truth) from ``panoptic_annotations``;
    both cut to the first ``max_images`` images when given."""
    from detr_deploy.evaluation.coco_dataset import read_coco_dataset

    if annotations is not None:
        return read_coco_dataset(annotations, images_dir, max_images), None
    from detr_deploy.evaluation.panoptic_quality import read_panoptic_annotations

    if not images_dir.is_dir():
        raise DetrDeployError(f"image folder {images_dir} does not exist")
    panoptic = read_panoptic_annotations(panoptic_annotations, panoptic_masks)
    if max_images is not None:
        panoptic = type(panoptic)(panoptic.images[:max_images], panoptic.categories)
    return None, panoptic


def _open_backends(onnx_paths, openvino_paths, engine_paths, plugins, threads: int, openvino_precision) -> list[tuple]:
    """[(file name, runner)] of every file given, in the order --onnx, --openvino, --engine."""
    from pathlib import Path

    from detr_deploy.runtime.open import check_kind, open_runner

    # (file, the option that gave it, what it is, what runs an ONNX file); every file is checked before any opens.
    given = [(path, "--onnx", "onnx", "onnxruntime") for path in onnx_paths]
    given += [(path, "--openvino", "onnx", "openvino") for path in openvino_paths]
    given += [(path, "--engine", "engine", "onnxruntime") for path in engine_paths]
    for path, option, kind, _ in given:
        check_kind(path, kind, option)
    return [
        (
            Path(path).name,
            open_runner(
                path,
                kind=kind,
                runtime=runtime,
                plugins=plugins,
                threads=threads,
                precision=openvino_precision if option == "--openvino" else None,
            ),
        )
        for path, option, kind, runtime in given
    ]


def _eager_source(backends, model_name: str, checkpoint):
    """The eager model: the exports' own (with ``checkpoint``'s weights when given), else ``model_name`` and/or
    ``checkpoint`` as ``predict`` takes them."""
    from detr_deploy.model_source import is_checkpoint_path, load_model, model_of_export

    if backends:
        return model_of_export(backends[0][1].metadata, model_name=model_name, checkpoint=checkpoint)
    if checkpoint is None and model_name is None:
        raise DetrDeployError(
            "give the backends to evaluate (--onnx, --openvino, --engine), or --model/--checkpoint for eager alone"
        )
    if checkpoint is not None and model_name is None and is_checkpoint_path(checkpoint):
        return load_model(None, checkpoint)
    return load_model(model_name, checkpoint)
