"""ONNX Runtime as a runner (CPU by default; the CUDA provider when asked for and available)."""

from pathlib import Path

import numpy as np

from detr_deploy import contract
from detr_deploy.errors import DetrDeployError


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise DetrDeployError("onnxruntime is not installed; run: pip install onnxruntime") from None
    return onnxruntime


class OnnxRuntimeRunner:
    name = "ONNX Runtime"

    def __init__(self, path, providers: list[str] = None, threads: int = None):
        onnxruntime = _import_onnxruntime()
        path = Path(path)
        if not path.is_file():
            raise DetrDeployError(f"ONNX file {path} does not exist")
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(
                str(path), options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own exception types for unreadable models
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise DetrDeployError(f"ONNX Runtime cannot load {path}: {first_line[:300]}") from None
        inputs = [i.name for i in self.session.get_inputs()]
        if inputs != [contract.INPUT_IMAGES]:
            raise DetrDeployError(f"{path} takes inputs {inputs}; expected one input named '{contract.INPUT_IMAGES}'")
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.providers = self.session.get_providers()

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """images [N, 3, H, W] float32 -> outputs keyed by name."""
        outputs = self.session.run(None, {contract.INPUT_IMAGES: np.ascontiguousarray(images, dtype=np.float32)})
        return dict(zip(self.output_names, outputs))
