"""ONNX Runtime as a runner (CPU by default; the CUDA provider when asked for and available)."""

from pathlib import Path

import numpy as np

from detr_deploy import contract
from detr_deploy.errors import DetrDeployError
from detr_deploy.model_source import check_export_metadata
from detr_deploy.runtime.runner import Runner


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise DetrDeployError("onnxruntime is not installed; run: pip install onnxruntime") from None
    return onnxruntime


class OnnxRuntimeRunner(Runner):
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
            # The whole reason on one line: the IR-version message, say, names the supported version at its end.
            reason = " ".join(str(error).split()) or type(error).__name__
            raise DetrDeployError(f"ONNX Runtime cannot load {path}: {reason}") from None
        inputs = [i.name for i in self.session.get_inputs()]
        if inputs not in ([contract.INPUT_IMAGES], [contract.INPUT_IMAGES, contract.INPUT_PADDING_MASK]):
            raise DetrDeployError(
                f"{path} takes inputs {inputs}; expected '{contract.INPUT_IMAGES}' "
                f"(and '{contract.INPUT_PADDING_MASK}' for exports made with --padding-mask)"
            )
        check_signature(path, self.session.get_inputs(), self.session.get_outputs())
        self.input_names = tuple(inputs)
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        check_export_metadata(self.metadata, path)
        # fp16/bf16/int8 files (quantize) say so; an export computes in fp32.
        self.precision = self.metadata.get(contract.META_PRECISION, "fp32")
        self.providers = self.session.get_providers()
        self.profiles = {}

    def run(self, images: np.ndarray, padding_mask: np.ndarray = None) -> dict[str, np.ndarray]:
        """images [N, 3, H, W] float32, padding_mask [N, H, W] uint8 (1 = padded) or None -> outputs keyed by name."""
        self.check_inputs(images.shape)
        feeds = {contract.INPUT_IMAGES: np.ascontiguousarray(images, dtype=np.float32)}
        feeds.update(self.padding_feed(images, padding_mask))
        outputs = self.session.run(None, feeds)
        return dict(zip(self.output_names, outputs))


# Our contract's I/O: ONNX Runtime's type string and the rank of each; a fixed size where the contract fixes one.
_SIGNATURE = {
    contract.INPUT_IMAGES: ("tensor(float)", 4, {1: 3}),
    contract.INPUT_PADDING_MASK: ("tensor(uint8)", 3, {}),
    contract.OUTPUT_LOGITS: ("tensor(float)", 3, {}),
    contract.OUTPUT_BOXES: ("tensor(float)", 3, {2: 4}),
    contract.OUTPUT_MASKS: ("tensor(float)", 4, {}),
}


def check_signature(path, inputs, outputs) -> None:
    """Refuse a file that has our I/O names but other types or ranks (it would fail, or mislead, at run time)."""
    if contract.OUTPUT_LOGITS not in {o.name for o in outputs} or contract.OUTPUT_BOXES not in {
        o.name for o in outputs
    }:
        found = ", ".join(o.name for o in outputs)
        raise DetrDeployError(
            f"{path} returns {found}; expected {contract.OUTPUT_LOGITS} and {contract.OUTPUT_BOXES}: is it an export?"
        )
    for value in list(inputs) + list(outputs):
        if value.name not in _SIGNATURE:
            continue
        dtype, rank, fixed = _SIGNATURE[value.name]
        shape = list(value.shape)
        wrong = [axis for axis, size in fixed.items() if len(shape) == rank and isinstance(shape[axis], int)]
        wrong = [axis for axis in wrong if shape[axis] != fixed[axis]]
        if value.type != dtype or len(shape) != rank or wrong:
            expected = f"{dtype.removeprefix('tensor(').rstrip(')')} of rank {rank}"
            if fixed:
                expected += " with " + ", ".join(f"dimension {axis} = {size}" for axis, size in fixed.items())
            raise DetrDeployError(
                f"{path}: '{value.name}' is {value.type.removeprefix('tensor(').rstrip(')')} {shape}, but the "
                f"contract says {expected}; re-export the model with 'cli.py export'"
            )
