"""OpenVINO (CPU plugin) as a runner, opening our ONNX exports directly.

OpenVINO's ONNX frontend has no conversion rule for the ``detr_deploy::MSDeformAttn`` node and does not fall back
to the model-local function beside it, so a plugin-mode export is read with its local functions inlined, in memory
(the user's file is left as it is: TensorRT still binds that node to our plugin).
"""

import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from detr_deploy import contract
from detr_deploy.errors import DetrDeployError
from detr_deploy.export_metadata import check_export_metadata
from detr_deploy.runtime.onnxruntime import check_signature
from detr_deploy.runtime.runner import Runner
from detr_deploy.runtime.shape_specialization import DEFAULT_SHAPE_SESSIONS, ShapeSpecialization


def _import_openvino():
    try:
        import openvino
    except ImportError:
        raise DetrDeployError("OpenVINO is not installed; run: pip install openvino") from None
    return openvino


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _value_infos(values, skip=()) -> list[SimpleNamespace]:
    """ONNX graph inputs/outputs as ONNX Runtime describes them (name, "tensor(float)", [dims or names]), for
    check_signature."""
    from onnx import TensorProto

    described = []
    for value in values:
        if value.name in skip:
            continue
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]
        dtype = f"tensor({TensorProto.DataType.Name(tensor.elem_type).lower()})"
        described.append(SimpleNamespace(name=value.name, type=dtype, shape=dims))
    return described


class OpenVINORunner(Runner):
    name = "OpenVINO"

    def __init__(self, path, threads: int = None, shape_sessions: int = DEFAULT_SHAPE_SESSIONS):
        """path: an ONNX export (either msda mode); threads: the CPU plugin's INFERENCE_NUM_THREADS (None: its
        default, every core); shape_sessions: how many input shapes may get a model compiled for that shape alone
        after SPECIALIZE_AFTER_RUNS runs (``shape_specialization``; 0: always the dynamic one)."""
        openvino = _import_openvino()
        import onnx
        import onnx.inliner

        path = Path(path)
        if not path.is_file():
            raise DetrDeployError(f"ONNX file {path} does not exist")
        try:
            model = onnx.load(path)
        except Exception as error:  # protobuf's DecodeError and friends: not an ONNX file
            raise DetrDeployError(f"{path} is not a readable ONNX file: {_one_line(error)}") from None
        initializers = {tensor.name for tensor in model.graph.initializer}
        inputs = _value_infos(model.graph.input, skip=initializers)
        outputs = _value_infos(model.graph.output)
        names = [value.name for value in inputs]
        if names not in ([contract.INPUT_IMAGES], [contract.INPUT_IMAGES, contract.INPUT_PADDING_MASK]):
            raise DetrDeployError(
                f"{path} takes inputs {names}; expected '{contract.INPUT_IMAGES}' "
                f"(and '{contract.INPUT_PADDING_MASK}' for exports made with --padding-mask)"
            )
        check_signature(path, inputs, outputs)
        self.input_names = tuple(names)
        self.output_names = tuple(value.name for value in outputs)
        self.metadata = {prop.key: prop.value for prop in model.metadata_props}
        check_export_metadata(self.metadata, path)
        # fp16/bf16/int8 files (quantize) say so; an export computes in fp32 (and OpenVINO is told to, below).
        self.precision = self.metadata.get(contract.META_PRECISION, "fp32")
        self.profiles = {}

        core = openvino.Core()
        try:
            if model.functions:
                # Custom-domain nodes (MSDeformAttn) become their function bodies: plain ONNX ops OpenVINO reads.
                inlined = onnx.inliner.inline_local_functions(model)
                ov_model = core.read_model(io.BytesIO(inlined.SerializeToString()))
            else:
                ov_model = core.read_model(str(path))
        except Exception as error:  # OpenVINO raises RuntimeError/OpConversionFailure for unsupported graphs
            raise DetrDeployError(f"OpenVINO cannot read {path}: {_one_line(error)}") from None
        del model
        # The CPU plugin computes in bf16 by default on CPUs with bf16 units (AMX, AVX512-BF16); an fp32 export is
        # compared with eager PyTorch at fp32 tolerances, so ask for fp32 (quantized files keep their own types).
        config = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self._core, self._model, self._config, self._path = core, ov_model, config, path
        self.compiled = self._compile(ov_model)
        self.request = self.compiled.create_infer_request()
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        # Measured (800x1088, 2 threads): Deformable DETR-R50 runs 1.34x faster compiled for its input size.
        self._specialization = ShapeSpecialization(self._request_for_shape, shape_sessions)

    def _compile(self, ov_model):
        try:
            return self._core.compile_model(ov_model, "CPU", self._config)
        except Exception as error:
            raise DetrDeployError(f"OpenVINO cannot compile {self._path} for the CPU: {_one_line(error)}") from None

    def _request_for_shape(self, images_shape: tuple[int, ...]):
        """An infer request of the model reshaped to ``images_shape`` [N, 3, H, W] (and the padding mask to match)."""
        batch, _, height, width = images_shape
        shapes = {contract.INPUT_IMAGES: list(images_shape)}
        if contract.INPUT_PADDING_MASK in self.input_names:
            shapes[contract.INPUT_PADDING_MASK] = [batch, height, width]
        model = self._model.clone()
        model.reshape(shapes)
        return self._compile(model).create_infer_request()

    @property
    def specialized(self) -> dict[tuple[int, ...], object]:
        """images shape -> the infer request of the model compiled for it."""
        return self._specialization.opened

    def run(self, images: np.ndarray, padding_mask: np.ndarray = None) -> dict[str, np.ndarray]:
        """images [N, 3, H, W] float32, padding_mask [N, H, W] uint8 (1 = padded) or None -> outputs keyed by name
        (float32 host arrays)."""
        self.check_inputs(images.shape)
        feeds = {contract.INPUT_IMAGES: np.ascontiguousarray(images, dtype=np.float32)}
        feeds.update(self.padding_feed(images, padding_mask))
        request = self._specialization.get(images.shape, self.request)
        request.infer(feeds)
        # The request reuses its output buffers on the next run: copy out.
        outputs = {
            name: np.array(request.get_tensor(name).data, dtype=np.float32, copy=True) for name in self.output_names
        }
        # A graph OpenVINO misreads can run and return empty outputs (issue 15: an MSDeformAttn level size folded
        # to 0 gave pred_logits [0, Q, K]); refuse those rather than hand them on.
        wrong = {name: value.shape for name, value in outputs.items() if value.shape[:1] != images.shape[:1]}
        if wrong:
            found = ", ".join(f"{name} {list(shape)}" for name, shape in wrong.items())
            raise DetrDeployError(
                f"OpenVINO returned {found} for a batch of {images.shape[0]}: it misread this export; run it with "
                "ONNX Runtime, or re-export it with a detr_deploy version that fixes this graph for OpenVINO"
            )
        return outputs

    def close(self) -> None:
        self.request = None
        self.compiled = None
        self._specialization.opened.clear()
