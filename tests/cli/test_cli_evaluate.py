"""evaluate's bad input: one error line, exit 2, nothing written; and generated annotation files that are not COCO
never escape as anything but a DetrDeployError."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detr_deploy.errors import DetrDeployError
from detr_deploy.evaluation.coco_dataset import read_coco_dataset
from tests.evaluation.generated_coco import write_images
from tests.helpers import assert_one_line_error, run_cli, tiny_name

MODEL = tiny_name("deformable_detr_r50")  # 5 classes, no names: labels are category ids 0..4


def coco(images=1, categories=((1, "class_1"),), annotations=None):
    return {
        "images": [
            {"id": i + 1, "file_name": f"image_{i:03d}.png", "width": 160, "height": 120} for i in range(images)
        ],
        "annotations": annotations
        if annotations is not None
        else [{"id": 1, "image_id": 1, "category_id": categories[0][0], "bbox": [10, 10, 40, 30]}],
        "categories": [{"id": category, "name": name} for category, name in categories],
    }


@pytest.fixture
def dataset(tmp_path):
    """(write(annotation dict or text) -> path, image folder with two images)."""
    images = tmp_path / "images"
    write_images(images, [(120, 160), (120, 160)])

    def write(content) -> str:
        path = tmp_path / "annotations.json"
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        return path

    return write, images


def evaluate(annotations, images, *extra):
    return run_cli("evaluate", "--annotations", annotations, "--images", images, "--model", MODEL, *extra)


@pytest.mark.parametrize(
    "content, fragments",
    [
        ("{not json", ["is not JSON", "COCO annotation file"]),
        ([1, 2], ["is not COCO format", "'images'"]),
        ({"images": [], "annotations": [], "categories": []}, ["lists no images"]),
        ({"images": [{"id": 1}], "annotations": [], "categories": []}, ["images[0] needs"]),
        (coco(annotations=[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5]}]), ["annotations[0] needs", "bbox"]),
        (coco(annotations=[{"image_id": 9, "category_id": 1, "bbox": [0, 0, 5, 5]}]), ["image id 9, not listed"]),
        (coco(annotations=[{"image_id": 1, "category_id": 3, "bbox": [0, 0, 5, 5]}]), ["category id 3, not listed"]),
        (coco(images=3), ["1 of the 3 images", "first: image_002.png"]),
        (coco(categories=((7, "class_7"),)), ["category 'class_7' (id 7)", "cannot produce", "labels 0..4"]),
        (
            {"images": coco()["images"], "annotations": [{"image_id": 1, "segments_info": []}], "categories": []},
            ["is COCO panoptic", "--panoptic-annotations"],
        ),
    ],
)
def test_bad_annotation_files_are_one_line_errors(dataset, tmp_path, content, fragments):
    write, images = dataset
    report = tmp_path / "report.json"
    result = evaluate(write(content), images, "--report", report)
    assert_one_line_error(result, *fragments)
    assert not report.exists()


def test_bad_paths_and_options(dataset, tmp_path):
    write, images = dataset
    annotations = write(coco())
    assert_one_line_error(evaluate(tmp_path / "absent.json", images), "does not exist")
    assert_one_line_error(evaluate(annotations, tmp_path / "absent"), "image folder", "does not exist")
    assert_one_line_error(evaluate(annotations, images, "--report", tmp_path / "no" / "r.json"), "does not exist")
    assert_one_line_error(evaluate(annotations, images, "--max-ap-drop", -1), "--max-ap-drop")
    assert_one_line_error(evaluate(annotations, images, "--onnx", tmp_path / "absent.onnx"), "does not exist")
    result = run_cli("evaluate", "--annotations", annotations, "--images", images)
    assert_one_line_error(result, "give the backends to evaluate")


def test_an_unreadable_image_stops_the_run_naming_it(dataset, tmp_path):
    write, images = dataset
    (images / "image_001.png").write_text("not an image")
    plot = tmp_path / "plot.png"
    result = evaluate(write(coco(images=2)), images, "--plot", plot)
    assert_one_line_error(result, "image_001.png")
    assert not plot.exists()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True) | st.text(max_size=4),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
entry_keys = ["id", "file_name", "width", "height", "image_id", "category_id", "bbox", "name", "area", "iscrowd"]
entries = st.lists(st.dictionaries(st.sampled_from(entry_keys), json_values, max_size=6), max_size=3)


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    document=st.one_of(
        json_values,
        st.fixed_dictionaries(
            {"images": entries, "annotations": entries, "categories": entries},
            optional={"info": json_values},
        ),
    )
)
def test_generated_annotation_files_never_fail_with_anything_but_a_deploy_error(document, tmp_path):
    path = tmp_path / "generated.json"
    path.write_text(json.dumps(document))
    try:
        read_coco_dataset(path, tmp_path)
    except DetrDeployError as error:
        assert "\n" not in str(error)
