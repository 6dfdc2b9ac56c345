"""The table of checkpoint readers: one reader per family and format, found by themselves; recognition that does
not overlap; marks of other families that no zoo model has; and a package without import circles or private helpers
used across modules."""

import ast
from pathlib import Path

import pytest
import torch

from detr_deploy.checkpoints import read_checkpoint
from detr_deploy.checkpoints.candidate import Candidate
from detr_deploy.checkpoints.readers import unsupported
from detr_deploy.checkpoints.table import all_readers, family_readers, supported_families
from detr_deploy.errors import DetrDeployError
from detr_deploy.models import build_model, get_model_spec
from tests.helpers import REPO, ZOO_MODELS, tiny_name

PACKAGE = REPO / "detr_deploy" / "checkpoints"


def _official_candidate(state) -> Candidate:
    return Candidate(Path("model.pth"), content={"model": state}, state=state)


@pytest.mark.parametrize("zoo_name", ZOO_MODELS)
def test_exactly_one_reader_recognizes_each_zoo_layout(zoo_name):
    # Every zoo model keeps its family's official key layout: saved as the official code saves it, one reader (the
    # family's official one) says yes, and no other family's marks are found in it.
    state = build_model(get_model_spec(tiny_name(zoo_name)).config).state_dict()
    candidate = _official_candidate(state)
    chosen = [reader.name for reader in family_readers() if reader.recognize(candidate).yes]
    assert len(chosen) == 1 and chosen[0].startswith("official "), chosen
    assert not unsupported.recognize_other_family(candidate).family


def test_marks_of_other_families_name_them(tmp_path):
    for mark, family in unsupported.MARKS:
        state = {"backbone.0.body.conv1.weight": torch.zeros(8, 3, 7, 7), f"transformer.{mark}.weight": torch.zeros(2)}
        torch.save({"model": state}, tmp_path / "other.pth")
        with pytest.raises(DetrDeployError) as error:
            read_checkpoint(tmp_path / "other.pth")
        message = str(error.value)
        assert f"looks like {family}" in message and "not supported" in message and "\n" not in message
    # A backbone's tensors say nothing of the detector family (DINO's Swin backbone has a patch_embed).
    backbone_only = {"backbone.0.patch_embed.proj.weight": torch.zeros(2)}
    assert not unsupported.recognize_other_family(_official_candidate(backbone_only)).family


def test_every_reader_module_declares_its_readers():
    modules = sorted(path.stem for path in (PACKAGE / "readers").glob("*.py") if path.stem != "__init__")
    named = {reader.read.__module__.rsplit(".", 1)[-1] for reader in all_readers() if reader.read is not None}
    assert named | {"unsupported"} == set(modules)
    assert all(reader.labels for reader in family_readers())
    assert "RT-DETR" in supported_families() and "DINO" in supported_families()


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module imported from, names imported) of every import in ``path``, wherever it stands (lazy ones too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
    return found


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_checkpoints_package_has_no_import_circle_nor_private_helpers_shared():
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(path): path for path in paths}
    graph = {}
    for name, path in modules.items():
        edges = set()
        for module, names in _imports(path):
            for target in [module] + [f"{module}.{imported}" for imported in names]:
                if target in modules and target != name:
                    edges.add(target)
            private = [imported for imported in names if imported.startswith("_") and module in modules]
            assert not private, f"{name} imports private {private} from {module}"
        graph[name] = edges
    # The package's __init__ is the entry point: what it imports does not import it back.
    graph = {name: {edge for edge in edges if edge != "detr_deploy.checkpoints"} for name, edges in graph.items()}

    def visit(name, trail):
        assert name not in trail, f"import circle: {' -> '.join([*trail, name])}"
        for edge in graph[name]:
            visit(edge, [*trail, name])

    for name in graph:
        visit(name, [])
    for path in paths:  # no module reaches into another's private names as attributes either (``mm._get``)
        tree = ast.parse(path.read_text())
        aliases = {
            alias.asname or alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
            for alias in node.names
            if f"{node.module}.{alias.name}" in modules
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
                private = node.attr.startswith("_") and not node.attr.startswith("__")
                assert not private, f"{path.name} uses {node.value.id}.{node.attr}"
