"""ONNX Runtime as a runner (CPU by default; the CUDA provider when asked for and available).

Shape-specialized sessions (``shape_specialization``): with symbolic height and width, ONNX Runtime's CPU memory
planner cannot prove that a tensor has the size of the buffer it could reuse, so its NCHWc convolutions that add a
residual (every ResNet bottleneck) copy the residual into a fresh output instead of accumulating in place. Measured
on DETR-R50 at 800x1088, 2 threads: our dynamic export ran at 0.90x the speed of a static export of the same weights;
the same file with its input dimensions fixed at load (``SessionOptions.add_free_dimension_override_by_name``) ran at
1.02x, and ONNX Runtime's optimized graph of it is the static export's, node for node
(``benchmarks/ort_profile.py``).
"""

from pathlib import Path

import numpy as np

from detr_deploy import contract
from detr_deploy.errors import DetrDeployError
from detr_deploy.export_metadata import check_export_metadata
from detr_deploy.runtime.runner import Runner
from detr_deploy.runtime.shape_specialization import (
    DEFAULT_SHAPE_SESSIONS,
    ShapeSpecialization,
)


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise DetrDeployError("onnxruntime is not installed; run: pip install onnxruntime") from None
    return onnxruntime


class OnnxRuntimeRunner(Runner):
    name = "ONNX Runtime"

    def __init__(
        self,
        path,
        providers: list[str] = None,
        threads: int = None,
        shape_sessions: int = DEFAULT_SHAPE_SESSIONS,
        precision: str = None,
    ):
        """path: an ONNX export; threads: intra-op threads (None: ONNX Runtime's default, every core);
        shape_sessions: how many input shapes (batch, height, width) may get a session specialized to them after
        SPECIALIZE_AFTER_RUNS runs (0: always run the dynamic session); precision: what the caller expects it to
        compute in (None: the file's own); ONNX Runtime computes what the file holds, so another is refused."""
        onnxruntime = _import_onnxruntime()
        path = Path(path)
        if not path.is_file():
            raise DetrDeployError(f"ONNX file {path} does not exist")
        self._onnxruntime, self._path, self._threads = onnxruntime, path, threads
        self._optimization = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._providers = providers or ["CPUExecutionProvider"]
        self._source, self.msda_formulation, as_written = _source_for(path, self._providers)
        if as_written:
            # A TensorRT-style int8 file (ModelOpt's explicit Q/DQ, most of the graph in fp16) runs as written
            # (quantize, round, dequantize in float), as TensorRT computes it: ONNX Runtime's extended optimizations
            # fuse Q/DQ into int8 CPU kernels that saturate on CPUs without VNNI (measured: Deformable DETR logits off
            # by 5.8), and its fp16 QuantizeLinear truncates. int8 files quantized for the CPU run fused.
            self._optimization = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
        self.session = _session(onnxruntime, self._source, self._options(), self._providers, path)
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
        if precision not in (None, self.precision):
            raise DetrDeployError(
                f"{path} computes in {self.precision}, and ONNX Runtime runs it as it is: for {precision}, run it in "
                "OpenVINO (bf16: --openvino, or runtime 'openvino') or give a file quantized to it (python cli.py "
                f"quantize {path} --precision {precision} --target onnxruntime)"
            )
        self.providers = self.session.get_providers()
        self.profiles = {}
        # The images input's symbolic dimensions by axis ({0: "batch", 2: "height", 3: "width"} for our exports).
        images_shape = self.session.get_inputs()[0].shape
        self._symbolic_axes = {axis: dim for axis, dim in enumerate(images_shape) if isinstance(dim, str) and dim}
        limit = shape_sessions if self._symbolic_axes else 0  # a static file has nothing to specialize
        self._specialization = ShapeSpecialization(self._open_for_shape, limit)

    def _options(self, fixed: dict[str, int] = None):
        options = self._onnxruntime.SessionOptions()
        options.graph_optimization_level = self._optimization
        options.log_severity_level = 3
        if self._threads:
            options.intra_op_num_threads = self._threads
        for name, size in (fixed or {}).items():
            options.add_free_dimension_override_by_name(name, size)
        return options

    @property
    def specialized(self) -> dict[tuple[int, ...], object]:
        """images shape -> the session specialized to it."""
        return self._specialization.opened

    def _open_for_shape(self, images_shape: tuple[int, ...]):
        fixed = {name: images_shape[axis] for axis, name in self._symbolic_axes.items() if axis < len(images_shape)}
        return _session(self._onnxruntime, self._source, self._options(fixed), self._providers, self._path)

    def session_for(self, images_shape):
        """The session that runs ``images_shape`` [N, 3, H, W]: its specialized one once the shape has run
        SPECIALIZE_AFTER_RUNS times (while fewer than ``shape_sessions`` shapes have one), else the dynamic one."""
        return self._specialization.get(images_shape, self.session)

    def run(self, images: np.ndarray, padding_mask: np.ndarray = None) -> dict[str, np.ndarray]:
        """images [N, 3, H, W] float32, padding_mask [N, H, W] uint8 (1 = padded) or None -> outputs keyed by name."""
        self.check_inputs(images.shape)
        feeds = {contract.INPUT_IMAGES: np.ascontiguousarray(images, dtype=np.float32)}
        feeds.update(self.padding_feed(images, padding_mask))
        outputs = self.session_for(images.shape).run(None, feeds)
        return dict(zip(self.output_names, outputs))

    def close(self) -> None:
        self.session = None
        self._specialization.opened.clear()


def _source_for(path: Path, providers: list[str]):
    """(what ONNX Runtime opens for ``path``, the MSDeformAttn formulation it runs (None: no such node or the
    file's own body), whether the file must run as written): the path itself, or the file with its MSDeformAttn
    body swapped for the one measured fastest on the CPU (fp32 exports, CPU provider only; ``msda_formulation``),
    or a TensorRT-style int8 file made to quantize as written (``qdq_as_written``). A file onnx cannot read is
    handed to ONNX Runtime as it is, whose error names the reason."""
    import onnx

    from detr_deploy.runtime.msda_formulation import FORMULATION_BY_RUNTIME, GRID_SAMPLE, with_formulation

    try:
        model = onnx.load(str(path))
    except Exception:  # not an ONNX file: ONNX Runtime says why
        return str(path), None, False
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    precision = metadata.get(contract.META_PRECISION, "fp32")
    if precision == "int8" and metadata.get(contract.META_QUANTIZED_FOR, "tensorrt") == "tensorrt":
        return qdq_as_written(model).SerializeToString(), None, True
    formulation = FORMULATION_BY_RUNTIME["onnxruntime"]
    # int8 files made for the CPU keep MSDeformAttn in float32.
    if precision not in ("fp32", "int8") or list(providers) != ["CPUExecutionProvider"] or formulation == GRID_SAMPLE:
        return str(path), None, False
    if not with_formulation(model, formulation):
        return str(path), None, False
    return model.SerializeToString(), formulation, False


def _session(onnxruntime, source, options, providers: list[str], path: Path):
    """An InferenceSession of ``source`` (a path or serialized model); DetrDeployError naming ``path`` if ONNX Runtime
    cannot load it."""
    try:
        return onnxruntime.InferenceSession(source, options, providers=providers)
    except Exception as error:  # onnxruntime raises its own exception types for unreadable models
        # The whole reason on one line: the IR-version message, say, names the supported version at its end.
        reason = " ".join(str(error).split()) or type(error).__name__
        raise DetrDeployError(f"ONNX Runtime cannot load {path}: {reason}") from None


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


def qdq_as_written(model):
    """A copy whose fp16 QuantizeLinear nodes quantize an fp32 copy of their input with an fp32 scale: the same int8
    values when rounding is right. ONNX Runtime's CPU kernel (1.24 here, fixed after 1.29) truncates fp16 inputs
    toward zero instead of rounding to nearest even (microsoft/onnxruntime#18576), half a step of bias per tensor
    that compounds through the network; TensorRT rounds as ONNX says."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    initializers = {init.name: init for init in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        scale = initializers.get(node.input[1]) if node.op_type == "QuantizeLinear" else None
        if scale is not None and scale.data_type == onnx.TensorProto.FLOAT16:
            name = f"{node.input[1]}__fp32"
            if name not in initializers:
                array = onnx.numpy_helper.to_array(scale).astype(np.float32)
                initializers[name] = onnx.numpy_helper.from_array(array, name)
                model.graph.initializer.append(initializers[name])
            cast = onnx.helper.make_node(
                "Cast", [node.input[0]], [f"{node.input[0]}__fp32_for_{node.name}"], to=onnx.TensorProto.FLOAT
            )
            nodes.append(cast)
            node.input[0], node.input[1] = cast.output[0], name
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model
