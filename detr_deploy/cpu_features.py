"""What this machine's CPU offers the CPU runtimes' reduced precisions: int8 dot products (VNNI, AMX) and bf16 units.

Both change what a reduced-precision file computes, not only how fast: without VNNI, ONNX Runtime's and oneDNN's
u8 x s8 kernels on x86 add pairs of products into int16 (vpmaddubsw), which saturates with 8-bit weights, so int8
files for such CPUs are quantized with 7-bit weights (ONNX Runtime's reduce_range, NNCF's OverflowFix); without bf16
units OpenVINO's CPU plugin drops a bf16 precision hint and runs f32."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

# Linux /proc/cpuinfo flags of the x86 instructions that add u8 x s8 products straight into int32.
INT8_DOT_PRODUCT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_X86_MACHINES = ("x86_64", "amd64", "i386", "i686", "x86")


@dataclass(frozen=True)
class CpuFeatures:
    model: str  # /proc/cpuinfo's "model name" ("" where unread)
    x86: bool
    flags: frozenset[str]  # empty where unread (not Linux)
    flags_read: bool

    @property
    def int8_dot_product(self) -> bool | None:
        """True where u8 x s8 products add into int32 without saturating (VNNI/AMX; every non-x86 CPU here: Arm's
        dot products accumulate in int32); None on an x86 CPU whose flags could not be read."""
        if not self.x86:
            return True
        if not self.flags_read:
            return None
        return any(flag in self.flags for flag in INT8_DOT_PRODUCT_FLAGS)

    @property
    def bf16(self) -> bool | None:
        """True where the CPU has bf16 units (AVX512-BF16, AMX-BF16); None where its flags could not be read."""
        if not self.flags_read:
            return None
        return any(flag in self.flags for flag in BF16_FLAGS)

    def summary(self) -> str:
        def said(value: bool | None) -> str:
            return "unknown" if value is None else ("yes" if value else "no")

        return (
            f"{self.model or platform.machine()}: int8 dot products (VNNI/AMX) {said(self.int8_dot_product)}, "
            f"bf16 units {said(self.bf16)}"
        )


def cpu_features(cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuFeatures:
    """This machine's CPU, from ``cpuinfo`` (Linux's /proc/cpuinfo; elsewhere the flags are unread)."""
    x86 = platform.machine().lower() in _X86_MACHINES
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return CpuFeatures("", x86, frozenset(), False)
    return parse_cpuinfo(text, x86=x86)


def parse_cpuinfo(text: str, x86: bool) -> CpuFeatures:
    """CpuFeatures of a /proc/cpuinfo text (its first processor's model name and flags)."""
    model, flags, read = "", frozenset(), False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "features") and not read:
            flags, read = frozenset(value.split()), True
    return CpuFeatures(model, x86, flags, read)


def int8_weights_need_reduced_range(features: CpuFeatures = None) -> bool:
    """Whether int8 files quantized here should use 7-bit weights: on x86 CPUs without VNNI/AMX (and where that is
    unknown), 8-bit weights saturate ONNX Runtime's and oneDNN's int16 pair sums."""
    features = features or cpu_features()
    return features.int8_dot_product is not True
