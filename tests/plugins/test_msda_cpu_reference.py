"""The kernel's sampling core, built with the host compiler, against the PyTorch reference op."""

import pytest

from detr_deploy.errors import DetrDeployError
from detr_deploy.ops import ms_deform_attn_reference
from detr_deploy.ops.msda_native import MsdaCpuReference
from tests.helpers import random_case


@pytest.fixture(scope="module")
def forward_cpu(msda_cpu_library):
    return MsdaCpuReference(msda_cpu_library)


@pytest.mark.parametrize(
    "batch, spatial_shapes, num_queries, num_heads, head_dim, num_points",
    [
        # Deformable DETR's heads (M*D = 8*32), four non-square levels, encoder-like (Lq = S)
        (1, [(16, 22), (8, 11), (4, 6), (2, 3)], 16 * 22 + 8 * 11 + 4 * 6 + 2 * 3, 8, 32, 4),
        # decoder-like: few queries, batch > 1
        (3, [(13, 17), (7, 9), (4, 5), (2, 3)], 30, 8, 32, 4),
        # odd sizes everywhere
        (2, [(5, 3), (1, 7)], 11, 3, 5, 3),
    ],
)
def test_cpu_core_matches_reference(forward_cpu, batch, spatial_shapes, num_queries, num_heads, head_dim, num_points):
    # spread 0.3: a good share of the points fall outside the map (zero padding).
    case = random_case(batch, spatial_shapes, num_queries, num_heads, head_dim, num_points, seed=5, spread=0.3)
    output = forward_cpu(*case)
    expected = ms_deform_attn_reference(*case)
    assert (output - expected).abs().max().item() <= 1e-5


def test_cpu_core_refuses_too_many_levels(forward_cpu):
    case = random_case(1, [(2, 2)] * 17, 3, 1, 2, 1)
    with pytest.raises(DetrDeployError, match="status 2"):
        forward_cpu(*case)
