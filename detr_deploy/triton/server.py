"""A local ``tritonserver`` for tests and users: find it, lay out its backends, start it on loopback, wait until it
is ready, stop it by its own process id.

Where the server comes from: ``pip install --no-deps nvidia-pytriton`` ships ``tritonserver`` (2.51) with the Python
backend only, its shared libraries in ``nvidia_pytriton.libs`` and one Python backend stub per interpreter version.
To serve a plain model repository with it, the backends are copied to a folder of our own with the stub of the
running interpreter put into ``backends/python/``; the server runs with that folder as ``--backend-directory`` and
with ``nvidia_pytriton.libs`` and the interpreter's LIBDIR (the stub embeds libpython) first on LD_LIBRARY_PATH. A
``tritonserver`` on PATH (NGC containers: /opt/tritonserver) is used as it is, with its own backends.
"""

import contextlib
import dataclasses
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path

from detr_deploy.errors import DetrDeployError

LOOPBACK = "127.0.0.1"
INSTALL_HINT = "pip install --no-deps nvidia-pytriton (a tritonserver with the Python backend), or use NGC's container"


@dataclasses.dataclass(frozen=True)
class TritonInstall:
    executable: Path
    backends: Path  # the backends folder as shipped
    libraries: tuple[Path, ...] = ()  # put first on LD_LIBRARY_PATH
    python_stub: Path = None  # nvidia-pytriton: the stub for this interpreter, copied into backends/python


def find_tritonserver() -> TritonInstall | None:
    """nvidia-pytriton's server (found without importing pytriton, which pins numpy<2), else ``tritonserver`` on
    PATH, else None."""
    spec = importlib.util.find_spec("pytriton")
    if spec is not None and spec.origin:
        package = Path(spec.origin).parent
        root = package / "tritonserver"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
        executable = root / "bin" / "tritonserver"
        if executable.is_file():
            libdir = Path(sysconfig.get_config_var("LIBDIR") or sys.base_prefix + "/lib")
            return TritonInstall(
                executable,
                root / "backends",
                (package.parent / "nvidia_pytriton.libs", libdir),
                stub if stub.is_file() else None,
            )
    found = shutil.which("tritonserver")
    if found:
        executable = Path(found).resolve()
        return TritonInstall(executable, executable.parent.parent / "backends")
    return None


def free_port() -> int:
    """A TCP port free on loopback now (the kernel's choice; another process could take it before the server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def server_flags(
    repository,
    *,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    address: str = LOOPBACK,
    backend_directory=None,
    models: list[str] = None,
    plugin_libraries: list = (),
) -> list[str]:
    """The command-line flags of a server on ``repository``: every port bound to ``address`` (loopback by default;
    tritonserver itself binds 0.0.0.0), ``models`` loaded explicitly (all of them when None), and the TensorRT
    backend's ``plugins=`` for TensorRT plugin libraries (semicolon-separated absolute paths, dlopened at start)."""
    flags = [
        f"--model-repository={Path(repository).resolve()}",
        f"--http-address={address}",
        f"--http-port={http_port}",
        f"--grpc-address={address}",
        f"--grpc-port={grpc_port}",
        f"--metrics-address={address}",
        f"--metrics-port={metrics_port}",
        "--allow-metrics=true",
        "--exit-on-error=true",
        "--strict-readiness=true",
        "--log-verbose=0",
        "--exit-timeout-secs=5",
    ]
    if backend_directory is not None:
        flags.append(f"--backend-directory={Path(backend_directory).resolve()}")
    if models is not None:
        flags.append("--model-control-mode=explicit")
        flags += [f"--load-model={name}" for name in models]
    if plugin_libraries:
        libraries = ";".join(str(Path(library).resolve()) for library in plugin_libraries)
        flags.append(f"--backend-config=tensorrt,plugins={libraries}")
    return flags


def prepare_backends(install: TritonInstall, folder) -> Path:
    """nvidia-pytriton: a copy of its backends with this interpreter's Python stub in backends/python (the server
    starts the stub it finds there). Other installs: their own backends folder, unchanged."""
    if install.python_stub is None:
        return install.backends
    target = Path(folder) / "backends"
    if not target.is_dir():
        shutil.copytree(install.backends, target, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(install.python_stub, target / "python" / "triton_python_backend_stub")
    return target


def server_environment(install: TritonInstall) -> dict[str, str]:
    """The server's environment: its libraries first on LD_LIBRARY_PATH, this interpreter's bin first on PATH, and
    the folder detr_deploy is imported from on PYTHONPATH, so that the Python models import this very detr_deploy."""
    import detr_deploy

    env = dict(os.environ)
    libraries = [str(path) for path in install.libraries]
    if env.get("LD_LIBRARY_PATH"):
        libraries.append(env["LD_LIBRARY_PATH"])
    if libraries:
        env["LD_LIBRARY_PATH"] = ":".join(libraries)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    source_root = str(Path(detr_deploy.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([source_root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


class TritonServer:
    """A tritonserver subprocess on loopback with ports chosen at start; a context manager that always stops it.

    >>> with TritonServer("repository", work_dir="/tmp/triton") as server:
    ...     server.http_url  # "127.0.0.1:PORT"
    """

    def __init__(
        self,
        repository,
        *,
        work_dir,
        models: list[str] = None,
        plugin_libraries: list = (),
        install: TritonInstall = None,
        start_timeout: float = 120.0,
    ):
        self.repository = Path(repository)
        self.work_dir = Path(work_dir)
        self.models = models
        self.plugin_libraries = list(plugin_libraries)
        self.install = install or find_tritonserver()
        if self.install is None:
            raise DetrDeployError(f"tritonserver is not installed: {INSTALL_HINT}")
        self.start_timeout = start_timeout
        self.process: subprocess.Popen = None
        self.http_port = self.grpc_port = self.metrics_port = None
        self.log_path = self.work_dir / "tritonserver.log"

    @property
    def http_url(self) -> str:
        return f"{LOOPBACK}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{LOOPBACK}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else None

    def command(self) -> list[str]:
        backends = prepare_backends(self.install, self.work_dir)
        return [str(self.install.executable)] + server_flags(
            self.repository,
            http_port=self.http_port,
            grpc_port=self.grpc_port,
            metrics_port=self.metrics_port,
            backend_directory=backends,
            models=self.models,
            plugin_libraries=self.plugin_libraries,
        )

    def start(self) -> "TritonServer":
        """Start the server and wait until it says it is ready (every model loaded); on failure it is stopped and
        the DetrDeployError quotes the end of its log."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        command = self.command()
        with open(self.log_path, "wb") as log:
            # Its own session: the Python backend stubs are its children, and a last-resort kill reaches them too.
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=server_environment(self.install),
                start_new_session=True,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise DetrDeployError(
                    f"tritonserver exited with status {self.process.returncode} while starting:\n{self.log_tail()}"
                )
            with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError):
                with urllib.request.urlopen(url, timeout=1.0) as response:
                    if response.status == 200:
                        return
            time.sleep(0.2)
        raise DetrDeployError(f"tritonserver was not ready after {self.start_timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the server's own pid (it unloads its models and stops its stubs), then SIGKILL to its process
        group if it has not exited within ``timeout``."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def repository_models(repository, flavour: str) -> list[str]:
    """The models of ``flavour`` in a repository written by ``write_repository``: its detector and network, found by
    their folder names (``<name>_<flavour>`` and ``<name>_<flavour>_network``)."""
    repository = Path(repository)
    if not repository.is_dir():
        raise DetrDeployError(f"model repository {repository} does not exist")
    detectors = sorted(
        folder.name
        for folder in repository.iterdir()
        if folder.name.endswith(f"_{flavour}")
        and (folder / "config.pbtxt").is_file()
        and (repository / f"{folder.name}_network" / "config.pbtxt").is_file()
    )
    if len(detectors) != 1:
        found = "none" if not detectors else ", ".join(detectors)
        raise DetrDeployError(
            f"{repository} has no single {flavour} flavour (detectors found: {found}); write it with "
            "'cli.py export-triton' or choose another --flavour"
        )
    return [detectors[0], f"{detectors[0]}_network"]
