"""Every GPU check this project has, in one command for a GPU machine lent for minutes:

    python -m detr_deploy.gpu_check [--out DIR] [--budget-s 480] [--kernel-library libdetr_msda_cuda.so]

It needs only the working tree and what such a machine has (torch with CUDA; nvcc, cmake, pytest and TensorRT
where present): each step that the machine lacks something for is skipped, saying what. The steps and their share
of the budget are in ``steps`` and ``plan``; the report is ``report.GpuCheckReport``."""

from detr_deploy.gpu_check.plan import MAX_BUDGET_S
from detr_deploy.gpu_check.report import GpuCheckReport, StepResult
from detr_deploy.gpu_check.steps import run_gpu_check

__all__ = ["MAX_BUDGET_S", "GpuCheckReport", "StepResult", "run_gpu_check"]
