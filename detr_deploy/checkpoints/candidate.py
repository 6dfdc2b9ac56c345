"""What the readers are asked about: a ``Candidate`` (a file or transformers directory, opened once) and each
reader's ``Recognition`` of it; ``Reader`` is what a family's reader module declares, one per format it reads."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from detr_deploy.checkpoints.formats.official import split_official
from detr_deploy.io import sha256_of

# The formats a reader reads (``Reader.format``).
FORMAT_OFFICIAL = "official"
FORMAT_TRANSFORMERS = "transformers"
FORMAT_MMDETECTION = "mmdetection"


@dataclass
class Candidate:
    """A checkpoint as opened, before any reader reads it.

    ``path`` is what the user named. A pickled file has ``content`` (what it unpickled to) and ``state`` (its state
    dict: under ``model`` or ``state_dict``, or the content itself; None when there is none). A transformers
    directory has ``folder`` (a ``formats.transformers.TransformersFolder``: config.json read, weights loaded on
    first use). ``sha256`` identifies the weights and is computed on first use, once."""

    path: Path
    content: object = None
    state: Mapping = None
    folder: object = None
    _memo: dict = field(default_factory=dict, repr=False)

    @classmethod
    def of_pickled(cls, path: Path, content) -> "Candidate":
        """The candidate of a loaded .pth/.bin: its state dict is mmdetection's ``state_dict``, else the official
        ``model``, else the content itself."""
        state, _ = split_official(content)
        if isinstance(content, Mapping) and isinstance(content.get("state_dict"), Mapping):
            state = content["state_dict"]
        return cls(path, content=content, state=state if isinstance(state, Mapping) else None)

    @property
    def config(self) -> dict:
        """The transformers directory's config.json ({} for a pickled file)."""
        return self.folder.config if self.folder is not None else {}

    @cached_property
    def sha256(self) -> str:
        return self.folder.digest if self.folder is not None else sha256_of(self.path)

    def memo(self, name: str, compute: Callable):
        """``compute()``, once per candidate: what several readers derive from the same file (an mmdetection
        file's parsed meta, say)."""
        if name not in self._memo:
            self._memo[name] = compute()
        return self._memo[name]


@dataclass(frozen=True)
class Recognition:
    """A reader's answer: ``yes`` (it reads the file), or not. When not, a family reader that half-recognizes the
    file (its family, in a variant it does not read) gives the whole one-line ``refusal``; a refuses-only reader
    that sees another family's marks names that ``family`` and its ``evidence`` (the table words the message)."""

    yes: bool = False
    refusal: str = ""
    family: str = ""
    evidence: str = ""


YES = Recognition(yes=True)
NO = Recognition()


def refuse(reason: str) -> Recognition:
    """The reader half-recognizes the file and refuses it; ``reason`` is the whole one-line message."""
    return Recognition(refusal=reason)


def foreign(family: str, evidence: str) -> Recognition:
    """The file carries the marks of ``family`` (a DETR family no reader reads): ``evidence`` says which."""
    return Recognition(family=family, evidence=evidence)


@dataclass(frozen=True)
class Reader:
    """One format of one family (or, with ``refuses_only``, a set of models no family reads).

    ``labels`` name what it reads for people ("DETR", "DETR-panoptic"); ``format_names`` in the format's own terms
    (mmdetection's model types, transformers' ``model_type``s); ``classes`` the transformers classes. ``recognize``
    must answer yes only for files it reads, whatever other readers exist; ``read(candidate, model_config)``
    returns the ``Checkpoint``. A ``refuses_only`` reader reads nothing: it names the families whose marks (tensors
    no family reader's models have) a file carries."""

    name: str
    format: str
    recognize: Callable[[Candidate], Recognition]
    read: Callable = None
    labels: tuple[str, ...] = ()
    format_names: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    refuses_only: bool = False
