"""Scores and boxes of DETR-family outputs, shared by parity and post-processing: class probabilities (softmax with a
"no object" class, or sigmoid per class), box format conversion and IoU."""

import numpy as np


def class_probabilities(logits: np.ndarray, activation: str) -> np.ndarray:
    """logits [..., Q, C] -> probabilities [..., Q, C] in float64: ``softmax`` (DETR, the last class is "no object")
    or ``sigmoid`` (Deformable DETR)."""
    logits = np.asarray(logits, dtype=np.float64)
    if activation == "softmax":
        shifted = np.exp(logits - logits.max(-1, keepdims=True))
        return shifted / shifted.sum(-1, keepdims=True)
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))
    raise ValueError(f"unknown score activation {activation!r}")


def query_scores(logits: np.ndarray, activation: str) -> tuple[np.ndarray, np.ndarray]:
    """logits [..., Q, C] -> (score [..., Q], label [..., Q]) of the best class per query ("no object" is never a
    label)."""
    probabilities = class_probabilities(logits, activation)
    if activation == "softmax":
        probabilities = probabilities[..., :-1]
    return probabilities.max(-1), probabilities.argmax(-1)


def cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    cx, cy, w, h = np.moveaxis(np.asarray(boxes, dtype=np.float64), -1, 0)
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """[A, 4], [B, 4] xyxy -> IoU [A, B]."""
    top_left = np.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    bottom_right = np.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    intersection = np.clip(bottom_right - top_left, 0, None).prod(-1)
    area_a = np.clip(boxes_a[:, 2:] - boxes_a[:, :2], 0, None).prod(-1)
    area_b = np.clip(boxes_b[:, 2:] - boxes_b[:, :2], 0, None).prod(-1)
    union = area_a[:, None] + area_b[None, :] - intersection
    return np.where(union > 0, intersection / np.where(union > 0, union, 1), 0.0)
