"""The GPU check's steps without a GPU: which steps a machine allows and why not, the budget each step is given
and its enforcement, the child processes' timeouts, the reading of what the children wrote."""

import dataclasses
import json
import re
import sys
from pathlib import Path

import pytest

from detr_deploy.gpu_check import steps
from detr_deploy.gpu_check.plan import MAX_BUDGET_S, RESERVE_S, STEP_SHARES_S
from detr_deploy.gpu_check.report import FAILED, PASSED, SKIPPED, EngineParity, KernelBenchmark, StepResult
from tests.gpu_check.test_gpu_check_plan import timing

GPU_MACHINE = steps.Machine(
    gpu="NVIDIA H100 80GB HBM3",
    no_gpu_reason="",
    capability="90",
    nvcc=Path("/usr/local/cuda/bin/nvcc"),
    cmake="/usr/bin/cmake",
    tensorrt="tensorrt",
    missing_for_engines=[],
    has_pytest=True,
)


def machine(**changes) -> steps.Machine:
    return dataclasses.replace(GPU_MACHINE, **changes)


def test_without_a_gpu_every_step_is_skipped_saying_so():
    bare = machine(gpu=None, capability=None, no_gpu_reason="no CUDA GPU: torch 2.13.0+cpu is built without CUDA")
    for name in steps.STEPS:
        assert steps.planned_skip(name, bare, None).startswith("no CUDA GPU: torch 2.13.0+cpu is built without CUDA")
    assert "nothing to build for" in steps.planned_skip("build", bare, None)


def test_what_a_gpu_machine_lacks_skips_the_steps_that_need_it():
    assert all(steps.planned_skip(name, GPU_MACHINE, None) is None for name in steps.STEPS)
    no_nvcc = machine(nvcc=None)
    assert "nvcc not found" in steps.planned_skip("build", no_nvcc, None)
    assert "--kernel-library" in steps.planned_skip("build", no_nvcc, None)
    assert "no kernel library" in steps.planned_skip("tests", no_nvcc, None)
    assert "no kernel library" in steps.planned_skip("benchmark", no_nvcc, None)
    given = Path("libdetr_msda_cuda.so")
    assert "--kernel-library given" in steps.planned_skip("build", no_nvcc, given)
    assert steps.planned_skip("benchmark", no_nvcc, given) is None
    assert "pytest is not installed" in steps.planned_skip("tests", machine(has_pytest=False), None)
    assert "TensorRT is not installed" in steps.planned_skip("engines", machine(tensorrt=None), None)
    assert "onnx not installed" in steps.planned_skip("engines", machine(missing_for_engines=["onnx"]), None)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def fake_run(monkeypatch, tmp_path):
    """run_gpu_check on a pretend GPU machine with pretend steps: each takes the seconds ``spend`` says (on a fake
    clock) and returns the status ``outcome`` says; ``given`` records the timeout each was given."""
    clock = FakeClock()
    monkeypatch.setattr(steps.time, "monotonic", clock.monotonic)
    monkeypatch.setattr(steps, "inspect_machine", lambda: GPU_MACHINE)
    given, spend, outcome = {}, {}, {}

    def fake_step(name):
        def run(context, timeout_s):
            given[name] = timeout_s
            clock.now += min(spend.get(name, 1.0), timeout_s)
            if name == "build":
                context.kernel_library = Path("libdetr_msda_cuda.so")
            return StepResult(name, outcome.get(name, PASSED), "pretend", spend.get(name, 1.0))

        return run

    monkeypatch.setattr(steps, "STEP_FUNCTIONS", {name: fake_step(name) for name in steps.STEPS})

    def run(budget_s=MAX_BUDGET_S, **options):
        report = steps.run_gpu_check(run.out, budget_s=budget_s, work_dir=tmp_path / "work", **options)
        run.used = clock.now - 1000.0
        return report, given

    run.spend, run.outcome, run.out = spend, outcome, tmp_path / "out"
    return run


def test_each_step_gets_what_earlier_ones_left_less_what_later_ones_are_owed(fake_run):
    fake_run.spend.update(build=50.0, tests=10.0)
    report, given = fake_run()
    available = MAX_BUDGET_S - RESERVE_S
    assert given["build"] == available - (
        STEP_SHARES_S["tests"] + STEP_SHARES_S["benchmark"] + STEP_SHARES_S["engines"]
    )
    assert given["tests"] == available - 50.0 - (STEP_SHARES_S["benchmark"] + STEP_SHARES_S["engines"])
    assert given["benchmark"] == available - 60.0 - STEP_SHARES_S["engines"]
    assert given["engines"] == pytest.approx(available - 61.0)
    assert [step.timeout_s for step in report.steps] == [given[name] for name in steps.STEPS]
    assert report.passed and [step.status for step in report.steps] == [PASSED] * 4
    written = json.loads((fake_run.out / "gpu-check.json").read_text())
    assert written["passed"] is True and [step["timeout_s"] for step in written["steps"]] == list(given.values())


def test_a_step_that_uses_its_whole_time_leaves_later_ones_only_their_shares(fake_run):
    fake_run.spend.update(build=10_000.0)  # killed at its timeout: the fake clock moves by that much only
    fake_run.spend.update(tests=10_000.0, benchmark=10_000.0, engines=10_000.0)
    report, given = fake_run()
    assert given == STEP_SHARES_S
    assert fake_run.used == pytest.approx(MAX_BUDGET_S - RESERVE_S)


def test_steps_that_cannot_run_free_their_shares(monkeypatch, fake_run):
    monkeypatch.setattr(steps, "inspect_machine", lambda: machine(tensorrt=None))
    report, given = fake_run()
    assert "engines" not in given and report.steps[3].status == SKIPPED
    assert "TensorRT is not installed" in report.steps[3].reason
    assert given["benchmark"] == pytest.approx(MAX_BUDGET_S - RESERVE_S - 2.0)


def test_a_step_left_too_little_time_is_skipped_saying_the_budget_is_spent(fake_run):
    # 20 s for all: the build's scaled share is under MIN_STEP_S, so it is not started; the engines take the 20 s.
    fake_run.spend.update(engines=10_000.0)
    report, given = fake_run(budget_s=RESERVE_S + 20)
    assert report.steps[0].status == SKIPPED and report.steps[0].reason.startswith("budget spent: ")
    assert [step.reason for step in report.steps[1:3]] == ["no kernel library"] * 2
    assert given == {"engines": pytest.approx(20.0)} and fake_run.used == pytest.approx(20.0)


def test_a_failed_build_skips_what_needs_the_kernel_and_fails_the_check(fake_run, tmp_path):
    def failing_build(context, timeout_s):
        context.build_failed = True
        return StepResult("build", FAILED, "nvcc exit 1: error")

    steps.STEP_FUNCTIONS["build"] = failing_build
    report, given = fake_run()
    assert [step.status for step in report.steps] == [FAILED, SKIPPED, SKIPPED, PASSED]
    assert report.steps[1].reason == "no kernel library: the build step failed"
    assert not report.passed
    written = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    assert written["passed"] is False and written["steps"][0]["reason"] == "nvcc exit 1: error"


def test_a_child_past_its_timeout_is_killed_with_what_it_started(tmp_path):
    script = "import subprocess, sys, time; print(subprocess.Popen(['sleep', '60']).pid, flush=True); time.sleep(60)"
    # 8 s: the child must have started Python and its grandchild before the timeout, on a loaded machine too.
    run = steps.run_child([sys.executable, "-c", script], 8.0, cwd=tmp_path)
    assert run.timed_out and run.seconds < 30
    grandchild = Path(f"/proc/{int(run.output.split()[0])}/status")
    # Gone, or a zombie waiting for a parent to reap it: not running either way.
    assert not grandchild.exists() or re.search(r"State:\s+Z", grandchild.read_text())


def test_a_child_that_finishes_reports_its_exit_and_output(tmp_path):
    run = steps.run_child([sys.executable, "-c", "print('one'); print('two'); raise SystemExit(3)"], 30, cwd=tmp_path)
    assert run.returncode == 3 and not run.timed_out and run.tail() == "one | two"


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" tests="4">
<testcase classname="a" name="ok"/><testcase classname="a" name="bad"><failure message="assert 1 == 2"/></testcase>
<testcase classname="a" name="broken"><error message="fixture"/></testcase>
<testcase classname="a" name="later"><skipped type="pytest.skip" message="needs a CUDA GPU"/></testcase>
<testcase classname="a" name="later2"><skipped type="pytest.skip" message="needs a CUDA GPU"/></testcase>
</testsuite></testsuites>"""


def test_junit_counts(tmp_path):
    (tmp_path / "junit.xml").write_text(JUNIT)
    counts = steps.read_junit(tmp_path / "junit.xml")
    assert (counts.passed, counts.failed, counts.errors, counts.skipped) == (1, 1, 1, 2)
    assert counts.skip_reasons == ["needs a CUDA GPU"]


def _gpu_marked_files() -> dict[str, bool]:
    """tests/ files with a gpu mark -> whether they carry a trt mark too."""
    tests = Path(__file__).resolve().parents[1]
    marked = {}
    for path in tests.rglob("test_*.py"):
        text = path.read_text()
        if re.search(r"mark\.gpu\b", text):
            marked[str(path.relative_to(tests.parent))] = bool(re.search(r"mark\.trt\b", text))
    return marked


def test_the_gpu_test_files_are_those_with_gpu_tests_that_need_no_tensorrt():
    marked = _gpu_marked_files()
    assert "tests/runtime/test_tensorrt_runner.py" in marked  # gpu and trt: the engine step's job
    assert sorted(steps.GPU_TEST_FILES) == sorted(path for path, needs_trt in marked.items() if not needs_trt)


def test_the_tests_step_runs_the_gpu_tests_on_the_given_kernel(monkeypatch, tmp_path):
    seen = {}

    def fake_child(command, timeout_s, env=None, cwd=steps.REPO):
        seen.update(command=[str(part) for part in command], env=env, timeout=timeout_s)
        Path(command[command.index("--junitxml") + 1]).write_text(
            JUNIT.replace('<failure message="assert 1 == 2"/>', "")
        )
        return steps.ChildRun(1, "1 failed", 2.0)

    monkeypatch.setattr(steps, "run_child", fake_child)
    context = steps.CheckContext(GPU_MACHINE, tmp_path, tmp_path / "work", kernel_library=Path("/k/lib.so"))
    result = steps.tests_step(context, 99.0)
    assert seen["env"][steps.KERNEL_LIBRARY_VARIABLE] == "/k/lib.so" and seen["timeout"] == 99.0
    assert ["-m", steps.GPU_TEST_MARKERS] == seen["command"][seen["command"].index("-m", 3) :][:2]
    assert "--noconftest" in seen["command"] and seen["command"][-len(steps.GPU_TEST_FILES) :] == list(
        steps.GPU_TEST_FILES
    )
    assert result.status == FAILED and result.reason.startswith("2 passed, 0 failed, 1 errors, 2 skipped")
    assert (tmp_path / "tests.log").read_text().startswith("$ ")


def test_the_tests_step_skips_when_the_tests_cannot_import(monkeypatch, tmp_path):
    output = "E   ModuleNotFoundError: No module named 'numpy'\n1 error"
    monkeypatch.setattr(steps, "run_child", lambda *a, **k: steps.ChildRun(2, output, 1.0))
    context = steps.CheckContext(GPU_MACHINE, tmp_path, tmp_path, kernel_library=Path("lib.so"))
    result = steps.tests_step(context, 60.0)
    assert result.status == SKIPPED and result.reason == "the tests need numpy, not installed here"


@pytest.mark.parametrize("max_error, status", [(1e-3, PASSED), (1e-2, FAILED)])
def test_the_benchmark_step_reads_the_benchmark_json(monkeypatch, tmp_path, max_error, status):
    def fake_child(command, timeout_s, env=None, cwd=steps.REPO):
        result = KernelBenchmark("NVIDIA H100", 30, 3.35e12, "torch", [timing(kernel_max_error=max_error)])
        Path(command[command.index("--json") + 1]).write_text(json.dumps(dataclasses.asdict(result)))
        return steps.ChildRun(0 if status == PASSED else 1, "", 5.0)

    monkeypatch.setattr(steps, "run_child", fake_child)
    context = steps.CheckContext(GPU_MACHINE, tmp_path, tmp_path, kernel_library=Path("lib.so"))
    result = steps.benchmark_step(context, 60.0)
    assert result.status == status
    assert result.figures[0] == "physical bandwidth 3.35 TB/s: torch" and result.figures[1].startswith("encoder fp16")
    assert result.data["timings"][0]["kernel_max_error"] == max_error
    if status == FAILED:
        assert result.reason == "over tolerance: encoder fp16"


def test_the_benchmark_step_fails_saying_why_when_the_benchmark_wrote_nothing(monkeypatch, tmp_path):
    monkeypatch.setattr(steps, "run_child", lambda *a, **k: steps.ChildRun(1, "Traceback\nRuntimeError: boom", 3.0))
    context = steps.CheckContext(GPU_MACHINE, tmp_path, tmp_path, kernel_library=Path("lib.so"))
    result = steps.benchmark_step(context, 60.0)
    assert result.status == FAILED and result.reason == "exit 1: Traceback | RuntimeError: boom"


def test_the_kernel_builds_for_the_visible_gpu_only(tmp_path):
    context = steps.CheckContext(machine(tensorrt=None), tmp_path, tmp_path)
    (configure, build), how = steps.kernel_build_commands(context, tmp_path / "b")
    assert "-DCMAKE_CUDA_ARCHITECTURES=90" in configure and "-DDETR_DEPLOY_CUDA=ON" in configure
    assert build[build.index("--target") + 1] == "detr_msda_cuda" and "sm_90" in how
    (nvcc_only,), how = steps.kernel_build_commands(
        steps.CheckContext(machine(cmake=None), tmp_path, tmp_path), tmp_path / "b"
    )
    assert "-arch=sm_90" in nvcc_only and "nvcc alone" in how
    assert "-arch=sm_90" in steps.oss_schedule_command("nvcc", "90", tmp_path / "oss.so")


def _engine_rows(*passed) -> str:
    rows = [EngineParity(f"model{index}", "fp16", ok, 1e-3, 4.0) for index, ok in enumerate(passed)]
    return json.dumps([dataclasses.asdict(row) for row in rows])


@pytest.mark.parametrize(
    "returncode, rows, status, reason",
    [
        (0, _engine_rows(True, True), PASSED, "tensorrt, 2 engines (MSDeformAttn inlined), fp32 and fp16 parity"),
        (1, _engine_rows(True, False), FAILED, "failed: model1 fp16"),
        (None, _engine_rows(True), FAILED, "timed out after 1 engines"),
    ],
)
def test_the_engine_step_reports_every_engine_the_child_finished(
    monkeypatch, tmp_path, returncode, rows, status, reason
):
    def fake_child(command, timeout_s, env=None, cwd=steps.REPO):
        Path(command[command.index("--json") + 1]).write_text(rows)
        return steps.ChildRun(returncode, "", 50.0)

    monkeypatch.setattr(steps, "run_child", fake_child)
    result = steps.engines_step(steps.CheckContext(GPU_MACHINE, tmp_path, tmp_path), 200.0)
    assert result.status == status and result.reason.startswith(reason)
    assert len(result.figures) == len(json.loads(rows)) == len(result.data["engines"])


def test_the_engine_step_skips_when_an_import_is_missing(monkeypatch, tmp_path):
    output = "ModuleNotFoundError: No module named 'onnx_ir'"
    monkeypatch.setattr(steps, "run_child", lambda *a, **k: steps.ChildRun(1, output, 2.0))
    result = steps.engines_step(steps.CheckContext(GPU_MACHINE, tmp_path, tmp_path), 200.0)
    assert result.status == SKIPPED and result.reason == "the engines need onnx_ir, not installed here"
