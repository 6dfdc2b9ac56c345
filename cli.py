#!/usr/bin/env python3
"""detr-deploy command line: thin wrappers that parse, call one library function and print.

A DetrDeployError (bad input, missing file or package) prints one line and exits 2; anything else is a bug
and keeps its traceback.
"""

import functools
import logging
import sys
from pathlib import Path

import click

from detr_deploy.errors import DetrDeployError

MSDA_CHOICES = ("plugin", "grid-sample")


def _reports_errors(command):
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except DetrDeployError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(2)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log debug details.")
def main(verbose: bool):
    """Take DETR-family detectors from PyTorch to ONNX and TensorRT, and prove parity with PyTorch."""
    # Our own loggers speak at INFO; the libraries underneath (exporter, optimizer) only when something is wrong.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    for name in ("detr_deploy", "exporters"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)


@main.command("list-models")
@_reports_errors
def list_models_command():
    """List the zoo's model names."""
    from detr_deploy.models import get_model_spec, list_models

    for name in list_models():
        click.echo(f"{name:<32} {get_model_spec(name).description}")


@main.command("export")
@click.option("--model", "model_name", required=True, help="Zoo model name (see list-models).")
@click.option("--checkpoint", type=click.Path(path_type=Path), help="Official release .pth; random weights if omitted.")
@click.option("--output", required=True, type=click.Path(path_type=Path), help="ONNX file to write.")
@click.option(
    "--msda",
    type=click.Choice(MSDA_CHOICES),
    default="plugin",
    show_default=True,
    help="Deformable attention as one plugin-bound node with an ONNX fallback function, or inlined.",
)
@click.option("--opset", type=int, default=18, show_default=True, help="ONNX opset (18..22).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights without --checkpoint.")
@_reports_errors
def export_command(model_name, checkpoint, output, msda, opset, seed):
    """Export a zoo model to ONNX with dynamic batch, height and width."""
    from exporters.onnx import export_zoo_model

    result = export_zoo_model(model_name, output, checkpoint=checkpoint, msda=msda, opset=opset, seed=seed)
    click.echo(
        f"wrote {result.path}: {result.model_name}, outputs {', '.join(result.outputs)}, opset {result.opset}, "
        f"msda {result.msda} ({result.msda_nodes} MSDeformAttn nodes)"
    )


@main.command("build-plugin")
@click.option("--build-dir", type=click.Path(path_type=Path), help="CMake build folder [plugins/build].")
@click.option(
    "--tensorrt-include",
    type=click.Path(path_type=Path),
    help="TensorRT's include/ folder (else TENSORRT_ROOT / TENSORRT_INCLUDE_DIR).",
)
@click.option("--cuda-architectures", help="e.g. '80;90' [75;80;86;89;90 and newer the toolkit supports].")
@click.option("--no-cuda", is_flag=True, help="Build only the CPU reference library.")
@_reports_errors
def build_plugin_command(build_dir, tensorrt_include, cuda_architectures, no_cuda):
    """Build the MSDeformAttn CPU reference, CUDA kernel and TensorRT plugin library with CMake."""
    from detr_deploy.plugins import build_plugins

    result = build_plugins(
        build_dir, tensorrt_include=tensorrt_include, cuda=not no_cuda, cuda_architectures=cuda_architectures
    )
    click.echo(f"CPU reference:   {result.cpu_library}")
    click.echo(f"CUDA kernel:     {result.cuda_library or 'not built'}")
    click.echo(f"TensorRT plugin: {result.plugin_library or 'not built'}")
    for reason in result.skipped:
        click.echo(f"skipped {reason}")


@main.command("verify-parity")
@click.option("--onnx", "onnx_path", required=True, type=click.Path(path_type=Path), help="ONNX file to check.")
@click.option("--checkpoint", type=click.Path(path_type=Path), help="The checkpoint the export was made from.")
@click.option("--model", "model_name", help="Zoo model name, if the ONNX file does not record it.")
@click.option("--sizes", default="480x640,608x512,427x701", show_default=True, help="HEIGHTxWIDTH list.")
@click.option("--batch-sizes", default="1,2", show_default=True, help="Batch sizes to run at each size.")
@click.option(
    "--images",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Image files to use instead of random inputs (repeat the option for several).",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "bf16"]),
    default="fp32",
    show_default=True,
    help="Chooses the default tolerances.",
)
@click.option("--rtol", type=float, help="Override the relative tolerance.")
@click.option("--atol", type=float, help="Override the absolute tolerance.")
@click.option("--score-threshold", type=float, default=0.5, show_default=True, help="Detections kept for matching.")
@click.option("--report", type=click.Path(path_type=Path), help="Write the report as JSON here.")
@_reports_errors
def verify_parity_command(
    onnx_path, checkpoint, model_name, sizes, batch_sizes, images, precision, rtol, atol, score_threshold, report
):
    """Run eager PyTorch and ONNX Runtime on the same inputs and compare outputs and detections.

    Exits 1 when a tolerance is exceeded.
    """
    from detr_deploy.io import atomic_output, check_output_path
    from detr_deploy.verify import parse_batch_sizes, parse_sizes, verify_onnx_parity

    parsed_sizes, parsed_batches = parse_sizes(sizes), parse_batch_sizes(batch_sizes)
    if report is not None:
        check_output_path(report)
    total = len(images) or len(parsed_sizes) * len(parsed_batches)
    finished = []

    def show_progress(case):
        finished.append(case)
        click.echo(f"[{len(finished)}/{total}] {case.name}: {'ok' if case.passed else 'FAILED'}", err=True)

    result = verify_onnx_parity(
        onnx_path,
        checkpoint=checkpoint,
        model_name=model_name,
        sizes=parsed_sizes,
        batch_sizes=parsed_batches,
        images=images,
        precision=precision,
        rtol=rtol,
        atol=atol,
        score_threshold=score_threshold,
        on_case=show_progress,
    )
    click.echo(result.render())
    if report is not None:
        with atomic_output(report) as temporary:
            temporary.write_text(result.to_json())
        click.echo(f"report written to {report}")
    sys.exit(0 if result.passed else 1)


if __name__ == "__main__":
    main()
