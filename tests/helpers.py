"""Tiny random-weight variants of every zoo model (each family config's own ``tiny()``), registered once as
``tiny_<zoo name>``."""

from pathlib import Path

from detr_deploy.models import get_model_spec, list_models, register_model

REPO = Path(__file__).resolve().parents[1]
OFFICIAL_KEYS = REPO.parent / "shared" / "checkpoints" / "official_keys.json"
ZOO_MODELS = [name for name in list_models() if not name.startswith("tiny_")]


def shrink_rtdetr(config, dec_n_points=None):
    """The tiny variant of an RT-DETR config with ``dec_n_points`` decoder points per level (default: 2 each)."""
    return config.tiny(dec_n_points)


def input_size(config, height: int, width: int) -> tuple[int, int]:
    """(height, width) rounded to the model's size divisor (RT-DETR: multiples of 32), for tests at odd sizes."""
    divisor = config.size_divisor
    return tuple(max(1, round(side / divisor)) * divisor for side in (height, width))


def tiny_name(zoo_name: str) -> str:
    return f"tiny_{zoo_name}"


for _name in ZOO_MODELS:
    register_model(tiny_name(_name), get_model_spec(_name).config.tiny(), f"test variant of {_name}")
# RT-DETRv2 with a different point count per level: the plugin's [L, P] layout takes it padded with zero weights.
MIXED_POINTS = "rtdetrv2_r18vd_mixed_points"
register_model(
    tiny_name(MIXED_POINTS),
    get_model_spec("rtdetrv2_r18vd").config.tiny(dec_n_points=(3, 1, 2)),
    "test variant of rtdetrv2_r18vd with 3/1/2 decoder points per level",
)


def confident_checkpoint(model_name: str, path, labels=(2,), boost: float = 5.0, seed: int = 0):
    """Save seeded random weights of ``model_name`` whose class head favours ``labels``, so that a few queries
    score high enough to be detections (random heads spread scores thin). Returns the .pth path."""
    import torch

    from detr_deploy.models import build_model

    model = build_model(get_model_spec(model_name).config, seed=seed)
    heads = [m for name, m in model.named_modules() if "class_embed" in name.split(".")]
    linear_heads = {id(h): h for h in heads if isinstance(h, torch.nn.Linear)}.values()
    assert linear_heads, f"no class head found in {model_name}"
    with torch.no_grad():
        for head in linear_heads:  # shared heads are listed once
            head.bias[list(labels)] += boost
        if getattr(model.config, "panoptic", False):
            # Random attention maps are near-uniform (softmax over every pixel, values ~1/HW), so every query's mask
            # came out the same to ~1e-7 and a pixel's segment was a coin toss between backends. Sharper query
            # projections and a mask head that weighs the maps make each query's mask its own (top-2 gap ~1e-3).
            model.bbox_attention.q_linear.weight *= 30
            model.mask_head.lay1.weight[:, model.config.hidden_dim :] *= 1e4
    torch.save({"model": model.state_dict()}, path)
    return path


def official_args(config):
    """The argparse.Namespace the official main.py pickles into its checkpoints, for a zoo config."""
    import argparse

    resnets = {(3, 4, 6, 3): "resnet50", (3, 4, 23, 3): "resnet101"}
    args = argparse.Namespace(
        lr=1e-4,
        backbone=resnets.get(config.backbone.blocks_per_stage),  # tiny test backbones have no torchvision name
        dilation=config.backbone.dilate_last_stage,
        position_embedding="sine",
        enc_layers=config.num_encoder_layers,
        dec_layers=config.num_decoder_layers,
        dim_feedforward=config.dim_feedforward,
        hidden_dim=config.hidden_dim,
        dropout=0.1,
        nheads=config.num_heads,
        num_queries=config.num_queries,
        pre_norm=False,
        masks=getattr(config, "panoptic", False),
        dataset_file="coco",
        aux_loss=True,
    )
    if config.family == "deformable_detr":
        args.num_feature_levels = config.num_feature_levels
        args.enc_n_points, args.dec_n_points = config.enc_n_points, config.dec_n_points
        args.with_box_refine, args.two_stage = config.with_box_refine, config.two_stage
    return args


# The start of OpenVINORunner's refusal of --precision bf16 on a CPU without bf16 units.
NO_BF16_UNITS = "this CPU has no bf16 units"


def openvino_computes_bf16() -> bool:
    """Whether OpenVINO's CPU plugin computes bf16 here (AVX512-BF16/AMX); tests of bf16 results need it, and check
    the refusal elsewhere (CI's machines have been either)."""
    from detr_deploy.runtime.openvino import cpu_has_bf16

    return cpu_has_bf16()


def run_cli(*args, cwd=None):
    """The real CLI in-process (click's CliRunner), arguments as strings; ``cwd`` for commands on relative paths.
    Returns click's Result (``output`` holds stdout and stderr)."""
    import os

    from click.testing import CliRunner

    import cli

    if cwd is None:
        return CliRunner().invoke(cli.main, [str(a) for a in args])
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(cli.main, [str(a) for a in args])
    finally:
        os.chdir(previous)


def error_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("error:")]


def assert_one_line_error(result, *fragments, code: int = 2) -> None:
    """The CLI's promise for a mistake the user can fix: exit ``code``, exactly one ``error:`` line holding every
    fragment, and no traceback."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = error_lines(result)
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def random_case(batch, spatial_shapes, num_queries, num_heads, head_dim, num_points, seed=0, spread=0.2):
    """Inputs of ms_deform_attn: (value [N, S, M, D], spatial_shapes [L, 2], level starts [L], sampling locations
    [N, Q, M, L, P, 2] reaching ``spread`` past the map on every side, attention weights [N, Q, M, L, P])."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    shapes = torch.tensor(spatial_shapes, dtype=torch.long)
    starts = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
    total = int(shapes.prod(1).sum())
    levels = len(spatial_shapes)
    value = torch.randn(batch, total, num_heads, head_dim, generator=generator)
    # Locations reach past the map on every side, so zero padding is exercised.
    locations = torch.rand(batch, num_queries, num_heads, levels, num_points, 2, generator=generator)
    locations = locations * (1 + 2 * spread) - spread
    weights = torch.rand(batch, num_queries, num_heads, levels, num_points, generator=generator)
    weights = weights / weights.sum((-1, -2), keepdim=True)
    return value, shapes, starts, locations, weights


def export_checkpoint(checkpoint, path):
    """Export a read checkpoint (``checkpoints.read_checkpoint`` and the format readers) as ``export`` does: its
    model, config, name, weights label, class names and format. Returns the ExportResult."""
    from detr_deploy.checkpoints import build_checkpoint_model
    from exporters.onnx import export_onnx

    return export_onnx(
        build_checkpoint_model(checkpoint),
        checkpoint.config,
        path,
        model_name=checkpoint.model_name,
        weights=checkpoint.weights_label,
        class_names=checkpoint.class_names,
        checkpoint_format=checkpoint.source,
    )
