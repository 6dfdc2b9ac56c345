"""The TensorRT parse-and-build step, run in a child process by ``exporters.engine_build.build_engine``.

TensorRT can abort the whole process (seen: TensorRT-RTX's parser on a machine with no GPU when a node binds to a
registered plugin), so the build never runs in the caller's process. The parent sends a JSON job on stdin; this
process answers with one JSON event per line on stdout (progress, log messages, parse errors, the network's I/O,
the result) and exits 0 on success, 3 on an error it could report.
"""

import json
import sys
import time


def _emit(event: str, **fields) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def _fail(message: str, **fields) -> None:
    _emit("error", message=message, **fields)
    sys.exit(3)


def run(job: dict) -> None:
    """Parse, describe and build what ``job`` says, emitting events; ``_fail`` ends the process on an error."""
    from detr_deploy.tensorrt_flavours import import_flavour

    trt = import_flavour(job["flavour"])
    logger, monitor = _callbacks(trt)
    builder = trt.Builder(logger)
    if job["plugin_library"]:
        _emit("stage", stage="loading the plugin library")
        if builder.get_plugin_registry().load_library(job["plugin_library"]) is None:
            _fail(f"TensorRT could not load the plugin library {job['plugin_library']}")
    network = _parse(trt, builder, logger, job["onnx"])
    config, timing_cache = _builder_config(trt, builder, job)
    config.progress_monitor = monitor
    _emit("stage", stage="building")
    started = time.perf_counter()
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        _fail("TensorRT could not build the engine (its messages above say why)")
    with open(job["engine"], "wb") as handle:
        handle.write(engine)
    if timing_cache is not None:
        with open(job["timing_cache_out"], "wb") as handle:
            handle.write(config.get_timing_cache().serialize())
    _emit("done", engine_bytes=engine.nbytes, seconds=time.perf_counter() - started, version=trt.__version__)


def _callbacks(trt):
    """TensorRT's logger (warnings and errors) and progress monitor, both as events on stdout."""

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, message):
            if severity <= trt.ILogger.Severity.WARNING:
                _emit("log", severity=severity.name, message=str(message))

    class ProgressMonitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            _emit("phase_start", phase=phase_name, parent=parent_phase, steps=num_steps)

        def step_complete(self, phase_name, step):
            _emit("step", phase=phase_name, step=step)
            return True

        def phase_finish(self, phase_name):
            _emit("phase_finish", phase=phase_name)

    return Logger(), ProgressMonitor()


def _parse(trt, builder, logger, onnx_path: str):
    """The parsed network; emits its I/O and plugin layer count (the parent checks the plugin bound every node)."""
    from detr_deploy.tensorrt_flavours import numpy_dtype_name

    _emit("stage", stage="parsing")
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(onnx_path):
        errors = [parser.get_error(index) for index in range(parser.num_errors)]
        _fail(
            "TensorRT cannot parse the ONNX file",
            parse_errors=[
                {"node": e.node_name() or f"#{e.node()}", "op": e.node_operator(), "message": e.desc()} for e in errors
            ],
        )
    layer_types = [network.get_layer(index).type for index in range(network.num_layers)]

    def describe(tensor):
        return {"name": tensor.name, "dtype": numpy_dtype_name(tensor.dtype), "shape": list(tensor.shape)}

    _emit(
        "network",
        inputs=[describe(network.get_input(index)) for index in range(network.num_inputs)],
        outputs=[describe(network.get_output(index)) for index in range(network.num_outputs)],
        plugin_layers=sum(layer_type == trt.LayerType.PLUGIN_V3 for layer_type in layer_types),
        layers=network.num_layers,
    )
    return network


def _builder_config(trt, builder, job: dict):
    """(builder config with the target, workspace, profile and timing cache of ``job``, the timing cache or None)."""
    config = builder.create_builder_config()
    if job["compute_capability"]:
        config.num_compute_capabilities = 1
        config.set_compute_capability(getattr(trt.ComputeCapability, job["compute_capability"]), 0)
    if job["workspace_mib"]:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, job["workspace_mib"] << 20)
    profile = builder.create_optimization_profile()
    for name, shapes in job["profile"].items():
        profile.set_shape(name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    timing_cache = None
    if job["timing_cache_out"]:
        serialized = b""
        if job["timing_cache_in"]:
            with open(job["timing_cache_in"], "rb") as handle:
                serialized = handle.read()
        timing_cache = config.create_timing_cache(serialized)
        if timing_cache is None or not config.set_timing_cache(timing_cache, False):
            _fail(f"TensorRT cannot use the timing cache {job['timing_cache_in']}; delete it or give another file")
    return config, timing_cache


def main() -> None:
    from detr_deploy.errors import DetrDeployError

    try:
        run(json.loads(sys.stdin.read()))
    except DetrDeployError as error:
        _fail(str(error))


if __name__ == "__main__":
    main()
