"""The real CLI: benchmark prints a latency table and writes the same figures as JSON; warm-up is excluded."""

import json

from detr_deploy.benchmark import measure
from tests.helpers import assert_one_line_error
from tests.helpers import run_cli as run


def test_benchmark_eager_and_onnxruntime_table_and_json(tiny_export, tmp_path):
    report = tmp_path / "latency.json"
    result = run(
        "benchmark",
        "--onnx",
        tiny_export("deformable_detr_r50"),
        "--sizes",
        "160x224",
        "--batch-sizes",
        "1,2",
        "--warmup",
        "1",
        "--iterations",
        "4",
        "--json",
        report,
    )
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["model"] == "tiny_deformable_detr_r50" and data["warmup"] == 1
    rows = [(r["backend"], r["batch"], r["height"], r["width"]) for r in data["results"]]
    assert rows == [
        ("eager", 1, 160, 224),
        ("onnxruntime", 1, 160, 224),
        ("eager", 2, 160, 224),
        ("onnxruntime", 2, 160, 224),
    ]
    for r in data["results"]:
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] and r["iterations"] == 4
        assert abs(r["images_per_second"] - r["batch"] * 1000 / r["mean_ms"]) < 1e-6 * r["images_per_second"]
    table = result.output.splitlines()
    assert any(line.startswith("onnxruntime") and "160x224" in line for line in table)


def test_warmup_runs_are_not_timed():
    calls = []
    times = measure(lambda: calls.append(1), warmup=3, iterations=5)
    assert len(calls) == 8 and times.shape == (5,)


def test_benchmark_errors(tiny_export, tmp_path):
    onnx_path = tiny_export("detr_r50")
    assert_one_line_error(run("benchmark"), "give --onnx")
    assert_one_line_error(run("benchmark", "--onnx", onnx_path, "--backends", "tensorrt"), "needs --engine")
    assert_one_line_error(run("benchmark", "--onnx", onnx_path, "--backends", "gpu"), "unknown --backends value 'gpu'")
    assert_one_line_error(run("benchmark", "--onnx", onnx_path, "--iterations", "0"), "--iterations must be from 1")
