"""Each family's config answers what shared code asks (models/family.py), and shared code asks instead of switching
on the family."""

import ast
import dataclasses
import re

import pytest
import torch

import tests.helpers  # noqa: F401  (registers the tiny_* models)
from detr_deploy import contract
from detr_deploy.models import build_model, get_model_spec, list_models
from detr_deploy.models.family import FamilyConfig
from detr_deploy.models.registry import config_from_dict, config_to_dict
from tests.helpers import REPO, ZOO_MODELS, tiny_name

FAMILY_MODULES = {"detr.py", "deformable_detr.py", "dino.py", "rtdetr.py", "family.py"}


@pytest.mark.parametrize("name", list_models())
def test_every_config_answers_the_shared_questions(name):
    config = get_model_spec(name).config
    assert isinstance(config, FamilyConfig) and dataclasses.is_dataclass(config)
    assert config.family and config.label and config.backbone_label
    assert config_from_dict(config_to_dict(config)) == config
    assert config.describe().startswith(config.full_label + ", " + config.backbone_label + ", ")
    assert re.fullmatch(r"shorter=\d+,max=\d+|fixed=\d+x\d+", config.resize)
    # A query-selecting model ranks tokens; one with learned queries answers None.
    tokens = config.selection_tokens(640, 640)
    assert (tokens is not None) == config.query_order_is_ranked
    if tokens is not None:
        assert tokens == sum((640 // stride) ** 2 for stride in config.selection_strides) > config.num_queries


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_the_tiny_variant_is_the_same_architecture_smaller(name):
    config = get_model_spec(name).config
    tiny = config.tiny()
    # Only the backbone depth in the name differs (one block per stage).
    assert type(tiny) is type(config)
    assert re.sub(r"_r\d+", "_r*", tiny.architecture_name) == re.sub(r"_r\d+", "_r*", config.architecture_name)
    assert tiny.variants == config.variants and tiny.output_names == config.output_names
    with torch.device("meta"):
        full_size = sum(p.numel() for p in build_model(config).parameters())
        small = sum(p.numel() for p in build_model(tiny).parameters())
    assert small * 20 < full_size
    assert get_model_spec(tiny_name(name)).config == tiny


@pytest.mark.parametrize(
    "name, strides",
    [
        ("deformable_detr_r50_two_stage", (8, 16, 32, 64)),
        ("dino_4scale_r50", (8, 16, 32, 64)),
        ("dino_5scale_r50", (4, 8, 16, 32, 64)),
        ("rtdetr_r18vd", (8, 16, 32)),
    ],
)
def test_selection_strides_are_the_ranked_levels(name, strides):
    assert get_model_spec(name).config.selection_strides == strides


def test_ranked_models_record_their_selection_for_runners():
    from detr_deploy.model_source import input_metadata

    for name in ("deformable_detr_r50_two_stage", "rtdetr_r50vd", "dino_5scale_r50"):
        config = get_model_spec(name).config
        metadata = input_metadata(config)
        assert metadata[contract.META_SELECTION_STRIDES] == ",".join(map(str, config.selection_strides))
        assert metadata[contract.META_SELECTED_QUERIES] == str(config.num_queries)
    for name in ("detr_r50", "deformable_detr_r50_refine"):
        assert contract.META_SELECTION_STRIDES not in input_metadata(get_model_spec(name).config)


def _shared_sources():
    """Every library module outside the family modules (and the checkpoint readers, which are per family)."""
    for path in sorted((REPO / "detr_deploy").rglob("*.py")) + sorted((REPO / "exporters").glob("*.py")):
        relative = path.relative_to(REPO).as_posix()
        if relative.startswith("detr_deploy/checkpoints/"):
            continue
        if relative.startswith("detr_deploy/models/") and path.name in FAMILY_MODULES:
            continue
        yield relative, ast.parse(path.read_text())
    yield "cli.py", ast.parse((REPO / "cli.py").read_text())


def test_shared_code_never_switches_on_the_family():
    """No comparison with ``.family``, no isinstance against a family's config: shared code asks the config."""
    config_types = {"DETRConfig", "DeformableDETRConfig", "DINOConfig", "RTDETRConfig"}
    found = []
    for relative, tree in _shared_sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                if any(isinstance(o, ast.Attribute) and o.attr == "family" for o in operands):
                    # The registry maps a recorded family key back to its config type: the one lookup allowed.
                    if relative != "detr_deploy/models/registry.py":
                        found.append(f"{relative}:{node.lineno}")
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance":
                named = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
                if named & config_types:
                    found.append(f"{relative}:{node.lineno}")
    assert not found, f"shared code switches on the family at {found}"


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_a_zoo_name_is_its_architecture_name(name):
    """inspect and exports name a fine-tuned file by its architecture: for the zoo's own models, the zoo name."""
    assert get_model_spec(name).config.architecture_name == name
