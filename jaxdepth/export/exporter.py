"""From a calibrated or QAT model to its integer graph (``export.graph.Graph``).

The exporter computes nothing of its own. It watches one fake-quant forward of the model
(``flax.linen.intercept_methods``) to learn the graph: each block's op and attributes
(``OP``, ``export_attrs``) and the tensors it reads and writes (``QValue.name``). The
parameters are the arrays that ``quant.freeze`` derived, the same that fake-quant
evaluation runs with; the exporter only casts them to their storage types and checks
that the integer arithmetic can represent them.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdepth.config import Config
from jaxdepth.export.graph import Graph, Node, TensorSpec
from jaxdepth.models import build_model, quant_for
from jaxdepth.models.layers import QPARAMS, is_block, path
from jaxdepth.quant import numerics as qn
from jaxdepth.quant.freeze import freeze

STRIDE = 32   # five stride-2 stages; the decoder's skip concats need exact halvings
_STORAGE = {"weight": np.int8, "coeff0": np.int8, "coeff1": np.int8, "table": np.uint8}


class ExportError(ValueError):
    """The model or checkpoint cannot be exported; the message says why."""


def _calls(model: nn.Module, variables: dict, height: int, width: int, use_lidar: bool) -> list:
    """(path, op, attrs, input names, output QValue) of every block, in execution order,
    from an abstract run (shapes only) of the fake-quant forward."""
    calls: list[tuple[str, str, dict, list[str], Any]] = []

    def watch(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name == "__call__" and is_block(module):
            leaves = jax.tree.leaves((args, kwargs), is_leaf=lambda a: isinstance(a, qn.QValue))
            inputs = [a.name for a in leaves if isinstance(a, qn.QValue)]
            calls.append((path(module), module.OP, module.export_attrs(), inputs, out))
        return out

    rgb = jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32)
    lidar = jax.ShapeDtypeStruct((1, height, width), jnp.float32) if use_lidar else None
    with nn.intercept_methods(watch):
        # A new function object: traced afresh, so every block call is seen.
        jax.eval_shape(lambda v, r, l: model.apply(v, r, l, train=False), variables, rgb, lidar)
    return calls


def _subtree(tree: dict, module_path: str) -> dict | None:
    for part in module_path.split("/"):
        tree = tree.get(part, {})
    return tree.get("node")


def _check(name: str, params: dict[str, np.ndarray], scale: float) -> None:
    """Every multiplier representable by ``numerics.requantize``, every scale positive."""
    for key, v in params.items():
        if key.endswith("multiplier"):
            qn.check_multiplier(v, params[key[: -len("multiplier")] + "shift"], f"{name} ({key})")
        elif key.endswith("scale") and not (np.all(np.isfinite(v)) and np.all(v > 0)):
            raise ExportError(f"{name}: {key} {v} is not a positive finite number")
    if not (np.isfinite(scale) and scale > 0):
        raise ExportError(f"{name}: output scale {scale} is not a positive finite number")


def export_graph(cfg: Config, variables: dict, height: int, width: int,
                 use_lidar: bool = True) -> Graph:
    """Records the scale-0 depth graph for (1, height, width) inputs.

    ``use_lidar`` False (or a model without SAN) exports the monocular RGB graph. Raises
    ``ExportError`` (a ``ValueError``) for a checkpoint without activation ranges, a size
    the network cannot run at, a model with an op outside the NPU set (FiLM), or a
    parameter the integer arithmetic cannot represent (the message names the layer).
    """
    if height % STRIDE or width % STRIDE:
        raise ExportError(f"export size {height}x{width}: height and width must be multiples of {STRIDE}")
    counts = [np.asarray(c) for c in jax.tree.leaves(variables.get("quant", {}))
              if np.asarray(c).dtype.kind == "i"]
    if not counts or not any(int(c) > 0 for c in counts):
        raise ExportError("the checkpoint has no calibrated activation ranges: export needs the "
                         "ranges of a QAT run or of a post-training calibration")
    model = build_model(cfg.model, quant_for(cfg, "fake"))
    try:
        use_lidar = use_lidar and cfg.model.sparse
        frozen = freeze(model, variables, use_lidar)
        calls = _calls(model, frozen, height, width, use_lidar)
    except ValueError as e:     # the blocks' own checks: FiLM, accumulator bounds
        raise ExportError(str(e)) from e
    derived = jax.tree.map(np.asarray, frozen[QPARAMS])
    graph = Graph()
    for module_path, op, attrs, inputs, out in calls:
        p = dict(_subtree(derived, module_path) or {})
        floats = p.pop("float", {})
        source = graph.tensors[inputs[0]] if inputs and "scale" not in p else None
        scale = float(p.pop("scale")) if source is None else source.scale
        zero_point = int(p.pop("zero_point")) if source is None else source.zero_point
        ints = {k: np.asarray(v, _STORAGE.get(k, np.asarray(v).dtype)) for k, v in p.items()}
        _check(out.name, ints, scale)
        graph.add(Node(op, out.name, inputs, out.name, attrs, floats, ints),
                  TensorSpec(out.name, tuple(out.codes.shape), scale, zero_point, out.fmt))
    graph.mark_outputs()
    return graph


def used_parameter_count(graph: Graph, variables: dict) -> int:
    """Number of FP32 parameters (``params`` collection) of the modules the graph uses.

    Only trainable parameters count (kernels, biases, BatchNorm scale and offset, fusion
    gates), not BatchNorm running statistics, nor the heads of the coarser scales, nor a
    linear head's fixed coefficients.
    """
    total = 0
    for node in graph.nodes:
        if not node.float_params:
            continue
        tree = variables["params"]
        for part in node.name.split("/"):
            tree = tree.get(part, {})
        total += sum(int(np.size(leaf)) for leaf in jax.tree.leaves(tree))
    return total
