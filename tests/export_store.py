"""The test suite's one export store: ONNX exports of the tiny models (and of the full-size ones FULL_SIZE_STORED
names) on disk, shared by xdist workers and kept between runs. The engines built from them are kept beside them
(tests/engine_store.py, a folder ``engines-*`` in the source hash's folder).

Where: ``build/test-exports/`` in the repository (ignored by git, so a clean clone starts cold), or the folder
``DETR_DEPLOY_TEST_EXPORTS`` names. Inside, one folder per *source hash* (sha256 over the code an export depends on
and the versions of torch and the ONNX packages); folders of other hashes that no run used for ``STALE_AFTER_S``
are evicted when a run first opens the store (a run of another engineer's tree, with other code, may still use
its folder).

Two levels, each entry written under a file lock (one worker exports, the other waits) and moved into place
atomically (temporary name, rename):

- the *torch export* (``exporters.onnx._torch_export``, the slow step: 5-40 s a tiny model), keyed by the model
  config (``config_to_dict``), the weights themselves (sha256 over the state dict), padding mask and opset. The
  msda mode and model name are not in it: ``_torch_export`` takes neither (they only change ``_finalize`` and the
  metadata), so both msda modes, zoo names with equal tiny configs, and a checkpoint read in two formats share one.
  ``stored_torch_export`` answers ``_torch_export`` from this level wherever a test exports in-process (the CLI's
  ``export`` included: conftest patches it for every test not marked ``real_export``);
- the *export*, the file ``exporters.onnx.export_model`` writes, keyed by model name, msda mode, padding mask, opset
  and the weights (seed, or sha256 of the checkpoint file and of the checkpoint readers' code), made by
  ``export_model`` itself with ``_torch_export`` answered from the first level.

Callers get paths into the store: read them, never modify them (copy to ``tmp_path`` first).
"""

import hashlib
import importlib.metadata
import json
import os
import shutil
import time
from pathlib import Path
from unittest import mock

import torch
from filelock import FileLock

import exporters.onnx
from tests.helpers import REPO

# Taken at import, before any test patches exporters.onnx._torch_export with ExportStore.torch_export.
_REAL_TORCH_EXPORT = exporters.onnx._torch_export


def real_torch_export(model, config, opset: int, padding_mask: bool):
    """exporters.onnx._torch_export itself, for the tests marked ``real_export``."""
    return _REAL_TORCH_EXPORT(model, config, opset, padding_mask)


STORE_ENV = "DETR_DEPLOY_TEST_EXPORTS"
DEFAULT_ROOT = REPO / "build" / "test-exports"
# A folder of another source hash is evicted once no run has used it for this long.
STALE_AFTER_S = 30 * 60
_USED_STAMP = "last-used"

# The code an export depends on: the library but for what exports never import, the exporter, and the test-side
# definitions (tiny models are registered and confident weights written by tests/helpers.py).
_SOURCE_DIRS = [REPO / "detr_deploy"]
_SOURCE_EXCLUDED = {"checkpoints", "evaluation", "triton"}
_SOURCE_FILES = [
    REPO / "exporters" / "__init__.py",
    REPO / "exporters" / "onnx.py",
    REPO / "exporters" / "msda_function.py",
    REPO / "tests" / "helpers.py",
    Path(__file__),
]
# Exports from checkpoints also depend on how the files are read.
_CHECKPOINT_READERS = REPO / "detr_deploy" / "checkpoints"
_PACKAGES = ("torch", "onnx", "onnxscript", "onnx-ir")
# Parameters and buffers of the largest model whose torch export is stored (the tiny ones have well under 1M)...
_LARGEST_STORED_MODEL = 5_000_000
# ...but for these full-size zoo models (their configs exactly; 150-200 MB an export), which
# tests/cli/test_cli_engine.py exports at full size to build engines of (tests/engine_store.py keeps the engines).
FULL_SIZE_STORED = (
    "detr_r50_panoptic",
    "deformable_detr_r50",
    "rtdetr_r50vd",
    "rtdetr_hgnetv2_l",
    "dino_4scale_r50",
    "dfine_hgnetv2_s",
)


def _hash_files(files) -> str:
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _source_files() -> list[Path]:
    files = [p for p in _SOURCE_FILES if p.is_file()]
    for folder in _SOURCE_DIRS:
        files += [p for p in folder.rglob("*.py") if not _SOURCE_EXCLUDED & set(p.relative_to(folder).parts[:-1])]
    return files


def source_hash() -> str:
    """sha256 over the export code (``_source_files``) and the versions of torch and the ONNX packages."""
    versions = []
    for package in _PACKAGES:
        try:
            versions.append(f"{package}=={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{package} absent")
    return hashlib.sha256((_hash_files(_source_files()) + ";".join(versions)).encode()).hexdigest()


def _state_hash(state: dict) -> str:
    """sha256 over a state dict's names, dtypes, shapes and values."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().contiguous().cpu()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _key(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


def _atomic_write(path: Path, write) -> None:
    """write(temporary path) then rename it to ``path``: readers see the whole file or none."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


class ExportStore:
    def __init__(self, root=None):
        self.root = Path(root or os.environ.get(STORE_ENV) or DEFAULT_ROOT)
        self.source = source_hash()
        self.folder = self.root / self.source[:24]
        self._checkpoint_readers = None
        self._full_size_configs = None
        self._opened = False

    # Opening and eviction ---------------------------------------------------------------------------------------

    def _open(self) -> Path:
        if not self._opened:
            self.root.mkdir(parents=True, exist_ok=True)
            with FileLock(self.root / ".store.lock"):
                self.folder.mkdir(exist_ok=True)
                (self.folder / _USED_STAMP).touch()
                self.evict()
            self._opened = True
        return self.folder

    def evict(self) -> list[Path]:
        """Remove the folders of other source hashes that no run used for STALE_AFTER_S; returns them."""
        removed = []
        for folder in self.root.iterdir():
            if not folder.is_dir() or folder == self.folder:
                continue
            stamp = folder / _USED_STAMP
            used = stamp.stat().st_mtime if stamp.exists() else folder.stat().st_mtime
            if time.time() - used > STALE_AFTER_S:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
        return removed

    # Keys --------------------------------------------------------------------------------------------------------

    def _weights(self, seed: int, checkpoint) -> str:
        if checkpoint is None:
            return f"seed={seed}"
        from detr_deploy.io import sha256_of

        if self._checkpoint_readers is None:
            self._checkpoint_readers = _hash_files(_CHECKPOINT_READERS.rglob("*.py"))
        return f"checkpoint sha256:{sha256_of(checkpoint)} readers:{self._checkpoint_readers}"

    # Entries -----------------------------------------------------------------------------------------------------

    def _full_size(self, described: dict) -> bool:
        """Whether ``described`` (``config_to_dict``) is the config of a FULL_SIZE_STORED zoo model."""
        if self._full_size_configs is None:
            from detr_deploy.models import get_model_spec
            from detr_deploy.models.registry import config_to_dict

            self._full_size_configs = [config_to_dict(get_model_spec(name).config) for name in FULL_SIZE_STORED]
        return described in self._full_size_configs

    def torch_export(self, model, config, opset: int, padding_mask: bool):
        """``exporters.onnx._torch_export(model, config, opset, padding_mask)`` answered from (or filling) the first
        level. Models too large to keep (full-size ones but FULL_SIZE_STORED) are exported each time."""
        import onnx

        from detr_deploy.models.registry import config_to_dict

        state = model.state_dict()
        described = config_to_dict(config)
        if sum(tensor.numel() for tensor in state.values()) > _LARGEST_STORED_MODEL and not self._full_size(described):
            return _REAL_TORCH_EXPORT(model, config, opset, padding_mask)
        fields = {
            "config": described,
            "weights": _state_hash(state),
            "opset": opset,
            "padding_mask": padding_mask,
        }
        path = self._open() / f"torch-{_key(fields)}.onnx"
        with FileLock(path.with_suffix(".lock")):
            if not path.exists():
                proto = _REAL_TORCH_EXPORT(model, config, opset, padding_mask)
                _atomic_write(path, lambda temporary: onnx.save_model(proto, temporary))
                return proto
        return onnx.load(path)

    def export(self, model_name: str, *, msda: str = "plugin", padding_mask: bool = False, checkpoint=None,
               seed: int = 0):  # fmt: skip
        """The ExportResult (``path`` in the store) of ``export_model(model_name, ..., msda=, padding_mask=,
        checkpoint=, seed=)``, exported on first use."""
        from exporters.onnx import DEFAULT_OPSET, ExportResult, export_model

        folder = self._open()
        (folder / _USED_STAMP).touch()
        weights = self._weights(seed, checkpoint)
        fields = {"model": model_name, "msda": msda, "padding_mask": padding_mask, "opset": DEFAULT_OPSET}
        key = _key({**fields, "weights": weights})
        path, sidecar = folder / f"{model_name}-{msda}-{key}.onnx", folder / f"{model_name}-{msda}-{key}.json"
        with FileLock(folder / f"{key}.lock"):
            if not path.exists():
                temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                try:
                    with mock.patch("exporters.onnx._torch_export", self.torch_export):
                        result = export_model(
                            model_name, temporary, checkpoint=checkpoint, msda=msda, seed=seed,
                            padding_mask=padding_mask,
                        )  # fmt: skip
                    recorded = {name: getattr(result, name) for name in ExportResult.__dataclass_fields__}
                    del recorded["path"]
                    description = json.dumps({"key": {**fields, "weights": weights}, "result": recorded}, indent=1)
                    # The description first: a file in place always has one.
                    _atomic_write(sidecar, lambda described: described.write_text(description))
                    os.replace(temporary, path)
                finally:
                    temporary.unlink(missing_ok=True)
        recorded = json.loads(sidecar.read_text())["result"]
        return ExportResult(path, **{k: tuple(v) if isinstance(v, list) else v for k, v in recorded.items()})

    def confident_checkpoint(self, model_name: str) -> Path:
        """``tests.helpers.confident_checkpoint(model_name)`` (its defaults), written once: the same bytes each run,
        so the exports of it are found again."""
        from tests.helpers import confident_checkpoint

        folder = self._open() / f"confident-{model_name}"
        path = folder / "weights.pth"
        folder.mkdir(exist_ok=True)
        with FileLock(folder / "weights.lock"):
            if not path.exists():
                _atomic_write(path, lambda temporary: confident_checkpoint(model_name, temporary))
        return path


_STORE = None


def store() -> ExportStore:
    """The process's store (each xdist worker opens the same folder)."""
    global _STORE
    if _STORE is None:
        _STORE = ExportStore()
    return _STORE
