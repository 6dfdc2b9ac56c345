"""The Python-backend models of a repository (each version folder's ``model.py`` imports one of these classes).

``DetectorModel`` (the model clients query): encoded image bytes in, detections out. It builds our ``Detector``
around ``BlsRunner``, a runner that forwards each network batch to the network model by BLS, so the server computes
exactly what ``Detector`` computes in a process of one's own: the same decoding, resize, normalization, batching
rule, post-processing, class names and panoptic segments, by the same code.

``NetworkModel``: the network run inside the Python backend by one of our runners (ONNX Runtime, or TensorRT with
our plugin library loaded the way ``TensorRTRunner`` loads it), with the same inputs and outputs as the
``onnxruntime_onnx`` and ``tensorrt_plan`` models, for servers without those backends.

Tensors cross the Python backend's boundary by DLPack only. The backend's stub (Triton 2.51, as nvidia-pytriton
ships it) was built against numpy 1: with numpy 2, ``Tensor.as_numpy()`` returns wrong values without an error
(an FP32 [1, 3] input of 1, 2, 3 reads as 1, 1, 1), ``Tensor(name, array)`` sends an empty output, and a BYTES
(TYPE_STRING) input kills the stub. ``np.from_dlpack(tensor)`` and ``Tensor.from_dlpack(name, array)`` carry the
bytes unchanged under either numpy, hence encoded images travel as UINT8 vectors and the JSON result as UINT8 too.
"""

import io
import json
from pathlib import Path

import numpy as np

from detr_deploy import contract
from detr_deploy.errors import DetrDeployError
from detr_deploy.runtime.runner import Runner
from detr_deploy.sidecar import ShapeProfile

# Names of the detector model's inputs and outputs.
INPUT_IMAGE = "image"  # UINT8 [batch, bytes]: an encoded image file (JPEG, PNG, ...)
OUTPUT_BOXES = "boxes"  # FP32 [batch, n, 4]: x0, y0, x1, y1 in pixels of the original image
OUTPUT_SCORES = "scores"  # FP32 [batch, n]
OUTPUT_LABELS = "labels"  # INT32 [batch, n]
OUTPUT_RESULT = "result"  # UINT8 [batch, bytes]: UTF-8 JSON of ImageResult.to_dict() (names, size, segments)
OUTPUT_SEGMENT_MAP = "segment_map"  # INT32 [batch, height, width], panoptic models only
DETECTOR_OUTPUTS = (OUTPUT_BOXES, OUTPUT_SCORES, OUTPUT_LABELS, OUTPUT_RESULT)

# Files beside model.py in the detector's version folder.
METADATA_FILE = "metadata.json"  # the export's metadata (class names, resize, activation, ...)
NETWORK_FILE = "network.json"  # the network model's inputs, outputs and shape profile


def to_numpy(tensor) -> np.ndarray:
    """A pb_utils.Tensor (CPU) -> a numpy array of its own (DLPack: right under numpy 1 and 2)."""
    return np.from_dlpack(tensor).copy()


def to_tensor(name: str, array: np.ndarray):
    import triton_python_backend_utils as pb_utils

    # DLPack cannot export a read-only array (np.frombuffer's): a writable copy then.
    array = np.ascontiguousarray(array)
    return pb_utils.Tensor.from_dlpack(name, array if array.flags.writeable else array.copy())


def decode_image(data: bytes):
    """Encoded image bytes -> a loaded PIL image (DetrDeployError for anything that is not a readable image)."""
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as error:  # PIL raises many types for undecodable data
        raise DetrDeployError(
            f"cannot read the image ({' '.join(str(error).split()) or type(error).__name__})"
        ) from None
    return image


class BlsRunner(Runner):
    """Runs the network by a BLS request to another model of the same server (inputs and outputs on the host)."""

    name = "Triton BLS"

    def __init__(self, model_name: str, network: dict, metadata: dict):
        """``network``: network.json (input_names, output_names, max_batch, profile {input: {min, opt, max}})."""
        self.model_name = model_name
        self.input_names = tuple(network["input_names"])
        self.output_names = tuple(network["output_names"])
        self.metadata = metadata
        self.precision = network.get("precision", "fp32")
        self.profiles = {name: ShapeProfile(**shapes) for name, shapes in network.get("profile", {}).items()}
        self._max_batch = network.get("max_batch")

    @property
    def max_batch(self) -> int:
        return self._max_batch or super().max_batch

    def run(self, images: np.ndarray, padding_mask: np.ndarray = None) -> dict[str, np.ndarray]:
        """images [N, 3, H, W] float32, padding_mask [N, H, W] uint8 or None -> outputs keyed by name."""
        import triton_python_backend_utils as pb_utils

        self.check_inputs(images.shape)
        feeds = {contract.INPUT_IMAGES: np.ascontiguousarray(images, dtype=np.float32)}
        feeds.update(self.padding_feed(images, padding_mask))
        request = pb_utils.InferenceRequest(
            model_name=self.model_name,
            requested_output_names=list(self.output_names),
            inputs=[to_tensor(name, value) for name, value in feeds.items()],
            preferred_memory=pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0),
        )
        response = request.exec()
        if response.has_error():
            raise DetrDeployError(f"{self.model_name}: {response.error().message()}")
        return {name: to_numpy(pb_utils.get_output_tensor_by_name(response, name)) for name in self.output_names}


def _parameters(model_config: dict) -> dict[str, str]:
    return {key: value["string_value"] for key, value in model_config.get("parameters", {}).items()}


class DetectorModel:
    """TritonPythonModel: one encoded image per request -> detections; the requests the dynamic batcher hands over
    together go to one ``Detector.detect`` call (its batching rule makes the network batches)."""

    def initialize(self, args: dict) -> None:
        from detr_deploy.detector import Detector

        folder = Path(args["model_repository"]) / args["model_version"]
        model_config = json.loads(args["model_config"])
        parameters = _parameters(model_config)
        metadata = json.loads((folder / METADATA_FILE).read_text())
        network = json.loads((folder / NETWORK_FILE).read_text())
        runner = BlsRunner(parameters["network_model"], network, metadata)
        self.detector = Detector(
            runner,
            metadata,
            score_threshold=float(parameters.get("score_threshold", 0.5)),
            max_batch=int(model_config.get("max_batch_size") or 1),
            pad_batches=parameters.get("pad_batches", "false") == "true",
        )
        self.panoptic = contract.OUTPUT_MASKS in runner.output_names

    def execute(self, requests) -> list:
        import triton_python_backend_utils as pb_utils

        images, errors = [], {}
        for index, request in enumerate(requests):
            data = to_numpy(pb_utils.get_input_tensor_by_name(request, INPUT_IMAGE))
            try:
                if data.shape[0] != 1:
                    raise DetrDeployError(
                        f"a request carries one image, not {data.shape[0]}; send one request per image (the server "
                        "batches requests)"
                    )
                images.append(decode_image(data[0].tobytes()))
            except DetrDeployError as error:
                errors[index] = str(error)
                images.append(None)
        readable = [image for image in images if image is not None]
        results = iter(self.detector.detect(readable) if readable else [])
        responses = []
        for index, image in enumerate(images):
            if image is None:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(errors[index])))
                continue
            result = next(results)
            if result.error:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(result.error)))
                continue
            responses.append(pb_utils.InferenceResponse(self._outputs(result)))
        return responses

    def _outputs(self, result) -> list:
        result.source = "request"
        count = len(result.detections)
        boxes = np.asarray([d.box for d in result.detections], np.float32).reshape(1, count, 4)
        scores = np.asarray([d.score for d in result.detections], np.float32).reshape(1, count)
        labels = np.asarray([d.label for d in result.detections], np.int32).reshape(1, count)
        encoded = np.frombuffer(json.dumps(result.to_dict()).encode(), np.uint8)[None]
        outputs = [
            to_tensor(OUTPUT_BOXES, boxes),
            to_tensor(OUTPUT_SCORES, scores),
            to_tensor(OUTPUT_LABELS, labels),
            to_tensor(OUTPUT_RESULT, encoded),
        ]
        if self.panoptic:
            outputs.append(to_tensor(OUTPUT_SEGMENT_MAP, result.segment_map.astype(np.int32)[None]))
        return outputs

    def finalize(self) -> None:
        self.detector = None


class NetworkModel:
    """TritonPythonModel: the network in-process (``model.onnx``: ONNX Runtime; ``model.plan``: TensorRT). Requests
    of one shape (the dynamic batcher batches only those) run as one batch."""

    def initialize(self, args: dict) -> None:
        folder = Path(args["model_repository"]) / args["model_version"]
        parameters = _parameters(json.loads(args["model_config"]))
        if (folder / "model.onnx").is_file():
            from detr_deploy.runtime.onnxruntime import OnnxRuntimeRunner

            threads = int(parameters.get("intra_op_threads", 0)) or None
            self.runner = OnnxRuntimeRunner(folder / "model.onnx", threads=threads)
        else:
            from detr_deploy.runtime.tensorrt import TensorRTRunner

            plugin = parameters.get("plugin_library")
            plugins = str(Path(args["model_repository"]).parent / plugin) if plugin else "auto"
            self.runner = TensorRTRunner(folder / "model.plan", plugins=plugins)

    def execute(self, requests) -> list:
        import triton_python_backend_utils as pb_utils

        feeds = []
        for request in requests:
            images = to_numpy(pb_utils.get_input_tensor_by_name(request, contract.INPUT_IMAGES))
            mask = pb_utils.get_input_tensor_by_name(request, contract.INPUT_PADDING_MASK)
            feeds.append((images, to_numpy(mask) if mask is not None else None))
        responses = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for index, (images, _) in enumerate(feeds):
            groups.setdefault(images.shape[1:], []).append(index)
        for indices in groups.values():
            images = np.concatenate([feeds[i][0] for i in indices])
            masks = [feeds[i][1] for i in indices]
            mask = np.concatenate(masks) if all(m is not None for m in masks) else None
            try:
                outputs = self.runner.run(images, mask)
            except DetrDeployError as error:
                for i in indices:
                    responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error)))
                continue
            start = 0
            for i in indices:
                count = feeds[i][0].shape[0]
                tensors = [to_tensor(name, value[start : start + count]) for name, value in outputs.items()]
                responses[i] = pb_utils.InferenceResponse(tensors)
                start += count
        return responses

    def finalize(self) -> None:
        self.runner.close()
