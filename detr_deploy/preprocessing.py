"""Images in, network input out: reading any image a user has (paths, PIL images, uint8 arrays) as the RGB the
models were trained on, and the official evaluation's resize (shorter side 800, longer side at most 1333, bilinear)
and ImageNet normalization. One place for it: the Detector, predict and verify-parity all read images here.
"""

import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from detr_deploy import contract
from detr_deploy.errors import DetrDeployError

# Decoding is refused above this: a header can claim 100000 x 100000 pixels (30 GB of RGB) in a few bytes.
MAX_PIXELS = 100_000_000
# The smallest side the exports take (contract.SIDE_RANGE); thinner resized images are refused, not fed as 0 px.
MIN_SIDE = contract.SIDE_RANGE[0]


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


def _rgb_array(image) -> np.ndarray:
    """A PIL image in any mode -> uint8 [H, W, 3] RGB, upright as its EXIF orientation says.

    16-bit and 32-bit grayscale (PNG/TIFF 'I;16', 'I', 'F') are scaled down to 8 bits: PIL's own conversion clips
    them at 255, which turns a 16-bit picture into a near-white one. Palette, gray, alpha and CMYK images convert
    as PIL does (alpha dropped, as the official code's ``convert('RGB')``)."""
    from PIL import ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        if image.mode == "F" and values.max(initial=0) <= 1.0:
            top = 1.0  # float images in 0..1
        gray = np.clip(np.round(values / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "palette images with transparency ... convert to RGBA": we drop alpha
        return np.asarray(image.convert("RGB"))


def read_image(image) -> tuple[str, np.ndarray]:
    """A path, PIL image or uint8 array [H, W, 3] (RGB) -> (a name for it, uint8 RGB [H, W, 3]).

    Raises DetrDeployError naming the image for anything that cannot be used (missing, not an image, truncated,
    larger than MAX_PIXELS)."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, (str, Path)):
        path = Path(image)
        if path.is_dir():
            raise DetrDeployError(f"image {path} is a directory; give image files")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as opened:
                    _check_pixels(str(path), opened.width, opened.height)
                    return str(path), _rgb_array(opened)
        except FileNotFoundError:
            raise DetrDeployError(f"image {path} does not exist") from None
        except Image.DecompressionBombError as error:
            raise DetrDeployError(
                f"image {path} is too large to decode ({_reason(error)}), over the "
                f"{MAX_PIXELS // 1_000_000}-megapixel limit; downscale it first"
            ) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise DetrDeployError(f"cannot read image {path}: {_reason(error)}") from None
    if isinstance(image, Image.Image):
        _check_pixels("<PIL image>", image.width, image.height)
        return "<PIL image>", _rgb_array(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise DetrDeployError(f"an image array must be uint8 [H, W, 3] RGB, not {image.dtype} {list(image.shape)}")
        _check_pixels("<array>", image.shape[1], image.shape[0])
        return "<array>", image
    raise DetrDeployError(f"cannot read an image from a {type(image).__name__}; give a path, PIL image or uint8 array")


def _reason(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _check_pixels(name: str, width: int, height: int) -> None:
    if width < 1 or height < 1:
        raise DetrDeployError(f"image {name} is empty ({width}x{height} pixels)")
    if width * height > MAX_PIXELS:
        raise DetrDeployError(
            f"image {name} is {width}x{height} ({width * height / 1e6:.0f} megapixels), more than the "
            f"{MAX_PIXELS // 1_000_000}-megapixel limit; downscale it first"
        )


# The official evaluation resize of DETR, Deformable DETR and DINO: shorter side 800, longer at most 1333, keeping
# the aspect. Each family's config says its own (``config.resize``, e.g. RT-DETR's "fixed=640x640"), and exports
# record it (contract.META_RESIZE).
KEEP_ASPECT_RESIZE = contract.RESIZE_KEEP_ASPECT


@dataclass(frozen=True)
class InputRecipe:
    """How an image becomes one model's input: resize rule, side divisor and normalization."""

    mean: tuple[float, float, float] = contract.IMAGENET_MEAN
    std: tuple[float, float, float] = contract.IMAGENET_STD
    shorter_side: int = 800
    max_size: int = 1333
    # (height, width) every image is resized to, aspect not kept (RT-DETR); None keeps the aspect.
    fixed_size: tuple[int, int] = None
    # Sides are rounded to multiples of this (models that need it: RT-DETR, 32).
    size_divisor: int = 1

    @classmethod
    def for_config(cls, config, shorter_side: int = None, max_size: int = None) -> "InputRecipe":
        """The official recipe of ``config``'s family; ``shorter_side``/``max_size`` switch to an aspect-keeping
        resize of that size (rounded to the model's size divisor)."""
        return cls.parse(
            config.resize,
            config.normalize_mean,
            config.normalize_std,
            config.size_divisor,
            shorter_side,
            max_size,
        )

    @classmethod
    def from_metadata(cls, metadata: dict, shorter_side: int = None, max_size: int = None) -> "InputRecipe":
        """The recipe an export records (files without the keys: the DETR defaults)."""

        def numbers(key, default):
            return tuple(float(v) for v in metadata[key].split(",")) if key in metadata else default

        return cls.parse(
            metadata.get(contract.META_RESIZE, KEEP_ASPECT_RESIZE),
            numbers(contract.META_MEAN, contract.IMAGENET_MEAN),
            numbers(contract.META_STD, contract.IMAGENET_STD),
            int(metadata.get(contract.META_SIZE_DIVISOR, 1)),
            shorter_side,
            max_size,
        )

    @classmethod
    def parse(cls, rule: str, mean, std, size_divisor: int, shorter_side=None, max_size=None) -> "InputRecipe":
        """``rule``: "shorter=800,max=1333" or "fixed=640x640" (contract.META_RESIZE)."""
        fields = dict(item.split("=", 1) for item in rule.split(",") if "=" in item)
        recipe = cls(tuple(mean), tuple(std), size_divisor=max(1, size_divisor))
        if shorter_side is not None or max_size is not None:
            return replace(recipe, shorter_side=shorter_side or 800, max_size=max_size or 1333)
        if "fixed" in fields:
            height, width = (int(v) for v in fields["fixed"].split("x"))
            return replace(recipe, fixed_size=(height, width))
        return replace(recipe, shorter_side=int(fields.get("shorter", 800)), max_size=int(fields.get("max", 1333)))

    def network_size(self, name: str, height: int, width: int) -> tuple[int, int]:
        """The (height, width) a ``height`` x ``width`` image is resized to, refused (naming the image) when a side
        would fall below MIN_SIDE pixels: very thin images would otherwise be fed as 0-pixel tensors."""
        if self.fixed_size is not None:
            return self.fixed_size
        resized = resized_size(height, width, self.shorter_side, self.max_size)
        if self.size_divisor > 1:
            # Nearest multiple: a slight aspect change, as no padding mask can hide padding from these models.
            resized = tuple(
                max(self.size_divisor, round(side / self.size_divisor) * self.size_divisor) for side in resized
            )
        if min(resized) < MIN_SIDE:
            raise DetrDeployError(
                f"image {name} is {width}x{height}: resized for the model it would be {resized[1]}x{resized[0]}, "
                f"and each side must be at least {MIN_SIDE} pixels; crop or pad it"
            )
        return resized

    def prepare(self, name: str, rgb: np.ndarray) -> np.ndarray:
        """uint8 RGB [H, W, 3] -> float32 [3, h, w]: resized (bilinear) and normalized."""
        from PIL import Image

        height, width = self.network_size(name, rgb.shape[0], rgb.shape[1])
        return normalize(np.asarray(Image.fromarray(rgb).resize((width, height), Image.BILINEAR)), self.mean, self.std)

    def load_image(self, path) -> np.ndarray:
        """Read an image file -> float32 [3, H, W], resized and normalized."""
        name, rgb = read_image(path)
        return self.prepare(name, rgb)


def network_size(name: str, height: int, width: int, shorter_side: int = 800, max_size: int = 1333):
    """The official DETR resize of a ``height`` x ``width`` image (see InputRecipe.network_size)."""
    return InputRecipe(shorter_side=shorter_side, max_size=max_size).network_size(name, height, width)


def prepare(name: str, rgb: np.ndarray, shorter_side: int = 800, max_size: int = 1333) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> float32 [3, h, w]: resized (bilinear) and ImageNet-normalized as DETR expects."""
    return InputRecipe(shorter_side=shorter_side, max_size=max_size).prepare(name, rgb)


def load_image(path, shorter_side: int = 800, max_longer_side: int = 1333) -> np.ndarray:
    """Read an image file -> float32 [3, H, W], resized and normalized as the official DETR models expect."""
    return InputRecipe(shorter_side=shorter_side, max_size=max_longer_side).load_image(path)
