"""A COCO-format detection dataset (annotation JSON + image folder), checked before anything runs, and the mapping
from a model's labels to the dataset's category ids.

Labels map to category ids by the checkpoint's class names (COCO-sized DETR heads: label = COCO id; 80-class heads
of RT-DETR and mmdetection: label i = the i-th COCO thing; transformers and mmdetection checkpoints carry their own
names). A checkpoint without names (an official-code model fine-tuned on a custom dataset) was trained, as the official
code does, with label = category id, so its labels map to the ids themselves.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

from detr_deploy.errors import DetrDeployError

# Names the checkpoint does not know (official DETR's unused COCO ids; heads without names).
_PLACEHOLDER_NAME = re.compile(r"N/A|class_\d+")


@dataclass(frozen=True)
class CocoImage:
    image_id: int
    file_name: str
    path: Path
    width: int
    height: int


@dataclass(frozen=True)
class CocoDataset:
    annotation_path: Path
    images_dir: Path
    ground_truth: dict  # the annotation file, with "area" and "iscrowd" filled in where absent
    images: list[CocoImage]
    categories: dict[int, str]  # category id -> name

    @property
    def annotated_categories(self) -> set[int]:
        """Category ids that have at least one (non-crowd or crowd) annotation."""
        return {annotation["category_id"] for annotation in self.ground_truth["annotations"]}


@dataclass(frozen=True)
class CategoryMapping:
    label_to_category: dict[int, int]
    rule: str  # "class names" or "label = category id"

    def category(self, label: int) -> int:
        """The category id of ``label``, or None for a label the dataset has no category for."""
        return self.label_to_category.get(int(label))


def _load_json(path: Path, what: str) -> object:
    if not path.is_file():
        raise DetrDeployError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        reason = error.msg if isinstance(error, json.JSONDecodeError) else "not UTF-8 text"
        raise DetrDeployError(f"{what} {path} is not JSON ({reason}); give a COCO annotation file") from None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_coco_dataset(annotation_path, images_dir, max_images: int = None) -> CocoDataset:
    """Read and check a COCO detection annotation file and its image folder (``file_name`` entries are relative to
    ``images_dir``). ``max_images``: keep the first N images (in the file's order) and their annotations.

    Raises DetrDeployError (one line, saying what to fix) for a file that is not COCO detection JSON, a malformed
    entry (naming the first), an annotation of an unknown image or category, and images missing from the folder."""
    annotation_path, images_dir = Path(annotation_path), Path(images_dir)
    data = _load_json(annotation_path, "annotation file")
    where = f"annotation file {annotation_path}"
    if not isinstance(data, dict) or not all(isinstance(data.get(key), list) for key in ("images", "categories")):
        raise DetrDeployError(
            f"{where} is not COCO format: it needs 'images', 'annotations' and 'categories' lists "
            "(as instances_val2017.json has)"
        )
    if not isinstance(data.get("annotations"), list):
        raise DetrDeployError(f"{where} is not COCO format: it has no 'annotations' list")
    if any(isinstance(entry, dict) and "segments_info" in entry for entry in data["annotations"]):
        raise DetrDeployError(
            f"{where} is COCO panoptic (annotations have segments_info); pass it with --panoptic-annotations"
        )
    if not data["images"]:
        raise DetrDeployError(f"{where} lists no images")
    if not images_dir.is_dir():
        raise DetrDeployError(f"image folder {images_dir} does not exist")

    categories = {}
    for index, category in enumerate(data["categories"]):
        if (
            not isinstance(category, dict)
            or not _is_id(category.get("id"))
            or not isinstance(category.get("name"), str)
        ):
            raise DetrDeployError(f"{where}: categories[{index}] needs an integer 'id' and a 'name'")
        categories[category["id"]] = category["name"]

    images = []
    seen_ids = set()
    for index, image in enumerate(data["images"]):
        valid = (
            isinstance(image, dict)
            and _is_id(image.get("id"))
            and isinstance(image.get("file_name"), str)
            and all(_is_id(image.get(key)) and image[key] > 0 for key in ("width", "height"))
        )
        if not valid:
            raise DetrDeployError(
                f"{where}: images[{index}] needs an integer 'id', a 'file_name', 'width' and 'height'"
            )
        if image["id"] in seen_ids:
            raise DetrDeployError(f"{where}: image id {image['id']} is listed twice")
        seen_ids.add(image["id"])
        images.append(
            CocoImage(image["id"], image["file_name"], images_dir / image["file_name"], image["width"], image["height"])
        )
    if max_images is not None:
        images = images[:max_images]
    kept_ids = {image.image_id for image in images}

    annotations = []
    for index, annotation in enumerate(data["annotations"]):
        bbox = annotation.get("bbox") if isinstance(annotation, dict) else None
        valid = (
            isinstance(annotation, dict)
            and _is_id(annotation.get("image_id"))
            and _is_id(annotation.get("category_id"))
            and isinstance(bbox, list)
            and len(bbox) == 4
            and all(_is_number(value) for value in bbox)
            and bbox[2] >= 0
            and bbox[3] >= 0
        )
        if not valid:
            raise DetrDeployError(
                f"{where}: annotations[{index}] needs an integer 'image_id' and 'category_id' and a 'bbox' "
                "[x, y, width, height] of numbers"
            )
        if annotation["image_id"] not in seen_ids:
            raise DetrDeployError(
                f"{where}: annotations[{index}] refers to image id {annotation['image_id']}, not listed"
            )
        if annotation["category_id"] not in categories:
            raise DetrDeployError(
                f"{where}: annotations[{index}] has category id {annotation['category_id']}, not listed in categories"
            )
        if annotation["image_id"] in kept_ids:
            # pycocotools reads both: COCO files have them; files from other tools sometimes do not.
            filled = {"iscrowd": 0, "area": float(bbox[2] * bbox[3]), **annotation}
            filled.setdefault("id", len(annotations) + 1)
            annotations.append(filled)

    missing = [image for image in images if not image.path.is_file()]
    if missing:
        raise DetrDeployError(
            f"{len(missing)} of the {len(images)} images in {annotation_path.name} are not in {images_dir} "
            f"(first: {missing[0].file_name}); give the folder their file_name entries are relative to"
        )
    ground_truth = {
        "images": [entry for entry in data["images"] if entry["id"] in kept_ids],
        "annotations": annotations,
        "categories": data["categories"],
    }
    return CocoDataset(annotation_path, images_dir, ground_truth, images, categories)


def map_categories(class_names: list[str], categories: dict[int, str], required: set[int]) -> CategoryMapping:
    """How the model's labels (indices of ``class_names``) become the dataset's category ids.

    By name (case and surrounding spaces ignored) when every category in ``required`` (those the dataset annotates)
    has a label of that name; otherwise, for a checkpoint without class names, label = category id. Raises
    DetrDeployError naming a category the model cannot produce."""
    by_name = {}
    for label, name in enumerate(class_names):
        key = name.strip().lower()
        if not _PLACEHOLDER_NAME.fullmatch(name.strip()):
            by_name.setdefault(key, label)
    label_of = {category: by_name.get(name.strip().lower()) for category, name in categories.items()}
    unmatched = sorted(category for category in required if label_of[category] is None)
    if not unmatched:
        mapping = {label: category for category, label in label_of.items() if label is not None}
        return CategoryMapping(mapping, "class names")
    named = len(by_name) > 0
    out_of_range = sorted(category for category in required if not 0 <= category < len(class_names))
    if not named and not out_of_range:
        return CategoryMapping(
            {label: label for label in range(len(class_names)) if label in categories}, "label = category id"
        )
    first = unmatched[0]
    if named:
        reason = f"the model's {len(class_names)} classes have no class named {categories[first]!r}"
    else:
        first = out_of_range[0]
        reason = f"the model has no class names and only labels 0..{len(class_names) - 1}"
    raise DetrDeployError(
        f"the dataset's category {categories[first]!r} (id {first}) is one the model cannot produce: {reason} "
        f"({len(unmatched)} such categories); evaluate a model trained on these categories"
    )
