"""A small client of a repository's detector model: image bytes in, ``ImageResult`` out, over HTTP or gRPC
(tritonclient), and a load test (concurrent clients, latency percentiles, throughput, batch sizes the server ran)."""

import io
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detr_deploy.detector import Detection, ImageResult, Segment
from detr_deploy.errors import DetrDeployError
from detr_deploy.triton import python_models

PROTOCOLS = ("http", "grpc")


def _module(protocol: str):
    if protocol not in PROTOCOLS:
        raise DetrDeployError(f"protocol {protocol!r}: choose http or grpc")
    try:
        if protocol == "http":
            import tritonclient.http as module
        else:
            import tritonclient.grpc as module
    except ImportError:
        raise DetrDeployError(f'tritonclient is not installed: pip install "tritonclient[{protocol}]"') from None
    return module


def encode_image(image) -> bytes:
    """A path (its bytes as they are), a PIL image or a uint8 [H, W, 3] RGB array (PNG, lossless) -> bytes."""
    from PIL import Image

    if isinstance(image, (str, Path)):
        try:
            return Path(image).read_bytes()
        except OSError as error:
            raise DetrDeployError(f"cannot read {image}: {error.strerror}") from None
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    raise DetrDeployError(f"cannot send a {type(image).__name__}; give a path, PIL image or uint8 array")


def parse_result(result_bytes: bytes, segment_map: np.ndarray = None) -> ImageResult:
    data = json.loads(result_bytes.decode())
    segments = data.pop("segments", None)
    result = ImageResult(**{key: value for key, value in data.items() if key != "detections"})
    result.detections = [Detection(**item) for item in data["detections"]]
    if segments is not None:
        result.segments = [Segment(**item) for item in segments]
        result.segment_map = segment_map
    return result


class DetectorClient:
    """One connection to ``model`` (the detector) at ``url`` ("127.0.0.1:8000" HTTP, ":8001" gRPC)."""

    def __init__(self, url: str, model: str, protocol: str = "http", timeout: float = 60.0):
        self.module = _module(protocol)
        self.protocol, self.model, self.timeout = protocol, model, timeout
        if protocol == "http":
            self.client = self.module.InferenceServerClient(url, network_timeout=timeout, connection_timeout=timeout)
        else:
            self.client = self.module.InferenceServerClient(url)

    def detect(self, image) -> ImageResult:
        """One image (path, PIL image, uint8 array or encoded bytes) -> its ImageResult (DetrDeployError saying the
        server's message when it refused the request)."""
        from tritonclient.utils import InferenceServerException

        data = image if isinstance(image, bytes) else encode_image(image)
        encoded = np.frombuffer(data, np.uint8)[None]
        request = self.module.InferInput(python_models.INPUT_IMAGE, list(encoded.shape), "UINT8")
        request.set_data_from_numpy(encoded)
        try:
            if self.protocol == "grpc":
                response = self.client.infer(self.model, [request], client_timeout=self.timeout)
            else:
                response = self.client.infer(self.model, [request])
        except InferenceServerException as error:
            raise DetrDeployError(f"{self.model}: {error.message()}") from None
        segment_map = response.as_numpy(python_models.OUTPUT_SEGMENT_MAP)
        return parse_result(
            response.as_numpy(python_models.OUTPUT_RESULT)[0].tobytes(),
            segment_map[0] if segment_map is not None else None,
        )

    def batch_sizes(self, model: str = None) -> dict[int, int]:
        """Batch size -> executions the server ran for ``model`` (default: the detector), from its statistics."""
        extra = {"as_json": True} if self.protocol == "grpc" else {}  # HTTP answers JSON anyway
        stats = self.client.get_inference_statistics(model or self.model, **extra)
        counts = {}
        for model_stats in stats["model_stats"]:
            for batch in model_stats.get("batch_stats", []):
                count = int(batch["compute_infer"].get("count", 0))
                if count:
                    counts[int(batch["batch_size"])] = counts.get(int(batch["batch_size"]), 0) + count
        return counts

    def close(self) -> None:
        self.client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


@dataclass
class LoadTestReport:
    clients: int
    requests: int
    seconds: float
    latencies_ms: list[float]
    errors: list[str] = field(default_factory=list)
    # (client, request index, image index, ImageResult) of every answered request, to check them against each image.
    results: list[tuple] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    @property
    def throughput(self) -> float:
        return len(self.latencies_ms) / self.seconds if self.seconds else 0.0

    def describe(self) -> str:
        return (
            f"{self.clients} clients x {self.requests // max(self.clients, 1)} requests: p50 "
            f"{self.percentile(50):.1f} ms, p99 {self.percentile(99):.1f} ms, {self.throughput:.1f} images/s, "
            f"{len(self.errors)} errors"
        )


def load_test(
    url: str, model: str, images: list, *, clients: int = 16, requests_per_client: int = 20, protocol: str = "http"
) -> LoadTestReport:
    """``clients`` threads, each with its own connection, each sending ``requests_per_client`` requests one after
    the other; client c's request r sends image (c + r) mod len(images). Latency: request sent to response read."""
    encoded = [image if isinstance(image, bytes) else encode_image(image) for image in images]
    latencies, errors, results = [], [], []
    lock = threading.Lock()
    start_barrier = threading.Barrier(clients)

    def client_loop(client_index: int) -> None:
        try:
            connection = DetectorClient(url, model, protocol)
        except Exception as error:  # tritonclient raises its own types for refused connections
            with lock:
                errors.append(f"client {client_index}: {error}")
            start_barrier.abort()
            return
        try:
            start_barrier.wait()
            for request_index in range(requests_per_client):
                image_index = (client_index + request_index) % len(encoded)
                began = time.perf_counter()
                try:
                    result = connection.detect(encoded[image_index])
                except Exception as error:
                    with lock:
                        errors.append(f"client {client_index} request {request_index}: {error}")
                    continue
                elapsed = (time.perf_counter() - began) * 1000.0
                with lock:
                    latencies.append(elapsed)
                    results.append((client_index, request_index, image_index, result))
        except threading.BrokenBarrierError:
            pass
        finally:
            connection.close()

    threads = [threading.Thread(target=client_loop, args=(index,)) for index in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    return LoadTestReport(clients, clients * requests_per_client, seconds, latencies, errors, results)
