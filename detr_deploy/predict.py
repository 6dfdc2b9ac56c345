"""Predictions users can look at: each image with its boxes and labels drawn (PNG), panoptic segment maps in color
(PNG), and every detection in one JSON file."""

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detr_deploy.detector import Detector, ImageResult
from detr_deploy.errors import DetrDeployError
from detr_deploy.io import atomic_output
from detr_deploy.preprocessing import read_image

DETECTIONS_FILE = "detections.json"


def label_color(label: int) -> tuple[int, int, int]:
    """A saturated color per label, stable across runs (golden-ratio hue steps)."""
    import colorsys

    red, green, blue = colorsys.hsv_to_rgb((label * 0.618033988749895) % 1.0, 0.85, 0.95)
    return int(red * 255), int(green * 255), int(blue * 255)


def draw_detections(rgb: np.ndarray, result: ImageResult):
    """uint8 [H, W, 3] -> PIL image with each detection's box (2 px, its label's color) and 'name score'."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(rgb).convert("RGB")
    draw = ImageDraw.Draw(image)
    for detection in result.detections:
        color = label_color(detection.label)
        draw.rectangle([round(v) for v in detection.box], outline=color, width=2)
        x0, y0 = round(detection.box[0]), round(detection.box[1])
        text = f"{detection.name} {detection.score:.2f}"
        left, top, right, bottom = draw.textbbox((x0, y0), text)
        draw.rectangle([x0, y0 - (bottom - top) - 2, x0 + (right - left) + 2, y0], fill=color)
        draw.text((x0 + 1, y0 - (bottom - top) - 2), text, fill=(0, 0, 0))
    return image


def segment_colors(result: ImageResult) -> dict[int, tuple[int, int, int]]:
    """Segment id -> color: its label's color, shifted per instance so two segments never share one."""
    colors, used = {}, set()
    for segment in result.segments or []:
        red, green, blue = label_color(segment.label)
        while (red, green, blue) in used:
            red, green, blue = (red + 37) % 256, (green + 91) % 256, (blue + 53) % 256
        used.add((red, green, blue))
        colors[segment.id] = (red, green, blue)
    return colors


def draw_segments(result: ImageResult):
    """segment_map [H, W] -> PIL RGB image, black where no segment."""
    from PIL import Image

    palette = np.zeros((len(result.segments) + 1, 3), dtype=np.uint8)
    for segment_id, color in segment_colors(result).items():
        palette[segment_id + 1] = color
    return Image.fromarray(palette[result.segment_map + 1])


@dataclass
class PredictionRun:
    results: list[ImageResult]
    detections_file: Path
    written: list[Path]


def _unique_stems(sources: list[str], output_dir: Path) -> list[str]:
    """One output stem per image, never two alike (a/x.jpg and b/x.jpg -> x, x-2; x.png, x.jpg, x-2.jpg -> x, x-2,
    x-2-2), never one whose ``<stem>.png`` is another's ``<stem>.segments.png``, and never one whose picture would
    replace an input image (``--output`` the images' own folder)."""
    inputs = {Path(source).resolve() for source in sources}
    stems, taken = [], set()

    def free(candidate: str) -> bool:
        pictures = (output_dir / f"{candidate}.png", output_dir / f"{candidate}.segments.png")
        return (
            candidate not in taken
            and not candidate.endswith(".segments")
            and not any(picture.resolve() in inputs for picture in pictures)
        )

    for source in sources:
        stem = Path(source).stem or "image"
        candidate, number = stem, 1
        while not free(candidate):
            number += 1
            candidate = f"{stem}-{number}"
        taken.add(candidate)
        stems.append(candidate)
    return stems


def check_output_folder(output_dir, images: list) -> Path:
    """The folder predict writes into: it must exist as a folder and not be one of the images."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise DetrDeployError(f"--output {output_dir} is a file; predict writes a folder of pictures: give a folder")
    if not output_dir.is_dir():
        raise DetrDeployError(f"output directory {output_dir} does not exist; create it first")
    if not images:
        raise DetrDeployError("no images given")
    return output_dir


def predict(
    detector: Detector, images: list, output_dir, *, on_image: Callable[[ImageResult], None] = None
) -> PredictionRun:
    """Detect on ``images`` (paths) and write ``<stem>.png`` (boxes drawn), for panoptic models
    ``<stem>.segments.png``, and ``detections.json`` into ``output_dir``. Images that fail are reported in the
    JSON and to ``on_image`` with their error; the others are still written."""
    output_dir = check_output_folder(output_dir, images)
    results = detector.detect(list(images))
    written = []
    for stem, image, result in zip(_unique_stems([str(image) for image in images], output_dir), images, results):
        if result.error is None:
            _, rgb = read_image(image)
            with atomic_output(output_dir / f"{stem}.png") as temporary:
                draw_detections(rgb, result).save(temporary, format="PNG")
            written.append(output_dir / f"{stem}.png")
            if result.segment_map is not None:
                colors = segment_colors(result)
                for segment in result.segments:
                    segment.color = list(colors[segment.id])
                with atomic_output(output_dir / f"{stem}.segments.png") as temporary:
                    draw_segments(result).save(temporary, format="PNG")
                written.append(output_dir / f"{stem}.segments.png")
        if on_image:
            on_image(result)
    data = {
        "model": detector.metadata.get("detr_deploy.model", "unknown"),
        "score_threshold": detector.score_threshold,
        "images": [result.to_dict() for result in results],
    }
    with atomic_output(output_dir / DETECTIONS_FILE) as temporary:
        temporary.write_text(json.dumps(data, indent=2) + "\n")
    return PredictionRun(results, output_dir / DETECTIONS_FILE, written)
