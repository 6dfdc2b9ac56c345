"""The CUDA kernel against the PyTorch reference on the GPU (skipped without one). The kernel is built for the
visible GPU, or taken from ``DETR_DEPLOY_CUDA_KERNEL`` (the GPU check sets it to the library it has just built)."""

import os
from pathlib import Path

import pytest
import torch

from detr_deploy.ops import ms_deform_attn_reference
from tests.helpers import random_case

# (value/output type, sampling input type, max abs error against the fp32 reference)
PRECISIONS = [
    (torch.float32, torch.float32, 1e-5),
    (torch.float16, torch.float16, 5e-3),
    (torch.float16, torch.float32, 5e-3),
    (torch.bfloat16, torch.float32, 3e-2),
]


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    from detr_deploy.ops.msda_native import MsdaCudaKernel
    from detr_deploy.plugins import build_plugins

    given = os.environ.get("DETR_DEPLOY_CUDA_KERNEL")
    if given:
        return MsdaCudaKernel(Path(given))
    major, minor = torch.cuda.get_device_capability()
    build = build_plugins(tmp_path_factory.mktemp("gpu-build"), cuda_architectures=f"{major}{minor}")
    assert build.cuda_library is not None, build.skipped
    return MsdaCudaKernel(build.cuda_library)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, location_dtype, tolerance", PRECISIONS)
@pytest.mark.parametrize(
    "batch, spatial_shapes, num_queries",
    [(1, [(100, 134), (50, 67), (25, 34), (13, 17)], 17821), (2, [(64, 80), (32, 40), (16, 20), (8, 10)], 300)],
)
def test_kernel_matches_fp32_reference(kernel, dtype, location_dtype, tolerance, batch, spatial_shapes, num_queries):
    value, shapes, starts, locations, weights = random_case(batch, spatial_shapes, num_queries, 8, 32, 4, seed=2)
    expected = ms_deform_attn_reference(value, shapes, starts, locations, weights).cuda()
    output = kernel(
        value.cuda().to(dtype),
        shapes.cuda(),
        starts.cuda(),
        locations.cuda().to(location_dtype),
        weights.cuda().to(location_dtype),
    )
    torch.cuda.synchronize()
    error = (output.float() - expected).abs().max().item()
    print(f"{dtype} value, {location_dtype} sampling, Lq={num_queries}: max abs error {error:.2e}")
    assert error <= tolerance


@pytest.mark.gpu
def test_int32_indices_give_the_same_result(kernel):
    value, shapes, starts, locations, weights = (t.cuda() for t in random_case(2, [(9, 7), (5, 4)], 13, 8, 32, 4))
    with_int64 = kernel(value, shapes, starts, locations, weights)
    with_int32 = kernel(value, shapes.int(), starts.int(), locations, weights)
    torch.cuda.synchronize()
    assert torch.equal(with_int64, with_int32)
