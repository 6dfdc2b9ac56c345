"""Runners: one interface (``run(images) -> {output name: array}``) for eager PyTorch and the deployed backends.

Backend packages (onnxruntime, TensorRT) are imported inside the runners that need them.
"""

from typing import Protocol

import numpy as np


class Runner(Protocol):
    name: str
    output_names: tuple[str, ...]

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """images [N, 3, H, W] float32, ImageNet-normalized -> outputs keyed by name."""
        ...


__all__ = ["Runner"]
