"""ONNX graph inspection, in one place: what the manifest says about a graph, and which torch module a node came from.

Used by the exporter (manifest), the TensorRT builder (probe-row pinning, fusion report) and calibration
(which nodes stay float32), so dependencies run one way: export <- calibration.
"""

from __future__ import annotations

import ast
from pathlib import Path

SCOPE_KEY = "pkg.torch.onnx.name_scopes"  # node metadata torch.onnx (dynamo) writes: the module path of each node


def graph_io(path: Path) -> dict:
    """The manifest's description of an ONNX graph: file, every input/output with name, shape, dtype; opset; nodes."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def describe(values):
        out = []
        for v in values:
            t = v.type.tensor_type
            shape = [d.dim_param or d.dim_value for d in t.shape.dim]
            out.append({"name": v.name, "shape": shape, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name})
        return out

    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return {"file": path.name, "inputs": describe(model.graph.input), "outputs": describe(model.graph.output),
            "opset": opset, "nodes": len(model.graph.node)}


def node_module(node) -> str | None:
    """The deepest torch module a node was exported from (e.g. 'lm.layers.3.self_attn.q_proj'), or None."""
    for p in node.metadata_props:
        if p.key == SCOPE_KEY:
            try:
                scopes = ast.literal_eval(p.value)
            except (ValueError, SyntaxError):
                return None
            mods = [s for s in scopes if s.startswith(("lm.", "lm_head"))]
            return mods[-1] if mods else None
    return None
