"""ONNX -> TensorRT engine, with a sidecar description (``MODEL.engine.json``, see ``detr_deploy.sidecar``).

Options follow trtexec: shape profiles as ``images:1x3x320x320``, a timing cache file, a workspace limit. Precision
is a graph pass (``exporters.precision``) because TensorRT 11 and TensorRT-RTX build strongly typed networks only.
The parse and build run in a child process (``exporters.engine_build_worker``): TensorRT can abort its process.
"""

import contextlib
import dataclasses
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx

from detr_deploy import __version__, contract
from detr_deploy.errors import DetrDeployError
from detr_deploy.io import atomic_output, check_output_path, sha256_of
from detr_deploy.sidecar import EngineSidecar, PluginInfo, ShapeProfile, TensorInfo, sidecar_path
from detr_deploy.tensorrt_flavours import resolve_flavour
from exporters.precision import DEFAULT_KEEP_FP32, convert_precision

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
# TensorRT-RTX's ahead-of-time targets (its ComputeCapability enum), as trtexec-style numbers.
AHEAD_OF_TIME_TARGETS = ("75", "80", "86", "89", "120", "121")
_REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class BuildEvent:
    """What the build reports as it goes: ``kind`` is "stage" (``phase`` names it), "phase_start" (``steps`` in
    it, ``parent`` phase or None), "step" (``step`` done in ``phase``) or "phase_finish"."""

    kind: str
    phase: str
    parent: str = None
    steps: int = 0
    step: int = 0


@dataclass(frozen=True)
class EngineBuild:
    path: Path
    sidecar_path: Path
    sidecar: EngineSidecar
    warnings: tuple[str, ...] = ()


def parse_shapes(text: str) -> dict[str, list[int]]:
    """trtexec's shape syntax: 'images:1x3x320x320[,other:2x4]' -> {"images": [1, 3, 320, 320], ...}."""
    shapes = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        match = re.fullmatch(r"([^:]+):(\d+(?:x\d+)*)", item)
        if not match:
            raise DetrDeployError(f"malformed shape {item!r}; write NAME:DxDxD..., e.g. images:1x3x800x1088")
        shapes[match[1].strip()] = [int(dim) for dim in match[2].split("x")]
    return shapes


def _profile_from_metadata(text: str) -> dict[str, list[int]]:
    entries = dict(item.split("=", 1) for item in text.split(";") if "=" in item)
    try:
        return {key: [int(dim) for dim in entries[key].split("x")] for key in ("min", "opt", "max")}
    except (KeyError, ValueError):
        raise DetrDeployError(f"malformed {contract.META_PROFILE} metadata {text!r}; re-export the model") from None


def _graph_inputs(model: onnx.ModelProto) -> dict[str, list]:
    """Graph input name -> dims (int, or the symbolic name / None for dynamic ones)."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        inputs[value.name] = [dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or None) for dim in dims]
    return inputs


def resolve_profile(
    model: onnx.ModelProto, min_shapes: str = None, opt_shapes: str = None, max_shapes: str = None
) -> tuple[dict[str, ShapeProfile], list[str]]:
    """The optimization profile for every input: what the user gave, else the export's default profile (metadata),
    else the graph's static shapes. Returns the profile and warnings for the user."""
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    graph_inputs = _graph_inputs(model)
    given = {"min": parse_shapes(min_shapes), "opt": parse_shapes(opt_shapes), "max": parse_shapes(max_shapes)}
    warnings = []
    _check_given_inputs(given, graph_inputs)
    is_export = contract.META_FAMILY in metadata
    if not is_export:
        warnings.append(
            "the ONNX file is not a detr_deploy export (no detr_deploy metadata): using the graph's input shapes "
            "where none are given"
        )
    defaults = _default_images_profile(metadata) if is_export else None
    profile = {}
    # Images first: the padding mask follows its batch, height and width.
    for name, dims in sorted(graph_inputs.items(), key=lambda item: item[0] != contract.INPUT_IMAGES):
        given_here = {key: given[key].get(name) for key in given}
        shapes = _input_shapes(name, dims, given_here, defaults, is_export, profile)
        divisor = int(metadata.get(contract.META_SIZE_DIVISOR, 1)) if is_export else 1
        _check_against_model(name, dims, shapes, is_export and name == contract.INPUT_IMAGES, divisor)
        profile[name] = ShapeProfile(min=shapes["min"], opt=shapes["opt"], max=shapes["max"])
    return profile, warnings


def _check_given_inputs(given: dict[str, dict[str, list[int]]], graph_inputs: dict[str, list]) -> None:
    """Every input named in --min/--opt/--max-shapes must be one of the graph's."""
    for key, shapes in given.items():
        for name in shapes:
            if name not in graph_inputs:
                raise DetrDeployError(
                    f"--{key}-shapes names input {name!r}; the model's inputs are: {', '.join(graph_inputs)}"
                )


def _default_images_profile(metadata: dict[str, str]) -> dict[str, list[int]]:
    """An export's profile for ``images``: the one its metadata records, else contract.DEFAULT_PROFILE."""
    if contract.META_PROFILE in metadata:
        return _profile_from_metadata(metadata[contract.META_PROFILE])
    return {key: list(value) for key, value in contract.DEFAULT_PROFILE.items()}


def _input_shapes(name: str, dims: list, given: dict, defaults: dict, is_export: bool, profile: dict) -> dict:
    """min/opt/max of one input: ``given`` (None where not given), filled from the export's defaults (``images``),
    the images profile already in ``profile`` (``padding_mask`` [batch, height, width]) or the static dims."""
    shapes = dict(given)
    if shapes["opt"] and not shapes["min"] and not shapes["max"]:
        # trtexec: only --optShapes given -> min and max are the same.
        shapes["min"] = shapes["max"] = shapes["opt"]
    for key in shapes:
        if shapes[key] is None:
            if defaults is not None and name == contract.INPUT_IMAGES:
                shapes[key] = defaults[key]
            elif is_export and name == contract.INPUT_PADDING_MASK and contract.INPUT_IMAGES in profile:
                images = getattr(profile[contract.INPUT_IMAGES], key)
                shapes[key] = [images[0], *images[2:]]
            elif all(isinstance(dim, int) and dim > 0 for dim in dims):
                shapes[key] = list(dims)
            else:
                raise DetrDeployError(
                    f"input {name!r} has dynamic dimensions {_show_dims(dims)}; give --min-shapes, --opt-shapes "
                    f"and --max-shapes, e.g. {name}:{'x'.join(str(d) if isinstance(d, int) else '1' for d in dims)}"
                )
    return shapes


def _show_dims(dims) -> str:
    return "[" + ", ".join(str(dim) if isinstance(dim, int) and dim > 0 else str(dim or "?") for dim in dims) + "]"


def _check_against_model(name: str, dims: list, shapes: dict, is_images: bool, divisor: int = 1) -> None:
    for key, shape in shapes.items():
        text = f"{name}:{'x'.join(map(str, shape))}"
        if len(shape) != len(dims):
            raise DetrDeployError(
                f"--{key}-shapes {text} has {len(shape)} dimensions; {name} has {len(dims)}: {_show_dims(dims)}"
            )
        for axis, (dim, size) in enumerate(zip(dims, shape)):
            if size < 1:
                raise DetrDeployError(f"--{key}-shapes {text}: dimension {axis} must be at least 1")
            if isinstance(dim, int) and dim > 0 and size != dim:
                raise DetrDeployError(
                    f"--{key}-shapes {text} is outside what the model takes: dimension {axis} is fixed at {dim} "
                    f"({name} is {_show_dims(dims)})"
                )
        if is_images:
            (low_batch, high_batch), (low_side, high_side) = contract.BATCH_RANGE, contract.SIDE_RANGE
            if not low_batch <= shape[0] <= high_batch or not all(low_side <= side <= high_side for side in shape[2:]):
                raise DetrDeployError(
                    f"--{key}-shapes {text} is outside what the model takes: batch {low_batch}..{high_batch}, "
                    f"height and width {low_side}..{high_side}"
                )
            if any(side % divisor for side in shape[2:]):
                raise DetrDeployError(
                    f"--{key}-shapes {text}: this model takes heights and widths that are multiples of {divisor}"
                )
    for axis in range(len(dims)):
        if not shapes["min"][axis] <= shapes["opt"][axis] <= shapes["max"][axis]:
            raise DetrDeployError(
                f"profile for {name} is not ordered at dimension {axis}: need min <= opt <= max, got "
                + " / ".join("x".join(map(str, shapes[key])) for key in ("min", "opt", "max"))
            )


def _load_onnx(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise DetrDeployError(f"ONNX file {path} does not exist")
    try:
        return onnx.load(str(path))
    except Exception as error:  # protobuf raises DecodeError (and others) for files that are not ONNX
        raise DetrDeployError(f"{path} is not a readable ONNX file ({type(error).__name__}); re-export it") from None


def _msda_node_count(model: onnx.ModelProto) -> int:
    return sum(n.domain == contract.MSDA_DOMAIN and n.op_type == contract.MSDA_OP_TYPE for n in model.graph.node)


def _resolve_plugin(plugins, msda_nodes: int, ahead_of_time: bool, warnings: list[str]) -> Path:
    """``plugins``: "auto" (our built library when present and usable), "none", or a path."""
    from detr_deploy.plugins import find_plugin_library

    if plugins in (None, "none"):
        return None
    if plugins == "auto":
        library = find_plugin_library() if msda_nodes else None
        if library is not None and ahead_of_time:
            import torch

            if not torch.cuda.is_available():
                # Seen with TensorRT-RTX 1.7: its parser aborts the process importing a plugin node with no GPU.
                warnings.append(
                    f"not loading {library.name}: TensorRT-RTX cannot import plugin nodes on a machine with no GPU, "
                    "so the MSDeformAttn nodes are built from their ONNX function (build on a GPU for the plugin)"
                )
                return None
        return library
    path = Path(plugins)
    if not path.is_file():
        raise DetrDeployError(
            f"plugin library {path} does not exist; build it with 'python cli.py build-plugin' or pass --plugins none"
        )
    return path


def _ahead_of_time_target(compute_capability) -> tuple[str, str]:
    """89 / "8.9" / "sm89" -> ("SM89", "8.9"): TensorRT-RTX's ComputeCapability member and the sidecar's value."""
    text = str(compute_capability).replace(".", "").lower().removeprefix("sm")
    if text not in AHEAD_OF_TIME_TARGETS:
        raise DetrDeployError(
            f"compute capability {compute_capability} is not a TensorRT-RTX target; choose one of: "
            f"{', '.join(AHEAD_OF_TIME_TARGETS)}"
        )
    return f"SM{text}", f"{text[:-1]}.{text[-1]}"


def _visible_gpu_capability() -> str:
    import torch

    if not torch.cuda.is_available():
        raise DetrDeployError(
            "no CUDA GPU is visible: build on the GPU the engine will run on, or ahead of time with TensorRT-RTX "
            "(--compute-capability 89, say)"
        )
    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}"


def _run_worker(job: dict, on_event: Callable[[dict], None]) -> dict:
    """Run the worker, pass its events on; return its final event. TensorRT's own messages are kept for errors.

    The worker's stderr joins its stdout: reading one pipe while the other fills up would deadlock, and what a crash
    prints there (not JSON) is kept as a message."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(_REPO), os.environ.get("PYTHONPATH")])))
    process = subprocess.Popen(
        [sys.executable, "-m", "exporters.engine_build_worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    last, stage, messages = None, "starting", []
    try:
        process.stdin.write(json.dumps(job))
        process.stdin.close()
        for line in process.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                if line.strip():
                    messages.append(line.strip())
                continue
            if event["event"] == "stage":
                stage = event["stage"]
            if event["event"] == "log":
                messages.append(event["message"])
            last = event
            on_event(event)
        returncode = process.wait()
    finally:
        # Interrupted (Ctrl-C, SIGTERM, SIGHUP) or failed while reading: the build must not outlive us.
        if process.poll() is None:
            process.kill()
            process.wait()
    if returncode == 0 and last and last["event"] == "done":
        return last
    raise _worker_failure(job, last, returncode, stage, messages)


def _worker_failure(job: dict, last: dict, returncode: int, stage: str, messages: list[str]) -> DetrDeployError:
    """Why the worker gave no engine: its error event, else the signal or exit status and its last messages."""
    if last and last["event"] == "error":
        detail = last["message"]
        if last.get("parse_errors"):
            detail += ": " + "; ".join(
                f"node {error['node']} ({error['op']}): {error['message']}" for error in last["parse_errors"][:3]
            )
        return DetrDeployError(detail)
    if returncode < 0:
        name = signal.Signals(-returncode).name
        hint = ""
        if job["plugin_library"] and stage == "parsing" and job["compute_capability"]:
            hint = (
                "; TensorRT-RTX aborts when it imports plugin nodes on a machine with no GPU: build on a GPU, or pass "
                "--plugins none to build the MSDeformAttn nodes from their ONNX function"
            )
        tail = " ".join((messages or ["no message"])[-1].split())
        return DetrDeployError(f"TensorRT aborted ({name}) while {stage} (last message: {tail}){hint}")
    tail = " | ".join(" ".join(message.split()) for message in messages[-3:])
    return DetrDeployError(f"the TensorRT build failed while {stage} (exit {returncode}): {tail}")


@dataclass
class _BuildPlan:
    """What ``build_engine`` settles before building: the options checked, the graph in the precision to build."""

    onnx_path: Path
    output: Path
    model: onnx.ModelProto  # converted to fp16/bf16 here when ``converts``; an int8 build quantizes it later
    flavour: str
    precision: str
    converts: bool
    fp32_ops: dict[str, int]
    profile: dict[str, ShapeProfile]
    msda_nodes: int
    plugin_library: Path
    trt_capability: str  # TensorRT-RTX's ahead-of-time target ("SM89"), None to build for the visible GPU
    capability: str  # the sidecar's "8.9"
    timing_cache: Path
    workspace_mib: int
    warnings: list[str]


def build_engine(
    onnx_path,
    output,
    *,
    precision: str = None,
    keep_fp32: tuple[str, ...] = DEFAULT_KEEP_FP32,
    calibration_images=None,
    calibration_count: int = 200,
    min_shapes: str = None,
    opt_shapes: str = None,
    max_shapes: str = None,
    plugins="auto",
    timing_cache=None,
    workspace_mib: int = None,
    backend: str = "auto",
    compute_capability=None,
    on_event: Callable[[BuildEvent], None] = None,
) -> EngineBuild:
    """Build a TensorRT engine from ``onnx_path`` into ``output`` and write ``output + '.json'`` beside it.

    The engine takes the ONNX file's inputs (``images`` [batch, 3, height, width] float32 for our exports) within
    one optimization profile, and returns its outputs in float32 whatever ``precision`` it computes in.
    ``plugins``: "auto" (our built plugin library when present, else the MSDeformAttn nodes are built from their
    ONNX function), "none", or a library path. ``compute_capability`` (e.g. 89) builds ahead of time with TensorRT-RTX.
    ``precision``: default what the file computes in (fp32 for an export; a ``quantize`` output says its own);
    "fp16"/"bf16" convert an fp32 export here; "int8" quantizes it first (``exporters.quantize``, calibrating on
    ``calibration_count`` images of the folder ``calibration_images``) and records the choices in the description.
    """
    plan = _plan_build(
        Path(onnx_path),
        Path(output),
        precision=precision,
        keep_fp32=keep_fp32,
        calibration_images=calibration_images,
        shapes=(min_shapes, opt_shapes, max_shapes),
        plugins=plugins,
        timing_cache=timing_cache,
        workspace_mib=workspace_mib,
        backend=backend,
        compute_capability=compute_capability,
    )
    sidecar = _build(plan, calibration_images, calibration_count, on_event)
    return EngineBuild(plan.output, sidecar_path(plan.output), sidecar, tuple(plan.warnings))


def _plan_build(
    onnx_path: Path,
    output: Path,
    *,
    precision,
    keep_fp32,
    calibration_images,
    shapes,
    plugins,
    timing_cache,
    workspace_mib,
    backend,
    compute_capability,
) -> _BuildPlan:
    """Check every option and read the ONNX file, cheapest checks first, before anything is built or written."""
    _check_build_options(precision or "fp32", workspace_mib, keep_fp32)
    trt_capability, capability = None, None
    if compute_capability is not None:
        trt_capability, capability = _ahead_of_time_target(compute_capability)
    timing_cache = _check_build_outputs(onnx_path, output, plugins, timing_cache)
    flavour = resolve_flavour(backend, ahead_of_time=compute_capability is not None)
    capability = capability or _visible_gpu_capability()
    model = _load_onnx(onnx_path)
    precision = _resolve_precision(model, onnx_path, precision, calibration_images)
    profile, warnings = resolve_profile(model, *shapes)
    msda_nodes = _msda_node_count(model)
    plugin_library = _resolve_plugin(plugins, msda_nodes, compute_capability is not None, warnings)
    converts = precision in ("fp16", "bf16") and _file_precision(model) == "fp32"
    model, fp32_ops = _convert_for_build(model, precision, keep_fp32, warnings) if converts else (model, {})
    for warning in warnings:
        logger.warning(warning)
    return _BuildPlan(
        onnx_path=onnx_path,
        output=output,
        model=model,
        flavour=flavour,
        precision=precision,
        converts=converts,
        fp32_ops=fp32_ops,
        profile=profile,
        msda_nodes=msda_nodes,
        plugin_library=plugin_library,
        trt_capability=trt_capability,
        capability=capability,
        timing_cache=timing_cache,
        workspace_mib=workspace_mib,
        warnings=warnings,
    )


def _check_build_outputs(onnx_path: Path, output: Path, plugins, timing_cache):
    """Refuse an engine, sidecar or timing cache path that would overwrite an input; return the timing cache path."""
    plugin_path = None if plugins in ("auto", "none") else plugins
    check_output_path(output, inputs=[onnx_path, plugin_path, timing_cache])
    check_output_path(sidecar_path(output), inputs=[onnx_path, plugin_path])
    if timing_cache is not None:
        timing_cache = check_output_path(timing_cache, inputs=[onnx_path, plugin_path])
    return timing_cache


def _convert_for_build(
    model: onnx.ModelProto, precision: str, keep_fp32: tuple[str, ...], warnings: list[str]
) -> tuple[onnx.ModelProto, dict[str, int]]:
    """An fp32 export in fp16/bf16 (``exporters.precision``), warning of --keep-fp32 op types the graph lacks."""
    absent = sorted({*keep_fp32} - {node.op_type for node in model.graph.node})
    if absent and tuple(keep_fp32) != tuple(DEFAULT_KEEP_FP32):  # the defaults cover every family, not all in each
        warnings.append(f"--keep-fp32: the graph has no {', '.join(absent)} node, so nothing of it is kept in fp32")
    return convert_precision(model, precision, keep_fp32)


def _build(plan: _BuildPlan, calibration_images, calibration_count: int, on_event) -> EngineSidecar:
    """Build the engine in the worker and write it and its sidecar (each atomically: all or nothing)."""
    network = {}

    def remember(event: dict) -> None:
        if event["event"] == "network":
            network.update(event)
        _forward_event(event, on_event)

    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="detr_deploy_build_")))
        source, model = _build_source(plan, scratch, calibration_images, calibration_count, on_event)
        engine_temporary = stack.enter_context(atomic_output(plan.output))
        sidecar_temporary = stack.enter_context(atomic_output(sidecar_path(plan.output)))
        cache_temporary = stack.enter_context(atomic_output(plan.timing_cache)) if plan.timing_cache else None
        done = _run_worker(_worker_job(plan, source, engine_temporary, cache_temporary), remember)
        _check_plugin_binding(plan, network)
        sidecar = _engine_sidecar(plan, model, engine_temporary, network, done)
        sidecar_temporary.write_text(sidecar.to_json())
    return sidecar


def _build_source(
    plan: _BuildPlan, scratch: Path, calibration_images, calibration_count: int, on_event
) -> tuple[Path, onnx.ModelProto]:
    """The ONNX file the worker builds and its graph: the user's file, its fp16/bf16 conversion, or its INT8
    quantization (calibrated here), both written to ``scratch``."""
    if plan.converts:
        source = scratch / f"{plan.onnx_path.stem}.{plan.precision}.onnx"
        onnx.save_model(plan.model, source)
        return source, plan.model
    if plan.precision == "int8" and _file_precision(plan.model) == "fp32":
        from exporters.quantize import quantize_onnx

        _forward_event({"event": "stage", "stage": "calibrating and quantizing to INT8 (ModelOpt, CPU)"}, on_event)
        source = quantize_onnx(
            plan.onnx_path,
            scratch / f"{plan.onnx_path.stem}.int8.onnx",
            calibration_images=calibration_images,
            calibration_count=calibration_count,
        ).path
        return source, _load_onnx(source)
    return plan.onnx_path, plan.model


def _worker_job(plan: _BuildPlan, source: Path, engine: Path, cache: Path) -> dict:
    """The worker's instructions (JSON): what to parse, the profile, where to write the engine and timing cache."""
    timing_cache = plan.timing_cache
    return {
        "flavour": plan.flavour,
        "onnx": str(source),
        "engine": str(engine),
        "plugin_library": str(plan.plugin_library) if plan.plugin_library else None,
        "profile": {name: dataclasses.asdict(shapes) for name, shapes in plan.profile.items()},
        "compute_capability": plan.trt_capability,
        "workspace_mib": plan.workspace_mib,
        "timing_cache_in": str(timing_cache) if timing_cache and timing_cache.is_file() else None,
        "timing_cache_out": str(cache) if cache else None,
    }


def _check_plugin_binding(plan: _BuildPlan, network: dict) -> None:
    """A library that loads but binds fewer MSDeformAttn nodes than the graph has is not our plugin."""
    if plan.msda_nodes and plan.plugin_library and network["plugin_layers"] != plan.msda_nodes:
        raise DetrDeployError(
            f"{plan.plugin_library} was loaded but TensorRT bound {network['plugin_layers']} of {plan.msda_nodes} "
            f"MSDeformAttn nodes to it; is it our plugin library "
            f"({contract.PLUGIN_NAME}/{contract.PLUGIN_NAMESPACE})?"
        )


def _engine_sidecar(plan: _BuildPlan, model: onnx.ModelProto, engine: Path, network: dict, done: dict) -> EngineSidecar:
    """The engine's description: ``model`` is the graph built (its metadata and quantization record), ``network``
    and ``done`` the worker's reports of the network's inputs/outputs and of the build."""
    msda_path = "none" if not plan.msda_nodes else ("plugin" if plan.plugin_library else "onnx-function")
    return EngineSidecar(
        engine_file=plan.output.name,
        engine_sha256=sha256_of(engine),
        engine_bytes=engine.stat().st_size,
        tensorrt_flavour=plan.flavour,
        tensorrt_version=done["version"],
        compute_capability=plan.capability,
        ahead_of_time=plan.trt_capability is not None,
        precision=plan.precision,
        fp32_ops=plan.fp32_ops,
        quantization=json.loads(_metadata(model).get(contract.META_QUANTIZATION, "null")),
        inputs=[TensorInfo(**tensor) for tensor in network["inputs"]],
        outputs=[TensorInfo(**tensor) for tensor in network["outputs"]],
        profile=plan.profile,
        msda_path=msda_path,
        msda_nodes=plan.msda_nodes,
        plugin=_plugin_info(plan.plugin_library) if plan.plugin_library else None,
        model={prop.key: prop.value for prop in model.metadata_props},
        source_onnx=plan.onnx_path.name,
        source_onnx_sha256=sha256_of(plan.onnx_path),
        workspace_mib=plan.workspace_mib,
        build_seconds=round(done["seconds"], 2),
        detr_deploy_version=__version__,
    )


def _metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {prop.key: prop.value for prop in model.metadata_props}


def _file_precision(model: onnx.ModelProto) -> str:
    return _metadata(model).get(contract.META_PRECISION, "fp32")


def _resolve_precision(model: onnx.ModelProto, onnx_path: Path, precision: str, calibration_images) -> str:
    """The precision to build in: the file's own unless asked for; an fp16/bf16/int8 file is built as it is."""
    stored = _file_precision(model)
    if precision is None:
        precision = stored
    if stored != "fp32" and precision != stored:
        raise DetrDeployError(
            f"{onnx_path.name} computes in {stored} already (made by quantize); build it without --precision, or "
            "give the fp32 export"
        )
    if precision == "int8" and stored == "fp32" and calibration_images is None:
        raise DetrDeployError(
            "--precision int8 needs --calibration-images DIR (a few hundred images like those the model will see), "
            "or an INT8 file from 'cli.py quantize'"
        )
    if calibration_images is not None and (precision != "int8" or stored == "int8"):
        raise DetrDeployError("--calibration-images is for building an fp32 export with --precision int8; drop it")
    return precision


def _check_build_options(precision: str, workspace_mib: int, keep_fp32: tuple[str, ...]) -> None:
    """Refuse option values before any file is read."""
    if precision not in PRECISIONS:
        raise DetrDeployError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if workspace_mib is not None and workspace_mib < 1:
        raise DetrDeployError(f"--workspace must be a positive number of MiB, not {workspace_mib}")
    unknown_ops = [op for op in keep_fp32 if not onnx.defs.has(op)]
    if unknown_ops:
        raise DetrDeployError(
            f"--keep-fp32 names {unknown_ops[0]!r}, which is no ONNX op type; give op types such as "
            f"{','.join(DEFAULT_KEEP_FP32)}"
        )


def _forward_event(event: dict, on_event: Callable[[BuildEvent], None]) -> None:
    """A worker event (JSON) as a BuildEvent for the caller's progress display."""
    if on_event is None:
        return
    kind = event["event"]
    if kind == "stage":
        on_event(BuildEvent("stage", event["stage"]))
    elif kind == "phase_start":
        on_event(BuildEvent("phase_start", event["phase"], event["parent"], steps=event["steps"]))
    elif kind == "step":
        on_event(BuildEvent("step", event["phase"], step=event["step"]))
    elif kind == "phase_finish":
        on_event(BuildEvent("phase_finish", event["phase"]))


def _plugin_info(library: Path) -> PluginInfo:
    return PluginInfo(
        library=library.name,
        sha256=sha256_of(library),
        name=contract.PLUGIN_NAME,
        namespace=contract.PLUGIN_NAMESPACE,
        version=contract.PLUGIN_VERSION,
    )
