"""The real CLI: predict writes drawn PNGs whose boxes are where the JSON says, panoptic segment maps holding the
segments the JSON lists, and reports bad images in one line each while processing the others."""

import json

import numpy as np
import pytest
from PIL import Image

from detr_deploy.predict import label_color
from tests.helpers import assert_one_line_error
from tests.helpers import run_cli as run


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(3)
    paths = []
    for name, (height, width) in [("street.png", (240, 320)), ("tall.jpg", (320, 200))]:
        # Dark noise: drawn boxes (saturated, bright) stand out from every original pixel.
        array = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
        Image.fromarray(array).save(tmp_path / name, quality=100)
        paths.append(tmp_path / name)
    return paths


def outline(box, width, height):
    """Integer pixel coordinates on a drawn box's outline, inside the image."""
    x0, y0, x1, y1 = (round(v) for v in box)
    points = [(x, y) for x in range(x0, x1 + 1) for y in (y0, y1)]
    points += [(x, y) for y in range(y0, y1 + 1) for x in (x0, x1)]
    return [(x, y) for x, y in points if 0 <= x < width and 0 <= y < height]


def test_predict_draws_boxes_where_the_json_says(confident_export, images, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    onnx_path = confident_export("deformable_detr_r50")
    result = run("predict", onnx_path, *images, "--output", output, "--score-threshold", "0.5")
    assert result.exit_code == 0, result.output
    data = json.loads((output / "detections.json").read_text())
    assert [image["source"] for image in data["images"]] == [str(path) for path in images]
    assert sorted(p.name for p in output.iterdir()) == ["detections.json", "street.png", "tall.png"]
    for entry, path in zip(data["images"], images):
        assert entry["detections"], entry  # the confident head makes detections
        original = np.asarray(Image.open(path).convert("RGB")).astype(int)
        drawn = np.asarray(Image.open(output / f"{path.stem}.png").convert("RGB")).astype(int)
        assert drawn.shape == original.shape == (entry["height"], entry["width"], 3)
        touched = np.zeros(original.shape[:2], bool)
        colors = np.array([label_color(detection["label"]) for detection in entry["detections"]])
        for detection in entry["detections"]:
            points = outline(detection["box"], entry["width"], entry["height"])
            drawn_colors = np.array([drawn[y, x] for x, y in points])
            # Deformable DETR gives one query several labels (same box, drawn over each other), boxes cross and
            # labels cover bits of outlines: most of each outline must be drawn in a detection's color.
            on_color = (np.abs(drawn_colors[:, None, :] - colors[None]).max(-1) <= 1).any(-1)
            assert on_color.mean() > 0.5, detection
            for x, y in points:
                touched[max(0, y - 20) : y + 3, max(0, x - 3) : x + 3] = True
        # Away from every box (and its label) nothing was drawn.
        assert (np.abs(drawn - original).max(-1)[~touched] <= 1).all()


def test_panoptic_segment_map_has_the_segments_the_json_lists(confident_export, images, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    result = run(
        "predict", confident_export("detr_r50_panoptic"), images[0], "--output", output, "--panoptic-threshold", "0.5"
    )
    assert result.exit_code == 0, result.output
    (entry,) = json.loads((output / "detections.json").read_text())["images"]
    segments = entry["segments"]
    assert segments and f"{len(segments)} segments" in result.output
    colored = np.asarray(Image.open(output / "street.segments.png").convert("RGB"))
    assert colored.shape == (240, 320, 3)
    colors, counts = np.unique(colored.reshape(-1, 3), axis=0, return_counts=True)
    found = {tuple(color): int(count) for color, count in zip(colors.tolist(), counts)}
    assert found == {tuple(segment["color"]): segment["area"] for segment in segments}
    assert sum(segment["area"] for segment in segments) == 240 * 320
    assert {segment["id"] for segment in segments} == set(range(len(segments)))


def test_bad_images_are_one_line_each_and_the_others_are_written(confident_export, images, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    notes = tmp_path / "notes.jpg"
    notes.write_text("not an image")
    result = run("predict", confident_export("detr_r50"), notes, images[0], tmp_path / "gone.png", "--output", output)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and "cannot read image" in errors[0] and "gone.png does not exist" in errors[1]
    assert "Traceback" not in result.output
    assert sorted(p.name for p in output.iterdir()) == ["detections.json", "street.png"]
    data = json.loads((output / "detections.json").read_text())
    assert [image["error"] is None for image in data["images"]] == [False, True, False]


def test_predict_input_errors(confident_export, images, tmp_path):
    onnx_path = confident_export("detr_r50")
    assert_one_line_error(run("predict", onnx_path, "--output", tmp_path), "no images given")
    assert_one_line_error(run("predict", onnx_path, images[0], "--output", tmp_path / "nope"), "does not exist")
    assert_one_line_error(run("predict", "no_such_model", images[0], "--output", tmp_path), "unknown model")
    assert list(tmp_path.glob("*.json")) == []
