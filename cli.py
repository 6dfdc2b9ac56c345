#!/usr/bin/env python3
"""detr-deploy command line: thin wrappers that parse, call one library function and print.

A DetrDeployError (bad input, missing file or package) prints one line and exits 2; anything else is a bug
and keeps its traceback.
"""

import functools
import logging
import signal
import sys
from pathlib import Path

import click

from detr_deploy.cli_options import (
    artifact_option,
    batch_size_option,
    batch_sizes_option,
    calibration_options,
    checkpoint_option,
    detection_threshold_options,
    model_name_option,
    openvino_precision_option,
    output_option,
    plugins_option,
    precision_option,
    report_option,
    score_threshold_option,
    threads_option,
)
from detr_deploy.errors import DetrDeployError, Interrupted
from detr_deploy.tensorrt_flavours import BACKEND_CHOICES
from exporters.precision import DEFAULT_KEEP_FP32

MSDA_CHOICES = ("plugin", "grid-sample")
CHECKPOINT_HELP = (
    "Your weights: an official-code .pth (release or fine-tuned), a transformers save_pretrained folder, or an "
    "mmdetection 2.x/3.x .pth"
)


def _raise_interrupted(signal_number, frame):
    raise Interrupted(signal_number)


def _reports_errors(command):
    """A DetrDeployError becomes one ``error:`` line and exit 2. SIGTERM and SIGHUP become exceptions like Ctrl-C's,
    so partial outputs are removed on the way out; the exit code is then 128 + the signal's number, as shells do."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        previous = {number: signal.signal(number, _raise_interrupted) for number in (signal.SIGTERM, signal.SIGHUP)}
        try:
            return command(*args, **kwargs)
        except DetrDeployError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(2)
        except (Interrupted, KeyboardInterrupt) as interruption:
            number = getattr(interruption, "signal_number", signal.SIGINT)
            click.echo(f"error: interrupted by {signal.Signals(number).name}; no partial output was left", err=True)
            sys.exit(128 + number)
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    return wrapper


class _OneLineUsageErrors(click.Group):
    """click reports a malformed command line (unknown option, a value of the wrong type, a bad choice) in three
    lines; we keep the promise of one ``error:`` line and exit 2, with the command's --help named in it."""

    def main(self, args=None, prog_name=None, **extra):
        try:
            return super().main(args, prog_name, standalone_mode=False, **extra)
        except click.UsageError as error:
            command = error.ctx.command_path if error.ctx is not None else "cli.py"
            click.echo(f"error: {error.format_message()} (see '{command} --help')", err=True)
            sys.exit(2)
        except click.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)


@click.group(cls=_OneLineUsageErrors, context_settings={"help_option_names": ["-h", "--help"]})
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


def _count_paths(paths: dict) -> str:
    """{"a": "plugin", "b": "plugin", "c": "onnx-ops:discrete"} -> "2 plugin, 1 onnx-ops:discrete"."""
    from collections import Counter

    return ", ".join(f"{count} {path}" for path, count in Counter(paths.values()).items())


@main.command("export")
@checkpoint_option(CHECKPOINT_HELP + "; its architecture is read from it. Without it: --model with random weights.")
@model_name_option(
    "Zoo model name (see list-models). With --checkpoint only where the file cannot tell (an official DETR "
    "without its training args: detr_r50 or detr_r50_dc5); it must agree with the file."
)
@output_option("ONNX file to write.")
@click.option(
    "--msda",
    type=click.Choice(MSDA_CHOICES),
    default="plugin",
    show_default=True,
    help="Deformable attention as one plugin-bound node with an ONNX fallback function, or inlined.",
)
@click.option("--opset", type=int, default=18, show_default=True, help="ONNX opset (18..22).")
@click.option(
    "--seed",
    type=click.IntRange(0, 2**63 - 1),
    default=0,
    show_default=True,
    help="Seed of the random weights without --checkpoint.",
)
@click.option(
    "--padding-mask",
    is_flag=True,
    help="Add the input padding_mask [batch, height, width] uint8 (1 = padded) for batches of different sizes.",
)
@_reports_errors
def export_command(model_name, checkpoint, output, msda, opset, seed, padding_mask):
    """Export a checkpoint (or a zoo model with random weights) to ONNX with dynamic batch, height and width."""
    from exporters.onnx import export_model

    result = export_model(
        model_name, output, checkpoint=checkpoint, msda=msda, opset=opset, seed=seed, padding_mask=padding_mask
    )
    click.echo(
        f"wrote {result.path}: {result.model_name}, inputs {', '.join(result.inputs)}, "
        f"outputs {', '.join(result.outputs)}, opset {result.opset}, "
        f"msda {result.msda} ({result.msda_nodes} MSDeformAttn nodes"
        + (f"; {_count_paths(result.msda_paths)}" if result.msda_paths else "")
        + ")"
    )


@main.command("inspect")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@model_name_option("Zoo model name, where the file cannot tell (see export --model).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a table.")
@_reports_errors
def inspect_command(checkpoint, model_name, as_json):
    """Say what CHECKPOINT is (format, family, variant, classes and names, queries, layers, backbone) and the
    export command for it. CHECKPOINT: an official-code .pth, a transformers folder, or an mmdetection .pth."""
    from detr_deploy.checkpoints import inspect_checkpoint

    report = inspect_checkpoint(checkpoint, model_name)
    click.echo(report.to_json() if as_json else report.render(), nl=not as_json)


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
    """Build the MSDeformAttn CPU reference, CUDA kernel and TensorRT plugin libraries with CMake (the plugin, for
    IPluginRegistry::loadLibrary, and the library that registers it when dlopened, for Triton)."""
    from detr_deploy.plugins import build_plugins

    result = build_plugins(
        build_dir, tensorrt_include=tensorrt_include, cuda=not no_cuda, cuda_architectures=cuda_architectures
    )
    click.echo(f"CPU reference:   {result.cpu_library}")
    click.echo(f"CUDA kernel:     {result.cuda_library or 'not built'}")
    click.echo(f"TensorRT plugin: {result.plugin_library or 'not built'}")
    click.echo(f"  registering at load (Triton, trtexec --plugins): {result.registering_library or 'not built'}")
    for reason in result.skipped:
        click.echo(f"skipped {reason}")


def _show_and_save(report, json_path) -> None:
    """Print a report (parity, benchmark) as its table; write its JSON when asked."""
    from detr_deploy.io import atomic_output

    click.echo(report.render())
    if json_path is not None:
        with atomic_output(json_path) as temporary:
            temporary.write_text(report.to_json())
        click.echo(f"JSON written to {json_path}")


class _BuildProgress:
    """TensorRT's progress monitor as a progress bar: one bar per top-level phase, nested phases as its postfix."""

    def __init__(self):
        self.bar, self.phase = None, None

    def __call__(self, event) -> None:
        from tqdm import tqdm

        if event.kind == "stage":
            click.echo(f"{event.phase}...", err=True)
        elif event.kind == "phase_start" and event.parent is None:
            self.bar, self.phase = tqdm(total=event.steps, desc=event.phase, unit="step", file=sys.stderr), event.phase
        elif event.kind == "phase_start" and self.bar is not None:
            self.bar.set_postfix_str(event.phase[:40], refresh=False)
        elif event.kind == "step" and event.phase == self.phase:
            self.bar.update(event.step + 1 - self.bar.n)
        elif event.kind == "phase_finish" and event.phase == self.phase:
            self.bar.update(self.bar.total - self.bar.n)
            self.bar.close()
            self.bar = self.phase = None


@main.command("build-engine")
@click.argument("onnx_path", type=click.Path(path_type=Path))
@output_option("Engine file; FILE.json is written too.")
@precision_option(
    "Computation precision; inputs and outputs stay float32 [what the file computes in: fp32 for an export]."
)
@calibration_options("Folder of images to calibrate --precision int8 on (a few hundred like those the model will see).")
@click.option(
    "--keep-fp32",
    default=",".join(DEFAULT_KEEP_FP32),
    show_default=True,
    help="ONNX op types kept in fp32 with --precision fp16/bf16 ('' for none).",
)
@click.option("--min-shapes", help="e.g. images:1x3x320x320 [from the ONNX metadata].")
@click.option("--opt-shapes", help="e.g. images:1x3x800x1088 [from the ONNX metadata].")
@click.option("--max-shapes", help="e.g. images:4x3x1344x1344 [from the ONNX metadata].")
@plugins_option(
    "Plugin library path, 'auto' (our built library when present) or 'none' (MSDeformAttn from its function)."
)
@click.option("--timing-cache", type=click.Path(path_type=Path), help="Read and update this timing cache file.")
@click.option("--workspace", "workspace_mib", type=int, help="Workspace memory limit in MiB.")
@click.option(
    "--backend",
    type=click.Choice(BACKEND_CHOICES),
    default="auto",
    show_default=True,
    help="Which TensorRT builds: auto takes full TensorRT when installed, else TensorRT-RTX.",
)
@click.option(
    "--compute-capability",
    help="Build ahead of time for this GPU architecture with TensorRT-RTX (75, 80, 86, 89, 120, 121); no GPU needed.",
)
@_reports_errors
def build_engine_command(
    onnx_path,
    output,
    precision,
    calibration_images,
    calibration_count,
    keep_fp32,
    min_shapes,
    opt_shapes,
    max_shapes,
    plugins,
    timing_cache,
    workspace_mib,
    backend,
    compute_capability,
):
    """Build a TensorRT engine from an ONNX file, with a JSON description beside it."""
    from detr_deploy.options import check_count
    from exporters.engine_build import build_engine

    result = build_engine(
        onnx_path,
        output,
        precision=precision,
        calibration_images=calibration_images,
        calibration_count=check_count(calibration_count, "--calibration-count"),
        keep_fp32=tuple(filter(None, (op.strip() for op in keep_fp32.split(",")))),
        min_shapes=min_shapes,
        opt_shapes=opt_shapes,
        max_shapes=max_shapes,
        plugins=plugins,
        timing_cache=timing_cache,
        workspace_mib=workspace_mib,
        backend=backend,
        compute_capability=compute_capability,
        on_event=_BuildProgress(),
    )
    sidecar = result.sidecar
    if sidecar.msda_path == "plugin":
        click.echo(f"MSDeformAttn: {sidecar.msda_nodes} nodes run in the plugin {sidecar.plugin.library}")
    elif sidecar.msda_path == "onnx-function":
        click.echo(
            f"MSDeformAttn: {sidecar.msda_nodes} nodes built from their ONNX function (no plugin loaded; "
            "'python cli.py build-plugin' builds the faster kernel)"
        )
    profile = sidecar.profile.get("images") or next(iter(sidecar.profile.values()))
    click.echo(
        f"wrote {result.path} ({sidecar.engine_bytes / 2**20:.1f} MiB, {sidecar.precision}, "
        f"{sidecar.tensorrt_flavour} {sidecar.tensorrt_version}, compute capability {sidecar.compute_capability}, "
        f"profile {' / '.join('x'.join(map(str, s)) for s in (profile.min, profile.opt, profile.max))}) "
        f"and {result.sidecar_path.name} in {sidecar.build_seconds:.1f} s"
    )


@main.command("quantize")
@click.argument("onnx_path", type=click.Path(path_type=Path))
@output_option("ONNX file to write.")
@precision_option(
    "What the copy computes in; inputs and outputs stay float32.",
    choices=("int8", "fp16", "bf16"),
    default="int8",
    show_default=True,
)
@calibration_options("Folder of images to calibrate int8 on.")
@click.option(
    "--target",
    type=click.Choice(["tensorrt", "onnxruntime", "openvino"]),
    default="tensorrt",
    show_default=True,
    help="The runtime an int8 file is made for: TensorRT (ModelOpt's Q/DQ, fp16 remainder), or ONNX Runtime's or "
    "OpenVINO's CPU int8 kernels (each runtime's own quantizer: onnxruntime.quantization, NNCF).",
)
@click.option(
    "--calibration-method",
    type=click.Choice(["entropy", "max"]),
    help="How activation ranges are chosen from the calibration images [tensorrt: entropy; onnxruntime: max; "
    "openvino: NNCF's own].",
)
@click.option(
    "--keep-high-precision",
    help="Parts kept out of INT8, comma-separated: attention, layernorm, sampling, box_head, class_head "
    "('' for none) [attention,box_head].",
)
@click.option(
    "--high-precision",
    "high_precision_dtype",
    type=click.Choice(["fp16", "fp32"]),
    help="What the parts not in INT8 compute in [fp16].",
)
@click.option(
    "--reduce-range/--no-reduce-range",
    default=None,
    help="CPU int8 weights in 7 bits, for x86 CPUs without VNNI/AMX, whose int8 kernels saturate on 8-bit weights "
    "[decided from this CPU].",
)
@_reports_errors
def quantize_command(
    onnx_path,
    output,
    precision,
    calibration_images,
    calibration_count,
    target,
    calibration_method,
    keep_high_precision,
    high_precision_dtype,
    reduce_range,
):
    """Write an INT8 (explicit Q/DQ, NVIDIA ModelOpt, calibrated on the CPU) or fp16/bf16 copy of an export; it runs
    in ONNX Runtime and builds with build-engine as it is. With --target onnxruntime or openvino, an INT8 copy made
    by that runtime's own quantizer for its CPU int8 kernels."""
    from detr_deploy.options import check_count
    from exporters.quantize import DEFAULT_HIGH_PRECISION_DTYPE, DEFAULT_KEEP_HIGH_PRECISION, quantize_onnx

    if precision != "int8" and (
        calibration_images is not None or keep_high_precision or high_precision_dtype or calibration_method
    ):
        raise DetrDeployError(
            "--calibration-images, --calibration-method, --keep-high-precision and --high-precision are for "
            "--precision int8; drop them"
        )
    if target == "tensorrt" and reduce_range is not None:
        raise DetrDeployError("--reduce-range is for --target onnxruntime or openvino (CPU int8 kernels); drop it")
    if target != "tensorrt":
        if precision != "int8":
            raise DetrDeployError(f"--target {target} is for --precision int8; drop it for {precision}")
        if keep_high_precision is not None or high_precision_dtype:
            raise DetrDeployError(
                f"--keep-high-precision and --high-precision are for --target tensorrt; drop them for {target}"
            )
        from exporters.cpu_quantize import quantize_for_cpu

        result = quantize_for_cpu(
            onnx_path,
            output,
            runtime=target,
            calibration_images=calibration_images,
            calibration_count=check_count(calibration_count, "--calibration-count"),
            calibration_method=calibration_method,
            reduce_range=reduce_range,
        )
        for message in result.skipped_images:
            click.echo(f"skipped: {message}", err=True)
        quantized = ", ".join(f"{count} {op}" for op, count in sorted(result.quantized_nodes.items())) or "none"
        click.echo(
            f"INT8 for {target}: {quantized} with quantized inputs; calibrated on {result.calibration_images} images"
        )
        click.echo(f"wrote {result.path} in {result.seconds:.1f} s")
        return
    keep = (
        DEFAULT_KEEP_HIGH_PRECISION
        if keep_high_precision is None
        else tuple(filter(None, (part.strip() for part in keep_high_precision.split(","))))
    )
    result = quantize_onnx(
        onnx_path,
        output,
        precision=precision,
        calibration_images=calibration_images,
        calibration_count=check_count(calibration_count, "--calibration-count"),
        calibration_method=calibration_method or "entropy",
        keep_high_precision=keep,
        high_precision_dtype=high_precision_dtype or DEFAULT_HIGH_PRECISION_DTYPE,
    )
    for message in result.skipped_images:
        click.echo(f"skipped: {message}", err=True)

    def counts(ops: dict) -> str:
        return ", ".join(f"{count} {op}" for op, count in sorted(ops.items())) or "none"

    if precision == "int8":
        click.echo(
            f"INT8: {counts(result.quantized_nodes)} with quantized inputs; kept in higher precision "
            f"({', '.join(keep) or 'nothing'}): {counts(result.kept_high_precision)}; calibrated on "
            f"{result.calibration_images} images"
        )
    else:
        click.echo(f"{precision}: kept in fp32: {counts(result.kept_high_precision)}")
    click.echo(f"wrote {result.path} in {result.seconds:.1f} s")


@main.command("verify-parity")
@artifact_option("--onnx", "ONNX file to check (ONNX Runtime).")
@artifact_option("--openvino", "ONNX file to check in OpenVINO (CPU).")
@artifact_option("--engine", "Engine to check (TensorRT).")
@threads_option()
@plugins_option()
@checkpoint_option("The checkpoint (file or transformers folder) the export was made from.")
@model_name_option("Zoo model name, if the file does not record it.")
@click.option(
    "--sizes",
    default=None,
    help="HEIGHTxWIDTH list. Default 480x640,608x512,427x701, rounded to multiples of 32 for RT-DETR (416x704).",
)
@batch_sizes_option("1,2", "Batch sizes to run at each size.")
@click.option(
    "--images",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Image files to use instead of random inputs (repeat the option for several).",
)
@precision_option(
    "Chooses the default tolerances, and with --openvino what an fp32 file computes in (bf16: OpenVINO's precision "
    "hint) [what the engine or ONNX file computes in]."
)
@click.option("--rtol", type=float, help="Override the relative tolerance.")
@click.option("--atol", type=float, help="Override the absolute tolerance.")
@score_threshold_option("Detections kept for matching.")
@report_option
@_reports_errors
def verify_parity_command(
    onnx_path,
    openvino_path,
    engine_path,
    threads,
    plugins,
    checkpoint,
    model_name,
    sizes,
    batch_sizes,
    images,
    precision,
    rtol,
    atol,
    score_threshold,
    report,
):
    """Run eager PyTorch and ONNX Runtime (--onnx), OpenVINO (--openvino) or TensorRT (--engine) on the same inputs
    and compare outputs and detections.

    Exits 1 when a tolerance is exceeded.
    """
    from detr_deploy.io import check_output_path
    from detr_deploy.options import check_count, check_probability, check_tolerance, parse_batch_sizes, parse_sizes
    from detr_deploy.verify import DEFAULT_SIZES, open_backend, verify_parity

    parsed_sizes, parsed_batches = (None if sizes is None else parse_sizes(sizes)), parse_batch_sizes(batch_sizes)
    check_tolerance(rtol, "--rtol"), check_tolerance(atol, "--atol")
    check_probability(score_threshold, "--score-threshold")
    check_count(threads, "--threads", maximum=1024)
    if report is not None:
        check_output_path(report, inputs=[onnx_path, openvino_path, engine_path, checkpoint, *images])
    backend, backend_precision = open_backend(
        onnx_path=onnx_path,
        openvino_path=openvino_path,
        engine_path=engine_path,
        plugins=plugins,
        threads=threads,
        precision=precision,
    )
    total = len(images) or len(parsed_sizes or DEFAULT_SIZES) * len(parsed_batches)
    finished = []

    def show_progress(case):
        finished.append(case)
        click.echo(f"[{len(finished)}/{total}] {case.name}: {'ok' if case.passed else 'FAILED'}", err=True)

    result = verify_parity(
        backend,
        onnx_path or openvino_path or engine_path,
        checkpoint=checkpoint,
        model_name=model_name,
        sizes=parsed_sizes,
        batch_sizes=parsed_batches,
        images=images,
        precision=precision or backend_precision,
        rtol=rtol,
        atol=atol,
        score_threshold=score_threshold,
        on_case=show_progress,
        on_unusable=lambda message: click.echo(f"error: {message}", err=True),
    )
    _show_and_save(result, report)
    # An image that could not be used is the user's to fix (exit 2), as is a run with nothing compared.
    sys.exit(2 if result.unusable_images else 0 if result.passed else 1)


@main.command("predict")
@click.argument("model")
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@output_option("Folder for the PNGs and JSON.")
@checkpoint_option("Weights, when MODEL is a zoo name.")
@plugins_option("Plugin library for an engine, or 'auto'.")
@click.option(
    "--runtime",
    type=click.Choice(["onnxruntime", "openvino"]),
    default="onnxruntime",
    show_default=True,
    help="What runs an .onnx MODEL: ONNX Runtime or OpenVINO (CPU).",
)
@threads_option()
@openvino_precision_option()
@detection_threshold_options("Detections kept (0..1).")
@batch_size_option("Images per run (padded batches).")
@_reports_errors
def predict_command(
    model,
    images,
    output,
    checkpoint,
    plugins,
    runtime,
    threads,
    openvino_precision,
    score_threshold,
    panoptic_threshold,
    batch_size,
):
    """Detect objects in IMAGES with MODEL (.onnx in ONNX Runtime or OpenVINO, .engine, a checkpoint file or
    transformers folder, or a zoo name) and write each image with its boxes drawn, panoptic segment maps, and
    detections.json into --output.

    Exits 2 when an image could not be processed (the others are still written).
    """
    from detr_deploy.detector import Detector
    from detr_deploy.options import check_count, check_probability
    from detr_deploy.predict import check_output_folder, predict
    from detr_deploy.runtime.open import artifact_kind

    check_count(batch_size, "--batch-size", maximum=1024)
    check_count(threads, "--threads", maximum=1024)
    (
        check_probability(score_threshold, "--score-threshold"),
        check_probability(panoptic_threshold, "--panoptic-threshold"),
    )
    check_output_folder(output, list(images))
    if checkpoint is not None and artifact_kind(model) is not None:
        raise DetrDeployError(
            f"--checkpoint is for a zoo model name; {model} carries its weights already: drop --checkpoint"
        )
    if openvino_precision is not None and runtime != "openvino":
        raise DetrDeployError("--precision is for --runtime openvino (ONNX Runtime runs what the file holds)")
    detector = Detector.open(
        model,
        runtime=runtime,
        threads=threads,
        precision=openvino_precision,
        checkpoint=checkpoint,
        plugins=plugins,
        score_threshold=score_threshold,
        panoptic_threshold=panoptic_threshold,
        max_batch=batch_size,
    )
    failed = []

    def show(result):
        if result.error is not None:
            failed.append(result)
            click.echo(f"error: {result.error}", err=True)
            return
        found = ", ".join(f"{d.name} {d.score:.2f}" for d in result.detections[:5])
        more = f", ... ({len(result.detections)} in all)" if len(result.detections) > 5 else ""
        segments = f"; {len(result.segments)} segments" if result.segments is not None else ""
        found = f": {found}" if found else ""
        click.echo(f"{result.source}: {len(result.detections)} detections{found}{more}{segments}")

    run = predict(detector, list(images), output, on_image=show)
    click.echo(f"wrote {len(run.written)} images and {run.detections_file}")
    if failed:
        sys.exit(2)


class _ImageProgress:
    """A progress bar of images done per backend run, on stderr; starting the next run closes the last one's."""

    def __init__(self):
        self.bar = None

    def start(self, name: str, total: int) -> None:
        from tqdm import tqdm

        self.close()
        self.bar = tqdm(total=total, desc=name[:40], unit="img", file=sys.stderr)

    def update(self, done: int) -> None:
        self.bar.update(done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@main.command("evaluate")
@click.option(
    "--annotations", type=click.Path(path_type=Path), help="COCO detection annotation file (instances_*.json)."
)
@click.option(
    "--panoptic-annotations",
    type=click.Path(path_type=Path),
    help="COCO panoptic annotation file (panoptic_*.json), for panoptic models: PQ/SQ/RQ.",
)
@click.option(
    "--panoptic-masks",
    type=click.Path(path_type=Path),
    help="Folder of the panoptic ground-truth PNGs [beside the JSON, named like it].",
)
@click.option("--images", "images_dir", required=True, type=click.Path(path_type=Path), help="Image folder.")
@artifact_option("--onnx", "ONNX file (repeatable).", multiple=True)
@artifact_option("--openvino", "ONNX file run in OpenVINO (CPU) (repeatable).", multiple=True)
@artifact_option("--engine", "Engine (repeatable).", multiple=True)
@plugins_option()
@checkpoint_option("The checkpoint the exports were made from.")
@model_name_option("Zoo model name (eager alone, or files that record none).")
@batch_size_option("Images per run, where the backend batches.")
@threads_option()
@openvino_precision_option()
@click.option("--max-images", type=int, help="Evaluate the first N images of the annotation file only.")
@detection_threshold_options("Detections compared with eager's (0..1).")
@click.option(
    "--max-ap-drop",
    type=float,
    help="AP (PQ) points a backend may lose against eager [fp32 0.1, fp16 0.5, bf16 and int8 1.0].",
)
@report_option
@click.option(
    "--plot", type=click.Path(path_type=Path), help="Write a PNG of per-image AP differences and score drift."
)
@_reports_errors
def evaluate_command(
    annotations,
    panoptic_annotations,
    panoptic_masks,
    images_dir,
    onnx_paths,
    openvino_paths,
    engine_paths,
    plugins,
    checkpoint,
    model_name,
    batch_size,
    threads,
    openvino_precision,
    max_images,
    score_threshold,
    panoptic_threshold,
    max_ap_drop,
    report,
    plot,
):
    """COCO box AP (or panoptic PQ/SQ/RQ) of eager PyTorch and each --onnx/--openvino/--engine on a COCO-format
    dataset, side by side, with each backend's detections compared with eager's over the whole set.

    Exits 1 when a backend loses more than --max-ap-drop points against eager PyTorch.
    """
    from detr_deploy.evaluation.evaluate import evaluate_files
    from detr_deploy.evaluation.report import plot_report
    from detr_deploy.io import check_output_path
    from detr_deploy.options import check_count, check_probability, check_tolerance

    check_count(batch_size, "--batch-size", maximum=1024)
    check_count(threads, "--threads", maximum=1024)
    if max_images is not None:
        check_count(max_images, "--max-images")
    check_probability(score_threshold, "--score-threshold")
    check_probability(panoptic_threshold, "--panoptic-threshold")
    check_tolerance(max_ap_drop, "--max-ap-drop")
    inputs = [annotations, panoptic_annotations, *onnx_paths, *openvino_paths, *engine_paths, checkpoint]
    for output in (report, plot):
        if output is not None:
            check_output_path(output, inputs=inputs)
    progress = _ImageProgress()
    try:
        result = evaluate_files(
            images_dir,
            annotations=annotations,
            panoptic_annotations=panoptic_annotations,
            panoptic_masks=panoptic_masks,
            onnx_paths=onnx_paths,
            openvino_paths=openvino_paths,
            engine_paths=engine_paths,
            plugins=plugins,
            threads=threads,
            openvino_precision=openvino_precision,
            model_name=model_name,
            checkpoint=checkpoint,
            max_images=max_images,
            batch_size=batch_size,
            score_threshold=score_threshold,
            panoptic_threshold=panoptic_threshold,
            max_ap_drop=max_ap_drop,
            on_start=progress.start,
            on_progress=progress.update,
        )
    finally:
        progress.close()
    _show_and_save(result, report)
    if plot is not None:
        plot_report(result, plot)
        click.echo(f"plot written to {plot}")
    sys.exit(0 if result.passed else 1)


@main.command("export-triton")
@artifact_option("--onnx", "An export (onnxruntime and python flavours).")
@artifact_option("--engine", "An engine with its .json (tensorrt).")
@output_option("New (or empty) repository folder.")
@click.option("--name", default="detr", show_default=True, help="Prefix of the model names.")
@click.option("--flavours", help="Comma-separated: tensorrt, onnxruntime, python [every one the files allow].")
@click.option("--max-batch", type=int, default=8, show_default=True, help="ONNX flavours' max_batch_size.")
@click.option("--instances", type=int, default=1, show_default=True, help="Network model instances (per GPU).")
@click.option("--detector-instances", type=int, default=1, show_default=True, help="Pre/post-processing instances.")
@click.option("--queue-delay-us", type=int, default=2000, show_default=True, help="Dynamic batching's queue delay.")
@score_threshold_option("Detections returned (0..1).")
@click.option(
    "--pad-batches", is_flag=True, help="Pad differently sized images into one batch (--padding-mask exports)."
)
@_reports_errors
def export_triton_command(
    onnx_path,
    engine_path,
    output,
    name,
    flavours,
    max_batch,
    instances,
    detector_instances,
    queue_delay_us,
    score_threshold,
    pad_batches,
):
    """Write a Triton Inference Server model repository: the network (tensorrt_plan, onnxruntime_onnx, or ONNX
    Runtime inside the Python backend) behind a Python-backend detector that takes encoded images and answers with
    detections, preprocessed and post-processed exactly as the Detector does."""
    from detr_deploy.options import check_count, check_probability, parse_names
    from detr_deploy.triton.repository import FLAVOURS, TritonOptions, write_repository

    for value, option in ((max_batch, "--max-batch"), (instances, "--instances")):
        check_count(value, option, maximum=1024)
    check_count(detector_instances, "--detector-instances", maximum=1024)
    check_count(queue_delay_us, "--queue-delay-us", minimum=0)
    check_probability(score_threshold, "--score-threshold")
    options = TritonOptions(
        name=name,
        max_batch=max_batch,
        instances=instances,
        detector_instances=detector_instances,
        queue_delay_us=queue_delay_us,
        score_threshold=score_threshold,
        pad_batches=pad_batches,
    )
    written = write_repository(
        output,
        onnx=onnx_path,
        engine=engine_path,
        flavours=parse_names(flavours, "--flavours", FLAVOURS) if flavours else None,
        options=options,
    )
    for flavour, models in written.models.items():
        click.echo(f"{flavour}: {' -> '.join(models)}")
    for note in written.notes:
        click.echo(f"note: {note}")
    click.echo(f"wrote {written.path}; start the server with the flags in {written.path / 'server_flags.txt'}")


@main.command("serve-triton")
@click.argument("repository", type=click.Path(path_type=Path))
@click.option("--flavour", default="python", show_default=True, help="Which flavour's models to load.")
@click.option("--work-dir", type=click.Path(path_type=Path), help="Folder for the backends copy and the log [temp].")
@_reports_errors
def serve_triton_command(repository, flavour, work_dir):
    """Start the tritonserver bundled with nvidia-pytriton on 127.0.0.1 with REPOSITORY's FLAVOUR models, print its
    addresses, and serve until Ctrl-C (then it is stopped by its own process id)."""
    import tempfile
    import time

    from detr_deploy.triton.server import TritonServer, repository_models

    models = repository_models(repository, flavour)
    with tempfile.TemporaryDirectory(prefix="detr_deploy_triton_") as scratch:
        with TritonServer(repository, work_dir=work_dir or scratch, models=models) as server:
            click.echo(
                f"serving {', '.join(models)}: HTTP {server.http_url}, gRPC {server.grpc_url}, metrics "
                f"{server.metrics_url} (pid {server.pid}; Ctrl-C stops it)"
            )
            while server.process.poll() is None:
                time.sleep(1.0)
            raise DetrDeployError(f"tritonserver exited with status {server.process.returncode}:\n{server.log_tail()}")


@main.command("triton-client")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--url", required=True, help="HOST:PORT of the server (HTTP or gRPC port).")
@click.option("--model", default="detr_python", show_default=True, help="The detector model to query.")
@click.option(
    "--protocol",
    type=click.Choice(["http", "grpc"]),
    default="http",
    show_default=True,
    help="How to reach the server.",
)
@click.option("--clients", type=int, help="Load test: this many concurrent clients (with --requests).")
@click.option("--requests", type=int, default=20, show_default=True, help="Load test: requests per client.")
@_reports_errors
def triton_client_command(images, url, model, protocol, clients, requests):
    """Send IMAGES to a served detector and print its detections, or with --clients run a load test over them and
    print p50/p99 latency, throughput and the batch sizes the server ran."""
    from detr_deploy.options import check_count
    from detr_deploy.triton.client import DetectorClient, load_test

    encoded = [path.read_bytes() if path.is_file() else None for path in images]
    missing = [str(path) for path, data in zip(images, encoded) if data is None]
    if missing:
        raise DetrDeployError(f"image {missing[0]} does not exist")
    with DetectorClient(url, model, protocol) as client:
        if clients is None:
            for path, data in zip(images, encoded):
                result = client.detect(data)
                found = ", ".join(f"{d.name} {d.score:.2f}" for d in result.detections[:5])
                click.echo(f"{path}: {len(result.detections)} detections{': ' + found if found else ''}")
            return
        check_count(clients, "--clients", maximum=1024)
        check_count(requests, "--requests")
        report = load_test(url, model, encoded, clients=clients, requests_per_client=requests, protocol=protocol)
        click.echo(report.describe())
        click.echo(f"batch sizes run by {model}: {dict(sorted(client.batch_sizes().items()))}")
        if report.errors:
            raise DetrDeployError(f"{len(report.errors)} requests failed; first: {report.errors[0]}")


@main.command("benchmark")
@artifact_option("--onnx", "ONNX file (ONNX Runtime, OpenVINO; eager's model).")
@artifact_option("--engine", "Engine (TensorRT).")
@checkpoint_option("The checkpoint (file or transformers folder) the export was made from, for eager PyTorch.")
@plugins_option()
@click.option(
    "--backends",
    help="Comma-separated: eager, onnxruntime, openvino (runs --onnx), tensorrt [eager, and onnxruntime with --onnx, "
    "tensorrt with --engine].",
)
@click.option("--sizes", default="800x1088", show_default=True, help="HEIGHTxWIDTH list.")
@batch_sizes_option("1", "Batch sizes to time at each size, e.g. 1,4.")
@click.option("--warmup", type=int, default=3, show_default=True, help="Untimed runs before timing.")
@click.option("--iterations", type=int, default=20, show_default=True, help="Timed runs per case.")
@threads_option("CPU threads of eager PyTorch, ONNX Runtime and OpenVINO.")
@openvino_precision_option()
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the figures as JSON here.")
@_reports_errors
def benchmark_command(
    onnx_path,
    engine_path,
    checkpoint,
    plugins,
    backends,
    sizes,
    batch_sizes,
    warmup,
    iterations,
    threads,
    openvino_precision,
    json_path,
):
    """Latency (p50/p90/p99) and throughput of eager PyTorch, ONNX Runtime, OpenVINO and TensorRT, warm-up
    excluded."""
    from detr_deploy import contract
    from detr_deploy.benchmark import BACKENDS, check_benchmark_fits_in_memory, open_runners, run_benchmark
    from detr_deploy.io import check_output_path
    from detr_deploy.options import check_count, parse_batch_sizes, parse_names, parse_sizes

    parsed_sizes, parsed_batches = (None if sizes is None else parse_sizes(sizes)), parse_batch_sizes(batch_sizes)
    check_count(warmup, "--warmup", minimum=0), check_count(iterations, "--iterations", maximum=100_000)
    check_count(threads, "--threads", maximum=1024)
    if json_path is not None:
        check_output_path(json_path, inputs=[onnx_path, engine_path, checkpoint])
    if backends is not None:
        chosen = parse_names(backends, "--backends", BACKENDS)
    else:
        chosen = ["eager"] + (["onnxruntime"] if onnx_path else []) + (["tensorrt"] if engine_path else [])
    if openvino_precision is not None and "openvino" not in chosen:
        raise DetrDeployError("--precision is for the openvino backend; add it to --backends")
    runners, metadata = open_runners(
        chosen,
        onnx_path=onnx_path,
        engine_path=engine_path,
        checkpoint=checkpoint,
        plugins=plugins,
        threads=threads,
        openvino_precision=openvino_precision,
    )
    check_benchmark_fits_in_memory(metadata, parsed_sizes, parsed_batches)

    def show(result):
        click.echo(
            f"{result.backend} batch {result.batch} @ {result.height}x{result.width}: p50 {result.p50_ms:.1f} ms",
            err=True,
        )

    report = run_benchmark(
        runners,
        metadata.get(contract.META_MODEL, "unknown"),
        sizes=parsed_sizes,
        batch_sizes=parsed_batches,
        warmup=warmup,
        iterations=iterations,
        on_result=show,
    )
    _show_and_save(report, json_path)


if __name__ == "__main__":
    main()
