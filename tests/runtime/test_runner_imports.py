"""Runners check inputs from the export's metadata alone: opening and running a file imports no model code (nor
torch), so a deployment of ONNX Runtime or OpenVINO needs neither."""

import subprocess
import sys

from tests.helpers import REPO

_OPEN_AND_RUN = """
import sys
import numpy as np
from detr_deploy.errors import DetrDeployError
from detr_deploy.runtime.open import open_runner
runner = open_runner({path!r}, kind="onnx", runtime="onnxruntime")
try:
    runner.check_inputs((1, 3, 64, 64))
except DetrDeployError as error:
    refused = str(error)
else:
    refused = ""
outputs = runner.run(np.zeros((2, 3, 128, 128), np.float32))
loaded = sorted(name for name in sys.modules if name == "torch" or name.startswith("detr_deploy.models"))
print(repr((refused, sorted(outputs), loaded)))
"""


def test_opening_and_running_an_export_imports_no_model_code(tiny_export, tmp_path):
    import onnx

    from detr_deploy import contract

    # RT-DETR selects its queries from encoder tokens: the check that needs the most of the model's knowledge. The
    # tiny model's 10 queries fit any input, so the copy records the full model's 300.
    model = onnx.load(tiny_export("rtdetr_r18vd"))
    onnx.helper.set_model_props(
        model, {**{p.key: p.value for p in model.metadata_props}, contract.META_SELECTED_QUERIES: "300"}
    )
    path = tmp_path / "rtdetr.onnx"
    onnx.save(model, path)
    process = subprocess.run(
        [sys.executable, "-c", _OPEN_AND_RUN.format(path=str(path))], capture_output=True, text=True, cwd=REPO
    )
    assert process.returncode == 0, process.stderr
    refused, outputs, loaded = eval(process.stdout.strip().splitlines()[-1])
    assert "selects 300 queries" in refused and "a 64x64 input has only 84" in refused
    assert outputs == ["pred_boxes", "pred_logits"]
    assert loaded == [], f"running an export imported {loaded}"
