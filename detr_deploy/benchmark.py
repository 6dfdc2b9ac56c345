"""Latency and throughput of eager PyTorch, ONNX Runtime, OpenVINO and TensorRT on one model, sizes and batch sizes.

Warm-up runs are excluded. TensorRT is timed on inputs already on the GPU (``Runner.device_call``), the others on host
arrays, each call synchronous: the figures are what a caller of each backend waits for.
"""

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from detr_deploy.errors import DetrDeployError

BACKENDS = ("eager", "onnxruntime", "openvino", "tensorrt")


@dataclass(frozen=True)
class LatencyResult:
    backend: str
    batch: int
    height: int
    width: int
    iterations: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    images_per_second: float


@dataclass
class BenchmarkReport:
    model: str
    warmup: int
    results: list[LatencyResult] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def render(self) -> str:
        header = f"{'backend':<14}{'batch':>6}{'size':>12}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'images/s':>11}"
        lines = [f"model {self.model}, {self.warmup} warm-up runs excluded", header, "-" * len(header)]
        for r in self.results:
            size = f"{r.height}x{r.width}"
            lines.append(
                f"{r.backend:<14}{r.batch:>6}{size:>12}{r.p50_ms:>10.2f}{r.p90_ms:>10.2f}{r.p99_ms:>10.2f}"
                f"{r.images_per_second:>11.2f}"
            )
        return "\n".join(lines)


def measure(call: Callable[[], object], warmup: int, iterations: int) -> np.ndarray:
    """Seconds per call over ``iterations`` calls, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(iterations):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return np.array(times)


def run_benchmark(
    runners: dict,
    model: str,
    *,
    sizes=((800, 1088),),
    batch_sizes=(1,),
    warmup: int = 3,
    iterations: int = 20,
    on_result: Callable[[LatencyResult], None] = None,
) -> BenchmarkReport:
    """Time each runner (backend name -> runner) on seeded random images [b, 3, h, w] for every size and batch."""
    if warmup < 0 or iterations < 1:
        raise DetrDeployError(f"need warm-up >= 0 and iterations >= 1, got {warmup} and {iterations}")
    report = BenchmarkReport(model=model, warmup=warmup)
    rng = np.random.default_rng(0)
    for height, width in sizes:
        for batch in batch_sizes:
            images = rng.standard_normal((batch, 3, height, width), dtype=np.float32)
            for backend, runner in runners.items():
                runner.check_inputs(images.shape)
                seconds = measure(runner.device_call(images), warmup, iterations) * 1000.0
                result = LatencyResult(
                    backend=backend,
                    batch=batch,
                    height=height,
                    width=width,
                    iterations=iterations,
                    p50_ms=float(np.percentile(seconds, 50)),
                    p90_ms=float(np.percentile(seconds, 90)),
                    p99_ms=float(np.percentile(seconds, 99)),
                    mean_ms=float(seconds.mean()),
                    images_per_second=float(batch * 1000.0 / seconds.mean()),
                )
                report.results.append(result)
                if on_result:
                    on_result(result)
    return report


def open_runners(
    backends,
    *,
    onnx_path=None,
    engine_path=None,
    checkpoint=None,
    plugins="auto",
    threads=None,
    openvino_precision=None,
):
    """Backend name -> runner, and the export's metadata. Eager PyTorch is rebuilt from the ONNX file's or engine's
    metadata (and ``checkpoint``); ONNX Runtime and OpenVINO run ``onnx_path`` (with ``threads`` CPU threads, as
    eager PyTorch; OpenVINO in ``openvino_precision``, None: the file's), TensorRT ``engine_path``."""
    from detr_deploy.model_source import model_of_export
    from detr_deploy.runtime.eager import EagerRunner
    from detr_deploy.runtime.open import check_kind, open_runner

    unknown = [name for name in backends if name not in BACKENDS]
    if unknown:
        raise DetrDeployError(f"unknown backend {unknown[0]!r}; choose from: {', '.join(BACKENDS)}")
    if onnx_path is None and engine_path is None:
        raise DetrDeployError("give --onnx FILE.onnx and/or --engine FILE.engine to benchmark")
    if onnx_path is not None:
        check_kind(onnx_path, "onnx", "--onnx")
    if engine_path is not None:
        check_kind(engine_path, "engine", "--engine")
    runners, metadata = {}, None
    for name in ("onnxruntime", "openvino"):
        if name in backends:
            if onnx_path is None:
                raise DetrDeployError(f"the {name} backend needs --onnx FILE.onnx")
            precision = openvino_precision if name == "openvino" else None
            runners[name] = open_runner(onnx_path, kind="onnx", runtime=name, threads=threads, precision=precision)
            metadata = metadata or runners[name].metadata
    if "tensorrt" in backends:
        if engine_path is None:
            raise DetrDeployError("the tensorrt backend needs --engine FILE.engine")
        runners["tensorrt"] = open_runner(engine_path, kind="engine", plugins=plugins)
        metadata = metadata or runners["tensorrt"].metadata
    if metadata is None:
        if onnx_path is not None:
            metadata = open_runner(onnx_path, kind="onnx").metadata
        else:
            from detr_deploy.sidecar import read_sidecar

            metadata = read_sidecar(engine_path).model
    if "eager" in backends:
        import torch

        if threads:
            torch.set_num_threads(threads)
        source = model_of_export(metadata, checkpoint=checkpoint)
        runners = {"eager": EagerRunner(source.model, source.config.output_names, metadata), **runners}
    return runners, metadata


def check_benchmark_fits_in_memory(metadata: dict, sizes, batch_sizes) -> None:
    """Refuse sizes and batches whose eager run of the export's model (its recorded config) would not fit in memory;
    files that record no model are not checked."""
    from detr_deploy.model_source import recorded_config
    from detr_deploy.options import check_fits_in_memory

    config = recorded_config(metadata)
    if config is not None:
        check_fits_in_memory(config, sizes, batch_sizes)
