"""OpenVINO (CPU plugin) as a runner, opening our ONNX exports directly.

OpenVINO's ONNX frontend has no conversion rule for the ``detr_deploy::MSDeformAttn`` node and does not fall back
to the model-local function beside it, so a plugin-mode export is read with its local functions inlined, in memory
(the user's file is left as it is: TensorRT still binds that node to our plugin).
"""

import io
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from detr_deploy import contract
from detr_deploy.errors import DetrDeployError
from detr_deploy.export_metadata import check_export_metadata
from detr_deploy.runtime.msda_formulation import OPENVINO_NODE_FORMULATIONS, with_node_formulations
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


# Compiled models are kept here unless the runner is told otherwise: $DETR_DEPLOY_CACHE/openvino, else
# $XDG_CACHE_HOME/detr_deploy/openvino, else ~/.cache/detr_deploy/openvino.
DEFAULT_CACHE = "default"


def default_cache_dir() -> Path:
    root = os.environ.get("DETR_DEPLOY_CACHE")
    if root:
        return Path(root) / "openvino"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "detr_deploy" / "openvino"


def _cache_folder(cache_dir) -> Path:
    """The folder compiled models are kept in (DEFAULT_CACHE: ``default_cache_dir()``), or None when ``cache_dir``
    is None or the folder cannot be written (a read-only home compiles every time rather than fails)."""
    if cache_dir is None:
        return None
    folder = default_cache_dir() if cache_dir == DEFAULT_CACHE else Path(cache_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return folder if os.access(folder, os.W_OK) else None


def _openvino_input(model, path):
    """What OpenVINO reads for ``model`` (the loaded ONNX file at ``path``): the path itself, or, when the file has
    local functions (the MSDeformAttn node), the model with them inlined, in memory: OpenVINO's ONNX frontend has no
    rule for our custom-domain node and does not fall back to its function."""
    import onnx.inliner

    if not model.functions:
        return str(path)
    return io.BytesIO(onnx.inliner.inline_local_functions(model).SerializeToString())


def _cached_input(model, path: Path, folder: Path, openvino_version: str, formulations: dict) -> Path:
    """The file OpenVINO compiles for ``path`` when caching: ``folder``/<sha256 of the file's bytes and the OpenVINO
    version>.onnx, the file as OpenVINO reads it (local functions inlined), written once (atomically).

    Measured (Deformable DETR-R50, 2 threads): opening the export took 3.9 s (inlining 0.7, serializing 0.4,
    reading 1.0, compiling 1.8); from the cache 0.45 s (hashing the file 0.12, OpenVINO importing its compiled
    blob 0.28). OpenVINO keys a compiled file by its path and the compile properties (precision hint, threads), so
    the content hash in the name is what keeps a changed export from being served the old compiled model."""
    import hashlib

    import onnx.inliner

    digest = hashlib.sha256(path.read_bytes())
    digest.update(openvino_version.encode())
    # What the runner changed in memory (the MSDeformAttn bodies, which nodes call which) is part of what is compiled.
    for function in model.functions:
        digest.update(function.SerializeToString())
    digest.update(repr(sorted(formulations.items())).encode())
    cached = folder / f"{digest.hexdigest()[:40]}.onnx"
    if not cached.is_file():
        inlined = onnx.inliner.inline_local_functions(model) if model.functions else model
        partial = cached.with_name(f"{cached.name}.{os.getpid()}.partial")
        partial.write_bytes(inlined.SerializeToString())
        os.replace(partial, cached)
    return cached


def _compute_precision(stored: str, asked: str, path) -> str:
    """What the runner computes in: the file's own precision, or bf16 for an fp32 file when asked (OpenVINO's
    inference precision hint); DetrDeployError for what a hint cannot give (int8 needs a quantized file)."""
    if asked in (None, stored):
        return stored
    if asked == "bf16" and stored == "fp32":
        return "bf16"
    if asked == "int8":
        raise DetrDeployError(
            f"{path} computes in {stored}; int8 needs a quantized file: python cli.py quantize {path} --output "
            f"{Path(path).stem}-int8.onnx --precision int8 --target openvino"
        )
    raise DetrDeployError(
        f"{path} computes in {stored}; OpenVINO can run an fp32 file in bf16 (--precision bf16) but not in {asked}"
    )


def cpu_has_bf16(core=None) -> bool:
    """Whether OpenVINO's CPU plugin computes bf16 on this machine (its OPTIMIZATION_CAPABILITIES list BF16: CPUs
    with AVX512-BF16 or AMX); elsewhere it drops a bf16 precision hint and computes f32."""
    if core is None:
        core = _import_openvino().Core()
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVINORunner(Runner):
    name = "OpenVINO"

    def __init__(
        self,
        path,
        threads: int = None,
        shape_sessions: int = DEFAULT_SHAPE_SESSIONS,
        precision: str = None,
        cache_dir=DEFAULT_CACHE,
    ):
        """path: an ONNX export (either msda mode); threads: the CPU plugin's INFERENCE_NUM_THREADS (None: its
        default, every core); shape_sessions: how many input shapes may get a model compiled for that shape alone
        after SPECIALIZE_AFTER_RUNS runs (``shape_specialization``; 0: always the dynamic one); precision: what the
        float parts compute in, "fp32" or "bf16" (the CPU plugin's inference precision hint; None: the file's own,
        fp32 for an export); cache_dir: where compiled models are kept (``compiled_model_cache``; None: nowhere)."""
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
        stored = self.metadata.get(contract.META_PRECISION, "fp32")
        self.precision = _compute_precision(stored, precision, path)
        self.profiles = {}

        # The CPU plugin computes in bf16 by default on CPUs with bf16 units (AMX, AVX512-BF16); an fp32 export is
        # compared with eager PyTorch at fp32 tolerances, so ask for fp32 unless bf16 is asked for (quantized
        # files keep their own types for what they quantize).
        config = {"INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        core = openvino.Core()
        if self.precision == "bf16" and stored != "bf16" and not cpu_has_bf16(core):
            # Measured (a CPU without AVX512-BF16/AMX): the hint is taken, the compiled model reports f32, and the
            # outputs equal fp32's exactly: a bf16 verdict or timing there would be fp32's under bf16's name.
            raise DetrDeployError(
                "this CPU has no bf16 units (OpenVINO's CPU plugin lists "
                f"{', '.join(core.get_property('CPU', 'OPTIMIZATION_CAPABILITIES'))}), so OpenVINO would run bf16 "
                "as fp32; use a CPU with AVX512-BF16 or AMX, or leave out --precision bf16"
            )
        # Decoder nodes get the Gather body, encoder nodes keep GridSample (msda_formulation, measured); fp32 only: the
        # Gather body's index arithmetic in bf16 would move the sampled neighbours.
        self.msda_formulations = (
            with_node_formulations(model, OPENVINO_NODE_FORMULATIONS) if self.precision == "fp32" else {}
        )
        self._core, self._config, self._path, self._model = core, config, path, None
        self.cache_dir = _cache_folder(cache_dir)
        if self.cache_dir is None:
            self._model = self._read(_openvino_input(model, path))
            self.compiled = self._compile(self._model)
        else:
            core.set_property({"CACHE_DIR": str(self.cache_dir)})
            self.cached_file = _cached_input(model, path, self.cache_dir, openvino.__version__, self.msda_formulations)
            self.compiled = self._compile(str(self.cached_file))
        del model
        self.request = self.compiled.create_infer_request()
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        # Measured (800x1088, 2 threads): Deformable DETR-R50 runs 1.34x faster compiled for its input size.
        self._specialization = ShapeSpecialization(self._request_for_shape, shape_sessions)

    def _read(self, source):
        """The ov.Model of ``source`` (a path or an in-memory file); DetrDeployError if OpenVINO cannot read it."""
        try:
            return self._core.read_model(source)
        except Exception as error:  # OpenVINO raises RuntimeError/OpConversionFailure for unsupported graphs
            raise DetrDeployError(f"OpenVINO cannot read {self._path}: {_one_line(error)}") from None

    def _compile(self, model):
        """Compile an ov.Model, or the file at a path (read and compiled by OpenVINO, or imported from its cache)."""
        try:
            return self._core.compile_model(model, "CPU", self._config)
        except Exception as error:
            doing = "read and compile" if isinstance(model, str) else "compile"
            raise DetrDeployError(f"OpenVINO cannot {doing} {self._path} for the CPU: {_one_line(error)}") from None

    def _request_for_shape(self, images_shape: tuple[int, ...]):
        """An infer request of the model reshaped to ``images_shape`` [N, 3, H, W] (and the padding mask to match)."""
        batch, _, height, width = images_shape
        shapes = {contract.INPUT_IMAGES: list(images_shape)}
        if contract.INPUT_PADDING_MASK in self.input_names:
            shapes[contract.INPUT_PADDING_MASK] = [batch, height, width]
        if self._model is None:  # opened from the cache: read the model now, once
            self._model = self._read(str(self.cached_file))
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
