"""The GPU check's pure logic: the budget split between steps, the physical memory bandwidth, the summary."""

import dataclasses
import json
from types import SimpleNamespace

import pytest

from detr_deploy.gpu_check import plan
from detr_deploy.gpu_check.plan import (
    MAX_BUDGET_S,
    RESERVE_S,
    STEP_SHARES_S,
    bandwidth_from_clock,
    bandwidth_from_name,
    physical_bandwidth,
    scaled_shares,
    step_timeout,
)
from detr_deploy.gpu_check.report import (
    FAILED,
    PASSED,
    SKIPPED,
    EngineParity,
    GpuCheckReport,
    KernelBenchmark,
    KernelTiming,
    StepResult,
    format_engine,
    format_timing,
)


def test_the_full_budget_is_at_most_eight_minutes_and_the_shares_fit_in_it():
    assert MAX_BUDGET_S == 480
    assert sum(scaled_shares(MAX_BUDGET_S).values()) <= MAX_BUDGET_S - RESERVE_S
    assert scaled_shares(MAX_BUDGET_S) == STEP_SHARES_S


def test_a_smaller_budget_scales_every_share_down_alike():
    shares = scaled_shares(RESERVE_S + 100)
    assert sum(shares.values()) == pytest.approx(100)
    full = sum(STEP_SHARES_S.values())
    assert all(shares[name] == pytest.approx(100 * STEP_SHARES_S[name] / full) for name in STEP_SHARES_S)


@pytest.mark.parametrize("budget", [MAX_BUDGET_S + 1, RESERVE_S, 0])
def test_budgets_outside_the_range_are_refused(budget):
    with pytest.raises(ValueError, match="outside"):
        scaled_shares(budget)


def test_a_step_takes_what_is_left_but_what_later_steps_are_owed():
    assert step_timeout(400, [100, 50]) == 250
    assert step_timeout(400, []) == 400
    assert step_timeout(100, [150]) == 0


def test_bandwidth_from_the_memory_clock_and_bus_width_is_double_data_rate():
    # H100 SXM as CUDA reports it: 2619 MHz, 5120-bit HBM3; its data sheet says 3.35 TB/s.
    assert bandwidth_from_clock(2_619_000, 5120) == pytest.approx(3.35e12, rel=0.01)
    assert bandwidth_from_clock(1_000_000, 64) == 2 * 1e9 * 8


@pytest.mark.parametrize(
    "name, expected",
    [
        ("NVIDIA H100 80GB HBM3", 3.35e12),
        ("NVIDIA H100 PCIe", 2.0e12),
        ("NVIDIA H200", 4.8e12),
        ("NVIDIA A100-SXM4-40GB", 1.555e12),
        ("NVIDIA A10G", 0.6e12),  # not an A100
        ("NVIDIA L40S", 0.864e12),  # not an L4
        ("NVIDIA L4", 0.3e12),
    ],
)
def test_the_data_sheet_table_takes_the_most_specific_name(name, expected):
    found = bandwidth_from_name(name)
    assert found.bytes_per_s == expected and "data sheet" in found.source


def test_an_unknown_device_has_no_figure_and_says_so():
    found = bandwidth_from_name("Some Future GPU")
    assert found.bytes_per_s is None and "unknown" in found.source and "Some Future GPU" in found.source


def test_torch_properties_come_first_then_the_driver_then_the_table(monkeypatch):
    with_clock = SimpleNamespace(name="NVIDIA H100 80GB HBM3", memory_clock_rate=2_619_000, memory_bus_width=5120)
    found = physical_bandwidth(with_clock)
    assert found.bytes_per_s == bandwidth_from_clock(2_619_000, 5120)
    assert "torch.cuda.get_device_properties" in found.source and "2619 MHz" in found.source

    without_clock = SimpleNamespace(name="NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(plan, "_driver_memory_attributes", lambda index: (1_593_000, 5120))
    found = physical_bandwidth(without_clock)
    assert found.bytes_per_s == bandwidth_from_clock(1_593_000, 5120) and "CUDA driver" in found.source

    monkeypatch.setattr(plan, "_driver_memory_attributes", lambda index: None)
    assert physical_bandwidth(without_clock).bytes_per_s == 3.35e12


def test_the_driver_query_answers_none_without_a_gpu():
    # This machine has no GPU (or no libcuda): the query must not raise.
    attributes = plan._driver_memory_attributes(0)
    assert attributes is None or all(value > 0 for value in attributes)


def timing(**changes) -> KernelTiming:
    values = dict(
        shape="encoder",
        precision="fp16",
        sampling_precision="float16",
        kernel_max_error=1e-3,
        tolerance=5e-3,
        reference_ms=4.0,
        kernel_ms=0.5,
        oss_schedule_ms=1.0,
        oss_schedule_max_error=2e-2,
        bytes_moved=1_000_000_000,
        kernel_bytes_per_s=2e12,
    )
    return KernelTiming(**{**values, **changes})


def test_a_benchmark_row_line_has_parity_times_and_the_share_of_peak():
    line = format_timing(timing(), peak_bytes_per_s=4e12)
    assert "max err 1.0e-03 <= 5e-03 ok" in line
    assert "ours 0.500 ms" in line and "reference 4.000 ms (8.0x ours)" in line
    assert "OSS schedule 1.000 ms (2.0x ours)" in line and "2000 GB/s = 50% of peak" in line
    over = format_timing(timing(kernel_max_error=1e-2, oss_schedule_ms=None), peak_bytes_per_s=None)
    assert "OVER" in over and "OSS schedule n/a" in over and "of peak" not in over
    assert not timing(kernel_max_error=1e-2).passed


def test_the_benchmark_json_reads_back():
    result = KernelBenchmark("NVIDIA H100", 30, 3.35e12, "data sheet", [timing(), timing(precision="bf16")])
    assert KernelBenchmark.from_dict(json.loads(json.dumps(dataclasses.asdict(result)))) == result


def test_the_summary_table_has_one_row_per_step_its_figures_and_the_verdict():
    report = GpuCheckReport(device="NVIDIA H100", budget_s=480, seconds=200)
    report.steps = [
        StepResult("build", PASSED, "cmake target detr_msda_cuda, sm_90", 40.0, 150.0),
        StepResult("tests", SKIPPED, "pytest is not installed"),
        StepResult("benchmark", FAILED, "over tolerance: encoder fp16", 30.0, 95.0, figures=["encoder fp16: ..."]),
        StepResult("engines", SKIPPED, "TensorRT is not installed"),
    ]
    text = report.render()
    rows = text.splitlines()
    assert rows[0] == "GPU check (NVIDIA H100): 200 s of a 480 s budget"
    assert [
        row.split()[0] for row in rows if row.split()[:1] in (["build"], ["tests"], ["benchmark"], ["engines"])
    ] == [
        "build",
        "tests",
        "benchmark",
        "engines",
    ]
    assert any(row.startswith("build") and "PASSED" in row and "40.0 / 150" in row for row in rows)
    assert any(row.startswith("tests") and "SKIPPED" in row and "0.0 / -" in row for row in rows)
    assert any(row.strip() == "encoder fp16: ..." for row in rows)
    assert rows[-1] == "FAILED: benchmark" and not report.passed
    data = json.loads(report.to_json())
    assert data["passed"] is False and [step["status"] for step in data["steps"]] == [PASSED, SKIPPED, FAILED, SKIPPED]
    report.steps[2].status = SKIPPED
    assert report.passed and report.render().splitlines()[-1] == "nothing failed"


def test_an_engine_row_line():
    line = format_engine(EngineParity("detr_r101", "fp16", True, 3e-3, 12.0, "2 cases, 0 detections matched"))
    assert line == "detr_r101 fp16: ok, max abs err 3.0e-03, built in 12 s (2 cases, 0 detections matched)"
    assert "FAILED, max abs err -" in format_engine(EngineParity("dino_4scale_r50", "fp32", False, None, 0.0))
