"""The GPU check's steps. Each runs in a child process (its own session, killed with everything it started when its
timeout passes), so that no step can take the time of the steps after it:

1. ``build``: the CUDA kernel library (CMake target ``detr_msda_cuda``, or nvcc alone without CMake) for the
   visible GPU's compute capability only, and the TensorRT OSS schedule the benchmark compares with.
2. ``tests``: the ``gpu``-marked tests that need no TensorRT (``GPU_TEST_FILES``), on the library just built.
3. ``benchmark``: benchmarks/msda_kernel.py: parity per precision, times, achieved bytes/s against the physical
   memory bandwidth.
4. ``engines``: with TensorRT or TensorRT-RTX, an engine of every family's tiny model in fp32 and fp16 against eager
   PyTorch (``detr_deploy.gpu_check.engines``).
"""

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path

from detr_deploy.gpu_check.plan import MIN_STEP_S, RESERVE_S, scaled_shares, step_timeout
from detr_deploy.gpu_check.report import (
    FAILED,
    PASSED,
    SKIPPED,
    EngineParity,
    GpuCheckReport,
    KernelBenchmark,
    StepResult,
    format_engine,
    format_timing,
)
from detr_deploy.io import atomic_output
from detr_deploy.plugins import CUDA_LIBRARY, PLUGIN_LIBRARY, PLUGIN_SOURCES, find_nvcc, find_tensorrt_include

REPO = PLUGIN_SOURCES.parent
STEPS = ("build", "tests", "benchmark", "engines")
# The files holding the gpu-marked tests that need no TensorRT (tests/gpu_check/test_steps.py keeps this list in
# step with the marks in tests/). pytest collects only these, and without the conftest.py files
# (``--noconftest``): tests/conftest.py's session fixtures need filelock and onnx (the export and engine stores),
# which a lent GPU machine may lack, and these tests use none of its fixtures; only torch and numpy are needed.
GPU_TEST_FILES = ("tests/plugins/test_msda_cuda_kernel.py",)
GPU_TEST_MARKERS = "gpu and not trt"
# Read by tests/plugins/test_msda_cuda_kernel.py: the kernel library the build step made, so the test does not
# build it a second time.
KERNEL_LIBRARY_VARIABLE = "DETR_DEPLOY_CUDA_KERNEL"
OSS_LIBRARY = "libmsda_oss_schedule.so"
OSS_SCHEDULE_SOURCE = REPO / "benchmarks" / "msda_oss_schedule.cu"
BENCHMARK_RUNS = 30
# What the engine step imports besides torch and TensorRT: the export (onnx, onnxscript for torch.onnx's dynamo
# exporter), the fp16 graph pass (ml_dtypes), parity's detection matching (scipy).
ENGINE_MODULES = ("onnx", "onnxscript", "ml_dtypes", "scipy")
# The last lines of a failing child's output kept in the step's reason (the whole output is in its log file).
TAIL_LINES = 3


@dataclass
class ChildRun:
    returncode: int | None  # None: killed at its timeout
    output: str  # stdout and stderr, interleaved
    seconds: float

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    def tail(self, lines: int = TAIL_LINES) -> str:
        return " | ".join(line.strip() for line in self.output.strip().splitlines()[-lines:])


def run_child(command: list, timeout_s: float, *, env: dict = None, cwd=REPO) -> ChildRun:
    """Run ``command`` in a session of its own; past ``timeout_s`` kill it and every process it started."""
    started = time.monotonic()
    child = subprocess.Popen(
        [str(part) for part in command],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    try:
        output, _ = child.communicate(timeout=max(timeout_s, 0.1))
        returncode = child.returncode
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        output, _ = child.communicate()
        # The pipe closes before a killed process has finished exiting: wait until the group is gone, so that the
        # next step does not start beside a dying process that still holds GPU memory.
        wait_for_group_to_exit(child.pid, timeout_s=10.0)
        returncode = None
    return ChildRun(returncode, output, time.monotonic() - started)


def running_in_group(group_id: int) -> list[int]:
    """The processes of process group ``group_id`` that have not exited (zombies count as exited); Linux /proc."""
    running = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name (field 2) is in parentheses and may hold spaces: split after its closing one.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited while we looked
        state, process_group = fields[0], int(fields[2])
        if process_group == group_id and state not in ("Z", "X"):
            running.append(int(stat.parent.name))
    return running


def wait_for_group_to_exit(group_id: int, timeout_s: float) -> bool:
    """True once no process of ``group_id`` runs; False if some still do after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while running_in_group(group_id):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@dataclass
class Machine:
    """What this machine has, looked up before any step runs."""

    gpu: str | None  # the device name; None without a GPU visible to torch
    no_gpu_reason: str
    capability: str | None  # "90" for compute capability 9.0
    nvcc: Path | None
    cmake: str | None
    tensorrt: str | None  # the importable flavour: "tensorrt" or "tensorrt-rtx"
    missing_for_engines: list[str]  # modules the engine step needs that are not installed
    has_pytest: bool


def inspect_machine() -> Machine:
    import importlib.util

    import torch

    from detr_deploy.tensorrt_flavours import FLAVOURS, is_installed

    gpu = capability = None
    if not torch.cuda.is_available():
        reason = (
            f"torch {torch.__version__} is built without CUDA"
            if torch.version.cuda is None
            else f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU"
        )
    else:
        reason = ""
        gpu = torch.cuda.get_device_name()
        major, minor = torch.cuda.get_device_capability()
        capability = f"{major}{minor}"
    return Machine(
        gpu=gpu,
        no_gpu_reason=f"no CUDA GPU: {reason}",
        capability=capability,
        nvcc=find_nvcc(),
        cmake=shutil.which("cmake"),
        tensorrt=next((flavour for flavour in FLAVOURS if is_installed(flavour)), None),
        missing_for_engines=[name for name in ENGINE_MODULES if importlib.util.find_spec(name) is None],
        has_pytest=importlib.util.find_spec("pytest") is not None,
    )


@dataclass
class CheckContext:
    machine: Machine
    output_dir: Path  # the report, the logs, the steps' JSON
    work_dir: Path  # builds and engines (not copied back with the report)
    kernel_library: Path | None = None
    oss_library: Path | None = None
    plugin_library: Path | None = None
    build_failed: bool = False
    logs: dict = field(default_factory=dict)

    def log(self, step: str, run: ChildRun, command: list) -> None:
        """Keep the child's whole output in ``<step>.log`` beside the report."""
        text = (
            f"$ {' '.join(str(part) for part in command)}\n{run.output}\n[exit {run.returncode}, {run.seconds:.1f} s]\n"
        )
        self.logs[step] = self.logs.get(step, "") + text
        (self.output_dir / f"{step}.log").write_text(self.logs[step])


def planned_skip(name: str, machine: Machine, given_kernel: Path | None) -> str | None:
    """Why step ``name`` cannot run on ``machine`` at all (known before anything runs), or None."""
    if machine.gpu is None:
        if name == "build":
            return (
                f"{machine.no_gpu_reason}: nothing to build for "
                "(tests/plugins/test_msda_cuda_build.py checks the compile without one)"
            )
        return machine.no_gpu_reason
    if name == "build":
        if given_kernel is not None:
            return f"--kernel-library given: {given_kernel}"
        if machine.nvcc is None:
            return (
                "nvcc not found (CUDACXX, PATH, CUDA_PATH, /usr/local/cuda): give a libdetr_msda_cuda.so built "
                "elsewhere with --kernel-library"
            )
    if name in ("tests", "benchmark") and machine.nvcc is None and given_kernel is None:
        return "no kernel library: nvcc not found and no --kernel-library given"
    if name == "tests" and not machine.has_pytest:
        return "pytest is not installed (the benchmark step still checks the kernel's parity)"
    if name == "engines":
        if machine.tensorrt is None:
            return "TensorRT is not installed: neither tensorrt nor tensorrt_rtx_bindings imports"
        if machine.missing_for_engines:
            return f"{', '.join(machine.missing_for_engines)} not installed: no ONNX export to build engines from"
    return None


def oss_schedule_command(nvcc, architecture: str, output) -> list[str]:
    """The nvcc command compiling benchmarks/msda_oss_schedule.cu (TensorRT OSS's kernel schedule, for the benchmark)
    for ``architecture`` ("90") into ``output``."""
    command = [str(nvcc), "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", "-cudart", "static"]
    return command + [f"-arch=sm_{architecture}", str(OSS_SCHEDULE_SOURCE), "-o", str(output)]


def kernel_build_commands(context: CheckContext, build_dir: Path) -> tuple[list[list], str]:
    """The commands that build the kernel library into ``build_dir`` for the visible GPU only, and what they are."""
    machine = context.machine
    library = build_dir / CUDA_LIBRARY
    if machine.cmake is None:
        # CMake's detr_msda_cuda target, by hand: the launcher with hidden symbols but its C ABI, static runtime.
        command = [machine.nvcc, "-O3", "-DNDEBUG", "-std=c++17", "-shared", "-Xcompiler", "-fPIC,-fvisibility=hidden"]
        command += ["-cudart", "static", f"-arch=sm_{machine.capability}"]
        command += [PLUGIN_SOURCES / "msda" / "msdaLauncher.cu", "-o", library]
        return [command], f"nvcc alone (no cmake), sm_{machine.capability}"
    targets = ["detr_msda_cuda"]
    # The plugin library too, where the engine step can use it (TensorRT importable and its headers found).
    if machine.tensorrt is not None and find_tensorrt_include() is not None:
        targets.append("detr_deploy_plugins")
    configure = ["cmake", "-S", PLUGIN_SOURCES, "-B", build_dir, "-DCMAKE_BUILD_TYPE=Release"]
    configure += ["-DDETR_DEPLOY_CUDA=ON", f"-DCMAKE_CUDA_COMPILER={machine.nvcc}"]
    configure += [f"-DCMAKE_CUDA_ARCHITECTURES={machine.capability}"]
    build = ["cmake", "--build", build_dir, "--target", *targets, "-j", str(os.cpu_count() or 2)]
    return [configure, build], f"cmake target {' + '.join(targets)}, sm_{machine.capability}"


def build_step(context: CheckContext, timeout_s: float) -> StepResult:
    machine = context.machine
    build_dir = context.work_dir / f"plugins-sm{machine.capability}"
    build_dir.mkdir(parents=True, exist_ok=True)
    commands, how = kernel_build_commands(context, build_dir)
    oss_library = build_dir / OSS_LIBRARY
    commands.append(oss_schedule_command(machine.nvcc, machine.capability, oss_library))
    deadline = time.monotonic() + timeout_s
    seconds = 0.0
    for command in commands:
        run = run_child(command, deadline - time.monotonic())
        context.log("build", run, command)
        seconds += run.seconds
        if run.timed_out or run.returncode != 0:
            context.build_failed = True
            what = "timed out" if run.timed_out else f"exit {run.returncode}"
            return StepResult("build", FAILED, f"{Path(str(command[0])).name} {what}: {run.tail()}", seconds)
    context.kernel_library = build_dir / CUDA_LIBRARY
    context.oss_library = oss_library
    plugin = build_dir / PLUGIN_LIBRARY
    context.plugin_library = plugin if plugin.is_file() else None
    built = [CUDA_LIBRARY, OSS_LIBRARY] + ([PLUGIN_LIBRARY] if context.plugin_library else [])
    return StepResult("build", PASSED, f"{how} (nvcc {machine.nvcc}): {', '.join(built)}", seconds)


@dataclass
class TestCounts:
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    skip_reasons: list[str] = field(default_factory=list)  # each once


def read_junit(path: Path) -> TestCounts:
    """Pass/fail/error/skip counts of a pytest ``--junitxml`` file, and the skips' reasons."""
    counts = TestCounts()
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        outcome = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        if outcome is None:
            counts.passed += 1
        elif outcome.tag == "failure":
            counts.failed += 1
        elif outcome.tag == "error":
            counts.errors += 1
        else:
            counts.skipped += 1
            if outcome.get("message", "") not in counts.skip_reasons:
                counts.skip_reasons.append(outcome.get("message", ""))
    return counts


def tests_step(context: CheckContext, timeout_s: float) -> StepResult:
    junit = context.output_dir / "tests-junit.xml"
    junit.unlink(missing_ok=True)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--noconftest", "-m", GPU_TEST_MARKERS]
    command += ["--junitxml", junit, *GPU_TEST_FILES]
    env = {**os.environ, KERNEL_LIBRARY_VARIABLE: str(context.kernel_library)}
    run = run_child(command, timeout_s, env=env)
    context.log("tests", run, command)
    counts = read_junit(junit) if junit.is_file() else TestCounts()
    data = dataclasses.asdict(counts)
    summary = f"{counts.passed} passed, {counts.failed} failed, {counts.errors} errors, {counts.skipped} skipped"
    where = f'pytest -m "{GPU_TEST_MARKERS}" {" ".join(GPU_TEST_FILES)}'
    if run.timed_out:
        return StepResult("tests", FAILED, f"timed out ({summary} by then)", run.seconds, data=data)
    missing = re.search(r"ModuleNotFoundError: No module named '([^']+)'", run.output)
    if missing and counts.passed + counts.failed == 0:
        return StepResult("tests", SKIPPED, f"the tests need {missing[1]}, not installed here", run.seconds, data=data)
    if counts.failed or counts.errors or run.returncode not in (0, 5):
        return StepResult("tests", FAILED, f"{summary}: {run.tail()}", run.seconds, data=data)
    if counts.passed == 0:
        reasons = "; ".join(counts.skip_reasons) or "none collected"
        return StepResult("tests", SKIPPED, f"no test ran ({reasons})", run.seconds, data=data)
    return StepResult("tests", PASSED, f"{summary} ({where})", run.seconds, data=data)


def benchmark_step(context: CheckContext, timeout_s: float) -> StepResult:
    output = context.output_dir / "kernel-benchmark.json"
    output.unlink(missing_ok=True)
    command = [sys.executable, REPO / "benchmarks" / "msda_kernel.py", "--kernel-library", context.kernel_library]
    command += ["--runs", str(BENCHMARK_RUNS), "--json", output]
    if context.oss_library is not None:
        command += ["--oss-library", context.oss_library]
    run = run_child(command, timeout_s)
    context.log("benchmark", run, command)
    if run.timed_out:
        return StepResult("benchmark", FAILED, "timed out", run.seconds)
    if not output.is_file():
        return StepResult("benchmark", FAILED, f"exit {run.returncode}: {run.tail()}", run.seconds)
    result = KernelBenchmark.from_dict(json.loads(output.read_text()))
    peak = "unknown" if result.peak_bytes_per_s is None else f"{result.peak_bytes_per_s / 1e12:.2f} TB/s"
    figures = [f"physical bandwidth {peak}: {result.peak_source}"]
    figures += [format_timing(timing, result.peak_bytes_per_s) for timing in result.timings]
    over = [f"{t.shape} {t.precision}" for t in result.timings if not t.passed]
    oss = "" if context.oss_library else "; no OSS schedule (not built)"
    reason = f"median of {result.runs} runs, parity against the fp32 reference{oss}"
    status = PASSED
    if over or run.returncode != 0:
        status, reason = FAILED, f"over tolerance: {', '.join(over)}" if over else f"exit {run.returncode}"
    return StepResult("benchmark", status, reason, run.seconds, figures=figures, data=dataclasses.asdict(result))


def engines_step(context: CheckContext, timeout_s: float) -> StepResult:
    output = context.output_dir / "engines.json"
    output.unlink(missing_ok=True)
    command = [sys.executable, "-m", "detr_deploy.gpu_check.engines", "--json", output]
    command += ["--work-dir", context.work_dir / "engines"]
    if context.plugin_library is not None:
        command += ["--plugin-library", context.plugin_library]
    run = run_child(command, timeout_s)
    context.log("engines", run, command)
    rows = [EngineParity(**row) for row in json.loads(output.read_text())] if output.is_file() else []
    data = {"engines": [dataclasses.asdict(row) for row in rows]}
    missing = re.search(r"ModuleNotFoundError: No module named '([^']+)'", run.output)
    if missing and not rows:
        return StepResult("engines", SKIPPED, f"the engines need {missing[1]}, not installed here", run.seconds)
    figures = [format_engine(row) for row in rows]
    plugin = f"our plugin {context.plugin_library.name}" if context.plugin_library else "MSDeformAttn inlined"
    if run.timed_out:
        reason = f"timed out after {len(rows)} engines"
        return StepResult("engines", FAILED, reason, run.seconds, figures=figures, data=data)
    failed = [f"{row.model} {row.precision}" for row in rows if not row.passed]
    if run.returncode != 0 or failed:
        reason = f"failed: {', '.join(failed)}" if failed else f"exit {run.returncode}: {run.tail()}"
        return StepResult("engines", FAILED, reason, run.seconds, figures=figures, data=data)
    reason = f"{context.machine.tensorrt}, {len(rows)} engines ({plugin}), fp32 and fp16 parity against eager"
    return StepResult("engines", PASSED, reason, run.seconds, figures=figures, data=data)


STEP_FUNCTIONS = {"build": build_step, "tests": tests_step, "benchmark": benchmark_step, "engines": engines_step}


def _dynamic_skip(name: str, context: CheckContext) -> str | None:
    """Why step ``name`` cannot run after what the earlier steps did, or None."""
    if name in ("tests", "benchmark") and context.kernel_library is None:
        return "no kernel library: the build step failed" if context.build_failed else "no kernel library"
    return None


def run_gpu_check(
    output_dir,
    *,
    budget_s: float,
    work_dir=None,
    kernel_library=None,
    on_step=None,
) -> GpuCheckReport:
    """Run every step that this machine allows within ``budget_s`` seconds in all, and write the report
    (``gpu-check.json``) and each step's log into ``output_dir``. ``kernel_library``: a libdetr_msda_cuda.so built
    elsewhere, used instead of building one. ``on_step`` sees each step's result as it is done."""
    started = time.monotonic()
    shares = scaled_shares(budget_s)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    machine = inspect_machine()
    context = CheckContext(
        machine,
        output_dir,
        Path(work_dir) if work_dir else REPO / "build" / "gpu-check-work",
        kernel_library=Path(kernel_library) if kernel_library else None,
    )
    planned = {name: planned_skip(name, machine, context.kernel_library) for name in STEPS}
    report = GpuCheckReport(device=machine.gpu or machine.no_gpu_reason, budget_s=budget_s)
    for index, name in enumerate(STEPS):
        reason = planned[name] or _dynamic_skip(name, context)
        if reason is not None:
            result = StepResult(name, SKIPPED, reason)
        else:
            remaining = budget_s - RESERVE_S - (time.monotonic() - started)
            later = [shares[later] for later in STEPS[index + 1 :] if planned[later] is None]
            timeout = step_timeout(remaining, later)
            if timeout < MIN_STEP_S:
                result = StepResult(name, SKIPPED, f"budget spent: {timeout:.0f} s left for it", timeout_s=timeout)
            else:
                result = STEP_FUNCTIONS[name](context, timeout)
                result.timeout_s = timeout
        report.steps.append(result)
        if on_step:
            on_step(result)
    report.seconds = time.monotonic() - started
    with atomic_output(output_dir / "gpu-check.json") as temporary:
        Path(temporary).write_text(report.to_json())
    return report
