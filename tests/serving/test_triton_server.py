"""A real tritonserver on 127.0.0.1 serving the python flavour of a repository written from a tiny RT-DETR export:
HTTP and gRPC answers equal the Detector's on the same images; a bounded load test (16 clients x 20 requests, mixed
image sizes) with dynamic batching observed in the server's statistics. Skips when tritonserver or tritonclient is
absent: pip install --no-deps nvidia-pytriton; pip install "tritonclient[http,grpc]"."""

import importlib.util
import os

import numpy as np
import pytest
from PIL import Image

from detr_deploy.triton.server import find_tritonserver

pytestmark = [
    pytest.mark.skipif(
        find_tritonserver() is None, reason="tritonserver is not installed: pip install --no-deps nvidia-pytriton"
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("tritonclient") is None,
        reason='tritonclient is not installed: pip install "tritonclient[http,grpc]"',
    ),
]

SIZES = [(120, 160), (200, 150), (96, 96), (150, 250), (64, 300)]
THRESHOLD = 0.0  # random weights score low: every (query, class) of the top-k is compared


@pytest.fixture(scope="module")
def served(tiny_export, tmp_path_factory):
    """(server, detector model name, image paths, the Detector's results on them); the server is stopped by its pid
    whatever happens."""
    from detr_deploy.detector import Detector
    from detr_deploy.triton.repository import TritonOptions, write_repository
    from detr_deploy.triton.server import TritonServer

    folder = tmp_path_factory.mktemp("triton")
    onnx = tiny_export("rtdetr_r18vd")
    rng = np.random.default_rng(0)
    paths = []
    for index, (height, width) in enumerate(SIZES):
        path = folder / f"image{index}.{'png' if index % 2 else 'jpg'}"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    expected = Detector.open(onnx, score_threshold=THRESHOLD).detect(paths)
    options = TritonOptions(name="tiny", score_threshold=THRESHOLD, cpu_threads=1)
    written = write_repository(folder / "repository", onnx=onnx, flavours=["python"], options=options)
    server = TritonServer(written.path, work_dir=folder / "server", models=written.models["python"])
    server.start()
    try:
        yield server, written.models["python"][0], paths, expected
    finally:
        pid = server.pid
        server.stop()
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def assert_same(result, expected):
    assert result.error is None and (result.width, result.height) == (expected.width, expected.height)
    assert len(result.detections) == len(expected.detections) > 0
    for got, want in zip(result.detections, expected.detections):
        assert (got.label, got.name) == (want.label, want.name)
        assert got.score == pytest.approx(want.score, abs=1e-4)
        np.testing.assert_allclose(got.box, want.box, atol=0.05)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_detections_equal_the_detectors(served, protocol):
    from detr_deploy.triton.client import DetectorClient

    server, model, paths, expected = served
    url = server.http_url if protocol == "http" else server.grpc_url
    with DetectorClient(url, model, protocol) as client:
        for path, want in zip(paths, expected):
            assert_same(client.detect(path), want)
        # A uint8 array goes as PNG (lossless): the same pixels, the same detections.
        assert_same(client.detect(np.asarray(Image.open(paths[0]).convert("RGB"))), expected[0])


def test_unreadable_image_is_refused_alone(served):
    from detr_deploy.errors import DetrDeployError
    from detr_deploy.triton.client import DetectorClient

    server, model, paths, expected = served
    with DetectorClient(server.http_url, model) as client:
        with pytest.raises(DetrDeployError, match="cannot read the image"):
            client.detect(b"not an image")
        assert_same(client.detect(paths[1]), expected[1])


@pytest.mark.slow
def test_load_with_dynamic_batching(served, record_property):
    from detr_deploy.triton.client import DetectorClient, load_test

    server, model, paths, expected = served
    with DetectorClient(server.http_url, model) as client:
        before = client.batch_sizes()
    report = load_test(server.http_url, model, paths, clients=16, requests_per_client=20)
    record_property("figure", f"triton load test: {report.describe()}")
    assert report.errors == []
    assert len(report.results) == 16 * 20
    for _, _, image_index, result in report.results:  # each response is its own image's
        assert_same(result, expected[image_index])
    with DetectorClient(server.http_url, model) as client:
        after = client.batch_sizes()
        network = client.batch_sizes(f"{model}_network")
    ran = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    record_property("figure", f"triton batch sizes run: detector {ran}, network {network}")
    assert sum(size * count for size, count in ran.items()) == 16 * 20
    assert max(size for size, count in ran.items() if count) > 1
    assert max(network) > 1
