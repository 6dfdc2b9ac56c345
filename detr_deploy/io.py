"""Writing output files so that a failure never leaves a half-written file behind."""

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

from detr_deploy.errors import DetrDeployError


def _temporary_beside(path: Path) -> Path:
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    except OSError as error:
        raise DetrDeployError(
            f"output directory {path.parent} is not writable ({error.strerror}); choose another output path"
        ) from None
    os.close(handle)
    # mkstemp makes the file private (0600); the finished output gets the permissions any new file would get.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    return Path(temporary)


def check_output_path(path, inputs=()) -> Path:
    """Fail early, before any expensive work, when ``path`` cannot be written (probed by writing, since
    permission bits say nothing for root or read-only file systems), or when it is one of the command's ``inputs``
    (replacing an input with the output destroys it)."""
    path = Path(path)
    for given in inputs:
        if given is not None and _same_file(path, Path(given)):
            raise DetrDeployError(f"output {path} is also an input of this command; choose another output path")
    if path.is_dir():
        raise DetrDeployError(f"output {path} is a directory; give a file name inside it")
    if not path.parent.is_dir():
        raise DetrDeployError(f"output directory {path.parent} does not exist; create it first")
    _temporary_beside(path).unlink()
    return path


def _same_file(output: Path, given: Path) -> bool:
    if output.exists() and given.exists():
        return os.path.samefile(output, given)
    return output.resolve() == given.resolve()


@contextlib.contextmanager
def atomic_output(path):
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds."""
    path = check_output_path(path)
    temporary = _temporary_beside(path)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def sha256_of(path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
