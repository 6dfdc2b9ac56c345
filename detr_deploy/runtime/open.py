"""Open a deployed artifact as a runner: an ONNX file in ONNX Runtime or OpenVINO, an engine in TensorRT.

The one place that maps a file to its backend (verify-parity, predict and the Detector, evaluate, benchmark call it).
Backend packages are imported only when a file needs them.
"""

from pathlib import Path

from detr_deploy.errors import DetrDeployError
from detr_deploy.options import check_count

ONNX_SUFFIX = ".onnx"
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
# What runs an ONNX file (engines run in TensorRT only).
RUNTIMES = ("onnxruntime", "openvino")


def artifact_kind(path) -> str:
    """ "onnx" or "engine", from the file's suffix (any case); None for anything else."""
    suffix = Path(str(path)).suffix.lower()
    return "onnx" if suffix == ONNX_SUFFIX else "engine" if suffix in ENGINE_SUFFIXES else None


def check_kind(path, kind: str, option: str) -> None:
    """Refuse a file given to ``option`` that is the other kind ("onnx" or "engine"), before anything is opened.
    Other suffixes pass: engines in particular are named freely (trtexec --saveEngine=model.bin)."""
    if artifact_kind(path) not in (None, kind):
        expected = f"an ONNX file ({ONNX_SUFFIX})" if kind == "onnx" else f"an engine ({', '.join(ENGINE_SUFFIXES)})"
        raise DetrDeployError(f"{option} takes {expected}, not {path}")


def open_runner(
    path, *, kind: str = None, runtime: str = "onnxruntime", plugins="auto", threads: int = None, precision: str = None
):
    """A Runner for ``path``: an ONNX file in ``runtime`` ("onnxruntime" or "openvino", each on the CPU with
    ``threads`` threads, default every core, computing in ``precision``: None for the file's own, "bf16" runs an fp32
    file in bf16 in OpenVINO; anything a runtime cannot give is refused), or an engine in TensorRT with the
    MSDeformAttn ``plugins`` library ("auto": ours when built). ``kind`` ("onnx" or "engine"): what the file is when
    the caller knows (an --engine option), else from its suffix (.onnx; .engine/.plan/.trt). DetrDeployError for
    other files, an engine with runtime="openvino", or a backend that is not installed."""
    if runtime not in RUNTIMES:
        raise DetrDeployError(f"unknown runtime {runtime!r}; choose from: {', '.join(RUNTIMES)}")
    check_count(threads, "--threads", maximum=1024)
    kind = kind or artifact_kind(path)
    if kind is None:
        raise DetrDeployError(
            f"{path} is neither an ONNX file ({ONNX_SUFFIX}) nor a TensorRT engine ({', '.join(ENGINE_SUFFIXES)}); "
            "give a file with one of those suffixes"
        )
    if kind == "engine":
        if runtime != "onnxruntime":
            raise DetrDeployError(
                f"{path} is a TensorRT engine and runs in TensorRT only; give the ONNX file it was built from to run "
                f"it in {runtime}"
            )
        from detr_deploy.runtime.tensorrt import TensorRTRunner

        runner = TensorRTRunner(path, plugins=plugins)
        if precision not in (None, runner.precision):
            runner.close()
            raise DetrDeployError(
                f"{path} was built in {runner.precision}; build an engine in {precision} (build-engine --precision "
                f"{precision}) to run that"
            )
        return runner
    if runtime == "openvino":
        from detr_deploy.runtime.openvino import OpenVINORunner

        return OpenVINORunner(path, threads=threads, precision=precision)
    from detr_deploy.runtime.onnxruntime import OnnxRuntimeRunner

    return OnnxRuntimeRunner(path, threads=threads, precision=precision)
