"""The detector users embed: images in (paths, PIL images, uint8 arrays), detections out, whatever the backend
(eager PyTorch, ONNX Runtime, OpenVINO, TensorRT).

Pre-processing is the official one of the model's family, as the export records it (DETR, Deformable DETR, DINO:
shorter side 800, longer side at most 1333, ImageNet normalization; RT-DETR: 640x640, RGB in 0..1). A batch of
differently sized images is padded at the bottom and right into one tensor with a padding mask, as the official
NestedTensor does, when the model takes a ``padding_mask`` input (export ``--padding-mask``); otherwise only images of
the same network size share a batch (RT-DETR's fixed 640x640: all of them), which is always correct.
"""

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from detr_deploy import contract
from detr_deploy.errors import DetrDeployError
from detr_deploy.postprocess import DEFORMABLE_TOP_K, decode_boxes, panoptic_segments
from detr_deploy.preprocessing import InputRecipe, read_image
from detr_deploy.runtime.open import RUNTIMES, artifact_kind, open_runner

logger = logging.getLogger(__name__)


@dataclass
class Detection:
    box: list[float]  # x0, y0, x1, y1 in pixels of the original image
    score: float
    label: int
    name: str


@dataclass
class Segment:
    id: int  # the value of its pixels in segment_map
    label: int
    name: str
    isthing: bool
    score: float
    area: int  # pixels, at the original image size
    color: list[int] = None  # RGB in the drawn segment map, when one is drawn


@dataclass
class ImageResult:
    source: str
    width: int = 0
    height: int = 0
    detections: list[Detection] = field(default_factory=list)
    # Panoptic models: [height, width] int32, -1 where no segment; the segments it refers to.
    segment_map: np.ndarray = None
    segments: list[Segment] = None
    error: str = None

    def to_dict(self) -> dict:
        data = {key: value for key, value in asdict(self).items() if key != "segment_map"}
        if self.segments is None:
            data.pop("segments")
        return data


class Detector:
    def __init__(
        self,
        runner,
        metadata: dict[str, str],
        *,
        score_threshold: float = 0.5,
        panoptic_threshold: float = 0.85,
        shorter_side: int = None,
        max_size: int = None,
        max_batch: int = 8,
        pad_batches: bool = None,
    ):
        """``runner``: an eager, ONNX Runtime, OpenVINO or TensorRT runner; ``metadata``: the export's metadata.
        ``shorter_side``/``max_size`` replace the model's own resize by an aspect-keeping one of that size.
        ``pad_batches``: pad differently sized images into one batch with a mask (default: when the runner takes a
        padding mask); False batches only same-sized images, as a backend without the mask input must."""
        self.runner = runner
        self.metadata = metadata
        self.score_threshold = score_threshold
        self.panoptic_threshold = panoptic_threshold
        self.recipe = InputRecipe.from_metadata(metadata, shorter_side, max_size)
        self.top_k = int(metadata.get(contract.META_TOP_K, DEFORMABLE_TOP_K))
        self.activation = metadata.get(contract.META_SCORE_ACTIVATION, "softmax")
        num_classes = int(metadata.get(contract.META_NUM_CLASSES, 0))
        names = metadata.get(contract.META_CLASS_NAMES)
        self.class_names = json.loads(names) if names else [f"class_{label}" for label in range(num_classes)]
        self.stuff_labels = set(json.loads(metadata.get(contract.META_STUFF_LABELS, "[]")))
        takes_mask = contract.INPUT_PADDING_MASK in runner.input_names
        self.padded_batches = takes_mask if pad_batches is None else bool(pad_batches) and takes_mask
        self.profile = runner.profiles.get(contract.INPUT_IMAGES)
        self.max_batch = min(max_batch, runner.max_batch or max_batch)

    @classmethod
    def open(
        cls,
        source,
        *,
        runtime: str = "onnxruntime",
        threads: int = None,
        checkpoint=None,
        plugins="auto",
        precision: str = None,
        **options,
    ) -> "Detector":
        """An ONNX file (in ``runtime``: "onnxruntime" or "openvino", with ``threads`` CPU threads; ``precision``
        "bf16" runs an fp32 file in bf16 in OpenVINO, None what the file holds), an engine
        (TensorRT, ``.engine``/``.plan``/``.trt``), a checkpoint (file or transformers folder: eager PyTorch,
        architecture from the file), or a zoo model name (eager PyTorch, with ``checkpoint`` or seeded random
        weights). ``options`` go to ``Detector``."""
        path = Path(str(source))
        if artifact_kind(path) is not None:
            runner = open_runner(path, runtime=runtime, plugins=plugins, threads=threads, precision=precision)
            return cls(runner, runner.metadata, **options)
        if precision not in (None, "fp32"):
            raise DetrDeployError(
                f"eager PyTorch runs {source} in fp32; export it (cli.py export) and run the ONNX file in OpenVINO "
                f"for {precision}"
            )
        if runtime not in RUNTIMES:
            raise DetrDeployError(f"unknown runtime {runtime!r}; choose from: {', '.join(RUNTIMES)}")
        if runtime != "onnxruntime":  # eager PyTorch runs zoo models and checkpoints
            raise DetrDeployError(
                f"--runtime {runtime} runs ONNX files, and {source} is not one (.onnx); export it first "
                "(cli.py export), or drop --runtime to run it in eager PyTorch"
            )
        from detr_deploy.model_source import is_checkpoint_path, load_model, model_metadata
        from detr_deploy.runtime.eager import EagerRunner

        if checkpoint is None and is_checkpoint_path(source):
            loaded = load_model(None, path)  # a checkpoint alone: its architecture comes from the file
        else:
            loaded = load_model(str(source), checkpoint)
        metadata = model_metadata(loaded)
        return cls(EagerRunner(loaded.model, loaded.config.output_names, metadata), metadata, **options)

    def _prepare(self, image) -> tuple[str, np.ndarray, np.ndarray]:
        """-> (name, original uint8 [H, W, 3], network input float32 [3, h, w])."""
        name, rgb = read_image(image)
        height, width = self.recipe.network_size(name, rgb.shape[0], rgb.shape[1])
        if self.profile is not None and not self.profile.contains([self.profile.min[0], 3, height, width]):
            low, high = self.profile.min, self.profile.max
            raise DetrDeployError(
                f"{name}: resized to {height}x{width}, outside the engine's profile "
                f"({low[2]}x{low[3]} to {high[2]}x{high[3]}); rebuild the engine or change the resize"
            )
        return name, rgb, self.recipe.prepare(name, rgb)

    def detect(self, images, score_threshold: float = None):
        """One image -> ImageResult (a DetrDeployError if it cannot be read); a list -> one ImageResult per image,
        with ``error`` set for those that could not be processed while the others still are."""
        single = not isinstance(images, (list, tuple))
        batch = [images] if single else list(images)
        if not batch:
            raise DetrDeployError("no images given")
        threshold = self.score_threshold if score_threshold is None else score_threshold
        results: list[ImageResult] = [None] * len(batch)
        prepared = []
        for index, image in enumerate(batch):
            try:
                prepared.append((index, *self._prepare(image)))
            except DetrDeployError as error:
                if single:
                    raise
                name = str(image) if isinstance(image, (str, Path)) else f"image {index}"
                results[index] = ImageResult(source=name, error=str(error))
        for chunk in self._chunks(prepared):
            for index, result in zip([item[0] for item in chunk], self._run_chunk(chunk, threshold)):
                results[index] = result
        return results[0] if single else results

    def _chunks(self, prepared: list) -> list[list]:
        """Consecutive images in batches of at most ``max_batch``; without padding, a batch holds one size only."""
        chunks = []
        for item in prepared:
            size = item[3].shape[1:]
            if (
                chunks
                and len(chunks[-1]) < self.max_batch
                and (self.padded_batches or chunks[-1][-1][3].shape[1:] == size)
            ):
                chunks[-1].append(item)
            else:
                chunks.append([item])
        return chunks

    def _run_chunk(self, chunk, threshold: float) -> list[ImageResult]:
        sizes = [inputs.shape[1:] for _, _, _, inputs in chunk]
        padded_height, padded_width = max(h for h, _ in sizes), max(w for _, w in sizes)
        images = np.zeros((len(chunk), 3, padded_height, padded_width), dtype=np.float32)
        mask = np.ones((len(chunk), padded_height, padded_width), dtype=np.uint8)
        for slot, (height, width) in enumerate(sizes):
            images[slot, :, :height, :width] = chunk[slot][3]
            mask[slot, :height, :width] = 0
        outputs = self.runner.run(images, mask if self.padded_batches else None)
        results = []
        for slot, (_, name, rgb, _) in enumerate(chunk):
            original = rgb.shape[:2]
            found = decode_boxes(
                outputs[contract.OUTPUT_LOGITS][slot],
                outputs[contract.OUTPUT_BOXES][slot],
                self.activation,
                original,
                threshold,
                self.top_k,
            )
            result = ImageResult(
                source=name,
                width=int(original[1]),
                height=int(original[0]),
                detections=[
                    Detection([round(float(v), 2) for v in box], round(float(score), 5), int(label), self._name(label))
                    for box, score, label in zip(found.boxes, found.scores, found.labels)
                ],
            )
            if contract.OUTPUT_MASKS in outputs:
                panoptic = panoptic_segments(
                    outputs[contract.OUTPUT_LOGITS][slot],
                    outputs[contract.OUTPUT_MASKS][slot],
                    sizes[slot],
                    (padded_height, padded_width),
                    original,
                    self.stuff_labels,
                    self.panoptic_threshold,
                )
                result.segment_map = panoptic.segment_map
                result.segments = [
                    Segment(
                        index,
                        int(label),
                        self._name(label),
                        int(label) not in self.stuff_labels,
                        float(score),
                        int(area),
                    )
                    for index, (label, score, area) in enumerate(zip(panoptic.labels, panoptic.scores, panoptic.areas))
                ]
            results.append(result)
        return results

    def _name(self, label: int) -> str:
        return self.class_names[label] if 0 <= label < len(self.class_names) else f"class_{label}"
