"""Ultralytics RT-DETR ``.pt`` files: read into our RT-DETR, they give Ultralytics' own outputs (eager and ONNX
Runtime, at sizes the export never saw, batch 1 and 2); ``inspect`` says what each file is; YOLO and ResNetLayer
files, other layouts and a disagreeing ``--model`` are refused in one line.

Ultralytics needs a torch and torchvision of its own, so it runs in an environment of its own (``ULTRALYTICS_PYTHON``,
else the one .ci/install makes in build/peers/ultralytics): there tests/checkpoints/ultralytics_peer.py writes the
files with Ultralytics' own code (its trainer's ``save_model`` and ``strip_optimizer``, ``Model.save`` before and after
``fuse()``) and its outputs, computed in float32 from the fp16-rounded weights the files hold; they are kept in
build/peers/ultralytics-files/ per version of the script. Slow tests also read full-size RT-DETR-L/X files it writes.
Without that environment the tests are skipped, saying so.
"""

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from filelock import FileLock

from detr_deploy.checkpoints import build_checkpoint_model, read_checkpoint
from detr_deploy.checkpoints.formats.ultralytics import SOURCE_ULTRALYTICS, pickled_module, ultralytics_file
from detr_deploy.checkpoints.pickled import load_pickled
from detr_deploy.checkpoints.readers.ultralytics_rtdetr import read_ultralytics_rtdetr
from detr_deploy.errors import DetrDeployError
from detr_deploy.models import get_model_spec
from detr_deploy.parity import TOLERANCES, align_queries
from tests.helpers import assert_one_line_error, run_cli
from tests.marks import slow_after

PEER = Path(__file__).with_name("ultralytics_peer.py")
PEER_FILES = Path(__file__).resolve().parents[2] / "build" / "peers" / "ultralytics-files"
LABELS = ("cat", "dog", "traffic light", "kite", "zebra")
CASES = ("1x64x96", "2x96x64")
ULTRALYTICS_PYTHON = Path(
    os.environ.get("ULTRALYTICS_PYTHON")
    or Path(__file__).resolve().parents[2] / "build" / "peers" / "ultralytics" / "bin" / "python"
)
pytestmark = pytest.mark.skipif(
    not ULTRALYTICS_PYTHON.exists(),
    reason=f"no Python with Ultralytics ({ULTRALYTICS_PYTHON}): run .ci/install or set ULTRALYTICS_PYTHON; Ultralytics "
    "needs a torch and torchvision of its own",
)


@pytest.fixture(scope="session")
def files() -> Path:
    """The folder of what ultralytics_peer.py writes, made once per version of the script (xdist workers share it)."""
    folder = PEER_FILES / hashlib.sha256(PEER.read_bytes()).hexdigest()[:16]
    PEER_FILES.mkdir(parents=True, exist_ok=True)
    with FileLock(PEER_FILES / ".lock"):
        if not (folder / "rtdetr_outputs.npz").exists():
            partial = folder.with_name(folder.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir()
            subprocess.run([str(ULTRALYTICS_PYTHON), str(PEER), str(partial)], check=True, capture_output=True)
            partial.rename(folder)
    return folder


# (file, where its weights are, what inspect says it is, the recorded outputs it gives)
FILES = [
    ("rtdetr_last.pt", "EMA ('ema'", "a trainer checkpoint", ""),
    ("rtdetr_best.pt", "'model'", "strip_optimizer", ""),
    ("rtdetr_saved.pt", "'model'", "a Model.save file", ""),
    ("rtdetr_fused.pt", "'model'", "a Model.save file", "fused_"),
]


@pytest.fixture(scope="module")
def recorded(files):
    return dict(np.load(files / "rtdetr_outputs.npz"))


def images_of(recorded, case: str) -> torch.Tensor:
    return torch.from_numpy(recorded[f"images_{case}"]).float() / 255


def assert_ultralytics_outputs(outputs: dict, recorded: dict, case: str, prefix: str) -> None:
    """``outputs`` (ours, numpy) equal Ultralytics' recorded ones within 1e-4 of their scale, queries aligned as
    verify-parity aligns them."""
    expected = {"pred_logits": recorded[f"{prefix}logits_{case}"], "pred_boxes": recorded[f"{prefix}boxes_{case}"]}
    aligned, _, unpaired = align_queries(expected, outputs, TOLERANCES["fp32"])
    assert not unpaired.any()
    for name, reference in expected.items():
        scale = float(np.abs(reference).max())
        difference = float(np.abs(aligned[name] - reference).max())
        assert difference <= 1e-4 * scale, (name, case, difference, scale)


@pytest.mark.parametrize("name, weights, kind, prefix", slow_after(FILES))
def test_ultralytics_files_give_ultralytics_outputs(files, recorded, name, weights, kind, prefix):
    checkpoint = read_checkpoint(files / name)
    config = checkpoint.config
    assert checkpoint.source == SOURCE_ULTRALYTICS and checkpoint.class_names == LABELS
    assert (config.version, config.num_classes, config.num_queries, config.num_decoder_layers) == (1, 5, 10, 2)
    assert (config.encoder_hidden_dim, config.hidden_dim, config.num_heads, config.dec_n_points) == (
        16,
        24,
        4,
        (2,) * 3,
    )
    assert config.aifi_positions == "row_major" and config.depth_mult == 2 / 3
    assert any(weights in line for line in checkpoint.read_from)
    assert any(kind in line for line in checkpoint.read_from)
    assert any("eps 0.001" in line for line in checkpoint.read_from)
    assert any("fused convolutions" in line for line in checkpoint.read_from) == bool(prefix)
    model = build_checkpoint_model(checkpoint).eval()
    for case in CASES:
        with torch.no_grad():
            outputs = {key: value.numpy() for key, value in model(images_of(recorded, case)).items()}
        assert float(recorded[f"{prefix}boxes_{case}"][0, :, 2:].std(0).min()) > 1e-2  # box sizes differ per query
        assert_ultralytics_outputs(outputs, recorded, case, prefix)


def test_the_official_position_embedding_would_not_give_ultralytics_outputs(files, recorded):
    """Why the config says ``aifi_positions``: on non-square inputs Ultralytics numbers AIFI's tokens otherwise."""
    checkpoint = read_checkpoint(files / "rtdetr_saved.pt")
    official = checkpoint.config.replace(aifi_positions="official")
    model = official.build().eval()
    model.load_state_dict(dict(checkpoint.state_dict))
    with torch.no_grad():
        logits = model(images_of(recorded, CASES[0]))["pred_logits"].numpy()
    assert float(np.abs(logits - recorded[f"logits_{CASES[0]}"]).max()) > 1e-2


def test_the_ema_is_preferred_to_the_model(files):
    ema = load_pickled(files / "rtdetr_last.pt")["ema"]
    model = load_pickled(files / "rtdetr_fused.pt")["model"]
    chosen = ultralytics_file({"model": model, "ema": ema, "version": "8.4.190"})
    assert chosen.model == pickled_module(ema) and chosen.weights_from.startswith("EMA")
    assert ultralytics_file({"model": model, "ema": None}).model == pickled_module(model)
    assert ultralytics_file({"model": {"weight": torch.zeros(1)}}) is None


@pytest.mark.parametrize("name", slow_after(["rtdetr_last.pt", "rtdetr_fused.pt"]))
def test_onnx_export_gives_ultralytics_outputs(files, recorded, name, tmp_path):
    """The deployed file: ONNX Runtime outputs of the export (traced at another size) equal Ultralytics' own."""
    from detr_deploy.runtime.onnxruntime import OnnxRuntimeRunner
    from tests.helpers import export_checkpoint

    checkpoint = read_checkpoint(files / name)
    export_checkpoint(checkpoint, tmp_path / "rtdetr.onnx")
    runner = OnnxRuntimeRunner(tmp_path / "rtdetr.onnx")
    for case in CASES:
        assert_ultralytics_outputs(
            runner.run(images_of(recorded, case).numpy()), recorded, case, prefix="fused_" * ("fused" in name)
        )


def test_inspect_says_what_the_file_is(files):
    table = run_cli("inspect", files / "rtdetr_last.pt")
    assert table.exit_code == 0, table.output
    for fragment in (
        "ultralytics",
        "Ultralytics 8.4.190 .pt, a trainer checkpoint",
        "EMA",
        "cat, dog",
        "rtdetr_hgnetv2",
    ):
        assert fragment in table.output, fragment
    report = json.loads(run_cli("inspect", files / "rtdetr_saved.pt", "--json").output)
    assert report["format"] == "ultralytics" and report["architecture"] == "rtdetr_hgnetv2_custom"
    assert report["class_names"] == list(LABELS) and report["num_queries"] == 10 and not report["problems"]


def test_a_yolo_file_is_refused_saying_what_it_is(files):
    result = run_cli("inspect", files / "yolo.pt")
    assert_one_line_error(
        result, "yolo.pt is an Ultralytics DetectionModel", "Detect head (a YOLO model)", "not an RT-DETR"
    )


def test_a_resnet_layer_rtdetr_is_refused_saying_why(files):
    result = run_cli("inspect", files / "rtdetr_resnet.pt")
    assert_one_line_error(result, "ResNetLayer backbone", "rtdetr_r50vd", "only the HGNetv2 layouts")


def test_a_disagreeing_model_is_refused(files):
    result = run_cli("inspect", files / "rtdetr_saved.pt", "--model", "rtdetr_r50vd")
    assert_one_line_error(result, "--model asks for a RT-DETR v1, ResNet-50-vd", "HGNetv2-custom", "drop --model")


def _layer(content, index: int):
    return content["model"].state["_modules"]["model"].state["_modules"][str(index)]


def _edit_aifi(content):
    _layer(content, 10).state["normalize_before"] = True


def _edit_decoder(content):
    _layer(content, 27).state["learnt_init_query"] = True


def _edit_activation(content):
    # The lateral convolution (layer 11) with the backbone's ReLU instead of SiLU.
    _layer(content, 11).state["_modules"]["act"] = _layer(content, 1).state["_modules"]["sc"].state["_modules"]["act"]


def _edit_residual(content):
    _layer(content, 5).state["add"] = True


def _edit_wiring(content):
    _layer(content, 22).state["f"] = [-1, 11]


@pytest.mark.parametrize(
    "edit, message",
    slow_after(
        [
            (_edit_aifi, "layer 10 (AIFI) is pre-norm"),
            (_edit_decoder, "learns its query content"),
            (_edit_activation, "layer 11 activates with ReLU (ours SiLU)"),
            (_edit_residual, "layer 5 (HGBlock) adds its input"),
            (
                _edit_wiring,
                "layer 22 is Concat taking (21, 11) where rtdetr-l/x.yaml's layout has Concat taking (21, 16)",
            ),
        ]
    ),
)
def test_what_our_rtdetr_does_not_compute_is_refused(files, edit, message):
    content = load_pickled(files / "rtdetr_saved.pt")
    edit(content)
    with pytest.raises(DetrDeployError, match="is an Ultralytics RT-DETR") as error:
        read_ultralytics_rtdetr(files / "rtdetr_saved.pt", ultralytics_file(content), "0" * 64)
    assert message in str(error.value) and "\n" not in str(error.value)


# With Ultralytics' own venv --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_fixtures_are_what_ultralytics_makes(recorded, tmp_path):
    subprocess.run(
        [str(ULTRALYTICS_PYTHON), str(PEER), str(tmp_path)],
        check=True,
        cwd=tmp_path,
        capture_output=True,
    )
    fresh = dict(np.load(tmp_path / "rtdetr_outputs.npz"))
    assert sorted(fresh) == sorted(recorded)
    for key, value in recorded.items():  # the same inputs; outputs up to another machine's float rounding
        np.testing.assert_allclose(fresh[key], value, rtol=0, atol=1e-5, err_msg=key)
    model = build_checkpoint_model(read_checkpoint(tmp_path / "rtdetr_last.pt")).eval()
    with torch.no_grad():
        outputs = {key: value.numpy() for key, value in model(images_of(fresh, CASES[1])).items()}
    assert_ultralytics_outputs(outputs, fresh, CASES[1], "")


@pytest.mark.slow
@pytest.mark.parametrize("size", ["l", "x"])
def test_rtdetr_l_and_x_are_named_as_the_zoo_models(size, tmp_path):
    """rtdetr-l/x.yaml as Ultralytics builds and saves them: our rtdetr_hgnetv2_l/x, AIFI's numbering apart."""
    script = f"from ultralytics import RTDETR; RTDETR('rtdetr-{size}.yaml').save('{tmp_path / 'model.pt'}')"
    subprocess.run([str(ULTRALYTICS_PYTHON), "-c", script], check=True, cwd=tmp_path, capture_output=True)
    name = f"rtdetr_hgnetv2_{size}"
    zoo = get_model_spec(name).config
    checkpoint = read_checkpoint(tmp_path / "model.pt", zoo)
    assert checkpoint.model_name == name and checkpoint.config == zoo.replace(aifi_positions="row_major")
