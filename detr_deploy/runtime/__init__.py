"""Runners: one interface (``run(images) -> {output name: array}``) for eager PyTorch and the deployed backends.

Backend packages (onnxruntime, TensorRT) are imported inside the runners that need them.
"""

from typing import Protocol

import numpy as np


class Runner(Protocol):
    name: str
    input_names: tuple[str, ...]  # ("images",) or ("images", "padding_mask")
    output_names: tuple[str, ...]

    def run(self, images: np.ndarray, padding_mask: np.ndarray = None) -> dict[str, np.ndarray]:
        """images [N, 3, H, W] float32, ImageNet-normalized; padding_mask [N, H, W] uint8 (1 = padded) or None
        -> outputs keyed by name."""
        ...


__all__ = ["Runner"]
