"""The test suite's engine store: TensorRT-RTX engines built ahead of time, kept on disk between runs beside the
exports they were built from (tests/export_store.py).

What is stored is the build worker's part of ``build_engine``: ``exporters.engine_build._run_worker(job, on_event)``,
the child process that parses the ONNX file and builds the engine (60-80 s for a full-size model, 3-6 s for a tiny
one). A stored entry is the engine file the worker wrote and every event it reported (stages, progress, TensorRT's
log messages, the network's inputs and outputs, the result), recorded from a real build the first time the key was
asked for. Answering a job copies the engine to where the worker would have written it and replays the events, so
everything ``build_engine`` does around the worker (options, profile, precision pass, plugin binding check, sidecar,
atomic outputs) runs as it is.

Where: a folder ``engines-<hash>`` inside the export store's folder of this source (so it goes with the exports it
was built from), the hash over the engine-building code (``_SOURCE_FILES``) and the versions of the installed
TensorRT packages. Sibling ``engines-*`` folders that no run used for ``export_store.STALE_AFTER_S`` are evicted.

Key of an entry: sha256 of the ONNX file the worker builds (the export, or its fp16/bf16/INT8 conversion) and the
job's options (flavour, target, profile, workspace). Only ahead-of-time TensorRT-RTX builds without a plugin library
and without a timing cache are answered; every other job builds for real: a timing cache is build behaviour
itself, a plugin library changes what TensorRT does (it aborts without a GPU), and an engine for the visible GPU
depends on the GPU. Failed builds are never stored. Tests marked ``real_build`` always build for real.

Entries are written under a file lock (one worker builds, the other waits) and moved into place atomically.
"""

import hashlib
import importlib.metadata
import json
import shutil
import time
from pathlib import Path

from filelock import FileLock

import exporters.engine_build
from tests.export_store import _USED_STAMP, STALE_AFTER_S, _atomic_write, _hash_files, _key, store
from tests.helpers import REPO

# Taken at import, before any test patches exporters.engine_build._run_worker with EngineStore.run_worker.
_REAL_RUN_WORKER = exporters.engine_build._run_worker

# The code a stored engine depends on beyond the ONNX file and the job: the build worker, the code that writes its
# job and reads its events, the TensorRT flavour imports, and this file.
_SOURCE_FILES = [
    REPO / "exporters" / "engine_build.py",
    REPO / "exporters" / "engine_build_worker.py",
    REPO / "detr_deploy" / "tensorrt_flavours.py",
    Path(__file__),
]
_TENSORRT_RTX = "tensorrt-rtx"


def real_run_worker(job: dict, on_event):
    """exporters.engine_build._run_worker itself, for the tests marked ``real_build``."""
    return _REAL_RUN_WORKER(job, on_event)


def _tensorrt_versions() -> str:
    names = sorted(
        f"{dist.metadata['Name']}=={dist.version}"
        for dist in importlib.metadata.distributions()
        if (dist.metadata["Name"] or "").lower().replace("_", "-").startswith("tensorrt")
    )
    return ";".join(names)


def engine_source_hash() -> str:
    """sha256 over the engine-building code (``_SOURCE_FILES``) and the installed TensorRT packages' versions."""
    return hashlib.sha256((_hash_files(_SOURCE_FILES) + _tensorrt_versions()).encode()).hexdigest()


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def storable(job: dict) -> bool:
    """Whether the store answers ``job``: an ahead-of-time TensorRT-RTX build with no plugin library and no timing
    cache."""
    return (
        job["flavour"] == _TENSORRT_RTX
        and bool(job["compute_capability"])
        and not job["plugin_library"]
        and not job["timing_cache_in"]
        and not job["timing_cache_out"]
    )


class EngineStore:
    def __init__(self, exports=None):
        self._exports = exports or store()
        self.source = engine_source_hash()
        self._folder = None

    def _open(self) -> Path:
        if self._folder is None:
            parent = self._exports._open()
            folder = parent / f"engines-{self.source[:24]}"
            with FileLock(parent / ".engines.lock"):
                folder.mkdir(exist_ok=True)
                (folder / _USED_STAMP).touch()
                self.evict(parent, folder)
            self._folder = folder
        return self._folder

    @staticmethod
    def evict(parent: Path, keep: Path) -> list[Path]:
        """Remove the ``engines-*`` folders beside ``keep`` that no run used for STALE_AFTER_S; returns them."""
        removed = []
        for folder in parent.glob("engines-*"):
            if folder == keep or not folder.is_dir():
                continue
            stamp = folder / _USED_STAMP
            used = stamp.stat().st_mtime if stamp.exists() else folder.stat().st_mtime
            if time.time() - used > STALE_AFTER_S:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
        return removed

    def key(self, job: dict) -> str:
        fields = {
            "onnx_sha256": _sha256_of(Path(job["onnx"])),
            "flavour": job["flavour"],
            "compute_capability": job["compute_capability"],
            "profile": job["profile"],
            "workspace_mib": job["workspace_mib"],
        }
        return _key(fields)

    def run_worker(self, job: dict, on_event):
        """``exporters.engine_build._run_worker(job, on_event)`` answered from (or filling) the store: the engine
        written to ``job["engine"]``, the recorded events passed to ``on_event``, the final one returned."""
        if not storable(job):
            return _REAL_RUN_WORKER(job, on_event)
        folder = self._open()
        key = self.key(job)
        engine, events_file = folder / f"{key}.engine", folder / f"{key}.events.json"
        with FileLock(folder / f"{key}.lock"):
            if not engine.exists():
                recorded = []

                def record(event: dict) -> None:
                    recorded.append(event)
                    on_event(event)

                done = _REAL_RUN_WORKER(job, record)  # raises on a failed build: nothing is stored
                # The events first: an engine in place always has them.
                _atomic_write(events_file, lambda temporary: temporary.write_text(json.dumps(recorded)))
                _atomic_write(engine, lambda temporary: shutil.copyfile(job["engine"], temporary))
                return done
        (folder / _USED_STAMP).touch()
        shutil.copyfile(engine, job["engine"])
        recorded = json.loads(events_file.read_text())
        for event in recorded:
            on_event(event)
        return recorded[-1]


_STORE = None


def engine_store() -> EngineStore:
    """The process's engine store (each xdist worker opens the same folder)."""
    global _STORE
    if _STORE is None:
        _STORE = EngineStore()
    return _STORE
