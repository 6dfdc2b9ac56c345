"""The options that several cli.py commands take, each defined once here; cli.py stacks them on its commands.

Where commands word an option's help for what they do with it, the option is a function of that help text; the
others are ready decorators. The texts here are the commands' --help, word for word.
"""

from pathlib import Path

import click

PRECISION_CHOICES = ("fp32", "fp16", "bf16", "int8")
CPU_THREADS_HELP = "CPU threads of ONNX Runtime and OpenVINO [their default: every core]."
ENGINE_PLUGINS_HELP = "Plugin library for --engine, or 'auto'."


def options(*decorators):
    """One decorator for several options; --help lists them in the order given."""

    def apply(command):
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return apply


def _path_option(*names, **kwargs):
    return click.option(*names, type=click.Path(path_type=Path), **kwargs)


def output_option(help_text: str):
    """--output, required: the file or folder a command writes."""
    return _path_option("--output", required=True, help=help_text)


def artifact_option(flag: str, help_text: str, multiple: bool = False):
    """--onnx / --openvino / --engine FILE, as the parameter ``onnx_path`` (``onnx_paths`` when repeatable)."""
    name = flag.removeprefix("--") + ("_paths" if multiple else "_path")
    return _path_option(flag, name, multiple=multiple, help=help_text)


def checkpoint_option(help_text: str):
    return _path_option("--checkpoint", help=help_text)


def model_name_option(help_text: str):
    """--model, a zoo name, as the parameter ``model_name``."""
    return click.option("--model", "model_name", help=help_text)


def plugins_option(help_text: str = ENGINE_PLUGINS_HELP):
    return click.option("--plugins", default="auto", show_default=True, help=help_text)


def threads_option(help_text: str = CPU_THREADS_HELP):
    return click.option("--threads", type=int, help=help_text)


def openvino_precision_option():
    return click.option(
        "--precision",
        "openvino_precision",
        type=click.Choice(["fp32", "bf16"]),
        help="What OpenVINO computes an fp32 ONNX file in (bf16: its precision hint, for CPUs with bf16 units); for "
        "int8, give a file made by 'quantize --target openvino' [the file's own].",
    )


def precision_option(help_text: str, choices=PRECISION_CHOICES, **kwargs):
    return click.option("--precision", type=click.Choice(choices), help=help_text, **kwargs)


def batch_size_option(help_text: str):
    return click.option("--batch-size", type=int, default=8, show_default=True, help=help_text)


def batch_sizes_option(default: str, help_text: str):
    return click.option("--batch-sizes", default=default, show_default=True, help=help_text)


def score_threshold_option(help_text: str):
    return click.option("--score-threshold", type=float, default=0.5, show_default=True, help=help_text)


def detection_threshold_options(score_help: str):
    """--score-threshold, then --panoptic-threshold (the score a query needs to become a panoptic segment)."""
    return options(
        score_threshold_option(score_help),
        click.option(
            "--panoptic-threshold", type=float, default=0.85, show_default=True, help="Panoptic models' keep score."
        ),
    )


def calibration_options(images_help: str):
    """--calibration-images DIR, then --calibration-count: what INT8 is calibrated on."""
    return options(
        _path_option("--calibration-images", help=images_help),
        click.option(
            "--calibration-count", type=int, default=200, show_default=True, help="Calibration images used at most."
        ),
    )


report_option = _path_option("--report", help="Write the report as JSON here.")
