"""Eager PyTorch as a runner: the reference every backend is compared against."""

import numpy as np
import torch

from detr_deploy import contract
from detr_deploy.runtime.runner import Runner


class EagerRunner(Runner):
    name = "eager PyTorch"

    def __init__(self, model: torch.nn.Module, output_names: tuple[str, ...], metadata: dict[str, str] = None):
        """``metadata``: what an export of this model would record (``model_source.model_metadata``)."""
        self.model = model.eval()
        # The zoo modules take the padding mask as the official NestedTensor does, except those whose official code
        # has none (RT-DETR).
        takes_mask = getattr(getattr(model, "config", None), "supports_padding_mask", True)
        self.input_names = (contract.INPUT_IMAGES,) + ((contract.INPUT_PADDING_MASK,) if takes_mask else ())
        self.output_names = tuple(output_names)
        self.metadata = dict(metadata or {})
        self.profiles = {}

    def run(self, images: np.ndarray, padding_mask: np.ndarray = None) -> dict[str, np.ndarray]:
        """images [N, 3, H, W] float32, padding_mask [N, H, W] uint8 or None -> outputs keyed by name (float32)."""
        self.check_inputs(images.shape)
        if not self.takes_padding_mask:
            self.padding_feed(images, padding_mask)  # refuses a padded batch
            padding_mask = None
        mask = None if padding_mask is None else torch.from_numpy(np.ascontiguousarray(padding_mask, dtype=np.uint8))
        with torch.inference_mode():
            outputs = self.model(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)), mask)
        return {name: outputs[name].float().numpy() for name in self.output_names}
