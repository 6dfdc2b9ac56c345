"""RT-DETR v1/v2: shapes, the official state-dict layout, per-level points, discrete sampling, anchors, export.

Expected key names and counts below were read off lyuwenyu/RT-DETR (rtdetr_pytorch and rtdetrv2_pytorch: presnet.py,
hybrid_encoder.py, rtdetr_decoder.py, rtdetrv2_decoder.py) with the official configs (rtdetr*_r{18,50}vd_*.yml).
"""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from detr_deploy import contract
from detr_deploy.errors import DetrDeployError
from detr_deploy.models.hybrid_encoder import sincos_position_embedding
from detr_deploy.models.resnet_vd import ResNetVdConfig
from detr_deploy.models.rtdetr import RTDETR, training_only_keys
from detr_deploy.models.rtdetr_decoder import MSDeformableAttention, generate_anchors
from detr_deploy.models.zoo import ZOO
from detr_deploy.ops.ms_deform_attn_discrete import ms_deform_attn_discrete


def tiny(zoo_name: str, block: str = "basic", **changes):
    config = dataclasses.replace(
        ZOO[zoo_name][0],
        backbone=ResNetVdConfig((1, 1, 1, 1), block=block, stem_width=16, base_width=8),
        encoder_hidden_dim=32,
        encoder_heads=4,
        encoder_ffn=64,
        hidden_dim=32,
        num_heads=4,
        dim_feedforward=64,
        num_decoder_layers=2,
        num_queries=10,
        num_classes=5,
    )
    return dataclasses.replace(config, **changes)


def build(config, seed: int = 0) -> RTDETR:
    torch.manual_seed(seed)
    model = RTDETR(config).eval()
    # Spread the batch-norm statistics so that every part of the network matters.
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 1.5)
            elif name.endswith("running_mean"):
                tensor.normal_(0, 0.1)
    return model


@pytest.mark.parametrize(
    "zoo_name, block, changes, batch, height, width",
    [
        ("rtdetr_r18vd", "basic", {}, 1, 256, 352),
        ("rtdetr_r50vd", "bottleneck", {}, 3, 224, 224),
        ("rtdetrv2_r50vd", "bottleneck", {"dec_n_points": (2, 3, 4)}, 1, 256, 352),
        ("rtdetrv2_r18vd_discrete", "basic", {}, 3, 224, 288),
    ],
)
def test_outputs(zoo_name, block, changes, batch, height, width):
    model = build(tiny(zoo_name, block, **changes))
    with torch.no_grad():
        outputs = model(torch.rand(batch, 3, height, width))
    assert set(outputs) == {contract.OUTPUT_LOGITS, contract.OUTPUT_BOXES}
    assert outputs[contract.OUTPUT_LOGITS].shape == (batch, 10, 5)
    assert outputs[contract.OUTPUT_BOXES].shape == (batch, 10, 4)
    boxes = outputs[contract.OUTPUT_BOXES]
    assert torch.isfinite(outputs[contract.OUTPUT_LOGITS]).all()
    assert ((boxes >= 0) & (boxes <= 1)).all()
    # Different images give different detections (the batch is not mixed up or broadcast).
    if batch > 1:
        assert not torch.allclose(outputs[contract.OUTPUT_LOGITS][0], outputs[contract.OUTPUT_LOGITS][1])


def test_padding_mask_is_refused():
    model = build(tiny("rtdetr_r18vd"))
    with pytest.raises(ValueError, match="padding"):
        model(torch.rand(1, 3, 64, 64), torch.zeros(1, 64, 64, dtype=torch.bool))


def test_v1_refuses_v2_only_options():
    with pytest.raises(DetrDeployError, match="version=2"):
        RTDETR(tiny("rtdetr_r18vd", dec_n_points=(2, 3, 4)))


def test_msda_paths():
    plugin = build(tiny("rtdetrv2_r18vd"))
    discrete = build(tiny("rtdetrv2_r18vd_discrete"))
    assert plugin.msda_paths == {f"decoder.decoder.layers.{i}.cross_attn": "plugin" for i in range(2)}
    assert set(discrete.msda_paths.values()) == {"onnx-ops:discrete"}
    with pytest.raises(AttributeError):
        plugin.decoder.decoder.layers[0].cross_attn.msda_path = "plugin"


# Official state dicts (eval_spatial_size [640, 640]) have these many keys; ours lack exactly the training-only
# ones and, for R18 (freeze_norm: False), the backbone's 23 num_batches_tracked counters.
OFFICIAL_KEY_COUNTS = {
    # name: (official keys, ours)
    "rtdetr_r18vd": (533, 509),  # - denoising_class_embed - 23 backbone num_batches_tracked
    "rtdetr_r50vd": (736, 735),  # - denoising_class_embed
    "rtdetrv2_r18vd": (538, 512),  # - denoising_class_embed, anchors, valid_mask - 23 num_batches_tracked
    "rtdetrv2_r50vd": (744, 741),  # - denoising_class_embed, anchors, valid_mask
}
COMMON_KEYS = [
    "backbone.conv1.conv1_1.conv.weight",
    "backbone.conv1.conv1_3.norm.running_var",
    "backbone.res_layers.0.blocks.0.short.conv.weight",  # stride-1 projection: a plain ConvNormLayer
    "backbone.res_layers.1.blocks.0.short.conv.conv.weight",  # variant d: AvgPool2d then ConvNormLayer
    "backbone.res_layers.3.blocks.1.branch2b.norm.bias",
    "encoder.encoder.0.layers.0.self_attn.in_proj_weight",
    "encoder.encoder.0.layers.0.self_attn.out_proj.bias",
    "encoder.encoder.0.layers.0.linear2.weight",
    "encoder.encoder.0.layers.0.norm2.weight",
    "encoder.lateral_convs.1.norm.num_batches_tracked",
    "encoder.fpn_blocks.0.bottlenecks.2.conv1.conv.weight",
    "encoder.fpn_blocks.1.bottlenecks.0.conv2.norm.running_mean",
    "encoder.pan_blocks.1.conv2.conv.weight",
    "encoder.downsample_convs.0.conv.weight",
    "decoder.input_proj.2.conv.weight",
    "decoder.input_proj.0.norm.num_batches_tracked",
    "decoder.decoder.layers.0.self_attn.in_proj_bias",
    "decoder.decoder.layers.1.cross_attn.sampling_offsets.weight",
    "decoder.decoder.layers.2.cross_attn.attention_weights.bias",
    "decoder.decoder.layers.2.cross_attn.value_proj.weight",
    "decoder.decoder.layers.2.norm3.bias",
    "decoder.query_pos_head.layers.1.weight",
    "decoder.enc_score_head.weight",
    "decoder.enc_bbox_head.layers.2.bias",
    "decoder.dec_score_head.2.weight",
    "decoder.dec_bbox_head.2.layers.0.weight",
]
VERSION_KEYS = {
    1: ["encoder.input_proj.0.0.weight", "encoder.input_proj.2.1.running_var", "decoder.enc_output.0.weight"],
    2: [
        "encoder.input_proj.0.conv.weight",
        "encoder.input_proj.2.norm.running_var",
        "decoder.enc_output.proj.weight",
        "decoder.enc_output.norm.bias",
        "decoder.decoder.layers.0.cross_attn.num_points_scale",
    ],
}


@pytest.mark.parametrize("zoo_name", sorted(OFFICIAL_KEY_COUNTS))
def test_state_dict_has_the_official_layout(zoo_name):
    config = ZOO[zoo_name][0]
    keys = set(RTDETR(config).state_dict())
    assert len(keys) == OFFICIAL_KEY_COUNTS[zoo_name][1]
    expected = COMMON_KEYS + VERSION_KEYS[config.version]
    assert not [key for key in expected if key not in keys]
    other = VERSION_KEYS[3 - config.version]
    assert not [key for key in other if key in keys]
    if config.backbone.block == "basic":
        assert "backbone.res_layers.2.blocks.1.branch2b.conv.weight" in keys
        assert not any(".branch2c." in key for key in keys)
        # expansion 0.5: the CSP layers end with a 1x1 back to the full width.
        assert "encoder.fpn_blocks.0.conv3.conv.weight" in keys
    else:
        assert "backbone.res_layers.2.blocks.5.branch2c.conv.weight" in keys
        # expansion 1.0: conv3 is an nn.Identity, no parameters.
        assert not any(key.startswith("encoder.fpn_blocks.0.conv3") for key in keys)
    assert not any(key.endswith(("anchors", "valid_mask", "pos_embed2")) or "denoising" in key for key in keys)
    assert not any(key.startswith("backbone") and key.endswith("num_batches_tracked") for key in keys)


def official_like_state_dict(model: RTDETR, extra_layers: int = 0) -> dict:
    """Our state dict plus what an official R18 v2 checkpoint holds beyond it."""
    state = dict(model.state_dict())
    config = model.config
    state["decoder.denoising_class_embed.weight"] = torch.zeros(config.num_classes + 1, config.hidden_dim)
    state["decoder.anchors"] = torch.zeros(1, 8400, 4)
    state["decoder.valid_mask"] = torch.ones(1, 8400, 1, dtype=torch.bool)
    for name in [k for k in state if k.startswith("backbone") and k.endswith("running_var")]:
        state[name.replace("running_var", "num_batches_tracked")] = torch.tensor(7)
    last = config.num_decoder_layers - 1
    prefixes = tuple(f"decoder.{part}.{last}." for part in ("decoder.layers", "dec_score_head", "dec_bbox_head"))
    for key in [k for k in state if k.startswith(prefixes)]:
        for extra in range(1, extra_layers + 1):
            state[key.replace(f".{last}.", f".{last + extra}.", 1)] = state[key].clone()
    return state


def test_training_only_keys_then_strict_load():
    model = build(tiny("rtdetrv2_r18vd"))
    state = official_like_state_dict(model, extra_layers=2)
    dropped = training_only_keys(list(state), num_decoder_layers=model.config.num_decoder_layers)
    assert set(dropped) >= {"decoder.denoising_class_embed.weight", "decoder.anchors", "decoder.valid_mask"}
    assert "decoder.decoder.layers.3.cross_attn.num_points_scale" in dropped
    assert "decoder.dec_bbox_head.2.layers.0.weight" in dropped
    assert set(state) - set(dropped) - set(model.state_dict()) == {
        k for k in state if k.endswith("num_batches_tracked") and k.startswith("backbone")
    }
    fresh = RTDETR(model.config).eval()
    fresh.load_state_dict({k: v for k, v in state.items() if k not in dropped}, strict=True)
    images = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        assert torch.equal(fresh(images)[contract.OUTPUT_BOXES], model(images)[contract.OUTPUT_BOXES])
    # Without the eval layer count no decoder layer is dropped.
    assert "decoder.dec_bbox_head.2.layers.0.weight" not in training_only_keys(list(state))


def direct_per_level(value, shapes, offsets, logits, boxes, num_points, method):
    """RT-DETRv2's own layout: points listed level after level (P_l of them), sampled level by level.

    value [N, S, M, D]; offsets [N, Lq, M, sum P, 2]; logits [N, Lq, M, sum P] -> [N, Lq, M, D]."""
    batch, _, heads, dim = value.shape
    queries = offsets.shape[1]
    weights = logits.softmax(-1)
    scale = torch.tensor([1 / n for n in num_points for _ in range(n)])[:, None]
    locations = boxes[:, :, None, None, :2] + offsets * scale * boxes[:, :, None, None, 2:] * 0.5
    out, start, first = 0, 0, 0
    for (height, width), count in zip(shapes, num_points):
        level_value = (
            value[:, start : start + height * width].permute(0, 2, 3, 1).reshape(batch * heads, dim, height, width)
        )
        level_locations = locations[:, :, :, first : first + count].permute(0, 2, 1, 3, 4).flatten(0, 1)
        if method == "default":
            sampled = F.grid_sample(level_value, 2 * level_locations - 1, align_corners=False)  # [N*M, D, Lq, P]
        else:
            cells = (level_locations * torch.tensor([width, height]) + 0.5).floor().long()
            cells = torch.minimum(cells.clamp(min=0), torch.tensor([width - 1, height - 1]))
            flat = (cells[..., 1] * width + cells[..., 0]).flatten(1)  # [N*M, Lq*P]
            sampled = torch.stack([level_value.flatten(2)[i][:, flat[i]] for i in range(batch * heads)])
            sampled = sampled.view(batch * heads, dim, queries, count)
        level_weights = weights[..., first : first + count].permute(0, 2, 1, 3).flatten(0, 1)[:, None]
        out = out + (sampled * level_weights).sum(-1)
        start, first = start + height * width, first + count
    return out.view(batch, heads, dim, queries).permute(0, 3, 1, 2)


@pytest.mark.parametrize("method", ["default", "discrete"])
@pytest.mark.parametrize("num_points", [(2, 3, 1), (4, 4, 4)])
def test_per_level_points(method, num_points):
    torch.manual_seed(0)
    attention = MSDeformableAttention(16, 2, num_points, method=method, version=2)
    with torch.no_grad():
        attention.sampling_offsets.weight.normal_(0, 0.5)
        attention.attention_weights.weight.normal_(0, 0.5)
    shapes = [(6, 9), (3, 5), (2, 2)]
    spatial_shapes = torch.tensor(shapes)
    level_start_index = torch.tensor([0, 54, 69])
    query, memory = torch.randn(2, 7, 16), torch.randn(2, 73, 16)
    boxes = torch.cat([torch.rand(2, 7, 2), torch.rand(2, 7, 2) * 0.6 + 0.05], -1)
    with torch.no_grad():
        got = attention(query, boxes, memory, spatial_shapes, level_start_index)
        value = attention.value_proj(memory).view(2, 73, 2, 8)
        offsets = attention.sampling_offsets(query).view(2, 7, 2, sum(num_points), 2)
        logits = attention.attention_weights(query).view(2, 7, 2, sum(num_points))
        direct = direct_per_level(value, shapes, offsets, logits, boxes, num_points, method)
        expected = attention.output_proj(direct.reshape(2, 7, 16))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_discrete_sampling_matches_a_loop():
    torch.manual_seed(0)
    shapes = [(4, 7), (3, 2), (1, 1)]
    starts = [0, 28, 34]
    batch, queries, heads, dim, points = 2, 5, 3, 4, 3
    value = torch.randn(batch, 35, heads, dim)
    # Reaching past the borders on both sides exercises the clamping.
    locations = torch.rand(batch, queries, heads, 3, points, 2) * 1.6 - 0.3
    weights = torch.rand(batch, queries, heads, 3, points)
    got = ms_deform_attn_discrete(value, torch.tensor(shapes), torch.tensor(starts), locations, weights)
    expected = torch.zeros(batch, queries, heads, dim)
    for n in range(batch):
        for q in range(queries):
            for m in range(heads):
                for level, ((height, width), start) in enumerate(zip(shapes, starts)):
                    for p in range(points):
                        x, y = locations[n, q, m, level, p].tolist()
                        # The official int64 cast truncates; that equals the floor once clamped to >= 0.
                        column = min(max(int(x * width + 0.5), 0), width - 1)
                        row = min(max(int(y * height + 0.5), 0), height - 1)
                        cell = value[n, start + row * width + column, m]
                        expected[n, q, m] += weights[n, q, m, level, p] * cell
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_anchors_equal_the_official_formula():
    shapes = [(8, 52), (4, 26), (2, 13)]  # a 64x416 image
    anchors, valid = generate_anchors(shapes, "cpu")
    expected = []
    for level, (height, width) in enumerate(shapes):
        grid_y, grid_x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        grid_xy = (torch.stack([grid_x, grid_y], -1).unsqueeze(0) + 0.5) / torch.tensor([width, height])
        wh = torch.ones_like(grid_xy) * 0.05 * (2.0**level)
        expected.append(torch.cat([grid_xy, wh], -1).reshape(-1, height * width, 4))
    expected = torch.cat(expected, 1)
    expected_valid = ((expected > 0.01) * (expected < 0.99)).all(-1, keepdim=True)
    expected = torch.where(expected_valid, torch.log(expected / (1 - expected)), torch.inf)
    assert torch.equal(valid, expected_valid)
    assert torch.equal(anchors, expected)
    # Level 0 is wider than 50 cells: its first and last columns have centres outside (0.01, 0.99).
    assert int((~valid).sum()) == 2 * 8
    assert torch.isinf(anchors[~valid[..., 0]]).all() and torch.isfinite(anchors[valid[..., 0]]).all()


def test_position_embedding_follows_the_official_flattening():
    height, width, dim = 3, 5, 8
    got = sincos_position_embedding(height, width, dim, 10000.0, "cpu")
    # build_2d_sincos_position_embedding(w, h): meshgrid over (w, h) with indexing="ij", flattened.
    grid_w, grid_h = torch.meshgrid(
        torch.arange(width, dtype=torch.float32), torch.arange(height, dtype=torch.float32), indexing="ij"
    )
    omega = 1.0 / 10000.0 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
    out_w, out_h = grid_w.flatten()[:, None] @ omega[None], grid_h.flatten()[:, None] @ omega[None]
    expected = torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], 1)[None]
    assert got.shape == (1, height * width, dim)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.slow
def test_torch_export_with_dynamic_sizes():
    # v2 with per-level point counts: the padded [L, P] layout through our op, one node per decoder layer.
    model = build(tiny("rtdetrv2_r18vd", dec_n_points=(2, 3, 1)))
    dims = {
        "images": {
            0: torch.export.Dim("batch", min=1, max=64),
            2: 32 * torch.export.Dim("h32", min=2, max=64),
            3: 32 * torch.export.Dim("w32", min=2, max=64),
        }
    }
    exported = torch.export.export(model, (torch.rand(2, 3, 320, 416),), dynamic_shapes=dims)
    msda_op = torch.ops.detr_deploy.ms_deform_attn.default
    msda_nodes = sum(node.target is msda_op for node in exported.graph.nodes if node.op == "call_function")
    assert msda_nodes == 2
    images = torch.rand(3, 3, 224, 288)
    with torch.no_grad():
        expected, got = model(images), exported.module()(images)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-5)


def test_discrete_sampling_exports_with_dynamic_level_sizes():
    def run(value0, value1, locations, weights):
        shapes = [tuple(value0.shape[1:3]), tuple(value1.shape[1:3])]
        value = torch.cat([value0.flatten(1, 2), value1.flatten(1, 2)], 1)
        starts = torch.tensor([0, shapes[0][0] * shapes[0][1]])
        return ms_deform_attn_discrete(value, torch.tensor(shapes), starts, locations, weights)

    class Discrete(torch.nn.Module):
        def forward(self, value0, value1, locations, weights):
            return run(value0, value1, locations, weights)

    def inputs(batch, height, width, queries):
        return (
            torch.randn(batch, 2 * height, 2 * width, 2, 4),
            torch.randn(batch, height, width, 2, 4),
            torch.rand(batch, queries, 2, 2, 3, 2) * 1.4 - 0.2,
            torch.rand(batch, queries, 2, 2, 3),
        )

    batch, height, width = torch.export.Dim("batch"), torch.export.Dim("h", max=64), torch.export.Dim("w", max=64)
    dims = {
        "value0": {0: batch, 1: 2 * height, 2: 2 * width},
        "value1": {0: batch, 1: height, 2: width},
        "locations": {0: batch},
        "weights": {0: batch},
    }
    exported = torch.export.export(Discrete(), inputs(2, 4, 6, 5), dynamic_shapes=dims)
    other = inputs(3, 5, 3, 5)
    torch.testing.assert_close(exported.module()(*other), run(*other))
