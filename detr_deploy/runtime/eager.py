"""Eager PyTorch as a runner: the reference every backend is compared against."""

import numpy as np
import torch

from detr_deploy import contract


class EagerRunner:
    name = "eager PyTorch"

    def __init__(self, model: torch.nn.Module, output_names: tuple[str, ...]):
        self.model = model.eval()
        self.input_names = (contract.INPUT_IMAGES, contract.INPUT_PADDING_MASK)
        self.output_names = tuple(output_names)

    def run(self, images: np.ndarray, padding_mask: np.ndarray = None) -> dict[str, np.ndarray]:
        """images [N, 3, H, W] float32, padding_mask [N, H, W] uint8 or None -> outputs keyed by name (float32)."""
        mask = None if padding_mask is None else torch.from_numpy(np.ascontiguousarray(padding_mask, dtype=np.uint8))
        with torch.inference_mode():
            outputs = self.model(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)), mask)
        return {name: outputs[name].float().numpy() for name in self.output_names}
