"""Writing a Triton Inference Server model repository from an engine (and its description) and/or an ONNX export.

Layout, for ``name`` "detr" and every flavour written::

    repository/
      README.txt, server_flags.txt       how to start the server (exact flags: plugin library, models to load)
      plugins/libdetr_deploy_plugins.so  the engine's TensorRT plugin library, when it has one
      plugins/libdetr_deploy_plugins_autoreg.so
                                         with the tensorrt flavour: registers that library's creators when the
                                         tensorrt backend dlopens it (server_flags.txt names it in plugins=)
      detr_tensorrt_network/             tensorrt_plan: config.pbtxt, 1/model.plan
      detr_onnxruntime_network/          onnxruntime_onnx: config.pbtxt, 1/model.onnx
      detr_python_network/               python backend running model.onnx (ONNX Runtime) or model.plan in-process
      detr_tensorrt/, detr_onnxruntime/, detr_python/
                                         the detector clients query: python backend, config.pbtxt and 1/model.py,
                                         metadata.json, network.json; it calls its flavour's network by BLS

A flavour is one network model plus the detector in front of it; a server loads the flavours its backends can run
(``server_flags.txt``: ``--model-control-mode=explicit --load-model=...``).

Why one Python model calling the network by BLS and not an ensemble (preprocess -> network -> postprocess): the
detector must compute exactly what ``Detector`` computes, and the only way to be exact by construction is to run
``Detector`` itself, with a runner that forwards the network batch. An ensemble's network step would receive one
preprocessed tensor per request, and the dynamic batcher only batches tensors of one shape: keep-aspect models
(DETR, Deformable DETR, DINO: shorter side 800) give most images their own shape, so they would run one by one, or
the preprocessing would have to pad every image to one canvas, which changes the result (the padded batch is not the
image alone; see README "Padded batches") and multiplies the work. With BLS, the detector's own dynamic batcher
collects requests, ``Detector`` groups them as it always does (one size per batch, or padded batches with a mask when
the export takes one and ``pad_batches`` is set), and the network model receives those batches, so a fixed-size model
(RT-DETR, 640x640) runs full batches. The ensemble would also have to carry the original image size and class names
between steps, which ``Detector`` already does.
"""

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from detr_deploy import contract
from detr_deploy.errors import DetrDeployError
from detr_deploy.triton import python_models

FLAVOURS = ("tensorrt", "onnxruntime", "python")
NETWORK_SUFFIX = "_network"
PLUGINS_FOLDER = "plugins"

# numpy dtype names (the engine description's, ONNX's) -> Triton's data types.
TRITON_TYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "bfloat16": "TYPE_BF16",
    "uint8": "TYPE_UINT8",
    "int8": "TYPE_INT8",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "bool": "TYPE_BOOL",
}
ONNX_TYPES = {1: "float32", 10: "float16", 16: "bfloat16", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool"}

MODEL_PY = '''"""The {role} of a detr-deploy Triton repository: the code is detr_deploy.triton.python_models.{cls}."""

from detr_deploy.triton.python_models import {cls} as TritonPythonModel  # noqa: F401
'''


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy name
    dims: list[int]  # without the batch dimension; -1 for dynamic


@dataclass(frozen=True)
class NetworkSpec:
    """What a network model takes and returns, and its largest batch."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_batch: int
    profile: dict = field(default_factory=dict)  # input name -> {"min", "opt", "max"} (engines)
    precision: str = "fp32"


@dataclass
class TritonOptions:
    name: str = "detr"
    max_batch: int = 8  # ONNX flavours; an engine's comes from its profile
    instances: int = 1  # per GPU (KIND_GPU) or on the CPU (KIND_CPU)
    detector_instances: int = 1
    queue_delay_us: int = 2000
    score_threshold: float = 0.5
    pad_batches: bool = False  # padded batches of differently sized images (exports with --padding-mask)
    cpu_threads: int = 0  # ONNX Runtime intra-op threads in the python network (0: its default)


@dataclass(frozen=True)
class WrittenRepository:
    path: Path
    models: dict[str, list[str]]  # flavour -> models to load (detector first)
    plugin_library: Path = None
    # The library the tensorrt backend loads (plugins=): it registers plugin_library's creators while loading.
    registering_library: Path = None
    notes: list[str] = field(default_factory=list)


def _strip_batch(shape: list, name: str) -> list[int]:
    dims = [d if isinstance(d, int) and d > 0 else -1 for d in shape[1:]]
    if not shape:
        raise DetrDeployError(f"{name} has no batch dimension; re-export with 'cli.py export'")
    return dims


def spec_from_sidecar(sidecar) -> NetworkSpec:
    """From an engine description: dims without the batch, max_batch from the images input's profile."""
    profile = sidecar.profile.get(contract.INPUT_IMAGES)
    if profile is None:
        raise DetrDeployError(f"the engine description has no profile for '{contract.INPUT_IMAGES}'; rebuild it")

    def specs(tensors):
        return [TensorSpec(t.name, t.dtype, _strip_batch(t.shape, t.name)) for t in tensors]

    return NetworkSpec(
        specs(sidecar.inputs),
        specs(sidecar.outputs),
        profile.max[0],
        {name: {"min": p.min, "opt": p.opt, "max": p.max} for name, p in sidecar.profile.items()},
        sidecar.precision,
    )


def spec_from_onnx(model, max_batch: int) -> NetworkSpec:
    """From an ONNX ModelProto (graph inputs and outputs; symbolic dimensions become -1)."""

    def specs(values):
        found = []
        for value in values:
            tensor = value.type.tensor_type
            dtype = ONNX_TYPES.get(tensor.elem_type)
            if dtype is None:
                raise DetrDeployError(f"ONNX tensor {value.name} has element type {tensor.elem_type}, not supported")
            shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
            found.append(TensorSpec(value.name, dtype, _strip_batch(shape, value.name)))
        return found

    initializers = {i.name for i in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    return NetworkSpec(
        specs(inputs), specs(model.graph.output), max_batch, {}, metadata.get(contract.META_PRECISION, "fp32")
    )


def _tensor_block(kind: str, tensors) -> str:
    lines = [f"{kind} ["]
    entries = []
    for tensor in tensors:
        entry = [f'    name: "{tensor.name}"', f"    data_type: {TRITON_TYPES[tensor.dtype]}"]
        entry.append(f"    dims: [ {', '.join(str(d) for d in tensor.dims)} ]")
        if getattr(tensor, "ragged", False):
            entry.append("    allow_ragged_batch: true")
        entries.append("  {\n" + "\n".join(entry) + "\n  }")
    lines.append(",\n".join(entries))
    lines.append("]")
    return "\n".join(lines)


def model_config(
    name: str,
    *,
    backend: str = None,
    platform: str = None,
    max_batch: int,
    inputs,
    outputs,
    kind: str,
    instances: int,
    queue_delay_us: int,
    parameters: dict[str, str] = None,
) -> str:
    """config.pbtxt text. With max_batch_size > 0, dims exclude the batch dimension (Triton adds it)."""
    lines = [f'name: "{name}"']
    lines.append(f'backend: "{backend}"' if backend else f'platform: "{platform}"')
    lines.append(f"max_batch_size: {max_batch}")
    lines += [_tensor_block("input", inputs), _tensor_block("output", outputs)]
    preferred = sorted({size for size in (max_batch // 2, max_batch) if size > 1})
    batching = ["dynamic_batching {"]
    if preferred:
        batching.append(f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]")
    batching += [f"  max_queue_delay_microseconds: {queue_delay_us}", "}"]
    lines.append("\n".join(batching))
    lines.append(f"instance_group [\n  {{\n    count: {instances}\n    kind: {kind}\n  }}\n]")
    for key, value in (parameters or {}).items():
        lines.append(f'parameters {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}')
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class _RaggedSpec(TensorSpec):
    ragged: bool = True


def detector_outputs(panoptic: bool) -> list[TensorSpec]:
    outputs = [
        TensorSpec(python_models.OUTPUT_BOXES, "float32", [-1, 4]),
        TensorSpec(python_models.OUTPUT_SCORES, "float32", [-1]),
        TensorSpec(python_models.OUTPUT_LABELS, "int32", [-1]),
        TensorSpec(python_models.OUTPUT_RESULT, "uint8", [-1]),
    ]
    if panoptic:
        outputs.append(TensorSpec(python_models.OUTPUT_SEGMENT_MAP, "int32", [-1, -1]))
    return outputs


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def write_repository(output, *, onnx=None, engine=None, flavours=None, options: TritonOptions = None):
    """Write the repository into the folder ``output`` (new, or empty). ``onnx``: an export (onnxruntime and python
    flavours); ``engine``: an engine with its description (tensorrt flavour, and the python flavour when no ONNX file
    is given). ``flavours`` default: every one the given files allow."""
    import onnx as onnx_lib

    from detr_deploy.sidecar import read_sidecar

    options = options or TritonOptions()
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise DetrDeployError(f"{output} exists and is not an empty folder; choose a new output folder")
    if onnx is None and engine is None:
        raise DetrDeployError("give an ONNX export, an engine, or both")
    available = (["tensorrt"] if engine else []) + (["onnxruntime"] if onnx else []) + ["python"]
    flavours = list(flavours or available)
    for flavour in flavours:
        if flavour not in available:
            needs = "an engine (--engine)" if flavour == "tensorrt" else "an ONNX export (--onnx)"
            raise DetrDeployError(f"the {flavour} flavour needs {needs}")

    sidecar = read_sidecar(engine) if engine else None
    onnx_model = onnx_lib.load(str(onnx), load_external_data=False) if onnx else None
    if onnx_model is not None:
        metadata = {prop.key: prop.value for prop in onnx_model.metadata_props}
        onnx_spec = spec_from_onnx(onnx_model, options.max_batch)
    else:
        metadata, onnx_spec = dict(sidecar.model), None
    onnx_spec_or_none = onnx_spec

    # Written into a folder beside ``output`` and moved into place at the end: a failure leaves nothing behind.
    target = output
    if not target.parent.is_dir():
        raise DetrDeployError(f"folder {target.parent} does not exist; create it first")
    output = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        written = _write_models(output, target, onnx, engine, flavours, options, sidecar, metadata, onnx_spec_or_none)
    except BaseException:
        shutil.rmtree(output, ignore_errors=True)
        raise
    if target.exists():
        target.rmdir()  # checked empty above
    os.replace(output, target)
    return written


def _write_models(output, target, onnx, engine, flavours, options, sidecar, metadata, onnx_spec) -> WrittenRepository:
    """The repository's files into ``output``; texts name the final folder ``target``."""
    engine_spec = spec_from_sidecar(sidecar) if sidecar else None
    panoptic = contract.OUTPUT_MASKS in {t.name for t in (engine_spec or onnx_spec).outputs}
    notes, models = [], {}
    plugin_library = registering_library = None
    if sidecar is not None and sidecar.plugin is not None:
        source, placed = _place_plugin(Path(engine), sidecar, output)
        plugin_library = target / placed.relative_to(output)
        notes.append(_PLUGIN_NOTE.format(library=f"{PLUGINS_FOLDER}/{sidecar.plugin.library}"))
        if "tensorrt" in flavours:
            registering_library = target / _place_registering_library(source, output).relative_to(output)
            notes.append(_REGISTERING_NOTE.format(library=f"{PLUGINS_FOLDER}/{registering_library.name}"))
    if sidecar is not None and "tensorrt" in flavours:
        notes.append(
            f"The engine was built with {sidecar.tensorrt_flavour} {sidecar.tensorrt_version} for compute capability "
            f"{sidecar.compute_capability}: the server's TensorRT must be that version, on that GPU architecture."
            + (
                " Triton's tensorrt backend links TensorRT, not TensorRT-RTX: serve this engine with the python "
                "flavour (TensorRT-RTX in the server's Python environment), or build one with TensorRT."
                if sidecar.tensorrt_flavour == "tensorrt-rtx"
                else ""
            )
        )

    for flavour in flavours:
        network = f"{options.name}_{flavour}{NETWORK_SUFFIX}"
        folder = output / network
        if flavour == "tensorrt":
            spec, kind = engine_spec, "KIND_GPU"
            _copy(engine, folder / "1" / "model.plan")
            text = model_config(network, platform="tensorrt_plan", **_network_args(spec, kind, options))
        elif flavour == "onnxruntime":
            spec, kind = onnx_spec, "KIND_GPU"
            _copy(onnx, folder / "1" / "model.onnx")
            text = model_config(network, platform="onnxruntime_onnx", **_network_args(spec, kind, options))
        else:
            in_process_engine = onnx is None
            spec = engine_spec if in_process_engine else onnx_spec
            kind = "KIND_GPU" if in_process_engine else "KIND_CPU"
            if in_process_engine:
                _copy(engine, folder / "1" / "model.plan")
                _copy(Path(f"{engine}.json"), folder / "1" / "model.plan.json")
            else:
                _copy(onnx, folder / "1" / "model.onnx")
            parameters = {}
            if options.cpu_threads:
                parameters["intra_op_threads"] = str(options.cpu_threads)
            if in_process_engine and plugin_library is not None:
                parameters["plugin_library"] = f"{PLUGINS_FOLDER}/{plugin_library.name}"
            _write_text(folder / "1" / "model.py", MODEL_PY.format(role="network", cls="NetworkModel"))
            text = model_config(
                network, backend="python", **_network_args(spec, kind, options), parameters=parameters or None
            )
        _write_text(folder / "config.pbtxt", text)
        _write_detector(output, f"{options.name}_{flavour}", network, spec, metadata, panoptic, options)
        models[flavour] = [f"{options.name}_{flavour}", network]

    written = WrittenRepository(target, models, plugin_library, registering_library, notes)
    _write_text(output / "server_flags.txt", server_flags_text(written))
    _write_text(output / "README.txt", readme_text(written, options))
    return written


_PLUGIN_NOTE = (
    "The engine needs the TensorRT plugin library {library} (the one it was built with; the python flavour loads it "
    "through TensorRT's IPluginRegistry::loadLibrary)."
)
_REGISTERING_NOTE = (
    "Triton's tensorrt backend only dlopens the libraries named in --backend-config=tensorrt,plugins=... (LD_PRELOAD "
    "does the same) and relies on them registering their creators while loading: server_flags.txt names {library}, "
    "which does that for the plugin library beside it. Keep the two files together in one folder."
)


def _network_args(spec: NetworkSpec, kind: str, options: TritonOptions) -> dict:
    return {
        "max_batch": spec.max_batch,
        "inputs": spec.inputs,
        "outputs": spec.outputs,
        "kind": kind,
        "instances": options.instances,
        "queue_delay_us": options.queue_delay_us,
    }


def _write_detector(output, name, network, spec: NetworkSpec, metadata, panoptic, options: TritonOptions) -> None:
    folder = output / name
    _write_text(folder / "1" / "model.py", MODEL_PY.format(role="detector", cls="DetectorModel"))
    _write_text(folder / "1" / python_models.METADATA_FILE, json.dumps(metadata, indent=1) + "\n")
    description = {
        "input_names": [t.name for t in spec.inputs],
        "output_names": [t.name for t in spec.outputs],
        "max_batch": spec.max_batch,
        "profile": spec.profile,
        "precision": spec.precision,
    }
    _write_text(folder / "1" / python_models.NETWORK_FILE, json.dumps(description, indent=1) + "\n")
    parameters = {
        "network_model": network,
        "score_threshold": repr(float(options.score_threshold)),
        "pad_batches": "true" if options.pad_batches else "false",
    }
    text = model_config(
        name,
        backend="python",
        max_batch=options.max_batch,
        inputs=[_RaggedSpec(python_models.INPUT_IMAGE, "uint8", [-1])],
        outputs=detector_outputs(panoptic),
        kind="KIND_CPU",
        instances=options.detector_instances,
        queue_delay_us=options.queue_delay_us,
        parameters=parameters,
    )
    _write_text(folder / "config.pbtxt", text)


def _copy(source, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target)


def _place_plugin(engine: Path, sidecar, output: Path) -> tuple[Path, Path]:
    """Copy the engine's plugin library (beside the engine, else the build's; its sha256 must be the description's)
    into plugins/; returns where it came from and where it went."""
    from detr_deploy.io import sha256_of
    from detr_deploy.plugins import find_plugin_library

    candidate = engine.parent / sidecar.plugin.library
    library = candidate if candidate.is_file() else find_plugin_library()
    if sha256_of(library) != sidecar.plugin.sha256:
        raise DetrDeployError(
            f"{library} is not the plugin library the engine was built with (sha256 differs from its description); "
            "put the engine's own library beside the engine"
        )
    target = output / PLUGINS_FOLDER / sidecar.plugin.library
    _copy(library, target)
    return library, target


def _place_registering_library(plugin_source: Path, output: Path) -> Path:
    """Copy the auto-registering library (beside the engine's plugin library ``plugin_source``, else the build's) into
    plugins/. No hash to check: it registers whatever libdetr_deploy_plugins.so sits in its own folder, here the
    engine's own (checked by ``_place_plugin``)."""
    from detr_deploy.plugins import REGISTERING_LIBRARY, find_registering_library

    found = find_registering_library(plugin_source)
    if found is None:
        raise DetrDeployError(
            f"{REGISTERING_LIBRARY} not found (Triton's tensorrt backend needs it to register the plugin): rebuild "
            "with 'python cli.py build-plugin', or put it beside the engine"
        )
    target = output / PLUGINS_FOLDER / REGISTERING_LIBRARY
    _copy(found, target)
    return target


def server_flags_text(written: WrittenRepository) -> str:
    from detr_deploy.triton.server import server_flags

    lines = [
        "# tritonserver flags for this repository, one flavour per line (ports: pick free ones; 127.0.0.1 keeps the",
        "# server on this machine, 0.0.0.0 serves the network). Paths are this folder's as written: if the repository",
        "# moves, replace them.",
    ]
    for flavour, models in written.models.items():
        plugins = [written.registering_library] if written.registering_library and flavour == "tensorrt" else []
        flags = server_flags(
            written.path, http_port=8000, grpc_port=8001, metrics_port=8002, models=models, plugin_libraries=plugins
        )
        lines.append(f"{flavour}: " + " ".join(flags))
    return "\n".join(lines) + "\n"


def readme_text(written: WrittenRepository, options: TritonOptions) -> str:
    detector = next(iter(written.models.values()))[0]
    lines = [
        "A Triton Inference Server model repository written by detr-deploy.",
        "",
        "Start: tritonserver <flags of one flavour in server_flags.txt>. The Python models import detr_deploy:",
        "install it (with onnxruntime for the python flavour) in the server's Python environment.",
        "",
        f"Query: send one encoded image (JPEG, PNG) per request to '{detector}',",
        f"input '{python_models.INPUT_IMAGE}' UINT8 [1, bytes]; outputs: boxes FP32 [1, n, 4] (x0, y0, x1, y1 in",
        "pixels), scores FP32 [1, n], labels INT32 [1, n], result UINT8 [1, bytes] (UTF-8 JSON: names, image size,",
        "panoptic segments), segment_map INT32 [1, H, W] (panoptic models). detr_deploy.triton.client does this over",
        "HTTP and gRPC.",
        "",
        "Metrics: http://HOST:8002/metrics (Prometheus text); batch sizes run: GET /v2/models/<model>/stats.",
        "",
        "Models:",
    ]
    for flavour, (detector_name, network) in written.models.items():
        lines.append(f"  {flavour}: {detector_name} (detector, python backend) -> {network} (network)")
    if written.notes:
        lines += ["", "Notes:"] + [f"  - {note}" for note in written.notes]
    return "\n".join(lines) + "\n"
