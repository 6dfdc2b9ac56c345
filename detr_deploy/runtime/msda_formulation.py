"""Which formulation of the ``MSDeformAttn`` node's body each CPU runtime runs, swapped in memory when a runner opens
an export (issue 23). The user's file keeps its GridSample function (TensorRT binds the node to our plugin, or
inlines that body); what a CPU runtime runs is chosen by measurement.

Measured (``benchmarks/msda_formulations.py``; one MSDeformAttn node at Deformable DETR-R50's encoder shapes at
800x1088: 18,071 queries, 8 heads of 32, 4 levels x 4 points; 2 threads, fp32):
  - ONNX Runtime: GridSample per level 712 ms; a Gather of the four neighbours of every point, per level, 273 ms
    (2.6x; one Gather for all levels 289 ms, holding 4x the memory); PyTorch's reference 988 ms.
  - OpenVINO: GridSample per level 254 ms, Gather per level 405 ms: it keeps the file's body there.
At an RT-DETR decoder layer's shapes (300 queries into 80x80, 40x40, 20x20 tokens; ``--levels 80x80,40x40,20x20
--queries 300``) OpenVINO's GridSample costs what its feature maps cost, not its 300 queries: GridSample per level
15.0 ms, Gather per level 12.4 ms; RT-DETR-R50 at 640x640 (benchmarks/openvino_graphs.py) spent 26.6 ms in its 18
GridSample kernels against 9.0 ms in the Gathers. So OpenVINO gets the Gather body for the nodes whose query count
is fixed (decoder layers: num_queries, known from the export's value_info) and keeps GridSample for those whose
queries are the image's tokens (encoder layers), each node by its own shape (``with_node_formulations``).
"""

from detr_deploy import contract

GRID_SAMPLE = "grid-sample"
GATHER = "gather"
FORMULATIONS = (GRID_SAMPLE, GATHER)
FORMULATION_BY_RUNTIME = {"onnxruntime": GATHER, "openvino": GRID_SAMPLE}
# Per kind of node: queries fixed in number (a decoder's num_queries) or the image's tokens (an encoder layer).
FIXED_QUERIES, TOKEN_QUERIES = "fixed-queries", "token-queries"
OPENVINO_NODE_FORMULATIONS = {FIXED_QUERIES: GATHER, TOKEN_QUERIES: GRID_SAMPLE}


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
    if formulation not in FORMULATIONS:
        raise ValueError(f"unknown MSDeformAttn formulation {formulation!r}; choose from {FORMULATIONS}")
    function = _msda_function(model)
    if function is None:
        return False
    with_formulation_of_function(function, formulation)
    return True


def with_formulation_of_function(function, formulation: str) -> None:
    """Give the MSDeformAttn FunctionProto ``function`` (as exported: the GridSample body) the ``formulation`` body."""
    from onnx import helper

    from exporters.msda_gather_function import build_msda_gather_function

    if formulation == GRID_SAMPLE or not any(node.op_type == "GridSample" for node in function.node):
        return
    opset = next(entry.version for entry in function.opset_import if entry.domain in ("", "ai.onnx"))
    # The export's body samples each level with one GridSample.
    num_levels = sum(node.op_type == "GridSample" for node in function.node)
    replacement = build_msda_gather_function(num_levels, opset)
    function.ClearField("node")
    function.node.extend(replacement.node)
    del function.opset_import[:]
    function.opset_import.extend([helper.make_opsetid("", opset)])


def formulation_of(model) -> str:
    """The formulation of ``model``'s MSDeformAttn body, or None without one."""
    function = _msda_function(model)
    if function is None:
        return None
    return GRID_SAMPLE if any(node.op_type == "GridSample" for node in function.node) else GATHER


def _query_counts(model) -> dict[str, int]:
    """sampling_locations value name -> its fixed query count (dimension 1 of [N, Lq, M, L, P, 2]), for the values
    whose value_info gives one as a number (torch.export's exports record every value's shape)."""
    counts = {}
    for value in list(model.graph.value_info) + list(model.graph.input):
        dims = value.type.tensor_type.shape.dim
        if len(dims) == 6 and dims[1].HasField("dim_value") and dims[1].dim_value > 0:
            counts[value.name] = dims[1].dim_value
    return counts


def with_node_formulations(model, formulations: dict[str, str]) -> dict[str, int]:
    """Give each MSDeformAttn node of ``model`` (an onnx.ModelProto, changed in place) the body ``formulations``
    names for its kind (FIXED_QUERIES: its query count is a number in the export's value_info; TOKEN_QUERIES: any
    other). The file's function keeps the TOKEN_QUERIES body; nodes of the other kind call a copy with the other body
    (same domain, its own name; runtimes that inline functions never see the name). Returns how many nodes run each
    formulation ({} without MSDeformAttn nodes or function)."""
    import copy

    function = _msda_function(model)
    if function is None or formulation_of(model) != GRID_SAMPLE:  # only the export's own body is rewritten
        return {}
    for formulation in formulations.values():
        if formulation not in FORMULATIONS:
            raise ValueError(f"unknown MSDeformAttn formulation {formulation!r}; choose from {FORMULATIONS}")
    nodes = [n for n in model.graph.node if n.domain == contract.MSDA_DOMAIN and n.op_type == contract.MSDA_OP_TYPE]
    fixed = _query_counts(model)
    fixed_nodes = [node for node in nodes if node.input[3] in fixed]
    if fixed_nodes and formulations[FIXED_QUERIES] != formulations[TOKEN_QUERIES]:
        other = copy.deepcopy(function)  # the export's GridSample body
        other.name = f"{contract.MSDA_OP_TYPE}_{FIXED_QUERIES.replace('-', '_')}"
        with_formulation_of_function(other, formulations[FIXED_QUERIES])
        model.functions.append(other)
        for node in fixed_nodes:
            node.op_type = other.name
    with_formulation_of_function(function, formulations[TOKEN_QUERIES])
    used = {formulations[TOKEN_QUERIES]: len(nodes) - len(fixed_nodes)}
    used[formulations[FIXED_QUERIES]] = used.get(formulations[FIXED_QUERIES], 0) + len(fixed_nodes)
    return {name: count for name, count in used.items() if count}
