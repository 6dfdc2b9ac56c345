"""Eager PyTorch as a runner: the reference every backend is compared against."""

import numpy as np
import torch


class EagerRunner:
    name = "eager PyTorch"

    def __init__(self, model: torch.nn.Module, output_names: tuple[str, ...]):
        self.model = model.eval()
        self.output_names = tuple(output_names)

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """images [N, 3, H, W] float32 -> outputs keyed by name, as float32 arrays."""
        with torch.inference_mode():
            outputs = self.model(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)))
        return {name: outputs[name].float().numpy() for name in self.output_names}
