"""The CUDA kernel's per-thread code run on the host (tests/plugins/cpp/msda_host_kernel.cpp): the same functions the
kernel calls (plugins/msda/msdaThread.h: level copy into "shared memory", index decomposition, sampling, the vector
loads and stores of fp32, fp16 and bf16), for every thread index of every block of the launch the CUDA launcher
would make, with the launcher's own choice of instantiation and vector width. Host compiler and cmake only: this
checks the GPU's code paths in CI, where there is no GPU and no nvcc. Against the PyTorch reference, in float64."""

import ctypes
import math

import pytest
import torch

from detr_deploy.ops import ms_deform_attn_reference
from detr_deploy.ops.msda_native import TYPE_CODES
from tests.helpers import random_case

_POINTER, _I32, _I64 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64
# Elements of guard before and after each buffer: a multiple of 16 bytes for every type, so alignment is kept.
GUARD = 16
OUTPUT_SENTINEL = 1234.0  # exact in fp16 and bf16


class HostKernel:
    """``detr_msda_forward_cuda`` with the kernel's threads run on the host; same argument conventions."""

    def __init__(self, library):
        self._library = ctypes.CDLL(str(library))
        self._forward = self._library.detr_msda_forward_host
        self._forward.argtypes = [_POINTER, ctypes.c_int, _POINTER, _POINTER, ctypes.c_int, _POINTER, _POINTER]
        self._forward.argtypes += [ctypes.c_int, _POINTER, _I64, _I64, _I32, _I32, _I64, _I32, _I32, _I64, _I32]
        self._forward.argtypes += [ctypes.POINTER(_I32)]
        self._forward.restype = ctypes.c_int
        for name in ("detr_msda_host_to_float", "detr_msda_host_from_float"):
            getattr(self._library, name).argtypes = [ctypes.c_int, _POINTER, _POINTER, _I64]
            getattr(self._library, name).restype = ctypes.c_int

    def __call__(self, value, shapes, starts, locations, weights, *, blocks=0, threads_per_block=0, shift=0):
        """Returns (output, vector width used). Every input sits in a NaN-filled buffer (a read outside its tensor
        turns the output NaN); the output starts NaN (an element no thread writes stays NaN) between sentinels (a
        write past either end is caught). ``shift`` moves value and output by that many elements (misalignment)."""
        batch, num_values, heads, head_dim = value.shape
        _, num_queries, _, levels, points, _ = locations.shape
        inputs = [
            _guarded(t, shift if i == 0 else 0) for i, t in enumerate((value, shapes, starts, locations, weights))
        ]
        output_shape = (batch, num_queries, heads, head_dim)
        output_buffer = torch.full((2 * GUARD + shift + math.prod(output_shape),), float("nan"), dtype=value.dtype)
        output_buffer[: GUARD + shift] = OUTPUT_SENTINEL
        output_buffer[-GUARD:] = OUTPUT_SENTINEL
        width = _I32(0)
        status = self._forward(
            inputs[0][1],
            TYPE_CODES[value.dtype],
            inputs[1][1],
            inputs[2][1],
            int(shapes.dtype == torch.int64),
            inputs[3][1],
            inputs[4][1],
            TYPE_CODES[locations.dtype],
            output_buffer.data_ptr() + (GUARD + shift) * output_buffer.element_size(),
            batch,
            num_values,
            heads,
            head_dim,
            num_queries,
            levels,
            points,
            blocks,
            threads_per_block,
            ctypes.byref(width),
        )
        if status != 0:
            raise ValueError(f"the launch was refused (status {status})")
        assert (output_buffer[: GUARD + shift] == OUTPUT_SENTINEL).all(), "a thread wrote before the output"
        assert (output_buffer[-GUARD:] == OUTPUT_SENTINEL).all(), "a thread wrote past the output"
        return output_buffer[GUARD + shift : -GUARD].view(output_shape), width.value

    def to_float(self, type_code, values: torch.Tensor) -> torch.Tensor:
        out = torch.empty(values.numel(), dtype=torch.float32)
        assert self._library.detr_msda_host_to_float(type_code, values.data_ptr(), out.data_ptr(), values.numel()) == 0
        return out

    def from_float(self, type_code, values: torch.Tensor, dtype) -> torch.Tensor:
        out = torch.empty(values.numel(), dtype=dtype)
        assert (
            self._library.detr_msda_host_from_float(type_code, values.data_ptr(), out.data_ptr(), values.numel()) == 0
        )
        return out


def _guarded(tensor: torch.Tensor, shift: int):
    """(buffer, address of the tensor's copy in it): NaN (or -1 for indices) around the tensor."""
    filler = -1 if not tensor.dtype.is_floating_point else float("nan")
    buffer = torch.full((2 * GUARD + shift + tensor.numel(),), filler, dtype=tensor.dtype)
    buffer[GUARD + shift : GUARD + shift + tensor.numel()] = tensor.flatten()
    return buffer, buffer.data_ptr() + (GUARD + shift) * buffer.element_size()


@pytest.fixture(scope="module")
def host_kernel(plugin_test_build):
    return HostKernel(plugin_test_build.host_kernel)


def launcher_width(head_dim: int, element_size: int, aligned: bool = True) -> int:
    """The launcher's rule: 16 bytes of channels per thread when the head dimension allows, else 8, else 1."""
    for width in (16 // element_size, 8 // element_size):
        if aligned and head_dim % width == 0:
            return width
    return 1


# (value/output type, sampling input type, max error against the reference of the rounded inputs, as a multiple of
# |reference| (half an ulp: one rounding of the fp32 accumulator) plus an absolute 1e-5; max abs error against the
# fp32 inputs' reference, as tests/plugins/test_msda_cuda_kernel.py allows on the GPU)
PRECISIONS = [
    pytest.param(torch.float32, torch.float32, 0.0, 1e-5, id="fp32"),
    pytest.param(torch.float16, torch.float16, 2.0**-11, 5e-3, id="fp16"),
    pytest.param(torch.float16, torch.float32, 2.0**-11, 5e-3, id="fp16-fp32-sampling"),
    pytest.param(torch.bfloat16, torch.bfloat16, 2.0**-8, 3e-2, id="bf16"),
    pytest.param(torch.bfloat16, torch.float32, 2.0**-8, 3e-2, id="bf16-fp32-sampling"),
]

# batch, levels (H, W), queries, heads, head dim, points. Widths fp32 / 16-bit types: D=32 and 16: 4 / 8 (16-byte
# vectors), D=12: 4 / 4 (16 / 8 bytes), D=6: 2 / 1 (8 bytes / scalar), D=5: 1 / 1 (4-byte words / scalar).
SHAPES = [
    pytest.param(2, [(6, 9), (3, 5), (2, 2), (1, 1)], 9, 8, 32, 4, id="deformable-detr-heads"),
    pytest.param(1, [(5, 3), (1, 7)], 11, 3, 12, 3, id="D12"),
    pytest.param(2, [(4, 4), (2, 3), (1, 2)], 5, 2, 6, 2, id="D6"),
    pytest.param(1, [(3, 5)], 4, 5, 5, 1, id="D5-one-level-one-point"),
    pytest.param(1, [(2 + level % 3, 1 + level % 2) for level in range(16)], 3, 1, 8, 2, id="16-levels"),
    pytest.param(3, [(7, 5), (4, 3)], 2, 4, 16, 4, id="D16-batch3"),
]


def check(output, case, dtype, location_dtype, relative, absolute_fp32):
    value, shapes, starts, locations, weights = case
    rounded = (value.to(dtype).double(), shapes, starts, locations.to(location_dtype).double())
    expected = ms_deform_attn_reference(*rounded, weights.to(location_dtype).double())
    assert not output.isnan().any(), "an output element was not written, or a read left its tensor"
    error = (output.double() - expected).abs()
    assert (error <= relative * expected.abs() + 1e-5).all(), f"max error {error.max().item():.3g}"
    exact = ms_deform_attn_reference(*(t.double() if t.is_floating_point() else t for t in case))
    assert (output.double() - exact).abs().max().item() <= absolute_fp32


@pytest.mark.slow
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("dtype, location_dtype, relative, absolute_fp32", PRECISIONS)
@pytest.mark.parametrize("batch, spatial_shapes, num_queries, num_heads, head_dim, num_points", SHAPES)
def test_every_thread_of_the_launch_matches_the_reference(
    host_kernel,
    dtype,
    location_dtype,
    relative,
    absolute_fp32,
    index_dtype,
    batch,
    spatial_shapes,
    num_queries,
    num_heads,
    head_dim,
    num_points,
):
    case = random_case(batch, spatial_shapes, num_queries, num_heads, head_dim, num_points, seed=11, spread=0.3)
    value, shapes, starts, locations, weights = case
    output, width = host_kernel(
        value.to(dtype),
        shapes.to(index_dtype),
        starts.to(index_dtype),
        locations.to(location_dtype),
        weights.to(location_dtype),
    )
    element_size = torch.empty((), dtype=dtype).element_size()
    assert width == launcher_width(head_dim, element_size)
    check(output, case, dtype, location_dtype, relative, absolute_fp32)


@pytest.mark.slow
@pytest.mark.parametrize("dtype, location_dtype, relative, absolute_fp32", PRECISIONS)
def test_misaligned_tensors_take_the_scalar_path(host_kernel, dtype, location_dtype, relative, absolute_fp32):
    # value and output one element off 16- and 8-byte alignment: the launcher falls back to one channel per thread.
    case = random_case(2, [(5, 4), (3, 2)], 6, 4, 32, 3, seed=12, spread=0.3)
    value, shapes, starts, locations, weights = case
    cast = (value.to(dtype), shapes, starts, locations.to(location_dtype), weights.to(location_dtype))
    output, width = host_kernel(*cast, shift=1)
    assert width == 1
    check(output, case, dtype, location_dtype, relative, absolute_fp32)


@pytest.mark.slow
@pytest.mark.parametrize("dtype, location_dtype, relative, absolute_fp32", PRECISIONS)
def test_grid_stride_loop_covers_more_items_than_threads(host_kernel, dtype, location_dtype, relative, absolute_fp32):
    # 3 blocks of 32 threads for 2 * 13 * 8 * 32 / V items: every thread loops over several work items, and the
    # 32 threads of a block copy 16 levels with a stride (less than one level each for most threads).
    case = random_case(2, [(3, 2 + level % 4) for level in range(16)], 13, 8, 32, 2, seed=13, spread=0.3)
    value, shapes, starts, locations, weights = case
    cast = (value.to(dtype), shapes, starts, locations.to(location_dtype), weights.to(location_dtype))
    output, _ = host_kernel(*cast, blocks=3, threads_per_block=32)
    check(output, case, dtype, location_dtype, relative, absolute_fp32)
    # One thread per block: a single thread copies every level and does every item of its block.
    output, _ = host_kernel(*cast, blocks=2, threads_per_block=1)
    check(output, case, dtype, location_dtype, relative, absolute_fp32)


@pytest.mark.slow
def test_invalid_calls_are_refused_as_on_the_gpu(host_kernel):
    value, shapes, starts, locations, weights = random_case(1, [(2, 2)] * 17, 3, 1, 2, 1)
    with pytest.raises(ValueError, match="status -1"):  # 17 levels: more than the kernel's level table holds
        host_kernel(value, shapes, starts, locations, weights)
    value, shapes, starts, locations, weights = random_case(1, [(2, 2)], 3, 1, 2, 1)
    with pytest.raises(ValueError, match="status -1"):  # fp16 sampling inputs under an fp32 value: no instantiation
        host_kernel(value, shapes, starts, locations.half(), weights.half())


# The host build's fp16 and bf16 stand-ins convert as CUDA's __half / __nv_bfloat16 do (round to nearest even); the
# device build uses CUDA's own types. Checked against torch on every 16-bit pattern and on the hard float cases.
@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_host_16_bit_types_convert_like_torch(host_kernel, dtype):
    code = TYPE_CODES[dtype]
    every_pattern = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    widened = host_kernel.to_float(code, every_pattern)
    expected = every_pattern.float()
    assert torch.equal(widened.isnan(), expected.isnan())
    assert torch.equal(widened[~expected.isnan()].view(torch.int32), expected[~expected.isnan()].view(torch.int32))

    finite = expected[expected.isfinite()].unique().double()  # sorted
    midpoints = ((finite[1:] + finite[:-1]) / 2).float()  # exact in fp32: ties, rounded to even
    near = torch.cat(
        [midpoints.nextafter(torch.tensor(float("inf"))), midpoints.nextafter(torch.tensor(-float("inf")))]
    )
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 65504.0, 65519.99, 65520.0, 3.4e38])
    special = torch.cat([special, torch.tensor([2.0**-24, 2.0**-25, 2.0**-25 * 1.0001, 2.0**-26, 2.0**-14, 1e-45])])
    generator = torch.Generator().manual_seed(0)
    spread = torch.randn(100_000, generator=generator) * torch.exp2(
        torch.randint(-30, 20, (100_000,), generator=generator)
    )
    floats = torch.cat([finite.float(), midpoints, near, special, -special, spread])
    narrowed = host_kernel.from_float(code, floats, dtype)
    expected = floats.to(dtype)
    assert torch.equal(narrowed.isnan(), expected.isnan())
    mismatch = (narrowed.view(torch.int16) != expected.view(torch.int16)) & ~expected.isnan()
    assert not mismatch.any(), f"{floats[mismatch][:5].tolist()} -> {narrowed[mismatch][:5].tolist()}"
