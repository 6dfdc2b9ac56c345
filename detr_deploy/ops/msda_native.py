"""Calling our native MSDA implementations (C ABI, ctypes) on torch tensors, for tests and benchmarks:
the host-compiled CPU reference of the kernel's math (``libdetr_msda_cpu.so``) and the CUDA kernel
(``libdetr_msda_cuda.so``) that the TensorRT plugin launches too. Both take the ``ms_deform_attn`` I/O."""

import ctypes
from pathlib import Path

import torch

from detr_deploy.errors import DetrDeployError

# msdaLauncher.h numbers storage types as TensorRT's DataType does.
TYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 7}
_POINTER, _I32, _I64 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64
# batch, S, M, D, Lq, L, P
_SIZE_TYPES = [_I64, _I64, _I32, _I32, _I64, _I32, _I32]


def _sizes(value: torch.Tensor, sampling_locations: torch.Tensor) -> tuple[int, ...]:
    batch, num_values, heads, head_dim = value.shape
    _, num_queries, _, levels, points, _ = sampling_locations.shape
    return batch, num_values, heads, head_dim, num_queries, levels, points


def _bind(library: Path, name: str, argtypes: list):
    function = getattr(ctypes.CDLL(str(library)), name)
    function.argtypes = argtypes
    function.restype = ctypes.c_int
    return function


class MsdaCpuReference:
    """fp32 on the CPU; int64 indices."""

    def __init__(self, library: Path):
        self._function = _bind(library, "detr_msda_forward_cpu_f32", [_POINTER] * 5 + _SIZE_TYPES + [_POINTER])

    def __call__(self, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        """Shapes as ``ms_deform_attn``; returns [N, Lq, M, D]."""
        sizes = _sizes(value, sampling_locations)
        output = torch.empty(sizes[0], sizes[4], sizes[2], sizes[3])
        tensors = [
            t.contiguous()
            for t in (value, spatial_shapes.long(), level_start_index.long(), sampling_locations, attention_weights)
        ]
        status = self._function(*(t.data_ptr() for t in tensors), *sizes, output.data_ptr())
        if status != 0:
            raise DetrDeployError(f"MSDA CPU reference refused its arguments (status {status})")
        return output


class MsdaCudaKernel:
    """value and output fp32/fp16/bf16; sampling inputs fp32 or the value's type; int32 or int64 indices."""

    def __init__(self, library: Path):
        self._function = _bind(
            library,
            "detr_msda_forward_cuda",
            [_POINTER, ctypes.c_int, _POINTER, _POINTER, ctypes.c_int, _POINTER, _POINTER, ctypes.c_int, _POINTER]
            + _SIZE_TYPES
            + [_POINTER],
        )

    def __call__(self, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        """CUDA tensors, shapes as ``ms_deform_attn``; launches on the current stream. Returns [N, Lq, M, D]."""
        sizes = _sizes(value, sampling_locations)
        output = torch.empty((sizes[0], sizes[4], sizes[2], sizes[3]), dtype=value.dtype, device=value.device)
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights = (
            t.contiguous() for t in (value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
        )
        status = self._function(
            value.data_ptr(),
            TYPE_CODES[value.dtype],
            spatial_shapes.data_ptr(),
            level_start_index.data_ptr(),
            int(spatial_shapes.dtype == torch.int64),
            sampling_locations.data_ptr(),
            attention_weights.data_ptr(),
            TYPE_CODES[sampling_locations.dtype],
            output.data_ptr(),
            *sizes,
            torch.cuda.current_stream().cuda_stream,
        )
        if status != 0:
            raise DetrDeployError(f"MSDA CUDA kernel failed to launch (status {status})")
        return output
