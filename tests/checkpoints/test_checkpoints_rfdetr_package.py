"""RF-DETR against the rfdetr package itself: RF-DETR-N built by rfdetr's own code (seeded trained-like weights),
its checkpoint saved the way rfdetr saves it, read by our reader (never running rfdetr's code), gives rfdetr's own
eager outputs in our eager model and in ONNX Runtime, at untraced non-square sizes, batch 1 and 2, within 1e-4 of
the output scale.

rfdetr cannot share the suite's environment (it needs torchvision, whose presence breaks transformers' imports
there), so rfdetr_peer.py runs in a Python that has it: ``DETR_DEPLOY_RFDETR_PYTHON``, else the environment
.ci/install makes in ``build/peers/rfdetr`` (a venv over the suite's site-packages with rfdetr and its torchvision
added). Without one the tests are skipped, saying so. rfdetr_peer.py says how
torchvision's failing piece is stood in for.
"""

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from detr_deploy.checkpoints import SOURCE_OFFICIAL, build_checkpoint_model, read_checkpoint

PEER = Path(__file__).with_name("rfdetr_peer.py")
DEFAULT_PYTHON = Path(__file__).parents[2] / "build" / "peers" / "rfdetr" / "bin" / "python"
# Non-square and untraced; the last one 52 patches wide, so that its edge proposals lie outside (0.01, 0.99) (rfdetr
# ranks them with the rest).
SHAPES = ["1x384x448", "2x448x320", "1x128x832"]
# Within 1e-4 of the output scale (logits of scale ~10, boxes of scale ~1).
RELATIVE = 1e-4

pytestmark = pytest.mark.slow
_CAPTURE = dict(capture_output=True, text=True, timeout=600, check=False)


def _rfdetr_python() -> str:
    python = os.environ.get("DETR_DEPLOY_RFDETR_PYTHON") or (str(DEFAULT_PYTHON) if DEFAULT_PYTHON.exists() else "")
    if not python:
        pytest.skip(
            "no Python with the rfdetr package: set DETR_DEPLOY_RFDETR_PYTHON, or run .ci/install (it makes "
            f"{DEFAULT_PYTHON}); rfdetr needs torchvision, which cannot live in the suite's environment"
        )
    found = subprocess.run([python, "-c", "import importlib.util as u; print(bool(u.find_spec('rfdetr')))"], **_CAPTURE)
    if found.stdout.strip() != "True":
        pytest.skip(f"{python} has no rfdetr package (pip install rfdetr==1.11.2 into it)")
    return python


# rfdetr's DINOv2 with registers ("dinov2_registers_windowed_small") does not build beside transformers 5.25 (its
# backbone config's out_features and out_indices disagree there), so only RF-DETR-N's own encoder is compared.
@pytest.fixture(scope="module", params=["dinov2_windowed_small"])
def peer(request, tmp_path_factory):
    """(rfdetr's checkpoint path, its outputs by shape) made by rfdetr itself: RF-DETR-N."""
    python = _rfdetr_python()
    output = tmp_path_factory.mktemp("rfdetr-peer")
    run = subprocess.run([python, str(PEER), str(output), "0", request.param, *SHAPES], **_CAPTURE)
    assert run.returncode == 0, run.stderr[-4000:]
    return output / "weights.pt", torch.load(output / "outputs.pt")


def _selected_tokens(model, images) -> torch.Tensor:
    """The encoder tokens our two-stage selection takes, in rank order [N, Q]."""
    scores = {}

    def keep(module, inputs, output):
        scores["s"] = output.max(-1).values  # returns None: the output stays as it is

    handle = model.transformer.enc_out_class_embed[0].register_forward_hook(keep)
    with torch.no_grad():
        model(images)
    handle.remove()
    return torch.topk(scores["s"], model.config.num_queries, dim=1).indices


def _assert_close(got, expected, what: str) -> None:
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(got, expected, rtol=RELATIVE, atol=RELATIVE * scale, err_msg=what)


def test_rfdetr_checkpoint_gives_rfdetrs_outputs(peer):
    path, outputs = peer
    checkpoint = read_checkpoint(path)
    config = checkpoint.config
    assert checkpoint.source == SOURCE_OFFICIAL and (config.num_classes, config.num_queries) == (6, 30)
    assert config.size == "N" and config.architecture_name == "rfdetr_nano" and config.window_order == "rows"
    assert checkpoint.class_names == ("cat", "dog", "traffic light", "kite", "zebra", "N/A")
    ours = build_checkpoint_model(checkpoint)
    for shape, expected in outputs.items():
        # The same tokens in the same order (a near tie ranked otherwise would pair other learned queries with them).
        assert torch.equal(_selected_tokens(ours, expected["images"]), expected["selected"]), shape
        assert float(expected["pred_boxes"][0, :, 2:].std(0).min()) > 1e-3  # box sizes differ from query to query
        with torch.no_grad():
            got = ours(expected["images"])
        for name in ("pred_logits", "pred_boxes"):
            _assert_close(got[name].numpy(), expected[name].numpy(), f"{name} at {shape}")


def test_onnx_export_of_an_rfdetr_checkpoint_gives_rfdetrs_outputs(peer, tmp_path):
    from detr_deploy.runtime.onnxruntime import OnnxRuntimeRunner
    from tests.helpers import export_checkpoint

    path, outputs = peer
    checkpoint = read_checkpoint(path)
    export_checkpoint(checkpoint, tmp_path / "rfdetr_nano.onnx")
    runner = OnnxRuntimeRunner(tmp_path / "rfdetr_nano.onnx")
    for shape, expected in outputs.items():
        got = runner.run(expected["images"].numpy())
        for name in ("pred_logits", "pred_boxes"):
            _assert_close(got[name], expected[name].numpy(), f"{name} at {shape} (ONNX Runtime)")
