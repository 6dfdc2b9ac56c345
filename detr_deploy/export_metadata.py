"""What an export's metadata must look like before a runtime relies on it. Runners check it when they open a file;
no model code is imported (the runtimes run without torch's model zoo)."""

import json
import re

from detr_deploy import contract
from detr_deploy.errors import DetrDeployError


def check_export_metadata(metadata: dict, source) -> None:
    """Refuse metadata of ours whose values do not parse (a hand-edited or foreign file), naming the key; files
    without our metadata pass (commands then ask for --model)."""

    def fail(key: str, expected: str):
        raise DetrDeployError(
            f"{source}: metadata {key} = {metadata[key][:80]!r} is not {expected}; re-export the model"
        )

    for key in (
        contract.META_NUM_CLASSES,
        contract.META_SIZE_DIVISOR,
        contract.META_TOP_K,
        contract.META_SELECTED_QUERIES,
    ):
        if key in metadata and not re.fullmatch(r"[1-9]\d{0,5}", metadata[key]):
            fail(key, "a positive integer")
    strides = metadata.get(contract.META_SELECTION_STRIDES)
    if strides is not None and not re.fullmatch(r"[1-9]\d{0,3}(,[1-9]\d{0,3})*", strides):
        fail(contract.META_SELECTION_STRIDES, "comma-separated positive integers")
    resize = metadata.get(contract.META_RESIZE)
    if resize is not None and not re.fullmatch(
        r"shorter=[1-9]\d{0,4},max=[1-9]\d{0,4}|fixed=[1-9]\d{0,4}x[1-9]\d{0,4}", resize
    ):
        fail(contract.META_RESIZE, "'shorter=N,max=N' or 'fixed=HxW'")
    if metadata.get(contract.META_SCORE_ACTIVATION, "softmax") not in ("softmax", "sigmoid"):
        fail(contract.META_SCORE_ACTIVATION, "softmax or sigmoid")
    for key, kind in (
        (contract.META_CLASS_NAMES, list),
        (contract.META_STUFF_LABELS, list),
        (contract.META_CONFIG, dict),
        (contract.META_MSDA_PATHS, dict),
    ):
        if key in metadata:
            try:
                parsed = json.loads(metadata[key])
            except json.JSONDecodeError:
                parsed = None
            if not isinstance(parsed, kind):
                fail(key, f"a JSON {kind.__name__}")
    if contract.META_CONFIG in metadata:
        # The config's fields are read where a model is rebuilt (model_source.recorded_config); here only what the
        # runtime itself relies on.
        config = json.loads(metadata[contract.META_CONFIG])
        if not isinstance(config.get("family"), str) or not isinstance(config.get("num_classes"), int):
            fail(contract.META_CONFIG, "a model config (with a family and a class count)")
        if contract.META_NUM_CLASSES in metadata and int(metadata[contract.META_NUM_CLASSES]) != config["num_classes"]:
            fail(contract.META_NUM_CLASSES, f"the config's class count ({config['num_classes']})")
    for key in (contract.META_MEAN, contract.META_STD):
        if key in metadata:
            values = metadata[key].split(",")
            if len(values) != 3 or not all(re.fullmatch(r"[0-9.eE+-]+", value.strip()) for value in values):
                fail(key, "three comma-separated numbers")
