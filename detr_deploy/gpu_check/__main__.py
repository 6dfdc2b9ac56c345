"""``python -m detr_deploy.gpu_check``: parse, run the check, print its summary table; exit 0 when nothing failed.

argparse rather than the click CLI: a lent GPU machine has torch, and maybe nothing else this project installs."""

import argparse
import os
import sys
from pathlib import Path

from detr_deploy.errors import DetrDeployError
from detr_deploy.gpu_check.plan import MAX_BUDGET_S, RESERVE_S
from detr_deploy.gpu_check.steps import REPO, run_gpu_check


def default_output() -> Path:
    """$OUT when set (what a lent GPU machine sends back), else build/gpu-check."""
    return Path(os.environ["OUT"]) if os.environ.get("OUT") else REPO / "build" / "gpu-check"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m detr_deploy.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="report and logs (default: $OUT, else build/gpu-check)")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=MAX_BUDGET_S,
        help=f"seconds for everything (default and most: {MAX_BUDGET_S:.0f})",
    )
    parser.add_argument("--work-dir", type=Path, help="builds and engines (default: build/gpu-check-work)")
    parser.add_argument("--kernel-library", type=Path, help="a libdetr_msda_cuda.so built elsewhere (skips the build)")
    args = parser.parse_args(argv)
    if not RESERVE_S < args.budget_s <= MAX_BUDGET_S:
        parser.error(f"--budget-s must be more than {RESERVE_S:.0f} and at most {MAX_BUDGET_S:.0f}")
    if args.kernel_library is not None and not args.kernel_library.is_file():
        parser.error(f"--kernel-library {args.kernel_library} is not a file")
    output = args.out or default_output()
    try:
        report = run_gpu_check(
            output,
            budget_s=args.budget_s,
            work_dir=args.work_dir,
            kernel_library=args.kernel_library,
            on_step=lambda step: print(f"{step.name}: {step.status} ({step.seconds:.1f} s) {step.reason}", flush=True),
        )
    except DetrDeployError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print()
    print(report.render())
    print(f"report: {output / 'gpu-check.json'}")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
