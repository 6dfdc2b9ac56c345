"""``inspect``: what a checkpoint is, as data (JSON) and as a table for people, with the export command to run."""

import json
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path

from detr_deploy.checkpoints.checkpoint import Checkpoint
from detr_deploy.models.registry import config_to_dict


@dataclass(frozen=True)
class CheckpointReport:
    path: str
    format: str
    family: str
    architecture: str
    description: str
    panoptic: bool
    with_box_refine: bool
    two_stage: bool
    # Labels of the variant flags that are on ("panoptic", "box refinement", "two-stage"; the family's own).
    variants: list[str]
    backbone: str
    num_classes: int
    score_activation: str
    class_names: list[str]
    class_names_from: str
    num_queries: int
    encoder_layers: int
    decoder_layers: int
    hidden_dim: int
    heads: int
    dim_feedforward: int
    feature_levels: int
    tensors: int
    parameters: int
    sha256: str
    read_from: list[str]
    # What would stop an export (NaN/Inf weights, tensors that do not fit the architecture); empty when none.
    problems: list[str]
    config: dict
    export_command: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def render(self) -> str:
        shown_names = ", ".join(self.class_names[:8]) + (", ..." if len(self.class_names) > 8 else "")
        variant = [name for name in self.variants if name != "panoptic"]
        rows = [
            ("file", self.path),
            ("format", self.format),
            ("architecture", self.architecture),
            ("family", self.family + (" (panoptic)" if self.panoptic else "")),
            ("variant", ", ".join(variant) or "plain"),
            ("backbone", self.backbone),
            ("classes", f"{self.num_classes} ({self.score_activation}; names: {self.class_names_from})"),
            ("class names", shown_names),
            ("queries", str(self.num_queries)),
            ("layers", f"{self.encoder_layers} encoder, {self.decoder_layers} decoder"),
            ("width / heads / FFN", f"{self.hidden_dim} / {self.heads} / {self.dim_feedforward}"),
        ]
        if self.feature_levels:
            rows.append(("feature levels", str(self.feature_levels)))
        rows += [
            ("tensors", f"{self.tensors} ({self.parameters / 1e6:.2f} M values)"),
            ("sha256", self.sha256),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"{name:<{width}}  {value}" for name, value in rows]
        lines += ["read from:"] + [f"  {line}" for line in self.read_from]
        if self.problems:
            lines += ["problems (the export will refuse this file):"] + [f"  {line}" for line in self.problems]
        else:
            lines += ["export with:", f"  {self.export_command}"]
        return "\n".join(lines)


def checkpoint_report(checkpoint: Checkpoint, model_name: str = None) -> CheckpointReport:
    """The report of a read checkpoint; ``model_name`` is the ``--model`` it needed (goes into the command)."""
    import torch

    from detr_deploy.categories import class_metadata
    from detr_deploy.checkpoints.checkpoint import check_finite, check_state_dict
    from detr_deploy.contract import META_CLASS_NAMES
    from detr_deploy.errors import DetrDeployError
    from detr_deploy.models.registry import build_model

    config = checkpoint.config
    names = json.loads(class_metadata(config, checkpoint.class_names)[META_CLASS_NAMES])
    names_from = (
        "the checkpoint"
        if checkpoint.class_names is not None
        else (
            "COCO (the file names none; COCO-sized head)" if not names[0].startswith("class_") else "none in the file"
        )
    )
    backbone = config.backbone_label.replace(" DC5", " DC5 (dilated last stage)")
    stem = Path(checkpoint.path).name.split(".")[0] or "model"
    command = ["python", "cli.py", "export", "--checkpoint", str(checkpoint.path), "--output", f"{stem}.onnx"]
    if model_name:
        command += ["--model", model_name]
    problems = []
    with torch.device("meta"):
        skeleton = build_model(config)
    for check in (
        lambda: check_state_dict(skeleton, checkpoint.state_dict, checkpoint.path.name, checkpoint.description),
        lambda: check_finite(checkpoint.state_dict, checkpoint.path.name),
    ):
        try:
            check()
        except DetrDeployError as error:
            problems.append(str(error))
    return CheckpointReport(
        path=str(checkpoint.path),
        format=checkpoint.source,
        family=config.family,
        architecture=checkpoint.model_name,
        description=checkpoint.description,
        panoptic=bool(getattr(config, "panoptic", False)),
        with_box_refine=bool(getattr(config, "with_box_refine", False)),
        two_stage=bool(getattr(config, "two_stage", False)),
        variants=list(config.variants),
        backbone=backbone,
        num_classes=config.num_classes,
        score_activation=config.score_activation,
        class_names=names,
        class_names_from=names_from,
        num_queries=config.num_queries,
        encoder_layers=config.num_encoder_layers,
        decoder_layers=config.num_decoder_layers,
        hidden_dim=config.hidden_dim,
        heads=config.num_heads,
        dim_feedforward=config.dim_feedforward,
        feature_levels=getattr(config, "num_feature_levels", 0),
        tensors=len(checkpoint.state_dict),
        parameters=sum(tensor.numel() for tensor in checkpoint.state_dict.values()),
        sha256=checkpoint.sha256,
        read_from=list(checkpoint.read_from),
        problems=problems,
        config=config_to_dict(config),
        export_command=shlex.join(command),
    )
