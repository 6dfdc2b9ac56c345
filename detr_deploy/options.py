"""Values users type on the command line, parsed and checked before any expensive work: sizes, batch sizes, lists,
tolerances, thresholds, counts, and whether a run fits in memory. Each bad value is a DetrDeployError that says
what was given and what is expected."""

import math
import os
import re

from detr_deploy.errors import DetrDeployError


def parse_sizes(text: str, option: str = "--sizes") -> list[tuple[int, int]]:
    """'480x640,600x800' -> [(480, 640), (600, 800)] as (height, width)."""
    sizes = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        match = re.fullmatch(r"(\d+)x(\d+)", item)
        if not match or min(int(match[1]), int(match[2])) < 64 or max(int(match[1]), int(match[2])) > 8192:
            raise DetrDeployError(
                f"malformed size {item!r} in {option} {text!r}; write HEIGHTxWIDTH, each from 64 to 8192, "
                "e.g. 480x640,800x1088"
            )
        sizes.append((int(match[1]), int(match[2])))
    if not sizes:
        raise DetrDeployError(f"no sizes in {option} {text!r}; write HEIGHTxWIDTH[,HEIGHTxWIDTH...], e.g. 480x640")
    return sizes


def parse_batch_sizes(text: str, option: str = "--batch-sizes") -> list[int]:
    """'1,3' -> [1, 3] (each 1..1024, the exports' batch range)."""
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items or not all(re.fullmatch(r"[1-9]\d{0,3}", item) and int(item) <= 1024 for item in items):
        raise DetrDeployError(
            f"malformed batch sizes in {option} {text!r}; write integers from 1 to 1024 separated by commas, e.g. 1,3"
        )
    return [int(item) for item in items]


def parse_names(text: str, option: str, choices) -> list[str]:
    """'eager, onnxruntime' -> ['eager', 'onnxruntime'], each one of ``choices``; an empty list is refused."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise DetrDeployError(f"{option} {text!r} names nothing; choose from: {', '.join(choices)}")
    unknown = [name for name in names if name not in choices]
    if unknown:
        raise DetrDeployError(f"unknown {option} value {unknown[0]!r}; choose from: {', '.join(choices)}")
    return list(dict.fromkeys(names))


def check_tolerance(value: float, option: str) -> float:
    """A tolerance: finite and >= 0 (None passes: the default applies)."""
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise DetrDeployError(f"{option} must be a finite number >= 0, not {value}")
    return value


def check_probability(value: float, option: str) -> float:
    """A score threshold: in [0, 1] (scores are probabilities)."""
    if value is not None and not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise DetrDeployError(f"{option} must be between 0 and 1 (scores are probabilities), not {value}")
    return value


def check_count(value: int, option: str, minimum: int = 1, maximum: int = None) -> int:
    """An integer option with bounds (None passes: the default applies)."""
    if value is None:
        return value
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"from {minimum} to {maximum}" if maximum is not None else f"at least {minimum}"
        raise DetrDeployError(f"{option} must be {bound}, not {value}")
    return value


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux), else the physical memory size."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits_in_memory(config, sizes, batch_sizes) -> None:
    """Refuse (before running anything) a size and batch whose eager run of the model ``config`` describes would not
    fit in this machine's memory (its family estimates the peak: ``config.estimated_peak_bytes``)."""
    available = available_memory_bytes()
    for height, width in sizes:
        for batch in batch_sizes:
            needed = config.estimated_peak_bytes(batch, height, width)
            if needed > available:
                raise DetrDeployError(
                    f"batch {batch} at {height}x{width} needs about {needed / 2**30:.0f} GiB in eager PyTorch, more "
                    f"than the {available / 2**30:.0f} GiB available; use smaller --sizes or --batch-sizes"
                )
