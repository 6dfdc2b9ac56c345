"""Image preprocessing exactly as the official evaluation does it: shorter side 800, longer side at most 1333,
bilinear resize, ImageNet normalization."""

from pathlib import Path

import numpy as np

from detr_deploy import contract
from detr_deploy.errors import DetrDeployError


def resized_size(height: int, width: int, shorter_side: int = 800, max_longer_side: int = 1333) -> tuple[int, int]:
    """(height, width) after the official resize (``get_size_with_aspect_ratio`` of DETR's transforms)."""
    short, long = float(min(height, width)), float(max(height, width))
    if long / short * shorter_side > max_longer_side:
        shorter_side = int(round(max_longer_side * short / long))
    if (width <= height and width == shorter_side) or (height <= width and height == shorter_side):
        return height, width
    if width < height:
        return int(shorter_side * height / width), shorter_side
    return shorter_side, int(shorter_side * width / height)


def normalize(rgb: np.ndarray, mean=contract.IMAGENET_MEAN, std=contract.IMAGENET_STD) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [3, H, W] normalized."""
    scaled = rgb.astype(np.float32) / 255.0
    return ((scaled - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).transpose(2, 0, 1).copy()


def load_image(path, shorter_side: int = 800, max_longer_side: int = 1333) -> np.ndarray:
    """Read an image file -> float32 [3, H, W], resized and normalized as the official models expect."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except FileNotFoundError:
        raise DetrDeployError(f"image {path} does not exist") from None
    except (UnidentifiedImageError, OSError) as error:
        raise DetrDeployError(f"cannot read image {path}: {error}") from None
    height, width = resized_size(rgb.height, rgb.width, shorter_side, max_longer_side)
    rgb = rgb.resize((width, height), Image.BILINEAR)
    return normalize(np.asarray(rgb))
