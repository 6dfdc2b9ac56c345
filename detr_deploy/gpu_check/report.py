"""What the GPU check found: one ``StepResult`` per step, the figures steps measured, and the summary table."""

import dataclasses
import json
from dataclasses import dataclass, field

PASSED, FAILED, SKIPPED = "PASSED", "FAILED", "SKIPPED"


@dataclass
class KernelTiming:
    """One (shape, precision) of the kernel benchmark: parity of our kernel (and of the TensorRT OSS schedule) with
    the fp32 PyTorch reference on the same inputs, and the median times of the three."""

    shape: str  # "encoder" (Lq = S) or "decoder" (Lq = 300)
    precision: str  # the value's type: fp32, fp16, bf16
    sampling_precision: str  # the sampling locations' and weights' type our kernel was given
    kernel_max_error: float
    tolerance: float
    reference_ms: float  # ms_deform_attn_reference (grid_sample), all inputs in the value's type
    kernel_ms: float
    oss_schedule_ms: float | None  # None: no fp32/fp16 OSS schedule for this precision, or not built
    oss_schedule_max_error: float | None
    bytes_moved: int  # value, sampling inputs and output, each once: the least any implementation must move
    kernel_bytes_per_s: float

    @property
    def passed(self) -> bool:
        return self.kernel_max_error <= self.tolerance


@dataclass
class KernelBenchmark:
    """What benchmarks/msda_kernel.py measured (it writes this as JSON with ``--json``)."""

    device: str
    runs: int  # timed runs per median
    peak_bytes_per_s: float | None
    peak_source: str
    timings: list[KernelTiming] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict) -> "KernelBenchmark":
        timings = [KernelTiming(**row) for row in data.get("timings", [])]
        return cls(**{**data, "timings": timings})


@dataclass
class EngineParity:
    """An engine of a family's tiny model against eager PyTorch."""

    model: str
    precision: str
    passed: bool
    max_abs_error: float | None  # the largest over the outputs and cases compared
    build_s: float
    detail: str = ""


@dataclass
class StepResult:
    name: str
    status: str  # PASSED, FAILED or SKIPPED
    reason: str  # why it was skipped or failed, or what it did
    seconds: float = 0.0
    timeout_s: float | None = None
    figures: list[str] = field(default_factory=list)  # one summary line each
    data: dict = field(default_factory=dict)  # the step's measurements, for the JSON report


@dataclass
class GpuCheckReport:
    device: str
    budget_s: float
    steps: list[StepResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[StepResult]:
        return [step for step in self.steps if step.status == FAILED]

    @property
    def passed(self) -> bool:
        """Nothing failed; skipped steps are fine (the machine lacked what they need, and they say what)."""
        return not self.failed

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "passed": self.passed}, indent=2)

    def render(self) -> str:
        """The summary table: one row per step (status, seconds taken of the seconds allowed, reason), and the
        step's figures as indented rows under it."""
        rows = [("step", "status", "s / allowed", "details")]
        for step in self.steps:
            allowed = "-" if step.timeout_s is None else f"{step.timeout_s:.0f}"
            rows.append((step.name, step.status, f"{step.seconds:.1f} / {allowed}", step.reason))
            rows.extend(("", "", "", f"  {line}") for line in step.figures)
        widths = [max(len(row[column]) for row in rows) for column in range(3)]
        table = ["  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths)) + "  " + row[3] for row in rows]
        rule = "-" * max(len(line) for line in table)
        lines = [f"GPU check ({self.device}): {self.seconds:.0f} s of a {self.budget_s:.0f} s budget", rule]
        lines += [table[0], rule, *table[1:], rule]
        verdict = "nothing failed" if self.passed else f"FAILED: {', '.join(step.name for step in self.failed)}"
        lines.append(verdict)
        return "\n".join(lines)


def format_timing(timing: KernelTiming, peak_bytes_per_s: float | None) -> str:
    """One summary line of a benchmark row."""
    share = f" = {timing.kernel_bytes_per_s / peak_bytes_per_s:.0%} of peak" if peak_bytes_per_s else ""
    oss = (
        "OSS schedule n/a"
        if timing.oss_schedule_ms is None
        else f"OSS schedule {timing.oss_schedule_ms:.3f} ms ({timing.oss_schedule_ms / timing.kernel_ms:.1f}x ours)"
    )
    verdict = "ok" if timing.passed else "OVER"
    return (
        f"{timing.shape} {timing.precision} (sampling {timing.sampling_precision}): max err "
        f"{timing.kernel_max_error:.1e} <= {timing.tolerance:.0e} {verdict}; ours {timing.kernel_ms:.3f} ms, "
        f"reference {timing.reference_ms:.3f} ms ({timing.reference_ms / timing.kernel_ms:.1f}x ours), {oss}; "
        f"{timing.kernel_bytes_per_s / 1e9:.0f} GB/s{share}"
    )


def format_engine(parity: EngineParity) -> str:
    error = "-" if parity.max_abs_error is None else f"{parity.max_abs_error:.1e}"
    verdict = "ok" if parity.passed else "FAILED"
    extra = f" ({parity.detail})" if parity.detail else ""
    return f"{parity.model} {parity.precision}: {verdict}, max abs err {error}, built in {parity.build_s:.0f} s{extra}"
