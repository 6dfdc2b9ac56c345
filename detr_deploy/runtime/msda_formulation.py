"""Which formulation of the ``MSDeformAttn`` node's body each CPU runtime runs, swapped in memory when a runner opens
an export (issue 23). The user's file keeps its GridSample function (TensorRT binds the node to our plugin, or
inlines that body); what a CPU runtime runs is chosen by measurement.

Measured (``benchmarks/msda_formulations.py``; one MSDeformAttn node at Deformable DETR-R50's encoder shapes at
800x1088: 18,071 queries, 8 heads of 32, 4 levels x 4 points; 2 threads, fp32):
  - ONNX Runtime: GridSample per level 712 ms; a Gather of the four neighbours of every point, per level, 273 ms
    (2.6x; one Gather for all levels 289 ms, holding 4x the memory); PyTorch's reference 988 ms.
  - OpenVINO: GridSample per level 254 ms, Gather per level 405 ms: it keeps the file's body.
"""

from detr_deploy import contract

GRID_SAMPLE = "grid-sample"
GATHER = "gather"
FORMULATIONS = (GRID_SAMPLE, GATHER)
FORMULATION_BY_RUNTIME = {"onnxruntime": GATHER, "openvino": GRID_SAMPLE}


def _msda_function(model):
    for function in model.functions:
        if function.domain == contract.MSDA_DOMAIN and function.name == contract.MSDA_OP_TYPE:
            return function
    return None


def with_formulation(model, formulation: str) -> bool:
    """Give ``model`` (an onnx.ModelProto, changed in place) the ``formulation`` body of its MSDeformAttn function.
    Returns whether the model has one (plugin-mode exports do; grid-sample exports hold plain ops already).
    The export's own body is the GridSample one; only fp32 exports are given another (the Gather body computes
    its weights in float32)."""
    from onnx import helper

    from exporters.msda_gather_function import build_msda_gather_function

    if formulation not in FORMULATIONS:
        raise ValueError(f"unknown MSDeformAttn formulation {formulation!r}; choose from {FORMULATIONS}")
    function = _msda_function(model)
    if function is None:
        return False
    if formulation == GRID_SAMPLE:
        return True
    if formulation_of(model) == GATHER:
        return True
    opset = next(entry.version for entry in function.opset_import if entry.domain in ("", "ai.onnx"))
    # The export's body samples each level with one GridSample.
    num_levels = sum(node.op_type == "GridSample" for node in function.node)
    replacement = build_msda_gather_function(num_levels, opset)
    function.ClearField("node")
    function.node.extend(replacement.node)
    del function.opset_import[:]
    function.opset_import.extend([helper.make_opsetid("", opset)])
    return True


def formulation_of(model) -> str:
    """The formulation of ``model``'s MSDeformAttn body, or None without one."""
    function = _msda_function(model)
    if function is None:
        return None
    return GRID_SAMPLE if any(node.op_type == "GridSample" for node in function.node) else GATHER
