"""Calling our CUDA MSDA kernel (``libdetr_msda_cuda.so``, C ABI) on torch CUDA tensors, for tests and
benchmarks. The TensorRT plugin calls the same launcher."""

import ctypes
from pathlib import Path

import torch

from detr_deploy.errors import DetrDeployError

# msdaLauncher.h numbers storage types as TensorRT's DataType does.
TYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 7}


class MsdaCudaKernel:
    def __init__(self, library: Path):
        self._library = ctypes.CDLL(str(library))
        function = self._library.detr_msda_forward_cuda
        pointer, i32, i64 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64
        function.argtypes = [
            pointer,
            ctypes.c_int,
            pointer,
            pointer,
            ctypes.c_int,
            pointer,
            pointer,
            ctypes.c_int,
            pointer,
            i64,
            i64,
            i32,
            i32,
            i64,
            i32,
            i32,
            pointer,
        ]
        function.restype = ctypes.c_int
        self._function = function

    def __call__(self, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        """Same I/O as ``ms_deform_attn`` (CUDA tensors); value and output fp32/fp16/bf16, sampling inputs fp32 or
        the value's type, indices int32 or int64. Launches on the current stream. Returns [N, Lq, M, D]."""
        batch, num_values, heads, head_dim = value.shape
        _, num_queries, _, levels, points, _ = sampling_locations.shape
        output = torch.empty((batch, num_queries, heads, head_dim), dtype=value.dtype, device=value.device)
        tensors = [
            t.contiguous() for t in (value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
        ]
        status = self._function(
            tensors[0].data_ptr(),
            TYPE_CODES[value.dtype],
            tensors[1].data_ptr(),
            tensors[2].data_ptr(),
            int(spatial_shapes.dtype == torch.int64),
            tensors[3].data_ptr(),
            tensors[4].data_ptr(),
            TYPE_CODES[sampling_locations.dtype],
            output.data_ptr(),
            batch,
            num_values,
            heads,
            head_dim,
            num_queries,
            levels,
            points,
            torch.cuda.current_stream().cuda_stream,
        )
        if status != 0:
            raise DetrDeployError(f"MSDA CUDA kernel failed to launch (status {status})")
        return output
