"""Runners: one interface (``detr_deploy.runtime.runner.Runner``) for eager PyTorch and the deployed backends.

Backend packages (onnxruntime, TensorRT) are imported inside the runners that need them.
"""

from detr_deploy.runtime.runner import Runner

__all__ = ["Runner"]
