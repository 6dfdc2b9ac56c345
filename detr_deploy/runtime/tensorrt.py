"""TensorRT (or TensorRT-RTX) as a runner: deserialize an engine built by ``cli.py build-engine`` and run it on a
CUDA stream with device buffers (torch CUDA tensors).

Before TensorRT sees the engine, its sidecar (``MODEL.engine.json``) is checked against the engine file, the
installed TensorRT and the GPU: a mismatch is a clear error here rather than a failed or wrong deserialization.
"""

import logging
from pathlib import Path

import numpy as np

from detr_deploy import contract
from detr_deploy.errors import DetrDeployError
from detr_deploy.io import sha256_of
from detr_deploy.runtime.runner import Runner
from detr_deploy.sidecar import EngineSidecar, read_sidecar
from detr_deploy.tensorrt_flavours import import_flavour, is_installed

logger = logging.getLogger(__name__)


def check_sidecar_environment(sidecar: EngineSidecar, engine_path) -> None:
    """Refuse an engine the installed TensorRT or the visible GPU cannot run, saying what to do instead."""
    flavour, version = sidecar.tensorrt_flavour, sidecar.tensorrt_version
    if not is_installed(flavour):
        raise DetrDeployError(f"{engine_path} was built with {flavour} {version}, which is not installed here")
    installed = import_flavour(flavour).__version__
    if installed != version:
        raise DetrDeployError(
            f"{engine_path} was built with {flavour} {version}; {installed} is installed. Engines run only on the "
            f"TensorRT version that built them: rebuild it with 'python cli.py build-engine'"
        )
    import torch

    if not torch.cuda.is_available():
        raise DetrDeployError(f"running {engine_path} needs an NVIDIA GPU, and torch sees none")
    major, minor = torch.cuda.get_device_capability()
    if f"{major}.{minor}" != sidecar.compute_capability:
        raise DetrDeployError(
            f"{engine_path} was built for compute capability {sidecar.compute_capability}; this GPU "
            f"({torch.cuda.get_device_name()}) is {major}.{minor}: rebuild the engine for it"
        )


def _plugin_library(sidecar: EngineSidecar, plugins) -> Path:
    from detr_deploy.plugins import find_plugin_library

    if sidecar.plugin is None:
        return None
    path = find_plugin_library() if plugins in (None, "auto") else Path(plugins)
    if path is None or not path.is_file():
        raise DetrDeployError(
            f"the engine needs the plugin library {sidecar.plugin.library} ({sidecar.plugin.name}/"
            f"{sidecar.plugin.namespace} v{sidecar.plugin.version}); build it with 'python cli.py build-plugin' or "
            f"pass its path with --plugins" + (f" ({path} does not exist)" if path is not None else "")
        )
    if sha256_of(path) != sidecar.plugin.sha256:
        logger.warning("%s differs from the plugin library the engine was built with (sha256 differs)", path)
    return path


class TensorRTRunner(Runner):
    name = "TensorRT"

    def __init__(self, engine_path, plugins="auto"):
        """``plugins``: "auto" (our built library, or ``DETR_DEPLOY_PLUGIN``) or the library's path."""
        engine_path = Path(engine_path)
        self.sidecar = read_sidecar(engine_path)
        check_sidecar_environment(self.sidecar, engine_path)
        import torch

        self.trt = import_flavour(self.sidecar.tensorrt_flavour)
        self.name = f"{self.sidecar.tensorrt_flavour} {self.sidecar.tensorrt_version} ({self.sidecar.precision})"
        self._logger = self.trt.Logger(self.trt.Logger.WARNING)
        self._runtime = self.trt.Runtime(self._logger)
        library = _plugin_library(self.sidecar, plugins)
        if library is not None and self._runtime.get_plugin_registry().load_library(str(library)) is None:
            raise DetrDeployError(f"TensorRT could not load the plugin library {library}")
        self.engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise DetrDeployError(f"TensorRT could not deserialize {engine_path}; rebuild it on this machine")
        self.context = self.engine.create_execution_context()
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.stream = torch.cuda.Stream(self.device)
        self.input_names = tuple(tensor.name for tensor in self.sidecar.inputs)
        self.output_names = tuple(tensor.name for tensor in self.sidecar.outputs)
        self.metadata = dict(self.sidecar.model)
        self.profiles = dict(self.sidecar.profile)
        self.precision = self.sidecar.precision

    def run_torch(self, images, padding_mask=None):
        """images: torch tensor [N, 3, H, W] float32, padding_mask [N, H, W] uint8 or None (any device)
        -> outputs keyed by name, CUDA tensors."""
        import torch

        feeds = {contract.INPUT_IMAGES: images.to(self.device, torch.float32).contiguous()}
        if self.takes_padding_mask or padding_mask is not None:
            # The shared rules (zeros when none is given, refused when the engine cannot honour one), on the host.
            host_mask = None if padding_mask is None else padding_mask.cpu().numpy()
            for name, mask in self.padding_feed(np.empty((images.shape[0], 0, *images.shape[2:])), host_mask).items():
                feeds[name] = torch.from_numpy(mask).to(self.device)
        for name, tensor in feeds.items():
            self.check_shape(name, tuple(tensor.shape))
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise DetrDeployError(f"TensorRT refused the shape {tuple(tensor.shape)} of {name}; its log says why")
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for tensor in self.sidecar.outputs:
            shape = tuple(self.context.get_tensor_shape(tensor.name))
            dtype = getattr(torch, tensor.dtype)  # the sidecar records numpy-style names, which torch shares
            outputs[tensor.name] = torch.empty(shape, dtype=dtype, device=self.device)
            self.context.set_tensor_address(tensor.name, outputs[tensor.name].data_ptr())
        # The input was written on the current stream; TensorRT's stream must see it.
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed; its log says why")
        self.stream.synchronize()
        return outputs

    def run(self, images: np.ndarray, padding_mask: np.ndarray = None) -> dict[str, np.ndarray]:
        """images [N, 3, H, W] float32, padding_mask [N, H, W] uint8 or None -> outputs keyed by name (float32)."""
        import torch

        mask = None if padding_mask is None else torch.from_numpy(np.ascontiguousarray(padding_mask, dtype=np.uint8))
        outputs = self.run_torch(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)), mask)
        return {name: value.float().cpu().numpy() for name, value in outputs.items()}

    def device_call(self, images: np.ndarray):
        """Inputs copied to the GPU once: the timed call is the engine alone."""
        import torch

        on_device = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(self.device)
        return lambda: self.run_torch(on_device)
