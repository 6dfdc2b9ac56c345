"""The one interface every backend implements (eager PyTorch, ONNX Runtime, TensorRT, and those to come), as
Polygraphy gives each backend one base runner: the parity loop, the benchmark and the Detector use nothing else.

A runner says what it takes (``input_names``: the images, and the padding mask for exports made with
``--padding-mask``), what it returns (``output_names``), what the export recorded (``metadata``), which shapes it
accepts (``profiles``: min/opt/max per input, empty for any), checks inputs against them before running, and runs
on host arrays (``run``) or on inputs already where it computes (``device_call``, for timing without copies).
"""

import abc
from collections.abc import Callable

import numpy as np

from detr_deploy import contract
from detr_deploy.errors import DetrDeployError


class Runner(abc.ABC):
    name: str = "runner"
    input_names: tuple[str, ...] = (contract.INPUT_IMAGES,)
    output_names: tuple[str, ...] = ()
    # What the backend computes in (engines may be fp16/bf16): chooses verify-parity's default tolerances.
    precision: str = "fp32"
    metadata: dict[str, str] = {}
    # Input name -> ShapeProfile (min/opt/max) the backend accepts; empty: any shape the export takes.
    profiles: dict = {}

    @property
    def takes_padding_mask(self) -> bool:
        return contract.INPUT_PADDING_MASK in self.input_names

    @property
    def max_batch(self) -> int:
        """The largest batch the backend accepts, or None for any."""
        profile = self.profiles.get(contract.INPUT_IMAGES)
        return profile.max[0] if profile is not None else None

    def check_shape(self, name: str, shape) -> None:
        """Refuse an input shape outside the backend's profile (DetrDeployError saying the profile)."""
        profile = self.profiles.get(name)
        if profile is not None and not profile.contains(list(shape)):
            raise DetrDeployError(
                f"{name} of shape {'x'.join(map(str, shape))} is outside the engine's profile ({profile.describe()}); "
                "rebuild the engine with --min-shapes/--max-shapes covering it"
            )

    @property
    def size_divisor(self) -> int:
        """Image sides must be multiples of this (the export's contract; 1 for any side)."""
        return int(self.metadata.get(contract.META_SIZE_DIVISOR, 1))

    def check_inputs(self, images_shape, padding_mask_shape=None) -> None:
        """Check one run's inputs before running (a whole parity run is refused up front, not after some cases)."""
        divisor = self.size_divisor
        if len(images_shape) == 4 and divisor > 1 and (images_shape[2] % divisor or images_shape[3] % divisor):
            model = self.metadata.get(contract.META_MODEL, "this model")
            raise DetrDeployError(
                f"{model} takes heights and widths that are multiples of {divisor}, not "
                f"{images_shape[2]}x{images_shape[3]}; resize or pad the images to multiples of {divisor}"
            )
        if len(images_shape) == 4:
            self._check_selection(images_shape[2], images_shape[3])
        self.check_shape(contract.INPUT_IMAGES, images_shape)
        if padding_mask_shape is not None and self.takes_padding_mask:
            self.check_shape(contract.INPUT_PADDING_MASK, padding_mask_shape)

    def _check_selection(self, height: int, width: int) -> None:
        """Models that select their queries from encoder tokens (a top-k) need at least as many tokens as queries.
        The export records the strides of the ranked levels and the query count (exports older than those keys
        open unchecked)."""
        strides_text = self.metadata.get(contract.META_SELECTION_STRIDES)
        queries_text = self.metadata.get(contract.META_SELECTED_QUERIES)
        if not strides_text or not queries_text:
            return
        strides, queries = [int(stride) for stride in strides_text.split(",")], int(queries_text)
        tokens = contract.tokens_at_strides(strides, height, width)
        if tokens >= queries:
            return
        divisor = self.size_divisor
        side = divisor
        while contract.tokens_at_strides(strides, side, side) < queries:
            side += divisor
        raise DetrDeployError(
            f"{self.metadata.get(contract.META_MODEL, 'this model')} selects {queries} queries from its "
            f"encoder's tokens, and a {height}x{width} input has only {tokens}; give larger images (at least about "
            f"{side}x{side})"
        )

    def padding_feed(self, images: np.ndarray, padding_mask: np.ndarray) -> dict[str, np.ndarray]:
        """The padding_mask feed of a backend that takes one (all zeros when none is given); refuses a padded batch
        for one that cannot honour it."""
        if not self.takes_padding_mask:
            if padding_mask is not None and padding_mask.any():
                raise DetrDeployError(
                    "this export takes no padding_mask, so a padded batch would be wrong: re-export with "
                    "--padding-mask (and rebuild engines), or run images one at a time"
                )
            return {}
        expected = (images.shape[0], *images.shape[2:])
        if padding_mask is None:
            padding_mask = np.zeros(expected, dtype=np.uint8)
        if tuple(padding_mask.shape) != expected:
            raise DetrDeployError(f"padding_mask {tuple(padding_mask.shape)} does not match images {images.shape}")
        return {contract.INPUT_PADDING_MASK: np.ascontiguousarray(padding_mask, dtype=np.uint8)}

    @abc.abstractmethod
    def run(self, images: np.ndarray, padding_mask: np.ndarray = None) -> dict[str, np.ndarray]:
        """images [N, 3, H, W] float32, ImageNet-normalized; padding_mask [N, H, W] uint8 (1 = padded) or None
        -> outputs keyed by name (float32 host arrays)."""

    def device_call(self, images: np.ndarray) -> Callable[[], object]:
        """A call that runs ``images`` placed where the backend computes (GPU memory for TensorRT), so timing
        measures the backend and not host copies. Host backends run the arrays as they are."""
        return lambda: self.run(images)

    def close(self) -> None:  # noqa: B027  (optional: most backends free everything when garbage collected)
        """Release the backend's resources (sessions, engines); the runner is unusable afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
