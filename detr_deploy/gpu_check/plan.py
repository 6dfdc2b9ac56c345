"""The pure parts of the GPU check: how its time budget is split between steps, and the GPU's physical memory
bandwidth (what the kernel's achieved bytes/s are compared with)."""

import ctypes
from dataclasses import dataclass

# A GPU machine is lent for minutes: the whole check fits in 8 minutes, the most it may take.
MAX_BUDGET_S = 480.0
# Kept out of every step: starting Python and torch, the GPU query, writing the summary.
RESERVE_S = 15.0
# Each step's share of MAX_BUDGET_S less RESERVE_S, in the order the steps run. A step may take what earlier steps
# left unused, never what later steps that will run are owed (``step_timeout``). Measured here (2 cores, no GPU):
# the one-architecture kernel build takes 6 s and the OSS schedule 2 s; a tiny model's export 5-12 s and its
# engine 1-3 s (TensorRT-RTX, ahead of time). The engines (6 families x fp32/fp16, TensorRT's tactic timing on
# a real GPU) are the step most likely to need its time, so it has the largest share.
STEP_SHARES_S = {"build": 60.0, "tests": 60.0, "benchmark": 90.0, "engines": 255.0}
# A step offered less than this is not started (it could not finish): it is skipped, saying the budget is spent.
MIN_STEP_S = 10.0


def scaled_shares(budget_s: float, shares=None) -> dict[str, float]:
    """The steps' shares of a ``budget_s`` budget (seconds, at most MAX_BUDGET_S, more than RESERVE_S): the shares
    of ``STEP_SHARES_S`` scaled down in proportion when the budget is smaller than the full one."""
    shares = dict(STEP_SHARES_S if shares is None else shares)
    if not RESERVE_S < budget_s <= MAX_BUDGET_S:
        raise ValueError(f"budget {budget_s} s is outside ({RESERVE_S}, {MAX_BUDGET_S}]")
    factor = min(1.0, (budget_s - RESERVE_S) / sum(shares.values()))
    return {name: share * factor for name, share in shares.items()}


def step_timeout(remaining_s: float, later_shares_s) -> float:
    """Seconds the next step may take: what is left of the budget (``remaining_s``, the reserve already taken out)
    less the shares of the steps after it that will run (``later_shares_s``); 0 when nothing is left for it."""
    return max(0.0, remaining_s - sum(later_shares_s))


@dataclass
class Bandwidth:
    """A GPU's physical (peak) memory bandwidth and where the figure came from."""

    bytes_per_s: float | None
    source: str


def bandwidth_from_clock(memory_clock_khz: float, bus_width_bits: int) -> float:
    """Peak bytes/s of a memory clocked at ``memory_clock_khz`` (as CUDA reports it) on a ``bus_width_bits`` bus:
    two transfers per clock (double data rate, as the CUDA samples compute it; HBM and GDDR alike)."""
    return 2.0 * memory_clock_khz * 1e3 * bus_width_bits / 8


# Data-sheet peak bandwidths (bytes/s) by device-name fragment, the most specific first (``"A100"`` before
# ``"A10"``), for when neither torch nor the driver reports the memory clock and bus width.
DATASHEET_BANDWIDTH = [
    ("GH200", 4.0e12),
    ("H200", 4.8e12),
    ("H100 NVL", 3.9e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),
    ("H800", 3.35e12),
    ("B200", 8.0e12),
    ("A100 80GB PCIe", 1.935e12),
    ("A100-SXM4-80GB", 2.039e12),
    ("A100", 1.555e12),
    ("A800", 2.039e12),
    ("L40S", 0.864e12),
    ("L40", 0.864e12),
    ("L4", 0.3e12),
    ("A10G", 0.6e12),
    ("A10", 0.6e12),
    ("T4", 0.32e12),
    ("V100", 0.9e12),
    ("RTX 4090", 1.008e12),
]


def bandwidth_from_name(device_name: str) -> Bandwidth:
    for fragment, bytes_per_s in DATASHEET_BANDWIDTH:
        if fragment in device_name:
            return Bandwidth(bytes_per_s, f"data sheet figure for '{fragment}' (the device name {device_name!r})")
    return Bandwidth(None, f"unknown: no memory clock reported and no data sheet entry for {device_name!r}")


# cuDeviceGetAttribute's CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE (kHz) and _GLOBAL_MEMORY_BUS_WIDTH (bits).
_CU_MEMORY_CLOCK_RATE, _CU_BUS_WIDTH = 36, 37


def _driver_memory_attributes(device_index: int) -> tuple[int, int] | None:
    """(memory clock kHz, bus width bits) from the CUDA driver (libcuda) itself, or None where it cannot say."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    device, clock, width = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    if driver.cuInit(0) != 0 or driver.cuDeviceGet(ctypes.byref(device), device_index) != 0:
        return None
    for value, attribute in ((clock, _CU_MEMORY_CLOCK_RATE), (width, _CU_BUS_WIDTH)):
        if driver.cuDeviceGetAttribute(ctypes.byref(value), attribute, device) != 0:
            return None
    return (clock.value, width.value) if clock.value > 0 and width.value > 0 else None


def physical_bandwidth(properties, device_index: int = 0) -> Bandwidth:
    """The peak memory bandwidth of a GPU whose ``torch.cuda.get_device_properties`` are ``properties``: from its
    memory clock and bus width as torch reports them, else as the CUDA driver does, else from the data sheet
    table by device name; ``Bandwidth.source`` says which."""
    clock = getattr(properties, "memory_clock_rate", None)
    width = getattr(properties, "memory_bus_width", None)
    if clock and width:
        return Bandwidth(
            bandwidth_from_clock(clock, width),
            f"torch.cuda.get_device_properties: memory clock {clock / 1e3:.0f} MHz x {width}-bit bus x 2",
        )
    attributes = _driver_memory_attributes(device_index)
    if attributes is not None:
        clock, width = attributes
        return Bandwidth(
            bandwidth_from_clock(clock, width),
            f"CUDA driver attributes: memory clock {clock / 1e3:.0f} MHz x {width}-bit bus x 2",
        )
    return bandwidth_from_name(properties.name)
