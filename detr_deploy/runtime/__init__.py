"""Runners: one interface (``detr_deploy.runtime.runner.Runner``) for eager PyTorch and the deployed backends, and
``open_runner``, which opens an ONNX file (ONNX Runtime, OpenVINO) or an engine (TensorRT) as one.

Backend packages (onnxruntime, openvino, TensorRT) are imported inside the runners that need them.
"""

from detr_deploy.runtime.open import open_runner
from detr_deploy.runtime.runner import Runner

__all__ = ["Runner", "open_runner"]
