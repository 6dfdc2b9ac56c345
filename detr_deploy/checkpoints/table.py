"""The table of readers: every module of ``checkpoints.readers`` and the ``READERS`` it exports.

A checkpoint is read by the one family reader that recognizes it. Recognition does not depend on the table's
order: each reader tests for its own family's tensors (or config.json's ``model_type``), and more than one yes is
a bug in those tests. The refuses-only readers (``readers.unsupported``) are asked first: a file with the marks of
a family no reader reads (DAB-DETR's ``refpoint_embed``, ...) is refused by that family's name even where
its other tensors look like ours. Where no family reader says yes, one that half-recognizes the file (its family
in a variant it does not read) has refused it with its reason.
"""

import importlib
import pkgutil
from functools import cache

from detr_deploy.checkpoints import readers as readers_package
from detr_deploy.checkpoints.candidate import FORMAT_MMDETECTION, FORMAT_TRANSFORMERS, Candidate, Reader
from detr_deploy.errors import DetrDeployError


@cache
def all_readers() -> tuple[Reader, ...]:
    """Every module's ``READERS``, modules in name order."""
    names = sorted(module.name for module in pkgutil.iter_modules(readers_package.__path__))
    found = []
    for name in names:
        found.extend(importlib.import_module(f"{readers_package.__name__}.{name}").READERS)
    return tuple(found)


def family_readers() -> tuple[Reader, ...]:
    return tuple(reader for reader in all_readers() if not reader.refuses_only)


def recognizing_readers(candidate: Candidate) -> list[Reader]:
    """The family readers that say yes to ``candidate`` (exactly one for every checkpoint they read)."""
    return [reader for reader in family_readers() if reader.recognize(candidate).yes]


def choose_reader(candidate: Candidate) -> Reader:
    """The reader of ``candidate``; None when no reader knows it. Raises DetrDeployError for a file of a family no
    reader reads, or one a reader half-recognizes and refuses."""
    for reader in all_readers():
        if reader.refuses_only:
            verdict = reader.recognize(candidate)
            if verdict.family:
                raise DetrDeployError(
                    f"checkpoint {candidate.path.name} looks like {verdict.family} ({verdict.evidence}), which is not "
                    f"supported: this version reads {supported_families()}"
                )
    verdicts = [(reader, reader.recognize(candidate)) for reader in family_readers()]
    chosen = [reader for reader, verdict in verdicts if verdict.yes]
    if len(chosen) > 1:
        names = ", ".join(reader.name for reader in chosen)
        raise RuntimeError(f"readers {names} all recognize {candidate.path}: their recognize tests overlap")
    if chosen:
        return chosen[0]
    refusal = next((verdict.refusal for _, verdict in verdicts if verdict.refusal), None)
    if refusal is not None:
        raise DetrDeployError(refusal)
    return None


def _unique(values) -> list[str]:
    return list(dict.fromkeys(values))


def _listed(values: list[str], last: str) -> str:
    """'a, b and c' (``last`` "and") or 'a, b or c'."""
    return values[0] if len(values) < 2 else f"{', '.join(values[:-1])} {last} {values[-1]}"


def supported_families(last: str = "and") -> str:
    """'DETR, DETR-panoptic, ... and DINO': what the family readers read, as they label it."""
    return _listed(_unique(label for reader in family_readers() for label in reader.labels), last)


def supported_in(format_name: str) -> list[str]:
    """What the family readers of ``format_name`` read, in that format's own terms (model types, model_type)."""
    readers = [reader for reader in family_readers() if reader.format == format_name]
    return _unique(name for reader in readers for name in reader.format_names)


def supported_mmdetection() -> str:
    """ "mmdetection's DETR, DeformableDETR and DINO"."""
    return f"mmdetection's {_listed(supported_in(FORMAT_MMDETECTION), 'and')}"


def transformers_model_type_error(directory, model_type: str) -> DetrDeployError:
    """The error for a transformers directory of an architecture no reader reads."""
    readers = [reader for reader in family_readers() if reader.format == FORMAT_TRANSFORMERS]
    classes = _unique(name for reader in readers for name in reader.classes)
    return DetrDeployError(
        f"{directory} holds a transformers '{model_type}' model, which is not supported: this version reads "
        f"{', '.join(supported_in(FORMAT_TRANSFORMERS))} ({', '.join(classes)})"
    )
