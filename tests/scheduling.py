"""The order ``--dist loadfile`` hands test files to the xdist workers: the longest first, by the durations the last
runs recorded, so that the long files do not start last and leave one worker running alone at the end (xdist's own
order is by number of tests, which puts a file of six 20-second tests near the end).

Durations (setup + call + teardown of each test, so a module fixture's cost counts for its file) are kept in
``durations.json`` in the export store's root (tests/export_store.py; a fresh store has none, and the files go in
xdist's order); each run records the tests it ran. The order changes which worker runs a file and when, nothing
else: every test runs as it would.

The files SPLIT_PER_TEST names are not one unit but one per test: each is a list of independent cases of one check
over every zoo model (their module fixtures only wrap the shared export store), and as one unit
tests/exporters/test_onnx_export.py alone held a worker for 13 minutes (cold) while the other ran everything else.
"""

import json
import os
from collections import OrderedDict
from pathlib import Path

from filelock import FileLock
from xdist.scheduler import LoadFileScheduling

# Seconds assumed for a test no run recorded.
UNKNOWN_S = 1.0
# Handed out test by test (see above).
SPLIT_PER_TEST = (
    "tests/exporters/test_onnx_export.py",
    "tests/cli/test_cli_real_export.py",
    "tests/cli/test_cli_engine.py",
)


def durations_file() -> Path:
    from tests.export_store import DEFAULT_ROOT, STORE_ENV

    return Path(os.environ.get(STORE_ENV) or DEFAULT_ROOT) / "durations.json"


def read_durations(path: Path = None) -> dict[str, float]:
    try:
        return json.loads((path or durations_file()).read_text())
    except (OSError, ValueError):
        return {}


def record_durations(durations: dict[str, float], path: Path = None) -> None:
    """Merge ``durations`` (test node id -> seconds) into the record, under a file lock, written atomically."""
    from tests.export_store import _atomic_write

    path = path or durations_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_suffix(".lock")):
        merged = {**read_durations(path), **{key: round(value, 3) for key, value in durations.items()}}
        _atomic_write(path, lambda temporary: temporary.write_text(json.dumps(merged, indent=0, sort_keys=True)))


class LongestFileFirst(LoadFileScheduling):
    """LoadFileScheduling with its queue of files sorted by recorded duration, longest first, and the files
    SPLIT_PER_TEST names handed out test by test."""

    def __init__(self, config, log=None):
        super().__init__(config, log)
        self._durations = read_durations()
        self._ordered = False

    def _split_scope(self, nodeid: str) -> str:
        path = nodeid.split("::", 1)[0]
        return nodeid if path in SPLIT_PER_TEST else path

    def _cost(self, work_unit: dict) -> float:
        return sum(self._durations.get(nodeid, UNKNOWN_S) for nodeid in work_unit)

    def _assign_work_unit(self, node) -> None:
        if not self._ordered and self._durations:
            self.workqueue = OrderedDict(sorted(self.workqueue.items(), key=lambda unit: -self._cost(unit[1])))
        self._ordered = True
        super()._assign_work_unit(node)
