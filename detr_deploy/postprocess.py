"""From model outputs to what users look at: boxes in pixels, scores, labels, and panoptic segment maps.

Follows the official post-processing: DETR takes the best non-"no object" class per query (softmax); Deformable DETR
takes the top 100 (query, class) pairs over sigmoid scores, RT-DETR and DINO the top 300; boxes are normalized to the
image's unpadded extent and scaled to its original size. Panoptic: queries whose best class (no-object included) is
a real class above a threshold compete per pixel; stuff queries of one class merge;
segments of at most 4 pixels are dropped.
"""

from dataclasses import dataclass

import numpy as np

from detr_deploy.boxes import class_probabilities, cxcywh_to_xyxy, query_scores

# Deformable DETR's official PostProcess keeps this many (query, class) pairs before thresholding; exports record
# their model's own count (contract.META_TOP_K).
DEFORMABLE_TOP_K = 100
# Official panoptic post-processing: smaller segments are dropped.
MIN_SEGMENT_AREA = 4


@dataclass(frozen=True)
class BoxDetections:
    boxes: np.ndarray  # [D, 4] xyxy in pixels of the original image
    scores: np.ndarray  # [D]
    labels: np.ndarray  # [D] int


def decode_boxes(
    logits: np.ndarray,
    boxes: np.ndarray,
    activation: str,
    image_size: tuple[int, int],
    score_threshold: float,
    top_k: int = DEFORMABLE_TOP_K,
) -> BoxDetections:
    """One image: logits [Q, K], boxes [Q, 4] (cxcywh, 0..1 of the unpadded image), image_size (height, width) of
    the original image -> detections scoring at least ``score_threshold``, best first. ``top_k``: (query, class)
    pairs kept before thresholding, for sigmoid models."""
    if activation == "softmax":
        scores, labels = query_scores(logits, activation)
        chosen = np.arange(len(scores))
    else:
        flat = class_probabilities(logits, activation).ravel()
        top = np.argsort(-flat, kind="stable")[:top_k]
        scores, chosen, labels = flat[top], top // logits.shape[1], top % logits.shape[1]
    height, width = image_size
    pixel_boxes = cxcywh_to_xyxy(boxes[chosen].astype(np.float64)) * np.array([width, height, width, height])
    # A NaN score or box (weights that overflow float32, say) is no detection: it can be neither ranked nor drawn.
    keep = np.flatnonzero((scores >= score_threshold) & np.isfinite(pixel_boxes).all(-1))
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    return BoxDetections(pixel_boxes[keep].astype(np.float32), scores[keep].astype(np.float32), labels[keep])


@dataclass(frozen=True)
class PanopticResult:
    segment_map: np.ndarray  # [H, W] int32 of the original image: index into the segments, -1 where none
    labels: np.ndarray  # [M] label of each segment
    scores: np.ndarray  # [M]
    areas: np.ndarray  # [M] pixels in segment_map


def _resize_nearest(ids: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[h, w] int -> [H, W], nearest neighbour (PIL's NEAREST, as the official code resizes its id image)."""
    from PIL import Image

    return np.asarray(Image.fromarray(ids.astype(np.int32), mode="I").resize(size[::-1], Image.NEAREST))


def panoptic_segments(
    logits: np.ndarray,
    masks: np.ndarray,
    valid_size: tuple[int, int],
    padded_size: tuple[int, int],
    image_size: tuple[int, int],
    stuff_labels=(),
    threshold: float = 0.85,
) -> PanopticResult:
    """One image: logits [Q, K + 1], masks [Q, h, w] (mask logits at 1/4 of the padded input), valid_size /
    padded_size (height, width) of the network input without / with padding, image_size of the original image."""
    import torch
    import torch.nn.functional as F

    probabilities = class_probabilities(logits, "softmax")
    scores, labels = probabilities.max(-1), probabilities.argmax(-1)  # "no object" included, as officially
    keep = np.flatnonzero((labels != logits.shape[-1] - 1) & (scores > threshold))
    if keep.size == 0:
        empty = np.full(image_size, -1, dtype=np.int32)
        return PanopticResult(empty, np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64))
    # Up to the padded input size, crop the image, then one id per pixel: the query with the largest mask logit.
    upsampled = F.interpolate(torch.from_numpy(masks[keep][None].astype(np.float32)), size=padded_size, mode="bilinear")
    mask_logits = upsampled[0, :, : valid_size[0], : valid_size[1]].numpy()
    labels, scores = labels[keep], scores[keep]
    stuff = set(int(label) for label in stuff_labels)

    def representatives(active: np.ndarray) -> np.ndarray:
        """Each active query's segment: itself, or for stuff the first active query of its class."""
        first = {}
        for index in active:
            if labels[index] in stuff:
                first.setdefault(labels[index], index)
        return np.array([first.get(labels[index], index) if labels[index] in stuff else index for index in active])

    def assign(active: np.ndarray) -> np.ndarray:
        return _resize_nearest(representatives(active)[mask_logits[active].argmax(0)], image_size)

    active = np.arange(len(keep))
    while True:
        ids = assign(active)
        segment_of = representatives(active)
        present = np.unique(segment_of)
        areas = np.array([(ids == index).sum() for index in present])
        small = present[areas <= MIN_SEGMENT_AREA]
        if small.size == 0 or small.size == present.size:
            break
        active = active[~np.isin(segment_of, small)]
    if small.size == present.size:
        empty = np.full(image_size, -1, dtype=np.int32)
        return PanopticResult(empty, np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64))
    # Renumber segments 0..M-1 in query order.
    renumber = np.full(len(keep), -1, dtype=np.int32)
    renumber[present] = np.arange(present.size)
    segment_map = renumber[ids]
    areas = np.array([(segment_map == index).sum() for index in range(present.size)], dtype=np.int64)
    return PanopticResult(segment_map, labels[present], scores[present].astype(np.float32), areas)
