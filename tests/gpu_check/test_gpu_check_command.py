"""``python -m detr_deploy.gpu_check`` on this machine (no GPU): every GPU step skipped with its reason, the report
written, exit 0. On a machine with a GPU the command runs for real, for minutes: run it directly there."""

import json
import os
import subprocess
import sys

import pytest
import torch

from detr_deploy.gpu_check.steps import REPO, STEPS

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available(), reason="a GPU is visible: the check would run for real (python -m detr_deploy.gpu_check)"
)


def run_check(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "detr_deploy.gpu_check", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_without_a_gpu_every_step_is_skipped_with_its_reason_and_the_check_passes(tmp_path):
    completed = run_check("--out", str(tmp_path / "report"), "--work-dir", str(tmp_path / "work"))
    assert completed.returncode == 0, completed.stdout + completed.stderr
    report = json.loads((tmp_path / "report" / "gpu-check.json").read_text())
    assert report["passed"] is True and report["budget_s"] == 480
    assert [step["name"] for step in report["steps"]] == list(STEPS)
    for step in report["steps"]:
        assert step["status"] == "SKIPPED" and step["reason"].startswith("no CUDA GPU: torch "), step
    assert "nothing to build for" in report["steps"][0]["reason"]
    assert report["seconds"] < 60
    table = completed.stdout.splitlines()
    assert any(line.startswith("GPU check (no CUDA GPU: ") for line in table)
    for name in STEPS:
        assert any(line.split()[:2] == [name, "SKIPPED"] for line in table), completed.stdout
    assert table[-2] == "nothing failed"
    assert not (tmp_path / "work").exists()  # nothing was built


def test_the_report_goes_to_OUT_when_no_folder_is_given(tmp_path):
    completed = run_check("--budget-s", "60", env={"OUT": str(tmp_path)})
    assert completed.returncode == 0, completed.stderr
    assert json.loads((tmp_path / "gpu-check.json").read_text())["budget_s"] == 60


@pytest.mark.parametrize("budget", ["481", "10"])
def test_a_budget_past_eight_minutes_or_below_the_reserve_is_refused(tmp_path, budget):
    completed = run_check("--budget-s", budget, "--out", str(tmp_path))
    assert completed.returncode == 2 and "--budget-s must be more than 15 and at most 480" in completed.stderr
    assert not (tmp_path / "gpu-check.json").exists()


def test_the_kernel_benchmark_says_it_needs_a_gpu():
    completed = subprocess.run(
        [sys.executable, "benchmarks/msda_kernel.py", "--runs", "1"], cwd=REPO, capture_output=True, text=True
    )
    assert completed.returncode == 1 and completed.stdout.strip() == "no CUDA GPU: this benchmark needs one"


def test_the_engine_step_takes_the_first_zoo_model_of_every_family():
    from detr_deploy.gpu_check.engines import family_models
    from detr_deploy.models import get_model_spec, list_models

    models = family_models()
    families = [get_model_spec(name).config.family for name in models]
    assert len(families) == len(set(families))
    assert set(families) == {get_model_spec(name).config.family for name in list_models()}
    assert not any(name.startswith("tiny_") for name in models)
