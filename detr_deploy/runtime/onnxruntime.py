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
        if inputs not in ([contract.INPUT_IMAGES], [contract.INPUT_IMAGES, contract.INPUT_PADDING_MASK]):
            raise DetrDeployError(
                f"{path} takes inputs {inputs}; expected '{contract.INPUT_IMAGES}' "
                f"(and '{contract.INPUT_PADDING_MASK}' for exports made with --padding-mask)"
            )
        self.input_names = tuple(inputs)
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.providers = self.session.get_providers()

    def run(self, images: np.ndarray, padding_mask: np.ndarray = None) -> dict[str, np.ndarray]:
        """images [N, 3, H, W] float32, padding_mask [N, H, W] uint8 (1 = padded) or None -> outputs keyed by name."""
        feeds = {contract.INPUT_IMAGES: np.ascontiguousarray(images, dtype=np.float32)}
        feeds.update(padding_feed(self.input_names, images, padding_mask))
        outputs = self.session.run(None, feeds)
        return dict(zip(self.output_names, outputs))


def padding_feed(input_names, images: np.ndarray, padding_mask: np.ndarray) -> dict[str, np.ndarray]:
    """The padding_mask feed of a model that takes one (all zeros when none is given); refuses a mask for a model
    that cannot honour it."""
    if contract.INPUT_PADDING_MASK not in input_names:
        if padding_mask is not None and padding_mask.any():
            raise DetrDeployError(
                "this export takes no padding_mask, so a padded batch would be wrong: re-export with --padding-mask "
                "or run images one at a time"
            )
        return {}
    if padding_mask is None:
        padding_mask = np.zeros((images.shape[0], *images.shape[2:]), dtype=np.uint8)
    if padding_mask.shape != (images.shape[0], *images.shape[2:]):
        raise DetrDeployError(f"padding_mask {padding_mask.shape} does not match images {images.shape}")
    return {contract.INPUT_PADDING_MASK: np.ascontiguousarray(padding_mask, dtype=np.uint8)}
