"""Backends specialized to an input shape the runner keeps seeing (issue 15).

ONNX Runtime and OpenVINO plan memory and choose kernels once, when a model is loaded; with symbolic batch, height
and width they plan for any size and lose what known sizes give (measured at 800x1088, 2 threads: ONNX Runtime's
residual convolutions cannot accumulate in place, DETR-R50 0.90x the speed of a static export; OpenVINO runs
Deformable DETR-R50 1.34x faster reshaped to the size). A runner keeps its dynamic model for every shape and, for a
shape that has run ``after`` times, opens one specialized to it: the file stays dynamic, and a service that runs one
size gets the static speed. At most ``limit`` shapes get one, for good (no eviction: alternating shapes never churn),
since each holds its own copy of the weights and memory.
"""

import threading
from collections import Counter
from collections.abc import Callable

SPECIALIZE_AFTER_RUNS = 3
DEFAULT_SHAPE_SESSIONS = 1


class ShapeSpecialization:
    def __init__(self, open_for_shape: Callable[[tuple[int, ...]], object], limit: int, after: int = None):
        """open_for_shape(images shape [N, 3, H, W]) -> the backend object specialized to it; limit: how many
        shapes may get one (0: none)."""
        self._open = open_for_shape
        self.limit = max(0, int(limit))
        self.after = SPECIALIZE_AFTER_RUNS if after is None else after
        self.opened: dict[tuple[int, ...], object] = {}
        self._runs: Counter = Counter()
        self._lock = threading.Lock()  # Triton's Python backend may run one runner from several threads

    def get(self, images_shape, dynamic):
        """The specialized backend of ``images_shape`` (opened now if this is its ``after``-th run and a slot is
        free), else ``dynamic``."""
        key = tuple(int(size) for size in images_shape)
        with self._lock:
            opened = self.opened.get(key)
            if opened is not None or len(self.opened) >= self.limit:
                return dynamic if opened is None else opened
            self._runs[key] += 1
            if self._runs[key] < self.after:
                return dynamic
            self.opened[key] = self._open(key)
            return self.opened[key]
