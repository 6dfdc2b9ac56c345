"""The test engine store (tests/engine_store.py) answers a build as the real build did, and builds for real what it
must not answer."""

from unittest import mock

import onnx
import pytest
from onnx import TensorProto, helper

from detr_deploy.sidecar import read_sidecar
from exporters.engine_build import build_engine
from tests.engine_store import _REAL_RUN_WORKER, EngineStore
from tests.export_store import ExportStore

pytestmark = pytest.mark.trt


def relu_onnx(path, size: int = 8):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, size])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(path))
    return path


def test_a_stored_build_is_the_recorded_build_and_other_jobs_build_for_real(tmp_path):
    pytest.importorskip("tensorrt_rtx_bindings", reason="the ahead-of-time build needs TensorRT-RTX")
    store = EngineStore(ExportStore(tmp_path / "store"))  # not the suite's: every key starts cold
    jobs = []

    def counting_worker(job, on_event):
        jobs.append(job)
        return _REAL_RUN_WORKER(job, on_event)

    onnx_path = relu_onnx(tmp_path / "relu.onnx")
    builds = []
    with mock.patch("tests.engine_store._REAL_RUN_WORKER", counting_worker):
        with mock.patch("exporters.engine_build._run_worker", store.run_worker):
            for name in ("a", "b"):
                events = []
                build = build_engine(onnx_path, tmp_path / f"{name}.engine", compute_capability=89,
                                     on_event=events.append)  # fmt: skip
                builds.append((build, events, (tmp_path / f"{name}.engine").read_bytes()))
            assert len(jobs) == 1  # the second was answered from the store
            (first, first_events, first_bytes), (second, second_events, second_bytes) = builds
            assert second_bytes == first_bytes and second_events == first_events and first_events
            assert second.sidecar == read_sidecar(tmp_path / "b.engine")
            assert {**vars(second.sidecar), "engine_file": "a.engine"} == vars(first.sidecar)
            # Another workspace, a timing cache, another file: each builds for real.
            build_engine(onnx_path, tmp_path / "c.engine", compute_capability=89, workspace_mib=64)
            build_engine(onnx_path, tmp_path / "d.engine", compute_capability=89, timing_cache=tmp_path / "t.cache")
            build_engine(relu_onnx(tmp_path / "other.onnx", 16), tmp_path / "e.engine", compute_capability=89)
            assert len(jobs) == 4
