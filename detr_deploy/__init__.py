"""detr-deploy: DETR-family detectors from PyTorch to ONNX and TensorRT, with parity checks against PyTorch.

Importing this package needs neither onnxruntime nor TensorRT; those are imported where they are used.
"""

__version__ = "0.1.0"

from detr_deploy.errors import DetrDeployError  # noqa: E402

__all__ = ["DetrDeployError", "__version__"]
