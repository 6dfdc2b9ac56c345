"""The ms_deform_attn op and its reference, checked against an independent loop implementation."""

import numpy as np
import pytest
import torch

from detr_deploy.ops import ms_deform_attn, ms_deform_attn_reference
from tests.helpers import random_case


def loop_reference(value, shapes, starts, locations, weights):
    """Bilinear sampling written out pixel by pixel (align_corners=False, zeros outside)."""
    value, locations, weights = value.numpy(), locations.numpy(), weights.numpy()
    batch, _, num_heads, head_dim = value.shape
    _, num_queries, _, levels, num_points, _ = locations.shape
    out = np.zeros((batch, num_queries, num_heads, head_dim))
    for n in range(batch):
        for level, ((height, width), start) in enumerate(zip(shapes.tolist(), starts.tolist())):
            grid = value[n, start : start + height * width].reshape(height, width, num_heads, head_dim)
            for q in range(num_queries):
                for m in range(num_heads):
                    for p in range(num_points):
                        x = locations[n, q, m, level, p, 0] * width - 0.5
                        y = locations[n, q, m, level, p, 1] * height - 0.5
                        x0, y0 = int(np.floor(x)), int(np.floor(y))
                        sample = np.zeros(head_dim)
                        for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                            for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                                if 0 <= yy < height and 0 <= xx < width:
                                    sample += wy * wx * grid[yy, xx, m]
                        out[n, q, m] += weights[n, q, m, level, p] * sample
    return out


@pytest.mark.parametrize(
    "batch, spatial_shapes, num_queries, num_heads, head_dim, num_points",
    [
        (1, [(5, 7)], 4, 1, 3, 1),
        (2, [(6, 9), (3, 5), (2, 3), (1, 2)], 7, 2, 4, 3),
        (3, [(4, 4), (2, 5)], 11, 4, 2, 2),
    ],
)
def test_reference_matches_pixel_loop(batch, spatial_shapes, num_queries, num_heads, head_dim, num_points):
    case = random_case(batch, spatial_shapes, num_queries, num_heads, head_dim, num_points)
    expected = loop_reference(*case)
    actual = ms_deform_attn_reference(*case).double().numpy()
    assert actual.shape == (batch, num_queries, num_heads, head_dim)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_points_far_outside_the_map_contribute_nothing():
    value, shapes, starts, locations, weights = random_case(1, [(4, 6)], 3, 2, 4, 2)
    locations = torch.full_like(locations, 1.5)
    assert torch.count_nonzero(ms_deform_attn_reference(value, shapes, starts, locations, weights)) == 0


def test_custom_op_equals_reference_and_passes_opcheck():
    case = random_case(2, [(8, 10), (4, 5), (2, 3), (1, 2)], 9, 8, 4, 4, seed=3)
    torch.testing.assert_close(ms_deform_attn(*case), ms_deform_attn_reference(*case), rtol=0, atol=0)
    torch.library.opcheck(ms_deform_attn, case, test_utils=("test_schema", "test_faketensor"))


def test_fake_implementation_gives_the_output_shape_under_export():
    value, shapes, starts, locations, weights = random_case(2, [(8, 10), (4, 5)], 9, 8, 4, 4)

    class Wrapper(torch.nn.Module):
        def forward(self, value, locations, weights):
            return ms_deform_attn(value, shapes, starts, locations, weights)

    program = torch.export.export(Wrapper(), (value, locations, weights))
    output = [node for node in program.graph.nodes if node.op == "output"][0].args[0][0]
    assert tuple(output.meta["val"].shape) == (2, 9, 8, 4)
